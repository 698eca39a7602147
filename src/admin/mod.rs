//! The admin HTTP listener: `/metrics`, `/healthz`, `/readyz` and the `/api/v1` admin
//! API. The gateway plugs in through [`AdminApi`]; this module only does HTTP, JSON
//! and limits, so it is tested with a stand-in implementation.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET  | /metrics | Prometheus text format |
//! | GET  | /healthz | 200 `ok` while the process serves HTTP |
//! | GET  | /readyz | 200 or 503, JSON [`ReadinessBody`] naming each check |
//! | GET  | /api/v1/status | JSON [`StatusReport`] |
//! | GET  | /api/v1/status?path=/share/file | JSON [`FileStatus`]: where one file or directory stands |
//! | POST | /api/v1/flush | JSON [`FlushRequest`] → [`FlushReport`] |
//! | POST | /api/v1/refresh | JSON [`RefreshRequest`] → [`RefreshReport`] |
//!
//! Errors are JSON [`ErrorBody`] with 400 (bad request), 401 (`/api/v1` without the
//! bearer token), 403 (`/api/v1` from another host with no token configured),
//! 404 (unknown path or file), 405, 413 (body over 64 KiB), 503, 504 (flush wait
//! timed out) or 500.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

mod client;
mod server;

pub use client::{AdminClient, ClientError};
pub use server::{ApiAccess, MAX_BODY_BYTES, serve_admin};

/// What the gateway implements for the admin listener.
#[async_trait]
pub trait AdminApi: Send + Sync + 'static {
    /// A snapshot for `GET /api/v1/status` and `bucketgate status`.
    async fn status(&self) -> StatusReport;

    /// Where one file or directory (`/<share>/<path>`) stands with the store, for
    /// `GET /api/v1/status?path=` and `bucketgate status PATH`.
    async fn file_status(&self, path: &str) -> Result<FileStatus, ApiError>;

    /// Starts uploading everything dirty under `req.path` (every share when `None`)
    /// now, without waiting for `upload_delay`. With `req.wait`, returns only once every
    /// byte written before the call is in the store (File Gateway's NotifyWhenUploaded);
    /// the admin server enforces `req.timeout_s`, so an implementation may wait for ever.
    async fn flush(&self, req: FlushRequest) -> Result<FlushReport, ApiError>;

    /// Re-lists the store under `req.path` so objects written behind the gateway show
    /// up (File Gateway's RefreshCache).
    async fn refresh(&self, req: RefreshRequest) -> Result<RefreshReport, ApiError>;

    /// Cheap and non-blocking: called on every `/readyz` and every `/metrics` scrape.
    fn readiness(&self) -> Readiness;
}

/// Names of the readiness checks the gateway reports.
pub const CHECK_CONFIGURED: &str = "configured";
pub const CHECK_METADATA_OPEN: &str = "metadata_open";
pub const CHECK_NFS_LISTENING: &str = "nfs_listening";
pub const CHECK_STORE_REACHABLE: &str = "store_reachable";
/// Advisory: the shares keep serving without their event queue.
pub const CHECK_EVENTS_QUEUE_REACHABLE: &str = "events_queue_reachable";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub checks: Vec<ReadinessCheck>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadinessCheck {
    /// One of the `CHECK_*` names.
    pub name: String,
    pub ok: bool,
    /// Why it fails (or a hint when it passes); never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A failing advisory check reports a degraded gateway that still serves: it
    /// does not make `/readyz` answer 503.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub advisory: bool,
}

impl Readiness {
    pub fn check(mut self, name: &str, ok: bool, detail: Option<String>) -> Self {
        self.checks.push(ReadinessCheck {
            name: name.to_string(),
            ok,
            detail,
            advisory: false,
        });
        self
    }

    /// An advisory check (see [`ReadinessCheck::advisory`]).
    pub fn advise(mut self, name: &str, ok: bool, detail: Option<String>) -> Self {
        self = self.check(name, ok, detail);
        if let Some(c) = self.checks.last_mut() {
            c.advisory = true;
        }
        self
    }

    /// Ready when there is at least one check and all but the advisory ones pass.
    pub fn is_ready(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok || c.advisory)
    }
}

/// The `/readyz` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadinessBody {
    pub ready: bool,
    pub checks: Vec<ReadinessCheck>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `CARGO_PKG_VERSION` of the gateway.
    pub version: String,
    pub uptime_seconds: u64,
    pub shares: Vec<ShareStatus>,
    pub cache: CacheStatus,
    pub upload_queue: QueueStatus,
    /// Files whose last upload attempt failed, worst first. May be truncated: the
    /// count is in `upload_queue.failing_files`.
    pub failing_files: Vec<FailingFile>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShareStatus {
    pub name: String,
    /// The path clients mount, `/<name>`.
    pub export_path: String,
    pub url: String,
    pub read_only: bool,
}

