//! Agent configuration: built-in defaults → TOML file → `MARGO_AGENT_*`
//! environment → CLI flags, in the order of
//! [`margo_schemas::config_layers::Layered`], shared with the manager and the
//! broker (`docs/configuration.md`).
//!
//! The file carries `version = 1` and rejects unknown keys; [`AgentConfig::validate`]
//! names the offending field. Relative paths in a file are relative to the
//! file's directory.
//!
//! The sections live beside this file: [`http`] (transport choice and the
//! HTTP transport), [`runtime`] (the adapters), [`onboarding`],
//! [`capabilities`]; [`env`] maps the environment onto all of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod capabilities;
mod env;
mod http;
mod onboarding;
mod runtime;

pub use capabilities::{CapabilitiesConfig, ChildCapabilities};
pub use env::Flags;
pub use http::{ApiMode, HttpConfig, SignatureScheme, Transport};
pub use margo_schemas::config_layers::ConfigError;
pub use onboarding::{parse_fingerprint, OnboardingConfig, OnboardingFlags};
pub use runtime::{
    AdapterKind, ComposeConfig, ExecConfig, HelmConfig, RuntimeConfig, SimulatedConfig,
};

/// The only configuration `version` this build understands.
pub const CONFIG_VERSION: u32 = 1;
/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "MARGO_AGENT_";

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(field, reason)
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

/// The field an [`ConfigError::Invalid`] names (tests of every section).
#[cfg(test)]
fn field_of(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { field, .. } => field,
        other => panic!("expected a field error, got {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
