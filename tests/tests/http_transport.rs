//! One manager, two agents side by side: one over MQTT (device gateway,
//! mutual TLS), one over the Margo HTTP API (`transport = "http"`). The real
//! `margo-manager`, `margoctl` and `margo-agent` binaries, real TLS, redb in
//! a temp dir. Both go through deploy → update → undeploy and must end with
//! the same accepted manifest (version and transport-neutral digest) and the
//! same deployment digests; the status of both shows in `margoctl status`.
//!
//! Convergence is judged on the statuses each agent reported for the
//! version (`applyingVersion` and each deployment's state): an HTTP agent
//! sends no `state` report (it has no HTTP form), so the manager shows no
//! `adoptedVersion` for it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use margo_tests::eventually;
use margo_tests::fleet::{
    client_status, deployment_yaml, onboarding_toml, version_and_states_hold, write_file,
    AgentProc, ManagerProc, SCENARIO_D1, SCENARIO_D2, START,
};

const CONVERGE: Duration = Duration::from_secs(60);
const NAMES: [&str; 2] = ["press-mqtt", "press-http"];

/// Whether `client` reported statuses for `version` and every `(id, state)`
/// holds (an HTTP agent sends no state reports, so no `adoptedVersion`).
fn reported(
    status: &serde_json::Value,
    client: &str,
    version: u64,
    expect: &[(&str, &str)],
) -> bool {
    version_and_states_hold(status, client, "applyingVersion", version, expect)
}

async fn wait_reported(manager: &ManagerProc, version: u64, expect: &[(&str, &str)]) -> Result<()> {
    eventually(
        CONVERGE,
        &format!("{NAMES:?} reported v{version} with {expect:?}"),
        || async {
            let status = manager.status()?;
            Ok(NAMES
                .iter()
                .all(|n| reported(&status, n, version, expect))
                .then_some(()))
        },
    )
    .await
    .map_err(|e| {
        let last = manager.status().map(|s| s.to_string()).unwrap_or_default();
        e.context(format!("last status: {last}"))
    })
}

