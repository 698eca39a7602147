//! The background uploader: drives the store towards what the cache holds.
//!
//! The cache engine records, per inode, what the store holds (key, data version,
//! attributes, keys to delete). The uploader compares that with the inode, performs
//! the one store operation that closes the gap (PutObject or multipart upload, a
//! server-side copy for renames and attribute changes, DeleteObject), records the
//! outcome, and repeats until the inode is clean. Each step is idempotent, so a crash
//! between any two of them only repeats a step: a renamed object's old key is deleted
//! only after the copy to the new key has been recorded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bucketgate_cache::{Cache, FileId, Inode, Kind, UploadStep};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::remote::{CompletedPart, Expect, ObjectAttrs, ObjectStore, StoreError, expect_etag, same_etag};

/// A named failpoint (the `fail` crate) when built with the `failpoints` feature,
/// nothing otherwise. Configured to `return`, the step ends right there with
/// [`UploadError::Injected`], which is handled like a crash at that point: no
/// clean-up (a multipart upload is not aborted), the state recorded so far stays.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| Err(UploadError::Injected($name)));
    };
}
pub(crate) use failpoint;

mod conflict;
mod keylock;
mod moves;
mod notify;
mod rate;
mod transfer;
pub use notify::{NotifySettings, UploadNotifier, Webhook};
pub use rate::RateLimiter;

use keylock::KeyLocks;

/// Steps one inode gets before it waits for its next turn.
const MAX_STEPS_PER_PASS: usize = 8;
/// S3's limit on a multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Part size for UploadPartCopy: few requests, each far below S3's 5 GiB part limit.
const COPY_PART: u64 = 512 << 20;

/// Due inodes looked at per scheduling round for a free worker of their kind: how
/// far a file of one kind can jump ahead of the other kind's waiting files. Every
/// round looks at them all again (rounds come with every change and finished upload).
const DUE_SCAN: usize = 32;

#[derive(Clone, Debug)]
pub struct UploadSettings {
    /// Quiet time after the last change before a file is uploaded.
    pub upload_delay: Duration,
    /// A file dirty this long is uploaded even if it keeps changing.
    pub max_dirty_age: Duration,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub concurrency: usize,
    /// Files below `small_file_threshold` bytes go up on workers of their own,
    /// `small_file_concurrency` of them: a small PutObject is mostly round trip, so
    /// more of them in flight keep the link busy, and a large file never holds back
    /// thousands of small ones.
    pub small_file_threshold: u64,
    pub small_file_concurrency: usize,
    pub part_concurrency: usize,
    /// Larger objects are copied with UploadPartCopy parts (S3: 5 GiB).
    pub max_single_copy: u64,
    /// Never write over a version of an object that someone else wrote since the
    /// gateway last saw it (the share's `conflict_check` is not "off").
    pub check_conflicts: bool,
    /// Memory for upload bodies, shared by every share's uploader (`upload.memory`):
    /// a single PutObject holds its size, a part in flight
    /// [`transfer::PART_MEMORY`], until sent.
    pub memory: Arc<tokio::sync::Semaphore>,
}

/// Why a file has not reached the store yet.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FailingFile {
    pub file_id: FileId,
    pub path: String,
    pub attempts: u32,
    pub last_error: String,
    pub error_code: String,
    /// Seconds since the epoch of the first failure in this run of failures.
    pub failing_since_s: u64,
}

/// Counters the metrics layer reads.
#[derive(Debug, Default)]
pub struct UploadCounters {
    pub bytes_uploaded: AtomicU64,
    pub objects_put: AtomicU64,
    pub objects_copied: AtomicU64,
    pub objects_deleted: AtomicU64,
    pub files_renamed: AtomicU64,
    pub conflicts: AtomicU64,
}

struct Schedule {
    /// Due time per queued inode, and the same ordered by time.
    due: HashMap<FileId, Instant>,
    order: BTreeSet<(Instant, FileId)>,
    /// First time each queued inode was seen dirty, for `max_dirty_age`.
    first_dirty: HashMap<FileId, Instant>,
    in_flight: HashSet<FileId>,
    /// Changed while in flight: go again when the current pass ends.
    again: HashSet<FileId>,
    /// Made due by a flush: no later change postpones it by `upload_delay` until it
    /// is clean (a change the uploader hears of after the flush must not make a
    /// `flush --wait` wait an hour).
    flushing: HashSet<FileId>,
    failing: HashMap<FileId, FailingFile>,
}

impl Schedule {
    fn set_due(&mut self, id: FileId, at: Instant) {
        if let Some(old) = self.due.insert(id, at) {
            self.order.remove(&(old, id));
        }
        self.order.insert((at, id));
    }

