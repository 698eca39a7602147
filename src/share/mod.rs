//! A share's file system, for every front end: one async method per operation, each
//! taking the [`Caller`] and answering a [`ShareError`]. This layer owns what makes a
//! share more than its cache engine: the listing of a directory from the store
//! before it is read or changed, fetching data and attributes the engine needs and
//! asking again, holding writers back at the dirty limit, the read-only rule, the
//! audit log (`audited`), telling the cache's watcher (a FUSE mount's kernel cache)
//! of changes another front end made, and the one boundary where blocking engine
//! work leaves the async workers. Front ends
//! (`crate::nfs`, `crate::fuse`) only decode their arguments, call a method and
//! encode the answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bucketgate_cache::{
    Cache, CacheError, CreateMode, DirChange, FileId, FsStat, Inode, Kind, Listing, MAX_NAME_BYTES, Notice,
    SetAttr, WccAttr,
};
pub use bucketgate_cache::{EXEC, READ, WRITE};
use bytes::Bytes;

use crate::config::Squash;
use crate::metrics::Metrics;

mod audited;
mod error;
mod readthrough;

use audited::done;
pub use error::{Result, ShareError};
pub use readthrough::{KeyEvent, ReadThrough, Revalidated, read_object_attrs};

use crate::audit::Op;

/// The uid/gid squashed callers become (File Gateway's and knfsd's "nobody").
pub const NOBODY: u32 = 65534;

/// How long a writer past the dirty limit is held back (the uploader is draining)
/// before it is told to retry ([`ShareError::TryLater`]).
const DIRTY_WAIT: Duration = Duration::from_secs(2);
const DIRTY_POLL: Duration = Duration::from_millis(100);

/// How long a reply waits for its change to reach the FUSE mount's kernel cache.
const NOTICE_WAIT: Duration = Duration::from_secs(1);

/// Rounds of "fetch what the engine needs, ask again" before giving up with
/// `TryLater`: a rename may need four inodes' attributes, and eviction may race a
/// fetch.
const NEED_ROUNDS: usize = 12;

/// Where a call came from, for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// An NFS client at this address.
    Nfs(IpAddr),
    /// A process on the gateway, through the share's FUSE mount.
    Fuse { pid: u32 },
}

/// Who asks (after the share's squash rule) and from where.
#[derive(Clone, Debug)]
pub struct Caller {
    pub who: bucketgate_cache::Caller,
    pub origin: Origin,
}

impl std::ops::Deref for Caller {
    type Target = bucketgate_cache::Caller;
    fn deref(&self) -> &Self::Target {
        &self.who
    }
}

/// One share: its cache engine, its store side and its rules.
pub struct Share {
    pub name: String,
    /// "/name"
    pub export_path: String,
    pub cache: Arc<Cache>,
    pub squash: Squash,
    pub read_only: bool,
    pub allowed_clients: Vec<String>,
    pub allows: Box<dyn Fn(IpAddr) -> bool + Send + Sync>,
    /// Lists directories and fetches data the cache does not hold.
    pub rt: Arc<ReadThrough>,
    /// The share's audit log, when `audit_log` is configured.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// Cache hits and misses of reads, by share.
    pub metrics: Option<Metrics>,
}

/// A READ's answer.
pub struct ReadData {
    pub data: Vec<u8>,
    pub eof: bool,
    /// The file's attributes after the read.
    pub attr: Inode,
}

/// A directory page and whether the caller may see its entries' attributes and
/// handles (only one who may search the directory: LOOKUP would refuse the rest).
pub struct DirPage {
    pub listing: Listing,
    /// The directory's attributes after listing it.
    pub dir: Inode,
    pub described: bool,
}

impl Share {
    /// The caller an NFS request's credentials become under the share's squash
    /// rule; `None` (no credentials) is nobody.
    pub fn nfs_caller(&self, client: IpAddr, creds: Option<(u32, u32, &[u32])>) -> Caller {
        use bucketgate_cache::Caller as Who;
        let who = match (creds, self.squash) {
            (None, _) | (_, Squash::All) => Who::new(NOBODY, NOBODY, Vec::new()),
            (Some((uid, gid, gids)), Squash::Root) => {
                let uid = if uid == 0 { NOBODY } else { uid };
                let gid = if gid == 0 { NOBODY } else { gid };
                let gids = gids.iter().copied().filter(|&g| g != 0).collect();
                Who::new(uid, gid, gids)
            }
            (Some((uid, gid, gids)), Squash::None) => Who::new(uid, gid, gids.to_vec()),
        };
        Caller {
            who,
            origin: Origin::Nfs(client),
        }
    }

