//! Calls that read: LOOKUP, ACCESS, READLINK, READ, READDIR, FSSTAT.

use std::fs::File;
use std::sync::Arc;

use super::{Cache, MAX_NAME_BYTES};
use crate::args::{DirEntryInfo, FsStat, Listing};
use crate::error::{CacheError, Result};
use crate::inode::{FileId, Inode, Kind, keys};
use crate::perm::{self, Caller};

impl Cache {
    pub fn lookup(&self, caller: &Caller, dir: FileId, name: &[u8]) -> Result<Inode> {
        let d = self.get_dir(dir)?;
        perm::require(caller, &d, perm::EXEC)?;
        if name == b"." {
            return Ok(d);
        }
        let found = if name == b".." {
            self.get(d.parent)?
        } else {
            if name.len() > MAX_NAME_BYTES {
                return Err(CacheError::NameTooLong);
            }
            let e = self.lookup_entry(dir, name)?.ok_or(CacheError::NotFound)?;
            self.get(e.child)?
        };
        perm::known(&found)?;
        Ok(found)
    }

    /// A file's data file, whole (`NotCached` for what only the store holds yet), with
    /// the inode: a front end keeps it to serve descriptors still open after the file
    /// is removed (the removal deletes the data file; an open handle keeps its bytes).
    pub fn hold(&self, id: FileId) -> Result<(Inode, Arc<File>)> {
        let _guard = self.data_lock(id).read();
        let i = self.get(id)?;
        if i.kind != Kind::File {
            return Err(CacheError::Invalid);
        }
        let missing = self.missing_ranges(&i, 0, i.size)?;
        if !missing.is_empty() {
            return Err(CacheError::NotCached(id, missing));
        }
        Ok((i, self.live_file(id)?))
    }

    /// The inode named `name` in `dir`, without any permission check or attribute
    /// requirement (for the share layer's own bookkeeping, never for a reply).
    pub fn peek(&self, dir: FileId, name: &[u8]) -> Result<Option<Inode>> {
        match self.lookup_entry(dir, name)? {
            Some(e) => self.load(e.child).map(|i| i.filter(|i| !i.unlinked)),
            None => Ok(None),
        }
    }

    /// ACCESS: which of the asked rights (`perm::READ|WRITE|EXEC` bits as NFS
    /// ACCESS3 flags mapped by the caller) the caller has.
    pub fn access(&self, caller: &Caller, id: FileId) -> Result<(Inode, u32)> {
        let i = self.get(id)?;
        perm::known(&i)?;
        let granted = perm::granted(caller, &i);
        Ok((i, granted))
    }

    pub fn readlink(&self, caller: &Caller, id: FileId) -> Result<Vec<u8>> {
        let i = self.get(id)?;
        if i.kind != Kind::Symlink {
            return Err(CacheError::Invalid);
        }
        perm::require(caller, &i, perm::READ)?;
        Ok(i.symlink_target)
    }

    /// Reads up to `count` bytes at `offset`; returns the bytes, eof, attributes.
    pub fn read(
        &self,
        caller: &Caller,
        id: FileId,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool, Inode)> {
        self.file_for(caller, id, perm::READ)?;
        let guard = self.data_lock(id).read();
        // Read again under the data lock: no eviction changes it while the bytes are read.
        let i = self.get(id)?;
        if offset >= i.size {
            return Ok((Vec::new(), true, i));
        }
        let len = (i.size - offset).min(count as u64) as usize;
        if i.partial {
            let missing = self.missing_ranges(&i, offset, len as u64)?;
            if !missing.is_empty() {
                return Err(CacheError::NotCached(id, missing));
            }
        }
        let f = self.live_file(id)?;
        let buf = read_span(&f, offset, len).map_err(CacheError::from_io)?;
        drop(guard);
        let eof = offset + len as u64 >= i.size;
        self.touch(&i);
        Ok((buf, eof, i))
    }