    /// Up to `n` of the inodes due now, earliest first (not taken).
    fn due_now(&self, now: Instant, n: usize) -> Vec<(Instant, FileId)> {
        self.order
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(n)
            .copied()
            .collect()
    }

    fn take(&mut self, at: Instant, id: FileId) {
        self.order.remove(&(at, id));
        self.due.remove(&id);
        self.in_flight.insert(id);
    }

    fn next_due(&self) -> Option<Instant> {
        self.order.iter().next().map(|(at, _)| *at)
    }
}

/// The uploader of one share.
pub struct Uploader {
    cache: Arc<Cache>,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    settings: UploadSettings,
    sched: Mutex<Schedule>,
    wake: tokio::sync::Notify,
    locks: KeyLocks,
    pub counters: UploadCounters,
    /// Prometheus metrics and this share's label.
    metrics: Option<(Metrics, String)>,
    /// Held (shared) by each engine call on a blocking thread (`durably`): such a call
    /// outlives an upload cancelled at shutdown, so shutdown takes this exclusively
    /// before the cache is closed.
    blocking: Arc<tokio::sync::RwLock<()>>,
    /// Upload notifications (`upload_log`, `upload_webhook`), when the share has them.
    notifier: std::sync::OnceLock<Arc<UploadNotifier>>,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn backoff(attempts: u32) -> Duration {
    // 1 s doubling to 5 min, with up to 25% jitter so a recovered store is not hit
    // by every file at once.
    let base = Duration::from_secs(1) * 2u32.saturating_pow(attempts.saturating_sub(1).min(9));
    let base = base.min(Duration::from_secs(300));
    let jitter = rand::random::<f64>() * 0.25;
    base.mul_f64(1.0 + jitter)
}

impl Uploader {
    pub fn new(
        cache: Arc<Cache>,
        store: Arc<dyn ObjectStore>,
        prefix: String,
        settings: UploadSettings,
        metrics: Option<(Metrics, String)>,
    ) -> Arc<Self> {
        Arc::new(Uploader {
            cache,
            store,
            prefix,
            settings,
            sched: Mutex::new(Schedule {
                due: HashMap::new(),
                order: BTreeSet::new(),
                first_dirty: HashMap::new(),
                in_flight: HashSet::new(),
                again: HashSet::new(),
                flushing: HashSet::new(),
                failing: HashMap::new(),
            }),
            wake: tokio::sync::Notify::new(),
            locks: KeyLocks::default(),
            counters: UploadCounters::default(),
            metrics,
            blocking: Arc::default(),
            notifier: std::sync::OnceLock::new(),
        })
    }

    /// Sends an event for every object this uploader writes from now on.
    pub fn notify_to(&self, n: Arc<UploadNotifier>) {
        let _ = self.notifier.set(n);
    }

    /// Whether `id` goes up on the small-file workers (an inode that cannot be read
    /// counts as small: its pass is short).
    fn is_small(&self, id: FileId) -> bool {
        self.cache
            .load_any(id)
            .ok()
            .flatten()
            .is_none_or(|i| i.size < self.settings.small_file_threshold)
    }

    pub fn full_key(&self, rel: &str) -> String {
        format!("{}{}", self.prefix, rel)
    }

    /// Files currently failing to upload, for status and metrics.
    pub fn failing(&self) -> Vec<FailingFile> {
        let mut v: Vec<_> = self.sched.lock().failing.values().cloned().collect();
        v.sort_by_key(|f| f.file_id);
        v
    }

    /// Whether an upload of `id` is in flight, and its failure streak if its last
    /// upload failed.
    pub fn file_state(&self, id: FileId) -> (bool, Option<FailingFile>) {
        let s = self.sched.lock();
        (s.in_flight.contains(&id), s.failing.get(&id).cloned())
    }

    /// Inodes waiting for the store under share-relative `path` ("" for all): the
    /// ones a flush of it covers, with their records.
    pub fn pending_under(&self, path: &str) -> Vec<Inode> {
        let p = path.trim_matches('/');
        let pending = self.cache.pending().unwrap_or_default();
        pending
            .into_iter()
            .filter_map(|id| self.cache.load_any(id).ok().flatten())
            .filter(|ino| match self.cache.path_of(ino) {
                Ok(ip) => p.is_empty() || ip == p || ip.starts_with(&format!("{p}/")),
                Err(_) => true, // unlinked: its deletion is part of any flush
            })
            .collect()
    }

    /// Queued inodes (waiting or in flight).
    pub fn queued(&self) -> usize {
        let s = self.sched.lock();
        s.due.len() + s.in_flight.len()
    }

