pub mod admin;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod logging;
pub mod metrics;
