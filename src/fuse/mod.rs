//! A FUSE mount of a share on the gateway itself (the `fuser` crate, its pure-Rust
//! mount: no libfuse), for backup agents and scripts on the appliance and for Samba.
//! Every call goes to the share layer (`crate::share`), as NFS calls do; this module
//! only translates.
//!
//! The caller is the FUSE request's uid and gid with the supplementary groups of the
//! calling thread (`/proc/<tid>/status`), and the mount uses `default_permissions`,
//! so the kernel checks mode bits too: the two checks see the same credentials. Local
//! callers are not squashed: root on the appliance can read the cache disk anyway,
//! and a backup agent running as root must read every file.
//!
//! What NFS clients change, and what a listing or a HEAD finds changed in the store,
//! reaches the kernel as invalidations of its attributes, names and pages
//! (`invalidate`), so the next call sees it, through open files too. The kernel may
//! keep attributes and names for a second ([`TTL`]): the bound for a change no
//! notice covers (a conflict copy the uploader makes, a notice dropped because its
//! queue was full). Cached pages also go when a file's mtime or size moved
//! (FUSE_AUTO_INVAL_DATA).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bucketgate_cache::{Cache, CreateMode, Inode, Kind, SetAttr, SetTime};
use bytes::Bytes;
use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    SessionACL, TimeOrNow, WriteFlags,
};

use crate::share::{Caller, EXEC, Origin, READ, Share, ShareError, WRITE};

mod errno;
mod invalidate;
mod opens;

use opens::Opens;

/// How long the kernel may keep attributes and names (see module doc): as short as
/// the Linux NFS client's shortest attribute cache, long enough that `ls -l` or a
/// build does not ask twice for each file.
const TTL: Duration = Duration::from_secs(1);
/// Entries asked of the share per READDIR (the kernel's buffer holds about 100).
const DIR_PAGE: usize = 256;
/// A writer held back at the dirty limit waits this long in all before it gets an
/// error: local programs do not retry EAGAIN on a regular file.
const WRITE_PATIENCE: Duration = Duration::from_secs(60);

/// A share mounted with FUSE; unmounted when dropped.
pub struct FuseMount {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
    /// Held (shared) by every call being served; taken exclusively at unmount.
    calls: Arc<tokio::sync::RwLock<()>>,
    /// Its notices go to this mount's kernel until it is unmounted.
    cache: Arc<bucketgate_cache::Cache>,
}