    /// Seconds the longest-dirty queued file has waited.
    pub fn oldest_dirty_age(&self) -> Duration {
        let s = self.sched.lock();
        s.first_dirty
            .values()
            .min()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// A change to `id`: (re)schedule it after the quiet time, capped by max dirty age.
    pub fn changed(&self, id: FileId) {
        let now = Instant::now();
        let mut s = self.sched.lock();
        if s.in_flight.contains(&id) {
            s.again.insert(id);
            s.first_dirty.entry(id).or_insert(now);
            return;
        }
        let first = *s.first_dirty.entry(id).or_insert(now);
        let at = if s.flushing.contains(&id) {
            now
        } else {
            (now + self.settings.upload_delay).min(first + self.settings.max_dirty_age)
        };
        // A failing file keeps its backoff; a new change does not make it hammer the store.
        let at = match s.due.get(&id) {
            Some(&cur) if s.failing.contains_key(&id) => cur.max(at),
            _ => at,
        };
        s.set_due(id, at);
        drop(s);
        self.wake.notify_one();
    }

    /// Makes every queued inode (under `path`, when given) due now. Returns the ids
    /// that were pending, with the change they must reach to count as uploaded.
    pub fn flush_now(&self, path: Option<&str>) -> Vec<(FileId, u64)> {
        let pending = self.pending_under(path.unwrap_or(""));
        let now = Instant::now();
        let mut targets = Vec::new();
        let mut s = self.sched.lock();
        for ino in pending {
            let id = ino.id;
            targets.push((id, ino.change_seq));
            s.flushing.insert(id);
            if s.in_flight.contains(&id) {
                s.again.insert(id);
            } else {
                s.first_dirty.entry(id).or_insert(now);
                s.set_due(id, now);
            }
        }
        drop(s);
        self.wake.notify_one();
        targets
    }

    /// True once every target has reached the store (or no longer exists).
    pub fn reached(&self, targets: &[(FileId, u64)]) -> bool {
        targets.iter().all(|&(id, seq)| match self.cache.load_any(id) {
            Ok(Some(ino)) => ino.synced_seq >= seq && ino.remote.stale_keys.is_empty(),
            _ => true,
        })
    }

    /// Makes due now everything the cache says is pending: what an earlier run left
    /// behind. Call it before clients are served: a change made after it waits its
    /// `upload_delay` as usual (taken later, a file written just after start would
    /// count as a leftover and go up at once).
    pub fn queue_pending(&self) {
        let now = Instant::now();
        let pending = self.cache.pending().unwrap_or_default();
        let mut s = self.sched.lock();
        for id in pending {
            s.first_dirty.entry(id).or_insert(now);
            s.set_due(id, now);
        }
    }

    /// Runs until `stop`: aborts multipart uploads a crash left behind, then uploads
    /// as files become due (what [`Uploader::queue_pending`] queued and what changes).
    pub async fn run(self: Arc<Self>, mut changes: mpsc::UnboundedReceiver<FileId>, stop: CancellationToken) {
        self.abort_leftover_multiparts().await;
        let workers = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let small_workers = Arc::new(Semaphore::new(self.settings.small_file_concurrency.max(1)));
        // Uploads in flight are owned here, so stopping stops them too: a detached
        // upload would keep the share's cache (and its sled lock) alive after
        // `Running::shutdown` returned, and a restart in the same process would fail.
        let mut running = tokio::task::JoinSet::new();
        // Each due file's kind (small or not), read once while it waits for a worker:
        // a full pool of one kind must not make every round read every inode again.
        let mut small: HashMap<FileId, bool> = HashMap::new();
        loop {
            // Start what is due, earliest first, while its kind of worker is free: a
            // small file is not held back behind a large one that waits for a worker.
            loop {
                let free = |p: &Semaphore| p.available_permits() > 0;
                if !free(&workers) && !free(&small_workers) {
                    break;
                }
                let due = self.sched.lock().due_now(Instant::now(), DUE_SCAN);
                let mut started = false;
                for (at, id) in due {
                    if !free(&workers) && !free(&small_workers) {
                        break;
                    }
                    let is_small = *small.entry(id).or_insert_with(|| self.is_small(id));
                    let pool = if is_small { &small_workers } else { &workers };
                    if !free(pool) {
                        continue;
                    }
                    let Ok(permit) = pool.clone().try_acquire_owned() else {
                        continue;
                    };
                    small.remove(&id);
                    if small.len() > 4 * DUE_SCAN {
                        small.clear(); // kinds of files no longer due
                    }
                    self.sched.lock().take(at, id);
                    started = true;
                    let me = self.clone();
                    running.spawn(async move {
                        me.process(id).await;
                        drop(permit);
                        me.wake.notify_one();
                    });
                }
                if !started {
                    break;
                }
            }
            let next = self.sched.lock().next_due();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {
                    // As safe as a crash at this point, which the queue is built for:
                    // the file is uploaded again from the start after the restart.
                    running.shutdown().await;
                    return;
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
                Some(id) = changes.recv() => self.changed(id),
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
        }
    }

    /// Aborts the multipart uploads an earlier run started and did not finish (a
    /// crash mid-upload; the file is uploaded again from the start). Only those: an
    /// upload in progress under the same prefix may be another gateway's or another
    /// S3 client's.
    async fn abort_leftover_multiparts(&self) {
        let ours = match self.cache.multiparts() {
            Ok(ours) => ours,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the multipart uploads this gateway started");
                return;
            }
        };
        for (upload_id, key) in ours {
            match self.store.abort_multipart(&key, &upload_id).await {
                Ok(()) => {
                    tracing::info!(key, "aborted a multipart upload left by an earlier run");
                    if let Err(e) = self.cache.forget_multipart(&upload_id) {
                        tracing::warn!(key, error = %e, "could not forget an aborted multipart upload");
                    }
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not abort a leftover multipart upload; trying again at the next start")
                }
            }
        }
    }

    async fn process(self: &Arc<Self>, id: FileId) {
        let result = self.sync_inode(id).await;
        // Removed while it uploaded: not a failure; the next pass cleans up what the
        // upload left behind.
        let vanished = matches!(
            result,
            Err(UploadError::Cache(bucketgate_cache::CacheError::Stale))
        ) && self.cache.load_any(id).ok().flatten().is_none_or(|i| i.unlinked);
        if let Some((m, share)) = &self.metrics {
            let outcome = if result.is_ok() || vanished { "ok" } else { "error" };
            m.uploads_total.with_label_values(&[share, outcome]).inc();
        }
        let mut s = self.sched.lock();
        s.in_flight.remove(&id);
        let again = s.again.remove(&id);
        match result {
            Ok(clean) => {
                s.failing.remove(&id);
                if clean && !again {
                    s.first_dirty.remove(&id);
                    s.flushing.remove(&id);
                } else {
                    let now = Instant::now();
                    let first = *s.first_dirty.entry(id).or_insert(now);
                    let at = if s.flushing.contains(&id) {
                        now
                    } else {
                        (now + self.settings.upload_delay).min(first + self.settings.max_dirty_age)
                    };
                    s.set_due(id, at.max(now));
                }
            }
            Err(_) if vanished => {
                tracing::debug!(file_id = id, "file removed during its upload; going again");
                s.set_due(id, Instant::now());
            }
            Err(e) => {
                let path = self
                    .cache
                    .load_any(id)
                    .ok()
                    .flatten()
                    .and_then(|i| self.cache.path_of(&i).ok())
                    .unwrap_or_else(|| format!("<file {id}>"));
                let entry = s.failing.entry(id).or_insert_with(|| FailingFile {
                    file_id: id,
                    path: path.clone(),
                    attempts: 0,
                    last_error: String::new(),
                    error_code: String::new(),
                    failing_since_s: now_s(),
                });
                entry.attempts += 1;
                entry.path = path;
                entry.last_error = e.to_string();
                entry.error_code = e.code().to_string();
                let delay = backoff(entry.attempts);
                tracing::warn!(file_id = id, path = %entry.path, attempts = entry.attempts, retry_in_ms = delay.as_millis() as u64, error = %e, "upload failed; will retry");
                s.set_due(id, Instant::now() + delay);
            }
        }
    }

    /// Brings one inode's objects up to date, one [`UploadStep`] at a time. Ok(true)
    /// when it is clean afterwards.
    async fn sync_inode(&self, id: FileId) -> Result<bool, UploadError> {
        // A few steps absorb changes made during an upload; a file that keeps
        // changing is rescheduled rather than uploaded in a tight loop.
        for _ in 0..MAX_STEPS_PER_PASS {
            let Some(ino) = self.cache.load_any(id)? else {
                return Ok(true);
            };
            let key = if ino.unlinked {
                None
            } else {
                let path = self.cache.path_of(&ino)?;
                Some(if ino.kind == Kind::Dir {
                    format!("{path}/")
                } else {
                    path
                })
            };
            match UploadStep::next(&ino, key.as_deref()) {
                UploadStep::Clean => return Ok(true),
                UploadStep::ReadAttrs => {
                    crate::share::read_object_attrs(&self.cache, self.store.as_ref(), &self.prefix, id)
                        .await?;
                }
                UploadStep::RecordClean => self.cache.record_clean(id, ino.change_seq)?,
                UploadStep::DeleteStale => {
                    // The new object is recorded; the old keys are not deleted yet.
                    failpoint!("upload::after_record_before_delete");
                    for rel in &ino.remote.stale_keys {
                        self.delete_stale(id, rel).await?;
                    }
                }
                step @ (UploadStep::PutMarker | UploadStep::Upload | UploadStep::Copy) => {
                    let rel = key.expect("a live inode has a key");
                    self.write_object(&ino, &rel, step).await?;
                }
            }
        }
        Ok(self.cache.load_any(id)?.is_none_or(|i| !i.is_dirty()))
    }

    /// Writes the object of `ino` at `rel` as `step` says (a marker, an upload or a
    /// copy), conditionally on what the store held there, and records it.
    async fn write_object(&self, ino: &Inode, rel: &str, step: UploadStep) -> Result<(), UploadError> {
        let meta = ino.object_attrs();
        let key = self.full_key(rel);
        let _guard = self.locks.lock(&key).await;
        if step != UploadStep::PutMarker && ino.remote.key.as_deref() != Some(rel) {
            self.take_over_key(rel, &key, ino.id).await?;
        }
        // What the write may replace at `rel`: read before the intent below names it.
        let known = self.cache.known_version(ino, rel)?;
        // Durably note the key before writing it, and the metadata the object will
        // carry, so a crash between the write and record_upload can neither orphan
        // the object nor make it look like another client's (Cache::record_intent).
        let ours = self.settings.check_conflicts.then_some(meta);
        let (id, at) = (ino.id, rel.to_string());
        if !self.durably(move |c| c.record_intent(id, &at, ours)).await? {
            return Ok(()); // removed meanwhile, and nothing of it is in the store
        }
        let written = match step {
            UploadStep::PutMarker => Some(self.put_marker(ino, &key, &meta, known.as_deref()).await?),
            UploadStep::Upload => {
                self.upload_unless_conflict(ino, rel, &key, &meta, known.as_deref())
                    .await?
            }
            _ => {
                self.copy_unless_conflict(ino, rel, &key, &meta, known.as_deref())
                    .await?
            }
        };
        let Some(etag) = written else {
            return Ok(()); // set aside or rebased: the next step decides again
        };
        tracing::debug!(
            file_id = ino.id,
            key,
            data_seq = ino.data_seq,
            size = ino.size,
            "object written"
        );
        // The object is in the store (put, multipart or copy); the cache does not know yet.
        failpoint!("upload::after_store_before_record");
        if !self
            .cache
            .record_upload(ino.id, ino.change_seq, rel, &etag, ino.data_seq, meta)?
        {
            // The inode vanished entirely while we wrote its object: nothing claims it.
            if !self.cache.hand_over_stale_key(0, rel)? {
                self.store.delete_object(&key).await?;
            }
            return Ok(());
        }
        if let Some(n) = self.notifier.get()
            && step != UploadStep::PutMarker
        {
            n.uploaded(key, ino.size, &etag);
        }
        Ok(())
    }

    /// What a write of a key may find there: the version the gateway knows (`known`,
    /// from [`Cache::known_version`]), or nothing at all when it knows of none. With
    /// conflict checks off, or a version whose ETag was never learnt, anything.
    fn expect<'a>(&self, known: Option<&'a str>) -> Expect<'a> {
        match known {
            _ if !self.settings.check_conflicts => Expect::Any,
            None => Expect::Absent,
            Some("") => Expect::Any,
            Some(etag) => Expect::Version(etag),
        }
    }

