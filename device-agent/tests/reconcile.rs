//! Reconcile against the simulated runtime with a real redb store in a temp dir.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use margo_agent::identity::Identity;
use margo_agent::reconcile::PassOutcome;
use margo_agent::store::Action;
use margo_agent::sync::DesiredStateSync;
use margo_agent::{AgentParts, Store};
use margo_schemas::digest::Digest;
use margo_schemas::messages::Message;
use margo_schemas::status::DeploymentState;
use margo_testkit::eventually;
use tokio_util::sync::CancellationToken;

const CLIENT: &str = "dev7";

struct World {
    fleet: Fleet,
    identity: Identity,
    runtime: Sim,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl World {
    fn new() -> Self {
        let fleet = Fleet::new();
        let identity = fleet.identity(CLIENT, "mqtts://localhost:8883");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.redb");
        Self {
            fleet,
            identity,
            runtime: sim(),
            _dir: dir,
            path,
        }
    }

    /// A fresh agent (as after a restart) on the same file and runtime.
    fn start(
        &self,
        tweak: impl FnOnce(&mut margo_agent::AgentConfig),
    ) -> (margo_agent::Agent, AgentParts) {
        let store = Store::open(&self.path).expect("store");
        let agent = agent(
            self.identity.clone(),
            store,
            Arc::clone(&self.runtime),
            tweak,
        );
        let parts = agent.parts().expect("parts");
        (agent, parts)
    }

    /// Feeds documents and a manifest into the downlink handler.
    fn deliver(&self, downlink: &mut DesiredStateSync, version: u64, docs: &[&[u8]]) {
        let client = &self.identity.client_id;
        for d in docs {
            let (t, p) = deployment_msg(&self.fleet.signer, client, d);
            downlink.handle_publish(&t, &p).expect("deployment");
        }
        let (t, p) = manifest_msg(&self.fleet.signer, client, &manifest(version, docs));
        downlink.handle_publish(&t, &p).expect("manifest");
    }

    async fn pass(&self, parts: &AgentParts) -> PassOutcome {
        let target = parts
            .store
            .accepted_manifest()
            .expect("read")
            .expect("accepted");
        parts
            .reconcile
            .pass(&target, &|| false)
            .await
            .expect("pass")
    }

    /// (deployment, state) of every status in the outbox, in order.
    fn statuses(&self, parts: &AgentParts) -> Vec<(String, DeploymentState)> {
        pending_messages(&parts.uplink, &self.identity)
            .into_iter()
            .filter_map(|(_, m)| match m {
                Message::Status(s) => {
                    Some((s.status.deployment_id.to_string(), s.status.status.state))
                }
                _ => None,
            })
            .collect()
    }

    fn clear_outbox(&self, parts: &AgentParts) {
        let next = parts.uplink.lock().next_seq();
        parts.uplink.ack(next - 1, None).expect("ack");
    }
}

fn st(id: &str, s: DeploymentState) -> (String, DeploymentState) {
    (id.to_string(), s)
}

#[tokio::test]
async fn install_update_remove_and_unchanged() {
    use DeploymentState::*;
    let w = World::new();
    let (_agent, mut parts) = w.start(|_| {});
    let a1 = yaml("dep-a", "app-a", &[("web", ""), ("worker", "")]);
    let b1 = yaml("dep-b", "app-b", &[("db", "")]);

    w.deliver(&mut parts.downlink, 1, &[&a1, &b1]);
    assert_eq!(w.pass(&parts).await, PassOutcome::Adopted(1));
    assert_eq!(
        w.statuses(&parts),
        vec![
            st("dep-a", Installing),
            st("dep-a", Installed),
            st("dep-b", Installing),
            st("dep-b", Installed)
        ]
    );
    let state_reports = pending_messages(&parts.uplink, &w.identity)
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::State(s) if s.adopted_manifest_version == 1))
        .count();
    assert_eq!(state_reports, 1, "a state report follows the reconcile");
    assert_eq!(parts.store.adopted_version().expect("read"), 1);
    assert_eq!(w.runtime.running().len(), 3);
    w.clear_outbox(&parts);

    // v2: a changes, b unchanged, c new.
    let a2 = yaml("dep-a", "app-a", &[("web", "image: v2")]);
    let c1 = yaml("dep-c", "app-c", &[("cache", "")]);
    w.deliver(&mut parts.downlink, 2, &[&a2, &b1, &c1]);
    assert_eq!(w.pass(&parts).await, PassOutcome::Adopted(2));
    assert_eq!(
        w.statuses(&parts),
        vec![
            st("dep-a", Installing),
            st("dep-a", Installed),
            st("dep-c", Installing),
            st("dep-c", Installed)
        ]
    );
    assert_eq!(
        w.runtime.apply_count("dep-b", "db"),
        1,
        "unchanged deployment not touched"
    );
    assert_eq!(w.runtime.apply_count("dep-a", "web"), 2);
    assert_eq!(
        w.runtime.remove_count("dep-a", "worker"),
        1,
        "component dropped by the update removed"
    );
    let applied = parts.store.applied().expect("read");
    assert_eq!(applied[&dep("dep-a")].running, Some(Digest::of(&a2)));
    w.clear_outbox(&parts);

    // v3: b removed.
    w.deliver(&mut parts.downlink, 3, &[&a2, &c1]);
    assert_eq!(w.pass(&parts).await, PassOutcome::Adopted(3));
    assert_eq!(
        w.statuses(&parts),
        vec![st("dep-b", Removing), st("dep-b", Removed)]
    );
    assert_eq!(w.runtime.remove_count("dep-b", "db"), 1);
    assert!(!parts
        .store
        .applied()
        .expect("read")
        .contains_key(&dep("dep-b")));

    // The same manifest again: nothing to do.
    w.clear_outbox(&parts);
    assert_eq!(w.pass(&parts).await, PassOutcome::Adopted(3));
    assert!(w.statuses(&parts).is_empty());
}