    /// Changes are refused on a read-only share.
    pub fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(ShareError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// The inode as it is now (no store access); for reply attributes.
    pub fn current(&self, id: FileId) -> Option<Inode> {
        self.cache.get(id).ok()
    }

    /// The inode a front end's reference names, if its generation still matches.
    pub fn inode(&self, id: FileId, generation: u32) -> Result<Inode> {
        Ok(self.cache.get_checked(id, generation)?)
    }

    /// A directory by its path below the share's root (a mount of a subdirectory).
    pub fn dir_at(&self, path: &str) -> Result<Inode> {
        match self.cache.resolve(path)? {
            Some(d) if d.kind == Kind::Dir => Ok(d),
            Some(_) => Err(ShareError::NotDir),
            None => Err(ShareError::NotFound),
        }
    }

    /// Attributes read from the store when the inode has only a listing's
    /// placeholders.
    pub async fn getattr(&self, ino: Inode) -> Result<Inode> {
        if !ino.meta_pending {
            return Ok(ino);
        }
        self.inline(|| self.cache.getattr(ino.id)).await
    }

    pub async fn setattr(
        &self,
        caller: &Caller,
        id: FileId,
        set: SetAttr,
        ctime_guard: Option<u64>,
    ) -> Result<(WccAttr, Inode)> {
        let mut audit = self.audit(caller, Op::Setattr, || self.path_of(id));
        if let Some(a) = &mut audit {
            a.attrs = Some(audited::attr_change(&set));
        }
        let r = async {
            self.writable()?;
            let (cache, caller) = (self.cache.clone(), caller.clone());
            self.blocking(move || cache.setattr(&caller, id, set, ctime_guard))
                .await
                .0
        };
        let r = done(audit, r.await);
        self.tell(caller, &r, || [Notice::Inode(id)]).await;
        r
    }

    /// A name in a directory, listing the directory from the store first. A name
    /// the cache knows is answered even when the store cannot be listed.
    pub async fn lookup(&self, caller: &Caller, dir: FileId, name: &[u8]) -> Result<Inode> {
        let listed = self.rt.ensure_listed(dir).await;
        match (self.inline(|| self.cache.lookup(caller, dir, name)).await, listed) {
            (Err(ShareError::NotFound), Err(e)) => Err(e.into()),
            (found, _) => found,
        }
    }

    /// The inode and the rwx bits (`READ | WRITE | EXEC`) the caller holds on it;
    /// never `WRITE` on a read-only share.
    pub async fn access(&self, caller: &Caller, id: FileId) -> Result<(Inode, u32)> {
        let (i, rwx) = self.inline(|| self.cache.access(caller, id)).await?;
        Ok((i, if self.read_only { rwx & !WRITE } else { rwx }))
    }

    pub async fn readlink(&self, caller: &Caller, id: FileId) -> Result<Vec<u8>> {
        self.inline(|| self.cache.readlink(caller, id)).await
    }

    /// Up to `count` bytes at `offset`, fetching what the cache does not hold.
    pub async fn read(&self, caller: &Caller, ino: &Inode, offset: u64, count: u32) -> Result<ReadData> {
        let audit = self.audit_read(caller, ino.id);
        self.rt.read_ahead(ino, offset, count as u64);
        let (cache, who, id) = (self.cache.clone(), caller.clone(), ino.id);
        let (result, missed) = self.blocking(move || cache.read(&who, id, offset, count)).await;
        let (data, eof, attr) = done(audit, result)?;
        if let Some(m) = &self.metrics {
            let c = if missed {
                &m.cache_misses_total
            } else {
                &m.cache_hits_total
            };
            c.with_label_values(&[&self.name]).inc();
        }
        Ok(ReadData { data, eof, attr })
    }

    /// Writes `data` at `offset`; `sync` makes it durable before answering. Past the
    /// dirty limit the writer is held back a while, then told to retry: never an
    /// error that loses data.
    pub async fn write(
        &self,
        caller: &Caller,
        id: FileId,
        offset: u64,
        data: Bytes,
        sync: bool,
    ) -> Result<(WccAttr, Inode)> {
        let audit = self.audit_write(caller, id);
        let r = async {
            self.writable()?;
            let mut waited = Duration::ZERO;
            loop {
                let (cache, caller, data) = (self.cache.clone(), caller.clone(), data.clone());
                let (result, _) = self
                    .blocking(move || cache.write(&caller, id, offset, &data, sync))
                    .await;
                match result {
                    Err(ShareError::TryLater) if waited < DIRTY_WAIT => {
                        tokio::time::sleep(DIRTY_POLL).await;
                        waited += DIRTY_POLL;
                    }
                    other => return other,
                }
            }
        };
        let r = done(audit, r.await);
        self.tell(caller, &r, || [Notice::Inode(id)]).await;
        r
    }

    /// Makes the file's data and attributes durable (the whole file, whatever range
    /// the front end was asked for: the next commit is then free).
    pub async fn commit(&self, id: FileId) -> Result<Inode> {
        // The client's close-to-open flush: its next write starts a new session.
        self.audit_session_ends(id);
        let cache = self.cache.clone();
        run_blocking(move || cache.commit(id)).await.map_err(Into::into)
    }

    /// A front end closed the file: nothing to make durable (close is not fsync),
    /// but the next write starts a new audited session.
    pub fn closed(&self, id: FileId) {
        self.audit_session_ends(id);
    }

    pub async fn create(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        how: CreateMode,
    ) -> Result<(Inode, DirChange)> {
        let audit = self.audit(caller, Op::Create, || self.child_path(dir, name));
        self.audit_replaced(dir, name);
        let n = name.to_vec();
        let r = self.make(dir, caller, name, move |c, who, d| c.create(who, d, &n, how));
        let r = done(audit, r.await);
        self.tell(caller, &r, || entry_changed(dir, name)).await;
        r
    }

    pub async fn mkdir(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        set: SetAttr,
    ) -> Result<(Inode, DirChange)> {
        let audit = self.audit(caller, Op::Mkdir, || self.child_path(dir, name));
        let n = name.to_vec();
        let r = self.make(dir, caller, name, move |c, who, d| c.mkdir(who, d, &n, set));
        let r = done(audit, r.await);
        self.tell(caller, &r, || entry_changed(dir, name)).await;
        r
    }

    pub async fn symlink(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        target: Vec<u8>,
        set: SetAttr,
    ) -> Result<(Inode, DirChange)> {
        let mut audit = self.audit(caller, Op::Symlink, || self.child_path(dir, name));
        if let Some(a) = &mut audit {
            a.target = Some(String::from_utf8_lossy(&target).into_owned());
        }
        let n = name.to_vec();
        let r = self.make(dir, caller, name, move |c, who, d| {
            c.symlink(who, d, &n, &target, set)
        });
        let r = done(audit, r.await);
        self.tell(caller, &r, || entry_changed(dir, name)).await;
        r
    }

    /// A FIFO or a socket (`kind`; the engine refuses any other).
    pub async fn mknod(
        &self,
        caller: &Caller,
        dir: FileId,
        name: &[u8],
        kind: Kind,
        set: SetAttr,
    ) -> Result<(Inode, DirChange)> {
        let audit = self.audit(caller, Op::Mknod, || self.child_path(dir, name));
        let n = name.to_vec();
        let r = self.make(dir, caller, name, move |c, who, d| c.mknod(who, d, &n, kind, set));
        let r = done(audit, r.await);
        self.tell(caller, &r, || entry_changed(dir, name)).await;
        r
    }

    /// The file `name` in `dir` names now, if any (no permission check: for a front
    /// end's own bookkeeping).
    pub fn named(&self, dir: FileId, name: &[u8]) -> Option<Inode> {
        self.cache.peek(dir, name).ok().flatten()
    }

    /// A file's data, all fetched, and its inode: what a front end keeps to serve
    /// descriptors still open after the file is removed.
    pub async fn hold(&self, id: FileId) -> Result<(Inode, Arc<std::fs::File>)> {
        let cache = self.cache.clone();
        self.blocking(move || cache.hold(id)).await.0
    }

    /// Device nodes and hard links have no object to be: refused
    /// with `Perm`, as Linux's mknod(2) and link(2) refuse them on a file system
    /// without them ("Operation not permitted"); NFS3ERR_NOTSUPP would reach Linux
    /// programs as "Unknown error 524".
    pub fn unsupported_node(&self) -> Result<()> {
        self.writable()?;
        Err(ShareError::Perm)
    }

    pub async fn remove(&self, caller: &Caller, dir: FileId, name: &[u8]) -> Result<DirChange> {
        self.unlink(caller, dir, name, false).await
    }

    /// Removes an empty directory: empty in the store too.
    pub async fn rmdir(&self, caller: &Caller, dir: FileId, name: &[u8]) -> Result<DirChange> {
        self.unlink(caller, dir, name, true).await
    }

    /// Renames within the share. A directory moves with everything the store holds
    /// below it; one it replaces must be empty in the store too.
    pub async fn rename(
        &self,
        caller: &Caller,
        from_dir: FileId,
        from: &[u8],
        to_dir: FileId,
        to: &[u8],
    ) -> Result<(DirChange, DirChange)> {
        let mut audit = self.audit(caller, Op::Rename, || self.child_path(from_dir, from));
        if let Some(a) = &mut audit {
            a.new_path = self.child_path(to_dir, to);
        }
        let r = async {
            self.writable()?;
            name_ok(from)?;
            name_ok(to)?;
            for d in [from_dir, to_dir] {
                self.rt.list_before_change(d).await;
            }
            self.list_whole_dir(from_dir, from).await?;
            self.list_whole_dir(to_dir, to).await?;
            let (cache, caller, from, to) = (self.cache.clone(), caller.clone(), from.to_vec(), to.to_vec());
            self.blocking(move || cache.rename(&caller, from_dir, &from, to_dir, &to))
                .await
                .0
        };
        let r = done(audit, r.await);
        self.tell(caller, &r, || {
            entry_changed(from_dir, from)
                .into_iter()
                .chain(entry_changed(to_dir, to))
        })
        .await;
        r
    }

    /// Up to `max` entries after `cookie`, the directory listed from the store
    /// first. With `with_attrs`, entries a listing created have their attributes
    /// read (a HEAD each, several at once) for a caller who may search the
    /// directory; one found gone from the store is left out.
    pub async fn readdir(
        &self,
        caller: &Caller,
        dir: FileId,
        cookie: u64,
        max: usize,
        with_attrs: bool,
    ) -> Result<DirPage> {
        let described = with_attrs
            && self
                .cache
                .access(caller, dir)
                .is_ok_and(|(_, rwx)| rwx & EXEC != 0);
        if described {
            self.rt.ensure_listed_with_attrs(dir).await?;
        } else {
            self.rt.ensure_listed(dir).await?;
        }
        let (cache, who) = (self.cache.clone(), caller.clone());
        let mut listing = self
            .blocking(move || cache.readdir(&who, dir, cookie, max))
            .await
            .0?;
        let d = self.cache.get(dir)?;
        if described {
            self.read_entry_attrs(dir, &mut listing).await;
        }
        Ok(DirPage {
            listing,
            dir: d,
            described,
        })
    }

    pub fn fsstat(&self) -> Result<FsStat> {
        Ok(self.cache.fsstat()?)
    }

    /// Shared by CREATE, MKDIR and SYMLINK: the directory is listed from the store
    /// first, so a new name never hides an object already there.
    async fn make(
        &self,
        dir: FileId,
        caller: &Caller,
        name: &[u8],
        make: impl Fn(&Cache, &Caller, FileId) -> std::result::Result<(Inode, DirChange), CacheError>
        + Clone
        + Send
        + 'static,
    ) -> Result<(Inode, DirChange)> {
        self.writable()?;
        name_ok(name)?;
        self.rt.list_before_change(dir).await;
        let (cache, caller) = (self.cache.clone(), caller.clone());
        self.blocking(move || make(&cache, &caller, dir)).await.0
    }

    async fn unlink(&self, caller: &Caller, dir: FileId, name: &[u8], rmdir: bool) -> Result<DirChange> {
        let op = if rmdir { Op::Rmdir } else { Op::Remove };
        let audit = self.audit(caller, op, || self.child_path(dir, name));
        let r = async {
            self.writable()?;
            self.rt.list_before_change(dir).await;
            if rmdir {
                self.list_whole_dir(dir, name).await?;
            } else {
                self.audit_replaced(dir, name);
            }
            let (cache, caller, name) = (self.cache.clone(), caller.clone(), name.to_vec());
            self.blocking(move || {
                if rmdir {
                    cache.rmdir(&caller, dir, &name)
                } else {
                    cache.remove(&caller, dir, &name)
                }
            })
            .await
            .0
        };
        let r = done(audit, r.await);
        self.tell(caller, &r, || entry_changed(dir, name)).await;
        r
    }

    /// Tells the cache's watcher (the FUSE mount) of a change it did not make
    /// itself, and waits a while for the notices to reach it: a read through the
    /// mount after this call's reply sees the change.
    async fn tell<T, N: IntoIterator<Item = Notice>>(
        &self,
        caller: &Caller,
        r: &Result<T>,
        notices: impl FnOnce() -> N,
    ) {
        if r.is_err() || matches!(caller.origin, Origin::Fuse { .. }) {
            return;
        }
        notices().into_iter().for_each(|n| self.cache.notice(n));
        notices_delivered(&self.cache).await;
    }

    /// When `name` in `dir` is a directory, lists everything the store holds below
    /// it into the namespace first; a store that cannot be listed fails the call
    /// (the client retries) rather than letting it act on part of the tree.
    async fn list_whole_dir(&self, dir: FileId, name: &[u8]) -> Result<()> {
        match self.cache.peek(dir, name) {
            Ok(Some(i)) if i.kind == Kind::Dir => self.rt.list_subtree(i.id).await.map(|_| ()).map_err(|e| {
                tracing::info!(error = %e, "could not list a directory's contents in the store before changing it");
                e.into()
            }),
            _ => Ok(()),
        }
    }

    async fn read_entry_attrs(&self, dir: FileId, listing: &mut Listing) {
        let pending: Vec<(FileId, Vec<u8>)> = listing
            .entries
            .iter()
            .filter(|e| e.attr.meta_pending)
            .map(|e| (e.attr.id, e.name.clone()))
            .collect();
        let entries = listing.entries.len();
        if let Err(e) = self.rt.read_page_attrs(dir, &pending, entries).await {
            tracing::debug!(error = %e, "reading listed entries' attributes failed; sending them without");
        }
        listing.entries.retain_mut(|e| {
            if !e.attr.meta_pending {
                return true;
            }
            match self.cache.load_any(e.attr.id) {
                Ok(Some(i)) if !i.unlinked => {
                    e.attr = i;
                    true
                }
                _ => false,
            }
        });
    }

    /// What an engine call needs from the store before it can answer, fetched: the
    /// attributes of an inode a listing created, or data the cache does not hold.
    /// `Ok(true)` when data had to be fetched (a cache miss); an error that is not
    /// such a need is handed back.
    async fn fetch_need(&self, e: CacheError) -> std::result::Result<bool, CacheError> {
        match e {
            CacheError::NotCached(id, ranges) => self.rt.fetch(id, &ranges).await.map(|()| true),
            CacheError::AttrsUnknown(id) => self.rt.read_attrs(&[id]).await.map(|()| false),
            other => Err(other),
        }
    }

    /// Runs a blocking engine call off the async workers; when it needs something
    /// only the store has, fetches that and runs it again. Also answers whether data
    /// had to be fetched (a cache miss).
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl Fn() -> std::result::Result<T, CacheError> + Clone + Send + 'static,
    ) -> (Result<T>, bool) {
        let mut missed = false;
        for _ in 0..NEED_ROUNDS {
            match run_blocking(op.clone()).await {
                Err(e @ (CacheError::NotCached(..) | CacheError::AttrsUnknown(_))) => {
                    match self.fetch_need(e).await {
                        Ok(m) => missed |= m,
                        Err(e) => return (Err(e.into()), missed),
                    }
                }
                other => return (other.map_err(Into::into), missed),
            }
        }
        (Err(ShareError::TryLater), missed)
    }

