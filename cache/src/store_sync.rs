//! Merging what the store lists into the namespace: objects that exist in the bucket
//! appear as files and directories, and changes made there by others become visible.
//!
//! Rules: a local change not yet uploaded wins over the listing; a remote change to a
//! clean file (another ETag) drops its cached data; a remote delete removes a clean
//! file; an object added remotely appears. A listing that started before the gateway's
//! own last upload of a name says nothing about that name.

use crate::attrs::Batch;

use crate::engine::{Cache, State, now_ns};
use crate::error::{CacheError, Result};
use crate::inode::encode;
use crate::inode::{DirEntry, FileId, Inode, Kind, ObjectAttrs, RemoteState, keys};
use crate::notice::Notice;
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

impl ListingChanges {
    pub fn add(&mut self, other: ListingChanges) {
        self.added += other.added;
        self.changed += other.changed;
        self.removed += other.removed;
    }
}

/// What a HEAD of an inode's object found.
#[derive(Clone, Debug)]
pub struct ObjectHead {
    pub etag: String,
    pub size: u64,
    /// `None`: the object carries no POSIX metadata (the share's defaults apply).
    pub attrs: Option<ObjectAttrs>,
    /// The body of an object whose metadata says symlink, when it can be a target
    /// (at most 4,096 bytes, no NUL); otherwise it stays a regular file.
    pub symlink_target: Option<Vec<u8>>,
}

/// Longest symlink target, as Linux's PATH_MAX.
pub const MAX_SYMLINK_TARGET: usize = 4096;

/// New names a listing records per sled batch.
const LISTING_BATCH: u64 = 512;

/// Whether two ETags are the same, quoted or not (listings, HEADs and S3 events
/// differ in that).
pub fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

