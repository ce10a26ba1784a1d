//! HTTPS onboarding end to end: a real manager (embedded broker, gateway,
//! HTTPS API, redb in a temp dir), a hyper client over tokio-rustls that
//! trusts only the fleet CA, devices with self-signed P-256 certificates
//! signing their requests (decisions/0004), then mutual TLS through the
//! gateway with the issued identity.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use margo_manager::http::OnboardingMetric;
use margo_manager::ManagerConfig;
use margo_schemas::capabilities::{DeviceCapabilitiesManifest, DeviceProperties};
use margo_schemas::http_sig::{PayloadSigner, CONTENT_DIGEST, PAYLOAD_SIGNATURE};
use margo_schemas::ids::{ClientId, DeviceId};
use margo_schemas::messages::{CapabilitiesReport, Envelope, Message};
use margo_schemas::onboarding::{
    OnboardingRequest, OnboardingResponse, OnboardingState, RequestExtensions,
};
use margo_schemas::pki::{cert_info, certs_from_pem, client_tls_config};
use margo_schemas::topics;
use rcgen::{CertificateParams, KeyPair};
use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};

mod common;
use common::{start, start_with_manual_clock, DevicePem, FakeDevice, Https, Reply, WAIT};
use margo_testkit::mqtt::TestClient;

const DEPLOYMENT_ID: &str = "b7e2f5dc-912e-494f-8395-52cf3769bc06";

/// The shared test configuration, with onboarding limits for many requests.
fn config(dir: &Path) -> ManagerConfig {
    let mut config = common::config(dir);
    config.onboarding.rate_per_minute = 600;
    config.onboarding.rate_burst = 200;
    config.onboarding.poll_interval = Duration::from_secs(3);
    config
}

// ---- HTTPS client ---------------------------------------------------------------

impl Reply {
    fn onboarding(&self) -> OnboardingResponse {
        serde_json::from_value(self.json()).expect("an OnboardingResponse")
    }

    /// The problem detail, checking the problem shape.
    fn detail(&self) -> String {
        let j = self.json();
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        assert_eq!(j["status"], self.status.as_u16());
        assert!(j["title"].is_string() && j["type"].is_string(), "{j}");
        j["detail"].as_str().expect("detail").to_string()
    }
}

/// Onboarding requests on top of the shared HTTPS client.
impl Https {
    /// Like [`Https::send`], adding `content-type: application/json` to a body.
    async fn send_json(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Reply {
        let mut all = headers.to_vec();
        if !body.is_empty() {
            all.push(("content-type", "application/json".to_string()));
        }
        self.send(method, path, &all, body).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send_json(Method::GET, path, &[], Vec::new()).await
    }

    /// POSTs `body` to /api/v1/onboarding with both signature headers.
    async fn post_signed(&self, body: Vec<u8>, signer: &PayloadSigner) -> Reply {
        let (digest, signature) = signer.headers(&body).expect("sign");
        self.send_json(
            Method::POST,
            "/api/v1/onboarding",
            &[(CONTENT_DIGEST, digest), (PAYLOAD_SIGNATURE, signature)],
            body,
        )
        .await
    }
}

// ---- devices --------------------------------------------------------------------

struct DeviceKey {
    key: KeyPair,
    signer: PayloadSigner,
}

impl DeviceKey {
    fn new() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let signer = PayloadSigner::from_pkcs8(&key.serialize_der()).expect("signer");
        Self { key, signer }
    }

    /// A self-signed certificate for this key.
    fn cert(&self, cn: &str) -> Vec<u8> {
        CertificateParams::new(vec![cn.to_string()])
            .expect("params")
            .self_signed(&self.key)
            .expect("self-signed")
            .der()
            .to_vec()
    }

    fn point(&self) -> Vec<u8> {
        let der = self.cert("x");
        cert_info(&der)
            .expect("cert")
            .p256_public_key
            .expect("P-256")
    }
}

fn body(cert_der: &[u8], ext: Option<RequestExtensions>) -> Vec<u8> {
    let mut req = OnboardingRequest::new(cert_der);
    req.extensions = ext;
    serde_json::to_vec(&req).expect("json")
}

