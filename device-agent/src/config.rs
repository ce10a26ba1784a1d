//! Agent configuration: built-in defaults → TOML file → environment → CLI.
//!
//! The file carries `version = 1` and rejects unknown keys; [`AgentConfig::validate`]
//! names the offending field. Relative paths in a file are relative to the
//! file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use margo_schemas::capabilities::{Architecture, InterfaceType, Peripheral};
use margo_schemas::digest::Digest;
use serde::Deserialize;

/// The only configuration `version` this build understands.
pub const CONFIG_VERSION: u32 = 1;
/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "MARGO_AGENT_";

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TOML in {path}: {source}")]
    Toml {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The configuration asks for something this build leaves out
    /// (`cargo build -p margo-agent --no-default-features`).
    #[error(
        "{field}: needs the `{feature}` feature, which this margo-agent was built without \
         (rebuild with `--features {feature}` or the default features)"
    )]
    NotBuilt {
        field: &'static str,
        feature: &'static str,
    },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Everything the agent needs to run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Configuration format version ([`CONFIG_VERSION`]); required in files.
    pub version: u32,
    /// The identity bundle (identity.toml, client.key, client.crt, ca.crt, manager-signing.crt).
    pub identity_dir: PathBuf,
    /// Where the agent keeps its redb file (`agent.redb`) and deployment files.
    pub data_dir: PathBuf,
    /// Overrides the bundle's broker URL (`mqtts://host:port`).
    pub broker_url: Option<String>,
    /// Permit `mqtt://` (no TLS). Only for tests against a loopback broker.
    pub allow_plain_mqtt: bool,
    /// MQTT keep-alive.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Resume TLS 1.3 sessions (session tickets) when reconnecting to the
    /// device gateway or the manager's HTTPS API, instead of a full
    /// mutual-TLS handshake with both certificates each time. Default on;
    /// off costs bytes and CPU on every connection and exists for
    /// measurements and for servers that refuse resumption.
    pub tls_resumption: bool,
    /// How long one connection attempt (TCP, TLS handshake, CONNECT/CONNACK)
    /// may take before it is abandoned and retried after the backoff.
    /// Longer than rumqttc's 5 s default: a device that gives up on a
    /// handshake the broker is still working through only adds another to
    /// its queue when a whole fleet reconnects at once (docs/benchmarks.md,
    /// reconnect storm). Whole seconds, 1s ..= 10m.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Resend an outbox entry not acknowledged by the manager within this.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How long to wait for deployments a new manifest references before asking for a sync.
    #[serde(with = "humantime_serde")]
    pub content_timeout: Duration,
    /// First reconnect delay (jittered, doubling).
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// First retry of a failed apply (doubling).
    #[serde(with = "humantime_serde")]
    pub retry_failed_after: Duration,
    /// Longest delay between retries of a failed apply.
    #[serde(with = "humantime_serde")]
    pub retry_failed_max: Duration,
    /// How often to send a `state` report besides the one after each reconcile.
    #[serde(with = "humantime_serde")]
    pub state_interval: Duration,
    /// Largest downlink payload accepted.
    pub max_message_bytes: usize,
    /// Outbox bounds.
    pub outbox: OutboxConfig,
    /// Runtime adapter.
    pub runtime: RuntimeConfig,
    /// How often to re-check the device capabilities (sent only when they changed).
    #[serde(with = "humantime_serde")]
    pub capabilities_interval: Duration,
    /// What the device reports as its Margo capabilities.
    pub capabilities: CapabilitiesConfig,
    /// HTTPS onboarding with the fleet manager (`margo-agent onboard`, or
    /// before `run` when no identity bundle exists yet).
    pub onboarding: Option<OnboardingConfig>,
    /// When the agent may communicate: polling period and rate, connection
    /// mode, downtime (docs/schedule.md). None (and no `schedule_file`):
    /// connected all the time. A schedule sent by the manager wins.
    pub schedule: Option<margo_schemas::schedule::Schedule>,
    /// Read the schedule from this TOML file instead (not with `[schedule]`).
    pub schedule_file: Option<PathBuf>,
    /// Each connection the schedule starts (a check, a polling period or
    /// the end of a downtime window) waits a random extra delay up to this
    /// (at most half the polling rate), so a fleet does not connect at
    /// once. `0s` keeps exact check times.
    #[serde(with = "humantime_serde")]
    pub wake_spread: Duration,
    /// In `per-check` mode, the longest a check may stay connected waiting
    /// for the desired state and the outbox to settle.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// In `per-check` mode, the quiet time (nothing received, outbox empty)
    /// after which a check counts as synchronised.
    #[serde(with = "humantime_serde")]
    pub check_settle: Duration,
    // --- Transport choice and the HTTP transport (issue 5, deliverable 3). ---
    /// `mqtt` (default: the device gateway) or `http` (the Margo HTTP API).
    pub transport: Transport,
    /// `[http]`: the HTTP transport (used when `transport = "http"`).
    pub http: HttpConfig,
}

/// How the agent talks to the fleet manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT through the device gateway (persistent session, signed messages).
    #[default]
    Mqtt,
    /// The Margo HTTP API: polled manifest, signed status and capabilities.
    Http,
}

/// `[http] api`: the revision of the Margo workload management API the HTTP
/// transport speaks (`docs/http-api.md`, "The agent over HTTP").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ApiMode {
    /// The newest revision: the client is identified by mutual TLS with its
    /// certificate; paths without `{clientId}` (`/api/v1/deployments`,
    /// `PUT /api/v1/capabilities/{deviceId}`); no request signatures.
    #[default]
    #[serde(rename = "1.0.0-rc.3")]
    Rc3,
    /// `/api/v1/clients/{clientId}/...` with `capabilities/{deviceId}`; signed requests.
    #[serde(rename = "1.0.0-rc.2")]
    Rc2,
    /// The older working copy: `/api/v1/clients/{clientId}/...` with
    /// `PUT /api/v1/clients/{clientId}/capabilities` (no deviceId); signed requests.
    #[serde(rename = "1.0.0")]
    V1,
}

impl ApiMode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rc3 => "1.0.0-rc.3",
            Self::Rc2 => "1.0.0-rc.2",
            Self::V1 => "1.0.0",
        }
    }

    /// Parses the configuration spelling.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "1.0.0-rc.3" => Some(Self::Rc3),
            "1.0.0-rc.2" => Some(Self::Rc2),
            "1.0.0" => Some(Self::V1),
            _ => None,
        }
    }

    /// Whether the paths carry `{clientId}` (and requests are signed).
    pub fn client_id_paths(self) -> bool {
        self != Self::Rc3
    }

    /// The revision whose document shapes this mode sends.
    pub fn revision(self) -> margo_schemas::revision::Revision {
        use margo_schemas::revision::Revision;
        match self {
            Self::Rc3 => Revision::Rc3,
            Self::Rc2 => Revision::Rc2,
            Self::V1 => Revision::V1_0_0,
        }
    }
}

