//! Keys left behind: objects the gateway still has to delete or replace in the
//! store, with the ETag of the version it last saw there. A removed file's object,
//! and a renamed file's old one, stay in the store until the uploader deletes them;
//! meanwhile no inode holds that key as its object. Knowing the version there lets a
//! new file at that name replace exactly that version (and nothing another client
//! wrote since), and keeps a listing from bringing the removed name back.

use crate::attrs::Batch;
use crate::engine::Cache;
use crate::error::Result;
use crate::inode::{Inode, keys};

impl Cache {
    /// In `b`: the object at `key` (ETag `etag`, "" when unknown) no longer belongs
    /// to any inode but is still in the store.
    pub(crate) fn note_left(b: &mut Batch, key: &str, etag: &str) {
        b.insert(keys::left(key), etag.as_bytes());
    }

    /// In `b`: the gateway no longer knows of a version of its own at `key` (deleted,
    /// or overwritten by an inode that now holds it).
    pub(crate) fn forget_left(b: &mut Batch, key: &str) {
        b.remove(keys::left(key));
    }

    /// The ETag of the version left at `key`, if the gateway left one there.
    pub fn left_version(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .get(keys::left(key))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The version of the object at share-relative `key` that an upload of `ino`
    /// may replace: its own object's ETag when `key` is its object, else the
    /// version the gateway left there; `None` when the gateway knows of no object
    /// there (the write must then find none). "" means a version exists whose ETag
    /// the gateway never learnt.
    pub fn known_version(&self, ino: &Inode, key: &str) -> Result<Option<String>> {
        if ino.remote.key.as_deref() == Some(key) {
            return Ok(Some(ino.remote.etag.clone()));
        }
        self.left_version(key)
    }
}
