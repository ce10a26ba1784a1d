//! `[onboarding]`: onboarding over HTTPS (`margo-agent onboard`, or before
//! `run` when no identity bundle exists yet).

use std::time::Duration;

use margo_schemas::digest::Digest;
use serde::Deserialize;

use super::{invalid, AgentConfig, ConfigError};

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

/// `margo-agent onboard`'s flags; each `Some` (and `--insecure-tofu`)
/// wins over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct OnboardingFlags {
    /// `--manager`.
    pub manager_url: Option<String>,
    /// `--ca-fingerprint`.
    pub ca_fingerprint: Option<String>,
    /// `--token`.
    pub token: Option<String>,
    /// `--name`.
    pub name: Option<String>,
    /// `--insecure-tofu` (only ever turns it on).
    pub insecure_tofu: bool,
}

impl OnboardingFlags {
    pub(super) fn apply(self, onboarding: &mut OnboardingConfig) {
        if let Some(url) = self.manager_url {
            onboarding.manager_url = url;
        }
        if let Some(fp) = self.ca_fingerprint {
            onboarding.ca_fingerprint = Some(fp);
        }
        if let Some(token) = self.token {
            onboarding.token = Some(token);
        }
        if let Some(name) = self.name {
            onboarding.name = Some(name);
        }
        if self.insecure_tofu {
            onboarding.insecure_tofu = true;
        }
    }
}

impl AgentConfig {
    /// The `[onboarding]` section, created with defaults if absent.
    pub fn onboarding_mut(&mut self) -> &mut OnboardingConfig {
        self.onboarding
            .get_or_insert_with(OnboardingConfig::default)
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

// Its test needs the onboarding feature.
#[cfg(all(test, feature = "onboarding"))]
mod tests {
    use super::super::field_of;
    use super::*;

    #[test]
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
}