    /// A directory's marker. Another client's marker there (the same directory made
    /// twice, or changed behind the gateway) holds no bytes: the local attributes
    /// are written over it, but only over the version just looked at.
    async fn put_marker(
        &self,
        ino: &Inode,
        key: &str,
        meta: &ObjectAttrs,
        known: Option<&str>,
    ) -> Result<String, UploadError> {
        // `None` until looked at; then what a HEAD found there.
        let mut theirs: Option<Option<String>> = None;
        for _ in 0..3 {
            let expect = match &theirs {
                Some(Some(etag)) => Expect::Version(etag),
                Some(None) => Expect::Absent,
                None => self.expect(known),
            };
            match self.store.put_object_if(key, Bytes::new(), meta, expect).await {
                Err(StoreError::PreconditionFailed | StoreError::NotFound)
                    if self.settings.check_conflicts =>
                {
                    theirs = Some(self.store.head(key).await?.map(|now| now.etag));
                    tracing::info!(
                        file_id = ino.id,
                        key,
                        "directory marker changed in the store; writing the directory's attributes over the version there"
                    );
                }
                done => return Ok(done?),
            }
        }
        Err(StoreError::PreconditionFailed.into())
    }

    /// A server-side copy for a rename or an attribute change, of exactly the version
    /// of the object the file's bytes are (when the gateway knows its ETag), onto a
    /// new key holding what `known` says. `None` when the copy must not happen: the
    /// source changed (its bytes win; the local change is applied to them by the next
    /// pass), or the destination holds another client's object (the renamed file
    /// goes aside as a conflict copy).
    async fn copy_unless_conflict(
        &self,
        ino: &Inode,
        rel: &str,
        key: &str,
        meta: &ObjectAttrs,
        known: Option<&str>,
    ) -> Result<Option<String>, UploadError> {
        let r = &ino.remote;
        let src = self.full_key(r.key.as_deref().unwrap_or_default());
        let renamed = src != key;
        let src_version = (self.settings.check_conflicts && !r.etag.is_empty()).then_some(r.etag.as_str());
        let dst = if renamed { self.expect(known) } else { Expect::Any };
        let err = match self.copy(&src, key, meta, ino.size, src_version, dst).await {
            Ok(etag) => {
                failpoint!("upload::after_copy_before_record");
                self.counters.objects_copied.fetch_add(1, Ordering::Relaxed);
                if renamed {
                    self.counters.files_renamed.fetch_add(1, Ordering::Relaxed);
                    if let Some((m, share)) = &self.metrics {
                        m.files_renamed_total.with_label_values(&[share]).inc();
                    }
                }
                return Ok(Some(etag));
            }
            Err(UploadError::Store(e @ (StoreError::NotFound | StoreError::PreconditionFailed))) => e,
            Err(e) => return Err(e),
        };
        // Which side failed? Look at the source first.
        let source = self.store.head(&src).await?;
        match source {
            None => {
                return self
                    .upload_without_source(ino, &src, key, meta, dst)
                    .await
                    .map(Some);
            }
            Some(now) if src_version.is_some_and(|v| !same_etag(v, &now.etag)) => {
                if self.written_by_us(ino.id, r.key.as_deref().unwrap_or_default(), &now) {
                    return Ok(Some(
                        self.copy(&src, key, meta, ino.size, Some(&now.etag), dst).await?,
                    ));
                }
                // Another client replaced the object since we saw it; only our name or
                // attributes changed, so its bytes win and the next pass applies our
                // change to them.
                tracing::info!(
                    key = src,
                    "object changed in the store; renaming or re-attributing its new version"
                );
                self.cache.rebase_on_remote(ino.id, &now.etag, now.size)?;
                return Ok(None);
            }
            Some(_) => {}
        }
        // The source is as expected: the destination holds something else.
        match self.store.head(key).await? {
            // The version the gateway left there is gone (another client deleted it):
            // nothing to replace any more.
            None if dst != Expect::Absent => Ok(Some(
                self.copy(&src, key, meta, ino.size, src_version, Expect::Absent)
                    .await?,
            )),
            None => Err(UploadError::Store(err)), // gone meanwhile: the next pass copies
            Some(now) if self.written_by_us(ino.id, rel, &now) => Ok(Some(
                self.copy(&src, key, meta, ino.size, src_version, Expect::Version(&now.etag))
                    .await?,
            )),
            Some(now) => {
                self.set_aside(ino, rel, key, &now.etag, known).await?;
                Ok(None)
            }
        }
    }

