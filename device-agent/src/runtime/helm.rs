//! The helm adapter: runs `helm.v3` deployments with the helm CLI.
//!
//! Per component (properties `repository`, `revision`, optional `wait` and
//! `timeout`):
//!
//! 1. The parameters targeting the component are written as a values file,
//!    `<data_dir>/helm/<deploymentId>/<component>-values.yaml`, each pointer
//!    `a.b.c` becoming nested maps (`a: {b: {c: value}}`), keys sorted.
//! 2. `helm upgrade --install <release> <repository> --version <revision>
//!    --namespace <ns> --create-namespace -f <values> [--wait] [--timeout <t>]
//!    [--kube-context <c>] [--kubeconfig <k>]`, run in the deployment's
//!    directory. `<ns>` is `metadata.namespace`, or `default`.
//!
//! Remove: `helm uninstall <release> --namespace <ns> [--kube-context <c>]
//! [--kubeconfig <k>]`; a release that is already gone counts as removed.
//! The values file is then deleted.
//!
//! `<release>` is the component name lowered to helm's alphabet (`a-z 0-9
//! -`) and cut to 44 characters, plus `-` and 8 hex digits of a hash of
//! (deployment id, component): at most 53 characters, and two deployments
//! with a component of the same name in one namespace get distinct releases.
//!
//! The helm process is killed after `timeout` from `[runtime.helm]`, or
//! after the component's `timeout` plus a minute when that is longer.
//!
//! Availability is decided once, at construction: the helm CLI must be found
//! (a path, or a name in `PATH`) and be executable. Otherwise the adapter
//! advertises no profile and every action fails with `runtime-unavailable`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use margo_schemas::deployment::{ApplicationDeployment, Component, ProfileType};
use serde::Serialize;
use tokio::process::Command;
use tracing::{debug, info, instrument, warn};

use super::compose::{pair_hash, string_property};
use super::process::{self, ToolError};
use super::{ApplyKind, Runtime, RuntimeError, RuntimeFuture, RuntimeInfo};
use crate::clock::Clock;
use crate::config::HelmConfig;

/// Component property: the chart reference (`oci://...`, a repo URL, ...).
pub const REPOSITORY: &str = "repository";
/// Component property: the chart version.
pub const REVISION: &str = "revision";
/// Component property: pass `--wait`.
pub const WAIT: &str = "wait";
/// Component property: pass `--timeout` (a Go duration such as `8m30s`).
pub const TIMEOUT: &str = "timeout";
/// Namespace when the deployment names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Longest helm release name.
pub const MAX_RELEASE_NAME: usize = 53;
/// Extra time the helm process gets beyond the component's own `timeout`.
const TIMEOUT_GRACE: Duration = Duration::from_secs(60);

/// Runs helm.v3 deployments through `helm`.
#[derive(Debug)]
pub struct HelmRuntime {
    /// The resolved helm CLI, or why it cannot be used.
    helm: Result<PathBuf, ToolError>,
    timeout: Duration,
    kube_context: Option<String>,
    kubeconfig: Option<PathBuf>,
    /// `<data_dir>/helm`, absolute.
    root: PathBuf,
    clock: Arc<dyn Clock>,
}

/// What one component asks of helm.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChartSpec<'a> {
    repository: &'a str,
    revision: String,
    wait: bool,
    timeout: Option<(&'a str, Duration)>,
}

impl HelmRuntime {
    /// A helm adapter under `data_dir`, finding helm through the process `PATH`.
    pub fn new(config: &HelmConfig, data_dir: &Path, clock: Arc<dyn Clock>) -> Self {
        let path = std::env::var_os("PATH");
        Self::with_search_path(config, data_dir, clock, path.as_deref())
    }

    /// As [`Self::new`], looking up a bare `helm` name in `search_path`.
    pub fn with_search_path(
        config: &HelmConfig,
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        search_path: Option<&OsStr>,
    ) -> Self {
        let helm = process::find_program(&config.helm, search_path);
        match &helm {
            Ok(path) => info!(helm = %path.display(), "helm adapter ready"),
            Err(e) => warn!(error = %e, "helm is unavailable: helm.v3 deployments will fail"),
        }
        let root = data_dir.join("helm");
        Self {
            helm,
            timeout: config.timeout,
            kube_context: config.kube_context.clone(),
            kubeconfig: config.kubeconfig.clone(),
            root: std::path::absolute(&root).unwrap_or(root),
            clock,
        }
    }

    /// Where the values file of `component` of `deployment_id` is written.
    pub fn values_path(&self, deployment_id: &str, component: &str) -> PathBuf {
        self.root
            .join(deployment_id)
            .join(format!("{component}-values.yaml"))
    }

