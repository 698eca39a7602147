//! The store side of reads: listing directories into the namespace, reading object
//! metadata, fetching missing blocks by ranged GET, and read-ahead for sequential
//! readers. The cache engine says what is missing; this module fetches it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bucketgate_cache::{
    BLOCK, Cache, CacheError, FETCH_PIECE, FileId, Inode, Kind, ListingChanges, RemoteAttrs, RemoteEntry,
    RemoteKind,
};
use parking_lot::Mutex;
use tokio::sync::Mutex as AsyncMutex;

use crate::remote::{ObjectStore, StoreError};

/// Largest read-ahead window for one sequential reader.
const MAX_WINDOW: u64 = 64 << 20;
const FIRST_WINDOW: u64 = 8 << 20;
const LIST_PAGE: i32 = 1000;
const FETCH_CONCURRENCY: usize = 8;
/// A sequential reader's READs arrive out of order when it keeps several in flight
/// (the Linux client: 16 of 1 MiB) and the server runs them concurrently; a READ
/// within this many READs' length of where the reader has got to still continues its
/// stream.
const READS_IN_FLIGHT: u64 = 16;

/// One lock per (file, range start) being fetched.
type RangeLocks = Mutex<HashMap<(FileId, u64), Arc<AsyncMutex<()>>>>;

#[derive(Default)]
struct Stream {
    next_offset: u64,
    window: u64,
    /// Read-ahead has been started up to here.
    ahead_to: u64,
}

pub struct ReadThrough {
    cache: Arc<Cache>,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    stale_after: Option<Duration>,
    /// One fetch of a given range at a time; a second reader waits, then finds it cached.
    fetching: RangeLocks,
    listing: Mutex<HashMap<FileId, Arc<AsyncMutex<()>>>>,
    /// When each directory's last listing in this process started. Staleness is
    /// measured on tokio's clock, not the wall clock: a clock step cannot make every
    /// directory stale (or none), and tests can pause time. A directory not listed
    /// since the start counts as stale (listed again once after a restart).
    listed_at: Mutex<HashMap<FileId, tokio::time::Instant>>,
    streams: Mutex<HashMap<FileId, Stream>>,
}

fn store_err(e: StoreError) -> CacheError {
    match e {
        StoreError::NotFound => CacheError::Stale,
        // The client retries a JUKEBOX; a store outage must not look like data loss.
        StoreError::Transient { .. } => CacheError::TryLater,
        other => CacheError::Io(std::io::Error::other(other.to_string())),
    }
}

fn key_lock(map: &RangeLocks, k: (FileId, u64)) -> Arc<AsyncMutex<()>> {
    map.lock().entry(k).or_default().clone()
}

impl ReadThrough {
    pub fn new(
        cache: Arc<Cache>,
        store: Arc<dyn ObjectStore>,
        prefix: String,
        stale_after: Option<Duration>,
    ) -> Arc<ReadThrough> {
        Arc::new(ReadThrough {
            cache,
            store,
            prefix,
            stale_after,
            fetching: Mutex::default(),
            listing: Mutex::default(),
            listed_at: Mutex::default(),
            streams: Mutex::default(),
        })
    }

