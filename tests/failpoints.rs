//! The uploader stopped dead at each named step (a failpoint that ends the step as a
//! crash would: no clean-up), then the gateway restarted in-process on the same
//! cache: the bucket ends up equal to the files, no object is lost on the way, no
//! multipart upload is left behind.
//!
//! cargo test --features failpoints --test failpoints
#![cfg(feature = "failpoints")]

// This suite uses only some of the shared helpers.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bucketgate::config::{ByteSize, Config};
use bucketgate::gateway::Running;
use bucketgate::remote::ObjectStore;
use common::child::{bucket_contents, bucket_keys, multipart_uploads};
use common::gateway::{config, flush, start_with_store};
use common::nfs::*;
use common::s3server::S3TestServer;

struct Rig {
    s3: S3TestServer,
    cfg: Config,
    _tmp: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let s3 = S3TestServer::start().await;
        let mut cfg = config(tmp.path(), &format!("s3://{}/", s3.bucket));
        cfg.upload.multipart_threshold = ByteSize(5 << 20);
        cfg.upload.part_size = ByteSize(5 << 20);
        cfg.upload.part_concurrency = 1;
        Rig { s3, cfg, _tmp: tmp }
    }

    async fn start(&self) -> Running {
        let store: Arc<dyn ObjectStore> = Arc::new(self.s3.store().await);
        start_with_store(self.cfg.clone(), store).await
    }
}

/// Waits until an upload has stopped at `point`.
async fn stopped_at(gw: &Running, point: &str) {
    let up = &gw.gateway.shares[0].uploader;
    up.flush_now(None);
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if up
                .failing()
                .iter()
                .any(|f| f.error_code == "Injected" && f.last_error.contains(point))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never reached {point}: {:?}", up.failing()));
}

/// Stops the gateway (as a crash at the failpoint would leave it), clears every
/// failpoint, starts again on the same cache, flushes; returns the bucket.
async fn restart_and_flush(rig: &Rig, gw: Running, point: &str) -> (Running, BTreeMap<String, Vec<u8>>) {
    gw.shutdown().await;
    fail::cfg(point, "off").unwrap();
    let gw = rig.start().await;
    flush(&gw).await;
    let bucket = bucket_contents(&rig.s3).await;
    assert!(
        multipart_uploads(&rig.s3).await.is_empty(),
        "no multipart upload is left after {point}"
    );
    (gw, bucket)
}

