//! kill -9 of the real binary while the cache evicts clean data, and while a refresh
//! re-lists the bucket. After the restart every file reads as the bucket holds it,
//! committed data is kept and reaches the bucket, each object appears once, and a
//! listing cut short is simply done again.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::child::{ChildGateway, binary, bucket_contents};
use common::gateway::metric_sum;
use common::nfs::*;
use common::s3server::S3TestServer;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Puts `keys` with bodies from `make`, 16 at a time.
async fn fill_bucket(s3: &Arc<S3TestServer>, keys: Vec<String>, make: fn(usize) -> Vec<u8>) {
    let mut tasks = tokio::task::JoinSet::new();
    let keys = Arc::new(keys);
    for w in 0..16 {
        let (s3, keys) = (s3.clone(), keys.clone());
        tasks.spawn(async move {
            for i in (w..keys.len()).step_by(16) {
                s3.client
                    .put_object()
                    .bucket(&s3.bucket)
                    .key(&keys[i])
                    .body(ByteStream::from(make(i)))
                    .send()
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Reads `name` in `dir` whole; the gateway may be killed under it, so bounded.
async fn read_named(addr: std::net::SocketAddr, dir: &str, name: &str) -> Option<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut c = mount(addr).await;
        let root = c.root_nfs_fh3();
        let d = lookup(&mut c, &root, dir).await.ok()?;
        let fh = lookup(&mut c, &d, name).await.ok()?;
        Some(read_all(&mut c, &fh).await)
    })
    .await
    .ok()
    .flatten()
}

fn object_body(i: usize) -> Vec<u8> {
    body((1 << 20) + i * 977, i as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_eviction_keeps_cached_data_right_and_committed_data_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = Arc::new(S3TestServer::start().await);
    let objects = 72; // ~72 MiB through a 64 MiB cache: reads keep evicting
    fill_bucket(
        &s3,
        (0..objects).map(|i| format!("obj/o{i:02}")).collect(),
        object_body,
    )
    .await;
    let mut gw = ChildGateway::new(
        tmp.path(),
        &s3,
        "capacity = \"64MiB\"\nupload_delay = \"1h\"\nmax_dirty_age = \"1h\"",
        "",
    );
    blocking(|| gw.start());
    // Committed, never uploaded before the kills: must never be evicted or lost.
    let mine = body(3 << 20, 4242);
    {
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        put_file(&mut c, &root, "mine", &mine).await;
    }
    for round in 0..2u64 {
        let addr = gw.nfs_addr;
        let reader = tokio::spawn(async move {
            for i in 0..objects {
                if read_named(addr, "obj", &format!("o{i:02}")).await.is_none() {
                    return;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(1500 + 1000 * round)).await;
        blocking(|| gw.kill9());
        reader.abort();
        blocking(|| gw.start());
        for i in 0..objects {
            let got = read_named(gw.nfs_addr, "obj", &format!("o{i:02}")).await;
            assert!(
                got == Some(object_body(i)),
                "round {round}: obj/o{i:02} reads wrong"
            );
        }
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        let fh = lookup(&mut c, &root, "mine").await.unwrap();
        assert!(
            read_all(&mut c, &fh).await == mine,
            "round {round}: committed file changed"
        );
        // Reading it all through the small cache evicted (this process's counter).
        let m = bucketgate::admin::AdminClient::new(gw.admin_addr)
            .metrics_text()
            .await
            .unwrap();
        let evicted = metric_sum(&m, "bucketgate_cache_evictions_total", "");
        assert!(evicted > 0.0, "round {round}: nothing was evicted");
    }
    blocking(|| gw.flush_wait(120));
    let got = bucket_contents(&s3).await;
    assert!(got.get("mine") == Some(&mine));
    blocking(|| gw.stop());
}

fn small_body(i: usize) -> Vec<u8> {
    format!("object {i}\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_refresh_lists_every_object_once_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = Arc::new(S3TestServer::start().await);
    let first: Vec<String> = (0..900).map(|i| format!("d{}/f{i:04}", i % 3)).collect();
    fill_bucket(&s3, first.clone(), small_body).await;
    let mut gw = ChildGateway::new(
        tmp.path(),
        &s3,
        "upload_delay = \"1h\"\nmax_dirty_age = \"1h\"",
        "",
    );
    blocking(|| gw.start());
    {
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        for d in ["d0", "d1", "d2"] {
            let dh = lookup(&mut c, &root, d).await.unwrap();
            assert_eq!(list_names(&mut c, &dh).await.len(), 300);
        }
        // A local file in a listed directory, committed, not uploaded.
        let d0 = lookup(&mut c, &root, "d0").await.unwrap();
        put_file(&mut c, &d0, "local.txt", b"mine, not in the bucket yet").await;
    }
    // Another client adds 900 more; a refresh of all of it is cut by kill -9.
    let more: Vec<String> = (0..900).map(|i| format!("d{}/g{i:04}", i % 3)).collect();
    fill_bucket(&s3, more, small_body).await;
    let admin = gw.admin_addr.to_string();
    let mut refresh = Command::new(binary())
        .args(["refresh", "--recursive", "--admin", &admin, "/data"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    blocking(|| gw.kill9());
    let _ = refresh.wait();
    blocking(|| gw.start());
    let out = blocking(|| {
        Command::new(binary())
            .args(["refresh", "--recursive", "--admin", &admin, "/data"])
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    for d in ["d0", "d1", "d2"] {
        let dh = lookup(&mut c, &root, d).await.unwrap();
        let names = list_names(&mut c, &dh).await;
        let unique: std::collections::HashSet<_> = names.iter().collect();
        let want = 600 + usize::from(d == "d0");
        assert_eq!((names.len(), unique.len()), (want, want), "{d}: each object once");
    }
    let d0 = lookup(&mut c, &root, "d0").await.unwrap();
    let fh = lookup(&mut c, &d0, "local.txt").await.unwrap();
    assert_eq!(read_all(&mut c, &fh).await, b"mine, not in the bucket yet");
    let fh = lookup(&mut c, &d0, "g0003").await.unwrap();
    assert_eq!(read_all(&mut c, &fh).await, small_body(3));
    blocking(|| gw.flush_wait(120));
    let got = bucket_contents(&s3).await;
    assert_eq!(
        got.get("d0/local.txt").map(Vec::as_slice),
        Some(&b"mine, not in the bucket yet"[..])
    );
    blocking(|| gw.stop());
}