    /// The object a copy would start from is gone (deleted behind our back): upload
    /// the cached bytes instead, when they are all here. A file only partly cached
    /// cannot be rebuilt; it is reported as failing rather than uploaded with holes.
    async fn upload_without_source(
        &self,
        ino: &Inode,
        src: &str,
        key: &str,
        meta: &ObjectAttrs,
        expect: Expect<'_>,
    ) -> Result<String, UploadError> {
        if ino.partial {
            return Err(StoreError::Permanent {
                code: "SourceGone".into(),
                message: format!(
                    "{src} was deleted from the store while this file, only partly cached, still needed it: \
                     its missing bytes are lost"
                ),
            }
            .into());
        }
        tracing::warn!(key = src, "copy source missing; uploading the data again");
        self.upload_data(ino, key, meta, expect).await
    }

    async fn upload_data(
        &self,
        ino: &Inode,
        key: &str,
        meta: &ObjectAttrs,
        expect: Expect<'_>,
    ) -> Result<String, UploadError> {
        if ino.kind == Kind::File && ino.partial {
            // Its missing blocks would go up as zeros. A file only partly cached is
            // copied in the store, never uploaded from the cache.
            return Err(StoreError::Permanent {
                code: "PartlyCached".into(),
                message: format!("{key}: the cache holds only part of this file; refusing to upload holes"),
            }
            .into());
        }
        let put = |body: Bytes| async move { self.store.put_object_if(key, body, meta, expect).await };
        let etag = if ino.kind == Kind::Symlink {
            put(Bytes::from(ino.symlink_target.clone())).await?
        } else if matches!(ino.kind, Kind::Fifo | Kind::Socket) {
            put(Bytes::new()).await?
        } else if ino.size < self.settings.multipart_threshold {
            // The body is in memory until it is sent: its bytes come from the budget
            // (validation keeps multipart_threshold within it).
            let want = ino.size.clamp(1, u64::from(u32::MAX)) as u32;
            let _memory = self
                .settings
                .memory
                .acquire_many(want)
                .await
                .expect("never closed");
            put(transfer::read_range(&self.cache, ino.id, 0, ino.size).await?).await?
        } else {
            self.multipart_upload(ino, key, meta, expect).await?
        };
        self.counters.objects_put.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_uploaded
            .fetch_add(ino.size, Ordering::Relaxed);
        Ok(etag)
    }