impl std::fmt::Display for ApiMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[http]`: the HTTP transport.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `https://host[:port][/base/path]` of the manager's HTTP API. Default:
    /// `onboarding.manager_url` (the manager this device onboarded with).
    pub manager_url: Option<String>,
    /// Which revision of the Margo workload management API to speak
    /// (paths and authentication); default the newest, `1.0.0-rc.3`.
    pub api: ApiMode,
    /// Largest manifest, deployment document or report body (either direction),
    /// and largest single entry of a bundle.
    pub max_body_bytes: usize,
    /// Largest bundle archive, compressed and unpacked.
    pub max_bundle_bytes: usize,
    /// Limit for one whole request (connect, TLS, send, read).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often to poll the manifest when no `[schedule]` is configured
    /// (jittered by up to a tenth).
    #[serde(with = "humantime_serde")]
    pub poll_rate: Duration,
    /// Fetch a newer manifest's documents as one bundle when more than this
    /// percentage of its deployments changed (single documents otherwise);
    /// the first sync always takes the bundle. 0 ..= 100: `0` takes the
    /// bundle whenever anything changed, `100` never after the first sync.
    pub bundle_over_percent: u8,
    /// How every request is signed (`docs/http-api.md`): `rfc9421`
    /// (default; HTTP Message Signatures, the newest revision that has
    /// signatures) or `x-payload-signature` (Margo's older body signature).
    pub signature: SignatureScheme,
}

/// A request signature scheme (`http.signature`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SignatureScheme {
    /// RFC 9421 HTTP Message Signatures with RFC 9530 `Content-Digest`.
    #[default]
    #[serde(rename = "rfc9421")]
    Rfc9421,
    /// `Content-Digest` + `X-Payload-Signature` over the body.
    #[serde(rename = "x-payload-signature")]
    XPayloadSignature,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            manager_url: None,
            api: ApiMode::default(),
            max_body_bytes: 1024 * 1024,
            max_bundle_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            poll_rate: Duration::from_secs(300),
            bundle_over_percent: 50,
            signature: SignatureScheme::Rfc9421,
        }
    }
}

impl AgentConfig {
    /// The capabilities document shape to send: `[capabilities] shape` if
    /// set, else the revision of `[http] api` with the HTTP transport, else
    /// the newest (rc.3).
    pub fn capabilities_shape(&self) -> margo_schemas::revision::Revision {
        match (self.capabilities.shape, self.transport) {
            (Some(shape), _) => shape,
            (None, Transport::Http) => self.http.api.revision(),
            (None, _) => margo_schemas::revision::Revision::Rc3,
        }
    }

    /// The HTTP API the `http` transport talks to: `http.manager_url`, else
    /// `onboarding.manager_url`.
    pub fn http_manager_url(&self) -> Result<crate::manager_url::ManagerUrl, ConfigError> {
        let (field, url) = match (&self.http.manager_url, &self.onboarding) {
            (Some(url), _) => ("http.manager_url", url.as_str()),
            (None, Some(o)) if !o.manager_url.is_empty() => {
                ("onboarding.manager_url", o.manager_url.as_str())
            }
            _ => {
                return Err(invalid(
                    "http.manager_url",
                    "required when transport = \"http\" (or set onboarding.manager_url)",
                ))
            }
        };
        crate::manager_url::ManagerUrl::parse(url).map_err(|e| invalid(field, e.to_string()))
    }

    fn validate_transport(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        if let Some(url) = &h.manager_url {
            crate::manager_url::ManagerUrl::parse(url)
                .map_err(|e| invalid("http.manager_url", e.to_string()))?;
        }
        if h.max_body_bytes < 4096 || h.max_body_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                "http.max_body_bytes",
                "must be between 4 KiB and 64 MiB",
            ));
        }
        if h.max_bundle_bytes < h.max_body_bytes || h.max_bundle_bytes > 1024 * 1024 * 1024 {
            return Err(invalid(
                "http.max_bundle_bytes",
                "must be at least http.max_body_bytes and at most 1 GiB",
            ));
        }
        if h.request_timeout.is_zero() {
            return Err(invalid("http.request_timeout", "must be greater than zero"));
        }
        if h.poll_rate < Duration::from_secs(1) {
            return Err(invalid("http.poll_rate", "must be at least 1s"));
        }
        if h.bundle_over_percent > 100 {
            return Err(invalid("http.bundle_over_percent", "must be 0 ..= 100"));
        }
        if self.transport == Transport::Http {
            require_feature(
                "transport",
                "http-transport",
                cfg!(feature = "http-transport"),
            )?;
            self.http_manager_url()?;
        }
        Ok(())
    }

    /// `MARGO_AGENT_TRANSPORT`, `MARGO_AGENT_HTTP_MANAGER_URL`,
    /// `MARGO_AGENT_HTTP_API`, `MARGO_AGENT_HTTP_POLL_RATE`; `false` for other names.
    fn apply_transport_env(
        &mut self,
        name: &str,
        field: &str,
        value: &str,
    ) -> Result<bool, ConfigError> {
        match name {
            "TRANSPORT" => {
                self.transport = match value {
                    "mqtt" => Transport::Mqtt,
                    "http" => Transport::Http,
                    other => return Err(invalid(field, format!("{other:?} is not mqtt or http"))),
                }
            }
            "HTTP_MANAGER_URL" => self.http.manager_url = Some(value.to_string()),
            "HTTP_API" => {
                self.http.api = ApiMode::parse(value).ok_or_else(|| {
                    invalid(
                        field,
                        format!("{value:?} is not 1.0.0-rc.3, 1.0.0-rc.2 or 1.0.0"),
                    )
                })?
            }
            "HTTP_POLL_RATE" => self.http.poll_rate = parse_duration(field, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `[onboarding]`: where and how to onboard over HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnboardingConfig {
    /// `https://host[:port]` of the fleet manager's HTTP API.
    pub manager_url: String,
    /// SHA-256 fingerprint of the fleet CA (`sha256:<hex>`), given out of band.
    pub ca_fingerprint: Option<String>,
    /// Enrollment token for automatic approval (`margoctl tokens create`).
    pub token: Option<String>,
    /// Trust the CA the manager presents without a fingerprint (warns loudly).
    pub insecure_tofu: bool,
    /// The fleet name to ask for (default: the host name).
    pub name: Option<String>,
    /// First delay between polls while waiting for approval (doubling, jittered).
    #[serde(with = "humantime_serde")]
    pub poll_min: Duration,
    /// Longest delay between polls.
    #[serde(with = "humantime_serde")]
    pub poll_max: Duration,
}

impl Default for OnboardingConfig {
    fn default() -> Self {
        Self {
            manager_url: String::new(),
            ca_fingerprint: None,
            token: None,
            insecure_tofu: false,
            name: None,
            poll_min: Duration::from_secs(5),
            poll_max: Duration::from_secs(300),
        }
    }
}

/// `[capabilities]`: the device's Margo capabilities. Unset fields are
/// detected (DMI, devicetree, `/proc/meminfo`, `/sys/class/net`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapabilitiesConfig {
    /// Report capabilities at all (Margo requires it; off only for simulators).
    pub enabled: bool,
    /// `properties.id` (default: the bundle's name, reduced to RFC 3986 unreserved characters).
    pub device_id: Option<String>,
    pub vendor: Option<String>,
    pub model_number: Option<String>,
    pub serial_number: Option<String>,
    /// Cores delegated to Margo workloads; may be fractional (0.5). Default: all available.
    pub cpu_cores: Option<f64>,
    /// CPU architecture (default: the build's architecture).
    pub architecture: Option<Architecture>,
    /// Memory delegated to Margo workloads (`2Gi`). Default: MemTotal.
    pub memory: Option<String>,
    /// Storage delegated to Margo workloads (`64Gi`). Not detected: omitted unless set.
    pub storage: Option<String>,
    /// Detect network interfaces from `/sys/class/net`.
    pub detect_interfaces: bool,
    /// Interfaces to report besides the detected ones.
    pub interfaces: Vec<InterfaceType>,
    pub peripherals: Vec<Peripheral>,
    pub otel_collector: Option<bool>,
    /// Vendor extensions, `[capabilities.extensions."x-acme-extensions"]`.
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// Devices behind this gateway, reported after it (`[[capabilities.children]]`).
    pub children: Vec<ChildCapabilities>,
    /// Which revision's document shape to send: `1.0.0-rc.3` (newest: no
    /// apiVersion/kind, `cpus`), `1.0.0-rc.2` (apiVersion/kind, `cpu`) or
    /// `1.0.0` (`roles`, `resources`). Unset: the revision of `[http] api`
    /// with the HTTP transport (a WFM of that revision expects its shape),
    /// the newest over MQTT ([`AgentConfig::capabilities_shape`]).
    pub shape: Option<margo_schemas::revision::Revision>,
}

impl Default for CapabilitiesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            device_id: None,
            vendor: None,
            model_number: None,
            serial_number: None,
            cpu_cores: None,
            architecture: None,
            memory: None,
            storage: None,
            detect_interfaces: true,
            interfaces: Vec::new(),
            peripherals: Vec::new(),
            otel_collector: None,
            extensions: BTreeMap::new(),
            children: Vec::new(),
            shape: None,
        }
    }
}

