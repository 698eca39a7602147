//! Moving file bytes from the cache disk to the store.

use std::sync::Arc;

use bucketgate_cache::{Cache, FileId};
use bytes::Bytes;
use tokio::task::JoinSet;

use super::UploadError;
use crate::remote::{CompletedPart, ObjectStore, PartBody};

/// Reads `[offset, offset+len)` of a cached file into memory (a single PUT, below
/// the multipart threshold). Bytes past the data file's end (a sparse tail from a
/// truncate that extended the file) read as zeros.
pub async fn read_range(cache: &Arc<Cache>, id: FileId, offset: u64, len: u64) -> Result<Bytes, UploadError> {
    let f = cache.open_data(id)?;
    let body = PartBody::File { file: f, offset, len };
    let bytes = tokio::task::spawn_blocking(move || body.into_bytes())
        .await
        .map_err(|e| bucketgate_cache::CacheError::Meta(format!("read task failed: {e}")))?
        .map_err(bucketgate_cache::CacheError::Io)?;
    Ok(bytes)
}

/// Memory a part in flight takes while it streams: the chunk being read and what
/// the HTTP stack buffers of the one before.
pub const PART_MEMORY: u32 = 2 * crate::remote::CHUNK as u32;

/// Uploads the parts of one multipart upload, `concurrency` at a time, each holding
/// [`PART_MEMORY`] of the gateway's upload `memory` while it is sent.
#[allow(clippy::too_many_arguments)]
pub async fn upload_parts(
    cache: &Arc<Cache>,
    store: &Arc<dyn ObjectStore>,
    memory: &Arc<tokio::sync::Semaphore>,
    id: FileId,
    key: &str,
    upload_id: &str,
    size: u64,
    part_size: u64,
    concurrency: usize,
) -> Result<Vec<CompletedPart>, UploadError> {
    let part_count = size.div_ceil(part_size).max(1);
    let mut parts = Vec::with_capacity(part_count as usize);
    let mut tasks: JoinSet<Result<CompletedPart, UploadError>> = JoinSet::new();
    let mut next = 0u64;
    while next < part_count || !tasks.is_empty() {
        while next < part_count && tasks.len() < concurrency {
            let offset = next * part_size;
            let len = part_size.min(size - offset);
            let number = (next + 1) as i32;
            let (cache, store, key, upload_id, memory) = (
                cache.clone(),
                store.clone(),
                key.to_string(),
                upload_id.to_string(),
                memory.clone(),
            );
            tasks.spawn(async move {
                let _memory = memory.acquire_many(PART_MEMORY).await.expect("never closed");
                if number > 1 {
                    // Some parts are in the store, the upload is not complete.
                    super::failpoint!("upload::multipart::between_parts");
                }
                // Read while sent: never a whole part in memory, nor a hole.
                let file = cache.open_data(id)?;
                let body = PartBody::File { file, offset, len };
                let etag = store.upload_part(&key, &upload_id, number, body).await?;
                Ok(CompletedPart {
                    part_number: number,
                    etag,
                })
            });
            next += 1;
        }
        if let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(p)) => parts.push(p),
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(bucketgate_cache::CacheError::Meta(format!("part task failed: {e}")).into());
                }
            }
        }
    }
    parts.sort_by_key(|p| p.part_number);
    Ok(parts)
}
