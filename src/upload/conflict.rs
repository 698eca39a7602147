//! Uploads that must not replace a version of an object someone else wrote since the
//! gateway last saw it: the store's version keeps the name, the local one is kept as
//! `<name>.conflict-<UTC time>`.

use std::sync::atomic::Ordering;

use bucketgate_cache::Inode;

use super::{UploadError, Uploader};
use crate::remote::{ObjectInfo, ObjectMeta, StoreError, same_etag};

impl Uploader {
    /// Uploads the file's bytes to `key`, unless the object there is no longer the
    /// version the local change started from: then the local version is set aside as
    /// a conflict copy (uploaded by the next pass) and `None` is returned.
    pub(super) async fn upload_unless_conflict(
        &self,
        ino: &Inode,
        rel: &str,
        key: &str,
        meta: &ObjectMeta,
    ) -> Result<Option<String>, UploadError> {
        let r = &ino.remote;
        let base = (self.settings.check_conflicts && r.key.as_deref() == Some(rel) && !r.etag.is_empty())
            .then_some(r.etag.as_str());
        let Some(base) = base else {
            return self.upload_data(ino, key, meta, None).await.map(Some);
        };
        self.cache
            .record_overwrite_intent(ino.id, (meta.uid, meta.gid, meta.mode, meta.mtime_ns))?;
        match self.upload_data(ino, key, meta, Some(base)).await {
            Err(UploadError::Store(StoreError::PreconditionFailed | StoreError::NotFound)) => {}
            done => return done.map(Some),
        }
        // Some stores answer a failed If-Match on a missing object with 412, some with
        // 404: look before deciding.
        let theirs = match self.store.head(key).await? {
            // Deleted behind our back: the local change brings it back.
            None => return self.upload_data(ino, key, meta, None).await.map(Some),
            // Not changed after all, or changed by an upload of ours whose record a
            // crash lost.
            Some(now) if same_etag(&now.etag, base) || Self::written_by_us(ino, &now) => {
                return self.upload_data(ino, key, meta, None).await.map(Some);
            }
            Some(now) => now,
        };
        let stamp: String = crate::audit::rfc3339_now()
            .chars()
            .take(19)
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .chain(std::iter::once('Z'))
            .collect();
        if let Some(name) = self.cache.set_aside_conflict(ino.id, rel, &stamp)? {
            tracing::warn!(
                key,
                their_etag = theirs.etag,
                our_base = base,
                kept_as = name,
                "conflict: the object changed in the store since the gateway last saw it; \
                 the store's version keeps the name, the local one is kept beside it"
            );
            self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
            if let Some((m, share)) = &self.metrics {
                m.conflicts_total.with_label_values(&[share]).inc();
            }
        }
        Ok(None)
    }

    pub(super) fn written_by_us(ino: &Inode, info: &ObjectInfo) -> bool {
        let theirs = info.meta.map(|m| (m.uid, m.gid, m.mode, m.mtime_ns));
        theirs.is_some() && theirs == ino.remote.overwrite_meta
    }
}