/// `[[capabilities.children]]`: a device behind a see-through gateway.
/// Nothing is detected for children; hosting fields are optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildCapabilities {
    /// `<parent id>/<child>`.
    pub id: String,
    pub vendor: String,
    pub model_number: String,
    pub serial_number: String,
    #[serde(default)]
    pub cpu_cores: Option<f64>,
    #[serde(default)]
    pub architecture: Option<Architecture>,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub storage: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceType>,
    #[serde(default)]
    pub peripherals: Vec<Peripheral>,
    #[serde(default)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

/// Bounds of the durable uplink outbox.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Most pending entries.
    pub max_entries: usize,
    /// Most pending bytes (sealed payloads plus topics).
    pub max_bytes: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Which runtime adapter applies deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    /// In-process simulation (delays, injected failures).
    Simulated,
    /// Runs a program per component action.
    Exec,
    /// `docker compose` for `compose` deployments.
    Compose,
    /// `helm` for `helm.v3` deployments.
    Helm,
    /// `compose` for `compose` deployments and `helm` for `helm.v3` ones.
    Native,
}

impl AdapterKind {
    /// Every accepted value, as written in the file.
    pub const NAMES: &'static str = "simulated, exec, compose, helm, native";

    /// Parses the value written in a file or `MARGO_AGENT_RUNTIME_ADAPTER`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "simulated" => Some(Self::Simulated),
            "exec" => Some(Self::Exec),
            "compose" => Some(Self::Compose),
            "helm" => Some(Self::Helm),
            "native" => Some(Self::Native),
            _ => None,
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub adapter: AdapterKind,
    pub simulated: SimulatedConfig,
    pub exec: ExecConfig,
    pub compose: ComposeConfig,
    pub helm: HelmConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            adapter: AdapterKind::Native,
            simulated: SimulatedConfig::default(),
            exec: ExecConfig::default(),
            compose: ComposeConfig::default(),
            helm: HelmConfig::default(),
        }
    }
}

/// `[runtime.compose]`: the compose adapter (also used by `native`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComposeConfig {
    /// The docker CLI (with the compose plugin): a path, or a name looked up in `PATH`.
    pub docker: PathBuf,
    /// Kill a `docker compose`, `tar` or fetch command still running after this.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How to download http(s) package locations, e.g.
    /// `["curl", "-fsSL", "-o", "{dest}", "{url}"]`. `{url}` and `{dest}` are
    /// replaced in every argument. Empty: http(s) locations fail with
    /// `package-fetch-unsupported`.
    pub fetch_command: Vec<String>,
}

impl Default for ComposeConfig {
    fn default() -> Self {
        Self {
            docker: PathBuf::from("docker"),
            timeout: Duration::from_secs(600),
            fetch_command: Vec::new(),
        }
    }
}

/// `[runtime.helm]`: the helm adapter (also used by `native`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HelmConfig {
    /// The helm CLI: a path, or a name looked up in `PATH`.
    pub helm: PathBuf,
    /// Kill a helm command still running after this (or after the component's
    /// own `timeout` plus a minute, when that is longer).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Passed as `--kube-context`.
    pub kube_context: Option<String>,
    /// Passed as `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
}

impl Default for HelmConfig {
    fn default() -> Self {
        Self {
            helm: PathBuf::from("helm"),
            timeout: Duration::from_secs(600),
            kube_context: None,
            kubeconfig: None,
        }
    }
}

/// `[runtime.simulated]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Time one component action takes (a component property `simulatedDelayMs` overrides it).
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Deployment ids or component names whose actions fail.
    pub fail: Vec<String>,
}

/// `[runtime.exec]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecConfig {
    /// The program run as `<program> install|update|remove`.
    pub program: PathBuf,
    /// Kill the program after this.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Profile types the program handles (`helm.v3`, `compose`).
    pub profiles: Vec<String>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            program: PathBuf::new(),
            timeout: Duration::from_secs(600),
            profiles: vec!["helm.v3".into(), "compose".into()],
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            identity_dir: PathBuf::from("/etc/margo-agent/identity"),
            data_dir: PathBuf::from("/var/lib/margo-agent"),
            broker_url: None,
            allow_plain_mqtt: false,
            // docs/decisions/0008-keep-alive-and-state-interval.md
            keep_alive: Duration::from_secs(240),
            tls_resumption: true,
            connect_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(30),
            content_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(300),
            retry_failed_after: Duration::from_secs(300),
            retry_failed_max: Duration::from_secs(3600),
            state_interval: Duration::from_secs(6 * 3600),
            max_message_bytes: margo_schemas::codec::DEFAULT_MAX_PAYLOAD,
            outbox: OutboxConfig::default(),
            runtime: RuntimeConfig::default(),
            capabilities_interval: Duration::from_secs(3600),
            capabilities: CapabilitiesConfig::default(),
            onboarding: None,
            schedule: None,
            schedule_file: None,
            wake_spread: Duration::from_secs(60),
            check_timeout: Duration::from_secs(120),
            check_settle: Duration::from_secs(2),
            transport: Transport::default(),
            http: HttpConfig::default(),
        }
    }
}

pub use margo_schemas::broker_url::BrokerUrl;

