//! Wraps a share's store to record every request in the metrics (latency by S3
//! operation, errors by code, bytes up and down), to remember whether the store
//! answered its last request, for `/readyz`, and to pace uploads to the upload rate
//! limit (before a request is sent: its latency leaves the wait out).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    CompletedPart, Expect, ListPage, ObjectAttrs, ObjectInfo, ObjectStore, PartBody, StoreError, StoreResult,
};
use crate::metrics::Metrics;
use crate::upload::RateLimiter;

pub struct Instrumented {
    inner: Arc<dyn ObjectStore>,
    limiter: Option<Arc<RateLimiter>>,
    metrics: Metrics,
    share: String,
    reachable: AtomicBool,
    /// When the last request finished, in ms since `created` (for the idle prober).
    created: Instant,
    last_request_ms: AtomicU64,
}

impl Instrumented {
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        metrics: Metrics,
        share: &str,
        limiter: Option<Arc<RateLimiter>>,
    ) -> Arc<Instrumented> {
        Arc::new(Instrumented {
            inner,
            limiter,
            metrics,
            share: share.to_string(),
            reachable: AtomicBool::new(true),
            created: Instant::now(),
            last_request_ms: AtomicU64::new(0),
        })
    }

    /// Did the store answer the last request (any answer, even "not found")?
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Time since the last request finished (since creation if none has).
    pub fn since_last_request(&self) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        self.created.elapsed().saturating_sub(last)
    }

    fn record<T>(&self, op: &str, started: Instant, r: &StoreResult<T>) {
        let code = r.as_ref().err().map(|e| e.code());
        self.metrics
            .observe_store_request(&self.share, op, started.elapsed(), code);
        let answered = !matches!(r, Err(StoreError::Transient { .. }));
        self.reachable.store(answered, Ordering::Relaxed);
        self.last_request_ms
            .store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    async fn pace(&self, n: u64) {
        if let Some(l) = &self.limiter {
            l.wait(n).await;
        }
    }

    fn uploaded(&self, n: usize) {
        self.metrics
            .store_uploaded_bytes_total
            .with_label_values(&[&self.share])
            .inc_by(n as u64);
    }
}

macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let r = $call.await;
        $self.record($op, started, &r);
        r
    }};
}

#[async_trait]
impl ObjectStore for Instrumented {
    async fn put_object(&self, key: &str, body: Bytes, meta: &ObjectAttrs) -> StoreResult<String> {
        let n = body.len();
        self.pace(n as u64).await;
        let r = timed!(self, "PutObject", self.inner.put_object(key, body, meta));
        if r.is_ok() {
            self.uploaded(n);
        }
        r
    }
    async fn create_multipart(&self, key: &str, meta: &ObjectAttrs) -> StoreResult<String> {
        timed!(
            self,
            "CreateMultipartUpload",
            self.inner.create_multipart(key, meta)
        )
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: PartBody,
    ) -> StoreResult<String> {
        let n = body.len() as usize;
        self.pace(n as u64).await;
        let r = timed!(
            self,
            "UploadPart",
            self.inner.upload_part(key, upload_id, part_number, body)
        );
        if r.is_ok() {
            self.uploaded(n);
        }
        r
    }
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        src_key: &str,
        start: u64,
        end_inclusive: u64,
    ) -> StoreResult<String> {
        timed!(
            self,
            "UploadPartCopy",
            self.inner
                .upload_part_copy(key, upload_id, part_number, src_key, start, end_inclusive)
        )
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> StoreResult<String> {
        timed!(
            self,
            "CompleteMultipartUpload",
            self.inner.complete_multipart(key, upload_id, parts)
        )
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        timed!(
            self,
            "AbortMultipartUpload",
            self.inner.abort_multipart(key, upload_id)
        )
    }
    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<(String, String)>> {
        timed!(
            self,
            "ListMultipartUploads",
            self.inner.list_multipart_uploads(prefix)
        )
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> StoreResult<Bytes> {
        let r = timed!(self, "GetObject", self.inner.get_range(key, start, len));
        if let Ok(b) = &r {
            self.metrics
                .store_downloaded_bytes_total
                .with_label_values(&[&self.share])
                .inc_by(b.len() as u64);
        }
        r
    }
    async fn head(&self, key: &str) -> StoreResult<Option<ObjectInfo>> {
        timed!(self, "HeadObject", self.inner.head(key))
    }
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<&str>,
        max_keys: i32,
    ) -> StoreResult<ListPage> {
        timed!(
            self,
            "ListObjectsV2",
            self.inner.list(prefix, delimiter, continuation, max_keys)
        )
    }
    async fn copy_object(
        &self,
        src_key: &str,
        dst_key: &str,
        meta: Option<&ObjectAttrs>,
    ) -> StoreResult<String> {
        timed!(self, "CopyObject", self.inner.copy_object(src_key, dst_key, meta))
    }
    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        timed!(self, "DeleteObject", self.inner.delete_object(key))
    }
    // The conditional writes go to the inner store's own (possibly atomic) versions,
    // counted under the same operation names.
    async fn put_object_if(
        &self,
        key: &str,
        body: Bytes,
        meta: &ObjectAttrs,
        expect: Expect<'_>,
    ) -> StoreResult<String> {
        let n = body.len();
        self.pace(n as u64).await;
        let r = timed!(
            self,
            "PutObject",
            self.inner.put_object_if(key, body, meta, expect)
        );
        if r.is_ok() {
            self.uploaded(n);
        }
        r
    }
    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        expect: Expect<'_>,
    ) -> StoreResult<String> {
        timed!(
            self,
            "CompleteMultipartUpload",
            self.inner.complete_multipart_if(key, upload_id, parts, expect)
        )
    }
    async fn copy_object_if(
        &self,
        src_key: &str,
        dst_key: &str,
        meta: Option<&ObjectAttrs>,
        src_version: Option<&str>,
        dst: Expect<'_>,
    ) -> StoreResult<String> {
        timed!(
            self,
            "CopyObject",
            self.inner
                .copy_object_if(src_key, dst_key, meta, src_version, dst)
        )
    }
    async fn delete_object_if(&self, key: &str, etag: &str) -> StoreResult<()> {
        timed!(self, "DeleteObject", self.inner.delete_object_if(key, etag))
    }
    fn refuses_key(&self, key: &str) -> Option<String> {
        self.inner.refuses_key(key)
    }
}