    fn helm(&self, profile: ProfileType) -> Result<&Path, RuntimeError> {
        if profile != ProfileType::HelmV3 {
            return Err(RuntimeError::Unsupported {
                adapter: "helm",
                profile: profile.as_str(),
            });
        }
        self.helm.as_deref().map_err(|e| RuntimeError::Unavailable {
            profile: ProfileType::HelmV3.as_str(),
            tool: "helm".into(),
            reason: e.to_string(),
        })
    }

    fn cluster_args(&self, cmd: &mut Command) {
        if let Some(context) = &self.kube_context {
            cmd.arg("--kube-context").arg(context);
        }
        if let Some(kubeconfig) = &self.kubeconfig {
            cmd.arg("--kubeconfig").arg(kubeconfig);
        }
    }

    #[instrument(skip_all, fields(deployment_id = %deployment.id, component = %component.name, action = kind.as_str()))]
    async fn upgrade(
        &self,
        deployment: &ApplicationDeployment,
        component: &Component,
        kind: ApplyKind,
    ) -> Result<(), RuntimeError> {
        let helm = self.helm(deployment.profile)?;
        let spec = chart_spec(component)?;
        let namespace = namespace(deployment)?;
        let values = render_values(deployment, component)?;
        let values_path = self.values_path(deployment.id.as_str(), &component.name);
        let dir = values_path.parent().unwrap_or(&self.root).to_path_buf();
        write_atomically(&values_path, values.as_bytes()).await?;
        let release = release_name(deployment.id.as_str(), &component.name);
        let mut cmd = Command::new(helm);
        cmd.args(["upgrade", "--install", &release, spec.repository])
            .args(["--version", &spec.revision])
            .args(["--namespace", namespace, "--create-namespace"])
            .arg("-f")
            .arg(&values_path);
        if spec.wait {
            cmd.arg("--wait");
        }
        let mut limit = self.timeout;
        if let Some((text, duration)) = spec.timeout {
            cmd.args(["--timeout", text]);
            limit = limit.max(duration.saturating_add(TIMEOUT_GRACE));
        }
        self.cluster_args(&mut cmd);
        cmd.current_dir(&dir);
        let done = process::run(cmd, "helm upgrade --install", limit, self.clock.as_ref())
            .await?
            .check("helm upgrade --install")?;
        debug!(%release, stdout = %String::from_utf8_lossy(&done.stdout), "helm upgrade finished");
        info!(%release, namespace, "helm release installed");
        Ok(())
    }

    #[instrument(skip_all, fields(deployment_id = %deployment.id, component = %component.name, action = "remove"))]
    async fn uninstall(
        &self,
        deployment: &ApplicationDeployment,
        component: &Component,
    ) -> Result<(), RuntimeError> {
        let helm = self.helm(deployment.profile)?;
        let namespace = namespace(deployment)?;
        let release = release_name(deployment.id.as_str(), &component.name);
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| file_error(&self.root, &e))?;
        let mut cmd = Command::new(helm);
        cmd.args(["uninstall", &release, "--namespace", namespace]);
        self.cluster_args(&mut cmd);
        cmd.current_dir(&self.root);
        let done = process::run(cmd, "helm uninstall", self.timeout, self.clock.as_ref()).await?;
        if !done.status.success() && done.stderr_text().contains("release: not found") {
            info!(%release, namespace, "helm release already gone");
        } else {
            done.check("helm uninstall")?;
            info!(%release, namespace, "helm release uninstalled");
        }
        let values_path = self.values_path(deployment.id.as_str(), &component.name);
        match tokio::fs::remove_file(&values_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %values_path.display(), error = %e, "could not delete the values file")
            }
        }
        if let Some(dir) = values_path.parent() {
            // Only succeeds once the deployment's last values file is gone.
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }
}

impl Runtime for HelmRuntime {
    fn supported(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "helm",
            profiles: if self.helm.is_ok() {
                vec![ProfileType::HelmV3]
            } else {
                Vec::new()
            },
        }
    }

    fn check_profile(&self, profile: ProfileType) -> Result<(), RuntimeError> {
        self.helm(profile).map(|_| ())
    }

    fn apply<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
        kind: ApplyKind,
    ) -> RuntimeFuture<'a> {
        Box::pin(self.upgrade(deployment, component, kind))
    }

    fn remove<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
    ) -> RuntimeFuture<'a> {
        Box::pin(self.uninstall(deployment, component))
    }
}

fn invalid(property: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidProperty {
        property: property.into(),
        reason: reason.into(),
    }
}

