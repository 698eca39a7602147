//! kill -9 of the real `bucketgate serve` binary, then a restart on the same cache:
//! what was committed survives and reaches the bucket; a multipart upload cut off
//! in the middle is redone and leaves no upload behind; a directory rename cut off
//! between copies and deletes leaves every file under its old or new key, and ends
//! with every file under its new key only.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::child::{ChildGateway, bucket_contents, bucket_keys, multipart_uploads, part_count};
use common::nfs::*;
use common::s3server::S3TestServer;
use nfs3_types::nfs3::stable_how;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_writes_survive_kill9_and_reach_the_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3TestServer::start().await;
    // Nothing is uploaded before the kill: everything must come from the cache disk.
    let mut gw = ChildGateway::new(
        tmp.path(),
        &s3,
        "upload_delay = \"1h\"\nmax_dirty_age = \"1h\"",
        "",
    );
    blocking(|| gw.start());
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut handles = Vec::new();

    // UNSTABLE writes then COMMIT, as the Linux client does.
    for i in 0..6 {
        let data = body(1000 + i * 70_000, i as u64);
        let n = format!("committed-{i}");
        let fh = put_file(&mut c, &root, &n, &data).await;
        handles.push((n.clone(), fh));
        model.insert(n, data);
    }
    // FILE_SYNC writes need no COMMIT.
    let sub = mkdir(&mut c, &root, "sub", 0o755).await;
    model.insert("sub/".into(), Vec::new());
    let fh = create(&mut c, &sub, "filesync", 0o644).await;
    let data = body(200_000, 99);
    let mut verf_before = None;
    for (i, chunk) in data.chunks(65536).enumerate() {
        let r = write_at(&mut c, &fh, (i * 65536) as u64, chunk, stable_how::FILE_SYNC)
            .await
            .expect("write");
        assert_eq!(r.committed, stable_how::FILE_SYNC);
        verf_before = Some(r.verf);
    }
    handles.push(("sub/filesync".into(), fh));
    model.insert("sub/filesync".into(), data);
    // An overwrite in the middle of a committed file, committed again.
    let (n, fh) = handles[2].clone();
    let patch = body(5000, 1234);
    write_at(&mut c, &fh, 100, &patch, stable_how::UNSTABLE)
        .await
        .unwrap();
    commit(&mut c, &fh).await;
    model.get_mut(&n).unwrap()[100..5100].copy_from_slice(&patch);

    let early = bucket_contents(&s3).await;
    assert!(
        early.is_empty(),
        "nothing may be uploaded before the kill (upload_delay 1h): {:?}",
        early.keys().collect::<Vec<_>>()
    );
    drop(c);
    blocking(|| gw.kill9());

    blocking(|| gw.start());
    let mut c = mount(gw.nfs_addr).await;
    // The old handles still work and read every committed byte.
    for (n, fh) in &handles {
        assert_eq!(&read_all(&mut c, fh).await, &model[n], "{n} after kill -9");
    }
    // The write verifier differs, so clients resend what was not committed.
    let root = c.root_nfs_fh3();
    let probe = create(&mut c, &root, "probe", 0o644).await;
    let r = write_at(&mut c, &probe, 0, b"x", stable_how::UNSTABLE)
        .await
        .unwrap();
    assert_ne!(
        Some(r.verf),
        verf_before,
        "write verifier must change across a restart"
    );
    model.insert("probe".into(), b"x".to_vec());
    commit(&mut c, &probe).await;

    blocking(|| gw.flush_wait(60));
    let bucket = bucket_contents(&s3).await;
    assert_eq!(
        bucket.keys().collect::<Vec<_>>(),
        model.keys().collect::<Vec<_>>()
    );
    assert!(bucket == model, "bucket bodies equal the model");
    blocking(|| gw.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_multipart_upload_redoes_it_and_leaks_no_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3TestServer::start().await;
    let mut gw = ChildGateway::new(
        tmp.path(),
        &s3,
        "upload_delay = \"100ms\"\nmax_dirty_age = \"1s\"",
        "multipart_threshold = \"5MiB\"\npart_size = \"5MiB\"\npart_concurrency = 1",
    );
    blocking(|| gw.start());
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let data = body(60 << 20, 7);
    let fh = put_file(&mut c, &root, "big.bin", &data).await;
    drop(c);

    // Kill as soon as the server holds an unfinished multipart upload with a part.
    // (One created in the moment before its id is recorded holds none: the gateway
    // cannot tell it from another writer's, and leaves it to the bucket's lifecycle
    // rule; it costs nothing stored.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((key, id)) = multipart_uploads(&s3).await.first()
            && part_count(&s3, key, id).await > 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no multipart upload started: {}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    blocking(|| gw.kill9());
    assert!(
        !multipart_uploads(&s3).await.is_empty(),
        "killed with an upload in flight"
    );
    assert!(
        !bucket_contents(&s3).await.contains_key("big.bin"),
        "killed before the upload completed"
    );

    blocking(|| gw.start());
    blocking(|| gw.flush_wait(120));
    let mut c = mount(gw.nfs_addr).await;
    assert_eq!(read_all(&mut c, &fh).await, data, "old handle reads the file");
    let bucket = bucket_contents(&s3).await;
    assert_eq!(bucket.len(), 1);
    assert!(bucket["big.bin"] == data, "object equals the file");
    assert_eq!(
        multipart_uploads(&s3).await,
        Vec::<(String, String)>::new(),
        "no multipart upload left"
    );
    blocking(|| gw.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_directory_rename_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3TestServer::start().await;
    let mut gw = ChildGateway::new(
        tmp.path(),
        &s3,
        "upload_delay = \"50ms\"\nmax_dirty_age = \"1s\"",
        "concurrency = 1",
    );
    blocking(|| gw.start());
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let old = mkdir(&mut c, &root, "old", 0o755).await;
    let count = 150;
    let mut files = Vec::new();
    for i in 0..count {
        let data = body(100 + i * 13, 1000 + i as u64);
        let n = format!("f{i:03}");
        let fh = put_file(&mut c, &old, &n, &data).await;
        files.push((n, fh, data));
    }
    blocking(|| gw.flush_wait(60));
    assert_eq!(bucket_contents(&s3).await.len(), count + 1);

    rename(&mut c, &root, "old", &root, "new").await.unwrap();
    drop(c);
    // Kill once the copies have begun (some new keys exist) but before they end.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copied = bucket_keys(&s3)
            .await
            .iter()
            .filter(|k| k.starts_with("new/f"))
            .count();
        if copied > 0 {
            blocking(|| gw.kill9());
            break;
        }
        assert!(Instant::now() < deadline, "rename never started: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let keys = bucket_keys(&s3).await;
    let copied = keys.iter().filter(|k| k.starts_with("new/f")).count();
    let left = keys.iter().filter(|k| k.starts_with("old/f")).count();
    eprintln!("killed with {copied} of {count} copied, {left} old keys left");
    assert!(
        copied < count,
        "killed before the rename finished: {copied} copied"
    );

    // At any moment, every file is under its old key or its new key (or both).
    let now = bucket_contents(&s3).await;
    for (n, _, data) in &files {
        let o = now.get(&format!("old/{n}"));
        let nw = now.get(&format!("new/{n}"));
        assert!(
            o == Some(data) || nw == Some(data),
            "{n} lost at the kill: old {:?} new {:?}",
            o.map(|b| b.len()),
            nw.map(|b| b.len())
        );
    }

    blocking(|| gw.start());
    blocking(|| gw.flush_wait(120));
    let bucket = bucket_contents(&s3).await;
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    model.insert("new/".into(), Vec::new());
    for (n, _, data) in &files {
        model.insert(format!("new/{n}"), data.clone());
    }
    assert_eq!(
        bucket.keys().collect::<Vec<_>>(),
        model.keys().collect::<Vec<_>>()
    );
    assert!(bucket == model);
    // The old handles still work after the rename and the restart.
    let mut c = mount(gw.nfs_addr).await;
    for (n, fh, data) in files.iter().step_by(10) {
        assert_eq!(&read_all(&mut c, fh).await, data, "{n}");
    }
    blocking(|| gw.stop());
}

/// A directory whose objects another client wrote and the gateway never listed (only
/// its parent was): the rename moves every one of them, at every depth, and a kill -9
/// in the middle of the copies loses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_a_rename_of_objects_never_listed_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3TestServer::start().await;
    let count = 120;
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..count {
        let rel = match i % 3 {
            0 => format!("f{i:03}"),
            1 => format!("a/f{i:03}"),
            _ => format!("a/b/c/f{i:03}"),
        };
        let data = body(50 + i * 7, 5000 + i as u64);
        s3.client
            .put_object()
            .bucket(&s3.bucket)
            .key(format!("theirs/{rel}"))
            .body(aws_sdk_s3::primitives::ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        model.insert(format!("moved/{rel}"), data);
    }
    let mut gw = ChildGateway::new(
        tmp.path(),
        &s3,
        "upload_delay = \"50ms\"\nmax_dirty_age = \"1s\"",
        "concurrency = 1",
    );
    blocking(|| gw.start());
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    assert_eq!(list_names(&mut c, &root).await, ["theirs"]);
    rename(&mut c, &root, "theirs", &root, "moved").await.unwrap();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if bucket_keys(&s3).await.iter().any(|k| k.starts_with("moved/")) {
            blocking(|| gw.kill9());
            break;
        }
        assert!(Instant::now() < deadline, "rename never started: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let copied = bucket_keys(&s3)
        .await
        .iter()
        .filter(|k| k.starts_with("moved/f") || k.starts_with("moved/a/"))
        .count();
    eprintln!("killed with {copied} of {count} objects copied");
    blocking(|| gw.start());
    blocking(|| gw.flush_wait(120));
    let bucket = bucket_contents(&s3).await;
    let objects: BTreeMap<String, Vec<u8>> = bucket.into_iter().filter(|(k, _)| !k.ends_with('/')).collect();
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        model.keys().collect::<Vec<_>>(),
        "every object under its new key, none under the old"
    );
    assert!(objects == model, "bytes");
    blocking(|| gw.stop());
}

/// NFSv3 namespace operations (CREATE, MKDIR, SYMLINK, RENAME, REMOVE, SETATTR) are
/// stable when answered, as RFC 1813 asks: a kill -9 right after the replies keeps
/// every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_namespace_changes_survive_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3TestServer::start().await;
    let mut gw = ChildGateway::new(
        tmp.path(),
        &s3,
        "upload_delay = \"1h\"\nmax_dirty_age = \"1h\"",
        "",
    );
    blocking(|| gw.start());
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let gone = put_file(&mut c, &root, "gone", b"bye").await;
    // No COMMIT and no FILE_SYNC write after this point.
    let d = mkdir(&mut c, &root, "d", 0o750).await;
    let a = create(&mut c, &root, "a", 0o644).await;
    let b = create(&mut c, &root, "b", 0o644).await;
    symlink(&mut c, &d, "l", "../a").await;
    rename(&mut c, &root, "b", &d, "b2").await.unwrap();
    remove(&mut c, &root, "gone").await.unwrap();
    set_mode(&mut c, &a, 0o600).await.unwrap();
    // Last before the kill: an extending WRITE and its COMMIT (the size is metadata).
    write_at(&mut c, &b, 0, b"committed", stable_how::UNSTABLE)
        .await
        .unwrap();
    commit(&mut c, &b).await;
    blocking(|| gw.kill9());

    blocking(|| gw.start());
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let mut names = list_names(&mut c, &root).await;
    names.sort();
    assert_eq!(names, ["a", "d"], "root after kill -9");
    let mut names = list_names(&mut c, &d).await;
    names.sort();
    assert_eq!(names, ["b2", "l"], "d after kill -9");
    assert_eq!(
        lookup(&mut c, &d, "b2").await.unwrap(),
        b,
        "renamed file keeps its handle"
    );
    assert_eq!(getattr(&mut c, &a).await.unwrap().mode, 0o600);
    assert_eq!(getattr(&mut c, &d).await.unwrap().mode, 0o750);
    assert_eq!(read_all(&mut c, &b).await, b"committed");
    assert_eq!(
        getattr(&mut c, &gone).await.err(),
        Some(nfs3_types::nfs3::nfsstat3::NFS3ERR_STALE)
    );
    blocking(|| gw.flush_wait(60));
    let keys = bucket_keys(&s3).await;
    let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["a", "d/", "d/b2", "d/l"]);
    blocking(|| gw.stop());
}

