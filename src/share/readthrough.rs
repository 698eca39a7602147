//! The store side of reads: listing directories into the namespace, reading object
//! metadata, fetching missing blocks by ranged GET, and read-ahead for sequential
//! readers. The cache engine says what is missing; this module fetches it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bucketgate_cache::{
    BLOCK, Cache, CacheError, FETCH_PIECE, FileId, Inode, Kind, ListingChanges, MAX_NAME_BYTES,
    MAX_SYMLINK_TARGET, ObjectHead, RemoteEntry, RemoteKind,
};
use parking_lot::Mutex;
use tokio::sync::Mutex as AsyncMutex;

use super::run_blocking as blocking;

mod ahead;
mod revalidate;
use crate::remote::meta::{S_IFLNK, S_IFMT};
use crate::remote::{ObjectInfo, ObjectStore, StoreError};
pub use revalidate::{KeyEvent, Revalidated};

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
/// HEADs in flight when a directory's entries need their attributes (a READDIRPLUS
/// page of a directory never looked at); measured in `benches/`.
const HEAD_CONCURRENCY: usize = 64;
/// Directories whose metadata is read ahead at once; a READDIRPLUS of another reads
/// each page's attributes as it comes.
const MAX_AHEAD: usize = 8;
/// Hidden keys remembered so each is logged and counted once.
const MAX_HIDDEN_REMEMBERED: usize = 100_000;

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
    /// Directories whose entries' metadata is being read ahead of READDIRPLUS.
    ahead: Arc<Mutex<HashMap<FileId, Arc<ahead::Ahead>>>>,
    /// When each directory's last listing in this process started. Staleness is
    /// measured on tokio's clock, not the wall clock: a clock step cannot make every
    /// directory stale (or none), and tests can pause time. A directory not listed
    /// since the start counts as stale (listed again once after a restart).
    listed_at: Mutex<HashMap<FileId, tokio::time::Instant>>,
    streams: Mutex<HashMap<FileId, Stream>>,
    /// Keys left out of listings (they cannot be paths), and their counter.
    hidden: Mutex<HashSet<String>>,
    hidden_counter: Option<prometheus::IntCounter>,
}

/// The entries of each directory below a listed prefix, by path relative to it.
#[derive(Default)]
struct Tree {
    dirs: HashMap<String, DirEntries>,
}

#[derive(Default)]
struct DirEntries {
    files: Vec<RemoteEntry>,
    dirs: HashSet<String>,
}

impl Tree {
    fn add(&mut self, parent: &str, name: &str, kind: RemoteKind) {
        let d = self.dirs.entry(parent.to_owned()).or_default();
        match kind {
            RemoteKind::Dir => {
                d.dirs.insert(name.to_owned());
            }
            file => d.files.push(RemoteEntry {
                name: name.as_bytes().to_vec(),
                kind: file,
            }),
        }
    }

    /// The entries of directory `rel`. A name that is both an object and a prefix
    /// is shown as the directory, as File Gateway does.
    fn take(&mut self, rel: &str) -> Vec<RemoteEntry> {
        let Some(d) = self.dirs.remove(rel) else {
            return Vec::new();
        };
        let mut out: Vec<RemoteEntry> = d
            .files
            .into_iter()
            .filter(|f| !d.dirs.contains(String::from_utf8_lossy(&f.name).as_ref()))
            .collect();
        out.extend(d.dirs.into_iter().map(|n| RemoteEntry {
            name: n.into_bytes(),
            kind: RemoteKind::Dir,
        }));
        out
    }
}

/// Can this key segment be a file name? Any byte but NUL and `/` (no key has
/// those), not empty, `.` or `..`, at most 255 bytes.
fn name_ok(seg: &str) -> bool {
    !seg.is_empty() && seg != "." && seg != ".." && seg.len() <= MAX_NAME_BYTES && !seg.contains('\0')
}

/// Reads the attributes of inode `id` from its object's metadata (a HEAD; and for an
/// object whose metadata says symlink, its body as the target) unless they are
/// known already. Shared by every path that must not act on placeholders: replies,
/// permission checks, and the uploader before it writes an object's metadata.
pub async fn read_object_attrs(
    cache: &Arc<Cache>,
    store: &dyn ObjectStore,
    prefix: &str,
    id: FileId,
) -> Result<(), CacheError> {
    let Some(head) = head_of(cache, store, prefix, id).await? else {
        return Ok(());
    };
    let cache = cache.clone();
    blocking(move || cache.apply_head(id, head)).await.map(|_| ())
}

