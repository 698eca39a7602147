//! One client cannot hurt the others: file handles it did not get from the gateway
//! reach nothing, setuid/setgid bits follow Linux's rules for callers that are not
//! root, and hosts no share allows learn nothing. Real gateway on loopback, real
//! NFS client (nfs3_client).

use crate::common;

use std::time::Duration;

use bucketgate::config::{Config, Squash};
use bucketgate::nfs::Handle;
use common::gateway::{config, metric_sum, share_with, start};
use common::nfs::*;
use nfs3_types::nfs3::*;

const LIMIT: Duration = Duration::from_secs(60);

fn local_config(dir: &std::path::Path) -> Config {
    let url = format!("file://{}", dir.join("bucket").display());
    share_with(&config(dir, &url), |s| s.squash = Squash::None)
}

async fn read_status(c: &mut Client, fh: &nfs_fh3) -> Result<Vec<u8>, nfsstat3> {
    match c
        .read(&READ3args {
            file: fh.clone(),
            offset: 0,
            count: 4096,
        })
        .await
        .expect("rpc")
    {
        Nfs3Result::Ok(ok) => Ok(ok.data.to_vec()),
        Nfs3Result::Err((st, _)) => Err(st),
    }
}

/// The attack of issue 14: a client that knows its own handles and guesses (here:
/// knows exactly) the file id and generation of a file in another user's 0700
/// directory builds its handle. The MAC, which it cannot make, refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_handle_reaches_nothing() {
    tokio::time::timeout(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let gw = start(local_config(tmp.path()), None).await;
        let mut alice = mount_as(gw.nfs_addr, "/data", 1000, 1000).await;
        let root = alice.root_nfs_fh3();
        let private = mkdir(&mut alice, &root, "private", 0o700).await;
        let secret = put_file(&mut alice, &private, "secret", b"alice's").await;
        let mut bob = mount_as(gw.nfs_addr, "/data", 2000, 2000).await;
        let own = put_file(&mut bob, &root, "mine", b"bob's").await;
        assert_eq!(
            lookup(&mut bob, &private, "secret").await,
            Err(nfsstat3::NFS3ERR_ACCES)
        );

        let target = Handle::unverified(&secret.data).unwrap();
        let mut forged = own.data.to_vec();
        forged[5..13].copy_from_slice(&target.file_id.to_be_bytes());
        forged[13..17].copy_from_slice(&target.generation.to_be_bytes());
        let mut raw = raw_client(gw.nfs_addr, unix_cred(2000, 2000, &[])).await;
        assert_eq!(
            read_status(&mut raw, &fh(&forged)).await,
            Err(nfsstat3::NFS3ERR_BADHANDLE)
        );
        // Nor does a handle in the format from before handles had a MAC.
        assert_eq!(
            read_status(&mut raw, &fh(&forged[..17])).await.err(),
            Some(nfsstat3::NFS3ERR_BADHANDLE)
        );
        let mut old = vec![1u8];
        old.extend_from_slice(&forged[1..17]);
        assert_eq!(
            read_status(&mut raw, &fh(&old)).await,
            Err(nfsstat3::NFS3ERR_STALE)
        );
        // The real handles work.
        assert_eq!(read_status(&mut raw, &own).await.unwrap(), b"bob's");
        assert_eq!(read_all(&mut alice, &secret).await, b"alice's");
        let m = gw.gateway.metrics.render();
        assert_eq!(metric_sum(&m, "bucketgate_nfs_bad_handles_total", "forged"), 1.0);
        assert_eq!(metric_sum(&m, "bucketgate_nfs_bad_handles_total", "old"), 1.0);
        assert_eq!(
            metric_sum(&m, "bucketgate_nfs_bad_handles_total", "malformed"),
            1.0
        );
        gw.shutdown().await;

        // Handles stay valid across a restart (the key is kept with the cache).
        let gw = start(local_config(tmp.path()), None).await;
        let mut alice = mount_as(gw.nfs_addr, "/data", 1000, 1000).await;
        assert_eq!(read_all(&mut alice, &secret).await, b"alice's");
        gw.shutdown().await;
    })
    .await
    .expect("bounded");
}

async fn mode_of(c: &mut Conn, fh: &nfs_fh3) -> u32 {
    getattr(c, fh).await.unwrap().mode
}

