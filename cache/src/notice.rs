//! Notices of changes a front end's kernel may have cached: what a listing or a HEAD
//! found changed in the store, and what the share layer reports for changes one
//! front end made that another one caches (a FUSE mount seeing NFS writes). One
//! watcher per cache.

use std::future::Future;
use std::pin::Pin;

use crate::engine::Cache;
use crate::inode::FileId;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Notice {
    /// A file's data or attributes changed.
    Inode(FileId),
    /// A name in a directory went or now names something else.
    Entry { dir: FileId, name: Vec<u8> },
}

/// Resolves once the notices taken before it was made have reached the front end.
pub type Delivered = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a cache's notices go.
pub trait Watcher: Send + Sync {
    /// Takes `n`. Must not block: it runs under the engine's lock.
    fn notice(&self, n: Notice);
    /// A future that resolves once every notice taken so far has been delivered
    /// (or dropped: a watcher may shed notices it cannot keep up with).
    fn delivered(&self) -> Delivered;
}

impl Cache {
    /// Sends every later notice to `watcher` (replacing the one before); `None` stops.
    pub fn watch(&self, watcher: Option<Box<dyn Watcher>>) {
        *self.watcher.lock() = watcher;
    }

    /// Hands `n` to the watcher, if there is one.
    pub fn notice(&self, n: Notice) {
        if let Some(w) = &*self.watcher.lock() {
            w.notice(n);
        }
    }

    /// Resolves once the notices handed over so far have been delivered; `None`
    /// when nothing watches.
    pub fn notices_delivered(&self) -> Option<Delivered> {
        self.watcher.lock().as_ref().map(|w| w.delivered())
    }
}
