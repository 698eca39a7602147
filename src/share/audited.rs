//! The share layer's side of the audit log (`crate::audit`): every front end's
//! changes are recorded here, so NFS and FUSE calls leave the same records. Paths
//! are resolved before the call, so a REMOVE or RENAME still names the old path.

use std::sync::Arc;

use bucketgate_cache::{FileId, SetAttr, SetTime};

use super::{Caller, Result, Share};
use crate::audit::{AttrChange, AuditLog, Op};

/// A call being audited: everything but its outcome.
pub(super) struct Pending {
    log: Arc<AuditLog>,
    caller: Caller,
    op: Op,
    path: Option<String>,
    pub new_path: Option<String>,
    pub target: Option<String>,
    pub attrs: Option<AttrChange>,
    /// WRITE: the file, marked as written once the write succeeds.
    write_of: Option<FileId>,
    /// READ: the file, whose read session starts once the read succeeds.
    read_of: Option<FileId>,
}

impl Pending {
    /// Logs the call with its outcome and hands the outcome back.
    pub(super) fn finish<T>(self, r: Result<T>) -> Result<T> {
        let ok = r.is_ok();
        if ok && let Some(id) = self.write_of {
            self.log.wrote(id);
        }
        if ok && let Some(id) = self.read_of {
            self.log.read(self.caller.origin, self.caller.uid, id);
        }
        let status = r.as_ref().map_or_else(|e| e.code(), |_| "OK");
        let mut rec = self.log.record(
            self.caller.origin,
            self.caller.uid,
            self.caller.gid,
            self.op,
            self.path,
            status,
        );
        rec.new_path = self.new_path;
        rec.target = self.target;
        rec.attrs = self.attrs;
        self.log.log(rec);
        r
    }
}

/// Finishes `audit` when there is one; the outcome passes through.
pub(super) fn done<T>(audit: Option<Pending>, r: Result<T>) -> Result<T> {
    match audit {
        Some(a) => a.finish(r),
        None => r,
    }
}

impl Share {
    /// A record to finish after the call, when the share keeps an audit log.
    pub(super) fn audit(
        &self,
        caller: &Caller,
        op: Op,
        path: impl FnOnce() -> Option<String>,
    ) -> Option<Pending> {
        let log = self.audit.clone()?;
        Some(Pending {
            log,
            caller: caller.clone(),
            op,
            path: path(),
            new_path: None,
            target: None,
            attrs: None,
            write_of: None,
            read_of: None,
        })
    }

    /// A WRITE's record: only the first since the file was created or committed,
    /// not every 1 MiB chunk.
    pub(super) fn audit_write(&self, caller: &Caller, id: FileId) -> Option<Pending> {
        if !self.audit.as_ref()?.first_write(id) {
            return None;
        }
        let mut p = self.audit(caller, Op::Write, || self.path_of(id))?;
        p.write_of = Some(id);
        Some(p)
    }

    /// A READ's record, with `audit_reads`: the first of a caller's read session.
    pub(super) fn audit_read(&self, caller: &Caller, id: FileId) -> Option<Pending> {
        let log = self.audit.as_ref()?;
        if !log.records_reads() || !log.first_read(caller.origin, caller.uid, id) {
            return None;
        }
        let mut p = self.audit(caller, Op::Read, || self.path_of(id))?;
        p.read_of = Some(id);
        Some(p)
    }

    /// The file's next write starts a new write session (it was committed, closed,
    /// created again or removed).
    pub(super) fn audit_session_ends(&self, id: FileId) {
        if let Some(log) = &self.audit {
            log.committed(id);
        }
    }

    /// `name` in `dir` is created again or removed: its next write is logged.
    pub(super) fn audit_replaced(&self, dir: FileId, name: &[u8]) {
        if self.audit.is_some()
            && let Ok(Some(old)) = self.cache.peek(dir, name)
        {
            self.audit_session_ends(old.id);
        }
    }

    /// "/a/b" for an inode; `None` if it is gone.
    pub(super) fn path_of(&self, id: FileId) -> Option<String> {
        let ino = self.cache.get(id).ok()?;
        Some(format!("/{}", self.cache.path_of(&ino).ok()?))
    }

    /// "/a/b/name" for `name` in directory `dir`.
    pub(super) fn child_path(&self, dir: FileId, name: &[u8]) -> Option<String> {
        let dir = self.path_of(dir)?;
        let name = String::from_utf8_lossy(name);
        Some(if dir == "/" {
            format!("/{name}")
        } else {
            format!("{dir}/{name}")
        })
    }
}

/// The attributes a SETATTR asks to change, as the audit log shows them.
pub(super) fn attr_change(set: &SetAttr) -> AttrChange {
    AttrChange {
        mode: set.mode.map(|m| format!("{m:04o}")),
        uid: set.uid,
        gid: set.gid,
        size: set.size,
        atime: !matches!(set.atime, SetTime::DontChange),
        mtime: !matches!(set.mtime, SetTime::DontChange),
    }
}
