//! [`ObjectStore`] on Amazon S3 (or any S3-compatible endpoint) through aws-sdk-s3.
//!
//! Every write carries the POSIX metadata in the same request as the data
//! (PutObject, CreateMultipartUpload, CopyObject with `MetadataDirective=REPLACE`),
//! so each upload makes exactly one object version.
//!
//! Integrity: PutObject, CopyObject and every UploadPart carry a CRC32C checksum
//! that S3 verifies before it stores the bytes (a corrupted body is refused with
//! `BadDigest`). Multipart uploads are created with `ChecksumAlgorithm=CRC32C`:
//! S3 refuses part checksums on an upload created without one ("Checksum Type
//! mismatch ... expected null"), and then requires every part's checksum again in
//! CompleteMultipartUpload. The trait's `CompletedPart` carries only the ETag (and
//! an upload resumed after a restart would not have them in memory anyway), so
//! `complete_multipart` reads them back with ListParts first: one extra request per
//! multipart object, and resuming needs no extra state.
//!
//! Retries: the SDK's standard retry mode (exponential backoff with jitter, a
//! client-side rate limiter) stays on for quick retries of one request; the
//! uploader adds its own slower loop on top for outages.
//!
//! ETags are returned without the surrounding double quotes.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, SdkBody};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart as SdkCompletedPart, EncodingType,
    MetadataDirective, ObjectCannedAcl, RequestPayer, ServerSideEncryption, StorageClass,
};
use bytes::Bytes;

use super::body::FileRangeBody;
use super::{
    CompletedPart, Expect, ListPage, ObjectAttrs, ObjectInfo, ObjectStore, PartBody, StoreError, StoreResult,
    check_expect, expect_etag,
};
use crate::config::{ConflictCheck, ShareConfig};

/// How to reach one bucket. The share prefix is not part of it: keys given to the
/// store are full object keys.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// `None`: the standard chain (AWS_REGION, profile, IMDS), then "us-east-1".
    pub region: Option<String>,
    /// A custom endpoint: an S3 interface endpoint (PrivateLink) or an S3-compatible
    /// server, e.g. `https://bucket.vpce-1a2b.s3.eu-west-1.vpce.amazonaws.com`.
    pub endpoint: Option<String>,
    pub path_style: bool,
    /// e.g. "STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING".
    pub storage_class: Option<String>,
    /// "AES256" (SSE-S3), "aws:kms" (SSE-KMS) or "aws:kms:dsse".
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// A canned ACL, e.g. "bucket-owner-full-control".
    pub acl: Option<String>,
    pub guess_mime_type: bool,
    pub requester_pays: bool,
    /// Static (access key, secret key), for tests. `None`: the standard chain
    /// (environment, profile, IMDSv2 instance role).
    pub credentials: Option<(String, String)>,
    /// TCP (+TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Requests without a body (HEAD, GET, LIST, copy, complete...): time allowed
    /// to send the request and receive the response headers. A GET body that stops
    /// flowing is caught by the SDK's stalled-stream protection.
    pub read_timeout: Duration,
    /// Upper bound on one attempt of a request without a body.
    pub attempt_timeout: Duration,
    /// Uploads (PutObject, UploadPart) have no fixed read timeout, since sending
    /// the body is part of waiting for the answer and a fixed bound would fail every
    /// large part on a slow link forever. One attempt may take `read_timeout` plus
    /// the body at this rate; an upload that stops moving is cut earlier by the
    /// SDK's stalled-stream protection.
    pub min_upload_bytes_per_sec: u64,
    /// Attempts per request in the SDK's standard retry mode (1 = no retry).
    pub max_attempts: u32,
    /// Send If-Match / x-amz-copy-source-if-match on writes that must not replace
    /// an unseen version (S3 and most compatible servers); false: a HEAD first.
    pub conditional_writes: bool,
}

