pub mod config;
pub mod nfs;
