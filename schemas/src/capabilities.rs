//! Margo `DeviceCapabilitiesManifest`: a tolerant reader of every published
//! shape, a normalised domain form, and the shapes our agent sends.
//!
//! The revisions disagree on the document's shape (see `docs/http-api.md`,
//! "Document shapes"):
//!
//! - 1.0.0 OpenAPI: `apiVersion`, `kind`, `properties.roles`,
//!   `properties.resources{cpu (one object), memory, storage, peripherals,
//!   interfaces}`.
//! - 1.0.0-rc.2: `apiVersion`, `kind`, `properties.cpu` (an array), `memory`,
//!   `storage`, ... directly in `properties`.
//! - 1.0.0-rc.3: no `apiVersion`/`kind`, `properties.cpus`, top-level
//!   `labels`, `custom` in `supportedRuntimes`/`supportedDeploymentTypes`.
//! - The pages' examples write quantities with a space (`"59 Gi"`).
//!
//! [`DeviceCapabilitiesManifest`] is the document as received (every field
//! kept, the original JSON text too when it came as JSON);
//! [`DeviceCapabilitiesManifest::normalize`] reads any of the shapes into
//! [`DeviceCapabilities`] (quantities in bytes, one CPU list, extensions and
//! unknown fields set apart), checking only what the specification requires
//! (`properties.id`, `vendor`, `modelNumber`, `serialNumber`) plus bounds on
//! text and list lengths. [`DeviceCapabilitiesManifest::build`] writes the
//! shape of a chosen revision from [`DeviceProperties`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::ids::DeviceId;
use crate::revision::Revision;

pub const API_VERSION: &str = "device.margo.org/v1alpha1";
pub const KIND: &str = "DeviceCapabilitiesManifest";
/// Longest free-text field (vendor, model, serial, ...).
pub const MAX_TEXT_LEN: usize = 256;
/// Most entries in any list (cpus, peripherals, interfaces, labels, ...).
pub const MAX_LIST_LEN: usize = 256;
/// Longest quantity text (`"1862 Gi"`).
pub const MAX_QUANTITY_LEN: usize = 64;
/// The role our agent reports in the 1.0.0 shape.
pub const ROLE_STANDALONE_DEVICE: &str = "Standalone Device";

// ---- typed values our agent reports ------------------------------------------

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
    /// rc.3: a runtime the specification does not define.
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentType {
    Helm,
    Compose,
    /// rc.3: a deployment type the specification does not define.
    Custom,
}

/// The JSON name of a unit enum value (`Architecture::Arm64` → `arm64`).
fn wire<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
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

/// What our agent reports, before it is written in a revision's shape by
/// [`DeviceCapabilitiesManifest::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProperties {
    pub id: DeviceId,
    pub vendor: String,
    pub model_number: String,
    pub serial_number: String,
    /// Hosting fields: absent for a non-hosting gateway.
    pub cpu: Vec<Cpu>,
    pub memory: Option<String>,
    pub storage: Option<String>,
    pub peripherals: Vec<Peripheral>,
    pub interfaces: Vec<Interface>,
    pub otel_collector: Option<bool>,
    pub supported_runtimes: Vec<Runtime>,
    pub supported_deployment_types: Vec<DeploymentType>,
    /// Vendor extensions `x-<name>-extensions`, written at the document's
    /// root as the pages and the rc.2/rc.3 schemas say.
    pub extensions: BTreeMap<String, Value>,
}

// ---- errors ------------------------------------------------------------------

/// Why a quantity (`"59 Gi"`, `4Gi`, `512MB`, `1024`) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long, the limit is {MAX_QUANTITY_LEN}")]
    TooLong { len: usize },
    #[error("{text:?} does not start with a non-negative number")]
    NotANumber { text: String },
    #[error(
        "{text:?} has unknown unit {unit:?} (use Ki Mi Gi Ti Pi Ei, KiB.., K/k M G T P E, KB MB GB TB PB EB, or none for bytes)"
    )]
    UnknownUnit { text: String, unit: String },
    #[error("{text:?} is more than 2^64-1 bytes")]
    Overflow { text: String },
}

/// Why a capabilities manifest is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilitiesError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{field}: {source}")]
    Quantity {
        field: String,
        #[source]
        source: QuantityError,
    },
}