/// Parses a broker URL, naming `field` in the error.
pub fn parse_broker_url(url: &str, field: &str) -> Result<BrokerUrl, ConfigError> {
    BrokerUrl::parse(url).map_err(|e| invalid(field, e.to_string()))
}

impl AgentConfig {
    /// Reads a TOML file over the defaults; relative paths become relative to the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Toml { source, .. } => ConfigError::Toml {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })?;
        if let Some(dir) = path.parent() {
            config.resolve_relative(dir);
        }
        Ok(config)
    }

    /// Parses TOML text over the defaults. `version` is required.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            version: Option<toml::Value>,
        }
        let toml_err = |source| ConfigError::Toml {
            path: PathBuf::from("<text>"),
            source: Box::new(source),
        };
        // Check the version first so a future format gets a clear error, not "unknown field".
        let peek: toml::Table = toml::from_str(text).map_err(toml_err)?;
        let version = toml::Value::try_into::<VersionOnly>(toml::Value::Table(peek))
            .ok()
            .and_then(|v| v.version);
        match version {
            None => return Err(invalid("version", "missing (expected version = 1)")),
            Some(toml::Value::Integer(v)) if v == i64::from(CONFIG_VERSION) => {}
            Some(other) => {
                return Err(invalid(
                    "version",
                    format!(
                        "{other} is not supported (this build reads version = {CONFIG_VERSION})"
                    ),
                ))
            }
        }
        toml::from_str(text).map_err(toml_err)
    }

    fn resolve_relative(&mut self, base: &Path) {
        for path in [&mut self.identity_dir, &mut self.data_dir] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(path) = &mut self.schedule_file {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        // A bare program name is looked up in PATH; `dir/prog` is relative to the file.
        for program in [
            &mut self.runtime.exec.program,
            &mut self.runtime.compose.docker,
            &mut self.runtime.helm.helm,
        ] {
            if program.is_relative() && program.components().count() > 1 {
                *program = base.join(&*program);
            }
        }
        if let Some(kubeconfig) = &mut self.runtime.helm.kubeconfig {
            if kubeconfig.is_relative() {
                *kubeconfig = base.join(&*kubeconfig);
            }
        }
    }

    /// Applies `MARGO_AGENT_*` variables from the process environment.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_env_from(std::env::vars())
    }

    /// Applies `MARGO_AGENT_*` variables from `vars` (testable form of [`Self::apply_env`]).
    ///
    /// Recognised: `IDENTITY_DIR`, `DATA_DIR`, `BROKER_URL`, `ALLOW_PLAIN_MQTT`,
    /// `KEEP_ALIVE`, `TLS_RESUMPTION`, `CONNECT_TIMEOUT`, `ACK_TIMEOUT`, `CONTENT_TIMEOUT`, `RECONNECT_MIN`,
    /// `RECONNECT_MAX`, `RETRY_FAILED_AFTER`, `RETRY_FAILED_MAX`,
    /// `STATE_INTERVAL`, `OUTBOX_MAX_ENTRIES`, `OUTBOX_MAX_BYTES`,
    /// `RUNTIME_ADAPTER`, `EXEC_PROGRAM`, `EXEC_TIMEOUT`, `COMPOSE_DOCKER`,
    /// `COMPOSE_TIMEOUT`, `HELM_PROGRAM`, `HELM_TIMEOUT`, `HELM_KUBE_CONTEXT`,
    /// `HELM_KUBECONFIG`, `CAPABILITIES_INTERVAL`, `ONBOARDING_MANAGER_URL`,
    /// `ONBOARDING_CA_FINGERPRINT`, `ONBOARDING_TOKEN`, `ONBOARDING_NAME`,
    /// `ONBOARDING_INSECURE_TOFU`, `TRANSPORT`, `HTTP_MANAGER_URL`,
    /// `HTTP_POLL_RATE`. Others with the prefix are errors.
    pub fn apply_env_from(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (key, value) in vars {
            let Some(name) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let field = key.as_str();
            match name {
                "IDENTITY_DIR" => self.identity_dir = PathBuf::from(value),
                "DATA_DIR" => self.data_dir = PathBuf::from(value),
                "BROKER_URL" => self.broker_url = Some(value),
                "ALLOW_PLAIN_MQTT" => self.allow_plain_mqtt = parse_bool(field, &value)?,
                "KEEP_ALIVE" => self.keep_alive = parse_duration(field, &value)?,
                "TLS_RESUMPTION" => self.tls_resumption = parse_bool(field, &value)?,
                "CONNECT_TIMEOUT" => self.connect_timeout = parse_duration(field, &value)?,
                "ACK_TIMEOUT" => self.ack_timeout = parse_duration(field, &value)?,
                "CONTENT_TIMEOUT" => self.content_timeout = parse_duration(field, &value)?,
                "RECONNECT_MIN" => self.reconnect_min = parse_duration(field, &value)?,
                "RECONNECT_MAX" => self.reconnect_max = parse_duration(field, &value)?,
                "RETRY_FAILED_AFTER" => self.retry_failed_after = parse_duration(field, &value)?,
                "RETRY_FAILED_MAX" => self.retry_failed_max = parse_duration(field, &value)?,
                "STATE_INTERVAL" => self.state_interval = parse_duration(field, &value)?,
                "OUTBOX_MAX_ENTRIES" => self.outbox.max_entries = parse_number(field, &value)?,
                "OUTBOX_MAX_BYTES" => self.outbox.max_bytes = parse_number(field, &value)?,
                "RUNTIME_ADAPTER" => {
                    self.runtime.adapter = AdapterKind::parse(&value).ok_or_else(|| {
                        invalid(
                            field,
                            format!("{value:?} is not one of {}", AdapterKind::NAMES),
                        )
                    })?;
                }
                "EXEC_PROGRAM" => self.runtime.exec.program = PathBuf::from(value),
                "EXEC_TIMEOUT" => self.runtime.exec.timeout = parse_duration(field, &value)?,
                "COMPOSE_DOCKER" => self.runtime.compose.docker = PathBuf::from(value),
                "COMPOSE_TIMEOUT" => {
                    self.runtime.compose.timeout = parse_duration(field, &value)?;
                }
                "HELM_PROGRAM" => self.runtime.helm.helm = PathBuf::from(value),
                "HELM_TIMEOUT" => self.runtime.helm.timeout = parse_duration(field, &value)?,
                "HELM_KUBE_CONTEXT" => self.runtime.helm.kube_context = Some(value),
                "HELM_KUBECONFIG" => self.runtime.helm.kubeconfig = Some(PathBuf::from(value)),
                "CAPABILITIES_INTERVAL" => {
                    self.capabilities_interval = parse_duration(field, &value)?
                }
                "ONBOARDING_MANAGER_URL" => self.onboarding_mut().manager_url = value,
                "ONBOARDING_CA_FINGERPRINT" => self.onboarding_mut().ca_fingerprint = Some(value),
                "ONBOARDING_TOKEN" => self.onboarding_mut().token = Some(value),
                "ONBOARDING_NAME" => self.onboarding_mut().name = Some(value),
                "ONBOARDING_INSECURE_TOFU" => {
                    self.onboarding_mut().insecure_tofu = parse_bool(field, &value)?
                }
                _ if self.apply_transport_env(name, field, &value)? => {}
                _ => return Err(invalid(field, "unknown setting")),
            }
        }
        Ok(())
    }

    /// The `[onboarding]` section, created with defaults if absent.
    pub fn onboarding_mut(&mut self) -> &mut OnboardingConfig {
        self.onboarding
            .get_or_insert_with(OnboardingConfig::default)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "{} is not supported (expected {CONFIG_VERSION})",
                    self.version
                ),
            ));
        }
        if self.identity_dir.as_os_str().is_empty() {
            return Err(invalid("identity_dir", "must not be empty"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if let Some(url) = &self.broker_url {
            let parsed = parse_broker_url(url, "broker_url")?;
            if !parsed.tls && !self.allow_plain_mqtt {
                return Err(invalid(
                    "broker_url",
                    "mqtt:// (no TLS) is only allowed with allow_plain_mqtt = true (tests)",
                ));
            }
        }
        if self.keep_alive < Duration::from_secs(1) || self.keep_alive > Duration::from_secs(65_535)
        {
            return Err(invalid("keep_alive", "must be between 1s and 65535s"));
        }
        if self.connect_timeout < Duration::from_secs(1)
            || self.connect_timeout > Duration::from_secs(600)
            || self.connect_timeout.subsec_nanos() != 0
        {
            return Err(invalid(
                "connect_timeout",
                "must be whole seconds between 1s and 10m",
            ));
        }
        for (field, value) in [
            ("ack_timeout", self.ack_timeout),
            ("content_timeout", self.content_timeout),
            ("reconnect_min", self.reconnect_min),
            ("reconnect_max", self.reconnect_max),
            ("retry_failed_after", self.retry_failed_after),
            ("retry_failed_max", self.retry_failed_max),
            ("state_interval", self.state_interval),
            ("capabilities_interval", self.capabilities_interval),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(invalid(
                "reconnect_max",
                "must not be less than reconnect_min",
            ));
        }
        if self.retry_failed_max < self.retry_failed_after {
            return Err(invalid(
                "retry_failed_max",
                "must not be less than retry_failed_after",
            ));
        }
        if self.max_message_bytes < 1024 || self.max_message_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                "max_message_bytes",
                "must be between 1 KiB and 64 MiB",
            ));
        }
        if self.outbox.max_entries == 0 {
            return Err(invalid("outbox.max_entries", "must be at least 1"));
        }
        if self.outbox.max_bytes < 64 * 1024 {
            return Err(invalid("outbox.max_bytes", "must be at least 64 KiB"));
        }
        if self.runtime.adapter == AdapterKind::Exec {
            let exec = &self.runtime.exec;
            if exec.program.as_os_str().is_empty() {
                return Err(invalid(
                    "runtime.exec.program",
                    "required when runtime.adapter = \"exec\"",
                ));
            }
            if exec.timeout.is_zero() {
                return Err(invalid("runtime.exec.timeout", "must be greater than zero"));
            }
        }
        if let Some(onboarding) = &self.onboarding {
            require_feature("onboarding", "onboarding", cfg!(feature = "onboarding"))?;
            onboarding.validate()?;
        }
        self.validate_capabilities()?;
        for p in &self.runtime.exec.profiles {
            if p != "helm.v3" && p != "compose" {
                return Err(invalid(
                    "runtime.exec.profiles",
                    format!("{p:?} is not one of helm.v3, compose"),
                ));
            }
        }
        self.runtime.compose.validate()?;
        self.runtime.helm.validate()?;
        for (field, value) in [
            ("check_timeout", self.check_timeout),
            ("check_settle", self.check_settle),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if self.check_settle >= self.check_timeout {
            return Err(invalid("check_settle", "must be less than check_timeout"));
        }
        self.local_schedule()?;
        self.validate_transport()?;
        Ok(())
    }

    /// The validated local schedule (`[schedule]` or `schedule_file`), if any.
    pub fn local_schedule(
        &self,
    ) -> Result<Option<margo_schemas::schedule::ValidSchedule>, ConfigError> {
        use margo_schemas::schedule::{Schedule, ValidSchedule};
        let (schedule, field): (Schedule, String) = match (&self.schedule, &self.schedule_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "schedule_file",
                    "set either [schedule] or schedule_file, not both",
                ))
            }
            (Some(schedule), None) => (schedule.clone(), "schedule.".into()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let schedule = toml::from_str(&text).map_err(|source| ConfigError::Toml {
                    path: path.clone(),
                    source: Box::new(source),
                })?;
                (schedule, format!("schedule_file {}: ", path.display()))
            }
        };
        ValidSchedule::try_from(schedule)
            .map(Some)
            .map_err(|e| invalid(&format!("{field}{}", e.field), e.problem.to_string()))
    }

    /// The redb file inside `data_dir`.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("agent.redb")
    }

    /// Where the exec adapter writes deployment documents.
    pub fn deployments_dir(&self) -> PathBuf {
        self.data_dir.join("deployments")
    }
}