impl S3Settings {
    /// Settings with the gateway's defaults for `bucket`.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Settings {
            bucket: bucket.into(),
            region: None,
            endpoint: None,
            path_style: false,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            acl: None,
            guess_mime_type: true,
            requester_pays: false,
            credentials: None,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(300),
            min_upload_bytes_per_sec: 32 << 10,
            max_attempts: 3,
            conditional_writes: true,
        }
    }

    /// The settings a share's configuration asks for.
    pub fn from_share(share: &ShareConfig, bucket: impl Into<String>) -> Self {
        S3Settings {
            region: share.region.clone(),
            endpoint: share.endpoint.clone(),
            path_style: share.path_style,
            storage_class: share.storage_class.clone(),
            sse: share.sse.clone(),
            sse_kms_key_id: share.sse_kms_key_id.clone(),
            acl: share.acl.clone(),
            guess_mime_type: share.guess_mime_type,
            requester_pays: share.requester_pays,
            conditional_writes: share.conflict_check == ConflictCheck::IfMatch,
            ..S3Settings::new(bucket)
        }
    }
}

// Hand-written so a secret key never reaches a log line through `{:?}`.
impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("storage_class", &self.storage_class)
            .field("sse", &self.sse)
            .field("sse_kms_key_id", &self.sse_kms_key_id)
            .field("acl", &self.acl)
            .field("guess_mime_type", &self.guess_mime_type)
            .field("requester_pays", &self.requester_pays)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<static, redacted>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("min_upload_bytes_per_sec", &self.min_upload_bytes_per_sec)
            .field("max_attempts", &self.max_attempts)
            .field("conditional_writes", &self.conditional_writes)
            .finish()
    }
}

/// Write options resolved once, applied to every request S3 accepts them on.
#[derive(Clone, Debug)]
struct WriteOptions {
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    acl: Option<ObjectCannedAcl>,
    guess_mime_type: bool,
    request_payer: Option<RequestPayer>,
}

pub struct S3Store {
    client: Client,
    bucket: String,
    opts: WriteOptions,
    connect_timeout: Duration,
    read_timeout: Duration,
    min_upload_bytes_per_sec: u64,
    conditional_writes: bool,
    /// (upload id, part number) → (ETag, CRC32C) of the parts this process uploaded,
    /// as UploadPart answered: CompleteMultipartUpload needs every part's checksum, and
    /// remembering them saves a ListParts per upload (and, on the test server, a second
    /// hash of every byte). Entries go at completion or abort.
    part_crcs: parking_lot::Mutex<HashMap<(String, i32), (String, String)>>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("opts", &self.opts)
            .finish()
    }
}

/// An optional setting that must name one of the SDK enum's `known` values.
fn parse_enum<'a, E: From<&'a str>>(
    field: &str,
    value: Option<&'a str>,
    known: &[&str],
) -> Result<Option<E>, String> {
    match value {
        None => Ok(None),
        Some(v) if known.contains(&v) => Ok(Some(E::from(v))),
        Some(v) => Err(format!("{field} = `{v}` is not one of: {}", known.join(", "))),
    }
}

