//! The object store behind a share. The uploader and the read-through path reach S3
//! only through [`ObjectStore`], so tests can wrap a real store with fault injection.

use async_trait::async_trait;
use bytes::Bytes;

mod body;
mod instrumented;
mod local;
pub(crate) mod meta;
mod s3;

pub use body::{CHUNK, PartBody};
pub use instrumented::Instrumented;
pub use local::LocalStore;
pub use meta::{ObjectAttrs, S_IFDIR, S_IFREG};
pub use s3::{S3Settings, S3Store};
pub(crate) use s3::{encode_key, url_decode};

/// One object as seen in a listing or a HEAD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// Last-Modified in nanoseconds since the epoch, when the store reports it.
    pub last_modified_ns: Option<u64>,
    /// POSIX attributes from user metadata; `None` when the object carries none
    /// (listings never carry them; HEAD does).
    pub meta: Option<ObjectAttrs>,
    /// The version's id in a bucket with versioning (HEAD only; S3's "null" and
    /// unversioned stores give `None`).
    pub version_id: Option<String>,
}

/// One page of a ListObjectsV2-style listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Prefixes ending in the delimiter ("dir/"), when a delimiter was given.
    pub common_prefixes: Vec<String>,
    /// Token for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedPart {
    pub part_number: i32,
    pub etag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object not found")]
    NotFound,
    #[error("precondition failed")]
    PreconditionFailed,
    /// Worth retrying: network errors, timeouts, 5xx, 503 SlowDown, clock skew.
    #[error("transient store error ({code}): {message}")]
    Transient { code: String, message: String },
    /// Retrying the same request will not help (403, 400, ...); the file is
    /// reported as failing and retried later on a slow schedule.
    #[error("store error ({code}): {message}")]
    Permanent { code: String, message: String },
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }
    /// Short code for metrics labels and status output.
    pub fn code(&self) -> &str {
        match self {
            StoreError::NotFound => "NotFound",
            StoreError::PreconditionFailed => "PreconditionFailed",
            StoreError::Transient { code, .. } | StoreError::Permanent { code, .. } => code,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The store a share's `url` names, and the key prefix within it. `credentials`
/// replaces the standard AWS credential chain (tests only).
pub async fn open_share_store(
    share: &crate::config::ShareConfig,
    credentials: Option<(String, String)>,
) -> Result<(std::sync::Arc<dyn ObjectStore>, String), String> {
    use crate::config::ShareLocation;
    let ctx = |e: String| format!("share `{}`: {e}", share.name);
    match share.location().map_err(ctx)? {
        ShareLocation::S3 { bucket, prefix } => {
            let mut settings = S3Settings::from_share(share, bucket);
            settings.credentials = credentials;
            let store = S3Store::new(settings).await.map_err(ctx)?;
            Ok((std::sync::Arc::new(store), prefix))
        }
        ShareLocation::File { path } => {
            let shown = path.display().to_string();
            let store = tokio::task::spawn_blocking(move || LocalStore::new(path))
                .await
                .map_err(|e| ctx(e.to_string()))?
                .map_err(|e| ctx(format!("{shown}: {e}")))?;
            Ok((std::sync::Arc::new(store), String::new()))
        }
    }
}

/// The operations the gateway needs from S3 (or a local directory standing in for it).
/// Keys are full object keys (share prefix included). Every write carries the POSIX
/// metadata in the same request as the data: one object version per upload.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Single-request upload; returns the new ETag.
    async fn put_object(&self, key: &str, body: Bytes, meta: &ObjectAttrs) -> StoreResult<String>;
    async fn create_multipart(&self, key: &str, meta: &ObjectAttrs) -> StoreResult<String>;
    /// Returns the part's ETag. A file range is read while it is sent.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: PartBody,
    ) -> StoreResult<String>;
    /// Server-side copy of bytes `[start, end]` (inclusive) of `src_key` into a part.
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        src_key: &str,
        start: u64,
        end_inclusive: u64,
    ) -> StoreResult<String>;
    /// Returns the ETag of the assembled object.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> StoreResult<String>;
    /// Idempotent: an unknown upload id is not an error.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;
    /// Multipart uploads in progress under `prefix`: (key, upload id).
    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<(String, String)>>;
    /// Bytes `[start, start+len)`, shorter at the end of the object.
    async fn get_range(&self, key: &str, start: u64, len: u64) -> StoreResult<Bytes>;
    async fn head(&self, key: &str) -> StoreResult<Option<ObjectInfo>>;
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<&str>,
        max_keys: i32,
    ) -> StoreResult<ListPage>;
    /// Server-side copy (objects up to 5 GiB; larger ones go through
    /// `upload_part_copy`). `Some(meta)` replaces the metadata (REPLACE directive);
    /// `None` keeps the source's (COPY directive). Returns the new ETag.
    async fn copy_object(
        &self,
        src_key: &str,
        dst_key: &str,
        meta: Option<&ObjectAttrs>,
    ) -> StoreResult<String>;
    /// Idempotent: deleting a missing key is not an error.
    async fn delete_object(&self, key: &str) -> StoreResult<()>;

    // ----- writes that must not replace a version the gateway has not seen -----
    //
    // Each fails with `PreconditionFailed` when what is under `key` is not what
    // `expect` says (another version, or an object where none was expected), and
    // with `NotFound` (or, from some stores, `PreconditionFailed`) when a version was
    // expected and the object is gone. The defaults check with a HEAD first, which
    // leaves a short window; stores that support conditional requests (S3 If-Match,
    // If-None-Match, x-amz-copy-source-if-match) override them to check atomically.

    async fn put_object_if(
        &self,
        key: &str,
        body: Bytes,
        meta: &ObjectAttrs,
        expect: Expect<'_>,
    ) -> StoreResult<String> {
        check_expect(self, key, expect).await?;
        self.put_object(key, body, meta).await
    }

    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        expect: Expect<'_>,
    ) -> StoreResult<String> {
        check_expect(self, key, expect).await?;
        self.complete_multipart(key, upload_id, parts).await
    }

    /// A copy of version `src_version` of `src_key` (any version when `None`) onto a
    /// destination that holds what `dst` says.
    async fn copy_object_if(
        &self,
        src_key: &str,
        dst_key: &str,
        meta: Option<&ObjectAttrs>,
        src_version: Option<&str>,
        dst: Expect<'_>,
    ) -> StoreResult<String> {
        if let Some(etag) = src_version {
            expect_etag(self, src_key, etag).await?;
        }
        check_expect(self, dst_key, dst).await?;
        self.copy_object(src_key, dst_key, meta).await
    }

    /// Deletes `key` only while it holds the version with ETag `etag`:
    /// `PreconditionFailed` when it holds another (someone else's); nothing to do
    /// when it is gone.
    async fn delete_object_if(&self, key: &str, etag: &str) -> StoreResult<()> {
        match expect_etag(self, key, etag).await {
            Ok(()) => self.delete_object(key).await,
            Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Why this store could never hold an object under `key` (share prefix
    /// included), or `None`: such a name is refused when a file is made, rather than
    /// accepted and then failing to upload for ever.
    fn refuses_key(&self, _key: &str) -> Option<String> {
        None
    }
}

/// What a write expects to find under its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect<'a> {
    /// Anything: the last writer wins.
    Any,
    /// The version with this ETag.
    Version(&'a str),
    /// No object at all: a key the gateway has never seen a version of.
    Absent,
}

/// The HEAD check behind the default conditional writes.
pub async fn check_expect<S: ObjectStore + ?Sized>(
    store: &S,
    key: &str,
    expect: Expect<'_>,
) -> StoreResult<()> {
    match expect {
        Expect::Any => Ok(()),
        Expect::Version(etag) => expect_etag(store, key, etag).await,
        Expect::Absent => match store.head(key).await? {
            None => Ok(()),
            Some(_) => Err(StoreError::PreconditionFailed),
        },
    }
}

/// ETags compare without their quotes (S3 sends them quoted, listings may not).
pub fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// That `key` holds the version with ETag `etag`, by a HEAD.
pub async fn expect_etag<S: ObjectStore + ?Sized>(store: &S, key: &str, etag: &str) -> StoreResult<()> {
    match store.head(key).await? {
        None => Err(StoreError::NotFound),
        Some(info) if same_etag(&info.etag, etag) => Ok(()),
        Some(_) => Err(StoreError::PreconditionFailed),
    }
}
