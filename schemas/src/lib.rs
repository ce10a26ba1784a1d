//! Margo wire and domain types for margo-mqtt: identifiers, topics, digests,
//! the Margo objects, the bounded CBOR codec, COSE_Sign1 signing and the
//! communication schedule.
//!
//! This crate runs no async runtime and does no I/O, but for two small
//! file helpers the manager and the agent share: [`private_fs`] (owner-only
//! files) and, behind the `db-file` feature, `db_file` (the stores' redb file).

pub mod broker_url;
pub mod capabilities;
pub mod codec;
pub mod config_layers;
pub mod cose;
#[cfg(feature = "db-file")]
pub mod db_file;
pub mod deployment;
pub mod digest;
pub mod http_msg_sig;
pub mod http_sig;
pub mod identity;
pub mod ids;
pub mod manifest;
pub mod messages;
pub mod onboarding;
pub mod pki;
pub mod private_fs;
pub mod revision;
pub mod schedule;
pub mod sfv;
pub mod sig_key;
pub mod source_network;
pub mod status;
pub mod topics;
