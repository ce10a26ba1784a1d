//! The same deploy / update / undeploy loop with Mosquitto 2.x as the broker:
//! the manager and the agents connect over mutual TLS with their fleet
//! certificates, Mosquitto enforces the shipped pattern ACL.

use std::time::Duration;

use anyhow::Result;
use margo_tests::fleet::{deployment_yaml, wait_converged, write_file, AgentProc, ManagerProc};
use margo_tests::mosquitto::{self, Mosquitto};

const CONVERGE: Duration = Duration::from_secs(90);
const D1: &str = "11111111-1111-4111-8111-111111111111";
const D2: &str = "22222222-2222-4222-8222-222222222222";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_update_undeploy_through_mosquitto() -> Result<()> {
    margo_tests::init_tracing();
    if !mosquitto::available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let port = margo_tests::free_port();
    let url = format!("mqtts://localhost:{port}");
    // The manager creates the fleet PKI on start and retries until Mosquitto is up.
    let manager = ManagerProc::start(
        dir.path(),
        &format!("[broker]\nmode = \"external\"\nurl = \"{url}\"\n"),
    )?;
    let pki = manager.data_dir.join("pki");
    let _broker = Mosquitto::start_on(
        port,
        &dir.path().join("mosquitto"),
        &pki.join("ca.crt"),
        &pki.join("gateway.crt"),
        &pki.join("gateway.key"),
    )?;
    let names = ["mq-1", "mq-2", "mq-3"];
    let mut agents = Vec::new();
    for n in names {
        let bundle = manager.provision(n, &dir.path().join(format!("{n}-id")), Some(&url))?;
        agents.push(AgentProc::start(dir.path(), n, &bundle, "")?);
    }
    let files = dir.path().join("yaml");
    let a1 = write_file(
        &files,
        "a1.yaml",
        &deployment_yaml(D1, "alpha", &["web", "db"], 1),
    )?;
    let b1 = write_file(
        &files,
        "b1.yaml",
        &deployment_yaml(D2, "beta", &["sensor"], 1),
    )?;
    for n in names {
        manager.ctl(&["deploy", n, &a1, &b1])?;
    }
    wait_converged(
        &manager,
        &names,
        1,
        &[(D1, "installed"), (D2, "installed")],
        CONVERGE,
    )
    .await?;

    let a2 = write_file(
        &files,
        "a2.yaml",
        &deployment_yaml(D1, "alpha", &["web", "db"], 2),
    )?;
    for n in names {
        manager.ctl(&["deploy", n, &a2])?;
    }
    wait_converged(
        &manager,
        &names,
        2,
        &[(D1, "installed"), (D2, "installed")],
        CONVERGE,
    )
    .await?;

    for n in names {
        manager.ctl(&["undeploy", n, D2])?;
    }
    wait_converged(
        &manager,
        &names,
        3,
        &[(D1, "installed"), (D2, "removed")],
        CONVERGE,
    )
    .await?;
    drop(agents);
    Ok(())
}
