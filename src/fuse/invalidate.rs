//! What the kernel cannot see for itself (writes by NFS clients, what a listing or a
//! HEAD found changed in the store) reaches it as FUSE invalidations: the cache's
//! notices go through a bounded queue to one thread that writes them to the FUSE
//! device, so no engine call waits on the kernel while it holds the engine's lock.
//! The share layer then waits, with a bound, for its notices to be delivered
//! before it answers an NFS client, so a read through the mount right after the
//! reply sees the change. A notice that finds the queue full is dropped: the
//! attribute TTL bounds how long the kernel can then show the old state.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use bucketgate_cache::{Cache, Delivered, Notice, Watcher};
use fuser::{INodeNo, Notifier};
use parking_lot::Mutex;
use tokio::sync::watch;

/// Notices waiting for the thread.
const QUEUE: usize = 4096;

/// Starts sending `cache`'s notices to the kernel through `notifier`; ends when the
/// cache stops being watched (`Cache::watch(None)`).
pub(super) fn start(cache: &Cache, notifier: Notifier, name: &str) -> std::io::Result<()> {
    let (tx, rx) = sync_channel(QUEUE);
    let (done_tx, done) = watch::channel(0);
    std::thread::Builder::new()
        .name(format!("fuse-inval-{name}"))
        .spawn(move || run(rx, notifier, done_tx))?;
    cache.watch(Some(Box::new(Queue {
        tx: Mutex::new((0, tx)),
        done,
    })));
    Ok(())
}

/// The cache's side of the queue. Notices are numbered in queue order; the thread
/// publishes the highest number it has written to the kernel.
struct Queue {
    /// The number of the last notice queued, and the queue.
    tx: Mutex<(u64, SyncSender<(u64, Notice)>)>,
    done: watch::Receiver<u64>,
}

impl Watcher for Queue {
    fn notice(&self, n: Notice) {
        let mut tx = self.tx.lock();
        match tx.1.try_send((tx.0 + 1, n)) {
            Ok(()) => tx.0 += 1,
            Err(TrySendError::Full((_, n))) => {
                tracing::debug!(notice = ?n, "FUSE invalidation queue full; the kernel sees this change when its attributes expire");
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn delivered(&self) -> Delivered {
        let last = self.tx.lock().0;
        let mut done = self.done.clone();
        // An error: the thread is gone, and nothing more will be delivered.
        Box::pin(async move {
            let _ = done.wait_for(|d| *d >= last).await;
        })
    }
}

fn run(rx: Receiver<(u64, Notice)>, notifier: Notifier, done: watch::Sender<u64>) {
    while let Ok((mut last, first)) = rx.recv() {
        // A burst of NFS writes to one file is one invalidation.
        let mut batch = HashSet::from([first]);
        while batch.len() < QUEUE
            && let Ok((seq, n)) = rx.try_recv()
        {
            batch.insert(n);
            last = seq;
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
        done.send_replace(last);
    }
}
