//! The compose adapter: runs `compose` deployments with `docker compose`.
//!
//! Per component (properties `packageLocation`, optional `keyLocation`):
//!
//! 1. The working directory `<data_dir>/compose/<deploymentId>/<component>/`
//!    is emptied and re-created.
//! 2. The package is obtained: an absolute local path or `file://` URL is
//!    read in place; an `http(s)://` URL is downloaded with the configured
//!    `fetch_command` (`{url}` and `{dest}` substituted) or, without one, the
//!    action fails with `package-fetch-unsupported`. A gzip or plain tar
//!    package is extracted with `tar -x[z]f <pkg> -C <dir> --no-same-owner`;
//!    anything else must be a compose YAML file (a mapping) and is copied to
//!    `compose.yaml`. The project directory is the working directory, or the
//!    package's single top-level directory when the compose file is there.
//! 3. `.env` is written into the project directory from the parameters
//!    targeting the component whose pointer is `ENV.<NAME>` (strings as they
//!    are, numbers and booleans as text, other values as JSON). A `.env`
//!    shipped in the package is kept and the parameters appended (later
//!    lines win in compose).
//! 4. `docker compose -p <project> --project-directory <dir> --env-file
//!    <dir>/.env up -d --remove-orphans`, run in `<dir>`.
//!
//! Remove: `docker compose -p <project> down`, run in `<data_dir>/compose`,
//! then the working directory is deleted.
//!
//! `<project>` is `margo-<deploymentId>-<component>` lowered to compose's
//! alphabet (`a-z 0-9 - _`) plus `-<8 hex>` of a hash of the pair, so
//! distinct pairs never share a project. `keyLocation` is not verified (a
//! warning is logged).
//!
//! Availability is decided once, at construction: the docker CLI must be
//! found (a path, or a name in `PATH`) and `docker compose version` must
//! exit 0. Otherwise the adapter advertises no profile and every action
//! fails with `runtime-unavailable` naming the problem.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use margo_schemas::deployment::{ApplicationDeployment, Component, ProfileType};
use margo_schemas::digest::Digest;
use tokio::process::Command;
use tracing::{debug, info, instrument, warn};

use super::process::{self, ToolError};
use super::{ApplyKind, Runtime, RuntimeError, RuntimeFuture, RuntimeInfo};
use crate::clock::Clock;
use crate::config::ComposeConfig;

/// Component property: where the compose package is.
pub const PACKAGE_LOCATION: &str = "packageLocation";
/// Component property: the key the package is signed with (not verified).
pub const KEY_LOCATION: &str = "keyLocation";
/// Parameter pointers of this form become `.env` lines.
pub const ENV_POINTER_PREFIX: &str = "ENV.";
/// Compose file names looked for in a package, in compose's order.
pub const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];
/// How long `docker compose version` may take at start.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest bare compose YAML package read into memory.
const MAX_COMPOSE_YAML: u64 = 4 * 1024 * 1024;

/// Runs compose deployments through `docker compose`.
#[derive(Debug)]
pub struct ComposeRuntime {
    /// The resolved docker CLI, or why it cannot be used.
    docker: Result<PathBuf, ToolError>,
    timeout: Duration,
    fetch_command: Vec<String>,
    /// `<data_dir>/compose`, absolute.
    root: PathBuf,
    clock: Arc<dyn Clock>,
}

impl ComposeRuntime {
    /// A compose adapter under `data_dir`, finding docker through the process `PATH`.
    pub fn new(config: &ComposeConfig, data_dir: &Path, clock: Arc<dyn Clock>) -> Self {
        let path = std::env::var_os("PATH");
        Self::with_search_path(config, data_dir, clock, path.as_deref())
    }

