//! The crate's one error type.

use std::net::SocketAddr;

use margo_schemas::config_layers::ConfigError;

/// Everything that can go wrong while configuring or starting the broker and gateway.
///
/// Per-connection failures (a bad handshake, an ACL violation) are not errors
/// of this kind: they close that one connection, are logged and counted in
/// [`crate::GatewayStats`], and never stop the listener.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration is unusable: a file not read or not parsed, or a
    /// value invalid (`FIELD: reason`, the field named as in the TOML file).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The gateway's PEM material is unusable.
    #[error("gateway TLS: {0}")]
    Tls(String),
    /// Binding a listener failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The embedded rumqttd did not start accepting connections in time.
    #[error("embedded rumqttd on {addr} not ready: {reason}")]
    NotReady {
        /// Its listener address.
        addr: SocketAddr,
        /// Why we gave up.
        reason: String,
    },
    /// A revocation list line is not a valid client id.
    #[error("revocation list line {line}: {reason}")]
    RevocationList {
        /// 1-based line number.
        line: usize,
        /// Why the line was rejected.
        reason: String,
    },
    /// Another I/O failure outside a single connection.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
