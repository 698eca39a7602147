//! Every NFSv3 procedure's argument decoder and handler on arbitrary bytes, against
//! a real cache in a temporary directory (kept across runs, so the fuzzer builds up
//! files and directories). Input: byte 0 picks the procedure, byte 1 the caller,
//! the rest are the arguments. Any `00 00 00 11 01` (an XDR opaque of 17 bytes
//! starting with 1: the corpus's handles, in the format before handles carried a
//! MAC) becomes a real handle of this share (share id and MAC made here) for the
//! file id and generation it names, so handles in the corpus name real files: the
//! root is file id 1, generation 0.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bucketgate::config::Squash;
use bucketgate::nfs::NfsService;
use bucketgate::nfs::{AuthSys, CallContext, Nfs3Program, ProcReply};
use bucketgate::share::Share;
use bucketgate_cache::{Cache, CacheOptions};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

struct Harness {
    rt: tokio::runtime::Runtime,
    svc: NfsService,
    share_id: u32,
    key: [u8; 32],
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
        let key = *cache.handle_key();
        // An empty local-directory bucket: listings and fetches hit a real store.
        let store: Arc<dyn bucketgate::remote::ObjectStore> =
            Arc::new(bucketgate::remote::LocalStore::new(dir.path().join("bucket")).unwrap());
        let rt = bucketgate::share::ReadThrough::new(cache.clone(), store, String::new(), None, None);
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
            metrics: None,
        });
        Harness {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            svc: NfsService::new(vec![share], None),
            share_id,
            key,
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
    let src = &data[2..];
    let mut args = Vec::with_capacity(src.len() + 64);
    let mut i = 0;
    while i < src.len() {
        // length word, 17 handle bytes, 3 bytes of XDR padding
        if i + 24 <= src.len() && src[i..i + 5] == [0, 0, 0, 17, 1] {
            let b = &src[i + 4..i + 21];
            let handle = bucketgate::nfs::Handle {
                share_id: h.share_id,
                file_id: u64::from_be_bytes(b[5..13].try_into().unwrap()),
                generation: u32::from_be_bytes(b[13..17].try_into().unwrap()),
            }
            .encode(&h.key);
            args.extend_from_slice(&(handle.len() as u32).to_be_bytes());
            args.extend_from_slice(&handle);
            args.resize(args.len() + (4 - handle.len() % 4) % 4, 0);
            i += 24;
        } else {
            args.push(src[i]);
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
