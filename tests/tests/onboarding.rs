//! Device onboarding over the Margo HTTPS API with the real binaries: a
//! `margo-manager serve` (embedded broker, device gateway, HTTPS API), a
//! `margo-agent run` with an `[onboarding]` section and no identity bundle,
//! and the operator's `margoctl`. The manager's and the agent's own tests
//! cover each side against a library or a fake; these prove the two
//! programs agree, from the pinned CA to a converged deployment.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use margo_tests::eventually;
use margo_tests::fleet::{
    client_status, deployment_yaml, onboarding_toml, wait_converged, write_file, AgentProc,
    ManagerProc, START,
};

const CONVERGE: Duration = Duration::from_secs(60);
/// How long a refused agent may take to give up.
const GIVE_UP: Duration = Duration::from_secs(30);
const D1: &str = "11111111-1111-4111-8111-111111111111";

/// The bundle files `margoctl clients add` writes, which onboarding must write too.
const BUNDLE: [&str; 5] = [
    "identity.toml",
    "client.key",
    "client.crt",
    "ca.crt",
    "manager-signing.crt",
];

/// Waits until `onboarding list` shows a request claiming `name`, and returns it.
async fn wait_request(manager: &ManagerProc, name: &str, state: &str) -> Result<serde_json::Value> {
    eventually(
        START,
        &format!("a {state} onboarding request from {name}"),
        || async {
            Ok(manager
                .onboarding_requests()?
                .into_iter()
                .find(|r| r["name"].as_str() == Some(name) && r["state"].as_str() == Some(state)))
        },
    )
    .await
}

