//! Partially cached files: which 1 MiB blocks of a file the cache disk holds, filling
//! them from the store, and evicting clean files' data to stay within capacity.
//!
//! Invariants: a block marked present holds exactly the store's bytes (or the file's
//! own, once it is written: a file becomes whole before its first write, so dirty
//! files are never partial); blocks not marked present hold nothing we need.

use std::os::unix::fs::FileExt;

use crate::attrs::Batch;

use crate::engine::Cache;
use crate::error::{CacheError, Result};
use crate::inode::decode_inode;
use crate::inode::{FileId, Inode, Kind, keys};

pub const BLOCK: u64 = 1 << 20;
/// Whole files up to this size are taken to hold all their bytes (no stat).
const SPARSE_CHECK_ABOVE: u64 = 16 << 20;
/// Missing ranges are cut at multiples of this (so a huge read does not become one
/// huge GET), and fetches are locked per piece: concurrent readers of a piece share
/// one GET instead of each fetching their blocks again.
pub const FETCH_PIECE: u64 = 8 * BLOCK;

fn bit(map: &[u8], b: u64) -> bool {
    map.get((b / 8) as usize)
        .is_some_and(|byte| byte & (1 << (b % 8)) != 0)
}

fn set_bit(map: &mut Vec<u8>, b: u64) {
    let i = (b / 8) as usize;
    if map.len() <= i {
        map.resize(i + 1, 0);
    }
    map[i] |= 1 << (b % 8);
}

impl Cache {
    pub(crate) fn data_lock(&self, id: FileId) -> &parking_lot::RwLock<()> {
        &self.data_locks[(id % self.data_locks.len() as u64) as usize]
    }

    fn block_map(&self, id: FileId) -> Result<Vec<u8>> {
        Ok(self
            .db
            .get(keys::blocks(id))?
            .map(|v| v.to_vec())
            .unwrap_or_default())
    }

    /// Byte ranges (block-aligned, coalesced, at most 8 MiB each) of `[offset,
    /// offset+len)` that a partial file does not hold.
    pub fn missing_ranges(&self, ino: &Inode, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        if !ino.partial || len == 0 || offset >= ino.size {
            return Ok(Vec::new());
        }
        let map = self.block_map(ino.id)?;
        let end = (offset + len).min(ino.size);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for b in offset / BLOCK..end.div_ceil(BLOCK) {
            if bit(&map, b) {
                continue;
            }
            let start = b * BLOCK;
            let blen = BLOCK.min(ino.size - start);
            match out.last_mut() {
                // Ranges never cross a FETCH_PIECE boundary: a reader and read-ahead
                // wanting the same piece take the same fetch lock.
                Some((s, l)) if *s + *l == start && !start.is_multiple_of(FETCH_PIECE) => *l += blen,
                _ => out.push((start, blen)),
            }
        }
        Ok(out)
    }

    /// Before a file's first change: fails with the ranges to fetch unless every
    /// block is present, then marks the file whole. Call with the data lock held.
    pub fn make_whole(&self, id: FileId) -> Result<()> {
        let i = self.get(id)?;
        if !i.partial {
            return Ok(());
        }
        let missing = self.missing_ranges(&i, 0, i.size)?;
        if !missing.is_empty() {
            return Err(CacheError::NotCached(id, missing));
        }
        let _st = self.state.lock();
        let mut i = self.get(id)?;
        i.partial = false;
        let mut b = Batch::default();
        Self::put(&mut b, &i);
        b.remove(&keys::blocks(id));
        self.commit_batch(b)
    }

    /// Stores bytes fetched from the object whose ETag is `etag`, starting at the
    /// block-aligned `offset`. Ignored when the file is no longer partial or the store
    /// has since changed (another ETag): those bytes would be stale.
    pub fn fill(&self, id: FileId, etag: &str, offset: u64, data: &[u8]) -> Result<()> {
        debug_assert_eq!(offset % BLOCK, 0);
        let guard = self.data_lock(id).read();
        let i = self.get(id)?;
        if !i.partial || i.remote.etag != etag {
            return Ok(());
        }
        let end = (offset + data.len() as u64).min(i.size);
        if end <= offset {
            return Ok(());
        }
        self.live_file(id)?
            .write_all_at(&data[..(end - offset) as usize], offset)
            .map_err(CacheError::from_io)?;
        let cached = {
            let mut st = self.state.lock();
            let mut i = self.get(id)?;
            if !i.partial || i.remote.etag != etag {
                return Ok(());
            }
            let mut map = self.block_map(id)?;
            let mut added = 0;
            // A block counts only when filled to its end (or to the file's end).
            for b in offset / BLOCK..end.div_ceil(BLOCK) {
                let block_end = ((b + 1) * BLOCK).min(i.size);
                if block_end <= end && !bit(&map, b) {
                    set_bit(&mut map, b);
                    added += block_end - b * BLOCK;
                }
            }
            st.resized(0, added);
            let whole = (0..i.size.div_ceil(BLOCK)).all(|b| bit(&map, b));
            let mut batch = Batch::default();
            if whole {
                i.partial = false;
                Self::put(&mut batch, &i);
                batch.remove(&keys::blocks(id));
            } else {
                batch.insert(&keys::blocks(id), map.clone());
            }
            self.commit_batch(batch)?;
            if whole {
                i.size
            } else {
                map.iter().map(|b| b.count_ones() as u64).sum::<u64>() * BLOCK
            }
        };
        drop(guard);
        // Evictions run after the read that wanted these bytes (in `touch`), never
        // here: a file larger than the whole cache must still be readable.
        self.lru_insert(id, cached);
        Ok(())
    }

