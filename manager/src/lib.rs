//! margo-manager: the fleet manager of margo-mqtt.
//!
//! - [`store`]: redb store, persistence only (clients, desired state, uplink
//!   and reports, onboarding, audit).
//! - [`status_view`]: the fleet view operators see, joined from the store.
//! - [`seq_window`]: which uplink seqs of a client are settled (dedupe and
//!   `ackedSeq`), a pure type the store loads and writes back.
//! - [`ca`]: fleet CA, gateway/manager/signing certificates, device provisioning.
//! - [`mqtt_link`]: the MQTT connection (receive loop, options, link counters).
//! - [`publisher`]: the downlink publisher (retained, signed).
//! - [`ingest`]: verified, deduplicated, batched uplink storage with acks after commit.
//! - [`log_limit`]: per-client rate limit for warnings a device can trigger.
//! - [`admin`]: the admin API on a Unix socket and its [`admin::AdminClient`].
//! - [`http`]: the HTTPS listener serving the Margo HTTP API (onboarding,
//!   desired state, bundles, status and capabilities; `docs/http-api.md`).
//! - [`http_stats`]: the HTTPS listener's and onboarding's metrics (reported
//!   by the admin API). Every metric is declared once with
//!   `margo_metrics::metric_set!`, next to what it counts.
//! - [`telemetry`]: the Prometheus recorder behind the `metrics` facade and
//!   the `[metrics]` listener (`/metrics`, `/healthz`, `/readyz`;
//!   `docs/metrics.md`).
//! - [`state_manifest`]: the state manifest, one builder for MQTT and HTTP.
//! - [`onboarding`]: onboarding requests, approval and enrollment tokens.
//! - [`problem`]: RFC 9457 problem bodies, the error shape of the admin API
//!   and the Margo HTTP API.
//! - [`fleet`]: the application core: every operation (provision, deploy,
//!   schedules, onboarding decisions, tokens, revoke, reports, the fleet
//!   view) and its side effects, written once; admin, HTTPS and ingest are
//!   adapters that call it.
//! - [`capabilities`]: acceptance of capabilities reports (MQTT and HTTP).
//! - [`manager`]: wiring; [`Manager::start`] in-process, [`run`] for the binary.
//! - [`clock`]: the wall clock the store stamps with and time decisions
//!   read (token expiry, availability); a manual one for tests.
//! - [`availability`]: what a client's silence means (online, planned
//!   downtime, between checks, overdue, ...), from its reported schedule.
//! - [`status_table`]: the fleet table of `margoctl status` (and of `margo-demo`
//!   in the `margo-tests` crate, which runs a manager and simulated agents in
//!   one process; the manager does not depend on the agent).
//!
//! See `README.md` and `docs/architecture.md` for the protocol.

#![warn(missing_docs)]

pub mod admin;
pub mod availability;
pub mod ca;
pub mod capabilities;
pub mod clock;
pub mod config;
pub mod fleet;
pub mod http;
pub mod http_stats;
pub mod identity_bundle;
pub mod ingest;
pub mod log_limit;
pub mod manager;
pub mod mqtt_link;
pub mod onboarding;
pub mod problem;
pub mod publisher;
pub mod seq_window;
pub mod state_manifest;
pub mod status_table;
pub mod status_view;
pub mod store;
pub mod telemetry;

pub use admin::AdminClient;
pub use config::ManagerConfig;
pub use manager::{init, run, shutdown_on_signal, Manager, ManagerError, ManagerHandle};
