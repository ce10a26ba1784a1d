//! Margo `DeploymentStatus`: the six states, components, errors, and the
//! severity-precedence rule for the overall state.
//!
//! Read tolerantly (see `docs/http-api.md`, "Document shapes"): `kind` may be
//! `DeploymentStatusManifest` (1.0.0 and rc.2 OpenAPI), `DeploymentStatus`
//! (the pages, 0.0.1) or absent (rc.3); `apiVersion` is optional; no member of
//! an `error` object is required. [`DeploymentStatus::to_wire`] writes the
//! shape of a chosen revision.

use serde::{Deserialize, Serialize};

use crate::ids::{DeploymentId, DeviceId};
use crate::revision::Revision;

pub const API_VERSION: &str = "deployment.margo.org/v1alpha1";
/// The pages' (and 0.0.1's) `kind`.
pub const KIND: &str = "DeploymentStatus";
/// The 1.0.0 and rc.2 OpenAPI `kind` (what we send in those modes).
pub const KIND_MANIFEST: &str = "DeploymentStatusManifest";
/// Longest error message we keep (longer ones are cut, not rejected).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// A deployment or component state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentState {
    Pending,
    Installing,
    Installed,
    Removing,
    Removed,
    Failed,
}

impl DeploymentState {
    /// Severity for the overall-state rule: failed > removing > installing > pending > installed.
    /// `removed` ranks with `installed` (a finished action).
    pub fn severity(self) -> u8 {
        match self {
            Self::Failed => 5,
            Self::Removing => 4,
            Self::Installing => 3,
            Self::Pending => 2,
            Self::Installed | Self::Removed => 1,
        }
    }

    /// The overall state of a set of component states: the most severe one.
    /// All `removed` gives `removed`; an empty set gives `pending`.
    pub fn overall(states: impl IntoIterator<Item = DeploymentState>) -> DeploymentState {
        let mut worst: Option<DeploymentState> = None;
        for s in states {
            worst = Some(match worst {
                None => s,
                Some(w) if s.severity() > w.severity() => s,
                // installed beats removed at equal severity: a mix is not "removed".
                Some(DeploymentState::Removed) if s == DeploymentState::Installed => s,
                Some(w) => w,
            });
        }
        worst.unwrap_or(DeploymentState::Pending)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Installing => "installing",
            Self::Installed => "installed",
            Self::Removing => "removing",
            Self::Removed => "removed",
            Self::Failed => "failed",
        }
    }

    /// Whether no further change is expected without a new desired state.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Installed | Self::Removed | Self::Failed)
    }
}

impl std::fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Margo error object. Every member is optional in every revision (1.0.0
/// and rc.2 define `code` and `message`, rc.2/rc.3 add `source`); an absent
/// member reads as empty and an empty one is not written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatusError {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl StatusError {
    pub fn new(
        code: impl Into<String>,
        source: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let mut message: String = message.into();
        if message.len() > MAX_MESSAGE_LEN {
            let mut cut = MAX_MESSAGE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self {
            code: code.into(),
            source: source.into(),
            message,
        }
    }
}

/// The overall state and optional error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverallStatus {
    pub state: DeploymentState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError>,
}

/// One component's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub state: DeploymentState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError>,
}

/// Why a status report is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusErrorKind {
    #[error("status.state is {reported} but the components say {expected}")]
    OverallMismatch {
        reported: DeploymentState,
        expected: DeploymentState,
    },
    #[error("components: {0:?} is listed twice")]
    DuplicateComponent(String),
    #[error("components: {0} entries, more than a deployment may have")]
    TooManyComponents(usize),
    #[error("kind: {0:?} is neither {KIND_MANIFEST} nor {KIND}")]
    Kind(String),
}

/// A Margo DeploymentStatus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// Required by 1.0.0/rc.2, absent in rc.3; any value is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// [`KIND_MANIFEST`], [`KIND`] or absent (rc.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub deployment_id: DeploymentId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    pub status: OverallStatus,
    pub components: Vec<ComponentStatus>,
}

impl DeploymentStatus {
    /// Builds a status whose overall state follows the precedence rule.
    pub fn new(
        deployment_id: DeploymentId,
        components: Vec<ComponentStatus>,
        error: Option<StatusError>,
    ) -> Self {
        let state = DeploymentState::overall(components.iter().map(|c| c.state));
        Self {
            api_version: None,
            kind: None,
            deployment_id,
            device_id: None,
            status: OverallStatus { state, error },
            components,
        }
    }

