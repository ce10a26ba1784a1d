//! Manager configuration: built-in defaults → TOML file → environment
//! (`MARGO_MANAGER_*`) → command-line flags, then [`ManagerConfig::validate`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The only `version` of the configuration file this crate understands.
pub const CONFIG_VERSION: u32 = 1;
/// Default public broker URL written into identity bundles.
pub const DEFAULT_PUBLIC_BROKER_URL: &str = "mqtts://localhost:8883";
/// Largest MQTT packet payload we will ever accept (MQTT 3.1.1 remaining length).
const MQTT_MAX_PAYLOAD: usize = 268_435_455;

pub use margo_schemas::config_layers::ConfigError;
use margo_schemas::config_layers::{parse_bool, parse_socket_addr, EnvVar, Layered};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "MARGO_MANAGER_";

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(field, reason)
}

/// Where the manager's MQTT broker comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    /// Start the embedded rumqttd plus the TLS device gateway in this process.
    Embedded,
    /// Connect to an external broker (Mosquitto, EMQX, ...) at `broker.url`.
    External,
}

/// `[broker]`: embedded or external broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// `embedded` (default) or `external`.
    pub mode: BrokerMode,
    /// External broker: `mqtt://host:port` or `mqtts://host:port`.
    pub url: Option<String>,
    /// External `mqtts`: the CA the broker's certificate chains to (default: the fleet CA).
    pub ca_file: Option<PathBuf>,
    /// Embedded: the operator's read-only loopback MQTT listener. Default
    /// `127.0.0.1:1883`.
    pub mqtt_listen: SocketAddr,
    /// Embedded: rumqttd's own loopback listener, login required (the
    /// manager's session and the relays). Default `127.0.0.1:0`.
    pub internal_listen: SocketAddr,
    /// External: the user name presented to the broker (default
    /// `margo-internal` when `password_file` is set, as a standalone
    /// margo-broker expects).
    pub username: Option<String>,
    /// External: file holding the password presented to the broker.
    /// Embedded: file holding the internal listener's password (created
    /// 0600 with a random one when missing); unset, a random password per
    /// start that nothing outside this process knows.
    pub password_file: Option<PathBuf>,
    /// Embedded: the TLS device gateway. Default `0.0.0.0:8883`.
    pub gateway_listen: SocketAddr,
    /// Embedded: DNS names / IP addresses put into the gateway certificate
    /// (`localhost` and `127.0.0.1` are always added). Default `["localhost"]`.
    pub hostnames: Vec<String>,
    /// Embedded: rumqttd limits (see margo-broker).
    pub limits: margo_broker::Limits,
    /// Embedded: how much one device may send through the gateway
    /// (`[broker.device_rate]`; see margo-broker).
    pub device_rate: margo_broker::DeviceRate,
    /// External: how often the manager subscribes again to the uplink
    /// topics to find (and clear) retained messages a device left there,
    /// which an external broker's ACL cannot forbid. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub retained_sweep: Duration,
    /// When one identity in use from several places is a suspected clone
    /// (`[broker.clone_detection]`): switches between source networks at
    /// the embedded gateway, and between agent stores (instance ids) in
    /// uplink with either broker.
    pub clone_detection: margo_broker::CloneRule,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            mode: BrokerMode::Embedded,
            url: None,
            ca_file: None,
            mqtt_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883),
            internal_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            username: None,
            password_file: None,
            gateway_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8883),
            hostnames: vec!["localhost".to_string()],
            limits: margo_broker::Limits::default(),
            device_rate: margo_broker::DeviceRate::default(),
            retained_sweep: Duration::from_secs(60),
            clone_detection: margo_broker::CloneRule::default(),
        }
    }
}

/// `[ingest]`: uplink batching.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Most uplink messages stored in one redb transaction. Default 512.
    pub batch_max: usize,
    /// Longest time a message waits for its batch to fill. Default 20 ms.
    #[serde(with = "humantime_serde")]
    pub batch_interval: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            batch_max: 512,
            batch_interval: Duration::from_millis(20),
        }
    }
}

