//! An S3 server that keeps no bytes, for the benchmarks that upload more than any
//! disk holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

use super::s3server::{MD5_EMPTY, S3TestServer};

impl S3TestServer {
    /// A server that keeps no bytes ([`NullS3`]): for uploads larger than any disk.
    /// Returns it and the count of body bytes it received.
    pub async fn start_null() -> (S3TestServer, Arc<AtomicU64>) {
        let received = Arc::new(AtomicU64::new(0));
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("s3");
        let null = NullS3 {
            received: received.clone(),
        };
        (
            Self::serve(S3ServiceBuilder::new(null), tmp, data_dir).await,
            received,
        )
    }
}

/// An S3 server that reads every body and keeps none of it: objects are never found,
/// listings are empty. For measuring the gateway while it uploads terabytes.
pub struct NullS3 {
    received: Arc<AtomicU64>,
}

impl NullS3 {
    async fn drain(&self, body: Option<StreamingBlob>) -> S3Result<()> {
        use futures::StreamExt;
        let Some(mut body) = body else { return Ok(()) };
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?;
            self.received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl S3 for NullS3 {
    async fn create_bucket(
        &self,
        _req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        Ok(S3Response::new(CreateBucketOutput::default()))
    }

    async fn head_object(&self, _req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        Err(s3_error!(NoSuchKey))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(req.input.bucket),
            prefix: req.input.prefix,
            key_count: Some(0),
            is_truncated: Some(false),
            ..Default::default()
        }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.drain(req.input.body).await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(MD5_EMPTY.into())),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(req.input.bucket),
            key: Some(req.input.key),
            upload_id: Some(format!("{:x}", rand_id())),
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let n = req.input.part_number;
        self.drain(req.input.body).await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(format!("{n:032x}"))),
            checksum_crc32c: Some("AAAAAA==".into()),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let parts = req
            .input
            .multipart_upload
            .and_then(|m| m.parts)
            .map_or(0, |p| p.len());
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            e_tag: Some(ETag::Strong(format!("{:032x}-{parts}", rand_id()))),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        _req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn delete_object(
        &self,
        _req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }
}

/// Unique for the process: upload ids and ETags of the null server.
fn rand_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
