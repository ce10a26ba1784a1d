//! The test kit shared by every crate's integration tests (a dev-dependency
//! only; see docs/testing.md):
//!
//! - [`wait`]: [`within`] and [`eventually`], the waits that fail with a clear
//!   message instead of hanging;
//! - [`pki`]: a throwaway CA (rcgen) issuing server, client and signing
//!   certificates;
//! - [`mqtt`]: an MQTT client (rumqttc) whose event loop runs in a task and
//!   feeds a channel the test reads from;
//! - [`process`] and [`mosquitto`]: child processes with a readiness line and
//!   a log, and Mosquitto configured like `config/mosquitto/`.
//!
//! Starters that need the broker's, manager's or agent's own types stay in
//! that crate's `tests/common`.

pub mod mosquitto;
pub mod mqtt;
pub mod pki;
pub mod process;
pub mod wait;

pub use process::{free_port, Proc};
pub use wait::{eventually, eventually_async, try_eventually, within};
