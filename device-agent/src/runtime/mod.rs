//! Runtime adapters: what actually installs, updates and removes the
//! components of an ApplicationDeployment.
//!
//! The reconciler calls an adapter once per component and action. Adapters
//! must be idempotent: after a crash mid-apply the same action is run again.

use std::future::Future;
use std::pin::Pin;

use margo_schemas::deployment::{ApplicationDeployment, Component, ProfileType};

pub mod compose;
pub mod exec;
pub mod helm;
pub mod native;
pub mod process;
pub mod simulated;

pub use compose::ComposeRuntime;
pub use exec::ExecRuntime;
pub use helm::HelmRuntime;
pub use native::NativeRuntime;
pub use simulated::SimulatedRuntime;

/// Status error code: the tool a profile type needs (docker compose, helm) is missing.
pub const CODE_RUNTIME_UNAVAILABLE: &str = "runtime-unavailable";
/// Status error code: an http(s) package location and no `fetch_command` configured.
pub const CODE_PACKAGE_FETCH_UNSUPPORTED: &str = "package-fetch-unsupported";

/// A boxed adapter future (object-safe async).
pub type RuntimeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), RuntimeError>> + Send + 'a>>;

/// Whether a component is new on this device or replaces an earlier version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyKind {
    Install,
    Update,
}

impl ApplyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::Update => "update",
        }
    }
}

/// Why a component action failed. `code()` goes into the Margo status error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("{profile} deployments are not supported by the {adapter} adapter")]
    Unsupported {
        adapter: &'static str,
        profile: &'static str,
    },
    #[error("{profile} deployments cannot run: {tool} is unavailable ({reason})")]
    Unavailable {
        profile: &'static str,
        tool: String,
        reason: String,
    },
    #[error("{0}")]
    Failed(String),
    #[error("{command} exited with {code}: {stderr}")]
    Exit {
        command: String,
        code: String,
        stderr: String,
    },
    #[error("{command} did not finish within {after:?}; killed")]
    Timeout {
        command: String,
        after: std::time::Duration,
    },
    #[error("could not run {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("could not write {path}: {reason}")]
    File { path: String, reason: String },
    #[error("invalid {property}: {reason}")]
    InvalidProperty { property: String, reason: String },
    #[error("parameter pointer {pointer:?}: {reason}")]
    InvalidParameter { pointer: String, reason: String },
    #[error("package {location}: {reason}")]
    Package { location: String, reason: String },
    #[error("cannot fetch {url}: http(s) package locations need runtime.compose.fetch_command")]
    FetchUnsupported { url: String },
}

impl RuntimeError {
    /// The Margo error code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unsupported { .. } => "UNSUPPORTED_PROFILE",
            Self::Unavailable { .. } => CODE_RUNTIME_UNAVAILABLE,
            Self::Failed(_) => "RUNTIME_FAILED",
            Self::Exit { .. } => "RUNTIME_EXIT",
            Self::Timeout { .. } => "RUNTIME_TIMEOUT",
            Self::Spawn { .. } => "RUNTIME_SPAWN",
            Self::File { .. } => "RUNTIME_FILE",
            Self::InvalidProperty { .. } => "INVALID_PROPERTY",
            Self::InvalidParameter { .. } => "INVALID_PARAMETER",
            Self::Package { .. } => "PACKAGE_INVALID",
            Self::FetchUnsupported { .. } => CODE_PACKAGE_FETCH_UNSUPPORTED,
        }
    }
}

/// What an adapter can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// Adapter name (`simulated`, `exec`, `compose`, `helm`, `native`).
    pub name: &'static str,
    /// Deployment profile types it can run now (a profile whose tool is
    /// missing is not listed; see [`Runtime::check_profile`] for why).
    pub profiles: Vec<ProfileType>,
}

impl RuntimeInfo {
    /// Whether `profile` is handled.
    pub fn supports(&self, profile: ProfileType) -> bool {
        self.profiles.contains(&profile)
    }
}

/// A runtime adapter.
pub trait Runtime: Send + Sync + std::fmt::Debug + 'static {
    /// Adapter name and supported profile types.
    fn supported(&self) -> RuntimeInfo;

    /// Whether a deployment of `profile` can run now; the error says why not
    /// (`Unavailable` names the missing tool, `Unsupported` a profile the
    /// adapter never handles). Cheap: adapters decide availability at start.
    fn check_profile(&self, profile: ProfileType) -> Result<(), RuntimeError> {
        let info = self.supported();
        if info.supports(profile) {
            Ok(())
        } else {
            Err(RuntimeError::Unsupported {
                adapter: info.name,
                profile: profile.as_str(),
            })
        }
    }

    /// Installs or updates `component` of `deployment`.
    fn apply<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
        kind: ApplyKind,
    ) -> RuntimeFuture<'a>;

    /// Removes `component` of `deployment` (the version that is running).
    fn remove<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
    ) -> RuntimeFuture<'a>;
}
