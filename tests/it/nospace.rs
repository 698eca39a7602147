//! A full cache disk: the writer gets NFS3ERR_NOSPC, what was already written stays
//! readable and intact, and once space returns writes succeed again and everything
//! acknowledged reaches the store. The cache lives on a 64 MiB tmpfs the test mounts
//! (needs root, as CI runs; skipped with a message otherwise).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bucketgate::remote::LocalStore;
use bucketgate::remote::ObjectStore;
use common::gateway::{config, flush, start_with_store};
use common::nfs::*;
use nfs3_types::nfs3::{nfsstat3, stable_how};

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cache_disk_answers_nospc_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::mount(&tmp.path().join("disk"), "64m") {
        Ok(d) => d,
        Err(e) => {
            crate::common::skipped(&format!(
                "full_cache_disk_answers_nospc_and_recovers: cannot mount a tmpfs ({e})"
            ));
            return;
        }
    };
    let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(tmp.path().join("bucket")).unwrap());
    let mut cfg = config(tmp.path(), "file:///unused");
    cfg.cache.dir = disk.0.join("cache");
    // Nothing is uploaded (and so nothing could be evicted) until the test flushes.
    cfg.cache.upload_delay.0 = std::time::Duration::from_secs(3600);
    cfg.cache.max_dirty_age.0 = std::time::Duration::from_secs(3600);
    let gw = start_with_store(cfg.clone(), local.clone()).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let keep = body(2 << 20, 1);
    let keep_fh = put_file(&mut c, &root, "keep", &keep).await;

    // Ballast takes most of what is left, as other data on a shared disk would.
    let ballast = disk.0.join("ballast");
    std::fs::write(&ballast, vec![1u8; 30 << 20]).unwrap();

    let fill_fh = create(&mut c, &root, "fill", 0o644).await;
    let mut acked = Vec::new();
    let chunk = body(1 << 20, 2);
    let failed = loop {
        match write_at(&mut c, &fill_fh, acked.len() as u64, &chunk, stable_how::UNSTABLE).await {
            Ok(_) => acked.extend_from_slice(&chunk),
            Err(st) => break st,
        }
        assert!(acked.len() < 64 << 20, "the disk never filled");
    };
    assert_eq!(failed, nfsstat3::NFS3ERR_NOSPC, "a full disk is NOSPC");
    // Nothing else is damaged: the committed file reads back, names resolve, the
    // partly written file still has what was acknowledged.
    assert_eq!(read_all(&mut c, &keep_fh).await, keep);
    assert_eq!(lookup(&mut c, &root, "keep").await.unwrap(), keep_fh);
    let got = read_all(&mut c, &fill_fh).await;
    assert_eq!(got.len(), acked.len(), "size is what was acknowledged");
    assert!(got == acked);
    // Creating more on a full disk is refused the same way (never EIO): sled keeps
    // its reserve, so it never fails a log write (sled would stay broken until a
    // restart).
    let r = c
        .create(&nfs3_types::nfs3::CREATE3args {
            where_: nfs3_types::nfs3::diropargs3 {
                dir: root.clone(),
                name: name("more"),
            },
            how: nfs3_types::nfs3::createhow3::UNCHECKED(mode_attr(0o644)),
        })
        .await
        .expect("rpc");
    match r {
        nfs3_types::nfs3::Nfs3Result::Err((st, _)) => {
            assert!(st == nfsstat3::NFS3ERR_NOSPC, "create on a full disk: {st:?}")
        }
        // Room for metadata may be left though a 1 MiB write no longer fits.
        nfs3_types::nfs3::Nfs3Result::Ok(_) => {}
    }

    // Space returns: the same writer carries on.
    std::fs::remove_file(&ballast).unwrap();
    write_at(&mut c, &fill_fh, acked.len() as u64, &chunk, stable_how::UNSTABLE)
        .await
        .expect("write after space returned");
    acked.extend_from_slice(&chunk);
    commit(&mut c, &fill_fh).await;
    flush(&gw).await;
    assert_eq!(
        local.get_range("keep", 0, 4 << 20).await.unwrap().as_ref(),
        &keep[..]
    );
    let up = local.get_range("fill", 0, 64 << 20).await.unwrap();
    assert!(
        up.as_ref() == &acked[..],
        "the store holds every acknowledged byte"
    );
    drop(c);
    gw.shutdown().await;

    // And the cache opens again.
    let gw = start_with_store(cfg, local).await;
    let mut c = mount(gw.nfs_addr).await;
    assert_eq!(read_all(&mut c, &keep_fh).await, keep);
    drop(c);
    gw.shutdown().await;
    drop(disk);
}