/// `[pki]`: use a provided fleet CA instead of generating one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PkiSettings {
    /// PEM certificate of a CA to use as the fleet CA (with `ca_key_file`).
    pub ca_cert_file: Option<PathBuf>,
    /// PEM (PKCS#8) private key of that CA.
    pub ca_key_file: Option<PathBuf>,
}

/// `[http]`: the HTTPS listener (the Margo HTTP API, `docs/http-api.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Serve HTTPS at all. Default `true`.
    pub enabled: bool,
    /// Listen address. Default `0.0.0.0:8443`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Longest time a TLS handshake may take. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Most concurrent connections (handshaking or open). Default 1024.
    pub max_connections: usize,
    /// Most concurrent connections from one source network (an IPv4
    /// address, an IPv6 /64), so one source cannot take every slot.
    /// Default 128.
    pub max_connections_per_source: usize,
    /// Largest JSON body of a status or capabilities request; larger ones get
    /// 413. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Require a credential (an accepted signature scheme, or a TLS client
    /// certificate of the client) on the manifest, deployment and bundle
    /// `GET`s, as the Margo OpenAPI lists `PayloadSignature` for them. Off,
    /// reads need only a known, unrevoked client id. Default `true`.
    pub require_signed_reads: bool,
    /// Request signature schemes accepted on the `/api/v1/clients/{clientId}`
    /// routes (`docs/http-api.md`, "Request authentication"). Default both;
    /// `["rfc9421"]` refuses the body-only `X-Payload-Signature`.
    pub signature_schemes: Vec<SignatureScheme>,
    /// Oldest RFC 9421 `created` accepted, before now. Default 300 s.
    #[serde(with = "humantime_serde")]
    pub signature_max_age: Duration,
    /// Latest RFC 9421 `created` accepted, after now (clock skew). Default 60 s.
    #[serde(with = "humantime_serde")]
    pub signature_clock_skew: Duration,
}

/// `[metrics]`: the plain-HTTP listener for `GET /metrics` (Prometheus
/// text), `GET /healthz` and `GET /readyz` (`docs/metrics.md`). On by
/// default; it has no authentication, so it listens on loopback by default.
/// Environment: `MARGO_MANAGER_METRICS_ENABLED`, `MARGO_MANAGER_METRICS_LISTEN`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve the listener at all. Default `true`. Several managers on one
    /// host need a `listen` each (the test harnesses use port 0).
    pub enabled: bool,
    /// Listen address. Default `127.0.0.1:9464`; port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464),
        }
    }
}

/// A request signature scheme (`http.signature_schemes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SignatureScheme {
    /// RFC 9421 HTTP Message Signatures (`Signature-Input`, `Signature`,
    /// `Content-Digest`): bound to method, target and time.
    #[serde(rename = "rfc9421")]
    Rfc9421,
    /// Margo's older `X-Payload-Signature` over the body only; accepted for
    /// `GET` and for requests with a body, never for `DELETE`.
    #[serde(rename = "x-payload-signature")]
    XPayloadSignature,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8443),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_source: 128,
            max_body_bytes: 64 * 1024,
            require_signed_reads: true,
            signature_schemes: vec![SignatureScheme::Rfc9421, SignatureScheme::XPayloadSignature],
            signature_max_age: Duration::from_secs(300),
            signature_clock_skew: Duration::from_secs(60),
        }
    }
}

