//! The exec adapter: runs a configured program once per component action.
//!
//! Contract: `<program> install|update|remove` with the environment
//!
//! | variable | value |
//! |---|---|
//! | `MARGO_DEPLOYMENT_ID` | `metadata.annotations.id` |
//! | `MARGO_DEPLOYMENT_NAME` | `metadata.name` |
//! | `MARGO_DEPLOYMENT_DIGEST` | `sha256:<hex>` of the document |
//! | `MARGO_DEPLOYMENT_FILE` | path of the exact YAML (`<dir>/<id>.yaml`, rewritten before each action) |
//! | `MARGO_COMPONENT` | the component name |
//! | `MARGO_PROFILE_TYPE` | `helm.v3` or `compose` |
//! | `MARGO_PARAMETERS` | JSON object: pointer → value, for parameters targeting the component |
//! | `MARGO_COMPONENT_PROPERTIES` | JSON object of the component's properties |
//!
//! Exit 0 is success. A non-zero exit fails the action with the exit status
//! and the last 2 KiB of stderr. A program still running at the timeout is
//! killed (the program itself; it should `exec` long-running children or
//! clean them up) and the action fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use margo_schemas::deployment::{ApplicationDeployment, Component, ProfileType};
use tokio::process::Command;
use tracing::debug;

use super::{process, ApplyKind, Runtime, RuntimeError, RuntimeFuture, RuntimeInfo};
use crate::clock::Clock;
use crate::config::ExecConfig;

/// How much of stderr goes into an error message.
pub const STDERR_TAIL: usize = process::STDERR_TAIL;

/// Runs `<program> install|update|remove` per component.
#[derive(Debug)]
pub struct ExecRuntime {
    program: PathBuf,
    timeout: Duration,
    profiles: Vec<ProfileType>,
    dir: PathBuf,
    clock: Arc<dyn Clock>,
}

impl ExecRuntime {
    /// An exec adapter writing deployment files into `dir`.
    pub fn new(config: &ExecConfig, dir: PathBuf, clock: Arc<dyn Clock>) -> Self {
        let profiles = config
            .profiles
            .iter()
            .filter_map(|p| match p.as_str() {
                "helm.v3" => Some(ProfileType::HelmV3),
                "compose" => Some(ProfileType::Compose),
                _ => None,
            })
            .collect();
        Self {
            program: config.program.clone(),
            timeout: config.timeout,
            profiles,
            dir,
            clock,
        }
    }

    async fn write_file(
        &self,
        deployment: &ApplicationDeployment,
    ) -> Result<PathBuf, RuntimeError> {
        let path = self.dir.join(format!("{}.yaml", deployment.id));
        let tmp = self.dir.join(format!(".{}.yaml.tmp", deployment.id));
        let err = |e: std::io::Error| RuntimeError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        tokio::fs::create_dir_all(&self.dir).await.map_err(err)?;
        tokio::fs::write(&tmp, deployment.bytes())
            .await
            .map_err(err)?;
        tokio::fs::rename(&tmp, &path).await.map_err(err)?;
        Ok(path)
    }

    async fn run(
        &self,
        action: &'static str,
        deployment: &ApplicationDeployment,
        component: &Component,
    ) -> Result<(), RuntimeError> {
        if !self.profiles.contains(&deployment.profile) {
            return Err(RuntimeError::Unsupported {
                adapter: "exec",
                profile: deployment.profile.as_str(),
            });
        }
        let file = self.write_file(deployment).await?;
        let parameters: serde_json::Map<String, serde_json::Value> = deployment
            .parameters_for(&component.name)
            .map(|(_, pointer, value)| (pointer.to_string(), value.clone()))
            .collect();
        let properties =
            serde_json::to_string(&component.properties).unwrap_or_else(|_| "{}".into());
        let mut cmd = Command::new(&self.program);
        cmd.arg(action)
            .env("MARGO_DEPLOYMENT_ID", deployment.id.as_str())
            .env("MARGO_DEPLOYMENT_NAME", &deployment.name)
            .env("MARGO_DEPLOYMENT_DIGEST", deployment.digest().to_string())
            .env("MARGO_DEPLOYMENT_FILE", &file)
            .env("MARGO_COMPONENT", &component.name)
            .env("MARGO_PROFILE_TYPE", deployment.profile.as_str())
            .env(
                "MARGO_PARAMETERS",
                serde_json::Value::Object(parameters).to_string(),
            )
            .env("MARGO_COMPONENT_PROPERTIES", properties);
        let label = format!("{} {action}", self.program.display());
        let done = process::run(cmd, &label, self.timeout, self.clock.as_ref()).await?;
        debug!(
            deployment_id = %deployment.id,
            component = %component.name,
            action,
            status = %done.status,
            stdout = %String::from_utf8_lossy(&done.stdout),
            "exec adapter finished"
        );
        done.check(&label).map(|_| ())
    }

    /// The directory deployment files are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Runtime for ExecRuntime {
    fn supported(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "exec",
            profiles: self.profiles.clone(),
        }
    }

    fn apply<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
        kind: ApplyKind,
    ) -> RuntimeFuture<'a> {
        Box::pin(self.run(kind.as_str(), deployment, component))
    }

    fn remove<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
    ) -> RuntimeFuture<'a> {
        Box::pin(self.run("remove", deployment, component))
    }
}
