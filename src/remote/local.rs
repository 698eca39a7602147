//! [`ObjectStore`] on a local directory standing in for a bucket: the embedded
//! default, no AWS needed. It keeps S3's semantics for everything the trait exposes.
//!
//! On-disk layout (an operator can browse the objects with ordinary tools):
//!
//! ```text
//! <root>/a/b/c                            object "a/b/c", its bytes as they are
//! <root>/a/b/                             directory: object "a/b/" when it is a marker,
//!                                         otherwise only a path to deeper objects
//! <root>/.bucketgate/meta/<hh>/<hash>.json  sidecar of one key (object or marker)
//! <root>/.bucketgate/uploads/<id>/        one multipart upload: info.json and
//!                                         part-<nnnnn>.<etag> files
//! <root>/.bucketgate/tmp/                 temp files, renamed into place when complete
//! ```
//!
//! `.bucketgate` is hidden from listings and is not a valid first key segment.
//!
//! Sidecars: `<hash>` is FNV-1a-128 of the key (`<hh>` its first byte, to keep
//! directories small). The JSON holds the key, the ETag, the POSIX metadata and the
//! size and mtime (ns) of the data file it describes. A sidecar whose size/mtime do
//! not match the data file (a file replaced by hand, or a crash between the two
//! renames of a write) is ignored: `head` then reports no metadata, exactly like an
//! S3 object written without it. A directory is a *marker* ("a/b/") only when its
//! sidecar exists; directories that exist only to hold deeper objects are not
//! objects, as in S3.
//!
//! Writes are atomic and durable when they return: data goes to a temp file, is
//! fsynced, and is renamed over the key (after its sidecar), then both parent
//! directories are fsynced. The sidecar and data renames of one write happen
//! under one lock, so concurrent writers of a key cannot pair one writer's data
//! with another's sidecar.
//!
//! ETag: a random 128-bit hex tag drawn for every write (so it changes on every
//! write, even with identical bytes; it is not an MD5). Multipart objects get
//! `<tag>-<parts>`, markers the MD5 of the empty string, as S3 gives them. A file
//! without a valid sidecar gets a tag derived from its inode, size and mtime.
//!
//! Deleting an object removes parent directories that became empty, stopping at
//! the first marker (S3 has no directories: the now-empty implicit path would
//! otherwise keep showing as a common prefix, while a marker is an object of its
//! own and must survive its children).
//!
//! Differences from S3 that the gateway never relies on: keys with empty, `.` or
//! `..` segments are refused (`InvalidKey`), and a key cannot be both an object and
//! a path to deeper keys ("a/b" and "a/b/c"): that write fails with `KeyConflict`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    CompletedPart, ListPage, ObjectAttrs, ObjectInfo, ObjectStore, PartBody, StoreError, StoreResult,
};

const SYS_DIR: &str = ".bucketgate";
const MARKER_ETAG: &str = "d41d8cd98f00b204e9800998ecf8427e";
const MAX_KEY_BYTES: usize = 1024;
const MIN_PART_BYTES: u64 = 5 << 20;
const MAX_PART_NUMBER: i32 = 10_000;
const MAX_LIST_KEYS: usize = 1000;

#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// Held around the renames and directory creations/removals that change the
    /// visible namespace, so a write never races a delete's empty-directory cleanup.
    ns_lock: Mutex<()>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct MetaJson {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime_ns: u64,
}

impl From<&ObjectAttrs> for MetaJson {
    fn from(m: &ObjectAttrs) -> Self {
        MetaJson {
            uid: m.uid,
            gid: m.gid,
            mode: m.mode,
            mtime_ns: m.mtime_ns,
        }
    }
}