/// `[onboarding]`: who gets approved automatically, and abuse limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnboardingSettings {
    /// Device certificate fingerprints (`sha256:<64 hex>`) approved on sight.
    pub allow_fingerprints: Vec<String>,
    /// Sustained onboarding requests per minute from one source address. Default 10.
    pub rate_per_minute: u32,
    /// Requests one source address may make in a burst. Default 20.
    pub rate_burst: u32,
    /// Most requests waiting for an operator; new ones get 503 beyond it. Default 1000.
    pub max_pending: usize,
    /// Most requests waiting for an operator from one IPv4 address or IPv6
    /// /64; new ones from there get 503 beyond it (`max_pending` still
    /// caps the whole queue). Default 16.
    pub max_pending_per_source: usize,
    /// How long a request waits for an operator after the device's latest
    /// request; then it is forgotten (a device still polling posts it
    /// again). Default 3 days.
    #[serde(with = "humantime_serde")]
    pub pending_ttl: Duration,
    /// Poll interval suggested to waiting devices (`Retry-After`). Default 30 s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Who approves a request no token or allow-list entry approves:
    /// `operator` (default: `202`, the device polls) or `auto` (approved at
    /// once with `201`, for labs and conformance runs).
    pub approval: Approval,
    /// Confirms `approval = "auto"` on an HTTPS listener that is not a
    /// loopback address (refused at startup otherwise). Default `false`.
    pub allow_auto_approval_on_public_listener: bool,
}

/// `[onboarding] approval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// An operator (or a token, or the allow-list) approves; others wait.
    #[default]
    Operator,
    /// Every request with a usable certificate and signature is approved.
    Auto,
}

impl Approval {
    /// `operator` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Auto => "auto",
        }
    }
}

impl Default for OnboardingSettings {
    fn default() -> Self {
        Self {
            allow_fingerprints: Vec::new(),
            rate_per_minute: 10,
            rate_burst: 20,
            max_pending: 1000,
            max_pending_per_source: 16,
            pending_ttl: crate::onboarding::DEFAULT_PENDING_TTL,
            poll_interval: Duration::from_secs(30),
            approval: Approval::Operator,
            allow_auto_approval_on_public_listener: false,
        }
    }
}

impl OnboardingSettings {
    /// The allow-listed fingerprints as lowercase hex (the request ids).
    pub fn allowed_request_ids(&self) -> Vec<String> {
        self.allow_fingerprints
            .iter()
            .filter_map(|f| normalize_fingerprint(f))
            .collect()
    }
}

/// `sha256:<hex>` or bare hex (any case) → 64 lowercase hex characters.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let hex = text.trim();
    let hex = hex
        .strip_prefix("sha256:")
        .unwrap_or(hex)
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The whole manager configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// File format version ([`CONFIG_VERSION`]).
    pub version: u32,
    /// Holds `manager.redb`, `pki/` and (by default) `admin.sock`.
    pub data_dir: PathBuf,
    /// Broker URL written into identity bundles (what devices connect to).
    pub public_broker_url: String,
    /// The admin API's Unix socket. Default `<data_dir>/admin.sock`.
    pub admin_socket: Option<PathBuf>,
    /// Largest uplink payload accepted. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// The broker.
    pub broker: BrokerSettings,
    /// Uplink batching.
    pub ingest: IngestSettings,
    /// Provided CA material.
    pub pki: PkiSettings,
    /// The HTTPS listener.
    pub http: HttpSettings,
    /// Onboarding policy and limits.
    pub onboarding: OnboardingSettings,
    /// The metrics and health listener.
    pub metrics: MetricsSettings,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            data_dir: PathBuf::from("margo-manager-data"),
            public_broker_url: DEFAULT_PUBLIC_BROKER_URL.to_string(),
            admin_socket: None,
            max_payload_bytes: margo_schemas::codec::DEFAULT_MAX_PAYLOAD,
            broker: BrokerSettings::default(),
            ingest: IngestSettings::default(),
            pki: PkiSettings::default(),
            http: HttpSettings::default(),
            onboarding: OnboardingSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

