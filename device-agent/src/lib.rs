//! margo-agent: the device side of margo-mqtt.
//!
//! It keeps a persistent MQTT session to the device gateway, verifies every
//! signed downlink message, accepts newer manifests once all referenced
//! deployment documents have arrived, reconciles them through a runtime
//! adapter, and reports every state change through a durable outbox.
//! See `README.md` and `docs/architecture.md` in the workspace.

pub mod agent;
pub mod bundle;
pub mod capabilities;
pub mod clock;
pub mod config;
pub mod connection;
pub mod http;
pub mod http_transport;
pub mod identity;
pub mod onboard;
pub mod outbox;
pub mod plan;
pub mod reconcile;
pub mod runtime;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod sync;

pub use agent::{Agent, AgentError, AgentHandle, AgentOptions, AgentParts};
pub use config::AgentConfig;
pub use snapshot::{AgentSnapshot, ConnectionStatus, DeploymentView};
pub use store::Store;
