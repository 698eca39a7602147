//! New names: CREATE, MKDIR, SYMLINK.

use parking_lot::MutexGuard;

use super::{Cache, MAX_FILE_SIZE, State, allocated, now_ns};
use crate::args::{CreateMode, DirChange, SetAttr, SetTime, WccAttr};
use crate::attrs::Batch;
use crate::error::{CacheError, Result};
use crate::inode::{DirEntry, FileId, Inode, Kind, encode, keys};
use crate::perm::{self, Caller};

impl Cache {
    pub(crate) fn new_inode(
        st: &mut State,
        kind: Kind,
        caller: &Caller,
        dir: &Inode,
        name: &[u8],
        mode: u32,
        now: u64,
    ) -> Inode {
        let id = st.next_id;
        st.next_id += 1;
        // BSD semantics for a setgid directory: new entries inherit its group.
        let gid = if dir.mode & 0o2000 != 0 {
            dir.gid
        } else {
            caller.gid
        };
        let mut ino = Inode::fresh(id, st.random_u32(), kind, mode, caller.uid, gid, now);
        ino.parent = dir.id;
        ino.name = name.to_vec();
        ino
    }

    /// Adds `child` to `dir` and records both, queued for upload, in one batch made
    /// durable once the state lock (taken here) is released.
    fn link_new(
        &self,
        mut st: MutexGuard<'_, State>,
        mut dir: Inode,
        mut child: Inode,
        now: u64,
    ) -> Result<DirChange> {
        let before = WccAttr::from(&dir);
        let seq = dir.next_dir_seq;
        dir.next_dir_seq += 1;
        if child.kind == Kind::Dir {
            dir.subdirs += 1;
        }
        dir.mtime_ns = now;
        dir.ctime_ns = now;
        let mut b = Batch::default();
        Self::touch_for_upload(&mut child, &mut b, now, true);
        Self::put(&mut b, &child);
        b.insert(
            keys::name(dir.id, &child.name),
            encode(&DirEntry { child: child.id, seq }),
        );
        b.insert(&keys::seq(dir.id, seq), child.name.clone());
        Self::put(&mut b, &dir);
        b.insert(keys::meta("next_id"), &st.next_id.to_be_bytes());
        self.commit_batch(b)?;
        st.account(&child);
        drop(st);
        self.flush_metadata()?;
        tracing::debug!(file_id = child.id, dir = dir.id, name = %String::from_utf8_lossy(&child.name), "created");
        self.notify(child.id);
        Ok(DirChange { before, after: dir })
    }

    fn prepare_create(&self, caller: &Caller, dir: FileId, name: &[u8]) -> Result<Inode> {
        let d = self.get_dir(dir)?;
        self.check_name(&d, name)?;
        perm::require(caller, &d, perm::WRITE | perm::EXEC)?;
        self.check_space(0)?;
        Ok(d)
    }

    pub fn create(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        how: CreateMode,
    ) -> Result<(Inode, DirChange)> {
        let mut st = self.state.lock();
        let d = self.prepare_create(caller, dir, name)?;
        if let Some(e) = self.lookup_entry(dir, name)? {
            let existing = self.get(e.child)?;
            let unchanged = DirChange {
                before: WccAttr::from(&d),
                after: d.clone(),
            };
            return match how {
                CreateMode::Guarded(_) => Err(CacheError::Exists),
                CreateMode::Exclusive(v) if existing.create_verifier == Some(v) => Ok((existing, unchanged)),
                CreateMode::Exclusive(_) => Err(CacheError::Exists),
                CreateMode::Unchecked(set) => {
                    if existing.kind != Kind::File {
                        return Err(CacheError::Exists);
                    }
                    perm::known(&existing)?;
                    drop(st);
                    // UNCHECKED on an existing file applies only the size (truncate).
                    let only_size = SetAttr {
                        size: set.size,
                        ..SetAttr::default()
                    };
                    let (_, i) = if only_size.size.is_some() {
                        self.setattr(caller, existing.id, only_size, None)?
                    } else {
                        (WccAttr::from(&existing), existing)
                    };
                    Ok((i, unchanged))
                }
            };
        }
        let now = now_ns();
        let (mode, set) = match how {
            CreateMode::Unchecked(s) | CreateMode::Guarded(s) => (s.mode.unwrap_or(0o644), Some(s)),
            CreateMode::Exclusive(_) => (0o644, None),
        };
        let mut child = Self::new_inode(&mut st, Kind::File, caller, &d, name, mode, now);
        if let CreateMode::Exclusive(v) = how {
            child.create_verifier = Some(v);
        }
        if let Some(s) = set {
            apply_initial_attrs(&mut child, caller, &s, now)?;
        }
        if child.size > self.opts.max_file_size {
            return Err(CacheError::TooBig);
        }
        if child.size > 0 {
            let f = self.file(child.id)?;
            f.set_len(child.size).map_err(CacheError::from_io)?;
            st.measured(child.id, allocated(&f));
            st.resized(0, child.size);
        }
        let change = self.link_new(st, d, child.clone(), now)?;
        let child = self.get(child.id)?;
        Ok((child, change))
    }

