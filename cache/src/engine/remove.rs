//! REMOVE and RMDIR, and taking an inode out of the namespace.

use super::{Cache, MAX_NAME_BYTES, State, now_ns};
use crate::args::{DirChange, WccAttr};
use crate::attrs::Batch;
use crate::error::{CacheError, Result};
use crate::inode::{FileId, Inode, Kind, keys};
use crate::perm::{self, Caller};

impl Cache {
    /// Takes `victim` out of the namespace inside `b`: it stays as a record only while
    /// the store still holds an object for it. Answers the file whose data is to be
    /// dropped once `b` is durable: before, a crash would bring back the file without
    /// its bytes.
    #[must_use]
    pub(crate) fn unlink_in_batch(
        &self,
        st: &mut State,
        b: &mut Batch,
        mut victim: Inode,
        now: u64,
    ) -> Option<FileId> {
        victim.unlinked = true;
        victim.ctime_ns = now;
        // Keys it was writing (an upload in flight, or one a crash cut off) may hold
        // an object of its by now: left behind too, version unknown.
        for k in &victim.remote.stale_keys {
            if matches!(self.db.get(keys::left(k)), Ok(Some(_))) {
                // Left by another file before: its version stays the one to replace,
                // and this file's writes may sit there too.
                self.add_left_writes(b, k, victim.id, victim.remote.overwrite_meta);
            } else {
                self.note_left(b, k, "", victim.id, victim.remote.overwrite_meta);
            }
        }
        if let Some(k) = &victim.remote.key {
            // Best effort: a stale entry is recognised as such when read.
            let _ = self.forget_moved(b, k, victim.id);
        }
        if let Some(k) = victim.remote.key.take() {
            self.note_left(
                b,
                &k,
                &victim.remote.etag,
                victim.id,
                victim.remote.overwrite_meta,
            );
            if !victim.remote.stale_keys.contains(&k) {
                victim.remote.stale_keys.push(k);
            }
        }
        if victim.remote.stale_keys.is_empty() {
            b.remove_inode(victim.id);
            b.remove(&keys::queue(victim.id));
            st.forget(victim.id);
        } else {
            Self::touch_for_upload(&mut victim, b, now, false);
            Self::put(b, &victim);
            st.account(&victim);
        }
        if victim.kind == Kind::File {
            st.resized(victim.size, 0);
            return Some(victim.id);
        }
        None
    }

    pub(super) fn check_sticky(caller: &Caller, dir: &Inode, victim: &Inode) -> Result<()> {
        perm::known(victim)?;
        if dir.mode & 0o1000 != 0 && caller.uid != 0 && caller.uid != dir.uid && caller.uid != victim.uid {
            return Err(CacheError::Access);
        }
        Ok(())
    }

    fn remove_entry(&self, caller: &Caller, dir: FileId, name: &[u8], want_dir: bool) -> Result<DirChange> {
        let mut st = self.state.lock();
        let mut d = self.get_dir(dir)?;
        if name == b"." || name == b".." {
            return Err(if want_dir {
                CacheError::Invalid
            } else {
                CacheError::Access
            });
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(CacheError::NameTooLong);
        }
        perm::require(caller, &d, perm::WRITE | perm::EXEC)?;
        let e = self.lookup_entry(dir, name)?.ok_or(CacheError::NotFound)?;
        let victim = self.get(e.child)?;
        Self::check_sticky(caller, &d, &victim)?;
        match (want_dir, victim.kind == Kind::Dir) {
            (true, false) => return Err(CacheError::NotDir),
            (false, true) => return Err(CacheError::IsDir),
            (true, true) if self.db.scan_prefix(keys::seq_prefix(victim.id)).next().is_some() => {
                return Err(CacheError::NotEmpty);
            }
            _ => {}
        }
        let before = WccAttr::from(&d);
        let now = now_ns();
        let mut b = Batch::default();
        b.remove(keys::name(dir, name));
        b.remove(&keys::seq(dir, e.seq));
        d.mtime_ns = now;
        d.ctime_ns = now;
        if victim.kind == Kind::Dir {
            d.subdirs = d.subdirs.saturating_sub(1);
        }
        Self::put(&mut b, &d);
        let victim_id = victim.id;
        let doomed = self.unlink_in_batch(&mut st, &mut b, victim, now);
        self.commit_batch(b)?;
        drop(st);
        self.flush_metadata()?;
        if let Some(id) = doomed {
            self.drop_data(id);
        }
        tracing::debug!(file_id = victim_id, dir, name = %String::from_utf8_lossy(name), "removed");
        self.notify(victim_id);
        Ok(DirChange { before, after: d })
    }

    pub fn remove(&self, caller: &Caller, dir: FileId, name: &[u8]) -> Result<DirChange> {
        self.remove_entry(caller, dir, name, false)
    }

    pub fn rmdir(&self, caller: &Caller, dir: FileId, name: &[u8]) -> Result<DirChange> {
        self.remove_entry(caller, dir, name, true)
    }
}
