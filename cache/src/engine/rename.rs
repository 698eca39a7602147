//! RENAME, of files and of whole directories.

use super::{Cache, ROOT_ID, now_ns};
use crate::args::{DirChange, WccAttr};
use crate::attrs::Batch;
use crate::error::{CacheError, Result};
use crate::inode::{DirEntry, FileId, Inode, Kind, encode, keys};
use crate::perm::{self, Caller};

impl Cache {
    /// Renames; returns the (from, to) directory changes. Renaming a directory
    /// queues every inode below it, since all their keys change.
    pub fn rename(
        &self,
        caller: &Caller,
        from_dir: FileId,
        from_name: &[u8],
        to_dir: FileId,
        to_name: &[u8],
    ) -> Result<(DirChange, DirChange)> {
        let mut st = self.state.lock();
        let mut fd = self.get_dir(from_dir)?;
        let mut td = self.get_dir(to_dir)?;
        for n in [from_name, to_name] {
            if n == b"." || n == b".." {
                return Err(CacheError::Invalid);
            }
        }
        self.check_name(&td, to_name)?;
        perm::require(caller, &fd, perm::WRITE | perm::EXEC)?;
        perm::require(caller, &td, perm::WRITE | perm::EXEC)?;
        let e = self
            .lookup_entry(from_dir, from_name)?
            .ok_or(CacheError::NotFound)?;
        let mut moving = self.get(e.child)?;
        Self::check_sticky(caller, &fd, &moving)?;
        // A directory moving to another parent has its ".." rewritten, which POSIX
        // rename(2) (and Linux) allow only to whoever may write that directory.
        if moving.kind == Kind::Dir && from_dir != to_dir {
            perm::require(caller, &moving, perm::WRITE)?;
        }
        let fd_before = WccAttr::from(&fd);
        let td_before = WccAttr::from(&td);
        let target = self.lookup_entry(to_dir, to_name)?;
        if let Some(t) = &target
            && t.child == moving.id
        {
            return Ok((
                DirChange {
                    before: fd_before,
                    after: fd.clone(),
                },
                DirChange {
                    before: td_before,
                    after: td,
                },
            ));
        }
        if moving.kind == Kind::Dir {
            // A directory cannot move below itself.
            let mut cur = td.clone();
            loop {
                if cur.id == moving.id {
                    return Err(CacheError::Invalid);
                }
                if cur.id == ROOT_ID {
                    break;
                }
                cur = self.get(cur.parent)?;
            }
            let new_path_len = self.path_of(&td)?.len() + 1 + to_name.len();
            if new_path_len + self.deepest_suffix(&moving)? + 1 > self.opts.max_path_bytes {
                return Err(CacheError::NameTooLong);
            }
        }
        let now = now_ns();
        let mut b = Batch::default();
        let replaced = target.as_ref().map(|t| t.child);
        let mut doomed = None;
        let mut replaced_dir = false;
        if let Some(t) = target {
            let victim = self.get(t.child)?;
            replaced_dir = victim.kind == Kind::Dir;
            Self::check_sticky(caller, &td, &victim)?;
            match (moving.kind == Kind::Dir, victim.kind == Kind::Dir) {
                (true, false) => return Err(CacheError::NotDir),
                (false, true) => return Err(CacheError::IsDir),
                (true, true) if self.db.scan_prefix(keys::seq_prefix(victim.id)).next().is_some() => {
                    return Err(CacheError::NotEmpty);
                }
                _ => {}
            }
            b.remove(keys::name(to_dir, to_name));
            b.remove(&keys::seq(to_dir, t.seq));
            doomed = self.unlink_in_batch(&mut st, &mut b, victim, now);
        }
        b.remove(keys::name(from_dir, from_name));
        b.remove(&keys::seq(from_dir, e.seq));
        let same_dir = from_dir == to_dir;
        let seq = if same_dir {
            let s = fd.next_dir_seq;
            fd.next_dir_seq += 1;
            s
        } else {
            let s = td.next_dir_seq;
            td.next_dir_seq += 1;
            s
        };
        b.insert(
            keys::name(to_dir, to_name),
            encode(&DirEntry {
                child: moving.id,
                seq,
            }),
        );
        b.insert(&keys::seq(to_dir, seq), to_name.to_vec());
        moving.parent = to_dir;
        moving.name = to_name.to_vec();
        moving.ctime_ns = now;
        Self::note_moved(&mut b, &moving);
        Self::touch_for_upload(&mut moving, &mut b, now, false);
        Self::put(&mut b, &moving);
        fd.mtime_ns = now;
        fd.ctime_ns = now;
        // Link counts: a directory moving to another parent takes its ".." along; a
        // directory replaced goes from the target's parent.
        if moving.kind == Kind::Dir && !same_dir {
            fd.subdirs = fd.subdirs.saturating_sub(1);
            td.subdirs += 1;
        }
        if replaced_dir {
            let to = if same_dir { &mut fd } else { &mut td };
            to.subdirs = to.subdirs.saturating_sub(1);
        }
        if same_dir {
            Self::put(&mut b, &fd);
            td = fd.clone();
        } else {
            td.mtime_ns = now;
            td.ctime_ns = now;
            Self::put(&mut b, &fd);
            Self::put(&mut b, &td);
        }
        let mut requeued = vec![moving.id];
        if moving.kind == Kind::Dir {
            self.requeue_subtree(moving.id, &mut b, now, &mut requeued)?;
        }
        self.commit_batch(b)?;
        st.account(&moving);
        drop(st);
        self.flush_metadata()?;
        if let Some(id) = doomed {
            self.drop_data(id);
        }
        tracing::debug!(
            file_id = moving.id,
            from_dir,
            from = %String::from_utf8_lossy(from_name),
            to_dir,
            to = %String::from_utf8_lossy(to_name),
            ?replaced,
            "renamed"
        );
        for id in requeued {
            self.notify(id);
        }
        Ok((
            DirChange {
                before: fd_before,
                after: fd,
            },
            DirChange {
                before: td_before,
                after: td,
            },
        ))
    }

    /// Longest path below `dir`, relative to it, in bytes.
    fn deepest_suffix(&self, dir: &Inode) -> Result<usize> {
        let mut longest = 0;
        let mut stack = vec![(dir.id, 0usize)];
        while let Some((id, base)) = stack.pop() {
            for kv in self.db.scan_prefix(keys::seq_prefix(id)) {
                let (_, name) = kv?;
                let len = base + 1 + name.len();
                longest = longest.max(len);
                if let Some(e) = self.lookup_entry(id, &name)?
                    && let Some(c) = self.load(e.child)?
                    && c.kind == Kind::Dir
                {
                    stack.push((c.id, len));
                }
            }
        }
        Ok(longest)
    }

    fn requeue_subtree(&self, dir: FileId, b: &mut Batch, now: u64, out: &mut Vec<FileId>) -> Result<()> {
        let mut stack = vec![dir];
        while let Some(id) = stack.pop() {
            for kv in self.db.scan_prefix(keys::seq_prefix(id)) {
                let (_, name) = kv?;
                let Some(e) = self.lookup_entry(id, &name)? else {
                    continue;
                };
                let Some(mut c) = self.load(e.child)? else {
                    continue;
                };
                Self::touch_for_upload(&mut c, b, now, false);
                Self::note_moved(b, &c);
                Self::put(b, &c);
                out.push(c.id);
                if c.kind == Kind::Dir {
                    stack.push(c.id);
                }
            }
        }
        Ok(())
    }
}
