//! The FUSE mount of a share (`[[share]] fuse_mount`) with real tools: files written
//! through it reach the bucket and NFS clients and the reverse, tar, cp -a, git and
//! rsync work on it, group permissions hold both ways, and a mount left by a killed
//! gateway is taken back at the next start. Needs /dev/fuse and root (CI has both);
//! without them these tests fail rather than pass untested.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::child::{ChildGateway, bucket_contents};
use common::gateway::{audit_lines, flush, s3_config, share_with, start};
use common::nfs::*;
use common::s3server::S3TestServer;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> String {
    run(Command::new("sh").arg("-ec").arg(script))
}

fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let p = path.to_str().unwrap();
    mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(p))
}

async fn fuse_gateway(srv: &S3TestServer, dir: &Path) -> (bucketgate::gateway::Running, PathBuf) {
    let mnt = dir.join("mnt");
    let cfg = share_with(&s3_config(dir, srv, ""), |s| s.fuse_mount = Some(mnt.clone()));
    let gw = start(cfg, Some((srv.access_key.clone(), srv.secret_key.clone()))).await;
    assert!(mounted(&mnt), "the share is mounted at {}", mnt.display());
    (gw, mnt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_pass_between_fuse_nfs_and_the_bucket() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (gw, mnt) = fuse_gateway(&srv, tmp.path()).await;
    let m = mnt.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir(m.join("docs")).unwrap();
        // Made by root here; NFS callers are uid 1000.
        std::fs::set_permissions(
            m.join("docs"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let mut f = std::fs::File::create(m.join("docs/from-fuse.txt")).unwrap();
        std::io::Write::write_all(&mut f, b"written through FUSE").unwrap();
        f.sync_all().unwrap();
    })
    .await
    .unwrap();

    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let docs = lookup(&mut c, &root, "docs").await.unwrap();
    let f = lookup(&mut c, &docs, "from-fuse.txt").await.unwrap();
    assert_eq!(read_all(&mut c, &f).await, b"written through FUSE");
    put_file(&mut c, &docs, "from-nfs.txt", b"written through NFS").await;

    let m = mnt.clone();
    let (read, listed) = tokio::task::spawn_blocking(move || {
        let read = std::fs::read(m.join("docs/from-nfs.txt")).unwrap();
        let mut listed: Vec<String> = std::fs::read_dir(m.join("docs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        (read, listed)
    })
    .await
    .unwrap();
    assert_eq!(read, b"written through NFS");
    assert_eq!(listed, ["from-fuse.txt", "from-nfs.txt"]);

    // A file open on the FUSE side, its pages cached, then rewritten over NFS (same
    // size): the next read through the open descriptor sees the new bytes.
    let m = mnt.clone();
    let open = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(m.join("docs/from-nfs.txt")).unwrap();
        let mut buf = vec![0; 64];
        let n = std::os::unix::fs::FileExt::read_at(&f, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"written through NFS");
        f
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await; // a later mtime
    let nf = lookup(&mut c, &docs, "from-nfs.txt").await.unwrap();
    write_at(
        &mut c,
        &nf,
        0,
        b"REWRITTEN over NFS!",
        nfs3_types::nfs3::stable_how::FILE_SYNC,
    )
    .await
    .unwrap();
    let again = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; 64];
        let n = std::os::unix::fs::FileExt::read_at(&open, &mut buf, 0).unwrap();
        buf.truncate(n);
        buf
    })
    .await
    .unwrap();
    assert_eq!(again, b"REWRITTEN over NFS!", "stale pages after an NFS write");
    // Closed, its pages kept (FOPEN_KEEP_CACHE), rewritten again: a new open reads the
    // new bytes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_at(
        &mut c,
        &nf,
        0,
        b"REWRITTEN once more",
        nfs3_types::nfs3::stable_how::FILE_SYNC,
    )
    .await
    .unwrap();
    let m = mnt.clone();
    let reopened = tokio::task::spawn_blocking(move || std::fs::read(m.join("docs/from-nfs.txt")).unwrap())
        .await
        .unwrap();
    assert_eq!(reopened, b"REWRITTEN once more", "stale pages kept across opens");

    flush(&gw).await;
    let bucket = bucket_contents(&srv).await;
    assert_eq!(
        bucket.get("docs/from-fuse.txt").map(Vec::as_slice),
        Some(&b"written through FUSE"[..])
    );
    assert_eq!(
        bucket.get("docs/from-nfs.txt").map(Vec::as_slice),
        Some(&b"REWRITTEN once more"[..])
    );

    // An object another client puts is read through FUSE once listed.
    srv.client
        .put_object()
        .bucket(&srv.bucket)
        .key("docs/from-s3.txt")
        .body(b"put by another client".to_vec().into())
        .send()
        .await
        .unwrap();
    gw.gateway.shares[0]
        .share
        .rt
        .refresh(bucketgate_cache::ROOT_ID, true)
        .await
        .unwrap();
    let m = mnt.clone();
    let read = tokio::task::spawn_blocking(move || std::fs::read(m.join("docs/from-s3.txt")).unwrap())
        .await
        .unwrap();
    assert_eq!(read, b"put by another client");
    gw.shutdown().await;
    assert!(!mounted(&mnt), "unmounted at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_cp_git_and_rsync_work_on_the_mount() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (gw, mnt) = fuse_gateway(&srv, tmp.path()).await;
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let (m, w) = (mnt.clone(), work.clone());
    tokio::task::spawn_blocking(move || {
        let (m, w) = (m.display().to_string(), w.display().to_string());
        // A source tree with nested directories, a symlink, modes and an empty file.
        sh(&format!(
            "cd {w} && mkdir -p src/a/b src/c && seq 1 20000 > src/a/b/numbers && \
             printf x > src/c/one && : > src/empty && chmod 0751 src/a && chmod 0600 src/c/one && \
             ln -s a/b/numbers src/link && tar -cf src.tar src"
        ));
        sh(&format!(
            "cd {m} && tar -xf {w}/src.tar && diff -r {w}/src {m}/src"
        ));
        sh(&format!("cp -a {w}/src {m}/copy && diff -r {w}/src {m}/copy"));
        // cp -a keeps modes and the symlink.
        let modes = sh(&format!(
            "stat -c '%a %F' {m}/copy/a {m}/copy/c/one {m}/copy/link"
        ));
        assert_eq!(modes, "751 directory\n600 regular file\n777 symbolic link\n");
        if common::have_tool("rsync", "rsync", "rsync -a onto the FUSE mount") {
            sh(&format!(
                "rsync -a {w}/src/ {m}/synced/ && diff -r {w}/src {m}/synced"
            ));
            // rsync again: nothing to send (sizes and mtimes kept).
            let again = sh(&format!("rsync -ai {w}/src/ {m}/synced/"));
            assert_eq!(again, "", "a second rsync found differences");
        }

        let git = |args: &str| {
            sh(&format!(
                "git -c user.name=t -c user.email=t@t -c init.defaultBranch=main {args}"
            ))
        };
        git(&format!(
            "init -q {w}/repo && cd {w}/repo && seq 1 100 > f && git add f && \
             git -c user.name=t -c user.email=t@t commit -qm one && git checkout -qb other && \
             seq 1 200 > f && echo new > g && git add f g && \
             git -c user.name=t -c user.email=t@t commit -qm two && git checkout -q main"
        ));
        git(&format!("clone -q {w}/repo {m}/clone"));
        let status = sh(&format!("cd {m}/clone && git status --porcelain"));
        assert_eq!(status, "", "a fresh clone is clean");
        sh(&format!(
            "cd {m}/clone && git checkout -q origin/other && test -f g && test $(wc -l < f) = 200"
        ));
        let status = sh(&format!(
            "cd {m}/clone && git status --porcelain && git fsck --no-progress"
        ));
        assert_eq!(status, "");
    })
    .await
    .unwrap();
    flush(&gw).await;
    let bucket = bucket_contents(&srv).await;
    let numbers: Vec<u8> = (1..=20000)
        .map(|n| format!("{n}\n"))
        .collect::<String>()
        .into_bytes();
    assert_eq!(bucket.get("src/a/b/numbers"), Some(&numbers));
    assert_eq!(bucket.get("copy/a/b/numbers"), Some(&numbers));
    assert!(bucket.contains_key("clone/.git/HEAD"));
    gw.shutdown().await;
}