#[tokio::test]
async fn failed_update_keeps_the_old_version_and_version_unadopted_then_retries() {
    use DeploymentState::*;
    let w = World::new();
    let (_agent, mut parts) = w.start(|c| {
        c.retry_failed_after = Duration::from_millis(100);
        c.retry_failed_max = Duration::from_millis(400);
    });
    let a1 = yaml("dep-a", "app-a", &[("web", "")]);
    w.deliver(&mut parts.downlink, 1, &[&a1]);
    assert_eq!(w.pass(&parts).await, PassOutcome::Adopted(1));
    w.clear_outbox(&parts);

    let a2 = yaml("dep-a", "app-a", &[("web", "image: v2")]);
    w.runtime.set_fail(["web"]);
    w.deliver(&mut parts.downlink, 2, &[&a2]);
    assert_eq!(
        w.pass(&parts).await,
        PassOutcome::Failed {
            version: 2,
            failures: 1
        }
    );
    let msgs = pending_messages(&parts.uplink, &w.identity);
    let failed = msgs
        .iter()
        .find_map(|(_, m)| match m {
            Message::Status(s) if s.status.status.state == Failed => Some(s.clone()),
            _ => None,
        })
        .expect("a failed status");
    assert_eq!(failed.adopted_manifest_version, 2);
    let error = failed.status.status.error.expect("overall error");
    assert_eq!(error.source, "app-a");
    assert_eq!(error.code, "RUNTIME_FAILED");
    assert_eq!(failed.status.components.len(), 1);
    let comp_error = failed.status.components[0]
        .error
        .clone()
        .expect("component error");
    assert_eq!(comp_error.source, "web");
    assert_eq!(
        w.statuses(&parts),
        vec![st("dep-a", Installing), st("dep-a", Failed)]
    );
    let record = parts.store.applied().expect("read")[&dep("dep-a")].clone();
    assert_eq!(
        record.running,
        Some(Digest::of(&a1)),
        "old version still recorded as running"
    );
    assert_eq!(record.state, Failed);
    assert_eq!(parts.store.adopted_version().expect("read"), 1);

    // The reconciler task retries with backoff; once the fault is gone, v2 is adopted.
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(parts.reconciler.run(shutdown.clone()));
    eventually(
        WAIT,
        "the retry keeps failing while the fault is there",
        || w.runtime.apply_count("dep-a", "web") >= 3,
    )
    .await;
    assert_eq!(parts.store.adopted_version().expect("read"), 1);
    w.runtime.set_fail(Vec::<String>::new());
    eventually(WAIT, "v2 adopted after the fault cleared", || {
        parts.store.adopted_version().expect("read") == 2
    })
    .await;
    let retry = parts.store.retry_state().expect("read");
    assert!(retry.is_none(), "bookkeeping cleared on adoption");
    shutdown.cancel();
    task.await.expect("join").expect("reconciler");
}

