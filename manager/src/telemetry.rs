//! Metrics and health over plain HTTP: the Prometheus recorder behind the
//! `metrics` facade, the counter type the stats structs are made of, and
//! the `[metrics]` listener serving `GET /metrics`, `GET /healthz` and
//! `GET /readyz`. Every metric name is listed in `docs/metrics.md`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The Prometheus text format's content type.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A monotonic counter kept twice: as an atomic that the admin API's
/// `/v1/health` reads, and as the `metrics` counter `name{labels}`.
/// `fetch_add` and `load` mirror [`AtomicU64`]'s, so call sites read the same.
#[derive(Debug)]
pub struct Counter {
    value: AtomicU64,
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
}

impl Counter {
    /// A counter exported as `name` with `labels`.
    pub const fn new(name: &'static str, labels: &'static [(&'static str, &'static str)]) -> Self {
        Self {
            value: AtomicU64::new(0),
            name,
            labels,
        }
    }

    /// Adds `n`; returns the previous value of the atomic.
    pub fn fetch_add(&self, n: u64, order: Ordering) -> u64 {
        metrics::counter!(self.name, self.labels).increment(n);
        self.value.fetch_add(n, order)
    }

    /// The atomic's value.
    pub fn load(&self, order: Ordering) -> u64 {
        self.value.load(order)
    }
}

/// The process-wide Prometheus recorder: installed by the first manager
/// that serves `[metrics]`, shared by any later one in the same process
/// (tests start several), since a process has one global recorder.
pub fn prometheus() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .clone()
        .ok_or(TelemetryError::Recorder)
}

/// The metrics listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Another `metrics` recorder was installed in this process first.
    #[error("another metrics recorder is already installed in this process")]
    Recorder,
    /// The listen address could not be bound.
    #[error("binding the metrics listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// What `/readyz` asks.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Whether the manager's MQTT link to the broker is connected.
    pub broker_connected: watch::Receiver<bool>,
    /// Cancelled when the manager shuts down (the store is then closing).
    pub shutdown: CancellationToken,
}

#[derive(Clone)]
struct ServerState {
    handle: PrometheusHandle,
    readiness: Readiness,
}

/// The `/readyz` body.
#[derive(Debug, Serialize)]
struct ReadyBody {
    ready: bool,
    broker: &'static str,
    store: &'static str,
}

/// The bound `[metrics]` listener.
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
    state: ServerState,
}

impl MetricsServer {
    /// Installs (or reuses) the recorder and binds `listen`.
    pub async fn bind(listen: SocketAddr, readiness: Readiness) -> Result<Self, TelemetryError> {
        let handle = prometheus()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| TelemetryError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TelemetryError::Bind {
                addr: listen,
                source,
            })?;
        Ok(Self {
            listener,
            addr,
            state: ServerState { handle, readiness },
        })
    }

    /// The bound address (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let router = Router::new()
            .route("/metrics", get(render))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.state);
        info!(addr = %self.addr, "metrics listener started");
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            warn!(%error, "metrics listener failed");
        }
    }
}

async fn render(State(state): State<ServerState>) -> Response {
    let body = state.handle.render();
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<ServerState>) -> Response {
    let connected = *state.readiness.broker_connected.borrow();
    let open = !state.readiness.shutdown.is_cancelled();
    let body = ReadyBody {
        ready: connected && open,
        broker: if connected {
            "connected"
        } else {
            "disconnected"
        },
        store: if open { "open" } else { "closing" },
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
