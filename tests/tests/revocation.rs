//! Revoking a device with the real binaries: an agent that onboarded itself
//! (enrollment token) and converged is revoked with `margoctl clients
//! revoke`. The gateway cuts its connection and refuses it from then on
//! (CONNACK not authorized); the agent says so once and only retries
//! slowly; the manager accepts nothing more from it, even a correctly
//! signed message that reaches ingest by another way.

use std::time::Duration;

use anyhow::{Context, Result};
use margo_manager::admin::AdminClient;
use margo_schemas::cose::SigningKey;
use margo_schemas::ids::ClientId;
use margo_schemas::messages::{Envelope, Message, StateReport};
use margo_schemas::pki::pkcs8_from_pem;
use margo_schemas::topics;
use margo_tests::eventually;
use margo_tests::fleet::{
    client_status, deployment_yaml, onboarding_toml, uplink_seqs, wait_converged, write_file,
    AgentProc, ManagerProc, START,
};

const CONVERGE: Duration = Duration::from_secs(60);
const D1: &str = "11111111-1111-4111-8111-111111111111";
/// The line the agent logs (once) when the gateway refuses its identity.
const REVOKED_LINE: &str = "the fleet manager revoked this device's certificate";
/// The manager's gateway logs this for every refused connection.
const REFUSED_LINE: &str = "revoked identity refused (CONNACK not authorized)";

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

async fn ingest_counter(admin: &AdminClient, name: &str) -> Result<u64> {
    let health = admin
        .health()
        .await
        .map_err(|e| anyhow::anyhow!("health: {e}"))?;
    Ok(health.ingest.get(name).copied().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_cut_off_refused_and_says_so_once() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    // The rogue below holds broker write access (a compromised broker): the
    // read-only loopback listener would refuse its publish outright.
    let (manager, internal) = ManagerProc::start_for_onboarding_with_internal(dir.path(), "")?;
    let admin = AdminClient::new(&manager.socket);
    let token = manager.create_token(1, "1h")?;
    let mut agent = AgentProc::start_onboarding(
        dir.path(),
        "press-9",
        &onboarding_toml(
            &manager.https_url()?,
            &manager.ca_fingerprint()?,
            Some("press-9"),
            Some(&token),
        ),
    )?;
    let client_id = agent.wait_ready(START)?;
    let files = dir.path().join("yaml");
    let a = write_file(&files, "a.yaml", &deployment_yaml(D1, "alpha", &["web"], 1))?;
    manager.ctl(&["deploy", "press-9", &a])?;
    wait_converged(&manager, &["press-9"], 2, &[(D1, "installed")], CONVERGE).await?;
    // Everything the agent had to say is stored and acknowledged.
    let acked = eventually(CONVERGE, "press-9's uplink all acked", || async {
        let status = manager.status()?;
        let acked = client_status(&status, "press-9")
            .and_then(|c| c["ackedSeq"].as_u64())
            .unwrap_or(0);
        let seqs = uplink_seqs(&manager, "press-9").await?;
        Ok((acked > 0 && seqs.last() == Some(&acked)).then_some(acked))
    })
    .await?;

    let out = manager.ctl(&["clients", "revoke", "press-9"])?;
    assert!(
        out.contains("revoked") && out.contains("1 live connection(s) closed"),
        "revoke did not cut the live connection: {out}"
    );
    let before = manager.status()?;
    let before = client_status(&before, "press-9")
        .context("press-9 in status")?
        .clone();
    assert_eq!(before["revoked"], true, "{before:#}");

    // The agent is dropped, tries again, is refused and says so.
    eventually(CONVERGE, "the agent to log that it was revoked", || async {
        Ok(agent.log_text().contains(REVOKED_LINE).then_some(()))
    })
    .await?;
    eventually(CONVERGE, "the gateway to refuse a reconnect", || async {
        Ok((count(&manager.log_text(), REFUSED_LINE) >= 1).then_some(()))
    })
    .await?;

    // A while later (several slow retries at reconnect_max = 2s): still one
    // clear line, no flood of errors, and retries that are slow, not a storm.
    let refused_then = count(&manager.log_text(), REFUSED_LINE);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = agent.log_text();
    assert_eq!(
        count(&log, REVOKED_LINE),
        1,
        "the revocation is not said exactly once:\n{log}"
    );
    let errors = count(&log, " ERROR ");
    assert_eq!(
        errors, 1,
        "{errors} error lines, expected only the revocation:\n{log}"
    );
    let refused = count(&manager.log_text(), REFUSED_LINE);
    assert!(
        refused > refused_then,
        "the agent stopped retrying altogether (it should try slowly, in case the revocation is undone)"
    );
    assert!(
        refused - refused_then <= 10,
        "{} refused reconnects in 8 s: a reconnect storm",
        refused - refused_then
    );
    assert!(
        agent.proc.exit_status().is_none(),
        "the revoked agent exited:\n{log}"
    );

    // A correctly signed state report from the device's own key, delivered
    // straight to the broker's loopback listener (bypassing the gateway),
    // is refused by ingest because the client is revoked.
    let revoked_before = ingest_counter(&admin, "revoked").await?;
    let key_pem = std::fs::read(agent.identity_dir.join("client.key"))?;
    let key = SigningKey::from_pkcs8(&pkcs8_from_pem(&key_pem, "client.key")?)?;
    let client = ClientId::new(&client_id)?;
    let forged = Envelope::new(
        client.clone(),
        acked + 1,
        0,
        Message::State(StateReport {
            adopted_manifest_version: 99,
            agent_version: "after-revocation".into(),
            deployments: Vec::new(),
            schedule: None,
        }),
    )
    .seal(&key)?;
    let mut rogue = internal.connect("after-revocation").await?;
    rogue
        .publish(&topics::state(&client), false, forged)
        .await?;
    eventually(
        CONVERGE,
        "ingest to count the revoked client's message",
        || async { Ok((ingest_counter(&admin, "revoked").await? > revoked_before).then_some(())) },
    )
    .await?;

    let after = manager.status()?;
    let after = client_status(&after, "press-9").context("press-9 in status")?;
    assert_eq!(after["ackedSeq"], before["ackedSeq"], "{after:#}");
    assert_eq!(
        after["lastSeen"], before["lastSeen"],
        "last seen advanced: {after:#}"
    );
    assert_eq!(after["adoptedVersion"], 2, "{after:#}");
    assert_ne!(after["agentVersion"], "after-revocation", "{after:#}");
    let seqs = uplink_seqs(&manager, "press-9").await?;
    assert_eq!(
        seqs.last(),
        Some(&acked),
        "uplink stored after revocation: {seqs:?}"
    );

    // The operator cannot assign it work either.
    let err = manager.ctl_fails(&["deploy", "press-9", &a])?;
    assert!(
        err.contains("409") || err.contains("revoked"),
        "deploy to a revoked client failed, but not as a conflict: {err}"
    );

    // Restarted, the agent stays refused and says so once again (one line per process).
    agent.restart()?;
    eventually(
        CONVERGE,
        "the restarted agent to log that it is revoked",
        || async { Ok(agent.log_text().contains(REVOKED_LINE).then_some(())) },
    )
    .await?;
    let seqs = uplink_seqs(&manager, "press-9").await?;
    assert_eq!(
        seqs.last(),
        Some(&acked),
        "uplink stored after revocation: {seqs:?}"
    );
    Ok(())
}