fn bad(field: &str, problem: impl Into<String>) -> CapabilitiesError {
    CapabilitiesError::Invalid {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// Why a capabilities body could not be read as a document at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON (a syntax error: 400 in HTTP).
    #[error("not JSON: {0}")]
    Syntax(String),
    /// JSON, but not an object (422 in HTTP).
    #[error("a DeviceCapabilitiesManifest is a JSON object, not {0}")]
    NotAnObject(&'static str),
}

// ---- quantities --------------------------------------------------------------

/// The multiplier of a quantity unit; `None` if unknown.
fn unit_multiplier(unit: &str) -> Option<u128> {
    let binary = |shift: u32| Some(1u128 << shift);
    let decimal = |exp: u32| Some(10u128.pow(exp));
    match unit {
        "" | "B" => Some(1),
        "Ki" | "KiB" => binary(10),
        "Mi" | "MiB" => binary(20),
        "Gi" | "GiB" => binary(30),
        "Ti" | "TiB" => binary(40),
        "Pi" | "PiB" => binary(50),
        "Ei" | "EiB" => binary(60),
        "K" | "k" | "KB" | "kB" => decimal(3),
        "M" | "MB" => decimal(6),
        "G" | "GB" => decimal(9),
        "T" | "TB" => decimal(12),
        "P" | "PB" => decimal(15),
        "E" | "EB" => decimal(18),
        _ => None,
    }
}

/// Parses a quantity of bytes: a non-negative decimal number (`4`, `1.5`),
/// optional blanks, and an optional unit: binary `Ki Mi Gi Ti Pi Ei` (also
/// spelled `KiB`..), decimal `K`/`k M G T P E` (also `KB MB GB TB PB EB`), or
/// none/`B` for bytes. `"59 Gi"` (the pages' spelling) and `59Gi`
/// (Kubernetes') both give 59·2^30. A fraction is rounded up to whole bytes,
/// as Kubernetes does.
pub fn parse_quantity(text: &str) -> Result<u64, QuantityError> {
    if text.len() > MAX_QUANTITY_LEN {
        return Err(QuantityError::TooLong { len: text.len() });
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(QuantityError::Empty);
    }
    let not_a_number = || QuantityError::NotANumber {
        text: text.to_string(),
    };
    let overflow = || QuantityError::Overflow {
        text: text.to_string(),
    };
    let int_len = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    let (int_part, rest) = trimmed.split_at(int_len);
    let (frac_part, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let n = after.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return Err(not_a_number());
            }
            after.split_at(n)
        }
        None => ("", rest),
    };
    if int_part.is_empty() {
        return Err(not_a_number());
    }
    let unit = rest.trim_start_matches([' ', '\t']);
    let multiplier = unit_multiplier(unit).ok_or_else(|| QuantityError::UnknownUnit {
        text: text.to_string(),
        unit: unit.to_string(),
    })?;
    // value = ceil(digits · multiplier / 10^frac_len), all checked.
    let mut digits: u128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        digits = digits
            .checked_mul(10)
            .and_then(|d| d.checked_add(u128::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    let scale = u32::try_from(frac_part.len())
        .ok()
        .and_then(|n| 10u128.checked_pow(n))
        .ok_or_else(overflow)?;
    let scaled = digits.checked_mul(multiplier).ok_or_else(overflow)?;
    let bytes = scaled.div_ceil(scale);
    u64::try_from(bytes).map_err(|_| overflow())
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

// ---- the normalised form -----------------------------------------------------

/// One CPU entry, from `cpus[]` (rc.3), `cpu[]` (rc.2) or `resources.cpu` (1.0.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuInfo {
    pub cores: f64,
    /// As reported (`amd64`, `arm64`, `arm` in every revision; others kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

/// One peripheral; `kind` as reported (an unknown type is kept, not refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeripheralInfo {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A capabilities document read from any published shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    /// The revision whose shape the document has (by its fields).
    pub shape: Revision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub id: DeviceId,
    pub vendor: String,
    pub model_number: String,
    pub serial_number: String,
    /// 1.0.0 `properties.roles`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<CpuInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peripherals: Vec<PeripheralInfo>,
    /// Interface types as reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otel_collector: Option<bool>,
    /// `oci`, or `custom` for any other value (rc.3: the WFM "MUST default to
    /// custom" for an unknown type; the original value stays in the document).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_runtimes: Vec<Runtime>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_deployment_types: Vec<DeploymentType>,
    /// rc.3 top-level `labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Value>,
    /// `x-<name>-extensions` members, at the root (as the spec says) or in
    /// `properties` (where older agents of ours put them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, Value>,
    /// Members no revision defines, by path (`properties.foo`); kept, not refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, Value>,
}

// ---- the document as received --------------------------------------------------

/// A `DeviceCapabilitiesManifest` as received or as we send it: the JSON
/// object with every member kept, plus the exact JSON text when it was read
/// from JSON ([`Self::from_json`]). Serialises as the object (CBOR on MQTT,
/// JSON over HTTP); equality compares the objects.
#[derive(Debug, Clone)]
pub struct DeviceCapabilitiesManifest {
    document: Map<String, Value>,
    original: Option<String>,
}

impl PartialEq for DeviceCapabilitiesManifest {
    fn eq(&self, other: &Self) -> bool {
        self.document == other.document
    }
}

impl Serialize for DeviceCapabilitiesManifest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.document.serialize(s)
    }
}

