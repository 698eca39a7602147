//! One conformance suite for every `ObjectStore`: each scenario runs against
//! `S3Store` talking to a real S3 protocol server (in-process s3s-fs on 127.0.0.1)
//! and against `LocalStore` on a temp directory. Store-specific checks (what landed
//! in the bucket as seen by a plain S3 client, what is on disk) follow the shared
//! assertions.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bucketgate::remote::{CompletedPart, LocalStore, ObjectAttrs, ObjectStore, StoreError};
use bucketgate::remote::{S_IFDIR, S_IFREG};
use bytes::Bytes;
use common::s3server::{S3TestServer, b64_std};

const MIB: usize = 1 << 20;

enum Backend {
    S3(Box<S3TestServer>),
    Local(tempfile::TempDir),
}

struct Env {
    store: Arc<dyn ObjectStore>,
    backend: Backend,
}

impl Env {
    async fn s3() -> Env {
        let srv = S3TestServer::start().await;
        let store = Arc::new(srv.store().await);
        Env {
            store,
            backend: Backend::S3(Box::new(srv)),
        }
    }

    fn local() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path().join("bucket")).unwrap());
        Env {
            store,
            backend: Backend::Local(dir),
        }
    }

    fn s3_server(&self) -> Option<&S3TestServer> {
        match &self.backend {
            Backend::S3(s) => Some(s),
            Backend::Local(_) => None,
        }
    }

    fn local_root(&self) -> Option<std::path::PathBuf> {
        match &self.backend {
            Backend::Local(d) => Some(d.path().join("bucket")),
            Backend::S3(_) => None,
        }
    }
}

/// Runs each scenario on both stores, each bounded in time.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod s3_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = super::Env::s3().await;
                    tokio::time::timeout(std::time::Duration::from_secs(180), super::$name(&env))
                        .await
                        .expect("scenario timed out");
                }
            )*
        }
        mod local_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = super::Env::local();
                    tokio::time::timeout(std::time::Duration::from_secs(180), super::$name(&env))
                        .await
                        .expect("scenario timed out");
                }
            )*
        }
    };
}

conformance!(
    put_head_and_ranged_reads,
    metadata_round_trips,
    keys_sort_by_bytes,
    list_with_delimiter_and_pagination,
    multipart_upload_with_metadata,
    upload_part_copy_assembles_from_an_existing_object,
    copy_object_replaces_or_keeps_metadata,
    delete_is_idempotent,
    abort_is_idempotent_and_listing_tracks_uploads,
    missing_things_map_to_not_found,
    directory_markers_are_listed_like_objects,
);

async fn directory_markers_are_listed_like_objects(env: &Env) {
    let s = &env.store;
    let m = meta(S_IFREG | 0o644, 1);
    let dm = meta(S_IFDIR | 0o755, 1);
    s.put_object("m/", Bytes::new(), &dm).await.unwrap();
    s.put_object("m/a", Bytes::from_static(b"a"), &m).await.unwrap();
    s.put_object("m/empty/", Bytes::new(), &dm).await.unwrap();
    s.put_object("n", Bytes::from_static(b"n"), &m).await.unwrap();
    let keys = |p: &bucketgate::remote::ListPage| p.objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>();
    let all = s.list("", None, None, 1000).await.unwrap();
    assert_eq!(keys(&all), ["m/", "m/a", "m/empty/", "n"]);
    assert_eq!(all.objects[0].size, 0);
    let top = s.list("", Some("/"), None, 1000).await.unwrap();
    assert_eq!(
        (keys(&top), top.common_prefixes),
        (vec!["n".to_string()], vec!["m/".to_string()])
    );
    // Listing a directory shows its own marker first, then its entries.
    let inside = s.list("m/", Some("/"), None, 1000).await.unwrap();
    assert_eq!(keys(&inside), ["m/", "m/a"]);
    assert_eq!(inside.common_prefixes, ["m/empty/"]);
    // Pages of one item walk the same sequence.
    let mut token = None;
    let mut seen = Vec::new();
    loop {
        let p = s.list("", None, token.as_deref(), 1).await.unwrap();
        seen.extend(keys(&p));
        token = p.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, keys(&all));
    // Deleting a marker with entries keeps the entries.
    s.delete_object("m/").await.unwrap();
    assert!(s.head("m/").await.unwrap().is_none());
    assert_eq!(s.get_range("m/a", 0, 1).await.unwrap(), Bytes::from_static(b"a"));
    assert_eq!(
        keys(&s.list("m/", None, None, 1000).await.unwrap()),
        ["m/a", "m/empty/"]
    );
}

fn meta(mode: u32, mtime_ns: u64) -> ObjectAttrs {
    ObjectAttrs {
        uid: 1000,
        gid: 100,
        mode,
        mtime_ns,
    }
}

