//! `[capabilities]`: what the device reports as its Margo capabilities.

use std::collections::BTreeMap;

use margo_schemas::capabilities::{Architecture, InterfaceType, Peripheral};
use serde::Deserialize;

use super::{invalid, AgentConfig, ConfigError};

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

impl AgentConfig {
    pub(super) fn validate_capabilities(&self) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::super::field_of;
    use super::super::{ApiMode, Transport};
    use super::*;

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
}