fn has_client(manager: &ManagerProc, name: &str) -> Result<bool> {
    Ok(manager
        .clients()?
        .iter()
        .any(|c| c["name"].as_str() == Some(name)))
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_approves_a_waiting_device_which_then_runs_a_deployment() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start_for_onboarding(dir.path(), "")?;
    let fingerprint = manager.ca_fingerprint()?;
    let mut agent = AgentProc::start_onboarding(
        dir.path(),
        "press-7",
        &onboarding_toml(&manager.https_url()?, &fingerprint, Some("press-7"), None),
    )?;

    // The operator sees who is asking, and from where.
    let request = wait_request(&manager, "press-7", "pending").await?;
    assert_eq!(request["vendor"], "Test Vendor", "{request:#}");
    assert_eq!(request["modelNumber"], "T1", "{request:#}");
    assert_eq!(request["serialNumber"], "press-7", "{request:#}");
    let source = request["source"].as_str().unwrap_or_default();
    assert!(
        source.starts_with("127.0.0.1"),
        "source address {source:?} is not the agent's loopback address: {request:#}"
    );
    assert!(request["clientId"].is_null(), "{request:#}");
    let id = request["requestId"]
        .as_str()
        .context("requestId")?
        .to_string();

    // Waiting: the key exists already (never sent), no bundle, not a client, not running.
    let key = agent.identity_dir.join("client.key");
    let mode = std::fs::metadata(&key)
        .with_context(|| format!("{} while waiting", key.display()))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "client.key mode {mode:o}");
    assert!(
        !agent.identity_dir.join("identity.toml").exists(),
        "bundle written before approval"
    );
    assert!(
        !has_client(&manager, "press-7")?,
        "a client before approval"
    );
    assert!(
        agent.proc.exit_status().is_none(),
        "agent exited while waiting:\n{}",
        agent.log_text()
    );
    eventually(START, "the agent to say it waits for approval", || async {
        Ok(agent
            .log_text()
            .contains("waiting for approval by the fleet operator")
            .then_some(()))
    })
    .await?;

    // Approve by a unique prefix, as an operator would type it.
    let out = manager.ctl(&["onboarding", "approve", &id[..12]])?;
    assert!(out.contains("approved"), "approve printed: {out}");

    let client_id = agent.wait_ready(START)?;
    for file in BUNDLE {
        let path = agent.identity_dir.join(file);
        assert!(path.exists(), "{} missing after approval", path.display());
    }
    let mode = std::fs::metadata(&key)?.permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "client.key mode {mode:o} after approval"
    );
    let index = std::fs::read_to_string(agent.identity_dir.join("identity.toml"))?;
    let gateway = manager.gateway.context("embedded gateway")?.port();
    assert!(
        index.contains(&format!("mqtts://localhost:{gateway}")) && index.contains(&client_id),
        "identity.toml does not carry the client id {client_id} and the manager's public_broker_url:\n{index}"
    );
    assert_eq!(
        count_lines(
            &agent.log_text(),
            "waiting for approval by the fleet operator"
        ),
        1,
        "the wait was announced more than once:\n{}",
        agent.log_text()
    );

    // The manager agrees on who it is.
    let approved = wait_request(&manager, "press-7", "approved").await?;
    assert_eq!(
        approved["clientId"].as_str(),
        Some(client_id.as_str()),
        "{approved:#}"
    );
    let clients = manager.clients()?;
    assert!(
        clients
            .iter()
            .any(|c| c["clientId"].as_str() == Some(client_id.as_str())
                && c["name"] == "press-7"
                && c["revoked"] == false),
        "press-7 is not a live client: {clients:#?}"
    );

    // And it runs like a factory-provisioned device.
    let files = dir.path().join("yaml");
    let a = write_file(&files, "a.yaml", &deployment_yaml(D1, "alpha", &["web"], 1))?;
    manager.ctl(&["deploy", "press-7", &a])?;
    wait_converged(&manager, &["press-7"], 2, &[(D1, "installed")], CONVERGE).await?;
    let status = manager.status()?;
    let me = client_status(&status, "press-7").context("press-7 in status")?;
    assert_eq!(me["presence"], "online", "{me:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_token_approves_at_once_and_only_as_often_as_allowed() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start_for_onboarding(dir.path(), "")?;
    let fingerprint = manager.ca_fingerprint()?;
    let url = manager.https_url()?;
    let token = manager.create_token(1, "1h")?;

    // No operator: the token approves the first device.
    let mut first = AgentProc::start_onboarding(
        dir.path(),
        "cell-a",
        &onboarding_toml(&url, &fingerprint, Some("cell-a"), Some(&token)),
    )?;
    first.wait_ready(START)?;
    let request = wait_request(&manager, "cell-a", "approved").await?;
    assert!(
        request["decidedBy"]
            .as_str()
            .is_some_and(|d| d.contains("token")),
        "not approved by the token: {request:#}"
    );
    let files = dir.path().join("yaml");
    let a = write_file(&files, "a.yaml", &deployment_yaml(D1, "alpha", &["web"], 1))?;
    manager.ctl(&["deploy", "cell-a", &a])?;
    wait_converged(&manager, &["cell-a"], 2, &[(D1, "installed")], CONVERGE).await?;

    let tokens: Vec<serde_json::Value> = manager.ctl_json(&["tokens", "list", "--json"])?;
    assert_eq!(tokens.len(), 1, "{tokens:#?}");
    assert_eq!(tokens[0]["usesLeft"], 0, "token not used up: {tokens:#?}");

    // The used-up token: 403, the agent gives up saying so, nothing stored.
    let mut second = AgentProc::start_onboarding(
        dir.path(),
        "cell-b",
        &onboarding_toml(&url, &fingerprint, Some("cell-b"), Some(&token)),
    )?;
    let status = second.proc.wait_exit(GIVE_UP)?;
    let log = second.log_text();
    assert!(!status.success(), "refused agent exited {status}:\n{log}");
    assert!(
        log.contains("rejected this device's onboarding request"),
        "no clear rejection in the agent's log:\n{log}"
    );
    assert!(
        log.contains("used up"),
        "the agent does not say the token is used up:\n{log}"
    );
    assert!(
        second
            .proc
            .stdout_lines()
            .iter()
            .all(|l| !l.starts_with("margo-agent ready")),
        "refused agent said it was ready"
    );
    assert!(!second.identity_dir.join("identity.toml").exists());
    assert!(!has_client(&manager, "cell-b")?, "cell-b became a client");
    let requests = manager.onboarding_requests()?;
    assert!(
        requests.iter().all(|r| r["name"] != "cell-b"),
        "a refused token request was stored: {requests:#?}"
    );
    let status = manager.status()?;
    assert!(client_status(&status, "cell-b").is_none(), "{status:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_device_stops_and_never_reaches_the_broker() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start_for_onboarding(dir.path(), "")?;
    let fingerprint = manager.ca_fingerprint()?;
    let mut agent = AgentProc::start_onboarding(
        dir.path(),
        "intruder",
        &onboarding_toml(&manager.https_url()?, &fingerprint, Some("intruder"), None),
    )?;
    let request = wait_request(&manager, "intruder", "pending").await?;
    let id = request["requestId"].as_str().context("requestId")?;
    let out = manager.ctl(&["onboarding", "reject", id])?;
    assert!(out.contains("rejected"), "reject printed: {out}");

    let status = agent.proc.wait_exit(GIVE_UP)?;
    let log = agent.log_text();
    assert!(!status.success(), "rejected agent exited {status}:\n{log}");
    assert_eq!(
        count_lines(&log, "rejected this device's onboarding request"),
        1,
        "not exactly one clear rejection line:\n{log}"
    );
    assert!(
        agent
            .proc
            .stdout_lines()
            .iter()
            .all(|l| !l.starts_with("margo-agent ready")),
        "rejected agent said it was ready"
    );
    for file in [
        "identity.toml",
        "client.crt",
        "ca.crt",
        "manager-signing.crt",
    ] {
        assert!(
            !agent.identity_dir.join(file).exists(),
            "{file} written for a rejected device"
        );
    }
    assert!(
        !has_client(&manager, "intruder")?,
        "the rejected device is a client"
    );
    let status = manager.status()?;
    ensure!(
        status.as_array().is_some_and(|a| a.is_empty()),
        "the manager has presence/status for a device that was never admitted: {status:#}"
    );
    let request = wait_request(&manager, "intruder", "rejected").await?;
    assert!(request["clientId"].is_null(), "{request:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_fingerprint_is_refused_before_anything_is_sent() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start_for_onboarding(dir.path(), "")?;
    let actual = manager.ca_fingerprint()?;
    let wrong = format!("sha256:{}", "ab".repeat(32));
    assert_ne!(actual, wrong);
    let mut agent = AgentProc::start_onboarding(
        dir.path(),
        "misled",
        &onboarding_toml(&manager.https_url()?, &wrong, Some("misled"), None),
    )?;
    let status = agent.proc.wait_exit(GIVE_UP)?;
    let log = agent.log_text();
    assert!(
        !status.success(),
        "agent with a wrong pin exited {status}:\n{log}"
    );
    assert!(
        log.contains(&wrong) && log.contains(&actual),
        "the refusal does not name both the expected {wrong} and the presented {actual}:\n{log}"
    );
    assert!(log.contains("nothing was sent"), "{log}");
    assert!(
        !agent.identity_dir.join("client.key").exists()
            && !agent.identity_dir.join("identity.toml").exists(),
        "key or bundle created despite the failed pin"
    );
    let requests = manager.onboarding_requests()?;
    assert!(
        requests.is_empty(),
        "the manager saw a request: {requests:#?}"
    );
    assert!(manager.clients()?.is_empty());
    Ok(())
}