    /// As [`Self::new`], looking up a bare `docker` name in `search_path`.
    /// Probes `docker compose version` once, here.
    pub fn with_search_path(
        config: &ComposeConfig,
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        search_path: Option<&OsStr>,
    ) -> Self {
        let docker = process::find_program(&config.docker, search_path).and_then(|docker| {
            process::probe(&docker, &["compose", "version"], PROBE_TIMEOUT).map(|()| docker)
        });
        match &docker {
            Ok(path) => info!(docker = %path.display(), "compose adapter ready"),
            Err(e) => {
                warn!(error = %e, "docker compose is unavailable: compose deployments will fail")
            }
        }
        let root = data_dir.join("compose");
        Self {
            docker,
            timeout: config.timeout,
            fetch_command: config.fetch_command.clone(),
            root: std::path::absolute(&root).unwrap_or(root),
            clock,
        }
    }

    /// The working directory of `component` of deployment `deployment_id`.
    pub fn component_dir(&self, deployment_id: &str, component: &str) -> PathBuf {
        self.root.join(deployment_id).join(component)
    }

    fn docker(&self, profile: ProfileType) -> Result<&Path, RuntimeError> {
        if profile != ProfileType::Compose {
            return Err(RuntimeError::Unsupported {
                adapter: "compose",
                profile: profile.as_str(),
            });
        }
        self.docker
            .as_deref()
            .map_err(|e| RuntimeError::Unavailable {
                profile: ProfileType::Compose.as_str(),
                tool: "docker compose".into(),
                reason: e.to_string(),
            })
    }

    #[instrument(skip_all, fields(deployment_id = %deployment.id, component = %component.name, action = kind.as_str()))]
    async fn up(
        &self,
        deployment: &ApplicationDeployment,
        component: &Component,
        kind: ApplyKind,
    ) -> Result<(), RuntimeError> {
        let docker = self.docker(deployment.profile)?;
        check_path_segment(&component.name)?;
        let location = string_property(component, PACKAGE_LOCATION)?;
        let source = Location::parse(location)?;
        if let Location::Remote(url) = &source {
            if self.fetch_command.is_empty() {
                return Err(RuntimeError::FetchUnsupported { url: url.clone() });
            }
        }
        let env = render_env(deployment, component)?;
        if let Some(key) = component.properties.get(KEY_LOCATION) {
            warn!(key_location = %key, "keyLocation is not verified by the compose adapter");
        }
        let dir = self.component_dir(deployment.id.as_str(), &component.name);
        reset_dir(&dir).await?;
        let package = match source {
            Location::Local(path) => path,
            Location::Remote(url) => self.fetch(&url, &dir).await?,
        };
        let unpacked = self.unpack(&package, location, &dir).await;
        if package.starts_with(&self.root) {
            let _ = tokio::fs::remove_file(&package).await;
        }
        let project_dir = unpacked?;
        let env_file = project_dir.join(".env");
        write_env(&env_file, &env).await?;
        let project = project_name(deployment.id.as_str(), &component.name);
        let mut cmd = Command::new(docker);
        cmd.arg("compose")
            .arg("-p")
            .arg(&project)
            .arg("--project-directory")
            .arg(&project_dir)
            .arg("--env-file")
            .arg(&env_file)
            .args(["up", "-d", "--remove-orphans"])
            .current_dir(&project_dir);
        let done = process::run(cmd, "docker compose up", self.timeout, self.clock.as_ref())
            .await?
            .check("docker compose up")?;
        debug!(%project, stdout = %String::from_utf8_lossy(&done.stdout), "docker compose up finished");
        info!(%project, "compose project up");
        Ok(())
    }

