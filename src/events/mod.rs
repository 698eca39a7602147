//! S3 event notifications: other writers' changes to the bucket, within seconds.
//!
//! A share with `events = "<SQS queue URL>"` long-polls that queue (`sqs`) for the
//! bucket's ObjectCreated/ObjectRemoved notifications (`parse`). Each event that
//! falls under a share's bucket and prefix is applied to it: the share reads that
//! key from the store again and merges what it finds with the listing's rules
//! ([`crate::share::ReadThrough::apply_event`]). A message is deleted only once all
//! its events are applied and the share's metadata is on disk; one that fails comes
//! back after the queue's visibility timeout. Shares that name one queue share its
//! poller. Events lost or never sent are still caught by `cache_stale_after` and
//! `bucketgate refresh`.

use std::sync::Arc;

use bucketgate_cache::CacheError;

use crate::metrics::Metrics;
use crate::share::{Revalidated, Share};

pub mod parse;
mod sqs;

pub use parse::S3Event;
pub use sqs::{EventFeed, QueueState};

/// A queue URL, checked: `http(s)://host[:port]/<account>/<queue>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueUrl {
    pub url: String,
    /// `scheme://host[:port]`, where the SQS API is sent.
    pub endpoint: String,
    /// The region an AWS queue's host names (`sqs.<region>.amazonaws.com`).
    pub region: Option<String>,
}

impl QueueUrl {
    pub fn parse(url: &str) -> Result<QueueUrl, String> {
        let not_queue = || {
            format!("`{url}` is not an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue>)")
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(not_queue)?;
        if scheme != "https" && scheme != "http" {
            return Err(not_queue());
        }
        let (authority, path) = rest.split_once('/').ok_or_else(not_queue)?;
        if authority.contains('@') {
            return Err("must not carry credentials; they come from the AWS credential chain".into());
        }
        if authority.is_empty() || path.is_empty() || path.contains(['?', '#']) {
            return Err(not_queue());
        }
        let host = authority.split(':').next().unwrap_or("");
        let region = host
            .strip_suffix(".amazonaws.com")
            .and_then(|h| h.strip_prefix("sqs.").or_else(|| h.strip_prefix("sqs-fips.")))
            .filter(|r| !r.is_empty() && !r.contains('.'))
            .map(str::to_owned);
        Ok(QueueUrl {
            url: url.to_owned(),
            endpoint: format!("{scheme}://{authority}"),
            region,
        })
    }
}

/// A share that a queue feeds.
#[derive(Clone)]
pub struct Target {
    pub share: Arc<Share>,
    pub bucket: String,
    pub prefix: String,
}

/// What applying one message's events came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub applied: u64,
    pub ignored: u64,
    pub failed: u64,
}

/// Applies `events` to the shares they fall under. Each event counts once per share
/// it reaches (`bucketgate_events_total{share,result}`); one that reaches no share
/// is ignored. Returns the counts, and the shares whose metadata changed.
pub async fn apply(
    targets: &[Target],
    events: &[S3Event],
    metrics: Option<&Metrics>,
) -> (Applied, Vec<usize>) {
    let mut counts = Applied::default();
    let mut touched = Vec::new();
    let count = |share: &str, result: &str| {
        if let Some(m) = metrics {
            m.events_total.with_label_values(&[share, result]).inc();
        }
    };
    for ev in events {
        let mut reached = false;
        for (i, t) in targets.iter().enumerate() {
            if ev.bucket != t.bucket {
                continue;
            }
            let Some(rel) = ev.key.strip_prefix(&t.prefix) else {
                continue;
            };
            reached = true;
            let name = &t.share.name;
            count(name, "received");
            match t.share.rt.apply_event(rel, &ev.event).await {
                Ok(Revalidated::Merged(_)) => {
                    counts.applied += 1;
                    count(name, "applied");
                    if !touched.contains(&i) {
                        touched.push(i);
                    }
                }
                // The directory went while the event was applied: nothing to show.
                Ok(Revalidated::Ignored(_)) | Err(CacheError::Stale | CacheError::NotFound) => {
                    counts.ignored += 1;
                    count(name, "ignored");
                }
                Err(e) => {
                    counts.failed += 1;
                    count(name, "failed");
                    tracing::warn!(share = %name, key = %ev.key.escape_debug(), error = %e, "could not apply an S3 event; it comes back from the queue");
                }
            }
        }
        if !reached {
            counts.ignored += 1;
        }
    }
    (counts, touched)
}
