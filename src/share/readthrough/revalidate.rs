//! Applying what an S3 event notification says about one key: the name it makes
//! (or unmakes) in a directory the gateway has listed is looked up in the store
//! again, and what the store holds now is merged with the listing's rules.
//!
//! An event is only a hint: its key is read again from the store, so events that
//! arrive twice, late or out of order (SQS promises neither order nor exactly-once)
//! all end at what the bucket holds when the last of them is applied, and S3's
//! per-key `sequencer` is not needed. Two cheap cases skip the store: an object whose
//! ETag the file already has (the gateway's own upload, or an event seen before), and
//! a removal of a name the gateway does not show.

use bucketgate_cache::{
    CacheError, FileId, Kind, ListingChanges, ROOT_ID, RemoteEntry, RemoteKind, same_etag,
};

use super::{ReadThrough, blocking, name_ok, now_ns, store_err};

/// What an event says happened to its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyEvent {
    /// ObjectCreated:* with the new object's ETag (empty when the event had none).
    Created { etag: String },
    /// ObjectRemoved:* (a delete, or a delete marker).
    Removed,
}

/// What applying an event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revalidated {
    /// The names were read from the store and merged (possibly changing nothing).
    Merged(ListingChanges),
    /// Nothing to do, and the store was not asked: why.
    Ignored(&'static str),
}

impl ReadThrough {
    /// Applies `event` for the share-relative key `rel` (`a/b/c`, or `a/b/` for a
    /// directory marker).
    pub async fn apply_event(&self, rel: &str, event: &KeyEvent) -> Result<Revalidated, CacheError> {
        let path = rel.strip_suffix('/').unwrap_or(rel);
        if path.is_empty() {
            return Ok(Revalidated::Ignored("the share's root"));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if !parts.iter().all(|p| name_ok(p)) {
            return Ok(Revalidated::Ignored("a key that cannot be a path"));
        }
        // Down the directories the gateway shows, to the first name it does not
        // show or to the key's own name: that is the name the event changes here.
        let mut dir = ROOT_ID;
        let mut trail: Vec<(FileId, &str)> = Vec::new();
        let mut at = 0;
        let child = loop {
            if self.cache.get(dir)?.listed_ns == 0 {
                return Ok(Revalidated::Ignored("its directory was never listed"));
            }
            let child = self.cache.child(dir, parts[at].as_bytes())?;
            match &child {
                Some(c) if c.kind == Kind::Dir && !c.unlinked && at + 1 < parts.len() => {
                    trail.push((dir, parts[at]));
                    dir = c.id;
                    at += 1;
                }
                _ => break child,
            }
        };
        let last = at + 1 == parts.len();
        match (event, &child) {
            (KeyEvent::Removed, None) => return Ok(Revalidated::Ignored("a name not shown")),
            (KeyEvent::Created { etag }, Some(c))
                if last && c.kind == Kind::File && !etag.is_empty() && same_etag(&c.remote.etag, etag) =>
            {
                return Ok(Revalidated::Ignored("this version is known"));
            }
            _ => {}
        }
        let mut changes = self.merge_name(dir, parts[at]).await?;
        // A removal may leave directories that only the removed object made.
        let mut removed = changes.removed > 0;
        while removed && let Some((parent, name)) = trail.pop() {
            if self.cache.has_entries(dir)? {
                break;
            }
            let up = self.merge_name(parent, name).await?;
            removed = up.removed > 0;
            changes.add(up);
            dir = parent;
        }
        Ok(Revalidated::Merged(changes))
    }

    /// Reads what the store holds under `name` in directory `dir` (an object, and
    /// whether anything is below `name/`) and merges it.
    async fn merge_name(&self, dir: FileId, name: &str) -> Result<ListingChanges, CacheError> {
        let d = self.cache.get(dir)?;
        if d.kind != Kind::Dir {
            return Err(CacheError::NotDir);
        }
        let key = format!("{}{name}", self.dir_prefix(&d)?);
        let started = now_ns();
        let (object, below) = futures::try_join!(self.store.head(&key), async {
            let below = format!("{key}/");
            let page = self.store.list(&below, None, None, 1).await?;
            Ok(!page.objects.is_empty() || !page.common_prefixes.is_empty())
        })
        .map_err(store_err)?;
        let share_rel = key.strip_prefix(&self.prefix).unwrap_or(&key);
        // As in a listing: a name that is both an object and a prefix is the
        // directory; one the gateway is deleting or moving away is not there.
        let kind = if below && !self.only_leaving_below(&format!("{key}/"), started).await? {
            Some(RemoteKind::Dir)
        } else {
            match object {
                Some(o) if !self.cache.leaving(share_rel, &o.etag, started)? => Some(RemoteKind::File {
                    size: o.size,
                    etag: o.etag,
                    mtime_ns: o.last_modified_ns.unwrap_or_else(now_ns),
                }),
                _ => None,
            }
        };
        let only = vec![name.as_bytes().to_vec()];
        let entries: Vec<RemoteEntry> = kind
            .into_iter()
            .map(|kind| RemoteEntry {
                name: name.as_bytes().to_vec(),
                kind,
            })
            .collect();
        let cache = self.cache.clone();
        let changes = blocking(move || cache.apply_names(dir, &only, entries, started)).await?;
        // A FUSE mount's kernel cache and SMB clients find the change too.
        super::super::notices_delivered(&self.cache).await;
        Ok(changes)
    }
}
