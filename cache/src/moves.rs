//! Renamed files whose object has not moved yet. Until the uploader copies a renamed
//! file's object to its new key, the object under the old key is that file's copy in
//! the store (and, for a file not wholly cached, the only copy of some of its bytes).
//! Another file that comes to the old name must not overwrite that object first, and
//! a stale-key clean-up must not delete it: the soak test lost data both ways. The
//! newcomer takes the key over instead ([`Cache::release_moved_key`]): the renamed
//! file's missing bytes are fetched first, then it uploads its own bytes.

use crate::attrs::Batch;

use crate::engine::{Cache, now_ns};
use crate::error::Result;
use crate::inode::{FileId, Inode, Kind, keys};

/// What stands between a file and writing the object at a key.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyRelease {
    /// Nothing: write it.
    Free,
    /// File `id` still has its object there and lacks these block-aligned ranges
    /// (start, len) of it: fetch them from that key (the object has ETag `etag`) into
    /// the cache with [`Cache::fill`], then ask again.
    NeedsBytes {
        id: FileId,
        etag: String,
        ranges: Vec<(u64, u64)>,
    },
}

impl Cache {
    /// In `b`: `ino` has moved (renamed, or its directory was) and its object is still
    /// under its old key.
    pub(crate) fn note_moved(b: &mut Batch, ino: &Inode) {
        if let Some(key) = &ino.remote.key
            && ino.kind != Kind::Dir
            && !ino.unlinked
        {
            b.insert(keys::moved(key), &ino.id.to_be_bytes());
        }
    }

    /// In `b`: `ino`'s object no longer is at `key` (it moved on, or was given up).
    pub(crate) fn forget_moved(&self, b: &mut Batch, key: &str, id: FileId) -> Result<()> {
        if self.moved_from(key)? == Some(id) {
            b.remove(keys::moved(key));
        }
        Ok(())
    }

    fn moved_from(&self, key: &str) -> Result<Option<FileId>> {
        Ok(self.db.get(keys::moved(key))?.map(|v| keys::id_from_value(&v)))
    }

    /// The live file, other than `me`, whose object is still at `key` although the
    /// file is elsewhere now.
    pub fn moved_away_from(&self, key: &str, me: FileId) -> Result<Option<Inode>> {
        let Some(id) = self.moved_from(key)? else {
            return Ok(None);
        };
        if id == me {
            return Ok(None);
        }
        Ok(match self.load(id)? {
            Some(i) if !i.unlinked && i.remote.key.as_deref() == Some(key) && self.path_of(&i)? != key => {
                Some(i)
            }
            _ => None,
        })
    }

    /// Before `me` writes the object at `key`: if another file moved away from `key`
    /// without its object having followed yet, that file gives the key up. Once it
    /// holds all its bytes, it forgets its object (it will upload its own bytes to its
    /// new key) and `Free` is answered; until then, `NeedsBytes`.
    pub fn release_moved_key(&self, key: &str, me: FileId) -> Result<KeyRelease> {
        let Some(holder) = self.moved_away_from(key, me)? else {
            return Ok(KeyRelease::Free);
        };
        if holder.kind == Kind::File && holder.partial {
            let ranges = self.missing_ranges(&holder, 0, holder.size)?;
            if !ranges.is_empty() {
                return Ok(KeyRelease::NeedsBytes {
                    id: holder.id,
                    etag: holder.remote.etag.clone(),
                    ranges,
                });
            }
            self.make_whole(holder.id)?;
        }
        let mut st = self.state.lock();
        let Some(mut i) = self.load(holder.id)? else {
            return Ok(KeyRelease::Free);
        };
        if i.unlinked || i.remote.key.as_deref() != Some(key) || i.partial {
            // Changed meanwhile: ask again.
            drop(st);
            return self.release_moved_key(key, me);
        }
        let mut b = Batch::default();
        b.remove(keys::moved(key));
        // Its object stays there until the newcomer's replaces it.
        self.note_left(&mut b, key, &i.remote.etag, i.id, i.remote.overwrite_meta);
        i.remote.key = None;
        i.remote.etag.clear();
        i.remote.data_seq = 0;
        Self::touch_for_upload(&mut i, &mut b, now_ns(), true);
        Self::put(&mut b, &i);
        // Durable before the newcomer's object replaces the old one: after a crash the
        // moved file must not go back to copying from that key.
        self.commit_batch(b)?;
        st.account(&i);
        drop(st);
        self.flush_metadata()?;
        tracing::debug!(
            file_id = holder.id,
            key,
            taken_by = me,
            "a moved file's old key is taken over; it uploads its own bytes"
        );
        self.notify(holder.id);
        Ok(KeyRelease::Free)
    }
}