#[tokio::test]
async fn newer_manifest_supersedes_a_pending_retry_at_once() {
    let w = World::new();
    let (_agent, mut parts) = w.start(|c| {
        c.retry_failed_after = Duration::from_secs(3600);
        c.retry_failed_max = Duration::from_secs(3600);
    });
    let bad = yaml(
        "dep-a",
        "app-a",
        &[("web", "simulatedFailure: broken image")],
    );
    w.deliver(&mut parts.downlink, 1, &[&bad]);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(parts.reconciler.run(shutdown.clone()));
    eventually(WAIT, "v1 failed", || {
        w.runtime.apply_count("dep-a", "web") == 1
    })
    .await;
    let good = yaml("dep-a", "app-a", &[("web", "")]);
    w.deliver(&mut parts.downlink, 2, &[&good]);
    eventually(WAIT, "v2 adopted without waiting an hour", || {
        parts.store.adopted_version().expect("read") == 2
    })
    .await;
    shutdown.cancel();
    task.await.expect("join").expect("reconciler");
}

#[tokio::test]
async fn restart_mid_apply_redoes_only_the_interrupted_deployment() {
    let w = World::new();
    let fast = yaml("dep-fast", "fast", &[("web", "simulatedDelayMs: 0")]);
    let slow = yaml("dep-slow", "slow", &[("db", "")]);
    {
        let (_agent, mut parts) = w.start(|_| {});
        w.runtime.set_delay(Duration::from_secs(60));
        w.deliver(&mut parts.downlink, 1, &[&fast, &slow]);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(parts.reconciler.run(shutdown.clone()));
        let store = parts.store.clone();
        eventually(WAIT, "slow install under way", || {
            store
                .applied()
                .expect("read")
                .get(&dep("dep-slow"))
                .is_some_and(|r| {
                    r.intent
                        .as_ref()
                        .is_some_and(|i| i.action == Action::Install)
                })
        })
        .await;
        // "Power loss": the agent stops in the middle of the slow install.
        shutdown.cancel();
        task.await.expect("join").expect("reconciler");
    }
    assert_eq!(w.runtime.apply_count("dep-fast", "web"), 1);
    assert_eq!(w.runtime.apply_count("dep-slow", "db"), 1);

    w.runtime.set_delay(Duration::ZERO);
    let (_agent, parts) = w.start(|_| {});
    assert_eq!(parts.store.adopted_version().expect("read"), 0);
    let shutdown = CancellationToken::new();
    let store = parts.store.clone();
    let task = tokio::spawn(parts.reconciler.run(shutdown.clone()));
    eventually(WAIT, "v1 adopted after the restart", || {
        store.adopted_version().expect("read") == 1
    })
    .await;
    assert_eq!(
        w.runtime.apply_count("dep-fast", "web"),
        1,
        "completed install not run again"
    );
    assert_eq!(
        w.runtime.apply_count("dep-slow", "db"),
        2,
        "interrupted install redone"
    );
    assert!(store
        .applied()
        .expect("read")
        .values()
        .all(|r| r.intent.is_none()));
    shutdown.cancel();
    task.await.expect("join").expect("reconciler");
}
