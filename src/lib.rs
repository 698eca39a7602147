//! bucketgate: a file gateway in front of S3. Shares are served over NFSv3 (`nfs`),
//! mounted on the gateway through FUSE (`fuse`) and over SMB by Samba on that mount
//! (`smb`); every front end calls the share layer (`share`), over the cache engine
//! (the `bucketgate-cache` crate), which the uploader (`upload`) drives the object
//! store (`remote`) towards.

pub mod admin;
mod audit;
pub mod cli;
pub mod config;
mod conns;
pub mod events;
mod fuse;
pub mod gateway;
mod http1;
mod logging;
pub mod metrics;
pub mod nfs;
pub mod remote;
mod sd_notify;
pub mod share;
pub mod smb;
mod upload;
