//! SETATTR: mode, owner, group, size and times.

use super::{Cache, allocated, now_ns};
use crate::args::{SetAttr, SetTime, WccAttr};
use crate::attrs::Batch;
use crate::error::{CacheError, Result};
use crate::inode::{FileId, Inode, Kind, keys};
use crate::perm::{self, Caller};

impl Cache {
    pub fn setattr(
        &self,
        caller: &Caller,
        id: FileId,
        set: SetAttr,
        guard_ctime_ns: Option<u64>,
    ) -> Result<(WccAttr, Inode)> {
        let mut st = self.state.lock();
        let mut i = self.get(id)?;
        let before = WccAttr::from(&i);
        if let Some(g) = guard_ctime_ns
            && g != i.ctime_ns
        {
            return Err(CacheError::NotSync);
        }
        perm::check_setattr(caller, &i, &set)?;
        let now = now_ns();
        let mut remote_visible = false;
        let mut data_changed = false;
        let mut whole_now = false;
        if let Some(size) = set.size {
            if i.kind != Kind::File {
                return Err(if i.kind == Kind::Dir {
                    CacheError::IsDir
                } else {
                    CacheError::Invalid
                });
            }
            if size > self.opts.max_file_size {
                return Err(CacheError::TooBig);
            }
            if size != i.size {
                let mut stored = i.size;
                if i.partial {
                    // Only what the file keeps: a truncation to 0 fetches nothing.
                    let missing = self.missing_ranges(&i, 0, size.min(i.size))?;
                    if !missing.is_empty() {
                        return Err(CacheError::NotCached(id, missing));
                    }
                    stored = self.cached_bytes_of(&i);
                    i.partial = false;
                    whole_now = true;
                }
                self.lru.invalidate(&id);
                let f = self.file(id)?;
                f.set_len(size).map_err(CacheError::from_io)?;
                st.measured(id, allocated(&f));
                st.resized(stored, size);
                i.size = size;
                data_changed = true;
                i.mtime_ns = now;
                perm::drop_privileges(&mut i, caller);
            }
        }
        let owner_change = set.uid.is_some_and(|u| u != i.uid) || set.gid.is_some_and(|g| g != i.gid);
        if let Some(u) = set.uid {
            i.uid = u;
            remote_visible = true;
        }
        if let Some(g) = set.gid {
            i.gid = g;
            remote_visible = true;
        }
        if let Some(m) = set.mode {
            i.mode = m & 0o7777;
            // Setgid on a file of a group the caller is not in would hand that group's
            // rights to whoever runs it (Linux clears it: CVE-2018-13405, -2021-4037).
            if caller.uid != 0 && !caller.in_group(i.gid) {
                i.mode &= !0o2000;
            }
            remote_visible = true;
        } else if (owner_change || (set.uid.is_some() || set.gid.is_some()) && caller.uid != 0)
            && i.kind != Kind::Dir
        {
            // A chown or chgrp drops setuid and setgid as Linux does: always when a
            // caller who is not root makes it, else when the owner or group changes
            // (setgid without group execute means mandatory locking, and stays).
            if caller.uid != 0 {
                i.mode &= !0o6000;
            } else {
                i.mode &= !0o4000;
                if i.mode & 0o010 != 0 {
                    i.mode &= !0o2000;
                }
            }
        }
        match set.atime {
            SetTime::DontChange => {}
            SetTime::ServerTime => i.atime_ns = now,
            SetTime::Client(t) => i.atime_ns = t,
        }
        match set.mtime {
            SetTime::DontChange => {}
            SetTime::ServerTime => {
                i.mtime_ns = now;
                remote_visible = true;
            }
            SetTime::Client(t) => {
                i.mtime_ns = t;
                remote_visible = true;
            }
        }
        i.ctime_ns = now;
        let mut b = Batch::default();
        if remote_visible || data_changed {
            Self::touch_for_upload(&mut i, &mut b, now, data_changed);
        }
        if whole_now {
            b.remove(&keys::blocks(id));
        }
        Self::put(&mut b, &i);
        self.commit_batch(b)?;
        st.account(&i);
        drop(st);
        self.flush_metadata()?;
        if remote_visible || data_changed {
            self.notify(id);
        }
        Ok((before, i))
    }
}
