//! Exports through a real NFS client against a real gateway: squash, AUTH_NONE,
//! allowed clients (on MNT and on every NFS call), read-only shares, file handles
//! (malformed, stale, across a restart), several shares, and the connection metrics.

use crate::common;

use std::time::Duration;

use bucketgate::config::{Config, HumanDuration, ShareConfig, Squash};
use bucketgate::gateway::Running;
use common::gateway::{config, metric_sum, start};
use common::nfs::*;
use nfs3_client::tokio::TokioIo;
use nfs3_client::{ConnectError, MountClient, MountError};
use nfs3_types::mount::{dirpath, mountstat3};
use nfs3_types::nfs3::*;
use nfs3_types::rpc::opaque_auth;
use nfs3_types::xdr_codec::Opaque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn quiet_config(dir: &std::path::Path) -> Config {
    let url = format!("file://{}", dir.join("bucket").display());
    let mut cfg = config(dir, &url);
    cfg.cache.upload_delay = HumanDuration(Duration::from_secs(3600));
    cfg.cache.max_dirty_age = HumanDuration(Duration::from_secs(3600));
    cfg
}

fn with_share(mut cfg: Config, f: impl FnOnce(&mut ShareConfig)) -> Config {
    f(&mut cfg.shares[0]);
    cfg
}

fn status<T, E>(r: &Nfs3Result<T, E>) -> nfsstat3 {
    match r {
        Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
        Nfs3Result::Err((st, _)) => *st,
    }
}