fn start_agents(dir: &Path, manager: &ManagerProc) -> Result<Vec<AgentProc>> {
    let gateway = format!(
        "mqtts://localhost:{}",
        manager.gateway.context("embedded gateway")?.port()
    );
    let https = manager.https_url()?;
    let mqtt_bundle = manager.provision(NAMES[0], &dir.join("mqtt-identity"), Some(&gateway))?;
    let http_bundle = manager.provision(NAMES[1], &dir.join("http-identity"), Some(&gateway))?;
    let mqtt = AgentProc::start(dir, NAMES[0], &mqtt_bundle, "")?;
    let http = AgentProc::start(
        dir,
        NAMES[1],
        &http_bundle,
        &format!(
            "transport = \"http\"\n[http]\nmanager_url = {https:?}\npoll_rate = \"1s\"\napi = \"1.0.0-rc.2\"\n"
        ),
    )?;
    Ok(vec![mqtt, http])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_agent_and_an_mqtt_agent_converge_side_by_side() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start(dir.path(), "")?;
    let mut agents = start_agents(dir.path(), &manager)?;
    let files = dir.path().join("yaml");
    let (d1, d2) = (SCENARIO_D1, SCENARIO_D2);

    let a1 = write_file(
        &files,
        "a1.yaml",
        &deployment_yaml(d1, "alpha", &["web", "db"], 1),
    )?;
    let b1 = write_file(
        &files,
        "b1.yaml",
        &deployment_yaml(d2, "beta", &["sensor"], 1),
    )?;
    for n in NAMES {
        manager.ctl(&["deploy", n, &a1, &b1])?;
    }
    let both = [(d1, "installed"), (d2, "installed")];
    wait_reported(&manager, 2, &both).await?;

    let a2 = write_file(
        &files,
        "a2.yaml",
        &deployment_yaml(d1, "alpha", &["web", "db"], 2),
    )?;
    for n in NAMES {
        manager.ctl(&["deploy", n, &a2])?;
    }
    wait_reported(&manager, 3, &both).await?;

    for n in NAMES {
        manager.ctl(&["undeploy", n, d2])?;
    }
    wait_reported(&manager, 4, &[(d1, "installed"), (d2, "removed")]).await?;

    // Both clients' statuses show in margoctl status, with the same digests.
    let status = manager.status()?;
    let digests: Vec<Vec<(String, String)>> = NAMES
        .iter()
        .map(|n| {
            let c = client_status(&status, n).expect("client in status");
            assert_eq!(c["desiredVersion"], 4, "{c:#}");
            c["deployments"]
                .as_array()
                .expect("deployments")
                .iter()
                .filter(|d| d["desiredDigest"].is_string())
                .map(|d| {
                    (
                        d["deploymentId"].as_str().unwrap_or("").to_string(),
                        d["desiredDigest"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .collect();
    assert_eq!(digests[0], digests[1], "{status:#}");
    assert_eq!(digests[0].len(), 1, "{status:#}");
    let table = manager.ctl(&["status"])?;
    for n in NAMES {
        assert!(table.contains(n), "status table lacks {n}:\n{table}");
    }
    // The HTTP agent's capabilities arrived over HTTP too.
    let details = manager.client_details(NAMES[1])?;
    assert!(
        details["capabilities"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "no capabilities for the HTTP agent: {details:#}"
    );

    // Stopped, both stores hold the same accepted manifest: version 4 and
    // the same transport-neutral digest, so they adopted the same content.
    let mut accepted = Vec::new();
    for agent in &mut agents {
        assert!(agent.stop(), "{} did not stop in time", agent.name);
        let store = margo_agent::Store::open(&agent.data_dir.join("agent.redb"))
            .with_context(|| format!("open {}'s store", agent.name))?;
        let m = store
            .accepted_manifest()?
            .with_context(|| format!("{} has no accepted manifest", agent.name))?;
        accepted.push((m.version(), m.digest, m.manifest.deployments.clone()));
    }
    assert_eq!(accepted[0].0, 4);
    assert_eq!(accepted[0], accepted[1], "MQTT and HTTP agents differ");
    let log = agents[1].log_text();
    assert!(
        !log.contains("security event"),
        "the HTTP agent logged a security event:\n{log}"
    );
    Ok(())
}

/// The agent in its default HTTP mode (`[http]` without `api`: rc.3, mutual
/// TLS with the certificate issued at onboarding, paths without
/// `{clientId}`, no signature headers) against our manager: it onboards,
/// its capabilities arrive, a deployment is applied and its status reaches
/// the manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_agent_in_its_default_mode_onboards_and_converges() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start_for_onboarding(dir.path(), "")?;
    let token = manager.create_token(1, "1h")?;
    let name = "press-rc3";
    let extra = format!(
        "transport = \"http\"\n[http]\npoll_rate = \"1s\"\n{}",
        onboarding_toml(
            &manager.https_url()?,
            &manager.ca_fingerprint()?,
            Some(name),
            Some(&token),
        )
    );
    assert!(!extra.contains("api ="), "the default mode names no api");
    let mut agent = AgentProc::start_onboarding(dir.path(), name, &extra)?;
    agent.wait_ready(START)?;

    // Capabilities arrived over HTTP.
    eventually(CONVERGE, "capabilities of the rc.3 agent", || async {
        let details = manager.client_details(name)?;
        Ok(details["capabilities"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
            .then_some(()))
    })
    .await?;

    let files = dir.path().join("yaml");
    let d1 = SCENARIO_D1;
    let a1 = write_file(
        &files,
        "a1.yaml",
        &deployment_yaml(d1, "alpha", &["web", "db"], 1),
    )?;
    manager.ctl(&["deploy", name, &a1])?;
    eventually(CONVERGE, "the rc.3 agent reported d1 installed", || async {
        let status = manager.status()?;
        Ok(
            version_and_states_hold(&status, name, "applyingVersion", 2, &[(d1, "installed")])
                .then_some(()),
        )
    })
    .await
    .map_err(|e| {
        let last = manager.status().map(|s| s.to_string()).unwrap_or_default();
        e.context(format!("last status: {last}"))
    })?;

    // The reports came through the rc.3 routes (their handlers are the
    // `rc3_*` spans), not the `{clientId}` ones.
    let log = manager.log_text();
    for (route, what) in [
        ("rc3_put_capabilities", "capabilities stored (HTTP)"),
        ("rc3_status", "deployment status stored (HTTP)"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(route) && l.contains(what)),
            "no {what:?} under {route} in the manager log:\n{log}"
        );
    }

    assert!(agent.stop(), "{name} did not stop in time");
    let store = margo_agent::Store::open(&agent.data_dir.join("agent.redb"))?;
    let m = store.accepted_manifest()?.context("no accepted manifest")?;
    assert_eq!(m.version(), 2);
    let log = agent.log_text();
    assert!(
        !log.contains("security event"),
        "the agent logged a security event:\n{log}"
    );
    Ok(())
}
