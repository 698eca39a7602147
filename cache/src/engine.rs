//! The namespace and file data of one share.
//!
//! Metadata (inodes, directory entries, the upload queue) lives in one sled tree;
//! every change that touches several records is one atomic batch. File data lives in
//! one file per inode under `data/`. A single mutex serialises read-modify-write of
//! records (microseconds each); file I/O happens outside it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::mpsc::UnboundedSender;

use crate::attrs::{AttrCache, Batch};
use crate::error::{CacheError, Result};
use crate::inode::{DirEntry, FileId, Inode, Kind, ObjectAttrs, keys};
use crate::perm::{self, Caller};

/// The largest file S3 can hold.
pub const MAX_FILE_SIZE: u64 = 5 << 40;
pub const MAX_NAME_BYTES: usize = 255;
pub const ROOT_ID: FileId = 1;

#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Longest path (relative to the share prefix, in bytes) a file may have, so its
    /// key stays within S3's 1024-byte limit.
    pub max_path_bytes: usize,
    /// Mode, owner and group of the share's root directory when first created.
    pub root_mode: u32,
    pub root_uid: u32,
    pub root_gid: u32,
    /// Writes that would take dirty bytes past this get `TryLater`.
    pub dirty_limit_bytes: u64,
    /// Clean cached data is evicted (least recently used first) beyond this.
    pub capacity_bytes: u64,
    /// Mode of files the store holds without POSIX metadata (dirs use `root_mode`).
    pub default_file_mode: u32,
    /// Free space on the cache disk kept for the metadata store: WRITE, CREATE,
    /// MKDIR and SYMLINK get `NoSpace` rather than use it. sled treats a failed log
    /// write as fatal (every later call fails until the process restarts), so it
    /// must never be the one to find the disk full.
    pub metadata_reserve_bytes: u64,
    /// Memory for the attribute hot set (decoded inodes of recently used files).
    pub attr_cache_bytes: u64,
    /// Keep setuid/setgid bits read from object metadata (any S3 writer can set
    /// them); off, files lose them and directories keep only setgid.
    pub import_setid: bool,
    /// Names the store would refuse, refused when a file is made or renamed.
    pub key_check: KeyCheck,
    /// Largest file size (WRITE, SETATTR and CREATE past it get `TooBig`); at most
    /// [`MAX_FILE_SIZE`], S3's object size limit.
    pub max_file_size: u64,
}

type RefusesKey = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Why the store could never hold an object at a share-relative path, or `None`.
#[derive(Clone, Default)]
pub struct KeyCheck(Option<Arc<RefusesKey>>);

impl KeyCheck {
    pub fn new(f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> KeyCheck {
        KeyCheck(Some(Arc::new(f)))
    }

    fn refuses(&self, path: &str) -> Option<String> {
        self.0.as_ref().and_then(|f| f(path))
    }
}

impl std::fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "KeyCheck(store)"
        } else {
            "KeyCheck(none)"
        })
    }
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            max_path_bytes: 1024,
            root_mode: 0o777,
            root_uid: 65534,
            root_gid: 65534,
            dirty_limit_bytes: u64::MAX,
            capacity_bytes: u64::MAX,
            default_file_mode: 0o666,
            metadata_reserve_bytes: 16 << 20,
            attr_cache_bytes: 64 << 20,
            import_setid: false,
            key_check: KeyCheck::default(),
            max_file_size: MAX_FILE_SIZE,
        }
    }
}

/// How a SETATTR changes a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SetTime {
    #[default]
    DontChange,
    ServerTime,
    Client(u64),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
}

#[derive(Clone, Copy, Debug)]
pub enum CreateMode {
    Unchecked(SetAttr),
    Guarded(SetAttr),
    Exclusive([u8; 8]),
}

/// The pre-operation attributes NFS reports in wcc_data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WccAttr {
    pub size: u64,
    pub mtime_ns: u64,
    pub ctime_ns: u64,
}

impl From<&Inode> for WccAttr {
    fn from(i: &Inode) -> Self {
        WccAttr {
            size: i.size,
            mtime_ns: i.mtime_ns,
            ctime_ns: i.ctime_ns,
        }
    }
}

/// Before and after attributes of a directory an operation changed.
#[derive(Clone, Debug)]
pub struct DirChange {
    pub before: WccAttr,
    pub after: Inode,
}

#[derive(Clone, Debug)]
pub struct DirEntryInfo {
    pub name: Vec<u8>,
    pub cookie: u64,
    pub attr: Inode,
}

