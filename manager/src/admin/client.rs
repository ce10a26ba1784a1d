//! The admin API's client, used by `margoctl` and tests: one connection per
//! call over the Unix socket, each call with a deadline (a frozen manager
//! must not hang an operator's command: issue 12, finding 12).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::header;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use margo_schemas::schedule::Schedule;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::wire::{
    AddClientRequest, AddClientsRequest, ApproveRequest, ApproveResponse, AuditReport, CaInfo,
    ClientDetails, ClientSummary, CreateTokenRequest, DeployManyRequest, DeployResponse, Health,
    ProvisionedBulk, ProvisionedBundle, RejectManyRequest, RevokeResponse, ScheduleView,
};
use crate::onboarding::{CreatedToken, RequestView, TokenView};
use crate::problem::Problem;
use crate::status_view::ClientStatus;
use crate::store::UplinkSummary;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be reached (is the manager running?).
    #[error("cannot connect to the manager at {path}: {source} (is margo-manager running?)")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("admin API: {0}")]
    Http(#[from] hyper::Error),
    /// Building the request failed.
    #[error("admin API request: {0}")]
    Request(#[from] axum::http::Error),
    /// The manager answered with an error.
    #[error("{detail} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The problem detail.
        detail: String,
    },
    /// The response body is not what was expected.
    #[error("admin API response: {0}")]
    Decode(#[from] serde_json::Error),
    /// The deadline passed (the manager is stopped, frozen or overloaded).
    #[error("timed out after {} waiting for {waiting_for} (is margo-manager stopped or overloaded? margoctl --timeout sets the limit)", humantime::format_duration(*.after))]
    Timeout {
        /// What the call was waiting for: the connection to the socket,
        /// or the response to `METHOD /path`, and the socket.
        waiting_for: String,
        /// The deadline.
        after: Duration,
    },
}

impl AdminError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Percent-encodes one path segment or query value.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How long a call waits by default: for the connection, then for the
/// whole answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What bulk provisioning adds to the deadline per client (key, certificate,
/// store): 10,000 clients wait 100 s more. Measured: 0.61 s for 5,000 in a
/// release build (docs/benchmarks.md).
pub const BULK_TIME_PER_CLIENT: Duration = Duration::from_millis(10);

/// A client of the admin API over its Unix socket (one connection per call).
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
    timeout: Duration,
}