/// Values given on the command line; each `Some` wins over file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--broker URL`: switches to an external broker.
    pub broker_url: Option<String>,
    /// `--public-broker-url`.
    pub public_broker_url: Option<String>,
    /// `--admin-socket`.
    pub admin_socket: Option<PathBuf>,
    /// `--hostname` (repeatable): replaces `broker.hostnames`.
    pub hostnames: Vec<String>,
}

impl ManagerConfig {
    /// Defaults with `data_dir` set: what tests and the demo start from.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    /// Parses TOML text; relative paths are taken relative to `base_dir`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = margo_schemas::config_layers::parse_toml(text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_relative(base);
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// The full layering ([`Layered::load_layered`]): defaults, then `file`
    /// (if any), then the `MARGO_MANAGER_*` variables among `env`
    /// ([`Layered::ENV_VARS`]; another name with the prefix is an error), then
    /// `overrides`; finally [`validate`](Self::validate).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: Overrides,
    ) -> Result<Self, ConfigError> {
        Self::load_layered(file, env, overrides)
    }

    /// Applies the `MARGO_MANAGER_*` variables among `env`; an unknown one
    /// is an error naming it.
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        Layered::apply_env(self, env)
    }

    /// Applies command-line values.
    pub fn apply_overrides(&mut self, o: Overrides) {
        if let Some(dir) = o.data_dir {
            self.data_dir = dir;
        }
        if let Some(url) = o.broker_url {
            self.broker.mode = BrokerMode::External;
            self.broker.url = Some(url);
        }
        if let Some(url) = o.public_broker_url {
            self.public_broker_url = url;
        }
        if let Some(socket) = o.admin_socket {
            self.admin_socket = Some(socket);
        }
        if !o.hostnames.is_empty() {
            self.broker.hostnames = o.hostnames;
        }
    }

    fn resolve_relative(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        for p in [
            self.admin_socket.as_mut(),
            self.broker.ca_file.as_mut(),
            self.pki.ca_cert_file.as_mut(),
            self.pki.ca_key_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    /// The admin socket path (`admin_socket` or `<data_dir>/admin.sock`).
    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.sock"))
    }

    /// The PKI directory, `<data_dir>/pki`.
    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }

    /// The redb file, `<data_dir>/manager.redb`.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("manager.redb")
    }

    /// The parsed external broker URL, if in external mode.
    pub fn external_broker(&self) -> Result<Option<BrokerUrl>, ConfigError> {
        match self.broker.mode {
            BrokerMode::Embedded => Ok(None),
            BrokerMode::External => {
                let url = self.broker.url.as_deref().ok_or_else(|| {
                    invalid("broker.url", "required when broker.mode = \"external\"")
                })?;
                BrokerUrl::parse(url)
                    .map(Some)
                    .map_err(|e| invalid("broker.url", e.to_string()))
            }
        }
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
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        BrokerUrl::parse(&self.public_broker_url)
            .map_err(|e| invalid("public_broker_url", e.to_string()))?;
        if self
            .admin_socket
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid("admin_socket", "must not be empty"));
        }
        if !(1024..=MQTT_MAX_PAYLOAD).contains(&self.max_payload_bytes) {
            return Err(invalid(
                "max_payload_bytes",
                format!("must be between 1024 and {MQTT_MAX_PAYLOAD}"),
            ));
        }
        if self.ingest.batch_max == 0 || self.ingest.batch_max > 100_000 {
            return Err(invalid("ingest.batch_max", "must be between 1 and 100000"));
        }
        if self.ingest.batch_interval.is_zero()
            || self.ingest.batch_interval > Duration::from_secs(10)
        {
            return Err(invalid(
                "ingest.batch_interval",
                "must be greater than 0 and at most 10s",
            ));
        }
        self.broker
            .clone_detection
            .validate("broker.clone_detection")?;
        match self.broker.mode {
            BrokerMode::External => {
                self.external_broker()?;
                if self.broker.retained_sweep.is_zero() {
                    return Err(invalid(
                        "broker.retained_sweep",
                        "must be greater than zero",
                    ));
                }
            }
            BrokerMode::Embedded => {
                for (field, set) in [
                    ("broker.url", self.broker.url.is_some()),
                    ("broker.username", self.broker.username.is_some()),
                ] {
                    if set {
                        return Err(invalid(field, "only used with broker.mode = \"external\""));
                    }
                }
                if !self.broker.mqtt_listen.ip().is_loopback() {
                    return Err(invalid(
                        "broker.mqtt_listen",
                        format!(
                            "{} is not a loopback address; the plain listener has no authentication",
                            self.broker.mqtt_listen
                        ),
                    ));
                }
                if self.broker.hostnames.is_empty() {
                    return Err(invalid("broker.hostnames", "must list at least one name"));
                }
                for name in &self.broker.hostnames {
                    if !is_valid_hostname(name) {
                        return Err(invalid(
                            "broker.hostnames",
                            format!("{name:?} is neither a DNS name nor an IP address"),
                        ));
                    }
                }
                let mut broker = margo_broker::BrokerConfig::default();
                broker.limits = self.broker.limits.clone();
                broker.mqtt.listen = self.broker.mqtt_listen;
                broker.internal.listen = self.broker.internal_listen;
                self.broker.device_rate.validate("broker.device_rate")?;
                broker.validate().map_err(|e| match e {
                    ConfigError::Invalid { field, reason } => ConfigError::Invalid {
                        field: broker_field(&field),
                        reason,
                    },
                    other => other,
                })?;
            }
        }
        if self.http.handshake_timeout.is_zero()
            || self.http.handshake_timeout > Duration::from_secs(60)
        {
            return Err(invalid(
                "http.handshake_timeout",
                "must be greater than 0 and at most 60s",
            ));
        }
        if self.http.max_connections == 0 || self.http.max_connections > 100_000 {
            return Err(invalid(
                "http.max_connections",
                "must be between 1 and 100000",
            ));
        }
        if self.http.max_connections_per_source == 0
            || self.http.max_connections_per_source > self.http.max_connections
        {
            return Err(invalid(
                "http.max_connections_per_source",
                "must be between 1 and http.max_connections",
            ));
        }
        if self.http.max_body_bytes < 1024 || self.http.max_body_bytes > 16 * 1024 * 1024 {
            return Err(invalid(
                "http.max_body_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if self.http.signature_schemes.is_empty() {
            return Err(invalid(
                "http.signature_schemes",
                "must name at least one of \"rfc9421\", \"x-payload-signature\"",
            ));
        }
        if self.http.signature_max_age.is_zero()
            || self.http.signature_max_age > Duration::from_secs(24 * 3600)
        {
            return Err(invalid(
                "http.signature_max_age",
                "must be greater than 0 and at most 24h",
            ));
        }
        if self.http.signature_clock_skew > Duration::from_secs(3600) {
            return Err(invalid("http.signature_clock_skew", "must be at most 1h"));
        }
        for f in &self.onboarding.allow_fingerprints {
            if normalize_fingerprint(f).is_none() {
                return Err(invalid(
                    "onboarding.allow_fingerprints",
                    format!("{f:?} is not sha256:<64 hex digits>"),
                ));
            }
        }
        if self.onboarding.rate_per_minute == 0 || self.onboarding.rate_per_minute > 100_000 {
            return Err(invalid(
                "onboarding.rate_per_minute",
                "must be between 1 and 100000",
            ));
        }
        if self.onboarding.rate_burst == 0 || self.onboarding.rate_burst > 100_000 {
            return Err(invalid(
                "onboarding.rate_burst",
                "must be between 1 and 100000",
            ));
        }
        if self.onboarding.max_pending == 0 || self.onboarding.max_pending > 1_000_000 {
            return Err(invalid(
                "onboarding.max_pending",
                "must be between 1 and 1000000",
            ));
        }
        if self.onboarding.max_pending_per_source == 0
            || self.onboarding.max_pending_per_source > 1_000_000
        {
            return Err(invalid(
                "onboarding.max_pending_per_source",
                "must be between 1 and 1000000",
            ));
        }
        if self.onboarding.pending_ttl < Duration::from_secs(60)
            || self.onboarding.pending_ttl > Duration::from_secs(366 * 24 * 3600)
        {
            return Err(invalid(
                "onboarding.pending_ttl",
                "must be at least 1m and at most 366 days",
            ));
        }
        if self.onboarding.poll_interval.is_zero()
            || self.onboarding.poll_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                "onboarding.poll_interval",
                "must be greater than 0 and at most 1h",
            ));
        }
        if self.onboarding.approval == Approval::Auto
            && self.http.enabled
            && !self.http.listen.ip().is_loopback()
            && !self.onboarding.allow_auto_approval_on_public_listener
        {
            return Err(invalid(
                "onboarding.approval",
                format!(
                    "\"auto\" approves every device that asks, and http.listen {} is not a \
                     loopback address; set onboarding.allow_auto_approval_on_public_listener = true \
                     to confirm",
                    self.http.listen
                ),
            ));
        }
        if self.metrics.enabled
            && self.http.enabled
            && self.metrics.listen.port() != 0
            && self.metrics.listen == self.http.listen
        {
            return Err(invalid(
                "metrics.listen",
                format!("{} is also http.listen", self.metrics.listen),
            ));
        }
        match (&self.pki.ca_cert_file, &self.pki.ca_key_file) {
            (Some(_), None) => Err(invalid(
                "pki.ca_key_file",
                "required when pki.ca_cert_file is set",
            )),
            (None, Some(_)) => Err(invalid(
                "pki.ca_cert_file",
                "required when pki.ca_key_file is set",
            )),
            _ => Ok(()),
        }
    }
}