    /// The JSON body of this status in the shape of `revision`, with the
    /// manifest version being applied:
    ///
    /// - rc.3: no `apiVersion`/`kind`, `adoptedManifestVersion` (required).
    /// - rc.2 and 1.0.0: `apiVersion: deployment.margo.org/v1alpha1`,
    ///   `kind: DeploymentStatusManifest` (their required members), plus
    ///   `adoptedManifestVersion` (not in their schemas, which allow extra
    ///   members; our manager uses it to order reports).
    ///
    /// Any `apiVersion`/`kind` already set on `self` is replaced.
    pub fn to_wire(&self, revision: Revision, adopted_manifest_version: u64) -> serde_json::Value {
        let mut status = self.clone();
        match revision {
            Revision::Rc3 => {
                status.api_version = None;
                status.kind = None;
            }
            Revision::Rc2 | Revision::V1_0_0 => {
                status.api_version = Some(API_VERSION.to_string());
                status.kind = Some(KIND_MANIFEST.to_string());
            }
        }
        let mut value = serde_json::to_value(&status).unwrap_or(serde_json::Value::Null);
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "adoptedManifestVersion".into(),
                serde_json::Value::from(adopted_manifest_version),
            );
        }
        value
    }

    /// Checks the invariants a received status must hold.
    pub fn validate(&self) -> Result<(), StatusErrorKind> {
        if let Some(kind) = &self.kind {
            if kind != KIND_MANIFEST && kind != KIND {
                return Err(StatusErrorKind::Kind(kind.chars().take(64).collect()));
            }
        }
        if self.components.len() > crate::deployment::MAX_COMPONENTS {
            return Err(StatusErrorKind::TooManyComponents(self.components.len()));
        }
        for (i, c) in self.components.iter().enumerate() {
            if self.components[..i].iter().any(|o| o.name == c.name) {
                return Err(StatusErrorKind::DuplicateComponent(c.name.clone()));
            }
        }
        if !self.components.is_empty() {
            let expected = DeploymentState::overall(self.components.iter().map(|c| c.state));
            if expected != self.status.state {
                return Err(StatusErrorKind::OverallMismatch {
                    reported: self.status.state,
                    expected,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeploymentState::*;

    #[test]
    fn precedence() {
        assert_eq!(
            DeploymentState::overall([Installed, Failed, Installing]),
            Failed
        );
        assert_eq!(
            DeploymentState::overall([Installed, Installing]),
            Installing
        );
        assert_eq!(DeploymentState::overall([Installed, Pending]), Pending);
        assert_eq!(DeploymentState::overall([Installing, Removing]), Removing);
        assert_eq!(DeploymentState::overall([Installed, Installed]), Installed);
        assert_eq!(DeploymentState::overall([Removed, Removed]), Removed);
        assert_eq!(DeploymentState::overall([Removed, Installed]), Installed);
        assert_eq!(DeploymentState::overall([]), Pending);
    }

    #[test]
    fn validate_overall() {
        let id = DeploymentId::new("d1").unwrap();
        let comp = |n: &str, s| ComponentStatus {
            name: n.into(),
            state: s,
            error: None,
        };
        let mut st = DeploymentStatus::new(id, vec![comp("a", Installed), comp("b", Failed)], None);
        assert_eq!(st.status.state, Failed);
        assert!(st.validate().is_ok());
        st.status.state = Installed;
        assert!(matches!(
            st.validate(),
            Err(StatusErrorKind::OverallMismatch { .. })
        ));
        st.status.state = Failed;
        st.components.push(comp("a", Failed));
        assert!(matches!(
            st.validate(),
            Err(StatusErrorKind::DuplicateComponent(_))
        ));
    }

    #[test]
    fn json_shape() {
        let st = DeploymentStatus::new(
            DeploymentId::new("d1").unwrap(),
            vec![ComponentStatus {
                name: "a".into(),
                state: Failed,
                error: Some(StatusError::new("E1", "a", "boom")),
            }],
            Some(StatusError::new("E1", "app", "component a failed")),
        );
        let j = serde_json::to_value(&st).unwrap();
        assert_eq!(j["deploymentId"], "d1");
        assert_eq!(j["status"]["state"], "failed");
        assert_eq!(j["components"][0]["error"]["source"], "a");
        assert!(j.get("apiVersion").is_none() && j.get("kind").is_none());
    }

    #[test]
    fn wire_shapes() {
        let st = DeploymentStatus::new(
            DeploymentId::new("d1").unwrap(),
            vec![ComponentStatus {
                name: "a".into(),
                state: Installed,
                error: None,
            }],
            None,
        );
        let rc3 = st.to_wire(Revision::Rc3, 7);
        assert!(rc3.get("apiVersion").is_none() && rc3.get("kind").is_none());
        assert_eq!(rc3["adoptedManifestVersion"], 7);
        for revision in [Revision::Rc2, Revision::V1_0_0] {
            let old = st.to_wire(revision, 7);
            assert_eq!(old["apiVersion"], API_VERSION);
            assert_eq!(old["kind"], KIND_MANIFEST);
            assert_eq!(old["adoptedManifestVersion"], 7);
            let back: DeploymentStatus = serde_json::from_value(old).unwrap();
            assert!(back.validate().is_ok());
        }
    }

    #[test]
    fn tolerant_reading() {
        // Every kind a revision names, or none; error objects with any members.
        for kind in [
            serde_json::json!(KIND_MANIFEST),
            serde_json::json!(KIND),
            serde_json::Value::Null,
        ] {
            let mut body = serde_json::json!({"deploymentId": "d1",
                "status": {"state": "failed", "error": {}},
                "components": [{"name": "a", "state": "failed", "error": {"code": "E1"}}]});
            if !kind.is_null() {
                body["kind"] = kind;
            }
            let st: DeploymentStatus = serde_json::from_value(body).unwrap();
            assert!(st.validate().is_ok());
            assert_eq!(st.status.error, Some(StatusError::default()));
            assert_eq!(st.components[0].error.as_ref().unwrap().code, "E1");
        }
        let other: DeploymentStatus = serde_json::from_value(serde_json::json!({
            "kind": "DeviceCapabilitiesManifest", "deploymentId": "d1",
            "status": {"state": "pending"}, "components": []}))
        .unwrap();
        assert!(matches!(other.validate(), Err(StatusErrorKind::Kind(_))));
    }

    #[test]
    fn long_messages_are_cut_on_char_boundary() {
        let e = StatusError::new("x", "y", "é".repeat(MAX_MESSAGE_LEN));
        assert!(e.message.len() <= MAX_MESSAGE_LEN);
    }
}