#[derive(Clone, Debug)]
pub struct Listing {
    pub entries: Vec<DirEntryInfo>,
    pub eof: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct FsStat {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
}

pub(crate) struct State {
    pub(crate) next_id: FileId,
    /// Dirty data bytes per inode, and their sum.
    dirty: HashMap<FileId, u64>,
    dirty_total: u64,
    /// Disk space a file's data takes, where measured (after its writes and
    /// truncations). A dirty file counts at most this against the dirty limit: a
    /// hole costs no cache disk, so a sparse 5 TiB file must not lock every other
    /// writer out.
    allocated: HashMap<FileId, u64>,
    /// Bytes of file data the cache holds (sum of live files' sizes).
    stored_total: u64,
    pub(crate) evicted_files: u64,
    pub(crate) evicted_bytes: u64,
}

impl State {
    pub(crate) fn account(&mut self, ino: &Inode) {
        let mut now = ino.dirty_data_bytes();
        if now == 0 {
            // Clean: measured again at its next write.
            self.allocated.remove(&ino.id);
        } else if let Some(a) = self.allocated.get(&ino.id) {
            now = now.min(*a);
        }
        let before = if now == 0 {
            self.dirty.remove(&ino.id)
        } else {
            self.dirty.insert(ino.id, now)
        };
        self.dirty_total = (self.dirty_total + now).saturating_sub(before.unwrap_or(0));
    }

    pub(crate) fn resized(&mut self, old: u64, new: u64) {
        self.stored_total = (self.stored_total + new).saturating_sub(old);
    }

    /// `file`'s data takes `bytes` of disk now.
    pub(crate) fn measured(&mut self, id: FileId, bytes: Option<u64>) {
        match bytes {
            Some(b) => self.allocated.insert(id, b),
            None => self.allocated.remove(&id),
        };
    }

    pub(crate) fn forget(&mut self, id: FileId) {
        self.allocated.remove(&id);
        if let Some(b) = self.dirty.remove(&id) {
            self.dirty_total = self.dirty_total.saturating_sub(b);
        }
    }

    /// From the OS CSPRNG: a generation no client can predict from others it saw.
    pub(crate) fn random_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        getrandom::getrandom(&mut b).expect("the OS random source works");
        u32::from_be_bytes(b)
    }
}

pub struct Cache {
    pub(crate) db: sled::Db,
    data_dir: PathBuf,
    pub(crate) state: Mutex<State>,
    files: moka::sync::Cache<FileId, Arc<File>>,
    notify: Mutex<Option<UnboundedSender<FileId>>>,
    /// Who hears of changes a front end's kernel may have cached (`crate::notice`).
    pub(crate) watcher: Mutex<Option<crate::notice::Watcher>>,
    pub(crate) opts: CacheOptions,
    share_id: u32,
    handle_key: [u8; 32],
    /// Clean cached files, weighted by their cached KiB; what it evicts is queued in
    /// `evictions` and dropped by `run_evictions` outside every lock.
    pub(crate) lru: moka::sync::Cache<FileId, u32>,
    pub(crate) evictions: Arc<Mutex<Vec<FileId>>>,
    /// Readers, writers and fills of a file hold its stripe shared; eviction holds it
    /// exclusively, so a file's data never vanishes under a read or a write.
    pub(crate) data_locks: Vec<parking_lot::RwLock<()>>,
    /// Set by every LRU insert; the next `touch` runs evictions.
    pub(crate) evict_pending: std::sync::atomic::AtomicBool,
    /// Decoded inodes in front of sled; every inode change passes through it.
    pub(crate) attrs: AttrCache,
    /// Keys whose objects the uploader deleted lately (see [`Cache::leaving`]).
    pub(crate) gone: crate::left::Gone,
}

/// Disk space a file takes: its allocated blocks (less than its size when sparse).
pub(crate) fn disk_bytes(md: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    md.blocks() * 512
}

/// Disk space `f` takes, `None` when it cannot be read.
pub(crate) fn allocated(f: &File) -> Option<u64> {
    f.metadata().ok().map(|m| disk_bytes(&m))
}

/// Earlier writes of ours kept as possibly landed, per inode; beyond, the oldest is
/// forgotten (at worst its object is then taken for another client's).
const MAX_EARLIER_INTENTS: usize = 16;

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn decode_inode(bytes: &[u8]) -> Result<Inode> {
    Ok(bincode::deserialize(bytes)?)
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory records always serialize")
}

impl Cache {
    /// Opens (or creates) the share's cache under `dir`: `dir/meta` (sled) and
    /// `dir/data` (one file per inode).
    pub fn open(dir: &Path, opts: CacheOptions) -> Result<Cache> {
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir)?;
        let db = sled::Config::new()
            .path(dir.join("meta"))
            .flush_every_ms(Some(500))
            .open()?;
        crate::format::check(&db, dir)?;
        let mut state = State {
            next_id: ROOT_ID + 1,
            dirty: HashMap::new(),
            dirty_total: 0,
            allocated: HashMap::new(),
            stored_total: 0,
            evicted_files: 0,
            evicted_bytes: 0,
        };

