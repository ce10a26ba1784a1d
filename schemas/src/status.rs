//! Margo `DeploymentStatus`: the six states, components, errors, and the
//! severity-precedence rule for the overall state.

use serde::{Deserialize, Serialize};

use crate::ids::{DeploymentId, DeviceId};

pub const API_VERSION: &str = "deployment.margo.org/v1alpha1";
pub const KIND: &str = "DeploymentStatus";
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

/// A Margo error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusError {
    pub code: String,
    pub source: String,
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
}

/// A Margo DeploymentStatus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    pub deployment_id: DeploymentId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    pub status: OverallStatus,
    pub components: Vec<ComponentStatus>,
}

fn default_api_version() -> String {
    API_VERSION.to_string()
}
fn default_kind() -> String {
    KIND.to_string()
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
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            deployment_id,
            device_id: None,
            status: OverallStatus { state, error },
            components,
        }
    }

    /// Checks the invariants a received status must hold.
    pub fn validate(&self) -> Result<(), StatusErrorKind> {
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
        assert_eq!(j["apiVersion"], API_VERSION);
    }

    #[test]
    fn long_messages_are_cut_on_char_boundary() {
        let e = StatusError::new("x", "y", "é".repeat(MAX_MESSAGE_LEN));
        assert!(e.message.len() <= MAX_MESSAGE_LEN);
    }
}