impl S3Store {
    /// Builds the client. Fails (naming the setting) on an unknown storage class,
    /// SSE mode or canned ACL; does not contact S3.
    pub async fn new(settings: S3Settings) -> Result<S3Store, String> {
        if settings.bucket.is_empty() {
            return Err("bucket name is empty".into());
        }
        let storage_class = parse_enum::<StorageClass>(
            "storage_class",
            settings.storage_class.as_deref(),
            StorageClass::values(),
        )?;
        let sse = parse_enum::<ServerSideEncryption>(
            "sse",
            settings.sse.as_deref(),
            ServerSideEncryption::values(),
        )?;
        if settings.sse_kms_key_id.is_some()
            && !matches!(settings.sse.as_deref(), Some(s) if s.starts_with("aws:kms"))
        {
            return Err("sse_kms_key_id needs sse = \"aws:kms\" (or \"aws:kms:dsse\")".into());
        }
        let acl = parse_enum::<ObjectCannedAcl>("acl", settings.acl.as_deref(), ObjectCannedAcl::values())?;

        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .operation_attempt_timeout(settings.attempt_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)));
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some((ak, sk)) = &settings.credentials {
            loader = loader.credentials_provider(Credentials::new(ak, sk, None, None, "bucketgate-static"));
        }
        let sdk_config = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk_config).force_path_style(settings.path_style);
        if sdk_config.region().is_none() {
            // S3 signs with a region even for a custom endpoint; us-east-1 is what
            // S3-compatible servers expect when nothing else is configured.
            b = b.region(Region::new("us-east-1"));
        }
        if let Some(ep) = &settings.endpoint {
            b = b.endpoint_url(ep.clone());
        }
        let client = Client::from_conf(b.build());
        Ok(S3Store {
            client,
            bucket: settings.bucket,
            opts: WriteOptions {
                storage_class,
                sse,
                sse_kms_key_id: settings.sse_kms_key_id,
                acl,
                guess_mime_type: settings.guess_mime_type,
                request_payer: settings.requester_pays.then_some(RequestPayer::Requester),
            },
            connect_timeout: settings.connect_timeout,
            read_timeout: settings.read_timeout,
            min_upload_bytes_per_sec: settings.min_upload_bytes_per_sec.max(1),
            conditional_writes: settings.conditional_writes,
            part_crcs: Default::default(),
        })
    }

    /// The (If-Match, If-None-Match) headers for a write that expects `expect` under
    /// `key`; with conditional writes off, a HEAD checks it first and none are sent.
    async fn condition(&self, key: &str, expect: Expect<'_>) -> StoreResult<Condition> {
        if !self.conditional_writes {
            check_expect(self, key, expect).await?;
            return Ok(Condition::default());
        }
        Ok(match expect {
            Expect::Any => Condition::default(),
            Expect::Version(etag) => Condition {
                if_match: Some(quote(etag)),
                if_none_match: None,
            },
            Expect::Absent => Condition {
                if_match: None,
                if_none_match: Some("*".into()),
            },
        })
    }

    async fn put(&self, key: &str, body: Bytes, meta: &ObjectAttrs, cond: Condition) -> StoreResult<String> {
        let len = body.len();
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(cond.if_match)
            .set_if_none_match(cond.if_none_match)
            .content_length(body.len() as i64)
            .body(ByteStream::from(body))
            .set_metadata(Some(Self::metadata_map(meta)))
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_content_type(self.content_type(key))
            .set_storage_class(self.opts.storage_class.clone())
            .set_server_side_encryption(self.opts.sse.clone())
            .set_ssekms_key_id(self.opts.sse_kms_key_id.clone())
            .set_acl(self.opts.acl.clone())
            .set_request_payer(self.opts.request_payer.clone())
            .customize()
            .config_override(self.upload_timeouts(len))
            .send()
            .await
            .map_err(|e| map_sdk_err("PutObject", e))?;
        Ok(out.e_tag().map(unquote).unwrap_or_default())
    }

    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        cond: Condition,
    ) -> StoreResult<String> {
        let mut checksums: HashMap<i32, (String, String)> = {
            let mut known = self.part_crcs.lock();
            parts
                .iter()
                .filter_map(|p| {
                    let k = (upload_id.to_string(), p.part_number);
                    known.remove(&k).map(|v| (p.part_number, v))
                })
                .collect()
        };
        // Only the checksum of the very part version being committed.
        let crc_of = |c: &HashMap<i32, (String, String)>, p: &CompletedPart| {
            c.get(&p.part_number)
                .filter(|(etag, _)| *etag == unquote(&p.etag))
                .map(|(_, crc)| crc.clone())
        };
        if !parts.iter().all(|p| crc_of(&checksums, p).is_some()) {
            // Uploaded by an earlier process, or answered without a checksum: ask.
            checksums.extend(self.part_checksums(key, upload_id).await?);
        }
        let parts = parts
            .iter()
            .map(|p| {
                SdkCompletedPart::builder()
                    .part_number(p.part_number)
                    .e_tag(quote(&p.etag))
                    .set_checksum_crc32_c(crc_of(&checksums, p))
                    .build()
            })
            .collect();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .set_if_match(cond.if_match)
            .set_if_none_match(cond.if_none_match)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .set_request_payer(self.opts.request_payer.clone())
            .send()
            .await
            .map_err(|e| map_sdk_err("CompleteMultipartUpload", e))?;
        Ok(out.e_tag().map(unquote).unwrap_or_default())
    }

    async fn copy(
        &self,
        src_key: &str,
        dst_key: &str,
        meta: Option<&ObjectAttrs>,
        src_version: Option<String>,
        dst: Condition,
    ) -> StoreResult<String> {
        let mut req = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst_key)
            .copy_source(self.copy_source(src_key))
            .set_copy_source_if_match(src_version)
            .set_if_match(dst.if_match)
            .set_if_none_match(dst.if_none_match)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_storage_class(self.opts.storage_class.clone())
            .set_server_side_encryption(self.opts.sse.clone())
            .set_ssekms_key_id(self.opts.sse_kms_key_id.clone())
            .set_acl(self.opts.acl.clone())
            .set_request_payer(self.opts.request_payer.clone());
        req = match meta {
            // REPLACE drops every header of the source, Content-Type included, so the
            // new one has to be sent again.
            Some(m) => req
                .metadata_directive(MetadataDirective::Replace)
                .set_metadata(Some(Self::metadata_map(m)))
                .set_content_type(self.content_type(dst_key)),
            None => req.metadata_directive(MetadataDirective::Copy),
        };
        let out = req.send().await.map_err(|e| map_sdk_err("CopyObject", e))?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .map(unquote)
            .unwrap_or_default())
    }

    /// HeadBucket: that the bucket exists and these credentials may use it. Worth
    /// calling at startup and in readiness checks: a HEAD on an object in a missing
    /// bucket is indistinguishable from a missing object (HEAD answers carry no
    /// error code), so `head` cannot report it.
    pub async fn check_bucket(&self) -> StoreResult<()> {
        let res = self.client.head_bucket().bucket(&self.bucket).send().await;
        match res.map_err(|e| map_sdk_err("HeadBucket", e)) {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound) => Err(StoreError::Permanent {
                code: "NoSuchBucket".into(),
                message: format!("HeadBucket: bucket `{}` does not exist", self.bucket),
            }),
            Err(e) => Err(e),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn content_type(&self, key: &str) -> Option<String> {
        if self.opts.guess_mime_type {
            guess_mime_type(key).map(str::to_owned)
        } else {
            None
        }
    }

    /// Timeouts for a request carrying `len` body bytes (see
    /// [`S3Settings::min_upload_bytes_per_sec`]). Only the read timeout's presence
    /// differs from the client's: the SDK keeps one connection pool per distinct
    /// (connect, read) timeout pair, so uploads share exactly one more pool.
    fn upload_timeouts(&self, len: usize) -> aws_sdk_s3::config::Builder {
        let body_secs = len as f64 / self.min_upload_bytes_per_sec as f64;
        let attempt = self.read_timeout + Duration::from_secs_f64(body_secs);
        aws_sdk_s3::config::Builder::default().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(self.connect_timeout)
                .disable_read_timeout()
                .operation_attempt_timeout(attempt)
                .build(),
        )
    }

    fn metadata_map(meta: &ObjectAttrs) -> HashMap<String, String> {
        super::meta::to_user_metadata(meta).into_iter().collect()
    }

    /// `x-amz-copy-source`: bucket and URL-encoded key.
    fn copy_source(&self, src_key: &str) -> String {
        format!("{}/{}", self.bucket, encode_key(src_key))
    }
}

