//! margo-broker: an embedded rumqttd on an authenticated loopback port,
//! the margo **device gateway** in front of it, and a read-only loopback
//! listener for operators.
//!
//! Devices and operators never reach rumqttd directly. The gateway terminates TLS 1.3 with
//! client certificates, takes the device identity from the certificate CN,
//! rewrites the MQTT client id to it, and checks every CONNECT (will),
//! SUBSCRIBE and PUBLISH against the per-device rules of
//! [`margo_schemas::topics`]. See `README.md` for why.
//!
//! ```no_run
//! # async fn demo(tls: margo_broker::GatewayTls) -> Result<(), margo_broker::BrokerError> {
//! use margo_broker::{BrokerConfig, EmbeddedBroker, GatewayConfig};
//! let mut config = BrokerConfig::default();
//! config.gateway = Some(GatewayConfig::new(tls));
//! let broker = EmbeddedBroker::start(config).await?;
//! println!("mqtt={} gateway={:?}", broker.mqtt_addr(), broker.gateway_addr());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod accept;
pub mod clones;
mod config;
mod embedded;
mod error;
pub mod fd_reserve;
mod gateway;
pub mod inspect;
mod observer;
mod rate;
mod relay;
mod revocation;
pub mod rumqttd_log;
pub mod slots;
mod stats;
pub mod tls;

pub use clones::{CloneAlert, CloneRule, CloneWatch};
pub use config::{
    load_or_create_password, BrokerConfig, BrokerFileConfig, GatewayConfig, GatewayFileConfig,
    GatewayTls, InternalFileConfig, InternalListenerConfig, Limits, MqttListenerConfig,
    CONFIG_VERSION, ENV_PREFIX, INTERNAL_USERNAME, MQTT_MAX_REMAINING_LENGTH,
};
pub use embedded::{BrokerHandle, EmbeddedBroker};
pub use error::{BrokerError, Listener};
pub use fd_reserve::FdReserve;
pub use gateway::{run_gateway, Gateway};
pub use inspect::Login;
pub use rate::DeviceRate;
pub use relay::Upstream;
pub use revocation::{parse_revocation_list, Revocations};
pub use stats::{violations, GatewayMetric, GatewayStats, HandshakeOutcome, Refusal};
