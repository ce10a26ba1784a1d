//! Nothing lost, nothing applied twice: agents that are away, agents and
//! managers killed with SIGKILL at awkward moments. Real binaries, real redb
//! files, the embedded broker behind the device gateway.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use margo_tests::eventually;
use margo_tests::fleet::{
    deployment_yaml, wait_converged, write_file, AgentProc, ManagerProc, RecordingRuntime,
};

const CONVERGE: Duration = Duration::from_secs(60);
const D1: &str = "11111111-1111-4111-8111-111111111111";
const D2: &str = "22222222-2222-4222-8222-222222222222";

fn provision(dir: &Path, manager: &ManagerProc, name: &str, extra: &str) -> Result<AgentProc> {
    let url = format!(
        "mqtts://localhost:{}",
        manager.gateway.expect("embedded gateway").port()
    );
    let bundle = manager.provision(name, &dir.join(format!("{name}-identity")), Some(&url))?;
    AgentProc::start(dir, name, &bundle, extra)
}

async fn wait_all_acked(manager: &ManagerProc, name: &str) -> Result<u64> {
    margo_tests::fleet::wait_all_acked(manager, name, CONVERGE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_away_while_two_versions_are_deployed_converges_to_the_latest() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start(dir.path(), "")?;
    let mut agent = provision(dir.path(), &manager, "field-1", "")?;
    let files = dir.path().join("yaml");

    let v1 = write_file(
        &files,
        "a1.yaml",
        &deployment_yaml(D1, "alpha", &["web"], 1),
    )?;
    manager.ctl(&["deploy", "field-1", &v1])?;
    wait_converged(&manager, &["field-1"], 2, &[(D1, "installed")], CONVERGE).await?;
    let before = wait_all_acked(&manager, "field-1").await?;

    // The device goes away; two versions are deployed meanwhile.
    assert!(agent.stop(), "agent did not stop cleanly on SIGTERM");
    let v2 = write_file(
        &files,
        "a2.yaml",
        &deployment_yaml(D1, "alpha", &["web"], 2),
    )?;
    manager.ctl(&["deploy", "field-1", &v2])?;
    let b = write_file(
        &files,
        "b.yaml",
        &deployment_yaml(D2, "beta", &["sensor", "relay"], 1),
    )?;
    manager.ctl(&["deploy", "field-1", &b])?;

    agent.restart()?;
    wait_converged(
        &manager,
        &["field-1"],
        4,
        &[(D1, "installed"), (D2, "installed")],
        CONVERGE,
    )
    .await?;
    let after = wait_all_acked(&manager, "field-1").await?;
    assert!(after > before, "no new uplink after the agent came back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_apply_redoes_only_the_unfinished_work() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start(dir.path(), "")?;
    let runtime = RecordingRuntime::create(&dir.path().join("runtime"), &[D2])?;
    let mut agent = provision(dir.path(), &manager, "cell-1", &runtime.agent_toml())?;
    let files = dir.path().join("yaml");

    // D1 is installed completely first.
    let a = write_file(
        &files,
        "a.yaml",
        &deployment_yaml(D1, "alpha", &["web", "db"], 1),
    )?;
    manager.ctl(&["deploy", "cell-1", &a])?;
    wait_converged(&manager, &["cell-1"], 2, &[(D1, "installed")], CONVERGE).await?;

    // D2's runtime program blocks at the gate; the agent is killed meanwhile.
    let b = write_file(
        &files,
        "b.yaml",
        &deployment_yaml(D2, "beta", &["sensor"], 1),
    )?;
    manager.ctl(&["deploy", "cell-1", &b])?;
    eventually(CONVERGE, "the runtime to start installing D2", || async {
        Ok((runtime.count(&format!("start install {D2} sensor")) == 1).then_some(()))
    })
    .await?;
    agent.kill();
    runtime.kill_running();
    runtime.open_gate()?;
    agent.restart()?;

    wait_converged(
        &manager,
        &["cell-1"],
        3,
        &[(D1, "installed"), (D2, "installed")],
        CONVERGE,
    )
    .await?;
    // Finished work was not redone; the interrupted install ran again to completion once.
    for comp in ["web", "db"] {
        assert_eq!(
            runtime.count(&format!("done install {D1} {comp}")),
            1,
            "{comp} of D1 applied again:\n{:#?}",
            runtime.lines()
        );
        assert_eq!(
            runtime.count(&format!("start install {D1} {comp}")),
            1,
            "{comp} of D1 restarted:\n{:#?}",
            runtime.lines()
        );
    }
    assert_eq!(
        runtime.count(&format!("done install {D2} sensor")),
        1,
        "{:#?}",
        runtime.lines()
    );
    wait_all_acked(&manager, "cell-1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_killed_between_deploy_and_ack_loses_nothing() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let mut manager = ManagerProc::start(dir.path(), "")?;
    let runtime = RecordingRuntime::create(&dir.path().join("runtime"), &[D1])?;
    let _agent = provision(dir.path(), &manager, "cell-2", &runtime.agent_toml())?;
    let files = dir.path().join("yaml");

    // The deploy is committed and published; the device starts applying, and
    // the manager (with its embedded broker) dies before any status is acked.
    let a = write_file(
        &files,
        "a.yaml",
        &deployment_yaml(D1, "alpha", &["web", "db"], 1),
    )?;
    manager.ctl(&["deploy", "cell-2", &a])?;
    eventually(CONVERGE, "the runtime to start installing D1", || async {
        Ok((runtime.count(&format!("start install {D1} web")) == 1).then_some(()))
    })
    .await?;
    manager.kill();
    // The device finishes while the manager is down: its statuses wait in its outbox.
    runtime.open_gate()?;
    eventually(CONVERGE, "the runtime to finish D1", || async {
        Ok((runtime.count(&format!("done install {D1} db")) == 1).then_some(()))
    })
    .await?;

    manager.restart()?;
    wait_converged(&manager, &["cell-2"], 2, &[(D1, "installed")], CONVERGE).await?;
    wait_all_acked(&manager, "cell-2").await?;
    for comp in ["web", "db"] {
        assert_eq!(
            runtime.count(&format!("done install {D1} {comp}")),
            1,
            "{:#?}",
            runtime.lines()
        );
    }
    Ok(())
}