impl From<&crate::config::ShareConfig> for ShareStatus {
    fn from(s: &crate::config::ShareConfig) -> Self {
        ShareStatus {
            name: s.name.clone(),
            export_path: s.export_path(),
            url: s.url.clone(),
            read_only: s.read_only,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStatus {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub dirty_bytes: u64,
    /// 100 * dirty / capacity (File Gateway's CachePercentDirty).
    pub dirty_percent: f64,
}

impl CacheStatus {
    pub fn new(capacity_bytes: u64, used_bytes: u64, dirty_bytes: u64) -> Self {
        let dirty_percent = if capacity_bytes == 0 {
            0.0
        } else {
            100.0 * dirty_bytes as f64 / capacity_bytes as f64
        };
        CacheStatus {
            capacity_bytes,
            used_bytes,
            dirty_bytes,
            dirty_percent,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub files: u64,
    pub bytes: u64,
    /// Age of the oldest dirty data; `None` when nothing is dirty.
    pub oldest_dirty_age_seconds: Option<f64>,
    pub failing_files: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FailingFile {
    pub share: String,
    /// Path inside the share, starting with '/'.
    pub path: String,
    pub attempts: u32,
    pub last_error: String,
    /// First failure of the current streak, seconds since the Unix epoch.
    pub failing_since_unix_s: u64,
}

/// One file's or directory's state with the store (File Gateway's per-file
/// NotifyWhenUploaded has no such view; this is what an operator asks first).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileStatus {
    pub share: String,
    /// Path inside the share, starting with '/'.
    pub path: String,
    /// "file", "directory", "symlink", "fifo" or "socket".
    pub kind: String,
    pub size: u64,
    /// [`FileState`]: clean, dirty, uploading or failing.
    pub state: FileState,
    /// Since when a change waits for the store, seconds since the Unix epoch.
    pub dirty_since_unix_s: Option<f64>,
    /// The object that holds it, relative to the share's prefix, and its ETag: the
    /// last version this gateway uploaded or saw there (none before its first upload).
    pub object_key: Option<String>,
    pub etag: Option<String>,
    /// What a HEAD of that object found just now: whether the store still holds
    /// that ETag (`None`: no object yet, or the store did not answer in time), and the
    /// version's id in a bucket with versioning.
    #[serde(default)]
    pub store_holds_etag: Option<bool>,
    #[serde(default)]
    pub version_id: Option<String>,
    /// The current run of failed uploads (`failing` only).
    pub failure: Option<FailingFile>,
    /// The local version set aside because another client wrote the object
    /// (`<name>.conflict-<UTC time>`).
    pub conflict_copy: bool,
    /// Directories: files and directories below it that wait for the store (not
    /// counting removed ones whose objects are still to be deleted).
    pub pending_below: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// The store holds what the cache holds.
    #[default]
    Clean,
    /// Changed here, waiting for its upload.
    Dirty,
    /// An upload of it is in flight.
    Uploading,
    /// Its last upload failed; it is retried with backoff.
    Failing,
}

impl FileState {
    pub fn of(dirty: bool, uploading: bool, failing: bool) -> FileState {
        match () {
            _ if uploading => FileState::Uploading,
            _ if failing => FileState::Failing,
            _ if dirty => FileState::Dirty,
            _ => FileState::Clean,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Clean => "clean",
            FileState::Dirty => "dirty",
            FileState::Uploading => "uploading",
            FileState::Failing => "failing",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlushRequest {
    /// `/<share>` or `/<share>/dir/file`; `None` flushes every share.
    #[serde(default)]
    pub path: Option<String>,
    /// Answer only once everything written before the call is in the store.
    #[serde(default)]
    pub wait: bool,
    /// Give up waiting after this many seconds (504; the uploads go on).
    #[serde(default)]
    pub timeout_s: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlushReport {
    /// Files the flush covered (dirty when it was called).
    pub files: u64,
    pub bytes: u64,
    /// True when everything covered is in the store (always the case after a wait).
    pub complete: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// `/<share>` or a directory in it; `None` refreshes every share.
    #[serde(default)]
    pub path: Option<String>,
    /// Also refresh subdirectories (otherwise only the directory itself).
    #[serde(default)]
    pub recursive: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RefreshReport {
    pub directories: u64,
    pub objects_listed: u64,
    /// Entries added, changed or removed in the cache's namespace.
    pub entries_changed: u64,
}

/// An admin call that failed, mapped to an HTTP status by the server.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::Unavailable(_) => 503,
            ApiError::Timeout(_) => 504,
            ApiError::Internal(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        let message = match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Unavailable(m)
            | ApiError::Timeout(m)
            | ApiError::Internal(m) => m.clone(),
        };
        ErrorBody {
            error: self.code().to_string(),
            message,
        }
    }
}

/// Every error answer's JSON body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable: bad_request, not_found, method_not_allowed, too_large,
    /// unavailable, timeout, internal.
    pub error: String,
    pub message: String,
}
