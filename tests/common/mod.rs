//! Shared test helpers. Each test binary includes this with `mod common;` and uses
//! what it needs.
#![allow(dead_code)]

pub mod child;
pub mod faulty;
pub mod gateway;
pub mod nfs;
pub mod s3server;