    /// The same for an engine call cheap enough to run on the async worker (no file
    /// I/O: a lookup, a permission check).
    async fn inline<T>(&self, op: impl Fn() -> std::result::Result<T, CacheError>) -> Result<T> {
        for _ in 0..NEED_ROUNDS {
            match op() {
                Err(e @ (CacheError::NotCached(..) | CacheError::AttrsUnknown(_))) => {
                    self.fetch_need(e).await?;
                }
                other => return other.map_err(Into::into),
            }
        }
        Err(ShareError::TryLater)
    }
}

/// A name a directory entry may have: the S3 key segment limit.
fn name_ok(name: &[u8]) -> Result<()> {
    if name.len() > MAX_NAME_BYTES {
        Err(ShareError::NameTooLong)
    } else {
        Ok(())
    }
}

/// The blocking boundary: engine work with file I/O or fsync runs here, never on an
/// async worker.
pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, CacheError> + Send + 'static,
) -> std::result::Result<T, CacheError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(CacheError::Meta(format!("engine task failed: {e}"))))
}

/// Waits a while for the notices handed to the cache's watcher so far to reach it
/// (with a FUSE mount: for the kernel to drop what they name from its caches).
pub(crate) async fn notices_delivered(cache: &Cache) {
    if let Some(delivered) = cache.notices_delivered()
        && tokio::time::timeout(NOTICE_WAIT, delivered).await.is_err()
    {
        tracing::debug!("FUSE invalidations late; answering without them");
    }
}

/// A name in `dir` was made, removed or moved: the name and the directory's
/// attributes changed.
fn entry_changed(dir: FileId, name: &[u8]) -> [Notice; 2] {
    [
        Notice::Entry {
            dir,
            name: name.to_vec(),
        },
        Notice::Inode(dir),
    ]
}
