//! The exec adapter against small shell scripts in a temp dir.

#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use margo_agent::clock::SystemClock;
use margo_agent::config::ExecConfig;
use margo_agent::runtime::{ApplyKind, ExecRuntime, Runtime, RuntimeError};
use margo_schemas::deployment::ApplicationDeployment;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn runtime(program: PathBuf, dir: &Path, timeout: Duration) -> ExecRuntime {
    let config = ExecConfig {
        program,
        timeout,
        ..ExecConfig::default()
    };
    ExecRuntime::new(&config, dir.join("deployments"), Arc::new(SystemClock))
}

fn doc() -> ApplicationDeployment {
    ApplicationDeployment::parse(yaml(
        "dep-x",
        "app-x",
        &[("web", "replicas: 2"), ("db", "")],
    ))
    .expect("doc")
}

#[tokio::test]
async fn success_passes_action_and_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("record.txt");
    let program = script(
        dir.path(),
        "ok.sh",
        &format!(
            r#"{{
echo "action=$1"
echo "id=$MARGO_DEPLOYMENT_ID"
echo "name=$MARGO_DEPLOYMENT_NAME"
echo "file=$MARGO_DEPLOYMENT_FILE"
echo "component=$MARGO_COMPONENT"
echo "profile=$MARGO_PROFILE_TYPE"
echo "parameters=$MARGO_PARAMETERS"
echo "properties=$MARGO_COMPONENT_PROPERTIES"
echo "digest=$MARGO_DEPLOYMENT_DIGEST"
}} >> "{}"
echo "some output"
"#,
            record.display()
        ),
    );
    let rt = runtime(program, dir.path(), Duration::from_secs(10));
    let d = doc();
    rt.apply(&d, &d.components[0], ApplyKind::Install)
        .await
        .expect("install");
    let text = std::fs::read_to_string(&record).expect("record");
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing in {text}"))
            .to_string()
    };
    assert_eq!(line("action"), "install");
    assert_eq!(line("id"), "dep-x");
    assert_eq!(line("name"), "app-x");
    assert_eq!(line("component"), "web");
    assert_eq!(line("profile"), "compose");
    assert_eq!(line("digest"), d.digest().to_string());
    let parameters: serde_json::Value = serde_json::from_str(&line("parameters")).expect("json");
    assert_eq!(parameters, serde_json::json!({"app.greeting": "hello"}));
    let properties: serde_json::Value = serde_json::from_str(&line("properties")).expect("json");
    assert_eq!(properties["replicas"], 2);
    let file = PathBuf::from(line("file"));
    assert_eq!(file, dir.path().join("deployments/dep-x.yaml"));
    assert_eq!(
        std::fs::read(&file).expect("deployment file"),
        d.bytes(),
        "exact bytes"
    );

    // Parameters target only their component; actions are named.
    std::fs::remove_file(&record).expect("reset");
    rt.apply(&d, &d.components[1], ApplyKind::Update)
        .await
        .expect("update");
    rt.remove(&d, &d.components[1]).await.expect("remove");
    let text = std::fs::read_to_string(&record).expect("record");
    let actions: Vec<_> = text
        .lines()
        .filter_map(|l| l.strip_prefix("action="))
        .collect();
    assert_eq!(actions, ["update", "remove"]);
    assert!(text.contains("parameters={}"), "{text}");
}

#[tokio::test]
async fn non_zero_exit_fails_with_code_and_stderr_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = script(
        dir.path(),
        "fail.sh",
        "i=0; while [ $i -lt 300 ]; do echo \"noise line $i\" >&2; i=$((i+1)); done\necho 'helm: chart not found' >&2\nexit 3",
    );
    let rt = runtime(program, dir.path(), Duration::from_secs(10));
    let d = doc();
    let err = rt
        .apply(&d, &d.components[0], ApplyKind::Install)
        .await
        .expect_err("fails");
    match &err {
        RuntimeError::Exit { code, stderr, .. } => {
            assert!(code.contains('3'), "{code}");
            assert!(stderr.ends_with("helm: chart not found"), "{stderr}");
            assert!(
                stderr.len() <= 2048,
                "stderr tail is bounded: {}",
                stderr.len()
            );
        }
        other => panic!("expected an exit error, got {other:?}"),
    }
    assert_eq!(err.code(), "RUNTIME_EXIT");
}

#[tokio::test]
async fn hanging_program_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = script(dir.path(), "hang.sh", "exec sleep 30");
    let rt = runtime(program, dir.path(), Duration::from_millis(300));
    let d = doc();
    let started = Instant::now();
    let err = rt
        .apply(&d, &d.components[0], ApplyKind::Install)
        .await
        .expect_err("times out");
    assert!(matches!(err, RuntimeError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "killed promptly"
    );
}

#[tokio::test]
async fn missing_program_and_unsupported_profile_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(dir.path().join("nope"), dir.path(), Duration::from_secs(1));
    let d = doc();
    let err = rt
        .apply(&d, &d.components[0], ApplyKind::Install)
        .await
        .expect_err("no program");
    assert!(matches!(err, RuntimeError::Spawn { .. }), "{err:?}");

    let config = ExecConfig {
        program: PathBuf::from("/bin/true"),
        profiles: vec!["helm.v3".into()],
        ..ExecConfig::default()
    };
    let rt = ExecRuntime::new(&config, dir.path().to_path_buf(), Arc::new(SystemClock));
    let err = rt
        .apply(&d, &d.components[0], ApplyKind::Install)
        .await
        .expect_err("compose unsupported");
    assert!(matches!(err, RuntimeError::Unsupported { .. }), "{err:?}");
}
