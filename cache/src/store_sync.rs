//! Merging what the store lists into the namespace: objects that exist in the bucket
//! appear as files and directories, and changes made there by others become visible.
//!
//! Rules: a local change not yet uploaded wins over the listing; a remote change to a
//! clean file (another ETag) drops its cached data; a remote delete removes a clean
//! file; an object added remotely appears. A listing that started before the gateway's
//! own last upload of a name says nothing about that name.

use crate::attrs::Batch;

use crate::engine::{Cache, State, encode, now_ns};
use crate::error::{CacheError, Result};
use crate::inode::{DirEntry, FileId, Inode, Kind, RemoteState, keys};
use crate::perm::Caller;

/// One entry of a directory's listing.
#[derive(Clone, Debug)]
pub struct RemoteEntry {
    pub name: Vec<u8>,
    pub kind: RemoteKind,
}

#[derive(Clone, Debug)]
pub enum RemoteKind {
    File {
        size: u64,
        etag: String,
        mtime_ns: u64,
    },
    /// A common prefix, or a `name/` marker object.
    Dir,
}

/// What a listing changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListingChanges {
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
}

/// Attributes from an object's metadata (HEAD).
#[derive(Clone, Copy, Debug)]
pub struct RemoteAttrs {
    pub uid: u32,
    pub gid: u32,
    /// st_mode with type bits.
    pub mode: u32,
    pub mtime_ns: u64,
}

impl Cache {
    /// Does `dir` need (re)listing: never listed, or listed longer than `stale_after_ns` ago?
    pub fn needs_listing(&self, dir: FileId, stale_after_ns: Option<u64>) -> Result<bool> {
        let d = self.get(dir)?;
        if d.kind != Kind::Dir {
            return Ok(false);
        }
        Ok(d.listed_ns == 0 || stale_after_ns.is_some_and(|s| now_ns().saturating_sub(d.listed_ns) > s))
    }