impl<'de> Deserialize<'de> for DeviceCapabilitiesManifest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            document: Map::deserialize(d)?,
            original: None,
        })
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn is_extension_key(key: &str) -> bool {
    key.strip_prefix("x-")
        .and_then(|k| k.strip_suffix("-extensions"))
        .is_some_and(|name| !name.is_empty())
}

impl DeviceCapabilitiesManifest {
    /// Our agent's report in the newest shape (rc.3).
    pub fn new(properties: DeviceProperties) -> Self {
        Self::build(&properties, Revision::Rc3)
    }

    /// Reads a JSON body, keeping its exact text.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DocumentError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| DocumentError::Syntax(e.to_string()))?;
        let mut doc = Self::from_value(value)?;
        // JSON is UTF-8 (RFC 8259 §8.1); serde_json accepted it, so it is.
        doc.original = String::from_utf8(bytes.to_vec()).ok();
        Ok(doc)
    }

    /// Wraps a JSON value (no original text kept).
    pub fn from_value(value: Value) -> Result<Self, DocumentError> {
        match value {
            Value::Object(document) => Ok(Self {
                document,
                original: None,
            }),
            other => Err(DocumentError::NotAnObject(json_type(&other))),
        }
    }

    /// The document as a JSON object.
    pub fn document(&self) -> &Map<String, Value> {
        &self.document
    }

    /// The document as a JSON value.
    pub fn to_value(&self) -> Value {
        Value::Object(self.document.clone())
    }

    /// The exact JSON text received, if it came as JSON.
    pub fn original(&self) -> Option<&str> {
        self.original.as_deref()
    }

    /// The original JSON text, or the document serialised as JSON.
    pub fn original_json(&self) -> String {
        match &self.original {
            Some(text) => text.clone(),
            None => Value::Object(self.document.clone()).to_string(),
        }
    }

    /// `properties.id` as written, if it is a string (before any check).
    pub fn device_id(&self) -> Option<&str> {
        self.document
            .get("properties")
            .and_then(|p| p.get("id"))
            .and_then(Value::as_str)
    }

    /// Checks what the specification requires; see [`Self::normalize`].
    pub fn validate(&self) -> Result<(), CapabilitiesError> {
        self.normalize().map(drop)
    }

    /// Reads any published shape into the normalised form.
    pub fn normalize(&self) -> Result<DeviceCapabilities, CapabilitiesError> {
        normalize(&self.document)
    }

    /// Writes `p` in the shape of revision `shape`.
    ///
    /// - rc.3: `properties{id, vendor, modelNumber, serialNumber, cpus, ...}`.
    /// - rc.2: `apiVersion`, `kind`, and `cpu` instead of `cpus`.
    /// - 1.0.0: `apiVersion`, `kind`, `properties.roles` (`Standalone Device`)
    ///   and `properties.resources{cpu, memory, storage, peripherals,
    ///   interfaces}`; `cpu` is one object (the total of the cores, the first
    ///   entry's architecture), the lists are always present.
    ///
    /// Vendor extensions go at the root in every shape.
    pub fn build(p: &DeviceProperties, shape: Revision) -> Self {
        let mut props = Map::new();
        props.insert("id".into(), Value::from(p.id.as_str()));
        props.insert("vendor".into(), Value::from(p.vendor.as_str()));
        props.insert("modelNumber".into(), Value::from(p.model_number.as_str()));
        props.insert("serialNumber".into(), Value::from(p.serial_number.as_str()));
        let peripherals: Vec<Value> = p.peripherals.iter().map(wire).collect();
        let interfaces: Vec<Value> = p.interfaces.iter().map(wire).collect();
        match shape {
            Revision::V1_0_0 => {
                props.insert(
                    "roles".into(),
                    Value::Array(vec![Value::from(ROLE_STANDALONE_DEVICE)]),
                );
                let mut resources = Map::new();
                let cores: f64 = p.cpu.iter().map(|c| c.cores).sum();
                let mut cpu = Map::new();
                cpu.insert("cores".into(), Value::from(cores));
                if let Some(first) = p.cpu.first() {
                    cpu.insert("architecture".into(), wire(&first.architecture));
                }
                resources.insert("cpu".into(), Value::Object(cpu));
                if let Some(m) = &p.memory {
                    resources.insert("memory".into(), Value::from(m.as_str()));
                }
                if let Some(s) = &p.storage {
                    resources.insert("storage".into(), Value::from(s.as_str()));
                }
                resources.insert("peripherals".into(), Value::Array(peripherals));
                resources.insert("interfaces".into(), Value::Array(interfaces));
                props.insert("resources".into(), Value::Object(resources));
            }
            Revision::Rc2 | Revision::Rc3 => {
                if !p.cpu.is_empty() {
                    let name = if shape == Revision::Rc3 {
                        "cpus"
                    } else {
                        "cpu"
                    };
                    props.insert(name.into(), Value::Array(p.cpu.iter().map(wire).collect()));
                }
                if let Some(m) = &p.memory {
                    props.insert("memory".into(), Value::from(m.as_str()));
                }
                if let Some(s) = &p.storage {
                    props.insert("storage".into(), Value::from(s.as_str()));
                }
                if !peripherals.is_empty() {
                    props.insert("peripherals".into(), Value::Array(peripherals));
                }
                if !interfaces.is_empty() {
                    props.insert("interfaces".into(), Value::Array(interfaces));
                }
                if let Some(o) = p.otel_collector {
                    props.insert("otelCollector".into(), Value::from(o));
                }
                if !p.supported_runtimes.is_empty() {
                    props.insert(
                        "supportedRuntimes".into(),
                        Value::Array(p.supported_runtimes.iter().map(wire).collect()),
                    );
                }
                if !p.supported_deployment_types.is_empty() {
                    props.insert(
                        "supportedDeploymentTypes".into(),
                        Value::Array(p.supported_deployment_types.iter().map(wire).collect()),
                    );
                }
            }
        }
        let mut document = Map::new();
        if shape != Revision::Rc3 {
            document.insert("apiVersion".into(), Value::from(API_VERSION));
            document.insert("kind".into(), Value::from(KIND));
        }
        document.insert("properties".into(), Value::Object(props));
        for (key, value) in &p.extensions {
            document.insert(key.clone(), value.clone());
        }
        Self {
            document,
            original: None,
        }
    }
}