fn chart_spec(component: &Component) -> Result<ChartSpec<'_>, RuntimeError> {
    let repository = string_property(component, REPOSITORY)?;
    if repository.starts_with('-') {
        return Err(invalid(REPOSITORY, "must not start with '-'"));
    }
    let revision = match component.properties.get(REVISION) {
        Some(serde_json::Value::String(s)) => s.trim().to_string(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(_) => return Err(invalid(REVISION, "must be a version string")),
        None => return Err(invalid(REVISION, "required (the chart version)")),
    };
    if revision.is_empty() || revision.starts_with('-') {
        return Err(invalid(
            REVISION,
            "must be a non-empty version not starting with '-'",
        ));
    }
    let wait = match component.properties.get(WAIT) {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) if s == "true" => true,
        Some(serde_json::Value::String(s)) if s == "false" => false,
        Some(_) => return Err(invalid(WAIT, "must be true or false")),
    };
    let timeout = match component.properties.get(TIMEOUT) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => {
            let duration = parse_go_duration(s).ok_or_else(|| {
                invalid(
                    TIMEOUT,
                    format!("{s:?} is not a duration such as 90s, 5m or 8m30s"),
                )
            })?;
            Some((s.as_str(), duration))
        }
        Some(_) => {
            return Err(invalid(
                TIMEOUT,
                "must be a duration string such as 90s, 5m or 8m30s",
            ))
        }
    };
    Ok(ChartSpec {
        repository,
        revision,
        wait,
        timeout,
    })
}

/// `metadata.namespace` (an RFC 1123 label), or `default`.
fn namespace(deployment: &ApplicationDeployment) -> Result<&str, RuntimeError> {
    let Some(ns) = deployment.namespace.as_deref() else {
        return Ok(DEFAULT_NAMESPACE);
    };
    let label = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns.chars().all(|c| label(c) || c == '-')
        && ns.starts_with(label)
        && ns.ends_with(label);
    if ok {
        Ok(ns)
    } else {
        Err(invalid(
            "metadata.namespace",
            format!("{ns:?} is not a Kubernetes namespace (lowercase letters, digits and '-', at most 63)"),
        ))
    }
}

/// The helm release name of (`deployment_id`, `component`).
pub fn release_name(deployment_id: &str, component: &str) -> String {
    let lowered: String = component
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let hash = pair_hash(deployment_id, component);
    let room = MAX_RELEASE_NAME - hash.len() - 1;
    let base: String = lowered.trim_matches('-').chars().take(room).collect();
    let base = base.trim_end_matches('-');
    let base = if base.is_empty() { "margo" } else { base };
    format!("{base}-{hash}")
}

/// A values tree: parameters nested by their dotted pointers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
enum Node {
    Leaf(serde_json::Value),
    Map(BTreeMap<String, Node>),
}

/// The values file text for `component`: every parameter targeting it,
/// its pointer `a.b.c` read as nested keys. Conflicting pointers (`a.b`
/// and `a.b.c`, or one key with two values) are rejected.
pub fn render_values(
    deployment: &ApplicationDeployment,
    component: &Component,
) -> Result<String, RuntimeError> {
    let mut root: BTreeMap<String, Node> = BTreeMap::new();
    for (_, pointer, value) in deployment.parameters_for(&component.name) {
        insert(&mut root, pointer, value)?;
    }
    serde_norway::to_string(&root)
        .map_err(|e| RuntimeError::Failed(format!("could not render the values file: {e}")))
}

fn insert(
    root: &mut BTreeMap<String, Node>,
    pointer: &str,
    value: &serde_json::Value,
) -> Result<(), RuntimeError> {
    let conflict = |at: &str| RuntimeError::InvalidParameter {
        pointer: pointer.to_string(),
        reason: format!("conflicts with another parameter at {at:?}"),
    };
    let segments: Vec<&str> = pointer.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(RuntimeError::InvalidParameter {
            pointer: pointer.to_string(),
            reason: "has an empty path segment".into(),
        });
    }
    let Some((last, parents)) = segments.split_last() else {
        return Err(conflict(pointer));
    };
    let mut map = root;
    for (depth, segment) in parents.iter().enumerate() {
        let node = map
            .entry((*segment).to_string())
            .or_insert_with(|| Node::Map(BTreeMap::new()));
        map = match node {
            Node::Map(inner) => inner,
            Node::Leaf(_) => return Err(conflict(&segments[..=depth].join("."))),
        };
    }
    match map.get(*last) {
        Some(Node::Map(_)) => Err(conflict(pointer)),
        Some(Node::Leaf(existing)) if existing != value => Err(conflict(pointer)),
        _ => {
            map.insert((*last).to_string(), Node::Leaf(value.clone()));
            Ok(())
        }
    }
}

