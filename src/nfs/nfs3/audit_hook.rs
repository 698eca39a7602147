//! The NFS side of the audit log (`crate::audit`): before a changing call runs, read
//! its arguments again (a cheap zero-copy re-decode) to learn the share, the caller
//! after squash and the paths; after the reply, hand one record to the share's log.
//! Paths are resolved before the call, so a REMOVE or RENAME still names the old path.

use std::sync::Arc;

use bytes::Bytes;
use nfs3_types::nfs3::{Nfs3Option, nfs_fh3, set_atime, set_mtime};

use super::{NfsService, Share};
use crate::audit::{AttrChange, AuditLog, Op};
use crate::nfs::CallContext;
use crate::nfs::handle::Handle;
use crate::nfs::xdr::XdrCursor;

/// A call being audited: everything but its status.
pub(super) struct Pending {
    log: Arc<AuditLog>,
    client: std::net::IpAddr,
    uid: u32,
    gid: u32,
    op: Op,
    path: Option<String>,
    new_path: Option<String>,
    target: Option<String>,
    attrs: Option<AttrChange>,
    /// WRITE: the file, marked as written once the write succeeds.
    write_of: Option<u64>,
    /// READ: the file, whose read session starts once the read succeeds.
    read_of: Option<u64>,
}

impl Pending {
    pub(super) fn finish(self, status: &str) {
        if let Some(id) = self.write_of
            && status == "OK"
        {
            self.log.wrote(id);
        }
        if let Some(id) = self.read_of
            && status == "OK"
        {
            self.log.read(self.client, self.uid, id);
        }
        let mut r = self
            .log
            .record(self.client, self.uid, self.gid, self.op, self.path, status);
        r.new_path = self.new_path;
        r.target = self.target;
        r.attrs = self.attrs;
        self.log.log(r);
    }
}

