//! placeholder
pub mod ca;
pub mod config;
pub mod store;
