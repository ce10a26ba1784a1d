//! The state manifest: every workload assigned to a client, by id and digest.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::ids::DeploymentId;

/// Media type of the manifest in the Margo HTTP API.
pub const MEDIA_TYPE: &str = "application/vnd.margo.manifest.v1+json";
/// Most deployments one client may have.
pub const MAX_DEPLOYMENTS: usize = 1024;

/// Why a manifest is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifestVersion must be at least 1")]
    ZeroVersion,
    #[error("deployments: {0} entries, the limit is {MAX_DEPLOYMENTS}")]
    TooMany(usize),
    #[error("deployments: {0} is listed twice")]
    Duplicate(DeploymentId),
    #[error("manifestVersion {offered} is not greater than the accepted {accepted} (rollback or replay)")]
    NotNewer { offered: u64, accepted: u64 },
}

/// One deployment reference in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRef {
    pub deployment_id: DeploymentId,
    pub digest: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Where to fetch it over HTTP; absent on MQTT, where the topic is implied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The bundle of all deployment documents (HTTP form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub digest: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A client's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateManifest {
    pub manifest_version: u64,
    pub bundle: Option<BundleRef>,
    pub deployments: Vec<DeploymentRef>,
}

impl StateManifest {
    /// Checks the invariants every manifest must hold.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.manifest_version == 0 {
            return Err(ManifestError::ZeroVersion);
        }
        if self.deployments.len() > MAX_DEPLOYMENTS {
            return Err(ManifestError::TooMany(self.deployments.len()));
        }
        let mut seen = BTreeSet::new();
        for d in &self.deployments {
            if !seen.insert(&d.deployment_id) {
                return Err(ManifestError::Duplicate(d.deployment_id.clone()));
            }
        }
        Ok(())
    }

    /// Checks that this manifest may replace one at `accepted` (strictly newer).
    pub fn check_newer_than(&self, accepted: u64) -> Result<(), ManifestError> {
        if self.manifest_version <= accepted {
            return Err(ManifestError::NotNewer {
                offered: self.manifest_version,
                accepted,
            });
        }
        Ok(())
    }

    /// The reference for `id`, if listed.
    pub fn get(&self, id: &DeploymentId) -> Option<&DeploymentRef> {
        self.deployments.iter().find(|d| &d.deployment_id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dref(id: &str) -> DeploymentRef {
        DeploymentRef {
            deployment_id: DeploymentId::new(id).unwrap(),
            digest: Digest::of(id.as_bytes()),
            size_bytes: Some(3),
            url: None,
        }
    }

    #[test]
    fn validation() {
        let mut m = StateManifest {
            manifest_version: 1,
            bundle: None,
            deployments: vec![dref("a"), dref("b")],
        };
        assert!(m.validate().is_ok());
        m.deployments.push(dref("a"));
        assert!(matches!(m.validate(), Err(ManifestError::Duplicate(_))));
        m.deployments.pop();
        m.manifest_version = 0;
        assert_eq!(m.validate(), Err(ManifestError::ZeroVersion));
    }

    #[test]
    fn monotonic() {
        let m = StateManifest {
            manifest_version: 5,
            bundle: None,
            deployments: vec![],
        };
        assert!(m.check_newer_than(4).is_ok());
        assert!(m.check_newer_than(5).is_err());
        assert!(m.check_newer_than(6).is_err());
    }

    #[test]
    fn json_shape_matches_margo() {
        let m = StateManifest {
            manifest_version: 2,
            bundle: None,
            deployments: vec![dref("a")],
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["manifestVersion"], 2);
        assert!(json["bundle"].is_null());
        assert_eq!(json["deployments"][0]["deploymentId"], "a");
        assert!(json["deployments"][0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
    }
}
