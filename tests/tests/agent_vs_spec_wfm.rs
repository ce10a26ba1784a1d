//! Our agent (the real `margo-agent` binary) against a minimal WFM written
//! from the Margo specification alone (`margo_tests::spec_wfm`, which shares
//! no code with our manager), served under a base path (`/v1alpha2/margo`):
//! plain onboarding (`201 {"clientId": "<uuid>"}` without our extensions),
//! capabilities, manifest polls, bundle and single documents, statuses; in
//! `1.0.0-rc.2` mode (clientId paths), signing every request with the
//! default RFC 9421 HTTP Message Signatures (checked by the spec WFM's own
//! verifier, `spec_wfm::msg_sig`) or with `X-Payload-Signature`, and in
//! `1.0.0-rc.3` mode (mutual TLS with the onboarded certificate, client-less
//! paths). Also: a deployment with an unknown `apiVersion` fails alone and
//! is not downloaded again; a capabilities report refused with 401 is kept
//! and retried.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use margo_tests::eventually;
use margo_tests::fleet::{onboarding_toml, AgentProc};
use margo_tests::spec_wfm::{digest, Recorded, SignedWith, SpecWfm};

const WAIT: Duration = Duration::from_secs(60);

/// From `desired-state.md`'s example, with our own ids and names.
fn yaml(id: &str, revision: &str) -> Vec<u8> {
    format!(
        "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\nmetadata:\n  \
         annotations:\n    applicationId: com-example-{revision}\n    id: {id}\n  name: app-{revision}\n  \
         namespace: margo-poc\nspec:\n  deploymentProfile:\n    type: compose\n    components:\n      \
         - name: web\n        properties:\n          packageLocation: https://example.com/{revision}.yaml\n  \
         parameters: {{}}\n"
    )
    .into_bytes()
}

const A: &str = "a3e2f5dc-912e-494f-8395-52cf3769bc06";
const B: &str = "b3e2f5dc-912e-494f-8395-52cf3769bc07";

/// `http.signature`: the agent's configuration value, or `None` for the
/// default (RFC 9421).
fn start_agent_signing(
    dir: &Path,
    wfm: &SpecWfm,
    name: &str,
    api: &str,
    signature: Option<&str>,
) -> Result<AgentProc> {
    let signature = signature
        .map(|s| format!("signature = {s:?}\n"))
        .unwrap_or_default();
    let extra = format!(
        "transport = \"http\"\n[http]\napi = \"{api}\"\npoll_rate = \"1s\"\n{signature}{}",
        onboarding_toml(&wfm.url(), &wfm.ca_fingerprint(), Some(name), None)
    );
    AgentProc::start_onboarding(dir, name, &extra)
}

fn start_agent(dir: &Path, wfm: &SpecWfm, name: &str, api: &str) -> Result<AgentProc> {
    start_agent_signing(dir, wfm, name, api, Some("x-payload-signature"))
}

fn count(wfm: &SpecWfm, pred: impl Fn(&Recorded) -> bool) -> usize {
    wfm.state().requests.iter().filter(|r| pred(r)).count()
}

/// Waits until `id` was last reported in `state`; returns that status body.
async fn wait_status(wfm: &SpecWfm, id: &str, state: &str) -> Result<serde_json::Value> {
    eventually(WAIT, &format!("{id} reported {state}"), || async {
        Ok(wfm
            .state()
            .statuses
            .iter()
            .rev()
            .find(|(i, _)| i == id)
            .filter(|(_, v)| v["status"]["state"] == state)
            .map(|(_, v)| v.clone()))
    })
    .await
}