/// Sets the span's `fileid` from the call's first argument (every NFSv3 procedure but
/// NULL starts with a file handle) when the span is being recorded at all.
pub(super) fn record_file_id(span: &tracing::Span, args: &Bytes) {
    if span.is_disabled() {
        return;
    }
    if let Ok(fh) = XdrCursor::new(args.clone()).nfs_fh3()
        && let Some(h) = Handle::unverified(&fh.data)
    {
        span.record("fileid", h.file_id);
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn child(dir: Option<&str>, name: &[u8]) -> Option<String> {
    let dir = dir?;
    let name = lossy(name);
    Some(if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    })
}

impl NfsService {
    /// The share a handle names, when that share keeps an audit log.
    fn audited(&self, fh: &nfs_fh3) -> Option<(Arc<Share>, Arc<AuditLog>, Handle)> {
        let share = self.by_id.get(&Handle::share_of(&fh.data).ok()?)?;
        let log = share.audit.clone()?;
        let h = Handle::verify(&fh.data, share.cache.handle_key()).ok()?;
        Some((share.clone(), log, h))
    }

    /// "/a/b" for the inode a handle names; `None` if it is gone.
    fn audit_path(share: &Share, h: &Handle) -> Option<String> {
        let ino = share.cache.get_checked(h.file_id, h.generation).ok()?;
        let p = share.cache.path_of(&ino).ok()?;
        Some(format!("/{p}"))
    }

    /// The audit record to finish after the call, for the procedures that change
    /// something; `None` for every other call and when no share is audited.
    pub(super) fn audit_begin(&self, ctx: &CallContext, proc: u32, args: &Bytes) -> Option<Pending> {
        if !self.audit_any {
            return None;
        }
        let mut c = XdrCursor::new(args.clone());
        let pending = |share: &Share, log: Arc<AuditLog>, op, path| {
            let caller = super::caller(share, ctx);
            Pending {
                log,
                client: ctx.client.ip(),
                uid: caller.uid,
                gid: caller.gid,
                op,
                path,
                new_path: None,
                target: None,
                attrs: None,
                write_of: None,
                read_of: None,
            }
        };
        match proc {
            // SETATTR
            2 => {
                let fh = c.nfs_fh3().ok()?;
                let a = c.sattr3().ok()?;
                let (s, log, h) = self.audited(&fh)?;
                let opt = |o: &Nfs3Option<u32>| match o {
                    Nfs3Option::Some(v) => Some(*v),
                    Nfs3Option::None => None,
                };
                let attrs = AttrChange {
                    mode: opt(&a.mode).map(|m| format!("{m:04o}")),
                    uid: opt(&a.uid),
                    gid: opt(&a.gid),
                    size: match a.size {
                        Nfs3Option::Some(v) => Some(v),
                        Nfs3Option::None => None,
                    },
                    atime: !matches!(a.atime, set_atime::DONT_CHANGE),
                    mtime: !matches!(a.mtime, set_mtime::DONT_CHANGE),
                };
                let mut p = pending(&s, log, Op::Setattr, Self::audit_path(&s, &h));
                p.attrs = Some(attrs);
                Some(p)
            }
            // WRITE: only the first since CREATE/COMMIT, not every 1 MiB chunk.
            7 => {
                let fh = c.nfs_fh3().ok()?;
                let (s, log, h) = self.audited(&fh)?;
                if !log.first_write(h.file_id) {
                    return None;
                }
                let mut p = pending(&s, log, Op::Write, Self::audit_path(&s, &h));
                p.write_of = Some(h.file_id);
                Some(p)
            }
            // READ, with `audit_reads`: the first of a client's read session.
            6 => {
                let fh = c.nfs_fh3().ok()?;
                // Before the MAC check: READ is the hot path, and most audited
                // shares do not record reads.
                let share = self.by_id.get(&Handle::share_of(&fh.data).ok()?)?;
                if !share.audit.as_ref()?.records_reads() {
                    return None;
                }
                let (s, log, h) = self.audited(&fh)?;
                if !log.first_read(ctx.client.ip(), super::caller(&s, ctx).uid, h.file_id) {
                    return None;
                }
                let mut p = pending(&s, log, Op::Read, Self::audit_path(&s, &h));
                p.read_of = Some(h.file_id);
                Some(p)
            }
            // CREATE, MKDIR, REMOVE, RMDIR
            8 | 9 | 12 | 13 => {
                let (dir, name) = c.diropargs3().ok()?;
                let (s, log, h) = self.audited(&dir)?;
                let path = child(Self::audit_path(&s, &h).as_deref(), &name);
                if matches!(proc, 8 | 12)
                    && let Some(p) = &path
                    && let Ok(Some(old)) = s.cache.resolve(p)
                {
                    // A file created again (or removed): its next write starts a session.
                    log.committed(old.id);
                }
                let op = match proc {
                    8 => Op::Create,
                    9 => Op::Mkdir,
                    12 => Op::Remove,
                    _ => Op::Rmdir,
                };
                Some(pending(&s, log, op, path))
            }
            // SYMLINK
            10 => {
                let (dir, name) = c.diropargs3().ok()?;
                let _attrs = c.sattr3().ok()?;
                let target = c.nfspath3().ok()?;
                let (s, log, h) = self.audited(&dir)?;
                let path = child(Self::audit_path(&s, &h).as_deref(), &name);
                let mut p = pending(&s, log, Op::Symlink, path);
                p.target = Some(lossy(&target));
                Some(p)
            }
            // RENAME
            14 => {
                let (from, from_name) = c.diropargs3().ok()?;
                let (to, to_name) = c.diropargs3().ok()?;
                let (s, log, h) = self.audited(&from)?;
                let path = child(Self::audit_path(&s, &h).as_deref(), &from_name);
                let new_path = Handle::verify(&to.data, s.cache.handle_key())
                    .ok()
                    .filter(|t| t.share_id == h.share_id)
                    .and_then(|t| child(Self::audit_path(&s, &t).as_deref(), &to_name));
                let mut p = pending(&s, log, Op::Rename, path);
                p.new_path = new_path;
                Some(p)
            }
            // COMMIT: not logged, but the file's next WRITE is.
            21 => {
                let fh = c.nfs_fh3().ok()?;
                let (_, log, h) = self.audited(&fh)?;
                log.committed(h.file_id);
                None
            }
            _ => None,
        }
    }
}