fn model(entries: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    entries.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_done_but_not_recorded() {
    let scenario = fail::FailScenario::setup();
    let rig = Rig::new().await;
    let point = "upload::after_store_before_record";
    fail::cfg(point, "return").unwrap();
    let gw = rig.start().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let data = body(70_000, 1);
    let fh = put_file(&mut c, &root, "a", &data).await;
    stopped_at(&gw, point).await;
    assert_eq!(bucket_keys(&rig.s3).await, ["a"], "the object was written");
    let (gw, bucket) = restart_and_flush(&rig, gw, point).await;
    assert!(bucket == model(&[("a", &data)]));
    let mut c = mount(gw.nfs_addr).await;
    assert_eq!(read_all(&mut c, &fh).await, data);
    gw.shutdown().await;
    scenario.teardown();
}

/// Uploads `x`, renames it to `y`, stops the rename at `point`.
async fn rename_stopped_at(point: &str) {
    let rig = Rig::new().await;
    let gw = rig.start().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let data = body(30_000, 2);
    put_file(&mut c, &root, "x", &data).await;
    flush(&gw).await;
    fail::cfg(point, "return").unwrap();
    rename(&mut c, &root, "x", &root, "y").await.unwrap();
    stopped_at(&gw, point).await;
    let mid = bucket_contents(&rig.s3).await;
    assert!(
        mid == model(&[("x", &data), ("y", &data)]),
        "copied, the source not deleted yet: {:?}",
        mid.keys().collect::<Vec<_>>()
    );
    let (gw, bucket) = restart_and_flush(&rig, gw, point).await;
    assert!(
        bucket == model(&[("y", &data)]),
        "{:?}",
        bucket.keys().collect::<Vec<_>>()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_copied_but_not_recorded() {
    let scenario = fail::FailScenario::setup();
    rename_stopped_at("upload::after_copy_before_record").await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_recorded_but_source_not_deleted() {
    let scenario = fail::FailScenario::setup();
    rename_stopped_at("upload::after_record_before_delete").await;
    scenario.teardown();
}

/// A 17 MiB file in 5 MiB parts, one at a time, stopped at `point`.
async fn multipart_stopped_at(point: &str) {
    let rig = Rig::new().await;
    fail::cfg(point, "return").unwrap();
    let gw = rig.start().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let data = body(17 << 20, 3);
    put_file(&mut c, &root, "big", &data).await;
    stopped_at(&gw, point).await;
    assert!(
        !multipart_uploads(&rig.s3).await.is_empty(),
        "the upload is left open"
    );
    assert!(bucket_keys(&rig.s3).await.is_empty(), "not completed");
    let (gw, bucket) = restart_and_flush(&rig, gw, point).await;
    assert_eq!(bucket.len(), 1);
    assert!(bucket["big"] == data, "the object equals the file");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_stopped_between_parts() {
    let scenario = fail::FailScenario::setup();
    multipart_stopped_at("upload::multipart::between_parts").await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_stopped_before_complete() {
    let scenario = fail::FailScenario::setup();
    multipart_stopped_at("upload::multipart::before_complete").await;
    scenario.teardown();
}

/// A WRITE stopped between its data and its metadata answers an error; the file
/// keeps its committed content, before and after a restart, and is uploaded so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_stopped_between_data_and_metadata() {
    let scenario = fail::FailScenario::setup();
    let rig = Rig::new().await;
    let gw = rig.start().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let data = body(10_000, 4);
    let fh = put_file(&mut c, &root, "w", &data).await;
    let point = "cache::write::after_data";
    fail::cfg(point, "return").unwrap();
    let r = write_at(
        &mut c,
        &fh,
        10_000,
        b"lost",
        nfs3_types::nfs3::stable_how::FILE_SYNC,
    )
    .await;
    assert_eq!(r.err(), Some(nfs3_types::nfs3::nfsstat3::NFS3ERR_IO));
    assert_eq!(read_all(&mut c, &fh).await, data);
    let (gw, bucket) = restart_and_flush(&rig, gw, point).await;
    assert!(bucket == model(&[("w", &data)]));
    let mut c = mount(gw.nfs_addr).await;
    assert_eq!(read_all(&mut c, &fh).await, data);
    gw.shutdown().await;
    scenario.teardown();
}

/// An overwrite that reached the store but whose record a crash lost, then the file
/// removed before the upload is retried: the object there is the gateway's own
/// (its metadata says so), not another client's, and is deleted. (Found by the soak
/// test once deletes became conditional.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_not_recorded_then_removed_leaves_nothing() {
    let scenario = fail::FailScenario::setup();
    let rig = Rig::new().await;
    let gw = rig.start().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    put_file(&mut c, &root, "a", &body(5_000, 5)).await;
    flush(&gw).await;
    let point = "upload::after_store_before_record";
    fail::cfg(point, "return").unwrap();
    let fh = lookup(&mut c, &root, "a").await.unwrap();
    write_all(&mut c, &fh, &body(6_000, 6)).await;
    stopped_at(&gw, point).await;
    gw.shutdown().await;
    fail::cfg(point, "off").unwrap();
    // Back with the store out of reach, so the retry cannot run before the remove.
    let faulty = common::faulty::Faulty::new(Arc::new(rig.s3.store().await));
    faulty.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let gw = start_with_store(rig.cfg.clone(), faulty.clone()).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    remove(&mut c, &root, "a").await.unwrap();
    faulty.down.store(false, std::sync::atomic::Ordering::SeqCst);
    flush(&gw).await;
    assert!(
        bucket_keys(&rig.s3).await.is_empty(),
        "{:?}",
        bucket_keys(&rig.s3).await
    );
    gw.shutdown().await;
    scenario.teardown();
}

/// Shutdown while an upload's engine call sits in a slow flush on its blocking thread
/// (the upload is cancelled, the call on that thread is not): shutdown returns only
/// once the call is done, so the cache opens again at once (it was still locked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_an_uploads_engine_call_in_flight() {
    let scenario = fail::FailScenario::setup();
    let rig = Rig::new().await;
    let gw = rig.start().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    put_file(&mut c, &root, "a", b"on a slow disk").await;
    // The next flush is the upload's, noting its intent (uploads start 100 ms after
    // the last change): it takes 3 s.
    fail::cfg("cache::flush_metadata", "1*sleep(3000)").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    gw.shutdown().await;
    fail::cfg("cache::flush_metadata", "off").unwrap();
    let gw = rig.start().await;
    flush(&gw).await;
    assert_eq!(
        bucket_contents(&rig.s3).await.get("a").map(Vec::as_slice),
        Some(&b"on a slow disk"[..])
    );
    gw.shutdown().await;
    scenario.teardown();
}
