//! Buckets that already hold objects: they appear as files and directories, cold
//! reads come from the store by ranged GETs, the cache stays within its capacity
//! without ever dropping dirty data, and `refresh` picks up changes made by others.
//! Store: s3s-fs on loopback; objects written with a plain aws-sdk-s3 client.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;

use bucketgate::admin::RefreshRequest;
use bucketgate::config::ByteSize;
use common::gateway::{config, flush, metric_sum, start};
use common::nfs::*;
use common::s3server::S3TestServer;

fn s3_config(srv: &S3TestServer, dir: &std::path::Path) -> bucketgate::config::Config {
    let mut cfg = config(dir, &format!("s3://{}/pre/", srv.bucket));
    cfg.shares[0].endpoint = Some(srv.endpoint.clone());
    cfg.shares[0].path_style = true;
    cfg.shares[0].region = Some("us-east-1".into());
    cfg
}

fn creds(srv: &S3TestServer) -> Option<(String, String)> {
    Some((srv.access_key.clone(), srv.secret_key.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_objects_list_completely_with_their_attributes() {
    let srv = Arc::new(S3TestServer::start().await);
    // 10,000 objects: 4 prefixes × 2,500, plus marker-less nested prefixes; every
    // tenth carries POSIX metadata.
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..32 {
        let srv = srv.clone();
        tasks.spawn(async move {
            for i in (w..10_000).step_by(32) {
                let key = format!("pre/d{}/f{i:05}", i % 4);
                let meta = (i % 10 == 0).then_some(("1500", "1600", "0100640"));
                srv.their_put(&key, &vec![b'x'; i % 7], meta).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    srv.their_put("pre/deep/er/than/that.txt", b"deep", None).await;

    let tmp = tempfile::tempdir().unwrap();
    let gw = start(s3_config(&srv, tmp.path()), creds(&srv)).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let mut top = list_names(&mut c, &root).await;
    top.sort();
    assert_eq!(top, ["d0", "d1", "d2", "d3", "deep"]);
    let mut seen = 0;
    for d in ["d0", "d1", "d2", "d3"] {
        let dh = lookup(&mut c, &root, d).await.unwrap();
        let names = list_names(&mut c, &dh).await;
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(
            names.len(),
            2_500,
            "{d}: every object, through READDIRPLUS pagination"
        );
        assert_eq!(unique.len(), 2_500, "{d}: each once");
        seen += names.len();
    }
    assert_eq!(seen, 10_000);
    // Attributes: from metadata where the object has it, share defaults otherwise.
    let d0 = lookup(&mut c, &root, "d0").await.unwrap();
    let with = lookup(&mut c, &d0, "f00000").await.unwrap();
    let a = getattr(&mut c, &with).await.unwrap();
    assert_eq!((a.uid, a.gid, a.mode, a.size), (1500, 1600, 0o640, 0));
    let without = lookup(&mut c, &d0, "f00004").await.unwrap();
    let a = getattr(&mut c, &without).await.unwrap();
    assert_eq!((a.uid, a.gid, a.mode, a.size), (65534, 65534, 0o666, 4));
    // Directories that exist only as key prefixes resolve all the way down.
    let mut h = root.clone();
    for part in ["deep", "er", "than"] {
        h = lookup(&mut c, &h, part).await.unwrap();
    }
    let f = lookup(&mut c, &h, "that.txt").await.unwrap();
    assert_eq!(read_all(&mut c, &f).await, b"deep");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_reads_fetch_ranges_and_sequential_reads_stream() {
    let srv = S3TestServer::start().await;
    let data = body(40 << 20, 11);
    srv.their_put("pre/big.bin", &data, None).await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(s3_config(&srv, tmp.path()), creds(&srv)).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let fh = lookup(&mut c, &root, "big.bin").await.unwrap();
    // Random offsets, cold: each equals the source.
    for (i, off) in [17_000_001u64, 3, 39 << 20, (20 << 20) - 7, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let r = c
            .read(&nfs3_types::nfs3::READ3args {
                file: fh.clone(),
                offset: off,
                count: 100_000,
            })
            .await
            .unwrap();
        let ok = match r {
            nfs3_types::nfs3::Nfs3Result::Ok(ok) => ok,
            nfs3_types::nfs3::Nfs3Result::Err((st, _)) => panic!("read {i}: {st:?}"),
        };
        let end = (off as usize + 100_000).min(data.len());
        assert_eq!(&ok.data[..], &data[off as usize..end], "read {i} at {off}");
    }
    // The whole file, sequentially.
    assert!(read_all(&mut c, &fh).await == data);
    let m = gw.gateway.metrics.render();
    assert!(
        m.contains("bucketgate_cache_misses_total{share=\"data\"}"),
        "misses counted"
    );
    let misses = metric_sum(&m, "bucketgate_cache_misses_total", "share=\"data\"");
    assert!(misses >= 1.0);
    // Every READ looks the file up; all but the first find it in memory.
    let lookups = |r| metric_sum(&m, "bucketgate_attr_cache_lookups_total", r);
    assert!(lookups("result=\"hit\"") > lookups("result=\"miss\""), "{m}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cache_keeps_every_dirty_byte_and_serves_correct_data() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = s3_config(&srv, tmp.path());
    // 16 MiB of cache for 64 MiB of files: the 64 MiB / 512 MiB scaled down
    // so a debug build uploads it in seconds; the ratio is what matters.
    cfg.cache.capacity = ByteSize(16 << 20);
    cfg.cache.dirty_limit = Some(ByteSize(12 << 20));
    let gw = start(cfg, creds(&srv)).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let mut files = HashMap::new();
    for i in 0..8u64 {
        let data = body(8 << 20, 100 + i);
        put_file(&mut c, &root, &format!("f{i}"), &data).await;
        files.insert(format!("f{i}"), data);
    }
    flush(&gw).await;
    let cache = gw.gateway.shares[0].share.cache.clone();
    cache.run_evictions();
    assert!(
        cache.stored_bytes() <= 16 << 20,
        "cache holds {} bytes",
        cache.stored_bytes()
    );
    assert!(cache.evicted().0 > 0, "clean data was evicted");
    for (name, data) in &files {
        let fh = lookup(&mut c, &root, name).await.unwrap();
        assert!(read_all(&mut c, &fh).await == *data, "{name} reads back right");
    }
    for (name, data) in &files {
        // The stored object itself (s3s-fs keeps it as a plain file).
        let stored = std::fs::read(srv.object_path(&format!("pre/{name}"))).unwrap();
        assert!(stored == *data, "{name} in the bucket");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_picks_up_what_other_clients_added_changed_and_deleted() {
    let srv = S3TestServer::start().await;
    srv.their_put("pre/stays.txt", b"v1", None).await;
    srv.their_put("pre/changes.txt", b"old", None).await;
    srv.their_put("pre/goes.txt", b"bye", None).await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(s3_config(&srv, tmp.path()), creds(&srv)).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let ch = lookup(&mut c, &root, "changes.txt").await.unwrap();
    assert_eq!(read_all(&mut c, &ch).await, b"old");
    // Looked at, so the gateway holds their attributes: a HEAD would otherwise find
    // the deletion before any listing does.
    lookup(&mut c, &root, "goes.txt").await.unwrap();
    lookup(&mut c, &root, "stays.txt").await.unwrap();
    let mine = put_file(&mut c, &root, "mine.txt", b"local, not uploaded yet").await;

    srv.their_put("pre/changes.txt", b"new and longer", None).await;
    srv.their_put("pre/added.txt", b"hello", None).await;
    srv.client
        .delete_object()
        .bucket(&srv.bucket)
        .key("pre/goes.txt")
        .send()
        .await
        .unwrap();

    // Until refreshed, the gateway serves what it listed.
    let mut names = list_names(&mut c, &root).await;
    names.sort();
    assert_eq!(names, ["changes.txt", "goes.txt", "mine.txt", "stays.txt"]);
    let api = bucketgate::gateway::admin_api(&gw.gateway);
    let report = api
        .refresh(RefreshRequest {
            path: Some("/data".into()),
            recursive: true,
        })
        .await
        .unwrap();
    assert_eq!(report.entries_changed, 3);
    let mut names = list_names(&mut c, &root).await;
    names.sort();
    assert_eq!(
        names,
        ["added.txt", "changes.txt", "mine.txt", "stays.txt"],
        "a local file not yet uploaded stays"
    );
    assert_eq!(
        read_all(&mut c, &ch).await,
        b"new and longer",
        "same handle, new content"
    );
    assert_eq!(read_all(&mut c, &mine).await, b"local, not uploaded yet");
    gw.shutdown().await;
}

/// `cache_stale_after` on tokio's clock, paused: a directory is listed again only once
/// its listing is older than that, and never because the wall clock moved.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_directory_is_listed_again_only_once_older_than_cache_stale_after() {
    use bucketgate::remote::{LocalStore, ObjectAttrs, ObjectStore};
    use bucketgate::share::ReadThrough;
    use bucketgate_cache::{Cache, CacheOptions, ROOT_ID};
    use std::time::Duration;

    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(tmp.path().join("bucket")).unwrap());
    let cache = Arc::new(Cache::open(&tmp.path().join("cache"), CacheOptions::default()).unwrap());
    let ttl = Duration::from_secs(300);
    let rt = ReadThrough::new(cache.clone(), store.clone(), String::new(), Some(ttl), None);
    let meta = ObjectAttrs {
        uid: 0,
        gid: 0,
        mode: 0o100644,
        mtime_ns: 1,
    };
    let put = |key: &'static str| {
        let store = store.clone();
        async move {
            store
                .put_object(key, bytes::Bytes::from_static(b"x"), &meta)
                .await
                .unwrap();
        }
    };
    let visible = |name: &str| cache.peek(ROOT_ID, name.as_bytes()).unwrap().is_some();

    put("first").await;
    rt.ensure_listed(ROOT_ID).await.unwrap();
    assert!(visible("first"));
    put("second").await;
    tokio::time::advance(ttl - Duration::from_secs(1)).await;
    rt.ensure_listed(ROOT_ID).await.unwrap();
    assert!(!visible("second"), "listed again before cache_stale_after");
    tokio::time::advance(Duration::from_secs(2)).await;
    rt.ensure_listed(ROOT_ID).await.unwrap();
    assert!(visible("second"), "not listed again after cache_stale_after");
    // A listing resets the age.
    put("third").await;
    tokio::time::advance(ttl / 2).await;
    rt.ensure_listed(ROOT_ID).await.unwrap();
    assert!(!visible("third"));
}

/// A cold sequential read of 1 GiB (READTHROUGH_COLD_MIB to change) streams: one READ
/// at a time, as a simple reader does, and read-ahead keeps the fetches ahead of it, so
/// nearly every READ finds its data already cached; the bytes equal the object's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_sequential_read_of_a_large_object_streams_ahead_of_the_reader() {
    let mib: usize = std::env::var("READTHROUGH_COLD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let srv = S3TestServer::start().await;
    // Written straight into the server's directory: 1 GiB through a debug-built SDK
    // would take most of the test's time.
    let path = srv.object_path("pre/large.bin");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut want = 0u32; // CRC32C of the whole object
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..mib {
            let chunk = body(1 << 20, i as u64);
            want = crc32c::crc32c_append(want, &chunk);
            f.write_all(&chunk).unwrap();
        }
    }
    srv.set_etag("pre/large.bin", &format!("{want:08x}"));
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(s3_config(&srv, tmp.path()), creds(&srv)).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let fh = lookup(&mut c, &root, "large.bin").await.unwrap();
    let mut got = 0u32;
    let (mut offset, mut reads) = (0u64, 0u64);
    loop {
        let r = c
            .read(&nfs3_types::nfs3::READ3args {
                file: fh.clone(),
                offset,
                count: 1 << 20,
            })
            .await
            .unwrap();
        let ok = match r {
            nfs3_types::nfs3::Nfs3Result::Ok(ok) => ok,
            nfs3_types::nfs3::Nfs3Result::Err((st, _)) => panic!("read at {offset}: {st:?}"),
        };
        got = crc32c::crc32c_append(got, &ok.data);
        offset += ok.data.len() as u64;
        reads += 1;
        if ok.eof || ok.data.is_empty() {
            break;
        }
    }
    assert_eq!(offset, (mib as u64) << 20);
    assert_eq!(got, want, "the bytes read equal the object");
    let m = gw.gateway.metrics.render();
    let misses = metric_sum(&m, "bucketgate_cache_misses_total", "share=\"data\"");
    assert!(
        misses <= (reads as f64 * 0.1).max(2.0),
        "{misses} of {reads} READs waited for a fetch: read-ahead did not keep ahead"
    );
    gw.shutdown().await;
}

/// A directory of 100,000 objects lists completely: ListObjectsV2 pages of 1,000 into
/// the namespace, then READDIRPLUS pages through all of it, each name once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_100000_objects_lists_completely() {
    let srv = S3TestServer::start().await;
    // Written straight into the server's directory: 100,000 PUTs would take minutes.
    let dir = srv.object_path("pre/huge");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..100_000 {
        std::fs::write(dir.join(format!("f{i:06}")), b"x").unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(s3_config(&srv, tmp.path()), creds(&srv)).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let huge = lookup(&mut c, &root, "huge").await.unwrap();
    let names = list_names(&mut c, &huge).await;
    let unique: std::collections::HashSet<&String> = names.iter().collect();
    assert_eq!((names.len(), unique.len()), (100_000, 100_000));
    assert!(unique.contains(&"f099999".to_string()));
    let fh = lookup(&mut c, &huge, "f054321").await.unwrap();
    assert_eq!(read_all(&mut c, &fh).await, b"x");
    gw.shutdown().await;
}

/// Readers of the same cold block at the same moment share one GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_of_a_cold_block_share_one_get() {
    let srv = S3TestServer::start().await;
    let data = body(4 << 20, 5);
    srv.their_put("pre/shared.bin", &data, None).await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(s3_config(&srv, tmp.path()), creds(&srv)).await;
    let gets = || {
        let m = gw.gateway.metrics.render();
        metric_sum(
            &m,
            "bucketgate_store_request_duration_seconds_count",
            "\"GetObject\"",
        )
    };
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let fh = lookup(&mut c, &root, "shared.bin").await.unwrap();
    let before = gets();
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (addr, fh) = (gw.nfs_addr, fh.clone());
        readers.spawn(async move {
            let mut c = mount(addr).await;
            let r = c
                .read(&nfs3_types::nfs3::READ3args {
                    file: fh,
                    offset: 2 << 20,
                    count: 65536,
                })
                .await
                .unwrap();
            match r {
                nfs3_types::nfs3::Nfs3Result::Ok(ok) => ok.data.to_vec(),
                nfs3_types::nfs3::Nfs3Result::Err((st, _)) => panic!("read: {st:?}"),
            }
        });
    }
    while let Some(r) = readers.join_next().await {
        assert!(r.unwrap() == data[2 << 20..(2 << 20) + 65536]);
    }
    assert_eq!(gets() - before, 1.0, "six readers, one GET");
    gw.shutdown().await;
}

/// A sequential reader with several READs in flight (as the Linux client keeps 16)
/// has them arrive out of order; read-ahead still follows it, so the object comes in
/// whole pieces rather than one GET per READ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_reader_with_reads_out_of_order_still_gets_read_ahead() {
    const MIB: u64 = 1 << 20;
    let srv = S3TestServer::start().await;
    let data = body(64 << 20, 9);
    srv.their_put("pre/stream.bin", &data, None).await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(s3_config(&srv, tmp.path()), creds(&srv)).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let fh = lookup(&mut c, &root, "stream.bin").await.unwrap();
    // Four connections take every fourth MiB, each in order: together one reader
    // moving forward, its READs reaching the gateway out of order.
    let mut readers = tokio::task::JoinSet::new();
    for lane in 0..4u64 {
        let (addr, fh) = (gw.nfs_addr, fh.clone());
        readers.spawn(async move {
            let mut c = mount(addr).await;
            let mut got = Vec::new();
            for offset in (lane * MIB..64 * MIB).step_by(4 * MIB as usize) {
                let r = c
                    .read(&nfs3_types::nfs3::READ3args {
                        file: fh.clone(),
                        offset,
                        count: MIB as u32,
                    })
                    .await
                    .unwrap();
                match r {
                    nfs3_types::nfs3::Nfs3Result::Ok(ok) => got.push((offset, ok.data.to_vec())),
                    nfs3_types::nfs3::Nfs3Result::Err((st, _)) => panic!("read at {offset}: {st:?}"),
                }
            }
            got
        });
    }
    while let Some(r) = readers.join_next().await {
        for (offset, bytes) in r.unwrap() {
            let at = offset as usize;
            assert!(bytes == data[at..at + MIB as usize], "bytes at {offset}");
        }
    }
    let m = gw.gateway.metrics.render();
    let gets = metric_sum(
        &m,
        "bucketgate_store_request_duration_seconds_count",
        "\"GetObject\"",
    );
    let fetched = metric_sum(&m, "bucketgate_store_downloaded_bytes_total", "");
    assert_eq!(fetched, (64 * MIB) as f64, "no byte fetched twice");
    // 8 pieces of 8 MiB, plus the first READs' own ranges before read-ahead starts.
    assert!(gets <= 16.0, "{gets} GETs for 64 READs");
    gw.shutdown().await;
}