    /// Lists `dir` after `cookie`, at most `max` entries (including "." and "..").
    pub fn readdir(&self, caller: &Caller, dir: FileId, cookie: u64, max: usize) -> Result<Listing> {
        let d = self.get_dir(dir)?;
        perm::require(caller, &d, perm::READ)?;
        let mut entries = Vec::new();
        if cookie < 1 && entries.len() < max {
            entries.push(DirEntryInfo {
                name: b".".to_vec(),
                cookie: 1,
                attr: d.clone(),
            });
        }
        if cookie < 2 && entries.len() < max {
            entries.push(DirEntryInfo {
                name: b"..".to_vec(),
                cookie: 2,
                attr: self.get(d.parent)?,
            });
        }
        if cookie >= d.next_dir_seq && cookie > 2 {
            return Err(CacheError::BadCookie);
        }
        let start = keys::seq(dir, cookie.max(2) + 1);
        let end = keys::seq(dir, u64::MAX);
        let mut eof = true;
        for kv in self.db.range(start..=end) {
            let (k, name) = kv?;
            if entries.len() >= max {
                eof = false;
                break;
            }
            let seq = u64::from_be_bytes(k[9..17].try_into().expect("17-byte key"));
            let Some(e) = self.lookup_entry(dir, &name)? else {
                continue;
            };
            let Some(attr) = self.load(e.child)? else { continue };
            entries.push(DirEntryInfo {
                name: name.to_vec(),
                cookie: seq,
                attr,
            });
        }
        Ok(Listing { entries, eof })
    }

    /// `NoSpace` unless `need` bytes fit on the cache disk above the metadata reserve.
    pub(super) fn check_space(&self, need: u64) -> Result<()> {
        let s = self.fsstat()?;
        if s.avail_bytes < self.opts.metadata_reserve_bytes.saturating_add(need) {
            return Err(CacheError::NoSpace);
        }
        Ok(())
    }

    pub fn fsstat(&self) -> Result<FsStat> {
        let path = std::ffi::CString::new(self.data_dir.as_os_str().as_encoded_bytes())
            .map_err(|_| CacheError::Invalid)?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `s` a valid out-pointer.
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            return Err(CacheError::Io(std::io::Error::last_os_error()));
        }
        let frsize = s.f_frsize as u64;
        Ok(FsStat {
            total_bytes: s.f_blocks as u64 * frsize,
            free_bytes: s.f_bfree as u64 * frsize,
            avail_bytes: s.f_bavail as u64 * frsize,
            total_files: s.f_files as u64,
            free_files: s.f_ffree as u64,
        })
    }
}

/// `len` bytes of `f` from `offset`, zeros past its end (a sparse tail past the data
/// file's end), read into a buffer that is not zero-filled first: the kernel writes
/// it (a memset of every 1 MiB READ was 5% of a warm read's CPU samples).
fn read_span(f: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let done = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - done];
        let at = (offset + done as u64) as libc::off_t;
        // SAFETY: pread writes at most `spare.len()` bytes into the vector's spare
        // capacity, and only the `n` it reports written are exposed by `set_len`.
        let n = unsafe { libc::pread(f.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        match n {
            0 => break,
            n if n > 0 => unsafe { buf.set_len(done + n as usize) },
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    buf.resize(len, 0);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::read_span;

    #[test]
    fn a_span_past_the_data_files_end_reads_as_zeros() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("data");
        std::fs::write(&p, b"0123456789").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        assert_eq!(read_span(&f, 0, 10).unwrap(), b"0123456789");
        assert_eq!(read_span(&f, 5, 10).unwrap(), b"56789\0\0\0\0\0");
        assert_eq!(read_span(&f, 20, 3).unwrap(), b"\0\0\0");
        assert_eq!(read_span(&f, 3, 0).unwrap(), b"");
        let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &big).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        assert_eq!(read_span(&f, 1 << 20, 1 << 20).unwrap(), big[1 << 20..2 << 20]);
    }
}
