//! bucketgate: an NFSv3 file gateway in front of S3.

pub mod admin;
mod audit;
pub mod cli;
pub mod config;
mod conns;
mod fuse;
pub mod gateway;
mod logging;
pub mod metrics;
pub mod nfs;
pub mod remote;
pub mod share;
pub mod smb;
mod upload;