fn claims(name: &str) -> RequestExtensions {
    RequestExtensions {
        name: Some(name.into()),
        vendor: Some("Acme".into()),
        model_number: Some("E1".into()),
        serial_number: Some(format!("sn-{name}")),
        ..RequestExtensions::default()
    }
}

fn with_token(name: &str, token: &str) -> RequestExtensions {
    RequestExtensions {
        enrollment_token: Some(token.into()),
        ..claims(name)
    }
}

fn fingerprint_hex(der: &[u8]) -> String {
    margo_schemas::pki::fingerprint(der).hex()
}

fn mqtt_options(gateway: SocketAddr, id: &ClientId, tls: rustls::ClientConfig) -> MqttOptions {
    let mut opts = MqttOptions::new(id.as_str(), "127.0.0.1", gateway.port());
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    opts.set_keep_alive(Duration::from_secs(5));
    opts
}

/// A fake device through the gateway with an onboarded identity, subscribed
/// to its desired state and acks.
async fn connect_onboarded(
    gateway: SocketAddr,
    identity: &Identity,
    device: &DeviceKey,
) -> FakeDevice {
    let key_pem = device.key.serialize_pem();
    let pem = DevicePem {
        client_id: &identity.client_id,
        ca: &identity.ca,
        cert: &identity.cert,
        key: &key_pem,
        signing_cert: &identity.signing,
    };
    let id = &identity.client_id;
    let filters = [topics::desired_filter(id), topics::ack(id)];
    FakeDevice::connect(gateway, pem, true, &filters).await
}

impl FakeDevice {
    async fn capabilities(&self, seq: u64, manifest: DeviceCapabilitiesManifest) {
        let env = Envelope::new(
            self.id.clone(),
            seq,
            1,
            Message::Capabilities(CapabilitiesReport { manifest }),
        );
        self.mqtt
            .client
            .publish(
                topics::capabilities(&self.id),
                QoS::AtLeastOnce,
                false,
                env.seal(&self.key).expect("seal"),
            )
            .await
            .expect("publish capabilities");
    }
}

fn manifest(id: &str, memory: &str) -> DeviceCapabilitiesManifest {
    DeviceCapabilitiesManifest::new(DeviceProperties {
        id: DeviceId::new(id).expect("device id"),
        vendor: "Acme".into(),
        model_number: "E1".into(),
        serial_number: format!("sn-{id}"),
        cpu: vec![],
        memory: Some(memory.into()),
        storage: None,
        peripherals: vec![],
        interfaces: vec![],
        otel_collector: None,
        supported_runtimes: vec![],
        supported_deployment_types: vec![],
        extensions: BTreeMap::new(),
    })
}

struct Identity {
    client_id: ClientId,
    cert: String,
    ca: String,
    signing: String,
}

fn identity_of(resp: &OnboardingResponse) -> Identity {
    let ext = &resp.extensions;
    assert_eq!(ext.state, OnboardingState::Approved);
    let identity = ext.identity.as_ref().expect("identity when approved");
    Identity {
        client_id: resp.client_id.clone().expect("clientId when approved"),
        cert: identity.client_certificate.clone(),
        ca: identity.ca_certificate.clone(),
        signing: identity.manager_signing_certificate.clone(),
    }
}

fn yaml() -> String {
    format!(
        "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
         metadata:\n  annotations:\n    id: {DEPLOYMENT_ID}\n    applicationId: com-example-app\n  name: example-app\n\
         spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
         \x20     - name: web\n        properties:\n          packageLocation: https://example.com/app.tar.gz\n"
    )
}