/// Deterministic, non-repeating test bytes.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

async fn put_head_and_ranged_reads(env: &Env) {
    let s = &env.store;
    let m = meta(S_IFREG | 0o644, 1_700_000_000_123_456_789);
    let body = pattern(1000, 1);
    let etag = s.put_object("dir/file.bin", body.clone(), &m).await.unwrap();
    assert!(!etag.is_empty() && !etag.contains('"'), "etag {etag:?}");

    let info = s.head("dir/file.bin").await.unwrap().expect("object exists");
    assert_eq!(info.key, "dir/file.bin");
    assert_eq!(info.size, 1000);
    assert_eq!(info.etag, etag);
    let lm = info.last_modified_ns.expect("last modified");
    let hour = 3_600_000_000_000;
    assert!(
        lm > now_ns() - hour && lm < now_ns() + hour,
        "last_modified_ns {lm}"
    );

    assert_eq!(
        s.get_range("dir/file.bin", 0, 10).await.unwrap(),
        body.slice(0..10)
    );
    assert_eq!(
        s.get_range("dir/file.bin", 500, 100).await.unwrap(),
        body.slice(500..600)
    );
    // Shorter at the end, empty past it.
    assert_eq!(
        s.get_range("dir/file.bin", 990, 100).await.unwrap(),
        body.slice(990..1000)
    );
    assert_eq!(s.get_range("dir/file.bin", 0, 1 << 30).await.unwrap(), body);
    assert!(s.get_range("dir/file.bin", 1000, 10).await.unwrap().is_empty());
    assert!(s.get_range("dir/file.bin", 5000, 1).await.unwrap().is_empty());
    assert!(s.get_range("dir/file.bin", 3, 0).await.unwrap().is_empty());

    // Overwrite: new size, new ETag, one version.
    let etag2 = s.put_object("dir/file.bin", pattern(10, 2), &m).await.unwrap();
    assert_ne!(etag2, etag);
    let info = s.head("dir/file.bin").await.unwrap().unwrap();
    assert_eq!((info.size, info.etag.as_str()), (10, etag2.as_str()));
    assert_eq!(s.get_range("dir/file.bin", 0, 100).await.unwrap(), pattern(10, 2));

    // Empty objects are objects.
    s.put_object("empty", Bytes::new(), &m).await.unwrap();
    assert_eq!(s.head("empty").await.unwrap().unwrap().size, 0);
    assert!(s.get_range("empty", 0, 10).await.unwrap().is_empty());
}

