//! Metrics and health over plain HTTP: the Prometheus recorder behind the
//! `metrics` facade and the `[metrics]` listener serving `GET /metrics`,
//! `GET /healthz` and `GET /readyz`. The metrics themselves are declared
//! once per component with `margo_metrics::metric_set!` (listed in
//! [`describe_all`]); every name is in `docs/metrics.md`.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use margo_broker::GatewayMetric;
use margo_metrics::describe;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::http_stats::{HttpMetric, OnboardingMetric};
use crate::ingest::{IngestMetric, HISTOGRAMS};
use crate::mqtt_link::LinkMetric;

/// The Prometheus text format's content type.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The process-wide Prometheus recorder: installed by the first manager
/// that serves `[metrics]`, shared by any later one in the same process
/// (tests start several), since a process has one global recorder.
pub fn prometheus() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for h in HISTOGRAMS {
                builder = builder
                    .set_buckets_for_metric(
                        Matcher::Full(h.name.to_string()),
                        &h.exported_buckets(),
                    )
                    .ok()?;
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe_all();
            Some(handle)
        })
        .clone()
        .ok_or(TelemetryError::Recorder)
}

/// Registers the help text of every metric of the manager and the gateway
/// with the installed recorder.
pub fn describe_all() {
    describe::<GatewayMetric>();
    describe::<LinkMetric>();
    describe::<IngestMetric>();
    describe::<HttpMetric>();
    describe::<OnboardingMetric>();
    for h in HISTOGRAMS {
        h.describe();
    }
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

#[cfg(test)]
mod tests {
    use margo_metrics::MetricSet;

    use super::*;

    fn names<M: MetricSet>() -> Vec<&'static str> {
        M::ALL.iter().map(|s| s.metric().name).collect()
    }

    #[test]
    fn every_metric_is_documented_and_every_series_unique() {
        let docs = include_str!("../../docs/metrics.md");
        let mut all = names::<GatewayMetric>();
        all.extend(names::<LinkMetric>());
        all.extend(names::<IngestMetric>());
        all.extend(names::<HttpMetric>());
        all.extend(names::<OnboardingMetric>());
        all.extend(HISTOGRAMS.iter().map(|h| h.name));
        for name in &all {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is not in docs/metrics.md"
            );
        }
        unique::<GatewayMetric>();
        unique::<LinkMetric>();
        unique::<IngestMetric>();
        unique::<HttpMetric>();
        unique::<OnboardingMetric>();
    }

    /// No two series of a set share their name and labels, or their key.
    fn unique<M: MetricSet + std::fmt::Debug>() {
        for (i, m) in M::ALL.iter().enumerate() {
            for other in &M::ALL[i + 1..] {
                let (a, b) = (m.metric(), other.metric());
                assert_ne!((a.name, a.labels), (b.name, b.labels), "{m:?} {other:?}");
                assert_ne!(a.key, b.key, "{m:?} {other:?}");
            }
        }
    }
}
