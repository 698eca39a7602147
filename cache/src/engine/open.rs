//! Opening a share's cache: its records, its data files made to agree with them after
//! a crash, and the hot sets.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Cache, ROOT_ID, State, disk_bytes, now_ns};
use crate::attrs::AttrCache;
use crate::error::{CacheError, Result};
use crate::inode::{FileId, Inode, Kind, decode_inode, encode, keys};
use crate::journal::Journal;
use crate::options::CacheOptions;

impl Cache {
    /// Opens (or creates) the share's cache under `dir`: `dir/meta` (sled) and
    /// `dir/data` (one file per inode).
    pub fn open(dir: &Path, opts: CacheOptions) -> Result<Cache> {
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir)?;
        let meta_dir = dir.join("meta");
        // No flushes of its own: sled is flushed at the journal's checkpoints, and
        // each flush would hold back every batch while it runs (`crate::journal`).
        let db = sled::Config::new().path(&meta_dir).flush_every_ms(None).open()?;
        // What the journal holds was written in this cache's format: replayed
        // before the format is migrated, but not before a newer one is refused.
        crate::format::refuse_newer(&db, dir)?;
        let journal = Journal::open(dir, &meta_dir, &db)?;
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
            journal,
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
}

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
