//! What the kernel cannot see for itself (writes by NFS clients, what a listing or a
//! HEAD found changed in the store) reaches it as FUSE invalidations: the cache's
//! notices go through a bounded queue to one thread that writes them to the FUSE
//! device, so no engine call waits on the kernel while it holds the engine's lock.
//! The share layer then waits, with a bound, for its notices to be delivered
//! before it answers an NFS client, so a read through the mount right after the
//! reply sees the change. A notice that finds the queue full is dropped: the
//! attribute TTL bounds how long the kernel can then show the old name or
//! attributes, and a file whose data notice was lost is [`Undelivered`], so that its
//! next open drops the pages the kernel keeps across opens.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use bucketgate_cache::{Cache, Delivered, Notice, Watcher};
use fuser::{INodeNo, Notifier};
use parking_lot::Mutex;
use tokio::sync::watch;

/// Notices waiting for the thread.
const QUEUE: usize = 4096;

/// Files whose data invalidation never reached the kernel (the queue was full, or
/// the kernel refused it). Opens keep a file's cached pages (FOPEN_KEEP_CACHE) only
/// because every change arrives as an invalidation; a file named here has its pages
/// dropped at its next open instead. Past `QUEUE` of them, every open drops them.
#[derive(Default)]
pub(super) struct Undelivered {
    ids: Mutex<HashSet<u64>>,
    all: AtomicBool,
}

impl Undelivered {
    fn lost(&self, n: &Notice) {
        if let Notice::Inode(id) = n {
            let mut ids = self.ids.lock();
            if ids.len() >= QUEUE {
                self.all.store(true, Ordering::Relaxed);
            } else {
                ids.insert(*id);
            }
        }
    }

    /// Whether an open of `id` may keep the kernel's cached pages; `false` once for
    /// a file whose invalidation was lost.
    pub(super) fn keep_cache(&self, id: u64) -> bool {
        !self.ids.lock().remove(&id) && !self.all.load(Ordering::Relaxed)
    }
}

/// Starts sending `cache`'s notices to the kernel through `notifier`; ends when the
/// cache stops being watched (`Cache::watch(None)`).
pub(super) fn start(
    cache: &Cache,
    notifier: Notifier,
    name: &str,
    lost: Arc<Undelivered>,
) -> std::io::Result<()> {
    let (tx, rx) = sync_channel(QUEUE);
    let (done_tx, done) = watch::channel(0);
    let thread_lost = lost.clone();
    std::thread::Builder::new()
        .name(format!("fuse-inval-{name}"))
        .spawn(move || run(rx, notifier, done_tx, &thread_lost))?;
    cache.watch(Some(Box::new(Queue {
        tx: Mutex::new((0, tx)),
        done,
        lost,
    })));
    Ok(())
}

/// The cache's side of the queue. Notices are numbered in queue order; the thread
/// publishes the highest number it has written to the kernel.
struct Queue {
    /// The number of the last notice queued, and the queue.
    tx: Mutex<(u64, SyncSender<(u64, Notice)>)>,
    done: watch::Receiver<u64>,
    lost: Arc<Undelivered>,
}

impl Watcher for Queue {
    fn notice(&self, n: Notice) {
        let mut tx = self.tx.lock();
        match tx.1.try_send((tx.0 + 1, n)) {
            Ok(()) => tx.0 += 1,
            Err(TrySendError::Full((_, n))) => {
                tracing::debug!(notice = ?n, "FUSE invalidation queue full; the kernel sees this change when its attributes expire");
                self.lost.lost(&n);
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

fn run(rx: Receiver<(u64, Notice)>, notifier: Notifier, done: watch::Sender<u64>, lost: &Undelivered) {
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
                lost.lost(&n);
            }
        }
        done.send_replace(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_whose_invalidation_was_lost_drops_its_pages_once() {
        let u = Undelivered::default();
        assert!(u.keep_cache(7));
        u.lost(&Notice::Inode(7));
        u.lost(&Notice::Entry {
            dir: 1,
            name: b"n".to_vec(),
        });
        assert!(!u.keep_cache(7), "the open after the loss drops the pages");
        assert!(u.keep_cache(7), "the next one keeps them again");
        assert!(u.keep_cache(1), "a lost name notice is no data change");
    }

    #[test]
    fn too_many_lost_files_make_every_open_drop_its_pages() {
        let u = Undelivered::default();
        for id in 0..=QUEUE as u64 {
            u.lost(&Notice::Inode(id));
        }
        assert!(!u.keep_cache(QUEUE as u64 + 5));
        assert!(!u.keep_cache(QUEUE as u64 + 5));
    }
}
