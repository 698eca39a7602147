//! What a file-system operation on a share can answer besides success. Each front end
//! maps these in one table of its own (`nfs::status`, the FUSE errno table); the
//! engine's internal needs (data or attributes still to be fetched) never get here.

use bucketgate_cache::CacheError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
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
    #[error("read-only share")]
    ReadOnly,
    #[error("rename across shares")]
    CrossShare,
    #[error("no space left on the cache disk")]
    NoSpace,
    /// Retry later: the dirty limit is reached, or the store is unreachable for
    /// something only it has.
    #[error("try again later")]
    TryLater,
    /// A SETATTR's ctime guard did not match.
    #[error("attribute guard mismatch")]
    NotSync,
    #[error("bad readdir cookie")]
    BadCookie,
    #[error("I/O error: {0}")]
    Io(String),
}

pub type Result<T> = std::result::Result<T, ShareError>;

impl ShareError {
    /// The POSIX name of the error, for the audit log: the same words whichever
    /// front end answered.
    pub fn code(&self) -> &'static str {
        match self {
            ShareError::NotFound => "ENOENT",
            ShareError::Exists => "EEXIST",
            ShareError::NotDir => "ENOTDIR",
            ShareError::IsDir => "EISDIR",
            ShareError::NotEmpty => "ENOTEMPTY",
            ShareError::Access => "EACCES",
            ShareError::Perm => "EPERM",
            ShareError::Invalid => "EINVAL",
            ShareError::NameTooLong => "ENAMETOOLONG",
            ShareError::TooBig => "EFBIG",
            ShareError::Stale => "ESTALE",
            ShareError::ReadOnly => "EROFS",
            ShareError::CrossShare => "EXDEV",
            ShareError::NoSpace => "ENOSPC",
            ShareError::TryLater => "EAGAIN",
            ShareError::NotSync => "NOT_SYNC",
            ShareError::BadCookie => "BAD_COOKIE",
            ShareError::Io(_) => "EIO",
        }
    }
}

impl From<CacheError> for ShareError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::NotFound => ShareError::NotFound,
            CacheError::Exists => ShareError::Exists,
            CacheError::NotDir => ShareError::NotDir,
            CacheError::IsDir => ShareError::IsDir,
            CacheError::NotEmpty => ShareError::NotEmpty,
            CacheError::Access => ShareError::Access,
            CacheError::Perm => ShareError::Perm,
            CacheError::Invalid => ShareError::Invalid,
            CacheError::NameTooLong => ShareError::NameTooLong,
            CacheError::TooBig => ShareError::TooBig,
            CacheError::Stale => ShareError::Stale,
            CacheError::NoSpace => ShareError::NoSpace,
            // The share layer fetches what the engine needs; one that is still
            // missing after its rounds is a store that cannot answer now.
            CacheError::TryLater | CacheError::NotCached(..) | CacheError::AttrsUnknown(_) => {
                ShareError::TryLater
            }
            CacheError::NotSync => ShareError::NotSync,
            CacheError::BadCookie => ShareError::BadCookie,
            CacheError::Io(e) => ShareError::Io(e.to_string()),
            CacheError::Meta(m) => ShareError::Io(m),
        }
    }
}
