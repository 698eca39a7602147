//! Prometheus metrics: one registry, one [`Metrics`] handle the rest of the gateway
//! updates. Names start with `bucketgate_`, use base units (bytes, seconds) and end in
//! `_total` when they are counters. The figures mirror AWS File Gateway's CloudWatch
//! metrics (CacheUsed, CachePercentDirty, CacheHitPercent, CloudBytesUploaded,
//! FilesFailingUpload, NfsSessions, S3*RequestTime, ...) so runbooks written for one
//! translate to the other.
//!
//! Gauges that are cheaper to compute than to keep current (cache used/free, dirty
//! bytes, the upload queue) are set by a *scrape hook*: the gateway registers one
//! closure with [`Metrics::set_scrape_hook`] and [`Metrics::render`] runs it just
//! before encoding.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Called on every scrape, before encoding, to refresh the computed gauges.
pub type ScrapeHook = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// Store (S3) operation names used as the `operation` label; the store layer may use
/// others, but these are the ones dashboards expect.
pub const STORE_OPERATIONS: &[&str] = &[
    "GetObject",
    "PutObject",
    "HeadObject",
    "DeleteObject",
    "CopyObject",
    "ListObjectsV2",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "UploadPartCopy",
    "ListMultipartUploads",
];

/// Every metric a gateway exports. Cloning is cheap (each field is an `Arc` inside).
/// Label values: `share` is the share name, `operation` an S3 API name
/// ([`STORE_OPERATIONS`]), `procedure` an NFSv3 procedure in upper case (`READ`,
/// `WRITE`, `GETATTR`, ...), `status` `"OK"` or an `NFS3ERR_*` name.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    hook: Arc<RwLock<Option<ScrapeHook>>>,

    /// `bucketgate_build_info{version}` = 1: the running version, for joins and upgrades.
    pub build_info: IntGaugeVec,
    /// `bucketgate_start_time_seconds`: process start, Unix seconds (uptime = time() - this).
    pub start_time_seconds: Gauge,

    // --- cache (set by the scrape hook unless noted) ---
    /// `bucketgate_cache_capacity_bytes`: configured cache capacity (TotalCacheSize).
    pub cache_capacity_bytes: IntGauge,
    /// `bucketgate_cache_used_bytes`: bytes the cache holds, clean and dirty (CacheUsed).
    pub cache_used_bytes: IntGauge,
    /// `bucketgate_cache_free_bytes`: capacity not in use (CacheFree).
    pub cache_free_bytes: IntGauge,
    /// `bucketgate_cache_dirty_bytes`: bytes written by clients and not yet in the store
    /// (CachePercentDirty = dirty / capacity).
    pub cache_dirty_bytes: IntGauge,
    /// `bucketgate_cache_dirty_limit_bytes`: dirty bytes at which writes are throttled,
    /// then answered NFS3ERR_JUKEBOX (config, set once).
    pub cache_dirty_limit_bytes: IntGauge,
    /// `bucketgate_cache_oldest_dirty_age_seconds`: age of the oldest dirty data; 0 when
    /// nothing is dirty. Grows without bound when uploads stall.
    pub cache_oldest_dirty_age_seconds: Gauge,
    /// `bucketgate_cache_hits_total{share}`: NFS READs served entirely from the cache.
    pub cache_hits_total: IntCounterVec,
    /// `bucketgate_cache_misses_total{share}`: NFS READs that had to fetch from the store
    /// (CacheHitPercent = hits / (hits + misses)).
    pub cache_misses_total: IntCounterVec,
    /// `bucketgate_cache_evictions_total{share}`: clean files (or their data) evicted to
    /// stay under capacity.
    pub cache_evictions_total: IntCounterVec,
    /// `bucketgate_cache_evicted_bytes_total{share}`: bytes freed by eviction.
    pub cache_evicted_bytes_total: IntCounterVec,
    /// `bucketgate_attr_cache_lookups_total{share,result}`: inode reads answered from
    /// the in-memory attribute hot set (`hit`) or read from the metadata store (`miss`).
    pub attr_cache_lookups_total: IntCounterVec,

    // --- upload ---
    /// `bucketgate_upload_queue_files`: files waiting to be uploaded or uploading.
    pub upload_queue_files: IntGauge,
    /// `bucketgate_upload_queue_bytes`: bytes of those files.
    pub upload_queue_bytes: IntGauge,
    /// `bucketgate_upload_failing_files`: files whose last upload attempt failed and
    /// that are still dirty (FilesFailingUpload). Alert on > 0.
    pub upload_failing_files: IntGauge,
    /// `bucketgate_uploads_total{share,result}`: file uploads finished, `result` is
    /// `ok` or `error` (an error is retried and counted again).
    pub uploads_total: IntCounterVec,
    /// `bucketgate_files_renamed_total{share}`: renames carried to the store
    /// (FilesRenamed; a rename is CopyObject + DeleteObject per object).
    pub files_renamed_total: IntCounterVec,
    /// `bucketgate_conflicts_total{share}`: objects changed in the bucket behind the
    /// gateway while the gateway held unuploaded changes to the same file.
    pub conflicts_total: IntCounterVec,

    // --- store (S3 or directory) ---
    /// `bucketgate_store_keys_hidden_total{share}`: object keys in the bucket that
    /// cannot be a path of the share (an empty, `.` or `..` segment, a segment over
    /// 255 bytes), each counted once per process; they are named in the log.
    pub store_keys_hidden_total: IntCounterVec,
    /// `bucketgate_store_uploaded_bytes_total{share}`: body bytes sent to the store
    /// (CloudBytesUploaded).
    pub store_uploaded_bytes_total: IntCounterVec,
    /// `bucketgate_store_downloaded_bytes_total{share}`: body bytes read from the store
    /// (CloudBytesDownloaded).
    pub store_downloaded_bytes_total: IntCounterVec,
    /// `bucketgate_store_request_duration_seconds{share,operation}`: store request
    /// latency, errors included (S3GetObjectRequestTime, S3PutObjectRequestTime, ...).
    pub store_request_duration_seconds: HistogramVec,
    /// `bucketgate_store_errors_total{share,operation,code}`: failed store requests,
    /// `code` the S3 error code (`SlowDown`, `AccessDenied`, `NoSuchKey`) or a transport
    /// class (`timeout`, `io`).
    pub store_errors_total: IntCounterVec,
    /// `bucketgate_store_reachable`: 1 when every share's store answered recently,
    /// from the readiness check `store_reachable`; set on each scrape.
    pub store_reachable: IntGauge,

    // --- NFS ---
    /// `bucketgate_nfs_connections`: open NFS client TCP connections (NfsSessions).
    pub nfs_connections: IntGauge,
    /// `bucketgate_nfs_reply_bytes`: reply memory held for calls whose replies are
    /// not written yet (of `nfs.reply_memory`).
    pub nfs_reply_bytes: IntGauge,
    /// `bucketgate_nfs_connections_rejected_total{reason}`: connections refused
    /// (`not_allowed`: no share allows the host; `limit`: max_connections reached
    /// and none idle; `client_limit`: max_connections_per_client, likewise).
    pub nfs_connections_rejected_total: IntCounterVec,
    /// `bucketgate_nfs_bad_handles_total{reason}`: file handles refused before any
    /// use: `forged` (the MAC does not verify), `old` (a handle of the format before
    /// MACs), `malformed`.
    pub nfs_bad_handles_total: IntCounterVec,
    /// `bucketgate_nfs_read_bytes_total{share}`: bytes returned by READ (ReadBytes).
    pub nfs_read_bytes_total: IntCounterVec,
    /// `bucketgate_nfs_write_bytes_total{share}`: bytes accepted by WRITE (WriteBytes).
    pub nfs_write_bytes_total: IntCounterVec,
    /// `bucketgate_nfs_calls_total{procedure,status}`: NFSv3 calls answered (MOUNT and
    /// portmap calls are not counted).
    pub nfs_calls_total: IntCounterVec,
    /// `bucketgate_nfs_call_duration_seconds{procedure,status}`: time from a call being
    /// read off the socket to its reply being queued.
    pub nfs_call_duration_seconds: HistogramVec,

    // --- FUSE mounts ---
    /// `bucketgate_fuse_calls_total{share,op,status}`: calls the share's FUSE mount
    /// answered through the share layer, with the errno name of a failure.
    pub fuse_calls_total: IntCounterVec,
    /// `bucketgate_fuse_call_duration_seconds{share,op}`: their latency.
    pub fuse_call_duration_seconds: HistogramVec,

    // --- audit log ---
    /// `bucketgate_audit_dropped_total{share}`: audit records dropped because the
    /// audit log writer could not keep up (the log disk is slow or full). Alert on > 0
    /// where the audit trail is a compliance requirement.
    pub audit_dropped_total: IntCounterVec,

    /// `bucketgate_upload_rate_limit_bytes_per_second`: the upload rate limit now
    /// (`[upload] rate_limit`, or the schedule entry that applies); 0 when unlimited.
    pub upload_rate_limit_bytes_per_second: IntGauge,

    /// `bucketgate_upload_notifications_total{share,sink,result}`: upload
    /// notifications (shares with `upload_log` / `upload_webhook`): `sent` to the log
    /// or the webhook, `failed` (the webhook refused every attempt), `dropped` (a
    /// queue was full; uploads never wait for notifications).
    pub upload_notifications_total: IntCounterVec,

    // --- S3 event notifications (shares with `events`) ---
    /// `bucketgate_events_total{share,result}`: S3 events from the share's queue that
    /// fell under its prefix (`received`), and what came of each: `applied` (the key
    /// was read from the store again and merged), `ignored` (nothing to do: the
    /// gateway's own upload, a directory never listed, a name not shown) or `failed`
    /// (the store did not answer; the queue sends the event again).
    pub events_total: IntCounterVec,
    /// `bucketgate_events_queue_reachable{share}`: 1 while the share's event queue
    /// answers, 0 while it does not (the share keeps serving; others' changes show
    /// at the next listing instead).
    pub events_queue_reachable: IntGaugeVec,

    // --- readiness (set on each scrape from the AdminApi) ---
    /// `bucketgate_ready`: 1 when every readiness check passes (what /readyz says).
    pub ready: IntGauge,
    /// `bucketgate_readiness_check{check}`: 1 per passing check, 0 per failing one.
    pub readiness_check: IntGaugeVec,

    // --- SMB (from smbstatus, every few seconds, when a share has smb = true) ---
    /// `bucketgate_smb_sessions{dialect}`: SMB sessions open on smbd, by dialect
    /// (File Gateway's SmbV2Sessions and SmbV3Sessions).
    pub smb_sessions: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Store latencies: from a fast HEAD on a VPC endpoint to a slow 5 GiB part.
