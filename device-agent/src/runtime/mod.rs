//! Runtime adapters: what actually installs, updates and removes the
//! components of an ApplicationDeployment.
//!
//! The reconciler calls an adapter once per component and action. Adapters
//! must be idempotent: after a crash mid-apply the same action is run again.

use std::future::Future;
use std::pin::Pin;

use margo_schemas::deployment::{ApplicationDeployment, Component, ProfileType};

pub mod exec;
pub mod process;
pub mod simulated;

pub use exec::ExecRuntime;
pub use simulated::SimulatedRuntime;

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
}

impl RuntimeError {
    /// The Margo error code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unsupported { .. } => "UNSUPPORTED_PROFILE",
            Self::Failed(_) => "RUNTIME_FAILED",
            Self::Exit { .. } => "RUNTIME_EXIT",
            Self::Timeout { .. } => "RUNTIME_TIMEOUT",
            Self::Spawn { .. } => "RUNTIME_SPAWN",
            Self::File { .. } => "RUNTIME_FILE",
        }
    }
}

/// What an adapter can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// Adapter name (`simulated`, `exec`).
    pub name: &'static str,
    /// Deployment profile types it handles.
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