    fn part_size_for(&self, size: u64) -> u64 {
        let min_for_count = size.div_ceil(MAX_PARTS);
        let mib = 1 << 20;
        self.settings.part_size.max(min_for_count.div_ceil(mib) * mib)
    }

    async fn multipart_upload(
        &self,
        ino: &Inode,
        key: &str,
        meta: &ObjectAttrs,
        expect: Expect<'_>,
    ) -> Result<String, UploadError> {
        let size = ino.size;
        let part_size = self.part_size_for(size);
        let upload_id = self.start_multipart(key, meta).await?;
        let result = transfer::upload_parts(
            &self.cache,
            &self.store,
            &self.settings.memory,
            ino.id,
            key,
            &upload_id,
            size,
            part_size,
            self.settings.part_concurrency.max(1),
        )
        .await;
        let parts: Vec<CompletedPart> = match result {
            Ok(p) => p,
            // A simulated crash leaves the upload behind, as a real one would.
            Err(e @ UploadError::Injected(_)) => return Err(e),
            Err(e) => {
                self.end_multipart(key, &upload_id, true).await;
                return Err(e);
            }
        };
        failpoint!("upload::multipart::before_complete");
        let completed = self
            .store
            .complete_multipart_if(key, &upload_id, &parts, expect)
            .await;
        self.end_multipart(key, &upload_id, completed.is_err()).await;
        Ok(completed?)
    }