async fn metadata_round_trips(env: &Env) {
    let s = &env.store;
    let m = ObjectAttrs {
        uid: 4_000_000_000,
        gid: 65534,
        mode: S_IFREG | 0o4755,
        mtime_ns: 1_234_567_890_987_654_321,
    };
    let body = Bytes::from_static(b"hello, bucket\n");
    s.put_object("docs/readme.txt", body.clone(), &m).await.unwrap();
    assert_eq!(s.head("docs/readme.txt").await.unwrap().unwrap().meta, Some(m));

    if let Some(srv) = env.s3_server() {
        // What a plain S3 client (DataSync, FSx, an operator) sees.
        let out = srv
            .client
            .head_object()
            .bucket(&srv.bucket)
            .key("docs/readme.txt")
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        let md = out.metadata().unwrap();
        assert_eq!(md.get("file-owner").map(String::as_str), Some("4000000000"));
        assert_eq!(md.get("file-group").map(String::as_str), Some("65534"));
        assert_eq!(md.get("file-permissions").map(String::as_str), Some("0104755"));
        assert_eq!(
            md.get("file-mtime").map(String::as_str),
            Some("1234567890987654321ns")
        );
        assert_eq!(
            md.get("user-agent").map(String::as_str),
            Some(concat!("bucketgate/", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(md.len(), 5, "{md:?}");
        assert_eq!(out.content_type(), Some("text/plain"));
        // The CRC32C the store sent was checked and kept by the server.
        let crc = crc32c::crc32c(&body).to_be_bytes();
        assert_eq!(out.checksum_crc32_c(), Some(b64_std(&crc).as_str()));
        assert_eq!(std::fs::read(srv.object_path("docs/readme.txt")).unwrap(), body);
    }
    if let Some(root) = env.local_root() {
        // Browsable: the object is the plain file.
        assert_eq!(std::fs::read(root.join("docs/readme.txt")).unwrap(), body);
        // A file replaced by hand loses its (now stale) metadata instead of lying.
        std::fs::write(root.join("docs/readme.txt"), b"edited by hand").unwrap();
        let info = s.head("docs/readme.txt").await.unwrap().unwrap();
        assert_eq!((info.size, info.meta), (14, None));
    }

    // Directory markers carry metadata too.
    let dm = meta(S_IFDIR | 0o750, 42);
    s.put_object("docs/sub/", Bytes::new(), &dm).await.unwrap();
    let info = s.head("docs/sub/").await.unwrap().expect("marker exists");
    assert_eq!((info.size, info.meta), (0, Some(dm)));
    assert!(s.get_range("docs/sub/", 0, 100).await.unwrap().is_empty());
    // A directory that only holds deeper keys is not an object.
    s.put_object("docs/implicit/f", Bytes::from_static(b"f"), &m)
        .await
        .unwrap();
    assert!(s.head("docs/implicit/").await.unwrap().is_none());
}

async fn keys_sort_by_bytes(env: &Env) {
    let s = &env.store;
    let m = meta(S_IFREG | 0o644, 1);
    // '-' (0x2d) < '/' (0x2f) < '0' (0x30): a directory's keys sort between these.
    for k in ["k/a0", "k/a/x", "k/a-b", "k/a/y/z", "k/b"] {
        s.put_object(k, Bytes::from_static(b"x"), &m).await.unwrap();
    }
    let page = s.list("k/", None, None, 1000).await.unwrap();
    let keys: Vec<_> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["k/a-b", "k/a/x", "k/a/y/z", "k/a0", "k/b"]);
    assert!(page.objects.iter().all(|o| o.size == 1 && o.meta.is_none()));
    let page = s.list("k/", Some("/"), None, 1000).await.unwrap();
    let keys: Vec<_> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["k/a-b", "k/a0", "k/b"]);
    assert_eq!(page.common_prefixes, ["k/a/"]);
    assert_eq!(page.next_token, None);
}

async fn put_many(store: &Arc<dyn ObjectStore>, keys: Vec<String>) {
    let m = meta(S_IFREG | 0o644, 1);
    for chunk in keys.chunks(64) {
        let mut set = tokio::task::JoinSet::new();
        for k in chunk {
            let (store, k) = (store.clone(), k.clone());
            set.spawn(async move { store.put_object(&k, Bytes::from_static(b"."), &m).await.unwrap() });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    }
}

async fn list_all(
    s: &Arc<dyn ObjectStore>,
    prefix: &str,
    delimiter: Option<&str>,
    max_keys: i32,
) -> (Vec<String>, Vec<String>, usize) {
    let (mut objects, mut prefixes, mut pages) = (Vec::new(), Vec::new(), 0);
    let mut token: Option<String> = None;
    loop {
        let page = s
            .list(prefix, delimiter, token.as_deref(), max_keys)
            .await
            .unwrap();
        pages += 1;
        assert!(page.objects.len() + page.common_prefixes.len() <= max_keys as usize);
        objects.extend(page.objects.into_iter().map(|o| o.key));
        prefixes.extend(page.common_prefixes);
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
        assert!(pages < 100, "listing does not end");
    }
    (objects, prefixes, pages)
}

async fn list_with_delimiter_and_pagination(env: &Env) {
    let s = &env.store;
    let mut keys = Vec::new();
    keys.extend((0..1200).map(|i| format!("p/a/{i:04}")));
    keys.extend((0..1200).map(|i| format!("p/b/c/{i:04}")));
    keys.extend((0..100).map(|i| format!("p/z{i:03}")));
    put_many(s, keys.clone()).await;
    put_many(s, vec!["other/x".into(), "o".into(), "q".into()]).await;
    keys.sort();

    // Everything under p/: 2,500 keys in three pages, in key order.
    let (objects, prefixes, pages) = list_all(s, "p/", None, 1000).await;
    assert_eq!(pages, 3);
    assert!(prefixes.is_empty());
    assert_eq!(objects, keys);

    // One level: two common prefixes and the 100 direct children, in one page.
    let page = s.list("p/", Some("/"), None, 1000).await.unwrap();
    assert_eq!(page.common_prefixes, ["p/a/", "p/b/"]);
    assert_eq!(page.objects.len(), 100);
    assert_eq!(page.objects[0].key, "p/z000");
    assert_eq!(page.next_token, None);

    // Common prefixes count toward max_keys and are not repeated across pages.
    let (objects, prefixes, pages) = list_all(s, "p/", Some("/"), 40).await;
    assert_eq!(pages, 3);
    assert_eq!(prefixes, ["p/a/", "p/b/"]);
    assert_eq!(objects, keys[2400..].to_vec());

    let page = s.list("p/b/", Some("/"), None, 1000).await.unwrap();
    assert_eq!(
        (page.common_prefixes.as_slice(), page.objects.len()),
        (&["p/b/c/".to_string()][..], 0)
    );

    // A prefix that is not a whole segment; exactly max_keys keys means no next page.
    let (objects, _, pages) = list_all(s, "p/a/0", None, 1000).await;
    assert_eq!((objects.len(), pages), (1000, 1));
    let page = s.list("p/a/11", Some("/"), None, 1000).await.unwrap();
    assert_eq!(page.objects.len(), 100);
    assert!(s.list("nothing/", Some("/"), None, 1000).await.unwrap() == Default::default());
}

async fn multipart_upload_with_metadata(env: &Env) {
    let s = &env.store;
    let m = meta(S_IFREG | 0o600, 1_700_000_000_000_000_001);
    let data = pattern(12 * MIB, 7);
    let key = "big/file.dat";
    let id = s.create_multipart(key, &m).await.unwrap();
    assert!(
        s.list_multipart_uploads("big/")
            .await
            .unwrap()
            .contains(&(key.to_string(), id.clone()))
    );
    assert!(s.list_multipart_uploads("other/").await.unwrap().is_empty());
    let bounds = [(0, 5 * MIB), (5 * MIB, 10 * MIB), (10 * MIB, 12 * MIB)];
    let mut parts = Vec::new();
    for (i, (a, b)) in bounds.into_iter().enumerate() {
        let n = i as i32 + 1;
        let etag = s.upload_part(key, &id, n, data.slice(a..b).into()).await.unwrap();
        parts.push(CompletedPart { part_number: n, etag });
    }
    // Nothing is visible before completion.
    assert!(s.head(key).await.unwrap().is_none());
    let etag = s.complete_multipart(key, &id, &parts).await.unwrap();
    let info = s.head(key).await.unwrap().unwrap();
    assert_eq!(
        (info.size, info.etag.as_str(), info.meta),
        ((12 * MIB) as u64, etag.as_str(), Some(m))
    );
    // A read across the part boundary.
    let at = (5 * MIB - 100) as u64;
    assert_eq!(
        s.get_range(key, at, 200).await.unwrap(),
        data.slice(5 * MIB - 100..5 * MIB + 100)
    );
    assert_eq!(s.get_range(key, 0, (13 * MIB) as u64).await.unwrap(), data);
    assert!(
        !s.list_multipart_uploads("")
            .await
            .unwrap()
            .iter()
            .any(|(_, u)| *u == id)
    );
    if let Some(srv) = env.s3_server() {
        let out = srv
            .client
            .head_object()
            .bucket(&srv.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            out.metadata()
                .unwrap()
                .get("file-permissions")
                .map(String::as_str),
            Some("0100600")
        );
    }
}

async fn upload_part_copy_assembles_from_an_existing_object(env: &Env) {
    let s = &env.store;
    let m = meta(S_IFREG | 0o644, 5);
    let src = pattern(6 * MIB, 9);
    s.put_object("src/with space+ü.bin", src.clone(), &m)
        .await
        .unwrap();
    let m2 = meta(S_IFREG | 0o640, 6);
    let id = s.create_multipart("dst.bin", &m2).await.unwrap();
    let e1 = s
        .upload_part_copy("dst.bin", &id, 1, "src/with space+ü.bin", 0, (5 * MIB - 1) as u64)
        .await
        .unwrap();
    let e2 = s
        .upload_part("dst.bin", &id, 2, Bytes::from_static(b"tail").into())
        .await
        .unwrap();
    // A range past the end of the source is refused, not truncated.
    let err = s
        .upload_part_copy("dst.bin", &id, 3, "src/with space+ü.bin", 0, (7 * MIB) as u64)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Permanent { .. }), "{err:?}");
    let parts = [
        CompletedPart {
            part_number: 1,
            etag: e1,
        },
        CompletedPart {
            part_number: 2,
            etag: e2,
        },
    ];
    s.complete_multipart("dst.bin", &id, &parts).await.unwrap();
    let got = s.get_range("dst.bin", 0, (8 * MIB) as u64).await.unwrap();
    assert_eq!(got.len(), 5 * MIB + 4);
    assert_eq!(got.slice(..5 * MIB), src.slice(..5 * MIB));
    assert_eq!(&got[5 * MIB..], b"tail");
    assert_eq!(s.head("dst.bin").await.unwrap().unwrap().meta, Some(m2));
}

