//! The integration tests: one binary, so the crate and its dependencies link once.
//! Each module is a suite; run one with `cargo test --test it <module>::`.

#[path = "../common/mod.rs"]
mod common;

mod admin_api;
mod ami_monitoring;
mod bucket_truth;
mod cli;
mod conflicts;
mod crash;
mod crash_cache;
mod events;
mod events_sqs;
mod fuse;
mod isolation;
mod nfs_exports;
mod nfs_procedures;
mod nospace;
mod ops_live;
mod portmap_port;
mod posix_attrs;
mod readthrough;
mod reftest;
mod remote_store;
mod rename_races;
mod rpc_layer;
mod rpc_libnfs;
mod smb;
mod soak;
mod upload_notify;
mod upload_races;
mod writeback;
mod writeback_s3;
