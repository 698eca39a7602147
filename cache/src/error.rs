//! The engine's errors. bucketgate's share layer maps them to its `ShareError`, and
//! each front end maps that to its own statuses through one table.

use std::io;

/// What can go wrong in the engine. The share layer turns these into its own errors
/// (and fetches what `NotCached` and `AttrsUnknown` ask for); nothing here knows
/// about NFS or S3 wire formats.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("permission denied")]
    Access,
    #[error("operation not permitted")]
    Perm,
    #[error("invalid argument")]
    Invalid,
    #[error("name too long")]
    NameTooLong,
    #[error("file too large")]
    TooBig,
    #[error("stale file handle")]
    Stale,
    #[error("no space left on the cache disk")]
    NoSpace,
    /// The caller should retry later (dirty limit reached, data still being fetched).
    #[error("try again later")]
    TryLater,
    /// The ctime guard of a SETATTR did not match.
    #[error("attribute guard mismatch")]
    NotSync,
    #[error("bad readdir cookie")]
    BadCookie,
    /// Part of this file's data is only in the store: fetch these byte ranges
    /// (block-aligned, coalesced; `(offset, length)`) and try again.
    #[error("data not cached")]
    NotCached(crate::inode::FileId, Vec<(u64, u64)>),
    /// The attributes of this inode are not read from the store yet (a listing
    /// carries none): no decision and no reply may use the placeholders it has.
    /// Read the object's metadata (a HEAD) and try again.
    #[error("attributes not read from the store yet")]
    AttrsUnknown(crate::inode::FileId),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("metadata store error: {0}")]
    Meta(String),
}

impl From<sled::Error> for CacheError {
    fn from(e: sled::Error) -> Self {
        match e {
            // A full disk under sled is a full cache disk too: NOSPC, not a generic EIO.
            sled::Error::Io(io) => CacheError::from_io(io),
            other => CacheError::Meta(other.to_string()),
        }
    }
}

impl From<bincode::Error> for CacheError {
    fn from(e: bincode::Error) -> Self {
        CacheError::Meta(format!("corrupt record: {e}"))
    }
}

impl CacheError {
    /// ENOSPC and EDQUOT from the cache disk become `NoSpace` so writers get a clear
    /// answer instead of a generic I/O error.
    pub(crate) fn from_io(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => CacheError::NoSpace,
            // sled re-wraps OS errors, keeping only their kind.
            _ if matches!(
                e.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ) =>
            {
                CacheError::NoSpace
            }
            _ => CacheError::Io(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, CacheError>;