// ---- tests ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_approval_then_mqtt_then_capabilities_then_revocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let https = Https::new(
        manager.http_addr().expect("HTTPS enabled"),
        manager.pki().ca_pem(),
    );

    // The CA download matches what margoctl prints (devices pin it).
    let ca = https.get("/api/v1/onboarding/certificate").await;
    assert_eq!(ca.status, StatusCode::OK);
    let ca_pem = data_encoding::BASE64
        .decode(
            ca.json()["certificate"]
                .as_str()
                .expect("certificate")
                .as_bytes(),
        )
        .expect("base64");
    assert_eq!(ca_pem, manager.pki().ca_pem().as_bytes());
    let ca_der = certs_from_pem(&ca_pem, "CA").expect("PEM").remove(0);
    let pinned = margo_schemas::pki::fingerprint(ca_der.as_ref()).to_string();
    assert_eq!(admin.ca().await.expect("ca").fingerprint, pinned);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_margoctl"))
        .arg("--socket")
        .arg(manager.admin_socket())
        .args(["ca", "fingerprint"])
        .output()
        .expect("margoctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pinned);

    // A device asks; it waits for an operator.
    let device = DeviceKey::new();
    let cert = device.cert("press-7");
    let request_id = fingerprint_hex(&cert);
    let first = https
        .post_signed(body(&cert, Some(claims("press-7"))), &device.signer)
        .await;
    assert_eq!(
        first.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let location = format!("/api/v1/onboarding/requests/{request_id}");
    assert_eq!(first.header("location").as_deref(), Some(location.as_str()));
    assert_eq!(first.header("retry-after").as_deref(), Some("3"));
    let pending = first.onboarding();
    assert_eq!(pending.extensions.state, OnboardingState::Pending);
    assert_eq!(pending.extensions.request_id, request_id);
    assert!(pending.client_id.is_none());
    // Re-posting is idempotent.
    let again = https
        .post_signed(body(&cert, Some(claims("press-7"))), &device.signer)
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.onboarding().extensions.request_id, request_id);

    let listed = admin.onboarding_requests().await.expect("list");
    assert_eq!(listed.len(), 1);
    let r = &listed[0];
    assert_eq!(r.request_id, request_id);
    assert_eq!(r.state, OnboardingState::Pending);
    assert_eq!(r.claims.name.as_deref(), Some("press-7"));
    assert_eq!(r.claims.vendor.as_deref(), Some("Acme"));
    assert_eq!(r.claims.serial_number.as_deref(), Some("sn-press-7"));
    assert!(r.source.starts_with("127.0.0.1:"), "{}", r.source);
    assert!(r.first_seen <= r.last_seen);

    let poll = https.get(&location).await;
    assert_eq!(poll.status, StatusCode::OK);
    assert_eq!(poll.onboarding().extensions.state, OnboardingState::Pending);

    // The operator approves by a prefix of the fingerprint.
    let approved = admin
        .approve(&format!("sha256:{}", &request_id[..12]), None)
        .await
        .expect("approve");
    assert_eq!(approved.name, "press-7");
    let poll = https.get(&location).await;
    assert_eq!(poll.status, StatusCode::OK);
    let resp = poll.onboarding();
    let identity = identity_of(&resp);
    assert_eq!(identity.client_id, approved.client_id);
    let ext_identity = resp.extensions.identity.as_ref().expect("identity");
    assert_eq!(ext_identity.name, "press-7");
    assert_eq!(ext_identity.broker_url, "mqtts://localhost:8883");
    let issued = certs_from_pem(identity.cert.as_bytes(), "client cert")
        .expect("PEM")
        .remove(0);
    let info = cert_info(issued.as_ref()).expect("issued cert");
    assert_eq!(
        info.common_name.as_deref(),
        Some(identity.client_id.as_str())
    );
    assert_eq!(
        info.p256_public_key,
        Some(device.point()),
        "issued for the device's own key"
    );
    assert!(!info.is_ca);
    margo_schemas::pki::verify_issued_by(issued.as_ref(), ca_der.as_ref())
        .expect("issued by the fleet CA");
    // A POST now answers 201 with the same identity.
    let reposted = https
        .post_signed(body(&cert, Some(claims("press-7"))), &device.signer)
        .await;
    assert_eq!(reposted.status, StatusCode::CREATED);
    assert_eq!(
        identity_of(&reposted.onboarding()).client_id,
        identity.client_id
    );

    // The identity works through the gateway (mutual TLS) and gets its
    // retained desired state.
    admin
        .deploy(identity.client_id.as_str(), vec![yaml()])
        .await
        .expect("deploy");
    let gateway = manager.gateway_addr().expect("gateway");
    let mut mqtt = connect_onboarded(gateway, &identity, &device).await;
    // The approval published the zero-deployment manifest (version 1); the
    // deploy's version 2 is published asynchronously and may reach the
    // device after the retained version 1 does.
    let version = mqtt
        .expect("manifest version 2", |m| match m {
            Message::Manifest(s) if s.manifest_version != 1 => Some(s.manifest_version),
            _ => None,
        })
        .await;
    assert_eq!(version, 2, "the first deploy makes version 2");

    // Capabilities: a child before its parent is refused; parent, then
    // child, are stored; an invalid manifest is refused naming the field.
    // Refused reports are still acknowledged (seq 4 acked).
    mqtt.capabilities(1, manifest("gw/a", "1Gi")).await;
    mqtt.capabilities(2, manifest("gw", "4Gi")).await;
    mqtt.capabilities(3, manifest("gw/a", "2Gi")).await;
    mqtt.capabilities(4, manifest("gw", "lots")).await;
    // The 1.0.0 OpenAPI shape (roles, resources, "59 Gi") over MQTT too.
    let v1_shape = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schemas/tests/fixtures/spec/capabilities-openapi-1.0.0-schema.json"),
    )
    .expect("fixture");
    let v1_shape = DeviceCapabilitiesManifest::from_json(&v1_shape).expect("object");
    mqtt.capabilities(5, v1_shape.clone()).await;
    mqtt.expect("ack of seq 5", |m| match m {
        Message::Ack(a) if a.acked_seq >= 5 => Some(()),
        _ => None,
    })
    .await;
    let details = admin
        .client(identity.client_id.as_str())
        .await
        .expect("client show");
    let stored: BTreeMap<&str, Option<u64>> = details
        .capabilities
        .iter()
        .map(|c| {
            (
                c.device_id.as_str(),
                c.normalized.as_ref().and_then(|n| n.memory_bytes),
            )
        })
        .collect();
    let edge = "northstarida.xtapro.k8s.edge";
    assert_eq!(
        stored,
        BTreeMap::from([
            ("gw", Some(4 << 30)),
            ("gw/a", Some(2 << 30)),
            (edge, Some(59 << 30))
        ])
    );
    let as_sent = details
        .capabilities
        .iter()
        .find(|c| c.device_id == edge)
        .map(|c| &c.manifest);
    assert_eq!(as_sent, Some(&v1_shape.to_value()), "stored as sent");
    assert_eq!(details.status.desired_version, 2);
    assert_eq!(details.client.name, "press-7");
    let health = admin.health().await.expect("health");
    assert_eq!(health.ingest.get("childBeforeParent"), Some(&1));
    assert_eq!(health.ingest.get("invalidCapabilities"), Some(&1));
    let audit = admin.audit(100).await.expect("audit");
    let child = audit
        .events
        .iter()
        .find(|e| e.kind == "child-before-parent")
        .expect("child-before-parent audited");
    assert!(child.detail.contains("gw/a"), "{}", child.detail);
    let invalid = audit
        .events
        .iter()
        .find(|e| e.kind == "invalid-capabilities")
        .expect("invalid capabilities audited");
    assert!(
        invalid.detail.contains("properties.memory"),
        "{}",
        invalid.detail
    );
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_margoctl"))
        .arg("--socket")
        .arg(manager.admin_socket())
        .args(["clients", "show", "press-7"])
        .output()
        .expect("margoctl runs");
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success() && text.contains("capabilities gw/a: Acme E1"),
        "{text}"
    );

    // Revoked: the poll and a re-POST get 403; so does the same key with a
    // fresh self-signed certificate; the gateway answers CONNACK 5.
    let revoked = admin
        .revoke(identity.client_id.as_str())
        .await
        .expect("revoke");
    assert!(!revoked.already_revoked);
    assert_eq!(revoked.connections_closed, Some(1));
    let poll = https.get(&location).await;
    assert_eq!(poll.status, StatusCode::FORBIDDEN);
    assert!(poll.detail().contains("revoked"));
    let reposted = https
        .post_signed(body(&cert, Some(claims("press-7"))), &device.signer)
        .await;
    assert_eq!(reposted.status, StatusCode::FORBIDDEN);
    let fresh = device.cert("press-7-again");
    let reposted = https.post_signed(body(&fresh, None), &device.signer).await;
    assert_eq!(
        reposted.status,
        StatusCode::FORBIDDEN,
        "same key, new certificate"
    );
    assert!(reposted.detail().contains("revoked"));

    let key_pem = device.key.serialize_pem();
    let tls = client_tls_config(
        identity.ca.as_bytes(),
        Some((identity.cert.as_bytes(), key_pem.as_bytes())),
    )
    .expect("TLS");
    TestClient::spawn(mqtt_options(gateway, &identity.client_id, tls), 8)
        .with_wait(WAIT)
        .refused_not_authorized("CONNACK of a revoked device")
        .await;
    let stats = manager.onboarding_stats();
    assert_eq!(stats.get(OnboardingMetric::PendingCreated), 1);
    assert!(stats.get(OnboardingMetric::Forbidden) >= 3);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_allowlist_approve_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allowed = DeviceKey::new();
    let allowed_cert = allowed.cert("allowed");
    let mut cfg = config(dir.path());
    cfg.onboarding.allow_fingerprints =
        vec![margo_schemas::pki::fingerprint(&allowed_cert).to_string()];
    let (manager, clock) = start_with_manual_clock(cfg).await;
    let admin = manager.admin();
    let https = Https::new(manager.http_addr().expect("https"), manager.pki().ca_pem());

    let token = admin
        .create_token(1, Duration::from_secs(3600), Some("line 3"))
        .await
        .expect("token");
    assert!(token.token.len() >= 22, "at least 128 bits");
    assert!(token
        .token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));

    let a = DeviceKey::new();
    let r = https
        .post_signed(
            body(&a.cert("a"), Some(with_token("line3-a", &token.token))),
            &a.signer,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let id_a = identity_of(&r.onboarding());
    let info = cert_info(
        certs_from_pem(id_a.cert.as_bytes(), "cert")
            .expect("pem")
            .remove(0)
            .as_ref(),
    )
    .expect("cert");
    assert_eq!(info.p256_public_key, Some(a.point()));

    // The token had one use.
    let b = DeviceKey::new();
    let b_cert = b.cert("b");
    let r = https
        .post_signed(
            body(&b_cert, Some(with_token("line3-b", &token.token))),
            &b.signer,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.detail().contains("used up"));
    // Unknown token.
    let r = https
        .post_signed(
            body(&b_cert, Some(with_token("line3-b", "not-a-token"))),
            &b.signer,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.detail().contains("unknown"));
    // Expired token: good until its TTL (by the manager's clock), refused
    // from then on.
    let short = admin
        .create_token(5, Duration::from_secs(1), None)
        .await
        .expect("token");
    assert_eq!(short.view.expires_at, clock.now_ms() + 1000);
    let expired = |tokens: Vec<margo_manager::onboarding::TokenView>| {
        tokens
            .into_iter()
            .find(|t| t.id == short.view.id)
            .expect("listed")
            .expired
    };
    clock.advance(Duration::from_millis(999));
    assert!(!expired(admin.tokens().await.expect("tokens")));
    clock.advance(Duration::from_millis(1));
    assert!(expired(admin.tokens().await.expect("tokens")));
    let r = https
        .post_signed(
            body(&b_cert, Some(with_token("line3-b", &short.token))),
            &b.signer,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.detail().contains("expired"));
    // None of these left a pending request.
    let listed = admin.onboarding_requests().await.expect("list");
    assert_eq!(listed.len(), 1, "only the approved one: {listed:?}");
    assert_eq!(listed[0].state, OnboardingState::Approved);
    assert_eq!(listed[0].client_id.as_ref(), Some(&id_a.client_id));

    // Allow-listed fingerprint: approved at once; the clashing claimed name gets a suffix.
    let r = https
        .post_signed(
            body(&allowed_cert, Some(claims("line3-a"))),
            &allowed.signer,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let resp = r.onboarding();
    assert_eq!(
        resp.extensions.identity.as_ref().map(|i| i.name.as_str()),
        Some("line3-a-2")
    );

    let tokens = admin.tokens().await.expect("tokens");
    let used = tokens
        .iter()
        .find(|t| t.id == token.view.id)
        .expect("listed");
    assert_eq!((used.uses_left, used.uses), (0, 1));
    assert_eq!(used.note.as_deref(), Some("line 3"));
    let listed_json = serde_json::to_string(&tokens).expect("json");
    assert!(
        !listed_json.contains(&token.token),
        "the token itself is never listed"
    );
    admin
        .revoke_token(&short.view.id)
        .await
        .expect("revoke token");
    assert_eq!(admin.tokens().await.expect("tokens").len(), 1);
    let stats = manager.onboarding_stats();
    assert_eq!(
        (
            stats.get(OnboardingMetric::ApprovedToken),
            stats.get(OnboardingMetric::ApprovedAllowlist)
        ),
        (1, 1)
    );
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_signatures_and_rejection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let https = Https::new(manager.http_addr().expect("https"), manager.pki().ca_pem());
    let device = DeviceKey::new();
    let cert = device.cert("dev");

    let raw = |certificate: String| {
        let mut req = OnboardingRequest::new(&cert);
        req.certificate = certificate;
        serde_json::to_vec(&req).expect("json")
    };
    // Garbage base64, not a certificate, malformed JSON.
    let r = https.post_signed(raw("***".into()), &device.signer).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.detail().contains("base64"));
    let r = https
        .post_signed(raw(data_encoding::BASE64.encode(b"hello")), &device.signer)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.detail().contains("neither PEM nor DER"), "{}", r.detail());
    let r = https
        .post_signed(b"{not json".to_vec(), &device.signer)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // An RSA certificate (PEM form, base64) is usable (tests/mtls.rs
    // onboards one), but this request is signed by another key: 401. An
    // expired certificate: 400.
    let rsa_pem = include_bytes!("fixtures/rsa-device.crt");
    let r = https
        .post_signed(raw(data_encoding::BASE64.encode(rsa_pem)), &device.signer)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.detail().contains("not the client certificate's key"),
        "{}",
        r.detail()
    );
    let mut old = CertificateParams::new(vec!["old".to_string()]).expect("params");
    old.not_before = rcgen::date_time_ymd(2000, 1, 1);
    old.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let old_cert = old.self_signed(&device.key).expect("old").der().to_vec();
    let r = https
        .post_signed(body(&old_cert, None), &device.signer)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.detail().contains("not valid now"), "{}", r.detail());

    // Signed by another key: 401. Missing or wrong Content-Digest: 400.
    let other = DeviceKey::new();
    let r = https.post_signed(body(&cert, None), &other.signer).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let payload = body(&cert, None);
    let (_, signature) = device.signer.headers(&payload).expect("sign");
    let r = https
        .send_json(
            Method::POST,
            "/api/v1/onboarding",
            &[(PAYLOAD_SIGNATURE, signature.clone())],
            payload.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.detail().contains("Content-Digest"));
    let r = https
        .send_json(
            Method::POST,
            "/api/v1/onboarding",
            &[
                (
                    CONTENT_DIGEST,
                    margo_schemas::http_sig::content_digest(b"other"),
                ),
                (PAYLOAD_SIGNATURE, signature),
            ],
            payload,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Nothing of the above was stored.
    assert!(admin.onboarding_requests().await.expect("list").is_empty());

    // Unknown paths, methods and requests are problems too.
    let r = https.get("/api/v1/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.detail();
    let r = https.get("/api/v1/onboarding").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    r.detail();
    let r = https
        .get(&format!("/api/v1/onboarding/requests/{}", "0".repeat(64)))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.detail();
    let r = https.get("/api/v1/onboarding/requests/..%2f").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Oversized body.
    let big = vec![b' '; 70 * 1024];
    let r = https.post_signed(big, &device.signer).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    r.detail();

    // Rejection: 403 on poll and on re-POST.
    let r = https
        .post_signed(body(&cert, Some(claims("dev"))), &device.signer)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let location = r.header("location").expect("location");
    let view = admin.reject(&fingerprint_hex(&cert)).await.expect("reject");
    assert_eq!(view.state, OnboardingState::Rejected);
    let r = https.get(&location).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.detail().contains("rejected"));
    let r = https
        .post_signed(body(&cert, Some(claims("dev"))), &device.signer)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let err = admin.approve("0000", None).await.expect_err("short prefix");
    assert_eq!(err.status(), Some(404));
    let stats = manager.onboarding_stats();
    assert!(
        stats.get(OnboardingMetric::BadRequest) >= 6,
        "{:?}",
        stats.to_map()
    );
    assert_eq!(stats.get(OnboardingMetric::BadSignature), 2);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_gets_429_and_the_pending_cap_503() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.onboarding.rate_per_minute = 1;
    cfg.onboarding.rate_burst = 5;
    cfg.onboarding.max_pending = 2;
    let manager = start(cfg).await;
    let https = Https::new(manager.http_addr().expect("https"), manager.pki().ca_pem());

    let devices: Vec<(DeviceKey, Vec<u8>)> = (0..3)
        .map(|i| {
            let d = DeviceKey::new();
            let cert = d.cert(&format!("d{i}"));
            (d, cert)
        })
        .collect();
    let mut statuses = Vec::new();
    for (d, cert) in &devices {
        let r = https.post_signed(body(cert, None), &d.signer).await;
        statuses.push(r.status);
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(r.header("retry-after").is_some());
            assert!(r.detail().contains("waiting for an operator"));
        }
    }
    assert_eq!(
        statuses,
        vec![
            StatusCode::ACCEPTED,
            StatusCode::ACCEPTED,
            StatusCode::SERVICE_UNAVAILABLE
        ]
    );
    // A waiting device may still re-post (it is not new).
    let (d0, cert0) = &devices[0];
    let r = https.post_signed(body(cert0, None), &d0.signer).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // Fifth request: the burst is spent after it.
    assert_eq!(
        https.get("/api/v1/onboarding/certificate").await.status,
        StatusCode::OK
    );
    let r = https.get("/api/v1/onboarding/certificate").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    r.detail();
    let stats = manager.onboarding_stats();
    assert_eq!(stats.get(OnboardingMetric::RateLimited), 1);
    assert_eq!(stats.get(OnboardingMetric::PendingFull), 1);
    let health = manager.admin().health().await.expect("health");
    assert_eq!(health.onboarding.get("rateLimited"), Some(&1));
    manager.shutdown().await;
}

