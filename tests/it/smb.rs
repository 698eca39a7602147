//! SMB through Samba: a share with `smb = true` and `[smb] run_smbd`, served by a
//! real smbd over the share's FUSE mount and used with smbclient (SMB 3), against the
//! in-process S3 server. Needs Debian's samba, samba-vfs-modules and smbclient.

use crate::common;

use std::path::Path;

use common::child::{bucket_contents, free_port};
use common::gateway::{flush, s3_config, share_with, start};
use common::nfs::*;
use common::s3server::S3TestServer;

/// Whether smbd and smbclient are here; says SKIPPED when not.
fn samba_here() -> bool {
    common::have_tool("smbd", "samba samba-vfs-modules", "SMB through smbd")
        && common::have_tool("smbclient", "smbclient", "SMB through smbd")
}

/// smbclient against `//127.0.0.1/data` on `port` (SMB 3) with `auth`, running
/// `commands` in `dir`: whether it exited well, and what it printed.
fn smbclient_as(port: u16, auth: &[String], dir: &Path, commands: &str) -> (bool, String) {
    let out = std::process::Command::new("smbclient")
        .args(["//127.0.0.1/data", "-p", &port.to_string(), "-m", "SMB3"])
        .args(auth)
        .args(["-c", commands])
        .current_dir(dir)
        .output()
        .expect("running smbclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// [`smbclient_as`] the guest; panics with its output when it fails.
fn smbclient(port: u16, dir: &Path, commands: &str) -> String {
    let (ok, text) = smbclient_as(port, &["-N".to_string()], dir, commands);
    // smbclient's exit status says little for -c scripts: it prints NT_STATUS_ codes.
    assert!(
        ok && !text.contains("NT_STATUS_"),
        "smbclient -c '{commands}' failed:\n{text}"
    );
    text
}

/// A guest SMB session that stays open until the child is killed.
fn open_session(port: u16) -> std::process::Child {
    std::process::Command::new("smbclient")
        .args(["//127.0.0.1/data", "-p", &port.to_string(), "-N", "-m", "SMB3"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// A config for an in-process gateway whose share `data` is also an SMB share, as
/// `smb` sets it, served by an smbd the gateway runs on `port`, its state in `dir`.
fn smb_config(
    dir: &Path,
    srv: &S3TestServer,
    port: u16,
    smb: impl FnOnce(&mut bucketgate::config::ShareConfig),
) -> bucketgate::config::Config {
    let mut cfg = share_with(&s3_config(dir, srv, ""), |s| {
        s.fuse_mount = Some(dir.join("mnt"));
        s.smb = true;
        smb(s);
    });
    cfg.smb.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.smb.run_smbd = true;
    cfg.smb.state_dir = Some(dir.join("smb"));
    cfg
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smbclient_reads_and_writes_a_guest_share() {
    if !samba_here() {
        return;
    }
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().port();
    let cfg = smb_config(tmp.path(), &srv, port, |s| s.smb_guest = true);
    let gw = start(cfg, Some((srv.access_key.clone(), srv.secret_key.clone()))).await;
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let big = body(64 << 20, 7);
    std::fs::write(work.join("big.in"), &big).unwrap();

    let w = work.clone();
    let listing = tokio::task::spawn_blocking(move || {
        smbclient(
            port,
            &w,
            "mkdir docs; put big.in docs\\big.bin; get docs\\big.bin big.out; \
             put big.in gone.bin; rename gone.bin docs\\moved.bin; put big.in del.bin; del del.bin; \
             ls docs\\*",
        )
    })
    .await
    .unwrap();
    assert_eq!(
        sha256(&std::fs::read(work.join("big.out")).unwrap()),
        sha256(&big),
        "64 MiB put and got back over SMB"
    );
    assert!(
        listing.contains("big.bin") && listing.contains("moved.bin"),
        "{listing}"
    );

    // What SMB wrote, NFS reads; what NFS writes, SMB reads.
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let docs = lookup(&mut c, &root, "docs").await.unwrap();
    let f = lookup(&mut c, &docs, "big.bin").await.unwrap();
    assert_eq!(sha256(&read_all(&mut c, &f).await), sha256(&big));
    let a = getattr(&mut c, &f).await.unwrap();
    assert_eq!(
        (a.uid, a.gid, a.mode),
        (65534, 65534, 0o664),
        "the guest's file, create mask 0664"
    );
    // (docs is the guest's, 0775: uid 1000 writes beside it.)
    put_file(&mut c, &root, "from-nfs.txt", b"written over NFS").await;
    let w = work.clone();
    tokio::task::spawn_blocking(move || smbclient(port, &w, "get from-nfs.txt nfs.out"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(work.join("nfs.out")).unwrap(), b"written over NFS");

    // An open session shows on /metrics, by dialect (from smbstatus).
    let mut live = open_session(port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = gw.gateway.metrics.render();
        if text.contains("bucketgate_smb_sessions{dialect=\"SMB3_11\"} 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no SMB session on /metrics:\n{}",
            text.lines()
                .filter(|l| l.contains("smb"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = live.kill();
    let _ = live.wait();

    // Renames and deletes reached the bucket as over NFS; the owner is in the metadata.
    flush(&gw).await;
    let bucket = bucket_contents(&srv).await;
    let mut keys: Vec<&String> = bucket.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["docs/", "docs/big.bin", "docs/moved.bin", "from-nfs.txt"],
        "the bucket after the SMB session"
    );
    assert_eq!(sha256(&bucket["docs/moved.bin"]), sha256(&big));
    let head = srv
        .client
        .head_object()
        .bucket(&srv.bucket)
        .key("docs/big.bin")
        .send()
        .await
        .unwrap();
    let meta = head.metadata().unwrap();
    assert_eq!(meta.get("file-owner").map(String::as_str), Some("65534"));
    assert_eq!(meta.get("file-permissions").map(String::as_str), Some("0100664"));
    gw.shutdown().await;
    let log = std::fs::read_to_string(tmp.path().join("smb/log/smbd.log")).unwrap_or_default();
    assert!(log.contains("smbd version"), "smbd logs to its log file: {log:?}");
    assert_no_smbd_left(&tmp.path().join("smb"));
}

/// A Unix account made for a test, removed when dropped.
struct TestAccount(String);

impl Drop for TestAccount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel").arg(&self.0).status();
    }
}

/// A uid no account has, from 2000 on.
fn free_uid() -> u32 {
    (2000..3000)
        .find(|u| {
            !std::process::Command::new("getent")
                .args(["passwd", &u.to_string()])
                .status()
                .unwrap()
                .success()
        })
        .expect("a free uid")
}

/// A share for named users only, with encryption required: the user made by
/// `smb-user add` (Unix account and Samba entry) writes over an encrypted SMB 3
/// session and owns the file, in the object metadata too; a wrong password, the
/// guest and an SMB 2.1 session (which cannot encrypt) are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_share_with_encryption_required_knows_its_users() {
    if !samba_here() {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        common::skipped("SMB users: making a Unix account needs root");
        return;
    }
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().port();
    let name = format!("bgsmb{}", std::process::id());
    let mut cfg = smb_config(tmp.path(), &srv, port, |s| s.smb_users = vec![name.clone()]);
    cfg.smb.security = bucketgate::smb::SmbSecurity::Required;
    let uid = free_uid();
    bucketgate::smb::users::add(&cfg, &name, Some(uid), "Pa55-word").unwrap();
    let _account = TestAccount(name.clone());
    assert_eq!(bucketgate::smb::users::list(&cfg).unwrap(), [(name.clone(), uid)]);
    let gw = start(
        cfg.clone(),
        Some((srv.access_key.clone(), srv.secret_key.clone())),
    )
    .await;
    // The root directory is the share's default, 0777: anyone may create in it.
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("note.in"), b"from an SMB user").unwrap();
    let session = {
        let work = work.clone();
        move |auth: Vec<String>, commands: &str| smbclient_as(port, &auth, &work, commands).1
    };
    let user = |pw: &str| vec!["-U".to_string(), format!("{name}%{pw}")];
    let encrypt = "--client-protection=encrypt".to_string();
    let out = tokio::task::spawn_blocking({
        let (u, e) = (user("Pa55-word"), encrypt.clone());
        let s = session.clone();
        move || s([u, vec![e]].concat(), "put note.in note.txt; ls")
    })
    .await
    .unwrap();
    assert!(out.contains("note.txt") && !out.contains("NT_STATUS_"), "{out}");
    for (what, auth, status) in [
        (
            "a wrong password",
            [user("wrong"), vec![encrypt.clone()]].concat(),
            "NT_STATUS_LOGON_FAILURE",
        ),
        ("the guest", vec!["-N".to_string()], "NT_STATUS_"),
        // SMB 2.1 cannot encrypt (an SMB 3 client encrypts when the server says so).
        (
            "SMB 2.1",
            [user("Pa55-word"), vec!["-m".to_string(), "SMB2_10".to_string()]].concat(),
            "NT_STATUS_",
        ),
    ] {
        let s = session.clone();
        let out = tokio::task::spawn_blocking(move || s(auth, "ls")).await.unwrap();
        assert!(out.contains(status), "{what} got in:\n{out}");
    }
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let f = lookup(&mut c, &root, "note.txt").await.unwrap();
    let a = getattr(&mut c, &f).await.unwrap();
    assert_eq!(a.uid, uid, "owned by the SMB user");
    flush(&gw).await;
    let head = srv
        .client
        .head_object()
        .bucket(&srv.bucket)
        .key("note.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata().unwrap().get("file-owner").map(String::as_str),
        Some(uid.to_string().as_str())
    );
    gw.shutdown().await;
    bucketgate::smb::users::del(&cfg, &name).unwrap();
    assert!(bucketgate::smb::users::list(&cfg).unwrap().is_empty());
}

/// kill -9 of the gateway under a live SMB session: what SMB wrote and closed
/// (`strict sync`: an fsync of the mount, a COMMIT) survives and reaches the bucket,
/// and the restarted gateway serves SMB again, its smbd replacing the one the dead
/// gateway left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_a_live_smb_session_loses_nothing_closed_and_smb_comes_back() {
    if !samba_here() {
        return;
    }
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().port();
    // Uploads held back: the bytes are only in the cache when the gateway dies.
    let mut gw = common::child::ChildGateway::new(
        tmp.path(),
        &srv,
        "upload_delay = \"1h\"\nmax_dirty_age = \"1h\"",
        "",
    );
    let mut text = std::fs::read_to_string(&gw.config_path).unwrap();
    text.push_str(&format!(
        "fuse_mount = \"{}\"\nsmb = true\nsmb_guest = true\n[smb]\nlisten = \"127.0.0.1:{port}\"\nrun_smbd = true\nstate_dir = \"{}\"\n",
        tmp.path().join("mnt").display(),
        tmp.path().join("smb").display()
    ));
    std::fs::write(&gw.config_path, text).unwrap();
    tokio::task::block_in_place(|| {
        gw.start();
        gw.wait_for_log("smbd serving", 1);
    });
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let data = body(8 << 20, 3);
    std::fs::write(work.join("in.bin"), &data).unwrap();
    let w = work.clone();
    tokio::task::spawn_blocking(move || smbclient(port, &w, "put in.bin kept.bin"))
        .await
        .unwrap();
    // A second session that stays connected through the kill.
    let mut live = open_session(port);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| {
        gw.kill9();
        gw.start();
    });
    let _ = live.kill();
    let _ = live.wait();
    // serve starts smbd after its NFS port listens, once the mount is back (and the
    // old smbd, still answering on the port until then, is gone).
    tokio::task::block_in_place(|| gw.wait_for_log("smbd serving", 2));
    let w = work.clone();
    tokio::task::spawn_blocking(move || smbclient(port, &w, "get kept.bin out.bin"))
        .await
        .unwrap();
    assert_eq!(
        sha256(&std::fs::read(work.join("out.bin")).unwrap()),
        sha256(&data),
        "the file SMB closed before the kill"
    );
    tokio::task::block_in_place(|| gw.flush_wait(60));
    let bucket = bucket_contents(&srv).await;
    assert_eq!(
        sha256(&bucket["kept.bin"]),
        sha256(&data),
        "and it reached the bucket"
    );
    tokio::task::block_in_place(|| gw.stop());
    assert_no_smbd_left(&tmp.path().join("smb"));
}

/// No smbd runs on the smb.conf under `state`: the gateway stopped its own, and the
/// one a killed gateway left behind.
fn assert_no_smbd_left(state: &Path) {
    let left = std::process::Command::new("pgrep")
        .args(["-af", &state.display().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&left.stdout);
    assert!(
        !text.lines().any(|l| l.contains("smbd")),
        "smbd still runs: {text}"
    );
}