    pub fn mkdir(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        set: SetAttr,
    ) -> Result<(Inode, DirChange)> {
        let mut st = self.state.lock();
        let d = self.prepare_create(caller, dir, name)?;
        if self.lookup_entry(dir, name)?.is_some() {
            return Err(CacheError::Exists);
        }
        let now = now_ns();
        let mut child = Self::new_inode(
            &mut st,
            Kind::Dir,
            caller,
            &d,
            name,
            set.mode.unwrap_or(0o755),
            now,
        );
        apply_initial_attrs(&mut child, caller, &SetAttr { size: None, ..set }, now)?;
        // After the requested mode, which would otherwise clear it (the Linux kernel
        // client found this): a directory made in a setgid directory is setgid too.
        if d.mode & 0o2000 != 0 {
            child.mode |= 0o2000;
        }
        let change = self.link_new(st, d, child.clone(), now)?;
        Ok((self.get(child.id)?, change))
    }

    pub fn symlink(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        target: &[u8],
        set: SetAttr,
    ) -> Result<(Inode, DirChange)> {
        let mut st = self.state.lock();
        let d = self.prepare_create(caller, dir, name)?;
        if target.is_empty() || target.len() > 4096 || target.contains(&0) {
            return Err(if target.len() > 4096 {
                CacheError::NameTooLong
            } else {
                CacheError::Invalid
            });
        }
        if self.lookup_entry(dir, name)?.is_some() {
            return Err(CacheError::Exists);
        }
        let now = now_ns();
        let mut child = Self::new_inode(&mut st, Kind::Symlink, caller, &d, name, 0o777, now);
        child.symlink_target = target.to_vec();
        child.size = target.len() as u64;
        apply_initial_attrs(
            &mut child,
            caller,
            &SetAttr {
                size: None,
                mode: None,
                ..set
            },
            now,
        )?;
        let change = self.link_new(st, d, child.clone(), now)?;
        Ok((self.get(child.id)?, change))
    }

    /// MKNOD of a FIFO or a socket: a node of that kind, which holds no bytes.
    pub fn mknod(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        kind: Kind,
        set: SetAttr,
    ) -> Result<(Inode, DirChange)> {
        if !matches!(kind, Kind::Fifo | Kind::Socket) {
            return Err(CacheError::Invalid);
        }
        let mut st = self.state.lock();
        let d = self.prepare_create(caller, dir, name)?;
        if self.lookup_entry(dir, name)?.is_some() {
            return Err(CacheError::Exists);
        }
        let now = now_ns();
        let mode = set.mode.unwrap_or(0o644);
        let mut child = Self::new_inode(&mut st, kind, caller, &d, name, mode, now);
        apply_initial_attrs(&mut child, caller, &SetAttr { size: None, ..set }, now)?;
        let change = self.link_new(st, d, child.clone(), now)?;
        Ok((self.get(child.id)?, change))
    }
}

fn apply_initial_attrs(i: &mut Inode, caller: &Caller, s: &SetAttr, now: u64) -> Result<()> {
    if let Some(m) = s.mode {
        i.mode = m & 0o7777;
    }
    // Only root may give a new file away; others' uid/gid requests must match them.
    if let Some(u) = s.uid {
        if u != caller.uid && caller.uid != 0 {
            return Err(CacheError::Perm);
        }
        i.uid = u;
    }
    if let Some(g) = s.gid {
        if caller.uid != 0 && !caller.in_group(g) {
            return Err(CacheError::Perm);
        }
        i.gid = g;
    }
    if let Some(sz) = s.size {
        if sz > MAX_FILE_SIZE {
            return Err(CacheError::TooBig);
        }
        i.size = sz;
    }
    match s.atime {
        SetTime::Client(t) => i.atime_ns = t,
        SetTime::ServerTime => i.atime_ns = now,
        SetTime::DontChange => {}
    }
    match s.mtime {
        SetTime::Client(t) => i.mtime_ns = t,
        SetTime::ServerTime => i.mtime_ns = now,
        SetTime::DontChange => {}
    }
    // A new file setgid to a group its maker is not in (inherited from a setgid
    // directory, or asked for) loses the bit, as on Linux (CVE-2018-13405).
    if i.kind != Kind::Dir && caller.uid != 0 && !caller.in_group(i.gid) {
        i.mode &= !0o2000;
    }
    Ok(())
}