    /// Records a use of a clean file's cached data (for LRU eviction).
    pub(crate) fn touch(&self, ino: &Inode) {
        if ino.kind != Kind::File || ino.is_dirty() {
            return;
        }
        if self.lru.get(&ino.id).is_none() {
            self.lru_insert(ino.id, self.cached_bytes(ino));
        }
        // Only an insert can take the LRU past capacity: a READ of a file already in
        // it (the common case) costs one atomic load here, not a pass over moka.
        if self
            .evict_pending
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.run_evictions();
        }
    }

    /// Adds a clean file to the LRU, weighted by its cached KiB; the next `touch`
    /// (or `run_evictions`) makes room.
    pub(crate) fn lru_insert(&self, id: FileId, bytes: u64) {
        self.lru
            .insert(id, ((bytes / 1024).min(u32::MAX as u64) as u32).max(1));
        self.evict_pending
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes of `ino`'s data the cache disk holds: a whole file's size, but at most
    /// its allocated blocks when it is large enough to be sparse (a 5 TiB sparse file
    /// must not weigh 5 TiB in the LRU and push every other file out).
    fn cached_bytes(&self, ino: &Inode) -> u64 {
        if !ino.partial {
            if ino.size <= SPARSE_CHECK_ABOVE {
                return ino.size;
            }
            return std::fs::metadata(self.data_path(ino.id))
                .map_or(ino.size, |m| crate::engine::disk_bytes(&m).min(ino.size));
        }
        let map = self.block_map(ino.id).unwrap_or_default();
        (map.iter().map(|b| b.count_ones() as u64).sum::<u64>() * BLOCK).min(ino.size)
    }

    /// At open: every clean file with cached data joins the LRU.
    pub(crate) fn load_lru(&self) -> Result<()> {
        for kv in self.db.scan_prefix([keys::INODE]) {
            let (_, v) = kv?;
            let ino = decode_inode(&v)?;
            if ino.kind == Kind::File && !ino.unlinked && !ino.is_dirty() && ino.size > 0 {
                let bytes = self.cached_bytes(&ino);
                if ino.partial {
                    self.state.lock().resized(0, bytes);
                }
                if bytes > 0 {
                    self.lru_insert(ino.id, bytes);
                }
            }
        }
        self.run_evictions();
        Ok(())
    }

    /// Drops the data of files the LRU evicted, unless they became dirty since.
    pub fn run_evictions(&self) {
        self.lru.run_pending_tasks();
        let ids: Vec<FileId> = std::mem::take(&mut *self.evictions.lock());
        for id in ids {
            if let Err(e) = self.evict(id) {
                tracing::warn!(file_id = id, error = %e, "eviction failed");
            }
        }
    }

    /// Files evicted so far (for metrics).
    pub fn evict(&self, id: FileId) -> Result<bool> {
        let _guard = self.data_lock(id).write();
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(false);
        };
        // Only data the store holds exactly may go: never dirty data, never a file
        // that was not uploaded.
        if i.kind != Kind::File || i.unlinked || i.is_dirty() || i.remote.key.is_none() {
            return Ok(false);
        }
        let freed = self.cached_bytes(&i);
        self.file(id)?.set_len(0).map_err(CacheError::from_io)?;
        i.partial = true;
        let mut b = Batch::default();
        Self::put(&mut b, &i);
        b.remove(&keys::blocks(id));
        self.commit_batch(b)?;
        st.resized(freed, 0);
        st.evicted_files += 1;
        st.evicted_bytes += freed;
        Ok(true)
    }

    /// (files, bytes) evicted since open.
    pub fn evicted(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.evicted_files, st.evicted_bytes)
    }
}
