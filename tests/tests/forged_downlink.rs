//! Anyone who can reach the broker (here: the embedded broker's loopback
//! listener, which has no authentication) still cannot steer a device: a
//! manifest signed by another key, a replayed older manifest, and tampered
//! deployment bytes are all rejected and the device keeps its state.

use std::time::Duration;

use anyhow::{Context, Result};
use margo_schemas::cose::SigningKey;
use margo_schemas::digest::Digest;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::manifest::{DeploymentRef, StateManifest};
use margo_schemas::messages::{DeploymentBody, Envelope, Message};
use margo_schemas::topics;
use margo_tests::eventually;
use margo_tests::fleet::{
    client_status, deployment_yaml, wait_converged, write_file, AgentProc, InternalAccess,
    ManagerProc,
};

const CONVERGE: Duration = Duration::from_secs(60);
const D1: &str = "11111111-1111-4111-8111-111111111111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_tampered_downlink_is_rejected() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    // The attacker holds broker write access (a compromised broker); the
    // read-only loopback listener would refuse every write.
    let (section, internal) = InternalAccess::embedded_section(dir.path())?;
    let manager = ManagerProc::start(dir.path(), &section)?;
    let url = format!(
        "mqtts://localhost:{}",
        manager.gateway.context("gateway")?.port()
    );
    let bundle = manager.provision("line-9", &dir.path().join("id"), Some(&url))?;
    let agent = AgentProc::start(dir.path(), "line-9", &bundle, "")?;
    let files = dir.path().join("yaml");

    // v1, captured off the broker by a rogue client with write access.
    let mut rogue = internal.connect("rogue").await?;
    let v1 = write_file(
        &files,
        "v1.yaml",
        &deployment_yaml(D1, "alpha", &["web"], 1),
    )?;
    manager.ctl(&["deploy", "line-9", &v1])?;
    wait_converged(&manager, &["line-9"], 2, &[(D1, "installed")], CONVERGE).await?;
    let client = ClientId::new(
        client_status(&manager.status()?, "line-9").context("client")?["clientId"]
            .as_str()
            .context("clientId")?,
    )?;
    let dep = DeploymentId::new(D1)?;
    rogue.subscribe(&topics::desired_filter(&client)).await?;
    let mut old_manifest = None;
    let mut old_deployment = None;
    while old_manifest.is_none() || old_deployment.is_none() {
        let p = rogue
            .next_publish(Duration::from_secs(5))
            .await
            .context("retained v1 messages")?;
        if p.topic == topics::desired_manifest(&client) {
            old_manifest = Some(p.payload.to_vec());
        } else if p.topic == topics::desired_deployment(&client, &dep) {
            old_deployment = Some(p.payload.to_vec());
        }
    }
    let (old_manifest, old_deployment) = (
        old_manifest.unwrap_or_default(),
        old_deployment.unwrap_or_default(),
    );

    let v2 = write_file(
        &files,
        "v2.yaml",
        &deployment_yaml(D1, "alpha", &["web"], 2),
    )?;
    manager.ctl(&["deploy", "line-9", &v2])?;
    wait_converged(&manager, &["line-9"], 3, &[(D1, "installed")], CONVERGE).await?;

    // 1. Replay of the validly signed v1 manifest (rollback).
    rogue
        .publish(&topics::desired_manifest(&client), true, old_manifest)
        .await?;
    // 2. Tampered deployment bytes: one byte of the signed v1 document flipped.
    let mut tampered = old_deployment;
    if let Some(pos) = tampered.windows(9).position(|w| w == b"web-1.tar") {
        tampered[pos] ^= 0x20;
    }
    rogue
        .publish(&topics::desired_deployment(&client, &dep), true, tampered)
        .await?;
    // 3. A manifest v99 and its deployment, correctly formed but signed by another key.
    let (evil, _) = SigningKey::generate()?;
    let evil_yaml = deployment_yaml(D1, "alpha", &["web"], 666).into_bytes();
    let digest = Digest::of(&evil_yaml);
    let body = Envelope::new(
        client.clone(),
        0,
        0,
        Message::Deployment(DeploymentBody {
            deployment_id: dep.clone(),
            digest,
            yaml: evil_yaml.clone(),
        }),
    );
    rogue
        .publish(
            &topics::desired_deployment(&client, &dep),
            true,
            body.seal(&evil)?,
        )
        .await?;
    let manifest = Envelope::new(
        client.clone(),
        0,
        0,
        Message::Manifest(StateManifest {
            manifest_version: 99,
            bundle: None,
            deployments: vec![DeploymentRef {
                deployment_id: dep.clone(),
                digest,
                size_bytes: Some(evil_yaml.len() as u64),
                url: None,
            }],
        }),
    );
    rogue
        .publish(
            &topics::desired_manifest(&client),
            true,
            manifest.seal(&evil)?,
        )
        .await?;

    // The device stays at v2 and logs each of the four rejections as a security event.
    eventually(
        CONVERGE,
        "the agent to log the rejected messages",
        || async {
            Ok((agent.proc.log_text().matches("security event").count() >= 4).then_some(()))
        },
    )
    .await
    .map_err(|e| e.context(agent.proc.log_tail()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = manager.status()?;
    let me = client_status(&status, "line-9").context("client status")?;
    assert_eq!(
        me["adoptedVersion"].as_u64(),
        Some(3),
        "device left v3 (the second deploy): {me}"
    );
    let log = agent.proc.log_text();
    assert!(!log.contains("666"), "the forged deployment was applied");

    // The device still follows the real manager.
    let v3 = write_file(
        &files,
        "v3.yaml",
        &deployment_yaml(D1, "alpha", &["web"], 3),
    )?;
    manager.ctl(&["deploy", "line-9", &v3])?;
    wait_converged(&manager, &["line-9"], 4, &[(D1, "installed")], CONVERGE).await?;
    Ok(())
}
