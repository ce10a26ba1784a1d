//! The rc.3 routes (`workload-management-api-1.0.0-rc.3.yaml`: no
//! `{clientId}` in the path, the caller identified by mutual TLS) and the
//! TLS client certificate as a credential on the `{clientId}` routes, end to
//! end: a real manager (embedded broker, HTTPS listener, redb in a temp
//! dir), a provisioned client presenting its fleet-CA certificate, and a
//! plain-onboarded client presenting the self-signed certificate it
//! onboarded with (`201 {"clientId"}` and nothing else).

use std::path::Path;

use hyper::{Method, StatusCode};
use margo_manager::http::OnboardingMetric;
use margo_manager::ManagerConfig;
use margo_schemas::digest::Digest;
use margo_schemas::http_sig::{PayloadSigner, CONTENT_DIGEST, PAYLOAD_SIGNATURE};
use margo_schemas::manifest::{StateManifest, MEDIA_TYPE};
use margo_schemas::onboarding::OnboardingRequest;
use rcgen::{CertificateParams, KeyPair};

mod common;
use common::{capabilities_body, start, Https, Reply};

const DEP_A: &str = "a3e2f5dc-912e-494f-8395-52cf3769bc06";
const DEP_B: &str = "b7e2f5dc-912e-494f-8395-52cf3769bc06";
const NOT_AUTHORIZED: &str = "https://docs.margo.org/specification/problem-types#not-authorized";

/// The shared test configuration with onboarding limits for many requests.
fn config(dir: &Path) -> ManagerConfig {
    let mut config = common::config(dir);
    config.onboarding.rate_per_minute = 600;
    config.onboarding.rate_burst = 200;
    config
}

fn yaml(id: &str, name: &str) -> String {
    format!(
        "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
         metadata:\n  annotations:\n    id: {id}\n    applicationId: com-example-app\n  name: {name}\n\
         spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
         \x20     - name: web\n        properties:\n          packageLocation: https://example.com/{name}.tar.gz\n"
    )
}

