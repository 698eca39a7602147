//! The namespace and file data of one share.
//!
//! Metadata (inodes, directory entries, the upload queue) lives in one sled tree;
//! every change that touches several records is one atomic batch. File data lives in
//! one file per inode under `data/`. A single mutex serialises read-modify-write of
//! records (microseconds each); file I/O happens outside it.

mod create;
mod names;
mod open;
mod read;
mod remove;
mod rename;
mod setattr;
mod upload_state;
mod write;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;

use crate::attrs::{AttrCache, Batch};
use crate::error::{CacheError, Result};
use crate::inode::{DirEntry, FileId, Inode, Kind, decode_inode, keys};
use crate::options::CacheOptions;
use crate::perm::{self, Caller};

/// The largest file S3 can hold.
pub const MAX_FILE_SIZE: u64 = 5 << 40;
pub const MAX_NAME_BYTES: usize = 255;
pub const ROOT_ID: FileId = 1;

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
    pub(crate) watcher: Mutex<Option<Box<dyn crate::notice::Watcher>>>,
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
    /// Every metadata change goes through it; concurrent requests that need
    /// durability share its fdatasyncs.
    pub(crate) journal: crate::journal::Journal,
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

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Cache {
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

    /// The regular file `id`, for a READ or WRITE (`want`) by `caller`. Its owner
    /// passes whatever its mode says, as knfsd allows, so `cp` of a read-only file
    /// (create 0444, then write) works.
    pub(crate) fn file_for(&self, caller: &Caller, id: FileId, want: u32) -> Result<Inode> {
        let i = self.get(id)?;
        match i.kind {
            Kind::File => {}
            Kind::Dir => return Err(CacheError::IsDir),
            Kind::Symlink | Kind::Fifo | Kind::Socket => return Err(CacheError::Invalid),
        }
        perm::known(&i)?;
        if caller.uid != i.uid {
            perm::require(caller, &i, want)?;
        }
        Ok(i)
    }

    pub(crate) fn data_path(&self, id: FileId) -> PathBuf {
        self.data_dir.join(format!("{id:016x}"))
    }

    pub(crate) fn file(&self, id: FileId) -> Result<Arc<File>> {
        if let Some(f) = self.files.get(&id) {
            return Ok(f);
        }
        let f = Arc::new(self.open_data_file(id)?.0);
        self.files.insert(id, f.clone());
        Ok(f)
    }

    /// The data file of `id`, made when missing; whether this call made it.
    fn open_data_file(&self, id: FileId) -> Result<(File, bool)> {
        let path = self.data_path(id);
        let open = |create_new| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(create_new)
                .open(&path)
        };
        let made = match open(false) {
            Ok(f) => return Ok((f, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => open(true),
            Err(e) => Err(e),
        };
        match made {
            Ok(f) => Ok((f, true)),
            // Made by a concurrent caller meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                open(false).map(|f| (f, false)).map_err(CacheError::from_io)
            }
            Err(e) => Err(CacheError::from_io(e)),
        }
    }

    /// The data file of a live inode, for callers not holding the state lock (READ,
    /// WRITE, the uploader). Opening may create the file, which allocates an inode on
    /// the cache disk: that is done before taking the state lock, or creating one
    /// file would hold back every request of the share. Whether the inode is still
    /// live is checked after, under the lock: when a REMOVE landed first, a file this
    /// call made is deleted again, or it would stay behind with nothing to ever
    /// delete it (a file it found is left to whoever owns it).
    pub(crate) fn live_file(&self, id: FileId) -> Result<Arc<File>> {
        if let Some(f) = self.files.get(&id) {
            return Ok(f);
        }
        let (f, made) = self.open_data_file(id)?;
        let _st = self.state.lock();
        if let Err(e) = self.get(id) {
            if made {
                let _ = fs::remove_file(self.data_path(id));
            }
            return Err(e);
        }
        let f = Arc::new(f);
        self.files.insert(id, f.clone());
        Ok(f)
    }

    /// Bytes a file takes on the cache disk, for `st_blocks` and NFS `used`: what its
    /// data file holds (a sparse file counts only the blocks written), or, while the
    /// store holds some of its bytes, its size rounded up to 4 KiB (what reading it
    /// all would take). Other kinds: their size rounded up to 4 KiB.
    pub fn disk_bytes(&self, i: &Inode) -> u64 {
        let rounded = i.size.div_ceil(4096) * 4096;
        if i.kind != Kind::File || i.partial {
            return rounded;
        }
        let meta = match self.files.get(&i.id) {
            Some(f) => f.metadata(),
            None => fs::symlink_metadata(self.data_path(i.id)),
        };
        // No data file: an empty file, or one removed meanwhile.
        meta.map_or(rounded, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
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
        self.attrs.commit(&self.journal, batch)
    }

    /// Makes everything applied so far durable. NFSv3 clients treat CREATE, MKDIR,
    /// SYMLINK, REMOVE, RMDIR, RENAME and SETATTR as stable once answered (they never
    /// resend them), so those call this before answering; WRITE leaves it to COMMIT
    /// and FILE_SYNC. Never called with the state lock held: every other request
    /// would wait for the disk. Concurrent callers share the journal's fdatasyncs
    /// (group commit, `crate::journal`): each returns once one that started after it
    /// called has finished.
    pub fn flush_metadata(&self) -> Result<()> {
        failpoint!(
            "cache::flush_metadata",
            Err(CacheError::Io(std::io::Error::other(
                "failpoint cache::flush_metadata"
            )))
        );
        self.journal.durable()
    }

    /// (journal fdatasyncs run, durable requests they answered) since the cache
    /// opened.
    pub fn flush_counts(&self) -> (u64, u64) {
        self.journal.counts()
    }
}
