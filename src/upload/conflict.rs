//! Uploads that must not replace a version of an object someone else wrote since the
//! gateway last saw it, nor an object it never saw: the store's version keeps the
//! name, the local one is kept as `<name>.conflict-<UTC time>`.

use std::sync::atomic::Ordering;

use bucketgate_cache::{FileId, Inode};

use super::{UploadError, Uploader};
use crate::remote::{Expect, ObjectAttrs, ObjectInfo, StoreError, same_etag};

impl Uploader {
    /// Uploads the file's bytes to `key`, which holds `known` (see
    /// [`bucketgate_cache::Cache::known_version`]), unless the object there is not
    /// that version (another client replaced it, or wrote one where the gateway knew
    /// of none): then the local version is set aside as a conflict copy (uploaded by
    /// the next pass) and `None` is returned.
    pub(super) async fn upload_unless_conflict(
        &self,
        ino: &Inode,
        rel: &str,
        key: &str,
        meta: &ObjectAttrs,
        known: Option<&str>,
    ) -> Result<Option<String>, UploadError> {
        let expect = self.expect(known);
        if expect == Expect::Any {
            return self.upload_data(ino, key, meta, expect).await.map(Some);
        }
        match self.upload_data(ino, key, meta, expect).await {
            Err(UploadError::Store(StoreError::PreconditionFailed | StoreError::NotFound)) => {}
            done => return done.map(Some),
        }
        // Some stores answer a failed If-Match on a missing object with 412, some with
        // 404: look before deciding.
        let theirs = match self.store.head(key).await? {
            // Deleted behind our back: the local change brings it back, unless another
            // object appears there meanwhile.
            None => return self.upload_data(ino, key, meta, Expect::Absent).await.map(Some),
            // Not changed after all, or changed by an upload of ours whose record a
            // crash lost.
            Some(now)
                if matches!(expect, Expect::Version(base) if same_etag(&now.etag, base))
                    || self.written_by_us(ino.id, rel, &now) =>
            {
                return self
                    .upload_data(ino, key, meta, Expect::Version(&now.etag))
                    .await
                    .map(Some);
            }
            Some(now) => now,
        };
        self.set_aside(ino, rel, key, &theirs.etag, known).await?;
        Ok(None)
    }

    /// `key` holds another client's version (ETag `theirs`) where the local file
    /// was to go: that version keeps the name, and the local file moves aside to
    /// `<name>.conflict-<UTC time>`, to be uploaded there by its next pass.
    pub(super) async fn set_aside(
        &self,
        ino: &Inode,
        rel: &str,
        key: &str,
        theirs: &str,
        known: Option<&str>,
    ) -> Result<(), UploadError> {
        let stamp: String = crate::audit::rfc3339_now()
            .chars()
            .take(19)
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .chain(std::iter::once('Z'))
            .collect();
        let (id, at) = (ino.id, rel.to_owned());
        if let Some(name) = self
            .durably(move |c| c.set_aside_conflict(id, &at, &stamp))
            .await?
        {
            tracing::warn!(
                key,
                their_etag = theirs,
                our_base = known.unwrap_or("(none: the gateway knew of no object there)"),
                kept_as = name,
                "conflict: the store holds a version of this object the gateway has not seen; \
                 the store's version keeps the name, the local one is kept beside it"
            );
            self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
            if let Some((m, share)) = &self.metrics {
                m.conflicts_total.with_label_values(&[share]).inc();
            }
        }
        Ok(())
    }

    /// The object at share-relative `rel` is a write of ours the cache has not
    /// recorded (a lost reply, a crash): file `id`'s, or one of the file that left
    /// that key before `id` took it. A failure to tell counts as another client's (a
    /// conflict copy, never a lost version).
    pub(super) fn written_by_us(&self, id: FileId, rel: &str, info: &ObjectInfo) -> bool {
        self.cache.written_by_us(id, info.meta).unwrap_or(false)
            || self.cache.left_written_by_us(rel, info.meta).unwrap_or(false)
    }
}