impl From<MetaJson> for ObjectAttrs {
    fn from(m: MetaJson) -> Self {
        ObjectAttrs {
            uid: m.uid,
            gid: m.gid,
            mode: m.mode,
            mtime_ns: m.mtime_ns,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    key: String,
    etag: String,
    /// Size and mtime of the data file this sidecar belongs to (0/0 for markers).
    size: u64,
    data_mtime_ns: u64,
    meta: Option<MetaJson>,
}

#[derive(Debug, Serialize, Deserialize)]
struct UploadInfo {
    key: String,
    meta: Option<MetaJson>,
}

fn permanent(code: &str, message: impl Into<String>) -> StoreError {
    StoreError::Permanent {
        code: code.into(),
        message: message.into(),
    }
}

/// Maps an I/O error. `NotFound` is not mapped to [`StoreError::NotFound`] here:
/// callers decide where a missing path means a missing object.
fn io_err(op: &str, path: &Path, e: io::Error) -> StoreError {
    use io::ErrorKind::*;
    let message = format!("{op} {}: {e}", path.display());
    match e.kind() {
        PermissionDenied | ReadOnlyFilesystem => permanent("AccessDenied", message),
        NotADirectory | IsADirectory | AlreadyExists | DirectoryNotEmpty => permanent("KeyConflict", message),
        InvalidFilename | FileTooLarge => permanent("InvalidKey", message),
        StorageFull | QuotaExceeded => StoreError::Transient {
            code: "StorageFull".into(),
            message,
        },
        _ => StoreError::Transient {
            code: "IoError".into(),
            message,
        },
    }
}

fn mtime_ns(md: &fs::Metadata) -> u64 {
    (md.mtime().max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec().max(0) as u64)
}

fn random_tag() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn fnv1a128(data: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    data.iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

fn derived_etag(md: &fs::Metadata) -> String {
    let mut buf = Vec::with_capacity(24);
    buf.extend_from_slice(&md.ino().to_le_bytes());
    buf.extend_from_slice(&mtime_ns(md).to_le_bytes());
    buf.extend_from_slice(&md.len().to_le_bytes());
    format!("{:032x}", fnv1a128(&buf))
}

/// Refuses keys that could not be a plain path under the root. Returns the key
/// without a marker's trailing slash.
fn check_key(key: &str) -> StoreResult<&str> {
    let bad = |why: &str| permanent("InvalidKey", format!("key `{key}`: {why}"));
    if key.is_empty() {
        return Err(bad("empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(permanent(
            "KeyTooLongError",
            format!("key of {} bytes (limit {MAX_KEY_BYTES})", key.len()),
        ));
    }
    let body = key.strip_suffix('/').unwrap_or(key);
    if body.is_empty() || body.starts_with('/') {
        return Err(bad("starts with '/'"));
    }
    for seg in body.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad("has an empty, `.` or `..` segment"));
        }
        if seg.contains('\0') {
            return Err(bad("contains NUL"));
        }
    }
    if body.split('/').next() == Some(SYS_DIR) {
        return Err(bad("`.bucketgate` is reserved"));
    }
    Ok(body)
}

