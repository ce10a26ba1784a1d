//! The compose, helm and native adapters against fake `docker`, `helm` and
//! fetch programs (shell scripts in a temp dir), driven through the
//! reconciler with the example deployments from `config/examples/`.
//!
//! The fakes append one line per invocation to `calls.log`:
//! `<tool> <args...> | cwd=<working directory>`, copy the `.env` / values file
//! they were given next to it, and on demand fail (marker file `fail`: 200
//! lines of noise then a message on stderr, exit 3) or hang (marker `hang`).

#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use margo_agent::clock::SystemClock;
use margo_agent::config::{ComposeConfig, HelmConfig};
use margo_agent::identity::Identity;
use margo_agent::reconcile::PassOutcome;
use margo_agent::runtime::compose::project_name;
use margo_agent::runtime::helm::release_name;
use margo_agent::runtime::{
    ApplyKind, ComposeRuntime, HelmRuntime, NativeRuntime, Runtime, RuntimeError,
};
use margo_agent::{Agent, AgentConfig, AgentOptions, AgentParts, Store};
use margo_schemas::deployment::{ApplicationDeployment, ProfileType};
use margo_schemas::messages::{Message, StatusReport};
use margo_schemas::status::{ComponentStatus, DeploymentState};
use margo_testkit::within;

const COMPOSE_ID: &str = "0c7e4d9a-58b1-4f3e-a6d2-91b8e3c5f702";
const HELM_ID: &str = "6f1b2c0e-3d4a-4b8e-9c21-7a5d9e0f4c11";
const PACKAGE_URL: &str = "https://packages.example.com/vibration-sensor-2.0.4.tar.gz";

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose_example() -> String {
    example("vibration-sensor-compose.yaml")
}

fn helm_example() -> String {
    example("line-monitor-helm.yaml")
}

/// A temp dir with fake tools, a package, and the agent's data dir.
struct Fakes {
    _tmp: tempfile::TempDir,
    /// Canonical temp root (the fakes report `pwd` physically).
    root: PathBuf,
    bin: PathBuf,
    data: PathBuf,
}

const DOCKER: &str = r#"
echo "docker $* | cwd=$(pwd)" >> "$F/calls.log"
if [ "$1" = compose ] && [ "$2" = version ]; then
  if [ -e "$F/no-compose" ]; then echo "docker: 'compose' is not a docker command." >&2; exit 1; fi
  echo "Docker Compose version v2.29.7"; exit 0
fi
prev=""
for a in "$@"; do
  if [ "$prev" = "--env-file" ]; then cp "$a" "$F/seen.env"; fi
  prev="$a"
done
"#;

const HELM: &str = r#"
echo "helm $* | cwd=$(pwd)" >> "$F/calls.log"
if [ "$1" = upgrade ]; then
  prev=""
  for a in "$@"; do
    if [ "$prev" = "-f" ]; then cp "$a" "$F/values-$3.yaml"; fi
    prev="$a"
  done
fi
if [ "$1" = uninstall ] && [ -e "$F/gone" ]; then
  echo "Error: uninstall: Release not loaded: $2: release: not found" >&2; exit 1
fi
"#;

const FETCH: &str = r#"
echo "fetch $* | cwd=$(pwd)" >> "$F/calls.log"
cp "$F/package.tgz" "$2"
"#;

const FAIL_OR_HANG: &str = r#"
if [ -e "$F/fail" ]; then
  i=0; while [ $i -lt 200 ]; do echo "noise line $i" >&2; i=$((i+1)); done
  echo "Error: boom: registry unreachable" >&2
  exit 3
fi
if [ -e "$F/hang" ]; then exec sleep 30; fi
exit 0
"#;

