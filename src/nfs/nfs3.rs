//! The NFSv3 procedures (RFC 1813): decode arguments, find the share and inode from
//! the handle, apply the share's client list, call the share layer (`crate::share`),
//! encode the reply. No file semantics here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bucketgate_cache::{Cache, CreateMode, DirChange, FileId, Inode, Kind, SetAttr, SetTime, WccAttr};
use bytes::Bytes;
use nfs3_types::nfs3::*;
use nfs3_types::xdr_codec::{BoundedList, Opaque, Pack};

use super::handle::{BadHandle, Handle};
use super::status::nfs_status;
use super::xdr::{NAME_MAX, XdrCursor, encode};
use super::{CallContext, ExportEntry, Exports, Nfs3Program, ProcReply};
use crate::metrics::Metrics;
use crate::share::{Caller, EXEC, READ, Share, ShareError, WRITE};

/// Largest READ/WRITE we offer in FSINFO and accept.
pub const MAX_IO: u32 = 1 << 20;

/// The caller an RPC's AUTH_SYS credentials make, after the share's squash rule.
fn caller(share: &Share, ctx: &CallContext) -> Caller {
    share.nfs_caller(
        ctx.client.ip(),
        ctx.auth.as_ref().map(|a| (a.uid, a.gid, &a.gids[..])),
    )
}

/// Sets the span's `fileid` from the call's first argument (every NFSv3 procedure but
/// NULL starts with a file handle) when the span is being recorded at all.
fn record_file_id(span: &tracing::Span, args: &Bytes) {
    if span.is_disabled() {
        return;
    }
    if let Ok(fh) = XdrCursor::new(args.clone()).nfs_fh3()
        && let Some(h) = Handle::unverified(&fh.data)
    {
        span.record("fileid", h.file_id);
    }
}

fn handle(share: &Share, ino: &Inode) -> nfs_fh3 {
    let h = Handle {
        share_id: share.cache.share_id(),
        file_id: ino.id,
        generation: ino.generation,
    };
    nfs_fh3 {
        data: Opaque::owned(h.encode(share.cache.handle_key())),
    }
}

pub struct NfsService {
    shares: Vec<Arc<Share>>,
    metrics: Option<Metrics>,
    by_id: HashMap<u32, Arc<Share>>,
    write_verifier: writeverf3,
}

type Res<T> = Result<T, nfsstat3>;

fn nstime(ns: u64) -> nfstime3 {
    nfstime3 {
        seconds: (ns / 1_000_000_000).min(u32::MAX as u64) as u32,
        nseconds: (ns % 1_000_000_000) as u32,
    }
}

fn time_ns(t: &nfstime3) -> u64 {
    t.seconds as u64 * 1_000_000_000 + t.nseconds.min(999_999_999) as u64
}

/// `cache` answers for the share's fsid and the bytes a file takes on its disk.
fn fattr(cache: &Cache, i: &Inode) -> fattr3 {
    fattr3 {
        type_: match i.kind {
            Kind::File => ftype3::NF3REG,
            Kind::Dir => ftype3::NF3DIR,
            Kind::Symlink => ftype3::NF3LNK,
            Kind::Fifo => ftype3::NF3FIFO,
            Kind::Socket => ftype3::NF3SOCK,
        },
        mode: i.mode,
        nlink: i.nlink(),
        uid: i.uid,
        gid: i.gid,
        size: i.size,
        used: cache.disk_bytes(i),
        rdev: specdata3::default(),
        fsid: cache.share_id() as u64,
        fileid: i.id,
        atime: nstime(i.atime_ns),
        mtime: nstime(i.mtime_ns),
        ctime: nstime(i.ctime_ns),
    }
}

fn pre(w: WccAttr) -> pre_op_attr {
    Nfs3Option::Some(wcc_attr {
        size: w.size,
        mtime: nstime(w.mtime_ns),
        ctime: nstime(w.ctime_ns),
    })
}

fn dir_wcc(cache: &Cache, c: &DirChange) -> wcc_data {
    wcc_data {
        before: pre(c.before),
        after: post_op(cache, &c.after),
    }
}

/// Attributes for a reply, when they are the object's: an inode known only from a
/// listing has placeholders, and those are never sent (the client asks again).
fn post_op(cache: &Cache, i: &Inode) -> post_op_attr {
    if i.meta_pending {
        Nfs3Option::None
    } else {
        Nfs3Option::Some(fattr(cache, i))
    }
}

fn set_time(t: SetTimeWire) -> SetTime {
    match t {
        SetTimeWire::Dont => SetTime::DontChange,
        SetTimeWire::Server => SetTime::ServerTime,
        SetTimeWire::Client(t) => SetTime::Client(time_ns(&t)),
    }
}

enum SetTimeWire {
    Dont,
    Server,
    Client(nfstime3),
}