/// Ends the connection's task when the call returns or is abandoned.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AdminClient {
    /// A client for the socket at `socket`, with [`DEFAULT_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another deadline per call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The deadline per call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: axum::http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, AdminError> {
        self.call_within(self.timeout, method, path, body).await
    }

    async fn call_within<T: DeserializeOwned>(
        &self,
        limit: Duration,
        method: axum::http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, AdminError> {
        let deadline = tokio::time::Instant::now() + limit;
        let timeout = |waiting_for: String| AdminError::Timeout {
            waiting_for,
            after: limit,
        };
        let stream = tokio::time::timeout_at(deadline, UnixStream::connect(&self.socket))
            .await
            .map_err(|_| {
                timeout(format!(
                    "a connection to the manager's admin socket {}",
                    self.socket.display()
                ))
            })?
            .map_err(|source| AdminError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let waiting_for = format!(
            "the response to {method} {} from the manager at {}",
            path.split('?').next().unwrap_or(path),
            self.socket.display()
        );
        let exchange = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let _driver = AbortOnDrop(tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%error, "admin connection ended");
                }
            }));
            let mut builder = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, "margo-manager");
            if body.is_some() {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
            }
            let request = builder.body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, AdminError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| timeout(waiting_for))??;
        if !status.is_success() {
            let detail = serde_json::from_slice::<Problem>(&bytes)
                .map(|p| p.detail)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(500).collect());
            return Err(AdminError::Api {
                status: status.as_u16(),
                detail,
            });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Health and counters.
    pub async fn health(&self) -> Result<Health, AdminError> {
        self.call(axum::http::Method::GET, "/v1/health", None).await
    }

    /// Provisions a client: the manager assigns the id, generates the key,
    /// issues the certificate and returns the bundle contents.
    pub async fn add_client(
        &self,
        name: &str,
        broker_url: Option<&str>,
    ) -> Result<ProvisionedBundle, AdminError> {
        let body = serde_json::to_vec(&AddClientRequest {
            name: name.to_string(),
            broker_url: broker_url.map(str::to_string),
        })?;
        self.call(axum::http::Method::POST, "/v1/clients", Some(body))
            .await
    }

    /// Provisions `count` clients named `{prefix}{first}`.. in one call,
    /// waiting the timeout plus [`BULK_TIME_PER_CLIENT`] per client.
    pub async fn add_clients(
        &self,
        prefix: &str,
        count: u32,
        first: u32,
        broker_url: Option<&str>,
    ) -> Result<ProvisionedBulk, AdminError> {
        let body = serde_json::to_vec(&AddClientsRequest {
            prefix: prefix.to_string(),
            count,
            first,
            broker_url: broker_url.map(str::to_string),
        })?;
        // Provisioning scales with the count: the deadline does too.
        let limit = self.timeout + BULK_TIME_PER_CLIENT * count;
        self.call_within(
            limit,
            axum::http::Method::POST,
            "/v1/clients/bulk",
            Some(body),
        )
        .await
    }

    /// Adds or updates the same documents on many clients in one transaction.
    pub async fn deploy_many(
        &self,
        request: &DeployManyRequest,
    ) -> Result<Vec<DeployResponse>, AdminError> {
        let body = serde_json::to_vec(request)?;
        self.call(axum::http::Method::POST, "/v1/deployments", Some(body))
            .await
    }

    /// Every client.
    pub async fn list_clients(&self) -> Result<Vec<ClientSummary>, AdminError> {
        self.call(axum::http::Method::GET, "/v1/clients", None)
            .await
    }

    /// One client in full: identity, status, capabilities.
    pub async fn client(&self, client: &str) -> Result<ClientDetails, AdminError> {
        let path = format!("/v1/clients/{}", encode_component(client));
        self.call(axum::http::Method::GET, &path, None).await
    }

    /// The fleet CA and its fingerprint.
    pub async fn ca(&self) -> Result<CaInfo, AdminError> {
        self.call(axum::http::Method::GET, "/v1/ca", None).await
    }

    /// Every onboarding request, most recently seen first.
    pub async fn onboarding_requests(&self) -> Result<Vec<RequestView>, AdminError> {
        self.call(axum::http::Method::GET, "/v1/onboarding/requests", None)
            .await
    }

    /// Approves an onboarding request (id, `sha256:<id>` or a unique prefix).
    pub async fn approve(
        &self,
        request: &str,
        name: Option<&str>,
    ) -> Result<ApproveResponse, AdminError> {
        let path = format!(
            "/v1/onboarding/requests/{}/approve",
            encode_component(request)
        );
        let body = serde_json::to_vec(&ApproveRequest {
            name: name.map(str::to_string),
        })?;
        self.call(axum::http::Method::POST, &path, Some(body)).await
    }

    /// Rejects an onboarding request.
    pub async fn reject(&self, request: &str) -> Result<RequestView, AdminError> {
        let path = format!(
            "/v1/onboarding/requests/{}/reject",
            encode_component(request)
        );
        self.call(axum::http::Method::POST, &path, None).await
    }

    /// Rejects every pending request the filters select (they combine;
    /// with none, `all` must be true).
    pub async fn reject_matching(
        &self,
        filter: &RejectManyRequest,
    ) -> Result<Vec<RequestView>, AdminError> {
        let body = serde_json::to_vec(filter)?;
        self.call(
            axum::http::Method::POST,
            "/v1/onboarding/requests/reject",
            Some(body),
        )
        .await
    }

    /// Creates an enrollment token; the returned token text is shown only now.
    pub async fn create_token(
        &self,
        uses: u32,
        expires_in: std::time::Duration,
        note: Option<&str>,
    ) -> Result<CreatedToken, AdminError> {
        let body = serde_json::to_vec(&CreateTokenRequest {
            uses,
            expires_in_secs: expires_in.as_secs(),
            note: note.map(str::to_string),
        })?;
        self.call(axum::http::Method::POST, "/v1/tokens", Some(body))
            .await
    }

    /// Every enrollment token (never the token text).
    pub async fn tokens(&self) -> Result<Vec<TokenView>, AdminError> {
        self.call(axum::http::Method::GET, "/v1/tokens", None).await
    }

    /// Deletes an enrollment token.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenView, AdminError> {
        let path = format!("/v1/tokens/{}", encode_component(id));
        self.call(axum::http::Method::DELETE, &path, None).await
    }

    /// Revokes a client (by id or name).
    pub async fn revoke(&self, client: &str) -> Result<RevokeResponse, AdminError> {
        let path = format!("/v1/clients/{}/revoke", encode_component(client));
        self.call(axum::http::Method::POST, &path, None).await
    }

    /// Adds or updates deployment documents (YAML text) for a client.
    pub async fn deploy(
        &self,
        client: &str,
        documents: Vec<String>,
    ) -> Result<DeployResponse, AdminError> {
        let path = format!("/v1/clients/{}/deployments", encode_component(client));
        let body = serde_json::to_vec(&documents)?;
        self.call(axum::http::Method::POST, &path, Some(body)).await
    }

    /// Removes one deployment from a client.
    pub async fn undeploy(
        &self,
        client: &str,
        deployment_id: &str,
    ) -> Result<DeployResponse, AdminError> {
        let path = format!(
            "/v1/clients/{}/deployments/{}",
            encode_component(client),
            encode_component(deployment_id)
        );
        self.call(axum::http::Method::DELETE, &path, None).await
    }

    /// Fleet view: one client (by id or name) or all.
    pub async fn status(&self, client: Option<&str>) -> Result<Vec<ClientStatus>, AdminError> {
        let path = match client {
            Some(c) => format!("/v1/status?client={}", encode_component(c)),
            None => "/v1/status".to_string(),
        };
        self.call(axum::http::Method::GET, &path, None).await
    }

    /// The stored uplink seqs of a client.
    pub async fn uplink(&self, client: &str) -> Result<Vec<UplinkSummary>, AdminError> {
        let path = format!("/v1/clients/{}/uplink", encode_component(client));
        self.call(axum::http::Method::GET, &path, None).await
    }

    /// The latest capabilities of a client, by device id.
    pub async fn capabilities(
        &self,
        client: &str,
    ) -> Result<BTreeMap<String, serde_json::Value>, AdminError> {
        let path = format!("/v1/clients/{}/capabilities", encode_component(client));
        self.call(axum::http::Method::GET, &path, None).await
    }

    /// The remote schedule stored for a client and the one it reports in force.
    pub async fn schedule(&self, client: &str) -> Result<ScheduleView, AdminError> {
        let path = format!("/v1/clients/{}/schedule", encode_component(client));
        self.call(axum::http::Method::GET, &path, None).await
    }

    /// Sets a client's remote schedule (validated again by the manager): a
    /// new config version, stored and published on `R/config` before the
    /// answer.
    pub async fn set_schedule(
        &self,
        client: &str,
        schedule: &Schedule,
    ) -> Result<ScheduleView, AdminError> {
        let path = format!("/v1/clients/{}/schedule", encode_component(client));
        let body = serde_json::to_vec(schedule)?;
        self.call(axum::http::Method::PUT, &path, Some(body)).await
    }

    /// Clears a client's remote schedule: a new config version without a
    /// schedule, so the device falls back to its local one.
    pub async fn clear_schedule(&self, client: &str) -> Result<ScheduleView, AdminError> {
        let path = format!("/v1/clients/{}/schedule", encode_component(client));
        self.call(axum::http::Method::DELETE, &path, None).await
    }

    /// Recent security events and their counters.
    pub async fn audit(&self, limit: usize) -> Result<AuditReport, AdminError> {
        let path = format!("/v1/audit?limit={limit}");
        self.call(axum::http::Method::GET, &path, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that accepts and never answers, as a manager stopped with
    /// SIGSTOP looks to a client.
    fn frozen(dir: &Path) -> PathBuf {
        let path = dir.join("admin.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        path
    }

    #[tokio::test]
    async fn a_call_to_a_frozen_manager_times_out_naming_what_it_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let socket = frozen(dir.path());
        let admin = AdminClient::new(&socket).with_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), admin.status(Some("a b")))
            .await
            .expect("the call returns within its deadline")
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{err}");
        let text = err.to_string();
        assert!(matches!(err, AdminError::Timeout { .. }), "{text}");
        assert!(
            text.contains("timed out after 300ms waiting for the response to GET /v1/status")
                && text.contains(&socket.display().to_string()),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bulk_provisioning_waits_longer() {
        let dir = tempfile::tempdir().unwrap();
        let socket = frozen(dir.path());
        let admin = AdminClient::new(&socket).with_timeout(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let err = admin.add_clients("sim-", 40, 1, None).await.unwrap_err();
        // 100 ms + 40 x 10 ms.
        assert!(started.elapsed() >= Duration::from_millis(500), "{err}");
        assert!(err.to_string().contains("POST /v1/clients/bulk"), "{err}");
    }

    #[tokio::test]
    async fn no_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = AdminClient::new(dir.path().join("none.sock"))
            .health()
            .await
            .unwrap_err();
        assert!(matches!(err, AdminError::Connect { .. }), "{err}");
    }
}
