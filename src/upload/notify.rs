//! Upload notifications (File Gateway's NotificationPolicy): one event per object
//! that reached the store, once the file has settled, to a JSON-lines log and/or a
//! webhook. Nothing here ever holds an upload back: the uploader hands each object
//! over with a `try_send`, and whatever a full queue cannot take is counted as
//! dropped (`bucketgate_upload_notifications_total{sink,result}`: `sent` to the log
//! or the webhook, `failed` when the webhook refused it every time, `dropped`).
//!
//! Settling: an object written again within `upload_settle` of its last upload
//! replaces the pending event, so a file rewritten every second while it grows gives
//! one event once it has stopped changing for that long.
//!
//! Version ids: a settled event's object is read back with a HEAD (a few at a time,
//! off the upload path) while the bucket shows versions; when a HEAD shows none, the
//! bucket is taken as unversioned and asked again only every 10 minutes.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::remote::ObjectStore;

/// Events waiting to settle or to be sent, per sink.
const QUEUE: usize = 10_000;
/// A webhook delivery is tried this many times, 1, 2, 4, ... s apart.
const WEBHOOK_ATTEMPTS: u32 = 6;
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// HEADs for version ids in flight, and how long one may take.
const VERSION_LOOKUPS: usize = 8;
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a bucket whose objects showed no version id is taken as unversioned.
const UNVERSIONED_RECHECK: Duration = Duration::from_secs(600);

/// One object that reached the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Uploaded {
    pub event: &'static str,
    pub share: String,
    /// The object's key in the bucket.
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// The object version's id, in a bucket with versioning.
    pub version_id: Option<String>,
    /// When the upload finished, RFC 3339 UTC.
    pub time: String,
}

/// Where a share's upload notifications go.
pub struct NotifySettings {
    pub log: Option<std::path::PathBuf>,
    /// `http://host[:port]/path`.
    pub webhook: Option<String>,
    pub settle: Duration,
}

pub struct UploadNotifier {
    share: String,
    tx: mpsc::Sender<Uploaded>,
    metrics: Option<(Metrics, String)>,
}