fn to_setattr(s: &sattr3) -> SetAttr {
    let opt = |o: &Nfs3Option<u32>| match o {
        Nfs3Option::Some(v) => Some(*v),
        Nfs3Option::None => None,
    };
    let atime = match s.atime {
        set_atime::DONT_CHANGE => SetTimeWire::Dont,
        set_atime::SET_TO_SERVER_TIME => SetTimeWire::Server,
        set_atime::SET_TO_CLIENT_TIME(t) => SetTimeWire::Client(t),
    };
    let mtime = match s.mtime {
        set_mtime::DONT_CHANGE => SetTimeWire::Dont,
        set_mtime::SET_TO_SERVER_TIME => SetTimeWire::Server,
        set_mtime::SET_TO_CLIENT_TIME(t) => SetTimeWire::Client(t),
    };
    SetAttr {
        mode: opt(&s.mode),
        uid: opt(&s.uid),
        gid: opt(&s.gid),
        size: match s.size {
            Nfs3Option::Some(v) => Some(v),
            Nfs3Option::None => None,
        },
        atime: set_time(atime),
        mtime: set_time(mtime),
    }
}

fn ok<T: Pack, E: Pack>(r: Nfs3Result<T, E>) -> ProcReply {
    ProcReply::Success(encode(&r))
}

/// A READ's reply with its data kept apart: the results are encoded with empty data,
/// the opaque's length word then set to the real length, and the data (padded to a
/// multiple of 4 as XDR wants) follows as its own buffer.
fn read_reply(results: READ3resok<'_>, mut data: Vec<u8>) -> ProcReply {
    let mut head = encode(&Nfs3Result::<_, READ3resfail>::Ok(results));
    let at = head.len() - 4;
    head[at..].copy_from_slice(&(data.len() as u32).to_be_bytes());
    data.resize(data.len().next_multiple_of(4), 0);
    ProcReply::SuccessWithData(head, Bytes::from(data))
}

macro_rules! args {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(_) => return ProcReply::GarbageArgs,
        }
    };
}

impl NfsService {
    pub fn new(shares: Vec<Arc<Share>>, metrics: Option<Metrics>) -> Self {
        let by_id = shares.iter().map(|s| (s.cache.share_id(), s.clone())).collect();
        // Differs between any two process lifetimes, so clients resend every write
        // they had not seen committed when the gateway restarts.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ ((std::process::id() as u64) << 40);
        NfsService {
            shares,
            metrics,
            by_id,
            write_verifier: writeverf3(seed.to_be_bytes()),
        }
    }

    pub fn shares(&self) -> &[Arc<Share>] {
        &self.shares
    }

    pub fn write_verifier(&self) -> [u8; 8] {
        self.write_verifier.0
    }