impl Reply {
    /// Asserts `status` and a problem+json body; returns the body.
    fn problem(&self, status: StatusCode) -> serde_json::Value {
        assert_eq!(
            self.status,
            status,
            "expected {status}, got {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let j = self.json();
        assert_eq!(j["status"], status.as_u16());
        assert!(j["title"].is_string() && j["type"].is_string(), "{j}");
        j
    }

    fn expect(&self, status: StatusCode) -> &Self {
        assert_eq!(
            self.status,
            status,
            "expected {status}, got {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        self
    }
}

/// A self-signed P-256 device certificate and its key, as a plain Margo
/// client makes them.
struct SelfSigned {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    signer: PayloadSigner,
}

impl SelfSigned {
    fn new(cn: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = CertificateParams::new(vec![cn.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            signer: PayloadSigner::from_pkcs8(&key.serialize_der()).expect("signer"),
        }
    }
}

/// A client of the rc.3 routes: one TLS client certificate, nothing else.
struct Rc3 {
    https: Https,
}

impl Rc3 {
    async fn get(&self, path: &str) -> Reply {
        self.https.send(Method::GET, path, &[], Vec::new()).await
    }

    async fn send_json(&self, method: Method, path: &str, body: &serde_json::Value) -> Reply {
        let bytes = serde_json::to_vec(body).expect("json");
        self.https
            .send(
                method,
                path,
                &[("content-type", "application/json".to_string())],
                bytes,
            )
            .await
    }

    async fn manifest(&self) -> (Reply, StateManifest) {
        let reply = self.get("/api/v1/deployments").await;
        reply.expect(StatusCode::OK);
        let manifest = serde_json::from_slice(&reply.body).expect("manifest JSON");
        (reply, manifest)
    }
}

/// The rc.3 status example shape (no apiVersion/kind, with adoptedManifestVersion).
fn status_body(deployment: &str, state: &str, adopted: u64) -> serde_json::Value {
    serde_json::json!({
        "deploymentId": deployment,
        "adoptedManifestVersion": adopted,
        "status": {"state": state},
        "components": [{"name": "web", "state": state}],
    })
}

/// Every rc.3 route for one client, and that the rc.3 manifest matches the
/// `{clientId}` one apart from the `url`s.
async fn exercise(device: &Rc3, deployment: &str, device_id: &str) {
    let (reply, manifest) = device.manifest().await;
    assert_eq!(reply.header("content-type").as_deref(), Some(MEDIA_TYPE));
    assert_eq!(reply.header("cache-control").as_deref(), Some("private"));
    let etag = reply.header("etag").expect("ETag");
    assert_eq!(etag, format!("\"{}\"", Digest::of(&reply.body)));
    let again = device
        .https
        .send(
            Method::GET,
            "/api/v1/deployments",
            &[("if-none-match", etag.clone())],
            Vec::new(),
        )
        .await;
    again.expect(StatusCode::NOT_MODIFIED);
    device
        .https
        .send(
            Method::GET,
            "/api/v1/deployments",
            &[("accept", "application/json".to_string())],
            Vec::new(),
        )
        .await
        .problem(StatusCode::NOT_ACCEPTABLE);

    assert_eq!(manifest.deployments.len(), 1);
    let d = &manifest.deployments[0];
    assert_eq!(d.deployment_id.as_str(), deployment);
    let url = d.url.clone().expect("url");
    assert_eq!(
        url,
        format!("/api/v1/deployments/{}/{}", d.deployment_id, d.digest)
    );
    let doc = device.get(&url).await;
    doc.expect(StatusCode::OK);
    assert_eq!(Digest::of(&doc.body), d.digest);
    assert_eq!(
        doc.header("content-type").as_deref(),
        Some("application/yaml")
    );
    assert_eq!(
        doc.header("cache-control").as_deref(),
        Some("private, max-age=31536000, immutable")
    );
    let unknown = Digest::of(b"nothing");
    let j = device
        .get(&format!("/api/v1/deployments/{deployment}/{unknown}"))
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(
        j["type"]
            .as_str()
            .unwrap_or("")
            .ends_with("#deployment-not-found"),
        "{j}"
    );

    let bundle = manifest.bundle.clone().expect("bundle");
    let bundle_url = bundle.url.clone().expect("bundle url");
    assert_eq!(bundle_url, format!("/api/v1/bundles/{}", bundle.digest));
    let b = device.get(&bundle_url).await;
    b.expect(StatusCode::OK);
    assert_eq!(Digest::of(&b.body), bundle.digest);
    assert_eq!(
        b.header("cache-control").as_deref(),
        Some("private, max-age=31536000, immutable")
    );
    let j = device
        .get(&format!("/api/v1/bundles/{unknown}"))
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(
        j["type"]
            .as_str()
            .unwrap_or("")
            .ends_with("#invalid-bundle"),
        "{j}"
    );

    // Status: 201 created, then 200 updated (rc.3).
    let status_path = format!("/api/v1/deployments/{deployment}/status");
    let version = manifest.manifest_version;
    device
        .send_json(
            Method::POST,
            &status_path,
            &status_body(deployment, "installing", version),
        )
        .await
        .expect(StatusCode::CREATED);
    device
        .send_json(
            Method::POST,
            &status_path,
            &status_body(deployment, "installed", version),
        )
        .await
        .expect(StatusCode::OK);

    // Capabilities: 201, 200, DELETE 204, DELETE again 404 device-not-found.
    let caps_path = format!("/api/v1/capabilities/{device_id}");
    device
        .send_json(Method::PUT, &caps_path, &capabilities_body(device_id))
        .await
        .expect(StatusCode::CREATED);
    device
        .send_json(Method::PUT, &caps_path, &capabilities_body(device_id))
        .await
        .expect(StatusCode::OK);
    device
        .https
        .send(Method::DELETE, &caps_path, &[], Vec::new())
        .await
        .expect(StatusCode::NO_CONTENT);
    let j = device
        .https
        .send(Method::DELETE, &caps_path, &[], Vec::new())
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(
        j["type"]
            .as_str()
            .unwrap_or("")
            .ends_with("#device-not-found"),
        "{j}"
    );
    // Put it back for the later views.
    device
        .send_json(Method::PUT, &caps_path, &capabilities_body(device_id))
        .await
        .expect(StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rc3_routes_identify_the_caller_by_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The plain client is approved by the allow-list, so it onboards with
    // nothing but Margo's request and answer.
    let plain = SelfSigned::new("plain-device");
    let mut cfg = config(dir.path());
    cfg.onboarding.allow_fingerprints =
        vec![margo_schemas::pki::fingerprint(&plain.cert_der).to_string()];
    let manager = start(cfg).await;
    let admin = manager.admin();
    let addr = manager.http_addr().expect("HTTPS");
    let ca_pem = manager.pki().ca_pem().to_string();

    // A provisioned client: its fleet-CA certificate.
    let bundle = admin.add_client("press-1", None).await.expect("provision");
    let provisioned = Rc3 {
        https: Https::with_client_cert(addr, &ca_pem, &bundle.cert_pem, &bundle.key_pem),
    };

    // A plain Margo onboarding: exactly {"clientId": "..."} back.
    let request = serde_json::to_vec(&OnboardingRequest::new(&plain.cert_der)).expect("json");
    let (digest, signature) = plain.signer.headers(&request).expect("sign");
    let anonymous = Https::new(addr, &ca_pem);
    let r = anonymous
        .send(
            Method::POST,
            "/api/v1/onboarding",
            &[
                ("content-type", "application/json".to_string()),
                (CONTENT_DIGEST, digest),
                (PAYLOAD_SIGNATURE, signature),
            ],
            request,
        )
        .await;
    r.expect(StatusCode::CREATED);
    let body = r.json();
    let members: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert_eq!(members, ["clientId"], "exactly the spec's 201 body: {body}");
    let plain_id = body["clientId"].as_str().expect("clientId").to_string();
    let onboarded = Rc3 {
        https: Https::with_client_cert(addr, &ca_pem, &plain.cert_pem, &plain.key_pem),
    };

    admin
        .deploy(bundle.client_id.as_str(), vec![yaml(DEP_A, "app-a")])
        .await
        .expect("deploy a");
    admin
        .deploy(&plain_id, vec![yaml(DEP_B, "app-b")])
        .await
        .expect("deploy b");

    exercise(&provisioned, DEP_A, "press-1-dev").await;
    exercise(&onboarded, DEP_B, "plain-dev").await;

    // Each sees its own data only: the other's document and bundle are 404.
    let (_, theirs) = onboarded.manifest().await;
    let their_doc = theirs.deployments[0].url.clone().expect("url");
    let their_bundle = theirs.bundle.clone().and_then(|b| b.url).expect("url");
    provisioned
        .get(&their_doc)
        .await
        .problem(StatusCode::NOT_FOUND);
    provisioned
        .get(&their_bundle)
        .await
        .problem(StatusCode::NOT_FOUND);
    let (_, mine) = provisioned.manifest().await;
    assert_ne!(
        mine.deployments[0].deployment_id,
        theirs.deployments[0].deployment_id
    );
    // Both reports landed with the right client.
    let caps = admin
        .capabilities(&plain_id)
        .await
        .expect("capabilities of the plain client");
    assert!(
        serde_json::to_string(&caps)
            .expect("json")
            .contains("plain-dev"),
        "{caps:?}"
    );

    // No certificate, or one no client is registered with: 401 problem.
    let j = Rc3 {
        https: Https::new(addr, &ca_pem),
    }
    .get("/api/v1/deployments")
    .await
    .problem(StatusCode::UNAUTHORIZED);
    assert!(
        j["detail"].as_str().unwrap_or("").contains("certificate"),
        "{j}"
    );
    let stranger = SelfSigned::new("stranger");
    let unknown = Rc3 {
        https: Https::with_client_cert(addr, &ca_pem, &stranger.cert_pem, &stranger.key_pem),
    };
    unknown
        .get("/api/v1/deployments")
        .await
        .problem(StatusCode::UNAUTHORIZED);
    unknown
        .send_json(
            Method::PUT,
            "/api/v1/capabilities/x",
            &capabilities_body("x"),
        )
        .await
        .problem(StatusCode::UNAUTHORIZED);

    // {clientId} routes: the client's own certificate instead of a
    // signature → 200; another client's certificate is no credential → 401.
    let own = format!("/api/v1/clients/{}/deployments", bundle.client_id);
    provisioned.get(&own).await.expect(StatusCode::OK);
    onboarded.get(&own).await.problem(StatusCode::UNAUTHORIZED);
    let (_, by_client_id) = {
        let r = provisioned.get(&own).await;
        let m: StateManifest = serde_json::from_slice(&r.body).expect("manifest");
        (r, m)
    };
    assert_eq!(
        by_client_id.deployments[0].url.as_deref(),
        Some(
            format!(
                "/api/v1/clients/{}/deployments/{}/{}",
                bundle.client_id, mine.deployments[0].deployment_id, mine.deployments[0].digest
            )
            .as_str()
        ),
        "the {{clientId}} routes keep their own urls"
    );
    let status = format!("/api/v1/clients/{plain_id}/deployments/{DEP_B}/status");
    onboarded
        .send_json(
            Method::POST,
            &status,
            &status_body(DEP_B, "installed", theirs.manifest_version),
        )
        .await
        .expect(StatusCode::OK);

    // Revoked: 403 not-authorized on the rc.3 routes.
    admin
        .revoke(bundle.client_id.as_str())
        .await
        .expect("revoke");
    let j = provisioned
        .get("/api/v1/deployments")
        .await
        .problem(StatusCode::FORBIDDEN);
    assert_eq!(j["type"], NOT_AUTHORIZED);
    provisioned
        .send_json(
            Method::POST,
            &format!("/api/v1/deployments/{DEP_A}/status"),
            &status_body(DEP_A, "installed", mine.manifest_version),
        )
        .await
        .problem(StatusCode::FORBIDDEN);
    onboarded.manifest().await;
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_index_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let bundle = manager
        .admin()
        .add_client("press-9", None)
        .await
        .expect("provision");
    manager.shutdown().await;
    let manager = start(config(dir.path())).await;
    let addr = manager.http_addr().expect("HTTPS");
    let ca_pem = manager.pki().ca_pem().to_string();
    manager
        .admin()
        .deploy(bundle.client_id.as_str(), vec![yaml(DEP_A, "app-a")])
        .await
        .expect("deploy");
    let device = Rc3 {
        https: Https::with_client_cert(addr, &ca_pem, &bundle.cert_pem, &bundle.key_pem),
    };
    device.manifest().await;
    manager.shutdown().await;
}

/// A certificate made the common way, `openssl req -x509 -newkey rsa:2048
/// -nodes -subj /CN=dev -days 30` (RSA key, `basicConstraints CA:TRUE`), by
/// the real `openssl`; `None` (said loudly) when it is not installed.
fn openssl_certificate(dir: &Path) -> Option<(String, String)> {
    let (cert, key) = (dir.join("dev.crt"), dir.join("dev.key"));
    let run = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=dev",
        ])
        .args(["-days", "30", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match run {
        Ok(out) if out.status.success() => Some((
            std::fs::read_to_string(&cert).expect("openssl certificate"),
            std::fs::read_to_string(&key).expect("openssl key"),
        )),
        Ok(out) => panic!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            eprintln!(
                "\n*** SKIPPING the RSA/openssl part of this test: `openssl` cannot be run ({e}) ***\n"
            );
            None
        }
    }
}

/// `X-Payload-Signature` (`<base64 SPKI>;<base64 signature>`) and
/// `Content-Digest` made with an RSA key (PKCS#1 v1.5, SHA-256).
fn rsa_signed(cert_der: &[u8], key_pem: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    use x509_parser::prelude::FromDer;
    let pkcs8 = margo_schemas::pki::pkcs8_from_pem(key_pem.as_bytes(), "RSA key").expect("pkcs8");
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&pkcs8).expect("RSA key pair");
    let mut sig = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        body,
        &mut sig,
    )
    .expect("sign");
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).expect("cert");
    let spki = cert.public_key().raw;
    vec![
        (
            CONTENT_DIGEST,
            margo_schemas::http_sig::content_digest(body),
        ),
        (
            PAYLOAD_SIGNATURE,
            format!(
                "{};{}",
                data_encoding::BASE64.encode(spki),
                data_encoding::BASE64.encode(&sig)
            ),
        ),
    ]
}