    /// Merges the complete listing of `dir` taken from `started_ns` on.
    pub fn apply_listing(
        &self,
        dir: FileId,
        entries: Vec<RemoteEntry>,
        started_ns: u64,
    ) -> Result<ListingChanges> {
        let mut changes = ListingChanges::default();
        let mut refreshed: Vec<(FileId, String, u64, u64)> = Vec::new();
        {
            let mut st = self.state.lock();
            let mut d = self.get(dir)?;
            if d.kind != Kind::Dir {
                return Err(CacheError::NotDir);
            }
            let dir_path = self.path_of(&d)?;
            let key_of = |name: &[u8], is_dir: bool| {
                let name = String::from_utf8_lossy(name);
                let base = if dir_path.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir_path}/{name}")
                };
                if is_dir { format!("{base}/") } else { base }
            };
            let now = now_ns();
            let mut b = Batch::default();
            let mut seen = std::collections::HashSet::new();
            for e in &entries {
                if self.check_listed_name(&d, &e.name).is_err() {
                    tracing::debug!(name = %String::from_utf8_lossy(&e.name), "skipping an object whose name cannot be a file name");
                    continue;
                }
                seen.insert(e.name.clone());
                if let Some(de) = self.lookup_entry(dir, &e.name)? {
                    let Some(child) = self.load(de.child)? else {
                        continue;
                    };
                    let in_sync = !child.is_dirty() && !child.unlinked && child.remote.synced_ns < started_ns;
                    if let (RemoteKind::File { size, etag, mtime_ns }, Kind::File) = (&e.kind, child.kind) {
                        let r = &child.remote;
                        let changed = if !etag.is_empty() && !r.etag.is_empty() {
                            r.etag != *etag
                        } else {
                            r.listed_size != *size
                                || (r.listed_mtime_ns != 0 && r.listed_mtime_ns != *mtime_ns)
                        };
                        if in_sync && changed {
                            refreshed.push((child.id, etag.clone(), *size, *mtime_ns));
                        }
                    }
                    continue;
                }
                let is_dir = matches!(e.kind, RemoteKind::Dir);
                let mut child = Self::new_inode(
                    &mut st,
                    if is_dir { Kind::Dir } else { Kind::File },
                    &Caller::new(self.opts.root_uid, self.opts.root_gid, Vec::new()),
                    &Inode { mode: 0, ..d.clone() },
                    &e.name,
                    if is_dir {
                        self.opts.root_mode
                    } else {
                        self.opts.default_file_mode
                    },
                    now,
                );
                child.meta_pending = true;
                child.listed_ns = 0;
                let mut etag = String::new();
                if let RemoteKind::File {
                    size,
                    etag: t,
                    mtime_ns,
                } = &e.kind
                {
                    child.size = *size;
                    child.partial = true;
                    child.mtime_ns = *mtime_ns;
                    child.ctime_ns = *mtime_ns;
                    child.atime_ns = *mtime_ns;
                    etag = t.clone();
                }
                child.remote = RemoteState {
                    key: Some(key_of(&e.name, is_dir)),
                    etag,
                    data_seq: 0,
                    meta: (child.uid, child.gid, child.st_mode(), child.mtime_ns),
                    stale_keys: Vec::new(),
                    synced_ns: now,
                    listed_size: child.size,
                    listed_mtime_ns: if child.partial { child.mtime_ns } else { 0 },
                    overwrite_meta: None,
                };
                let seq = d.next_dir_seq;
                d.next_dir_seq += 1;
                Self::put(&mut b, &child);
                b.insert(
                    keys::name(dir, &child.name),
                    encode(&DirEntry { child: child.id, seq }),
                );
                b.insert(&keys::seq(dir, seq), child.name.clone());
                changes.added += 1;
            }
            // Names the store no longer has.
            for kv in self.db.scan_prefix(keys::seq_prefix(dir)) {
                let (k, name) = kv?;
                if seen.contains(name.as_ref()) {
                    continue;
                }
                let Some(de) = self.lookup_entry(dir, &name)? else {
                    continue;
                };
                let Some(child) = self.load(de.child)? else {
                    continue;
                };
                let gone_remotely = child.remote.key.is_some()
                    && !child.is_dirty()
                    && !child.unlinked
                    && child.remote.synced_ns < started_ns
                    && (child.kind != Kind::Dir
                        || self.db.scan_prefix(keys::seq_prefix(child.id)).next().is_none());
                if gone_remotely {
                    b.remove(keys::name(dir, &name));
                    b.remove(k);
                    b.remove_inode(child.id);
                    b.remove(&keys::blocks(child.id));
                    if child.kind == Kind::File {
                        st.resized(self.cached_bytes_of(&child), 0);
                        self.drop_data(child.id);
                    }
                    changes.removed += 1;
                }
            }
            d.listed_ns = now;
            Self::put(&mut b, &d);
            b.insert(keys::meta("next_id"), &st.next_id.to_be_bytes());
            self.commit_batch(b)?;
        }
        for (id, etag, size, mtime_ns) in refreshed {
            if self.replace_remote_data(id, &etag, size, mtime_ns, started_ns)? {
                changes.changed += 1;
            }
        }
        Ok(changes)
    }

    fn cached_bytes_of(&self, i: &Inode) -> u64 {
        if i.partial {
            let map = self
                .db
                .get(keys::blocks(i.id))
                .ok()
                .flatten()
                .map(|v| v.to_vec())
                .unwrap_or_default();
            (map.iter().map(|b| b.count_ones() as u64).sum::<u64>() * crate::blocks::BLOCK).min(i.size)
        } else {
            i.size
        }
    }

    /// The store holds another version of a clean file: forget the cached bytes.
    fn replace_remote_data(
        &self,
        id: FileId,
        etag: &str,
        size: u64,
        mtime_ns: u64,
        started_ns: u64,
    ) -> Result<bool> {
        let _guard = self.data_lock(id).write();
        let mut st = self.state.lock();
        let Some(mut i) = self.load(id)? else {
            return Ok(false);
        };
        if i.is_dirty() || i.unlinked || i.remote.synced_ns >= started_ns {
            return Ok(false);
        }
        i.mtime_ns = mtime_ns;
        i.meta_pending = true;
        i.remote.listed_mtime_ns = mtime_ns;
        self.forget_cached_bytes(&mut st, i, etag, size)?;
        drop(st);
        self.lru.invalidate(&id);
        Ok(true)
    }

    /// A server-side copy of `id`'s object (for a rename or an attribute change)
    /// found that the store holds another version than the cached one (ETag `etag`,
    /// `size` bytes), and `id` has no data changes of its own: the store's bytes win
    /// (the cached ones are dropped and fetched again when read), while the local name
    /// and attributes stay pending, to be applied to that version by the next copy.
    /// False when `id` has data changes of its own (a conflict, not a rebase).
    pub fn rebase_on_remote(&self, id: FileId, etag: &str, size: u64) -> Result<bool> {
        let _guard = self.data_lock(id).write();
        let mut st = self.state.lock();
        let Some(i) = self.load(id)? else {
            return Ok(false);
        };
        if i.kind != Kind::File || i.dirty_data_bytes() > 0 {
            return Ok(false);
        }
        self.forget_cached_bytes(&mut st, i, etag, size)?;
        drop(st);
        self.lru.invalidate(&id);
        Ok(true)
    }

    /// Drops `i`'s cached bytes: it becomes a partial file of the store's version.
    fn forget_cached_bytes(&self, st: &mut State, mut i: Inode, etag: &str, size: u64) -> Result<()> {
        st.resized(self.cached_bytes_of(&i), 0);
        self.file(i.id)?.set_len(0).map_err(CacheError::from_io)?;
        i.size = size;
        i.ctime_ns = now_ns();
        i.partial = true;
        i.remote.etag = etag.to_string();
        i.remote.synced_ns = now_ns();
        i.remote.listed_size = size;
        let mut b = Batch::default();
        Self::put(&mut b, &i);
        b.remove(&keys::blocks(i.id));
        self.commit_batch(b)?;
        st.account(&i);
        Ok(())
    }

    /// Attributes read from the object's metadata (or `None`: it carries none, keep
    /// the share's defaults). Ignored for an inode with local changes.
    pub fn apply_head(&self, id: FileId, attrs: Option<RemoteAttrs>) -> Result<Inode> {
        let _st = self.state.lock();
        let mut i = self.get(id)?;
        if !i.meta_pending {
            return Ok(i);
        }
        i.meta_pending = false;
        if let Some(a) = attrs
            && !i.is_dirty()
            && (a.mode & 0o170000) == i.kind.type_bits()
        {
            i.uid = a.uid;
            i.gid = a.gid;
            i.mode = a.mode & 0o7777;
            i.mtime_ns = a.mtime_ns;
            i.remote.meta = (a.uid, a.gid, i.st_mode(), a.mtime_ns);
        }
        let mut b = Batch::default();
        Self::put(&mut b, &i);
        self.commit_batch(b)?;
        Ok(i)
    }
}
