//! bucketgate: an NFSv3 file gateway in front of S3.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
mod conns;
pub mod fuse;
pub mod gateway;
pub mod logging;
pub mod metrics;
pub mod nfs;
pub mod remote;
pub mod share;
pub mod upload;