impl FuseMount {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts, then waits for the calls already taken to finish (they hold the
    /// share's cache open).
    pub async fn unmount(mut self) {
        self.cache.watch(None);
        let (session, path) = (self.session.take(), self.path.clone());
        let _ = tokio::task::spawn_blocking(move || umount(session, &path)).await;
        drop(self.calls.write().await);
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.cache.watch(None);
        umount(self.session.take(), &self.path);
    }
}

fn umount(session: Option<fuser::BackgroundSession>, path: &Path) {
    if let Some(s) = session
        && let Err(e) = s.umount_and_join()
    {
        tracing::warn!(path = %path.display(), error = %e, "unmounting the FUSE mount");
    }
}

/// Mounts `share` at `path`, serving its calls on `rt`. A mount point left by a
/// gateway that died (its FUSE connection gone: ENOTCONN) is unmounted first.
pub fn mount(share: Arc<Share>, path: &Path, rt: tokio::runtime::Handle) -> anyhow::Result<FuseMount> {
    reclaim_stale(path)?;
    std::fs::create_dir_all(path)
        .with_context(|| format!("creating the FUSE mount point {}", path.display()))?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("bucketgate:{}", share.name)),
        MountOption::Subtype("bucketgate".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        if share.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(2);
    let calls = Arc::default();
    let undelivered = Arc::<invalidate::Undelivered>::default();
    let (cache, name) = (share.cache.clone(), share.name.clone());
    let fs = ShareFs {
        share,
        rt,
        calls: Arc::clone(&calls),
        opens: Arc::default(),
        undelivered: Arc::clone(&undelivered),
    };
    let session = fuser::spawn_mount(fs, path, &config)
        .with_context(|| format!("mounting the share with FUSE at {}", path.display()))?;
    invalidate::start(&cache, session.notifier(), &name, undelivered)
        .context("starting the FUSE invalidation thread")?;
    widen_read_ahead(path);
    Ok(FuseMount {
        session: Some(session),
        path: path.to_owned(),
        calls,
        cache,
    })
}

/// The kernel reads ahead 128 KiB on a FUSE mount by default, so a sequential reader
/// (smbd serving an SMB client) sends the share eight READs per MiB. The mount's
/// backing device takes a larger window from sysfs; without it reads still work.
/// Anything but a FUSE mount at `path` is left alone.
pub(crate) fn widen_read_ahead(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    const READ_AHEAD_KB: u32 = 4096;
    const FUSE_SUPER_MAGIC: libc::c_long = 0x6573_5546;
    let is_fuse = std::ffi::CString::new(path.as_os_str().as_bytes())
        .ok()
        .and_then(|c| statfs(&c).ok())
        .is_some_and(|s| s.f_type as libc::c_long == FUSE_SUPER_MAGIC);
    if !is_fuse {
        return;
    }
    let Ok(dev) = std::fs::metadata(path).map(|m| m.dev()) else {
        return;
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&knob, READ_AHEAD_KB.to_string()) {
        tracing::debug!(knob, error = %e, "could not widen the FUSE mount's read-ahead");
    }
}

/// A mount point whose FUSE server is gone answers ENOTCONN: detach it so the new
/// mount can take its place (what `fusermount -u -z` would do).
fn reclaim_stale(path: &Path) -> anyhow::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    match statfs(&c) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(path = %path.display(), "unmounting a FUSE mount left by a gateway that stopped");
            // SAFETY: a valid NUL-terminated path; umount2 does not keep it.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                let e = std::io::Error::last_os_error();
                anyhow::bail!(
                    "unmounting the stale FUSE mount {}: {e} (try: fusermount -u {0})",
                    path.display()
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// statfs(2), which the kernel always asks the FUSE server (a stat may be answered
/// from attributes it still holds).
fn statfs(path: &std::ffi::CStr) -> std::io::Result<libc::statfs> {
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid NUL-terminated path and a buffer of the right type.
    if unsafe { libc::statfs(path.as_ptr(), buf.as_mut_ptr()) } == 0 {
        // SAFETY: statfs filled it.
        Ok(unsafe { buf.assume_init() })
    } else {
        Err(std::io::Error::last_os_error())
    }
}

struct ShareFs {
    share: Arc<Share>,
    rt: tokio::runtime::Handle,
    calls: Arc<tokio::sync::RwLock<()>>,
    opens: Arc<Opens>,
    undelivered: Arc<invalidate::Undelivered>,
}

/// The largest file not all in the cache that is fetched to stay readable through
/// descriptors open when it is removed: a bigger one would make `rm` wait for it.
const HOLD_FETCH_MAX: u64 = 64 << 20;

/// Keeps the data of the file `name` in `dir` names for its open descriptors, when
/// it has some, before a call removes or replaces it; `None` when there is nothing
/// to keep (or it cannot be fetched: the descriptors then answer ESTALE).
async fn hold_if_open(
    s: &Share,
    opens: &Opens,
    dir: u64,
    name: &[u8],
) -> Option<(u64, (Inode, Arc<std::fs::File>))> {
    let i = s
        .named(dir, name)
        .filter(|i| i.kind == Kind::File && opens.is_open(i.id))?;
    if i.partial && i.size > HOLD_FETCH_MAX {
        tracing::info!(
            file_id = i.id,
            size = i.size,
            "a big file removed while open is not fetched for its descriptors (they answer ESTALE)"
        );
        return None;
    }
    match s.hold(i.id).await {
        Ok(held) => Some((i.id, held)),
        Err(e) => {
            tracing::info!(file_id = i.id, error = %e, "a file removed while open could not be kept for its descriptors");
            None
        }
    }
}

/// The calling process and its supplementary groups, from `/proc/<tid>/status`
/// (FUSE carries only uid, gid and the thread id). The thread id and no groups if
/// it has gone.
fn process_of(tid: u32) -> (u32, Vec<u32>) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return (tid, Vec::new());
    };
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    let pid = field("Tgid:").and_then(|p| p.trim().parse().ok()).unwrap_or(tid);
    let groups = field("Groups:")
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    (pid, groups)
}