    /// CreateMultipartUpload, its id recorded durably before any part is sent: after
    /// a crash, the gateway aborts exactly the uploads it started.
    async fn start_multipart(&self, key: &str, meta: &ObjectAttrs) -> Result<String, UploadError> {
        let upload_id = self.store.create_multipart(key, meta).await?;
        let (id, k) = (upload_id.clone(), key.to_owned());
        if let Err(e) = self.durably(move |c| c.record_multipart(&id, &k)).await {
            let _ = self.store.abort_multipart(key, &upload_id).await;
            return Err(e);
        }
        Ok(upload_id)
    }

    /// A multipart upload of ours ended (completed, or `abort` it now).
    async fn end_multipart(&self, key: &str, upload_id: &str, abort: bool) {
        if abort && let Err(e) = self.store.abort_multipart(key, upload_id).await {
            // Kept on record: aborted at the next start.
            tracing::warn!(key, error = %e, "could not abort a multipart upload");
            return;
        }
        if let Err(e) = self.cache.forget_multipart(upload_id) {
            tracing::warn!(key, error = %e, "could not forget a finished multipart upload");
        }
    }

    /// Server-side copy; with `src_version`, only of that version of `src`, onto a
    /// destination holding what `dst_expect` says.
    async fn copy(
        &self,
        src: &str,
        dst: &str,
        meta: &ObjectAttrs,
        size: u64,
        src_version: Option<&str>,
        dst_expect: Expect<'_>,
    ) -> Result<String, UploadError> {
        if size <= self.settings.max_single_copy {
            return Ok(self
                .store
                .copy_object_if(src, dst, Some(meta), src_version, dst_expect)
                .await?);
        }
        if let Some(etag) = src_version {
            expect_etag(self.store.as_ref(), src, etag).await?;
        }
        let part_size = self
            .part_size_for(size)
            .max(COPY_PART.min(self.settings.max_single_copy));
        let upload_id = self.start_multipart(dst, meta).await?;
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut n = 1;
        while start < size {
            let end = (start + part_size).min(size) - 1;
            match self
                .store
                .upload_part_copy(dst, &upload_id, n, src, start, end)
                .await
            {
                Ok(etag) => parts.push(CompletedPart { part_number: n, etag }),
                Err(e) => {
                    self.end_multipart(dst, &upload_id, true).await;
                    return Err(e.into());
                }
            }
            start = end + 1;
            n += 1;
        }
        let completed = self
            .store
            .complete_multipart_if(dst, &upload_id, &parts, dst_expect)
            .await;
        self.end_multipart(dst, &upload_id, completed.is_err()).await;
        Ok(completed?)
    }

