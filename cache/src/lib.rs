//! bucketgate's write-back cache engine: the namespace, attributes and file data of a
//! share, on the local cache disk, with the durable queue of what the store still
//! has to learn. Nothing here knows NFS or S3 wire formats.

mod args;
mod attrs;
mod blocks;
/// A named failpoint (the `fail` crate) when built with the `failpoints` feature,
/// nothing otherwise. When configured to `return`, the enclosing function returns
/// `$on_fire`: the step stops exactly there, as if the process had died.
macro_rules! failpoint {
    ($name:literal, $on_fire:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| $on_fire);
    };
}

mod conflict;
mod engine;
mod error;
mod format;
mod group_flush;
mod inode;
mod journal;
mod left;
mod moves;
mod multipart;
mod notice;
mod options;
mod perm;
mod store_sync;
mod upload_step;

pub use args::{CreateMode, DirChange, DirEntryInfo, FsStat, Listing, SetAttr, SetTime, WccAttr};
pub use blocks::{BLOCK, FETCH_PIECE};
pub use engine::{Cache, MAX_FILE_SIZE, MAX_NAME_BYTES, ROOT_ID};
pub use error::{CacheError, Result};
pub use format::CACHE_FORMAT;
pub use inode::{FileId, Inode, Kind, ObjectAttrs, RemoteState};
pub use moves::KeyRelease;
pub use notice::{Delivered, Notice, Watcher};
pub use options::{CacheOptions, KeyCheck};
pub use perm::{Caller, EXEC, READ, WRITE};
pub use store_sync::{ListingChanges, MAX_SYMLINK_TARGET, ObjectHead, RemoteEntry, RemoteKind, same_etag};
pub use upload_step::UploadStep;
