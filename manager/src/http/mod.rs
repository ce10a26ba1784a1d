//! The HTTPS listener: the Margo HTTP API (onboarding, desired state,
//! bundles, status and capabilities; `docs/http-api.md`). Every route is
//! listed once in [`api_routes`]; [`route_table`] exposes the list so a test
//! keeps `manager/openapi.yaml` in step with the router.
//!
//! Each accepted socket runs in its own task: a TLS 1.3 handshake with a
//! deadline (a slow or stalled client delays nobody else), then HTTP/1.1
//! served by hyper with the axum router, a header-read deadline and a
//! per-request deadline. Connections beyond `max_connections`, or beyond
//! `max_connections_per_source` from one source network (an IPv4 address,
//! an IPv6 /64), are closed at once and counted. On shutdown every connection finishes its request in
//! flight (bounded) and closes.

pub mod access;
pub mod archive;
pub mod deployments;
pub mod device_key;
pub mod onboarding;
pub mod problem;
pub mod rate_limit;
pub mod tls_peer;
pub mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use margo_broker::fd_reserve::{fd_of, FdReserve};
use margo_broker::slots::{Slot, SlotRefusal, SourceSlots};
use margo_broker::tls::{accept_with_deadline, Handshake};

use crate::config::{HttpSettings, OnboardingSettings};
use crate::fleet::Fleet;
pub use crate::http_stats::{HttpMetric, HttpStats, OnboardingMetric, OnboardingStats};

use archive::BundleCache;
use rate_limit::RateLimiter;

/// Longest time a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time one request may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown lets a connection finish its request in flight.
const DRAIN: Duration = Duration::from_secs(5);

/// Why the HTTPS listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Binding the listen address failed.
    #[error("HTTPS listener {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server certificate or key is unusable.
    #[error("HTTPS TLS: {0}")]
    Tls(String),
}

/// The server's TLS configuration: TLS 1.3 only, HTTP/1.1 by ALPN, a client
/// certificate requested but not required, and accepted whoever issued it
/// when its handshake signature verifies ([`tls_peer::AnyCertificate`]: the
/// application decides who it is).
pub fn server_tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, HttpError> {
    let chain = margo_schemas::pki::certs_from_pem(cert_pem, "server certificate")
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    let key = margo_schemas::pki::key_from_pem(key_pem, "server key")
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    let provider = margo_schemas::pki::crypto_provider();
    let verifier = Arc::new(tls_peer::AnyCertificate::new(&provider));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // One session ticket per handshake (the rustls default is two): an agent
    // polling over HTTP resumes with it and receives the next one, like a
    // device at the gateway (docs/benchmarks.md, bytes on the wire).
    config.send_tls13_tickets = 1;
    // As many remembered sessions as the gateway (rustls keeps 256 by
    // default, so a larger HTTP-only fleet polling round-robin would make a
    // full handshake every time). An entry holds the client certificate
    // when one was presented (a resumed connection still knows its peer),
    // about a kilobyte then (decisions 0009, 0011).
    config.session_storage =
        rustls::server::ServerSessionMemoryCache::new(margo_broker::tls::TLS_SESSION_CACHE);
    Ok(Arc::new(config))
}

/// Everything the API handlers need.
#[derive(Clone)]
pub struct ApiState {
    /// The application core every handler calls.
    pub fleet: Fleet,
    /// Onboarding policy and limits.
    pub onboarding: Arc<OnboardingSettings>,
    /// Allow-listed request ids (normalized fingerprints).
    pub allowlist: Arc<Vec<String>>,
    /// Per-source-address limiter.
    pub limiter: Arc<RateLimiter>,
    /// Onboarding counters.
    pub stats: Arc<OnboardingStats>,
    /// Built deployment bundles.
    pub bundles: BundleCache,
    /// Largest status or capabilities body.
    pub max_body_bytes: usize,
    /// Whether the manifest, deployment and bundle GETs must be signed.
    pub require_signed_reads: bool,
    /// Accepted signature schemes and the RFC 9421 time window.
    pub auth: Arc<access::AuthSettings>,
    /// The process's descriptor reserve: a device's authenticated request
    /// makes its source network known.
    pub fd_reserve: Arc<FdReserve>,
}

