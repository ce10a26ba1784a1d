//! `[runtime]`: which adapter applies deployments, and each adapter's settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

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

impl ComposeConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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

impl HelmConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::super::{field_of, AgentConfig};
    use super::*;

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
}