    #[instrument(skip_all, fields(deployment_id = %deployment.id, component = %component.name, action = "remove"))]
    async fn down(
        &self,
        deployment: &ApplicationDeployment,
        component: &Component,
    ) -> Result<(), RuntimeError> {
        let docker = self.docker(deployment.profile)?;
        check_path_segment(&component.name)?;
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| file_error(&self.root, &e))?;
        let project = project_name(deployment.id.as_str(), &component.name);
        let mut cmd = Command::new(docker);
        cmd.args(["compose", "-p", &project, "down"])
            .current_dir(&self.root);
        process::run(
            cmd,
            "docker compose down",
            self.timeout,
            self.clock.as_ref(),
        )
        .await?
        .check("docker compose down")?;
        let dir = self.component_dir(deployment.id.as_str(), &component.name);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "could not delete the working directory")
            }
        }
        if let Some(parent) = dir.parent() {
            // Only succeeds once the deployment's last component is gone.
            let _ = tokio::fs::remove_dir(parent).await;
        }
        info!(%project, "compose project down");
        Ok(())
    }

    /// Downloads `url` with the fetch command into a file beside `dir`.
    async fn fetch(&self, url: &str, dir: &Path) -> Result<PathBuf, RuntimeError> {
        let Some((program, args)) = self.fetch_command.split_first() else {
            return Err(RuntimeError::FetchUnsupported {
                url: url.to_string(),
            });
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = dir.with_file_name(format!(".{name}.download"));
        let dest_text = dest.to_string_lossy();
        let mut cmd = Command::new(program);
        cmd.args(
            args.iter()
                .map(|a| a.replace("{url}", url).replace("{dest}", &dest_text)),
        );
        if let Some(parent) = dir.parent() {
            cmd.current_dir(parent);
        }
        debug!(%url, dest = %dest.display(), "fetching the package");
        process::run(cmd, "fetch command", self.timeout, self.clock.as_ref())
            .await?
            .check("fetch command")?;
        if !dest.is_file() {
            return Err(RuntimeError::Package {
                location: url.to_string(),
                reason: format!(
                    "the fetch command exited 0 but wrote no file at {}",
                    dest.display()
                ),
            });
        }
        Ok(dest)
    }

    /// Puts the package at `file` into `dir`; returns the project directory.
    async fn unpack(
        &self,
        file: &Path,
        location: &str,
        dir: &Path,
    ) -> Result<PathBuf, RuntimeError> {
        let package_error = |reason: String| RuntimeError::Package {
            location: location.to_string(),
            reason,
        };
        let header = read_header(file).map_err(|e| package_error(e.to_string()))?;
        let tar_flags = if header.starts_with(&[0x1f, 0x8b]) {
            Some("-xzf")
        } else if header.get(257..262) == Some(b"ustar".as_slice()) {
            Some("-xf")
        } else {
            None
        };
        if let Some(flags) = tar_flags {
            let mut cmd = Command::new("tar");
            cmd.arg(flags)
                .arg(file)
                .arg("-C")
                .arg(dir)
                .arg("--no-same-owner");
            process::run(cmd, "tar", self.timeout, self.clock.as_ref())
                .await?
                .check("tar")?;
        } else {
            let len = std::fs::metadata(file)
                .map_err(|e| package_error(e.to_string()))?
                .len();
            if len > MAX_COMPOSE_YAML {
                return Err(package_error(format!(
                    "{len} bytes is not a tar(.gz) package and too large for a compose file"
                )));
            }
            let bytes = tokio::fs::read(file)
                .await
                .map_err(|e| package_error(e.to_string()))?;
            match serde_norway::from_slice::<serde_json::Value>(&bytes) {
                Ok(serde_json::Value::Object(_)) => {}
                Ok(_) => {
                    return Err(package_error(
                        "neither a tar(.gz) package nor a compose file (a YAML mapping)".into(),
                    ))
                }
                Err(e) => {
                    return Err(package_error(format!(
                        "neither a tar(.gz) package nor a compose YAML file: {e}"
                    )))
                }
            }
            let target = dir.join(COMPOSE_FILES[0]);
            tokio::fs::write(&target, &bytes)
                .await
                .map_err(|e| file_error(&target, &e))?;
        }
        find_project_dir(dir).ok_or_else(|| {
            package_error(format!(
                "no {} at the top of the package or in its single top-level directory",
                COMPOSE_FILES.join(", ")
            ))
        })
    }
}

impl Runtime for ComposeRuntime {
    fn supported(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "compose",
            profiles: if self.docker.is_ok() {
                vec![ProfileType::Compose]
            } else {
                Vec::new()
            },
        }
    }

    fn check_profile(&self, profile: ProfileType) -> Result<(), RuntimeError> {
        self.docker(profile).map(|_| ())
    }

    fn apply<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
        kind: ApplyKind,
    ) -> RuntimeFuture<'a> {
        Box::pin(self.up(deployment, component, kind))
    }

    fn remove<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
    ) -> RuntimeFuture<'a> {
        Box::pin(self.down(deployment, component))
    }
}