/// Copies `len` bytes of `src` at `from` into `dst` at `to`, holes and all: only the
/// ranges `src` holds data for are read and written (SEEK_DATA / SEEK_HOLE), and
/// bytes past `src`'s end are a hole in `dst` too. A sparse 5 TiB file costs what
/// it holds, not 5 TiB of zeros.
fn copy_sparse(src: &File, from: u64, len: u64, dst: &File, to: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let end = from + len;
    let seek = |pos: u64, whence| {
        // SAFETY: lseek on a valid descriptor; the position it moves is used by no
        // reader or writer here (all use pread/pwrite).
        let r = unsafe { libc::lseek(src.as_raw_fd(), pos as libc::off_t, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    let mut buf = vec![0u8; super::body::CHUNK];
    let mut pos = from;
    while pos < end {
        let data = match seek(pos, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e),
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.min(end);
        let mut at = data;
        while at < hole {
            let want = buf.len().min((hole - at) as usize);
            let n = src.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            dst.write_all_at(&buf[..n], to + (at - from))?;
            at += n as u64;
        }
        pos = hole;
    }
    if dst.metadata()?.len() < to + len {
        dst.set_len(to + len)?;
    }
    Ok(())
}

/// Opens an object for reading, never through a symlink at its last component.
fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn check_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes the path on drop unless disarmed: temp files never outlive a failure.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("armed")
    }
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

fn fsync_dir(dir: &Path) -> StoreResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync", dir, e))
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`. Temp files older than an
    /// hour, left by a crash, are removed.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<LocalStore> {
        let root = root.into();
        for sub in ["meta", "uploads", "tmp"] {
            fs::create_dir_all(root.join(SYS_DIR).join(sub))?;
        }
        let root = root.canonicalize()?;
        let tmp = root.join(SYS_DIR).join("tmp");
        let cutoff = SystemTime::now() - Duration::from_secs(3600);
        for entry in fs::read_dir(&tmp)?.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t < cutoff)
                .unwrap_or(false);
            if old {
                let p = entry.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        Ok(LocalStore {
            inner: Arc::new(Inner {
                root,
                ns_lock: Mutex::new(()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Transient {
                code: "TaskFailed".into(),
                message: e.to_string(),
            })?
    }
}

impl Inner {
    fn sys(&self) -> PathBuf {
        self.root.join(SYS_DIR)
    }

    /// The path of `body_key` under the root. One that goes through a symlink is
    /// refused: whoever may write the bucket directory could otherwise point the
    /// share at any file the gateway may open. (A symlink swapped in between this
    /// check and the use is not caught; objects are opened with O_NOFOLLOW, so the
    /// last component cannot be one.)
    fn object_path(&self, body_key: &str) -> StoreResult<PathBuf> {
        let mut p = self.root.clone();
        for seg in body_key.split('/') {
            p.push(seg);
            match fs::symlink_metadata(&p) {
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(permanent(
                        "InvalidKey",
                        format!(
                            "{}: a symlink in the bucket directory is not followed",
                            p.display()
                        ),
                    ));
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => break,
                Err(e) => return Err(io_err("stat", &p, e)),
            }
        }
        Ok(self.root.join(body_key))
    }

    fn sidecar_path(&self, key: &str) -> PathBuf {
        let h = format!("{:032x}", fnv1a128(key.as_bytes()));
        self.sys().join("meta").join(&h[..2]).join(format!("{h}.json"))
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.sys().join("uploads").join(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ns_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_temp(&self) -> StoreResult<(File, TempGuard)> {
        let path = self.sys().join("tmp").join(random_tag());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err("create", &path, e))?;
        Ok((file, TempGuard(Some(path))))
    }

    fn read_sidecar(&self, key: &str) -> Option<Sidecar> {
        let bytes = fs::read(self.sidecar_path(key)).ok()?;
        let sc: Sidecar = serde_json::from_slice(&bytes).ok()?;
        (sc.key == key).then_some(sc)
    }

    /// Writes a sidecar to a temp file (fsynced); the caller renames it into place.
    fn stage_sidecar(&self, sc: &Sidecar) -> StoreResult<TempGuard> {
        let (mut f, guard) = self.new_temp()?;
        let json = serde_json::to_vec(sc).expect("sidecar serializes");
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err("write", guard.path(), e))?;
        Ok(guard)
    }

    fn install_sidecar(&self, key: &str, mut staged: TempGuard) -> StoreResult<()> {
        let dst = self.sidecar_path(key);
        let dir = dst.parent().expect("sidecar has a parent");
        fs::create_dir_all(dir).map_err(|e| io_err("mkdir", dir, e))?;
        fs::rename(staged.path(), &dst).map_err(|e| io_err("rename", &dst, e))?;
        staged.disarm();
        Ok(())
    }

    fn is_marker(&self, dir_key: &str) -> bool {
        self.read_sidecar(dir_key).is_some()
    }

    /// Commits a fully written, fsynced temp file as object `key`. Returns the ETag.
    fn commit_object(
        &self,
        key: &str,
        body_key: &str,
        mut data: TempGuard,
        meta: Option<MetaJson>,
        etag: String,
    ) -> StoreResult<String> {
        let md = fs::metadata(data.path()).map_err(|e| io_err("stat", data.path(), e))?;
        let sc = Sidecar {
            key: key.to_owned(),
            etag: etag.clone(),
            size: md.len(),
            data_mtime_ns: mtime_ns(&md),
            meta,
        };
        let staged = self.stage_sidecar(&sc)?;
        let dst = self.object_path(body_key)?;
        let parent = dst.parent().expect("object path has a parent").to_owned();
        {
            let _g = self.lock();
            fs::create_dir_all(&parent).map_err(|e| io_err("mkdir", &parent, e))?;
            if fs::symlink_metadata(&dst).map(|m| m.is_dir()).unwrap_or(false) {
                return Err(permanent(
                    "KeyConflict",
                    format!("key `{key}`: a directory of deeper keys exists there"),
                ));
            }
            self.install_sidecar(key, staged)?;
            fs::rename(data.path(), &dst).map_err(|e| io_err("rename", &dst, e))?;
            data.disarm();
        }
        // Both renames durable before the write is reported done: the uploader
        // marks the file clean on our answer.
        fsync_dir(&parent)?;
        fsync_dir(self.sidecar_path(key).parent().expect("sidecar has a parent"))?;
        Ok(etag)
    }

    fn put_marker(&self, key: &str, body_key: &str, meta: Option<MetaJson>) -> StoreResult<String> {
        let sc = Sidecar {
            key: key.to_owned(),
            etag: MARKER_ETAG.into(),
            size: 0,
            data_mtime_ns: 0,
            meta,
        };
        let staged = self.stage_sidecar(&sc)?;
        let dir = self.object_path(body_key)?;
        {
            let _g = self.lock();
            fs::create_dir_all(&dir).map_err(|e| io_err("mkdir", &dir, e))?;
            self.install_sidecar(key, staged)?;
        }
        fsync_dir(dir.parent().expect("marker has a parent"))?;
        fsync_dir(self.sidecar_path(key).parent().expect("sidecar has a parent"))?;
        Ok(MARKER_ETAG.into())
    }

    fn put(&self, key: &str, body: &[u8], meta: Option<MetaJson>, etag: String) -> StoreResult<String> {
        let body_key = check_key(key)?;
        if key.ends_with('/') {
            if !body.is_empty() {
                return Err(permanent(
                    "InvalidArgument",
                    format!("directory marker `{key}` must be empty"),
                ));
            }
            return self.put_marker(key, body_key, meta);
        }
        let (mut f, guard) = self.new_temp()?;
        f.write_all(body)
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err("write", guard.path(), e))?;
        drop(f);
        self.commit_object(key, body_key, guard, meta, etag)
    }

    fn head(&self, key: &str) -> StoreResult<Option<ObjectInfo>> {
        let body_key = check_key(key)?;
        let path = self.object_path(body_key)?;
        if key.ends_with('/') {
            let is_dir = fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
            let sc_path = self.sidecar_path(key);
            let sc = if is_dir { self.read_sidecar(key) } else { None };
            return Ok(sc.map(|sc| ObjectInfo {
                key: key.to_owned(),
                size: 0,
                etag: sc.etag,
                last_modified_ns: fs::metadata(&sc_path).ok().map(|m| mtime_ns(&m)),
                meta: sc.meta.map(Into::into),
                version_id: None,
            }));
        }
        let md = match fs::symlink_metadata(&path) {
            Ok(md) if md.is_file() => md,
            Ok(_) => return Ok(None),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                return Ok(None);
            }
            Err(e) => return Err(io_err("stat", &path, e)),
        };
        Ok(Some(self.info_for(key, &md)))
    }

    fn info_for(&self, key: &str, md: &fs::Metadata) -> ObjectInfo {
        let sc = self
            .read_sidecar(key)
            .filter(|sc| sc.size == md.len() && sc.data_mtime_ns == mtime_ns(md));
        let (etag, meta) = match sc {
            Some(sc) => (sc.etag, sc.meta.map(Into::into)),
            None => (derived_etag(md), None),
        };
        ObjectInfo {
            key: key.to_owned(),
            size: md.len(),
            etag,
            last_modified_ns: Some(mtime_ns(md)),
            meta,
            version_id: None,
        }
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> StoreResult<Bytes> {
        let body_key = check_key(key)?;
        if key.ends_with('/') {
            return match self.head(key)? {
                Some(_) => Ok(Bytes::new()),
                None => Err(StoreError::NotFound),
            };
        }
        let path = self.object_path(body_key)?;
        let mut f = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                return Err(StoreError::NotFound);
            }
            Err(e) => return Err(io_err("open", &path, e)),
        };
        let md = f.metadata().map_err(|e| io_err("stat", &path, e))?;
        if !md.is_file() {
            return Err(StoreError::NotFound);
        }
        let size = md.len();
        if start >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let n = len.min(size - start);
        let mut buf = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.take(n).read_to_end(&mut buf))
            .map_err(|e| io_err("read", &path, e))?;
        Ok(Bytes::from(buf))
    }

    fn delete(&self, key: &str) -> StoreResult<()> {
        let body_key = check_key(key)?;
        let path = self.object_path(body_key)?;
        let sc_path = self.sidecar_path(key);
        let _g = self.lock();
        if key.ends_with('/') {
            if !self.is_marker(key) {
                return Ok(());
            }
            match fs::remove_file(&sc_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("unlink", &sc_path, e)),
            }
            // The directory stays when it still holds deeper objects.
            if fs::remove_dir(&path).is_ok() {
                self.prune_parents(&path);
            }
            return Ok(());
        }
        match fs::symlink_metadata(&path) {
            Ok(md) if md.is_file() => {}
            Ok(_) => return Ok(()),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                return Ok(());
            }
            Err(e) => return Err(io_err("stat", &path, e)),
        }
        fs::remove_file(&path).map_err(|e| io_err("unlink", &path, e))?;
        let _ = fs::remove_file(&sc_path);
        self.prune_parents(&path);
        Ok(())
    }

    /// Removes now-empty parent directories of `path` up to the root, stopping at a
    /// marker or a non-empty directory. Called with the namespace lock held.
    fn prune_parents(&self, path: &Path) {
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) {
                break;
            }
            let Ok(rel) = d.strip_prefix(&self.root) else {
                break;
            };
            let Some(rel) = rel.to_str() else { break };
            if self.is_marker(&format!("{rel}/")) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    /// Opens an object's data for copying: (file or None for a marker, size,
    /// metadata of the version opened).
    fn open_source(&self, key: &str) -> StoreResult<(Option<File>, u64, Option<MetaJson>)> {
        let body_key = check_key(key)?;
        if key.ends_with('/') {
            let info = self.head(key)?.ok_or(StoreError::NotFound)?;
            return Ok((None, 0, info.meta.as_ref().map(Into::into)));
        }
        let path = self.object_path(body_key)?;
        let f = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                return Err(StoreError::NotFound);
            }
            Err(e) => return Err(io_err("open", &path, e)),
        };
        // Stat the open handle: a concurrent rewrite replaces the path's inode, not
        // this one, so the bytes and the metadata checked here stay a matching pair.
        let md = f.metadata().map_err(|e| io_err("stat", &path, e))?;
        if !md.is_file() {
            return Err(StoreError::NotFound);
        }
        let meta = self.info_for(key, &md).meta.as_ref().map(Into::into);
        Ok((Some(f), md.len(), meta))
    }

    /// Copies `len` bytes from `src` at `start` into a new fsynced temp file.
    fn copy_to_temp(&self, src: Option<File>, start: u64, len: u64) -> StoreResult<TempGuard> {
        let (dst, guard) = self.new_temp()?;
        if let Some(src) = src {
            copy_sparse(&src, start, len, &dst, 0)
                .and_then(|_| dst.sync_all())
                .map_err(|e| io_err("copy", guard.path(), e))?;
        }
        Ok(guard)
    }

    fn copy(&self, src_key: &str, dst_key: &str, meta: Option<MetaJson>) -> StoreResult<String> {
        let dst_body = check_key(dst_key)?;
        if src_key == dst_key && meta.is_none() {
            return Err(permanent(
                "InvalidRequest",
                "copying an object to itself without changing its metadata is not allowed",
            ));
        }
        let (src, size, src_meta) = self.open_source(src_key)?;
        let meta = meta.or(src_meta);
        if dst_key.ends_with('/') {
            if size != 0 {
                return Err(permanent(
                    "InvalidArgument",
                    format!("directory marker `{dst_key}` must be empty"),
                ));
            }
            return self.put_marker(dst_key, dst_body, meta);
        }
        let data = self.copy_to_temp(src, 0, size)?;
        self.commit_object(dst_key, dst_body, data, meta, random_tag())
    }

    fn load_upload(&self, key: &str, id: &str) -> StoreResult<UploadInfo> {
        if !check_upload_id(id) {
            return Err(StoreError::NotFound);
        }
        let path = self.upload_dir(id).join("info.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(io_err("read", &path, e)),
        };
        let info: UploadInfo = serde_json::from_slice(&bytes).map_err(|e| StoreError::Transient {
            code: "CorruptUpload".into(),
            message: format!("{}: {e}", path.display()),
        })?;
        // S3 answers NoSuchUpload when the key does not match the upload id.
        if info.key != key {
            return Err(StoreError::NotFound);
        }
        Ok(info)
    }

    fn create_multipart(&self, key: &str, meta: MetaJson) -> StoreResult<String> {
        check_key(key)?;
        if key.ends_with('/') {
            return Err(permanent(
                "InvalidArgument",
                format!("directory marker `{key}` cannot be a multipart upload"),
            ));
        }
        let id = random_tag();
        // Build the upload directory under tmp and rename it into place, so a crash
        // never leaves an upload without its info.json.
        let staging = self.sys().join("tmp").join(random_tag());
        let guard = TempGuard(Some(staging.clone()));
        fs::create_dir(&staging).map_err(|e| io_err("mkdir", &staging, e))?;
        let info = serde_json::to_vec(&UploadInfo {
            key: key.to_owned(),
            meta: Some(meta),
        })
        .expect("serializes");
        let info_path = staging.join("info.json");
        File::create(&info_path)
            .and_then(|mut f| f.write_all(&info).and_then(|_| f.sync_all()))
            .map_err(|e| io_err("write", &info_path, e))?;
        let dst = self.upload_dir(&id);
        fs::rename(&staging, &dst).map_err(|e| io_err("rename", &dst, e))?;
        let mut guard = guard;
        guard.disarm();
        Ok(id)
    }

    fn check_part_number(n: i32) -> StoreResult<()> {
        if (1..=MAX_PART_NUMBER).contains(&n) {
            Ok(())
        } else {
            Err(permanent(
                "InvalidArgument",
                format!("part number {n} is not in 1..={MAX_PART_NUMBER}"),
            ))
        }
    }

    /// Installs a staged part as `part-<nnnnn>.<etag>`, replacing earlier uploads of
    /// the same part number.
    fn commit_part(&self, id: &str, part_number: i32, mut data: TempGuard) -> StoreResult<String> {
        let etag = random_tag();
        let dir = self.upload_dir(id);
        let name_prefix = format!("part-{part_number:05}.");
        let dst = dir.join(format!("{name_prefix}{etag}"));
        let _g = self.lock();
        match fs::rename(data.path(), &dst) {
            Ok(()) => data.disarm(),
            // Aborted meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(io_err("rename", &dst, e)),
        }
        for entry in fs::read_dir(&dir)
            .map_err(|e| io_err("readdir", &dir, e))?
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&name_prefix) && entry.path() != dst {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(etag)
    }

    fn upload_part(&self, key: &str, id: &str, part_number: i32, body: PartBody) -> StoreResult<String> {
        Self::check_part_number(part_number)?;
        self.load_upload(key, id)?;
        let (mut f, guard) = self.new_temp()?;
        match body {
            PartBody::Memory(b) => f.write_all(&b),
            PartBody::File { file, offset, len } => copy_sparse(&file, offset, len, &f, 0),
        }
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err("write", guard.path(), e))?;
        drop(f);
        self.commit_part(id, part_number, guard)
    }

    fn upload_part_copy(
        &self,
        key: &str,
        id: &str,
        part_number: i32,
        src_key: &str,
        start: u64,
        end: u64,
    ) -> StoreResult<String> {
        Self::check_part_number(part_number)?;
        self.load_upload(key, id)?;
        let (src, size, _) = self.open_source(src_key)?;
        if start > end || end >= size {
            return Err(permanent(
                "InvalidRange",
                format!("bytes={start}-{end} of `{src_key}` ({size} bytes)"),
            ));
        }
        let data = self.copy_to_temp(src, start, end - start + 1)?;
        self.commit_part(id, part_number, data)
    }

    fn complete(&self, key: &str, id: &str, parts: &[CompletedPart]) -> StoreResult<String> {
        let body_key = check_key(key)?;
        let info = self.load_upload(key, id)?;
        if parts.is_empty() {
            return Err(permanent(
                "MalformedXML",
                "a multipart upload needs at least one part",
            ));
        }
        if parts.windows(2).any(|w| w[0].part_number >= w[1].part_number) {
            return Err(permanent(
                "InvalidPartOrder",
                "part numbers must be strictly ascending",
            ));
        }
        let dir = self.upload_dir(id);
        let (out, guard) = self.new_temp()?;
        let mut written = 0;
        for (i, p) in parts.iter().enumerate() {
            let etag = p.etag.trim_matches('"');
            let path = dir.join(format!("part-{:05}.{etag}", p.part_number));
            let bad = || {
                permanent(
                    "InvalidPart",
                    format!("part {} with ETag {etag} was not uploaded", p.part_number),
                )
            };
            if !check_upload_id(etag) {
                return Err(bad());
            }
            let f = match open_nofollow(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(bad()),
                Err(e) => return Err(io_err("open", &path, e)),
            };
            let n = f.metadata().map_err(|e| io_err("stat", &path, e))?.len();
            copy_sparse(&f, 0, n, &out, written).map_err(|e| io_err("copy", &path, e))?;
            written += n;
            if i + 1 < parts.len() && n < MIN_PART_BYTES {
                return Err(permanent(
                    "EntityTooSmall",
                    format!(
                        "part {} is {n} bytes; all but the last must be at least {MIN_PART_BYTES}",
                        p.part_number
                    ),
                ));
            }
        }
        out.sync_all().map_err(|e| io_err("fsync", guard.path(), e))?;
        drop(out);
        let etag = format!("{}-{}", random_tag(), parts.len());
        let etag = self.commit_object(key, body_key, guard, info.meta, etag)?;
        // After the object is in place: a crash before this line leaves the upload
        // listed, and completing it again rebuilds the same object.
        let _ = fs::remove_dir_all(&dir);
        Ok(etag)
    }

    fn abort(&self, key: &str, id: &str) -> StoreResult<()> {
        match self.load_upload(key, id) {
            Ok(_) => {}
            Err(StoreError::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        }
        let dir = self.upload_dir(id);
        let _g = self.lock();
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("rmdir", &dir, e)),
        }
    }

    fn list_uploads(&self, prefix: &str) -> StoreResult<Vec<(String, String)>> {
        let dir = self.sys().join("uploads");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir)
            .map_err(|e| io_err("readdir", &dir, e))?
            .flatten()
        {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !check_upload_id(&id) {
                continue;
            }
            let Ok(bytes) = fs::read(entry.path().join("info.json")) else {
                continue;
            };
            let Ok(info) = serde_json::from_slice::<UploadInfo>(&bytes) else {
                continue;
            };
            if info.key.starts_with(prefix) {
                out.push((info.key, id));
            }
        }
        out.sort();
        Ok(out)
    }

    fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: i32,
    ) -> StoreResult<ListPage> {
        let max = match usize::try_from(max_keys) {
            Ok(0) | Err(_) => return Ok(ListPage::default()),
            Ok(n) => n.min(MAX_LIST_KEYS),
        };
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let mut l = Lister {
            inner: self,
            prefix,
            delimiter,
            after,
            max,
            page: ListPage::default(),
            last: None,
            full: false,
        };
        // Start at the deepest directory the prefix names; a prefix that could not
        // be a path (".." etc.) matches no key.
        let (dir_key, start) = match prefix.rfind('/') {
            Some(i) => {
                let d = &prefix[..=i];
                if check_key(d).is_err() {
                    return Ok(ListPage::default());
                }
                (d.to_owned(), self.object_path(&d[..i])?)
            }
            None => (String::new(), self.root.clone()),
        };
        if !dir_key.is_empty() {
            // The start directory's own marker is a key of the listing only when
            // the prefix names exactly that directory.
            if fs::metadata(&start).map(|m| m.is_dir()).unwrap_or(false) {
                if dir_key == prefix && self.is_marker(&dir_key) {
                    l.emit_key(&dir_key, None)?;
                }
                l.walk(&start, &dir_key)?;
            }
        } else {
            l.walk(&start, "")?;
        }
        let mut page = l.page;
        if l.full {
            page.next_token = l.last;
        }
        Ok(page)
    }
}

/// One page of a listing, walked in S3's key order: in every directory, entries are
/// visited sorted by their key (a directory sorts as `name/`), which makes the
/// depth-first walk produce keys in global lexicographic byte order.
struct Lister<'a> {
    inner: &'a Inner,
    prefix: &'a str,
    delimiter: Option<&'a str>,
    after: Option<&'a str>,
    max: usize,
    page: ListPage,
    /// Last object key or common prefix emitted: the continuation token.
    last: Option<String>,
    /// A further item exists beyond a full page.
    full: bool,
}

impl Lister<'_> {
    /// Walks directory `dir` whose keys start with `dir_key` ("" or ending in '/').
    fn walk(&mut self, dir: &Path, dir_key: &str) -> StoreResult<()> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("readdir", dir, e)),
        };
        let mut entries = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| io_err("readdir", dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if dir_key.is_empty() && name == SYS_DIR {
                continue;
            }
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                entries.push((format!("{dir_key}{name}/"), true));
            } else if ft.is_file() {
                entries.push((format!("{dir_key}{name}"), false));
            }
        }
        entries.sort();
        for (key, is_dir) in entries {
            if self.full {
                return Ok(());
            }
            let path = dir.join(key[dir_key.len()..].trim_end_matches('/'));
            if !is_dir {
                if key.starts_with(self.prefix) {
                    self.emit_key(&key, Some(&path))?;
                }
                continue;
            }
            // Skip subtrees that cannot hold a key in the prefix, or whose keys all
            // sort at or before the continuation point.
            if !(key.starts_with(self.prefix) || self.prefix.starts_with(&key)) {
                continue;
            }
            if let Some(a) = self.after
                && key.as_str() < a
                && !a.starts_with(&key)
            {
                continue;
            }
            if self.delimiter == Some("/") && key.starts_with(self.prefix) && key.len() > self.prefix.len() {
                // Everything below rolls up into this one common prefix.
                if self.after.is_none_or(|a| key.as_str() > a) && self.subtree_has_keys(&path, &key) {
                    self.emit_item(key, None)?;
                }
                continue;
            }
            if key.starts_with(self.prefix) && self.inner.is_marker(&key) {
                self.emit_key(&key, None)?;
            }
            self.walk(&path, &key)?;
        }
        Ok(())
    }

    fn subtree_has_keys(&self, dir: &Path, dir_key: &str) -> bool {
        if self.inner.is_marker(dir_key) {
            return true;
        }
        let Ok(rd) = fs::read_dir(dir) else {
            return false;
        };
        for entry in rd.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if ft.is_file() {
                return true;
            }
            if ft.is_dir() && self.subtree_has_keys(&entry.path(), &format!("{dir_key}{name}/")) {
                return true;
            }
        }
        false
    }

    /// A key matching the prefix: an object, or part of a common prefix.
    fn emit_key(&mut self, key: &str, path: Option<&Path>) -> StoreResult<()> {
        if let Some(d) = self.delimiter
            && let Some(i) = key[self.prefix.len()..].find(d)
        {
            let cp = key[..self.prefix.len() + i + d.len()].to_owned();
            return self.emit_item(cp, None);
        }
        if self.after.is_some_and(|a| key <= a) {
            return Ok(());
        }
        let info = match path {
            Some(p) => match fs::symlink_metadata(p) {
                Ok(md) if md.is_file() => self.inner.info_for(key, &md),
                _ => return Ok(()), // deleted meanwhile
            },
            None => match self.inner.head(key)? {
                Some(mut info) => {
                    info.meta = None;
                    info
                }
                None => return Ok(()),
            },
        };
        self.emit_item(key.to_owned(), Some(ObjectInfo { meta: None, ..info }))
    }

    /// Adds an object (`Some`) or a common prefix (`None`) unless it is at or before
    /// the continuation point or repeats the previous prefix.
    fn emit_item(&mut self, key: String, obj: Option<ObjectInfo>) -> StoreResult<()> {
        if self.after.is_some_and(|a| key.as_str() <= a) {
            return Ok(());
        }
        if obj.is_none() && self.page.common_prefixes.last() == Some(&key) {
            return Ok(());
        }
        if self.page.objects.len() + self.page.common_prefixes.len() >= self.max {
            self.full = true;
            return Ok(());
        }
        match obj {
            Some(o) => self.page.objects.push(o),
            None => self.page.common_prefixes.push(key.clone()),
        }
        self.last = Some(key);
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_object(&self, key: &str, body: Bytes, meta: &ObjectAttrs) -> StoreResult<String> {
        let (key, meta) = (key.to_owned(), MetaJson::from(meta));
        self.run(move |s| s.put(&key, &body, Some(meta), random_tag()))
            .await
    }

    async fn create_multipart(&self, key: &str, meta: &ObjectAttrs) -> StoreResult<String> {
        let (key, meta) = (key.to_owned(), MetaJson::from(meta));
        self.run(move |s| s.create_multipart(&key, meta)).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: PartBody,
    ) -> StoreResult<String> {
        let (key, id) = (key.to_owned(), upload_id.to_owned());
        self.run(move |s| s.upload_part(&key, &id, part_number, body))
            .await
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
        let (key, id, src) = (key.to_owned(), upload_id.to_owned(), src_key.to_owned());
        self.run(move |s| s.upload_part_copy(&key, &id, part_number, &src, start, end_inclusive))
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> StoreResult<String> {
        let (key, id, parts) = (key.to_owned(), upload_id.to_owned(), parts.to_vec());
        self.run(move |s| s.complete(&key, &id, &parts)).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let (key, id) = (key.to_owned(), upload_id.to_owned());
        self.run(move |s| s.abort(&key, &id)).await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<(String, String)>> {
        let prefix = prefix.to_owned();
        self.run(move |s| s.list_uploads(&prefix)).await
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> StoreResult<Bytes> {
        let key = key.to_owned();
        self.run(move |s| s.get_range(&key, start, len)).await
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectInfo>> {
        let key = key.to_owned();
        self.run(move |s| s.head(&key)).await
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<&str>,
        max_keys: i32,
    ) -> StoreResult<ListPage> {
        let (prefix, delimiter, after) = (
            prefix.to_owned(),
            delimiter.map(str::to_owned),
            continuation.map(str::to_owned),
        );
        self.run(move |s| s.list(&prefix, delimiter.as_deref(), after.as_deref(), max_keys))
            .await
    }

    async fn copy_object(
        &self,
        src_key: &str,
        dst_key: &str,
        meta: Option<&ObjectAttrs>,
    ) -> StoreResult<String> {
        let (src, dst, meta) = (src_key.to_owned(), dst_key.to_owned(), meta.map(MetaJson::from));
        self.run(move |s| s.copy(&src, &dst, meta)).await
    }

    fn refuses_key(&self, key: &str) -> Option<String> {
        check_key(key).err().map(|e| e.to_string())
    }

    async fn delete_object(&self, key: &str) -> StoreResult<()> {
        let key = key.to_owned();
        self.run(move |s| s.delete(&key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_are_refused() {
        for k in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "..",
            "./a",
            "a/./b",
            ".bucketgate/meta/x",
            "/",
            "a\0b",
        ] {
            assert!(matches!(check_key(k), Err(StoreError::Permanent { .. })), "{k:?}");
        }
        assert_eq!(check_key("a/b/").unwrap(), "a/b");
        assert_eq!(check_key("a/.hidden").unwrap(), "a/.hidden");
        assert!(check_key(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn sidecar_paths_are_stable() {
        // Persisted on disk: the hash must never change between versions.
        assert_eq!(
            format!("{:032x}", fnv1a128(b"")),
            "6c62272e07bb014262b821756295c58d"
        );
        assert_eq!(
            format!("{:032x}", fnv1a128(b"a")),
            "d228cb696f1a8caf78912b704e4a8964"
        );
    }
}
