//! A name freed by a rename, taken by another file before the renamed file's object
//! has moved (see `bucketgate_cache::KeyRelease`).

use bucketgate_cache::{CacheError, FETCH_PIECE, FileId, KeyRelease};

use super::{UploadError, Uploader};
use crate::remote::StoreError;

impl Uploader {
    /// A file that moved away from `rel` may still have its object there, to be copied
    /// to its new key: it gets any bytes it lacks from that object, then lets the key
    /// go and uploads its own bytes (see `Cache::release_moved_key`).
    pub(super) async fn take_over_key(&self, rel: &str, key: &str, me: FileId) -> Result<(), UploadError> {
        for _ in 0..8 {
            let at = rel.to_owned();
            let (id, etag, ranges) = match self.durably(move |c| c.release_moved_key(&at, me)).await? {
                KeyRelease::Free => return Ok(()),
                KeyRelease::NeedsBytes { id, etag, ranges } => (id, etag, ranges),
            };
            for (start, len) in ranges {
                let mut at = start;
                while at < start + len {
                    let n = (start + len - at).min(FETCH_PIECE);
                    let bytes = match self.store.get_range(key, at, n).await {
                        Ok(b) => b,
                        // Gone from the store: there is nothing left to protect.
                        Err(StoreError::NotFound) => return Ok(()),
                        Err(e) => return Err(e.into()),
                    };
                    let etag = etag.clone();
                    self.durably(move |c| c.fill(id, &etag, at, &bytes)).await?;
                    at += n;
                }
            }
        }
        // The object there is not the version that file knew (its bytes were refused).
        Err(CacheError::TryLater.into())
    }
}
