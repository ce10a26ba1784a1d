//! The same deploy / update / undeploy loop with Mosquitto 2.x as the broker:
//! the manager and the agents connect over mutual TLS with their fleet
//! certificates, Mosquitto enforces the shipped pattern ACL.

use std::time::Duration;

use anyhow::Result;
use margo_testkit::mosquitto::{self, Mosquitto};
use margo_tests::fleet::{deploy_update_undeploy, AgentProc, ManagerProc};

const CONVERGE: Duration = Duration::from_secs(90);

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
    deploy_update_undeploy(&manager, &names, &dir.path().join("yaml"), CONVERGE).await?;
    drop(agents);
    Ok(())
}
