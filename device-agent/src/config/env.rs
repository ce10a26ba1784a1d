//! The environment (`MARGO_AGENT_*`) and command-line layers of the agent's
//! configuration: [`Layered`] for [`AgentConfig`].

use std::path::{Path, PathBuf};

use margo_schemas::config_layers::{
    parse_bool, parse_duration, parse_number, ConfigError, EnvVar, Layered,
};

use super::{invalid, AdapterKind, AgentConfig, OnboardingFlags, ENV_PREFIX};

/// What the command line sets (`margo-agent run` and `margo-agent onboard`);
/// each `Some` wins over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--identity-dir`.
    pub identity_dir: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--broker-url`.
    pub broker_url: Option<String>,
    /// `margo-agent onboard`'s flags; `Some` also creates the
    /// `[onboarding]` section when the file has none.
    pub onboarding: Option<OnboardingFlags>,
}

impl AgentConfig {
    /// Applies `MARGO_AGENT_*` variables from the process environment.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_env_from(std::env::vars())
    }

    /// Applies `MARGO_AGENT_*` variables from `vars` (testable form of
    /// [`Self::apply_env`]): those of [`Layered::ENV_VARS`]; others with the
    /// prefix are errors naming the variable.
    pub fn apply_env_from(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        Layered::apply_env(self, vars)
    }
}

impl Layered for AgentConfig {
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const ENV_VARS: &'static [&'static str] = &[
        "IDENTITY_DIR",
        "DATA_DIR",
        "BROKER_URL",
        "ALLOW_PLAIN_MQTT",
        "KEEP_ALIVE",
        "TLS_RESUMPTION",
        "CONNECT_TIMEOUT",
        "ACK_TIMEOUT",
        "CONTENT_TIMEOUT",
        "RECONNECT_MIN",
        "RECONNECT_MAX",
        "RETRY_FAILED_AFTER",
        "RETRY_FAILED_MAX",
        "STATE_INTERVAL",
        "OUTBOX_MAX_ENTRIES",
        "OUTBOX_MAX_BYTES",
        "RUNTIME_ADAPTER",
        "EXEC_PROGRAM",
        "EXEC_TIMEOUT",
        "COMPOSE_DOCKER",
        "COMPOSE_TIMEOUT",
        "HELM_PROGRAM",
        "HELM_TIMEOUT",
        "HELM_KUBE_CONTEXT",
        "HELM_KUBECONFIG",
        "CAPABILITIES_INTERVAL",
        "ONBOARDING_MANAGER_URL",
        "ONBOARDING_CA_FINGERPRINT",
        "ONBOARDING_TOKEN",
        "ONBOARDING_NAME",
        "ONBOARDING_INSECURE_TOFU",
        "TRANSPORT",
        "HTTP_MANAGER_URL",
        "HTTP_API",
        "HTTP_POLL_RATE",
    ];
    type Flags = Flags;

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::load(path)
    }

    fn apply_env_var(
        &mut self,
        name: &str,
        var: &str,
        value: String,
    ) -> Result<EnvVar, ConfigError> {
        match name {
            "IDENTITY_DIR" => self.identity_dir = PathBuf::from(value),
            "DATA_DIR" => self.data_dir = PathBuf::from(value),
            "BROKER_URL" => self.broker_url = Some(value),
            "ALLOW_PLAIN_MQTT" => self.allow_plain_mqtt = parse_bool(var, &value)?,
            "KEEP_ALIVE" => self.keep_alive = parse_duration(var, &value)?,
            "TLS_RESUMPTION" => self.tls_resumption = parse_bool(var, &value)?,
            "CONNECT_TIMEOUT" => self.connect_timeout = parse_duration(var, &value)?,
            "ACK_TIMEOUT" => self.ack_timeout = parse_duration(var, &value)?,
            "CONTENT_TIMEOUT" => self.content_timeout = parse_duration(var, &value)?,
            "RECONNECT_MIN" => self.reconnect_min = parse_duration(var, &value)?,
            "RECONNECT_MAX" => self.reconnect_max = parse_duration(var, &value)?,
            "RETRY_FAILED_AFTER" => self.retry_failed_after = parse_duration(var, &value)?,
            "RETRY_FAILED_MAX" => self.retry_failed_max = parse_duration(var, &value)?,
            "STATE_INTERVAL" => self.state_interval = parse_duration(var, &value)?,
            "OUTBOX_MAX_ENTRIES" => self.outbox.max_entries = parse_number(var, &value)?,
            "OUTBOX_MAX_BYTES" => self.outbox.max_bytes = parse_number(var, &value)?,
            "RUNTIME_ADAPTER" => {
                self.runtime.adapter = AdapterKind::parse(&value).ok_or_else(|| {
                    invalid(
                        var,
                        format!("{value:?} is not one of {}", AdapterKind::NAMES),
                    )
                })?;
            }
            "EXEC_PROGRAM" => self.runtime.exec.program = PathBuf::from(value),
            "EXEC_TIMEOUT" => self.runtime.exec.timeout = parse_duration(var, &value)?,
            "COMPOSE_DOCKER" => self.runtime.compose.docker = PathBuf::from(value),
            "COMPOSE_TIMEOUT" => {
                self.runtime.compose.timeout = parse_duration(var, &value)?;
            }
            "HELM_PROGRAM" => self.runtime.helm.helm = PathBuf::from(value),
            "HELM_TIMEOUT" => self.runtime.helm.timeout = parse_duration(var, &value)?,
            "HELM_KUBE_CONTEXT" => self.runtime.helm.kube_context = Some(value),
            "HELM_KUBECONFIG" => self.runtime.helm.kubeconfig = Some(PathBuf::from(value)),
            "CAPABILITIES_INTERVAL" => self.capabilities_interval = parse_duration(var, &value)?,
            "ONBOARDING_MANAGER_URL" => self.onboarding_mut().manager_url = value,
            "ONBOARDING_CA_FINGERPRINT" => self.onboarding_mut().ca_fingerprint = Some(value),
            "ONBOARDING_TOKEN" => self.onboarding_mut().token = Some(value),
            "ONBOARDING_NAME" => self.onboarding_mut().name = Some(value),
            "ONBOARDING_INSECURE_TOFU" => {
                self.onboarding_mut().insecure_tofu = parse_bool(var, &value)?
            }
            _ if self.apply_transport_env(name, var, &value)? => {}
            _ => return Ok(EnvVar::Unknown),
        }
        Ok(EnvVar::Applied)
    }

    fn apply_flags(&mut self, flags: Flags) {
        if let Some(dir) = flags.identity_dir {
            self.identity_dir = dir;
        }
        if let Some(dir) = flags.data_dir {
            self.data_dir = dir;
        }
        if let Some(url) = flags.broker_url {
            self.broker_url = Some(url);
        }
        if let Some(onboarding) = flags.onboarding {
            onboarding.apply(self.onboarding_mut());
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::field_of;
    use super::*;

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
    fn every_listed_variable_is_read_and_documented() {
        let docs = include_str!("../../../docs/configuration.md");
        for name in AgentConfig::ENV_VARS {
            let var = format!("{ENV_PREFIX}{name}");
            let mut c = AgentConfig::default();
            // A value no setter accepts: every known name fails on the value, not the name.
            let err = c.apply_env_from([(var.clone(), "\u{1}".to_string())]).err();
            let unknown = err
                .as_ref()
                .is_some_and(|e| e.to_string().contains("unknown variable"));
            assert!(!unknown, "{var} is listed but not read");
            assert!(
                docs.contains(&format!("`{var}`")),
                "{var} is not in docs/configuration.md"
            );
        }
        let err = AgentConfig::default()
            .apply_env_from([("MARGO_AGENT_KEEPALIVE".to_string(), "1s".to_string())])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "MARGO_AGENT_KEEPALIVE: unknown variable; known: MARGO_AGENT_IDENTITY_DIR,"
            ),
            "{err}"
        );
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "version = 1\ndata_dir = \"from-file\"\nack_timeout = \"7s\"\nkeep_alive = \"9s\"\n",
        )
        .unwrap();
        let env = [
            ("MARGO_AGENT_DATA_DIR".to_string(), "/from-env".to_string()),
            ("MARGO_AGENT_ACK_TIMEOUT".to_string(), "8s".to_string()),
        ];
        let flags = Flags {
            data_dir: Some(PathBuf::from("/from-flag")),
            ..Flags::default()
        };
        let c = AgentConfig::load_layered(Some(&file), env, flags).unwrap();
        assert_eq!(c.keep_alive, Duration::from_secs(9), "file over defaults");
        assert_eq!(c.ack_timeout, Duration::from_secs(8), "env over file");
        assert_eq!(c.data_dir, PathBuf::from("/from-flag"), "flags over env");
        // Validation comes last: a flag can still make it fail.
        let bad = Flags {
            broker_url: Some("mqtt://127.0.0.1:1883".into()),
            ..Flags::default()
        };
        let err = AgentConfig::load_layered(Some(&file), [], bad).unwrap_err();
        assert_eq!(field_of(err), "broker_url");
        // The onboard subcommand's flags create the section.
        let onboard = Flags {
            onboarding: Some(OnboardingFlags {
                manager_url: Some("https://wfm".into()),
                insecure_tofu: true,
                ..OnboardingFlags::default()
            }),
            ..Flags::default()
        };
        let c = AgentConfig::load_layered(None, [], onboard);
        match c {
            Ok(c) => assert_eq!(c.onboarding.unwrap().manager_url, "https://wfm"),
            Err(e) => assert!(matches!(e, ConfigError::NotBuilt { .. }), "{e}"),
        }
    }
}