/// One client of the random-kill test: CREATE + WRITE 4 KiB FILE_SYNC until the
/// gateway goes away; the names whose two replies both came back, with their bytes.
async fn durable_writer(addr: std::net::SocketAddr, prefix: String) -> Vec<(String, Vec<u8>)> {
    use nfs3_types::nfs3::*;
    use nfs3_types::xdr_codec::Opaque;
    // A call cut off by the kill may never be answered: one without a reply in time
    // was not acknowledged either.
    const REPLY: Duration = Duration::from_secs(2);
    let mut acked = Vec::new();
    let Ok(mut c) = tokio::time::timeout(REPLY, mount(addr)).await else {
        return acked;
    };
    let root = c.root_nfs_fh3();
    for i in 0u64.. {
        let name = format!("{prefix}-{i:05}");
        let data = body(4096, i ^ prefix.len() as u64);
        let created = tokio::time::timeout(
            REPLY,
            c.create(&CREATE3args {
                where_: diropargs3 {
                    dir: root.clone(),
                    name: filename3(Opaque::owned(name.clone().into_bytes())),
                },
                how: createhow3::UNCHECKED(mode_attr(0o644)),
            }),
        )
        .await;
        let fh = match created {
            Ok(Ok(Nfs3Result::Ok(CREATE3resok {
                obj: Nfs3Option::Some(fh),
                ..
            }))) => fh,
            _ => return acked, // the gateway is gone
        };
        let written = tokio::time::timeout(
            REPLY,
            c.write(&WRITE3args {
                file: fh,
                offset: 0,
                count: data.len() as u32,
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(&data),
            }),
        )
        .await;
        match written {
            Ok(Ok(Nfs3Result::Ok(ok))) if ok.committed == stable_how::FILE_SYNC => acked.push((name, data)),
            _ => return acked,
        }
    }
    acked
}

