//! What POSIX and RFC 1813 say of the attributes each NFS procedure changes: which
//! times move on the object and on its directories (and which must not, also when
//! the call fails), and how many bytes a file takes (`used`, the `st_blocks` of
//! `du`). The regression tests for what pjdfstest checks through the kernel client
//! (tests/interop/kernel-pjdfstest.sh), here without a VM. Store: a local directory.

use crate::common;

use std::time::Duration;

use common::gateway::{config, start};
use common::nfs::*;
use nfs3_types::nfs3::*;

/// mtime and ctime of `fh`, in ns.
async fn times(c: &mut Conn, fh: &nfs_fh3) -> (u64, u64) {
    let a = getattr(c, fh).await.unwrap();
    let ns = |t: nfstime3| t.seconds as u64 * 1_000_000_000 + t.nseconds as u64;
    (ns(a.mtime), ns(a.ctime))
}

/// Which of an object's times a call must change.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Moves {
    /// mtime and ctime.
    Both,
    /// ctime only (attributes or name changed, not the contents).
    Ctime,
    Neither,
}

/// Runs `op` and checks, for each watched object, which of its times moved.
struct Watch<'a> {
    c: &'a mut Conn,
}

impl Watch<'_> {
    async fn check(
        &mut self,
        what: &str,
        watched: &[(&str, &nfs_fh3, Moves)],
        op: impl AsyncFnOnce(&mut Conn),
    ) {
        let mut before = Vec::new();
        for (_, fh, _) in watched {
            before.push(times(self.c, fh).await);
        }
        // A change made now gets a later time than anything before, whatever the
        // clock's resolution.
        tokio::time::sleep(Duration::from_millis(2)).await;
        op(self.c).await;
        for ((name, fh, want), (m0, c0)) in watched.iter().zip(before) {
            let (m1, c1) = times(self.c, fh).await;
            let got = match (m1 != m0, c1 != c0) {
                (true, true) => Moves::Both,
                (false, true) => Moves::Ctime,
                (false, false) => Moves::Neither,
                (true, false) => panic!("{what}: {name}'s mtime moved without its ctime"),
            };
            assert_eq!(got, *want, "{what}: the times of {name}");
            assert!(c1 >= c0, "{what}: {name}'s ctime went back");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_procedure_moves_the_times_posix_says() {
    use Moves::*;
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let gw = start(config(tmp.path(), &url), None).await;
    let mut c = mount(gw.nfs_addr).await;
    let mut other = mount_as(gw.nfs_addr, "/data", 2000, 2000).await;
    let root = c.root_nfs_fh3();
    let d = mkdir(&mut c, &root, "d", 0o755).await;
    let e = mkdir(&mut c, &root, "e", 0o755).await;
    let f = put_file(&mut c, &d, "f", b"contents").await;
    let mut w = Watch { c: &mut c };

    w.check("WRITE", &[("f", &f, Both), ("d", &d, Neither)], async |c| {
        write_at(c, &f, 3, b"X", stable_how::UNSTABLE).await.unwrap();
    })
    .await;
    w.check("READ", &[("f", &f, Neither)], async |c| {
        read_all(c, &f).await;
    })
    .await;
    w.check("COMMIT", &[("f", &f, Neither)], async |c| {
        commit(c, &f).await;
    })
    .await;
    w.check(
        "SETATTR mode",
        &[("f", &f, Ctime), ("d", &d, Neither)],
        async |c| {
            setattr(c, &f, mode_attr(0o640)).await.unwrap();
        },
    )
    .await;
    w.check("SETATTR size", &[("f", &f, Both)], async |c| {
        set_size(c, &f, 2).await.unwrap();
    })
    .await;
    let t = nfstime3 {
        seconds: 1_500_000_000,
        nseconds: 7,
    };
    w.check("SETATTR mtime", &[("f", &f, Both)], async |c| {
        let a = sattr3 {
            mtime: set_mtime::SET_TO_CLIENT_TIME(t),
            ..sattr3::default()
        };
        setattr(c, &f, a).await.unwrap();
    })
    .await;
    assert_eq!(times(w.c, &f).await.0, 1_500_000_000_000_000_007);
    // Refused: nothing changes.
    let before = times(w.c, &f).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(
        setattr(&mut other, &f, mode_attr(0o777)).await.unwrap_err(),
        nfsstat3::NFS3ERR_PERM
    );
    assert_eq!(times(w.c, &f).await, before, "a refused SETATTR");

    // Names: the directory's contents change, so both its times; the object's
    // own times only where its attributes do.
    let mut g = None;
    w.check("CREATE", &[("d", &d, Both), ("f", &f, Neither)], async |c| {
        g = Some(create(c, &d, "g", 0o644).await);
    })
    .await;
    let g = g.unwrap();
    w.check("MKDIR", &[("d", &d, Both)], async |c| {
        mkdir(c, &d, "sub", 0o755).await;
    })
    .await;
    w.check("SYMLINK", &[("d", &d, Both)], async |c| {
        symlink(c, &d, "link", "f").await;
    })
    .await;
    w.check("MKNOD fifo", &[("d", &d, Both)], async |c| {
        let r = c
            .mknod(&MKNOD3args {
                where_: dirop(&d, b"fifo"),
                what: mknoddata3::NF3FIFO(sattr3::default()),
            })
            .await
            .unwrap();
        assert!(matches!(r, Nfs3Result::Ok(_)), "MKNOD fifo");
    })
    .await;
    w.check(
        "LINK (refused)",
        &[("d", &d, Neither), ("f", &f, Neither)],
        async |c| {
            let r = c
                .link(&LINK3args {
                    file: f.clone(),
                    link: dirop(&d, b"hard"),
                })
                .await
                .unwrap();
            assert!(matches!(r, Nfs3Result::Err((nfsstat3::NFS3ERR_PERM, _))));
        },
    )
    .await;
    // Linux, like most systems, moves the ctime of what it renames.
    w.check(
        "RENAME across directories",
        &[("d", &d, Both), ("e", &e, Both), ("g", &g, Ctime)],
        async |c| rename(c, &d, "g", &e, "g").await.unwrap(),
    )
    .await;
    w.check(
        "RENAME within a directory",
        &[("e", &e, Both), ("d", &d, Neither), ("g", &g, Ctime)],
        async |c| rename(c, &e, "g", &e, "g2").await.unwrap(),
    )
    .await;
    w.check(
        "RENAME over a file",
        &[("d", &d, Both), ("e", &e, Both), ("f", &f, Ctime)],
        async |c| rename(c, &d, "f", &e, "g2").await.unwrap(),
    )
    .await;
    w.check(
        "RENAME refused (a file over a directory)",
        &[("d", &d, Neither), ("e", &e, Neither), ("f", &f, Neither)],
        async |c| {
            assert_eq!(
                rename(c, &e, "g2", &d, "sub").await.unwrap_err(),
                nfsstat3::NFS3ERR_ISDIR
            )
        },
    )
    .await;
    w.check(
        "RENAME by someone without write access",
        &[("d", &d, Neither), ("e", &e, Neither), ("f", &f, Neither)],
        async |_| {
            assert_eq!(
                rename(&mut other, &e, "g2", &d, "stolen").await.unwrap_err(),
                nfsstat3::NFS3ERR_ACCES
            )
        },
    )
    .await;
    w.check("REMOVE", &[("e", &e, Both), ("d", &d, Neither)], async |c| {
        remove(c, &e, "g2").await.unwrap()
    })
    .await;
    w.check("REMOVE refused", &[("d", &d, Neither)], async |_| {
        assert_eq!(
            remove(&mut other, &d, "link").await.unwrap_err(),
            nfsstat3::NFS3ERR_ACCES
        )
    })
    .await;
    w.check("RMDIR", &[("d", &d, Both), ("e", &e, Neither)], async |c| {
        let r = c
            .rmdir(&RMDIR3args {
                object: dirop(&d, b"sub"),
            })
            .await
            .unwrap();
        assert!(matches!(r, Nfs3Result::Ok(_)), "RMDIR");
    })
    .await;
    gw.shutdown().await;
}

/// `used` (what `du` and `st_blocks` show) is what a file takes on the cache disk: a
/// sparse file only the blocks it holds; a file whose bytes are in the store alone,
/// its size rounded up to 4 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_is_what_a_file_takes_on_the_cache_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let gw = start(config(tmp.path(), &url), None).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let sparse = create(&mut c, &root, "sparse", 0o644).await;
    write_at(&mut c, &sparse, 1 << 30, b"end", stable_how::FILE_SYNC)
        .await
        .unwrap();
    let a = getattr(&mut c, &sparse).await.unwrap();
    assert_eq!(a.size, (1 << 30) + 3);
    assert!(
        a.used <= 1 << 20,
        "a 1 GiB sparse file holding 3 bytes uses {} bytes",
        a.used
    );
    let dense = put_file(&mut c, &root, "dense", &vec![7; 100_000]).await;
    let a = getattr(&mut c, &dense).await.unwrap();
    assert!(
        (100_000..=100_000 + 64 * 1024).contains(&a.used),
        "a 100,000-byte file uses {} bytes",
        a.used
    );
    common::gateway::flush(&gw).await;
    gw.shutdown().await;

    // Through a second gateway with an empty cache: the bytes are only in the store.
    let tmp2 = tempfile::tempdir().unwrap();
    let gw2 = start(config(tmp2.path(), &url), None).await;
    let mut c = mount(gw2.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let dense = lookup(&mut c, &root, "dense").await.unwrap();
    let a = getattr(&mut c, &dense).await.unwrap();
    assert_eq!(a.used, 100_000u64.div_ceil(4096) * 4096, "a file not cached");
    gw2.shutdown().await;
}

/// The share's root is the bucket prefix, not an object: a chmod of it is kept by the
/// gateway and sends nothing to the store. Before, the uploader tried to write a
/// marker at the key `/` for ever (InvalidKey), and `flush --wait` never returned
/// (found by the SMB interop check, which opens the root to its users).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chmod_of_the_share_root_is_kept_and_flushes() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let gw = start(config(tmp.path(), &url), None).await;
    // The root's owner: the share's default owner, nobody.
    let mut c = mount_as(gw.nfs_addr, "/data", 65534, 65534).await;
    let root = c.root_nfs_fh3();
    setattr(&mut c, &root, mode_attr(0o1777)).await.unwrap();
    common::gateway::flush_within(&gw, Duration::from_secs(10))
        .await
        .expect("flush after a chmod of the root");
    let uploader = &gw.gateway.shares[0].uploader;
    assert!(uploader.failing().is_empty(), "failing: {:?}", uploader.failing());
    assert_eq!(getattr(&mut c, &root).await.unwrap().mode, 0o1777);
    gw.shutdown().await;
}
