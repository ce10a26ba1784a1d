//! Margo wire and domain types for margo-mqtt: identifiers, topics, digests,
//! the Margo objects, the bounded CBOR codec and COSE_Sign1 signing.
//!
//! This crate does no I/O and runs no async runtime.

pub mod ids;
pub mod topics;
pub mod codec;
pub mod cose;
pub mod digest;
pub mod pki;
