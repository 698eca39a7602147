//! What the uploader reads and records: the queue, intents, uploads, deletions.

use std::fs::File;
use std::sync::Arc;

use super::{Cache, ROOT_ID, State, now_ns};
use crate::attrs::Batch;
use crate::error::Result;
use crate::inode::{FileId, Inode, Kind, ObjectAttrs, encode, keys};

/// Earlier writes of ours kept as possibly landed, per inode; beyond, the oldest is
/// forgotten (at worst its object is then taken for another client's).
const MAX_EARLIER_INTENTS: usize = 16;

impl Cache {
    /// Ids of every inode that has something left to send to (or delete from) the store.
    pub fn pending(&self) -> Result<Vec<FileId>> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix([keys::QUEUE]) {
            let (k, _) = kv?;
            out.push(keys::id_from(&k));
        }
        Ok(out)
    }

    /// The inode record, unlinked or not (for the uploader).
    pub fn load_any(&self, id: FileId) -> Result<Option<Inode>> {
        self.load(id)
    }

    /// Opens the data file for reading by the uploader.
    pub fn open_data(&self, id: FileId) -> Result<Arc<File>> {
        self.live_file(id)
    }

    /// Is there a live inode whose object key is `key` (share-relative; a trailing
    /// "/" names a directory marker)? A stale key that is live again must not be deleted.
    pub fn key_is_live(&self, key: &str) -> Result<bool> {
        let (path, want_dir) = match key.strip_suffix('/') {
            Some(p) => (p, true),
            None => (key, false),
        };
        Ok(match self.resolve(path)? {
            Some(i) if i.id != ROOT_ID => (i.kind == Kind::Dir) == want_dir,
            _ => false,
        })
    }

    /// `key` is stale for `id` (or for an inode that no longer exists). If a live
    /// inode's path names it again, that inode takes over the duty to clean it up
    /// (unless its object already is `key`) and true is returned: the key must not
    /// be deleted now, since that inode's upload will overwrite it. Just forgetting
    /// the key was wrong: if that inode moved away again before uploading, the old
    /// object stayed in the bucket for ever.
    pub fn hand_over_stale_key(&self, id: FileId, key: &str) -> Result<bool> {
        let (path, want_dir) = match key.strip_suffix('/') {
            Some(p) => (p, true),
            None => (key, false),
        };
        if !want_dir && self.moved_away_from(key, id)?.is_some() {
            // A renamed file still copies its object from there; it deletes the key
            // itself once its object has moved.
            return Ok(true);
        }
        let st = self.state.lock();
        let mut live = match self.resolve(path)? {
            Some(i) if i.id != ROOT_ID && (i.kind == Kind::Dir) == want_dir => i,
            _ => return Ok(false),
        };
        if live.id == id {
            return Ok(true);
        }
        // A write of `id`'s whose reply was lost may sit there: the live file, which
        // replaces the key's object, must know it for ours.
        let mut b = Batch::default();
        let noted = self.load(id)?.and_then(|i| i.remote.overwrite_meta);
        self.add_left_writes(&mut b, key, id, noted);
        let claimed =
            live.remote.key.as_deref() == Some(key) || live.remote.stale_keys.iter().any(|k| k == key);
        if claimed {
            self.commit_batch(b)?;
            return Ok(true);
        }
        live.remote.stale_keys.push(key.to_string());
        b.insert(&keys::queue(live.id), &[]);
        Self::put(&mut b, &live);
        self.commit_batch(b)?;
        drop(st);
        self.notify(live.id);
        Ok(true)
    }

    /// Records what the store now holds for `id` after a step that made the object at
    /// `key` carry `data_seq` and `meta`, planned when the inode was at `planned_seq`.
    /// Returns false when the inode no longer exists at all (the caller must delete
    /// the object it just wrote, which nothing claims).
    pub fn record_upload(
        &self,
        id: FileId,
        planned_seq: u64,
        key: &str,
        etag: &str,
        data_seq: u64,
        meta: ObjectAttrs,
    ) -> Result<bool> {
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(false);
        };
        let snapshot_size = i.size;
        // Renamed while its object was written: the object is at its old name, as
        // after a rename of an uploaded file, and the same rules hold (`crate::moves`):
        // a file that takes that name next takes over the key, instead of finding an
        // object of ours it knows nothing of (a conflict copy, found by the soak test).
        let moved_during = !i.unlinked && i.kind != Kind::Dir && self.path_of(&i).is_ok_and(|p| p != key);
        let mut b = Batch::default();
        let r = &mut i.remote;
        let moved_on = r.key.clone().filter(|old| old != key);
        if let Some(old) = &moved_on {
            // Its object there stays until the stale key is deleted.
            self.note_left(&mut b, old, &r.etag, id, r.overwrite_meta);
        }
        if i.unlinked {
            // Removed while uploading: the object just written is left behind.
            self.note_left(&mut b, key, etag, id, r.overwrite_meta);
        } else {
            Self::forget_left(&mut b, key);
        }
        if let Some(old) = r.key.take()
            && old != key
            && !r.stale_keys.contains(&old)
        {
            r.stale_keys.push(old);
        }
        r.stale_keys.retain(|k| k != key);
        r.etag = etag.to_string();
        r.data_seq = data_seq;
        r.meta = meta;
        r.synced_ns = now_ns();
        // Our own upload: the size is known, the store's Last-Modified is not.
        r.listed_size = snapshot_size;
        r.listed_mtime_ns = 0;
        let noted = r.overwrite_meta.take();
        if i.unlinked {
            // Removed while uploading: the object just written is an orphan.
            r.stale_keys.push(key.to_string());
        } else {
            r.key = Some(key.to_string());
            if i.change_seq == planned_seq {
                i.synced_seq = planned_seq;
            }
            if moved_during {
                Self::note_moved(&mut b, &i);
            }
        }
        // Writes of ours noted since the last recorded upload may have landed at
        // the keys still to clean up: they stay ours until those keys are gone.
        if i.remote.stale_keys.is_empty() {
            b.remove(&keys::intents(id));
        } else if let Some(prev) = noted {
            self.keep_intent(&mut b, id, prev)?;
        }
        let clean = !i.is_dirty() && !i.unlinked;
        let snapshot = i.clone();
        self.save_upload_state_with(&mut st, i, b)?;
        if let Some(old) = moved_on {
            let mut b = Batch::default();
            self.forget_moved(&mut b, &old, id)?;
            self.commit_batch(b)?;
        }
        drop(st);
        if clean {
            // Clean data may now be evicted under pressure: it is in the store.
            self.touch(&snapshot);
        }
        Ok(true)
    }

    /// Before the uploader writes the object at `key` for `id`, durably and in one
    /// flush: `key` joins the inode's keys to clean up unless the inode already
    /// claims it, and `meta`, what the object will carry, is noted as the metadata of
    /// a write of ours. A crash after the object is written but before
    /// [`Cache::record_upload`] is durable (or a file removed or renamed after such a
    /// crash) would otherwise leave an object nothing in the cache knows of, for ever,
    /// or make the version written look like another client's on the retry.
    /// `record_upload` takes the key back off the list; if it never runs, the key is
    /// deleted unless a live file has that path again (then its own upload
    /// overwrites it). False: the inode is gone (removed with nothing in the store),
    /// and nothing may be written for it.
    pub fn record_intent(&self, id: FileId, key: &str, meta: Option<ObjectAttrs>) -> Result<bool> {
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(false);
        };
        let claimed = i.remote.key.as_deref() == Some(key) || i.remote.stale_keys.iter().any(|k| k == key);
        let noted = meta.is_none() || i.remote.overwrite_meta == meta;
        if claimed && noted {
            return Ok(true);
        }
        if !claimed {
            i.remote.stale_keys.push(key.to_string());
        }
        let mut b = Batch::default();
        if meta.is_some() {
            // The write noted before may have landed too (its reply lost, then a
            // change and a failed retry): it stays ours while it may sit unrecorded
            // (see record_upload and record_deleted).
            if let Some(prev) = i.remote.overwrite_meta {
                self.keep_intent(&mut b, id, prev)?;
            }
            i.remote.overwrite_meta = meta;
        }
        self.save_upload_state_with(&mut st, i, b)?;
        drop(st);
        self.flush_metadata()?;
        Ok(true)
    }

    /// Adds `meta`, the metadata of a write of ours not recorded, to `id`'s earlier
    /// intents in `b`.
    fn keep_intent(&self, b: &mut Batch, id: FileId, meta: ObjectAttrs) -> Result<()> {
        let mut earlier = self.earlier_intents(id)?;
        if !earlier.contains(&meta) {
            if earlier.len() >= MAX_EARLIER_INTENTS {
                earlier.remove(0);
            }
            earlier.push(meta);
            b.insert(&keys::intents(id), encode(&earlier));
        }
        Ok(())
    }

    pub(crate) fn earlier_intents(&self, id: FileId) -> Result<Vec<ObjectAttrs>> {
        Ok(match self.db.get(keys::intents(id))? {
            Some(v) => bincode::deserialize(&v)?,
            None => Vec::new(),
        })
    }

    /// Whether `id` has noted writes of ours that may sit unrecorded in the store
    /// (see [`Cache::written_by_us`]).
    pub fn writes_noted(&self, id: FileId) -> Result<bool> {
        let noted = self.load(id)?.is_some_and(|i| i.remote.overwrite_meta.is_some());
        Ok(noted || !self.earlier_intents(id)?.is_empty())
    }

    /// Whether an object carrying `attrs` is one of our writes for `id` that may
    /// have reached the store without being recorded (the last noted, or an earlier
    /// one that may still sit at a key not recorded or not yet cleaned up), not
    /// another client's.
    pub fn written_by_us(&self, id: FileId, attrs: Option<ObjectAttrs>) -> Result<bool> {
        let Some(attrs) = attrs else {
            return Ok(false);
        };
        let Some(i) = self.load(id)? else {
            return Ok(false);
        };
        Ok(i.remote.overwrite_meta == Some(attrs) || self.earlier_intents(id)?.contains(&attrs))
    }

    /// `key` is no longer `id`'s to clean up: the object under it is gone from the
    /// store (`deleted`: deleted by us, or found missing), or a live file that has
    /// that name again took it over.
    pub fn record_deleted(&self, id: FileId, key: &str, deleted: bool) -> Result<()> {
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(());
        };
        let mut version = self.left_version(key)?.unwrap_or_default();
        i.remote.stale_keys.retain(|k| k != key);
        if i.remote.key.as_deref() == Some(key) {
            version = i.remote.etag.clone();
            i.remote.key = None;
            i.remote.data_seq = 0;
        }
        let mut b = Batch::default();
        if deleted {
            Self::forget_left(&mut b, key);
            self.gone.deleted(key, version);
        }
        if i.remote.stale_keys.is_empty() && i.remote.overwrite_meta.is_none() {
            // No key left where a write of ours may sit unrecorded.
            b.remove(&keys::intents(id));
        }
        self.save_upload_state_with(&mut st, i, b)
    }

    /// Nothing to send for `planned_seq`: the store already matches.
    pub fn record_clean(&self, id: FileId, planned_seq: u64) -> Result<()> {
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(());
        };
        if i.change_seq == planned_seq {
            i.synced_seq = planned_seq;
        }
        self.save_upload_state(&mut st, i)
    }

    fn save_upload_state(&self, st: &mut State, i: Inode) -> Result<()> {
        self.save_upload_state_with(st, i, Batch::default())
    }

    /// [`Cache::save_upload_state`], together with the other records in `b`.
    fn save_upload_state_with(&self, st: &mut State, mut i: Inode, mut b: Batch) -> Result<()> {
        if i.unlinked && i.remote.stale_keys.is_empty() {
            b.remove_inode(i.id);
            b.remove(&keys::queue(i.id));
            self.commit_batch(b)?;
            st.forget(i.id);
            return Ok(());
        }
        if !i.is_dirty() {
            i.dirty_since_ns = 0;
            b.remove(&keys::queue(i.id));
        }
        Self::put(&mut b, &i);
        self.commit_batch(b)?;
        st.account(&i);
        Ok(())
    }
}