impl Fakes {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(tmp.path()).expect("canonical tempdir");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        let fakes = Self {
            _tmp: tmp,
            data: root.join("data"),
            bin,
            root,
        };
        fakes.script("docker", &format!("{DOCKER}{FAIL_OR_HANG}"));
        fakes.script("helm", &format!("{HELM}{FAIL_OR_HANG}"));
        fakes.script("fetch", FETCH);
        fakes.make_package();
        fakes
    }

    fn script(&self, name: &str, body: &str) {
        let path = self.bin.join(name);
        let text = format!("#!/bin/sh\nF='{}'\n{body}", self.root.display());
        std::fs::write(&path, text).expect("write fake");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// `package.tgz`: `vibration-sensor-2.0.4/compose.yaml`; also a bare `compose.yaml`.
    fn make_package(&self) {
        let src = self.root.join("pkgsrc/vibration-sensor-2.0.4");
        std::fs::create_dir_all(&src).expect("pkgsrc");
        let compose = "services:\n  sensor:\n    image: registry.example.com/vibration-sensor:2.0.4\n    environment:\n      SAMPLE_RATE_HZ: ${SAMPLE_RATE_HZ}\n";
        std::fs::write(src.join("compose.yaml"), compose).expect("compose.yaml");
        std::fs::write(self.root.join("compose.yaml"), compose).expect("bare compose.yaml");
        let status = std::process::Command::new("tar")
            .arg("-czf")
            .arg(self.root.join("package.tgz"))
            .arg("-C")
            .arg(self.root.join("pkgsrc"))
            .arg("vibration-sensor-2.0.4")
            .status()
            .expect("run tar");
        assert!(status.success(), "tar failed");
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn mark(&self, marker: &str) {
        std::fs::write(self.root.join(marker), "").expect("marker");
    }

    fn unmark(&self, marker: &str) {
        std::fs::remove_file(self.root.join(marker)).expect("unmark");
    }

    /// Every recorded invocation, in order.
    fn calls(&self) -> Vec<String> {
        match std::fs::read_to_string(self.root.join("calls.log")) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.root.join("calls.log"));
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join(name))
            .unwrap_or_else(|e| panic!("{name} not written by a fake: {e}"))
    }

    fn compose_config(&self, timeout: Duration, fetch: bool) -> ComposeConfig {
        ComposeConfig {
            docker: self.tool("docker"),
            timeout,
            fetch_command: if fetch {
                vec![
                    self.tool("fetch").display().to_string(),
                    "{url}".into(),
                    "{dest}".into(),
                ]
            } else {
                Vec::new()
            },
        }
    }

    fn compose(&self, timeout: Duration, fetch: bool) -> ComposeRuntime {
        ComposeRuntime::with_search_path(
            &self.compose_config(timeout, fetch),
            &self.data,
            Arc::new(SystemClock),
            None,
        )
    }

    fn helm_config(&self, timeout: Duration) -> HelmConfig {
        HelmConfig {
            helm: self.tool("helm"),
            timeout,
            kube_context: Some("edge".into()),
            kubeconfig: None,
        }
    }

    fn helm(&self, timeout: Duration) -> HelmRuntime {
        HelmRuntime::with_search_path(
            &self.helm_config(timeout),
            &self.data,
            Arc::new(SystemClock),
            None,
        )
    }

    fn compose_dir(&self) -> PathBuf {
        self.data.join("compose").join(COMPOSE_ID)
    }

    fn helm_dir(&self) -> PathBuf {
        self.data.join("helm").join(HELM_ID)
    }
}

/// An agent's parts on an in-memory store with `runtime`; no broker.
struct Bed {
    fleet: Fleet,
    identity: Identity,
    _agent: Agent,
    parts: AgentParts,
}

impl Bed {
    fn new(runtime: Arc<dyn Runtime>) -> Self {
        let fleet = Fleet::new();
        let identity = fleet.identity("devrt", "mqtts://localhost:8883");
        let config = AgentConfig {
            broker_url: Some("mqtt://127.0.0.1:9".into()),
            allow_plain_mqtt: true,
            capabilities: test_capabilities(),
            ..AgentConfig::default()
        };
        let agent = Agent::new(
            config,
            AgentOptions {
                store: Some(Store::in_memory().expect("store")),
                identity: Some(identity.clone()),
                runtime: Some(runtime),
                clock: None,
                host: None,
            },
        )
        .expect("agent");
        let parts = agent.parts().expect("parts");
        Self {
            fleet,
            identity,
            _agent: agent,
            parts,
        }
    }