    /// Lists `dir` from the store if it never was, or if it is older than
    /// `cache_stale_after`.
    pub async fn ensure_listed(&self, dir: FileId) -> Result<(), CacheError> {
        if !self.needs_listing(dir)? {
            return Ok(());
        }
        let lock = self.listing.lock().entry(dir).or_default().clone();
        let _g = lock.lock().await;
        if !self.needs_listing(dir)? {
            return Ok(()); // listed by whoever held the lock
        }
        match self.list(dir).await {
            Ok(_) => Ok(()),
            // Listed before: serve that listing until the store answers again.
            Err(e) if self.cache.get(dir)?.listed_ns != 0 => {
                tracing::debug!(dir, error = %e, "re-listing failed; serving the previous listing");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn needs_listing(&self, dir: FileId) -> Result<bool, CacheError> {
        if self.cache.needs_listing(dir, None)? {
            return Ok(true); // never listed (or marked for listing)
        }
        let Some(ttl) = self.stale_after else {
            return Ok(false);
        };
        if self.cache.get(dir)?.kind != Kind::Dir {
            return Ok(false);
        }
        Ok(self.listed_at.lock().get(&dir).is_none_or(|t| t.elapsed() > ttl))
    }

    /// Before a change in `dir` (create, remove, rename): learn what the store holds
    /// there. When the store cannot be reached the change goes ahead anyway (writes
    /// are accepted during an outage); the directory is listed once the store is back,
    /// and a local change not yet uploaded wins over that listing.
    pub async fn list_before_change(&self, dir: FileId) {
        if let Err(e) = self.ensure_listed(dir).await {
            tracing::debug!(dir, error = %e, "could not list before a change; going ahead");
        }
    }

    /// Lists `dir` now (paginated ListObjectsV2 with a delimiter; no HEAD per object).
    pub async fn list(&self, dir: FileId) -> Result<ListingChanges, CacheError> {
        let d = self.cache.get(dir)?;
        if d.kind != Kind::Dir {
            return Err(CacheError::NotDir);
        }
        let path = self.cache.path_of(&d)?;
        let prefix = if path.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{path}/", self.prefix)
        };
        let started = now_ns();
        let started_at = tokio::time::Instant::now();
        let mut entries = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .store
                .list(&prefix, Some("/"), token.as_deref(), LIST_PAGE)
                .await
                .map_err(store_err)?;
            for o in page.objects {
                let Some(name) = o.key.strip_prefix(&prefix) else {
                    continue;
                };
                if name.is_empty() {
                    continue; // the directory's own marker
                }
                if let Some(dir_name) = name.strip_suffix('/') {
                    // A "name/" marker of a subdirectory listed as an object.
                    entries.push(RemoteEntry {
                        name: dir_name.as_bytes().to_vec(),
                        kind: RemoteKind::Dir,
                    });
                    continue;
                }
                entries.push(RemoteEntry {
                    name: name.as_bytes().to_vec(),
                    kind: RemoteKind::File {
                        size: o.size,
                        etag: o.etag,
                        mtime_ns: o.last_modified_ns.unwrap_or_else(now_ns),
                    },
                });
            }
            for p in page.common_prefixes {
                if let Some(name) = p.strip_prefix(&prefix).and_then(|n| n.strip_suffix('/'))
                    && !name.is_empty()
                {
                    entries.push(RemoteEntry {
                        name: name.as_bytes().to_vec(),
                        kind: RemoteKind::Dir,
                    });
                }
            }
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        // A name that is both an object and a prefix is shown as the directory, as
        // File Gateway does.
        let dirs: std::collections::HashSet<Vec<u8>> = entries
            .iter()
            .filter(|e| matches!(e.kind, RemoteKind::Dir))
            .map(|e| e.name.clone())
            .collect();
        entries.retain(|e| matches!(e.kind, RemoteKind::Dir) || !dirs.contains(&e.name));
        entries.dedup_by(|a, b| a.name == b.name);
        let cache = self.cache.clone();
        let changes = tokio::task::spawn_blocking(move || cache.apply_listing(dir, entries, started))
            .await
            .map_err(|e| CacheError::Meta(e.to_string()))??;
        self.listed_at.lock().insert(dir, started_at);
        Ok(changes)
    }

    /// Re-lists `dir` and, with `recursive`, every directory below it that was listed
    /// before. Returns (directories, changes).
    pub async fn refresh(&self, dir: FileId, recursive: bool) -> Result<(u64, ListingChanges), CacheError> {
        let mut todo = vec![dir];
        let mut total = ListingChanges::default();
        let mut dirs = 0;
        while let Some(d) = todo.pop() {
            let c = self.list(d).await?;
            dirs += 1;
            total.added += c.added;
            total.changed += c.changed;
            total.removed += c.removed;
            if recursive {
                let mut cookie = 0;
                loop {
                    let l = self
                        .cache
                        .readdir(&bucketgate_cache::Caller::root(), d, cookie, 1024)?;
                    for e in &l.entries {
                        cookie = e.cookie;
                        if e.attr.kind == Kind::Dir
                            && e.name != b"."
                            && e.name != b".."
                            && e.attr.listed_ns != 0
                        {
                            todo.push(e.attr.id);
                        }
                    }
                    if l.eof {
                        break;
                    }
                }
            }
        }
        Ok((dirs, total))
    }

    /// Reads the object's metadata once for an entry a listing created.
    pub async fn ensure_attrs(&self, ino: Inode) -> Result<Inode, CacheError> {
        if !ino.meta_pending {
            return Ok(ino);
        }
        let Some(rel) = ino.remote.key.clone() else {
            return Ok(ino);
        };
        let attrs = match self.store.head(&format!("{}{rel}", self.prefix)).await {
            Ok(Some(info)) => info.meta.map(|m| RemoteAttrs {
                uid: m.uid,
                gid: m.gid,
                mode: m.mode,
                mtime_ns: m.mtime_ns,
            }),
            Ok(None) => None,
            Err(e) => {
                // Attributes can wait; the defaults stand until the store answers.
                tracing::debug!(error = %e, "HEAD for attributes failed");
                return Ok(ino);
            }
        };
        let cache = self.cache.clone();
        let id = ino.id;
        tokio::task::spawn_blocking(move || cache.apply_head(id, attrs))
            .await
            .map_err(|e| CacheError::Meta(e.to_string()))?
    }

    /// Fetches the given byte ranges of a partial file into the cache.
    pub async fn fetch(&self, id: FileId, ranges: &[(u64, u64)]) -> Result<(), CacheError> {
        // A READ needs one or two ranges; a first write to a big file needs them all:
        // a few GETs in flight keep the link busy without flooding the store.
        let permits = tokio::sync::Semaphore::new(FETCH_CONCURRENCY);
        let mut futs = Vec::with_capacity(ranges.len());
        for &(start, len) in ranges {
            let permits = &permits;
            futs.push(async move {
                let _p = permits
                    .acquire()
                    .await
                    .map_err(|e| CacheError::Meta(e.to_string()))?;
                self.fetch_range(id, start, len).await
            });
        }
        futures::future::join_all(futs).await.into_iter().collect()
    }

    /// Fetches what is still missing of `[start, start+len)`, which lies within one
    /// [`FETCH_PIECE`]. One fetch per piece at a time: a reader whose blocks read-ahead
    /// is already fetching waits for that GET instead of sending its own.
    async fn fetch_range(&self, id: FileId, start: u64, len: u64) -> Result<(), CacheError> {
        let piece = start / FETCH_PIECE * FETCH_PIECE;
        let lock = key_lock(&self.fetching, (id, piece));
        let _g = lock.lock().await;
        let result = async {
            let ino = self.cache.get(id)?;
            // Usually all of it, or nothing when another reader fetched it meanwhile.
            for (at, n) in self.cache.missing_ranges(&ino, start, len)? {
                let rel = ino.remote.key.clone().ok_or(CacheError::Stale)?;
                let bytes = self
                    .store
                    .get_range(&format!("{}{rel}", self.prefix), at, n)
                    .await
                    .map_err(store_err)?;
                let cache = self.cache.clone();
                let etag = ino.remote.etag.clone();
                tokio::task::spawn_blocking(move || cache.fill(id, &etag, at, &bytes))
                    .await
                    .map_err(|e| CacheError::Meta(e.to_string()))??;
            }
            Ok(())
        }
        .await;
        drop(_g);
        let mut map = self.fetching.lock();
        if map.get(&(id, piece)).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(&(id, piece));
        }
        result
    }

    /// Called on every READ: a reader that continues where it stopped gets a growing
    /// window fetched ahead of it, so a cold sequential read runs at store bandwidth.
    pub fn read_ahead(self: &Arc<Self>, ino: &Inode, offset: u64, len: u64) {
        if !ino.partial {
            self.streams.lock().remove(&ino.id);
            return;
        }
        let end = offset + len;
        let (from, to) = {
            let mut streams = self.streams.lock();
            let fresh = !streams.contains_key(&ino.id);
            let s = streams.entry(ino.id).or_default();
            let slack = len * READS_IN_FLIGHT;
            let sequential = if fresh {
                offset == 0
            } else {
                offset <= s.next_offset + slack && end + slack >= s.next_offset
            };
            if sequential && end <= s.next_offset {
                return; // a late READ of this stream (or a re-read): nothing new ahead
            }
            if !sequential {
                *s = Stream {
                    next_offset: end,
                    window: 0,
                    ahead_to: end,
                };
                return;
            }
            s.next_offset = s.next_offset.max(end);
            s.window = if s.window == 0 {
                FIRST_WINDOW
            } else {
                (s.window * 2).min(MAX_WINDOW)
            };
            let from = s.ahead_to.max(end);
            // Whole pieces, topped up as soon as the reader has used one: about
            // window / FETCH_PIECE GETs stay in flight.
            let to = ((end + s.window) / FETCH_PIECE * FETCH_PIECE).min(ino.size);
            if to <= from || (to - from < FETCH_PIECE && to < ino.size) {
                return; // enough already in flight
            }
            s.ahead_to = to;
            (from / BLOCK * BLOCK, to)
        };
        let me = self.clone();
        let id = ino.id;
        tokio::spawn(async move {
            let Ok(i) = me.cache.get(id) else { return };
            if let Ok(missing) = me.cache.missing_ranges(&i, from, to - from)
                && let Err(e) = me.fetch(id, &missing).await
            {
                tracing::debug!(file_id = id, error = %e, "read-ahead failed");
            }
        });
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
