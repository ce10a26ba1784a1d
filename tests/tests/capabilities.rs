//! Capability reporting with the real binaries: what `margo-agent` reports
//! from its `[capabilities]` config, host and runtime adapter is what
//! `margoctl clients show` shows; an unchanged report is not sent again
//! across restarts, a changed one exactly once; a gateway's children are
//! stored next to it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use margo_manager::admin::AdminClient;
use margo_tests::eventually;
use margo_tests::fleet::{
    deployment_yaml, onboarding_toml, wait_converged, write_file, AgentProc, ManagerProc,
    RecordingRuntime, START,
};

const CONVERGE: Duration = Duration::from_secs(60);
const D1: &str = "11111111-1111-4111-8111-111111111111";
/// What the agent logs when it enqueues a report.
const REPORTED: &str = "capabilities changed; reported";

/// The architecture the agent reports when the config does not say (the build's).
fn build_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => panic!("no Margo name for {other}; this test needs amd64, arm64 or arm"),
    }
}

/// Waits until the manager stored and acknowledged everything `name` sent
/// (each seq exactly once).
async fn wait_all_acked(manager: &ManagerProc, name: &str) -> Result<()> {
    margo_tests::fleet::wait_all_acked(manager, name, CONVERGE)
        .await
        .map(|_| ())
}

/// How many `capabilities` messages the manager stored for `name`.
async fn capabilities_sent(manager: &ManagerProc, name: &str) -> Result<usize> {
    let uplink = AdminClient::new(&manager.socket)
        .uplink(name)
        .await
        .map_err(|e| anyhow::anyhow!("uplink of {name}: {e}"))?;
    Ok(uplink.iter().filter(|u| u.kind == "capabilities").count())
}

/// The stored capabilities of `device` (by device id) in `clients show CLIENT --json`.
fn stored(manager: &ManagerProc, client: &str, device: &str) -> Result<Option<serde_json::Value>> {
    let details = manager.client_details(client)?;
    Ok(details["capabilities"]
        .as_array()
        .and_then(|caps| caps.iter().find(|c| c["deviceId"] == device).cloned()))
}

async fn wait_stored(
    manager: &ManagerProc,
    client: &str,
    device: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    eventually(
        START,
        &format!("{client}'s capabilities of {device}: {what}"),
        || async { Ok(stored(manager, client, device)?.filter(|c| check(c))) },
    )
    .await
    .map_err(|e| {
        let last = manager
            .client_details(client)
            .map(|d| d["capabilities"].to_string())
            .unwrap_or_default();
        e.context(format!("last stored capabilities: {last}"))
    })
}

