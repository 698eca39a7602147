//! bucketgate: an NFSv3 file gateway in front of S3.

pub mod config;
pub mod gateway;
pub mod nfs;
pub mod remote;
pub mod upload;