impl ComposeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.docker.as_os_str().is_empty() {
            return Err(invalid("runtime.compose.docker", "must not be empty"));
        }
        if self.timeout.is_zero() {
            return Err(invalid(
                "runtime.compose.timeout",
                "must be greater than zero",
            ));
        }
        if let Some(first) = self.fetch_command.first() {
            let field = "runtime.compose.fetch_command";
            if first.is_empty() || first.contains('{') {
                return Err(invalid(field, "the first element must name a program"));
            }
            for placeholder in ["{url}", "{dest}"] {
                if !self.fetch_command.iter().any(|a| a.contains(placeholder)) {
                    return Err(invalid(
                        field,
                        format!("must contain {placeholder} in some argument"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl AgentConfig {
    fn validate_capabilities(&self) -> Result<(), ConfigError> {
        let c = &self.capabilities;
        if let Some(cores) = c.cpu_cores {
            if !cores.is_finite() || cores <= 0.0 || cores > 4096.0 {
                return Err(invalid(
                    "capabilities.cpu_cores",
                    format!("{cores} is not a plausible core count (e.g. 0.5, 4)"),
                ));
            }
        }
        for (field, value) in [
            ("capabilities.memory", &c.memory),
            ("capabilities.storage", &c.storage),
        ] {
            if let Some(v) = value {
                match margo_schemas::capabilities::parse_quantity(v) {
                    Ok(n) if n > 0 => {}
                    Ok(_) => return Err(invalid(field, "must be more than zero")),
                    Err(e) => {
                        return Err(invalid(field, format!("{e} (e.g. 512Mi, 2Gi, \"59 Gi\")")))
                    }
                }
            }
        }
        Ok(())
    }
}

impl HelmConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.helm.as_os_str().is_empty() {
            return Err(invalid("runtime.helm.helm", "must not be empty"));
        }
        if self.timeout.is_zero() {
            return Err(invalid("runtime.helm.timeout", "must be greater than zero"));
        }
        if let Some(context) = &self.kube_context {
            if context.is_empty() || context.starts_with('-') {
                return Err(invalid(
                    "runtime.helm.kube_context",
                    "must be a non-empty context name not starting with '-'",
                ));
            }
        }
        if let Some(path) = &self.kubeconfig {
            if path.as_os_str().is_empty() {
                return Err(invalid("runtime.helm.kubeconfig", "must not be empty"));
            }
        }
        Ok(())
    }
}

impl OnboardingConfig {
    /// Checks the section; errors name `onboarding.<field>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::manager_url::ManagerUrl::parse(&self.manager_url)
            .map_err(|e| invalid("onboarding.manager_url", e.to_string()))?;
        match &self.ca_fingerprint {
            Some(fp) => {
                parse_fingerprint(fp)?;
            }
            None if !self.insecure_tofu => return Err(invalid(
                "onboarding.ca_fingerprint",
                "required (sha256:<hex> as printed by `margoctl ca fingerprint`), unless insecure_tofu = true",
            )),
            None => {}
        }
        if self.poll_min.is_zero() {
            return Err(invalid("onboarding.poll_min", "must be greater than zero"));
        }
        if self.poll_max < self.poll_min {
            return Err(invalid(
                "onboarding.poll_max",
                "must not be less than poll_min",
            ));
        }
        Ok(())
    }

    /// The pinned CA fingerprint, if any.
    pub fn fingerprint(&self) -> Result<Option<Digest>, ConfigError> {
        self.ca_fingerprint
            .as_deref()
            .map(parse_fingerprint)
            .transpose()
    }
}

/// Parses a CA fingerprint: `sha256:<hex>`, also accepting upper case and
/// `AB:CD:…` colon-separated hex (as `openssl x509 -fingerprint` prints it).
pub fn parse_fingerprint(text: &str) -> Result<Digest, ConfigError> {
    let trimmed = text.trim();
    let hex_part = trimmed
        .strip_prefix("sha256:")
        .or_else(|| trimmed.strip_prefix("SHA256:"))
        .or_else(|| trimmed.strip_prefix("sha256="))
        .or_else(|| trimmed.strip_prefix("SHA256="))
        .unwrap_or(trimmed);
    let normalised: String = hex_part
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Digest::parse(&format!("sha256:{normalised}")).map_err(|_| {
        invalid(
            "onboarding.ca_fingerprint",
            format!("{text:?} is not a SHA-256 fingerprint (sha256:<64 hex digits>)"),
        )
    })
}

/// Refuses `field` in a build without `feature` (`built` is its `cfg!`).
fn require_feature(
    field: &'static str,
    feature: &'static str,
    built: bool,
) -> Result<(), ConfigError> {
    if built {
        Ok(())
    } else {
        Err(ConfigError::NotBuilt { field, feature })
    }
}

fn parse_duration(field: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value)
        .map_err(|e| invalid(field, format!("{value:?} is not a duration ({e})")))
}

fn parse_bool(field: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(invalid(field, format!("{other:?} is not true or false"))),
    }
}

fn parse_number(field: &str, value: &str) -> Result<usize, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(field, format!("{value:?} is not a number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn defaults_validate_and_match_the_brief() {
        let c = AgentConfig::default();
        c.validate().unwrap();
        // Decision 0008: idle cost of a persistent device.
        assert_eq!(c.keep_alive, Duration::from_secs(240));
        assert_eq!(c.state_interval, Duration::from_secs(6 * 3600));
        assert_eq!(c.ack_timeout, Duration::from_secs(30));
        assert_eq!(c.content_timeout, Duration::from_secs(30));
        assert_eq!(c.reconnect_max, Duration::from_secs(300));
        assert_eq!(c.outbox.max_entries, 10_000);
        assert_eq!(c.outbox.max_bytes, 16 << 20);
    }

    #[test]
    fn file_overrides_defaults_and_unknown_keys_fail() {
        let c = AgentConfig::from_toml(
            r#"
version = 1
identity_dir = "/id"
keep_alive = "10s"
[outbox]
max_entries = 5
[runtime]
adapter = "exec"
[runtime.exec]
program = "/bin/true"
timeout = "3s"
"#,
        )
        .unwrap();
        assert_eq!(c.identity_dir, PathBuf::from("/id"));
        assert_eq!(c.keep_alive, Duration::from_secs(10));
        assert_eq!(c.outbox.max_entries, 5);
        assert_eq!(c.outbox.max_bytes, 16 << 20);
        assert_eq!(c.runtime.adapter, AdapterKind::Exec);
        c.validate().unwrap();

        assert!(matches!(
            AgentConfig::from_toml("version = 1\nkeepalive = \"1s\"\n"),
            Err(ConfigError::Toml { .. })
        ));
        assert_eq!(
            field_of(AgentConfig::from_toml("identity_dir = \"/x\"\n").unwrap_err()),
            "version"
        );
        assert_eq!(
            field_of(AgentConfig::from_toml("version = 2\n").unwrap_err()),
            "version"
        );
    }

    #[test]
    fn compose_and_helm_sections() {
        let c = AgentConfig::from_toml(
            r#"
version = 1
[runtime]
adapter = "native"
[runtime.compose]
docker = "/usr/bin/docker"
timeout = "2m"
fetch_command = ["curl", "-fsSL", "-o", "{dest}", "{url}"]
[runtime.helm]
helm = "helm"
timeout = "15m"
kube_context = "edge"
kubeconfig = "/etc/rancher/k3s/k3s.yaml"
"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.runtime.adapter, AdapterKind::Native);
        assert_eq!(c.runtime.compose.timeout, Duration::from_secs(120));
        assert_eq!(c.runtime.compose.fetch_command.len(), 5);
        assert_eq!(c.runtime.helm.kube_context.as_deref(), Some("edge"));
        let d = AgentConfig::default();
        assert_eq!(d.runtime.compose.docker, PathBuf::from("docker"));
        assert_eq!(d.runtime.helm.helm, PathBuf::from("helm"));
        assert!(d.runtime.compose.fetch_command.is_empty());
        for adapter in ["compose", "helm"] {
            let text = format!("version = 1\n[runtime]\nadapter = \"{adapter}\"\n");
            AgentConfig::from_toml(&text).unwrap().validate().unwrap();
        }
        assert!(matches!(
            AgentConfig::from_toml("version = 1\n[runtime.helm]\nhelmet = \"x\"\n"),
            Err(ConfigError::Toml { .. })
        ));
        let mut e = AgentConfig::default();
        e.apply_env_from([
            (
                "MARGO_AGENT_RUNTIME_ADAPTER".to_string(),
                "helm".to_string(),
            ),
            ("MARGO_AGENT_HELM_TIMEOUT".to_string(), "1m".to_string()),
            (
                "MARGO_AGENT_COMPOSE_DOCKER".to_string(),
                "/opt/docker".to_string(),
            ),
        ])
        .unwrap();
        assert_eq!(e.runtime.adapter, AdapterKind::Helm);
        assert_eq!(e.runtime.helm.timeout, Duration::from_secs(60));
        assert_eq!(e.runtime.compose.docker, PathBuf::from("/opt/docker"));
        let err = e
            .apply_env_from([("MARGO_AGENT_RUNTIME_ADAPTER".to_string(), "k8s".to_string())])
            .unwrap_err();
        assert_eq!(field_of(err), "MARGO_AGENT_RUNTIME_ADAPTER");
    }

    #[test]
    fn env_overrides_file() {
        let mut c = AgentConfig::default();
        c.apply_env_from([
            ("MARGO_AGENT_ACK_TIMEOUT".to_string(), "5s".to_string()),
            ("MARGO_AGENT_DATA_DIR".to_string(), "/d".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ])
        .unwrap();
        assert_eq!(c.ack_timeout, Duration::from_secs(5));
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        let err = c
            .apply_env_from([("MARGO_AGENT_KEEP_ALIVE".to_string(), "soon".to_string())])
            .unwrap_err();
        assert_eq!(field_of(err), "MARGO_AGENT_KEEP_ALIVE");
        let err = c
            .apply_env_from([("MARGO_AGENT_NOPE".to_string(), "1".to_string())])
            .unwrap_err();
        assert_eq!(field_of(err), "MARGO_AGENT_NOPE");
    }

    #[test]
    fn validate_names_the_field() {
        type Change = Box<dyn Fn(&mut AgentConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|c| c.broker_url = Some("http://x".into())),
                "broker_url",
            ),
            (
                Box::new(|c| c.broker_url = Some("mqtt://127.0.0.1:1883".into())),
                "broker_url",
            ),
            (Box::new(|c| c.ack_timeout = Duration::ZERO), "ack_timeout"),
            (
                Box::new(|c| c.reconnect_max = Duration::from_millis(1)),
                "reconnect_max",
            ),
            (Box::new(|c| c.outbox.max_entries = 0), "outbox.max_entries"),
            (
                Box::new(|c| c.runtime.adapter = AdapterKind::Exec),
                "runtime.exec.program",
            ),
            (Box::new(|c| c.keep_alive = Duration::ZERO), "keep_alive"),
            (
                Box::new(|c| c.runtime.compose.timeout = Duration::ZERO),
                "runtime.compose.timeout",
            ),
            (
                Box::new(|c| c.runtime.compose.docker = PathBuf::new()),
                "runtime.compose.docker",
            ),
            (
                Box::new(|c| c.runtime.compose.fetch_command = vec!["curl".into(), "{url}".into()]),
                "runtime.compose.fetch_command",
            ),
            (
                Box::new(|c| c.runtime.helm.timeout = Duration::ZERO),
                "runtime.helm.timeout",
            ),
            (
                Box::new(|c| c.runtime.helm.kube_context = Some(String::new())),
                "runtime.helm.kube_context",
            ),
            (
                Box::new(|c| c.check_settle = c.check_timeout),
                "check_settle",
            ),
        ];
        for (change, field) in cases {
            let mut c = AgentConfig::default();
            change(&mut c);
            assert_eq!(field_of(c.validate().unwrap_err()), field);
        }
        let mut c = AgentConfig {
            broker_url: Some("mqtt://127.0.0.1:1883".into()),
            allow_plain_mqtt: true,
            ..AgentConfig::default()
        };
        c.validate().unwrap();
        c.broker_url = Some("mqtts://gw.example.com".into());
        c.validate().unwrap();
    }

    #[test]
    fn schedule_inline_or_from_a_file_with_errors_naming_the_field() {
        let c = AgentConfig::from_toml(
            "version = 1\n[schedule]\ntime_zone = \"Europe/Berlin\"\nconnection = \"per-check\"\n[schedule.polling]\nperiod = [{ start = \"08:00\", end = \"18:00\" }]\nrate = \"15m\"\n",
        )
        .unwrap();
        let schedule = c.local_schedule().unwrap().expect("a schedule");
        assert_eq!(schedule.rate(), Duration::from_secs(900));

        let bad = AgentConfig::from_toml("version = 1\n[schedule]\ntime_zone = \"Mars/Olympus\"\n")
            .unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.starts_with("schedule.time_zone:"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("night.toml"),
            "time_zone = \"UTC\"\n[polling]\nperiod = [{ start = \"22:00\", end = \"04:00\" }]\nrate = \"0s\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("agent.toml"),
            "version = 1\nschedule_file = \"night.toml\"\n",
        )
        .unwrap();
        let from_file = AgentConfig::load(&dir.path().join("agent.toml")).unwrap();
        let err = from_file.validate().unwrap_err().to_string();
        assert!(err.contains("night.toml: polling.rate"), "{err}");

        let both = AgentConfig {
            schedule: c.schedule.clone(),
            schedule_file: Some(PathBuf::from("x.toml")),
            ..AgentConfig::default()
        };
        assert_eq!(field_of(both.validate().unwrap_err()), "schedule_file");
        assert!(AgentConfig::default().local_schedule().unwrap().is_none());
    }

    #[test]
    #[cfg(feature = "onboarding")]
    fn onboarding_section_and_fingerprints() {
        let c = AgentConfig::from_toml(
            "version = 1\n[onboarding]\nmanager_url = \"https://wfm:8443\"\nca_fingerprint = \"sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let o = c.onboarding.as_ref().unwrap();
        assert_eq!(o.poll_min, Duration::from_secs(5));
        assert_eq!(o.poll_max, Duration::from_secs(300));
        let colon = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
        assert_eq!(
            parse_fingerprint(colon).unwrap(),
            o.fingerprint().unwrap().unwrap()
        );
        assert!(parse_fingerprint("sha256:abc").is_err());
        let mut c = AgentConfig::default();
        c.onboarding_mut().manager_url = "https://wfm".into();
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "onboarding.ca_fingerprint"
        );
        c.onboarding_mut().insecure_tofu = true;
        c.validate().unwrap();
        c.onboarding_mut().manager_url = "http://wfm".into();
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "onboarding.manager_url"
        );
        let mut c = AgentConfig::default();
        c.apply_env_from([("MARGO_AGENT_ONBOARDING_TOKEN".to_string(), "t".to_string())])
            .unwrap();
        assert_eq!(c.onboarding.unwrap().token.as_deref(), Some("t"));
    }

    #[test]
    fn capabilities_section_names_the_field() {
        let mut c = AgentConfig::default();
        c.capabilities.cpu_cores = Some(0.0);
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "capabilities.cpu_cores"
        );
        c.capabilities.cpu_cores = Some(0.5);
        // Every quantity spelling the specification's texts use is accepted.
        for ok in ["2GB", "2Gi", "59 Gi", "2048Mi"] {
            c.capabilities.memory = Some(ok.into());
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in ["2 lots", "0", "-2Gi"] {
            c.capabilities.memory = Some(bad.into());
            assert_eq!(
                field_of(c.validate().unwrap_err()),
                "capabilities.memory",
                "{bad}"
            );
        }
        let shaped =
            AgentConfig::from_toml("version = 1\n[capabilities]\nshape = \"1.0.0-rc.2\"\n")
                .unwrap();
        assert_eq!(
            shaped.capabilities_shape(),
            margo_schemas::revision::Revision::Rc2
        );
        assert_eq!(
            AgentConfig::default().capabilities_shape(),
            margo_schemas::revision::Revision::Rc3
        );
        // Unset over HTTP: the shape of the WFM's revision.
        let mut http = AgentConfig {
            transport: Transport::Http,
            ..AgentConfig::default()
        };
        http.http.api = ApiMode::Rc2;
        assert_eq!(
            http.capabilities_shape(),
            margo_schemas::revision::Revision::Rc2
        );
        http.capabilities.shape = Some(margo_schemas::revision::Revision::Rc3);
        assert_eq!(
            http.capabilities_shape(),
            margo_schemas::revision::Revision::Rc3,
            "an explicit shape wins"
        );
        assert!(AgentConfig::from_toml("version = 1\n[capabilities]\nshape = \"2.0\"\n").is_err());
    }

    /// In every build: a section needing a feature is accepted when the
    /// feature is built in and refused, naming it, when it is not.
    #[test]
    fn sections_of_left_out_features_are_refused_by_name() {
        let onboarding = AgentConfig::from_toml(
            "version = 1\n[onboarding]\nmanager_url = \"https://wfm\"\ninsecure_tofu = true\n",
        )
        .unwrap();
        let mut env = AgentConfig::default();
        env.apply_env_from([(
            "MARGO_AGENT_ONBOARDING_MANAGER_URL".to_string(),
            "https://wfm".to_string(),
        )])
        .unwrap();
        env.onboarding_mut().insecure_tofu = true;
        let http = AgentConfig::from_toml(
            "version = 1\ntransport = \"http\"\n[http]\nmanager_url = \"https://wfm\"\n",
        )
        .unwrap();
        for (config, feature, built) in [
            (onboarding, "onboarding", cfg!(feature = "onboarding")),
            (env, "onboarding", cfg!(feature = "onboarding")),
            (http, "http-transport", cfg!(feature = "http-transport")),
        ] {
            match config.validate() {
                Ok(()) => assert!(built, "{feature} is not built in but was accepted"),
                Err(e @ ConfigError::NotBuilt { .. }) => {
                    assert!(!built, "{feature} is built in but was refused: {e}");
                    assert!(
                        e.to_string().contains(&format!("`{feature}` feature")),
                        "{e}"
                    );
                }
                Err(e) => panic!("{feature}: unexpected error {e}"),
            }
        }
        // The MQTT transport and an `[http]` section it ignores need nothing.
        let mqtt = AgentConfig::from_toml("version = 1\n[http]\npoll_rate = \"30s\"\n").unwrap();
        mqtt.validate().unwrap();
    }

    #[test]
    #[cfg(all(feature = "onboarding", feature = "http-transport"))]
    fn transport_and_http_section() {
        let d = AgentConfig::default();
        assert_eq!(d.transport, Transport::Mqtt);
        assert_eq!(d.http.poll_rate, Duration::from_secs(300));
        let c = AgentConfig::from_toml(
            "version = 1\ntransport = \"http\"\n[http]\nmanager_url = \"https://wfm:8443\"\npoll_rate = \"30s\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.http_manager_url().unwrap().port, 8443);
        assert_eq!(c.http.poll_rate, Duration::from_secs(30));
        assert_eq!(c.http.api, ApiMode::Rc3, "the newest revision by default");
        for (text, mode) in [
            ("1.0.0-rc.3", ApiMode::Rc3),
            ("1.0.0-rc.2", ApiMode::Rc2),
            ("1.0.0", ApiMode::V1),
        ] {
            let c = AgentConfig::from_toml(&format!(
                "version = 1\ntransport = \"http\"\n[http]\nmanager_url = \"https://wfm:8443/v1alpha2/margo/\"\napi = \"{text}\"\n"
            ))
            .unwrap();
            c.validate().unwrap();
            assert_eq!(c.http.api, mode);
            assert_eq!(c.http_manager_url().unwrap().base_path, "/v1alpha2/margo");
        }
        assert!(AgentConfig::from_toml("version = 1\n[http]\napi = \"2.0\"\n").is_err());
        // No URL at all: named; the onboarding URL is the fallback.
        let mut c = AgentConfig {
            transport: Transport::Http,
            ..AgentConfig::default()
        };
        assert_eq!(field_of(c.validate().unwrap_err()), "http.manager_url");
        c.onboarding_mut().manager_url = "https://onboard:9443".into();
        c.onboarding_mut().insecure_tofu = true;
        c.validate().unwrap();
        assert_eq!(c.http_manager_url().unwrap().host, "onboard");
        c.http.poll_rate = Duration::from_millis(10);
        assert_eq!(field_of(c.validate().unwrap_err()), "http.poll_rate");
        c.http.poll_rate = Duration::from_secs(30);
        c.http.bundle_over_percent = 101;
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "http.bundle_over_percent"
        );
        let c = AgentConfig::from_toml(
            "version = 1\ntls_resumption = false\n[http]\nbundle_over_percent = 0\n",
        )
        .unwrap();
        assert!(!c.tls_resumption);
        assert_eq!(c.http.bundle_over_percent, 0);
        assert!(AgentConfig::default().tls_resumption);
        assert_eq!(
            AgentConfig::default().connect_timeout,
            Duration::from_secs(30)
        );
        let c = AgentConfig::from_toml("version = 1\nconnect_timeout = \"2m\"\n").unwrap();
        assert_eq!(c.connect_timeout, Duration::from_secs(120));
        for bad in ["0s", "1500ms", "11m"] {
            let mut c = AgentConfig::default();
            c.apply_env_from([("MARGO_AGENT_CONNECT_TIMEOUT".to_string(), bad.to_string())])
                .unwrap();
            assert_eq!(
                field_of(c.validate().unwrap_err()),
                "connect_timeout",
                "{bad}"
            );
        }
        let mut e = AgentConfig::default();
        e.apply_env_from([
            ("MARGO_AGENT_TRANSPORT".to_string(), "http".to_string()),
            (
                "MARGO_AGENT_HTTP_MANAGER_URL".to_string(),
                "https://h".to_string(),
            ),
        ])
        .unwrap();
        assert_eq!(e.transport, Transport::Http);
        e.validate().unwrap();
        let err = e
            .apply_env_from([("MARGO_AGENT_TRANSPORT".to_string(), "coap".to_string())])
            .unwrap_err();
        assert_eq!(field_of(err), "MARGO_AGENT_TRANSPORT");
        // A schedule is validated with the field named.
        let c = AgentConfig::from_toml("version = 1\n[schedule]\ntime_zone = \"Mars/Olympus\"\n")
            .unwrap();
        assert!(field_of(c.validate().unwrap_err()).starts_with("schedule."));
    }

    #[test]
    fn broker_urls() {
        let u = parse_broker_url("mqtts://gw.example.com:8884", "f").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls),
            ("gw.example.com", 8884, true)
        );
        let u = parse_broker_url("mqtt://[::1]:1883", "f").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("::1", 1883, false));
        assert_eq!(parse_broker_url("mqtts://h", "f").unwrap().port, 8883);
        for bad in [
            "mqtts://",
            "mqtts://h:0",
            "mqtts://h:x",
            "mqtts://u@h:1",
            "mqtts://h:1/p",
        ] {
            assert!(parse_broker_url(bad, "f").is_err(), "{bad} accepted");
        }
    }
}