async fn copy_object_replaces_or_keeps_metadata(env: &Env) {
    let s = &env.store;
    let a = meta(S_IFREG | 0o644, 100);
    let b = ObjectAttrs {
        uid: 7,
        gid: 8,
        mode: S_IFREG | 0o600,
        mtime_ns: 200,
    };
    s.put_object("c/src.json", Bytes::from_static(b"{}"), &a)
        .await
        .unwrap();
    let e1 = s
        .copy_object("c/src.json", "c/replaced.json", Some(&b))
        .await
        .unwrap();
    assert!(!e1.is_empty());
    let info = s.head("c/replaced.json").await.unwrap().unwrap();
    assert_eq!((info.size, info.meta), (2, Some(b)));
    s.copy_object("c/src.json", "c/kept.json", None).await.unwrap();
    assert_eq!(s.head("c/kept.json").await.unwrap().unwrap().meta, Some(a));
    // In place: the way to change only the metadata.
    s.copy_object("c/src.json", "c/src.json", Some(&b)).await.unwrap();
    assert_eq!(s.head("c/src.json").await.unwrap().unwrap().meta, Some(b));
    assert_eq!(
        s.get_range("c/src.json", 0, 10).await.unwrap(),
        Bytes::from_static(b"{}")
    );
    assert!(matches!(
        s.copy_object("c/missing", "c/x", Some(&b)).await,
        Err(StoreError::NotFound)
    ));
    if let Some(srv) = env.s3_server() {
        let out = srv
            .client
            .head_object()
            .bucket(&srv.bucket)
            .key("c/replaced.json")
            .send()
            .await
            .unwrap();
        assert_eq!(
            out.metadata().unwrap().get("file-owner").map(String::as_str),
            Some("7")
        );
        assert_eq!(out.content_type(), Some("application/json"));
    }
}