fn caller(req: &Request) -> Caller {
    let (pid, groups) = process_of(req.pid());
    Caller {
        who: bucketgate_cache::Caller::new(req.uid(), req.gid(), groups),
        origin: Origin::Fuse { pid },
    }
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn set_time(t: Option<TimeOrNow>) -> SetTime {
    match t {
        None => SetTime::DontChange,
        Some(TimeOrNow::Now) => SetTime::ServerTime,
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::Client(d.as_nanos().min(u64::MAX as u128) as u64),
            Err(_) => SetTime::Client(0),
        },
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

/// A file removed while open: no links left.
fn removed_attr(i: &Inode) -> FileAttr {
    FileAttr {
        nlink: 0,
        ..base_attr(i)
    }
}

/// `cache` answers for the blocks a file takes on its disk.
fn attr(cache: &Cache, i: &Inode) -> FileAttr {
    FileAttr {
        blocks: cache.disk_bytes(i).div_ceil(512),
        ..base_attr(i)
    }
}

fn base_attr(i: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(i.id),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: time(i.atime_ns),
        mtime: time(i.mtime_ns),
        ctime: time(i.ctime_ns),
        crtime: time(i.ctime_ns),
        kind: kind(i.kind),
        perm: (i.mode & 0o7777) as u16,
        nlink: i.nlink(),
        uid: i.uid,
        gid: i.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl ShareFs {
    /// Runs `op` (named `name` in the metrics) on the runtime and answers with
    /// `reply` (or its errno).
    fn serve<T: Send + 'static>(
        &self,
        name: &'static str,
        op: impl Future<Output = Result<T, ShareError>> + Send + 'static,
        reply: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) {
        // Refused once unmounting has begun: the share is closing.
        let Ok(call) = Arc::clone(&self.calls).try_read_owned() else {
            return reply(Err(Errno::EIO));
        };
        let share = self.share.clone();
        self.rt.spawn(async move {
            let _call = call;
            let started = std::time::Instant::now();
            let r = op.await;
            if let Some(m) = &share.metrics {
                let status = r.as_ref().map_or_else(|e| e.code(), |_| "OK");
                m.observe_fuse_call(&share.name, name, status, started.elapsed());
            }
            reply(r.map_err(|e| errno::of(&e)))
        });
    }
}

fn entry(cache: Arc<Cache>, reply: ReplyEntry) -> impl FnOnce(Result<Inode, Errno>) {
    move |r| match r {
        Ok(i) => reply.entry(&TTL, &attr(&cache, &i), Generation(i.generation as u64)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty) -> impl FnOnce(Result<(), Errno>) {
    move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for ShareFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // As NFS offers (FSINFO wtmax): one share write per 1 MiB.
        let _ = config.set_max_write(1 << 20);
        // The kernel drops a file's cached pages when its mtime or size moved (a
        // write over NFS, a newer object found by a refresh), even while it is open.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_AUTO_INVAL_DATA);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (s, who, name) = (self.share.clone(), caller(req), name.as_bytes().to_vec());
        self.serve(
            "lookup",
            async move {
                let i = s.lookup(&who, parent.0, &name).await?;
                s.getattr(i).await
            },
            entry(self.share.cache.clone(), reply),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(r) = self.opens.get(ino.0) {
            return reply.attr(&TTL, &removed_attr(&r.attr));
        }
        let s = self.share.clone();
        let cache = self.share.cache.clone();
        self.serve(
            "getattr",
            async move { s.getattr(s.current(ino.0).ok_or(ShareError::NotFound)?).await },
            move |r| match r {
                Ok(i) => reply.attr(&TTL, &attr(&cache, &i)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Some(r) = self.opens.get(ino.0) {
            // Only its size still matters: nothing of it reaches the store.
            return match size.map(|n| self.opens.set_size(ino.0, &r, n)) {
                Some(Err(e)) => reply.error(Errno::from(e)),
                Some(Ok(a)) => reply.attr(&TTL, &removed_attr(&a)),
                None => reply.attr(&TTL, &removed_attr(&r.attr)),
            };
        }
        let (s, who) = (self.share.clone(), caller(req));
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let cache = self.share.cache.clone();
        self.serve(
            "setattr",
            async move { Ok(s.setattr(&who, ino.0, set, None).await?.1) },
            move |r| match r {
                Ok(i) => reply.attr(&TTL, &attr(&cache, &i)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let (s, who) = (self.share.clone(), caller(req));
        self.serve(
            "readlink",
            async move { s.readlink(&who, ino.0).await },
            move |r| match r {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(e),
            },
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // A regular file is a file and a FIFO or socket a node of its kind; devices
        // have no object to be.
        let node = match mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            _ => {
                let e = self.share.unsupported_node().err().unwrap_or(ShareError::Perm);
                return reply.error(errno::of(&e));
            }
        };
        let (s, who, name) = (self.share.clone(), caller(req), name.as_bytes().to_vec());
        if let Some(k) = node {
            let set = SetAttr {
                mode: Some(mode & 0o7777 & !umask),
                ..SetAttr::default()
            };
            return self.serve(
                "mknod",
                async move { Ok(s.mknod(&who, parent.0, &name, k, set).await?.0) },
                entry(self.share.cache.clone(), reply),
            );
        }
        let how = CreateMode::Guarded(SetAttr {
            mode: Some(mode & 0o7777 & !umask),
            ..SetAttr::default()
        });
        self.serve(
            "mknod",
            async move { Ok(s.create(&who, parent.0, &name, how).await?.0) },
            entry(self.share.cache.clone(), reply),
        );
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let (s, who, name) = (self.share.clone(), caller(req), name.as_bytes().to_vec());
        let set = SetAttr {
            mode: Some(mode & 0o7777 & !umask),
            ..SetAttr::default()
        };
        self.serve(
            "mkdir",
            async move { Ok(s.mkdir(&who, parent.0, &name, set).await?.0) },
            entry(self.share.cache.clone(), reply),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (s, who, name) = (self.share.clone(), caller(req), name.as_bytes().to_vec());
        let opens = self.opens.clone();
        self.serve(
            "unlink",
            async move {
                let held = hold_if_open(&s, &opens, parent.0, &name).await;
                s.remove(&who, parent.0, &name).await?;
                if let Some((id, held)) = held {
                    opens.removed(id, held);
                }
                Ok(())
            },
            empty(reply),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (s, who, name) = (self.share.clone(), caller(req), name.as_bytes().to_vec());
        self.serve(
            "rmdir",
            async move { s.rmdir(&who, parent.0, &name).await.map(|_| ()) },
            empty(reply),
        );
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (s, who) = (self.share.clone(), caller(req));
        let (name, target) = (
            link_name.as_bytes().to_vec(),
            target.as_os_str().as_bytes().to_vec(),
        );
        self.serve(
            "symlink",
            async move {
                Ok(s.symlink(&who, parent.0, &name, target, SetAttr::default())
                    .await?
                    .0)
            },
            entry(self.share.cache.clone(), reply),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // RENAME_NOREPLACE and RENAME_EXCHANGE cannot be made atomic over the store.
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let (s, who) = (self.share.clone(), caller(req));
        let (from, to) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        let opens = self.opens.clone();
        self.serve(
            "rename",
            async move {
                let moving = s.named(parent.0, &from).map(|i| i.id);
                let held = hold_if_open(&s, &opens, newparent.0, &to)
                    .await
                    .filter(|(id, _)| Some(*id) != moving);
                s.rename(&who, parent.0, &from, newparent.0, &to).await?;
                if let Some((id, held)) = held {
                    opens.removed(id, held);
                }
                Ok(())
            },
            empty(reply),
        );
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        // One file is one object: a second name would be a second object.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Every read and write names its file; the count only keeps a file removed
        // while open readable. O_TRUNC arrives as a SETATTR.
        self.opens.opened(ino.0);
        // The kernel keeps a file's cached pages across opens: every change made
        // elsewhere reaches it as an invalidation (invalidate.rs), and a changed mtime
        // or size drops them too (FUSE_AUTO_INVAL_DATA). A warm read (smbd serving a
        // file again) then needs no call here. A file whose invalidation was lost has
        // them dropped now.
        let keep = if self.undelivered.keep_cache(ino.0) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), keep);
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Some(r) = self.opens.get(ino.0) {
            return match r.read(offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(Errno::from(e)),
            };
        }
        let (s, who) = (self.share.clone(), caller(req));
        self.serve(
            "read",
            async move {
                let i = s.current(ino.0).ok_or(ShareError::Stale)?;
                s.read(&who, &i, offset, size).await
            },
            move |r| match r {
                Ok(r) => reply.data(&r.data),
                Err(e) => reply.error(e),
            },
        );
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Some(r) = self.opens.get(ino.0) {
            return match self.opens.write(ino.0, &r, offset, data) {
                Ok(_) => reply.written(data.len() as u32),
                Err(e) => reply.error(Errno::from(e)),
            };
        }
        let (s, who, data) = (self.share.clone(), caller(req), Bytes::copy_from_slice(data));
        let sync = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        self.serve(
            "write",
            async move {
                let started = tokio::time::Instant::now();
                loop {
                    match s.write(&who, ino.0, offset, data.clone(), sync).await {
                        Err(ShareError::TryLater) if started.elapsed() < WRITE_PATIENCE => {}
                        other => return other.map(|_| data.len() as u32),
                    }
                }
            },
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not fsync(): durability is asked for with fsync, as COMMIT.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.opens.released(ino.0);
        self.share.closed(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if self.opens.get(ino.0).is_some() {
            // Removed: nothing of it is kept across a restart.
            return reply.ok();
        }
        let s = self.share.clone();
        self.serve(
            "fsync",
            async move { s.commit(ino.0).await.map(|_| ()) },
            empty(reply),
        );
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let s = self.share.clone();
        self.serve(
            "fsyncdir",
            async move { s.commit(ino.0).await.map(|_| ()) },
            empty(reply),
        );
    }

    fn readdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let (s, who) = (self.share.clone(), caller(req));
        self.serve(
            "readdir",
            async move { s.readdir(&who, ino.0, offset, DIR_PAGE, false).await },
            move |r| match r {
                Ok(page) => {
                    for e in page.listing.entries {
                        let name = OsStr::from_bytes(&e.name);
                        if reply.add(INodeNo(e.attr.id), e.cookie, kind(e.attr.kind), name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.share.fsstat() {
            Ok(f) => {
                let avail = if self.share.read_only { 0 } else { f.avail_bytes };
                reply.statfs(
                    f.total_bytes / 4096,
                    f.free_bytes / 4096,
                    avail / 4096,
                    f.total_files,
                    f.free_files,
                    4096,
                    bucketgate_cache::MAX_NAME_BYTES as u32,
                    4096,
                );
            }
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (s, who) = (self.share.clone(), caller(req));
        let want = mask.bits() as u32 & 0o7;
        self.serve(
            "access",
            async move {
                let (_, rwx) = s.access(&who, ino.0).await?;
                let wanted = [(libc::R_OK, READ), (libc::W_OK, WRITE), (libc::X_OK, EXEC)];
                if wanted
                    .iter()
                    .all(|&(bit, has)| want & bit as u32 == 0 || rwx & has != 0)
                {
                    Ok(())
                } else {
                    Err(ShareError::Access)
                }
            },
            empty(reply),
        );
    }

    // No extended attributes: the object format has nowhere to keep them yet. ENOSYS
    // (fuser's default, without its warning on every mount) makes the kernel answer
    // EOPNOTSUPP itself from then on, so Samba's POSIX ACL lookups stop reaching us.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (s, who, name) = (self.share.clone(), caller(req), name.as_bytes().to_vec());
        let set = SetAttr {
            mode: Some(mode & 0o7777 & !umask),
            ..SetAttr::default()
        };
        let how = if flags & libc::O_EXCL != 0 {
            CreateMode::Guarded(set)
        } else {
            CreateMode::Unchecked(set)
        };
        let opens = self.opens.clone();
        let cache = self.share.cache.clone();
        self.serve(
            "create",
            async move {
                let i = s.create(&who, parent.0, &name, how).await?.0;
                opens.opened(i.id);
                Ok(i)
            },
            move |r| match r {
                Ok(i) => reply.created(
                    &TTL,
                    &attr(&cache, &i),
                    Generation(i.generation as u64),
                    FileHandle(0),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(e),
            },
        );
    }
}
