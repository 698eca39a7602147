//! Shared test helpers, compiled into the integration-test binary (`tests/it`) and
//! the two suites that need a process of their own (`share_store`, `failpoints`).

pub mod child;
pub mod faulty;
pub mod gateway;
pub mod nfs;
pub mod s3server;
