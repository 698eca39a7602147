//! The poller of one SQS queue: long-polls it, applies the events of each batch of
//! messages to the shares it feeds, makes their metadata durable, then deletes the
//! messages. An unreachable queue is retried with back-off, logged once per outage,
//! shown by `bucketgate_events_queue_reachable` and `/readyz`; the shares keep serving.

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::{QueueUrl, Target, apply, parse};
use crate::metrics::Metrics;

/// SQS's longest long poll; an idle queue costs 3 requests a minute.
const WAIT_SECONDS: i32 = 20;
/// SQS's most messages per receive.
const BATCH: i32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Whether the queue answered its last request, and what went wrong if not.
#[derive(Default)]
pub struct QueueState {
    error: Mutex<Option<String>>,
}

impl QueueState {
    /// `None` while the queue answers; the last error while it does not.
    pub fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }
}

pub struct EventFeed {
    client: Client,
    queue: QueueUrl,
    targets: Vec<Target>,
    metrics: Option<Metrics>,
    pub state: Arc<QueueState>,
}

impl EventFeed {
    /// A poller of `queue` feeding `targets`, with the AWS credential chain (or the
    /// given static credentials). `region` applies when the queue's host names none.
    pub async fn new(
        queue: QueueUrl,
        targets: Vec<Target>,
        region: Option<String>,
        credentials: Option<(String, String)>,
        metrics: Option<Metrics>,
    ) -> EventFeed {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            // A receive waits up to WAIT_SECONDS for messages.
            .operation_attempt_timeout(Duration::from_secs(WAIT_SECONDS as u64 + 10))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some((ak, sk)) = &credentials {
            loader = loader.credentials_provider(Credentials::new(ak, sk, None, None, "bucketgate-static"));
        }
        // Known regions spare the credential chain's lookup (IMDS, on EC2).
        if let Some(r) = queue.region.clone().or(region) {
            loader = loader.region(Region::new(r));
        }
        let sdk_config = loader.load().await;
        let mut conf = aws_sdk_sqs::config::Builder::from(&sdk_config).endpoint_url(queue.endpoint.clone());
        if sdk_config.region().is_none() {
            // SQS-compatible servers (moto, ElasticMQ) take any region.
            conf = conf.region(Region::new("us-east-1"));
        }
        let conf = conf.build();
        EventFeed {
            client: Client::from_conf(conf),
            queue,
            targets,
            metrics,
            state: Arc::default(),
        }
    }

    pub fn url(&self) -> &str {
        &self.queue.url
    }

    /// Polls until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        self.set_reachable(None);
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return,
                r = self
                    .client
                    .receive_message()
                    .queue_url(&self.queue.url)
                    .max_number_of_messages(BATCH)
                    .wait_time_seconds(WAIT_SECONDS)
                    .send() => r,
            };
            let messages = match received {
                Ok(out) => {
                    self.set_reachable(None);
                    backoff = FIRST_BACKOFF;
                    out.messages.unwrap_or_default()
                }
                Err(e) => {
                    self.set_reachable(Some(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if !messages.is_empty() {
                self.handle(messages).await;
            }
        }
    }

    /// Applies a batch of messages, makes the changes durable, deletes the messages
    /// whose events all applied.
    async fn handle(&self, messages: Vec<Message>) {
        let results = futures::future::join_all(messages.iter().map(|m| self.apply_message(m))).await;
        let mut touched: Vec<usize> = Vec::new();
        let mut done = Vec::new();
        for (m, (ok, shares)) in messages.iter().zip(results) {
            for i in shares {
                if !touched.contains(&i) {
                    touched.push(i);
                }
            }
            if ok && let Some(handle) = m.receipt_handle() {
                done.push(handle.to_owned());
            }
        }
        for i in touched {
            let cache = self.targets[i].share.cache.clone();
            let flushed = tokio::task::spawn_blocking(move || cache.flush_metadata()).await;
            if !matches!(flushed, Ok(Ok(()))) {
                tracing::warn!(share = %self.targets[i].share.name, "could not make applied events durable; the queue sends them again");
                return;
            }
        }
        if done.is_empty() {
            return;
        }
        let entries: Vec<DeleteMessageBatchRequestEntry> = done
            .into_iter()
            .enumerate()
            .filter_map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .ok()
            })
            .collect();
        match self
            .client
            .delete_message_batch()
            .queue_url(&self.queue.url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) if out.failed().is_empty() => {}
            Ok(out) => tracing::debug!(
                failed = out.failed().len(),
                "some applied events were not deleted from the queue; they come back and change nothing"
            ),
            Err(e) => {
                tracing::debug!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "deleting applied events failed; they come back and change nothing")
            }
        }
    }

    /// Whether the message is done with (applied, or not an event at all), and the
    /// shares it changed.
    async fn apply_message(&self, m: &Message) -> (bool, Vec<usize>) {
        let events = match parse::parse(m.body().unwrap_or_default()) {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(queue = %self.queue.url, message_id = m.message_id().unwrap_or_default(), error = %e, "dropping a queue message that is not an S3 event notification");
                return (true, Vec::new());
            }
        };
        let (counts, touched) = apply(&self.targets, &events, self.metrics.as_ref()).await;
        (counts.failed == 0, touched)
    }

    fn set_reachable(&self, error: Option<String>) {
        let mut last = self.state.error.lock();
        match (&*last, &error) {
            (None, Some(e)) => {
                tracing::warn!(queue = %self.queue.url, error = %e, "the event queue cannot be reached; changes others make to the bucket show at the next listing")
            }
            (Some(_), None) => tracing::info!(queue = %self.queue.url, "the event queue answers again"),
            _ => {}
        }
        *last = error;
        if let Some(m) = &self.metrics {
            for t in &self.targets {
                m.events_queue_reachable
                    .with_label_values(&[&t.share.name])
                    .set(i64::from(last.is_none()));
            }
        }
    }
}
