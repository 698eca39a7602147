//! The attribute hot set: decoded inodes held in memory (moka, weighted by bytes) in
//! front of sled, so GETATTR, LOOKUP and READDIRPLUS of recently used files neither
//! read sled's pages nor decode a record.
//!
//! sled stays the truth; the hot set only ever holds what sled holds. Every inode
//! change goes through a [`Batch`], and [`AttrCache::commit`] applies it with the
//! touched entries' stripes locked and emptied, so a reader sees either the old
//! record (before the commit began) or the new one, never the old one after the
//! new is in sled. A miss fills under the same stripe lock, so a fill cannot put
//! back a record a concurrent commit has just replaced.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::Result;
use crate::inode::{FileId, Inode, keys};
use crate::journal::{Journal, Op};

const STRIPES: usize = 64;

/// Changes to the metadata store, applied together (through the journal,
/// `crate::journal`), remembering which inodes they write or remove.
#[derive(Default)]
pub(crate) struct Batch {
    ops: Vec<Op>,
    inodes: Vec<(FileId, Option<Arc<Inode>>)>,
}

impl Batch {
    /// Inserts a record that is not an inode (inodes go through `put_inode`).
    pub(crate) fn insert(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        let key = key.into();
        debug_assert_ne!(key.first(), Some(&keys::INODE), "inodes go through put_inode");
        self.ops.push((key, Some(value.into())));
    }

    pub(crate) fn remove(&mut self, key: impl Into<sled::IVec>) {
        let key = key.into();
        debug_assert_ne!(key.first(), Some(&keys::INODE), "inodes go through remove_inode");
        self.ops.push((key, None));
    }

    pub(crate) fn put_inode(&mut self, ino: &Inode) {
        self.ops.push((
            sled::IVec::from(&keys::inode(ino.id)[..]),
            Some(crate::inode::encode(ino).into()),
        ));
        self.inodes.push((ino.id, Some(Arc::new(ino.clone()))));
    }

    pub(crate) fn remove_inode(&mut self, id: FileId) {
        self.ops.push((sled::IVec::from(&keys::inode(id)[..]), None));
        self.ops.push((sled::IVec::from(&keys::intents(id)[..]), None));
        self.inodes.push((id, None));
    }
}

