//! The admin API: JSON over HTTP/1.1 on a Unix socket (mode 0600), and the
//! [`AdminClient`] that `margoctl` and tests use.
//!
//! redb allows one process per file, so every operator action goes through
//! the running manager. Errors are problem bodies (`application/problem+json`)
//! with a `detail` that says what was wrong.

mod client;
mod server;
mod wire;

pub use client::{AdminClient, AdminError};
pub use server::{bind_socket, router, AdminServeError, AdminState, ApiError};
pub use wire::{
    parse_documents, AddClientRequest, AddClientsRequest, ApproveRequest, ApproveResponse,
    AuditReport, CaInfo, ClientDetails, ClientSummary, CreateTokenRequest, DeployManyRequest,
    DeployResponse, Health, IngestStatsSnapshotWire, LinkStatsSnapshotWire, Problem,
    ProvisionedBulk, ProvisionedBundle, ProvisionedDevicePem, RevokeResponse, ScheduleView,
    MAX_BULK_CLIENTS,
};
