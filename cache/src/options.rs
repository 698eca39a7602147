//! How a share's cache is set up.

use std::sync::Arc;

use crate::engine::MAX_FILE_SIZE;

#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Longest path (relative to the share prefix, in bytes) a file may have, so its
    /// key stays within S3's 1024-byte limit.
    pub max_path_bytes: usize,
    /// Mode, owner and group of the share's root directory when first created.
    pub root_mode: u32,
    pub root_uid: u32,
    pub root_gid: u32,
    /// Writes that would take dirty bytes past this get `TryLater`.
    pub dirty_limit_bytes: u64,
    /// Clean cached data is evicted (least recently used first) beyond this.
    pub capacity_bytes: u64,
    /// Mode of files the store holds without POSIX metadata (dirs use `root_mode`).
    pub default_file_mode: u32,
    /// Free space on the cache disk kept for the metadata store: WRITE, CREATE,
    /// MKDIR and SYMLINK get `NoSpace` rather than use it. sled treats a failed log
    /// write as fatal (every later call fails until the process restarts), so it
    /// must never be the one to find the disk full.
    pub metadata_reserve_bytes: u64,
    /// Memory for the attribute hot set (decoded inodes of recently used files).
    pub attr_cache_bytes: u64,
    /// Keep setuid/setgid bits read from object metadata (any S3 writer can set
    /// them); off, files lose them and directories keep only setgid.
    pub import_setid: bool,
    /// Names the store would refuse, refused when a file is made or renamed.
    pub key_check: KeyCheck,
    /// Largest file size (WRITE, SETATTR and CREATE past it get `TooBig`); at most
    /// [`MAX_FILE_SIZE`], S3's object size limit.
    pub max_file_size: u64,
}

type RefusesKey = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Why the store could never hold an object at a share-relative path, or `None`.
#[derive(Clone, Default)]
pub struct KeyCheck(Option<Arc<RefusesKey>>);

impl KeyCheck {
    pub fn new(f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> KeyCheck {
        KeyCheck(Some(Arc::new(f)))
    }

    pub(crate) fn refuses(&self, path: &str) -> Option<String> {
        self.0.as_ref().and_then(|f| f(path))
    }
}

impl std::fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "KeyCheck(store)"
        } else {
            "KeyCheck(none)"
        })
    }
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            max_path_bytes: 1024,
            root_mode: 0o777,
            root_uid: 65534,
            root_gid: 65534,
            dirty_limit_bytes: u64::MAX,
            capacity_bytes: u64::MAX,
            default_file_mode: 0o666,
            metadata_reserve_bytes: 16 << 20,
            attr_cache_bytes: 64 << 20,
            import_setid: false,
            key_check: KeyCheck::default(),
            max_file_size: MAX_FILE_SIZE,
        }
    }
}