const STORE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// NFS latencies: from a cached GETATTR (tens of µs) to a read-through miss.
const NFS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered. Each call makes an independent
    /// registry, so tests can run in parallel.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric name");
                m
            }};
        }
        let o = |n: &str, h: &str| Opts::new(format!("bucketgate_{n}"), h);
        let ho = |n: &str, h: &str, b: &[f64]| {
            HistogramOpts::new(format!("bucketgate_{n}"), h).buckets(b.to_vec())
        };

        let m = Metrics {
            hook: Arc::new(RwLock::new(None)),
            build_info: reg!(IntGaugeVec::new(
                o("build_info", "Build information; always 1."),
                &["version"]
            )),
            start_time_seconds: reg!(Gauge::with_opts(o(
                "start_time_seconds",
                "Process start time, seconds since the Unix epoch."
            ))),
            cache_capacity_bytes: reg!(IntGauge::with_opts(o(
                "cache_capacity_bytes",
                "Configured cache capacity."
            ))),
            cache_used_bytes: reg!(IntGauge::with_opts(o(
                "cache_used_bytes",
                "Bytes held in the cache, clean and dirty."
            ))),
            cache_free_bytes: reg!(IntGauge::with_opts(o(
                "cache_free_bytes",
                "Cache capacity not in use."
            ))),
            cache_dirty_bytes: reg!(IntGauge::with_opts(o(
                "cache_dirty_bytes",
                "Bytes written by clients and not yet in the store."
            ))),
            cache_dirty_limit_bytes: reg!(IntGauge::with_opts(o(
                "cache_dirty_limit_bytes",
                "Dirty bytes at which client writes are throttled."
            ))),
            cache_oldest_dirty_age_seconds: reg!(Gauge::with_opts(o(
                "cache_oldest_dirty_age_seconds",
                "Age of the oldest dirty data; 0 when nothing is dirty."
            ))),
            cache_hits_total: reg!(IntCounterVec::new(
                o("cache_hits_total", "NFS reads served entirely from the cache."),
                &["share"]
            )),
            cache_misses_total: reg!(IntCounterVec::new(
                o(
                    "cache_misses_total",
                    "NFS reads that fetched data from the store."
                ),
                &["share"]
            )),
            cache_evictions_total: reg!(IntCounterVec::new(
                o("cache_evictions_total", "Clean files evicted from the cache."),
                &["share"]
            )),
            cache_evicted_bytes_total: reg!(IntCounterVec::new(
                o("cache_evicted_bytes_total", "Bytes freed by cache eviction."),
                &["share"]
            )),
            attr_cache_lookups_total: reg!(IntCounterVec::new(
                o(
                    "attr_cache_lookups_total",
                    "Inode reads answered from memory (hit) or the metadata store (miss)."
                ),
                &["share", "result"]
            )),
            upload_queue_files: reg!(IntGauge::with_opts(o(
                "upload_queue_files",
                "Files waiting to be uploaded or uploading."
            ))),
            upload_queue_bytes: reg!(IntGauge::with_opts(o(
                "upload_queue_bytes",
                "Bytes of the files waiting to be uploaded or uploading."
            ))),
            upload_failing_files: reg!(IntGauge::with_opts(o(
                "upload_failing_files",
                "Files whose last upload attempt failed."
            ))),
            uploads_total: reg!(IntCounterVec::new(
                o("uploads_total", "File uploads finished, by result (ok, error)."),
                &["share", "result"]
            )),
            files_renamed_total: reg!(IntCounterVec::new(
                o("files_renamed_total", "Renames carried to the store."),
                &["share"]
            )),
            conflicts_total: reg!(IntCounterVec::new(
                o(
                    "conflicts_total",
                    "Objects changed behind the gateway while it held unuploaded changes."
                ),
                &["share"]
            )),
            store_keys_hidden_total: reg!(IntCounterVec::new(
                o(
                    "store_keys_hidden_total",
                    "Object keys that cannot be a path of the share, so are not shown."
                ),
                &["share"]
            )),
            store_uploaded_bytes_total: reg!(IntCounterVec::new(
                o("store_uploaded_bytes_total", "Body bytes sent to the store."),
                &["share"]
            )),
            store_downloaded_bytes_total: reg!(IntCounterVec::new(
                o("store_downloaded_bytes_total", "Body bytes read from the store."),
                &["share"]
            )),
            store_request_duration_seconds: reg!(HistogramVec::new(
                ho(
                    "store_request_duration_seconds",
                    "Store (S3) request latency, errors included.",
                    STORE_BUCKETS
                ),
                &["share", "operation"]
            )),
            store_errors_total: reg!(IntCounterVec::new(
                o(
                    "store_errors_total",
                    "Failed store (S3) requests by operation and error code."
                ),
                &["share", "operation", "code"]
            )),
            store_reachable: reg!(IntGauge::with_opts(o(
                "store_reachable",
                "1 when every share's store answered recently."
            ))),
            nfs_connections: reg!(IntGauge::with_opts(o(
                "nfs_connections",
                "Open NFS client connections."
            ))),
            nfs_reply_bytes: reg!(IntGauge::with_opts(o(
                "nfs_reply_bytes",
                "Reply memory held for NFS replies not written yet."
            ))),
            nfs_connections_rejected_total: reg!(IntCounterVec::new(
                o(
                    "nfs_connections_rejected_total",
                    "NFS connections refused, by reason."
                ),
                &["reason"]
            )),
            nfs_bad_handles_total: reg!(IntCounterVec::new(
                o(
                    "nfs_bad_handles_total",
                    "File handles refused before any use (forged, old, malformed)."
                ),
                &["reason"]
            )),
            nfs_read_bytes_total: reg!(IntCounterVec::new(
                o("nfs_read_bytes_total", "Bytes returned to NFS clients by READ."),
                &["share"]
            )),
            nfs_write_bytes_total: reg!(IntCounterVec::new(
                o(
                    "nfs_write_bytes_total",
                    "Bytes accepted from NFS clients by WRITE."
                ),
                &["share"]
            )),
            nfs_calls_total: reg!(IntCounterVec::new(
                o(
                    "nfs_calls_total",
                    "NFSv3 calls answered, by procedure and status."
                ),
                &["procedure", "status"]
            )),
            nfs_call_duration_seconds: reg!(HistogramVec::new(
                ho(
                    "nfs_call_duration_seconds",
                    "NFS call latency, by procedure and status.",
                    NFS_BUCKETS
                ),
                &["procedure", "status"]
            )),
            fuse_calls_total: reg!(IntCounterVec::new(
                o(
                    "fuse_calls_total",
                    "Calls a share's FUSE mount answered, by operation and status."
                ),
                &["share", "op", "status"]
            )),
            fuse_call_duration_seconds: reg!(HistogramVec::new(
                ho(
                    "fuse_call_duration_seconds",
                    "FUSE call latency, by share and operation.",
                    NFS_BUCKETS
                ),
                &["share", "op"]
            )),
            audit_dropped_total: reg!(IntCounterVec::new(
                o(
                    "audit_dropped_total",
                    "Audit records dropped because the audit log writer could not keep up."
                ),
                &["share"]
            )),
            upload_rate_limit_bytes_per_second: reg!(IntGauge::with_opts(o(
                "upload_rate_limit_bytes_per_second",
                "The upload rate limit now, in bytes per second; 0 when unlimited."
            ))),
            upload_notifications_total: reg!(IntCounterVec::new(
                o(
                    "upload_notifications_total",
                    "Upload notifications by sink (log, webhook) and result (sent, failed, dropped)."
                ),
                &["share", "sink", "result"]
            )),
            events_total: reg!(IntCounterVec::new(
                o(
                    "events_total",
                    "S3 events from the share's queue: received, applied, ignored, failed."
                ),
                &["share", "result"]
            )),
            events_queue_reachable: reg!(IntGaugeVec::new(
                o(
                    "events_queue_reachable",
                    "1 while the share's S3 event queue answers, 0 while it does not."
                ),
                &["share"]
            )),
            ready: reg!(IntGauge::with_opts(o(
                "ready",
                "1 when every readiness check passes."
            ))),
            readiness_check: reg!(IntGaugeVec::new(
                o(
                    "readiness_check",
                    "1 per passing readiness check, 0 per failing one."
                ),
                &["check"]
            )),
            smb_sessions: reg!(IntGaugeVec::new(
                o(
                    "smb_sessions",
                    "SMB sessions open on smbd, by dialect (SMB2_10, SMB3_11, ...)."
                ),
                &["dialect"]
            )),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Exported at 0 from the start, so alerts on increase() see the first refusal.
        for r in ["limit", "client_limit", "not_allowed"] {
            m.nfs_connections_rejected_total.with_label_values(&[r]);
        }
        for r in ["forged", "old", "malformed"] {
            m.nfs_bad_handles_total.with_label_values(&[r]);
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        m.start_time_seconds.set(now.as_secs_f64());
        m
    }

    /// A registry for this configuration: static figures set (capacity, dirty limit)
    /// and every share's series created ([`Metrics::add_share`]).
    pub fn from_config(cfg: &crate::config::Config) -> Metrics {
        let m = Metrics::new();
        m.cache_capacity_bytes.set(clamp(cfg.cache.capacity.0));
        m.cache_dirty_limit_bytes.set(clamp(cfg.dirty_limit_bytes()));
        for s in &cfg.shares {
            m.add_share(&s.name);
            for (sink, on) in [
                ("log", s.upload_log.is_some()),
                ("webhook", s.upload_webhook.is_some()),
            ] {
                for r in ["sent", "failed", "dropped"] {
                    if on && (sink == "webhook" || r != "failed") {
                        m.upload_notifications_total
                            .with_label_values(&[&s.name, sink, r]);
                    }
                }
            }
            if s.events.is_some() {
                for r in ["received", "applied", "ignored", "failed"] {
                    m.events_total.with_label_values(&[&s.name, r]);
                }
                m.events_queue_reachable.with_label_values(&[&s.name]).set(1);
            }
        }
        // At 0 from the first scrape, so rate() and alerts on it work at once.
        m.nfs_connections_rejected_total.with_label_values(&["limit"]);
        m
    }

    /// Creates every per-share series at 0 (and the store latency series for each of
    /// [`STORE_OPERATIONS`]), so `rate()` and `absent()` work from the first scrape
    /// instead of the first event. Call once per share at startup.
    pub fn add_share(&self, share: &str) {
        for c in [
            &self.cache_hits_total,
            &self.cache_misses_total,
            &self.cache_evictions_total,
            &self.cache_evicted_bytes_total,
            &self.files_renamed_total,
            &self.conflicts_total,
            &self.store_keys_hidden_total,
            &self.store_uploaded_bytes_total,
            &self.store_downloaded_bytes_total,
            &self.nfs_read_bytes_total,
            &self.nfs_write_bytes_total,
            &self.audit_dropped_total,
        ] {
            c.with_label_values(&[share]);
        }
        for r in ["ok", "error"] {
            self.uploads_total.with_label_values(&[share, r]);
        }
        for r in ["hit", "miss"] {
            self.attr_cache_lookups_total.with_label_values(&[share, r]);
        }
        for op in STORE_OPERATIONS {
            self.store_request_duration_seconds
                .with_label_values(&[share, op]);
        }
    }

    /// Registers the closure that refreshes computed gauges on every scrape (replacing
    /// any earlier one). It receives the `Metrics`, so it need not capture a clone
    /// (which would make a reference cycle). Keep it cheap: it runs on every scrape.
    pub fn set_scrape_hook(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        *self.hook.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(hook));
    }

    /// Sets the cache figures in one call (for the scrape hook).
    pub fn set_cache(&self, capacity_bytes: u64, used_bytes: u64, dirty_bytes: u64) {
        self.cache_capacity_bytes.set(clamp(capacity_bytes));
        self.cache_used_bytes.set(clamp(used_bytes));
        self.cache_free_bytes
            .set(clamp(capacity_bytes.saturating_sub(used_bytes)));
        self.cache_dirty_bytes.set(clamp(dirty_bytes));
    }

    /// Sets the upload-queue figures in one call (for the scrape hook).
    pub fn set_upload_queue(&self, files: u64, bytes: u64, oldest_dirty_age: Duration, failing_files: u64) {
        self.upload_queue_files.set(clamp(files));
        self.upload_queue_bytes.set(clamp(bytes));
        self.cache_oldest_dirty_age_seconds
            .set(oldest_dirty_age.as_secs_f64());
        self.upload_failing_files.set(clamp(failing_files));
    }

    /// Records one store request: its latency, and on failure its error code.
    pub fn observe_store_request(
        &self,
        share: &str,
        operation: &str,
        elapsed: Duration,
        error_code: Option<&str>,
    ) {
        self.store_request_duration_seconds
            .with_label_values(&[share, operation])
            .observe(elapsed.as_secs_f64());
        if let Some(code) = error_code {
            self.store_errors_total
                .with_label_values(&[share, operation, code])
                .inc();
        }
    }

    /// Brings the share's eviction counters up to the cache engine's running totals
    /// (`Cache::evicted()` gives files and bytes evicted since open). For the scrape
    /// hook: counters only move forward, so a total below the counter (a cache
    /// reopened under the same registry) adds nothing.
    pub fn sync_evictions(&self, share: &str, files_total: u64, bytes_total: u64) {
        for (c, total) in [
            (&self.cache_evictions_total, files_total),
            (&self.cache_evicted_bytes_total, bytes_total),
        ] {
            catch_up(&c.with_label_values(&[share]), total);
        }
    }

    /// The same for the attribute hot set (`Cache::attr_cache_stats()`).
    pub fn sync_attr_cache(&self, share: &str, hits_total: u64, misses_total: u64) {
        for (result, total) in [("hit", hits_total), ("miss", misses_total)] {
            catch_up(
                &self.attr_cache_lookups_total.with_label_values(&[share, result]),
                total,
            );
        }
    }

    /// One file handle refused (see `nfs_bad_handles_total`).
    pub fn bad_handle(&self, why: crate::nfs::BadHandle) {
        use crate::nfs::BadHandle;
        let reason = match why {
            BadHandle::Forged => "forged",
            BadHandle::Old => "old",
            BadHandle::Malformed => "malformed",
        };
        self.nfs_bad_handles_total.with_label_values(&[reason]).inc();
    }

    /// One NFS READ that could not be served from the cache alone (it needed data
    /// fetched from the store): CacheHitPercent's miss.
    pub fn cache_miss(&self, share: &str) {
        self.cache_misses_total.with_label_values(&[share]).inc();
    }

    /// Records one answered NFS/MOUNT call.
    pub fn observe_nfs_call(&self, procedure: &str, status: &str, elapsed: Duration) {
        self.nfs_calls_total.with_label_values(&[procedure, status]).inc();
        self.nfs_call_duration_seconds
            .with_label_values(&[procedure, status])
            .observe(elapsed.as_secs_f64());
    }

    /// Records one answered FUSE call.
    pub fn observe_fuse_call(&self, share: &str, op: &str, status: &str, elapsed: Duration) {
        self.fuse_calls_total
            .with_label_values(&[share, op, status])
            .inc();
        self.fuse_call_duration_seconds
            .with_label_values(&[share, op])
            .observe(elapsed.as_secs_f64());
    }

    /// Sets `bucketgate_ready`, `bucketgate_readiness_check` and
    /// `bucketgate_store_reachable` from a readiness answer.
    pub fn set_readiness(&self, checks: &[(String, bool)]) {
        let mut all = true;
        for (name, ok) in checks {
            all &= ok;
            self.readiness_check.with_label_values(&[name]).set(*ok as i64);
            if name == "store_reachable" {
                self.store_reachable.set(*ok as i64);
            }
        }
        self.ready.set(all as i64);
    }

    /// Runs the scrape hook, then encodes every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let hook = self.hook.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = hook {
            h(self);
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec");
        String::from_utf8(buf).expect("text format is UTF-8")
    }

    /// Every metric family name this registry exports (for tests and docs).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .registry
            .gather()
            .into_iter()
            .map(|f| f.get_name().to_string())
            .collect();
        // Vec metrics with no children yet are not gathered; list them from their descs.
        for c in self.collectors_descs() {
            if !v.contains(&c) {
                v.push(c);
            }
        }
        v.sort();
        v
    }

    fn collectors_descs(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let cs: Vec<&dyn Collector> = vec![
            &self.build_info,
            &self.start_time_seconds,
            &self.cache_capacity_bytes,
            &self.cache_used_bytes,
            &self.cache_free_bytes,
            &self.cache_dirty_bytes,
            &self.cache_dirty_limit_bytes,
            &self.cache_oldest_dirty_age_seconds,
            &self.cache_hits_total,
            &self.cache_misses_total,
            &self.cache_evictions_total,
            &self.cache_evicted_bytes_total,
            &self.attr_cache_lookups_total,
            &self.upload_queue_files,
            &self.upload_queue_bytes,
            &self.upload_failing_files,
            &self.uploads_total,
            &self.files_renamed_total,
            &self.conflicts_total,
            &self.store_keys_hidden_total,
            &self.store_uploaded_bytes_total,
            &self.store_downloaded_bytes_total,
            &self.store_request_duration_seconds,
            &self.store_errors_total,
            &self.store_reachable,
            &self.nfs_connections,
            &self.nfs_reply_bytes,
            &self.nfs_connections_rejected_total,
            &self.nfs_bad_handles_total,
            &self.nfs_read_bytes_total,
            &self.nfs_write_bytes_total,
            &self.nfs_calls_total,
            &self.nfs_call_duration_seconds,
            &self.fuse_calls_total,
            &self.fuse_call_duration_seconds,
            &self.audit_dropped_total,
            &self.upload_rate_limit_bytes_per_second,
            &self.upload_notifications_total,
            &self.events_total,
            &self.events_queue_reachable,
            &self.ready,
            &self.readiness_check,
            &self.smb_sessions,
        ];
        cs.iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect()
    }
}

