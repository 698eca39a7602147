//! The one table from engine errors to NFS status codes.

use bucketgate_cache::CacheError;
use nfs3_types::nfs3::nfsstat3;

pub fn nfs_status(e: &CacheError) -> nfsstat3 {
    match e {
        CacheError::NotFound => nfsstat3::NFS3ERR_NOENT,
        CacheError::Exists => nfsstat3::NFS3ERR_EXIST,
        CacheError::NotDir => nfsstat3::NFS3ERR_NOTDIR,
        CacheError::IsDir => nfsstat3::NFS3ERR_ISDIR,
        CacheError::NotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        CacheError::Access => nfsstat3::NFS3ERR_ACCES,
        CacheError::Perm => nfsstat3::NFS3ERR_PERM,
        CacheError::Invalid => nfsstat3::NFS3ERR_INVAL,
        CacheError::NameTooLong => nfsstat3::NFS3ERR_NAMETOOLONG,
        CacheError::TooBig => nfsstat3::NFS3ERR_FBIG,
        CacheError::Stale => nfsstat3::NFS3ERR_STALE,
        CacheError::ReadOnly => nfsstat3::NFS3ERR_ROFS,
        CacheError::NotSupported => nfsstat3::NFS3ERR_NOTSUPP,
        CacheError::NoSpace => nfsstat3::NFS3ERR_NOSPC,
        CacheError::TryLater | CacheError::NotCached(..) | CacheError::AttrsUnknown(_) => {
            nfsstat3::NFS3ERR_JUKEBOX
        }
        CacheError::NotSync => nfsstat3::NFS3ERR_NOT_SYNC,
        CacheError::BadCookie => nfsstat3::NFS3ERR_BAD_COOKIE,
        CacheError::Io(_) | CacheError::Meta(_) => nfsstat3::NFS3ERR_IO,
    }
}