// ---- the reader ----------------------------------------------------------------

fn text(field: &str, value: &Value) -> Result<String, CapabilitiesError> {
    let s = value
        .as_str()
        .ok_or_else(|| bad(field, format!("must be a string, not {}", json_type(value))))?;
    if s.len() > MAX_TEXT_LEN {
        return Err(bad(field, format!("longer than {MAX_TEXT_LEN} characters")));
    }
    Ok(s.to_string())
}

fn required_text(field: &str, value: Option<&Value>) -> Result<String, CapabilitiesError> {
    let value = value.ok_or_else(|| bad(field, "is required"))?;
    let s = text(field, value)?;
    if s.trim().is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    Ok(s)
}

fn optional_text(field: &str, value: Option<&Value>) -> Result<Option<String>, CapabilitiesError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => text(field, v).map(Some),
    }
}

fn list<'a>(field: &str, value: Option<&'a Value>) -> Result<&'a [Value], CapabilitiesError> {
    match value {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) if items.len() > MAX_LIST_LEN => Err(bad(
            field,
            format!("{} entries, the limit is {MAX_LIST_LEN}", items.len()),
        )),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(bad(
            field,
            format!("must be an array, not {}", json_type(other)),
        )),
    }
}

fn object<'a>(
    field: &str,
    value: Option<&'a Value>,
) -> Result<Option<&'a Map<String, Value>>, CapabilitiesError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(bad(
            field,
            format!("must be an object, not {}", json_type(other)),
        )),
    }
}

fn quantity(field: &str, value: Option<&Value>) -> Result<Option<u64>, CapabilitiesError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            parse_quantity(s)
                .map(Some)
                .map_err(|source| CapabilitiesError::Quantity {
                    field: field.to_string(),
                    source,
                })
        }
        // A bare number: bytes.
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(field, format!("{n} is not a whole number of bytes"))),
        Some(other) => Err(bad(
            field,
            format!(
                "must be a quantity such as \"4Gi\", not {}",
                json_type(other)
            ),
        )),
    }
}