/// The compose project name of (`deployment_id`, `component`): lowercase
/// `margo-<id>-<component>` with anything outside `a-z 0-9 - _` as `-`,
/// plus `-` and 8 hex digits of a hash of the exact pair.
pub fn project_name(deployment_id: &str, component: &str) -> String {
    let readable: String = format!("margo-{deployment_id}-{component}")
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    format!("{readable}-{}", pair_hash(deployment_id, component))
}

/// 8 hex digits of SHA-256 over `deployment_id \n component`.
pub(crate) fn pair_hash(deployment_id: &str, component: &str) -> String {
    let mut hex = Digest::of(format!("{deployment_id}\n{component}").as_bytes()).hex();
    hex.truncate(8);
    hex
}

/// A parsed `packageLocation`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Local(PathBuf),
    Remote(String),
}

impl Location {
    fn parse(location: &str) -> Result<Self, RuntimeError> {
        let invalid = |reason: &str| RuntimeError::InvalidProperty {
            property: PACKAGE_LOCATION.into(),
            reason: format!("{location:?} {reason}"),
        };
        let scheme = location
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("http" | "https") => Ok(Self::Remote(location.to_string())),
            Some("file") => {
                let rest = &location["file://".len()..];
                let rest = rest.strip_prefix("localhost").unwrap_or(rest);
                if !rest.starts_with('/') {
                    return Err(invalid("must name an absolute path (file:///path)"));
                }
                let decoded = percent_decode(rest)
                    .ok_or_else(|| invalid("has an invalid percent-encoding"))?;
                Ok(Self::Local(PathBuf::from(decoded)))
            }
            Some(_) => Err(invalid(
                "has an unsupported scheme (use an absolute path, file://, http:// or https://)",
            )),
            None if Path::new(location).is_absolute() => Ok(Self::Local(PathBuf::from(location))),
            None => Err(invalid("must be an absolute path or a URL")),
        }
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A required string property of `component`.
pub(crate) fn string_property<'a>(
    component: &'a Component,
    property: &str,
) -> Result<&'a str, RuntimeError> {
    match component.properties.get(property) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(serde_json::Value::String(_)) => Err(RuntimeError::InvalidProperty {
            property: property.into(),
            reason: "must not be empty".into(),
        }),
        Some(_) => Err(RuntimeError::InvalidProperty {
            property: property.into(),
            reason: "must be a string".into(),
        }),
        None => Err(RuntimeError::InvalidProperty {
            property: property.into(),
            reason: "required".into(),
        }),
    }
}

/// Component names are RFC 3986 unreserved characters; `.` and `..` would
/// still escape the deployment's directory.
fn check_path_segment(component: &str) -> Result<(), RuntimeError> {
    if component == "." || component == ".." {
        return Err(RuntimeError::InvalidProperty {
            property: "name".into(),
            reason: format!("{component:?} cannot name a working directory"),
        });
    }
    Ok(())
}

/// Whether `name` matches `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The `.env` text for `component`: one `NAME=value` line per `ENV.<NAME>`
/// parameter targeting it, sorted by name, values quoted for compose's
/// dotenv parser where needed.
pub fn render_env(
    deployment: &ApplicationDeployment,
    component: &Component,
) -> Result<String, RuntimeError> {
    let mut vars: BTreeMap<&str, String> = BTreeMap::new();
    for (parameter, pointer, value) in deployment.parameters_for(&component.name) {
        let Some(name) = pointer.strip_prefix(ENV_POINTER_PREFIX) else {
            warn!(
                deployment_id = %deployment.id,
                component = %component.name,
                parameter,
                pointer,
                "parameter ignored: compose parameters point at ENV.<NAME>"
            );
            continue;
        };
        if !is_env_name(name) {
            return Err(RuntimeError::InvalidParameter {
                pointer: pointer.to_string(),
                reason: format!(
                    "{name:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
                ),
            });
        }
        let text = env_text(value);
        if text.contains('\0') {
            return Err(RuntimeError::InvalidParameter {
                pointer: pointer.to_string(),
                reason: "the value contains a NUL character".into(),
            });
        }
        if let Some(earlier) = vars.get(name) {
            if *earlier != text {
                return Err(RuntimeError::InvalidParameter {
                    pointer: pointer.to_string(),
                    reason: format!("{name} is set to different values by several parameters"),
                });
            }
        }
        vars.insert(name, text);
    }
    Ok(vars
        .iter()
        .map(|(name, text)| format!("{name}={}\n", env_quote(text)))
        .collect())
}