/// setgid and setuid as Linux has them (CVE-2018-13405, CVE-2021-4037): a file made
/// in a setgid directory by someone not in its group loses setgid; so does a chmod by
/// an owner not in the file's group; a chown or chgrp by someone not root clears both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setgid_and_setuid_follow_linux() {
    tokio::time::timeout(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let gw = start(local_config(tmp.path()), None).await;
        let mut root_user = mount_as(gw.nfs_addr, "/data", 0, 0).await;
        let root = root_user.root_nfs_fh3();
        let team = mkdir(&mut root_user, &root, "team", 0o777).await;
        setattr(
            &mut root_user,
            &team,
            sattr3 {
                mode: Nfs3Option::Some(0o2777),
                gid: Nfs3Option::Some(50),
                ..sattr3::default()
            },
        )
        .await
        .unwrap();
        // uid 1000 is in groups 1000 and 100, not 50.
        let mut outsider = mount_cred(gw.nfs_addr, "/data", unix_cred(1000, 1000, &[100])).await;
        let f = create(&mut outsider, &team, "made-by-outsider", 0o2755).await;
        let a = getattr(&mut outsider, &f).await.unwrap();
        assert_eq!(
            (a.gid, a.mode),
            (50, 0o755),
            "the group is inherited, setgid is not kept"
        );
        // chmod by the owner, who is not in the file's group.
        assert_eq!(setattr(&mut outsider, &f, mode_attr(0o2755)).await, Ok(()));
        assert_eq!(mode_of(&mut outsider, &f).await, 0o755);
        // A member of group 50 keeps it.
        let mut member = mount_cred(gw.nfs_addr, "/data", unix_cred(1001, 1001, &[50])).await;
        let g = create(&mut member, &team, "made-by-member", 0o2755).await;
        assert_eq!(mode_of(&mut member, &g).await, 0o2755);
        // chgrp by the owner (to a group it is in) clears setuid and setgid.
        let own = create(&mut outsider, &root, "suid", 0o755).await;
        setattr(&mut outsider, &own, mode_attr(0o6755)).await.unwrap();
        assert_eq!(
            mode_of(&mut outsider, &own).await,
            0o6755,
            "its own group 1000: setgid kept by chmod"
        );
        setattr(
            &mut outsider,
            &own,
            sattr3 {
                gid: Nfs3Option::Some(100),
                ..sattr3::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(mode_of(&mut outsider, &own).await, 0o755);
        // Directories keep setgid through a chmod by their owner in the group.
        let d = mkdir(&mut member, &team, "sub", 0o755).await;
        assert_eq!(mode_of(&mut member, &d).await, 0o2755);
        gw.shutdown().await;
    })
    .await
    .expect("bounded");
}

/// A connection in the middle of sending a call (so not idle).
async fn busy_connection(addr: std::net::SocketAddr, from: &str) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0x80, 0, 0, 40, 0, 0])
        .await
        .unwrap();
    s
}

async fn closed_at_once(s: &mut tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(s, &mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// One client address cannot take every connection slot: past
/// `max_connections_per_client` its new connections are refused (none of its own
/// being idle), while another address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_take_every_slot() {
    tokio::time::timeout(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = local_config(tmp.path());
        cfg.nfs.max_connections_per_client = 3;
        cfg.nfs.max_connections = 8;
        let gw = start(cfg, None).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(busy_connection(gw.nfs_addr, "127.0.0.1").await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut fourth = busy_connection(gw.nfs_addr, "127.0.0.1").await;
        assert!(
            closed_at_once(&mut fourth).await,
            "a fourth from the same address"
        );
        let mut c = mount_from(gw.nfs_addr, "127.0.0.2").await;
        let root = c.root_nfs_fh3();
        assert!(getattr(&mut c, &root).await.is_ok(), "another address is served");
        let m = gw.gateway.metrics.render();
        assert_eq!(
            metric_sum(&m, "bucketgate_nfs_connections_rejected_total", "client_limit"),
            1.0
        );
        drop(held);
        gw.shutdown().await;
    })
    .await
    .expect("bounded");
}

/// At startup the gateway aborts the multipart uploads it started itself and no
/// others: another S3 client's upload in progress in the share's bucket (here the
/// whole bucket: the share has no prefix) survives a gateway restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writers_multipart_upload_survives_a_restart() {
    tokio::time::timeout(LIMIT, async {
        let srv = common::s3server::S3TestServer::start().await;
        let theirs = srv
            .client
            .create_multipart_upload()
            .bucket(&srv.bucket)
            .key("their/upload.bin")
            .send()
            .await
            .unwrap()
            .upload_id()
            .unwrap()
            .to_string();
        let tmp = tempfile::tempdir().unwrap();
        let cfg = common::gateway::s3_config(tmp.path(), &srv, "");
        let creds = Some((srv.access_key.clone(), srv.secret_key.clone()));
        for _ in 0..2 {
            let gw = start(cfg.clone(), creds.clone()).await;
            let mut c = mount(gw.nfs_addr).await;
            let root = c.root_nfs_fh3();
            put_file(&mut c, &root, "ours", b"x").await;
            common::gateway::flush(&gw).await;
            gw.shutdown().await;
        }
        let uploads = common::child::multipart_uploads(&srv).await;
        assert_eq!(uploads, [("their/upload.bin".to_string(), theirs)]);
    })
    .await
    .expect("bounded");
}