/// Issue 12, finding 5, over the wire: one source address may hold only
/// `max_pending_per_source` waiting requests (503 with Retry-After beyond
/// it), and an operator clears a flood with one filtered reject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_is_capped_and_a_flood_is_rejected_in_one_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.onboarding.max_pending_per_source = 2;
    let manager = start(cfg).await;
    let https = Https::new(manager.http_addr().expect("https"), manager.pki().ca_pem());
    let devices: Vec<(DeviceKey, Vec<u8>)> = (0..3)
        .map(|i| {
            let d = DeviceKey::new();
            let cert = d.cert(&format!("flood{i}"));
            (d, cert)
        })
        .collect();
    let mut statuses = Vec::new();
    for (d, cert) in &devices {
        let r = https.post_signed(body(cert, None), &d.signer).await;
        statuses.push(r.status);
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(r.header("retry-after").is_some());
            assert!(r.detail().contains("from 127.0.0.1"), "{}", r.detail());
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::ACCEPTED,
            StatusCode::ACCEPTED,
            StatusCode::SERVICE_UNAVAILABLE
        ]
    );

    let admin = manager.admin();
    let listed = admin.onboarding_requests().await.expect("list");
    assert!(listed.iter().all(|r| r.expires_at.is_some()), "{listed:?}");
    let none = admin
        .reject_matching(&margo_manager::admin::RejectManyRequest::default())
        .await
        .expect_err("no filter");
    assert_eq!(none.status(), Some(422));
    let rejected = admin
        .reject_matching(&margo_manager::admin::RejectManyRequest {
            from: Some("127.0.0.0/8".into()),
            ..Default::default()
        })
        .await
        .expect("reject");
    assert_eq!(rejected.len(), 2);
    let (d0, cert0) = &devices[0];
    let r = https.post_signed(body(cert0, None), &d0.signer).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "rejected devices stay refused"
    );
    let (d2, cert2) = &devices[2];
    let r = https.post_signed(body(cert2, None), &d2.signer).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "the place is free again");
    manager.shutdown().await;
}