fn cpu(field: &str, value: &Value) -> Result<CpuInfo, CapabilitiesError> {
    let m = object(field, Some(value))?.ok_or_else(|| bad(field, "must be an object"))?;
    let cores_field = format!("{field}.cores");
    let cores = match m.get("cores") {
        None => return Err(bad(&cores_field, "is required")),
        Some(v) => v.as_f64().ok_or_else(|| {
            bad(
                &cores_field,
                format!("must be a number, not {}", json_type(v)),
            )
        })?,
    };
    if !cores.is_finite() || cores < 0.0 {
        return Err(bad(&cores_field, format!("{cores} is not a core count")));
    }
    Ok(CpuInfo {
        cores,
        architecture: optional_text(&format!("{field}.architecture"), m.get("architecture"))?,
    })
}

fn typed_entry<'a>(
    field: &str,
    value: &'a Value,
) -> Result<&'a Map<String, Value>, CapabilitiesError> {
    object(field, Some(value))?.ok_or_else(|| bad(field, "must be an object"))
}

fn strings(field: &str, value: Option<&Value>) -> Result<Vec<String>, CapabilitiesError> {
    list(field, value)?
        .iter()
        .enumerate()
        .map(|(i, v)| text(&format!("{field}[{i}]"), v))
        .collect()
}

/// Members of `properties` some revision defines (besides 1.0.0 `resources`).
const PROPERTY_KEYS: &[&str] = &[
    "id",
    "vendor",
    "modelNumber",
    "serialNumber",
    "roles",
    "resources",
    "cpu",
    "cpus",
    "memory",
    "storage",
    "peripherals",
    "interfaces",
    "otelCollector",
    "supportedRuntimes",
    "supportedDeploymentTypes",
];
const RESOURCE_KEYS: &[&str] = &["cpu", "memory", "storage", "peripherals", "interfaces"];
const ROOT_KEYS: &[&str] = &["apiVersion", "kind", "properties", "labels"];