impl ApiState {
    /// State for `settings`, with fresh counters and limiter.
    pub fn new(
        fleet: Fleet,
        settings: OnboardingSettings,
        http: &HttpSettings,
        stats: Arc<OnboardingStats>,
        fd_reserve: Arc<FdReserve>,
    ) -> Self {
        let limiter = RateLimiter::new(settings.rate_per_minute, settings.rate_burst);
        let auth = access::AuthSettings {
            clock: fleet.store().clock().clone(),
            ..access::AuthSettings::from_config(http)
        };
        Self {
            fleet,
            allowlist: Arc::new(settings.allowed_request_ids()),
            onboarding: Arc::new(settings),
            limiter: Arc::new(limiter),
            stats,
            bundles: BundleCache::default(),
            max_body_bytes: http.max_body_bytes,
            require_signed_reads: http.require_signed_reads,
            auth: Arc::new(auth),
            fd_reserve,
        }
    }
}

/// Every route of the public API: method, path (axum syntax, which is the
/// OpenAPI syntax but for the `*` of a catch-all parameter) and handler.
/// `max_body_bytes` bounds the report bodies.
pub fn api_routes(max_body_bytes: usize) -> Vec<(Method, &'static str, MethodRouter<ApiState>)> {
    use onboarding::{CERTIFICATE_PATH, ONBOARDING_PATH, POLL_ROUTE};
    let limit = || DefaultBodyLimit::max(max_body_bytes);
    vec![
        (Method::GET, CERTIFICATE_PATH, get(onboarding::certificate)),
        (
            Method::POST,
            ONBOARDING_PATH,
            post(onboarding::submit).layer(DefaultBodyLimit::max(onboarding::MAX_BODY_BYTES)),
        ),
        (Method::GET, POLL_ROUTE, get(onboarding::poll)),
        (
            Method::GET,
            deployments::MANIFEST_ROUTE,
            get(deployments::manifest),
        ),
        (
            Method::GET,
            deployments::DEPLOYMENT_ROUTE,
            get(deployments::deployment),
        ),
        (
            Method::GET,
            deployments::BUNDLE_ROUTE,
            get(deployments::bundle),
        ),
        (
            Method::POST,
            uplink::STATUS_ROUTE,
            post(uplink::status).layer(limit()),
        ),
        (
            Method::POST,
            uplink::DEVICE_CAPABILITIES_ROUTE,
            post(uplink::put_device_capabilities).layer(limit()),
        ),
        (
            Method::PUT,
            uplink::DEVICE_CAPABILITIES_ROUTE,
            put(uplink::put_device_capabilities).layer(limit()),
        ),
        (
            Method::DELETE,
            uplink::DEVICE_CAPABILITIES_ROUTE,
            delete(uplink::delete_capabilities).layer(limit()),
        ),
        (
            Method::POST,
            uplink::CAPABILITIES_ROUTE,
            post(uplink::put_body_capabilities).layer(limit()),
        ),
        (
            Method::PUT,
            uplink::CAPABILITIES_ROUTE,
            put(uplink::put_body_capabilities).layer(limit()),
        ),
        // rc.3: the caller is the client of the TLS client certificate.
        (
            Method::GET,
            deployments::RC3_MANIFEST_ROUTE,
            get(deployments::rc3_manifest),
        ),
        (
            Method::GET,
            deployments::RC3_DEPLOYMENT_ROUTE,
            get(deployments::rc3_deployment),
        ),
        (
            Method::GET,
            deployments::RC3_BUNDLE_ROUTE,
            get(deployments::rc3_bundle),
        ),
        (
            Method::POST,
            uplink::RC3_STATUS_ROUTE,
            post(uplink::rc3_status).layer(limit()),
        ),
        (
            Method::PUT,
            uplink::RC3_CAPABILITIES_ROUTE,
            put(uplink::rc3_put_capabilities).layer(limit()),
        ),
        (
            Method::DELETE,
            uplink::RC3_CAPABILITIES_ROUTE,
            delete(uplink::rc3_delete_capabilities).layer(limit()),
        ),
    ]
}

/// `(method, OpenAPI path)` of every route the router serves.
pub fn route_table() -> Vec<(Method, String)> {
    api_routes(64 * 1024)
        .into_iter()
        .map(|(method, path, _)| (method, path.replace("{*", "{")))
        .collect()
}

/// The public API router. Unknown paths and methods get problem bodies.
pub fn router(state: ApiState, http_stats: Arc<HttpStats>) -> Router {
    let mut router = Router::new();
    for (_, path, method_router) in api_routes(state.max_body_bytes) {
        // Routes of one path merge their methods.
        router = router.route(path, method_router);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(problem::negotiate))
        .layer(middleware::from_fn(move |req, next| {
            request_deadline(Arc::clone(&http_stats), req, next)
        }))
}

async fn not_found() -> Response {
    problem::problem(StatusCode::NOT_FOUND, "no such resource")
}

async fn method_not_allowed() -> Response {
    problem::problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this resource",
    )
}

