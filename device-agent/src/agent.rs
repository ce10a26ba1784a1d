//! The library entry point: [`Agent::new`] → [`Agent::handle`] → [`Agent::run`].
//!
//! For in-process use (demo, fleet simulator) everything the agent depends
//! on can be injected through [`AgentOptions`]: an in-memory store, an
//! identity built from PEM, a shared simulated runtime, a clock.

use std::sync::Arc;

use margo_schemas::ids::ClientId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capabilities::{CapabilitiesError, CapabilitiesReporter, CapabilitiesSource, HostProbe};
use crate::clock::{Clock, SystemClock};
use crate::config::{AdapterKind, AgentConfig, BrokerUrl, ConfigError, Transport};
use crate::connection::{
    ConnectionSetupError, MqttTransport, MqttTransportDeps, MqttTransportSettings,
};
#[cfg(feature = "http-transport")]
use crate::http_transport::{HttpDeps, HttpSettings, HttpSetupError, HttpTransport};
use crate::identity::{Identity, IdentityError, IdentityKind, WireClientId};
use crate::outbox::{Outbox, OutboxError, Uplink};
use crate::reconcile::{ReconcileContext, ReconcileError, Reconciler, RetryPolicy};
use crate::runtime::{
    ComposeRuntime, ExecRuntime, HelmRuntime, NativeRuntime, Runtime, SimulatedRuntime,
};
use crate::schedule_plan::ScheduleRx;
use crate::snapshot::{AgentSnapshot, DeploymentView, Snapshots};
use crate::stats::AgentStats;
use crate::store::{Store, StoreError};
use crate::sync::{
    DesiredStateSync, DesiredStateSyncDeps, DesiredStateSyncSettings, ManifestSink, ScheduleControl,
};

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The database file could not be opened at start (a full or read-only
    /// file system, ...): nothing was changed in it.
    #[error(
        "cannot open the store {}: {source}; it lives in `data_dir` of the configuration \
         file: free space or make the directory writable (or move `data_dir`), then start again",
        path.display()
    )]
    StoreOpen {
        path: std::path::PathBuf,
        source: StoreError,
    },
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("connection: {0}")]
    Connection(#[from] ConnectionSetupError),
    #[cfg(feature = "http-transport")]
    #[error("HTTP transport: {0}")]
    Http(#[from] HttpSetupError),
    #[error("reconcile: {0}")]
    Reconcile(#[from] ReconcileError),
    #[error("{0}")]
    Capabilities(#[from] CapabilitiesError),
    #[error("the reconcile task panicked")]
    TaskPanicked,
}

/// Optional replacements for what [`Agent::new`] would otherwise build from the config.
#[derive(Debug, Default, Clone)]
pub struct AgentOptions {
    /// Use this store instead of `data_dir/agent.redb` (e.g. [`Store::in_memory`]).
    pub store: Option<Store>,
    /// Use this identity instead of loading `identity_dir`.
    pub identity: Option<Identity>,
    /// Use this runtime adapter instead of the configured one.
    pub runtime: Option<Arc<dyn Runtime>>,
    /// Use this clock instead of the system clock.
    pub clock: Option<Arc<dyn Clock>>,
    /// Read host facts for capabilities from here instead of `/` (tests).
    pub host: Option<HostProbe>,
}

/// Observes a running agent.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// The client id.
    pub client_id: ClientId,
    /// Snapshots, updated on every change.
    pub snapshots: watch::Receiver<AgentSnapshot>,
    /// Live counters.
    pub stats: Arc<AgentStats>,
}

/// A configured agent, ready to run.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    /// None for a plain Margo identity (HTTP transport only).
    broker: Option<BrokerUrl>,
    identity: Identity,
    store: Store,
    runtime: Arc<dyn Runtime>,
    clock: Arc<dyn Clock>,
    stats: Arc<AgentStats>,
    snapshots: Snapshots,
    /// `None` when `capabilities.enabled = false`.
    capabilities: Option<CapabilitiesSource>,
}

/// The agent's parts before they run: lets tests drive the downlink
/// handler and the reconciler without a broker.
pub struct AgentParts {
    pub downlink: DesiredStateSync,
    /// Where either transport hands verified manifests to the reconciler.
    pub sink: ManifestSink,
    pub reconciler: Reconciler,
    pub reconcile: ReconcileContext,
    pub uplink: Uplink,
    pub store: Store,
    pub snapshots: Snapshots,
    /// The schedule in force (local, or remote from `R/config`).
    pub schedule: ScheduleRx,
}

impl Agent {
    /// Validates `config`, loads the identity (unless given), opens the store
    /// (unless given) and builds the runtime adapter (unless given).
    pub fn new(config: AgentConfig, options: AgentOptions) -> Result<Self, AgentError> {
        config.validate()?;
        margo_schemas::pki::install_crypto_provider();
        let clock: Arc<dyn Clock> = options.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let identity = match options.identity {
            Some(identity) => identity,
            None => Identity::load(&config.identity_dir)?,
        };
        let broker = match identity.kind {
            IdentityKind::Plain => {
                if config.transport == Transport::Mqtt {
                    return Err(ConfigError::Invalid {
                        field: "transport".to_string(),
                        reason: format!(
                            "the identity in {} is a plain Margo identity (client id {:?} assigned by a \
                             Margo WFM without x-margo-mqtt-extensions): it has no broker URL and no \
                             manager signing key, and its id need not be MQTT-topic-safe, so only \
                             transport = \"http\" can use it",
                            config.identity_dir.display(),
                            identity.wire_id.as_str()
                        ),
                    }
                    .into());
                }
                None
            }
            IdentityKind::Bundle => {
                let url = config
                    .broker_url
                    .clone()
                    .unwrap_or_else(|| identity.broker_url.clone());
                let field = if config.broker_url.is_some() {
                    "broker_url"
                } else {
                    "identity.toml broker_url"
                };
                let broker = crate::config::parse_broker_url(&url, field)?;
                if !broker.tls && !config.allow_plain_mqtt {
                    return Err(ConfigError::Invalid {
                        field: field.to_string(),
                        reason:
                            "mqtt:// (no TLS) is only allowed with allow_plain_mqtt = true (tests)"
                                .into(),
                    }
                    .into());
                }
                Some(broker)
            }
        };
        let store = match options.store {
            Some(store) => store,
            None => Store::open(&config.store_path()).map_err(|source| AgentError::StoreOpen {
                path: config.store_path(),
                source,
            })?,
        };
        let runtime: Arc<dyn Runtime> = match options.runtime {
            Some(runtime) => runtime,
            None => match config.runtime.adapter {
                AdapterKind::Simulated => Arc::new(SimulatedRuntime::new(
                    &config.runtime.simulated,
                    Arc::clone(&clock),
                )),
                AdapterKind::Exec => Arc::new(ExecRuntime::new(
                    &config.runtime.exec,
                    config.deployments_dir(),
                    Arc::clone(&clock),
                )),
                AdapterKind::Compose => Arc::new(ComposeRuntime::new(
                    &config.runtime.compose,
                    &config.data_dir,
                    Arc::clone(&clock),
                )),
                AdapterKind::Helm => Arc::new(HelmRuntime::new(
                    &config.runtime.helm,
                    &config.data_dir,
                    Arc::clone(&clock),
                )),
                AdapterKind::Native => Arc::new(NativeRuntime::new(
                    ComposeRuntime::new(
                        &config.runtime.compose,
                        &config.data_dir,
                        Arc::clone(&clock),
                    ),
                    HelmRuntime::new(&config.runtime.helm, &config.data_dir, Arc::clone(&clock)),
                )),
            },
        };
        let capabilities = if config.capabilities.enabled {
            let mut capabilities = config.capabilities.clone();
            capabilities.shape = Some(config.capabilities_shape());
            let source = CapabilitiesSource {
                config: capabilities,
                identity_name: identity.name.clone(),
                client_id: identity.client_id.clone(),
                runtime: runtime.supported(),
                probe: options.host.unwrap_or_default(),
            };
            // A configuration mistake is a start error that names the field.
            source.build()?;
            Some(source)
        } else {
            None
        };
        let stats = Arc::new(AgentStats::default());
        let initial = initial_snapshot(identity.wire_id.as_str(), &store)?;
        let snapshots = Snapshots::new(initial, Arc::clone(&stats));
        Ok(Self {
            config,
            broker,
            identity,
            store,
            runtime,
            clock,
            stats,
            snapshots,
            capabilities,
        })
    }

    /// The client id this agent runs as (inside the agent; see [`Self::wire_id`]).
    pub fn client_id(&self) -> &ClientId {
        &self.identity.client_id
    }

    /// The client id as the manager assigned it (the same text as
    /// [`Self::client_id`] unless the identity is a plain Margo one).
    pub fn wire_id(&self) -> &WireClientId {
        &self.identity.wire_id
    }

    /// The store (shared handle).
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// A handle for observing the agent while it runs.
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            client_id: self.identity.client_id.clone(),
            snapshots: self.snapshots.subscribe(),
            stats: Arc::clone(&self.stats),
        }
    }

    /// Builds the downlink handler, reconciler and outbox without starting anything.
    pub fn parts(&self) -> Result<AgentParts, AgentError> {
        let outbox = Outbox::open(
            self.store.clone(),
            self.identity.client_id.clone(),
            Arc::clone(&self.identity.signing_key),
            Arc::clone(&self.clock),
            self.config.outbox.clone(),
            Arc::clone(&self.stats),
        )?;
        let uplink = Uplink::new(outbox, self.snapshots.clone());
        let initial = self.store.accepted_manifest()?.map(Arc::new);
        let (targets_tx, targets_rx) = watch::channel(initial);
        let (schedule, schedule_rx) = ScheduleControl::new(
            self.config.local_schedule()?,
            self.store.remote_config()?.as_ref(),
        );
        let sink = ManifestSink::new(
            self.identity.client_id.clone(),
            self.store.clone(),
            Arc::clone(&self.stats),
            self.snapshots.clone(),
            targets_tx,
        );
        let downlink = DesiredStateSync::with_sink(
            DesiredStateSyncDeps {
                client: self.identity.client_id.clone(),
                manager_key: self.identity.manager_key.clone(),
                settings: DesiredStateSyncSettings {
                    max_message_bytes: self.config.max_message_bytes,
                    content_timeout: self.config.content_timeout,
                },
                store: self.store.clone(),
                uplink: uplink.clone(),
                clock: Arc::clone(&self.clock),
                stats: Arc::clone(&self.stats),
                snapshots: self.snapshots.clone(),
                schedule,
            },
            sink.clone(),
        )?;
        let reconcile = ReconcileContext {
            client: self.identity.client_id.clone(),
            store: self.store.clone(),
            runtime: Arc::clone(&self.runtime),
            uplink: uplink.clone(),
            clock: Arc::clone(&self.clock),
            stats: Arc::clone(&self.stats),
            snapshots: self.snapshots.clone(),
            schedule: schedule_rx.clone(),
        };
        let reconciler = Reconciler::new(
            reconcile.clone(),
            targets_rx,
            RetryPolicy {
                first: self.config.retry_failed_after,
                max: self.config.retry_failed_max,
            },
        );
        Ok(AgentParts {
            downlink,
            sink,
            reconciler,
            reconcile,
            uplink,
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            schedule: schedule_rx,
        })
    }

    /// Runs the transport (the MQTT connection, or the HTTP transport with
    /// `transport = "http"`) and the reconciler until `shutdown`. Over MQTT
    /// it then says `offline` and disconnects cleanly. Every outbox and state
    /// write is committed when made, so nothing is left to flush.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let parts = self.parts()?;
        if let Some(active) = parts.schedule.borrow().as_ref() {
            let schedule = &active.schedule;
            info!(
                source = ?active.source,
                config_version = active.config_version,
                time_zone = schedule.time_zone_name(),
                connection = %schedule.connection(),
                rate = ?schedule.rate(),
                downtime_windows = schedule.schedule().downtime.len(),
                "communication follows a schedule"
            );
        }
        let transport = match self.config.transport {
            Transport::Mqtt => {
                let Some(broker) = self.broker.clone() else {
                    return Err(ConfigError::Invalid {
                        field: "transport".to_string(),
                        reason: "a plain Margo identity can only use transport = \"http\"".into(),
                    }
                    .into());
                };
                let connection = MqttTransport::new(
                    MqttTransportSettings {
                        broker: broker.clone(),
                        keep_alive: self.config.keep_alive,
                        tls_resumption: self.config.tls_resumption,
                        connect_timeout: self.config.connect_timeout,
                        ack_timeout: self.config.ack_timeout,
                        reconnect_min: self.config.reconnect_min,
                        reconnect_max: self.config.reconnect_max,
                        state_interval: self.config.state_interval,
                        max_message_bytes: self.config.max_message_bytes,
                        wake_spread: self.config.wake_spread,
                        check_timeout: self.config.check_timeout,
                        check_settle: self.config.check_settle,
                    },
                    MqttTransportDeps {
                        identity: self.identity.clone(),
                        downlink: parts.downlink,
                        uplink: parts.uplink.clone(),
                        store: self.store.clone(),
                        clock: Arc::clone(&self.clock),
                        stats: Arc::clone(&self.stats),
                        snapshots: self.snapshots.clone(),
                        schedule: parts.schedule.clone(),
                    },
                )?;
                info!(
                    client_id = %self.identity.client_id,
                    transport = "mqtt",
                    broker = %format!("{}:{}", broker.host, broker.port),
                    runtime = self.runtime.supported().name,
                    profiles = ?self.runtime.supported().profiles,
                    "agent starting"
                );
                RunningTransport::Mqtt(Box::new(connection))
            }
            #[cfg(feature = "http-transport")]
            Transport::Http => {
                let mut settings = HttpSettings::from_config(&self.config)?;
                // The schedule in force: a remote one stored from an earlier
                // MQTT run wins over the local one, as on MQTT.
                settings.schedule = parts.schedule.borrow().as_ref().map(|a| a.schedule.clone());
                info!(
                    client_id = %self.identity.wire_id,
                    transport = "http",
                    api = %settings.api,
                    manager = %settings.manager,
                    runtime = self.runtime.supported().name,
                    profiles = ?self.runtime.supported().profiles,
                    "agent starting"
                );
                RunningTransport::Http(Box::new(HttpTransport::new(
                    settings,
                    HttpDeps {
                        identity: self.identity.clone(),
                        sink: parts.sink,
                        uplink: parts.uplink.clone(),
                        store: self.store.clone(),
                        clock: Arc::clone(&self.clock),
                        stats: Arc::clone(&self.stats),
                        snapshots: self.snapshots.clone(),
                    },
                )?))
            }
            // `validate` (in `new`) refuses this already; said again for library callers.
            #[cfg(not(feature = "http-transport"))]
            Transport::Http => {
                return Err(ConfigError::NotBuilt {
                    field: "transport",
                    feature: "http-transport",
                }
                .into())
            }
        };
        // The reconciler stops with the agent; if it stops on its own (a store
        // error), it stops the connection too.
        let inner = shutdown.child_token();
        let token = inner.clone();
        let reconciler = tokio::spawn(async move {
            let result = parts.reconciler.run(token.clone()).await;
            token.cancel();
            result
        });
        let reporter = self.capabilities.clone().map(|source| {
            let reporter = CapabilitiesReporter::new(
                source,
                self.store.clone(),
                parts.uplink.clone(),
                Arc::clone(&self.clock),
                Arc::clone(&self.stats),
                self.config.capabilities_interval,
            );
            tokio::spawn(reporter.run(inner.clone()))
        });
        match transport {
            RunningTransport::Mqtt(connection) => (*connection).run(inner.clone()).await,
            #[cfg(feature = "http-transport")]
            RunningTransport::Http(http) => (*http).run(inner.clone()).await,
        }
        inner.cancel();
        if let Some(reporter) = reporter {
            let _ = reporter.await;
        }
        let result = match reconciler.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AgentError::Reconcile(e)),
            Err(_) => Err(AgentError::TaskPanicked),
        };
        parts.uplink.store_held();
        let held = parts.uplink.lock().held();
        if held > 0 {
            warn!(client_id = %self.identity.client_id, held, "stopping with uplink messages the store refused (not kept; the next start reports the state afresh)");
        }
        parts.uplink.refresh();
        let pending = parts.uplink.lock().len();
        if pending > 0 {
            warn!(client_id = %self.identity.client_id, pending, "stopping with unacknowledged uplink messages (kept in the outbox)");
        }
        info!(client_id = %self.identity.client_id, "agent stopped");
        result
    }
}

/// The transport `run` drives (boxed: the two differ a lot in size).
enum RunningTransport {
    Mqtt(Box<MqttTransport>),
    #[cfg(feature = "http-transport")]
    Http(Box<HttpTransport>),
}

fn initial_snapshot(client: &str, store: &Store) -> Result<AgentSnapshot, StoreError> {
    let deployments = store
        .applied()?
        .into_iter()
        .map(|(id, r)| {
            (
                id.to_string(),
                DeploymentView {
                    state: r.state,
                    running: r.running,
                    error: r.error.map(|e| e.message),
                },
            )
        })
        .collect();
    Ok(AgentSnapshot {
        client_id: client.to_string(),
        accepted_manifest_version: store.accepted_manifest()?.map_or(0, |m| m.version()),
        adopted_manifest_version: store.adopted_version()?,
        deployments,
        ..AgentSnapshot::default()
    })
}
