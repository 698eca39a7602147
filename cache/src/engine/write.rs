//! Changes to a file's bytes: WRITE and COMMIT.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use super::{Cache, allocated, disk_bytes, now_ns};
use crate::args::WccAttr;
use crate::attrs::Batch;
use crate::error::{CacheError, Result};
use crate::inode::{FileId, Inode, Kind};
use crate::perm::{self, Caller};

impl Cache {
    /// Writes `data` at `offset`. With `sync`, data and metadata are durable before
    /// this returns (FILE_SYNC / DATA_SYNC); otherwise they are in the page cache and
    /// sled's buffers until a COMMIT.
    pub fn write(
        &self,
        caller: &Caller,
        id: FileId,
        offset: u64,
        data: &[u8],
        sync: bool,
    ) -> Result<(WccAttr, Inode)> {
        let i = self.file_for(caller, id, perm::WRITE)?;
        let end = offset.checked_add(data.len() as u64).ok_or(CacheError::TooBig)?;
        if end > self.opts.max_file_size {
            return Err(CacheError::TooBig);
        }
        // What a clean, whole file holds on disk: all of it turns dirty now, but
        // its holes are not data to keep.
        let held = match i.partial || i.dirty_data_bytes() > 0 {
            true => None,
            false => fs::metadata(self.data_path(id)).ok().map(|m| disk_bytes(&m)),
        };
        // Only a write that leaves a hole, or one into a file with holes, needs its
        // disk use measured; a dense file takes its size.
        let measure = {
            let st = self.state.lock();
            // What the write adds past the end (a hole beyond its own bytes takes no
            // disk), and all of a file that turns dirty now. The disk it really
            // takes is measured after the write.
            let len = data.len() as u64;
            let newly_dirty = if i.dirty_data_bytes() > 0 {
                end.saturating_sub(i.size).min(len)
            } else {
                i.size.max(end).min(held.unwrap_or(i.size).saturating_add(len))
            };
            // Other files' dirty bytes hold a writer back; a file alone may always
            // proceed, or one larger than the limit could never be written again
            // once uploaded (its next write makes all of it dirty at once).
            // Read under the lock: the inode read above may be out of date already.
            let mine = st.dirty.get(&id).copied().unwrap_or(0);
            let others = st.dirty_total.saturating_sub(mine);
            if newly_dirty > 0
                && others > 0
                && st.dirty_total.saturating_add(newly_dirty) > self.opts.dirty_limit_bytes
            {
                return Err(CacheError::TryLater);
            }
            offset > i.size || held.is_some_and(|h| h < i.size) || st.allocated.contains_key(&id)
        };
        let guard = self.data_lock(id).read();
        self.make_whole(id)?;
        self.check_space(data.len() as u64)?;
        let f = self.live_file(id)?;
        f.write_all_at(data, offset).map_err(CacheError::from_io)?;
        if sync {
            f.sync_data().map_err(CacheError::from_io)?;
        }
        let taken = if measure { allocated(&f) } else { None };
        failpoint!(
            "cache::write::after_data",
            Err(CacheError::Io(std::io::Error::other(
                "failpoint cache::write::after_data"
            )))
        );
        let (before, after) = {
            let mut st = self.state.lock();
            let mut i = self.get(id)?;
            i.partial = false;
            let before = WccAttr::from(&i);
            let now = now_ns();
            st.resized(i.size, i.size.max(end));
            i.size = i.size.max(end);
            i.mtime_ns = now;
            i.ctime_ns = now;
            perm::drop_privileges(&mut i, caller);
            let mut b = Batch::default();
            Self::touch_for_upload(&mut i, &mut b, now, true);
            Self::put(&mut b, &i);
            self.commit_batch(b)?;
            if measure {
                st.measured(id, taken);
            }
            st.account(&i);
            (before, i)
        };
        drop(guard);
        self.lru.invalidate(&id);
        self.notify(id);
        if sync {
            self.flush_metadata()?;
        }
        Ok((before, after))
    }

    /// COMMIT: the file's data fdatasync'ed and all metadata (its size, its place in
    /// the upload queue) durable before this returns.
    pub fn commit(&self, id: FileId) -> Result<Inode> {
        let i = self.get(id)?;
        if i.kind == Kind::File {
            if let Some(f) = self.files.get(&id) {
                f.sync_data().map_err(CacheError::from_io)?;
            } else if self.data_path(id).exists() {
                File::open(self.data_path(id))?
                    .sync_data()
                    .map_err(CacheError::from_io)?;
            }
        }
        self.flush_metadata()?;
        Ok(i)
    }
}
