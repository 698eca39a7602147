//! Notices of changes a front end's kernel may have cached: what a listing or a HEAD
//! found changed in the store, and what the share layer reports for changes one
//! front end made that another one caches (a FUSE mount seeing NFS writes). One
//! watcher per cache; it must not block (it runs under the engine's lock).

use crate::engine::Cache;
use crate::inode::FileId;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Notice {
    /// A file's data or attributes changed.
    Inode(FileId),
    /// A name in a directory went or now names something else.
    Entry { dir: FileId, name: Vec<u8> },
}

pub(crate) type Watcher = Box<dyn Fn(Notice) + Send + Sync>;

impl Cache {
    /// Sends every later notice to `watcher` (replacing the one before); `None` stops.
    pub fn watch(&self, watcher: Option<Watcher>) {
        *self.watcher.lock() = watcher;
    }

    /// Hands `n` to the watcher, if there is one.
    pub fn notice(&self, n: Notice) {
        if let Some(w) = &*self.watcher.lock() {
            w(n);
        }
    }
}
