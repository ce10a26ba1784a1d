//! Margo `DeviceCapabilitiesManifest`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

pub const API_VERSION: &str = "device.margo.org/v1alpha1";
pub const KIND: &str = "DeviceCapabilitiesManifest";
/// Longest free-text field (vendor, model, serial, ...).
pub const MAX_TEXT_LEN: usize = 256;
/// Most entries in any list (cpus, peripherals, interfaces).
pub const MAX_LIST_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Amd64,
    Arm64,
    Arm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeripheralType {
    Gpu,
    Display,
    Camera,
    Microphone,
    Speaker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceType {
    Ethernet,
    Wifi,
    Cellular,
    Bluetooth,
    Usb,
    Canbus,
    Rs232,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Oci,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentType {
    Helm,
    Compose,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Number of cores; 0.5 means half a core.
    pub cores: f64,
    pub architecture: Architecture,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peripheral {
    #[serde(rename = "type")]
    pub kind: PeripheralType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    #[serde(rename = "type")]
    pub kind: InterfaceType,
}

/// The `properties` of a capabilities manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProperties {
    pub id: DeviceId,
    pub vendor: String,
    pub model_number: String,
    pub serial_number: String,
    /// Hosting fields: absent for a non-hosting gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peripherals: Vec<Peripheral>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otel_collector: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_runtimes: Vec<Runtime>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_deployment_types: Vec<DeploymentType>,
    /// Vendor extensions: keys of the form `x-<name>-extensions`.
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

/// A Margo DeviceCapabilitiesManifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilitiesManifest {
    pub api_version: String,
    pub kind: String,
    pub properties: DeviceProperties,
}

/// Why a capabilities manifest is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilitiesError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

fn bad(field: &str, problem: impl Into<String>) -> CapabilitiesError {
    CapabilitiesError::Invalid {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// Parses a Kubernetes-style binary quantity (`512Mi`, `4Gi`, `1024`) into bytes.
/// `max_suffix` is the largest allowed suffix (memory: `Gi`..; storage up to `Ei`).
pub fn parse_binary_quantity(text: &str) -> Option<u128> {
    let units: [(&str, u32); 6] = [
        ("Ki", 10),
        ("Mi", 20),
        ("Gi", 30),
        ("Ti", 40),
        ("Pi", 50),
        ("Ei", 60),
    ];
    let (digits, shift) = units
        .iter()
        .find_map(|(suffix, shift)| text.strip_suffix(suffix).map(|d| (d, *shift)))
        .unwrap_or((text, 0));
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u128 = digits.parse().ok()?;
    n.checked_mul(1u128 << shift)
}

/// Formats bytes in the largest binary unit that divides them exactly.
pub fn format_binary_quantity(bytes: u64) -> String {
    for (suffix, shift) in [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ] {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

impl DeviceCapabilitiesManifest {
    pub fn new(properties: DeviceProperties) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            properties,
        }
    }

    /// Semantic checks beyond what the types already guarantee.
    pub fn validate(&self) -> Result<(), CapabilitiesError> {
        if self.api_version != API_VERSION {
            return Err(bad("apiVersion", format!("expected {API_VERSION}")));
        }
        if self.kind != KIND {
            return Err(bad("kind", format!("expected {KIND}")));
        }
        let p = &self.properties;
        for (field, value) in [
            ("properties.vendor", &p.vendor),
            ("properties.modelNumber", &p.model_number),
            ("properties.serialNumber", &p.serial_number),
        ] {
            if value.trim().is_empty() {
                return Err(bad(field, "must not be empty"));
            }
            if value.len() > MAX_TEXT_LEN {
                return Err(bad(field, format!("longer than {MAX_TEXT_LEN} characters")));
            }
        }
        if p.cpu.len() > MAX_LIST_LEN
            || p.peripherals.len() > MAX_LIST_LEN
            || p.interfaces.len() > MAX_LIST_LEN
        {
            return Err(bad(
                "properties",
                format!("a list is longer than {MAX_LIST_LEN}"),
            ));
        }
        for (i, cpu) in p.cpu.iter().enumerate() {
            if !cpu.cores.is_finite() || cpu.cores <= 0.0 || cpu.cores > 4096.0 {
                return Err(bad(
                    &format!("properties.cpu[{i}].cores"),
                    format!("{} is not a plausible core count", cpu.cores),
                ));
            }
        }
        // Memory tops out far below storage; both must be positive binary quantities.
        for (field, value, max) in [
            ("properties.memory", &p.memory, 1u128 << 50),
            ("properties.storage", &p.storage, 1u128 << 62),
        ] {
            if let Some(v) = value {
                match parse_binary_quantity(v) {
                    Some(n) if n > 0 && n <= max => {}
                    _ => {
                        return Err(bad(
                            field,
                            format!("{v:?} is not a positive binary quantity (e.g. 4Gi)"),
                        ))
                    }
                }
            }
        }
        for key in p.extensions.keys() {
            let ok = key
                .strip_prefix("x-")
                .and_then(|k| k.strip_suffix("-extensions"))
                .is_some_and(|name| !name.is_empty());
            if !ok {
                return Err(bad(
                    &format!("properties.{key}"),
                    "unknown field (vendor extensions must be named x-<name>-extensions)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceCapabilitiesManifest {
        DeviceCapabilitiesManifest::new(DeviceProperties {
            id: DeviceId::new("gw").unwrap(),
            vendor: "Acme".into(),
            model_number: "E1".into(),
            serial_number: "123".into(),
            cpu: vec![Cpu {
                cores: 4.0,
                architecture: Architecture::Arm64,
            }],
            memory: Some("4Gi".into()),
            storage: Some("64Gi".into()),
            peripherals: vec![],
            interfaces: vec![Interface {
                kind: InterfaceType::Ethernet,
            }],
            otel_collector: Some(false),
            supported_runtimes: vec![Runtime::Oci],
            supported_deployment_types: vec![DeploymentType::Compose],
            extensions: BTreeMap::new(),
        })
    }

    #[test]
    fn valid_and_json_shape() {
        let m = sample();
        m.validate().unwrap();
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["properties"]["modelNumber"], "E1");
        assert_eq!(j["properties"]["cpu"][0]["architecture"], "arm64");
        let back: DeviceCapabilitiesManifest = serde_json::from_value(j).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn rejects_bad_values() {
        let mut m = sample();
        m.properties.memory = Some("-4Gi".into());
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("properties.memory"));
        let mut m = sample();
        m.properties.cpu[0].cores = f64::NAN;
        assert!(m.validate().is_err());
        let mut m = sample();
        m.properties
            .extensions
            .insert("surprise".into(), serde_json::json!(1));
        assert!(m.validate().is_err());
        let mut m = sample();
        m.properties
            .extensions
            .insert("x-acme-extensions".into(), serde_json::json!({"a": 1}));
        assert!(m.validate().is_ok());
        let unknown_enum = serde_json::json!({"apiVersion": API_VERSION, "kind": KIND,
            "properties": {"id": "gw", "vendor": "a", "modelNumber": "b", "serialNumber": "c",
            "cpu": [{"cores": 1, "architecture": "mips"}]}});
        assert!(serde_json::from_value::<DeviceCapabilitiesManifest>(unknown_enum).is_err());
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_binary_quantity("4Gi"), Some(4 << 30));
        assert_eq!(parse_binary_quantity("1024"), Some(1024));
        assert_eq!(parse_binary_quantity("4GB"), None);
        assert_eq!(parse_binary_quantity("Gi"), None);
        assert_eq!(format_binary_quantity(4 << 30), "4Gi");
        assert_eq!(format_binary_quantity(1536), "1536");
        assert_eq!(format_binary_quantity(3 << 20), "3Mi");
    }
}
