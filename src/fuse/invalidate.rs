//! What the kernel cannot see for itself (writes by NFS clients, what a listing or a
//! HEAD found changed in the store) reaches it as FUSE invalidations: the cache's
//! notices go through a bounded queue to one thread that writes them to the FUSE
//! device, so no engine call or NFS reply waits on the kernel. A notice that finds
//! the queue full is dropped: the attribute TTL bounds how long the kernel can then
//! show the old state.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{Receiver, TrySendError, sync_channel};

use bucketgate_cache::{Cache, Notice};
use fuser::{INodeNo, Notifier};

/// Notices waiting for the thread.
const QUEUE: usize = 4096;

/// Starts sending `cache`'s notices to the kernel through `notifier`; ends when the
/// cache stops being watched (`Cache::watch(None)`).
pub(super) fn start(cache: &Cache, notifier: Notifier, name: &str) -> std::io::Result<()> {
    let (tx, rx) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name(format!("fuse-inval-{name}"))
        .spawn(move || run(rx, notifier))?;
    cache.watch(Some(Box::new(move |n| {
        if let Err(TrySendError::Full(n)) = tx.try_send(n) {
            tracing::debug!(notice = ?n, "FUSE invalidation queue full; the kernel sees this change when its attributes expire");
        }
    })));
    Ok(())
}

fn run(rx: Receiver<Notice>, notifier: Notifier) {
    while let Ok(first) = rx.recv() {
        // A burst of NFS writes to one file is one invalidation.
        let mut batch = HashSet::from([first]);
        while batch.len() < QUEUE
            && let Ok(n) = rx.try_recv()
        {
            batch.insert(n);
        }
        for n in batch {
            // ENOENT: the kernel holds nothing of that inode or name.
            let r = match &n {
                Notice::Inode(id) => notifier.inval_inode(INodeNo(*id), 0, 0),
                Notice::Entry { dir, name } => notifier.inval_entry(INodeNo(*dir), OsStr::from_bytes(name)),
            };
            if let Err(e) = r
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                tracing::debug!(notice = ?n, error = %e, "FUSE invalidation");
            }
        }
    }
}