impl S3Store {
    /// Part number -> (ETag, CRC32C) of the parts S3 holds for an upload.
    async fn part_checksums(
        &self,
        key: &str,
        upload_id: &str,
    ) -> StoreResult<HashMap<i32, (String, String)>> {
        let mut out = HashMap::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .set_request_payer(self.opts.request_payer.clone())
                .send()
                .await
                .map_err(|e| map_sdk_err("ListParts", e))?;
            for p in page.parts() {
                if let (Some(n), Some(etag), Some(crc)) = (p.part_number(), p.e_tag(), p.checksum_crc32_c()) {
                    out.insert(n, (unquote(etag), crc.to_owned()));
                }
            }
            marker = page.next_part_number_marker().map(str::to_owned);
            if page.is_truncated() != Some(true) || marker.is_none() {
                return Ok(out);
            }
        }
    }
}

/// Percent-encodes a key for `x-amz-copy-source` (and a path for the admin API's
/// query string), keeping `/` and unreserved bytes.
pub(crate) fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A key from a listing asked with `encoding-type=url`: `+` is a space and `%XX` a
/// byte, as S3 encodes them. `None` for bytes that are not UTF-8 (S3 keys always are).
pub(crate) fn url_decode(s: &str) -> Option<String> {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .ok()
        .map(|k| k.into_owned())
}