    /// Delivers `docs` and a manifest of version `version` listing them, then runs one pass.
    async fn apply(&mut self, version: u64, docs: &[&str]) -> PassOutcome {
        let client = self.identity.client_id.clone();
        let bytes: Vec<Vec<u8>> = docs.iter().map(|d| d.as_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        for d in &refs {
            let (t, p) = deployment_msg(&self.fleet.signer, &client, d);
            self.parts
                .downlink
                .handle_publish(&t, &p)
                .expect("deployment");
        }
        let (t, p) = manifest_msg(&self.fleet.signer, &client, &manifest(version, &refs));
        self.parts
            .downlink
            .handle_publish(&t, &p)
            .expect("manifest");
        let target = self
            .parts
            .store
            .accepted_manifest()
            .expect("read")
            .expect("accepted");
        within(
            Duration::from_secs(30),
            "a reconcile pass",
            self.parts.reconcile.pass(&target, &|| false),
        )
        .await
        .expect("pass")
    }

    /// Status reports in the outbox, oldest first; clears the outbox.
    fn take_statuses(&self) -> Vec<StatusReport> {
        let out = pending_messages(&self.parts.uplink, &self.identity)
            .into_iter()
            .filter_map(|(_, m)| match m {
                Message::Status(s) => Some(s),
                _ => None,
            })
            .collect();
        let next = self.parts.uplink.lock().next_seq();
        self.parts.uplink.ack(next - 1, None).expect("ack");
        out
    }
}

fn states(reports: &[StatusReport]) -> Vec<(String, DeploymentState)> {
    reports
        .iter()
        .map(|r| (r.status.deployment_id.to_string(), r.status.status.state))
        .collect()
}

fn last_failed(reports: &[StatusReport]) -> &StatusReport {
    reports
        .iter()
        .rev()
        .find(|r| r.status.status.state == DeploymentState::Failed)
        .unwrap_or_else(|| panic!("no failed status in {reports:#?}"))
}

fn component<'a>(report: &'a StatusReport, name: &str) -> &'a ComponentStatus {
    report
        .status
        .components
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no component {name} in {report:#?}"))
}

// ---- compose ------------------------------------------------------------------

#[tokio::test]
async fn compose_example_installs_updates_and_removes_through_the_reconciler() {
    use DeploymentState::*;
    let f = Fakes::new();
    let rt = f.compose(Duration::from_secs(20), true);
    assert_eq!(rt.supported().profiles, vec![ProfileType::Compose]);
    let probe = f.calls();
    assert_eq!(probe.len(), 1, "{probe:?}");
    assert!(
        probe[0].starts_with("docker compose version | cwd="),
        "{probe:?}"
    );
    f.clear_calls();
    let mut bed = Bed::new(Arc::new(rt));

    let v1 = compose_example();
    assert_eq!(bed.apply(1, &[&v1]).await, PassOutcome::Adopted(1));
    assert_eq!(
        states(&bed.take_statuses()),
        vec![
            (COMPOSE_ID.to_string(), Installing),
            (COMPOSE_ID.to_string(), Installed)
        ]
    );
    let project = project_name(COMPOSE_ID, "vibration-sensor");
    assert!(project.starts_with(&format!("margo-{COMPOSE_ID}-vibration-sensor-")));
    let workdir = f.compose_dir().join("vibration-sensor");
    let project_dir = workdir.join("vibration-sensor-2.0.4");
    let dep_dir = f.compose_dir();
    let install = vec![
        format!(
            "fetch {PACKAGE_URL} {}/.vibration-sensor.download | cwd={}",
            dep_dir.display(),
            dep_dir.display()
        ),
        format!(
            "docker compose -p {project} --project-directory {pd} --env-file {pd}/.env up -d --remove-orphans | cwd={pd}",
            pd = project_dir.display()
        ),
    ];
    assert_eq!(f.calls(), install);
    assert_eq!(
        f.read("seen.env"),
        "PUBLISH_TOPIC=plant2/line7/vibration\nSAMPLE_RATE_HZ=2000\n"
    );
    assert!(
        project_dir.join("compose.yaml").is_file(),
        "package extracted"
    );
    assert!(
        !dep_dir.join(".vibration-sensor.download").exists(),
        "download cleaned up"
    );
    f.clear_calls();

    // v2: a new parameter value → the same commands, a new .env.
    let v2 = v1.replace("value: 2000", "value: 4000");
    assert_ne!(v1, v2);
    assert_eq!(bed.apply(2, &[&v2]).await, PassOutcome::Adopted(2));
    assert_eq!(f.calls(), install, "update runs the same commands");
    assert_eq!(
        f.read("seen.env"),
        "PUBLISH_TOPIC=plant2/line7/vibration\nSAMPLE_RATE_HZ=4000\n"
    );
    bed.take_statuses();
    f.clear_calls();

    // v3: not listed → down, working directory deleted.
    assert_eq!(bed.apply(3, &[]).await, PassOutcome::Adopted(3));
    assert_eq!(
        f.calls(),
        vec![format!(
            "docker compose -p {project} down | cwd={}",
            f.data.join("compose").display()
        )]
    );
    assert_eq!(
        states(&bed.take_statuses()),
        vec![
            (COMPOSE_ID.to_string(), Removing),
            (COMPOSE_ID.to_string(), Removed)
        ]
    );
    assert!(!dep_dir.exists(), "working directory removed");
}

