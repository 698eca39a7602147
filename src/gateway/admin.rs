//! The gateway's side of the admin API: status, flush, readiness, and the figures
//! the metrics scrape reads.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;

use super::Gateway;
use crate::admin::{
    AdminApi, ApiError, CHECK_CONFIGURED, CHECK_EVENTS_QUEUE_REACHABLE, CHECK_METADATA_OPEN,
    CHECK_NFS_LISTENING, CHECK_STORE_REACHABLE, CacheStatus, FailingFile, FileState, FileStatus, FlushReport,
    FlushRequest, QueueStatus, Readiness, RefreshReport, RefreshRequest, ShareStatus, StatusReport,
};

pub struct Api(pub Arc<Gateway>);

/// How long `status PATH` waits for the HEAD that checks a file against the store.
const STATUS_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

struct Figures {
    used: u64,
    dirty: u64,
    queued: u64,
    oldest: Duration,
    failing: u64,
}

fn figures(g: &Gateway) -> Figures {
    let mut f = Figures {
        used: 0,
        dirty: 0,
        queued: 0,
        oldest: Duration::ZERO,
        failing: 0,
    };
    for s in &g.shares {
        f.used += s.share.cache.stored_bytes();
        f.dirty += s.share.cache.dirty_bytes();
        f.queued += s.uploader.queued() as u64;
        f.oldest = f.oldest.max(s.uploader.oldest_dirty_age());
        f.failing += s.uploader.failing().len() as u64;
    }
    f
}

pub fn install_scrape_hook(g: &Arc<Gateway>) {
    let weak = Arc::downgrade(g);
    g.metrics.set_scrape_hook(move |m| {
        let Some(g) = weak.upgrade() else { return };
        let f = figures(&g);
        m.set_cache(g.config.cache.capacity.0, f.used, f.dirty);
        m.set_upload_queue(f.queued, f.dirty, f.oldest, f.failing);
        let rate = g.rate_limiter.as_ref().and_then(|l| l.current()).unwrap_or(0);
        m.upload_rate_limit_bytes_per_second
            .set(i64::try_from(rate).unwrap_or(i64::MAX));
        for s in &g.shares {
            let (files, bytes) = s.share.cache.evicted();
            m.sync_evictions(&s.config.name, files, bytes);
            let (hits, misses) = s.share.cache.attr_cache_stats();
            m.sync_attr_cache(&s.config.name, hits, misses);
        }
    });
}

fn failing_file(share: &str, ff: crate::upload::FailingFile) -> FailingFile {
    FailingFile {
        share: share.to_string(),
        path: format!("/{}", ff.path),
        attempts: ff.attempts,
        last_error: ff.last_error,
        failing_since_unix_s: ff.failing_since_s,
    }
}