async fn post_onboarding(
    https: &Https,
    body: Vec<u8>,
    signature: Vec<(&'static str, String)>,
    accept: Option<&str>,
) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_string())];
    headers.extend(signature);
    if let Some(a) = accept {
        headers.push(("accept", a.to_string()));
    }
    https
        .send(Method::POST, "/api/v1/onboarding", &headers, body)
        .await
}

fn only_client_id(reply: &Reply) -> String {
    reply.expect(StatusCode::CREATED);
    let body = reply.json();
    let members: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert_eq!(members, ["clientId"], "exactly the spec's 201 body: {body}");
    body["clientId"].as_str().expect("clientId").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_approval_onboards_common_certificates_with_the_plain_201() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.onboarding.approval = margo_manager::config::Approval::Auto;
    let manager = start(cfg).await;
    let admin = manager.admin();
    let addr = manager.http_addr().expect("HTTPS");
    let ca_pem = manager.pki().ca_pem().to_string();
    let anonymous = Https::new(addr, &ca_pem);
    let health = admin.health().await.expect("health");
    assert_eq!(health.onboarding_approval.as_deref(), Some("auto"));

    // A P-256 certificate marked CA:TRUE (rcgen): 201 {"clientId"}.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::new(vec!["ca-dev".to_string()]).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_marked = params.self_signed(&key).expect("cert");
    assert!(
        margo_schemas::pki::cert_info(ca_marked.der())
            .expect("info")
            .is_ca
    );
    let signer = PayloadSigner::from_pkcs8(&key.serialize_der()).expect("signer");
    let body = serde_json::to_vec(&OnboardingRequest::new(ca_marked.der())).expect("json");
    let (digest, signature) = signer.headers(&body).expect("sign");
    let r = post_onboarding(
        &anonymous,
        body,
        vec![(CONTENT_DIGEST, digest), (PAYLOAD_SIGNATURE, signature)],
        None,
    )
    .await;
    only_client_id(&r);
    let mut approved = 1;

    // The openssl way: RSA 2048, CA:TRUE. Onboards, then uses the rc.3
    // routes with that very certificate (an HTTP-only client).
    if let Some((cert_pem, key_pem)) = openssl_certificate(dir.path()) {
        let der = margo_schemas::pki::certs_from_pem(cert_pem.as_bytes(), "openssl cert")
            .expect("pem")
            .remove(0)
            .as_ref()
            .to_vec();
        assert!(
            margo_schemas::pki::cert_info(&der).expect("info").is_ca,
            "openssl req -x509 marks the certificate CA:TRUE"
        );
        let body = serde_json::to_vec(&OnboardingRequest::new(&der)).expect("json");
        let signature = rsa_signed(&der, &key_pem, &body);
        let r = post_onboarding(&anonymous, body, signature, Some("application/json")).await;
        let client = only_client_id(&r);
        admin
            .deploy(&client, vec![yaml(DEP_A, "app-a")])
            .await
            .expect("deploy");
        let rsa = Rc3 {
            https: Https::with_client_cert(addr, &ca_pem, &cert_pem, &key_pem),
        };
        let (_, manifest) = rsa.manifest().await;
        assert_eq!(manifest.deployments[0].deployment_id.as_str(), DEP_A);
        approved += 1;
    }
    assert_eq!(
        manager
            .onboarding_stats()
            .get(OnboardingMetric::ApprovedAuto),
        approved
    );

    // Error media types: the older revisions' {"error"} beside the problem
    // members; application/json when Accept asks for it and not for
    // application/problem+json.
    let mut bad = serde_json::to_value(OnboardingRequest::new(ca_marked.der())).expect("json");
    bad["certificate"] = "***".into();
    let bad = serde_json::to_vec(&bad).expect("json");
    for (accept, media_type) in [
        (None, "application/problem+json"),
        (Some("application/json"), "application/json"),
        (
            Some("application/json, application/problem+json"),
            "application/problem+json",
        ),
    ] {
        let r = post_onboarding(&anonymous, bad.clone(), Vec::new(), accept).await;
        r.expect(StatusCode::BAD_REQUEST);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some(media_type),
            "{accept:?}"
        );
        let j = r.json();
        assert_eq!(j["error"], "Invalid certificate", "{j}");
        assert_eq!(
            j["type"],
            "https://docs.margo.org/specification/problem-types#invalid-request"
        );
        assert_eq!(
            (j["status"].as_u64(), j["title"].as_str()),
            (Some(400), Some("Invalid Request"))
        );
        assert!(j["message"].is_string() && j["detail"].is_string(), "{j}");
    }
    manager.shutdown().await;
}

#[test]
fn auto_approval_on_a_public_listener_needs_confirmation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.onboarding.approval = margo_manager::config::Approval::Auto;
    cfg.validate().expect("auto on loopback is allowed");
    cfg.http.listen = "0.0.0.0:8443".parse().expect("addr");
    let err = cfg.validate().expect_err("auto on a public listener");
    assert!(
        err.to_string().contains("onboarding.approval")
            && err
                .to_string()
                .contains("allow_auto_approval_on_public_listener"),
        "{err}"
    );
    cfg.onboarding.allow_auto_approval_on_public_listener = true;
    cfg.validate().expect("confirmed");
    cfg.onboarding.approval = margo_manager::config::Approval::Operator;
    cfg.onboarding.allow_auto_approval_on_public_listener = false;
    cfg.validate().expect("operator approval anywhere");
}
