//! margo-agent: the device side of margo-mqtt.
//!
//! It keeps a persistent MQTT session to the device gateway, verifies every
//! signed downlink message, accepts newer manifests once all referenced
//! deployment documents have arrived, reconciles them through a runtime
//! adapter, and reports every state change through a durable outbox.
//! See `README.md` and `docs/architecture.md` in the workspace.
//!
//! Cargo features (both default): `onboarding` (HTTPS onboarding, the
//! `onboard` module) and `http-transport` (the Margo HTTP API as the
//! transport, `http_transport` and `bundle`); the shared HTTPS client
//! (`http`) comes with either. Without them the agent is MQTT-only and
//! provisioned from an identity bundle; [`AgentConfig::validate`] refuses a
//! configuration that needs a left-out feature ([`config::ConfigError::NotBuilt`]).

pub mod agent;
#[cfg(feature = "http-transport")]
pub mod bundle;
pub mod capabilities;
pub mod clock;
pub mod config;
pub mod connection;
#[cfg(any(feature = "onboarding", feature = "http-transport"))]
pub mod http;
#[cfg(feature = "http-transport")]
pub mod http_transport;
pub mod identity;
pub mod manager_url;
#[cfg(feature = "onboarding")]
pub mod onboard;
pub mod outbox;
pub mod reconcile;
#[cfg(any(feature = "onboarding", feature = "http-transport"))]
pub mod request_auth;
pub mod runtime;
pub mod schedule_plan;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod sync;

pub use agent::{Agent, AgentError, AgentHandle, AgentOptions, AgentParts};
pub use config::AgentConfig;
pub use snapshot::{AgentSnapshot, ConnectionStatus, DeploymentView};
pub use store::Store;