    /// The share and inode a handle names, for this client. The handle's MAC is
    /// checked before anything else of it is used.
    fn resolve(&self, ctx: &CallContext, fh: &nfs_fh3) -> Res<(Arc<Share>, Inode)> {
        let bad = |why: BadHandle| {
            if let Some(m) = &self.metrics {
                m.bad_handle(why);
            }
            match why {
                BadHandle::Old => nfsstat3::NFS3ERR_STALE,
                BadHandle::Malformed | BadHandle::Forged => nfsstat3::NFS3ERR_BADHANDLE,
            }
        };
        let share_id = Handle::share_of(&fh.data).map_err(bad)?;
        let share = self.by_id.get(&share_id).ok_or(nfsstat3::NFS3ERR_STALE)?;
        let h = Handle::verify(&fh.data, share.cache.handle_key()).map_err(|why| {
            tracing::warn!(client = %ctx.client, ?why, "refused a file handle this gateway did not make");
            bad(why)
        })?;
        if !(share.allows)(ctx.client.ip()) {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        let ino = share.inode(h.file_id, h.generation).map_err(|e| nfs_status(&e))?;
        Ok((share.clone(), ino))
    }

    fn attr_of(share: &Share, ino: &Inode) -> post_op_attr {
        post_op(&share.cache, ino)
    }

    fn current_attr(share: &Share, id: FileId) -> post_op_attr {
        match share.current(id) {
            Some(i) => Self::attr_of(share, &i),
            None => Nfs3Option::None,
        }
    }

    fn current_wcc(share: &Share, id: FileId) -> wcc_data {
        wcc_data {
            before: Nfs3Option::None,
            after: Self::current_attr(share, id),
        }
    }

    async fn getattr(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let fh = args!(c.nfs_fh3());
        let known = async {
            let (s, i) = self.resolve(ctx, &fh)?;
            let i = s.getattr(i).await.map_err(|e| nfs_status(&e))?;
            Ok((s, i))
        };
        match known.await {
            Ok((s, i)) => ok::<_, nfs3_types::xdr_codec::Void>(Nfs3Result::Ok(GETATTR3resok {
                obj_attributes: fattr(&s.cache, &i),
            })),
            Err(st) => ok::<GETATTR3resok, _>(Nfs3Result::Err((st, nfs3_types::xdr_codec::Void))),
        }
    }

    async fn setattr(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let fh = args!(c.nfs_fh3());
        let attrs = args!(c.sattr3());
        let guard = args!(c.sattrguard3());
        let (s, i) = match self.resolve(ctx, &fh) {
            Ok(v) => v,
            Err(st) => return ok::<SETATTR3resok, _>(Nfs3Result::Err((st, SETATTR3resfail::default()))),
        };
        let guard = match guard {
            Nfs3Option::Some(t) => Some(time_ns(&t)),
            Nfs3Option::None => None,
        };
        match s.setattr(&caller(&s, ctx), i.id, to_setattr(&attrs), guard).await {
            Ok((before, after)) => ok::<_, SETATTR3resfail>(Nfs3Result::Ok(SETATTR3resok {
                obj_wcc: wcc_data {
                    before: pre(before),
                    after: Self::attr_of(&s, &after),
                },
            })),
            Err(e) => ok::<SETATTR3resok, _>(Nfs3Result::Err((
                nfs_status(&e),
                SETATTR3resfail {
                    obj_wcc: Self::current_wcc(&s, i.id),
                },
            ))),
        }
    }

    async fn lookup(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let (dir, name) = args!(c.diropargs3());
        let (s, d) = match self.resolve(ctx, &dir) {
            Ok(v) => v,
            Err(st) => return ok::<LOOKUP3resok, _>(Nfs3Result::Err((st, LOOKUP3resfail::default()))),
        };
        let found = s.lookup(&caller(&s, ctx), d.id, &name).await;
        let d = s.current(d.id).unwrap_or(d);
        match found {
            Ok(i) => ok::<_, LOOKUP3resfail>(Nfs3Result::Ok(LOOKUP3resok {
                object: handle(&s, &i),
                obj_attributes: Self::attr_of(&s, &i),
                dir_attributes: Self::attr_of(&s, &d),
            })),
            Err(e) => ok::<LOOKUP3resok, _>(Nfs3Result::Err((
                nfs_status(&e),
                LOOKUP3resfail {
                    dir_attributes: Self::attr_of(&s, &d),
                },
            ))),
        }
    }

    async fn access(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let fh = args!(c.nfs_fh3());
        let want = args!(c.u32());
        let (s, i) = match self.resolve(ctx, &fh) {
            Ok(v) => v,
            Err(st) => return ok::<ACCESS3resok, _>(Nfs3Result::Err((st, ACCESS3resfail::default()))),
        };
        match s.access(&caller(&s, ctx), i.id).await {
            Ok((i, rwx)) => {
                let mut granted = 0;
                if rwx & READ != 0 {
                    granted |= ACCESS3_READ;
                }
                if rwx & WRITE != 0 {
                    granted |= ACCESS3_MODIFY | ACCESS3_EXTEND;
                    if i.kind == Kind::Dir {
                        granted |= ACCESS3_DELETE;
                    }
                }
                if rwx & EXEC != 0 {
                    granted |= if i.kind == Kind::Dir {
                        ACCESS3_LOOKUP
                    } else {
                        ACCESS3_EXECUTE
                    };
                }
                ok::<_, ACCESS3resfail>(Nfs3Result::Ok(ACCESS3resok {
                    obj_attributes: Self::attr_of(&s, &i),
                    access: granted & want,
                }))
            }
            Err(e) => ok::<ACCESS3resok, _>(Nfs3Result::Err((nfs_status(&e), ACCESS3resfail::default()))),
        }
    }

    async fn readlink(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let fh = args!(c.nfs_fh3());
        let (s, i) = match self.resolve(ctx, &fh) {
            Ok(v) => v,
            Err(st) => return ok::<READLINK3resok, _>(Nfs3Result::Err((st, READLINK3resfail::default()))),
        };
        match s.readlink(&caller(&s, ctx), i.id).await {
            Ok(target) => ok::<_, READLINK3resfail>(Nfs3Result::Ok(READLINK3resok {
                symlink_attributes: Self::attr_of(&s, &i),
                data: nfspath3(Opaque::owned(target)),
            })),
            Err(e) => ok::<READLINK3resok, _>(Nfs3Result::Err((
                nfs_status(&e),
                READLINK3resfail {
                    symlink_attributes: Self::attr_of(&s, &i),
                },
            ))),
        }
    }

    async fn read(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let fh = args!(c.nfs_fh3());
        let offset = args!(c.u64());
        let count = args!(c.u32()).min(MAX_IO);
        let (s, i) = match self.resolve(ctx, &fh) {
            Ok(v) => v,
            Err(st) => return ok::<READ3resok, _>(Nfs3Result::Err((st, READ3resfail::default()))),
        };
        match s.read(&caller(&s, ctx), &i, offset, count).await {
            Ok(r) => {
                self.count_read(&s, r.data.len());
                let results = READ3resok {
                    file_attributes: Self::attr_of(&s, &r.attr),
                    count: r.data.len() as u32,
                    eof: r.eof,
                    data: Opaque::borrowed(&[]),
                };
                read_reply(results, r.data)
            }
            Err(e) => ok::<READ3resok, _>(Nfs3Result::Err((
                nfs_status(&e),
                READ3resfail {
                    file_attributes: Self::attr_of(&s, &i),
                },
            ))),
        }
    }

    async fn write(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let a = args!(c.write3args());
        if (a.count as usize) > a.data.len() {
            return ProcReply::GarbageArgs;
        }
        let data: Bytes = a.data.slice(..a.count as usize);
        let (s, i) = match self.resolve(ctx, &a.file) {
            Ok(v) => v,
            Err(st) => return ok::<WRITE3resok, _>(Nfs3Result::Err((st, WRITE3resfail::default()))),
        };
        let sync = a.stable != stable_how::UNSTABLE;
        let result = if data.len() > MAX_IO as usize {
            Err(ShareError::Invalid)
        } else {
            s.write(&caller(&s, ctx), i.id, a.offset, data.clone(), sync)
                .await
        };
        match result {
            Ok((before, after)) => {
                self.count_write(&s, data.len());
                ok::<_, WRITE3resfail>(Nfs3Result::Ok(WRITE3resok {
                    file_wcc: wcc_data {
                        before: pre(before),
                        after: Self::attr_of(&s, &after),
                    },
                    count: data.len() as u32,
                    committed: if sync {
                        stable_how::FILE_SYNC
                    } else {
                        stable_how::UNSTABLE
                    },
                    verf: self.write_verifier,
                }))
            }
            Err(e) => ok::<WRITE3resok, _>(Nfs3Result::Err((
                nfs_status(&e),
                WRITE3resfail {
                    file_wcc: Self::current_wcc(&s, i.id),
                },
            ))),
        }
    }

    /// The three-field success of CREATE, MKDIR and SYMLINK.
    fn made(s: &Share, (i, change): (Inode, DirChange)) -> (post_op_fh3, post_op_attr, wcc_data) {
        (
            Nfs3Option::Some(handle(s, &i)),
            Self::attr_of(s, &i),
            dir_wcc(&s.cache, &change),
        )
    }

    fn dir_fail_wcc(&self, ctx: &CallContext, dir: &nfs_fh3) -> wcc_data {
        match self.resolve(ctx, dir) {
            Ok((s, d)) => wcc_data {
                before: Nfs3Option::None,
                after: Self::attr_of(&s, &d),
            },
            Err(_) => wcc_data::default(),
        }
    }

    async fn create(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let (dir, name) = args!(c.diropargs3());
        let how = match args!(c.u32()) {
            0 => CreateMode::Unchecked(to_setattr(&args!(c.sattr3()))),
            1 => CreateMode::Guarded(to_setattr(&args!(c.sattr3()))),
            2 => CreateMode::Exclusive(args!(c.createverf3()).0),
            _ => return ProcReply::GarbageArgs,
        };
        let made = async {
            let (s, d) = self.resolve(ctx, &dir)?;
            let r = s.create(&caller(&s, ctx), d.id, &name, how).await;
            r.map(|m| Self::made(&s, m)).map_err(|e| nfs_status(&e))
        };
        match made.await {
            Ok((obj, obj_attributes, dir_wcc)) => ok::<_, CREATE3resfail>(Nfs3Result::Ok(CREATE3resok {
                obj,
                obj_attributes,
                dir_wcc,
            })),
            Err(st) => ok::<CREATE3resok, _>(Nfs3Result::Err((
                st,
                CREATE3resfail {
                    dir_wcc: self.dir_fail_wcc(ctx, &dir),
                },
            ))),
        }
    }

    async fn mkdir(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let (dir, name) = args!(c.diropargs3());
        let set = to_setattr(&args!(c.sattr3()));
        let made = async {
            let (s, d) = self.resolve(ctx, &dir)?;
            let r = s.mkdir(&caller(&s, ctx), d.id, &name, set).await;
            r.map(|m| Self::made(&s, m)).map_err(|e| nfs_status(&e))
        };
        match made.await {
            Ok((obj, obj_attributes, dir_wcc)) => ok::<_, MKDIR3resfail>(Nfs3Result::Ok(MKDIR3resok {
                obj,
                obj_attributes,
                dir_wcc,
            })),
            Err(st) => ok::<MKDIR3resok, _>(Nfs3Result::Err((
                st,
                MKDIR3resfail {
                    dir_wcc: self.dir_fail_wcc(ctx, &dir),
                },
            ))),
        }
    }

    async fn symlink(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let (dir, name) = args!(c.diropargs3());
        let set = to_setattr(&args!(c.sattr3()));
        let target = args!(c.nfspath3());
        let made = async {
            let (s, d) = self.resolve(ctx, &dir)?;
            let r = s
                .symlink(&caller(&s, ctx), d.id, &name, target.to_vec(), set)
                .await;
            r.map(|m| Self::made(&s, m)).map_err(|e| nfs_status(&e))
        };
        match made.await {
            Ok((obj, obj_attributes, dir_wcc)) => ok::<_, SYMLINK3resfail>(Nfs3Result::Ok(SYMLINK3resok {
                obj,
                obj_attributes,
                dir_wcc,
            })),
            Err(st) => ok::<SYMLINK3resok, _>(Nfs3Result::Err((
                st,
                SYMLINK3resfail {
                    dir_wcc: self.dir_fail_wcc(ctx, &dir),
                },
            ))),
        }
    }

    /// FIFOs and sockets are kept (zero-byte objects carrying their type); device
    /// nodes are refused as `unsupported_node` says.
    async fn mknod(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let (dir, name) = args!(c.diropargs3());
        let ftype = args!(c.u32());
        let kind = match ftype {
            t if t == ftype3::NF3FIFO as u32 => Some(Kind::Fifo),
            t if t == ftype3::NF3SOCK as u32 => Some(Kind::Socket),
            _ => None,
        };
        // The attributes follow for a FIFO or socket (a device is refused unread).
        let set = match kind {
            Some(_) => to_setattr(&args!(c.sattr3())),
            None => SetAttr::default(),
        };
        let made = async {
            let (s, d) = self.resolve(ctx, &dir)?;
            let Some(kind) = kind else {
                // A regular file, directory or symlink has its own procedure.
                if ftype != ftype3::NF3CHR as u32 && ftype != ftype3::NF3BLK as u32 {
                    return Err(nfsstat3::NFS3ERR_BADTYPE);
                }
                return Err(s
                    .unsupported_node()
                    .map_or_else(|e| nfs_status(&e), |()| nfsstat3::NFS3ERR_PERM));
            };
            let r = s.mknod(&caller(&s, ctx), d.id, &name, kind, set).await;
            r.map(|m| Self::made(&s, m)).map_err(|e| nfs_status(&e))
        };
        match made.await {
            Ok((obj, obj_attributes, dir_wcc)) => ok::<_, MKNOD3resfail>(Nfs3Result::Ok(MKNOD3resok {
                obj,
                obj_attributes,
                dir_wcc,
            })),
            Err(st) => ok::<MKNOD3resok, _>(Nfs3Result::Err((
                st,
                MKNOD3resfail {
                    dir_wcc: self.dir_fail_wcc(ctx, &dir),
                },
            ))),
        }
    }

    async fn remove_or_rmdir(&self, ctx: &CallContext, c: &mut XdrCursor, rmdir: bool) -> ProcReply {
        let (dir, name) = args!(c.diropargs3());
        let result = async {
            let (s, d) = self.resolve(ctx, &dir)?;
            let who = caller(&s, ctx);
            let r = if rmdir {
                s.rmdir(&who, d.id, &name).await
            } else {
                s.remove(&who, d.id, &name).await
            };
            r.map(|r| dir_wcc(&s.cache, &r)).map_err(|e| nfs_status(&e))
        }
        .await;
        match (result, rmdir) {
            (Ok(dir_wcc), false) => ok::<_, REMOVE3resfail>(Nfs3Result::Ok(REMOVE3resok { dir_wcc })),
            (Ok(dir_wcc), true) => ok::<_, RMDIR3resfail>(Nfs3Result::Ok(RMDIR3resok { dir_wcc })),
            (Err(st), false) => ok::<REMOVE3resok, _>(Nfs3Result::Err((
                st,
                REMOVE3resfail {
                    dir_wcc: self.dir_fail_wcc(ctx, &dir),
                },
            ))),
            (Err(st), true) => ok::<RMDIR3resok, _>(Nfs3Result::Err((
                st,
                RMDIR3resfail {
                    dir_wcc: self.dir_fail_wcc(ctx, &dir),
                },
            ))),
        }
    }

    async fn rename(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let (from_dir, from_name) = args!(c.diropargs3());
        let (to_dir, to_name) = args!(c.diropargs3());
        let result = async {
            let (s, fd) = self.resolve(ctx, &from_dir)?;
            let (s2, td) = self.resolve(ctx, &to_dir)?;
            let r = if Arc::ptr_eq(&s, &s2) {
                s.rename(&caller(&s, ctx), fd.id, &from_name, td.id, &to_name)
                    .await
            } else {
                Err(ShareError::CrossShare)
            };
            let (a, b) = r.map_err(|e| nfs_status(&e))?;
            Ok((dir_wcc(&s.cache, &a), dir_wcc(&s.cache, &b)))
        }
        .await;
        match result {
            Ok((fromdir_wcc, todir_wcc)) => ok::<_, RENAME3resfail>(Nfs3Result::Ok(RENAME3resok {
                fromdir_wcc,
                todir_wcc,
            })),
            Err(st) => ok::<RENAME3resok, _>(Nfs3Result::Err((
                st,
                RENAME3resfail {
                    fromdir_wcc: self.dir_fail_wcc(ctx, &from_dir),
                    todir_wcc: self.dir_fail_wcc(ctx, &to_dir),
                },
            ))),
        }
    }

    async fn link(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        // One file is one object: a second name would be a second object that
        // diverges on the next write, so hard links are not offered.
        let file = args!(c.nfs_fh3());
        let (dir, _name) = args!(c.diropargs3());
        let (st, attrs) = match self.resolve(ctx, &file) {
            Ok((s, i)) => (
                s.unsupported_node()
                    .err()
                    .map_or(nfsstat3::NFS3ERR_PERM, |e| nfs_status(&e)),
                Self::attr_of(&s, &i),
            ),
            Err(st) => (st, Nfs3Option::None),
        };
        ok::<LINK3resok, _>(Nfs3Result::Err((
            st,
            LINK3resfail {
                file_attributes: attrs,
                linkdir_wcc: self.dir_fail_wcc(ctx, &dir),
            },
        )))
    }

    fn cookie_verifier(share: &Share) -> cookieverf3 {
        // Cookies are per-directory sequence numbers that never move, so one verifier
        // per share is enough: it only changes if the share's cache is recreated.
        let mut v = [0u8; 8];
        v[4..].copy_from_slice(&share.cache.share_id().to_be_bytes());
        cookieverf3(v)
    }

    fn check_verifier(share: &Share, cookie: u64, verf: &cookieverf3) -> Res<()> {
        if cookie != 0 && verf.0 != [0; 8] && *verf != Self::cookie_verifier(share) {
            return Err(nfsstat3::NFS3ERR_BAD_COOKIE);
        }
        Ok(())
    }

    async fn readdir(&self, ctx: &CallContext, c: &mut XdrCursor, plus: bool) -> ProcReply {
        let dir = args!(c.nfs_fh3());
        let cookie = args!(c.u64());
        let verf = args!(c.cookieverf3());
        let (dircount, maxcount) = if plus {
            (args!(c.u32()), args!(c.u32()))
        } else {
            (0, args!(c.u32()))
        };
        let (s, d) = match self.resolve(ctx, &dir) {
            Ok(v) => v,
            Err(st) => return Self::readdir_fail(plus, st, Nfs3Option::None),
        };
        if let Err(st) = Self::check_verifier(&s, cookie, &verf) {
            return Self::readdir_fail(plus, st, Self::attr_of(&s, &d));
        }
        // Reply overhead: status, dir attributes, verifier, list end and eof.
        let budget = (maxcount.min(MAX_IO) as usize).saturating_sub(128);
        let per_entry = if plus { 220 } else { 40 };
        let mut want = (budget / per_entry).clamp(2, 4096);
        if plus && dircount > 0 {
            // No more entries than dircount lets through (24 bytes and a name of at
            // least 4 each): the rest would be read, and their attributes fetched
            // from the store, only to be dropped from this reply.
            want = want.min(dircount as usize / 28 + 1);
        }
        let page = match s.readdir(&caller(&s, ctx), d.id, cookie, want, plus).await {
            Ok(p) => p,
            Err(e) => return Self::readdir_fail(plus, nfs_status(&e), Self::current_attr(&s, d.id)),
        };
        let total = page.listing.entries.len();
        let dir_attributes = Self::attr_of(&s, &page.dir);
        let cookieverf = Self::cookie_verifier(&s);
        if plus {
            let mut list = BoundedList::new(budget);
            // dircount bounds the name/cookie part alone (RFC 1813); honour the smaller.
            let mut dir_bytes = 0usize;
            let mut pushed = 0;
            for e in page.listing.entries {
                dir_bytes += 24 + e.name.len().div_ceil(4) * 4;
                if dircount > 0 && dir_bytes > dircount as usize && pushed > 0 {
                    break;
                }
                // Handles only for a caller who may search the directory: a handle
                // would reach entries that LOOKUP refuses (knfsd omits them too; the
                // client falls back to LOOKUP and gets ACCES).
                let described = page.described && !e.attr.meta_pending;
                let entry = entryplus3 {
                    fileid: e.attr.id,
                    name: filename3(Opaque::owned(e.name)),
                    cookie: e.cookie,
                    name_attributes: if described {
                        Nfs3Option::Some(fattr(&s.cache, &e.attr))
                    } else {
                        Nfs3Option::None
                    },
                    name_handle: if described {
                        Nfs3Option::Some(handle(&s, &e.attr))
                    } else {
                        Nfs3Option::None
                    },
                };
                if list.try_push(entry).is_err() {
                    break;
                }
                pushed += 1;
            }
            if pushed == 0 && total > 0 {
                return Self::readdir_fail(plus, nfsstat3::NFS3ERR_TOOSMALL, dir_attributes);
            }
            let eof = page.listing.eof && pushed == total;
            ok::<_, READDIRPLUS3resfail>(Nfs3Result::Ok(READDIRPLUS3resok {
                dir_attributes,
                cookieverf,
                reply: dirlistplus3 {
                    entries: list.into_inner(),
                    eof,
                },
            }))
        } else {
            let mut list = BoundedList::new(budget);
            let mut pushed = 0;
            for e in page.listing.entries {
                let entry = entry3 {
                    fileid: e.attr.id,
                    name: filename3(Opaque::owned(e.name)),
                    cookie: e.cookie,
                };
                if list.try_push(entry).is_err() {
                    break;
                }
                pushed += 1;
            }
            if pushed == 0 && total > 0 {
                return Self::readdir_fail(plus, nfsstat3::NFS3ERR_TOOSMALL, dir_attributes);
            }
            let eof = page.listing.eof && pushed == total;
            ok::<_, READDIR3resfail>(Nfs3Result::Ok(READDIR3resok {
                dir_attributes,
                cookieverf,
                reply: dirlist3 {
                    entries: list.into_inner(),
                    eof,
                },
            }))
        }
    }

    fn readdir_fail(plus: bool, st: nfsstat3, dir_attributes: post_op_attr) -> ProcReply {
        if plus {
            ok::<READDIRPLUS3resok, _>(Nfs3Result::Err((st, READDIRPLUS3resfail { dir_attributes })))
        } else {
            ok::<READDIR3resok, _>(Nfs3Result::Err((st, READDIR3resfail { dir_attributes })))
        }
    }

    async fn fsstat(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let fh = args!(c.nfs_fh3());
        let (s, i) = match self.resolve(ctx, &fh) {
            Ok(v) => v,
            Err(st) => return ok::<FSSTAT3resok, _>(Nfs3Result::Err((st, FSSTAT3resfail::default()))),
        };
        match s.fsstat() {
            Ok(f) => ok::<_, FSSTAT3resfail>(Nfs3Result::Ok(FSSTAT3resok {
                obj_attributes: Self::attr_of(&s, &i),
                tbytes: f.total_bytes,
                fbytes: f.free_bytes,
                abytes: if s.read_only { 0 } else { f.avail_bytes },
                tfiles: f.total_files,
                ffiles: f.free_files,
                afiles: if s.read_only { 0 } else { f.free_files },
                invarsec: 0,
            })),
            Err(e) => ok::<FSSTAT3resok, _>(Nfs3Result::Err((
                nfs_status(&e),
                FSSTAT3resfail {
                    obj_attributes: Self::attr_of(&s, &i),
                },
            ))),
        }
    }

    async fn fsinfo(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let fh = args!(c.nfs_fh3());
        match self.resolve(ctx, &fh) {
            Ok((s, i)) => ok::<_, FSINFO3resfail>(Nfs3Result::Ok(FSINFO3resok {
                obj_attributes: Self::attr_of(&s, &i),
                rtmax: MAX_IO,
                rtpref: MAX_IO,
                rtmult: 4096,
                wtmax: MAX_IO,
                wtpref: MAX_IO,
                wtmult: 4096,
                dtpref: 64 * 1024,
                maxfilesize: bucketgate_cache::MAX_FILE_SIZE,
                time_delta: nfstime3 {
                    seconds: 0,
                    nseconds: 1,
                },
                properties: FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
            })),
            Err(st) => ok::<FSINFO3resok, _>(Nfs3Result::Err((st, FSINFO3resfail::default()))),
        }
    }

    async fn pathconf(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let fh = args!(c.nfs_fh3());
        match self.resolve(ctx, &fh) {
            Ok((s, i)) => ok::<_, PATHCONF3resfail>(Nfs3Result::Ok(PATHCONF3resok {
                obj_attributes: Self::attr_of(&s, &i),
                linkmax: 1,
                name_max: NAME_MAX as u32,
                no_trunc: true,
                chown_restricted: true,
                case_insensitive: false,
                case_preserving: true,
            })),
            Err(st) => ok::<PATHCONF3resok, _>(Nfs3Result::Err((st, PATHCONF3resfail::default()))),
        }
    }

    async fn commit(&self, ctx: &CallContext, c: &mut XdrCursor) -> ProcReply {
        let fh = args!(c.nfs_fh3());
        let _offset = args!(c.u64());
        let _count = args!(c.u32());
        let (s, i) = match self.resolve(ctx, &fh) {
            Ok(v) => v,
            Err(st) => {
                return ok::<COMMIT3resok, _>(Nfs3Result::Err((
                    st,
                    COMMIT3resfail {
                        file_wcc: wcc_data::default(),
                    },
                )));
            }
        };
        match s.commit(i.id).await {
            Ok(after) => ok::<_, COMMIT3resfail>(Nfs3Result::Ok(COMMIT3resok {
                file_wcc: wcc_data {
                    before: pre(WccAttr::from(&i)),
                    after: Self::attr_of(&s, &after),
                },
                verf: self.write_verifier,
            })),
            Err(e) => ok::<COMMIT3resok, _>(Nfs3Result::Err((
                nfs_status(&e),
                COMMIT3resfail {
                    file_wcc: Self::current_wcc(&s, i.id),
                },
            ))),
        }
    }
}

const PROC_NAMES: [&str; 22] = [
    "NULL",
    "GETATTR",
    "SETATTR",
    "LOOKUP",
    "ACCESS",
    "READLINK",
    "READ",
    "WRITE",
    "CREATE",
    "MKDIR",
    "SYMLINK",
    "MKNOD",
    "REMOVE",
    "RMDIR",
    "RENAME",
    "LINK",
    "READDIR",
    "READDIRPLUS",
    "FSSTAT",
    "FSINFO",
    "PATHCONF",
    "COMMIT",
];

/// The status label of a reply: "OK", an NFS3ERR_* name, or the RPC-level outcome.
fn status_label(proc: u32, reply: &ProcReply) -> String {
    match reply {
        ProcReply::Success(body) | ProcReply::SuccessWithData(body, _) if proc == 0 || body.len() < 4 => {
            "OK".into()
        }
        ProcReply::Success(body) | ProcReply::SuccessWithData(body, _) => {
            let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            if code == 0 {
                "OK".into()
            } else {
                // A 4-byte enum: safe to decode with nfs3_types' own Unpack.
                match <nfsstat3 as nfs3_types::xdr_codec::Unpack>::unpack(&mut &body[..4]) {
                    Ok((st, _)) => st.to_string(),
                    Err(_) => format!("NFS3ERR_{code}"),
                }
            }
        }
        ProcReply::ProcUnavail => "PROC_UNAVAIL".into(),
        ProcReply::GarbageArgs => "GARBAGE_ARGS".into(),
        ProcReply::SystemErr => "SYSTEM_ERR".into(),
    }
}

impl NfsService {
    fn count_write(&self, share: &Share, n: usize) {
        if let Some(m) = &self.metrics {
            m.nfs_write_bytes_total
                .with_label_values(&[&share.name])
                .inc_by(n as u64);
        }
    }

