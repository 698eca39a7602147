//! Every NFSv3 procedure (RFC 1813) through a real NFS client (`nfs3_client`) against a
//! real gateway on loopback: the success case and its main error, wcc_data on every
//! mutating reply, and hostile names. Store: the local-directory store.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use bucketgate::config::{Config, HumanDuration};
use bucketgate::gateway::Running;
use common::gateway::{config, start};
use common::nfs::*;
use nfs3_types::nfs3::*;
use nfs3_types::xdr_codec::Opaque;

/// A gateway whose uploader stays out of the way: these tests are about the NFS side.
fn quiet_config(dir: &std::path::Path) -> Config {
    let url = format!("file://{}", dir.join("bucket").display());
    let mut cfg = config(dir, &url);
    cfg.cache.upload_delay = HumanDuration(Duration::from_secs(3600));
    cfg.cache.max_dirty_age = HumanDuration(Duration::from_secs(3600));
    cfg
}

async fn gateway() -> (tempfile::TempDir, Running) {
    let tmp = tempfile::tempdir().unwrap();
    let gw = start(quiet_config(tmp.path()), None).await;
    (tmp, gw)
}

/// Both halves of a wcc_data, and the after-attributes agree with the before ones on
/// what did not change (same object).
fn assert_full_wcc(w: &wcc_data, what: &str) {
    let Nfs3Option::Some(before) = &w.before else {
        panic!("{what}: no pre-op attributes")
    };
    let Nfs3Option::Some(after) = &w.after else {
        panic!("{what}: no post-op attributes")
    };
    let t = |t: &nfstime3| (t.seconds, t.nseconds);
    assert!(t(&after.ctime) >= t(&before.ctime), "{what}: ctime went back");
}

fn assert_after_wcc(w: &wcc_data, what: &str) {
    assert!(
        w.after.is_some(),
        "{what}: failure reply without post-op attributes"
    );
}

fn status<T, E>(r: &Nfs3Result<T, E>) -> nfsstat3 {
    match r {
        Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
        Nfs3Result::Err((st, _)) => *st,
    }
}

fn ok<T, E: std::fmt::Debug>(r: Nfs3Result<T, E>, what: &str) -> T {
    match r {
        Nfs3Result::Ok(v) => v,
        Nfs3Result::Err((st, _)) => panic!("{what}: {st:?}"),
    }
}

fn err<T, E>(r: Nfs3Result<T, E>, what: &str) -> (nfsstat3, E) {
    match r {
        Nfs3Result::Ok(_) => panic!("{what}: succeeded, expected an error"),
        Nfs3Result::Err(e) => e,
    }
}

fn create_args(dir: &nfs_fh3, n: &[u8], how: createhow3) -> CREATE3args<'static> {
    CREATE3args {
        where_: dirop(dir, n),
        how,
    }
}

async fn write(c: &mut Conn, fh: &nfs_fh3, off: u64, data: &[u8], stable: stable_how) -> WRITE3res {
    c.write(&WRITE3args {
        file: fh.clone(),
        offset: off,
        count: data.len() as u32,
        stable,
        data: Opaque::borrowed(data),
    })
    .await
    .expect("rpc")
}

