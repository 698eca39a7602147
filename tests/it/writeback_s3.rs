//! The same write-back path against a real S3 protocol server (s3s-fs on loopback):
//! what the gateway writes is read back with a plain aws-sdk-s3 client, headers and all.

use crate::common;

use std::collections::HashMap;

use common::gateway::{config, flush, metric_sum, start};
use common::nfs::*;
use common::s3server::S3TestServer;

async fn s3_gateway(srv: &S3TestServer, dir: &std::path::Path) -> bucketgate::gateway::Running {
    s3_gateway_with(srv, dir, |_| {}).await
}

async fn s3_gateway_with(
    srv: &S3TestServer,
    dir: &std::path::Path,
    tune: impl FnOnce(&mut bucketgate::config::Config),
) -> bucketgate::gateway::Running {
    let url = format!("s3://{}/site-a/", srv.bucket);
    let mut cfg = config(dir, &url);
    tune(&mut cfg);
    cfg.shares[0].endpoint = Some(srv.endpoint.clone());
    cfg.shares[0].path_style = true;
    cfg.shares[0].region = Some("us-east-1".into());
    start(cfg, Some((srv.access_key.clone(), srv.secret_key.clone()))).await
}

async fn get(srv: &S3TestServer, key: &str) -> (Vec<u8>, HashMap<String, String>, Option<String>) {
    let o = srv
        .client
        .get_object()
        .bucket(&srv.bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e:?}"));
    let meta = o.metadata().cloned().unwrap_or_default();
    let etag = o.e_tag().map(str::to_string);
    let body = o.body.collect().await.unwrap().into_bytes().to_vec();
    (body, meta, etag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_carry_the_datasync_metadata_schema() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = s3_gateway(&srv, tmp.path()).await;
    let mut c = mount_as(gw.nfs_addr, "/data", 2001, 3002).await;
    let root = c.root_nfs_fh3();
    let d = mkdir(&mut c, &root, "projects", 0o2775).await;
    let data = body(1_000_000, 3);
    put_file(&mut c, &d, "plan.txt", &data).await;
    symlink(&mut c, &root, "latest", "projects/plan.txt").await;
    flush(&gw).await;

    let (b, m, _) = get(&srv, "site-a/projects/plan.txt").await;
    assert_eq!(b, data);
    assert_eq!(m["file-owner"], "2001");
    assert_eq!(m["file-group"], "3002");
    assert_eq!(m["file-permissions"], "0100644");
    assert!(
        m["file-mtime"].ends_with("ns") && m["file-mtime"].len() > 10,
        "{:?}",
        m["file-mtime"]
    );
    assert!(m["user-agent"].starts_with("bucketgate/"));
    let (b, m, _) = get(&srv, "site-a/projects/").await;
    assert!(b.is_empty());
    assert_eq!(m["file-permissions"], "0042775");
    let (b, m, _) = get(&srv, "site-a/latest").await;
    assert_eq!(b, b"projects/plan.txt");
    assert_eq!(m["file-permissions"], "0120777");
    let head = srv
        .client
        .head_object()
        .bucket(&srv.bucket)
        .key("site-a/projects/plan.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.content_type(),
        Some("text/plain"),
        "Content-Type guessed from the extension"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_goes_up_as_a_multipart_upload() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = s3_gateway(&srv, tmp.path()).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let data = body(200 << 20, 7);
    put_file(&mut c, &root, "big.bin", &data).await;
    flush(&gw).await;
    let (b, m, etag) = get(&srv, "site-a/big.bin").await;
    assert_eq!(b.len(), data.len());
    assert!(b == data, "200 MiB body differs");
    assert_eq!(m["file-permissions"], "0100644");
    // Multipart ETags are "<md5 of part md5s>-<part count>": 200 MiB in 8 MiB parts.
    let etag = etag.expect("etag");
    assert!(
        etag.trim_matches('"').ends_with("-25"),
        "not a 25-part multipart upload: {etag}"
    );
    let uploads = srv
        .client
        .list_multipart_uploads()
        .bucket(&srv.bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "no multipart upload left behind");
    gw.shutdown().await;
}

/// Past `max_single_copy` (S3: 5 GiB, here lowered to 6 MiB) a rename copies the
/// object part by part with UploadPartCopy; the bytes and metadata arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_past_the_single_copy_limit_copies_part_by_part() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = s3_gateway_with(&srv, tmp.path(), |c| {
        c.upload.max_single_copy = bucketgate::config::ByteSize(6 << 20);
    })
    .await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let data = body(20 << 20, 77);
    put_file(&mut c, &root, "before.bin", &data).await;
    flush(&gw).await;
    rename(&mut c, &root, "before.bin", &root, "after.bin")
        .await
        .unwrap();
    flush(&gw).await;
    let (got, meta, _) = get(&srv, "site-a/after.bin").await;
    assert!(got == data, "the copied object holds the file's bytes");
    assert_eq!(meta.get("file-permissions").map(String::as_str), Some("0100644"));
    let gone = srv
        .client
        .head_object()
        .bucket(&srv.bucket)
        .key("site-a/before.bin")
        .send()
        .await;
    assert!(gone.is_err(), "the old key is deleted after the copy");
    let part_copies = metric_sum(
        &gw.gateway.metrics.render(),
        "bucketgate_store_request_duration_seconds_count",
        "\"UploadPartCopy\"",
    );
    assert_eq!(part_copies, 3.0, "20 MiB in 8 MiB parts");
    gw.shutdown().await;
}
