//! The desired-state loop end to end on the embedded broker: the real
//! `margo-manager`, `margoctl` and `margo-agent` binaries, mutual TLS through
//! the device gateway, redb files in a temp dir.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use margo_tests::fleet::{
    client_status, deploy_update_undeploy, wait_converged, AgentProc, ManagerProc,
};

const CONVERGE: Duration = Duration::from_secs(60);

fn provision_agents(
    dir: &Path,
    manager: &ManagerProc,
    names: &[&str],
    extra: &str,
) -> Result<Vec<AgentProc>> {
    let url = format!(
        "mqtts://localhost:{}",
        manager.gateway.expect("embedded gateway").port()
    );
    names
        .iter()
        .map(|name| {
            let bundle =
                manager.provision(name, &dir.join(format!("{name}-identity")), Some(&url))?;
            AgentProc::start(dir, name, &bundle, extra)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_update_undeploy_on_three_agents() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start(dir.path(), "")?;
    let names = ["press-1", "press-2", "press-3"];
    let _agents = provision_agents(dir.path(), &manager, &names, "")?;

    // Fresh agents learn they are in sync: each adopts the zero-deployment
    // manifest (version 1, no deployments) the manager publishes on their
    // start-up sync, and reports it.
    wait_converged(&manager, &names, 1, &[], CONVERGE).await?;
    let status = manager.status()?;
    for n in names {
        let c = client_status(&status, n).with_context(|| format!("{n} in status"))?;
        assert_eq!(c["desiredVersion"], 1, "{c:#}");
        assert_eq!(c["adoptedVersion"], 1, "{c:#}");
        assert_eq!(c["deployments"], serde_json::json!([]), "{c:#}");
    }

    deploy_update_undeploy(&manager, &names, &dir.path().join("yaml"), CONVERGE).await?;

    // The human-readable status agrees.
    let table = manager.ctl(&["status"])?;
    for n in names {
        assert!(table.contains(n), "status table lacks {n}:\n{table}");
    }
    Ok(())
}