async fn read(c: &mut Conn, fh: &nfs_fh3, off: u64, count: u32) -> READ3res<'static> {
    c.read(&READ3args {
        file: fh.clone(),
        offset: off,
        count,
    })
    .await
    .expect("rpc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_getattr_lookup_fsinfo_pathconf_fsstat() {
    let (tmp, gw) = gateway().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    c.null().await.expect("NULL");

    // GETATTR
    let a = getattr(&mut c, &root).await.expect("getattr root");
    assert_eq!(a.type_, ftype3::NF3DIR);
    assert_eq!(a.fileid, 1);
    assert_eq!(a.mode, 0o777, "share default_dir_mode");
    assert_eq!((a.uid, a.gid), (65534, 65534));
    let f = create(&mut c, &root, "f", 0o640).await;
    let fa = getattr(&mut c, &f).await.unwrap();
    assert_eq!(
        (fa.type_, fa.mode, fa.uid, fa.gid, fa.size),
        (ftype3::NF3REG, 0o640, 1000, 1000, 0)
    );
    assert_eq!(fa.fsid, a.fsid, "one share, one fsid");
    assert_eq!(
        getattr(&mut c, &fh(&[1, 2, 3])).await.unwrap_err(),
        nfsstat3::NFS3ERR_BADHANDLE
    );

    // LOOKUP
    let r = c
        .lookup(&LOOKUP3args {
            what: dirop(&root, b"f"),
        })
        .await
        .unwrap();
    let r = ok(r, "lookup f");
    assert_eq!(r.object, f);
    assert!(r.obj_attributes.is_some() && r.dir_attributes.is_some());
    let r = c
        .lookup(&LOOKUP3args {
            what: dirop(&root, b"missing"),
        })
        .await
        .unwrap();
    let (st, fail) = err(r, "lookup missing");
    assert_eq!(st, nfsstat3::NFS3ERR_NOENT);
    assert!(
        fail.dir_attributes.is_some(),
        "LOOKUP failure carries dir attributes"
    );
    assert_eq!(lookup(&mut c, &root, ".").await.unwrap(), root);
    assert_eq!(
        lookup(&mut c, &root, "..").await.unwrap(),
        root,
        "root's parent is root"
    );
    let d = mkdir(&mut c, &root, "d", 0o755).await;
    assert_eq!(lookup(&mut c, &d, "..").await.unwrap(), root);
    assert_eq!(
        lookup(&mut c, &f, "x").await.unwrap_err(),
        nfsstat3::NFS3ERR_NOTDIR
    );

    // FSINFO
    let i = ok(
        c.fsinfo(&FSINFO3args { fsroot: root.clone() }).await.unwrap(),
        "fsinfo",
    );
    assert_eq!(
        (i.rtmax, i.rtpref, i.wtmax, i.wtpref),
        (1 << 20, 1 << 20, 1 << 20, 1 << 20)
    );
    assert_eq!(i.maxfilesize, 5 << 40);
    assert_eq!((i.time_delta.seconds, i.time_delta.nseconds), (0, 1));
    assert_eq!(i.properties, FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME);
    assert_eq!(i.properties & FSF3_LINK, 0, "no hard links offered");
    assert!(i.obj_attributes.is_some());

    // PATHCONF
    let p = ok(
        c.pathconf(&PATHCONF3args { object: f.clone() }).await.unwrap(),
        "pathconf",
    );
    assert_eq!(p.name_max, 255);
    assert!(p.no_trunc && p.case_preserving && !p.case_insensitive && p.chown_restricted);
    assert_eq!(p.linkmax, 1);

    // FSSTAT: the cache disk's real figures.
    let s = ok(
        c.fsstat(&FSSTAT3args { fsroot: root.clone() }).await.unwrap(),
        "fsstat",
    );
    let path = std::ffi::CString::new(tmp.path().as_os_str().as_encoded_bytes()).unwrap();
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and out-pointer.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut v) }, 0);
    let disk = v.f_blocks as u64 * v.f_frsize as u64;
    assert!(s.tbytes > 0 && s.fbytes > 0 && s.abytes > 0, "{s:?}");
    assert_eq!(s.tbytes, disk, "total is the cache disk's size");
    assert!(s.fbytes <= s.tbytes && s.abytes <= s.fbytes, "{s:?}");
    assert!(
        s.tfiles > 0 && s.ffiles <= s.tfiles && s.afiles <= s.ffiles,
        "{s:?}"
    );

    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_unchecked_guarded_exclusive() {
    let (_tmp, gw) = gateway().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();

    // UNCHECKED creates, and again on an existing file only truncates (size attr).
    let r = c
        .create(&create_args(&root, b"u", createhow3::UNCHECKED(mode_attr(0o600))))
        .await
        .unwrap();
    let r = ok(r, "create unchecked");
    assert_full_wcc(&r.dir_wcc, "CREATE");
    let u = r.obj.unwrap();
    assert_eq!(r.obj_attributes.unwrap().mode, 0o600);
    write_at(&mut c, &u, 0, b"hello", stable_how::FILE_SYNC)
        .await
        .unwrap();
    let again = c
        .create(&create_args(
            &root,
            b"u",
            createhow3::UNCHECKED(sattr3 {
                size: Nfs3Option::Some(2),
                ..sattr3::default()
            }),
        ))
        .await
        .unwrap();
    let again = ok(again, "create unchecked existing");
    assert_eq!(again.obj.unwrap(), u, "same file");
    assert_eq!(read_all(&mut c, &u).await, b"he");
    assert_eq!(getattr(&mut c, &u).await.unwrap().mode, 0o600, "mode untouched");

    // GUARDED on an existing name: EXIST, with dir wcc.
    let r = c
        .create(&create_args(&root, b"u", createhow3::GUARDED(mode_attr(0o644))))
        .await
        .unwrap();
    let (st, fail) = err(r, "guarded existing");
    assert_eq!(st, nfsstat3::NFS3ERR_EXIST);
    assert_after_wcc(&fail.dir_wcc, "CREATE GUARDED failure");
    let r = c
        .create(&create_args(&root, b"g", createhow3::GUARDED(mode_attr(0o644))))
        .await
        .unwrap();
    assert!(ok(r, "guarded new").obj.is_some());

    // EXCLUSIVE: a retransmission with the same verifier succeeds with the same file;
    // another verifier gets EXIST.
    let v = createverf3(*b"verf0001");
    let first = ok(
        c.create(&create_args(&root, b"x", createhow3::EXCLUSIVE(v)))
            .await
            .unwrap(),
        "exclusive",
    );
    let x = first.obj.unwrap();
    let retrans = ok(
        c.create(&create_args(&root, b"x", createhow3::EXCLUSIVE(v)))
            .await
            .unwrap(),
        "exclusive retransmitted",
    );
    assert_eq!(retrans.obj.unwrap(), x);
    let r = c
        .create(&create_args(
            &root,
            b"x",
            createhow3::EXCLUSIVE(createverf3(*b"verf0002")),
        ))
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_EXIST);
    // EXCLUSIVE over a file made without a verifier: EXIST.
    let r = c
        .create(&create_args(&root, b"u", createhow3::EXCLUSIVE(v)))
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_EXIST);
    // The client then sets the attributes with SETATTR, as RFC 1813 describes.
    set_mode(&mut c, &x, 0o640).await.unwrap();
    assert_eq!(getattr(&mut c, &x).await.unwrap().mode, 0o640);

    // CREATE over a directory name: EXIST, even UNCHECKED.
    mkdir(&mut c, &root, "dir", 0o755).await;
    let r = c
        .create(&create_args(
            &root,
            b"dir",
            createhow3::UNCHECKED(mode_attr(0o644)),
        ))
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_EXIST);
    // CREATE in a file: NOTDIR.
    let r = c
        .create(&create_args(
            &u,
            b"in-file",
            createhow3::UNCHECKED(mode_attr(0o644)),
        ))
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_NOTDIR);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_symlink_readlink() {
    let (_tmp, gw) = gateway().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();

    let r = c
        .mkdir(&MKDIR3args {
            where_: dirop(&root, b"d"),
            attributes: mode_attr(0o750),
        })
        .await
        .unwrap();
    let r = ok(r, "mkdir");
    assert_full_wcc(&r.dir_wcc, "MKDIR");
    let a = r.obj_attributes.unwrap();
    assert_eq!((a.type_, a.mode, a.uid), (ftype3::NF3DIR, 0o750, 1000));
    let r = c
        .mkdir(&MKDIR3args {
            where_: dirop(&root, b"d"),
            attributes: mode_attr(0o750),
        })
        .await
        .unwrap();
    let (st, fail) = err(r, "mkdir existing");
    assert_eq!(st, nfsstat3::NFS3ERR_EXIST);
    assert_after_wcc(&fail.dir_wcc, "MKDIR failure");

    let r = c
        .symlink(&SYMLINK3args {
            where_: dirop(&root, b"l"),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3(Opaque::owned(b"d/target".to_vec())),
            },
        })
        .await
        .unwrap();
    let r = ok(r, "symlink");
    assert_full_wcc(&r.dir_wcc, "SYMLINK");
    let l = r.obj.unwrap();
    let la = getattr(&mut c, &l).await.unwrap();
    assert_eq!((la.type_, la.size), (ftype3::NF3LNK, 8));
    let rl = ok(
        c.readlink(&READLINK3args { symlink: l.clone() }).await.unwrap(),
        "readlink",
    );
    assert_eq!(&*rl.data.0, b"d/target");
    assert!(rl.symlink_attributes.is_some());
    let r = c
        .symlink(&SYMLINK3args {
            where_: dirop(&root, b"l"),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3(Opaque::owned(b"elsewhere".to_vec())),
            },
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_EXIST);

    // READLINK of a file or a directory: INVAL.
    let f = create(&mut c, &root, "f", 0o644).await;
    let r = c.readlink(&READLINK3args { symlink: f }).await.unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_INVAL);
    let r = c
        .readlink(&READLINK3args {
            symlink: root.clone(),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_INVAL);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_commit() {
    let (_tmp, gw) = gateway().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let f = create(&mut c, &root, "f", 0o644).await;

    let w1 = ok(
        write(&mut c, &f, 0, b"0123456789", stable_how::UNSTABLE).await,
        "write",
    );
    assert_eq!((w1.count, w1.committed), (10, stable_how::UNSTABLE));
    assert_full_wcc(&w1.file_wcc, "WRITE");
    assert_eq!(w1.file_wcc.before.as_ref_size(), Some(0));
    assert_eq!(w1.file_wcc.after.as_ref_size(), Some(10));
    // A sparse write past the end, FILE_SYNC: committed FILE_SYNC, same verifier.
    let w2 = ok(
        write(&mut c, &f, 20, b"tail", stable_how::FILE_SYNC).await,
        "write sync",
    );
    assert_eq!(w2.committed, stable_how::FILE_SYNC);
    assert_eq!(w2.verf, w1.verf, "one verifier per process lifetime");
    let w3 = ok(
        write(&mut c, &f, 0, b"AB", stable_how::DATA_SYNC).await,
        "write data_sync",
    );
    assert!(matches!(
        w3.committed,
        stable_how::FILE_SYNC | stable_how::DATA_SYNC
    ));

    let cm = ok(
        c.commit(&COMMIT3args {
            file: f.clone(),
            offset: 0,
            count: 0,
        })
        .await
        .unwrap(),
        "commit",
    );
    assert_eq!(cm.verf, w1.verf, "COMMIT verifier equals WRITE verifier");
    assert_full_wcc(&cm.file_wcc, "COMMIT");

    // READ: whole, a window, past the end.
    let r = ok(read(&mut c, &f, 0, 100).await, "read");
    let mut want = b"AB23456789".to_vec();
    want.extend_from_slice(&[0; 10]);
    want.extend_from_slice(b"tail");
    assert_eq!(&*r.data, &want[..]);
    assert!(r.eof);
    assert_eq!(r.count, 24);
    assert_eq!(r.file_attributes.unwrap().size, 24);
    let r = ok(read(&mut c, &f, 2, 3).await, "read window");
    assert_eq!(&*r.data, b"234");
    assert!(!r.eof);
    let r = ok(read(&mut c, &f, 1000, 10).await, "read past end");
    assert!(r.data.is_empty() && r.eof);

    // READ of a directory: ISDIR; WRITE to a directory: ISDIR; COMMIT of a bad handle.
    let r = read(&mut c, &root, 0, 10).await;
    assert_eq!(status(&r), nfsstat3::NFS3ERR_ISDIR);
    let r = write(&mut c, &root, 0, b"x", stable_how::UNSTABLE).await;
    let (st, fail) = err(r, "write to dir");
    assert_eq!(st, nfsstat3::NFS3ERR_ISDIR);
    assert_after_wcc(&fail.file_wcc, "WRITE failure");
    // READ/WRITE of a symlink: INVAL.
    let l = symlink(&mut c, &root, "l", "f").await;
    assert_eq!(status(&read(&mut c, &l, 0, 10).await), nfsstat3::NFS3ERR_INVAL);
    assert_eq!(
        status(&write(&mut c, &l, 0, b"x", stable_how::UNSTABLE).await),
        nfsstat3::NFS3ERR_INVAL
    );
    // Past the 5 TiB limit: FBIG.
    assert_eq!(
        status(&write(&mut c, &f, (5 << 40) - 1, b"xy", stable_how::UNSTABLE).await),
        nfsstat3::NFS3ERR_FBIG
    );
    let r = c
        .commit(&COMMIT3args {
            file: fh(&[9; 17]),
            offset: 0,
            count: 0,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_BADHANDLE);

    // A 1 MiB WRITE (wtmax) round-trips.
    let big = body(1 << 20, 3);
    let g = create(&mut c, &root, "big", 0o644).await;
    let w = ok(
        write(&mut c, &g, 0, &big, stable_how::UNSTABLE).await,
        "1 MiB write",
    );
    assert_eq!(w.count, 1 << 20);
    assert_eq!(read_all(&mut c, &g).await, big);

    // A reader without read permission who is not the owner: ACCES.
    let mut other = mount_as(gw.nfs_addr, "/data", 2000, 2000).await;
    set_mode(&mut c, &f, 0o600).await.unwrap();
    assert_eq!(
        status(&read(&mut other, &f, 0, 10).await),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(
        status(&write(&mut other, &f, 0, b"x", stable_how::UNSTABLE).await),
        nfsstat3::NFS3ERR_ACCES
    );
    gw.shutdown().await;
}

trait WccSize {
    fn as_ref_size(&self) -> Option<u64>;
}
impl WccSize for pre_op_attr {
    fn as_ref_size(&self) -> Option<u64> {
        match self {
            Nfs3Option::Some(a) => Some(a.size),
            Nfs3Option::None => None,
        }
    }
}
impl WccSize for post_op_attr {
    fn as_ref_size(&self) -> Option<u64> {
        match self {
            Nfs3Option::Some(a) => Some(a.size),
            Nfs3Option::None => None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setattr_guard_truncate_chmod_chown_times() {
    let (_tmp, gw) = gateway().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let f = put_file(&mut c, &root, "f", b"0123456789").await;
    let a = getattr(&mut c, &f).await.unwrap();

    // A wrong ctime guard: NOT_SYNC, nothing changed.
    let wrong = nfstime3 {
        seconds: a.ctime.seconds.wrapping_sub(7),
        nseconds: a.ctime.nseconds,
    };
    let r = c
        .setattr(&SETATTR3args {
            object: f.clone(),
            new_attributes: mode_attr(0o600),
            guard: Nfs3Option::Some(wrong),
        })
        .await
        .unwrap();
    let (st, fail) = err(r, "guard mismatch");
    assert_eq!(st, nfsstat3::NFS3ERR_NOT_SYNC);
    assert_after_wcc(&fail.obj_wcc, "SETATTR failure");
    assert_eq!(getattr(&mut c, &f).await.unwrap().mode, 0o644);

    // The right guard: applied, with full wcc.
    let r = c
        .setattr(&SETATTR3args {
            object: f.clone(),
            new_attributes: mode_attr(0o600),
            guard: Nfs3Option::Some(a.ctime),
        })
        .await
        .unwrap();
    let r = ok(r, "guard match");
    assert_full_wcc(&r.obj_wcc, "SETATTR");
    assert_eq!(r.obj_wcc.after.unwrap().mode, 0o600);

    // Truncate, then read; extend, then read zeros.
    let trunc = |size| SETATTR3args {
        object: f.clone(),
        new_attributes: sattr3 {
            size: Nfs3Option::Some(size),
            ..sattr3::default()
        },
        guard: Nfs3Option::None,
    };
    let r = ok(c.setattr(&trunc(4)).await.unwrap(), "truncate");
    assert_eq!(r.obj_wcc.before.as_ref_size(), Some(10));
    assert_eq!(r.obj_wcc.after.as_ref_size(), Some(4));
    assert_eq!(read_all(&mut c, &f).await, b"0123");
    ok(c.setattr(&trunc(8)).await.unwrap(), "extend");
    assert_eq!(read_all(&mut c, &f).await, b"0123\0\0\0\0");
    // Truncating a directory: ISDIR.
    let d = mkdir(&mut c, &root, "d", 0o755).await;
    let r = c
        .setattr(&SETATTR3args {
            object: d.clone(),
            new_attributes: sattr3 {
                size: Nfs3Option::Some(0),
                ..sattr3::default()
            },
            guard: Nfs3Option::None,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_ISDIR);

    // Client-set times, to the nanosecond (time_delta 1 ns).
    let t = nfstime3 {
        seconds: 1_600_000_000,
        nseconds: 123_456_789,
    };
    let r = c
        .setattr(&SETATTR3args {
            object: f.clone(),
            new_attributes: sattr3 {
                atime: set_atime::SET_TO_CLIENT_TIME(t),
                mtime: set_mtime::SET_TO_CLIENT_TIME(t),
                ..sattr3::default()
            },
            guard: Nfs3Option::None,
        })
        .await
        .unwrap();
    ok(r, "set times");
    let a = getattr(&mut c, &f).await.unwrap();
    assert_eq!((a.mtime, a.atime), (t, t));

    // chown to another user by a non-root owner: PERM; chmod by a non-owner: PERM.
    let r = c
        .setattr(&SETATTR3args {
            object: f.clone(),
            new_attributes: sattr3 {
                uid: Nfs3Option::Some(4242),
                ..sattr3::default()
            },
            guard: Nfs3Option::None,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_PERM);
    let mut other = mount_as(gw.nfs_addr, "/data", 2000, 2000).await;
    assert_eq!(
        set_mode(&mut other, &f, 0o777).await.unwrap_err(),
        nfsstat3::NFS3ERR_PERM
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_rmdir_rename() {
    let (_tmp, gw) = gateway().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let d = mkdir(&mut c, &root, "d", 0o755).await;
    let sub = mkdir(&mut c, &d, "sub", 0o755).await;
    create(&mut c, &sub, "inner", 0o644).await;
    let f = put_file(&mut c, &root, "f", b"data").await;

    // REMOVE
    let r = ok(
        c.remove(&REMOVE3args {
            object: dirop(&root, b"f"),
        })
        .await
        .unwrap(),
        "remove",
    );
    assert_full_wcc(&r.dir_wcc, "REMOVE");
    assert_eq!(
        lookup(&mut c, &root, "f").await.unwrap_err(),
        nfsstat3::NFS3ERR_NOENT
    );
    assert_eq!(getattr(&mut c, &f).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
    let r = c
        .remove(&REMOVE3args {
            object: dirop(&root, b"f"),
        })
        .await
        .unwrap();
    let (st, fail) = err(r, "remove missing");
    assert_eq!(st, nfsstat3::NFS3ERR_NOENT);
    assert_after_wcc(&fail.dir_wcc, "REMOVE failure");
    assert_eq!(
        remove(&mut c, &root, "d").await.unwrap_err(),
        nfsstat3::NFS3ERR_ISDIR
    );

    // RMDIR
    let rmdir = |dir: &nfs_fh3, n: &str| RMDIR3args {
        object: dirop(dir, n.as_bytes()),
    };
    let r = c.rmdir(&rmdir(&root, "d")).await.unwrap();
    let (st, fail) = err(r, "rmdir non-empty");
    assert_eq!(st, nfsstat3::NFS3ERR_NOTEMPTY);
    assert_after_wcc(&fail.dir_wcc, "RMDIR failure");
    create(&mut c, &root, "file", 0o644).await;
    assert_eq!(
        status(&c.rmdir(&rmdir(&root, "file")).await.unwrap()),
        nfsstat3::NFS3ERR_NOTDIR
    );
    assert_eq!(
        status(&c.rmdir(&rmdir(&root, "nope")).await.unwrap()),
        nfsstat3::NFS3ERR_NOENT
    );
    let r = c.rmdir(&rmdir(&d, ".")).await.unwrap();
    assert!(
        matches!(status(&r), nfsstat3::NFS3ERR_INVAL | nfsstat3::NFS3ERR_ACCES),
        "rmdir '.': {:?}",
        status(&r)
    );

    // RENAME: a file within and across directories, with both wcc.
    let r = c
        .rename(&RENAME3args {
            from: dirop(&root, b"file"),
            to: dirop(&sub, b"moved"),
        })
        .await
        .unwrap();
    let r = ok(r, "rename");
    assert_full_wcc(&r.fromdir_wcc, "RENAME from");
    assert_full_wcc(&r.todir_wcc, "RENAME to");
    assert_eq!(
        lookup(&mut c, &root, "file").await.unwrap_err(),
        nfsstat3::NFS3ERR_NOENT
    );
    lookup(&mut c, &sub, "moved").await.expect("renamed file");
    // Over an existing file: replaces it.
    rename(&mut c, &sub, "moved", &sub, "inner").await.unwrap();
    assert_eq!(list_names(&mut c, &sub).await, vec!["inner".to_string()]);
    // Missing source: NOENT, with both failure wcc.
    let r = c
        .rename(&RENAME3args {
            from: dirop(&root, b"ghost"),
            to: dirop(&root, b"x"),
        })
        .await
        .unwrap();
    let (st, fail) = err(r, "rename missing");
    assert_eq!(st, nfsstat3::NFS3ERR_NOENT);
    assert_after_wcc(&fail.fromdir_wcc, "RENAME failure from");
    assert_after_wcc(&fail.todir_wcc, "RENAME failure to");
    // A directory into its own subtree: INVAL.
    assert_eq!(
        rename(&mut c, &root, "d", &sub, "loop").await.unwrap_err(),
        nfsstat3::NFS3ERR_INVAL
    );
    // A directory over a non-empty directory: NOTEMPTY (EEXIST is also allowed).
    mkdir(&mut c, &root, "e", 0o755).await;
    let st = rename(&mut c, &root, "e", &root, "d").await.unwrap_err();
    assert!(
        matches!(st, nfsstat3::NFS3ERR_NOTEMPTY | nfsstat3::NFS3ERR_EXIST),
        "{st:?}"
    );
    // A file over a directory: ISDIR; a directory over a file: NOTDIR.
    create(&mut c, &root, "g", 0o644).await;
    assert_eq!(
        rename(&mut c, &root, "g", &root, "e").await.unwrap_err(),
        nfsstat3::NFS3ERR_ISDIR
    );
    assert_eq!(
        rename(&mut c, &root, "e", &root, "g").await.unwrap_err(),
        nfsstat3::NFS3ERR_NOTDIR
    );
    // A directory moves with its contents; handles below it keep working.
    rename(&mut c, &root, "d", &root, "d2").await.unwrap();
    let d2 = lookup(&mut c, &root, "d2").await.unwrap();
    assert_eq!(d2, d, "rename keeps the handle");
    assert_eq!(lookup(&mut c, &d2, "sub").await.unwrap(), sub);
    // Renaming onto itself is a no-op success.
    rename(&mut c, &root, "g", &root, "g").await.unwrap();
    // Empty directory: RMDIR works (inner first).
    remove(&mut c, &sub, "inner").await.unwrap();
    let r = ok(c.rmdir(&rmdir(&d2, "sub")).await.unwrap(), "rmdir");
    assert_full_wcc(&r.dir_wcc, "RMDIR");
    assert_eq!(getattr(&mut c, &sub).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
    gw.shutdown().await;
}

/// Devices and hard links are refused as Linux refuses them on a file system without
/// them: NFS3ERR_PERM ("Operation not permitted"), not NFS3ERR_NOTSUPP (which Linux
/// programs show as "Unknown error 524"). (FIFOs and sockets are kept: writeback.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mknod_and_link_are_not_supported() {
    let (_tmp, gw) = gateway().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let f = create(&mut c, &root, "f", 0o644).await;
    for what in [
        mknoddata3::NF3CHR(devicedata3 {
            dev_attributes: sattr3::default(),
            spec: specdata3 {
                specdata1: 1,
                specdata2: 3,
            },
        }),
        mknoddata3::NF3BLK(devicedata3 {
            dev_attributes: sattr3::default(),
            spec: specdata3 {
                specdata1: 8,
                specdata2: 0,
            },
        }),
    ] {
        let r = c
            .mknod(&MKNOD3args {
                where_: dirop(&root, b"node"),
                what,
            })
            .await
            .unwrap();
        let (st, fail) = err(r, "mknod");
        assert_eq!(st, nfsstat3::NFS3ERR_PERM);
        assert_after_wcc(&fail.dir_wcc, "MKNOD failure");
    }
    assert_eq!(
        lookup(&mut c, &root, "node").await.unwrap_err(),
        nfsstat3::NFS3ERR_NOENT
    );

    let r = c
        .link(&LINK3args {
            file: f.clone(),
            link: dirop(&root, b"hard"),
        })
        .await
        .unwrap();
    let (st, fail) = err(r, "link");
    assert_eq!(st, nfsstat3::NFS3ERR_PERM);
    assert!(fail.file_attributes.is_some());
    assert_after_wcc(&fail.linkdir_wcc, "LINK failure");
    assert_eq!(
        lookup(&mut c, &root, "hard").await.unwrap_err(),
        nfsstat3::NFS3ERR_NOENT
    );
    gw.shutdown().await;
}

const MANY: usize = 2000;

async fn readdir_all(c: &mut Conn, dir: &nfs_fh3, count: u32) -> (Vec<(String, u64)>, usize) {
    let mut out = Vec::new();
    let mut cookie = 0;
    let mut verf = cookieverf3::default();
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls < 10 * MANY, "READDIR never reaches eof");
        let r = c
            .readdir(&READDIR3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                count,
            })
            .await
            .unwrap();
        let r = ok(r, "readdir");
        verf = r.cookieverf;
        assert!(r.dir_attributes.is_some());
        // The reply fits in `count` bytes, as the client sized its buffer for it:
        // status, dir attributes, verifier, entries, list end, eof.
        let size: usize = 4
            + 4
            + 84
            + 8
            + r.reply
                .entries
                .0
                .iter()
                .map(|e| 4 + 8 + 4 + e.name.0.len().div_ceil(4) * 4 + 8)
                .sum::<usize>()
            + 4
            + 4;
        assert!(
            size <= count as usize,
            "READDIR reply of {size} bytes for count {count}"
        );
        for e in r.reply.entries.0 {
            cookie = e.cookie;
            out.push((String::from_utf8(e.name.0.to_vec()).unwrap(), e.cookie));
        }
        if r.reply.eof {
            return (out, calls);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_and_readdirplus_page_a_large_directory() {
    let (_tmp, gw) = gateway().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let d = mkdir(&mut c, &root, "big", 0o755).await;
    let mut want: HashSet<String> = HashSet::new();
    // Several connections create at once, so setup stays short.
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let addr = gw.nfs_addr;
        let d = d.clone();
        tasks.spawn(async move {
            let mut c = mount(addr).await;
            for i in (w..MANY).step_by(4) {
                create(&mut c, &d, &format!("entry-{i:05}-{}", "x".repeat(i % 40)), 0o644).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    for i in 0..MANY {
        want.insert(format!("entry-{i:05}-{}", "x".repeat(i % 40)));
    }

    // READDIR with a small count: many pages, every name exactly once.
    let (entries, calls) = readdir_all(&mut c, &d, 1024).await;
    assert!(calls > 20, "a 1 KiB count must page: {calls} calls");
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(&names[..2], [".", ".."]);
    let got: Vec<&str> = names[2..].to_vec();
    let unique: HashSet<&str> = got.iter().copied().collect();
    assert_eq!(got.len(), MANY, "every name exactly once");
    assert_eq!(unique.len(), MANY);
    assert!(want.iter().all(|n| unique.contains(n.as_str())));
    let cookies: HashSet<u64> = entries.iter().map(|(_, c)| *c).collect();
    assert_eq!(cookies.len(), entries.len(), "cookies are unique");

    // READDIRPLUS with small dircount/maxcount: the same set, with attributes and handles.
    let mut seen = HashSet::new();
    let mut cookie = 0;
    let mut verf = cookieverf3::default();
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls < 10 * MANY);
        let r = c
            .readdirplus(&READDIRPLUS3args {
                dir: d.clone(),
                cookie,
                cookieverf: verf,
                dircount: 512,
                maxcount: 4096,
            })
            .await
            .unwrap();
        let r = ok(r, "readdirplus");
        verf = r.cookieverf;
        let entry_bytes = |e: &entryplus3| {
            let attrs = if e.name_attributes.is_some() { 4 + 84 } else { 4 };
            let handle = match &e.name_handle {
                Nfs3Option::Some(h) => 4 + 4 + h.data.len().div_ceil(4) * 4,
                Nfs3Option::None => 4,
            };
            4 + 8 + 4 + e.name.0.len().div_ceil(4) * 4 + 8 + attrs + handle
        };
        let size: usize = 4 + 4 + 84 + 8 + r.reply.entries.0.iter().map(entry_bytes).sum::<usize>() + 8;
        assert!(
            size <= 4096,
            "READDIRPLUS reply of {size} bytes for maxcount 4096"
        );
        let dir_info: usize = r
            .reply
            .entries
            .0
            .iter()
            .map(|e| 8 + 4 + e.name.0.len().div_ceil(4) * 4 + 8)
            .sum();
        assert!(
            dir_info <= 512 || r.reply.entries.0.len() == 1,
            "{dir_info} bytes of names and cookies for dircount 512"
        );
        for e in r.reply.entries.0 {
            cookie = e.cookie;
            let n = String::from_utf8(e.name.0.to_vec()).unwrap();
            if n == "." || n == ".." {
                continue;
            }
            let Nfs3Option::Some(a) = e.name_attributes else {
                panic!("no attributes for {n}")
            };
            assert_eq!((a.type_, a.fileid), (ftype3::NF3REG, e.fileid));
            assert!(e.name_handle.is_some());
            assert!(seen.insert(n), "name listed twice");
        }
        if r.reply.eof {
            break;
        }
    }
    assert!(calls > 20, "small maxcount must page: {calls}");
    assert_eq!(seen.len(), MANY);

    // Cookies resume: listing from the 1000th entry's cookie gives exactly the rest.
    let (mid_name, mid_cookie) = entries[1001].clone();
    let verf = ok(
        c.readdir(&READDIR3args {
            dir: d.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            count: 1024,
        })
        .await
        .unwrap(),
        "readdir first",
    )
    .cookieverf;
    let mut rest = Vec::new();
    let mut cookie = mid_cookie;
    loop {
        let r = ok(
            c.readdir(&READDIR3args {
                dir: d.clone(),
                cookie,
                cookieverf: verf,
                count: 4096,
            })
            .await
            .unwrap(),
            "readdir resume",
        );
        for e in r.reply.entries.0 {
            cookie = e.cookie;
            rest.push(String::from_utf8(e.name.0.to_vec()).unwrap());
        }
        if r.reply.eof {
            break;
        }
    }
    let expect: Vec<String> = entries[1002..].iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(rest, expect, "resuming after {mid_name}");

    // A bad cookie verifier: BAD_COOKIE, for both.
    let bad = cookieverf3([0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]);
    let r = c
        .readdir(&READDIR3args {
            dir: d.clone(),
            cookie: mid_cookie,
            cookieverf: bad,
            count: 1024,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_BAD_COOKIE);
    let r = c
        .readdirplus(&READDIRPLUS3args {
            dir: d.clone(),
            cookie: mid_cookie,
            cookieverf: bad,
            dircount: 512,
            maxcount: 4096,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_BAD_COOKIE);
    // A cookie we never handed out: BAD_COOKIE.
    let r = c
        .readdir(&READDIR3args {
            dir: d.clone(),
            cookie: 1 << 40,
            cookieverf: verf,
            count: 1024,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_BAD_COOKIE);
    // Too small a count for even one entry: TOOSMALL.
    let r = c
        .readdir(&READDIR3args {
            dir: d.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            count: 8,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_TOOSMALL);
    // READDIR of a file: NOTDIR.
    let f = lookup(&mut c, &d, &expect[0]).await.unwrap();
    let r = c
        .readdir(&READDIR3args {
            dir: f,
            cookie: 0,
            cookieverf: cookieverf3::default(),
            count: 1024,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_NOTDIR);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_answers_from_mode_owner_and_group() {
    let (_tmp, gw) = gateway().await;
    let addr = gw.nfs_addr;
    let mut owner = mount_as(addr, "/data", 1000, 1000).await;
    let root = owner.root_nfs_fh3();
    let file = create(&mut owner, &root, "f0640", 0o640).await;
    let dir = mkdir(&mut owner, &root, "d0750", 0o750).await;
    let exe = create(&mut owner, &root, "x0750", 0o750).await;
    // Primary group 1000; a supplementary-group member; another user.
    let mut member = mount_cred(addr, "/data", unix_cred(2000, 2000, &[1000])).await;
    let mut primary = mount_as(addr, "/data", 2001, 1000).await;
    let mut other = mount_as(addr, "/data", 3000, 3000).await;

    const ALL: u32 =
        ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE | ACCESS3_EXECUTE;
    async fn access(c: &mut Conn, fh: &nfs_fh3, want: u32) -> u32 {
        let r = c
            .access(&ACCESS3args {
                object: fh.clone(),
                access: want,
            })
            .await
            .unwrap();
        let r = ok(r, "access");
        assert!(r.obj_attributes.is_some());
        assert_eq!(r.access & !want, 0, "granted only what was asked");
        r.access
    }
    const RW: u32 = ACCESS3_READ | ACCESS3_MODIFY | ACCESS3_EXTEND;
    // 0640 file
    assert_eq!(access(&mut owner, &file, ALL).await, RW);
    assert_eq!(access(&mut member, &file, ALL).await, ACCESS3_READ);
    assert_eq!(access(&mut primary, &file, ALL).await, ACCESS3_READ);
    assert_eq!(access(&mut other, &file, ALL).await, 0);
    // 0750 directory: LOOKUP for x, DELETE with w.
    let dir_all = ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE;
    assert_eq!(access(&mut owner, &dir, ALL).await, dir_all);
    assert_eq!(
        access(&mut member, &dir, ALL).await,
        ACCESS3_READ | ACCESS3_LOOKUP
    );
    assert_eq!(access(&mut other, &dir, ALL).await, 0);
    // 0750 file: EXECUTE for x.
    assert_eq!(access(&mut owner, &exe, ALL).await, RW | ACCESS3_EXECUTE);
    assert_eq!(
        access(&mut member, &exe, ALL).await,
        ACCESS3_READ | ACCESS3_EXECUTE
    );
    assert_eq!(access(&mut other, &exe, ALL).await, 0);
    // Only what is asked comes back.
    assert_eq!(access(&mut owner, &file, ACCESS3_READ).await, ACCESS3_READ);
    // The answer follows a chmod.
    set_mode(&mut owner, &file, 0o604).await.unwrap();
    assert_eq!(access(&mut member, &file, ALL).await, 0);
    assert_eq!(access(&mut other, &file, ALL).await, ACCESS3_READ);
    // And it is what the engine enforces: the group member may not list the 0750 dir
    // after chmod 0700.
    set_mode(&mut owner, &dir, 0o700).await.unwrap();
    assert_eq!(access(&mut member, &dir, ALL).await, 0);
    let r = member
        .lookup(&LOOKUP3args {
            what: dirop(&dir, b"x"),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_ACCES);
    let r = member
        .readdir(&READDIR3args {
            dir: dir.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            count: 4096,
        })
        .await
        .unwrap();
    assert_eq!(
        status(&r),
        nfsstat3::NFS3ERR_ACCES,
        "READDIR without read permission"
    );
    // A bad handle: BADHANDLE.
    let r = owner
        .access(&ACCESS3args {
            object: fh(&[0; 5]),
            access: ALL,
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_BADHANDLE);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_get_errors_never_a_panic() {
    let (_tmp, gw) = gateway().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let f = create(&mut c, &root, "plain", 0o644).await;
    let long = vec![b'n'; 256];
    let max = vec![b'm'; 255];
    let cases: Vec<(&str, Vec<u8>, &[nfsstat3])> = vec![
        (
            "slash",
            b"a/b".to_vec(),
            &[nfsstat3::NFS3ERR_INVAL, nfsstat3::NFS3ERR_ACCES],
        ),
        (
            "lone slash",
            b"/".to_vec(),
            &[nfsstat3::NFS3ERR_INVAL, nfsstat3::NFS3ERR_ACCES],
        ),
        (
            "NUL",
            b"a\0b".to_vec(),
            &[nfsstat3::NFS3ERR_INVAL, nfsstat3::NFS3ERR_ACCES],
        ),
        (
            "empty",
            b"".to_vec(),
            &[nfsstat3::NFS3ERR_INVAL, nfsstat3::NFS3ERR_ACCES],
        ),
        (
            "dot",
            b".".to_vec(),
            &[nfsstat3::NFS3ERR_INVAL, nfsstat3::NFS3ERR_EXIST],
        ),
        (
            "dotdot",
            b"..".to_vec(),
            &[nfsstat3::NFS3ERR_INVAL, nfsstat3::NFS3ERR_EXIST],
        ),
        ("256 bytes", long.clone(), &[nfsstat3::NFS3ERR_NAMETOOLONG]),
        (
            "not UTF-8",
            b"caf\xe9".to_vec(),
            &[nfsstat3::NFS3ERR_INVAL, nfsstat3::NFS3ERR_ACCES],
        ),
    ];
    for (what, n, allowed) in &cases {
        let r = c
            .create(&create_args(&root, n, createhow3::UNCHECKED(mode_attr(0o644))))
            .await
            .unwrap();
        assert!(allowed.contains(&status(&r)), "CREATE {what}: {:?}", status(&r));
        let r = c
            .mkdir(&MKDIR3args {
                where_: dirop(&root, n),
                attributes: mode_attr(0o755),
            })
            .await
            .unwrap();
        assert!(allowed.contains(&status(&r)), "MKDIR {what}: {:?}", status(&r));
        let r = c
            .symlink(&SYMLINK3args {
                where_: dirop(&root, n),
                symlink: symlinkdata3 {
                    symlink_attributes: sattr3::default(),
                    symlink_data: nfspath3(Opaque::owned(b"plain".to_vec())),
                },
            })
            .await
            .unwrap();
        assert!(allowed.contains(&status(&r)), "SYMLINK {what}: {:?}", status(&r));
        let r = c
            .rename(&RENAME3args {
                from: dirop(&root, b"plain"),
                to: dirop(&root, n),
            })
            .await
            .unwrap();
        assert!(
            allowed.contains(&status(&r)),
            "RENAME to {what}: {:?}",
            status(&r)
        );
        // LOOKUP and REMOVE of such a name find nothing (or refuse it).
        let r = c
            .lookup(&LOOKUP3args {
                what: dirop(&root, n),
            })
            .await
            .unwrap();
        let st = status(&r);
        if n.as_slice() != b"." && n.as_slice() != b".." {
            assert!(
                st == nfsstat3::NFS3ERR_NOENT || allowed.contains(&st),
                "LOOKUP {what}: {st:?}"
            );
        }
        let r = c
            .remove(&REMOVE3args {
                object: dirop(&root, n),
            })
            .await
            .unwrap();
        assert_ne!(status(&r), nfsstat3::NFS3_OK, "REMOVE {what}");
        let r = c
            .rmdir(&RMDIR3args {
                object: dirop(&root, n),
            })
            .await
            .unwrap();
        assert_ne!(status(&r), nfsstat3::NFS3_OK, "RMDIR {what}");
    }
    // A 256-byte LOOKUP: NAMETOOLONG; 255 bytes is a valid name.
    let r = c
        .lookup(&LOOKUP3args {
            what: dirop(&root, &long),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_NAMETOOLONG);
    let r = c
        .create(&create_args(&root, &max, createhow3::UNCHECKED(mode_attr(0o644))))
        .await
        .unwrap();
    ok(r, "255-byte name");
    // A name that makes the path (the object key) longer than 1024 bytes.
    let mut dir = root.clone();
    for i in 0..4 {
        let n = format!("{i}{}", "d".repeat(199));
        dir = mkdir(&mut c, &dir, &n, 0o755).await; // 4 x 201 = 804 bytes of path
    }
    let fits = "f".repeat(1024 - 804 - 2);
    create(&mut c, &dir, &fits, 0o644).await;
    let too_long = "g".repeat(1024 - 804);
    let r = c
        .create(&create_args(
            &dir,
            too_long.as_bytes(),
            createhow3::UNCHECKED(mode_attr(0o644)),
        ))
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_NAMETOOLONG);
    let r = c
        .mkdir(&MKDIR3args {
            where_: dirop(&dir, too_long.as_bytes()),
            attributes: mode_attr(0o755),
        })
        .await
        .unwrap();
    assert_eq!(status(&r), nfsstat3::NFS3ERR_NAMETOOLONG);
    assert_eq!(
        rename(&mut c, &root, "plain", &dir, &too_long).await.unwrap_err(),
        nfsstat3::NFS3ERR_NAMETOOLONG
    );
    // Moving a directory so that something below it would pass the limit.
    let deep = mkdir(&mut c, &root, "deep", 0o755).await;
    create(&mut c, &deep, &"z".repeat(250), 0o644).await;
    assert_eq!(
        rename(&mut c, &root, "deep", &dir, "deep").await.unwrap_err(),
        nfsstat3::NFS3ERR_NAMETOOLONG
    );
    // Nothing odd got into the namespace, and the server still answers.
    let names = list_names(&mut c, &root).await;
    let mut sorted = names.clone();
    sorted.sort();
    let mut expect = vec![
        "0".to_string() + &"d".repeat(199),
        "deep".to_string(),
        String::from_utf8(max).unwrap(),
        "plain".to_string(),
    ];
    expect.sort();
    assert_eq!(sorted, expect);
    getattr(&mut c, &f).await.expect("file intact");
    c.null().await.expect("still serving");
    gw.shutdown().await;
}

/// WRITE racing REMOVE of the same file, many times: when the dust settles and every
/// file is gone, the cache disk holds no data file (a write that lost the race must
/// not leave an orphan behind that nothing would ever delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_racing_remove_leaves_no_orphan_data() {
    let (tmp, gw) = gateway().await;
    let addr = gw.nfs_addr;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..3 {
        tasks.spawn(async move {
            let mut writer = mount(addr).await;
            let mut remover = mount(addr).await;
            let root = writer.root_nfs_fh3();
            for i in 0..150 {
                let n = format!("race-{w}-{i}");
                let f = create(&mut writer, &root, &n, 0o644).await;
                let data = [7u8; 4096];
                let (wr, rm) = tokio::join!(
                    async {
                        for k in 0..4u64 {
                            let r = write_at(&mut writer, &f, k * 4096, &data, stable_how::UNSTABLE).await;
                            if let Err(st) = r {
                                assert_eq!(st, nfsstat3::NFS3ERR_STALE);
                                return false;
                            }
                        }
                        true
                    },
                    remove(&mut remover, &root, &n)
                );
                rm.expect("remove");
                let _ = wr;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let mut c = mount(addr).await;
    let root = c.root_nfs_fh3();
    assert!(list_names(&mut c, &root).await.is_empty());
    let data_dir = tmp.path().join("cache/shares/data/data");
    let left: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "orphan data files: {left:?}");
    gw.shutdown().await;
}

/// Who may rename and remove: write+search on the directories, the sticky bit, and
/// (as POSIX rename(2) requires) write permission on a directory that moves to
/// another parent, since its ".." changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_remove_permissions() {
    let (_tmp, gw) = gateway().await;
    let mut alice = mount_as(gw.nfs_addr, "/data", 1000, 1000).await;
    let mut bob = mount_as(gw.nfs_addr, "/data", 2000, 2000).await;
    let root = alice.root_nfs_fh3();
    let p1 = mkdir(&mut alice, &root, "p1", 0o777).await;
    let p2 = mkdir(&mut alice, &root, "p2", 0o777).await;
    let theirs = mkdir(&mut alice, &p1, "theirs", 0o755).await;
    // Bob may rename alice's directory within p1 (he can write p1) ...
    rename(&mut bob, &p1, "theirs", &p1, "renamed").await.unwrap();
    // ... but not move it to another parent: that rewrites its "..".
    assert_eq!(
        rename(&mut bob, &p1, "renamed", &p2, "moved").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(lookup(&mut bob, &p1, "renamed").await.unwrap(), theirs);
    rename(&mut alice, &p1, "renamed", &p2, "moved").await.unwrap();
    // A file has no "..": bob may move alice's file between directories he can write.
    create(&mut alice, &p1, "file", 0o644).await;
    rename(&mut bob, &p1, "file", &p2, "file").await.unwrap();

    // A read-only directory: nobody but its owner's permissions count.
    let ro = mkdir(&mut alice, &root, "ro", 0o755).await;
    create(&mut alice, &ro, "f", 0o666).await;
    assert_eq!(
        remove(&mut bob, &ro, "f").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(
        rename(&mut bob, &ro, "f", &p2, "g").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(
        rename(&mut bob, &p2, "file", &ro, "g").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );

    // Sticky (01777): only the entry's owner (or the directory's) removes or renames it.
    let tmp = mkdir(&mut alice, &root, "tmp", 0o777).await;
    set_mode(&mut alice, &tmp, 0o1777).await.unwrap();
    create(&mut alice, &tmp, "alices", 0o666).await;
    create(&mut bob, &tmp, "bobs", 0o666).await;
    assert_eq!(
        remove(&mut bob, &tmp, "alices").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(
        rename(&mut bob, &tmp, "alices", &tmp, "mine").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    assert_eq!(
        rename(&mut bob, &tmp, "bobs", &tmp, "alices").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES,
        "replacing someone else's entry in a sticky directory"
    );
    remove(&mut bob, &tmp, "bobs").await.unwrap();
    remove(&mut alice, &tmp, "alices").await.unwrap();
    gw.shutdown().await;
}

/// Cookies are stable while the directory changes between pages: names that exist
/// throughout are listed exactly once, removed ones never twice, nothing repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_cookies_survive_changes_between_pages() {
    let (_tmp, gw) = gateway().await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let d = mkdir(&mut c, &root, "churn", 0o755).await;
    for i in 0..300 {
        create(&mut c, &d, &format!("keep-{i:03}"), 0o644).await;
        create(&mut c, &d, &format!("gone-{i:03}"), 0o644).await;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cookie = 0;
    let mut verf = cookieverf3::default();
    let mut page = 0;
    loop {
        let r = c
            .readdir(&READDIR3args {
                dir: d.clone(),
                cookie,
                cookieverf: verf,
                count: 1024,
            })
            .await
            .unwrap();
        let r = ok(r, "readdir");
        verf = r.cookieverf;
        for e in r.reply.entries.0 {
            cookie = e.cookie;
            seen.push(String::from_utf8(e.name.0.to_vec()).unwrap());
        }
        if r.reply.eof {
            break;
        }
        // Between pages: remove the entry just listed and two not listed yet, add one.
        page += 1;
        let last = seen.last().unwrap().clone();
        if last.starts_with("gone-") {
            remove(&mut c, &d, &last).await.unwrap();
        }
        for i in [page * 2, 299 - page] {
            let _ = remove(&mut c, &d, &format!("gone-{i:03}")).await;
        }
        create(&mut c, &d, &format!("new-{page:03}"), 0o644).await;
    }
    assert!(page > 10, "paged {page} times");
    let mut uniq = seen.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), seen.len(), "a name listed twice");
    for i in 0..300 {
        assert!(seen.contains(&format!("keep-{i:03}")), "keep-{i:03} missing");
    }
    gw.shutdown().await;
}

/// READDIRPLUS in a directory the caller may read but not search (r-- for them)
/// lists names but hands out no file handles or attributes: a handle would let the
/// caller reach the entries that LOOKUP refuses them (knfsd omits them the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdirplus_gives_no_handles_without_search_permission() {
    let (_tmp, gw) = gateway().await;
    let mut alice = mount_as(gw.nfs_addr, "/data", 1000, 1000).await;
    let mut bob = mount_as(gw.nfs_addr, "/data", 2000, 2000).await;
    let root = alice.root_nfs_fh3();
    let d = mkdir(&mut alice, &root, "listable", 0o744).await;
    let secret = put_file(&mut alice, &d, "secret", b"for alice").await;
    set_mode(&mut alice, &secret, 0o644).await.unwrap();
    assert_eq!(
        lookup(&mut bob, &d, "secret").await.unwrap_err(),
        nfsstat3::NFS3ERR_ACCES
    );
    let r = bob
        .readdirplus(&READDIRPLUS3args {
            dir: d.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            dircount: 4096,
            maxcount: 32768,
        })
        .await
        .unwrap();
    let r = ok(r, "readdirplus by a reader without search permission");
    let names: Vec<String> = r
        .reply
        .entries
        .0
        .iter()
        .map(|e| String::from_utf8(e.name.0.to_vec()).unwrap())
        .collect();
    assert!(names.contains(&"secret".to_string()), "{names:?}");
    for e in &r.reply.entries.0 {
        assert!(e.name_handle.is_none(), "handle handed out for {:?}", e.name);
        assert!(
            e.name_attributes.is_none(),
            "attributes handed out for {:?}",
            e.name
        );
    }
    // Alice, who may search it, gets handles.
    let r = alice
        .readdirplus(&READDIRPLUS3args {
            dir: d.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            dircount: 4096,
            maxcount: 32768,
        })
        .await
        .unwrap();
    let r = ok(r, "readdirplus by the owner");
    let e = r
        .reply
        .entries
        .0
        .iter()
        .find(|e| &*e.name.0 == b"secret")
        .unwrap();
    assert_eq!(e.name_handle.clone().unwrap(), secret);
    gw.shutdown().await;
}

/// A WRITE or truncate by anyone but root clears setuid, and setgid where group
/// execute is set, as write(2) and truncate(2) do on Linux (and knfsd through them):
/// otherwise whoever may write a setuid program could replace its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_clear_setuid_and_setgid() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = common::gateway::share_with(&quiet_config(tmp.path()), |s| {
        s.squash = bucketgate::config::Squash::None
    });
    let gw = start(cfg, None).await;
    let mut root_c = mount_as(gw.nfs_addr, "/data", 0, 0).await;
    let mut user = mount_as(gw.nfs_addr, "/data", 1000, 1000).await;
    let root = root_c.root_nfs_fh3();
    let prog = put_file(&mut root_c, &root, "prog", b"#!/bin/sh\n").await;
    set_mode(&mut root_c, &prog, 0o6777).await.unwrap();
    // Root writing keeps the bits.
    write_at(&mut root_c, &prog, 0, b"#", stable_how::FILE_SYNC)
        .await
        .unwrap();
    assert_eq!(getattr(&mut root_c, &prog).await.unwrap().mode, 0o6777);
    // Another user writing clears both (group execute is set).
    let w = write_at(&mut user, &prog, 0, b"#", stable_how::FILE_SYNC)
        .await
        .unwrap();
    assert_eq!(w.file_wcc.after.unwrap().mode, 0o777);
    // setgid without group execute is mandatory locking, not privilege: kept.
    set_mode(&mut root_c, &prog, 0o6767).await.unwrap();
    write_at(&mut user, &prog, 0, b"#", stable_how::UNSTABLE)
        .await
        .unwrap();
    assert_eq!(getattr(&mut root_c, &prog).await.unwrap().mode, 0o2767);
    // A truncate by a user clears them too.
    set_mode(&mut root_c, &prog, 0o4777).await.unwrap();
    let r = user
        .setattr(&SETATTR3args {
            object: prog.clone(),
            new_attributes: sattr3 {
                size: Nfs3Option::Some(1),
                ..sattr3::default()
            },
            guard: Nfs3Option::None,
        })
        .await
        .unwrap();
    ok(r, "truncate by user");
    assert_eq!(getattr(&mut root_c, &prog).await.unwrap().mode, 0o777);
    gw.shutdown().await;
}
