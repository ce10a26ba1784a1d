//! `transport` and `[http]`: how the agent talks to the fleet manager, and
//! the HTTP transport's settings.

use std::time::Duration;

use margo_schemas::config_layers::parse_duration;
use serde::Deserialize;

use super::{invalid, require_feature, AgentConfig, ConfigError};

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

    pub(super) fn validate_transport(&self) -> Result<(), ConfigError> {
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
    pub(super) fn apply_transport_env(
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

// Its test needs the HTTP transport and onboarding features.
#[cfg(all(test, feature = "onboarding", feature = "http-transport"))]
mod tests {
    use super::super::field_of;
    use super::*;

    #[test]
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
}