async fn delete_is_idempotent(env: &Env) {
    let s = &env.store;
    let m = meta(S_IFREG | 0o644, 1);
    s.put_object("d1/d2/f", Bytes::from_static(b"x"), &m)
        .await
        .unwrap();
    s.put_object("keep/", Bytes::new(), &meta(S_IFDIR | 0o755, 1))
        .await
        .unwrap();
    s.put_object("keep/f", Bytes::from_static(b"x"), &m)
        .await
        .unwrap();
    s.delete_object("d1/d2/f").await.unwrap();
    assert!(s.head("d1/d2/f").await.unwrap().is_none());
    s.delete_object("d1/d2/f").await.unwrap();
    s.delete_object("never/was").await.unwrap();
    s.delete_object("keep/f").await.unwrap();
    // No empty implicit directory lingers as a common prefix.
    let page = s.list("", Some("/"), None, 1000).await.unwrap();
    assert!(!page.common_prefixes.contains(&"d1/".to_string()), "{page:?}");
    if let Some(root) = env.local_root() {
        assert!(!root.join("d1").exists(), "empty parents are removed");
        // A marker is an object of its own and outlives its children.
        assert!(root.join("keep").is_dir());
        assert!(s.head("keep/").await.unwrap().is_some());
        assert_eq!(page.common_prefixes, ["keep/"]);
        s.delete_object("keep/").await.unwrap();
        assert!(!root.join("keep").exists());
        s.delete_object("keep/").await.unwrap();
    }
}

async fn abort_is_idempotent_and_listing_tracks_uploads(env: &Env) {
    let s = &env.store;
    let m = meta(S_IFREG | 0o644, 1);
    let id1 = s.create_multipart("up/a", &m).await.unwrap();
    let id2 = s.create_multipart("up/b", &m).await.unwrap();
    let id3 = s.create_multipart("elsewhere/c", &m).await.unwrap();
    s.upload_part("up/a", &id1, 1, pattern(1000, 3).into())
        .await
        .unwrap();
    let mut listed = s.list_multipart_uploads("up/").await.unwrap();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("up/a".to_string(), id1.clone()),
            ("up/b".to_string(), id2.clone())
        ]
    );

    s.abort_multipart("up/a", &id1).await.unwrap();
    s.abort_multipart("up/a", &id1).await.unwrap();
    assert!(matches!(
        s.upload_part("up/a", &id1, 2, pattern(10, 1).into()).await,
        Err(StoreError::NotFound)
    ));
    let parts = [CompletedPart {
        part_number: 1,
        etag: "x".into(),
    }];
    assert!(matches!(
        s.complete_multipart("up/a", &id1, &parts).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.list_multipart_uploads("up/").await.unwrap(),
        [("up/b".to_string(), id2.clone())]
    );
    assert!(s.head("up/a").await.unwrap().is_none());
    s.abort_multipart("up/b", &id2).await.unwrap();
    s.abort_multipart("elsewhere/c", &id3).await.unwrap();
    assert!(s.list_multipart_uploads("").await.unwrap().is_empty());
}