/// A parameter value as environment text.
fn env_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        serde_json::Value::Bool(_) | serde_json::Value::Number(_) => value.to_string(),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => value.to_string(),
    }
}

/// Quotes `text` so compose's dotenv parser reads it back unchanged:
/// bare when it is plain, in single quotes (literal) when it can be, else
/// in double quotes with `\\`, `\"`, `\$`, `\n`, `\r` escaped.
fn env_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@,+%=~^".contains(c);
    if text.chars().all(plain) {
        return text.to_string();
    }
    if !text.contains(['\'', '\\', '\n', '\r']) {
        return format!("'{text}'");
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

fn file_error(path: &Path, e: &std::io::Error) -> RuntimeError {
    RuntimeError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

async fn reset_dir(dir: &Path) -> Result<(), RuntimeError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(dir, &e)),
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| file_error(dir, &e))
}

/// Writes `.env`: a package's own `.env` first (kept), then the parameters.
async fn write_env(path: &Path, env: &str) -> Result<(), RuntimeError> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(existing) if !existing.trim().is_empty() => {
            let sep = if existing.ends_with('\n') { "" } else { "\n" };
            format!("{existing}{sep}# parameters from the ApplicationDeployment\n{env}")
        }
        Ok(_) => env.to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => env.to_string(),
        Err(e) => return Err(file_error(path, &e)),
    };
    tokio::fs::write(path, text)
        .await
        .map_err(|e| file_error(path, &e))
}

fn read_header(file: &Path) -> std::io::Result<Vec<u8>> {
    let mut header = Vec::with_capacity(512);
    std::fs::File::open(file)?
        .take(512)
        .read_to_end(&mut header)?;
    Ok(header)
}

fn has_compose_file(dir: &Path) -> bool {
    COMPOSE_FILES.iter().any(|f| dir.join(f).is_file())
}