/// What the store holds for inode `id` whose attributes are not known yet: `None`
/// when they are known already (nothing to read), `Some(None)` when its object is
/// gone.
async fn head_of(
    cache: &Arc<Cache>,
    store: &dyn ObjectStore,
    prefix: &str,
    id: FileId,
) -> Result<Option<Option<ObjectHead>>, CacheError> {
    let ino = cache.load_any(id)?.ok_or(CacheError::Stale)?;
    if !ino.meta_pending {
        return Ok(None);
    }
    let Some(rel) = &ino.remote.key else {
        return Ok(Some(Some(ObjectHead {
            etag: ino.remote.etag.clone(),
            size: ino.size,
            attrs: None,
            symlink_target: None,
        })));
    };
    head_key(store, &format!("{prefix}{rel}"), ino.kind == Kind::File)
        .await
        .map(Some)
}

/// What the store holds at `key` (`None`: no such object); for a regular file whose
/// metadata says symlink, with the target its body holds.
async fn head_key(store: &dyn ObjectStore, key: &str, file: bool) -> Result<Option<ObjectHead>, CacheError> {
    let Some(info) = store.head(key).await.map_err(store_err)? else {
        return Ok(None);
    };
    let attrs = info.meta;
    let symlink_target = match attrs {
        Some(a) if a.mode & S_IFMT == S_IFLNK && file => symlink_body(store, key, &info).await?,
        _ => None,
    };
    Ok(Some(ObjectHead {
        etag: info.etag,
        size: info.size,
        attrs,
        symlink_target,
    }))
}