    fn count_read(&self, share: &Share, n: usize) {
        if let Some(m) = &self.metrics {
            m.nfs_read_bytes_total
                .with_label_values(&[&share.name])
                .inc_by(n as u64);
        }
    }
}

impl Nfs3Program for NfsService {
    async fn call(&self, ctx: CallContext, proc: u32, args: Bytes) -> ProcReply {
        let started = std::time::Instant::now();
        let span = tracing::debug_span!(
            "nfs",
            xid = ctx.xid,
            proc = PROC_NAMES.get(proc as usize).copied().unwrap_or("?"),
            client = %ctx.client,
            fileid = tracing::field::Empty,
        );
        record_file_id(&span, &args);
        let reply = tracing::Instrument::instrument(self.dispatch(ctx, proc, args), span.clone()).await;
        let traced = !span.is_disabled();
        if self.metrics.is_some() || traced {
            let status = status_label(proc, &reply);
            if traced {
                let elapsed_us = started.elapsed().as_micros() as u64;
                span.in_scope(|| tracing::debug!(status = %status, elapsed_us, "nfs call"));
            }
            if let Some(m) = &self.metrics {
                let name = PROC_NAMES.get(proc as usize).copied().unwrap_or("UNKNOWN");
                m.observe_nfs_call(name, &status, started.elapsed());
            }
        }
        reply
    }
}

impl NfsService {
    async fn dispatch(&self, ctx: CallContext, proc: u32, args: Bytes) -> ProcReply {
        let mut c = XdrCursor::new(args);
        let c = &mut c;
        let ctx = &ctx;
        match proc {
            0 => ProcReply::Success(Vec::new()),
            1 => self.getattr(ctx, c).await,
            2 => self.setattr(ctx, c).await,
            3 => self.lookup(ctx, c).await,
            4 => self.access(ctx, c).await,
            5 => self.readlink(ctx, c).await,
            6 => self.read(ctx, c).await,
            7 => self.write(ctx, c).await,
            8 => self.create(ctx, c).await,
            9 => self.mkdir(ctx, c).await,
            10 => self.symlink(ctx, c).await,
            11 => self.mknod(ctx, c).await,
            12 => self.remove_or_rmdir(ctx, c, false).await,
            13 => self.remove_or_rmdir(ctx, c, true).await,
            14 => self.rename(ctx, c).await,
            15 => self.link(ctx, c).await,
            16 => self.readdir(ctx, c, false).await,
            17 => self.readdir(ctx, c, true).await,
            18 => self.fsstat(ctx, c).await,
            19 => self.fsinfo(ctx, c).await,
            20 => self.pathconf(ctx, c).await,
            21 => self.commit(ctx, c).await,
            _ => ProcReply::ProcUnavail,
        }
    }
}

impl Exports for NfsService {
    fn exports(&self, client: IpAddr) -> Vec<ExportEntry> {
        self.shares
            .iter()
            .filter(|s| (s.allows)(client))
            .map(|s| ExportEntry {
                path: s.export_path.clone(),
                allowed_clients: s.allowed_clients.clone(),
            })
            .collect()
    }