/// `dir` when it holds a compose file, else its single top-level directory when that does.
fn find_project_dir(dir: &Path) -> Option<PathBuf> {
    if has_compose_file(dir) {
        return Some(dir.to_path_buf());
    }
    let mut entries = std::fs::read_dir(dir).ok()?.filter_map(Result::ok);
    let only = entries.next()?;
    if entries.next().is_some() {
        return None;
    }
    let path = only.path();
    let is_dir = only.file_type().ok()?.is_dir();
    (is_dir && has_compose_file(&path)).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(params: &str) -> ApplicationDeployment {
        let text = format!(
            "apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  annotations:
    id: d1
  name: app
spec:
  deploymentProfile:
    type: compose
    components:
      - name: web
        properties:
          packageLocation: /opt/pkg.tgz
      - name: other
  parameters:
{params}"
        );
        ApplicationDeployment::parse(text.into_bytes()).unwrap()
    }

    fn param(name: &str, value: &str, pointer: &str, component: &str) -> String {
        format!(
            "    {name}:\n      value: {value}\n      targets:\n        - pointer: {pointer}\n          components: [{component}]\n"
        )
    }

    #[test]
    fn env_lines_are_sorted_typed_and_only_for_the_component() {
        let params = [
            param("a", "plain/value-1.2", "ENV.B_PLAIN", "web"),
            param("b", "8080", "ENV.A_NUMBER", "web"),
            param("c", "true", "ENV.C_BOOL", "web"),
            param("d", "'two words'", "ENV.D_SPACES", "web"),
            param("e", "'x#y $HOME'", "ENV.E_SPECIAL", "web"),
            param("f", "\"it's \\\\ \\\"q\\\"\\n$V\"", "ENV.F_HARD", "web"),
            param("g", "{k: [1, 2]}", "ENV.G_JSON", "web"),
            param("h", "ignored", "ENV.OTHER", "other"),
            param("i", "ignored", "not.env", "web"),
            param("j", "''", "ENV.J_EMPTY", "web"),
        ]
        .concat();
        let d = doc(&params);
        let env = render_env(&d, &d.components[0]).unwrap();
        assert_eq!(
            env,
            "A_NUMBER=8080\n\
             B_PLAIN=plain/value-1.2\n\
             C_BOOL=true\n\
             D_SPACES='two words'\n\
             E_SPECIAL='x#y $HOME'\n\
             F_HARD=\"it's \\\\ \\\"q\\\"\\n\\$V\"\n\
             G_JSON='{\"k\":[1,2]}'\n\
             J_EMPTY=\n"
        );
    }

    #[test]
    fn bad_env_names_and_conflicts_are_rejected() {
        for bad in ["ENV.1ABC", "ENV.A-B", "ENV.", "ENV.A.B"] {
            let d = doc(&param("a", "x", bad, "web"));
            match render_env(&d, &d.components[0]) {
                Err(RuntimeError::InvalidParameter { pointer, reason }) => {
                    assert_eq!(pointer, bad);
                    assert!(reason.contains("[A-Za-z_][A-Za-z0-9_]*"), "{reason}");
                }
                other => panic!("{bad}: expected an invalid parameter, got {other:?}"),
            }
        }
        let d = doc(&[
            param("a", "x", "ENV.A", "web"),
            param("b", "y", "ENV.A", "web"),
        ]
        .concat());
        assert!(matches!(
            render_env(&d, &d.components[0]),
            Err(RuntimeError::InvalidParameter { .. })
        ));
        assert!(is_env_name("_x9") && is_env_name("Ab_C") && !is_env_name("9x"));
    }

    #[test]
    fn project_names_follow_compose_rules_and_stay_distinct() {
        let name = project_name("0C7E-uuid", "Web.UI~1");
        assert!(name.starts_with("margo-0c7e-uuid-web-ui-1-"), "{name}");
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'));
        assert_ne!(project_name("a-b", "c"), project_name("a", "b-c"));
        assert_ne!(project_name("a", "b.c"), project_name("a", "b-c"));
        assert_eq!(project_name("a", "b"), project_name("a", "b"));
    }

    #[tokio::test]
    async fn a_package_env_file_is_kept_and_parameters_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        write_env(&path, "A=1\n").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A=1\n");
        std::fs::write(&path, "LOG_LEVEL=info\nA=0").unwrap();
        write_env(&path, "A=1\n").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "LOG_LEVEL=info\nA=0\n# parameters from the ApplicationDeployment\nA=1\n"
        );
    }

    #[test]
    fn package_locations() {
        assert_eq!(
            Location::parse("/srv/p.tgz").unwrap(),
            Location::Local("/srv/p.tgz".into())
        );
        assert_eq!(
            Location::parse("file:///srv/my%20pkg.tgz").unwrap(),
            Location::Local("/srv/my pkg.tgz".into())
        );
        assert_eq!(
            Location::parse("file://localhost/srv/p.tgz").unwrap(),
            Location::Local("/srv/p.tgz".into())
        );
        assert_eq!(
            Location::parse("HTTPS://x/p.tgz").unwrap(),
            Location::Remote("HTTPS://x/p.tgz".into())
        );
        for bad in ["p.tgz", "file://p.tgz", "ftp://x/p", "file:///a%zz"] {
            assert!(
                matches!(
                    Location::parse(bad),
                    Err(RuntimeError::InvalidProperty { .. })
                ),
                "{bad}"
            );
        }
    }
}
