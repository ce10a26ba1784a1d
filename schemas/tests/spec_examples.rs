//! The Margo specification's own example payloads and schema shapes (see
//! `fixtures/spec/README.md` for each file's source): every one is accepted,
//! normalised as the text says, and keeps the original document.

use std::path::PathBuf;

use margo_schemas::capabilities::{DeploymentType, DeviceCapabilitiesManifest, Runtime};
use margo_schemas::revision::Revision;
use margo_schemas::status::{DeploymentState, DeploymentStatus, StatusError};
use serde_json::{json, Value};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/spec")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn capabilities_fixtures() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spec");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("capabilities-") && n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_capabilities_example_is_accepted_and_round_trips() {
    let names = capabilities_fixtures();
    assert_eq!(names.len(), 12, "{names:?}");
    for name in names {
        let bytes = fixture(&name);
        let doc =
            DeviceCapabilitiesManifest::from_json(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let n = doc.normalize().unwrap_or_else(|e| panic!("{name}: {e}"));
        // The original is kept byte for byte, and its content unchanged
        // through our serialisation (JSON and CBOR).
        assert_eq!(
            doc.original().map(str::as_bytes),
            Some(&bytes[..]),
            "{name}"
        );
        let parsed: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(doc.to_value(), parsed, "{name}");
        assert_eq!(serde_json::to_value(&doc).expect("json"), parsed, "{name}");
        let cbor = margo_schemas::codec::encode(&doc).expect("cbor");
        let back: DeviceCapabilitiesManifest =
            margo_schemas::codec::decode(&cbor, 1 << 20).expect("cbor");
        assert_eq!(back.to_value(), parsed, "{name}");
        // Nothing in a published example is unknown to us.
        assert!(n.unknown.is_empty(), "{name}: {:?}", n.unknown);
        let expected_shape = if name.contains("00ab1b4b") {
            Revision::Rc2
        } else if name.contains("1.0.0") {
            Revision::V1_0_0
        } else {
            Revision::Rc3
        };
        assert_eq!(n.shape, expected_shape, "{name}");
    }
}

#[test]
fn the_page_example_normalises_as_written() {
    for name in [
        "capabilities-00ab1b4b-example.json",
        "capabilities-aae95624-example.json",
        "capabilities-openapi-1.0.0-schema.json",
    ] {
        let n = DeviceCapabilitiesManifest::from_json(&fixture(name))
            .expect("object")
            .normalize()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(n.id.as_str(), "northstarida.xtapro.k8s.edge", "{name}");
        assert_eq!(n.vendor, "Northstar Industrial Devices");
        assert_eq!(n.model_number, "332ANZE1-N1");
        assert_eq!(n.serial_number, "PF45343-AA");
        // "59 Gi" and "1862 Gi", with the space.
        assert_eq!(n.memory_bytes, Some(59 << 30), "{name}");
        assert_eq!(n.storage_bytes, Some(1862 << 30), "{name}");
        assert_eq!(n.cpus.len(), 1, "{name}");
        assert_eq!(n.cpus[0].cores, 24.0);
        assert_eq!(n.cpus[0].architecture.as_deref(), Some("amd64"));
        assert_eq!(n.peripherals[0].kind, "gpu");
        assert_eq!(n.peripherals[0].manufacturer.as_deref(), Some("NVIDIA"));
        assert_eq!(n.interfaces, vec!["ethernet", "wifi"], "{name}");
        if name.contains("1.0.0") {
            assert_eq!(n.roles, vec!["Standalone Cluster", "Cluster Leader"]);
            assert_eq!(n.api_version.as_deref(), Some("device.margo.org/v1alpha1"));
        } else {
            assert_eq!(n.otel_collector, Some(true));
            assert_eq!(n.supported_runtimes, vec![Runtime::Oci]);
            assert_eq!(
                n.supported_deployment_types,
                vec![DeploymentType::Helm, DeploymentType::Compose]
            );
        }
    }
}

#[test]
fn gateway_examples_keep_their_hierarchy() {
    for rev in ["00ab1b4b", "aae95624"] {
        let read = |case: &str| {
            DeviceCapabilitiesManifest::from_json(&fixture(&format!(
                "capabilities-{rev}-{case}.json"
            )))
            .expect("object")
            .normalize()
            .expect("valid")
        };
        let bare = read("gateway1-non-hosting");
        assert_eq!(bare.id.as_str(), "gateway1");
        assert!(bare.cpus.is_empty() && bare.memory_bytes.is_none());
        assert!(bare.supported_runtimes.is_empty());
        let hosting = read("gateway1-hosting");
        assert_eq!(hosting.memory_bytes, Some(12 << 30));
        assert_eq!(hosting.cpus[0].cores, 4.0);
        let child = read("gateway1-deviceA");
        assert_eq!(
            child.id.parent().map(|p| p.to_string()).as_deref(),
            Some("gateway1")
        );
        let deep = read("gateway1-path1-deviceA");
        assert_eq!(deep.id.as_str(), "gateway1/path1/deviceA");
        assert_eq!(deep.memory_bytes, Some(6 << 30));
        assert_eq!(deep.cpus[0].architecture.as_deref(), Some("arm64"));
    }
}

#[test]
fn the_rc3_schema_shape_keeps_labels_custom_values_and_extensions() {
    let n =
        DeviceCapabilitiesManifest::from_json(&fixture("capabilities-openapi-rc.3-schema.json"))
            .expect("object")
            .normalize()
            .expect("valid");
    assert_eq!(n.shape, Revision::Rc3);
    assert_eq!(n.cpus.len(), 2);
    assert_eq!(n.cpus[1].cores, 0.5);
    assert_eq!(n.cpus[1].architecture, None);
    assert_eq!(n.supported_runtimes, vec![Runtime::Oci, Runtime::Custom]);
    assert_eq!(
        n.supported_deployment_types,
        vec![
            DeploymentType::Helm,
            DeploymentType::Compose,
            DeploymentType::Custom
        ]
    );
    assert_eq!(n.labels.len(), 5);
    assert_eq!(n.labels["example.com/ports"], json!([502, 4840]));
    assert_eq!(n.extensions["x-acme-extensions"], json!({"tier": "gold"}));
}

#[test]
fn every_status_example_is_accepted() {
    // deployment-status.md: no apiVersion/kind, empty-string error members.
    let page: DeploymentStatus =
        serde_json::from_slice(&fixture("status-02b3189e-example.json")).expect("page example");
    page.validate().expect("valid");
    assert_eq!(page.kind, None);
    assert_eq!(page.status.state, DeploymentState::Pending);
    assert_eq!(page.status.error, Some(StatusError::default()));
    assert_eq!(
        page.device_id.as_ref().map(|d| d.as_str()),
        Some("plant-alfa-zone1-edge01")
    );

    // 1.0.0 OpenAPI: kind DeploymentStatusManifest, error without source.
    let v1: DeploymentStatus =
        serde_json::from_slice(&fixture("status-openapi-1.0.0-schema.json")).expect("1.0.0");
    v1.validate().expect("valid");
    assert_eq!(v1.kind.as_deref(), Some("DeploymentStatusManifest"));
    let err = v1.status.error.as_ref().expect("error");
    assert_eq!((err.code.as_str(), err.source.as_str()), ("E42", ""));
    assert_eq!(
        v1.components[1].error.as_ref().map(|e| e.message.as_str()),
        Some("image pull failed")
    );

    // rc.3: adoptedManifestVersion (read by the transports, ignored here), empty error.
    let rc3: DeploymentStatus =
        serde_json::from_slice(&fixture("status-openapi-rc.3-schema.json")).expect("rc.3");
    rc3.validate().expect("valid");
    assert_eq!(rc3.status.state, DeploymentState::Installing);

    // What we write reads back as the same status in every revision.
    for revision in [Revision::Rc3, Revision::Rc2, Revision::V1_0_0] {
        let wire = v1.to_wire(revision, 9);
        let back: DeploymentStatus = serde_json::from_value(wire).expect("reads back");
        back.validate().expect("valid");
        assert_eq!(back.components, v1.components);
        assert_eq!(back.status, v1.status);
    }
}

/// The spec's ApplicationDeployment examples (`tests/fixtures/margo-spec/
/// desired-state`, desired-state.md) pass the operator-side strict parse:
/// refusing unknown fields (issue 12, finding 8) refuses none of them.
#[test]
fn every_application_deployment_example_is_accepted_strictly() {
    use margo_schemas::deployment::ApplicationDeployment;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/margo-spec/desired-state");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    for path in names {
        let bytes = std::fs::read(&path).expect("read");
        let d = ApplicationDeployment::parse_strict(bytes.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(d.bytes(), &bytes[..]);
        assert!(!d.parameters.is_empty(), "{}", path.display());
    }
}
