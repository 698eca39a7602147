//! An `ObjectStore` wrapper that can hold uploads at a gate or fail them, for tests
//! of races and outages. Everything else passes through to a real store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use bucketgate::remote::*;
use bytes::Bytes;
use tokio::sync::Semaphore;

pub struct Faulty {
    pub inner: Arc<dyn ObjectStore>,
    /// When set, every call fails with a transient error (the store is "down").
    pub down: AtomicBool,
    /// Puts (single and parts) wait for a permit here when `hold` is set.
    pub hold: AtomicBool,
    pub gate: Semaphore,
    /// Puts that reached the gate.
    pub puts_started: AtomicUsize,
    /// When set, every call fails with this S3 error code: (transient?, code), e.g.
    /// (false, "AccessDenied") or (true, "RequestTimeTooSkewed").
    pub fail_with: std::sync::Mutex<Option<(bool, String)>>,
    /// Added to every read (HEAD, GET, LIST), as for a store in another region.
    pub read_latency_us: std::sync::atomic::AtomicU64,
    /// This many more puts (PutObject, CompleteMultipartUpload) reach the store but
    /// answer a transient error, as when the connection drops before the reply.
    pub lose_put_replies: AtomicUsize,
    /// Deletes wait for a permit here when `hold_deletes` is set.
    pub hold_deletes: AtomicBool,
    pub delete_gate: Semaphore,
}

impl Faulty {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            down: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            gate: Semaphore::new(0),
            puts_started: AtomicUsize::new(0),
            fail_with: std::sync::Mutex::new(None),
            read_latency_us: std::sync::atomic::AtomicU64::new(0),
            hold_deletes: AtomicBool::new(false),
            delete_gate: Semaphore::new(0),
            lose_put_replies: AtomicUsize::new(0),
        })
    }

    fn check(&self) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Transient {
                code: "ServiceUnavailable".into(),
                message: "injected outage".into(),
            });
        }
        if let Some((transient, code)) = self.fail_with.lock().unwrap().clone() {
            let message = format!("injected {code}");
            return Err(if transient {
                StoreError::Transient { code, message }
            } else {
                StoreError::Permanent { code, message }
            });
        }
        Ok(())
    }

    /// A put's answer: its result, or a lost reply (the put still happened).
    fn reply<T>(&self, r: StoreResult<T>) -> StoreResult<T> {
        let lose = r.is_ok()
            && self
                .lose_put_replies
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if lose {
            return Err(StoreError::Transient {
                code: "RequestTimeout".into(),
                message: "injected: the reply was lost after the put".into(),
            });
        }
        r
    }

    async fn maybe_hold_delete(&self) {
        if self.hold_deletes.load(Ordering::SeqCst) {
            self.delete_gate.acquire().await.expect("gate open").forget();
        }
    }

    async fn read_delay(&self) {
        let us = self.read_latency_us.load(Ordering::Relaxed);
        if us > 0 {
            tokio::time::sleep(std::time::Duration::from_micros(us)).await;
        }
    }

    async fn maybe_hold(&self) {
        self.puts_started.fetch_add(1, Ordering::SeqCst);
        if self.hold.load(Ordering::SeqCst) {
            self.gate.acquire().await.expect("gate open").forget();
        }
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_object(&self, key: &str, body: Bytes, meta: &ObjectAttrs) -> StoreResult<String> {
        self.check()?;
        self.maybe_hold().await;
        self.check()?;
        let r = self.inner.put_object(key, body, meta).await;
        self.reply(r)
    }
    async fn create_multipart(&self, key: &str, meta: &ObjectAttrs) -> StoreResult<String> {
        self.check()?;
        self.inner.create_multipart(key, meta).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: PartBody,
    ) -> StoreResult<String> {
        self.check()?;
        self.maybe_hold().await;
        self.check()?;
        self.inner.upload_part(key, upload_id, part_number, body).await
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
        self.check()?;
        self.inner
            .upload_part_copy(key, upload_id, part_number, src_key, start, end_inclusive)
            .await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> StoreResult<String> {
        self.check()?;
        let r = self.inner.complete_multipart(key, upload_id, parts).await;
        self.reply(r)
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.check()?;
        self.inner.abort_multipart(key, upload_id).await
    }
    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<(String, String)>> {
        self.check()?;
        self.inner.list_multipart_uploads(prefix).await
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> StoreResult<Bytes> {
        self.check()?;
        self.read_delay().await;
        self.inner.get_range(key, start, len).await
    }
    async fn head(&self, key: &str) -> StoreResult<Option<ObjectInfo>> {
        self.check()?;
        self.read_delay().await;
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<&str>,
        max_keys: i32,
    ) -> StoreResult<ListPage> {
        self.check()?;
        self.read_delay().await;
        self.inner.list(prefix, delimiter, continuation, max_keys).await
    }
    async fn copy_object(
        &self,
        src_key: &str,
        dst_key: &str,
        meta: Option<&ObjectAttrs>,
    ) -> StoreResult<String> {
        self.check()?;
        self.inner.copy_object(src_key, dst_key, meta).await
    }
    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        self.check()?;
        self.maybe_hold_delete().await;
        self.inner.delete_object(key).await
    }
    async fn put_object_if(
        &self,
        key: &str,
        body: Bytes,
        meta: &ObjectAttrs,
        expect: Expect<'_>,
    ) -> StoreResult<String> {
        self.check()?;
        self.maybe_hold().await;
        self.check()?;
        let r = self.inner.put_object_if(key, body, meta, expect).await;
        self.reply(r)
    }
    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        expect: Expect<'_>,
    ) -> StoreResult<String> {
        self.check()?;
        let r = self
            .inner
            .complete_multipart_if(key, upload_id, parts, expect)
            .await;
        self.reply(r)
    }
    async fn copy_object_if(
        &self,
        src_key: &str,
        dst_key: &str,
        meta: Option<&ObjectAttrs>,
        src_version: Option<&str>,
        dst: Expect<'_>,
    ) -> StoreResult<String> {
        self.check()?;
        self.inner
            .copy_object_if(src_key, dst_key, meta, src_version, dst)
            .await
    }
    async fn delete_object_if(&self, key: &str, etag: &str) -> StoreResult<()> {
        self.check()?;
        self.maybe_hold_delete().await;
        self.inner.delete_object_if(key, etag).await
    }
    fn refuses_key(&self, key: &str) -> Option<String> {
        self.inner.refuses_key(key)
    }
}