fn provision(dir: &Path, manager: &ManagerProc, name: &str, extra: &str) -> Result<AgentProc> {
    let url = format!(
        "mqtts://localhost:{}",
        manager.gateway.context("embedded gateway")?.port()
    );
    let bundle = manager.provision(name, &dir.join(format!("{name}-identity")), Some(&url))?;
    AgentProc::start(dir, name, &bundle, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_once_shown_and_sent_again_only_when_changed() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start(dir.path(), "")?;
    // A runtime that can only do compose: that is what the device must advertise.
    let runtime = RecordingRuntime::create(&dir.path().join("runtime"), &[])?;
    let extra = format!(
        "{}profiles = [\"compose\"]\n\
         [capabilities]\nvendor = \"Acme\"\nmodel_number = \"E1\"\nserial_number = \"SN-1\"\n\
         memory = \"2Gi\"\ndetect_interfaces = false\ninterfaces = [\"rs232\"]\n",
        runtime.agent_toml()
    );
    let mut agent = provision(dir.path(), &manager, "cell-7", &extra)?;

    let entry = wait_stored(&manager, "cell-7", "cell-7", "reported", |_| true).await?;
    let p = &entry["manifest"]["properties"];
    assert_eq!(p["vendor"], "Acme", "{entry:#}");
    assert_eq!(p["modelNumber"], "E1", "{entry:#}");
    assert_eq!(p["serialNumber"], "SN-1", "{entry:#}");
    assert_eq!(p["memory"], "2Gi", "{entry:#}");
    assert_eq!(
        p["cpus"][0]["architecture"],
        build_architecture(),
        "{entry:#}"
    );
    let cores = std::thread::available_parallelism()?.get() as f64;
    assert_eq!(p["cpus"][0]["cores"].as_f64(), Some(cores), "{entry:#}");
    assert_eq!(
        p["supportedDeploymentTypes"],
        serde_json::json!(["compose"]),
        "{entry:#}"
    );
    assert_eq!(
        p["supportedRuntimes"],
        serde_json::json!(["oci"]),
        "{entry:#}"
    );
    assert_eq!(
        p["interfaces"],
        serde_json::json!([{"type": "rs232"}]),
        "{entry:#}"
    );
    // The newest shape (rc.3) by default: no apiVersion/kind.
    assert!(entry["manifest"].get("kind").is_none(), "{entry:#}");
    assert_eq!(entry["normalized"]["shape"], "1.0.0-rc.3", "{entry:#}");
    assert_eq!(entry["normalized"]["memoryBytes"], 2u64 << 30, "{entry:#}");
    assert_eq!(entry["historyLen"], 1, "{entry:#}");
    let first_seq = entry["seq"].as_u64().context("seq")?;
    // The human view shows the same.
    let shown = manager.ctl(&["clients", "show", "cell-7"])?;
    assert!(
        shown.contains("capabilities cell-7: Acme E1 serial SN-1") && shown.contains("memory 2Gi"),
        "clients show:\n{shown}"
    );

    // What it advertises is what it runs.
    let files = dir.path().join("yaml");
    let v1 = write_file(
        &files,
        "v1.yaml",
        &deployment_yaml(D1, "alpha", &["web"], 1),
    )?;
    manager.ctl(&["deploy", "cell-7", &v1])?;
    wait_converged(&manager, &["cell-7"], 2, &[(D1, "installed")], CONVERGE).await?;
    wait_all_acked(&manager, "cell-7").await?;
    assert_eq!(capabilities_sent(&manager, "cell-7").await?, 1);

    // Restarted with the same config: nothing to report. A deploy after the
    // restart, converged and all acked, would be behind any report enqueued at start.
    agent.restart()?;
    let v2 = write_file(
        &files,
        "v2.yaml",
        &deployment_yaml(D1, "alpha", &["web"], 2),
    )?;
    manager.ctl(&["deploy", "cell-7", &v2])?;
    wait_converged(&manager, &["cell-7"], 3, &[(D1, "installed")], CONVERGE).await?;
    wait_all_acked(&manager, "cell-7").await?;
    assert_eq!(
        capabilities_sent(&manager, "cell-7").await?,
        1,
        "unchanged capabilities sent again after a restart"
    );
    assert!(
        !agent.log_text().contains(REPORTED),
        "the restarted agent reported unchanged capabilities:\n{}",
        agent.log_text()
    );
    let entry = stored(&manager, "cell-7", "cell-7")?.context("stored")?;
    assert_eq!(entry["seq"].as_u64(), Some(first_seq), "{entry:#}");
    assert_eq!(entry["historyLen"], 1, "{entry:#}");

    // A new serial number and more memory delegated: sent once, shown.
    agent.kill();
    agent.edit_config(|c| {
        c.replace("serial_number = \"SN-1\"", "serial_number = \"SN-2\"")
            .replace("memory = \"2Gi\"", "memory = \"4Gi\"")
    })?;
    agent.restart()?;
    let entry = wait_stored(
        &manager,
        "cell-7",
        "cell-7",
        "serial SN-2, memory 4Gi",
        |c| {
            let p = &c["manifest"]["properties"];
            p["serialNumber"] == "SN-2" && p["memory"] == "4Gi"
        },
    )
    .await?;
    assert_eq!(entry["historyLen"], 2, "{entry:#}");
    let v3 = write_file(
        &files,
        "v3.yaml",
        &deployment_yaml(D1, "alpha", &["web"], 3),
    )?;
    manager.ctl(&["deploy", "cell-7", &v3])?;
    wait_converged(&manager, &["cell-7"], 4, &[(D1, "installed")], CONVERGE).await?;
    wait_all_acked(&manager, "cell-7").await?;
    assert_eq!(
        capabilities_sent(&manager, "cell-7").await?,
        2,
        "the changed capabilities were not sent exactly once more"
    );
    let log = agent.log_text();
    assert_eq!(
        log.lines().filter(|l| l.contains(REPORTED)).count(),
        1,
        "the changed capabilities were not reported exactly once:\n{log}"
    );
    let shown = manager.ctl(&["clients", "show", "cell-7"])?;
    assert!(
        shown.contains("serial SN-2") && shown.contains("memory 4Gi"),
        "clients show:\n{shown}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarded_gateway_reports_itself_and_its_children() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start_for_onboarding(dir.path(), "")?;
    let token = manager.create_token(1, "1h")?;
    let extra = format!(
        "{}\
         [capabilities]\ndevice_id = \"gw-1\"\nvendor = \"Acme\"\nmodel_number = \"G1\"\n\
         serial_number = \"GW-0001\"\n\
         [[capabilities.children]]\nid = \"gw-1/plc-1\"\nvendor = \"Siemens\"\n\
         model_number = \"S7-1500\"\nserial_number = \"S C-X4U\"\ninterfaces = [\"canbus\"]\n",
        onboarding_toml(
            &manager.https_url()?,
            &manager.ca_fingerprint()?,
            Some("line-3-gw"),
            Some(&token),
        )
    );
    let mut agent = AgentProc::start_onboarding(dir.path(), "line-3-gw", &extra)?;
    agent.wait_ready(START)?;

    // The onboarding request carried the gateway's claims.
    let requests = manager.onboarding_requests()?;
    let request = requests
        .iter()
        .find(|r| r["name"] == "line-3-gw")
        .context("line-3-gw's onboarding request")?;
    assert_eq!(request["serialNumber"], "GW-0001", "{request:#}");

    let parent = wait_stored(&manager, "line-3-gw", "gw-1", "reported", |_| true).await?;
    let child = wait_stored(&manager, "line-3-gw", "gw-1/plc-1", "reported", |_| true).await?;
    let pp = &parent["manifest"]["properties"];
    assert_eq!(pp["vendor"], "Acme", "{parent:#}");
    assert_eq!(pp["serialNumber"], "GW-0001", "{parent:#}");
    // The simulated runtime does both profiles.
    assert_eq!(
        pp["supportedDeploymentTypes"],
        serde_json::json!(["helm", "compose"]),
        "{parent:#}"
    );
    let cp = &child["manifest"]["properties"];
    assert_eq!(cp["vendor"], "Siemens", "{child:#}");
    assert_eq!(cp["modelNumber"], "S7-1500", "{child:#}");
    assert_eq!(cp["serialNumber"], "S C-X4U", "{child:#}");
    assert_eq!(
        cp["interfaces"],
        serde_json::json!([{"type": "canbus"}]),
        "{child:#}"
    );
    assert!(
        child["seq"].as_u64() > parent["seq"].as_u64(),
        "the child was not reported after its gateway: parent {parent:#}, child {child:#}"
    );

    wait_all_acked(&manager, "line-3-gw").await?;
    assert_eq!(
        capabilities_sent(&manager, "line-3-gw").await?,
        2,
        "expected one report for the gateway and one for its child"
    );
    let health = AdminClient::new(&manager.socket)
        .health()
        .await
        .map_err(|e| anyhow::anyhow!("health: {e}"))?;
    for counter in ["childBeforeParent", "invalidCapabilities"] {
        assert_eq!(
            health.ingest.get(counter).copied().unwrap_or(0),
            0,
            "{counter}: {:?}",
            health.ingest
        );
    }
    let shown = manager.ctl(&["clients", "show", "line-3-gw"])?;
    assert!(
        shown.contains("capabilities gw-1: Acme G1")
            && shown.contains("capabilities gw-1/plc-1: Siemens S7-1500"),
        "clients show:\n{shown}"
    );
    Ok(())
}