/// Our agent in rc.2 mode (clientId paths) against the spec WFM, signing
/// with `signature` (`None`: the default): onboards with a plain `201`,
/// reports capabilities, polls (`304` included), takes the bundle and then
/// a single document, reports status; every request after onboarding
/// carries `header` and verified as `scheme` (the onboarding request is
/// signed with both schemes by design, each verified against the
/// certificate it carries).
async fn rc2_run(
    name: &str,
    signature: Option<&str>,
    header: &str,
    scheme: SignedWith,
) -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let wfm = SpecWfm::start().await?;
    wfm.publish(vec![(A.into(), yaml(A, "one")), (B.into(), yaml(B, "two"))]);
    let mut agent = start_agent_signing(dir.path(), &wfm, name, "1.0.0-rc.2", signature)?;
    let client = agent.wait_ready(WAIT)?;
    // The id the WFM assigned (a UUID), not one of ours.
    let assigned = wfm.state().clients.first().context("onboarded")?.id.clone();
    assert_eq!(client, assigned);
    let index = std::fs::read_to_string(agent.identity_dir.join("identity.toml"))?;
    assert!(index.contains("version = 2"), "{index}");

    wait_status(&wfm, A, "installed").await?;
    wait_status(&wfm, B, "installed").await?;
    eventually(WAIT, "capabilities", || async {
        Ok((!wfm.state().capabilities.is_empty()).then_some(()))
    })
    .await?;
    let base = format!("/api/v1/clients/{client}");
    {
        let s = wfm.state();
        let paths: Vec<String> = s
            .requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        for wanted in [
            "GET /api/v1/onboarding/certificate".to_string(),
            "POST /api/v1/onboarding".to_string(),
            format!("GET {base}/deployments"),
            format!("POST {base}/deployments/{A}/status"),
            format!("PUT {base}/capabilities/{name}"),
        ] {
            assert!(paths.contains(&wanted), "{wanted} not in {paths:#?}");
        }
        assert!(
            paths
                .iter()
                .any(|p| p.starts_with(&format!("GET {base}/bundles/sha256:"))),
            "the first sync takes the bundle: {paths:#?}"
        );
        let onboarding = s
            .requests
            .iter()
            .find(|r| r.path == "/api/v1/onboarding")
            .context("onboarding request")?;
        assert_eq!(onboarding.signed_with, Some(SignedWith::Both));
    }

    // One of two changed: single documents (bundle_over_percent = 50).
    let a2 = yaml(A, "one-v2");
    wfm.publish(vec![(A.into(), a2.clone()), (B.into(), yaml(B, "two"))]);
    let single = format!("{base}/deployments/{A}/{}", digest(&a2));
    eventually(WAIT, "the changed document alone", || async {
        Ok((count(&wfm, |r| r.path == single) > 0).then_some(()))
    })
    .await?;
    eventually(WAIT, "v3 installed", || async {
        let s = wfm.state();
        let after = s.statuses.iter().filter(|(i, _)| i == A).count();
        Ok((after >= 4
            && s.statuses
                .iter()
                .rev()
                .find(|(i, _)| i == A)
                .map(|(_, v)| v["status"]["state"].clone())
                == Some("installed".into()))
        .then_some(()))
    })
    .await?;
    // A 304 on an unchanged manifest: conditional GETs carry the ETag.
    eventually(WAIT, "a 304", || async {
        Ok((count(&wfm, |r| r.status == 304) > 0).then_some(()))
    })
    .await?;
    agent.stop();

    // Every request on the client's paths, reads included, was signed with
    // the configured scheme and verified; nothing was refused.
    let s = wfm.state();
    assert_eq!(s.bad_signatures, 0, "{:#?}", s.signature_errors);
    let signed: Vec<&Recorded> = s
        .requests
        .iter()
        .filter(|r| r.path.starts_with(&base))
        .collect();
    for method in ["GET", "POST", "PUT"] {
        assert!(signed.iter().any(|r| r.method == method), "a {method}");
    }
    for r in signed {
        assert!(r.headers.contains_key(header), "{header} on {r:?}");
        assert_eq!(r.signed_with, Some(scheme), "{} {}", r.method, r.path);
        // Reads may answer 304; writes 200/201.
        let ceiling = if r.method == "GET" { 400 } else { 300 };
        assert!(
            r.status < ceiling,
            "{} {} answered {}",
            r.method,
            r.path,
            r.status
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rc2_mode_onboards_plainly_under_a_base_path_and_signs_every_report() -> Result<()> {
    rc2_run(
        "spec-rc2",
        Some("x-payload-signature"),
        "x-payload-signature",
        SignedWith::XPayloadSignature,
    )
    .await
}

/// The same run with the agent's default `http.signature = "rfc9421"`:
/// every request carries `Signature-Input`/`Signature` (and
/// `Content-Digest` with a body), verified by the spec WFM's verifier
/// written from RFC 9421/9530 alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rc2_mode_signs_every_request_with_http_message_signatures_by_default() -> Result<()> {
    rc2_run(
        "spec-rc2-9421",
        None,
        "signature-input",
        SignedWith::Rfc9421,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rc3_mode_uses_mutual_tls_and_client_less_paths() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let wfm = SpecWfm::start().await?;
    wfm.publish(vec![(A.into(), yaml(A, "one"))]);
    let mut agent = start_agent(dir.path(), &wfm, "spec-rc3", "1.0.0-rc.3")?;
    agent.wait_ready(WAIT)?;
    wait_status(&wfm, A, "installed").await?;
    eventually(WAIT, "capabilities", || async {
        Ok((!wfm.state().capabilities.is_empty()).then_some(()))
    })
    .await?;
    let s = wfm.state();
    let api: Vec<&Recorded> = s
        .requests
        .iter()
        .filter(|r| !r.path.starts_with("/api/v1/onboarding"))
        .collect();
    assert!(!api.is_empty());
    for r in &api {
        assert!(
            r.client_cert,
            "no client certificate on {} {}",
            r.method, r.path
        );
        assert!(!r.path.starts_with("/api/v1/clients/"), "{}", r.path);
        assert!(!r.headers.contains_key("x-payload-signature"), "{r:?}");
        assert!(
            r.status < 400,
            "{} {} answered {}",
            r.method,
            r.path,
            r.status
        );
    }
    let paths: Vec<String> = api
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    for wanted in [
        "GET /api/v1/deployments".to_string(),
        format!("POST /api/v1/deployments/{A}/status"),
        "PUT /api/v1/capabilities/spec-rc3".to_string(),
    ] {
        assert!(paths.contains(&wanted), "{wanted} not in {paths:#?}");
    }
    assert!(paths
        .iter()
        .any(|p| p.starts_with("GET /api/v1/bundles/sha256:")));
    drop(s);
    agent.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_deployment_fails_alone_and_is_not_downloaded_again() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let wfm = SpecWfm::start().await?;
    let odd = String::from_utf8(yaml(B, "odd"))?
        .replace("application.margo.org/v1alpha1", "example.com/v9")
        .into_bytes();
    wfm.publish(vec![(A.into(), yaml(A, "one")), (B.into(), odd.clone())]);
    let mut agent = start_agent(dir.path(), &wfm, "spec-odd", "1.0.0-rc.3")?;
    agent.wait_ready(WAIT)?;
    wait_status(&wfm, A, "installed").await?;
    let failed = wait_status(&wfm, B, "failed").await?;
    assert!(
        failed.to_string().contains("apiVersion"),
        "the failed status names the reason: {failed}"
    );
    let downloads = |r: &Recorded| {
        r.path.starts_with("/api/v1/bundles/") || r.path.starts_with("/api/v1/deployments/")
    };
    let fetched = count(&wfm, |r| {
        r.method == "GET" && downloads(r) && !r.path.ends_with("/status")
    });
    let polls = count(&wfm, |r| r.path == "/api/v1/deployments");
    eventually(WAIT, "three more polls", || async {
        Ok((count(&wfm, |r| r.path == "/api/v1/deployments") >= polls + 3).then_some(()))
    })
    .await?;
    assert_eq!(
        count(&wfm, |r| r.method == "GET"
            && downloads(r)
            && !r.path.ends_with("/status")),
        fetched,
        "nothing downloaded again while the manifest is unchanged"
    );
    let b_failures = wfm
        .state()
        .statuses
        .iter()
        .filter(|(i, v)| i == B && v["status"]["state"] == "failed")
        .count();
    assert_eq!(b_failures, 1, "the failure is reported once");

    // A newer manifest with B unchanged: only A's new document is fetched.
    let a2 = yaml(A, "one-v2");
    wfm.publish(vec![(A.into(), a2.clone()), (B.into(), odd.clone())]);
    let single = format!("/api/v1/deployments/{A}/{}", digest(&a2));
    eventually(WAIT, "A's new document", || async {
        Ok((count(&wfm, |r| r.path == single) > 0).then_some(()))
    })
    .await?;
    let odd_path = format!("/api/v1/deployments/{B}/{}", digest(&odd));
    assert_eq!(
        count(&wfm, |r| r.path == odd_path),
        0,
        "B was judged already"
    );
    agent.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capabilities_report_refused_with_401_is_kept_and_retried() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let wfm = SpecWfm::start().await?;
    wfm.state().refuse_capabilities = Some((401, 3));
    let mut agent = start_agent(dir.path(), &wfm, "spec-401", "1.0.0-rc.2")?;
    agent.wait_ready(WAIT)?;
    eventually(WAIT, "capabilities accepted after three 401s", || async {
        Ok((!wfm.state().capabilities.is_empty()).then_some(()))
    })
    .await?;
    let attempts: Vec<u16> = wfm
        .state()
        .requests
        .iter()
        .filter(|r| r.path.contains("/capabilities"))
        .map(|r| r.status)
        .collect();
    assert_eq!(&attempts[..3], &[401, 401, 401], "{attempts:?}");
    assert!(attempts[3..].contains(&201), "{attempts:?}");
    // The WFM stores the report before the agent reads the 201 and logs it.
    eventually(
        WAIT,
        "the agent logs that reports are accepted again",
        || async {
            Ok(agent
                .log_text()
                .contains("accepts this client's reports again")
                .then_some(()))
        },
    )
    .await?;
    assert_eq!(
        agent
            .log_text()
            .matches("refuses this client's report")
            .count(),
        1,
        "logged at error once per streak"
    );
    agent.stop();
    Ok(())
}