/// The caller's supplementary groups reach the share layer: a member of the file's
/// group reads a 0640 file, someone outside the group does not, and the same for
/// writing into a 0770 directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_permissions_hold_both_ways() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (gw, mnt) = fuse_gateway(&srv, tmp.path()).await;
    let m = mnt.display().to_string();
    tokio::task::spawn_blocking(move || {
        sh(&format!(
            "mkdir {m}/team && chown 1000:50 {m}/team && chmod 0770 {m}/team && \
             echo secret > {m}/team/plan && chown 1000:50 {m}/team/plan && chmod 0640 {m}/team/plan"
        ));
        let as_user = |groups: &str, cmd: &str| {
            Command::new("setpriv")
                .args([
                    "--reuid=2000",
                    "--regid=2000",
                    &format!("--groups={groups}"),
                    "sh",
                    "-c",
                    cmd,
                ])
                .output()
                .unwrap()
        };
        let member = as_user(
            "50",
            &format!("cat {m}/team/plan && echo more > {m}/team/by-member"),
        );
        assert!(
            member.status.success(),
            "{}",
            String::from_utf8_lossy(&member.stderr)
        );
        assert_eq!(member.stdout, b"secret\n");
        let outsider = as_user("51", &format!("cat {m}/team/plan"));
        assert!(
            !outsider.status.success(),
            "an outsider read a 0640 file of group 50"
        );
        assert!(String::from_utf8_lossy(&outsider.stderr).contains("Permission denied"));
        let outsider = as_user("51", &format!("echo x > {m}/team/by-outsider"));
        assert!(
            !outsider.status.success(),
            "an outsider wrote into a 0770 directory of group 50"
        );
    })
    .await
    .unwrap();
    gw.shutdown().await;
}