fn kind_name(k: bucketgate_cache::Kind) -> &'static str {
    use bucketgate_cache::Kind;
    match k {
        Kind::File => "file",
        Kind::Dir => "directory",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

impl Api {
    /// The shares and share-relative paths a request's path names: every share for
    /// none or "/", else the share "/share/path" names (an unknown one answers with
    /// the share names that exist).
    fn scope(&self, path: Option<&str>) -> Result<Vec<(usize, String)>, ApiError> {
        let p = path.unwrap_or("").trim_matches('/');
        if p.is_empty() {
            return Ok((0..self.0.shares.len()).map(|i| (i, String::new())).collect());
        }
        let (name, rest) = p.split_once('/').unwrap_or((p, ""));
        match self.0.shares.iter().position(|s| s.config.name == name) {
            Some(i) => Ok(vec![(i, rest.to_string())]),
            None => {
                let names: Vec<String> = self
                    .0
                    .shares
                    .iter()
                    .map(|s| format!("/{}", s.config.name))
                    .collect();
                Err(ApiError::NotFound(format!(
                    "no share named `{name}`; the shares are {} (or `/` for all)",
                    names.join(", ")
                )))
            }
        }
    }
}

#[async_trait]
impl AdminApi for Api {
    async fn status(&self) -> StatusReport {
        let g = &self.0;
        let f = figures(g);
        let mut failing_files = Vec::new();
        for s in &g.shares {
            for ff in s.uploader.failing() {
                failing_files.push(failing_file(&s.config.name, ff));
            }
        }
        failing_files.sort_by_key(|f| std::cmp::Reverse(f.attempts));
        failing_files.truncate(100);
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: g.started.elapsed().as_secs(),
            shares: g.shares.iter().map(|s| ShareStatus::from(&s.config)).collect(),
            cache: CacheStatus::new(g.config.cache.capacity.0, f.used, f.dirty),
            upload_queue: QueueStatus {
                files: f.queued,
                bytes: f.dirty,
                oldest_dirty_age_seconds: (f.queued > 0).then_some(f.oldest.as_secs_f64()),
                failing_files: f.failing,
            },
            failing_files,
        }
    }

    async fn file_status(&self, path: &str) -> Result<FileStatus, ApiError> {
        let (i, sub) = match self.scope(Some(path))?.as_slice() {
            [(i, sub)] => (*i, sub.clone()),
            _ => {
                return Err(ApiError::BadRequest(
                    "name a share, a directory or a file: /<share>/<path>".into(),
                ));
            }
        };
        let s = &self.0.shares[i];
        let cache = &s.share.cache;
        let ino = match cache.resolve(&sub) {
            Ok(Some(ino)) => ino,
            Ok(None) => {
                return Err(ApiError::NotFound(format!(
                    "/{}/{sub}: no such file or directory in the gateway's cache (a name not yet listed: `bucketgate refresh` its directory)",
                    s.config.name
                )));
            }
            Err(e) => return Err(ApiError::Internal(e.to_string())),
        };
        let (uploading, failing) = s.uploader.file_state(ino.id);
        let dirty = ino.is_dirty();
        let uploaded = ino.remote.key.clone();
        let name = sub.rsplit('/').next().unwrap_or_default();
        // Asked of the store itself, so "clean" is checked against the bucket.
        let head = match &uploaded {
            Some(rel) if !ino.remote.etag.is_empty() => {
                let key = format!("{}{rel}", s.prefix);
                tokio::time::timeout(STATUS_HEAD_TIMEOUT, s.store.head(&key))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            _ => None,
        };
        let store_holds_etag = head.as_ref().map(|h| {
            h.as_ref()
                .is_some_and(|o| bucketgate_cache::same_etag(&o.etag, &ino.remote.etag))
        });
        let version_id = match (&head, store_holds_etag) {
            (Some(Some(o)), Some(true)) => o.version_id.clone(),
            _ => None,
        };
        Ok(FileStatus {
            share: s.config.name.clone(),
            path: format!("/{sub}"),
            kind: kind_name(ino.kind).into(),
            size: ino.size,
            state: FileState::of(dirty, uploading, failing.is_some()),
            dirty_since_unix_s: (dirty && ino.dirty_since_ns > 0).then(|| ino.dirty_since_ns as f64 / 1e9),
            etag: uploaded.as_ref().map(|_| ino.remote.etag.clone()),
            object_key: uploaded,
            store_holds_etag,
            version_id,
            failure: failing.map(|ff| failing_file(&s.config.name, ff)),
            conflict_copy: name.contains(".conflict-"),
            pending_below: (ino.kind == bucketgate_cache::Kind::Dir).then(|| {
                s.uploader
                    .pending_under(&sub)
                    .iter()
                    // Removed files wait too (their objects' deletion), but not below
                    // any directory that can be named.
                    .filter(|p| p.id != ino.id && !p.unlinked)
                    .count() as u64
            }),
        })
    }

    async fn flush(&self, req: FlushRequest) -> Result<FlushReport, ApiError> {
        let scope = self.scope(req.path.as_deref())?;
        let mut targets = Vec::new();
        let mut bytes = 0;
        for (i, sub) in &scope {
            let s = &self.0.shares[*i];
            let t = s.uploader.flush_now(Some(sub));
            bytes += s.share.cache.dirty_bytes();
            targets.push((*i, t));
        }
        let files = targets.iter().map(|(_, t)| t.len() as u64).sum();
        let reached = |targets: &[(usize, Vec<(u64, u64)>)]| {
            targets.iter().all(|(i, t)| self.0.shares[*i].uploader.reached(t))
        };
        if req.wait {
            // The admin server bounds this with the request's timeout; the uploads
            // themselves go on if the wait is abandoned.
            while !reached(&targets) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(FlushReport {
            files,
            bytes,
            complete: reached(&targets),
        })
    }

    async fn refresh(&self, req: RefreshRequest) -> Result<RefreshReport, ApiError> {
        let scope = self.scope(req.path.as_deref())?;
        let mut report = RefreshReport::default();
        for (i, sub) in scope {
            let s = &self.0.shares[i];
            let dir = match s.share.cache.resolve(&sub) {
                Ok(Some(d)) if d.kind == bucketgate_cache::Kind::Dir => d,
                Ok(_) => {
                    return Err(ApiError::NotFound(format!(
                        "/{}/{sub} is not a directory",
                        s.config.name
                    )));
                }
                Err(e) => return Err(ApiError::Internal(e.to_string())),
            };
            let (dirs, changes) = s
                .share
                .rt
                .refresh(dir.id, req.recursive)
                .await
                .map_err(|e| ApiError::Unavailable(format!("listing the store failed: {e}")))?;
            report.directories += dirs;
            report.entries_changed += changes.added + changes.changed + changes.removed;
        }
        Ok(report)
    }

    fn readiness(&self) -> Readiness {
        let g = &self.0;
        let unreachable: Vec<&str> = g
            .shares
            .iter()
            .filter(|s| !s.instrumented.reachable())
            .map(|s| s.config.name.as_str())
            .collect();
        let mut r = Readiness::default()
            .check(CHECK_CONFIGURED, !g.shares.is_empty(), None)
            .check(CHECK_METADATA_OPEN, true, None)
            .check(CHECK_NFS_LISTENING, g.nfs_listening.load(Ordering::Relaxed), None)
            .check(
                CHECK_STORE_REACHABLE,
                unreachable.is_empty(),
                (!unreachable.is_empty())
                    .then(|| format!("last request failed for share(s): {}", unreachable.join(", "))),
            );
        if !g.event_feeds.is_empty() {
            let failing: Vec<String> = g
                .event_feeds
                .iter()
                .filter_map(|f| f.state.error().map(|e| format!("{}: {e}", f.url())))
                .collect();
            r = r.advise(
                CHECK_EVENTS_QUEUE_REACHABLE,
                failing.is_empty(),
                (!failing.is_empty()).then(|| {
                    format!(
                        "serving; others' changes show at the next listing until the queue answers ({})",
                        failing.join("; ")
                    )
                }),
            );
        }
        r
    }
}
