//! Files written through NFS become plain objects: bodies, metadata, directory
//! markers, symlinks; renames, removes and attribute changes reach the store; the
//! durability contract holds across a restart. Store: the local-directory store.

use crate::common;

use std::time::Duration;

use bucketgate::remote::{ObjectAttrs, ObjectStore};
use common::gateway::{config, flush, start};
use common::nfs::*;
use nfs3_types::nfs3::stable_how;

async fn object(store: &dyn ObjectStore, key: &str) -> Option<(Vec<u8>, ObjectAttrs)> {
    let info = store.head(key).await.expect("head")?;
    let body = store.get_range(key, 0, info.size.max(1)).await.expect("get");
    Some((body.to_vec(), info.meta.expect("gateway objects carry metadata")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_dirs_and_symlinks_become_objects_with_posix_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let gw = start(config(tmp.path(), &url), None).await;
    let mut c = mount_as(gw.nfs_addr, "/data", 1234, 567).await;
    let root = c.root_nfs_fh3();
    let d = mkdir(&mut c, &root, "docs", 0o750).await;
    let data = body(300_000, 1);
    put_file(&mut c, &d, "report.bin", &data).await;
    let empty = create(&mut c, &root, "empty", 0o600).await;
    commit(&mut c, &empty).await;
    symlink(&mut c, &root, "link", "docs/report.bin").await;
    flush(&gw).await;

    let store = gw.gateway.shares[0].store.clone();
    let (b, m) = object(store.as_ref(), "docs/report.bin")
        .await
        .expect("file object");
    assert_eq!(b, data);
    assert_eq!((m.uid, m.gid, m.mode), (1234, 567, 0o100644));
    let (b, m) = object(store.as_ref(), "docs/").await.expect("dir marker");
    assert!(b.is_empty());
    assert_eq!(m.mode, 0o040750);
    let (b, m) = object(store.as_ref(), "empty")
        .await
        .expect("zero-byte file is uploaded too");
    assert!(b.is_empty());
    assert_eq!(m.mode, 0o100600);
    let (b, m) = object(store.as_ref(), "link").await.expect("symlink object");
    assert_eq!(b, b"docs/report.bin");
    assert_eq!(m.mode & 0o170000, 0o120000);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_remove_and_chmod_propagate() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let gw = start(config(tmp.path(), &url), None).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let d = mkdir(&mut c, &root, "a", 0o755).await;
    let f = put_file(&mut c, &d, "one.txt", b"first").await;
    put_file(&mut c, &root, "doomed", b"bye").await;
    flush(&gw).await;
    let s = &gw.gateway.shares[0];
    let puts_before = s
        .uploader
        .counters
        .objects_put
        .load(std::sync::atomic::Ordering::Relaxed);

    // chmod of a clean file: a metadata-only copy, not a second upload of the data.
    set_mode(&mut c, &f, 0o600).await.unwrap();
    flush(&gw).await;
    let (_, m) = object(s.store.as_ref(), "a/one.txt").await.unwrap();
    assert_eq!(m.mode, 0o100600);
    assert_eq!(
        s.uploader
            .counters
            .objects_put
            .load(std::sync::atomic::Ordering::Relaxed),
        puts_before
    );

    // Rename of a file, then of its directory: every key moves, old keys vanish.
    rename(&mut c, &d, "one.txt", &d, "two.txt").await.unwrap();
    flush(&gw).await;
    assert!(s.store.head("a/one.txt").await.unwrap().is_none());
    assert_eq!(object(s.store.as_ref(), "a/two.txt").await.unwrap().0, b"first");
    rename(&mut c, &root, "a", &root, "b").await.unwrap();
    flush(&gw).await;
    assert!(s.store.head("a/").await.unwrap().is_none());
    assert!(s.store.head("a/two.txt").await.unwrap().is_none());
    assert_eq!(object(s.store.as_ref(), "b/two.txt").await.unwrap().0, b"first");
    assert!(s.store.head("b/").await.unwrap().is_some());

    remove(&mut c, &root, "doomed").await.unwrap();
    flush(&gw).await;
    assert!(s.store.head("doomed").await.unwrap().is_none());

    // Overwrite and append re-upload the data.
    let b = lookup(&mut c, &root, "b").await.unwrap();
    let g = lookup(&mut c, &b, "two.txt").await.unwrap();
    write_at(&mut c, &g, 5, b" and more", stable_how::FILE_SYNC)
        .await
        .unwrap();
    flush(&gw).await;
    assert_eq!(
        object(s.store.as_ref(), "b/two.txt").await.unwrap().0,
        b"first and more"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_removed_before_upload_never_reaches_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let mut cfg = config(tmp.path(), &url);
    cfg.cache.upload_delay = bucketgate::config::HumanDuration(Duration::from_secs(30));
    cfg.cache.max_dirty_age = bucketgate::config::HumanDuration(Duration::from_secs(60));
    let gw = start(cfg, None).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    put_file(&mut c, &root, "tmp.part", b"scratch").await;
    remove(&mut c, &root, "tmp.part").await.unwrap();
    flush(&gw).await;
    let s = &gw.gateway.shares[0];
    assert!(s.store.head("tmp.part").await.unwrap().is_none());
    assert_eq!(
        s.uploader
            .counters
            .objects_put
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_data_survives_a_restart_before_upload_and_is_uploaded_after() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let mut slow = config(tmp.path(), &url);
    slow.cache.upload_delay = bucketgate::config::HumanDuration(Duration::from_secs(3600));
    slow.cache.max_dirty_age = bucketgate::config::HumanDuration(Duration::from_secs(3600));
    let data = body(2_000_000, 9);
    let (fh, verf1) = {
        let gw = start(slow.clone(), None).await;
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        let fh = create(&mut c, &root, "kept.bin", 0o644).await;
        let mut w = None;
        for (i, chunk) in data.chunks(1 << 20).enumerate() {
            w = Some(
                write_at(&mut c, &fh, (i as u64) << 20, chunk, stable_how::UNSTABLE)
                    .await
                    .unwrap(),
            );
        }
        let w = w.unwrap();
        assert_eq!(w.committed, stable_how::UNSTABLE);
        let verf = commit(&mut c, &fh).await.verf;
        assert_eq!(w.verf, verf, "one verifier per process lifetime");
        assert!(
            gw.gateway.shares[0]
                .store
                .head("kept.bin")
                .await
                .unwrap()
                .is_none()
        );
        gw.shutdown().await;
        (fh, verf)
    };
    let gw = start(config(tmp.path(), &url), None).await;
    let mut c = mount(gw.nfs_addr).await;
    // The old handle still works, and the verifier changed so clients resend
    // anything they had not seen committed.
    assert_eq!(read_all(&mut c, &fh).await, data);
    assert_ne!(commit(&mut c, &fh).await.verf, verf1);
    flush(&gw).await;
    let got = gw.gateway.shares[0]
        .store
        .get_range("kept.bin", 0, data.len() as u64)
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &data[..]);
    gw.shutdown().await;
}

/// A FIFO and a socket made with MKNOD become zero-byte objects whose
/// `file-permissions` carries their type, and come back as such through a second
/// gateway that never saw them (issue 18).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_and_sockets_are_objects_that_keep_their_type() {
    use nfs3_types::nfs3::{MKNOD3args, Nfs3Option, Nfs3Result, ftype3, mknoddata3, sattr3, set_mode3};
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let gw = start(config(tmp.path(), &url), None).await;
    let mut c = mount_as(gw.nfs_addr, "/data", 1234, 567).await;
    let root = c.root_nfs_fh3();
    let mode = |m| sattr3 {
        mode: set_mode3::Some(m),
        ..sattr3::default()
    };
    for (name, what) in [
        ("pipe", mknoddata3::NF3FIFO(mode(0o640))),
        ("sock", mknoddata3::NF3SOCK(mode(0o600))),
    ] {
        let r = c
            .mknod(&MKNOD3args {
                where_: dirop(&root, name.as_bytes()),
                what,
            })
            .await
            .unwrap();
        let Nfs3Result::Ok(ok) = r else {
            panic!("MKNOD {name} refused");
        };
        assert!(
            matches!(ok.obj, Nfs3Option::Some(_)),
            "MKNOD {name} answers a handle"
        );
    }
    flush(&gw).await;
    let store = gw.gateway.shares[0].store.clone();
    let (b, m) = object(store.as_ref(), "pipe").await.expect("FIFO object");
    assert!(b.is_empty());
    assert_eq!((m.uid, m.gid, m.mode), (1234, 567, 0o010640));
    let (b, m) = object(store.as_ref(), "sock").await.expect("socket object");
    assert!(b.is_empty());
    assert_eq!(m.mode, 0o140600);
    gw.shutdown().await;

    // A fresh cache on the same bucket reads the type back from the metadata.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let gw = start(config(&other, &url), None).await;
    let mut c = mount_as(gw.nfs_addr, "/data", 1234, 567).await;
    let root = c.root_nfs_fh3();
    for (name, ty, perms) in [("pipe", ftype3::NF3FIFO, 0o640), ("sock", ftype3::NF3SOCK, 0o600)] {
        let fh = lookup(&mut c, &root, name).await.unwrap();
        let a = getattr(&mut c, &fh).await.unwrap();
        assert_eq!(
            (a.type_, a.mode, a.size),
            (ty, perms, 0),
            "{name} through a second gateway"
        );
    }
    gw.shutdown().await;
}