/// Many clients create small files and write them FILE_SYNC while the gateway is
/// killed with SIGKILL at random moments (uploads running meanwhile): after each
/// restart every file whose WRITE reply came back exists with its bytes, and at the
/// end all of them are in the bucket. Shared metadata flushes (group commit) must
/// never answer a request before its own change is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_small_files_survive_kill9_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3TestServer::start().await;
    let mut gw = ChildGateway::new(tmp.path(), &s3, "upload_delay = \"200ms\"", "");
    let mut acked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for round in 0..3 {
        blocking(|| gw.start());
        let writers: Vec<_> = (0..8)
            .map(|w| tokio::spawn(durable_writer(gw.nfs_addr, format!("r{round}w{w}"))))
            .collect();
        let after = Duration::from_millis(200 + rand::random::<u64>() % 1300);
        tokio::time::sleep(after).await;
        blocking(|| gw.kill9());
        for w in writers {
            let got = tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .expect("a writer ends once the gateway is gone")
                .unwrap();
            acked.extend(got);
        }
        // Restarted: every acknowledged file so far, with its bytes.
        blocking(|| gw.start());
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        for (name, data) in &acked {
            let fh = lookup(&mut c, &root, name)
                .await
                .unwrap_or_else(|e| panic!("round {round}: acknowledged {name} is gone: {e:?}"));
            assert_eq!(&read_all(&mut c, &fh).await, data, "round {round}: {name}");
        }
        blocking(|| gw.kill9());
    }
    assert!(acked.len() >= 50, "only {} files acknowledged", acked.len());
    blocking(|| gw.start());
    blocking(|| gw.flush_wait(120));
    let bucket = bucket_contents(&s3).await;
    for (name, data) in &acked {
        assert_eq!(bucket.get(name), Some(data), "{name} in the bucket");
    }
    blocking(|| gw.stop());
}
