//! The desired-state loop end to end on the embedded broker: the real
//! `margo-manager`, `margoctl` and `margo-agent` binaries, mutual TLS through
//! the device gateway, redb files in a temp dir.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use margo_tests::fleet::{deploy_update_undeploy, AgentProc, ManagerProc};

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

    deploy_update_undeploy(&manager, &names, &dir.path().join("yaml"), CONVERGE).await?;

    // The human-readable status agrees.
    let table = manager.ctl(&["status"])?;
    for n in names {
        assert!(table.contains(n), "status table lacks {n}:\n{table}");
    }
    Ok(())
}
