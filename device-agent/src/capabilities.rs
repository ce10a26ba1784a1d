//! Margo device capabilities: built from `[capabilities]` plus what the host
//! tells (DMI or devicetree, `/proc/meminfo`, `/sys/class/net`, the runtime
//! adapter), validated at start, and sent through the outbox whenever they
//! change.
//!
//! - `id`: `device_id`, else the bundle name reduced to RFC 3986 unreserved
//!   characters, else the client id.
//! - `vendor`/`modelNumber`/`serialNumber`: config, else DMI
//!   (`sys_vendor`, `product_name`, `product_serial`), else devicetree
//!   (`compatible` vendor prefix, `model`, `serial-number`); a start error
//!   names what is still missing.
//! - `cpu`: `cpu_cores` (may be fractional) or the available parallelism;
//!   `architecture` or the build's.
//! - `memory`: config (what is delegated to Margo) or MemTotal rounded down
//!   to MiB. `storage`: config only — the free space of a data directory is
//!   not what an operator delegates, so it is omitted unless set.
//! - `interfaces`: `/sys/class/net` (physical-looking names only) plus config.
//! - `supportedRuntimes: [oci]` and `supportedDeploymentTypes` from the
//!   adapter's profiles (`helm.v3` → helm, `compose` → compose).
//! - Gateway children from config, each its own report, after the parent.
//!
//! Change detection: the digest of the CBOR encoding of every report is
//! kept in the store; reports are enqueued only when it differs, so a
//! restart with unchanged capabilities sends nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use margo_schemas::capabilities::{
    format_binary_quantity, Architecture, Cpu, DeploymentType, DeviceCapabilitiesManifest,
    DeviceProperties, Interface, InterfaceType, Runtime as MargoRuntime,
};
use margo_schemas::codec;
use margo_schemas::deployment::ProfileType;
use margo_schemas::digest::Digest;
use margo_schemas::ids::{is_unreserved, ClientId, DeviceId};
use margo_schemas::messages::{CapabilitiesReport, Message};
use margo_schemas::revision::Revision;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::clock::Clock;
use crate::config::{CapabilitiesConfig, ChildCapabilities};
use crate::outbox::{OutboxError, Uplink};
use crate::runtime::RuntimeInfo;
use crate::stats::AgentStats;
use crate::store::{Store, StoreError};

