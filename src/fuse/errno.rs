//! The one table from the share layer's errors to errno values for FUSE replies.

use fuser::Errno;

use crate::share::ShareError;

pub(super) fn of(e: &ShareError) -> Errno {
    let code = match e {
        ShareError::NotFound => libc::ENOENT,
        ShareError::Exists => libc::EEXIST,
        ShareError::NotDir => libc::ENOTDIR,
        ShareError::IsDir => libc::EISDIR,
        ShareError::NotEmpty => libc::ENOTEMPTY,
        ShareError::Access => libc::EACCES,
        ShareError::Perm => libc::EPERM,
        ShareError::Invalid | ShareError::NotSync | ShareError::BadCookie => libc::EINVAL,
        ShareError::NameTooLong => libc::ENAMETOOLONG,
        ShareError::TooBig => libc::EFBIG,
        ShareError::Stale => libc::ESTALE,
        ShareError::ReadOnly => libc::EROFS,
        ShareError::CrossShare => libc::EXDEV,
        ShareError::NoSpace => libc::ENOSPC,
        // The store could not answer in time (an outage) or writers are held at the
        // dirty limit longer than a local program should wait.
        ShareError::TryLater => libc::EAGAIN,
        ShareError::Io(_) => libc::EIO,
    };
    Errno::from_i32(code)
}