    fn allows(&self, client: IpAddr) -> bool {
        self.shares.iter().any(|s| (s.allows)(client))
    }

    /// Mounts a share or any directory inside it (`/data` or `/data/projects/x`), as
    /// knfsd allows; libnfs's `nfs-ls nfs://host//data/dir` mounts the directory itself.
    fn mount(&self, path: &[u8], client: IpAddr) -> Result<Vec<u8>, nfs3_types::mount::mountstat3> {
        use nfs3_types::mount::mountstat3;
        let path = std::str::from_utf8(path).map_err(|_| mountstat3::MNT3ERR_NOENT)?;
        let trimmed = path.trim_matches('/');
        let (name, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        let share = self
            .shares
            .iter()
            .find(|s| s.name == name)
            .ok_or(mountstat3::MNT3ERR_NOENT)?;
        if !(share.allows)(client) {
            return Err(mountstat3::MNT3ERR_ACCES);
        }
        let dir = share.dir_at(rest).map_err(|e| match e {
            ShareError::NotFound => mountstat3::MNT3ERR_NOENT,
            ShareError::NotDir => mountstat3::MNT3ERR_NOTDIR,
            _ => mountstat3::MNT3ERR_SERVERFAULT,
        })?;
        Ok(Handle {
            share_id: share.cache.share_id(),
            file_id: dir.id,
            generation: dir.generation,
        }
        .encode(share.cache.handle_key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The READ reply sent in parts is, byte for byte, the reply encoded whole.
    #[test]
    fn a_read_reply_in_parts_equals_the_whole_encoding() {
        for len in [0usize, 1, 5, 8, 1 << 20] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let results = |data| READ3resok {
                file_attributes: Nfs3Option::None,
                count: len as u32,
                eof: true,
                data,
            };
            let whole = encode(&Nfs3Result::<_, READ3resfail>::Ok(results(Opaque::borrowed(
                &data,
            ))));
            let ProcReply::SuccessWithData(head, tail) =
                read_reply(results(Opaque::borrowed(&[])), data.clone())
            else {
                panic!("READ data kept apart");
            };
            assert_eq!([head, tail.to_vec()].concat(), whole, "{len} bytes");
        }
    }
}
