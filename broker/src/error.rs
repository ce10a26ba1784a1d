//! The crate's one error type.

use std::net::SocketAddr;

use margo_schemas::config_layers::ConfigError;

/// One of the broker's listeners, for errors that must say which
/// configuration key moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The operator's read-only loopback listener.
    Mqtt,
    /// rumqttd's own, authenticated listener.
    Internal,
    /// The device gateway.
    Gateway,
}

impl Listener {
    /// What it is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Mqtt => "the read-only MQTT listener",
            Self::Internal => "the broker's internal listener",
            Self::Gateway => "the device gateway",
        }
    }

    /// Its key in the `margo-broker` configuration file.
    pub fn config_key(self) -> &'static str {
        match self {
            Self::Mqtt => "[mqtt] listen",
            Self::Internal => "[internal] listen",
            Self::Gateway => "[gateway] listen",
        }
    }

    /// The environment variable that overrides it.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Mqtt => "MARGO_BROKER_MQTT_LISTEN",
            Self::Internal => "MARGO_BROKER_INTERNAL_LISTEN",
            Self::Gateway => "MARGO_BROKER_GATEWAY_LISTEN",
        }
    }
}

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
    /// Binding a listener failed (another process holds the port?).
    #[error(
        "cannot listen on {addr} ({}): {source}; another process may hold it: \
         move it with `{}` or {} in the configuration",
        listener.describe(), listener.config_key(), listener.env_var()
    )]
    Bind {
        /// Which listener.
        listener: Listener,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The address answers, but not as this process's broker: rumqttd could
    /// not keep its listener (it only logs that), and something else holds
    /// the port.
    #[error(
        "{addr} ({}) is not served by this broker: {reason}; another process may hold \
         the port: move it with `{}` or {} in the configuration",
        listener.describe(), listener.config_key(), listener.env_var()
    )]
    NotOurs {
        /// Which listener.
        listener: Listener,
        /// The address.
        addr: SocketAddr,
        /// What the check saw.
        reason: String,
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