/// The target of an object whose metadata says symlink: its body, when that can be
/// one (1 to 4,096 bytes, no NUL); `None` keeps it a regular file.
async fn symlink_body(
    store: &dyn ObjectStore,
    key: &str,
    info: &ObjectInfo,
) -> Result<Option<Vec<u8>>, CacheError> {
    if info.size == 0 || info.size > MAX_SYMLINK_TARGET as u64 {
        tracing::warn!(
            key,
            size = info.size,
            "an object marked as a symlink has no usable target; it stays a regular file"
        );
        return Ok(None);
    }
    let body = store.get_range(key, 0, info.size).await.map_err(store_err)?;
    if body.is_empty() || body.contains(&0) {
        tracing::warn!(
            key,
            "an object marked as a symlink has no usable target; it stays a regular file"
        );
        return Ok(None);
    }
    Ok(Some(body.to_vec()))
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
        hidden_counter: Option<prometheus::IntCounter>,
    ) -> Arc<ReadThrough> {
        Arc::new(ReadThrough {
            cache,
            store,
            prefix,
            stale_after,
            fetching: Mutex::default(),
            listing: Mutex::default(),
            ahead: Arc::default(),
            listed_at: Mutex::default(),
            streams: Mutex::default(),
            hidden: Mutex::default(),
            hidden_counter,
        })
    }

    /// Lists `dir` from the store if it never was, or if it is older than
    /// `cache_stale_after`.
    pub async fn ensure_listed(&self, dir: FileId) -> Result<(), CacheError> {
        self.ensure_listed_with(dir, false).await
    }

    /// [`Self::ensure_listed`] for a READDIRPLUS whose entries' attributes will be
    /// read: a listing made here reads them ahead (see `ahead`).
    pub async fn ensure_listed_with_attrs(&self, dir: FileId) -> Result<(), CacheError> {
        self.ensure_listed_with(dir, true).await
    }

    async fn ensure_listed_with(&self, dir: FileId, attrs: bool) -> Result<(), CacheError> {
        if !self.needs_listing(dir)? {
            return Ok(());
        }
        let lock = self.listing.lock().entry(dir).or_default().clone();
        let _g = lock.lock().await;
        if !self.needs_listing(dir)? {
            return Ok(()); // listed by whoever held the lock
        }
        match self.list_with(dir, attrs).await {
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

    /// Every key under `prefix` (paginated ListObjectsV2), with `delimiter`'s common
    /// prefixes; each page's names are handed to `feed` as it arrives.
    async fn list_keys(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        feed: Option<&ahead::Feed>,
    ) -> Result<(Vec<ObjectInfo>, Vec<String>), CacheError> {
        let (mut objects, mut prefixes) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        loop {
            let page = self
                .store
                .list(prefix, delimiter, token.as_deref(), LIST_PAGE)
                .await
                .map_err(store_err)?;
            if let Some(f) = feed {
                let names = page.objects.iter().map(|o| (&o.key, false));
                for (key, dir) in names.chain(page.common_prefixes.iter().map(|p| (p, true))) {
                    let rel = key.strip_prefix(prefix).unwrap_or_default();
                    let name = if dir {
                        rel.strip_suffix('/').unwrap_or_default()
                    } else {
                        rel
                    };
                    if name_ok(name) && !name.contains('/') {
                        f.entry(name, key, dir);
                    }
                }
            }
            objects.extend(page.objects);
            prefixes.extend(page.common_prefixes);
            match page.next_token {
                Some(t) => token = Some(t),
                None => return Ok((objects, prefixes)),
            }
        }
    }

    /// The store prefix of directory `d` ("<share prefix>a/b/").
    fn dir_prefix(&self, d: &Inode) -> Result<String, CacheError> {
        let path = self.cache.path_of(d)?;
        Ok(if path.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{path}/", self.prefix)
        })
    }

    /// A key that cannot be a path of the share is left out; it is counted and named
    /// in the log once.
    fn hide(&self, key: &str) {
        let mut seen = self.hidden.lock();
        if seen.len() < MAX_HIDDEN_REMEMBERED && seen.insert(key.to_owned()) {
            tracing::warn!(
                key = key.escape_debug().to_string(),
                "an object key that cannot be a file name (an empty, `.` or `..` segment, or one over 255 bytes) is not shown"
            );
            if let Some(c) = &self.hidden_counter {
                c.inc();
            }
        }
    }

    /// Lists `dir` now (paginated ListObjectsV2 with a delimiter; no HEAD per object).
    pub async fn list(&self, dir: FileId) -> Result<ListingChanges, CacheError> {
        self.list_with(dir, false).await
    }

    /// [`Self::list`]; with `attrs`, the entries' metadata is read ahead as the
    /// listing's pages arrive.
    async fn list_with(&self, dir: FileId, attrs: bool) -> Result<ListingChanges, CacheError> {
        let d = self.cache.get(dir)?;
        if d.kind != Kind::Dir {
            return Err(CacheError::NotDir);
        }
        let prefix = self.dir_prefix(&d)?;
        let started = now_ns();
        let started_at = tokio::time::Instant::now();
        let feed = if attrs { self.start_ahead(dir) } else { None };
        let (objects, prefixes) = self.list_keys(&prefix, Some("/"), feed.as_ref()).await?;
        let mut tree = Tree::default();
        let leaving = self.cache.anything_leaving()?;
        for o in objects {
            let key = o.key.clone();
            self.place(&mut tree, &prefix, &key, Some(o), leaving, started)?;
        }
        for p in prefixes {
            if !self.only_leaving_below(&p, started).await? {
                self.place(&mut tree, &prefix, &p, None, false, started)?;
            }
        }
        let entries = tree.take("");
        let changes = self.apply(dir, entries, started).await?;
        self.listed_at.lock().insert(dir, started_at);
        if let Some(f) = feed {
            f.listed();
        }
        Ok(changes)
    }

    /// A read-ahead of `dir`'s metadata, unless one runs already or too many do.
    fn start_ahead(&self, dir: FileId) -> Option<ahead::Feed> {
        let mut running = self.ahead.lock();
        if running.contains_key(&dir) || running.len() >= MAX_AHEAD {
            return None;
        }
        let map = self.ahead.clone();
        let (a, feed) = ahead::Ahead::start(
            self.cache.clone(),
            self.store.clone(),
            self.prefix.clone(),
            dir,
            move || {
                map.lock().remove(&dir);
            },
        );
        running.insert(dir, a);
        Some(feed)
    }

    /// Lists everything below `dir` at every depth (ListObjectsV2 without a
    /// delimiter) into the namespace, so that a change to the whole directory (a
    /// rename, an rmdir) acts on what the store holds, not on what was listed so far.
    /// Every directory below comes out listed. Fails when the store cannot be listed:
    /// the caller must not act on a partial view.
    pub async fn list_subtree(&self, dir: FileId) -> Result<ListingChanges, CacheError> {
        let d = self.cache.get(dir)?;
        if d.kind != Kind::Dir {
            return Err(CacheError::NotDir);
        }
        let prefix = self.dir_prefix(&d)?;
        let started = now_ns();
        let started_at = tokio::time::Instant::now();
        let (objects, _) = self.list_keys(&prefix, None, None).await?;
        let mut tree = Tree::default();
        let leaving = self.cache.anything_leaving()?;
        for o in objects {
            let key = o.key.clone();
            self.place(&mut tree, &prefix, &key, Some(o), leaving, started)?;
        }
        let mut total = ListingChanges::default();
        // Top down, so each directory exists before its own entries are applied;
        // local directories the store has nothing under are listed as empty.
        let mut todo = vec![(dir, String::new())];
        while let Some((id, rel)) = todo.pop() {
            let c = self.apply(id, tree.take(&rel), started).await?;
            total.add(c);
            self.listed_at.lock().insert(id, started_at);
            for (name, sub) in self.subdirs(id).await? {
                let name = String::from_utf8_lossy(&name);
                let sub_rel = if rel.is_empty() {
                    name.into_owned()
                } else {
                    format!("{rel}/{name}")
                };
                todo.push((sub, sub_rel));
            }
        }
        Ok(total)
    }

    /// Puts `key` (an object when `obj` is given, else a common prefix) into `tree`
    /// under the directory it belongs to, relative to `prefix`; every directory on
    /// its way is an entry of its parent.
    fn place(
        &self,
        tree: &mut Tree,
        prefix: &str,
        key: &str,
        obj: Option<ObjectInfo>,
        leaving: bool,
        listed_ns: u64,
    ) -> Result<(), CacheError> {
        let Some(rel) = key.strip_prefix(prefix) else {
            return Ok(());
        };
        if rel.is_empty() {
            return Ok(()); // the directory's own marker
        }
        // An object the gateway is deleting or moving away is not there for the
        // namespace, nor are the directories only it would make.
        if let Some(o) = &obj
            && leaving
            && let Some(share_rel) = key.strip_prefix(&self.prefix)
            && self.cache.leaving(share_rel, &o.etag, listed_ns)?
        {
            return Ok(());
        }
        let (path, leaf_is_dir) = match rel.strip_suffix('/') {
            Some(p) => (p, true),
            None => (rel, false),
        };
        let parts: Vec<&str> = path.split('/').collect();
        if !parts.iter().all(|p| name_ok(p)) {
            self.hide(key);
            return Ok(());
        }
        let mut parent = String::new();
        for (i, part) in parts.iter().enumerate() {
            let kind = match &obj {
                Some(o) if i + 1 == parts.len() && !leaf_is_dir => RemoteKind::File {
                    size: o.size,
                    etag: o.etag.clone(),
                    mtime_ns: o.last_modified_ns.unwrap_or_else(now_ns),
                },
                _ => RemoteKind::Dir,
            };
            tree.add(&parent, part, kind);
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
        }
        Ok(())
    }

    /// Whether a common prefix (a subdirectory) holds nothing but what the gateway
    /// is removing: its own marker, left behind by an rmdir here, and objects being
    /// deleted. One short listing, and only for a directory whose marker is leaving.
    async fn only_leaving_below(&self, prefix: &str, listed_ns: u64) -> Result<bool, CacheError> {
        let Some(rel) = prefix.strip_prefix(&self.prefix) else {
            return Ok(false);
        };
        if self.cache.left_version(rel)?.is_none() && !self.cache.leaving(rel, "", listed_ns)? {
            return Ok(false);
        }
        let page = self
            .store
            .list(prefix, None, None, 100)
            .await
            .map_err(store_err)?;
        if page.next_token.is_some() {
            return Ok(false);
        }
        for o in &page.objects {
            let Some(k) = o.key.strip_prefix(&self.prefix) else {
                return Ok(false);
            };
            if !self.cache.leaving(k, &o.etag, listed_ns)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn apply(
        &self,
        dir: FileId,
        entries: Vec<RemoteEntry>,
        started: u64,
    ) -> Result<ListingChanges, CacheError> {
        let cache = self.cache.clone();
        blocking(move || cache.apply_listing(dir, entries, started)).await
    }

    async fn subdirs(&self, dir: FileId) -> Result<Vec<(Vec<u8>, FileId)>, CacheError> {
        let cache = self.cache.clone();
        blocking(move || cache.subdirs(dir)).await
    }

    /// Re-lists `dir` and, with `recursive`, every directory below it that was listed
    /// before. Returns (directories, changes).
    pub async fn refresh(&self, dir: FileId, recursive: bool) -> Result<(u64, ListingChanges), CacheError> {
        let mut todo = vec![dir];
        let mut total = ListingChanges::default();
        let mut dirs = 0;
        while let Some(d) = todo.pop() {
            total.add(self.list(d).await?);
            dirs += 1;
            if recursive {
                for (_, sub) in self.subdirs(d).await? {
                    if self.cache.get(sub)?.listed_ns != 0 {
                        todo.push(sub);
                    }
                }
            }
        }
        // Whoever asked for the refresh finds its changes through the mount too.
        super::notices_delivered(&self.cache).await;
        Ok((dirs, total))
    }

    /// Reads the attributes of inodes a listing created from their objects' metadata
    /// (a HEAD each, a few at a time), so that no decision or reply rests on the
    /// placeholders they had. Inodes already known cost nothing.
    pub async fn read_attrs(&self, ids: &[FileId]) -> Result<(), CacheError> {
        let permits = tokio::sync::Semaphore::new(HEAD_CONCURRENCY);
        let mut heads = Vec::with_capacity(ids.len());
        for &id in ids {
            let permits = &permits;
            heads.push(async move {
                let _p = permits
                    .acquire()
                    .await
                    .map_err(|e| CacheError::Meta(e.to_string()))?;
                head_of(&self.cache, self.store.as_ref(), &self.prefix, id)
                    .await
                    .map(|h| (id, h))
            });
        }
        let mut found = Vec::with_capacity(ids.len());
        let mut result = Ok(());
        for r in futures::future::join_all(heads).await {
            match r {
                Ok((id, Some(head))) => found.push((id, head)),
                // Known already, or gone from the cache meanwhile.
                Ok((_, None)) | Err(CacheError::Stale) => {}
                Err(e) => result = Err(e),
            }
        }
        if found.is_empty() {
            return result;
        }
        // Applied in one batch: a thread hand-off and a metadata commit per entry cost
        // more than its HEAD (figure 8 in benches/).
        let cache = self.cache.clone();
        blocking(move || cache.apply_heads(found)).await?;
        result
    }

    /// Reads the attributes of a READDIRPLUS page's `pending` entries (of `entries`
    /// in the page): those `dir`'s read-ahead is reading are waited for, the rest are
    /// read here, and so is any the read-ahead gave up on.
    pub async fn read_page_attrs(
        &self,
        dir: FileId,
        pending: &[(FileId, Vec<u8>)],
        entries: usize,
    ) -> Result<(), CacheError> {
        let Some(ahead) = self.ahead.lock().get(&dir).cloned() else {
            let ids: Vec<FileId> = pending.iter().map(|(id, _)| *id).collect();
            return self.read_attrs(&ids).await;
        };
        let names: Vec<&[u8]> = pending.iter().map(|(_, n)| n.as_slice()).collect();
        let started = ahead.take_page(entries, &names);
        let (theirs, mine): (Vec<_>, Vec<_>) = pending.iter().zip(started).partition(|(_, s)| *s);
        let ids = |v: &[(&(FileId, Vec<u8>), bool)]| v.iter().map(|((id, _), _)| *id).collect::<Vec<_>>();
        let waited: Vec<&[u8]> = theirs.iter().map(|((_, n), _)| n.as_slice()).collect();
        let mine = ids(&mine);
        let (r, ()) = futures::join!(self.read_attrs(&mine), ahead.wait(&waited));
        // Known by now unless the read-ahead gave up on them or could not apply
        // what it read; those cost a HEAD here.
        let rest = self.read_attrs(&ids(&theirs)).await;
        r.and(rest)
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
                blocking(move || cache.fill(id, &etag, at, &bytes)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::LocalStore;

    fn info(key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size: 1,
            etag: String::new(),
            last_modified_ns: Some(1),
            meta: None,
            version_id: None,
        }
    }

    /// Keys that cannot be paths are left out, counted and remembered once; every
    /// other key lands in the directory it names, with each directory on the way.
    /// (No test store can hold such keys: s3s-fs and the local store map keys to file
    /// paths, which fold `.` and empty segments and refuse 256-byte names.)
    #[test]
    fn keys_that_cannot_be_paths_are_hidden_and_counted_once() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::open(&tmp.path().join("c"), Default::default()).unwrap());
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(tmp.path().join("b")).unwrap());
        let counter = prometheus::IntCounter::new("hidden", "hidden").unwrap();
        let rt = ReadThrough::new(cache, store, "pre/".into(), None, Some(counter.clone()));
        let mut tree = Tree::default();
        let long = format!("pre/{}", "l".repeat(256));
        for key in [
            "pre/ok",
            "pre/a//b",
            "pre/./x",
            "pre/d/../x",
            long.as_str(),
            "pre/a//b",
            "pre/sub/deep/file",
            "pre/marker/",
            "pre/",
            "other/x",
        ] {
            rt.place(&mut tree, "pre/", key, Some(info(key)), true, 0)
                .unwrap();
        }
        assert_eq!(counter.get(), 4, "each hidden key once");
        let mut top: Vec<String> = tree
            .take("")
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect();
        top.sort();
        assert_eq!(top, ["marker", "ok", "sub"]);
        let deep = tree.take("sub/deep");
        assert_eq!(deep.len(), 1);
        assert!(matches!(deep[0].kind, RemoteKind::File { .. }));
        assert!(name_ok(&"n".repeat(255)) && !name_ok(&"n".repeat(256)));
    }
}
