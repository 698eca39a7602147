//! What an S3 event notification does to a share, without a queue: events are handed
//! to the gateway as its queue poller hands them (`Gateway::apply_events`), and
//! what NFS shows afterwards is checked against what the bucket holds. Store: s3s-fs
//! on loopback; the other writer is a plain aws-sdk-s3 client; NFS: nfs3_client.
//! The queue itself (SQS, through moto's server) is in `events_sqs`.

use crate::common;

use std::time::Duration;

use bucketgate::config::{Config, HumanDuration};
use bucketgate::events::S3Event;
use bucketgate::gateway::Running;
use bucketgate::share::KeyEvent;
use common::gateway::{flush, metric_sum, start};
use common::nfs::*;
use common::s3server::S3TestServer;
use nfs3_types::nfs3::stable_how;

fn s3_config(srv: &S3TestServer, dir: &std::path::Path) -> Config {
    let mut cfg = common::gateway::s3_config(dir, srv, "pre/");
    // Local changes stay local until a test flushes them.
    cfg.cache.upload_delay = HumanDuration(Duration::from_secs(3600));
    cfg.cache.max_dirty_age = HumanDuration(Duration::from_secs(3600));
    cfg
}

async fn gateway(srv: &S3TestServer, dir: &std::path::Path) -> Running {
    start(
        s3_config(srv, dir),
        Some((srv.access_key.clone(), srv.secret_key.clone())),
    )
    .await
}

fn created(srv: &S3TestServer, key: &str, etag: &str) -> S3Event {
    S3Event {
        bucket: srv.bucket.clone(),
        key: key.into(),
        event: KeyEvent::Created { etag: etag.into() },
    }
}

fn removed(srv: &S3TestServer, key: &str) -> S3Event {
    S3Event {
        bucket: srv.bucket.clone(),
        key: key.into(),
        event: KeyEvent::Removed,
    }
}

async fn names(c: &mut Conn, dir: &nfs3_types::nfs3::nfs_fh3) -> Vec<String> {
    let mut n = list_names(c, dir).await;
    n.sort();
    n
}

fn store_requests(gw: &Running) -> f64 {
    metric_sum(
        &gw.gateway.metrics.render(),
        "bucketgate_store_request_duration_seconds_count",
        "",
    )
}

/// Objects another client adds, replaces and deletes show through NFS as soon as
/// their events are applied, with no listing: a new file (and a new directory tree),
/// new content on the same handle, a name gone. A local file not uploaded stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn others_changes_show_once_their_events_are_applied() {
    let srv = S3TestServer::start().await;
    srv.their_put("pre/changes.txt", b"old", None).await;
    srv.their_put("pre/goes.txt", b"bye", None).await;
    srv.their_put("pre/sub/inner.txt", b"in", None).await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(&srv, tmp.path()).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let ch = lookup(&mut c, &root, "changes.txt").await.unwrap();
    assert_eq!(read_all(&mut c, &ch).await, b"old");
    let sub = lookup(&mut c, &root, "sub").await.unwrap();
    assert_eq!(names(&mut c, &sub).await, ["inner.txt"]);
    let mine = put_file(&mut c, &root, "mine.txt", b"local, not uploaded").await;

    srv.their_put("pre/changes.txt", b"new and longer", None).await;
    srv.their_put("pre/added.txt", b"hello", None).await;
    srv.their_put("pre/tree/deep/leaf.txt", b"leaf", None).await;
    srv.their_put("pre/sub/second.txt", b"2", None).await;
    srv.their_delete("pre/goes.txt").await;
    srv.their_delete("pre/sub/inner.txt").await;
    let events = vec![
        created(&srv, "pre/changes.txt", &srv.etag("pre/changes.txt").await),
        created(&srv, "pre/added.txt", &srv.etag("pre/added.txt").await),
        created(&srv, "pre/tree/deep/leaf.txt", ""),
        created(&srv, "pre/sub/second.txt", ""),
        removed(&srv, "pre/goes.txt"),
        removed(&srv, "pre/sub/inner.txt"),
    ];
    let applied = gw.gateway.apply_events(&events).await;
    assert_eq!((applied.applied, applied.failed), (6, 0), "{applied:?}");

    assert_eq!(
        names(&mut c, &root).await,
        ["added.txt", "changes.txt", "mine.txt", "sub", "tree"]
    );
    assert_eq!(
        read_all(&mut c, &ch).await,
        b"new and longer",
        "same handle, new content"
    );
    let added = lookup(&mut c, &root, "added.txt").await.unwrap();
    assert_eq!(read_all(&mut c, &added).await, b"hello");
    let tree = lookup(&mut c, &root, "tree").await.unwrap();
    let deep = lookup(&mut c, &tree, "deep").await.unwrap();
    let leaf = lookup(&mut c, &deep, "leaf.txt").await.unwrap();
    assert_eq!(read_all(&mut c, &leaf).await, b"leaf");
    assert_eq!(names(&mut c, &sub).await, ["second.txt"]);
    assert_eq!(read_all(&mut c, &mine).await, b"local, not uploaded");
    let m = gw.gateway.metrics.render();
    assert_eq!(
        metric_sum(&m, "bucketgate_events_total", "result=\"applied\""),
        6.0
    );
    assert_eq!(
        metric_sum(&m, "bucketgate_events_total", "result=\"received\""),
        6.0
    );
    gw.shutdown().await;
}

