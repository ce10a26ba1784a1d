//! Acceptance of device capabilities reports, shared by every path that
//! receives them (MQTT `R/capabilities` now, the HTTP capabilities API later).
//!
//! A report is accepted when its manifest reads as one of the published
//! shapes ([`DeviceCapabilitiesManifest::normalize`]) and, for a gateway child
//! (`gw/child`), when the parent's capabilities are already stored for the
//! same client: Margo has a see-through gateway report itself first, and
//! rejects a child reported before its parent (404 in HTTP).

use margo_schemas::capabilities::{
    CapabilitiesError, DeviceCapabilities, DeviceCapabilitiesManifest,
};
use margo_schemas::ids::DeviceId;
use serde::{Deserialize, Serialize};

/// Why a capabilities report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "reason")]
pub enum CapabilitiesRejection {
    /// The manifest is not valid; the message names the field.
    #[error("invalid capabilities of {device}: {problem}")]
    Invalid {
        /// The device the report claims to describe.
        device: String,
        /// The field and what is wrong with it.
        problem: String,
    },
    /// A gateway child reported before its parent.
    #[error("capabilities of child {device} before its parent {parent}")]
    ChildBeforeParent {
        /// The child.
        device: String,
        /// The parent with no stored capabilities.
        parent: String,
    },
}

impl CapabilitiesRejection {
    /// Short kind for counters and the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid-capabilities",
            Self::ChildBeforeParent { .. } => "child-before-parent",
        }
    }

    /// The HTTP status the Margo API gives this refusal.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Invalid { .. } => 400,
            Self::ChildBeforeParent { .. } => 404,
        }
    }
}

fn invalid(
    manifest: &DeviceCapabilitiesManifest,
    error: &CapabilitiesError,
) -> CapabilitiesRejection {
    CapabilitiesRejection::Invalid {
        device: manifest
            .device_id()
            .map(|id| id.chars().take(128).collect())
            .unwrap_or_else(|| "(no properties.id)".to_string()),
        problem: error.to_string(),
    }
}

/// Checks one report. `parent_stored` is asked, only for a gateway child,
/// whether the parent's capabilities are stored for the same client; its
/// error (a store failure) is passed through. `Ok(Ok(normalised))` means
/// accepted.
pub fn check_capabilities<E>(
    manifest: &DeviceCapabilitiesManifest,
    parent_stored: impl FnOnce(&DeviceId) -> Result<bool, E>,
) -> Result<Result<DeviceCapabilities, CapabilitiesRejection>, E> {
    let normalised = match manifest.normalize() {
        Ok(n) => n,
        Err(error) => return Ok(Err(invalid(manifest, &error))),
    };
    if let Some(parent) = normalised.id.parent() {
        if !parent_stored(&parent)? {
            return Ok(Err(CapabilitiesRejection::ChildBeforeParent {
                device: normalised.id.to_string(),
                parent: parent.to_string(),
            }));
        }
    }
    Ok(Ok(normalised))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;

    use margo_schemas::capabilities::DeviceProperties;
    use serde_json::json;

    use super::*;

    fn manifest(id: &str) -> DeviceCapabilitiesManifest {
        DeviceCapabilitiesManifest::new(DeviceProperties {
            id: DeviceId::new(id).expect("id"),
            vendor: "Acme".into(),
            model_number: "E1".into(),
            serial_number: "1".into(),
            cpu: vec![],
            memory: Some("4Gi".into()),
            storage: None,
            peripherals: vec![],
            interfaces: vec![],
            otel_collector: None,
            supported_runtimes: vec![],
            supported_deployment_types: vec![],
            extensions: BTreeMap::new(),
        })
    }

    #[test]
    fn top_level_devices_need_no_parent() {
        let r = check_capabilities(&manifest("gw"), |_| -> Result<bool, Infallible> {
            panic!("not asked for a top-level device")
        });
        let accepted = r.expect("no store error").expect("accepted");
        assert_eq!(accepted.memory_bytes, Some(4 << 30));
    }

    #[test]
    fn children_need_their_parent() {
        let asked = |want: &'static str, answer: bool| {
            move |p: &DeviceId| -> Result<bool, Infallible> {
                assert_eq!(p.as_str(), want);
                Ok(answer)
            }
        };
        assert!(check_capabilities(&manifest("gw/a"), asked("gw", true))
            .expect("no store error")
            .is_ok());
        let r = check_capabilities(&manifest("gw/a/b"), asked("gw/a", false))
            .expect("no store error")
            .expect_err("refused");
        assert_eq!(
            r,
            CapabilitiesRejection::ChildBeforeParent {
                device: "gw/a/b".into(),
                parent: "gw/a".into()
            }
        );
        assert_eq!(r.http_status(), 404);
    }

    #[test]
    fn invalid_manifests_name_the_field() {
        let mut v = manifest("gw").to_value();
        v["properties"]["memory"] = json!("lots");
        let m = DeviceCapabilitiesManifest::from_value(v).expect("object");
        let r = check_capabilities(&m, |_| Ok::<_, Infallible>(true))
            .expect("no store error")
            .expect_err("rejected");
        assert_eq!(r.kind(), "invalid-capabilities");
        assert!(r.to_string().contains("properties.memory"), "{r}");
    }
}