/// Conditional-request headers of one write.
#[derive(Clone, Debug, Default)]
struct Condition {
    if_match: Option<String>,
    if_none_match: Option<String>,
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

fn quote(etag: &str) -> String {
    format!("\"{}\"", etag.trim_matches('"'))
}

fn to_ns(t: &DateTime) -> Option<u64> {
    let secs = u64::try_from(t.secs()).ok()?;
    secs.checked_mul(1_000_000_000)?
        .checked_add(u64::from(t.subsec_nanos()))
}

/// Error codes worth retrying even though their HTTP status is 4xx.
const TRANSIENT_CODES: &[&str] = &[
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "ExpiredToken",
    "ExpiredTokenException",
    "TokenRefreshRequired",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "ConditionalRequestConflict",
];

/// Maps an SDK error to the store's classes, keeping the S3 error code.
/// The message never contains credentials: the SDK's error text carries codes,
/// messages and request ids only.
fn map_sdk_err<E>(op: &'static str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = err
                .code()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP{status}"));
            let message = format!("{op}: {}", err.message().unwrap_or("").trim());
            classify(status, code, message)
        }
        SdkError::TimeoutError(_) => StoreError::Transient {
            code: "Timeout".into(),
            message: format!("{op}: timed out"),
        },
        SdkError::DispatchFailure(d) => {
            let code = if d.is_timeout() {
                "Timeout"
            } else if d.is_io() {
                "NetworkError"
            } else if d.is_user() {
                return StoreError::Permanent {
                    code: "RequestError".into(),
                    message: format!("{op}: {}", aws_sdk_s3::error::DisplayErrorContext(&err)),
                };
            } else {
                "DispatchFailure"
            };
            StoreError::Transient {
                code: code.into(),
                message: format!("{op}: {}", aws_sdk_s3::error::DisplayErrorContext(&err)),
            }
        }
        SdkError::ResponseError(_) => StoreError::Transient {
            code: "ResponseError".into(),
            message: format!("{op}: {}", aws_sdk_s3::error::DisplayErrorContext(&err)),
        },
        // Construction failures are bugs or bad input (e.g. credentials that cannot be
        // loaded come through DispatchFailure, not here).
        _ => StoreError::Permanent {
            code: "ConstructionFailure".into(),
            message: format!("{op}: {}", aws_sdk_s3::error::DisplayErrorContext(&err)),
        },
    }
}

