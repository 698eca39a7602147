//! Conflicts: the store holds a version of an object that a local change was not
//! based on (another S3 client wrote it since the gateway last saw it). Neither
//! version is lost: the store's keeps the name, the local one moves aside.

use crate::attrs::Batch;

use crate::engine::{Cache, MAX_NAME_BYTES, now_ns};
use crate::error::{CacheError, Result};
use crate::inode::encode;
use crate::inode::{DirEntry, FileId, Inode, Kind, keys};

impl Cache {
    /// The object at `key` changed behind the gateway while `id`, at that key, has
    /// local data changes. The local file moves to `<name>.conflict-<stamp>` in the
    /// same directory and is uploaded there as a new object; the original name is
    /// left to the store's version, which the directory's next listing brings in (the
    /// directory is marked for re-listing). Returns the new name, or `None` when `id`
    /// is no longer at `key` (moved or removed meanwhile; its next upload pass sees to it).
    pub fn set_aside_conflict(&self, id: FileId, key: &str, stamp: &str) -> Result<Option<String>> {
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(None);
        };
        if i.unlinked || i.kind == Kind::Dir || self.path_of(&i)? != key {
            return Ok(None);
        }
        let mut d = self.get_dir(i.parent)?;
        let old = self.lookup_entry(d.id, &i.name)?.ok_or(CacheError::NotFound)?;
        let name = self.conflict_name(&d, &i.name, stamp)?;
        let now = now_ns();
        let mut b = Batch::default();
        b.remove(keys::name(d.id, &i.name));
        b.remove(&keys::seq(d.id, old.seq));
        let seq = d.next_dir_seq;
        d.next_dir_seq += 1;
        b.insert(keys::name(d.id, &name), encode(&DirEntry { child: id, seq }));
        b.insert(&keys::seq(d.id, seq), name.clone());
        i.name = name.clone();
        i.ctime_ns = now;
        // The object under the old name is the other writer's: never delete it (nor
        // may a removed file that still owes that key's deletion).
        let r = &mut i.remote;
        r.stale_keys.retain(|k| k != key);
        self.left_theirs(&mut b, key)?;
        // Its bytes go up again only when the object it came from is the one that
        // is theirs now; a file renamed onto their name is still copied from its
        // own object (it may not hold all of its bytes: never upload holes).
        let lost_its_object = r.key.as_deref() == Some(key);
        if lost_its_object {
            r.key = None;
            r.etag.clear();
            r.data_seq = 0;
        }
        Self::touch_for_upload(&mut i, &mut b, now, lost_its_object);
        d.mtime_ns = now;
        d.ctime_ns = now;
        d.listed_ns = 0;
        Self::put(&mut b, &i);
        Self::put(&mut b, &d);
        self.commit_batch(b)?;
        st.account(&i);
        drop(st);
        self.flush_metadata()?;
        self.notify(id);
        Ok(Some(String::from_utf8_lossy(&name).into_owned()))
    }

    /// `<name>.conflict-<stamp>`, then `-2`, `-3`... if taken; the original name is
    /// shortened (at a character boundary) to keep the result a valid name and key.
    fn conflict_name(&self, dir: &Inode, name: &[u8], stamp: &str) -> Result<Vec<u8>> {
        let room = MAX_NAME_BYTES.min(
            self.opts
                .max_path_bytes
                .saturating_sub(self.path_of(dir)?.len() + 2),
        );
        let name = String::from_utf8_lossy(name);
        for n in 1..1000 {
            let suffix = if n == 1 {
                format!(".conflict-{stamp}")
            } else {
                format!(".conflict-{stamp}-{n}")
            };
            let mut cut = room.saturating_sub(suffix.len()).min(name.len());
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut == 0 {
                return Err(CacheError::NameTooLong);
            }
            let candidate = format!("{}{suffix}", &name[..cut]).into_bytes();
            if self.lookup_entry(dir.id, &candidate)?.is_none() {
                return Ok(candidate);
            }
        }
        Err(CacheError::Exists)
    }
}