pub(crate) struct AttrCache {
    /// `None` when configured with no memory: every read goes to sled.
    map: Option<moka::sync::Cache<FileId, Arc<Inode>>>,
    stripes: Vec<Mutex<()>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Roughly what an entry costs in memory.
fn weight(i: &Inode) -> u32 {
    let heap = i.name.len()
        + i.symlink_target.len()
        + i.remote.key.as_ref().map_or(0, String::len)
        + i.remote.etag.len()
        + i.remote.stale_keys.iter().map(String::len).sum::<usize>();
    (std::mem::size_of::<Inode>() + 64 + heap).min(u32::MAX as usize) as u32
}

impl AttrCache {
    pub(crate) fn new(capacity_bytes: u64) -> AttrCache {
        AttrCache {
            map: (capacity_bytes > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(capacity_bytes)
                    .weigher(|_, i: &Arc<Inode>| weight(i))
                    .build()
            }),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn stripe(id: FileId) -> usize {
        (id % STRIPES as u64) as usize
    }

    /// The inode `id` as sled holds it, from memory when it is there.
    pub(crate) fn get(
        &self,
        id: FileId,
        read: impl FnOnce() -> Result<Option<Inode>>,
    ) -> Result<Option<Arc<Inode>>> {
        let Some(map) = &self.map else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(read()?.map(Arc::new));
        };
        if let Some(i) = map.get(&id) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(i));
        }
        let _fill = self.stripes[Self::stripe(id)].lock();
        if let Some(i) = map.get(&id) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(i));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let Some(i) = read()? else {
            return Ok(None);
        };
        let i = Arc::new(i);
        map.insert(id, i.clone());
        Ok(Some(i))
    }

    /// Applies `batch` through `journal` and brings the hot set in line with it.
    pub(crate) fn commit(&self, journal: &Journal, batch: Batch) -> Result<()> {
        let Some(map) = &self.map else {
            return journal.apply(&batch.ops);
        };
        let mut stripes: Vec<usize> = batch.inodes.iter().map(|(id, _)| Self::stripe(*id)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        // In one order, so two commits never wait on each other's stripes.
        let _held: Vec<_> = stripes.iter().map(|s| self.stripes[*s].lock()).collect();
        for (id, _) in &batch.inodes {
            map.invalidate(id);
        }
        journal.apply(&batch.ops)?;
        // The last write of an id in the batch is what sled now holds.
        let mut seen = std::collections::HashSet::new();
        for (id, ino) in batch.inodes.into_iter().rev() {
            if let (true, Some(ino)) = (seen.insert(id), ino) {
                map.insert(id, ino);
            }
        }
        Ok(())
    }

    /// (hits, misses) since open.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// The entry held for `id`, if any (tests compare it with sled).
    #[cfg(test)]
    pub(crate) fn peek(&self, id: FileId) -> Option<Arc<Inode>> {
        self.map.as_ref()?.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use crate::args::{CreateMode, SetAttr};
    use crate::engine::Cache;
    use crate::inode::{decode_inode, keys};
    use crate::options::CacheOptions;
    use crate::perm::Caller;
    use crate::{CacheError, ROOT_ID};

    fn user() -> Caller {
        Caller::new(1000, 1000, vec![])
    }

    fn chmod(mode: u32) -> SetAttr {
        SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        }
    }

    fn on_disk(c: &Cache, id: u64) -> Option<crate::Inode> {
        c.db.get(keys::inode(id))
            .unwrap()
            .map(|v| decode_inode(&v).unwrap())
    }

    #[test]
    fn repeated_reads_come_from_memory_and_see_every_change() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path(), CacheOptions::default()).unwrap();
        let (f, _) = c
            .create(&user(), ROOT_ID, b"a", CreateMode::Unchecked(chmod(0o600)))
            .unwrap();
        let (_, misses0) = c.attr_cache_stats();
        for _ in 0..1000 {
            assert_eq!(c.get(f.id).unwrap().mode, 0o600);
        }
        let (hits, misses) = c.attr_cache_stats();
        assert!(hits >= 1000, "{hits} hits");
        assert_eq!(misses, misses0, "a created inode is in memory from the start");

        c.setattr(&user(), f.id, chmod(0o640), None).unwrap();
        assert_eq!(c.get(f.id).unwrap().mode, 0o640);
        c.write(&user(), f.id, 0, b"12345", false).unwrap();
        assert_eq!(c.get(f.id).unwrap().size, 5);
        c.remove(&user(), ROOT_ID, b"a").unwrap();
        let gone = c.get(f.id);
        assert!(matches!(gone, Err(CacheError::Stale)), "{gone:?}");
        assert_eq!(c.get(f.id).ok(), on_disk(&c, f.id).filter(|i| !i.unlinked));
    }

    #[test]
    fn with_no_memory_every_read_goes_to_sled() {
        let t = tempfile::tempdir().unwrap();
        let opts = CacheOptions {
            attr_cache_bytes: 0,
            ..CacheOptions::default()
        };
        let c = Cache::open(t.path(), opts).unwrap();
        let (f, _) = c
            .create(&user(), ROOT_ID, b"a", CreateMode::Unchecked(chmod(0o600)))
            .unwrap();
        c.setattr(&user(), f.id, chmod(0o640), None).unwrap();
        assert_eq!(c.get(f.id).unwrap().mode, 0o640);
        assert_eq!(c.attr_cache_stats().0, 0);
        assert!(c.attrs.peek(f.id).is_none());
    }

    /// Writers change attributes while readers keep missing (the hot set holds a few
    /// entries only) and filling it: a fill must never put back a record a
    /// concurrent change has replaced.
    #[test]
    fn concurrent_changes_and_fills_leave_memory_equal_to_sled() {
        let t = tempfile::tempdir().unwrap();
        let opts = CacheOptions {
            attr_cache_bytes: 4 << 10,
            ..CacheOptions::default()
        };
        let c = Cache::open(t.path(), opts).unwrap();
        let ids: Vec<u64> = (0..16)
            .map(|n| {
                let name = format!("f{n}");
                let how = CreateMode::Unchecked(chmod(0o600));
                c.create(&user(), ROOT_ID, name.as_bytes(), how).unwrap().0.id
            })
            .collect();
        std::thread::scope(|s| {
            for w in 0..2u32 {
                let (c, ids) = (&c, &ids);
                s.spawn(move || {
                    for round in 0..6000u32 {
                        // Each writer owns half the files, so what it set last is
                        // what every later read must see.
                        let id = ids[(round as usize * 2 + w as usize) % ids.len()];
                        let mode = 0o400 | ((round + w) % 0o400);
                        c.setattr(&user(), id, chmod(mode), None).unwrap();
                        assert_eq!(c.get(id).unwrap().mode, mode, "file {id} read back");
                    }
                });
            }
            for r in 0..3usize {
                let (c, ids) = (&c, &ids);
                s.spawn(move || {
                    for n in 0..60_000 {
                        c.get(ids[(r + n * 5) % ids.len()]).unwrap();
                    }
                });
            }
        });
        let (_, misses) = c.attr_cache_stats();
        assert!(misses > 100, "readers filled the hot set only {misses} times");
        for id in ids {
            if let Some(hot) = c.attrs.peek(id) {
                assert_eq!(Some(&*hot), on_disk(&c, id).as_ref(), "file {id}");
            }
            assert_eq!(c.get(id).ok(), on_disk(&c, id));
        }
    }
}
