//! Wiring: opens the store, loads the PKI, starts the embedded broker (or
//! targets an external one), the MQTT connection, publisher, ingest and the
//! admin API; [`run`] for the binary, [`Manager::start`] in-process.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use margo_broker::{
    BrokerConfig, BrokerError, BrokerHandle, EmbeddedBroker, FdReserve, GatewayConfig, Listener,
    Login,
};
use rumqttc::AsyncClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, AdminServeError, AdminState};
use crate::ca::{CaError, FleetPki};
use crate::clock::Clock;
use crate::config::{BrokerMode, ConfigError, ManagerConfig};
use crate::fleet::{Fleet, FleetParts, KeyCache};
use crate::http::{self, ApiState, HttpError, HttpStats, HttpsServer, OnboardingStats};
use crate::ingest::{Ingest, IngestDeps, IngestSettings, IngestStats};
use crate::mqtt_link::{self, Connection, LinkStats, MqttTarget};
use crate::publisher::{Downlink, Publisher};
use crate::store::{Store, StoreError};
use crate::telemetry::{MetricsServer, Readiness, TelemetryError};

/// Capacity of the connection → ingest channel.
const UPLINK_CHANNEL: usize = 4096;
/// How long start waits for the first ConnAck.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open admin connections.
const ADMIN_DRAIN: Duration = Duration::from_secs(2);
/// How long shutdown waits for store calls still running on the blocking pool.
const STORE_RELEASE: Duration = Duration::from_secs(10);

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be prepared.
    #[error("data directory {path} (`data_dir` in the configuration file): {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The database file could not be opened at start (a full or read-only
    /// file system, ...): nothing was changed in it.
    #[error(
        "cannot open the store {path}: {source}; it lives in `data_dir` of the configuration \
         file: free space or make the directory writable (or move `data_dir`), then start again"
    )]
    StoreOpen {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The PKI could not be created or loaded.
    #[error("PKI: {0}")]
    Pki(#[from] CaError),
    /// The embedded broker did not start.
    #[error("embedded broker: {0}")]
    Broker(#[from] margo_broker::BrokerError),
    /// TLS material for an external broker is unusable.
    #[error("broker TLS: {0}")]
    Tls(String),
    /// The broker login (`[broker] password_file`) is unusable.
    #[error("broker login: {0}")]
    Login(String),
    /// The admin socket could not be served.
    #[error(transparent)]
    Admin(#[from] AdminServeError),
    /// The HTTPS listener could not start.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The metrics listener could not start.
    #[error(transparent)]
    Metrics(#[from] crate::telemetry::TelemetryError),
    /// The revocation list for external brokers could not be written.
    #[error("revocation list: {0}")]
    RevocationList(crate::fleet::FleetError),
    /// A listener cannot take its address (another process holds the port?).
    #[error(
        "cannot listen on {addr} ({what}): {reason}; another process may hold it: \
         move it with `{key}` in the configuration file"
    )]
    Listen {
        /// Which listener, in words.
        what: &'static str,
        /// The configuration key of its address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The embedded broker did not accept the manager's connection in time.
    #[error("no connection to the broker at {0} within {CONNECT_WAIT:?}")]
    NotConnected(String),
}

/// The embedded broker's listener errors in the manager's own configuration
/// keys (`[broker] mqtt_listen`, `[broker] gateway_listen`).
fn broker_listen_error(error: BrokerError) -> ManagerError {
    let key = |listener| match listener {
        Listener::Mqtt => "[broker] mqtt_listen",
        Listener::Internal => "[broker] internal_listen",
        Listener::Gateway => "[broker] gateway_listen",
    };
    match error {
        BrokerError::Bind {
            listener,
            addr,
            source,
        } => ManagerError::Listen {
            what: listener.describe(),
            key: key(listener),
            addr,
            reason: source.to_string(),
        },
        BrokerError::NotOurs {
            listener,
            addr,
            reason,
        } => ManagerError::Listen {
            what: listener.describe(),
            key: key(listener),
            addr,
            reason,
        },
        other => other.into(),
    }
}

/// The login presented to an external broker: `[broker] username` (default
/// `margo-internal`, a standalone margo-broker's) with the password in
/// `[broker] password_file`; none without a password file.
fn external_login(config: &ManagerConfig) -> Result<Option<Login>, ManagerError> {
    let Some(path) = &config.broker.password_file else {
        return Ok(None);
    };
    let password = std::fs::read_to_string(path)
        .map_err(|e| ManagerError::Login(format!("broker.password_file {}: {e}", path.display())))?
        .trim()
        .to_string();
    let username = config
        .broker
        .username
        .clone()
        .unwrap_or_else(|| margo_broker::INTERNAL_USERNAME.to_string());
    Ok(Some(Login { username, password }))
}

/// What `init` created.
#[derive(Debug)]
pub struct InitReport {
    /// The PKI.
    pub pki: crate::ca::PkiPaths,
    /// The redb file.
    pub store: PathBuf,
    /// `sha256:<hex>` of the fleet CA's DER: what devices pin.
    pub ca_fingerprint: margo_schemas::digest::Digest,
}

fn prepare_data_dir(config: &ManagerConfig) -> Result<(), ManagerError> {
    let dir = &config.data_dir;
    let err = |source| ManagerError::DataDir {
        path: dir.clone(),
        source,
    };
    // 0700 (and any parent we create), whatever the umask.
    margo_schemas::private_fs::create_dir_all(dir).map_err(err)
}

fn load_pki(config: &ManagerConfig) -> Result<FleetPki, ManagerError> {
    let provided = match (&config.pki.ca_cert_file, &config.pki.ca_key_file) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    Ok(FleetPki::load_or_create(
        &config.pki_dir(),
        &config.broker.hostnames,
        provided,
    )?)
}

/// Creates the PKI and the store (if missing) and returns their paths. Does not start anything.
pub fn init(config: &ManagerConfig) -> Result<InitReport, ManagerError> {
    config.validate()?;
    prepare_data_dir(config)?;
    let pki = load_pki(config)?;
    let store = Store::open(&config.store_path()).map_err(|source| ManagerError::StoreOpen {
        path: config.store_path(),
        source,
    })?;
    let crl = pki
        .paths()
        .dir
        .join(crate::fleet::revocation_list::CRL_FILE);
    crate::fleet::revocation_list::write(&store, &pki, &crl)
        .map_err(ManagerError::RevocationList)?;
    drop(store);
    Ok(InitReport {
        pki: pki.paths().clone(),
        store: config.store_path(),
        ca_fingerprint: pki.ca_fingerprint()?,
    })
}

/// The in-process manager.
pub struct Manager;

/// A running manager.
pub struct ManagerHandle {
    admin_socket: PathBuf,
    mqtt: String,
    mqtt_addr: Option<SocketAddr>,
    gateway_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    admin_task: JoinHandle<()>,
    broker: Option<BrokerHandle>,
    ingest_stats: Arc<IngestStats>,
    link_stats: Arc<LinkStats>,
    onboarding_stats: Arc<OnboardingStats>,
    http_stats: Arc<HttpStats>,
    connected: watch::Receiver<bool>,
    pki: Arc<FleetPki>,
    /// Kept so shutdown can wait until every other handle is gone (the
    /// database file is unlocked then, and a restart can open it).
    store: Store,
}

impl std::fmt::Debug for ManagerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerHandle")
            .field("admin_socket", &self.admin_socket)
            .field("mqtt", &self.mqtt)
            .field("gateway_addr", &self.gateway_addr)
            .field("http_addr", &self.http_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Starts everything described by `config` and returns once the admin API
    /// serves and the MQTT connection is up (embedded: required; external: a
    /// warning after 10 s, the connection keeps retrying).
    pub async fn start(config: ManagerConfig) -> Result<ManagerHandle, ManagerError> {
        Self::start_with_clock(config, Clock::system()).await
    }

    /// [`Manager::start`] reading wall-clock time from `clock` (tests pass a
    /// [`crate::clock::ManualClock`] to expire tokens or age clients
    /// without sleeping).
    pub async fn start_with_clock(
        config: ManagerConfig,
        clock: Clock,
    ) -> Result<ManagerHandle, ManagerError> {
        config.validate()?;
        margo_schemas::pki::install_crypto_provider();
        prepare_data_dir(&config)?;
        let store_path = config.store_path();
        let opening = store_path.clone();
        let store = tokio::task::spawn_blocking(move || Store::open_with_clock(&opening, clock))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map_err(|source| ManagerError::StoreOpen {
                path: store_path,
                source,
            })?
            .with_clone_rule(config.broker.clone_detection);
        let pki = Arc::new(load_pki(&config)?);

        let (broker, target, mqtt, mqtt_addr, gateway_addr) = match config.broker.mode {
            BrokerMode::Embedded => {
                let mut broker_config = BrokerConfig::default();
                broker_config.mqtt.listen = config.broker.mqtt_listen;
                broker_config.internal.listen = config.broker.internal_listen;
                if let Some(path) = &config.broker.password_file {
                    let password = margo_broker::load_or_create_password(path)
                        .map_err(|e| ManagerError::Login(format!("broker.password_file: {e}")))?;
                    broker_config.internal.password = Some(password);
                }
                broker_config.limits = config.broker.limits.clone();
                let mut gateway = GatewayConfig::new(pki.gateway_tls()?);
                gateway.listen = config.broker.gateway_listen;
                gateway.max_packet_bytes = config.broker.limits.max_payload_bytes;
                gateway.device_rate = config.broker.device_rate;
                gateway.clone_detection = config.broker.clone_detection;
                broker_config.gateway = Some(gateway);
                let broker = EmbeddedBroker::start(broker_config)
                    .await
                    .map_err(broker_listen_error)?;
                let revoked = store
                    .run(|s| s.clients())
                    .await?
                    .into_iter()
                    .filter(|c| c.record.revoked)
                    .map(|c| c.id);
                broker.revocations().replace_all(revoked);
                // The manager's own session goes to rumqttd's internal
                // listener with the login; `mqtt` is the operators' read-only one.
                let addr = broker.mqtt_addr();
                let upstream = broker.upstream();
                let target = MqttTarget {
                    host: upstream.addr.ip().to_string(),
                    port: upstream.addr.port(),
                    tls: None,
                    login: upstream.login,
                };
                let gateway_addr = broker.gateway_addr();
                (
                    Some(broker),
                    target,
                    addr.to_string(),
                    Some(addr),
                    gateway_addr,
                )
            }
            BrokerMode::External => {
                let url = config
                    .external_broker()?
                    .ok_or_else(|| ManagerError::Tls("no external broker URL".into()))?;
                let tls = if url.tls {
                    let ca_pem = match &config.broker.ca_file {
                        Some(path) => std::fs::read(path).map_err(|e| {
                            ManagerError::Tls(format!("broker.ca_file {}: {e}", path.display()))
                        })?,
                        None => pki.ca_pem().as_bytes().to_vec(),
                    };
                    let (cert, key) = pki.manager_client_pem()?;
                    let tls = margo_schemas::pki::client_tls_config(&ca_pem, Some((&cert, &key)))
                        .map_err(|e| ManagerError::Tls(e.to_string()))?;
                    Some(Arc::new(tls))
                } else {
                    None
                };
                let target = MqttTarget {
                    host: url.host.clone(),
                    port: url.port,
                    tls,
                    login: external_login(&config)?,
                };
                (None, target, url.to_string(), None, None)
            }
        };

        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ingest_stats = Arc::new(IngestStats::default());
        let link_stats = Arc::new(LinkStats::default());
        let (connected_tx, connected) = watch::channel(false);
        let downlink = Downlink::new();
        let onboarding_stats = Arc::new(OnboardingStats::default());
        let http_stats = Arc::new(HttpStats::default());
        let fleet = Fleet::new(FleetParts {
            store: store.clone(),
            pki: Arc::clone(&pki),
            downlink: downlink.clone(),
            keys: KeyCache::default(),
            revocations: broker.as_ref().map(BrokerHandle::revocations),
            public_broker_url: config.public_broker_url.clone(),
        });
        if let Err(error) = fleet.write_revocation_list().await {
            if let Some(broker) = broker {
                broker.shutdown().await;
            }
            return Err(ManagerError::RevocationList(error));
        }

        if config.http.enabled && config.onboarding.approval == crate::config::Approval::Auto {
            warn!(
                listen = %config.http.listen,
                "[onboarding] approval = \"auto\": EVERY device that asks is approved without an operator (labs and conformance runs only)"
            );
        }
        // Bind the HTTPS listener before any task runs, so a taken port fails
        // the start cleanly.
        let https = if config.http.enabled {
            let bound = async {
                let (cert, key) = pki.server_pem()?;
                let tls = http::server_tls_config(&cert, &key)?;
                // One descriptor reserve per process: the gateway's, or
                // the listener's own with an external broker.
                let fd_reserve = broker.as_ref().map_or_else(
                    || Arc::new(FdReserve::new(config.broker.limits.fd_reserve)),
                    BrokerHandle::fd_reserve,
                );
                let api = ApiState::new(
                    fleet.clone(),
                    config.onboarding.clone(),
                    &config.http,
                    Arc::clone(&onboarding_stats),
                    Arc::clone(&fd_reserve),
                );
                let router = http::router(api, Arc::clone(&http_stats));
                HttpsServer::bind(
                    config.http.listen,
                    tls,
                    router,
                    &config.http,
                    Arc::clone(&http_stats),
                    fd_reserve,
                )
                .await
                .map_err(|error| match error {
                    HttpError::Bind { addr, source } => ManagerError::Listen {
                        what: "the HTTPS API",
                        key: "[http] listen",
                        addr,
                        reason: source.to_string(),
                    },
                    other => other.into(),
                })
            }
            .await;
            match bound {
                Ok(server) => Some(server),
                Err(error) => {
                    if let Some(broker) = broker {
                        broker.shutdown().await;
                    }
                    return Err(error);
                }
            }
        } else {
            None
        };
        let http_addr = https.as_ref().map(HttpsServer::local_addr);
        let metrics = if config.metrics.enabled {
            let readiness = Readiness {
                broker_connected: connected.clone(),
                shutdown: shutdown.clone(),
            };
            match MetricsServer::bind(config.metrics.listen, readiness).await {
                Ok(server) => Some(server),
                Err(error) => {
                    if let Some(broker) = broker {
                        broker.shutdown().await;
                    }
                    return Err(match error {
                        TelemetryError::Bind { addr, source } => ManagerError::Listen {
                            what: "the metrics listener",
                            key: "[metrics] listen",
                            addr,
                            reason: source.to_string(),
                        },
                        other => other.into(),
                    });
                }
            }
        } else {
            None
        };
        let metrics_addr = metrics.as_ref().map(MetricsServer::local_addr);
        let (client, mut eventloop) = AsyncClient::new(
            mqtt_link::mqtt_options(&target),
            mqtt_link::REQUEST_CAPACITY,
        );
        eventloop.set_network_options(mqtt_link::network_options(eventloop.network_options()));
        let (uplink_tx, uplink_rx) = mpsc::channel(UPLINK_CHANNEL);

        let connection = Connection::new(
            eventloop,
            uplink_tx,
            {
                let downlink = downlink.clone();
                move || downlink.on_connected()
            },
            connected_tx,
            Arc::clone(&link_stats),
        )
        .clearing_retained_with(client.clone());
        tracker.spawn(connection.run(shutdown.clone()));
        if config.broker.mode == BrokerMode::External {
            tracker.spawn(sweep_retained(
                downlink.clone(),
                config.broker.retained_sweep,
                shutdown.clone(),
            ));
        }
        let publisher = Publisher::new(
            downlink.clone(),
            client,
            store.clone(),
            pki.signing_key(),
            Arc::clone(&link_stats),
        );
        tracker.spawn(publisher.run(shutdown.clone()));
        let ingest = Ingest::new(
            uplink_rx,
            IngestDeps {
                fleet: fleet.clone(),
                stats: Arc::clone(&ingest_stats),
            },
            IngestSettings {
                batch_max: config.ingest.batch_max,
                batch_interval: config.ingest.batch_interval,
                max_payload: config.max_payload_bytes,
            },
        );
        tracker.spawn(ingest.run(shutdown.clone()));
        tracker.spawn(fleet.clone().follow_gateway_clones(shutdown.clone()));
        if let Some(server) = https {
            tracker.spawn(server.run(shutdown.clone()));
        }
        if let Some(server) = metrics {
            tracker.spawn(server.run(shutdown.clone()));
        }

        let admin_socket = config.admin_socket_path();
        let listener = admin::bind_socket(&admin_socket)?;
        let state = AdminState {
            fleet,
            ingest_stats: Arc::clone(&ingest_stats),
            link_stats: Arc::clone(&link_stats),
            connected: connected.clone(),
            onboarding_stats: Arc::clone(&onboarding_stats),
            http_stats: Arc::clone(&http_stats),
            gateway_stats: broker.as_ref().map(BrokerHandle::stats),
            onboarding_approval: config.onboarding.approval.as_str(),
        };
        let admin_task = tokio::spawn(admin::serve(listener, state, shutdown.clone()));

        let handle = ManagerHandle {
            admin_socket,
            mqtt,
            mqtt_addr,
            gateway_addr,
            http_addr,
            metrics_addr,
            shutdown,
            tracker,
            admin_task,
            broker,
            ingest_stats,
            link_stats,
            onboarding_stats,
            http_stats,
            connected,
            pki,
            store,
        };
        let mut connected = handle.connected.clone();
        // A bool, not the watch guard: holding the guard across the awaits
        // below would make this future !Send (it could not be spawned).
        let up = matches!(
            tokio::time::timeout(CONNECT_WAIT, connected.wait_for(|c| *c)).await,
            Ok(Ok(_))
        );
        if !up {
            if handle.broker.is_some() {
                let mqtt = handle.mqtt.clone();
                handle.shutdown().await;
                return Err(ManagerError::NotConnected(mqtt));
            }
            warn!(broker = %handle.mqtt, "not connected to the external broker yet; retrying in the background");
        }
        info!(
            admin = %handle.admin_socket.display(),
            mqtt = %handle.mqtt,
            gateway = ?handle.gateway_addr,
            http = ?handle.http_addr,
            metrics = ?handle.metrics_addr,
            "margo-manager ready"
        );
        Ok(handle)
    }
}

impl ManagerHandle {
    /// The admin socket.
    pub fn admin_socket(&self) -> &std::path::Path {
        &self.admin_socket
    }

    /// An admin client for this manager.
    pub fn admin(&self) -> crate::admin::AdminClient {
        crate::admin::AdminClient::new(&self.admin_socket)
    }

    /// The broker: the embedded loopback address, or the external URL.
    pub fn mqtt(&self) -> &str {
        &self.mqtt
    }

    /// The embedded broker's plain loopback address.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    /// The embedded device gateway's address.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway_addr
    }

    /// The HTTPS API's address, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The metrics listener's address (`[metrics] enabled`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Onboarding counters.
    pub fn onboarding_stats(&self) -> Arc<OnboardingStats> {
        Arc::clone(&self.onboarding_stats)
    }

    /// HTTPS connection counters.
    pub fn http_stats(&self) -> Arc<HttpStats> {
        Arc::clone(&self.http_stats)
    }

    /// The fleet PKI.
    pub fn pki(&self) -> &FleetPki {
        &self.pki
    }

    /// Ingest counters.
    pub fn ingest_stats(&self) -> Arc<IngestStats> {
        Arc::clone(&self.ingest_stats)
    }

    /// Link counters.
    pub fn link_stats(&self) -> Arc<LinkStats> {
        Arc::clone(&self.link_stats)
    }

    /// Whether the MQTT connection is up.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// A token that stops the manager when cancelled (then call [`shutdown`](Self::shutdown)).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The ready line:
    /// `margo-manager ready admin=<socket> mqtt=<addr|url> gateway=<addr|-> http=<addr|-> metrics=<addr|->`.
    pub fn ready_line(&self) -> String {
        let or_dash =
            |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        format!(
            "margo-manager ready admin={} mqtt={} gateway={} http={} metrics={}",
            self.admin_socket.display(),
            self.mqtt,
            or_dash(self.gateway_addr),
            or_dash(self.http_addr),
            or_dash(self.metrics_addr),
        )
    }

    /// Stops every task, waits for them, closes the store and the gateway.
    /// (The embedded rumqttd cannot be stopped; it lives until the process exits.)
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let mut admin_task = self.admin_task;
        if tokio::time::timeout(ADMIN_DRAIN, &mut admin_task)
            .await
            .is_err()
        {
            admin_task.abort();
            let _ = admin_task.await;
        }
        if let Some(broker) = self.broker {
            broker.shutdown().await;
        }
        if !self.store.wait_until_sole_handle(STORE_RELEASE).await {
            warn!(
                wait = ?STORE_RELEASE,
                "a store operation is still running after shutdown; the database stays locked until it ends"
            );
        }
        let _ = std::fs::remove_file(&self.admin_socket);
        info!("margo-manager stopped");
    }
}

/// Every `every`, asks the publisher to subscribe again to the uplink
/// topics that must hold no retained message: an external broker then
/// delivers any a device left, and the MQTT connection clears it.
async fn sweep_retained(downlink: Downlink, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the connect already subscribed.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => downlink.sweep_retained(),
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT; returns once `token` is cancelled,
/// by a signal or by the caller. For the binaries that run a manager
/// (`margo-manager serve`, `margo-demo`).
pub async fn shutdown_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = token.cancelled() => {}
    }
    token.cancel();
    Ok(())
}

/// Runs the manager until `shutdown` is cancelled. Prints the ready line on
/// stdout (flushed) once serving.
pub async fn run(config: ManagerConfig, shutdown: CancellationToken) -> Result<(), ManagerError> {
    let handle = Manager::start(config).await?;
    match handle.pki().ca_fingerprint() {
        Ok(fp) => {
            info!(ca_fingerprint = %fp, "fleet CA fingerprint (devices pin it: --ca-fingerprint)")
        }
        Err(error) => warn!(%error, "cannot compute the fleet CA fingerprint"),
    }
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", handle.ready_line());
        let _ = stdout.flush();
    }
    let internal = handle.shutdown_token();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = internal.cancelled() => {}
    }
    handle.shutdown().await;
    Ok(())
}