async fn missing_things_map_to_not_found(env: &Env) {
    let s = &env.store;
    let m = meta(S_IFREG | 0o644, 1);
    assert!(s.head("no/such").await.unwrap().is_none());
    assert!(matches!(
        s.get_range("no/such", 0, 10).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.get_range("no/such", 0, 0).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.copy_object("no/such", "x", None).await,
        Err(StoreError::NotFound)
    ));
    // Upload ids in each store's own format, never issued.
    let bogus = if env.s3_server().is_some() {
        "3f1d2c4b-0000-4000-8000-000000000000"
    } else {
        "0123456789abcdef0123456789abcdef"
    };
    assert!(matches!(
        s.upload_part("k", bogus, 1, Bytes::from_static(b"x").into())
            .await,
        Err(StoreError::NotFound)
    ));
    let parts = [CompletedPart {
        part_number: 1,
        etag: "x".into(),
    }];
    assert!(matches!(
        s.complete_multipart("k", bogus, &parts).await,
        Err(StoreError::NotFound)
    ));
    s.abort_multipart("k", bogus).await.unwrap();
    s.abort_multipart("k", "not-even-an-id").await.unwrap();
    let id = s.create_multipart("k1", &m).await.unwrap();
    if env.local_root().is_some() {
        // S3 answers NoSuchUpload when the key does not match the upload id
        // (s3s-fs does not check).
        let res = s.upload_part("k2", &id, 1, Bytes::from_static(b"x").into()).await;
        assert!(matches!(res, Err(StoreError::NotFound)), "{res:?}");
    }
    s.abort_multipart("k1", &id).await.unwrap();
}

// ---- LocalStore only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_refuses_hostile_keys_without_touching_anything_outside() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    let s = LocalStore::new(&root).unwrap();
    let m = meta(S_IFREG | 0o644, 1);
    for key in [
        "../escape",
        "a/../../escape",
        "/etc/passwd",
        "a//b",
        "./a",
        "a/./b",
        ".bucketgate/meta/x",
        "",
    ] {
        for res in [
            s.put_object(key, Bytes::from_static(b"x"), &m).await.map(|_| ()),
            s.head(key).await.map(|_| ()),
            s.get_range(key, 0, 1).await.map(|_| ()),
            s.copy_object("ok", key, None).await.map(|_| ()),
            s.create_multipart(key, &m).await.map(|_| ()),
        ] {
            assert!(
                matches!(res, Err(StoreError::Permanent { ref code, .. }) if code == "InvalidKey"),
                "{key:?}: {res:?}"
            );
        }
    }
    assert!(!dir.path().join("escape").exists());
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(entries, ["bucket"]);
    // Listing a hostile prefix matches nothing rather than walking outside.
    assert_eq!(s.list("../", None, None, 1000).await.unwrap(), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_hides_its_own_files_and_refuses_key_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::new(dir.path()).unwrap();
    let m = meta(S_IFREG | 0o644, 1);
    let dm = meta(S_IFDIR | 0o755, 1);
    s.put_object("m/a", Bytes::from_static(b"a"), &m).await.unwrap();
    // A directory made by hand holding nothing is not a key.
    std::fs::create_dir_all(dir.path().join("implicit/only")).unwrap();
    let id = s.create_multipart("m/big", &m).await.unwrap();
    s.upload_part("m/big", &id, 1, Bytes::from_static(b"p").into())
        .await
        .unwrap();
    let all = s.list("", None, None, 1000).await.unwrap();
    let keys: Vec<_> = all.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["m/a"]);
    assert_eq!(
        s.list("", Some("/"), None, 1000).await.unwrap().common_prefixes,
        ["m/"]
    );
    assert_eq!(
        s.list_multipart_uploads("").await.unwrap(),
        [("m/big".to_string(), id)]
    );
    // Marker bodies must be empty; a key cannot be both an object and a directory.
    let res = s.put_object("x/", Bytes::from_static(b"x"), &dm).await;
    assert!(matches!(res, Err(StoreError::Permanent { .. })), "{res:?}");
    let err = s
        .put_object("m/a/deeper", Bytes::from_static(b"x"), &m)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "KeyConflict");
    let err = s.put_object("m", Bytes::from_static(b"x"), &m).await.unwrap_err();
    assert_eq!(err.code(), "KeyConflict");
}

/// Whoever may write the bucket directory could plant a symlink in it; the store
/// never follows one, so the share cannot reach outside its root through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_never_follows_a_symlink_below_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    let s = LocalStore::new(&root).unwrap();
    let m = meta(S_IFREG | 0o644, 1);
    s.put_object("ok", Bytes::from_static(b"ok"), &m).await.unwrap();
    std::os::unix::fs::symlink(&outside, root.join("dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("file")).unwrap();
    let refused = |res: Result<(), StoreError>, what: &str| {
        assert!(
            matches!(res, Err(StoreError::Permanent { ref code, .. }) if code == "InvalidKey"),
            "{what}: {res:?}"
        );
    };
    for key in ["dir/secret", "file"] {
        refused(s.head(key).await.map(|_| ()), key);
        refused(s.get_range(key, 0, 6).await.map(|_| ()), key);
        refused(s.copy_object(key, "copied", None).await.map(|_| ()), key);
        refused(
            s.put_object(key, Bytes::from_static(b"x"), &m).await.map(|_| ()),
            key,
        );
        refused(s.copy_object("ok", key, None).await.map(|_| ()), key);
        refused(s.delete_object(key).await, key);
    }
    refused(
        s.put_object("dir/new", Bytes::from_static(b"x"), &m)
            .await
            .map(|_| ()),
        "dir/new",
    );
    refused(
        s.list("dir/", Some("/"), None, 1000).await.map(|_| ()),
        "list dir/",
    );
    // A whole listing shows neither link nor anything behind it.
    let all = s.list("", None, None, 1000).await.unwrap();
    let keys: Vec<_> = all.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["ok"]);
    let mut names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["secret"]);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    assert!(
        root.join("file")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!root.join("copied").exists());
}

