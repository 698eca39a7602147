//! The one table from the share layer's errors to NFS status codes.

use nfs3_types::nfs3::nfsstat3;

use crate::share::ShareError;

pub fn nfs_status(e: &ShareError) -> nfsstat3 {
    match e {
        ShareError::NotFound => nfsstat3::NFS3ERR_NOENT,
        ShareError::Exists => nfsstat3::NFS3ERR_EXIST,
        ShareError::NotDir => nfsstat3::NFS3ERR_NOTDIR,
        ShareError::IsDir => nfsstat3::NFS3ERR_ISDIR,
        ShareError::NotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        ShareError::Access => nfsstat3::NFS3ERR_ACCES,
        ShareError::Perm => nfsstat3::NFS3ERR_PERM,
        ShareError::Invalid => nfsstat3::NFS3ERR_INVAL,
        ShareError::NameTooLong => nfsstat3::NFS3ERR_NAMETOOLONG,
        ShareError::TooBig => nfsstat3::NFS3ERR_FBIG,
        ShareError::Stale => nfsstat3::NFS3ERR_STALE,
        ShareError::ReadOnly => nfsstat3::NFS3ERR_ROFS,
        ShareError::CrossShare => nfsstat3::NFS3ERR_XDEV,
        ShareError::NoSpace => nfsstat3::NFS3ERR_NOSPC,
        ShareError::TryLater => nfsstat3::NFS3ERR_JUKEBOX,
        ShareError::NotSync => nfsstat3::NFS3ERR_NOT_SYNC,
        ShareError::BadCookie => nfsstat3::NFS3ERR_BAD_COOKIE,
        ShareError::Io(_) => nfsstat3::NFS3ERR_IO,
    }
}
