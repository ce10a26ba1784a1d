//! A 48-hour planned downtime on a simulated clock: no connection attempt
//! and no byte at the proxy in front of the gateway, no warning or error
//! logged, the status produced meanwhile delivered afterwards, and twenty
//! versions deployed meanwhile collapse into one download of the last.
//!
//! In its own test binary: it captures this process's log output.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use margo_agent::schedule_plan::ms;
use margo_agent::ConnectionStatus;
use margo_tests::eventually;
use margo_tests::fleet::{
    deployment_yaml, wait_all_acked, wait_converged, write_file, ManagerProc,
};
use margo_tests::simagent::SimAgent;

const D1: &str = "11111111-1111-4111-8111-111111111111";
const IDLE: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(60);

/// Log lines at WARN and above, as written by the global subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut lines = self.0.lock().unwrap();
        lines.extend(text.lines().map(str::to_owned));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn at(rfc3339: &str) -> u64 {
    ms(rfc3339.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_days_of_downtime_mean_silence_then_one_download_of_the_latest() -> Result<()> {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start(dir.path(), "")?;
    let (down_start, down_end) = ("2026-03-02T01:00:00Z", "2026-03-04T01:00:00Z");
    let schedule = format!(
        "time_zone = \"UTC\"\n[[downtime]]\nkind = \"one-off\"\nstart = \"{down_start}\"\nend = \"{down_end}\"\n"
    );
    let mut agent = SimAgent::start(
        dir.path(),
        &manager,
        "remote-1",
        at("2026-03-02T00:00:00Z"),
        |c| {
            c.schedule = Some(toml::from_str(&schedule).unwrap());
            c.state_interval = Duration::from_secs(3600);
        },
    )
    .await?;
    let files = dir.path().join("yaml");
    let deploy = |revision: u32, slow: bool| -> Result<()> {
        let mut yaml = deployment_yaml(D1, "alpha", &["web"], revision);
        if slow {
            yaml = yaml.replace(
                "        properties:\n",
                "        properties:\n          simulatedDelayMs: 3000\n",
            );
        }
        let file = write_file(&files, &format!("a{revision}.yaml"), &yaml)?;
        manager.ctl(&["deploy", "remote-1", &file])?;
        Ok(())
    };

    // Before the downtime: connected (persistent, all day) and converged.
    deploy(1, false)?;
    wait_converged(&manager, &["remote-1"], 2, &[(D1, "installed")], CONVERGE).await?;
    // v2 takes 3 s to apply: accepted now, installed during the downtime.
    deploy(2, true)?;
    eventually(CONVERGE, "v2 accepted", || async {
        Ok((agent.handle.snapshots.borrow().accepted_manifest_version == 3).then_some(()))
    })
    .await?;

    // The downtime starts while connected: the agent leaves cleanly.
    agent.clock.set_unix_ms(at(down_start));
    assert_eq!(agent.next_contact(IDLE).await?, at(down_end));
    assert_eq!(
        agent.handle.snapshots.borrow().connection,
        ConnectionStatus::Downtime
    );
    // The clean disconnect's last bytes (TLS close, TCP FIN) may still be on
    // their way through the proxy: count from when they have settled.
    let bytes = agent.proxy.settled_bytes(Duration::from_millis(500)).await;
    let connections = agent.proxy.connections().len();
    let logged = captured.lines().len();

    // The apply finishes inside the downtime; its status waits in the outbox.
    eventually(CONVERGE, "v2 installed during the downtime", || async {
        let s = agent.handle.snapshots.borrow().clone();
        let installed = s
            .deployments
            .get(D1)
            .is_some_and(|d| d.state == margo_schemas::status::DeploymentState::Installed);
        Ok((installed && s.adopted_manifest_version == 3 && s.outbox_len > 0).then_some(()))
    })
    .await?;

    // Twenty versions are deployed over the two days.
    for (i, revision) in (3..=22).enumerate() {
        deploy(revision, false)?;
        let hours = 2 * (i as u64 + 1);
        agent
            .clock
            .set_unix_ms(at(down_start) + hours * 3_600_000 - 60_000);
        assert_eq!(agent.next_contact(IDLE).await?, at(down_end));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        agent.proxy.connections().len(),
        connections,
        "no connection attempt inside the downtime"
    );
    assert_eq!(agent.proxy.bytes(), bytes, "not a byte inside the downtime");
    let noise: Vec<_> = captured.lines().split_off(logged);
    assert!(
        noise.is_empty(),
        "nothing above debug logged inside the downtime: {noise:#?}"
    );
    assert!(agent.handle.snapshots.borrow().outbox_len > 0);
    assert_eq!(agent.handle.snapshots.borrow().accepted_manifest_version, 3);

    // The downtime ends: one connection, one download of the final content.
    let before = agent.handle.stats.snapshot();
    agent.clock.set_unix_ms(at(down_end));
    wait_converged(&manager, &["remote-1"], 23, &[(D1, "installed")], CONVERGE).await?;
    let after = agent.handle.stats.snapshot();
    assert_eq!(
        after.deployments_cached - before.deployments_cached,
        1,
        "only the final deployment document is downloaded"
    );
    assert_eq!(after.manifests_accepted - before.manifests_accepted, 1);
    assert_eq!(agent.proxy.connections().len(), connections + 1);

    // Everything produced during the downtime arrived, each seq exactly once.
    eventually(CONVERGE, "the agent's outbox drained", || async {
        Ok((agent.handle.snapshots.borrow().outbox_len == 0).then_some(()))
    })
    .await?;
    wait_all_acked(&manager, "remote-1", CONVERGE).await?;
    agent.stop().await
}