/// The gateway's own uploads come back as events: recognised by their ETag, they cost
/// no store request and change nothing. Events that repeat or arrive out of order
/// end at what the bucket holds, for each is only a reason to look at its key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_uploads_are_recognised_and_stale_events_end_at_the_bucket() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(&srv, tmp.path()).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let fh = put_file(&mut c, &root, "ours.txt", b"written here").await;
    flush(&gw).await;
    let ours = created(&srv, "pre/ours.txt", &srv.etag("pre/ours.txt").await);
    let before = store_requests(&gw);
    let applied = gw.gateway.apply_events(&[ours.clone(), ours.clone()]).await;
    assert_eq!((applied.applied, applied.ignored), (0, 2), "{applied:?}");
    assert_eq!(store_requests(&gw), before, "an own upload costs no request");
    assert_eq!(read_all(&mut c, &fh).await, b"written here");

    // Another client deletes it, then writes it again; the events come the other
    // way round, and the first twice.
    srv.their_delete("pre/ours.txt").await;
    srv.their_put("pre/ours.txt", b"theirs now", None).await;
    let theirs = created(&srv, "pre/ours.txt", &srv.etag("pre/ours.txt").await);
    let del = removed(&srv, "pre/ours.txt");
    gw.gateway.apply_events(&[theirs.clone(), del.clone(), del]).await;
    assert_eq!(read_all(&mut c, &fh).await, b"theirs now");
    // Deleted again; its event comes before the late one of the version it deleted.
    srv.their_delete("pre/ours.txt").await;
    gw.gateway
        .apply_events(&[removed(&srv, "pre/ours.txt"), theirs])
        .await;
    assert_eq!(names(&mut c, &root).await, Vec::<String>::new());
    assert_eq!(
        lookup(&mut c, &root, "ours.txt").await,
        Err(nfs3_types::nfs3::nfsstat3::NFS3ERR_NOENT)
    );
    gw.shutdown().await;
}