impl UploadNotifier {
    /// Opens the log (failing at once if it cannot be) and starts the settling task
    /// and the webhook sender on the current runtime.
    pub fn start(
        share: &str,
        settings: NotifySettings,
        store: Arc<dyn ObjectStore>,
        metrics: Option<Metrics>,
    ) -> std::io::Result<Arc<UploadNotifier>> {
        let log = match &settings.log {
            Some(p) => Some(crate::audit::json_lines::<Uploaded>(
                &format!("uploads-{share}"),
                Path::new(p),
                QUEUE,
            )?),
            None => None,
        };
        let metrics = metrics.map(|m| (m, share.to_string()));
        let webhook = settings.webhook.map(|url| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(deliver(url, rx, metrics.clone()));
            tx
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let sinks = Arc::new(Sinks {
            log,
            webhook,
            metrics: metrics.clone(),
            store,
            lookups: tokio::sync::Semaphore::new(VERSION_LOOKUPS),
            pending: Arc::new(tokio::sync::Semaphore::new(QUEUE)),
            unversioned_since: parking_lot::Mutex::new(None),
        });
        tokio::spawn(settle(rx, settings.settle, sinks));
        Ok(Arc::new(UploadNotifier {
            share: share.to_string(),
            tx,
            metrics,
        }))
    }

    /// The object `key` (`size` bytes, `etag`) reached the store. Never waits.
    pub fn uploaded(&self, key: String, size: u64, etag: &str) {
        let u = Uploaded {
            event: "uploaded",
            share: self.share.clone(),
            key,
            size,
            etag: etag.trim_matches('"').to_string(),
            version_id: None,
            time: crate::audit::rfc3339_now(),
        };
        if self.tx.try_send(u).is_err() {
            count(&self.metrics, "settle", "dropped");
        }
    }
}

fn count(metrics: &Option<(Metrics, String)>, sink: &str, result: &str) {
    if let Some((m, share)) = metrics {
        m.upload_notifications_total
            .with_label_values(&[share, sink, result])
            .inc();
    }
}

/// Where settled events go, and what finding their version ids needs.
struct Sinks {
    log: Option<mpsc::Sender<Uploaded>>,
    webhook: Option<mpsc::Sender<Uploaded>>,
    metrics: Option<(Metrics, String)>,
    store: Arc<dyn ObjectStore>,
    lookups: tokio::sync::Semaphore,
    /// Settled events not yet handed to the sinks (bounded like every queue here).
    pending: Arc<tokio::sync::Semaphore>,
    /// When a HEAD last showed no version id.
    unversioned_since: parking_lot::Mutex<Option<Instant>>,
}

impl Sinks {
    /// Fills in the version id (while the bucket shows versions), then hands the
    /// event to the log and the webhook.
    async fn emit(self: Arc<Self>, mut u: Uploaded, _pending: tokio::sync::OwnedSemaphorePermit) {
        let look = self
            .unversioned_since
            .lock()
            .is_none_or(|t| t.elapsed() > UNVERSIONED_RECHECK);
        if look && let Ok(_permit) = self.lookups.acquire().await {
            let head = tokio::time::timeout(VERSION_TIMEOUT, self.store.head(&u.key)).await;
            if let Ok(Ok(Some(o))) = head
                && bucketgate_cache::same_etag(&o.etag, &u.etag)
            {
                *self.unversioned_since.lock() = o.version_id.is_none().then(Instant::now);
                u.version_id = o.version_id;
            }
        }
        if let Some(tx) = &self.log {
            let result = if tx.try_send(u.clone()).is_ok() {
                "sent"
            } else {
                "dropped"
            };
            count(&self.metrics, "log", result);
        }
        // The webhook's sender counts what it sends and what it gives up on.
        if let Some(tx) = &self.webhook
            && tx.try_send(u).is_err()
        {
            count(&self.metrics, "webhook", "dropped");
        }
    }
}

/// Holds each event until its key has had no newer upload for `settle`, then hands
/// it to the sinks.
async fn settle(mut rx: mpsc::Receiver<Uploaded>, settle: Duration, sinks: Arc<Sinks>) {
    // Arrival order is due order (one settle time for all); `latest` says which
    // arrival of a key is its newest.
    let mut queue: VecDeque<(Instant, u64, Uploaded)> = VecDeque::new();
    let mut latest: HashMap<String, u64> = HashMap::new();
    let mut seq = 0u64;
    loop {
        let next_due = queue.front().map(|(due, _, _)| *due);
        tokio::select! {
            got = rx.recv() => {
                let Some(u) = got else { return };
                seq += 1;
                latest.insert(u.key.clone(), seq);
                queue.push_back((Instant::now() + settle, seq, u));
            }
            _ = sleep_until(next_due), if next_due.is_some() => {}
        }
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _, _)| *due <= now) {
            let (_, s, u) = queue.pop_front().expect("checked");
            if latest.get(&u.key) != Some(&s) {
                continue; // uploaded again since: that event stands for both
            }
            latest.remove(&u.key);
            match sinks.pending.clone().try_acquire_owned() {
                Ok(p) => drop(tokio::spawn(sinks.clone().emit(u, p))),
                Err(_) => count(&sinks.metrics, "settle", "dropped"),
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Posts each event to `url` as JSON, one at a time, retrying with back-off.
async fn deliver(url: String, mut rx: mpsc::Receiver<Uploaded>, metrics: Option<(Metrics, String)>) {
    let Ok(target) = Webhook::parse(&url) else {
        return; // refused by the config check
    };
    while let Some(u) = rx.recv().await {
        let body = serde_json::to_vec(&u).expect("events serialize");
        let mut delay = Duration::from_secs(1);
        let mut sent = false;
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            match tokio::time::timeout(WEBHOOK_TIMEOUT, target.post(&body)).await {
                Ok(Ok(())) => {
                    sent = true;
                    break;
                }
                Ok(Err(e)) => tracing::debug!(url, attempt, error = %e, "upload webhook failed"),
                Err(_) => tracing::debug!(url, attempt, "upload webhook timed out"),
            }
            if attempt < WEBHOOK_ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        if sent {
            count(&metrics, "webhook", "sent");
        } else {
            count(&metrics, "webhook", "failed");
            tracing::warn!(url, key = %u.key, "upload webhook gave up on an event after {WEBHOOK_ATTEMPTS} attempts");
        }
    }
}

/// A webhook address: plain HTTP (a relay on the gateway's network forwards to
/// HTTPS endpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    authority: String,
    path: String,
}

impl Webhook {
    pub fn parse(url: &str) -> Result<Webhook, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}` must start with http:// (https needs a relay)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("`{url}` needs a host, and no user:password@"));
        }
        Ok(Webhook {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    async fn post(&self, body: &[u8]) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| e.to_string())?;
        let req = hyper::Request::post(&self.path)
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .header("user-agent", concat!("bucketgate/", env!("CARGO_PKG_VERSION")))
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(body)))
            .map_err(|e| e.to_string())?;
        let status = crate::http1::exchange(stream, req).await?.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        assert_eq!(
            Webhook::parse("http://127.0.0.1:8080/hook"),
            Ok(Webhook {
                authority: "127.0.0.1:8080".into(),
                path: "/hook".into()
            })
        );
        assert_eq!(Webhook::parse("http://relay").unwrap().path, "/");
        for bad in ["https://x/y", "ftp://x", "http://", "http://u:p@x/"] {
            assert!(Webhook::parse(bad).is_err(), "{bad}");
        }
    }
}