#[tokio::test]
async fn compose_failure_and_timeout_become_component_errors() {
    let f = Fakes::new();
    let local = compose_example().replace(
        PACKAGE_URL,
        &format!("file://{}", f.root.join("compose.yaml").display()),
    );
    let mut bed = Bed::new(Arc::new(f.compose(Duration::from_secs(20), false)));
    f.mark("fail");
    assert_eq!(
        bed.apply(1, &[&local]).await,
        PassOutcome::Failed {
            version: 1,
            failures: 1
        }
    );
    let reports = bed.take_statuses();
    let failed = last_failed(&reports);
    let error = component(failed, "vibration-sensor")
        .error
        .clone()
        .expect("component error");
    assert_eq!(error.code, "RUNTIME_EXIT");
    assert_eq!(error.source, "vibration-sensor");
    assert!(
        error
            .message
            .starts_with("docker compose up exited with exit status: 3: "),
        "{}",
        error.message
    );
    assert!(
        error.message.ends_with("Error: boom: registry unreachable"),
        "{}",
        error.message
    );
    assert!(
        !error.message.contains("noise line 0\n"),
        "only the tail of stderr"
    );
    assert!(error.message.len() < 2048 + 100, "{}", error.message.len());
    let overall = failed.status.status.error.clone().expect("overall error");
    assert_eq!(overall.code, "RUNTIME_EXIT");
    // The bare compose file was copied in as compose.yaml.
    assert!(f
        .compose_dir()
        .join("vibration-sensor/compose.yaml")
        .is_file());

    // A hanging docker is killed at the timeout.
    f.unmark("fail");
    f.mark("hang");
    let mut bed = Bed::new(Arc::new(f.compose(Duration::from_millis(500), false)));
    let started = Instant::now();
    assert!(matches!(
        bed.apply(1, &[&local]).await,
        PassOutcome::Failed { .. }
    ));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "killed promptly"
    );
    let reports = bed.take_statuses();
    let error = component(last_failed(&reports), "vibration-sensor")
        .error
        .clone()
        .expect("component error");
    assert_eq!(error.code, "RUNTIME_TIMEOUT");
    assert_eq!(error.source, "vibration-sensor");
    assert!(
        error
            .message
            .contains("docker compose up did not finish within 500ms"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn compose_without_a_fetch_command_or_with_bad_env_names_fails_clearly() {
    let f = Fakes::new();
    let mut bed = Bed::new(Arc::new(f.compose(Duration::from_secs(20), false)));
    f.clear_calls();
    assert!(matches!(
        bed.apply(1, &[&compose_example()]).await,
        PassOutcome::Failed { .. }
    ));
    let reports = bed.take_statuses();
    let error = component(last_failed(&reports), "vibration-sensor")
        .error
        .clone()
        .expect("component error");
    assert_eq!(error.code, "package-fetch-unsupported");
    assert!(error.message.contains(PACKAGE_URL), "{}", error.message);
    assert!(
        error.message.contains("runtime.compose.fetch_command"),
        "{}",
        error.message
    );
    assert!(f.calls().is_empty(), "docker never ran: {:?}", f.calls());
    assert!(
        !f.compose_dir().exists(),
        "nothing written before the location was found unusable"
    );

    let rt = f.compose(Duration::from_secs(20), true);
    f.clear_calls();
    let bad = compose_example().replace("ENV.PUBLISH_TOPIC", "ENV.PUBLISH-TOPIC");
    let doc = ApplicationDeployment::parse(bad.into_bytes()).expect("doc");
    let err = rt
        .apply(&doc, &doc.components[0], ApplyKind::Install)
        .await
        .expect_err("bad env name");
    assert_eq!(err.code(), "INVALID_PARAMETER");
    let text = err.to_string();
    assert!(
        text.contains("ENV.PUBLISH-TOPIC") && text.contains("[A-Za-z_][A-Za-z0-9_]*"),
        "{text}"
    );
    assert!(f.calls().is_empty(), "nothing ran: {:?}", f.calls());
}

#[tokio::test]
async fn compose_unavailable_is_not_advertised_and_fails_with_runtime_unavailable() {
    let f = Fakes::new();
    // No docker at the configured path.
    let mut config = f.compose_config(Duration::from_secs(5), true);
    config.docker = f.root.join("missing/docker");
    let rt = ComposeRuntime::with_search_path(&config, &f.data, Arc::new(SystemClock), None);
    assert!(rt.supported().profiles.is_empty());
    let mut bed = Bed::new(Arc::new(rt));
    assert!(matches!(
        bed.apply(1, &[&compose_example()]).await,
        PassOutcome::Failed { .. }
    ));
    let reports = bed.take_statuses();
    let failed = last_failed(&reports);
    let overall = failed.status.status.error.clone().expect("overall error");
    assert_eq!(overall.code, "runtime-unavailable");
    assert!(overall.message.contains("docker compose"), "{overall:?}");
    assert!(overall.message.contains("missing/docker"), "{overall:?}");
    let error = component(failed, "vibration-sensor")
        .error
        .clone()
        .expect("component error");
    assert_eq!(error.code, "runtime-unavailable");
    assert_eq!(error.source, "vibration-sensor");
    assert!(f.calls().is_empty());

    // docker is there but its compose plugin is not: probed once, at start.
    f.mark("no-compose");
    let rt = f.compose(Duration::from_secs(5), true);
    assert!(rt.supported().profiles.is_empty());
    let err = rt
        .check_profile(ProfileType::Compose)
        .expect_err("unavailable");
    assert_eq!(err.code(), "runtime-unavailable");
    assert!(
        err.to_string().contains("compose version"),
        "names the failed probe: {err}"
    );
    assert!(
        err.to_string().contains("not a docker command"),
        "carries its stderr: {err}"
    );
    let mut bed = Bed::new(Arc::new(rt));
    for version in 1..=2 {
        assert!(matches!(
            bed.apply(version, &[&compose_example()]).await,
            PassOutcome::Failed { .. }
        ));
    }
    assert_eq!(
        f.calls().len(),
        1,
        "only the start-up probe ran: {:?}",
        f.calls()
    );
}

#[tokio::test]
async fn docker_and_helm_are_found_in_path() {
    let f = Fakes::new();
    let empty = f.root.join("empty");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let search = std::env::join_paths([&empty, &f.bin]).expect("PATH");
    let compose = ComposeConfig {
        docker: PathBuf::from("docker"),
        ..f.compose_config(Duration::from_secs(5), false)
    };
    let helm = HelmConfig {
        helm: PathBuf::from("helm"),
        ..f.helm_config(Duration::from_secs(5))
    };
    let clock = || Arc::new(SystemClock);
    let found = NativeRuntime::new(
        ComposeRuntime::with_search_path(&compose, &f.data, clock(), Some(&search)),
        HelmRuntime::with_search_path(&helm, &f.data, clock(), Some(&search)),
    );
    assert_eq!(found.supported().name, "native");
    assert_eq!(
        found.supported().profiles,
        vec![ProfileType::Compose, ProfileType::HelmV3]
    );
    assert_eq!(f.calls().len(), 1, "the PATH docker was probed");

    let only_empty = std::env::join_paths([&empty]).expect("PATH");
    let missing = NativeRuntime::new(
        ComposeRuntime::with_search_path(&compose, &f.data, clock(), Some(&only_empty)),
        HelmRuntime::with_search_path(&helm, &f.data, clock(), Some(&only_empty)),
    );
    assert!(missing.supported().profiles.is_empty());
    let err = missing
        .check_profile(ProfileType::HelmV3)
        .expect_err("no helm");
    assert_eq!(err.code(), "runtime-unavailable");
    assert!(
        err.to_string().contains("\"helm\" was not found in PATH"),
        "{err}"
    );
}

// ---- helm ---------------------------------------------------------------------

fn helm_install_line(
    f: &Fakes,
    component: &str,
    chart: &str,
    version: &str,
    extra: &str,
) -> String {
    let dir = f.helm_dir();
    format!(
        "helm upgrade --install {release} oci://registry.example.com/charts/{chart} --version {version} --namespace line-monitor --create-namespace -f {dir}/{component}-values.yaml {extra}--kube-context edge | cwd={dir}",
        release = release_name(HELM_ID, component),
        dir = dir.display(),
    )
}

#[tokio::test]
async fn helm_example_installs_updates_and_removes_through_the_reconciler() {
    use DeploymentState::*;
    let f = Fakes::new();
    let rt = f.helm(Duration::from_secs(20));
    assert_eq!(rt.supported().profiles, vec![ProfileType::HelmV3]);
    let mut bed = Bed::new(Arc::new(rt));

    let v1 = helm_example();
    assert_eq!(bed.apply(1, &[&v1]).await, PassOutcome::Adopted(1));
    assert_eq!(
        states(&bed.take_statuses()),
        vec![
            (HELM_ID.to_string(), Installing),
            (HELM_ID.to_string(), Installed)
        ]
    );
    let db = release_name(HELM_ID, "timeseries-db");
    let ui = release_name(HELM_ID, "line-monitor-ui");
    assert!(db.starts_with("timeseries-db-") && db.len() == "timeseries-db-".len() + 8);
    assert!(ui.starts_with("line-monitor-ui-"));
    let install = vec![
        helm_install_line(
            &f,
            "timeseries-db",
            "timeseries-db",
            "4.2.1",
            "--wait --timeout 5m ",
        ),
        helm_install_line(&f, "line-monitor-ui", "line-monitor-ui", "1.3.0", "--wait "),
    ];
    assert_eq!(f.calls(), install);
    assert_eq!(
        f.read(&format!("values-{db}.yaml")),
        "labels:\n  site: Plant 2 / Line 7\nstorage:\n  retentionDays: 30\n"
    );
    assert_eq!(
        f.read(&format!("values-{ui}.yaml")),
        "ui:\n  title: Plant 2 / Line 7\n"
    );
    f.clear_calls();

    // v2: a new chart version for the UI and a new retention.
    let v2 = v1
        .replace("revision: 1.3.0", "revision: 1.4.0")
        .replace("value: 30", "value: 90");
    assert_eq!(bed.apply(2, &[&v2]).await, PassOutcome::Adopted(2));
    assert_eq!(
        f.calls(),
        vec![
            helm_install_line(
                &f,
                "timeseries-db",
                "timeseries-db",
                "4.2.1",
                "--wait --timeout 5m "
            ),
            helm_install_line(&f, "line-monitor-ui", "line-monitor-ui", "1.4.0", "--wait "),
        ]
    );
    assert_eq!(
        f.read(&format!("values-{db}.yaml")),
        "labels:\n  site: Plant 2 / Line 7\nstorage:\n  retentionDays: 90\n"
    );
    bed.take_statuses();
    f.clear_calls();

    // v3: not listed → uninstall both, values files deleted.
    assert_eq!(bed.apply(3, &[]).await, PassOutcome::Adopted(3));
    let root = f.data.join("helm");
    assert_eq!(
        f.calls(),
        vec![
            format!(
                "helm uninstall {db} --namespace line-monitor --kube-context edge | cwd={}",
                root.display()
            ),
            format!(
                "helm uninstall {ui} --namespace line-monitor --kube-context edge | cwd={}",
                root.display()
            ),
        ]
    );
    assert_eq!(
        states(&bed.take_statuses()),
        vec![
            (HELM_ID.to_string(), Removing),
            (HELM_ID.to_string(), Removed)
        ]
    );
    assert!(!f.helm_dir().exists(), "values files removed");
}

#[tokio::test]
async fn helm_failure_and_timeout_become_component_errors() {
    use DeploymentState::*;
    let f = Fakes::new();
    let mut bed = Bed::new(Arc::new(f.helm(Duration::from_secs(20))));
    f.mark("fail");
    assert_eq!(
        bed.apply(1, &[&helm_example()]).await,
        PassOutcome::Failed {
            version: 1,
            failures: 1
        }
    );
    let reports = bed.take_statuses();
    let failed = last_failed(&reports);
    let db = component(failed, "timeseries-db");
    assert_eq!(db.state, Failed);
    let error = db.error.clone().expect("component error");
    assert_eq!(error.code, "RUNTIME_EXIT");
    assert_eq!(error.source, "timeseries-db");
    assert!(
        error
            .message
            .starts_with("helm upgrade --install exited with exit status: 3: "),
        "{}",
        error.message
    );
    assert!(
        error.message.ends_with("Error: boom: registry unreachable"),
        "{}",
        error.message
    );
    assert_eq!(
        component(failed, "line-monitor-ui").state,
        Pending,
        "not tried"
    );
    let overall = failed.status.status.error.clone().expect("overall error");
    assert_eq!(overall.source, "line-monitor");
    assert_eq!(f.calls().len(), 1, "stopped at the first failure");

    // Hanging helm: killed at the configured timeout (no component timeout here).
    f.unmark("fail");
    f.mark("hang");
    let no_timeout = helm_example().replace("          timeout: 5m\n", "");
    let mut bed = Bed::new(Arc::new(f.helm(Duration::from_millis(500))));
    let started = Instant::now();
    assert!(matches!(
        bed.apply(1, &[&no_timeout]).await,
        PassOutcome::Failed { .. }
    ));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "killed promptly"
    );
    let reports = bed.take_statuses();
    let error = component(last_failed(&reports), "timeseries-db")
        .error
        .clone()
        .expect("component error");
    assert_eq!(error.code, "RUNTIME_TIMEOUT");
    assert!(
        error
            .message
            .contains("helm upgrade --install did not finish within 500ms"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn helm_uninstall_of_a_release_already_gone_succeeds() {
    let f = Fakes::new();
    let rt = f.helm(Duration::from_secs(5));
    let doc = ApplicationDeployment::parse(helm_example().into_bytes()).expect("doc");
    f.mark("gone");
    rt.remove(&doc, &doc.components[0])
        .await
        .expect("already removed counts as removed");
    f.unmark("gone");
    f.mark("fail");
    let err = rt
        .remove(&doc, &doc.components[0])
        .await
        .expect_err("a real failure still fails");
    assert!(
        matches!(&err, RuntimeError::Exit { command, .. } if command == "helm uninstall"),
        "{err:?}"
    );
}

// ---- native -------------------------------------------------------------------

#[tokio::test]
async fn native_dispatches_by_profile_and_reports_a_missing_helm() {
    let f = Fakes::new();
    let mut helm = f.helm_config(Duration::from_secs(5));
    helm.helm = f.root.join("missing/helm");
    let rt = NativeRuntime::new(
        f.compose(Duration::from_secs(20), true),
        HelmRuntime::with_search_path(&helm, &f.data, Arc::new(SystemClock), None),
    );
    assert_eq!(rt.supported().profiles, vec![ProfileType::Compose]);
    f.clear_calls();
    let mut bed = Bed::new(Arc::new(rt));
    assert_eq!(
        bed.apply(1, &[&compose_example(), &helm_example()]).await,
        PassOutcome::Failed {
            version: 1,
            failures: 1
        }
    );
    let reports = bed.take_statuses();
    let compose_final = reports
        .iter()
        .rev()
        .find(|r| r.status.deployment_id.as_str() == COMPOSE_ID)
        .expect("compose status");
    assert_eq!(
        compose_final.status.status.state,
        DeploymentState::Installed
    );
    let helm_failed = last_failed(&reports);
    assert_eq!(helm_failed.status.deployment_id.as_str(), HELM_ID);
    for name in ["timeseries-db", "line-monitor-ui"] {
        let error = component(helm_failed, name)
            .error
            .clone()
            .expect("component error");
        assert_eq!(error.code, "runtime-unavailable");
        assert_eq!(error.source, name);
        assert!(
            error.message.contains("helm is unavailable") && error.message.contains("missing/helm"),
            "{}",
            error.message
        );
    }
    assert!(
        f.calls().iter().all(|c| !c.starts_with("helm ")),
        "{:?}",
        f.calls()
    );
    assert!(f
        .calls()
        .iter()
        .any(|c| c.starts_with("docker compose -p ")));
}