impl Layered for ManagerConfig {
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const ENV_VARS: &'static [&'static str] = &[
        "DATA_DIR",
        "BROKER_URL",
        "PUBLIC_BROKER_URL",
        "ADMIN_SOCKET",
        "METRICS_ENABLED",
        "METRICS_LISTEN",
    ];
    type Flags = Overrides;

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(path)
    }

    fn apply_env_var(
        &mut self,
        name: &str,
        var: &str,
        value: String,
    ) -> Result<EnvVar, ConfigError> {
        match name {
            "DATA_DIR" => self.data_dir = PathBuf::from(value),
            // Like `--broker`: an external broker.
            "BROKER_URL" => {
                self.broker.mode = BrokerMode::External;
                self.broker.url = Some(value);
            }
            "PUBLIC_BROKER_URL" => self.public_broker_url = value,
            "ADMIN_SOCKET" => self.admin_socket = Some(PathBuf::from(value)),
            "METRICS_ENABLED" => self.metrics.enabled = parse_bool(var, &value)?,
            "METRICS_LISTEN" => self.metrics.listen = parse_socket_addr(var, &value)?,
            _ => return Ok(EnvVar::Unknown),
        }
        Ok(EnvVar::Applied)
    }

    fn apply_flags(&mut self, flags: Overrides) {
        self.apply_overrides(flags);
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

/// Maps a margo-broker field name onto ours (`limits.x` → `broker.limits.x`,
/// `mqtt.listen` → `broker.mqtt_listen`, `internal.listen` →
/// `broker.internal_listen`).
fn broker_field(field: &str) -> String {
    match field {
        "mqtt.listen" => "broker.mqtt_listen".to_string(),
        "internal.listen" => "broker.internal_listen".to_string(),
        f if f.starts_with("limits.") => format!("broker.{f}"),
        _ => "broker.limits".to_string(),
    }
}

fn is_valid_hostname(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        })
}

/// Broker URLs are parsed by `margo_schemas::broker_url` (shared with the agent).
pub use margo_schemas::broker_url::BrokerUrl;

#[cfg(test)]
mod tests;
