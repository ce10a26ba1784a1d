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
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use margo_schemas::deployment::{ApplicationDeployment, Component, ProfileType};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tracing::debug;

use super::{ApplyKind, Runtime, RuntimeError, RuntimeFuture, RuntimeInfo};
use crate::clock::Clock;
use crate::config::ExecConfig;

/// How much of stderr goes into an error message.
pub const STDERR_TAIL: usize = 2048;
/// How long to wait for output pipes after the program exited.
const PIPE_GRACE: Duration = Duration::from_secs(1);

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
            .env("MARGO_COMPONENT_PROPERTIES", properties)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| RuntimeError::Spawn {
            program: self.program.display().to_string(),
            reason: e.to_string(),
        })?;
        let stdout = child
            .stdout
            .take()
            .map(|s| tokio::spawn(tail(s, STDERR_TAIL)));
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(tail(s, STDERR_TAIL)));
        let deadline = self.clock.now() + self.timeout;
        let status = tokio::select! {
            status = child.wait() => status,
            () = self.clock.sleep_until(deadline) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                for handle in [stdout, stderr].into_iter().flatten() {
                    handle.abort();
                }
                return Err(RuntimeError::Timeout(self.timeout));
            }
        };
        let status = status.map_err(|e| RuntimeError::Spawn {
            program: self.program.display().to_string(),
            reason: e.to_string(),
        })?;
        let out = collect(stdout).await;
        let err = collect(stderr).await;
        debug!(
            deployment_id = %deployment.id,
            component = %component.name,
            action,
            %status,
            stdout = %String::from_utf8_lossy(&out),
            "exec adapter finished"
        );
        if status.success() {
            Ok(())
        } else {
            Err(RuntimeError::Exit {
                code: status.to_string(),
                stderr: String::from_utf8_lossy(&err).trim().to_string(),
            })
        }
    }

    /// The directory deployment files are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn collect(handle: Option<tokio::task::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(mut handle) = handle else {
        return Vec::new();
    };
    match tokio::time::timeout(PIPE_GRACE, &mut handle).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => Vec::new(),
        Err(_) => {
            // A descendant still holds the pipe open; stop reading.
            handle.abort();
            Vec::new()
        }
    }
}

/// Reads `reader` to the end, keeping the last `keep` bytes.
async fn tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut kept = Vec::with_capacity(keep);
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > keep {
                    let cut = kept.len() - keep;
                    kept.drain(..cut);
                }
            }
        }
    }
    kept
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