/// kill -9 leaves the mount point dead (ENOTCONN); the next start takes it back and
/// serves what was written before the kill; SIGTERM unmounts.
#[test]
fn a_mount_left_by_a_killed_gateway_is_taken_back() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let srv = rt.block_on(S3TestServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let mut gw = ChildGateway::new(
        tmp.path(),
        &srv,
        "upload_delay = \"1h\"\nmax_dirty_age = \"1h\"",
        "",
    );
    let mut cfg = std::fs::read_to_string(&gw.config_path).unwrap();
    cfg.push_str(&format!("fuse_mount = \"{}\"\n", mnt.display()));
    std::fs::write(&gw.config_path, cfg).unwrap();
    gw.start();
    wait_mounted(&mnt);
    sh(&format!("echo kept > {0}/f && sync {0}/f", mnt.display()));
    gw.kill9();
    // statfs: a stat may be answered from attributes the kernel still holds.
    let out = Command::new("stat")
        .args(["-f", mnt.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not connected"), "{err}");
    gw.start();
    // The new mount, not the old one seen before the start took it away (then the
    // path is a plain directory: this read found no `f` in three full-suite runs).
    gw.wait_for_log("mounted with FUSE", 2);
    wait_mounted(&mnt);
    let kept = std::fs::read(mnt.join("f"))
        .unwrap_or_else(|e| panic!("reading f after the restart: {e}; gateway log:\n{}", gw.log()));
    assert_eq!(kept, b"kept\n");
    gw.stop();
    assert!(!mounted(&mnt), "SIGTERM unmounts");
    assert!(
        gw.log().contains("left by a gateway that stopped"),
        "{}",
        gw.log()
    );
}

fn wait_mounted(mnt: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(mounted(mnt) && std::fs::metadata(mnt).is_ok()) {
        assert!(
            std::time::Instant::now() < deadline,
            "not mounted at {}",
            mnt.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Changes made through the FUSE mount are in the share's audit log like NFS ones,
/// with the local caller's uid and process; a closed file's next write is a new
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_the_mount_are_audited() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, log) = (tmp.path().join("mnt"), tmp.path().join("audit.jsonl"));
    let cfg = share_with(&s3_config(tmp.path(), &srv, ""), |s| {
        s.fuse_mount = Some(mnt.clone());
        s.audit_log = Some(log.clone());
    });
    let gw = start(cfg, Some((srv.access_key.clone(), srv.secret_key.clone()))).await;
    let m = mnt.display().to_string();
    tokio::task::spawn_blocking(move || {
        sh(&format!(
            "mkdir {m}/proj && chmod 0777 {m}/proj && \
             setpriv --reuid=2000 --regid=2000 --clear-groups sh -ec '\
               echo hi > {m}/proj/a.txt; echo more >> {m}/proj/a.txt; chmod 0600 {m}/proj/a.txt; \
               mv {m}/proj/a.txt {m}/proj/b.txt; ln -s b.txt {m}/proj/link; rm {m}/proj/b.txt {m}/proj/link' && \
             rmdir {m}/proj"
        ));
    })
    .await
    .unwrap();
    let expect = [
        ("mkdir", "/proj", 0),
        ("setattr", "/proj", 0),
        ("create", "/proj/a.txt", 2000),
        ("write", "/proj/a.txt", 2000),
        ("write", "/proj/a.txt", 2000),
        ("setattr", "/proj/a.txt", 2000),
        ("rename", "/proj/a.txt", 2000),
        ("symlink", "/proj/link", 2000),
        ("remove", "/proj/b.txt", 2000),
        ("remove", "/proj/link", 2000),
        ("rmdir", "/proj", 0),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines: Vec<serde_json::Value> = loop {
        let l = audit_lines(&log);
        if l.len() >= expect.len() || std::time::Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let got: Vec<(String, String, u64)> = lines
        .iter()
        .map(|l| {
            assert_eq!(
                (&l["via"], &l["client"], &l["status"]),
                (&"fuse".into(), &"local".into(), &"OK".into()),
                "{l}"
            );
            assert!(l["pid"].as_u64().is_some_and(|p| p > 1), "{l}");
            (
                l["op"].as_str().unwrap().to_string(),
                l["path"].as_str().unwrap().to_string(),
                l["uid"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, u64)> = expect
        .iter()
        .map(|(o, p, u)| (o.to_string(), p.to_string(), *u))
        .collect();
    assert_eq!(got, want);
    let by = |op: &str| lines.iter().find(|l| l["op"] == op).unwrap();
    assert_eq!(by("rename")["new_path"], "/proj/b.txt");
    assert_eq!(by("symlink")["target"], "b.txt");
    assert_eq!(lines[5]["attrs"]["mode"], "0600");
    let text = gw.gateway.metrics.render();
    for series in [
        "bucketgate_fuse_calls_total{op=\"create\",share=\"data\",status=\"OK\"} 1",
        "bucketgate_fuse_calls_total{op=\"rmdir\",share=\"data\",status=\"OK\"} 1",
        "bucketgate_fuse_call_duration_seconds_count{op=\"rename\",share=\"data\"} 1",
    ] {
        assert!(text.contains(series), "{series} in\n{text}");
    }
    gw.shutdown().await;
}

/// What the kernel cannot see for itself reaches it at once, not when its one-second
/// attribute cache expires: a newer object found by a refresh replaces the pages of
/// a file held open, and a name removed over NFS is gone from the mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_elsewhere_reach_the_kernel_at_once() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (gw, mnt) = fuse_gateway(&srv, tmp.path()).await;
    let m = mnt.clone();
    let open = tokio::task::spawn_blocking(move || {
        std::fs::write(m.join("g"), b"doomed").unwrap();
        std::fs::write(m.join("f"), b"one").unwrap();
        let f = std::fs::File::open(m.join("f")).unwrap();
        let mut buf = vec![0; 16];
        let n = std::os::unix::fs::FileExt::read_at(&f, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"one");
        assert!(m.join("g").exists());
        f
    })
    .await
    .unwrap();
    flush(&gw).await;
    srv.their_put("f", b"two!", None).await;
    let api = bucketgate::gateway::admin_api(&gw.gateway);
    api.refresh(bucketgate::admin::RefreshRequest::default())
        .await
        .unwrap();
    // Once the refresh has answered, the open file shows the store's newer version.
    let (read, open) = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; 16];
        let n = std::os::unix::fs::FileExt::read_at(&open, &mut buf, 0).unwrap();
        buf.truncate(n);
        (buf, open)
    })
    .await
    .unwrap();
    assert_eq!(read, b"two!", "the open file shows the store's newer version");
    drop(open);
    // Once the NFS reply has come, the name is gone from the mount.
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    remove(&mut c, &root, "g").await.unwrap();
    let m = mnt.clone();
    let g_exists = tokio::task::spawn_blocking(move || m.join("g").exists())
        .await
        .unwrap();
    assert!(!g_exists, "a name removed over NFS is gone from the mount");
    gw.shutdown().await;
}

/// `du` (st_blocks) counts what a file holds on the cache disk: a sparse file only
/// the blocks written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn du_counts_the_blocks_a_sparse_file_holds() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (gw, mnt) = fuse_gateway(&srv, tmp.path()).await;
    let m = mnt.display().to_string();
    let du = tokio::task::spawn_blocking(move || {
        sh(&format!(
            "truncate -s 1G {m}/sparse && printf end >> {m}/sparse && \
             head -c 100000 /dev/zero > {m}/dense && du -k {m}/sparse {m}/dense"
        ))
    })
    .await
    .unwrap();
    let kib: Vec<u64> = du
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(kib[0] <= 1024, "du of a 1 GiB sparse file holding 3 bytes: {du}");
    assert!((98..=160).contains(&kib[1]), "du of a 100,000-byte file: {du}");
    gw.shutdown().await;
}

/// A file removed, or replaced by a rename, while open through the mount stays
/// readable and writable through its descriptors (link count 0), as on a local
/// disk, while its name and its object are gone at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_removed_while_open_stays_readable_through_its_descriptors() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (gw, mnt) = fuse_gateway(&srv, tmp.path()).await;
    let m = mnt.clone();
    let (removed, replaced) = tokio::task::spawn_blocking(move || {
        std::fs::write(m.join("old"), b"old bytes").unwrap();
        std::fs::write(m.join("new"), b"new bytes").unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(m.join("gone"))
            .unwrap();
        f.write_all_at(b"before", 0).unwrap();
        let replaced = std::fs::File::open(m.join("old")).unwrap();
        std::fs::remove_file(m.join("gone")).unwrap();
        std::fs::rename(m.join("new"), m.join("old")).unwrap();
        (f, replaced)
    })
    .await
    .unwrap();
    flush(&gw).await;
    let keys: Vec<String> = bucket_contents(&srv).await.into_keys().collect();
    assert_eq!(keys, ["old"], "the removed file's object is gone at once");
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    assert!(lookup(&mut c, &root, "gone").await.is_err());
    let old = lookup(&mut c, &root, "old").await.unwrap();
    assert_eq!(read_all(&mut c, &old).await, b"new bytes");

    let m = mnt.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(removed.metadata().unwrap().nlink(), 0);
        removed.write_all_at(b", after", 6).unwrap();
        let mut buf = vec![0; 32];
        let n = removed.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"before, after");
        assert_eq!(removed.metadata().unwrap().len(), 13);
        let n = replaced.read_at(&mut buf, 0).unwrap();
        assert_eq!(
            &buf[..n],
            b"old bytes",
            "the replaced file, through its descriptor"
        );
        assert!(!m.join("gone").exists());
        assert_eq!(std::fs::read(m.join("old")).unwrap(), b"new bytes");
    })
    .await
    .unwrap();
    gw.shutdown().await;
}