async fn request_deadline(stats: Arc<HttpStats>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            stats.inc(HttpMetric::RequestTimeout);
            info!(%peer, timeout = ?REQUEST_TIMEOUT, "request deadline passed");
            problem::problem(
                StatusCode::REQUEST_TIMEOUT,
                "the request took too long to arrive",
            )
        }
    }
}

/// A bound HTTPS listener, not yet serving.
pub struct HttpsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    handshake_timeout: Duration,
    /// Open connections, capped in total and per source network.
    connections: SourceSlots,
    /// Near the open-file limit, only known source networks get in.
    fd_reserve: Arc<FdReserve>,
    stats: Arc<HttpStats>,
}

impl std::fmt::Debug for HttpsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl HttpsServer {
    /// Binds `listen` and prepares to serve `router` over `tls` with the
    /// handshake deadline and connection caps of `limits`.
    pub async fn bind(
        listen: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        router: Router,
        limits: &HttpSettings,
        stats: Arc<HttpStats>,
        fd_reserve: Arc<FdReserve>,
    ) -> Result<Self, HttpError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| HttpError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| HttpError::Bind {
            addr: listen,
            source,
        })?;
        Ok(Self {
            listener,
            local_addr,
            acceptor: TlsAcceptor::from(tls),
            router,
            handshake_timeout: limits.handshake_timeout,
            connections: SourceSlots::new(
                limits.max_connections,
                limits.max_connections_per_source,
            ),
            fd_reserve,
            stats,
        })
    }

    /// The bound address (the real port when configured with 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown`, then lets open connections finish (bounded).
    pub async fn run(self, shutdown: CancellationToken) {
        info!(listen = %self.local_addr, "HTTPS API serving");
        let tracker = TaskTracker::new();
        loop {
            let Some((socket, peer)) =
                margo_broker::accept::next(&self.listener, &shutdown, "HTTPS API").await
            else {
                break;
            };
            self.stats.inc(HttpMetric::Accepted);
            if !self.fd_reserve.admits(fd_of(&socket), peer.ip()) {
                self.stats.inc(HttpMetric::RefusedFdReserve);
                debug!(%peer, "near the open-file limit: only known sources get in; connection closed");
                continue;
            }
            let slot = match self.connections.try_take(peer.ip()) {
                Ok(slot) => slot,
                Err(SlotRefusal::PerSource) => {
                    self.stats.inc(HttpMetric::RefusedSourceCap);
                    debug!(%peer, "HTTPS per-source connection cap reached; connection closed");
                    continue;
                }
                Err(SlotRefusal::Total) => {
                    self.stats.inc(HttpMetric::RefusedConnectionCap);
                    warn!(%peer, "HTTPS connection cap reached; connection closed");
                    continue;
                }
            };
            let conn = Connection {
                acceptor: self.acceptor.clone(),
                router: self.router.clone(),
                handshake_timeout: self.handshake_timeout,
                stats: Arc::clone(&self.stats),
            };
            tracker.spawn(
                conn.serve(socket, peer, slot, shutdown.clone())
                    .instrument(tracing::debug_span!("https", %peer)),
            );
        }
        tracker.close();
        tracker.wait().await;
        info!("HTTPS API stopped");
    }
}

struct Connection {
    acceptor: TlsAcceptor,
    router: Router,
    handshake_timeout: Duration,
    stats: Arc<HttpStats>,
}

impl Connection {
    async fn serve(
        self,
        socket: TcpStream,
        peer: SocketAddr,
        _slot: Slot,
        shutdown: CancellationToken,
    ) {
        let tls =
            match accept_with_deadline(&self.acceptor, socket, self.handshake_timeout, &shutdown)
                .await
            {
                Handshake::Done(tls) => *tls,
                Handshake::Cancelled => return,
                Handshake::Failed(error) => {
                    self.stats.inc(HttpMetric::HandshakeFailed);
                    debug!(%error, "TLS handshake failed");
                    return;
                }
                Handshake::TimedOut => {
                    self.stats.inc(HttpMetric::HandshakeTimeout);
                    debug!(timeout = ?self.handshake_timeout, "TLS handshake deadline passed");
                    return;
                }
            };
        let mut router = self.router.layer(Extension(ConnectInfo(peer)));
        if let Some(cert) = tls_peer::PeerCertificate::of(tls.get_ref().1) {
            router = router.layer(Extension(cert));
        }
        let service = TowerToHyperService::new(router);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let conn = builder.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(DRAIN, conn.as_mut()).await {
                    Ok(result) => result,
                    Err(_) => return,
                }
            }
        };
        if let Err(error) = result {
            debug!(%error, "HTTPS connection ended with an error");
        }
    }
}
