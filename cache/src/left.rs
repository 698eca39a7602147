//! Keys left behind: objects the gateway still has to delete or replace in the
//! store, with the ETag of the version it last saw there. A removed file's object,
//! and a renamed file's old one, stay in the store until the uploader deletes them;
//! meanwhile no inode holds that key as its object. Knowing the version there lets a
//! new file at that name replace exactly that version (and nothing another client
//! wrote since), and keeps a listing from bringing the removed name back.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::attrs::Batch;
use crate::engine::{Cache, now_ns};
use crate::error::Result;
use crate::inode::{FileId, Inode, ObjectAttrs, encode, keys};

/// A left key's value: the version is the gateway's own (`OURS` + ETag), or another
/// client's that replaced it (`THEIRS`): never to be deleted, and shown by listings.
const OURS: u8 = b'o';
const THEIRS: u8 = b't';

impl Cache {
    /// In `b`: the object at `key` (ETag `etag`, "" when unknown) no longer belongs
    /// to inode `by`, nor to any other, but is still in the store. A write of `by`'s
    /// whose reply was lost may have replaced that version: the attributes of its
    /// noted writes (`noted`, its last, and the earlier ones) go with the key, so
    /// that the next file to write there knows that object for ours. A failed read
    /// of them only loses the note: a conflict copy later, never a lost version.
    pub(crate) fn note_left(
        &self,
        b: &mut Batch,
        key: &str,
        etag: &str,
        by: FileId,
        noted: Option<ObjectAttrs>,
    ) {
        let mut v = vec![OURS];
        v.extend_from_slice(etag.as_bytes());
        b.insert(keys::left(key), v);
        self.add_left_writes(b, key, by, noted);
    }

    /// In `b`: the writes `by` noted (`noted`, and its earlier ones) join those that
    /// may sit at left `key` unrecorded; every file that leaves the key adds its own.
    pub(crate) fn add_left_writes(&self, b: &mut Batch, key: &str, by: FileId, noted: Option<ObjectAttrs>) {
        const MAX_LEFT_WRITES: usize = 32;
        let mut writes: Vec<ObjectAttrs> = match self.db.get(keys::left_writes(key)) {
            Ok(Some(v)) => bincode::deserialize(&v).unwrap_or_default(),
            _ => Vec::new(),
        };
        let before = writes.len();
        for w in self
            .earlier_intents(by)
            .unwrap_or_default()
            .into_iter()
            .chain(noted)
        {
            if !writes.contains(&w) {
                writes.push(w);
            }
        }
        if writes.len() > before {
            let excess = writes.len().saturating_sub(MAX_LEFT_WRITES);
            writes.drain(..excess);
            b.insert(keys::left_writes(key), encode(&writes));
        }
    }

    /// In `b`: the gateway no longer knows of a version of its own at `key` (deleted,
    /// or overwritten by an inode that now holds it).
    pub(crate) fn forget_left(b: &mut Batch, key: &str) {
        b.remove(keys::left(key));
        b.remove(keys::left_writes(key));
    }

    /// Whether writes of ours may sit unrecorded at left `key` (see
    /// `Cache::note_left`).
    pub fn left_writes_noted(&self, key: &str) -> Result<bool> {
        Ok(self.db.get(keys::left_writes(key))?.is_some())
    }

    /// Whether an object at left `key` carrying `attrs` is a write of ours whose reply
    /// was lost, made by the inode that left the key (see `Cache::note_left`).
    pub fn left_written_by_us(&self, key: &str, attrs: Option<ObjectAttrs>) -> Result<bool> {
        let Some(attrs) = attrs else {
            return Ok(false);
        };
        Ok(match self.db.get(keys::left_writes(key))? {
            Some(v) => bincode::deserialize::<Vec<ObjectAttrs>>(&v)?.contains(&attrs),
            None => false,
        })
    }

    /// In `b`: another client replaced the version the gateway left at `key`; a
    /// removed file still owing that key's deletion must leave it alone.
    pub(crate) fn left_theirs(&self, b: &mut Batch, key: &str) -> Result<()> {
        if self.db.get(keys::left(key))?.is_some() {
            b.insert(keys::left(key), vec![THEIRS]);
            b.remove(keys::left_writes(key));
        }
        Ok(())
    }

    /// The ETag of the version left at `key`, if the gateway left one there that is
    /// still its own.
    pub fn left_version(&self, key: &str) -> Result<Option<String>> {
        Ok(match self.db.get(keys::left(key))? {
            Some(v) if v.first() == Some(&OURS) => Some(String::from_utf8_lossy(&v[1..]).into_owned()),
            _ => None,
        })
    }

    /// Whether the object at `key` is another client's version that replaced one the
    /// gateway left there.
    pub fn left_to_them(&self, key: &str) -> Result<bool> {
        Ok(self
            .db
            .get(keys::left(key))?
            .is_some_and(|v| v.first() == Some(&THEIRS)))
    }

    /// Whether any key is left behind or moved away from at all: a listing need not
    /// ask about each of its keys when none is.
    pub fn anything_leaving(&self) -> Result<bool> {
        Ok(!self.gone.0.lock().is_empty()
            || self.db.scan_prefix([keys::LEFT]).next().transpose()?.is_some()
            || self.db.scan_prefix([keys::MOVED]).next().transpose()?.is_some())
    }

    /// The version of the object at share-relative `key` that an upload of `ino`
    /// may replace: its own object's ETag when `key` is its object, else the
    /// version the gateway left there; `None` when the gateway knows of no object of
    /// its own there (the write must then find none). "" means a version exists
    /// whose ETag the gateway never learnt.
    pub fn known_version(&self, ino: &Inode, key: &str) -> Result<Option<String>> {
        if ino.remote.key.as_deref() == Some(key) {
            return Ok(Some(ino.remote.etag.clone()));
        }
        self.left_version(key)
    }
}

/// Keys whose object the gateway deleted, with the version deleted and when. Once
/// deleted, a key is no longer left behind; but a listing that started before the
/// delete may still show that object, and must not bring the removed name back.
/// Kept in memory only: no listing outlives the process. Entries go after
/// [`Gone::KEEP_NS`], longer than a listing runs (a million keys list in about a
/// minute), so memory follows the deletes of the last few minutes.
#[derive(Default)]
pub(crate) struct Gone(Mutex<HashMap<String, (String, u64)>>);

impl Gone {
    const KEEP_NS: u64 = 600 * 1_000_000_000;
    /// Past this many entries, the old ones are dropped.
    const PRUNE_AT: usize = 4_096;

    /// The object at `key` (ETag `etag`, "" when unknown) was deleted just now.
    pub(crate) fn deleted(&self, key: &str, etag: String) {
        let now = now_ns();
        let mut g = self.0.lock();
        if g.len() >= Self::PRUNE_AT {
            g.retain(|_, (_, at)| now.saturating_sub(*at) < Self::KEEP_NS);
        }
        g.insert(key.to_owned(), (etag, now));
    }

    /// Whether a listing that started at `listed_ns` and shows version `etag` at
    /// `key` saw an object the gateway has deleted since.
    pub(crate) fn since(&self, key: &str, etag: &str, listed_ns: u64) -> bool {
        self.0.lock().get(key).is_some_and(|(gone, at)| {
            *at >= listed_ns
                && (gone.is_empty() || etag.is_empty() || crate::store_sync::same_etag(etag, gone))
        })
    }
}