async fn owner_of_new_file(gw: &Running, cred: opaque_auth<'static>, n: &str) -> (u32, u32) {
    let mut c = mount_cred(gw.nfs_addr, "/data", cred).await;
    let root = c.root_nfs_fh3();
    let f = create(&mut c, &root, n, 0o644).await;
    let a = getattr(&mut c, &f).await.unwrap();
    (a.uid, a.gid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squash_root_all_none_and_auth_none() {
    let tmp = tempfile::tempdir().unwrap();
    // Default: root squash.
    let gw = start(quiet_config(tmp.path()), None).await;
    assert_eq!(
        owner_of_new_file(&gw, unix_cred(0, 0, &[]), "by-root").await,
        (65534, 65534)
    );
    assert_eq!(
        owner_of_new_file(&gw, unix_cred(1000, 100, &[]), "by-user").await,
        (1000, 100)
    );
    // AUTH_NONE is the anonymous user.
    assert_eq!(
        owner_of_new_file(&gw, opaque_auth::default(), "anon").await,
        (65534, 65534)
    );
    // A squashed root cannot chown, since it is not root any more.
    let mut root_c = mount_as(gw.nfs_addr, "/data", 0, 0).await;
    let root = root_c.root_nfs_fh3();
    let f = lookup(&mut root_c, &root, "by-user").await.unwrap();
    let r = root_c
        .setattr(&SETATTR3args {
            object: f,
            new_attributes: sattr3 {
                uid: Nfs3Option::Some(0),
                ..sattr3::default()
            },
            guard: Nfs3Option::None,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_PERM);
    gw.shutdown().await;

    let tmp = tempfile::tempdir().unwrap();
    let gw = start(
        with_share(quiet_config(tmp.path()), |s| s.squash = Squash::All),
        None,
    )
    .await;
    assert_eq!(
        owner_of_new_file(&gw, unix_cred(1000, 100, &[]), "u").await,
        (65534, 65534)
    );
    assert_eq!(
        owner_of_new_file(&gw, unix_cred(0, 0, &[]), "r").await,
        (65534, 65534)
    );
    gw.shutdown().await;

    let tmp = tempfile::tempdir().unwrap();
    let gw = start(
        with_share(quiet_config(tmp.path()), |s| s.squash = Squash::None),
        None,
    )
    .await;
    assert_eq!(owner_of_new_file(&gw, unix_cred(0, 0, &[]), "r").await, (0, 0));
    assert_eq!(
        owner_of_new_file(&gw, unix_cred(1000, 100, &[]), "u").await,
        (1000, 100)
    );
    assert_eq!(
        owner_of_new_file(&gw, opaque_auth::default(), "anon").await,
        (65534, 65534)
    );
    // Unsquashed root may chown.
    let mut c = mount_as(gw.nfs_addr, "/data", 0, 0).await;
    let root = c.root_nfs_fh3();
    let f = lookup(&mut c, &root, "u").await.unwrap();
    let r = c
        .setattr(&SETATTR3args {
            object: f.clone(),
            new_attributes: sattr3 {
                uid: Nfs3Option::Some(4242),
                gid: Nfs3Option::Some(4343),
                ..sattr3::default()
            },
            guard: Nfs3Option::None,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3_OK);
    let a = getattr(&mut c, &f).await.unwrap();
    assert_eq!((a.uid, a.gid), (4242, 4343));
    gw.shutdown().await;
}

async fn mount_client(addr: std::net::SocketAddr) -> MountClient<TokioIo<TcpStream>> {
    MountClient::new(TokioIo::new(TcpStream::connect(addr).await.unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_clients_checked_at_accept_on_mnt_and_every_call_and_handles_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let base = quiet_config(tmp.path());
    // Everyone allowed (empty list): make a file and keep its handle.
    let (root_fh, file_fh) = {
        let gw = start(base.clone(), None).await;
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        let f = put_file(&mut c, &root, "kept", b"survives").await;
        gw.shutdown().await;
        (root, f)
    };

    // A list that excludes 127.0.0.1, and no other share: the connection is closed at
    // accept, before MNT or any call (and before it holds a connection slot).
    let deny_list = vec![
        "10.0.0.0/8".to_string(),
        "192.0.2.7".into(),
        "2001:db8::/32".into(),
    ];
    let deny = with_share(base.clone(), |s| s.allowed_clients = deny_list.clone());
    let gw = start(deny, None).await;
    let mut sock = tokio::net::TcpStream::connect(gw.nfs_addr).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut byte))
        .await
        .expect("closed at once");
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "the gateway closes the connection"
    );
    let m = gw.gateway.metrics.render();
    assert_eq!(
        metric_sum(&m, "bucketgate_nfs_connections_rejected_total", "not_allowed"),
        1.0
    );
    gw.shutdown().await;

    // A second share that allows this host: the connection is served, MNT of /data is
    // refused, EXPORT shows only what this host may mount, and a handle of /data
    // obtained earlier gets ACCES on every procedure.
    let mut two = with_share(base.clone(), |s| s.allowed_clients = deny_list.clone());
    let mut open = two.shares[0].clone();
    open.name = "open".into();
    open.url = format!("file://{}", tmp.path().join("bucket-open").display());
    open.allowed_clients = Vec::new();
    two.shares.push(open);
    let gw = start(two, None).await;
    match try_mount_as(gw.nfs_addr, "/data", 1000, 1000).await {
        Err(ConnectError::Mount(MountError::Denied(st))) => {
            assert!(matches!(st, mountstat3::MNT3ERR_ACCES), "{st:?}")
        }
        Err(e) => panic!("expected MNT3ERR_ACCES, got {e}"),
        Ok(_) => panic!("mount allowed from a client not on the list"),
    }
    let ex = mount_client(gw.nfs_addr).await.export().await.unwrap();
    let paths: Vec<String> =
        ex.0.iter()
            .map(|e| String::from_utf8(e.ex_dir.0.to_vec()).unwrap())
            .collect();
    assert_eq!(paths, ["/open"]);
    let mut raw = raw_client(gw.nfs_addr, unix_cred(1000, 1000, &[])).await;
    raw.null().await.expect("NULL needs no handle");
    let r = raw
        .getattr(&GETATTR3args {
            object: file_fh.clone(),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_ACCES);
    let r = raw
        .read(&READ3args {
            file: file_fh.clone(),
            offset: 0,
            count: 100,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_ACCES);
    let r = raw
        .create(&CREATE3args {
            where_: dirop(&root_fh, b"sneaky"),
            how: createhow3::UNCHECKED(mode_attr(0o644)),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_ACCES);
    let r = raw
        .readdirplus(&READDIRPLUS3args {
            dir: root_fh.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            dircount: 4096,
            maxcount: 8192,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_ACCES);
    let r = raw
        .remove(&REMOVE3args {
            object: dirop(&root_fh, b"kept"),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_ACCES);
    let r = raw
        .fsstat(&FSSTAT3args {
            fsroot: root_fh.clone(),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_ACCES);
    gw.shutdown().await;

    // A list including 127.0.0.0/8 works, and the old handles are still valid after
    // two restarts (same cache dir).
    let allow = with_share(base.clone(), |s| {
        s.allowed_clients = vec!["10.0.0.0/8".into(), "127.0.0.0/8".into()]
    });
    let gw = start(allow, None).await;
    let mut c = mount(gw.nfs_addr).await;
    assert_eq!(
        c.root_nfs_fh3(),
        root_fh,
        "the root handle is stable across restarts"
    );
    assert_eq!(read_all(&mut c, &file_fh).await, b"survives");
    assert_eq!(lookup(&mut c, &root_fh, "kept").await.unwrap(), file_fh);
    assert_eq!(
        list_names(&mut c, &root_fh).await,
        vec!["kept".to_string()],
        "nothing sneaked in"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_stale_handles() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(quiet_config(tmp.path()), None).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let f = create(&mut c, &root, "f", 0o644).await;
    let d = mkdir(&mut c, &root, "d", 0o755).await;
    let good = f.data.to_vec();

    // Wrong length, wrong version, empty, oversized-for-us: BADHANDLE.
    let mut bad_version = good.clone();
    bad_version[0] ^= 0xff;
    let mut longer = good.clone();
    longer.push(0);
    for (what, h) in [
        ("short", good[..good.len() - 1].to_vec()),
        ("long", longer),
        ("version", bad_version),
        ("empty", Vec::new()),
        ("64 bytes", vec![1; 64]),
    ] {
        assert_eq!(
            getattr(&mut c, &fh(&h)).await.unwrap_err(),
            nfsstat3::NFS3ERR_BADHANDLE,
            "{what}"
        );
        let r = c
            .lookup(&LOOKUP3args {
                what: dirop(&fh(&h), b"f"),
            })
            .await
            .unwrap();
        assert_eq!(
            status(&r),
            nfsstat3::NFS3ERR_BADHANDLE,
            "LOOKUP with {what} handle"
        );
    }
    // Another share's id (none such here): STALE. A handle changed in any other way
    // (another generation, a file id never issued) fails its MAC: BADHANDLE.
    let mut other_share = good.clone();
    other_share[1] ^= 0x55;
    assert_eq!(
        getattr(&mut c, &fh(&other_share)).await.unwrap_err(),
        nfsstat3::NFS3ERR_STALE
    );
    let mut other_gen = good.clone();
    other_gen[16] ^= 1;
    assert_eq!(
        getattr(&mut c, &fh(&other_gen)).await.unwrap_err(),
        nfsstat3::NFS3ERR_BADHANDLE
    );
    let mut never = good.clone();
    never[5..13].copy_from_slice(&(1u64 << 50).to_be_bytes());
    assert_eq!(
        getattr(&mut c, &fh(&never)).await.unwrap_err(),
        nfsstat3::NFS3ERR_BADHANDLE
    );

    // Handles of removed objects: STALE, on reads and on changes.
    remove(&mut c, &root, "f").await.unwrap();
    let r = c
        .rmdir(&RMDIR3args {
            object: dirop(&root, b"d"),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3_OK);
    assert_eq!(getattr(&mut c, &f).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
    assert_eq!(
        write_at(&mut c, &f, 0, b"x", stable_how::UNSTABLE)
            .await
            .unwrap_err(),
        nfsstat3::NFS3ERR_STALE
    );
    let r = c
        .create(&CREATE3args {
            where_: dirop(&d, b"x"),
            how: createhow3::UNCHECKED(mode_attr(0o644)),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_STALE);
    assert_eq!(
        lookup(&mut c, &d, "x").await.unwrap_err(),
        nfsstat3::NFS3ERR_STALE
    );
    // A new file of the same name gets a new handle; the old one stays stale.
    let f2 = create(&mut c, &root, "f", 0o644).await;
    assert_ne!(f2, f);
    assert_eq!(getattr(&mut c, &f).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
    gw.shutdown().await;

    // After a restart on the same cache dir: live handles work, dead ones stay stale.
    let gw = start(quiet_config(tmp.path()), None).await;
    let mut c = mount(gw.nfs_addr).await;
    assert_eq!(getattr(&mut c, &f2).await.unwrap().fileid, {
        let h = bucketgate::nfs::Handle::unverified(&f2.data).unwrap();
        h.file_id
    });
    assert_eq!(getattr(&mut c, &f).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_share_answers_rofs_to_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let base = quiet_config(tmp.path());
    {
        let gw = start(base.clone(), None).await;
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        put_file(&mut c, &root, "f", b"content").await;
        mkdir(&mut c, &root, "d", 0o777).await;
        symlink(&mut c, &root, "l", "f").await;
        gw.shutdown().await;
    }
    let gw = start(with_share(base, |s| s.read_only = true), None).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let f = lookup(&mut c, &root, "f").await.unwrap();
    let d = lookup(&mut c, &root, "d").await.unwrap();
    // Reads work.
    assert_eq!(read_all(&mut c, &f).await, b"content");
    assert_eq!(list_names(&mut c, &root).await.len(), 3);
    const ROFS: nfsstat3 = nfsstat3::NFS3ERR_ROFS;

    let r = c
        .setattr(&SETATTR3args {
            object: f.clone(),
            new_attributes: mode_attr(0o600),
            guard: Nfs3Option::None,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), ROFS, "SETATTR");
    assert_eq!(
        write_at(&mut c, &f, 0, b"x", stable_how::FILE_SYNC)
            .await
            .unwrap_err(),
        ROFS,
        "WRITE"
    );
    for how in [
        createhow3::UNCHECKED(mode_attr(0o644)),
        createhow3::GUARDED(mode_attr(0o644)),
        createhow3::EXCLUSIVE(createverf3(*b"12345678")),
    ] {
        let r = c
            .create(&CREATE3args {
                where_: dirop(&root, b"new"),
                how,
            })
            .await
            .unwrap();
        assert_eq!(status(&r), ROFS, "CREATE");
    }
    let r = c
        .mkdir(&MKDIR3args {
            where_: dirop(&root, b"nd"),
            attributes: mode_attr(0o755),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), ROFS, "MKDIR");
    let r = c
        .symlink(&SYMLINK3args {
            where_: dirop(&root, b"nl"),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3(Opaque::owned(b"f".to_vec())),
            },
        })
        .await
        .unwrap();
    assert_eq!(status(&r), ROFS, "SYMLINK");
    let r = c
        .mknod(&MKNOD3args {
            where_: dirop(&root, b"fifo"),
            what: mknoddata3::NF3FIFO(sattr3::default()),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), ROFS, "MKNOD");
    assert_eq!(remove(&mut c, &root, "f").await.unwrap_err(), ROFS, "REMOVE");
    let r = c
        .rmdir(&RMDIR3args {
            object: dirop(&root, b"d"),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), ROFS, "RMDIR");
    assert_eq!(
        rename(&mut c, &root, "f", &d, "g").await.unwrap_err(),
        ROFS,
        "RENAME"
    );
    let r = c
        .link(&LINK3args {
            file: f.clone(),
            link: dirop(&root, b"hard"),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), ROFS, "LINK");
    // Nothing changed.
    assert_eq!(read_all(&mut c, &f).await, b"content");
    assert_eq!(getattr(&mut c, &f).await.unwrap().mode, 0o644);
    let mut names = list_names(&mut c, &root).await;
    names.sort();
    assert_eq!(names, ["d", "f", "l"]);

    // ACCESS never offers MODIFY, EXTEND or DELETE, even on a 0777 directory.
    let all =
        ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE | ACCESS3_EXECUTE;
    for (obj, expect) in [(&d, ACCESS3_READ | ACCESS3_LOOKUP), (&f, ACCESS3_READ)] {
        let r = c
            .access(&ACCESS3args {
                object: obj.clone(),
                access: all,
            })
            .await
            .unwrap();
        let Nfs3Result::Ok(ok) = r else { panic!("access") };
        assert_eq!(ok.access, expect);
    }
    // FSSTAT says there is no room for the client.
    let r = c.fsstat(&FSSTAT3args { fsroot: root.clone() }).await.unwrap();
    let Nfs3Result::Ok(s) = r else { panic!("fsstat") };
    assert_eq!((s.abytes, s.afiles), (0, 0));
    assert!(s.tbytes > 0);
    // COMMIT is not a change: it still works.
    commit(&mut c, &f).await;
    gw.shutdown().await;
}

fn two_shares(dir: &std::path::Path) -> Config {
    let mut cfg = quiet_config(dir);
    let mut a = cfg.shares[0].clone();
    a.name = "a".into();
    a.url = format!("file://{}", dir.join("bucket-a").display());
    let mut b = a.clone();
    b.name = "b".into();
    b.url = format!("file://{}", dir.join("bucket-b").display());
    cfg.shares = vec![a, b];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_shares_are_isolated() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(two_shares(tmp.path()), None).await;
    let mut a = mount_as(gw.nfs_addr, "/a", 1000, 1000).await;
    let mut b = mount_as(gw.nfs_addr, "/b", 1000, 1000).await;
    let ra = a.root_nfs_fh3();
    let rb = b.root_nfs_fh3();
    assert_ne!(ra, rb);
    match try_mount_as(gw.nfs_addr, "/data", 1000, 1000).await {
        Err(ConnectError::Mount(MountError::Denied(st))) => {
            assert!(matches!(st, mountstat3::MNT3ERR_NOENT), "{st:?}")
        }
        _ => panic!("/data is not exported here"),
    }
    let ex = mount_client(gw.nfs_addr).await.export().await.unwrap();
    let paths: Vec<String> =
        ex.0.iter()
            .map(|e| String::from_utf8(e.ex_dir.0.to_vec()).unwrap())
            .collect();
    assert_eq!(paths, ["/a", "/b"]);

    let fa = put_file(&mut a, &ra, "same-name", b"in a").await;
    let fb = put_file(&mut b, &rb, "same-name", b"in b").await;
    assert_ne!(fa, fb);
    assert_eq!(read_all(&mut a, &fa).await, b"in a");
    assert_eq!(read_all(&mut b, &fb).await, b"in b");
    let aa = getattr(&mut a, &ra).await.unwrap();
    let ab = getattr(&mut b, &rb).await.unwrap();
    assert_ne!(aa.fsid, ab.fsid, "each share is its own file system");
    // ".." at a share's root stays in the share.
    assert_eq!(lookup(&mut a, &ra, "..").await.unwrap(), ra);
    let only_a = mkdir(&mut a, &ra, "only-a", 0o755).await;
    assert_eq!(
        lookup(&mut b, &rb, "only-a").await.unwrap_err(),
        nfsstat3::NFS3ERR_NOENT
    );
    // RENAME across shares: XDEV, and nothing moved.
    assert_eq!(
        rename(&mut a, &ra, "same-name", &rb, "moved").await.unwrap_err(),
        nfsstat3::NFS3ERR_XDEV
    );
    assert_eq!(
        rename(&mut a, &only_a, "x", &rb, "x").await.unwrap_err(),
        nfsstat3::NFS3ERR_XDEV
    );
    assert_eq!(read_all(&mut a, &fa).await, b"in a");
    assert_eq!(
        lookup(&mut b, &rb, "moved").await.unwrap_err(),
        nfsstat3::NFS3ERR_NOENT
    );
    // A handle names its share whichever mount the connection came from; the per-share
    // client list decides, not the connection (see the next test).
    assert_eq!(read_all(&mut b, &fa).await, b"in a");
    gw.shutdown().await;

    // Only /b allows loopback: /a's handles get ACCES even on a connection that
    // mounted /b, and /a cannot be mounted.
    let mut cfg = two_shares(tmp.path());
    cfg.shares[0].allowed_clients = vec!["10.0.0.0/8".into()];
    let gw = start(cfg, None).await;
    match try_mount_as(gw.nfs_addr, "/a", 1000, 1000).await {
        Err(ConnectError::Mount(MountError::Denied(st))) => {
            assert!(matches!(st, mountstat3::MNT3ERR_ACCES), "{st:?}")
        }
        _ => panic!("/a must refuse loopback"),
    }
    let mut b = mount_as(gw.nfs_addr, "/b", 1000, 1000).await;
    assert_eq!(b.root_nfs_fh3(), rb);
    assert_eq!(read_all(&mut b, &fb).await, b"in b");
    assert_eq!(getattr(&mut b, &fa).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
    assert_eq!(getattr(&mut b, &ra).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
    assert_eq!(
        rename(&mut b, &rb, "same-name", &ra, "stolen").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounting_a_subdirectory() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(quiet_config(tmp.path()), None).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let d = mkdir(&mut c, &root, "proj", 0o755).await;
    let inner = mkdir(&mut c, &d, "x", 0o755).await;
    create(&mut c, &root, "file", 0o644).await;
    let sub = mount_as(gw.nfs_addr, "/data/proj/x", 1000, 1000).await;
    assert_eq!(sub.root_nfs_fh3(), inner);
    for (path, st) in [
        ("/data/missing", mountstat3::MNT3ERR_NOENT),
        ("/data/file", mountstat3::MNT3ERR_NOTDIR),
        ("/nope", mountstat3::MNT3ERR_NOENT),
    ] {
        match try_mount_as(gw.nfs_addr, path, 1000, 1000).await {
            Err(ConnectError::Mount(MountError::Denied(got))) => {
                assert_eq!(format!("{got:?}"), format!("{st:?}"), "{path}")
            }
            Err(e) => panic!("{path}: {e}"),
            Ok(_) => panic!("{path} mounted"),
        }
    }
    // An over-long MNT path: NAMETOOLONG, and the server keeps serving.
    let mut m = mount_client(gw.nfs_addr).await;
    let long = format!("/data/{}", "p".repeat(2000));
    match m.mnt(dirpath(Opaque::owned(long.into_bytes()))).await {
        Err(MountError::Denied(st)) => assert!(matches!(st, mountstat3::MNT3ERR_NAMETOOLONG), "{st:?}"),
        other => panic!("{other:?}"),
    }
    m.null().await.unwrap();
    gw.shutdown().await;
}

/// The value of an unlabelled or labelled series in the Prometheus text.
/// Waits (up to 10 s) until `series` reads `value`.
async fn metric_becomes(m: &bucketgate::metrics::Metrics, series: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&m.render(), series) != Some(value) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} did not become {value}: {}",
            m.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_gauge_and_limit_rejections_are_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = quiet_config(tmp.path());
    cfg.nfs.max_connections = 2;
    let gw = start(cfg, None).await;
    let m = gw.gateway.metrics.clone();
    let text = m.render();
    assert_eq!(metric(&text, "bucketgate_nfs_connections"), Some(0.0), "{text}");
    assert_eq!(
        metric(
            &text,
            "bucketgate_nfs_connections_rejected_total{reason=\"limit\"}"
        ),
        Some(0.0)
    );

    // A mount holds two connections (MOUNT and NFS).
    let mut c = mount(gw.nfs_addr).await;
    c.null().await.unwrap();
    let root = c.root_nfs_fh3();
    assert_eq!(
        lookup(&mut c, &root, "nope").await.unwrap_err(),
        nfsstat3::NFS3ERR_NOENT
    );
    let text = m.render();
    assert_eq!(metric(&text, "bucketgate_nfs_connections"), Some(2.0));
    // Calls are counted by procedure and status too.
    assert_eq!(
        metric(
            &text,
            "bucketgate_nfs_calls_total{procedure=\"LOOKUP\",status=\"NFS3ERR_NOENT\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "bucketgate_nfs_calls_total{procedure=\"NULL\",status=\"OK\"}"
        ),
        Some(1.0)
    );

    // At the limit, the connection idle the longest (the mount's MOUNT connection,
    // or the NFS one between calls) is closed for a newcomer, which is served.
    // (Raw sockets: nfs3_client spins on a peer that closed before answering.)
    let mut third = TcpStream::connect(gw.nfs_addr).await.unwrap();
    third.write_all(&null_call(1)).await.unwrap();
    let mut reply = [0u8; 28];
    tokio::time::timeout(Duration::from_secs(10), third.read_exact(&mut reply))
        .await
        .expect("answered")
        .expect("a NULL reply");
    let text = m.render();
    assert_eq!(metric(&text, "bucketgate_nfs_connections"), Some(2.0), "{text}");
    assert_eq!(
        metric(
            &text,
            "bucketgate_nfs_connections_rejected_total{reason=\"limit\"}"
        ),
        Some(0.0)
    );
    drop(c);
    drop(third);
    metric_becomes(&m, "bucketgate_nfs_connections", 0.0).await;
    // Two connections in the middle of sending a call are not idle: a third is closed
    // at once and counted.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.nfs_addr).await.unwrap();
        s.write_all(&null_call(2)[..10]).await.unwrap();
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(gw.nfs_addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "over the limit with none idle: closed without an answer");
    metric_becomes(
        &m,
        "bucketgate_nfs_connections_rejected_total{reason=\"limit\"}",
        1.0,
    )
    .await;
    drop(busy);
    drop(extra);
    metric_becomes(&m, "bucketgate_nfs_connections", 0.0).await;
    // And a new mount fits again.
    let mut c = mount(gw.nfs_addr).await;
    c.null().await.unwrap();
    gw.shutdown().await;
    assert_eq!(
        metric(&m.render(), "bucketgate_nfs_connections"),
        Some(0.0),
        "shutdown closes them all"
    );
}

/// An RPC record holding a NULL call to NFSv3 with AUTH_NONE.
fn null_call(xid: u32) -> Vec<u8> {
    let mut rec = Vec::new();
    for w in [xid, 0, 2, 100003, 3, 0, 0, 0, 0, 0] {
        rec.extend_from_slice(&w.to_be_bytes());
    }
    let mut out = (0x8000_0000u32 | rec.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&rec);
    out
}

/// What a client holds across a gateway restart keeps working: an EXCLUSIVE create
/// retransmitted after the restart (same verifier) succeeds with the same file, and a
/// READDIR resumes from a cookie and verifier handed out before the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_create_and_readdir_cookies_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = quiet_config(tmp.path());
    let v = createverf3(*b"restart!");
    let excl = |root: &nfs_fh3, verf| CREATE3args {
        where_: dirop(root, b"excl"),
        how: createhow3::EXCLUSIVE(verf),
    };
    let (dir, x, cookie, verf, rest) = {
        let gw = start(cfg.clone(), None).await;
        let mut c = mount(gw.nfs_addr).await;
        let root = c.root_nfs_fh3();
        let r = c.create(&excl(&root, v)).await.unwrap();
        let Nfs3Result::Ok(ok) = r else {
            panic!("exclusive create")
        };
        let x = ok.obj.unwrap();
        let d = mkdir(&mut c, &root, "d", 0o755).await;
        for i in 0..100 {
            create(&mut c, &d, &format!("e{i:03}"), 0o644).await;
        }
        let r = c
            .readdir(&READDIR3args {
                dir: d.clone(),
                cookie: 0,
                cookieverf: cookieverf3::default(),
                count: 1024,
            })
            .await
            .unwrap();
        let Nfs3Result::Ok(first) = r else {
            panic!("readdir")
        };
        assert!(!first.reply.eof);
        let listed: Vec<String> = first
            .reply
            .entries
            .0
            .iter()
            .map(|e| String::from_utf8(e.name.0.to_vec()).unwrap())
            .collect();
        let cookie = first.reply.entries.0.last().unwrap().cookie;
        let rest: Vec<String> = (0..100)
            .map(|i| format!("e{i:03}"))
            .filter(|n| !listed.contains(n))
            .collect();
        gw.shutdown().await;
        (d, x, cookie, first.cookieverf, rest)
    };
    let gw = start(cfg, None).await;
    let mut c = mount(gw.nfs_addr).await;
    let share_root = c.root_nfs_fh3();
    let r = c.create(&excl(&share_root, v)).await.unwrap();
    let Nfs3Result::Ok(ok) = r else {
        panic!("retransmitted exclusive create after restart")
    };
    assert_eq!(ok.obj.unwrap(), x);
    let r = c
        .create(&excl(&share_root, createverf3(*b"another!")))
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_EXIST);
    let mut got = Vec::new();
    let mut cookie = cookie;
    loop {
        let r = c
            .readdir(&READDIR3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                count: 1024,
            })
            .await
            .unwrap();
        let Nfs3Result::Ok(page) = r else {
            panic!("resume after restart: {:?}", status(&r))
        };
        for e in page.reply.entries.0 {
            cookie = e.cookie;
            got.push(String::from_utf8(e.name.0.to_vec()).unwrap());
        }
        if page.reply.eof {
            break;
        }
    }
    assert_eq!(got, rest);
    gw.shutdown().await;
}

/// Two shares whose caches carry one share id (a cache directory copied from another
/// share) would answer each other's file handles: the gateway refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_with_one_share_id_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = two_shares(tmp.path());
    let gw = start(cfg.clone(), None).await;
    gw.shutdown().await;
    let shares = tmp.path().join("cache/shares");
    std::fs::remove_dir_all(shares.join("b")).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(shares.join("a"))
        .arg(shares.join("b"))
        .status()
        .unwrap();
    assert!(status.success());
    let err = match bucketgate::gateway::Gateway::open(cfg, None, None).await {
        Ok(_) => panic!("opened two shares with one share id"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("same share id") && err.contains('a') && err.contains('b'),
        "{err}"
    );
}