        let share_id = match db.get(keys::meta("share_id"))? {
            Some(v) => u32::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| CacheError::Meta("share_id".into()))?,
            ),
            None => {
                let id = state.random_u32();
                db.insert(keys::meta("share_id"), &id.to_be_bytes())?;
                id
            }
        };
        // The secret behind file handles' MACs: made once, with the cache, and kept
        // with it (handles of a recreated cache do not verify).
        let handle_key: [u8; 32] = match db.get(keys::meta("handle_key"))? {
            Some(v) => v
                .as_ref()
                .try_into()
                .map_err(|_| CacheError::Meta("handle_key".into()))?,
            None => {
                let mut k = [0u8; 32];
                getrandom::getrandom(&mut k)
                    .map_err(|e| CacheError::Meta(format!("OS random source: {e}")))?;
                db.insert(keys::meta("handle_key"), &k)?;
                k
            }
        };
        if let Some(v) = db.get(keys::meta("next_id"))? {
            state.next_id = u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| CacheError::Meta("next_id".into()))?,
            );
        }
        if db.get(keys::inode(ROOT_ID))?.is_none() {
            let now = now_ns();
            let mut root = Inode::fresh(
                ROOT_ID,
                0,
                Kind::Dir,
                opts.root_mode,
                opts.root_uid,
                opts.root_gid,
                now,
            );
            root.parent = ROOT_ID;
            // The share's root mirrors the bucket prefix: list it on first access.
            root.listed_ns = 0;
            db.insert(keys::inode(ROOT_ID), encode(&root))?;
        }
        let mut lost = Vec::new();
        for kv in db.scan_prefix([keys::INODE]) {
            let (_, v) = kv?;
            let ino = decode_inode(&v)?;
            if lost_its_bytes(&data_dir, &ino) {
                lost.push(ino);
                continue;
            }
            if ino.kind == Kind::File && !ino.unlinked && !ino.partial {
                state.stored_total += ino.size;
            }
            if ino.is_dirty() {
                if ino.kind == Kind::File {
                    let data = fs::metadata(data_dir.join(format!("{:016x}", ino.id)));
                    state.measured(ino.id, data.ok().map(|m| disk_bytes(&m)));
                }
                state.account(&ino);
            }
        }
        for mut ino in lost {
            tracing::warn!(
                file_id = ino.id,
                "a clean file's cached bytes are missing (a crash cut off an eviction or a removal); they will be fetched from the store again"
            );
            ino.partial = true;
            db.remove(keys::blocks(ino.id))?;
            db.insert(keys::inode(ino.id), encode(&ino))?;
        }
        db.flush()?;
        Self::reconcile_data_files(&db, &data_dir)?;
        let evictions: Arc<Mutex<Vec<FileId>>> = Arc::default();
        let queue = evictions.clone();
        // Plain LRU: TinyLFU's admission would evict a file right after it was read
        // (it has been seen once), throwing away the bytes just fetched.
        let lru = moka::sync::Cache::builder()
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .max_capacity((opts.capacity_bytes / 1024).max(1))
            .weigher(|_, w: &u32| *w)
            .eviction_listener(move |id: Arc<FileId>, _, cause| {
                if cause.was_evicted() {
                    queue.lock().push(*id);
                }
            })
            .build_with_hasher(std::collections::hash_map::RandomState::new());
        let attrs = AttrCache::new(opts.attr_cache_bytes);
        let cache = Cache {
            db,
            data_dir,
            state: Mutex::new(state),
            files: moka::sync::Cache::builder().max_capacity(512).build(),
            notify: Mutex::new(None),
            watcher: Mutex::new(None),
            opts,
            share_id,
            handle_key,
            lru,
            evictions,
            data_locks: (0..64).map(|_| parking_lot::RwLock::new(())).collect(),
            evict_pending: std::sync::atomic::AtomicBool::new(false),
            attrs,
            gone: Default::default(),
        };
        cache.load_lru()?;
        Ok(cache)
    }

    /// Makes the data files agree with the metadata after a crash. A WRITE puts its
    /// bytes in the data file before its metadata batch, so a crash (or a failed
    /// batch) can leave bytes past the recorded size, or a data file for an inode
    /// whose creation was never recorded (and whose id will be handed out again).
    /// Those bytes were never acknowledged as stable; left in place they would show
    /// through a later hole or extending truncate, possibly in another user's file.
    fn reconcile_data_files(db: &sled::Db, data_dir: &Path) -> Result<()> {
        for entry in fs::read_dir(data_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| FileId::from_str_radix(n, 16).ok()) else {
                continue;
            };
            let recorded = match db.get(keys::inode(id))? {
                Some(v) => {
                    let ino = decode_inode(&v)?;
                    (ino.kind == Kind::File && !ino.unlinked).then_some(ino.size)
                }
                None => None,
            };
            match recorded {
                None => {
                    tracing::info!(
                        file_id = id,
                        "removing a data file no inode owns (left by a crash)"
                    );
                    fs::remove_file(entry.path()).map_err(CacheError::from_io)?;
                }
                Some(size) => {
                    if entry.metadata()?.len() > size {
                        tracing::info!(
                            file_id = id,
                            size,
                            "trimming unrecorded bytes past the end of a file"
                        );
                        let f = OpenOptions::new().write(true).open(entry.path())?;
                        f.set_len(size).map_err(CacheError::from_io)?;
                        f.sync_all().map_err(CacheError::from_io)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Identifies this share's cache in file handles; random at creation, so handles
    /// of a wiped and recreated cache are stale instead of aliasing new files.
    pub fn share_id(&self) -> u32 {
        self.share_id
    }

    /// The key of this share's file handle MACs (kept in the metadata store).
    pub fn handle_key(&self) -> &[u8; 32] {
        &self.handle_key
    }

    pub fn root(&self) -> FileId {
        ROOT_ID
    }

    /// Every change that leaves an inode needing an upload sends its id here.
    pub fn set_notifier(&self, tx: UnboundedSender<FileId>) {
        *self.notify.lock() = Some(tx);
    }

    pub(crate) fn notify(&self, id: FileId) {
        if let Some(tx) = self.notify.lock().as_ref() {
            let _ = tx.send(id);
        }
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.state.lock().dirty_total
    }

    /// Bytes of file data held on the cache disk.
    pub fn stored_bytes(&self) -> u64 {
        self.state.lock().stored_total
    }

    pub fn options(&self) -> &CacheOptions {
        &self.opts
    }

    pub(crate) fn load(&self, id: FileId) -> Result<Option<Inode>> {
        let hot = self.attrs.get(id, || match self.db.get(keys::inode(id))? {
            Some(v) => Ok(Some(decode_inode(&v)?)),
            None => Ok(None),
        })?;
        Ok(hot.map(|i| Inode::clone(&i)))
    }

    /// (hits, misses) of the attribute hot set since open.
    pub fn attr_cache_stats(&self) -> (u64, u64) {
        self.attrs.stats()
    }

    /// A live inode, or `Stale` for one that no longer exists.
    pub fn get(&self, id: FileId) -> Result<Inode> {
        match self.load(id)? {
            Some(i) if !i.unlinked => Ok(i),
            _ => Err(CacheError::Stale),
        }
    }

    /// A live inode whose attributes are known (GETATTR): `AttrsUnknown` for one a
    /// listing created until its object's metadata is read.
    pub fn getattr(&self, id: FileId) -> Result<Inode> {
        let i = self.get(id)?;
        perm::known(&i)?;
        Ok(i)
    }

    /// Checks a handle's generation.
    pub fn get_checked(&self, id: FileId, generation: u32) -> Result<Inode> {
        let i = self.get(id)?;
        if i.generation != generation {
            return Err(CacheError::Stale);
        }
        Ok(i)
    }

    pub(crate) fn get_dir(&self, id: FileId) -> Result<Inode> {
        let d = self.get(id)?;
        if d.kind != Kind::Dir {
            return Err(CacheError::NotDir);
        }
        Ok(d)
    }

    pub(crate) fn data_path(&self, id: FileId) -> PathBuf {
        self.data_dir.join(format!("{id:016x}"))
    }

    pub(crate) fn file(&self, id: FileId) -> Result<Arc<File>> {
        if let Some(f) = self.files.get(&id) {
            return Ok(f);
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.data_path(id))
            .map_err(CacheError::from_io)?;
        let f = Arc::new(f);
        self.files.insert(id, f.clone());
        Ok(f)
    }

    /// The data file of a live inode, for callers not holding the state lock (READ,
    /// WRITE, the uploader). Opening creates the file, so on a cache miss it is opened
    /// under the state lock after checking the inode still exists: otherwise a REMOVE
    /// landing between the caller's check and the open would leave a new, empty data
    /// file behind that nothing ever deletes.
    pub(crate) fn live_file(&self, id: FileId) -> Result<Arc<File>> {
        if let Some(f) = self.files.get(&id) {
            return Ok(f);
        }
        let _st = self.state.lock();
        self.get(id)?;
        self.file(id)
    }

    pub(crate) fn drop_data(&self, id: FileId) {
        self.files.invalidate(&id);
        let _ = fs::remove_file(self.data_path(id));
    }

    pub(crate) fn lookup_entry(&self, dir: FileId, name: &[u8]) -> Result<Option<DirEntry>> {
        match self.db.get(keys::name(dir, name))? {
            Some(v) => Ok(Some(bincode::deserialize(&v)?)),
            None => Ok(None),
        }
    }

    /// Marks `ino` changed (needing an upload) and queues it, in `batch`.
    pub(crate) fn touch_for_upload(ino: &mut Inode, batch: &mut Batch, now: u64, data_changed: bool) {
        ino.change_seq += 1;
        if data_changed {
            ino.data_seq = ino.change_seq;
        }
        if ino.dirty_since_ns == 0 {
            ino.dirty_since_ns = now;
        }
        ino.last_change_ns = now;
        batch.insert(&keys::queue(ino.id), &[]);
    }

    pub(crate) fn put(batch: &mut Batch, ino: &Inode) {
        batch.put_inode(ino);
    }

    pub(crate) fn commit_batch(&self, batch: Batch) -> Result<()> {
        self.attrs.commit(&self.db, batch)
    }

    /// Makes everything applied so far durable. NFSv3 clients treat CREATE, MKDIR,
    /// SYMLINK, REMOVE, RMDIR, RENAME and SETATTR as stable once answered (they never
    /// resend them), so those call this before answering; WRITE leaves it to COMMIT
    /// and FILE_SYNC. Never called with the state lock held: every other request
    /// would wait for the disk.
    pub fn flush_metadata(&self) -> Result<()> {
        failpoint!(
            "cache::flush_metadata",
            Err(CacheError::Io(std::io::Error::other(
                "failpoint cache::flush_metadata"
            )))
        );
        // sled 0.34.7 loses the last batch applied before a kill -9 even after a
        // successful flush, unless some other write follows it in the log
        // (tests/it/crash.rs, acknowledged_namespace_changes_survive_kill9, caught a
        // SETATTR lost this way). A one-key write after it makes it recoverable.
        self.db
            .insert(keys::meta("flushed_at"), &now_ns().to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    // ----- names -----------------------------------------------------------------

    /// A name as a single component: no '/', NUL, "." or "..", UTF-8, ≤ 255 bytes.
    pub(crate) fn check_listed_name(&self, _dir: &Inode, name: &[u8]) -> Result<()> {
        if name.len() > MAX_NAME_BYTES {
            return Err(CacheError::NameTooLong);
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(CacheError::Invalid);
        }
        // Object keys are UTF-8; a name that is not cannot become a key.
        if std::str::from_utf8(name).is_err() {
            return Err(CacheError::Invalid);
        }
        Ok(())
    }

    fn check_name(&self, dir: &Inode, name: &[u8]) -> Result<()> {
        self.check_listed_name(dir, name)?;
        let dir_path = self.path_of(dir)?;
        if dir_path.len() + 1 + name.len() + 1 > self.opts.max_path_bytes {
            return Err(CacheError::NameTooLong);
        }
        let name = std::str::from_utf8(name).map_err(|_| CacheError::Invalid)?;
        let path = if dir_path.is_empty() {
            name.to_string()
        } else {
            format!("{dir_path}/{name}")
        };
        if let Some(why) = self.opts.key_check.refuses(&path) {
            tracing::debug!(path, why, "refused a name the store cannot hold");
            return Err(CacheError::Invalid);
        }
        Ok(())
    }

    /// Path of an inode relative to the share root ("" for the root, "a/b" below).
    pub fn path_of(&self, ino: &Inode) -> Result<String> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = ino.clone();
        let mut hops = 0;
        while cur.id != ROOT_ID {
            parts.push(cur.name.clone());
            cur = self.load(cur.parent)?.ok_or(CacheError::Stale)?;
            hops += 1;
            if hops > 4096 {
                return Err(CacheError::Meta("directory loop".into()));
            }
        }
        parts.reverse();
        let joined = parts.join(&b'/');
        String::from_utf8(joined).map_err(|_| CacheError::Meta("non-UTF-8 name".into()))
    }

    /// The inode a share-relative path names, if any.
    pub fn resolve(&self, path: &str) -> Result<Option<Inode>> {
        let mut cur = self.get(ROOT_ID)?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if cur.kind != Kind::Dir {
                return Ok(None);
            }
            match self.lookup_entry(cur.id, part.as_bytes())? {
                Some(e) => match self.load(e.child)? {
                    Some(i) => cur = i,
                    None => return Ok(None),
                },
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    // ----- reads -----------------------------------------------------------------

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
        let i = self.get(id)?;
        match i.kind {
            Kind::File => {}
            Kind::Dir => return Err(CacheError::IsDir),
            Kind::Symlink => return Err(CacheError::Invalid),
        }
        perm::known(&i)?;
        if caller.uid != i.uid {
            perm::require(caller, &i, perm::READ)?;
        }
        let guard = self.data_lock(id).read();
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
        let mut buf = vec![0u8; len];
        let f = self.live_file(id)?;
        let mut done = 0;
        while done < len {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break, // sparse tail past the data file's end reads as zeros
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CacheError::from_io(e)),
            }
        }
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
    fn check_space(&self, need: u64) -> Result<()> {
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

    // ----- data writes ---------------------------------------------------------

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
        let i = self.get(id)?;
        match i.kind {
            Kind::File => {}
            Kind::Dir => return Err(CacheError::IsDir),
            Kind::Symlink => return Err(CacheError::Invalid),
        }
        // The owner may write a file whose mode lacks write permission, as knfsd
        // allows, so `cp` of a read-only file (create 0444, then write) works.
        perm::known(&i)?;
        if caller.uid != i.uid {
            perm::require(caller, &i, perm::WRITE)?;
        }
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
            drop_privileges(&mut i, caller);
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

    // ----- attributes --------------------------------------------------------------

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
                drop_privileges(&mut i, caller);
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

    // ----- namespace -----------------------------------------------------------------

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

    /// Takes `victim` out of the namespace inside `b`: it stays as a record only while
    /// the store still holds an object for it. Answers the file whose data is to be
    /// dropped once `b` is durable: before, a crash would bring back the file without
    /// its bytes.
    #[must_use]
    pub(crate) fn unlink_in_batch(
        &self,
        st: &mut State,
        b: &mut Batch,
        mut victim: Inode,
        now: u64,
    ) -> Option<FileId> {
        victim.unlinked = true;
        victim.ctime_ns = now;
        // Keys it was writing (an upload in flight, or one a crash cut off) may hold
        // an object of its by now: left behind too, version unknown.
        for k in &victim.remote.stale_keys {
            if !matches!(self.db.get(keys::left(k)), Ok(Some(_))) {
                Self::note_left(b, k, "");
            }
        }
        if let Some(k) = &victim.remote.key {
            // Best effort: a stale entry is recognised as such when read.
            let _ = self.forget_moved(b, k, victim.id);
        }
        if let Some(k) = victim.remote.key.take() {
            Self::note_left(b, &k, &victim.remote.etag);
            if !victim.remote.stale_keys.contains(&k) {
                victim.remote.stale_keys.push(k);
            }
        }
        if victim.remote.stale_keys.is_empty() {
            b.remove_inode(victim.id);
            b.remove(&keys::queue(victim.id));
            st.forget(victim.id);
        } else {
            Self::touch_for_upload(&mut victim, b, now, false);
            Self::put(b, &victim);
            st.account(&victim);
        }
        if victim.kind == Kind::File {
            st.resized(victim.size, 0);
            return Some(victim.id);
        }
        None
    }

    fn check_sticky(caller: &Caller, dir: &Inode, victim: &Inode) -> Result<()> {
        perm::known(victim)?;
        if dir.mode & 0o1000 != 0 && caller.uid != 0 && caller.uid != dir.uid && caller.uid != victim.uid {
            return Err(CacheError::Access);
        }
        Ok(())
    }

    fn remove_entry(&self, caller: &Caller, dir: FileId, name: &[u8], want_dir: bool) -> Result<DirChange> {
        let mut st = self.state.lock();
        let mut d = self.get_dir(dir)?;
        if name == b"." || name == b".." {
            return Err(if want_dir {
                CacheError::Invalid
            } else {
                CacheError::Access
            });
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(CacheError::NameTooLong);
        }
        perm::require(caller, &d, perm::WRITE | perm::EXEC)?;
        let e = self.lookup_entry(dir, name)?.ok_or(CacheError::NotFound)?;
        let victim = self.get(e.child)?;
        Self::check_sticky(caller, &d, &victim)?;
        match (want_dir, victim.kind == Kind::Dir) {
            (true, false) => return Err(CacheError::NotDir),
            (false, true) => return Err(CacheError::IsDir),
            (true, true) if self.db.scan_prefix(keys::seq_prefix(victim.id)).next().is_some() => {
                return Err(CacheError::NotEmpty);
            }
            _ => {}
        }
        let before = WccAttr::from(&d);
        let now = now_ns();
        let mut b = Batch::default();
        b.remove(keys::name(dir, name));
        b.remove(&keys::seq(dir, e.seq));
        d.mtime_ns = now;
        d.ctime_ns = now;
        Self::put(&mut b, &d);
        let victim_id = victim.id;
        let doomed = self.unlink_in_batch(&mut st, &mut b, victim, now);
        self.commit_batch(b)?;
        drop(st);
        self.flush_metadata()?;
        if let Some(id) = doomed {
            self.drop_data(id);
        }
        tracing::debug!(file_id = victim_id, dir, name = %String::from_utf8_lossy(name), "removed");
        self.notify(victim_id);
        Ok(DirChange { before, after: d })
    }

    pub fn remove(&self, caller: &Caller, dir: FileId, name: &[u8]) -> Result<DirChange> {
        self.remove_entry(caller, dir, name, false)
    }

    pub fn rmdir(&self, caller: &Caller, dir: FileId, name: &[u8]) -> Result<DirChange> {
        self.remove_entry(caller, dir, name, true)
    }

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
        if let Some(t) = target {
            let victim = self.get(t.child)?;
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

    // ----- upload interface ----------------------------------------------------------

    /// Ids of every inode that has something left to send to (or delete from) the store.
    pub fn pending(&self) -> Result<Vec<FileId>> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix([keys::QUEUE]) {
            let (k, _) = kv?;
            out.push(keys::id_from(&k));
        }
        Ok(out)
    }

    /// The inode record, unlinked or not (for the uploader).
    pub fn load_any(&self, id: FileId) -> Result<Option<Inode>> {
        self.load(id)
    }

    /// Opens the data file for reading by the uploader.
    pub fn open_data(&self, id: FileId) -> Result<Arc<File>> {
        self.live_file(id)
    }

    /// Is there a live inode whose object key is `key` (share-relative; a trailing
    /// "/" names a directory marker)? A stale key that is live again must not be deleted.
    pub fn key_is_live(&self, key: &str) -> Result<bool> {
        let (path, want_dir) = match key.strip_suffix('/') {
            Some(p) => (p, true),
            None => (key, false),
        };
        Ok(match self.resolve(path)? {
            Some(i) if i.id != ROOT_ID => (i.kind == Kind::Dir) == want_dir,
            _ => false,
        })
    }

    /// `key` is stale for `id` (or for an inode that no longer exists). If a live
    /// inode's path names it again, that inode takes over the duty to clean it up
    /// (unless its object already is `key`) and true is returned: the key must not
    /// be deleted now, since that inode's upload will overwrite it. Just forgetting
    /// the key was wrong: if that inode moved away again before uploading, the old
    /// object stayed in the bucket for ever.
    pub fn hand_over_stale_key(&self, id: FileId, key: &str) -> Result<bool> {
        let (path, want_dir) = match key.strip_suffix('/') {
            Some(p) => (p, true),
            None => (key, false),
        };
        if !want_dir && self.moved_away_from(key, id)?.is_some() {
            // A renamed file still copies its object from there; it deletes the key
            // itself once its object has moved.
            return Ok(true);
        }
        let st = self.state.lock();
        let mut live = match self.resolve(path)? {
            Some(i) if i.id != ROOT_ID && (i.kind == Kind::Dir) == want_dir => i,
            _ => return Ok(false),
        };
        let claimed =
            live.remote.key.as_deref() == Some(key) || live.remote.stale_keys.iter().any(|k| k == key);
        if live.id == id || claimed {
            return Ok(true);
        }
        live.remote.stale_keys.push(key.to_string());
        let mut b = Batch::default();
        b.insert(&keys::queue(live.id), &[]);
        Self::put(&mut b, &live);
        self.commit_batch(b)?;
        drop(st);
        self.notify(live.id);
        Ok(true)
    }

    /// Records what the store now holds for `id` after a step that made the object at
    /// `key` carry `data_seq` and `meta`, planned when the inode was at `planned_seq`.
    /// Returns false when the inode no longer exists at all (the caller must delete
    /// the object it just wrote, which nothing claims).
    pub fn record_upload(
        &self,
        id: FileId,
        planned_seq: u64,
        key: &str,
        etag: &str,
        data_seq: u64,
        meta: ObjectAttrs,
    ) -> Result<bool> {
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(false);
        };
        let snapshot_size = i.size;
        let mut b = Batch::default();
        let r = &mut i.remote;
        let moved_on = r.key.clone().filter(|old| old != key);
        if let Some(old) = &moved_on {
            // Its object there stays until the stale key is deleted.
            Self::note_left(&mut b, old, &r.etag);
        }
        if i.unlinked {
            // Removed while uploading: the object just written is left behind.
            Self::note_left(&mut b, key, etag);
        } else {
            Self::forget_left(&mut b, key);
        }
        if let Some(old) = r.key.take()
            && old != key
            && !r.stale_keys.contains(&old)
        {
            r.stale_keys.push(old);
        }
        r.stale_keys.retain(|k| k != key);
        r.etag = etag.to_string();
        r.data_seq = data_seq;
        r.meta = meta;
        r.synced_ns = now_ns();
        // Our own upload: the size is known, the store's Last-Modified is not.
        r.listed_size = snapshot_size;
        r.listed_mtime_ns = 0;
        r.overwrite_meta = None;
        b.remove(&keys::intents(id));
        if i.unlinked {
            // Removed while uploading: the object just written is an orphan.
            r.stale_keys.push(key.to_string());
        } else {
            r.key = Some(key.to_string());
            if i.change_seq == planned_seq {
                i.synced_seq = planned_seq;
            }
        }
        let clean = !i.is_dirty() && !i.unlinked;
        let snapshot = i.clone();
        self.save_upload_state_with(&mut st, i, b)?;
        if let Some(old) = moved_on {
            let mut b = Batch::default();
            self.forget_moved(&mut b, &old, id)?;
            self.commit_batch(b)?;
        }
        drop(st);
        if clean {
            // Clean data may now be evicted under pressure: it is in the store.
            self.touch(&snapshot);
        }
        Ok(true)
    }

    /// Before the uploader writes the object at `key` for `id`, durably and in one
    /// flush: `key` joins the inode's keys to clean up unless the inode already
    /// claims it, and `meta`, what the object will carry, is noted as the metadata of
    /// a write of ours. A crash after the object is written but before
    /// [`Cache::record_upload`] is durable (or a file removed or renamed after such a
    /// crash) would otherwise leave an object nothing in the cache knows of, for ever,
    /// or make the version written look like another client's on the retry.
    /// `record_upload` takes the key back off the list; if it never runs, the key is
    /// deleted unless a live file has that path again (then its own upload
    /// overwrites it). False: the inode is gone (removed with nothing in the store),
    /// and nothing may be written for it.
    pub fn record_intent(&self, id: FileId, key: &str, meta: Option<ObjectAttrs>) -> Result<bool> {
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(false);
        };
        let claimed = i.remote.key.as_deref() == Some(key) || i.remote.stale_keys.iter().any(|k| k == key);
        let noted = meta.is_none() || i.remote.overwrite_meta == meta;
        if claimed && noted {
            return Ok(true);
        }
        if !claimed {
            i.remote.stale_keys.push(key.to_string());
        }
        let mut b = Batch::default();
        if meta.is_some() {
            // The write noted before may have landed too (its reply lost, then a
            // change and a failed retry): it stays ours until an upload is recorded.
            if let Some(prev) = i.remote.overwrite_meta {
                let mut earlier = self.earlier_intents(id)?;
                if !earlier.contains(&prev) {
                    if earlier.len() >= MAX_EARLIER_INTENTS {
                        earlier.remove(0);
                    }
                    earlier.push(prev);
                    b.insert(&keys::intents(id), encode(&earlier));
                }
            }
            i.remote.overwrite_meta = meta;
        }
        self.save_upload_state_with(&mut st, i, b)?;
        drop(st);
        self.flush_metadata()?;
        Ok(true)
    }

    fn earlier_intents(&self, id: FileId) -> Result<Vec<ObjectAttrs>> {
        Ok(match self.db.get(keys::intents(id))? {
            Some(v) => bincode::deserialize(&v)?,
            None => Vec::new(),
        })
    }

    /// Whether an object carrying `attrs` is one of our writes for `id` that may
    /// have reached the store without being recorded (the last noted, or an earlier
    /// one since the last recorded upload), not another client's.
    pub fn written_by_us(&self, id: FileId, attrs: Option<ObjectAttrs>) -> Result<bool> {
        let Some(attrs) = attrs else {
            return Ok(false);
        };
        let Some(i) = self.load(id)? else {
            return Ok(false);
        };
        Ok(i.remote.overwrite_meta == Some(attrs) || self.earlier_intents(id)?.contains(&attrs))
    }

    /// `key` is no longer `id`'s to clean up: the object under it is gone from the
    /// store (`deleted`: deleted by us, or found missing), or a live file that has
    /// that name again took it over.
    pub fn record_deleted(&self, id: FileId, key: &str, deleted: bool) -> Result<()> {
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(());
        };
        let mut version = self.left_version(key)?.unwrap_or_default();
        i.remote.stale_keys.retain(|k| k != key);
        if i.remote.key.as_deref() == Some(key) {
            version = i.remote.etag.clone();
            i.remote.key = None;
            i.remote.data_seq = 0;
        }
        let mut b = Batch::default();
        if deleted {
            Self::forget_left(&mut b, key);
            self.gone.deleted(key, version);
        }
        self.save_upload_state_with(&mut st, i, b)
    }

    /// Nothing to send for `planned_seq`: the store already matches.
    pub fn record_clean(&self, id: FileId, planned_seq: u64) -> Result<()> {
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(());
        };
        if i.change_seq == planned_seq {
            i.synced_seq = planned_seq;
        }
        self.save_upload_state(&mut st, i)
    }

    fn save_upload_state(&self, st: &mut State, i: Inode) -> Result<()> {
        self.save_upload_state_with(st, i, Batch::default())
    }

    /// [`Cache::save_upload_state`], together with the other records in `b`.
    fn save_upload_state_with(&self, st: &mut State, mut i: Inode, mut b: Batch) -> Result<()> {
        if i.unlinked && i.remote.stale_keys.is_empty() {
            b.remove_inode(i.id);
            b.remove(&keys::queue(i.id));
            self.commit_batch(b)?;
            st.forget(i.id);
            return Ok(());
        }
        if !i.is_dirty() {
            i.dirty_since_ns = 0;
            b.remove(&keys::queue(i.id));
        }
        Self::put(&mut b, &i);
        self.commit_batch(b)?;
        st.account(&i);
        Ok(())
    }
}

/// A change to a file's bytes by anyone but root clears setuid, and setgid when
/// group execute is set (without it, setgid means mandatory locking), as write(2)
/// and truncate(2) do on Linux: whoever may write a setuid program must not be able
/// to replace its code and keep the privilege.
/// A whole, clean file (its bytes are the store's object) whose data file is shorter
/// than the file or gone: an eviction truncates, and a removal deletes, a data file
/// before the batch recording it is durable, so a crash between the two leaves the
/// record of a whole file over missing bytes, which would read as zeros. Such a file
/// becomes partial at open and is fetched again. A dirty file is never touched here:
/// its bytes exist nowhere else.
fn lost_its_bytes(data_dir: &Path, ino: &Inode) -> bool {
    ino.kind == Kind::File
        && !ino.unlinked
        && !ino.partial
        && ino.size > 0
        && ino.remote.key.is_some()
        && ino.dirty_data_bytes() == 0
        && !fs::metadata(data_dir.join(format!("{:016x}", ino.id))).is_ok_and(|m| m.len() >= ino.size)
}

fn drop_privileges(i: &mut Inode, caller: &Caller) {
    if caller.uid != 0 && i.mode & 0o6000 != 0 {
        i.mode &= !0o4000;
        if i.mode & 0o010 != 0 {
            i.mode &= !0o2000;
        }
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