/// A sparse file counts what it holds against the dirty limit, not its size: one
/// client's 5 TiB truncate (or 1-byte write at 5 TiB) used to count 5 TiB dirty and
/// make every other writer's WRITE answer JUKEBOX until it was uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_file_does_not_lock_other_writers_out() {
    tokio::time::timeout(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = local_config(tmp.path());
        cfg.cache.dirty_limit = Some(bucketgate::config::ByteSize(8 << 20));
        // Nothing uploads during the test: the sparse files stay dirty.
        cfg.cache.upload_delay = bucketgate::config::HumanDuration(Duration::from_secs(600));
        cfg.cache.max_dirty_age = bucketgate::config::HumanDuration(Duration::from_secs(600));
        let gw = start(cfg, None).await;
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        let huge = create(&mut c, &root, "huge", 0o644).await;
        set_size(&mut c, &huge, 5 << 40).await.unwrap();
        let far = create(&mut c, &root, "far", 0o644).await;
        write_at(&mut c, &far, (5 << 40) - 1, b"x", stable_how::FILE_SYNC)
            .await
            .unwrap();
        let mut other = mount_as(gw.nfs_addr, "/data", 1000, 1000).await;
        let f = create(&mut other, &root, "small", 0o644).await;
        for i in 0..16u64 {
            write_at(&mut other, &f, i * 4096, &[7u8; 4096], stable_how::FILE_SYNC)
                .await
                .unwrap_or_else(|e| panic!("write {i} of another client: {e:?}"));
        }
        // The limit still holds for what is really written.
        let big = create(&mut other, &root, "big", 0o644).await;
        let chunk = vec![1u8; 1 << 20];
        let mut refused = None;
        for i in 0..16u64 {
            if let Err(e) = write_at(&mut other, &big, i << 20, &chunk, stable_how::UNSTABLE).await {
                refused = Some((i, e));
                break;
            }
        }
        assert!(
            matches!(refused, Some((i, nfsstat3::NFS3ERR_JUKEBOX)) if i >= 7),
            "written bytes still count: {refused:?}"
        );
        gw.shutdown().await;
    })
    .await
    .expect("bounded");
}

/// `max_file_size` caps a share's files: WRITE, SETATTR and CREATE with a size past
/// it answer FBIG; up to it, they work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_caps_its_file_size() {
    tokio::time::timeout(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = share_with(&local_config(tmp.path()), |s| {
            s.max_file_size = Some(bucketgate::config::ByteSize(1 << 20))
        });
        let gw = start(cfg, None).await;
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        let f = create(&mut c, &root, "f", 0o644).await;
        write_at(&mut c, &f, (1 << 20) - 1, b"x", stable_how::UNSTABLE)
            .await
            .unwrap();
        assert_eq!(
            write_at(&mut c, &f, 1 << 20, b"x", stable_how::UNSTABLE)
                .await
                .err(),
            Some(nfsstat3::NFS3ERR_FBIG)
        );
        set_size(&mut c, &f, 1 << 20).await.unwrap();
        assert_eq!(
            set_size(&mut c, &f, (1 << 20) + 1).await,
            Err(nfsstat3::NFS3ERR_FBIG)
        );
        let r = c
            .create(&CREATE3args {
                where_: dirop(&root, b"g"),
                how: createhow3::UNCHECKED(sattr3 {
                    size: Nfs3Option::Some(2 << 20),
                    ..sattr3::default()
                }),
            })
            .await
            .expect("rpc");
        assert!(matches!(r, Nfs3Result::Err((nfsstat3::NFS3ERR_FBIG, _))), "{r:?}");
        gw.shutdown().await;
    })
    .await
    .expect("bounded");
}

/// The part size grows with the file, so a file past 10,000 parts of the default
/// 16 MiB (156 GiB) uploads (the startup warning that said it could not was false).
/// 160 GiB, sparse: the `file://` store keeps holes as holes, so the test costs a
/// few MiB of disk; its bytes at both ends arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_file_past_ten_thousand_default_parts_reaches_the_store() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = local_config(tmp.path());
        let defaults = bucketgate::config::UploadConfig::default();
        cfg.upload.part_size = defaults.part_size;
        cfg.upload.multipart_threshold = defaults.multipart_threshold;
        assert!(cfg.warnings().iter().all(|w| !w.contains("part_size")));
        let size: u64 = 160 << 30;
        assert!(size > 10_000 * defaults.part_size.0);
        let gw = start(cfg, None).await;
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        let f = create(&mut c, &root, "big.img", 0o644).await;
        write_at(&mut c, &f, 0, b"head", stable_how::UNSTABLE)
            .await
            .unwrap();
        write_at(&mut c, &f, size - 4, b"tail", stable_how::UNSTABLE)
            .await
            .unwrap();
        commit(&mut c, &f).await;
        common::gateway::flush_within(&gw, Duration::from_secs(240))
            .await
            .unwrap();
        let obj = tmp.path().join("bucket/big.img");
        let md = std::fs::metadata(&obj).unwrap();
        assert_eq!(md.len(), size);
        use std::os::unix::fs::{FileExt, MetadataExt};
        assert!(
            md.blocks() * 512 < 64 << 20,
            "holes stay holes: {} bytes",
            md.blocks() * 512
        );
        let o = std::fs::File::open(&obj).unwrap();
        let mut b = [0u8; 4];
        o.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"head");
        o.read_exact_at(&mut b, size - 4).unwrap();
        assert_eq!(&b, b"tail");
        o.read_exact_at(&mut b, size / 2).unwrap();
        assert_eq!(b, [0; 4]);
        gw.shutdown().await;
    })
    .await
    .expect("bounded");
}
