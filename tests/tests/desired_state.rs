//! The desired-state loop end to end on the embedded broker: the real
//! `margo-manager`, `margoctl` and `margo-agent` binaries, mutual TLS through
//! the device gateway, redb files in a temp dir.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use margo_tests::fleet::{deployment_yaml, wait_converged, write_file, AgentProc, ManagerProc};

const CONVERGE: Duration = Duration::from_secs(60);

const D1: &str = "11111111-1111-4111-8111-111111111111";
const D2: &str = "22222222-2222-4222-8222-222222222222";

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
    let files = dir.path().join("yaml");

    // Deploy two deployments to every agent: version 1.
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

    // Update alpha: version 2.
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

    // Undeploy beta: version 3, beta removed.
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

    // The human-readable status agrees.
    let table = manager.ctl(&["status"])?;
    for n in names {
        assert!(table.contains(n), "status table lacks {n}:\n{table}");
    }
    Ok(())
}