fn normalize(doc: &Map<String, Value>) -> Result<DeviceCapabilities, CapabilitiesError> {
    let api_version = optional_text("apiVersion", doc.get("apiVersion"))?;
    if let Some(kind) = optional_text("kind", doc.get("kind"))? {
        if kind != KIND {
            return Err(bad("kind", format!("{kind:?} is not {KIND}")));
        }
    }
    let p = object("properties", doc.get("properties"))?
        .ok_or_else(|| bad("properties", "is required"))?;
    let id_text = required_text("properties.id", p.get("id"))?;
    let id = DeviceId::new(id_text).map_err(|e| bad("properties.id", e.to_string()))?;
    let vendor = required_text("properties.vendor", p.get("vendor"))?;
    let model_number = required_text("properties.modelNumber", p.get("modelNumber"))?;
    let serial_number = required_text("properties.serialNumber", p.get("serialNumber"))?;
    let roles = strings("properties.roles", p.get("roles"))?;
    let resources = object("properties.resources", p.get("resources"))?;

    // Where each hosting field is: `properties` (rc.2, rc.3) or, in the
    // 1.0.0 shape, `properties.resources` (a field present in both is read
    // from `properties`).
    let field_of = |name: &str| -> (String, Option<&Value>) {
        match (p.get(name), resources.and_then(|r| r.get(name))) {
            (None, Some(v)) => (format!("properties.resources.{name}"), Some(v)),
            (v, _) => (format!("properties.{name}"), v),
        }
    };

    let mut cpus = Vec::new();
    if let Some(v) = p.get("cpus") {
        for (i, c) in list("properties.cpus", Some(v))?.iter().enumerate() {
            cpus.push(cpu(&format!("properties.cpus[{i}]"), c)?);
        }
    } else {
        let (field, v) = field_of("cpu");
        match v {
            None | Some(Value::Null) => {}
            // 1.0.0: one object.
            Some(obj @ Value::Object(_)) => cpus.push(cpu(&field, obj)?),
            Some(v) => {
                for (i, c) in list(&field, Some(v))?.iter().enumerate() {
                    cpus.push(cpu(&format!("{field}[{i}]"), c)?);
                }
            }
        }
    }
    let (field, v) = field_of("memory");
    let memory_bytes = quantity(&field, v)?;
    let (field, v) = field_of("storage");
    let storage_bytes = quantity(&field, v)?;
    let (field, v) = field_of("peripherals");
    let mut peripherals = Vec::new();
    for (i, entry) in list(&field, v)?.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let m = typed_entry(&f, entry)?;
        peripherals.push(PeripheralInfo {
            kind: required_text(&format!("{f}.type"), m.get("type"))?,
            manufacturer: optional_text(&format!("{f}.manufacturer"), m.get("manufacturer"))?,
            model: optional_text(&format!("{f}.model"), m.get("model"))?,
        });
    }
    let (field, v) = field_of("interfaces");
    let mut interfaces = Vec::new();
    for (i, entry) in list(&field, v)?.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let m = typed_entry(&f, entry)?;
        interfaces.push(required_text(&format!("{f}.type"), m.get("type"))?);
    }
    let otel_collector = match p.get("otelCollector") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(bad(
                "properties.otelCollector",
                format!("must be a boolean, not {}", json_type(other)),
            ))
        }
    };
    let supported_runtimes = strings("properties.supportedRuntimes", p.get("supportedRuntimes"))?
        .iter()
        .map(|s| match s.as_str() {
            "oci" => Runtime::Oci,
            _ => Runtime::Custom,
        })
        .collect();
    let supported_deployment_types = strings(
        "properties.supportedDeploymentTypes",
        p.get("supportedDeploymentTypes"),
    )?
    .iter()
    .map(|s| match s.as_str() {
        "helm" => DeploymentType::Helm,
        "compose" => DeploymentType::Compose,
        _ => DeploymentType::Custom,
    })
    .collect();
    let labels: BTreeMap<String, Value> = match object("labels", doc.get("labels"))? {
        None => BTreeMap::new(),
        Some(m) if m.len() > MAX_LIST_LEN => {
            return Err(bad(
                "labels",
                format!("{} entries, the limit is {MAX_LIST_LEN}", m.len()),
            ))
        }
        Some(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };

    let mut extensions = BTreeMap::new();
    let mut unknown = BTreeMap::new();
    let mut set_apart = |path: String, key: &str, value: &Value| {
        if is_extension_key(key) {
            extensions.insert(key.to_string(), value.clone());
        } else {
            unknown.insert(path, value.clone());
        }
    };
    for (key, value) in doc {
        if !ROOT_KEYS.contains(&key.as_str()) {
            set_apart(key.clone(), key, value);
        }
    }
    for (key, value) in p {
        if !PROPERTY_KEYS.contains(&key.as_str()) {
            set_apart(format!("properties.{key}"), key, value);
        }
    }
    if let Some(r) = resources {
        for (key, value) in r {
            if !RESOURCE_KEYS.contains(&key.as_str()) {
                set_apart(format!("properties.resources.{key}"), key, value);
            }
        }
    }
    if extensions.len() + unknown.len() > MAX_LIST_LEN {
        return Err(bad(
            "document",
            format!("more than {MAX_LIST_LEN} extension or unknown members"),
        ));
    }

    let shape = if !roles.is_empty() || resources.is_some() {
        Revision::V1_0_0
    } else if p.contains_key("cpus")
        || doc.contains_key("labels")
        || (api_version.is_none() && !doc.contains_key("kind"))
    {
        Revision::Rc3
    } else {
        Revision::Rc2
    };

    Ok(DeviceCapabilities {
        shape,
        api_version,
        id,
        vendor,
        model_number,
        serial_number,
        roles,
        cpus,
        memory_bytes,
        storage_bytes,
        peripherals,
        interfaces,
        otel_collector,
        supported_runtimes,
        supported_deployment_types,
        labels,
        extensions,
        unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample() -> DeviceProperties {
        DeviceProperties {
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
            extensions: BTreeMap::from([("x-acme-extensions".to_string(), json!({"a": 1}))]),
        }
    }

    fn doc(v: Value) -> DeviceCapabilitiesManifest {
        DeviceCapabilitiesManifest::from_value(v).unwrap()
    }

    #[test]
    fn builds_each_shape_and_reads_it_back() {
        let p = sample();
        for shape in [Revision::Rc3, Revision::Rc2, Revision::V1_0_0] {
            let m = DeviceCapabilitiesManifest::build(&p, shape);
            let n = m.normalize().unwrap();
            assert_eq!(n.shape, shape, "{:#}", m.to_value());
            assert_eq!(n.id.as_str(), "gw");
            assert_eq!(n.memory_bytes, Some(4 << 30));
            assert_eq!(n.storage_bytes, Some(64 << 30));
            assert_eq!(n.cpus.len(), 1);
            assert_eq!(n.cpus[0].architecture.as_deref(), Some("arm64"));
            assert_eq!(n.interfaces, vec!["ethernet".to_string()]);
            assert_eq!(n.extensions["x-acme-extensions"], json!({"a": 1}));
            assert!(n.unknown.is_empty(), "{:?}", n.unknown);
            // Through CBOR (MQTT) unchanged.
            let cbor = crate::codec::encode(&m).unwrap();
            let back: DeviceCapabilitiesManifest = crate::codec::decode(&cbor, 1 << 20).unwrap();
            assert_eq!(back, m);
        }
        let rc3 = DeviceCapabilitiesManifest::build(&p, Revision::Rc3).to_value();
        assert!(rc3.get("apiVersion").is_none() && rc3.get("kind").is_none());
        assert_eq!(rc3["properties"]["cpus"][0]["architecture"], "arm64");
        assert_eq!(rc3["x-acme-extensions"], json!({"a": 1}));
        let rc2 = DeviceCapabilitiesManifest::build(&p, Revision::Rc2).to_value();
        assert_eq!(rc2["apiVersion"], API_VERSION);
        assert_eq!(rc2["kind"], KIND);
        assert_eq!(rc2["properties"]["cpu"][0]["cores"], 4.0);
        let v1 = DeviceCapabilitiesManifest::build(&p, Revision::V1_0_0).to_value();
        assert_eq!(v1["properties"]["roles"], json!([ROLE_STANDALONE_DEVICE]));
        assert_eq!(v1["properties"]["resources"]["cpu"]["cores"], 4.0);
    }

    #[test]
    fn keeps_the_original_text() {
        let text = br#"{ "properties": {"id": "a", "vendor": "v", "modelNumber": "m",
            "serialNumber": "s", "memory": "59 Gi", "shoeSize": 44}, "zzz": [1] }"#;
        let m = DeviceCapabilitiesManifest::from_json(text).unwrap();
        assert_eq!(m.original().map(str::as_bytes), Some(&text[..]));
        let n = m.normalize().unwrap();
        assert_eq!(n.memory_bytes, Some(59 << 30));
        assert_eq!(n.unknown["properties.shoeSize"], json!(44));
        assert_eq!(n.unknown["zzz"], json!([1]));
        assert!(matches!(
            DeviceCapabilitiesManifest::from_json(b"{"),
            Err(DocumentError::Syntax(_))
        ));
        assert!(matches!(
            DeviceCapabilitiesManifest::from_json(b"[]"),
            Err(DocumentError::NotAnObject(_))
        ));
    }

    #[test]
    fn refuses_only_what_the_spec_requires_and_names_the_field() {
        let base = json!({"properties": {"id": "gw", "vendor": "a", "modelNumber": "b",
            "serialNumber": "c"}});
        assert!(doc(base.clone()).validate().is_ok());
        let with = |path: &str, value: Value| {
            let mut v = base.clone();
            v["properties"][path] = value;
            doc(v).validate().unwrap_err().to_string()
        };
        assert!(with("memory", json!("-4Gi")).starts_with("properties.memory"));
        assert!(with("memory", json!("lots")).starts_with("properties.memory"));
        assert!(with("storage", json!("99999999999Ei")).contains("2^64"));
        assert!(with("vendor", json!("")).starts_with("properties.vendor"));
        assert!(with("vendor", json!(7)).starts_with("properties.vendor"));
        assert!(with("id", json!("a b")).starts_with("properties.id"));
        assert!(
            with("cpus", json!([{"architecture": "arm"}])).starts_with("properties.cpus[0].cores")
        );
        assert!(
            with("cpus", json!(vec![json!({"cores": 1}); MAX_LIST_LEN + 1]))
                .starts_with("properties.cpus")
        );
        let mut missing = base.clone();
        missing["properties"]
            .as_object_mut()
            .unwrap()
            .remove("serialNumber");
        assert_eq!(
            doc(missing).validate().unwrap_err().to_string(),
            "properties.serialNumber: is required"
        );
        let mut wrong_kind = base.clone();
        wrong_kind["kind"] = json!("OnboardingRequest");
        assert!(doc(wrong_kind)
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("kind"));
        // Tolerated: unknown enum values, unknown members, custom types.
        let mut lax = base.clone();
        lax["properties"]["cpu"] = json!([{"cores": 1, "architecture": "riscv64"}]);
        lax["properties"]["interfaces"] = json!([{"type": "lora"}]);
        lax["properties"]["supportedRuntimes"] = json!(["wasm"]);
        lax["properties"]["supportedDeploymentTypes"] = json!(["custom", "nix"]);
        lax["properties"]["surprise"] = json!(1);
        lax["x-acme-extensions"] = json!({"k": "v"});
        let n = doc(lax).normalize().unwrap();
        assert_eq!(n.supported_runtimes, vec![Runtime::Custom]);
        assert_eq!(
            n.supported_deployment_types,
            vec![DeploymentType::Custom, DeploymentType::Custom]
        );
        assert_eq!(n.unknown["properties.surprise"], json!(1));
        assert_eq!(n.extensions["x-acme-extensions"], json!({"k": "v"}));
    }

    #[test]
    fn quantities() {
        for (text, bytes) in [
            ("4Gi", 4u64 << 30),
            ("59 Gi", 59 << 30),
            ("1862 Gi", 1862 << 30),
            ("1024", 1024),
            ("0", 0),
            ("4GiB", 4 << 30),
            ("4 GiB", 4 << 30),
            ("4GB", 4_000_000_000),
            ("4G", 4_000_000_000),
            ("4k", 4000),
            ("4K", 4000),
            ("4 kB", 4000),
            ("1.5Ki", 1536),
            ("0.1", 1),
            ("2Ti", 2 << 40),
            ("1Pi", 1 << 50),
            ("3PB", 3_000_000_000_000_000),
            ("15Ei", 15 << 60),
            (" 8Mi ", 8 << 20),
            ("8\tMi", 8 << 20),
            ("100B", 100),
        ] {
            assert_eq!(parse_quantity(text), Ok(bytes), "{text:?}");
        }
        assert_eq!(parse_quantity(""), Err(QuantityError::Empty));
        assert!(matches!(
            parse_quantity("Gi"),
            Err(QuantityError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_quantity("-4Gi"),
            Err(QuantityError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_quantity("4.Gi"),
            Err(QuantityError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_quantity("4gi"),
            Err(QuantityError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_quantity("4 Gi x"),
            Err(QuantityError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_quantity("16Ei"),
            Err(QuantityError::Overflow { .. })
        ));
        assert!(matches!(
            parse_quantity("99999999999999999999999999999999999999999"),
            Err(QuantityError::Overflow { .. })
        ));
        assert_eq!(format_binary_quantity(4 << 30), "4Gi");
        assert_eq!(format_binary_quantity(1536), "1536");
        assert_eq!(format_binary_quantity(3 << 20), "3Mi");
    }

    const UNITS: &[(&str, u128)] = &[
        ("", 1),
        ("B", 1),
        ("Ki", 1 << 10),
        ("KiB", 1 << 10),
        ("Mi", 1 << 20),
        ("MiB", 1 << 20),
        ("Gi", 1 << 30),
        ("GiB", 1 << 30),
        ("Ti", 1 << 40),
        ("TiB", 1 << 40),
        ("Pi", 1 << 50),
        ("PiB", 1 << 50),
        ("Ei", 1 << 60),
        ("K", 1_000),
        ("k", 1_000),
        ("KB", 1_000),
        ("M", 1_000_000),
        ("MB", 1_000_000),
        ("G", 1_000_000_000),
        ("GB", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("TB", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("PB", 1_000_000_000_000_000),
    ];

    proptest! {
        /// Any whole number with any unit, with or without blanks, gives
        /// number × unit, or Overflow exactly when that exceeds u64.
        #[test]
        fn whole_quantities(n in any::<u64>(), unit in 0..UNITS.len(), blank in prop::sample::select(vec!["", " ", "  ", "\t"])) {
            let (suffix, mult) = UNITS[unit];
            let text = format!("{n}{blank}{suffix}");
            let want = u128::from(n) * mult;
            match parse_quantity(&text) {
                Ok(bytes) => prop_assert_eq!(u128::from(bytes), want),
                Err(QuantityError::Overflow { .. }) => prop_assert!(want > u128::from(u64::MAX)),
                Err(e) => prop_assert!(false, "{text:?}: {e}"),
            }
        }

        /// The formatter's output reads back to the same bytes.
        #[test]
        fn format_round_trips(n in any::<u64>()) {
            prop_assert_eq!(parse_quantity(&format_binary_quantity(n)), Ok(n));
        }

        /// Garbage never panics; what parses is at most u64::MAX by type.
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = parse_quantity(&s);
        }

        /// Fractions round up to whole bytes.
        #[test]
        fn fractions_round_up(int in 0u64..1_000_000, frac in 1u32..1000, unit in 0..UNITS.len()) {
            let (suffix, mult) = UNITS[unit];
            let text = format!("{int}.{frac:03}{suffix}");
            let exact_num = (u128::from(int) * 1000 + u128::from(frac)) * mult;
            let want = exact_num.div_ceil(1000);
            match parse_quantity(&text) {
                Ok(bytes) => prop_assert_eq!(u128::from(bytes), want),
                Err(QuantityError::Overflow { .. }) => prop_assert!(want > u128::from(u64::MAX)),
                Err(e) => prop_assert!(false, "{text:?}: {e}"),
            }
        }
    }
}