impl Cache {
    /// The subdirectories of `dir` (name, id), for walking a listed tree; no
    /// permission is checked and nothing here goes into a reply.
    pub fn subdirs(&self, dir: FileId) -> Result<Vec<(Vec<u8>, FileId)>> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(keys::seq_prefix(dir)) {
            let (_, name) = kv?;
            if let Some(e) = self.lookup_entry(dir, &name)?
                && let Some(c) = self.load(e.child)?
                && c.kind == Kind::Dir
                && !c.unlinked
            {
                out.push((name.to_vec(), c.id));
            }
        }
        Ok(out)
    }

    /// The store holds something new where `id` was (another client wrote it):
    /// `id`'s directory is listed again on its next use, so that it shows.
    pub fn relist_parent(&self, id: FileId) -> Result<()> {
        let _st = self.state.lock();
        let Some(i) = self.load(id)? else {
            return Ok(());
        };
        let Some(mut d) = self.load(i.parent)? else {
            return Ok(());
        };
        if d.unlinked || d.kind != Kind::Dir {
            return Ok(());
        }
        d.listed_ns = 0;
        let mut b = Batch::default();
        Self::put(&mut b, &d);
        self.commit_batch(b)
    }

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
        self.merge(dir, entries, None, started_ns)
    }

    /// Merges what the store holds under the names `only` of `dir` (an S3 event
    /// named one of them), taken from `started_ns` on: `entries` are those of them
    /// that exist. The rules are the listing's; the directory's own listing time is
    /// left alone, for the names it holds besides these were not looked at.
    pub fn apply_names(
        &self,
        dir: FileId,
        only: &[Vec<u8>],
        entries: Vec<RemoteEntry>,
        started_ns: u64,
    ) -> Result<ListingChanges> {
        debug_assert!(entries.iter().all(|e| only.contains(&e.name)));
        self.merge(dir, entries, Some(only), started_ns)
    }

    /// The entry `name` of `dir`, for merging what the store holds; no permission
    /// is checked and nothing here goes into a reply.
    pub fn child(&self, dir: FileId, name: &[u8]) -> Result<Option<Inode>> {
        match self.lookup_entry(dir, name)? {
            Some(de) => self.load(de.child),
            None => Ok(None),
        }
    }

    /// Whether directory `dir` has any entry.
    pub fn has_entries(&self, dir: FileId) -> Result<bool> {
        Ok(self.db.scan_prefix(keys::seq_prefix(dir)).next().is_some())
    }

    /// [`Cache::apply_listing`] of every name (`only: None`) or of the names `only`.
    fn merge(
        &self,
        dir: FileId,
        entries: Vec<RemoteEntry>,
        only: Option<&[Vec<u8>]>,
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
                let de = self.lookup_entry(dir, &e.name)?;
                // The gateway is deleting or moving that object: not a new name. (A
                // directory shows while anything else is below it: the share layer
                // leaves out one that holds only what is leaving.)
                if de.is_none()
                    && let RemoteKind::File { etag, .. } = &e.kind
                    && self.leaving(&key_of(&e.name, false), etag, started_ns)?
                {
                    continue;
                }
                if let Some(de) = de {
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
                    meta: child.object_attrs(),
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
                if is_dir {
                    d.subdirs += 1;
                }
                changes.added += 1;
                // sled's cost per record grows with the batch (a batch of 30,000
                // records, 10,000 new names, took 380 ms; the same in batches of a few
                // hundred names, 150 ms). Each batch holds the directory and the id
                // counter, so a crash between two leaves whole names, in a directory
                // whose listing time is still the one before (it is listed again).
                if changes.added % LISTING_BATCH == 0 {
                    Self::put(&mut b, &d);
                    b.insert(keys::meta("next_id"), &st.next_id.to_be_bytes());
                    self.commit_batch(std::mem::take(&mut b))?;
                    failpoint!(
                        "cache::apply_listing::between_batches",
                        Err(CacheError::Io(std::io::Error::other(
                            "failpoint cache::apply_listing::between_batches"
                        )))
                    );
                }
            }
            // Names the store no longer has.
            // (the name's order key when scanned, its name)
            type Named = Result<(Option<sled::IVec>, Vec<u8>)>;
            let names: Box<dyn Iterator<Item = Named>> = match only {
                Some(only) => Box::new(only.iter().map(|n| Ok((None, n.clone())))),
                None => Box::new(self.db.scan_prefix(keys::seq_prefix(dir)).map(|kv| {
                    let (k, v) = kv?;
                    Ok((Some(k), v.to_vec()))
                })),
            };
            for named in names {
                let (k, name) = named?;
                if seen.contains(&name) {
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
                    match k {
                        Some(k) => b.remove(k),
                        None => b.remove(&keys::seq(dir, de.seq)),
                    }
                    b.remove_inode(child.id);
                    b.remove(&keys::blocks(child.id));
                    if child.kind == Kind::File {
                        st.resized(self.cached_bytes_of(&child), 0);
                        self.drop_data(child.id);
                    }
                    if child.kind == Kind::Dir {
                        d.subdirs = d.subdirs.saturating_sub(1);
                    }
                    self.notice(Notice::Entry {
                        dir,
                        name: name.to_vec(),
                    });
                    changes.removed += 1;
                }
            }
            if only.is_none() {
                d.listed_ns = now;
            }
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

    pub(crate) fn cached_bytes_of(&self, i: &Inode) -> u64 {
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
        self.notice(Notice::Inode(i.id));
        Ok(())
    }

    /// True when the object a listing shows at share-relative `key` (ETag `etag`,
    /// "" when the listing carries none) is one the gateway is removing from the
    /// store (a removed file's or directory's, a renamed file's old key), not
    /// something new: it must not bring the name back. Another version there
    /// (another ETag) is someone else's. `listed_ns`: when the listing started, so
    /// that an object deleted since counts as leaving too.
    pub fn leaving(&self, key: &str, etag: &str, listed_ns: u64) -> Result<bool> {
        if self.left_to_them(key)? {
            return Ok(false);
        }
        if self.gone.since(key, etag, listed_ns) {
            return Ok(true);
        }
        if let Some(known) = self.left_version(key)? {
            return Ok(etag.is_empty() || known.is_empty() || same_etag(etag, &known));
        }
        Ok(!key.ends_with('/') && self.moved_away_from(key, 0)?.is_some())
    }

    /// Applies what a HEAD found to an inode a listing created, whose attributes
    /// were placeholders until now. `None`: the object is gone; a file that only the
    /// listing knew goes too (`Stale`), a directory that is only a key prefix keeps
    /// the share's defaults. Setuid and setgid bits of files are dropped unless the
    /// share imports them (any S3 writer could set them); a directory keeps setgid,
    /// which only passes its group on. An object whose metadata says symlink
    /// becomes one when its body can be a target.
    pub fn apply_head(&self, id: FileId, head: Option<ObjectHead>) -> Result<Inode> {
        let _guard = self.data_lock(id).write();
        let mut st = self.state.lock();
        let i = self.get(id)?;
        if !i.meta_pending {
            return Ok(i);
        }
        let mut b = Batch::default();
        let merged = self.merge_head(&mut st, i, head, &mut b)?;
        self.commit_batch(b)?;
        if let Some(i) = &merged {
            st.account(i);
        }
        drop(st);
        self.lru.invalidate(&id);
        merged.ok_or(CacheError::Stale)
    }

    /// [`Cache::apply_head`] for many inodes (a READDIRPLUS page), in one batch: an
    /// inode that holds cached bytes goes through `apply_head` on its own, under its
    /// data lock; for the others there is nothing a reader could be using.
    pub fn apply_heads(&self, items: Vec<(FileId, Option<ObjectHead>)>) -> Result<()> {
        let mut alone = Vec::new();
        let mut done = Vec::new();
        {
            let mut st = self.state.lock();
            let mut b = Batch::default();
            for (id, head) in items {
                let Some(i) = self.load(id)? else { continue };
                if i.unlinked || !i.meta_pending {
                    continue;
                }
                if i.kind == Kind::File && self.cached_bytes_of(&i) > 0 {
                    alone.push((id, head));
                    continue;
                }
                if let Some(i) = self.merge_head(&mut st, i, head, &mut b)? {
                    done.push(i);
                }
            }
            self.commit_batch(b)?;
            for i in &done {
                st.account(i);
            }
        }
        for (id, head) in alone {
            match self.apply_head(id, head) {
                Ok(_) | Err(CacheError::Stale) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// In `b`: `i` with what the HEAD found; `None` when it goes (its object is gone).
    fn merge_head(
        &self,
        st: &mut State,
        mut i: Inode,
        head: Option<ObjectHead>,
        b: &mut Batch,
    ) -> Result<Option<Inode>> {
        let id = i.id;
        i.meta_pending = false;
        match head {
            None if i.kind != Kind::Dir && !i.is_dirty() => {
                if let Some(e) = self.lookup_entry(i.parent, &i.name)?
                    && e.child == id
                {
                    b.remove(keys::name(i.parent, &i.name));
                    b.remove(&keys::seq(i.parent, e.seq));
                    self.notice(Notice::Entry {
                        dir: i.parent,
                        name: i.name.clone(),
                    });
                }
                b.remove_inode(id);
                b.remove(&keys::blocks(id));
                st.resized(self.cached_bytes_of(&i), 0);
                self.drop_data(id);
                tracing::debug!(
                    file_id = id,
                    "object gone from the store before its attributes were read"
                );
                return Ok(None);
            }
            None => {}
            Some(h) => {
                if i.kind == Kind::File && i.dirty_data_bytes() == 0 {
                    let listed = i.remote.etag.is_empty() && h.size == i.size;
                    if !listed && !same_etag(&i.remote.etag, &h.etag) {
                        // Another version than the listing showed: its bytes, not the cached ones.
                        self.drop_cached_in(st, &mut i, b)?;
                        i.size = h.size;
                        i.remote.listed_size = h.size;
                        self.notice(Notice::Inode(id));
                    }
                    i.remote.etag = h.etag.clone();
                } else if i.kind == Kind::Dir {
                    i.remote.etag = h.etag.clone();
                }
                if let Some(a) = h.attrs {
                    let kind = a.mode & 0o170000;
                    if kind == Kind::Symlink.type_bits()
                        && i.kind == Kind::File
                        && let Some(target) = h.symlink_target
                    {
                        self.drop_cached_in(st, &mut i, b)?;
                        i.kind = Kind::Symlink;
                        i.size = target.len() as u64;
                        i.symlink_target = target;
                        i.partial = false;
                        self.drop_data(id);
                    } else if let Some(special) = [Kind::Fifo, Kind::Socket]
                        .into_iter()
                        .find(|k| k.type_bits() == kind && i.kind == Kind::File && h.size == 0)
                    {
                        self.drop_cached_in(st, &mut i, b)?;
                        i.kind = special;
                        i.size = 0;
                        i.partial = false;
                        self.drop_data(id);
                    } else if kind != i.kind.type_bits() {
                        tracing::warn!(
                            file_id = id,
                            mode = format!("{:o}", a.mode),
                            "object metadata names another file type than the object is; its permissions are used"
                        );
                    }
                    let mut perms = a.mode & 0o7777;
                    if !self.opts.import_setid {
                        perms &= if i.kind == Kind::Dir { !0o4000 } else { !0o6000 };
                    }
                    i.uid = a.uid;
                    i.gid = a.gid;
                    i.mode = perms;
                    i.mtime_ns = a.mtime_ns;
                    // What the store holds, as the gateway shows it: no upload follows
                    // from reading it.
                    i.remote.meta = ObjectAttrs {
                        mode: i.st_mode(),
                        ..a
                    };
                } else if !i.is_dirty() {
                    // No POSIX metadata (another S3 client's object): the share's
                    // defaults, never the attributes of a version that is gone.
                    i.uid = self.opts.root_uid;
                    i.gid = self.opts.root_gid;
                    i.mode = match i.kind {
                        Kind::Dir => self.opts.root_mode,
                        _ => self.opts.default_file_mode,
                    } & 0o7777;
                    i.remote.meta = ObjectAttrs {
                        mtime_ns: i.remote.meta.mtime_ns,
                        ..i.object_attrs()
                    };
                }
            }
        }
        Self::put(b, &i);
        Ok(Some(i))
    }

    /// In `b`: `i` holds none of its bytes any more (they are the store's to give).
    fn drop_cached_in(&self, st: &mut State, i: &mut Inode, b: &mut Batch) -> Result<()> {
        if i.kind != Kind::File {
            return Ok(());
        }
        let cached = self.cached_bytes_of(i);
        if cached > 0 {
            st.resized(cached, 0);
            self.file(i.id)?.set_len(0).map_err(CacheError::from_io)?;
        }
        i.partial = true;
        b.remove(&keys::blocks(i.id));
        Ok(())
    }
}