    async fn delete_stale(&self, id: FileId, rel: &str) -> Result<(), UploadError> {
        let key = self.full_key(rel);
        let _guard = self.locks.lock(&key).await;
        // A key that a live file or directory claims again (a file recreated under
        // an old name) belongs to that inode now: it overwrites the object, or
        // deletes it if it moves on first (Cache::hand_over_stale_key).
        let deleted = !self.cache.hand_over_stale_key(id, rel)?;
        if deleted && self.cache.left_to_them(rel)? {
            // A conflict found another client's version there: it stays.
            tracing::debug!(
                file_id = id,
                key,
                "stale key holds another client's version; kept"
            );
            self.cache.relist_parent(id)?;
        } else if deleted {
            // Only the version the gateway left there: one another client wrote
            // since is theirs, and stays.
            let done = match self.cache.left_version(rel)? {
                _ if !self.settings.check_conflicts => self.store.delete_object(&key).await,
                Some(etag) if !etag.is_empty() => match self.store.delete_object_if(&key, &etag).await {
                    // Another version: ours too if an upload a crash kept from being
                    // recorded wrote it.
                    Err(StoreError::PreconditionFailed) => self.delete_if_ours(id, rel, &key, false).await,
                    done => done,
                },
                // A key it was writing, version unknown: ours only if it carries the
                // metadata that write was to carry.
                _ => self.delete_if_ours(id, rel, &key, true).await,
            };
            match done {
                Err(StoreError::PreconditionFailed) => {
                    tracing::warn!(
                        file_id = id,
                        key,
                        "the object at a removed name was replaced in the store by another client; it is kept"
                    );
                    self.cache.relist_parent(id)?;
                }
                done => {
                    done?;
                    tracing::debug!(file_id = id, key, "stale object deleted");
                    self.counters.objects_deleted.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            tracing::debug!(file_id = id, key, "stale key claimed by a live file");
        }
        self.cache.record_deleted(id, rel, deleted)?;
        Ok(())
    }
}

impl Uploader {
    /// Waits until no engine call started by an upload is still running (after the
    /// upload tasks stopped), so that the cache can be closed and opened again.
    pub async fn blocking_done(&self) {
        drop(self.blocking.write().await);
    }

    /// Runs an engine call that does file I/O or makes its change durable (an fsync)
    /// on a blocking thread, never on the upload runtime's async workers.
    async fn durably<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Cache) -> bucketgate_cache::Result<T> + Send + 'static,
    ) -> Result<T, UploadError> {
        let (cache, running) = (self.cache.clone(), self.blocking.clone().read_owned().await);
        tokio::task::spawn_blocking(move || {
            let _running = running;
            f(&cache)
        })
        .await
        .map_err(|e| bucketgate_cache::CacheError::Meta(format!("engine task failed: {e}")))?
        .map_err(Into::into)
    }
}

impl Uploader {
    /// Deletes `key` (share-relative `rel`) if the object there is one we wrote: `id`,
    /// or the file that left the key to it (its metadata is one noted before a
    /// write: `Cache::written_by_us`, `Cache::left_written_by_us`);
    /// `PreconditionFailed` when it is another client's.
    /// Without such a note, `unnoted_is_ours` decides (true: a key from a cache made
    /// before the note was kept, deleted as it always was).
    async fn delete_if_ours(
        &self,
        id: FileId,
        rel: &str,
        key: &str,
        unnoted_is_ours: bool,
    ) -> Result<(), StoreError> {
        let noted = self.cache.writes_noted(id).unwrap_or(false)
            || self.cache.left_writes_noted(rel).unwrap_or(false);
        if !noted {
            return if unnoted_is_ours {
                self.store.delete_object(key).await
            } else {
                Err(StoreError::PreconditionFailed)
            };
        }
        match self.store.head(key).await? {
            None => Ok(()),
            Some(info) if self.written_by_us(id, rel, &info) => {
                self.store.delete_object_if(key, &info.etag).await
            }
            Some(_) => Err(StoreError::PreconditionFailed),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cache: {0}")]
    Cache(#[from] bucketgate_cache::CacheError),
    /// A failpoint fired (tests built with the `failpoints` feature only).
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    #[error("failpoint {0}")]
    Injected(&'static str),
}

impl UploadError {
    pub fn code(&self) -> &str {
        match self {
            UploadError::Store(e) => e.code(),
            UploadError::Cache(_) => "CacheError",
            UploadError::Injected(_) => "Injected",
        }
    }
}