/// Classifies an S3 error response by status and code.
pub(crate) fn classify(status: u16, code: String, message: String) -> StoreError {
    match (status, code.as_str()) {
        // A missing bucket is a misconfiguration, not a missing object: reporting it
        // as NotFound would make files look deleted.
        (_, "NoSuchBucket") => StoreError::Permanent { code, message },
        (_, "NoSuchKey" | "NoSuchUpload" | "NotFound") | (404, _) => StoreError::NotFound,
        (412, _) | (_, "PreconditionFailed") => StoreError::PreconditionFailed,
        (_, c) if TRANSIENT_CODES.contains(&c) => StoreError::Transient { code, message },
        // An optional API the store lacks (ListMultipartUploads on some stores): it
        // answered, so it is reachable, and asking again will not help.
        (501, _) | (_, "NotImplemented") => StoreError::Permanent { code, message },
        (408 | 429, _) | (500..=599, _) => StoreError::Transient { code, message },
        _ => StoreError::Permanent { code, message },
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_object(&self, key: &str, body: Bytes, meta: &ObjectAttrs) -> StoreResult<String> {
        self.put(key, body, meta, Condition::default()).await
    }

    async fn put_object_if(
        &self,
        key: &str,
        body: Bytes,
        meta: &ObjectAttrs,
        expect: Expect<'_>,
    ) -> StoreResult<String> {
        let cond = self.condition(key, expect).await?;
        self.put(key, body, meta, cond).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> StoreResult<String> {
        self.complete(key, upload_id, parts, Condition::default()).await
    }

    async fn complete_multipart_if(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        expect: Expect<'_>,
    ) -> StoreResult<String> {
        let cond = self.condition(key, expect).await?;
        self.complete(key, upload_id, parts, cond).await
    }

    async fn copy_object(
        &self,
        src_key: &str,
        dst_key: &str,
        meta: Option<&ObjectAttrs>,
    ) -> StoreResult<String> {
        self.copy(src_key, dst_key, meta, None, Condition::default())
            .await
    }

    async fn copy_object_if(
        &self,
        src_key: &str,
        dst_key: &str,
        meta: Option<&ObjectAttrs>,
        src_version: Option<&str>,
        dst: Expect<'_>,
    ) -> StoreResult<String> {
        let src = match src_version {
            Some(etag) => self.condition(src_key, Expect::Version(etag)).await?.if_match,
            None => None,
        };
        let dst = self.condition(dst_key, dst).await?;
        self.copy(src_key, dst_key, meta, src, dst).await
    }

    async fn create_multipart(&self, key: &str, meta: &ObjectAttrs) -> StoreResult<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_metadata(Some(Self::metadata_map(meta)))
            .set_content_type(self.content_type(key))
            .set_storage_class(self.opts.storage_class.clone())
            .set_server_side_encryption(self.opts.sse.clone())
            .set_ssekms_key_id(self.opts.sse_kms_key_id.clone())
            .set_acl(self.opts.acl.clone())
            .set_request_payer(self.opts.request_payer.clone())
            .send()
            .await
            .map_err(|e| map_sdk_err("CreateMultipartUpload", e))?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Transient {
                code: "MissingUploadId".into(),
                message: "CreateMultipartUpload: response had no UploadId".into(),
            })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: PartBody,
    ) -> StoreResult<String> {
        let len = body.len() as usize;
        let body = match body {
            PartBody::Memory(b) => ByteStream::from(b),
            PartBody::File { file, offset, len } => ByteStream::new(SdkBody::retryable(move || {
                SdkBody::from_body_1_x(FileRangeBody::new(file.clone(), offset, len))
            })),
        };
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(len as i64)
            .body(body)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_request_payer(self.opts.request_payer.clone())
            .customize()
            .config_override(self.upload_timeouts(len))
            .send()
            .await
            .map_err(|e| map_sdk_err("UploadPart", e))?;
        let etag = out.e_tag().map(unquote).unwrap_or_default();
        if let Some(crc) = out.checksum_crc32_c() {
            self.part_crcs.lock().insert(
                (upload_id.to_string(), part_number),
                (etag.clone(), crc.to_string()),
            );
        }
        Ok(etag)
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
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .copy_source(self.copy_source(src_key))
            .copy_source_range(format!("bytes={start}-{end_inclusive}"))
            .set_request_payer(self.opts.request_payer.clone())
            .send()
            .await
            .map_err(|e| map_sdk_err("UploadPartCopy", e))?;
        Ok(out
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .map(unquote)
            .unwrap_or_default())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.part_crcs.lock().retain(|(id, _), _| id != upload_id);
        let res = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .set_request_payer(self.opts.request_payer.clone())
            .send()
            .await;
        match res.map_err(|e| map_sdk_err("AbortMultipartUpload", e)) {
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut upload_id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_id_marker.take())
                .set_request_payer(self.opts.request_payer.clone())
                .send()
                .await
                .map_err(|e| map_sdk_err("ListMultipartUploads", e))?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    out.push((k.to_owned(), id.to_owned()));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            upload_id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && upload_id_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> StoreResult<Bytes> {
        if len == 0 {
            // An empty Range header is invalid; answer NotFound for a missing object
            // the same way a non-empty read would.
            return match self.head(key).await? {
                Some(_) => Ok(Bytes::new()),
                None => Err(StoreError::NotFound),
            };
        }
        let end = start.saturating_add(len - 1);
        let res = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-{end}"))
            .set_request_payer(self.opts.request_payer.clone())
            .send()
            .await;
        let out = match res {
            Ok(out) => out,
            // A range starting at or past the end: S3 answers 416 InvalidRange. The
            // trait's contract is "shorter at the end", so that is an empty read.
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(416) => {
                return Ok(Bytes::new());
            }
            Err(e) => return Err(map_sdk_err("GetObject", e)),
        };
        let body = out.body.collect().await.map_err(|e| StoreError::Transient {
            code: "NetworkError".into(),
            message: format!("GetObject body: {e}"),
        })?;
        let mut bytes = body.into_bytes();
        // A server that ignores Range would send the whole object.
        if out.content_range.is_none() && (start > 0 || bytes.len() as u64 > len) {
            let from = usize::try_from(start).unwrap_or(usize::MAX).min(bytes.len());
            let to = usize::try_from(start.saturating_add(len))
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            bytes = bytes.slice(from..to);
        }
        Ok(bytes)
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectInfo>> {
        let res = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_request_payer(self.opts.request_payer.clone())
            .send()
            .await
            .map_err(|e| map_sdk_err("HeadObject", e));
        let out = match res {
            Ok(out) => out,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let last_modified_ns = out.last_modified().and_then(to_ns);
        let meta = out
            .metadata()
            .and_then(|md| super::meta::from_user_metadata(md, last_modified_ns.unwrap_or(0)));
        Ok(Some(ObjectInfo {
            key: key.to_owned(),
            size: out
                .content_length()
                .and_then(|l| u64::try_from(l).ok())
                .unwrap_or(0),
            etag: out.e_tag().map(unquote).unwrap_or_default(),
            last_modified_ns,
            meta,
            version_id: out.version_id().filter(|v| *v != "null").map(str::to_owned),
        }))
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<&str>,
        max_keys: i32,
    ) -> StoreResult<ListPage> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_owned))
            .set_continuation_token(continuation.map(str::to_owned))
            .max_keys(max_keys)
            // Without it S3 puts keys verbatim into the XML answer, and one key with a
            // control character makes the whole page unparsable.
            .encoding_type(EncodingType::Url)
            .set_request_payer(self.opts.request_payer.clone())
            .send()
            .await
            .map_err(|e| map_sdk_err("ListObjectsV2", e))?;
        let encoded = out.encoding_type() == Some(&EncodingType::Url);
        let decode = |k: &str| {
            if encoded {
                url_decode(k)
            } else {
                Some(k.to_owned())
            }
        };
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectInfo {
                    key: decode(o.key()?)?,
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    etag: o.e_tag().map(unquote).unwrap_or_default(),
                    last_modified_ns: o.last_modified().and_then(to_ns),
                    meta: None,
                    version_id: None,
                })
            })
            .collect();
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| decode(p.prefix()?))
            .collect();
        let next_token = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_owned)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            common_prefixes,
            next_token,
        })
    }

    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        self.delete(key, None).await
    }

    async fn delete_object_if(&self, key: &str, etag: &str) -> StoreResult<()> {
        if !self.conditional_writes {
            return match expect_etag(self, key, etag).await {
                Ok(()) => self.delete(key, None).await,
                Err(StoreError::NotFound) => Ok(()),
                Err(e) => Err(e),
            };
        }
        self.delete(key, Some(quote(etag))).await
    }
}

