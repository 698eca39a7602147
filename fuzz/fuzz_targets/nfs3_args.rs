//! Every NFSv3 procedure's argument decoder and handler on arbitrary bytes, against
//! a real cache in a temporary directory (kept across runs, so the fuzzer builds up
//! files and directories). Input: byte 0 picks the procedure, byte 1 the caller,
//! the rest are the arguments. Any `00 00 00 11 01` (an XDR opaque of 17 bytes
//! starting with handle version 1) gets this share's id patched in, so handles in
//! the corpus (written with share id 0) name real files: the root is file id 1,
//! generation 0.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bucketgate::config::Squash;
use bucketgate::nfs::nfs3::{NfsService, Share};
use bucketgate::nfs::{AuthSys, CallContext, Nfs3Program, ProcReply};
use bucketgate_cache::{Cache, CacheOptions};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

struct Harness {
    rt: tokio::runtime::Runtime,
    svc: NfsService,
    share_id: u32,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let opts = CacheOptions {
            dirty_limit_bytes: 64 << 20,
            ..CacheOptions::default()
        };
        let cache = Arc::new(Cache::open(dir.path(), opts).unwrap());
        let share_id = cache.share_id();
        // An empty local-directory bucket: listings and fetches hit a real store.
        let store: Arc<dyn bucketgate::remote::ObjectStore> =
            Arc::new(bucketgate::remote::local::LocalStore::new(dir.path().join("bucket")).unwrap());
        let rt = bucketgate::readthrough::ReadThrough::new(cache.clone(), store, String::new(), None, None);
        let share = Arc::new(Share {
            name: "data".into(),
            export_path: "/data".into(),
            cache,
            squash: Squash::Root,
            read_only: false,
            allowed_clients: Vec::new(),
            allows: Box::new(|_| true),
            rt,
            audit: None,
        });
        Harness {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            svc: NfsService::new(vec![share], None),
            share_id,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let h = harness();
    let proc = u32::from(data[0] % 24);
    let auth = match data[1] % 4 {
        0 => None,
        1 => Some((0, 0)),
        2 => Some((1000, 1000)),
        _ => Some((65534, 65534)),
    };
    let mut args = data[2..].to_vec();
    let id = h.share_id.to_be_bytes();
    let mut i = 0;
    while i + 9 <= args.len() {
        if args[i..i + 5] == [0, 0, 0, 17, 1] {
            args[i + 5..i + 9].copy_from_slice(&id);
            i += 9;
        } else {
            i += 1;
        }
    }
    let ctx = CallContext {
        xid: 1,
        client: SocketAddr::from(([127, 0, 0, 1], 700)),
        auth: auth.map(|(uid, gid)| AuthSys {
            uid,
            gid,
            gids: vec![gid],
            machine_name: "fuzz".into(),
        }),
    };
    let reply = h.rt.block_on(h.svc.call(ctx, proc, Bytes::from(args)));
    if let ProcReply::Success(body) = reply {
        // Replies are bounded by READ/READDIR limits, whatever the arguments ask.
        assert!(body.len() <= (1 << 20) + 4096, "reply of {} bytes", body.len());
    }
});