/// Why capabilities could not be built or sent.
#[derive(Debug, thiserror::Error)]
pub enum CapabilitiesError {
    #[error(
        "capabilities: cannot determine {fields} from DMI or the devicetree; set them in \
         [capabilities] ({settings})"
    )]
    Missing { fields: String, settings: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("could not encode the capabilities: {0}")]
    Encode(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> CapabilitiesError {
    CapabilitiesError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Reads host facts below a root directory (`/` normally; a fake tree in tests).
#[derive(Debug, Clone)]
pub struct HostProbe {
    root: PathBuf,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::system()
    }
}

impl HostProbe {
    /// The real host.
    pub fn system() -> Self {
        Self::at("/")
    }

    /// A host whose `/sys` and `/proc` are below `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A short text file, trimmed (devicetree strings end in NUL); `None` if
    /// unreadable (e.g. `product_serial` is root-only) or empty.
    fn text(&self, rel: &str) -> Option<String> {
        let bytes = std::fs::read(self.path(rel)).ok()?;
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        (!text.is_empty() && text.len() <= 256).then(|| text.to_string())
    }

    pub fn vendor(&self) -> Option<String> {
        self.text("sys/class/dmi/id/sys_vendor").or_else(|| {
            // devicetree `compatible` = "vendor,board\0soc-vendor,soc\0..."
            let compatible = self.text("proc/device-tree/compatible")?;
            let first = compatible.split('\0').next()?;
            let (vendor, _) = first.split_once(',')?;
            (!vendor.is_empty()).then(|| vendor.to_string())
        })
    }

    pub fn model(&self) -> Option<String> {
        self.text("sys/class/dmi/id/product_name")
            .or_else(|| self.text("proc/device-tree/model"))
    }

    pub fn serial(&self) -> Option<String> {
        self.text("sys/class/dmi/id/product_serial")
            .or_else(|| self.text("proc/device-tree/serial-number"))
    }

    /// MemTotal in bytes.
    pub fn mem_total(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.path("proc/meminfo")).ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line
            .trim_start_matches("MemTotal:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    }

    /// Interface types of the physical-looking network interfaces, in name order, deduplicated.
    pub fn interfaces(&self) -> Vec<InterfaceType> {
        let dir = self.path("sys/class/net");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Some(kind) = classify_interface(&dir, &name) {
                push_unique(&mut out, kind);
            }
        }
        out
    }
}

/// Name prefixes of virtual interfaces that are not the device's own links.
const VIRTUAL_PREFIXES: [&str; 15] = [
    "lo", "docker", "veth", "br-", "virbr", "cni", "flannel", "cali", "tun", "tap", "ifb", "dummy",
    "kube", "vxlan", "wg",
];

/// What kind of link `name` is, or `None` for loopback, virtual and unknown ones.
pub fn classify_interface(net_dir: &Path, name: &str) -> Option<InterfaceType> {
    if VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    if net_dir.join(name).join("wireless").exists() || name.starts_with("wl") {
        return Some(InterfaceType::Wifi);
    }
    if name.starts_with("ww") {
        return Some(InterfaceType::Cellular);
    }
    if name.starts_with("can") || name.starts_with("vcan") {
        return Some(InterfaceType::Canbus);
    }
    if name.starts_with("eth") || name.starts_with("en") {
        return Some(InterfaceType::Ethernet);
    }
    None
}

fn push_unique(list: &mut Vec<InterfaceType>, kind: InterfaceType) {
    if !list.contains(&kind) {
        list.push(kind);
    }
}

/// The build's architecture in Margo's terms.
pub fn build_architecture() -> Option<Architecture> {
    match std::env::consts::ARCH {
        "x86_64" => Some(Architecture::Amd64),
        "aarch64" => Some(Architecture::Arm64),
        "arm" => Some(Architecture::Arm),
        _ => None,
    }
}

/// `name` reduced to RFC 3986 unreserved characters (others become `-`).
pub fn sanitise_device_id(name: &str) -> String {
    let mut mapped = String::with_capacity(name.len());
    for c in name.chars() {
        if is_unreserved(c) {
            mapped.push(c);
        } else if !mapped.ends_with('-') {
            mapped.push('-');
        }
    }
    let trimmed = mapped.trim_matches('-');
    trimmed
        .chars()
        .take(margo_schemas::ids::MAX_DEVICE_ID_LEN)
        .collect()
}

/// Builds the reports of this device and its gateway children.
#[derive(Debug, Clone)]
pub struct CapabilitiesSource {
    pub config: CapabilitiesConfig,
    /// The bundle's name (default device id).
    pub identity_name: String,
    pub client_id: ClientId,
    pub runtime: RuntimeInfo,
    pub probe: HostProbe,
}

impl CapabilitiesSource {
    /// This device's manifest first, then each child's; every one validated.
    pub fn build(&self) -> Result<Vec<DeviceCapabilitiesManifest>, CapabilitiesError> {
        let c = &self.config;
        let id_text = match &c.device_id {
            Some(id) => id.clone(),
            None => {
                let s = sanitise_device_id(&self.identity_name);
                if s.is_empty() {
                    self.client_id.to_string()
                } else {
                    s
                }
            }
        };
        let id =
            DeviceId::new(id_text).map_err(|e| invalid("capabilities.device_id", e.to_string()))?;
        if id.parent().is_some() {
            return Err(invalid(
                "capabilities.device_id",
                "must not contain '/' (only gateway children have path ids)",
            ));
        }
        let vendor = c.vendor.clone().or_else(|| self.probe.vendor());
        let model = c.model_number.clone().or_else(|| self.probe.model());
        let serial = c.serial_number.clone().or_else(|| self.probe.serial());
        let missing: Vec<&str> = [
            ("vendor", vendor.is_none()),
            ("model_number", model.is_none()),
            ("serial_number", serial.is_none()),
        ]
        .into_iter()
        .filter_map(|(f, m)| m.then_some(f))
        .collect();
        if !missing.is_empty() {
            return Err(CapabilitiesError::Missing {
                fields: missing.join(", "),
                settings: missing
                    .iter()
                    .map(|f| format!("{f} = \"…\""))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let cores = c.cpu_cores.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
        });
        let cpu = match c.architecture.or_else(build_architecture) {
            Some(architecture) => vec![Cpu {
                cores,
                architecture,
            }],
            None => {
                warn!(
                    arch = std::env::consts::ARCH,
                    "CPU architecture has no Margo name; set capabilities.architecture to report the CPU"
                );
                Vec::new()
            }
        };
        let memory = c.memory.clone().or_else(|| {
            self.probe
                .mem_total()
                .map(|b| b / (1 << 20) * (1 << 20))
                .filter(|b| *b > 0)
                .map(format_binary_quantity)
        });
        let mut interfaces = if c.detect_interfaces {
            self.probe.interfaces()
        } else {
            Vec::new()
        };
        for kind in &c.interfaces {
            push_unique(&mut interfaces, *kind);
        }
        let mut deployment_types = Vec::new();
        for profile in &self.runtime.profiles {
            let t = match profile {
                ProfileType::HelmV3 => DeploymentType::Helm,
                ProfileType::Compose => DeploymentType::Compose,
            };
            if !deployment_types.contains(&t) {
                deployment_types.push(t);
            }
        }
        // Both Margo profile types deploy OCI containers.
        let runtimes = if deployment_types.is_empty() {
            Vec::new()
        } else {
            vec![MargoRuntime::Oci]
        };
        let parent = DeviceCapabilitiesManifest::build(
            &DeviceProperties {
                id: id.clone(),
                vendor: vendor.unwrap_or_default(),
                model_number: model.unwrap_or_default(),
                serial_number: serial.unwrap_or_default(),
                cpu,
                memory,
                storage: c.storage.clone(),
                peripherals: c.peripherals.clone(),
                interfaces: interfaces
                    .into_iter()
                    .map(|kind| Interface { kind })
                    .collect(),
                otel_collector: c.otel_collector,
                supported_runtimes: runtimes,
                supported_deployment_types: deployment_types,
                extensions: c.extensions.clone(),
            },
            c.shape.unwrap_or_default(),
        );
        check_extension_names("capabilities", &c.extensions)?;
        parent
            .validate()
            .map_err(|e| invalid("capabilities", field_of(&e.to_string())))?;
        let mut out = vec![parent];
        for (i, child) in c.children.iter().enumerate() {
            out.push(build_child(&id, i, child, c.shape.unwrap_or_default())?);
        }
        Ok(out)
    }
}

/// Our config may only add vendor extensions named `x-<name>-extensions`
/// (the manager keeps any other member, but we do not send one).
fn check_extension_names(
    field: &str,
    extensions: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Result<(), CapabilitiesError> {
    for key in extensions.keys() {
        let ok = key
            .strip_prefix("x-")
            .and_then(|k| k.strip_suffix("-extensions"))
            .is_some_and(|name| !name.is_empty());
        if !ok {
            return Err(invalid(
                field,
                format!("{key}: vendor extensions must be named x-<name>-extensions"),
            ));
        }
    }
    Ok(())
}

/// `properties.vendor: must not be empty` → `vendor: must not be empty` (config names).
fn field_of(message: &str) -> String {
    message
        .strip_prefix("properties.")
        .unwrap_or(message)
        .replace("modelNumber", "model_number")
        .replace("serialNumber", "serial_number")
        .replace("otelCollector", "otel_collector")
}

fn build_child(
    parent: &DeviceId,
    index: usize,
    child: &ChildCapabilities,
    shape: Revision,
) -> Result<DeviceCapabilitiesManifest, CapabilitiesError> {
    let field = format!("capabilities.children[{index}]");
    let id = DeviceId::new(child.id.clone())
        .map_err(|e| invalid(format!("{field}.id"), e.to_string()))?;
    if !id
        .as_str()
        .strip_prefix(parent.as_str())
        .is_some_and(|rest| rest.starts_with('/'))
    {
        return Err(invalid(
            format!("{field}.id"),
            format!(
                "{:?} must start with the gateway's id {:?} followed by '/'",
                child.id,
                parent.as_str()
            ),
        ));
    }
    let cpu = match (child.cpu_cores, child.architecture) {
        (Some(cores), Some(architecture)) => vec![Cpu {
            cores,
            architecture,
        }],
        (None, None) => Vec::new(),
        _ => {
            return Err(invalid(
                format!("{field}.cpu_cores"),
                "set both cpu_cores and architecture, or neither",
            ))
        }
    };
    let mut interfaces = Vec::new();
    for kind in &child.interfaces {
        push_unique(&mut interfaces, *kind);
    }
    let manifest = DeviceCapabilitiesManifest::build(
        &DeviceProperties {
            id,
            vendor: child.vendor.clone(),
            model_number: child.model_number.clone(),
            serial_number: child.serial_number.clone(),
            cpu,
            memory: child.memory.clone(),
            storage: child.storage.clone(),
            peripherals: child.peripherals.clone(),
            interfaces: interfaces
                .into_iter()
                .map(|kind| Interface { kind })
                .collect(),
            otel_collector: None,
            supported_runtimes: Vec::new(),
            supported_deployment_types: Vec::new(),
            extensions: child.extensions.clone(),
        },
        shape,
    );
    check_extension_names(&field, &child.extensions)?;
    manifest
        .validate()
        .map_err(|e| invalid(field.clone(), field_of(&e.to_string())))?;
    Ok(manifest)
}

/// The digest of a set of reports (over their CBOR encoding, in order).
pub fn reports_digest(reports: &[DeviceCapabilitiesManifest]) -> Result<Digest, CapabilitiesError> {
    let bytes = codec::encode(&reports).map_err(|e| CapabilitiesError::Encode(e.to_string()))?;
    Ok(Digest::of(&bytes))
}

/// Sends capabilities at start and whenever they change.
pub struct CapabilitiesReporter {
    source: CapabilitiesSource,
    store: Store,
    uplink: Uplink,
    clock: Arc<dyn Clock>,
    stats: Arc<AgentStats>,
    interval: Duration,
}

impl CapabilitiesReporter {
    pub fn new(
        source: CapabilitiesSource,
        store: Store,
        uplink: Uplink,
        clock: Arc<dyn Clock>,
        stats: Arc<AgentStats>,
        interval: Duration,
    ) -> Self {
        Self {
            source,
            store,
            uplink,
            clock,
            stats,
            interval,
        }
    }

    /// Rebuilds the reports and enqueues them (parent first) if their digest
    /// differs from the one last sent. Returns how many were enqueued.
    pub fn report_if_changed(&self) -> Result<usize, CapabilitiesError> {
        let reports = self.source.build()?;
        let digest = reports_digest(&reports)?;
        if self.store.capabilities_digest()? == Some(digest) {
            debug!(%digest, "capabilities unchanged");
            return Ok(0);
        }
        let count = reports.len();
        for manifest in reports {
            let device_id = manifest.device_id().unwrap_or_default().to_string();
            let seq = self
                .uplink
                .send(Message::Capabilities(CapabilitiesReport { manifest }))?;
            AgentStats::bump(&self.stats.capabilities_sent);
            debug!(device_id, seq, "capabilities enqueued");
        }
        // Recorded after the reports are committed to the outbox: a crash in
        // between sends them once more, never not at all.
        self.store.set_capabilities_digest(&digest)?;
        info!(%digest, devices = count, "capabilities changed; reported");
        Ok(count)
    }

    /// Reports now and every interval until `shutdown`. Errors after start
    /// (e.g. a store error) are logged; the next interval tries again.
    #[instrument(skip_all, fields(client_id = %self.source.client_id))]
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.report_if_changed() {
                warn!(%error, "could not report capabilities; trying again at the next interval");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.clock.sleep(self.interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::config::OutboxConfig;
    use crate::outbox::Outbox;
    use crate::snapshot::{AgentSnapshot, Snapshots};
    use margo_schemas::cose::SigningKey;
    use std::collections::BTreeMap;

    fn fake_host() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let net = root.path().join("sys/class/net");
        for name in [
            "lo", "eth0", "enp3s0", "docker0", "veth12ab", "br-f00", "wlan0", "wwan0", "can0",
            "mystery0", "wlp2s0",
        ] {
            std::fs::create_dir_all(net.join(name)).unwrap();
        }
        // A wireless interface with an unusual name, recognised by its `wireless` dir.
        std::fs::create_dir_all(net.join("radio1/wireless")).unwrap();
        let dmi = root.path().join("sys/class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        std::fs::write(dmi.join("sys_vendor"), "Acme Corp\n").unwrap();
        std::fs::write(dmi.join("product_name"), "Edge 1\n").unwrap();
        let dt = root.path().join("proc/device-tree");
        std::fs::create_dir_all(&dt).unwrap();
        std::fs::write(dt.join("serial-number"), "SN-42\0").unwrap();
        std::fs::write(
            root.path().join("proc/meminfo"),
            "MemTotal:        8049996 kB\nMemFree: 1 kB\n",
        )
        .unwrap();
        root
    }

    fn source(root: &Path, config: CapabilitiesConfig) -> CapabilitiesSource {
        CapabilitiesSource {
            config,
            identity_name: "Press #7 (hall B)".into(),
            client_id: ClientId::new("abc123").unwrap(),
            runtime: RuntimeInfo {
                name: "test",
                profiles: vec![ProfileType::HelmV3, ProfileType::Compose],
            },
            probe: HostProbe::at(root),
        }
    }

    #[test]
    fn interfaces_from_fake_sysfs() {
        let root = fake_host();
        let kinds = HostProbe::at(root.path()).interfaces();
        // Sorted names: can0, docker0, enp3s0, eth0, lo, mystery0, radio1, veth, wlan0, wlp2s0, wwan0
        assert_eq!(
            kinds,
            vec![
                InterfaceType::Canbus,
                InterfaceType::Ethernet,
                InterfaceType::Wifi,
                InterfaceType::Cellular
            ]
        );
        assert!(HostProbe::at(root.path().join("nowhere"))
            .interfaces()
            .is_empty());
    }

    #[test]
    fn detected_facts_quantities_and_config_additions() {
        let root = fake_host();
        let config = CapabilitiesConfig {
            cpu_cores: Some(0.5),
            architecture: Some(Architecture::Arm64),
            storage: Some("64Gi".into()),
            interfaces: vec![InterfaceType::Rs232, InterfaceType::Ethernet],
            otel_collector: Some(true),
            ..CapabilitiesConfig::default()
        };
        let reports = source(root.path(), config).build().unwrap();
        assert_eq!(reports.len(), 1);
        let p = &reports[0].normalize().unwrap();
        assert_eq!(p.id.as_str(), "Press-7-hall-B");
        assert_eq!(
            (
                p.vendor.as_str(),
                p.model_number.as_str(),
                p.serial_number.as_str()
            ),
            ("Acme Corp", "Edge 1", "SN-42")
        );
        assert_eq!(p.cpus[0].cores, 0.5);
        assert_eq!(p.cpus[0].architecture.as_deref(), Some("arm64"));
        // 8049996 kB rounded down to MiB.
        assert_eq!(p.memory_bytes, Some(7861 << 20));
        assert_eq!(p.storage_bytes, Some(64 << 30));
        let kinds = &p.interfaces;
        assert_eq!(kinds.last().map(String::as_str), Some("rs232"));
        assert_eq!(kinds.iter().filter(|k| *k == "ethernet").count(), 1);
        assert_eq!(p.supported_runtimes, vec![MargoRuntime::Oci]);
        assert_eq!(
            p.supported_deployment_types,
            vec![DeploymentType::Helm, DeploymentType::Compose]
        );
        // The newest shape by default: no apiVersion/kind, `cpus`.
        let json = serde_json::to_value(&reports[0]).unwrap();
        assert_eq!(json["properties"]["memory"], "7861Mi");
        assert_eq!(json["properties"]["cpus"][0]["architecture"], "arm64");
        assert!(json.get("apiVersion").is_none() && json.get("kind").is_none());

        let memory = CapabilitiesConfig {
            memory: Some("2Gi".into()),
            ..CapabilitiesConfig::default()
        };
        let m = &source(root.path(), memory).build().unwrap()[0];
        assert_eq!(m.to_value()["properties"]["memory"], "2Gi");
        assert_eq!(
            m.normalize().unwrap().storage_bytes,
            None,
            "storage is not detected"
        );
    }

    #[test]
    fn missing_identity_fields_are_named() {
        let empty = tempfile::tempdir().unwrap();
        let err = source(
            empty.path(),
            CapabilitiesConfig {
                vendor: Some("Acme".into()),
                ..CapabilitiesConfig::default()
            },
        )
        .build()
        .unwrap_err()
        .to_string();
        assert!(err.contains("model_number, serial_number"), "{err}");
        assert!(err.contains("[capabilities]"), "{err}");
        // A runtime with no profiles reports no runtimes.
        let mut s = source(
            empty.path(),
            CapabilitiesConfig {
                vendor: Some("a".into()),
                model_number: Some("b".into()),
                serial_number: Some("c".into()),
                device_id: Some("dev".into()),
                ..CapabilitiesConfig::default()
            },
        );
        s.runtime.profiles.clear();
        let p = &s.build().unwrap()[0].normalize().unwrap();
        assert!(p.supported_runtimes.is_empty() && p.supported_deployment_types.is_empty());
        assert_eq!(p.id.as_str(), "dev");
    }

    fn child(id: &str) -> ChildCapabilities {
        ChildCapabilities {
            id: id.into(),
            vendor: "Sensors Inc".into(),
            model_number: "S1".into(),
            serial_number: id.replace('/', "-"),
            cpu_cores: None,
            architecture: None,
            memory: None,
            storage: None,
            interfaces: vec![InterfaceType::Canbus],
            peripherals: vec![],
            extensions: BTreeMap::new(),
        }
    }

    #[test]
    fn children_follow_the_parent_and_are_validated() {
        let root = fake_host();
        let config = CapabilitiesConfig {
            device_id: Some("gw".into()),
            children: vec![child("gw/a"), child("gw/b/c")],
            ..CapabilitiesConfig::default()
        };
        let ids: Vec<String> = source(root.path(), config.clone())
            .build()
            .unwrap()
            .iter()
            .map(|m| m.device_id().unwrap_or_default().to_string())
            .collect();
        assert_eq!(ids, ["gw", "gw/a", "gw/b/c"]);

        for (bad, field) in [
            (child("other/a"), "capabilities.children[1].id"),
            (child("gwx/a"), "capabilities.children[1].id"),
            (child("gw"), "capabilities.children[1].id"),
            (child("gw//a"), "capabilities.children[1].id"),
        ] {
            let mut c = config.clone();
            c.children = vec![child("gw/a"), bad];
            match source(root.path(), c).build() {
                Err(CapabilitiesError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected an error on {field}, got {other:?}"),
            }
        }
        let mut c = config.clone();
        let mut empty_vendor = child("gw/a");
        empty_vendor.vendor = " ".into();
        c.children = vec![empty_vendor];
        let err = source(root.path(), c).build().unwrap_err().to_string();
        assert_eq!(err, "capabilities.children[0]: vendor: must not be empty");
    }

    #[test]
    fn extensions_pass_through_and_bad_names_are_errors() {
        let root = fake_host();
        let mut config = CapabilitiesConfig::default();
        config.extensions.insert(
            "x-acme-extensions".into(),
            serde_json::json!({"line": 3, "zones": ["a", "b"]}),
        );
        let m = &source(root.path(), config.clone()).build().unwrap()[0];
        let json = serde_json::to_value(m).unwrap();
        // At the document's root, as device-capabilities.md says.
        assert_eq!(json["x-acme-extensions"]["zones"][1], "b");
        config
            .extensions
            .insert("acme".into(), serde_json::json!(1));
        let err = source(root.path(), config).build().unwrap_err().to_string();
        assert!(err.starts_with("capabilities: acme"), "{err}");
    }

    #[test]
    fn extensions_parse_from_toml() {
        let c = crate::AgentConfig::from_toml(
            r#"
version = 1
[capabilities]
vendor = "Acme"
model_number = "E1"
serial_number = "1"
cpu_cores = 0.5
memory = "2Gi"
interfaces = ["canbus", "rs232"]
peripherals = [{ type = "gpu", manufacturer = "NVIDIA" }]
[capabilities.extensions."x-acme-extensions"]
line = 3
[[capabilities.children]]
id = "gw/plc"
vendor = "Siemens"
model_number = "S7"
serial_number = "77"
"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.capabilities.extensions["x-acme-extensions"]["line"], 3);
        assert_eq!(c.capabilities.children[0].id, "gw/plc");
        assert_eq!(c.capabilities.interfaces.len(), 2);
    }

    fn uplink(store: &Store) -> Uplink {
        let (key, _) = SigningKey::generate().unwrap();
        let stats = Arc::new(AgentStats::default());
        let outbox = Outbox::open(
            store.clone(),
            ClientId::new("abc123").unwrap(),
            Arc::new(key),
            Arc::new(SystemClock),
            OutboxConfig::default(),
            Arc::clone(&stats),
        )
        .unwrap();
        Uplink::new(outbox, Snapshots::new(AgentSnapshot::default(), stats))
    }

    fn reporter(store: &Store, root: &Path, config: CapabilitiesConfig) -> CapabilitiesReporter {
        CapabilitiesReporter::new(
            source(root, config),
            store.clone(),
            uplink(store),
            Arc::new(SystemClock),
            Arc::new(AgentStats::default()),
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn resent_only_when_changed_across_restarts() {
        let root = fake_host();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        let config = CapabilitiesConfig {
            device_id: Some("gw".into()),
            children: vec![child("gw/a")],
            ..CapabilitiesConfig::default()
        };
        {
            let store = Store::open(&path).unwrap();
            let r = reporter(&store, root.path(), config.clone());
            assert_eq!(
                r.report_if_changed().unwrap(),
                2,
                "first start: parent and child"
            );
            assert_eq!(r.report_if_changed().unwrap(), 0, "unchanged: nothing");
            assert_eq!(r.uplink.lock().len(), 2);
        }
        // Restart on the same store with the same capabilities: nothing sent.
        let store = Store::open(&path).unwrap();
        let r = reporter(&store, root.path(), config.clone());
        assert_eq!(r.report_if_changed().unwrap(), 0);
        drop(r);
        // Changed configuration: sent once, parent first.
        let mut changed = config;
        changed.memory = Some("1Gi".into());
        let r = reporter(&store, root.path(), changed);
        assert_eq!(r.report_if_changed().unwrap(), 2);
        assert_eq!(r.report_if_changed().unwrap(), 0);
        // A new network interface is a change too.
        std::fs::create_dir_all(root.path().join("sys/class/net/usb0")).unwrap();
        std::fs::create_dir_all(root.path().join("sys/class/net/eth9")).unwrap();
        assert_eq!(
            r.report_if_changed().unwrap(),
            0,
            "known kinds only: no change"
        );
        std::fs::remove_dir_all(root.path().join("sys/class/net/can0")).unwrap();
        assert_eq!(r.report_if_changed().unwrap(), 2, "canbus gone: changed");
    }
}
