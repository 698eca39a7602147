//! Conflicts: another S3 client replaces an object while the gateway holds a local
//! change to it. The upload must not write over the other version: the store's keeps
//! the name, the local one is kept as `<name>.conflict-<UTC time>`, and both are
//! visible through NFS. Store: s3s-fs on loopback (it honours If-Match and
//! x-amz-copy-source-if-match, as S3 does); the other client is aws-sdk-s3.

use crate::common;

use bucketgate::config::{Config, ConflictCheck};
use bucketgate::gateway::Running;
use common::gateway::{flush, share_with, start};
use common::nfs::*;
use common::s3server::S3TestServer;
use nfs3_types::nfs3::stable_how;

fn s3_config(srv: &S3TestServer, dir: &std::path::Path, check: ConflictCheck) -> Config {
    share_with(&common::gateway::s3_config(dir, srv, ""), |s| {
        s.conflict_check = check
    })
}

async fn gateway(srv: &S3TestServer, dir: &std::path::Path, check: ConflictCheck) -> Running {
    start(
        s3_config(srv, dir, check),
        Some((srv.access_key.clone(), srv.secret_key.clone())),
    )
    .await
}

async fn object(srv: &S3TestServer, key: &str) -> Vec<u8> {
    let got = srv
        .client
        .get_object()
        .bucket(&srv.bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
    got.body.collect().await.unwrap().into_bytes().to_vec()
}

async fn keys(srv: &S3TestServer) -> Vec<String> {
    let page = srv
        .client
        .list_objects_v2()
        .bucket(&srv.bucket)
        .send()
        .await
        .unwrap();
    page.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

/// Writes `doc.txt` through NFS, lets it upload, has another client replace it, then
/// changes it through NFS again. Returns the bucket's keys afterwards.
async fn local_change_over_a_remote_one(check: ConflictCheck) -> (S3TestServer, Vec<String>, u64) {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(&srv, tmp.path(), check).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let fh = put_file(&mut c, &root, "doc.txt", b"version 1").await;
    flush(&gw).await;
    srv.their_put("doc.txt", b"their version", None).await;
    write_at(&mut c, &fh, 0, b"our version 2", stable_how::FILE_SYNC)
        .await
        .unwrap();
    flush(&gw).await;
    let keys = keys(&srv).await;
    let conflicts = gw.gateway.shares[0]
        .uploader
        .counters
        .conflicts
        .load(std::sync::atomic::Ordering::Relaxed);

    if check != ConflictCheck::Off {
        // Both versions through NFS: the store's under the name (the directory is
        // listed again), ours beside it, on the same handle.
        let mut names = list_names(&mut c, &root).await;
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(names[0], "doc.txt");
        assert!(names[1].starts_with("doc.txt.conflict-"), "{names:?}");
        let theirs = lookup(&mut c, &root, "doc.txt").await.unwrap();
        assert_eq!(read_all(&mut c, &theirs).await, b"their version");
        assert_eq!(read_all(&mut c, &fh).await, b"our version 2");
        let ours = lookup(&mut c, &root, &names[1]).await.unwrap();
        assert_eq!(ours, fh);
    }
    gw.shutdown().await;
    (srv, keys, conflicts)
}

async fn check_both_versions_kept(check: ConflictCheck) {
    let (srv, keys, conflicts) = local_change_over_a_remote_one(check).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(object(&srv, "doc.txt").await, b"their version");
    let ours = keys.iter().find(|k| k.starts_with("doc.txt.conflict-")).unwrap();
    // doc.txt.conflict-20261129T120000Z
    let stamp = ours.trim_start_matches("doc.txt.conflict-");
    assert!(
        stamp.len() == 16 && stamp.as_bytes()[8] == b'T' && stamp.ends_with('Z'),
        "{ours}"
    );
    assert_eq!(object(&srv, ours).await, b"our version 2");
    assert_eq!(conflicts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_keep_both_versions() {
    check_both_versions_kept(ConflictCheck::IfMatch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_before_the_upload_keeps_both_versions() {
    check_both_versions_kept(ConflictCheck::Head).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checks_off_the_last_writer_wins() {
    let (srv, keys, conflicts) = local_change_over_a_remote_one(ConflictCheck::Off).await;
    assert_eq!(keys, ["doc.txt"]);
    assert_eq!(object(&srv, "doc.txt").await, b"our version 2");
    assert_eq!(conflicts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_conflict_is_caught_at_multipart_completion() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(&srv, tmp.path(), ConflictCheck::IfMatch).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let big = body(12 << 20, 7); // above the tests' 8 MiB multipart threshold
    let fh = put_file(&mut c, &root, "big.bin", &big).await;
    flush(&gw).await;
    srv.their_put("big.bin", b"replaced", None).await;
    write_at(&mut c, &fh, 0, b"patched", stable_how::FILE_SYNC)
        .await
        .unwrap();
    flush(&gw).await;
    assert_eq!(object(&srv, "big.bin").await, b"replaced");
    let keys = keys(&srv).await;
    let ours = keys.iter().find(|k| k.starts_with("big.bin.conflict-")).unwrap();
    let mut want = big.clone();
    want[..7].copy_from_slice(b"patched");
    assert!(object(&srv, ours).await == want);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chmod_over_a_remote_change_applies_to_the_new_version() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(&srv, tmp.path(), ConflictCheck::IfMatch).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let fh = put_file(&mut c, &root, "notes.txt", b"ours, uploaded").await;
    flush(&gw).await;
    srv.their_put("notes.txt", b"theirs, newer and longer", None)
        .await;
    // Only attributes change here: no conflict copy; their bytes get our mode.
    set_mode(&mut c, &fh, 0o600).await.unwrap();
    flush(&gw).await;
    assert_eq!(keys(&srv).await, ["notes.txt"]);
    assert_eq!(object(&srv, "notes.txt").await, b"theirs, newer and longer");
    let head = srv
        .client
        .head_object()
        .bucket(&srv.bucket)
        .key("notes.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata()
            .unwrap()
            .get("file-permissions")
            .map(String::as_str),
        Some("0100600")
    );
    // The cached bytes were the old version's: they are fetched again.
    assert_eq!(read_all(&mut c, &fh).await, b"theirs, newer and longer");
    assert_eq!(getattr(&mut c, &fh).await.unwrap().mode, 0o600);
    gw.shutdown().await;
}
