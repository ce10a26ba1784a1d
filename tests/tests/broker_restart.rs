//! The broker is an optimisation, not the store: `margo-broker` (embedded
//! rumqttd + device gateway) is killed with SIGKILL while it holds a queue for
//! an offline device and restarted with every session, queue and retained
//! message gone; the manager republishes from redb and the agents converge,
//! including on a version deployed while the broker was down, and every
//! status seq is stored exactly once.

use std::time::Duration;

use anyhow::Result;
use margo_tests::fleet::{
    deployment_yaml, wait_all_acked, wait_converged, write_file, AgentProc, BrokerProc, ManagerProc,
};

const CONVERGE: Duration = Duration::from_secs(90);
const D1: &str = "11111111-1111-4111-8111-111111111111";
const D2: &str = "22222222-2222-4222-8222-222222222222";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let internal_port = margo_tests::free_port();
    // The manager starts first (it creates the PKI the broker uses) and keeps
    // retrying until the broker is there.
    let manager = ManagerProc::start(
        dir.path(),
        &BrokerProc::manager_section(dir.path(), internal_port)?,
    )?;
    let mut broker =
        BrokerProc::start_on(dir.path(), &manager.data_dir.join("pki"), internal_port)?;
    let url = format!("mqtts://localhost:{}", broker.gateway_port);
    let names = ["site-a", "site-b"];
    let mut agents = Vec::new();
    for n in names {
        let bundle = manager.provision(n, &dir.path().join(format!("{n}-id")), Some(&url))?;
        agents.push(AgentProc::start(dir.path(), n, &bundle, "")?);
    }
    let files = dir.path().join("yaml");
    let a = write_file(&files, "a.yaml", &deployment_yaml(D1, "alpha", &["web"], 1))?;
    for n in names {
        manager.ctl(&["deploy", n, &a])?;
    }
    wait_converged(&manager, &names, 2, &[(D1, "installed")], CONVERGE).await?;

    // site-b goes away; v2 is queued for it in its broker session.
    assert!(agents[1].stop(), "site-b stops cleanly");
    let a2 = write_file(
        &files,
        "a2.yaml",
        &deployment_yaml(D1, "alpha", &["web"], 2),
    )?;
    for n in names {
        manager.ctl(&["deploy", n, &a2])?;
    }
    wait_converged(&manager, &["site-a"], 3, &[(D1, "installed")], CONVERGE).await?;

    // Kill the broker with that queue, deploy while it is down, bring it back empty.
    broker.kill();
    let b = write_file(
        &files,
        "b.yaml",
        &deployment_yaml(D2, "beta", &["sensor"], 1),
    )?;
    for n in names {
        manager.ctl(&["deploy", n, &b])?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.restart()?;
    agents[1].restart()?;
    wait_converged(
        &manager,
        &names,
        4,
        &[(D1, "installed"), (D2, "installed")],
        CONVERGE,
    )
    .await?;

    // And the link keeps working: a later change still flows.
    for n in names {
        manager.ctl(&["undeploy", n, D1])?;
    }
    wait_converged(
        &manager,
        &names,
        5,
        &[(D1, "removed"), (D2, "installed")],
        CONVERGE,
    )
    .await?;
    for n in names {
        wait_all_acked(&manager, n, CONVERGE).await?;
    }
    drop(agents);
    Ok(())
}