impl S3Store {
    async fn delete(&self, key: &str, if_match: Option<String>) -> StoreResult<()> {
        let res = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(if_match)
            .set_request_payer(self.opts.request_payer.clone())
            .send()
            .await;
        match res.map_err(|e| map_sdk_err("DeleteObject", e)) {
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Content-Type from the key's extension: a small table of common types, no
/// dependency. `None` lets S3 default to `binary/octet-stream`.
pub fn guess_mime_type(key: &str) -> Option<&'static str> {
    let name = key.rsplit('/').next()?;
    let (_, ext) = name.rsplit_once('.')?;
    let ext = ext.to_ascii_lowercase();
    Some(match ext.as_str() {
        "txt" | "text" | "log" | "conf" | "cfg" | "ini" => "text/plain",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "htm" | "html" => "text/html",
        "css" => "text/css",
        "md" | "markdown" => "text/markdown",
        "js" | "mjs" => "text/javascript",
        "xml" => "application/xml",
        "json" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "bz2" => "application/x-bzip2",
        "xz" => "application/x-xz",
        "zst" => "application/zstd",
        "tar" => "application/x-tar",
        "7z" => "application/x-7z-compressed",
        "rar" => "application/vnd.rar",
        "parquet" => "application/vnd.apache.parquet",
        "wasm" => "application/wasm",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "bmp" => "image/bmp",
        "ico" => "image/vnd.microsoft.icon",
        "tif" | "tiff" => "image/tiff",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "avi" => "video/x-msvideo",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errors_like_s3_documents_them() {
        let c = |s, code: &str| classify(s, code.into(), String::new());
        assert!(matches!(c(404, "NoSuchKey"), StoreError::NotFound));
        assert!(matches!(c(404, "NoSuchUpload"), StoreError::NotFound));
        assert!(matches!(c(404, "NotFound"), StoreError::NotFound));
        assert!(matches!(c(404, "NoSuchBucket"), StoreError::Permanent { .. }));
        assert!(matches!(
            c(412, "PreconditionFailed"),
            StoreError::PreconditionFailed
        ));
        assert!(c(503, "SlowDown").is_transient());
        assert!(c(500, "InternalError").is_transient());
        assert!(c(403, "RequestTimeTooSkewed").is_transient());
        assert!(c(400, "RequestTimeout").is_transient());
        assert!(c(400, "ExpiredToken").is_transient());
        assert!(c(429, "TooManyRequests").is_transient());
        let e = c(403, "AccessDenied");
        assert!(matches!(e, StoreError::Permanent { .. }));
        assert_eq!(e.code(), "AccessDenied");
        assert!(matches!(c(400, "InvalidArgument"), StoreError::Permanent { .. }));
        assert!(matches!(c(400, "BadDigest"), StoreError::Permanent { .. }));
        // An optional API the store lacks: an answer, not an outage.
        assert!(matches!(c(501, "NotImplemented"), StoreError::Permanent { .. }));
    }

    #[test]
    fn copy_source_keeps_slashes_and_encodes_the_rest() {
        assert_eq!(encode_key("a/b c/ü+%.txt"), "a/b%20c/%C3%BC%2B%25.txt");
    }

    #[test]
    fn listed_keys_are_decoded_as_s3_encodes_them() {
        assert_eq!(
            url_decode("a+b%2Bc%01%0D%0A%26%3C").as_deref(),
            Some("a b+c\u{1}\r\n&<")
        );
        assert_eq!(url_decode("caf%C3%A9/").as_deref(), Some("café/"));
        assert_eq!(url_decode("%FF"), None, "not UTF-8");
    }

    #[test]
    fn guesses_common_types_and_leaves_others_alone() {
        assert_eq!(guess_mime_type("share/dir/Report.PDF"), Some("application/pdf"));
        assert_eq!(guess_mime_type("a.tar.gz"), Some("application/gzip"));
        assert_eq!(guess_mime_type("dir.json/README"), None);
        assert_eq!(guess_mime_type("noext"), None);
        assert_eq!(guess_mime_type("x.unknownext"), None);
    }
}
