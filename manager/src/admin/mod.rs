//! The admin API: JSON over HTTP/1.1 on a Unix socket (mode 0600), and the
//! [`AdminClient`] that `margoctl` and tests use.
//!
//! redb allows one process per file, so every operator action goes through
//! the running manager. Errors are problem bodies (`application/problem+json`)
//! with a `detail` that says what was wrong ([`crate::problem`]).
//!
//! - `wire`: the request and response bodies (re-exported here).
//! - `server`: the socket, the router and its handlers; `error`: their
//!   problem answers.
//! - `client`: [`AdminClient`], one connection per call.

mod client;
mod error;
mod server;
mod wire;

pub use crate::problem::Problem;

pub use client::{AdminClient, AdminError};
pub use error::ApiError;
pub use server::{bind_socket, router, serve, AdminServeError, AdminState};
pub use wire::{
    parse_documents, AddClientRequest, AddClientsRequest, ApproveRequest, ApproveResponse,
    AuditReport, CaInfo, ClientDetails, ClientSummary, CreateTokenRequest, DeployManyRequest,
    DeployResponse, Health, IngestStatsSnapshotWire, LinkStatsSnapshotWire, ProvisionedBulk,
    ProvisionedBundle, ProvisionedDevicePem, RejectManyRequest, RevokeResponse, ScheduleView,
    MAX_BULK_CLIENTS,
};