/// A file with a local change keeps it through others' overwrite and delete events,
/// and its upload goes through the conflict path: both versions are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_change_survives_events_and_both_versions_are_kept() {
    let srv = S3TestServer::start().await;
    srv.their_put("pre/doc.txt", b"v1", None).await;
    srv.their_put("pre/gone.txt", b"g1", None).await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(&srv, tmp.path()).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let doc = lookup(&mut c, &root, "doc.txt").await.unwrap();
    let gone = lookup(&mut c, &root, "gone.txt").await.unwrap();
    write_at(&mut c, &doc, 0, b"ours", stable_how::FILE_SYNC)
        .await
        .unwrap();
    write_at(&mut c, &gone, 0, b"kept", stable_how::FILE_SYNC)
        .await
        .unwrap();

    srv.their_put("pre/doc.txt", b"theirs", None).await;
    srv.their_delete("pre/gone.txt").await;
    let events = [
        created(&srv, "pre/doc.txt", &srv.etag("pre/doc.txt").await),
        removed(&srv, "pre/gone.txt"),
    ];
    gw.gateway.apply_events(&events).await;
    assert_eq!(read_all(&mut c, &doc).await, b"ours");
    assert_eq!(read_all(&mut c, &gone).await, b"kept");
    assert_eq!(names(&mut c, &root).await, ["doc.txt", "gone.txt"]);

    flush(&gw).await;
    let mut keys: Vec<String> = srv
        .client
        .list_objects_v2()
        .bucket(&srv.bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .map(|o| o.key().unwrap().to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(keys[0], "pre/doc.txt");
    assert!(keys[1].starts_with("pre/doc.txt.conflict-"), "{keys:?}");
    assert_eq!(keys[2], "pre/gone.txt", "a deleted name written here again");
    let theirs = srv
        .client
        .get_object()
        .bucket(&srv.bucket)
        .key("pre/doc.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        theirs.body.collect().await.unwrap().into_bytes().as_ref(),
        b"theirs"
    );
    gw.shutdown().await;
}

/// Events the share has nothing to do with, or that name keys no path can be, are
/// ignored without a panic; events under a directory never listed wait for its
/// first listing, which finds the object anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hostile_and_unlisted_events_are_ignored() {
    let srv = S3TestServer::start().await;
    srv.their_put("pre/later/x.txt", b"x", None).await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(&srv, tmp.path()).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    assert_eq!(names(&mut c, &root).await, ["later"]);
    srv.their_put("pre/later/y.txt", b"y", None).await;
    let long = format!("pre/{}", "n".repeat(300));
    let mut events = vec![created(&srv, "pre/later/y.txt", "")];
    for key in [
        "other/x",
        "pre/",
        "pre/a//b",
        "pre/../etc/passwd",
        "pre/./x",
        long.as_str(),
        "pre/a\0b",
    ] {
        events.push(created(&srv, key, ""));
        events.push(removed(&srv, key));
    }
    let mut elsewhere = created(&srv, "pre/x", "");
    elsewhere.bucket = "another-bucket".into();
    events.push(elsewhere);
    let before = store_requests(&gw);
    let applied = gw.gateway.apply_events(&events).await;
    assert_eq!((applied.applied, applied.failed), (0, 0), "{applied:?}");
    assert_eq!(applied.ignored, events.len() as u64);
    assert_eq!(store_requests(&gw), before, "nothing was asked of the store");
    assert_eq!(names(&mut c, &root).await, ["later"]);
    let later = lookup(&mut c, &root, "later").await.unwrap();
    assert_eq!(names(&mut c, &later).await, ["x.txt", "y.txt"]);
    gw.shutdown().await;
}

/// A directory that only another client's objects made goes when its last object is
/// deleted, and with it the parents that held nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_goes_with_its_last_object() {
    let srv = S3TestServer::start().await;
    srv.their_put("pre/a/b/only.txt", b"1", None).await;
    srv.their_put("pre/keep.txt", b"k", None).await;
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(&srv, tmp.path()).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let a = lookup(&mut c, &root, "a").await.unwrap();
    let b = lookup(&mut c, &a, "b").await.unwrap();
    assert_eq!(names(&mut c, &b).await, ["only.txt"]);
    srv.their_delete("pre/a/b/only.txt").await;
    let applied = gw
        .gateway
        .apply_events(&[removed(&srv, "pre/a/b/only.txt")])
        .await;
    assert_eq!(applied.applied, 1);
    assert_eq!(names(&mut c, &root).await, ["keep.txt"]);
    gw.shutdown().await;
}

/// A queue that cannot be reached is reported (log, metric, an advisory readiness
/// check) and the share keeps serving: `/readyz` stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_queue_is_reported_and_the_share_keeps_serving() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let closed = common::child::free_port();
    let cfg = common::gateway::share_with(&s3_config(&srv, tmp.path()), |s| {
        s.events = Some(format!("http://{closed}/123456789012/nobody-listens"))
    });
    let gw = start(cfg, Some((srv.access_key.clone(), srv.secret_key.clone()))).await;
    let api = bucketgate::gateway::admin_api(&gw.gateway);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let check = loop {
        let r = api.readiness();
        let c = r
            .checks
            .iter()
            .find(|c| c.name == bucketgate::admin::CHECK_EVENTS_QUEUE_REACHABLE)
            .cloned()
            .expect("an events check");
        if !c.ok {
            assert!(r.is_ready(), "advisory: still ready: {r:?}");
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(check.advisory);
    let detail = check.detail.unwrap();
    assert!(detail.contains("nobody-listens"), "{detail}");
    let m = gw.gateway.metrics.render();
    assert_eq!(
        metric_sum(&m, "bucketgate_events_queue_reachable", "share=\"data\""),
        0.0
    );
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let fh = put_file(&mut c, &root, "still.txt", b"serving").await;
    assert_eq!(read_all(&mut c, &fh).await, b"serving");
    gw.shutdown().await;
}