// ---- S3Store only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_outage_is_transient_and_quick_then_recovers() {
    let srv = S3TestServer::start().await;
    let s = srv.store().await;
    let m = meta(S_IFREG | 0o644, 1);
    s.put_object("before", Bytes::from_static(b"1"), &m)
        .await
        .unwrap();

    srv.handle.stop().await;
    assert!(!srv.handle.is_running());
    for _ in 0..2 {
        let t0 = Instant::now();
        let err = s.head("before").await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(t0.elapsed() < Duration::from_secs(15), "took {:?}", t0.elapsed());
        let err = s
            .put_object("during", Bytes::from_static(b"2"), &m)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }

    srv.handle.restart().await;
    assert!(srv.handle.is_running());
    assert_eq!(
        s.get_range("before", 0, 10).await.unwrap(),
        Bytes::from_static(b"1")
    );
    s.put_object("after", Bytes::from_static(b"3"), &m).await.unwrap();
    assert!(s.head("during").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_request_with_a_wrong_checksum_is_refused() {
    // What the store relies on: the server verifies the checksum it is sent.
    let srv = S3TestServer::start().await;
    let err = srv
        .client
        .put_object()
        .bucket(&srv.bucket)
        .key("corrupt")
        .body(Bytes::from_static(b"payload").into())
        .checksum_crc32_c(b64_std(&crc32c::crc32c(b"other").to_be_bytes()))
        .send()
        .await
        .unwrap_err();
    use aws_sdk_s3::error::ProvideErrorMetadata;
    assert_eq!(err.code(), Some("BadDigest"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_errors_keep_their_codes() {
    let srv = S3TestServer::start().await;
    // Wrong secret: the server refuses the signature.
    let mut settings = srv.settings();
    settings.credentials = Some((srv.access_key.clone(), "wrong-secret".into()));
    let s = bucketgate::remote::S3Store::new(settings).await.unwrap();
    let err = s
        .put_object("k", Bytes::from_static(b"x"), &meta(S_IFREG | 0o644, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Permanent { .. }), "{err:?}");
    assert_eq!(err.code(), "SignatureDoesNotMatch");
    // A missing bucket is a configuration error, never "object not found".
    let mut settings = srv.settings();
    settings.bucket = "no-such-bucket".into();
    let s = bucketgate::remote::S3Store::new(settings).await.unwrap();
    let err = s.list("", None, None, 10).await.unwrap_err();
    assert_eq!((err.is_transient(), err.code()), (false, "NoSuchBucket"));
    // HEAD answers carry no error code, so the startup check is HeadBucket.
    let err = s.check_bucket().await.unwrap_err();
    assert_eq!((err.is_transient(), err.code()), (false, "NoSuchBucket"));
    srv.store().await.check_bucket().await.unwrap();
    // Invalid settings are refused before any request, naming the setting.
    let mut settings = srv.settings();
    settings.storage_class = Some("CHEAP".into());
    assert!(
        bucketgate::remote::S3Store::new(settings)
            .await
            .unwrap_err()
            .contains("storage_class")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_gaps_that_compat_fills() {
    // Pins what bare s3s-fs 0.14.1 does, so a change in it shows up here.
    let srv = S3TestServer::start_raw().await;
    let s = srv.store().await;
    let err = s.list_multipart_uploads("").await.unwrap_err();
    // An answer, not an outage: the store is reachable (`/readyz`), and asking again
    // will not help.
    assert_eq!((err.code(), err.is_transient()), ("NotImplemented", false));
    let err = s
        .abort_multipart("k", "3f1d2c4b-0000-4000-8000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "AccessDenied");
    // Directory markers: a bare directory whose HEAD fails.
    s.put_object("dir/", Bytes::new(), &meta(S_IFDIR | 0o755, 1))
        .await
        .unwrap();
    assert_eq!(s.head("dir/").await.unwrap_err().code(), "HTTP500");
    // A PutObject refused for its checksum still replaced the object.
    let _ = srv
        .client
        .put_object()
        .bucket(&srv.bucket)
        .key("corrupt")
        .body(Bytes::from_static(b"payload").into())
        .checksum_crc32_c(b64_std(&crc32c::crc32c(b"other").to_be_bytes()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(std::fs::read(srv.object_path("corrupt")).unwrap(), b"payload");

    // Markers are missing from listings: only the "corrupt" file is listed.
    assert_eq!(s.list("", None, None, 1000).await.unwrap().objects.len(), 1);
    let top = s.list("", Some("/"), None, 1000).await.unwrap();
    assert!(top.common_prefixes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_enforces_s3s_multipart_checksum_contract() {
    // The S3Store multipart scenarios pass only if it sends what S3 demands: this
    // pins that the harness really demands it.
    use aws_sdk_s3::error::ProvideErrorMetadata;
    use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart as Part};
    let srv = S3TestServer::start().await;
    let c = &srv.client;
    let up = c
        .create_multipart_upload()
        .bucket(&srv.bucket)
        .key("k")
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let part = c
        .upload_part()
        .bucket(&srv.bucket)
        .key("k")
        .upload_id(id)
        .part_number(1)
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .body(Bytes::from_static(b"abc").into())
        .send()
        .await
        .unwrap();
    let etag = part.e_tag().unwrap().to_owned();
    let complete = |crc: Option<String>| {
        let p = Part::builder()
            .part_number(1)
            .e_tag(&etag)
            .set_checksum_crc32_c(crc)
            .build();
        c.complete_multipart_upload()
            .bucket(&srv.bucket)
            .key("k")
            .upload_id(id)
            .multipart_upload(CompletedMultipartUpload::builder().parts(p).build())
            .send()
    };
    let err = complete(None).await.unwrap_err();
    assert_eq!(err.code(), Some("InvalidRequest"), "{err:?}");
    let err = complete(Some(b64_std(&crc32c::crc32c(b"xyz").to_be_bytes())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidPart"), "{err:?}");
    let listed = c
        .list_parts()
        .bucket(&srv.bucket)
        .key("k")
        .upload_id(id)
        .send()
        .await
        .unwrap();
    let crc = b64_std(&crc32c::crc32c(b"abc").to_be_bytes());
    assert_eq!(listed.parts()[0].checksum_crc32_c(), Some(crc.as_str()));
    assert_eq!(listed.parts()[0].e_tag(), Some(etag.as_str()));
    complete(Some(crc)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_times_out_on_a_server_that_never_answers() {
    // Accepts connections and never replies: the read timeout must end the call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let mut settings = bucketgate::remote::S3Settings::new("stalled");
    settings.region = Some("us-east-1".into());
    settings.endpoint = Some(format!("http://{addr}"));
    settings.path_style = true;
    settings.credentials = Some(("ak".into(), "sk".into()));
    settings.read_timeout = Duration::from_millis(500);
    settings.min_upload_bytes_per_sec = 1 << 20;
    settings.max_attempts = 1;
    let s_settings = settings.clone();
    let s = bucketgate::remote::S3Store::new(settings).await.unwrap();
    let t0 = Instant::now();
    let err = s.head("k").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    // An upload is bounded by read_timeout plus its body at the minimum rate.
    let t0 = Instant::now();
    let err = s
        .put_object("k", pattern(64 << 10, 1), &meta(S_IFREG | 0o644, 1))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    // ...and not by the fixed read timeout: at 16 KiB/s, 64 KiB get 0.5 + 4 s.
    let mut settings = s_settings.clone();
    settings.min_upload_bytes_per_sec = 16 << 10;
    let slow = bucketgate::remote::S3Store::new(settings).await.unwrap();
    let t0 = Instant::now();
    let err = slow
        .put_object("k", pattern(64 << 10, 1), &meta(S_IFREG | 0o644, 1))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let took = t0.elapsed();
    assert!(
        took > Duration::from_secs(3) && took < Duration::from_secs(15),
        "took {took:?}"
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_concurrent_writers_never_mix_data_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
    for round in 0..5 {
        let mut set = tokio::task::JoinSet::new();
        for i in 1..=16u32 {
            let s = s.clone();
            set.spawn(async move {
                // uid = body length: head must always report a matching pair.
                let m = ObjectAttrs {
                    uid: i,
                    gid: 1,
                    mode: S_IFREG | 0o644,
                    mtime_ns: 1,
                };
                s.put_object("same", pattern(i as usize, 1), &m).await.unwrap();
                // Meanwhile, siblings come and go: deletes prune empty directories
                // while other writers create files in them.
                let k = format!("r/a/{round}-{i}");
                s.put_object(&k, Bytes::from_static(b"x"), &m).await.unwrap();
                s.delete_object(&k).await.unwrap();
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        let info = s.head("same").await.unwrap().unwrap();
        assert_eq!(
            info.meta.map(|m| u64::from(m.uid)),
            Some(info.size),
            "round {round}"
        );
    }
    assert!(!dir.path().join("r").exists());
}
