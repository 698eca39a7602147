//! A renamed file's object moves to its new key only when the uploader gets to it;
//! until then the old key's object is the file's copy in the store. Another file
//! created (or renamed) at the old name must not overwrite that object first, or the
//! renamed file's copy would take the newcomer's bytes: the soak test found this.
//! Store: the local-directory store; uploads are driven one path at a time.

use crate::common;

use std::time::Duration;

use bucketgate::config::HumanDuration;
use bucketgate::gateway::Running;
use bucketgate::remote::{LocalStore, ObjectAttrs, ObjectStore};
use common::gateway::{config, flush, start};
use common::nfs::*;

async fn gateway(dir: &std::path::Path) -> Running {
    let mut cfg = config(dir, &format!("file://{}", dir.join("bucket").display()));
    // Nothing uploads unless a test asks.
    cfg.cache.upload_delay = HumanDuration(Duration::from_secs(3600));
    cfg.cache.max_dirty_age = HumanDuration(Duration::from_secs(3600));
    start(cfg, None).await
}

/// Uploads what is pending under `path` only, and waits for it.
async fn flush_path(gw: &Running, path: &str) {
    let up = &gw.gateway.shares[0].uploader;
    let targets = up.flush_now(Some(path));
    tokio::time::timeout(Duration::from_secs(30), async {
        while !up.reached(&targets) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{path} not uploaded: {:?}", up.failing()));
}

async fn object(store: &LocalStore, key: &str) -> Vec<u8> {
    store.get_range(key, 0, 1 << 30).await.unwrap().to_vec()
}

/// The newcomer at the old name is uploaded before the renamed file's copy.
async fn newcomer_first(gw: &Running, c: &mut Conn) {
    let root = c.root_nfs_fh3();
    rename(c, &root, "a", &root, "b").await.unwrap();
    put_file(c, &root, "a", b"the newcomer").await;
    flush_path(gw, "a").await;
    flush(gw).await;
}

/// Metadata of a plain file of uid/gid 1000, as the bucket's objects carry it.
fn user_file() -> ObjectAttrs {
    ObjectAttrs {
        uid: 1000,
        gid: 1000,
        mode: 0o100644,
        mtime_ns: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_at_a_renamed_files_old_name_does_not_take_its_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(tmp.path()).await;
    let store = LocalStore::new(tmp.path().join("bucket")).unwrap();
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let old = body(300_000, 1);
    put_file(&mut c, &root, "a", &old).await;
    flush(&gw).await;
    newcomer_first(&gw, &mut c).await;
    assert_eq!(object(&store, "a").await, b"the newcomer");
    assert!(
        object(&store, "b").await == old,
        "b holds the renamed file's bytes"
    );
    let b = lookup(&mut c, &root, "b").await.unwrap();
    assert!(read_all(&mut c, &b).await == old);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_file_never_read_gets_its_bytes_before_its_old_name_is_reused() {
    let tmp = tempfile::tempdir().unwrap();
    // In the bucket before the gateway starts: listed, nothing cached.
    let store = LocalStore::new(tmp.path().join("bucket")).unwrap();
    let old = body(3 << 20, 2);
    let meta = user_file();
    store
        .put_object("a", bytes::Bytes::from(old.clone()), &meta)
        .await
        .unwrap();
    let gw = gateway(tmp.path()).await;
    let mut c = mount(gw.nfs_addr).await;
    newcomer_first(&gw, &mut c).await;
    assert_eq!(object(&store, "a").await, b"the newcomer");
    assert!(
        object(&store, "b").await == old,
        "b holds the renamed file's bytes"
    );
    let root = c.root_nfs_fh3();
    let b = lookup(&mut c, &root, "b").await.unwrap();
    assert!(read_all(&mut c, &b).await == old);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_files_swapping_names_keep_their_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(tmp.path()).await;
    let store = LocalStore::new(tmp.path().join("bucket")).unwrap();
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    put_file(&mut c, &root, "x", b"first file").await;
    put_file(&mut c, &root, "y", b"second file").await;
    flush(&gw).await;
    // mv x t; mv y x; mv t y
    rename(&mut c, &root, "x", &root, "t").await.unwrap();
    rename(&mut c, &root, "y", &root, "x").await.unwrap();
    rename(&mut c, &root, "t", &root, "y").await.unwrap();
    flush_path(&gw, "x").await;
    flush(&gw).await;
    assert_eq!(object(&store, "x").await, b"second file");
    assert_eq!(object(&store, "y").await, b"first file");
    assert!(store.head("t").await.unwrap().is_none());
    gw.shutdown().await;
}

/// A renamed file never read, whose object another client deletes before the rename
/// reached the store, cannot be rebuilt: it is reported failing (SourceGone), never
/// uploaded with holes where its bytes were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_cached_file_whose_object_vanished_is_reported_not_uploaded_with_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::new(tmp.path().join("bucket")).unwrap();
    let meta = user_file();
    store
        .put_object("a", bytes::Bytes::from(body(3 << 20, 3)), &meta)
        .await
        .unwrap();
    let gw = gateway(tmp.path()).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    rename(&mut c, &root, "a", &root, "b").await.unwrap();
    store.delete_object("a").await.unwrap();
    let up = &gw.gateway.shares[0].uploader;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            up.flush_now(None);
            if up.failing().iter().any(|f| f.error_code == "SourceGone") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("reported as SourceGone");
    assert!(
        store.head("b").await.unwrap().is_none(),
        "nothing uploaded with holes"
    );
    gw.shutdown().await;
}