/// Moves a counter up to `total`, a running total kept elsewhere; never down (a
/// reopened cache starts its totals again from 0).
fn catch_up(c: &prometheus::IntCounter, total: u64) {
    c.inc_by(total.saturating_sub(c.get()));
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_counters_end_in_total() {
        let m = Metrics::new();
        let names = m.names();
        assert!(names.len() >= 30, "{names:?}");
        for n in &names {
            assert!(n.starts_with("bucketgate_"), "{n}");
        }
        for f in m.registry.gather() {
            if f.get_field_type() == prometheus::proto::MetricType::COUNTER {
                assert!(f.get_name().ends_with("_total"), "{}", f.get_name());
            }
        }
    }

    #[test]
    fn scrape_hook_runs_on_render_and_sets_free() {
        let m = Metrics::new();
        m.set_scrape_hook(|m| m.set_cache(1000, 300, 120));
        let text = m.render();
        assert!(text.contains("bucketgate_cache_free_bytes 700"), "{text}");
        assert!(text.contains("bucketgate_cache_dirty_bytes 120"), "{text}");
        assert!(text.contains("bucketgate_build_info{version=\""), "{text}");
    }

    #[test]
    fn readiness_sets_store_reachable_and_ready() {
        let m = Metrics::new();
        m.set_readiness(&[("nfs_listening".into(), true), ("store_reachable".into(), false)]);
        assert_eq!(m.store_reachable.get(), 0);
        assert_eq!(m.ready.get(), 0);
        m.set_readiness(&[("nfs_listening".into(), true), ("store_reachable".into(), true)]);
        assert_eq!(m.store_reachable.get(), 1);
        assert_eq!(m.ready.get(), 1);
    }

    #[test]
    fn from_config_sets_static_figures_and_share_series() {
        let cfg = crate::config::Config::embedded_default(std::path::Path::new("/tmp/bg"));
        let m = Metrics::from_config(&cfg);
        assert_eq!(m.cache_capacity_bytes.get(), cfg.cache.capacity.0 as i64);
        assert!(m.cache_capacity_bytes.get() > 0);
        assert_eq!(m.cache_dirty_limit_bytes.get(), cfg.dirty_limit_bytes() as i64);
        let text = m.render();
        assert!(
            text.contains("bucketgate_nfs_write_bytes_total{share=\"data\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("bucketgate_uploads_total{result=\"error\",share=\"data\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn evictions_follow_the_engine_totals() {
        let m = Metrics::new();
        m.sync_evictions("data", 2, 4096);
        m.sync_evictions("data", 5, 10_000);
        m.sync_evictions("data", 5, 10_000);
        assert_eq!(m.cache_evictions_total.with_label_values(&["data"]).get(), 5);
        assert_eq!(
            m.cache_evicted_bytes_total.with_label_values(&["data"]).get(),
            10_000
        );
        // A smaller total (cache reopened) never moves a counter back.
        m.sync_evictions("data", 1, 10);
        assert_eq!(m.cache_evictions_total.with_label_values(&["data"]).get(), 5);
        m.cache_miss("data");
        assert_eq!(m.cache_misses_total.with_label_values(&["data"]).get(), 1);
        m.sync_attr_cache("data", 90, 10);
        m.sync_attr_cache("data", 80, 10);
        let lookups = |r| m.attr_cache_lookups_total.with_label_values(&["data", r]).get();
        assert_eq!((lookups("hit"), lookups("miss")), (90, 10));
    }

    #[test]
    fn store_errors_counted_by_code() {
        let m = Metrics::new();
        m.observe_store_request("data", "PutObject", Duration::from_millis(20), None);
        m.observe_store_request("data", "PutObject", Duration::from_millis(20), Some("SlowDown"));
        assert_eq!(
            m.store_errors_total
                .with_label_values(&["data", "PutObject", "SlowDown"])
                .get(),
            1
        );
        assert_eq!(
            m.store_request_duration_seconds
                .with_label_values(&["data", "PutObject"])
                .get_sample_count(),
            2
        );
    }
}