/// Parses a Go duration (`300ms`, `1.5h`, `8m30s`; units ns us µs ms s m h).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut seconds = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        seconds += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

fn file_error(path: &Path, e: &std::io::Error) -> RuntimeError {
    RuntimeError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let err = |e: std::io::Error| file_error(path, &e);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, bytes).await.map_err(err)?;
    tokio::fs::rename(&tmp, path).await.map_err(err)
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
    type: helm.v3
    components:
      - name: web
        properties:
          repository: oci://r/web
          revision: 1.0.0
  parameters:
{params}"
        );
        ApplicationDeployment::parse(text.into_bytes()).unwrap()
    }

    fn param(name: &str, value: &str, pointer: &str) -> String {
        format!(
            "    {name}:\n      value: {value}\n      targets:\n        - pointer: {pointer}\n          components: [web]\n"
        )
    }

    #[test]
    fn values_nest_by_pointer_sorted() {
        let d = doc(&[
            param("a", "3", "replicas"),
            param("b", "x", "image.tag"),
            param("c", "{k: v}", "image.extra"),
            param("d", "[1, 2]", "a.b.c.list"),
        ]
        .concat());
        let text = render_values(&d, &d.components[0]).unwrap();
        assert_eq!(
            text,
            "a:\n  b:\n    c:\n      list:\n      - 1\n      - 2\nimage:\n  extra:\n    k: v\n  tag: x\nreplicas: 3\n"
        );
        assert_eq!(
            render_values(&doc("    {}\n"), &doc("    {}\n").components[0]).unwrap(),
            "{}\n"
        );
    }

    #[test]
    fn conflicting_and_empty_pointers_are_rejected() {
        for params in [
            [param("a", "1", "x.y"), param("b", "2", "x.y.z")].concat(),
            [param("a", "1", "x.y.z"), param("b", "2", "x.y")].concat(),
            [param("a", "1", "x"), param("b", "2", "x")].concat(),
            param("a", "1", "x..y"),
            param("a", "1", ".x"),
        ] {
            let d = doc(&params);
            assert!(
                matches!(
                    render_values(&d, &d.components[0]),
                    Err(RuntimeError::InvalidParameter { .. })
                ),
                "{params}"
            );
        }
        let same = doc(&[param("a", "1", "x"), param("b", "1", "x")].concat());
        render_values(&same, &same.components[0]).unwrap();
    }

    #[test]
    fn release_names_are_valid_and_distinct() {
        let long = "A".repeat(80);
        for (id, component) in [
            ("d1", "web"),
            ("d1", "Web.UI_x"),
            ("d1", long.as_str()),
            ("d1", "---"),
            ("d1", "_x"),
        ] {
            let name = release_name(id, component);
            assert!(name.len() <= MAX_RELEASE_NAME, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(
                name.starts_with(|c: char| c.is_ascii_alphanumeric()),
                "{name}"
            );
        }
        assert!(release_name("d1", "web").starts_with("web-"));
        assert_ne!(release_name("d1", "web"), release_name("d2", "web"));
    }

    #[test]
    fn go_durations() {
        let secs = |t: &str| parse_go_duration(t).map(|d| d.as_secs_f64());
        assert_eq!(secs("8m30s"), Some(510.0));
        assert_eq!(secs("5m"), Some(300.0));
        assert_eq!(secs("1.5h"), Some(5400.0));
        assert_eq!(secs("300ms"), Some(0.3));
        assert_eq!(secs("0"), Some(0.0));
        for bad in ["", "5", "5 m", "1day", "-5m", "m", "1..2s"] {
            assert_eq!(secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn chart_spec_reads_and_checks_properties() {
        let d = doc("    {}\n");
        let spec = chart_spec(&d.components[0]).unwrap();
        assert_eq!(spec.repository, "oci://r/web");
        assert_eq!(spec.revision, "1.0.0");
        assert!(!spec.wait);
        let mut c = d.components[0].clone();
        c.properties.insert(WAIT.into(), serde_json::json!(true));
        c.properties
            .insert(TIMEOUT.into(), serde_json::json!("8m30s"));
        let spec = chart_spec(&c).unwrap();
        assert!(spec.wait);
        assert_eq!(spec.timeout, Some(("8m30s", Duration::from_secs(510))));
        for (key, value) in [
            (REVISION, serde_json::json!("--set=x")),
            (REPOSITORY, serde_json::json!("-x")),
            (WAIT, serde_json::json!("yes")),
            (TIMEOUT, serde_json::json!("soon")),
        ] {
            let mut bad = d.components[0].clone();
            bad.properties.insert(key.into(), value);
            match chart_spec(&bad) {
                Err(RuntimeError::InvalidProperty { property, .. }) => assert_eq!(property, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }
}
