//! The Margo HTTP API of the manager end to end: a real manager (embedded
//! broker, HTTPS listener, redb in a temp dir), a provisioned client whose
//! key signs every request, a hyper client over tokio-rustls trusting only
//! the fleet CA, and an MQTT subscriber on the embedded broker's loopback
//! listener to compare the HTTP manifest with the retained, signed MQTT one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hyper::{Method, StatusCode};
use margo_manager::admin::ProvisionedBundle;
use margo_manager::{ManagerConfig, ManagerHandle};
use margo_schemas::cose::VerifyingKey;
use margo_schemas::digest::Digest;
use margo_schemas::http_msg_sig::RequestSigner;
use margo_schemas::http_sig::{PayloadSigner, CONTENT_DIGEST, PAYLOAD_SIGNATURE};
use margo_schemas::ids::ClientId;
use margo_schemas::manifest::{StateManifest, MEDIA_TYPE};
use margo_schemas::messages::{Envelope, Message};
use margo_schemas::pki::{certs_from_pem, pkcs8_from_pem};
use margo_schemas::topics;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

mod common;
use common::{capabilities_body, start, Https, Reply, WAIT};
use margo_testkit::within;

const DEP_A: &str = "a3e2f5dc-912e-494f-8395-52cf3769bc06";
const DEP_B: &str = "b7e2f5dc-912e-494f-8395-52cf3769bc06";

/// The shared test configuration with a 4 KiB body limit.
fn config(dir: &Path) -> ManagerConfig {
    let mut config = common::config(dir);
    config.http.max_body_bytes = 4096;
    config
}

fn yaml(id: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
         metadata:\n  annotations:\n    id: {id}\n    applicationId: com-example-app\n  name: {name}\n\
         spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
         \x20     - name: web\n        properties:\n          packageLocation: {image}\n"
    )
}

impl Reply {
    /// Asserts `status` and an RFC 9457 problem body; returns its detail.
    fn problem(&self, status: StatusCode) -> String {
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
        let j: serde_json::Value = serde_json::from_slice(&self.body).expect("problem JSON");
        assert_eq!(j["status"], status.as_u16());
        assert!(j["title"].is_string() && j["type"].is_string(), "{j}");
        j["detail"].as_str().expect("detail").to_string()
    }

    fn ok(&self) -> &Self {
        assert!(
            self.status.is_success(),
            "HTTP {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        self
    }
}

/// An HTTPS client that trusts only the fleet CA and signs with a device key.
struct Device {
    https: Https,
    id: ClientId,
    signer: PayloadSigner,
    /// RFC 9421 signer, keyid = the client id.
    msg_signer: RequestSigner,
}

enum Sign {
    /// `X-Payload-Signature` (and `Content-Digest`).
    Yes,
    No,
    /// Signature headers computed over other bytes than sent.
    Over(Vec<u8>),
    /// RFC 9421 over the method, target and body, created now.
    Rfc9421,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

impl Device {
    fn new(addr: SocketAddr, bundle: &ProvisionedBundle) -> Self {
        let pkcs8 = pkcs8_from_pem(bundle.key_pem.as_bytes(), "device key").expect("pkcs8");
        Self {
            https: Https::new(addr, &bundle.ca_pem),
            id: bundle.client_id.clone(),
            signer: PayloadSigner::from_pkcs8(&pkcs8).expect("signer"),
            msg_signer: RequestSigner::from_pkcs8(&pkcs8, bundle.client_id.as_str())
                .expect("RFC 9421 signer"),
        }
    }

    /// RFC 9421 headers for a request as the test client sends it (`Host:
    /// localhost`).
    fn rfc9421(
        &self,
        signer: &RequestSigner,
        method: &Method,
        path: &str,
        body: &[u8],
        created: i64,
    ) -> Vec<(&'static str, String)> {
        signer
            .sign(
                method.as_str(),
                &format!("https://localhost{path}"),
                Some(body),
                created,
            )
            .expect("RFC 9421 sign")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        sign: Sign,
    ) -> Reply {
        let signed = match sign {
            Sign::Yes => Some(self.signer.headers(&body).expect("sign")),
            Sign::Over(ref other) => Some(self.signer.headers(other).expect("sign")),
            Sign::No | Sign::Rfc9421 => None,
        };
        let mut all: Vec<(&str, String)> = Vec::new();
        if matches!(sign, Sign::Rfc9421) {
            all.extend(self.rfc9421(&self.msg_signer, &method, path, &body, unix_now()));
        }
        if let Some((digest, signature)) = signed {
            all.push((CONTENT_DIGEST, digest));
            all.push((PAYLOAD_SIGNATURE, signature));
        }
        all.extend(headers.iter().map(|(k, v)| (*k, v.to_string())));
        self.https.send(method, path, &all, body).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, Vec::new(), Sign::Yes)
            .await
    }

    async fn post_json(&self, method: Method, path: &str, body: &serde_json::Value) -> Reply {
        let bytes = serde_json::to_vec(body).expect("json");
        self.send(
            method,
            path,
            &[("content-type", "application/json")],
            bytes,
            Sign::Yes,
        )
        .await
    }

    fn path(&self, rest: &str) -> String {
        format!("/api/v1/clients/{}{rest}", self.id)
    }
}

/// The retained, signed MQTT manifest of `client` with `version`, read on
/// the embedded broker's loopback listener.
async fn mqtt_manifest(
    manager: &ManagerHandle,
    client: &ClientId,
    signing_pem: &str,
    version: u64,
) -> StateManifest {
    let addr = manager.mqtt_addr().expect("embedded broker");
    let mut opts = MqttOptions::new(
        format!("http-api-test-{}", fastrand::u32(..)),
        "127.0.0.1",
        addr.port(),
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (mqtt, mut eventloop) = AsyncClient::new(opts, 16);
    mqtt.subscribe(topics::desired_manifest(client), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let signing = certs_from_pem(signing_pem.as_bytes(), "signing cert")
        .expect("signing cert")
        .remove(0);
    let key = VerifyingKey::from_certificate(signing.as_ref()).expect("signing key");
    within(WAIT, &format!("MQTT manifest version {version}"), async {
        loop {
            let event = eventloop.poll().await.expect("MQTT connection");
            let Event::Incoming(Packet::Publish(p)) = event else {
                continue;
            };
            if p.payload.is_empty() {
                continue;
            }
            let (_, topic) = topics::parse_device_topic(&p.topic).expect("topic");
            let env = Envelope::open(&p.payload, 1 << 20, &key, client, &topic)
                .expect("the MQTT manifest verifies");
            if let Message::Manifest(m) = env.msg {
                if m.manifest_version == version {
                    return m;
                }
            }
        }
    })
    .await
}

async fn http_manifest(device: &Device) -> (Reply, StateManifest) {
    let reply = device.get(&device.path("/deployments"), &[]).await;
    reply.ok();
    let manifest = serde_json::from_slice(&reply.body).expect("manifest JSON");
    (reply, manifest)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gzip");
    out
}

fn untar(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let tar = gunzip(bytes);
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut files = BTreeMap::new();
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        let mut body = Vec::new();
        entry.read_to_end(&mut body).expect("read entry");
        files.insert(name, body);
    }
    files
}

fn status_body(deployment: &str, state: &str, adopted: Option<u64>) -> serde_json::Value {
    let mut body = serde_json::json!({
        "apiVersion": "deployment.margo.org/v1alpha1",
        "kind": "DeploymentStatusManifest",
        "deploymentId": deployment,
        "status": {"state": state},
        "components": [{"name": "web", "state": state}],
    });
    if let Some(v) = adopted {
        body["adoptedManifestVersion"] = v.into();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_over_http_matches_mqtt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let bundle = admin.add_client("press-1", None).await.expect("provision");
    let device = Device::new(manager.http_addr().expect("HTTPS"), &bundle);

    // Nothing deployed yet: the zero-deployment manifest, version 1
    // (desired-state.md: "The first manifest for a given client MUST use the
    // value 1"; zero deployments → `bundle` present and null), on both
    // transports, with the usual ETag and 304.
    let (zero_reply, zero) = http_manifest(&device).await;
    assert_eq!(zero.manifest_version, 1);
    assert!(zero.deployments.is_empty());
    assert!(zero.bundle.is_none());
    let zero_json: serde_json::Value = serde_json::from_slice(&zero_reply.body).expect("json");
    assert_eq!(
        zero_json,
        serde_json::json!({"manifestVersion": 1, "bundle": null, "deployments": []})
    );
    assert_eq!(
        zero_reply.header("content-type").as_deref(),
        Some(MEDIA_TYPE)
    );
    let zero_etag = zero_reply.header("etag").expect("ETag");
    assert_eq!(zero_etag, format!("\"{}\"", Digest::of(&zero_reply.body)));
    let unchanged = device
        .get(
            &device.path("/deployments"),
            &[("if-none-match", &zero_etag)],
        )
        .await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    // No bundle to serve: any digest is 404.
    device
        .get(&device.path(&format!("/bundles/{}", Digest::of(b""))), &[])
        .await
        .problem(StatusCode::NOT_FOUND);

    let docs = [
        yaml(DEP_B, "app-b", "https://example.com/b.tar.gz"),
        yaml(DEP_A, "app-a", "https://example.com/a.tar.gz"),
    ];
    let deployed = admin
        .deploy(bundle.client_id.as_str(), docs.to_vec())
        .await
        .expect("deploy");
    assert_eq!(
        deployed.manifest_version, 2,
        "the first deploy follows version 1"
    );
    let (reply, manifest) = http_manifest(&device).await;

    // Same version, ids, digests and sizes as the retained MQTT manifest.
    let mqtt = mqtt_manifest(
        &manager,
        &bundle.client_id,
        &bundle.signing_cert_pem,
        deployed.manifest_version,
    )
    .await;
    assert_eq!(manifest.manifest_version, mqtt.manifest_version);
    let strip = |m: &StateManifest| {
        m.deployments
            .iter()
            .map(|d| (d.deployment_id.to_string(), d.digest, d.size_bytes))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&manifest), strip(&mqtt));
    assert_eq!(manifest.deployments.len(), 2);

    // Headers: media type, strong ETag over the exact bytes, deterministic.
    assert_eq!(reply.header("content-type").as_deref(), Some(MEDIA_TYPE));
    let etag = reply.header("etag").expect("ETag");
    assert_eq!(etag, format!("\"{}\"", Digest::of(&reply.body)));
    let (again, _) = http_manifest(&device).await;
    assert_eq!(again.body, reply.body, "manifest bytes are deterministic");

    // If-None-Match → 304 without a body; another tag → 200.
    let not_modified = device
        .get(&device.path("/deployments"), &[("if-none-match", &etag)])
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag").as_deref(), Some(etag.as_str()));
    device
        .get(
            &device.path("/deployments"),
            &[("if-none-match", "\"sha256:00\"")],
        )
        .await
        .ok();

    // gzip content coding on request: same ETag (of the decoded bytes),
    // decoded body equal to the identity one, Vary either way.
    assert_eq!(reply.header("vary").as_deref(), Some("accept-encoding"));
    assert!(reply.header("content-encoding").is_none());
    let zipped = device
        .get(&device.path("/deployments"), &[("accept-encoding", "gzip")])
        .await;
    zipped.ok();
    assert_eq!(zipped.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(zipped.header("vary").as_deref(), Some("accept-encoding"));
    assert_eq!(zipped.header("etag").as_deref(), Some(etag.as_str()));
    assert_eq!(gunzip(&zipped.body), reply.body);

    // Accept negotiation.
    for accept in [
        "application/json",
        "text/html",
        "application/vnd.margo.manifest.v1+json;q=0",
    ] {
        device
            .get(&device.path("/deployments"), &[("accept", accept)])
            .await
            .problem(StatusCode::NOT_ACCEPTABLE);
    }
    for accept in ["*/*", "application/*", MEDIA_TYPE] {
        device
            .get(&device.path("/deployments"), &[("accept", accept)])
            .await
            .ok();
    }

    // Each YAML by its URL: exact bytes and headers.
    let mut by_id = BTreeMap::new();
    for d in &manifest.deployments {
        let url = d.url.clone().expect("url");
        assert_eq!(
            url,
            device.path(&format!("/deployments/{}/{}", d.deployment_id, d.digest))
        );
        let r = device.get(&url, &[]).await;
        r.ok();
        assert_eq!(Digest::of(&r.body), d.digest);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/yaml")
        );
        assert_eq!(r.header("etag"), Some(format!("\"{}\"", d.digest)));
        assert_eq!(
            r.header("cache-control").as_deref(),
            Some("public, max-age=31536000, immutable")
        );
        let zipped = device.get(&url, &[("accept-encoding", "gzip")]).await;
        assert_eq!(zipped.header("content-encoding").as_deref(), Some("gzip"));
        assert_eq!(gunzip(&zipped.body), r.body);
        by_id.insert(format!("{}.yaml", d.deployment_id), r.body);
    }
    let expected: BTreeSet<&str> = docs.iter().map(String::as_str).collect();
    let served: BTreeSet<&str> = by_id
        .values()
        .map(|b| std::str::from_utf8(b).expect("utf-8"))
        .collect();
    assert_eq!(served, expected, "served YAML equals the deployed bytes");

    // Unknown digest, another deployment's digest, malformed digests.
    let a = &manifest.deployments[0];
    let b = &manifest.deployments[1];
    let unknown = Digest::of(b"nothing");
    device
        .get(
            &device.path(&format!("/deployments/{}/{unknown}", a.deployment_id)),
            &[],
        )
        .await
        .problem(StatusCode::NOT_FOUND);
    device
        .get(
            &device.path(&format!("/deployments/{}/{}", a.deployment_id, b.digest)),
            &[],
        )
        .await
        .problem(StatusCode::NOT_FOUND);
    // Malformed digests (and deployment ids) name nothing the manager has:
    // 404, the only refusal desired-state.md lists for this endpoint.
    for bad in [
        format!("sha512:{}", unknown.hex()),
        "sha256:XYZ".to_string(),
        unknown.hex(),
        format!("SHA256:{}", a.digest.hex()),
    ] {
        let detail = device
            .get(
                &device.path(&format!("/deployments/{}/{bad}", a.deployment_id)),
                &[],
            )
            .await
            .problem(StatusCode::NOT_FOUND);
        assert!(detail.contains("digest"), "{detail}");
    }
    device
        .get(
            &device.path(&format!("/deployments/a%2Fb/{}", a.digest)),
            &[],
        )
        .await
        .problem(StatusCode::NOT_FOUND);

    // The bundle: its digest is the digest of the served bytes, and it holds
    // exactly the referenced YAMLs.
    let bref = manifest.bundle.clone().expect("bundle with deployments");
    assert_eq!(
        bref.media_type.as_deref(),
        Some("application/vnd.margo.bundle.v1+tar+gzip")
    );
    let url = bref.url.clone().expect("bundle url");
    assert_eq!(url, device.path(&format!("/bundles/{}", bref.digest)));
    let archive = device.get(&url, &[]).await;
    archive.ok();
    assert_eq!(Digest::of(&archive.body), bref.digest);
    assert_eq!(bref.size_bytes, Some(archive.body.len() as u64));
    assert_eq!(
        archive.header("content-type").as_deref(),
        Some("application/vnd.margo.bundle.v1+tar+gzip")
    );
    assert_eq!(untar(&archive.body), by_id);
    let second = device.get(&url, &[]).await;
    assert_eq!(second.body, archive.body, "bundle bytes are deterministic");
    device
        .get(&device.path(&format!("/bundles/{unknown}")), &[])
        .await
        .problem(StatusCode::NOT_FOUND);
    for bad in [
        "md5:abc".to_string(),
        bref.digest.hex(),
        format!("sha256:{}", bref.digest.hex().to_uppercase()),
    ] {
        device
            .get(&device.path(&format!("/bundles/{bad}")), &[])
            .await
            .problem(StatusCode::NOT_FOUND);
    }

    // An update: new version on both transports, the old bundle is gone.
    let changed = admin
        .deploy(
            bundle.client_id.as_str(),
            vec![yaml(DEP_A, "app-a", "https://example.com/a2.tar.gz")],
        )
        .await
        .expect("update");
    let (_, updated) = http_manifest(&device).await;
    let mqtt = mqtt_manifest(
        &manager,
        &bundle.client_id,
        &bundle.signing_cert_pem,
        changed.manifest_version,
    )
    .await;
    assert_eq!(updated.manifest_version, changed.manifest_version);
    assert_eq!(strip(&updated), strip(&mqtt));
    device.get(&url, &[]).await.problem(StatusCode::NOT_FOUND);
    let stale = device
        .get(&device.path("/deployments"), &[("if-none-match", &etag)])
        .await;
    assert_eq!(stale.status, StatusCode::OK, "a new version has a new ETag");

    // Zero deployments: bundle is present and null.
    for id in [DEP_A, DEP_B] {
        admin
            .undeploy(bundle.client_id.as_str(), id)
            .await
            .expect("undeploy");
    }
    let empty = device.get(&device.path("/deployments"), &[]).await;
    empty.ok();
    let json: serde_json::Value = serde_json::from_slice(&empty.body).expect("json");
    assert!(json.as_object().expect("object").contains_key("bundle"));
    assert!(json["bundle"].is_null());
    assert_eq!(json["deployments"], serde_json::json!([]));

    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_over_http_show_like_mqtt_and_every_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let bundle = admin.add_client("press-2", None).await.expect("provision");
    let other = admin.add_client("press-3", None).await.expect("provision");
    let addr = manager.http_addr().expect("HTTPS");
    let device = Device::new(addr, &bundle);
    let deployed = admin
        .deploy(
            bundle.client_id.as_str(),
            vec![yaml(DEP_A, "app-a", "https://example.com/a.tar.gz")],
        )
        .await
        .expect("deploy");
    let v = deployed.manifest_version;
    let status_path = device.path(&format!("/deployments/{DEP_A}/status"));

    // The specification's status payloads are accepted (200): the page
    // example (no apiVersion/kind/adoptedManifestVersion, empty-string error
    // members) and the 1.0.0 OpenAPI shape (kind DeploymentStatusManifest,
    // error without source), with this client's deployment id.
    for name in [
        "status-02b3189e-example.json",
        "status-openapi-1.0.0-schema.json",
    ] {
        let mut body: serde_json::Value =
            serde_json::from_slice(&spec_fixture(name)).expect("json");
        body["deploymentId"] = DEP_A.into();
        let reply = device.post_json(Method::POST, &status_path, &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
    }

    // A status over HTTP shows in the admin status API like an MQTT one.
    device
        .post_json(
            Method::POST,
            &status_path,
            &status_body(DEP_A, "installed", Some(v)),
        )
        .await
        .ok();
    let fleet = admin
        .status(Some(bundle.client_id.as_str()))
        .await
        .expect("status");
    let view = fleet[0]
        .deployments
        .iter()
        .find(|d| d.deployment_id.as_str() == DEP_A)
        .expect("deployment view");
    assert_eq!(view.state.map(|s| s.as_str()), Some("installed"));
    assert_eq!(view.reported_manifest_version, Some(v));
    assert_eq!(view.components.len(), 1);
    assert!(view.updated_at.is_some());
    assert_eq!(fleet[0].applying_version, Some(v));
    assert!(fleet[0].last_seen.is_some());

    // Capabilities: gateway first (201), child before parent refused (404),
    // then the child (201), a replacement (201: 1.0.0/rc.2 list only 201),
    // shown by `clients show`.
    let caps = device.path("/capabilities");
    device
        .post_json(
            Method::POST,
            &format!("{caps}/gw/child"),
            &capabilities_body("gw/child"),
        )
        .await
        .problem(StatusCode::NOT_FOUND);
    let created = device
        .post_json(
            Method::POST,
            &format!("{caps}/gw"),
            &capabilities_body("gw"),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let child = device
        .post_json(
            Method::POST,
            &format!("{caps}/gw%2Fchild"),
            &capabilities_body("gw/child"),
        )
        .await;
    assert_eq!(child.status, StatusCode::CREATED);
    let replaced = device
        .post_json(Method::PUT, &format!("{caps}/gw"), &capabilities_body("gw"))
        .await;
    assert_eq!(replaced.status, StatusCode::CREATED);
    let body_path = device
        .post_json(Method::POST, &caps, &capabilities_body("gw"))
        .await;
    assert_eq!(
        body_path.status,
        StatusCode::CREATED,
        "Margo 1.0.0 path, id from the body"
    );
    let details = admin
        .client(bundle.client_id.as_str())
        .await
        .expect("client");
    let devices: Vec<&str> = details
        .capabilities
        .iter()
        .map(|c| c.device_id.as_str())
        .collect();
    assert_eq!(devices, ["gw", "gw/child"]);
    // Deleting a gateway with a child is refused; the child, then the gateway, go.
    // (RFC 9421: X-Payload-Signature cannot authorize a bodiless DELETE.)
    let delete = |path: String| {
        let device = &device;
        async move {
            device
                .send(Method::DELETE, &path, &[], Vec::new(), Sign::Rfc9421)
                .await
        }
    };
    delete(format!("{caps}/gw"))
        .await
        .problem(StatusCode::CONFLICT);
    assert_eq!(
        delete(format!("{caps}/gw/child")).await.status,
        StatusCode::NO_CONTENT
    );
    delete(format!("{caps}/gw/child"))
        .await
        .problem(StatusCode::NOT_FOUND);

    // ---- every refusal, nothing stored ---------------------------------------
    let before = admin
        .status(Some(bundle.client_id.as_str()))
        .await
        .expect("status");
    let good = serde_json::to_vec(&status_body(DEP_A, "failed", Some(v))).expect("json");
    let json_ct: &[(&str, &str)] = &[("content-type", "application/json")];

    // 401: no credential at all; 400: wrong Content-Digest.
    device
        .send(Method::POST, &status_path, json_ct, good.clone(), Sign::No)
        .await
        .problem(StatusCode::UNAUTHORIZED);
    device
        .send(
            Method::POST,
            &status_path,
            json_ct,
            good.clone(),
            Sign::Over(b"other".to_vec()),
        )
        .await
        .problem(StatusCode::BAD_REQUEST);
    // 401: right digest, signature by another key.
    let stranger = Device::new(addr, &other);
    let (digest, _) = device.signer.headers(&good).expect("sign");
    let (_, foreign) = stranger.signer.headers(&good).expect("sign");
    device
        .send(
            Method::POST,
            &status_path,
            &[
                ("content-type", "application/json"),
                (CONTENT_DIGEST, &digest),
                (PAYLOAD_SIGNATURE, &foreign),
            ],
            good.clone(),
            Sign::No,
        )
        .await
        .problem(StatusCode::UNAUTHORIZED);
    // 401: unknown client (well formed id): there is no key to verify with.
    let ghost = format!("/api/v1/clients/zzzzzzzz/deployments/{DEP_A}/status");
    device
        .send(Method::POST, &ghost, json_ct, good.clone(), Sign::Yes)
        .await
        .problem(StatusCode::UNAUTHORIZED);
    // 400: malformed path ids, traversal.
    for path in [
        format!("/api/v1/clients/UPPER/deployments/{DEP_A}/status"),
        device.path("/deployments/a%2Fb/status"),
        device.path("/deployments/..%2F..%2Fx/status"),
        device.path("/deployments/%2e%2e/status"),
    ] {
        device
            .send(Method::POST, &path, json_ct, good.clone(), Sign::Yes)
            .await
            .problem(StatusCode::BAD_REQUEST);
    }
    device
        .send(
            Method::POST,
            &format!("{caps}/gw/../x"),
            json_ct,
            serde_json::to_vec(&capabilities_body("gw")).expect("json"),
            Sign::Yes,
        )
        .await
        .problem(StatusCode::BAD_REQUEST);
    // 413: over http.max_body_bytes.
    let mut huge = status_body(DEP_A, "failed", Some(v));
    huge["padding"] = "x".repeat(8192).into();
    device
        .post_json(Method::POST, &status_path, &huge)
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE);
    // 415: not JSON.
    device
        .send(
            Method::POST,
            &status_path,
            &[("content-type", "text/plain")],
            good.clone(),
            Sign::Yes,
        )
        .await
        .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // 400: malformed JSON.
    device
        .send(
            Method::POST,
            &status_path,
            json_ct,
            b"{not json".to_vec(),
            Sign::Yes,
        )
        .await
        .problem(StatusCode::BAD_REQUEST);
    // 422: status rules, id mismatch, wrong shape, a version never issued,
    // invalid capabilities, capabilities id mismatch.
    let mut mismatch = status_body(DEP_A, "installed", Some(v));
    mismatch["status"]["state"] = "failed".into();
    let unprocessable = [
        (status_path.clone(), mismatch),
        (
            status_path.clone(),
            status_body(DEP_B, "installed", Some(v)),
        ),
        (
            status_path.clone(),
            serde_json::json!({"deploymentId": DEP_A}),
        ),
        (
            status_path.clone(),
            status_body(DEP_A, "installed", Some(v + 5)),
        ),
        (
            format!("{caps}/gw"),
            serde_json::json!({"apiVersion": "device.margo.org/v1alpha1", "kind": "DeviceCapabilitiesManifest",
                "properties": {"id": "gw", "vendor": "", "modelNumber": "E1", "serialNumber": "1", "memory": "lots"}}),
        ),
        (format!("{caps}/gw"), capabilities_body("other")),
    ];
    for (path, body) in unprocessable {
        device
            .post_json(Method::POST, &path, &body)
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY);
    }
    // 409: a stale (replayed) status for an older manifest version.
    admin
        .deploy(
            bundle.client_id.as_str(),
            vec![yaml(DEP_A, "app-a", "https://example.com/a3.tar.gz")],
        )
        .await
        .expect("update");
    device
        .post_json(
            Method::POST,
            &status_path,
            &status_body(DEP_A, "installed", Some(v + 1)),
        )
        .await
        .ok();
    let after_update = admin
        .status(Some(bundle.client_id.as_str()))
        .await
        .expect("status");
    device
        .post_json(
            Method::POST,
            &status_path,
            &status_body(DEP_A, "failed", Some(v)),
        )
        .await
        .problem(StatusCode::CONFLICT);
    // 404: a status for a deployment never assigned to this client (R6),
    // over either path id; nothing stored.
    device
        .post_json(
            Method::POST,
            &device.path(&format!("/deployments/{DEP_B}/status")),
            &status_body(DEP_B, "installed", Some(v + 1)),
        )
        .await
        .problem(StatusCode::NOT_FOUND);
    let still = admin
        .status(Some(bundle.client_id.as_str()))
        .await
        .expect("status");
    assert_eq!(
        still[0].deployments, after_update[0].deployments,
        "nothing stored on refusal"
    );
    assert_ne!(before[0].deployments, after_update[0].deployments);
    assert!(still[0]
        .deployments
        .iter()
        .all(|d| d.deployment_id.as_str() != DEP_B));

    // Reads: unsigned → 401 (require_signed_reads), malformed client id → 400,
    // unknown client → 401, unknown route → 404 problem, wrong method → 405.
    device
        .send(
            Method::GET,
            &device.path("/deployments"),
            &[],
            Vec::new(),
            Sign::No,
        )
        .await
        .problem(StatusCode::UNAUTHORIZED);
    device
        .get("/api/v1/clients/Bad-Id/deployments", &[])
        .await
        .problem(StatusCode::BAD_REQUEST);
    device
        .get("/api/v1/clients/zzzzzzzz/deployments", &[])
        .await
        .problem(StatusCode::UNAUTHORIZED);
    device
        .send(
            Method::DELETE,
            &device.path("/deployments"),
            &[],
            Vec::new(),
            Sign::Yes,
        )
        .await
        .problem(StatusCode::METHOD_NOT_ALLOWED);

    // An undeployed deployment is still reported while the device removes
    // it: accepted (200), shown as no longer desired.
    let removed_version = admin
        .undeploy(bundle.client_id.as_str(), DEP_A)
        .await
        .expect("undeploy")
        .manifest_version;
    device
        .post_json(
            Method::POST,
            &status_path,
            &status_body(DEP_A, "removed", Some(removed_version)),
        )
        .await
        .ok();
    let fleet = admin
        .status(Some(bundle.client_id.as_str()))
        .await
        .expect("status");
    let view = fleet[0]
        .deployments
        .iter()
        .find(|d| d.deployment_id.as_str() == DEP_A)
        .expect("removed deployment still shown");
    assert_eq!(view.state.map(|s| s.as_str()), Some("removed"));
    assert!(view.desired_digest.is_none());

    // 403: revoked client, on reads and reports.
    admin
        .revoke(bundle.client_id.as_str())
        .await
        .expect("revoke");
    device
        .get(&device.path("/deployments"), &[])
        .await
        .problem(StatusCode::FORBIDDEN);
    device
        .post_json(
            Method::POST,
            &status_path,
            &status_body(DEP_A, "installed", Some(v + 1)),
        )
        .await
        .problem(StatusCode::FORBIDDEN);

    manager.shutdown().await;
}

/// RFC 9421 HTTP Message Signatures on the clientId routes, beside the old
/// scheme: reads without Content-Digest, bodies with it, the time window,
/// the key, the binding to method and path, and the order of checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9421_signatures_bind_method_path_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let bundle = admin.add_client("press-9", None).await.expect("provision");
    let other = admin.add_client("press-10", None).await.expect("provision");
    let addr = manager.http_addr().expect("HTTPS");
    let device = Device::new(addr, &bundle);
    let stranger = Device::new(addr, &other);
    let deployed = admin
        .deploy(
            bundle.client_id.as_str(),
            vec![yaml(DEP_A, "app-a", "https://example.com/a.tar.gz")],
        )
        .await
        .expect("deploy");
    let v = deployed.manifest_version;
    let manifest = device.path("/deployments");
    let accept: &[(&str, &str)] = &[("accept", MEDIA_TYPE)];

    // A signed manifest GET: no Content-Digest header, no digest component.
    let signed_get = device.rfc9421(&device.msg_signer, &Method::GET, &manifest, b"", unix_now());
    assert!(signed_get.iter().all(|(n, _)| *n != CONTENT_DIGEST));
    let reply = device
        .https
        .send(Method::GET, &manifest, &signed_get, Vec::new())
        .await;
    reply.ok();
    let served: StateManifest = serde_json::from_slice(&reply.body).expect("manifest");
    assert_eq!(served.manifest_version, v);
    // The X-Payload-Signature form still works for reads.
    device.get(&manifest, accept).await.ok();

    // A status POST with a body: Content-Digest covered.
    let status_path = device.path(&format!("/deployments/{DEP_A}/status"));
    let body = serde_json::to_vec(&status_body(DEP_A, "installed", Some(v))).expect("json");
    let json_ct = ("content-type", "application/json".to_string());
    let send_signed = |headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let device = &device;
        let path = status_path.clone();
        let json_ct = json_ct.clone();
        async move {
            let mut all = headers;
            all.push(json_ct);
            device.https.send(Method::POST, &path, &all, body).await
        }
    };
    let headers = device.rfc9421(
        &device.msg_signer,
        &Method::POST,
        &status_path,
        &body,
        unix_now(),
    );
    assert_eq!(
        send_signed(headers, body.clone()).await.status,
        StatusCode::OK
    );

    // Another client's key, with this client's keyid: 401.
    let foreign = device.rfc9421(
        &stranger.msg_signer,
        &Method::POST,
        &status_path,
        &body,
        unix_now(),
    );
    let detail = send_signed(foreign, body.clone())
        .await
        .problem(StatusCode::UNAUTHORIZED);
    assert!(
        detail.contains("keyid") || detail.contains("verify"),
        "{detail}"
    );
    // The stranger's own keyid on this client's path: 401 (keyid names another client).
    let theirs = stranger.rfc9421(
        &stranger.msg_signer,
        &Method::POST,
        &status_path,
        &body,
        unix_now(),
    );
    send_signed(theirs, body.clone())
        .await
        .problem(StatusCode::UNAUTHORIZED);
    // Too old a `created` (10 minutes), and an `expires` already passed.
    let mut long_lived = RequestSigner::from_pkcs8(
        &pkcs8_from_pem(bundle.key_pem.as_bytes(), "key").expect("pkcs8"),
        bundle.client_id.as_str(),
    )
    .expect("signer");
    long_lived.validity = 3600;
    let old = device.rfc9421(
        &long_lived,
        &Method::POST,
        &status_path,
        &body,
        unix_now() - 600,
    );
    let detail = send_signed(old, body.clone())
        .await
        .problem(StatusCode::UNAUTHORIZED);
    assert!(detail.contains("in the past"), "{detail}");
    let mut short_lived = long_lived;
    short_lived.validity = 5;
    let expired = device.rfc9421(
        &short_lived,
        &Method::POST,
        &status_path,
        &body,
        unix_now() - 60,
    );
    let detail = send_signed(expired, body.clone())
        .await
        .problem(StatusCode::UNAUTHORIZED);
    assert!(detail.contains("expired"), "{detail}");
    // A `created` too far in the future (beyond the 60 s skew).
    let future = device.rfc9421(
        &device.msg_signer,
        &Method::POST,
        &status_path,
        &body,
        unix_now() + 600,
    );
    send_signed(future, body.clone())
        .await
        .problem(StatusCode::UNAUTHORIZED);
    // Tampered body (headers intact): the signature holds, the digest does not: 400.
    let headers = device.rfc9421(
        &device.msg_signer,
        &Method::POST,
        &status_path,
        &body,
        unix_now(),
    );
    let tampered = serde_json::to_vec(&status_body(DEP_A, "failed", Some(v))).expect("json");
    let detail = send_signed(headers, tampered)
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert!(detail.contains("Content-Digest"), "{detail}");
    // A signature over the GET of the manifest, sent on the status route: 401.
    let mut moved = signed_get.clone();
    moved.push((
        CONTENT_DIGEST,
        margo_schemas::http_msg_sig::content_digest(&body),
    ));
    send_signed(moved, body.clone())
        .await
        .problem(StatusCode::UNAUTHORIZED);

    // A GET without any credential: 401, never 400.
    let detail = device
        .send(Method::GET, &manifest, accept, Vec::new(), Sign::No)
        .await
        .problem(StatusCode::UNAUTHORIZED);
    assert!(detail.contains("no credential"), "{detail}");
    // Content negotiation comes first: an unsigned GET asking for text/plain is 406.
    device
        .send(
            Method::GET,
            &manifest,
            &[("accept", "text/plain")],
            Vec::new(),
            Sign::No,
        )
        .await
        .problem(StatusCode::NOT_ACCEPTABLE);

    // Capabilities, then a signed GET's headers replayed as DELETE of them.
    let caps = device.path("/capabilities/gw");
    let created = device
        .send(
            Method::PUT,
            &caps,
            &[("content-type", "application/json")],
            serde_json::to_vec(&capabilities_body("gw")).expect("json"),
            Sign::Rfc9421,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    // Old scheme: the GET's X-Payload-Signature (over the empty body) is
    // the same for every bodiless request, so a DELETE never accepts it.
    let (digest, xps) = device.signer.headers(b"").expect("sign");
    let replay_old = vec![(CONTENT_DIGEST, digest), (PAYLOAD_SIGNATURE, xps)];
    let reply = device
        .https
        .send(Method::GET, &manifest, &replay_old, Vec::new())
        .await;
    reply.ok();
    let detail = device
        .https
        .send(Method::DELETE, &caps, &replay_old, Vec::new())
        .await
        .problem(StatusCode::UNAUTHORIZED);
    assert!(detail.contains("DELETE"), "{detail}");
    // RFC 9421: the GET's signature covers @method and @target-uri.
    let reply = device
        .https
        .send(Method::GET, &manifest, &signed_get, Vec::new())
        .await;
    reply.ok();
    device
        .https
        .send(Method::DELETE, &caps, &signed_get, Vec::new())
        .await
        .problem(StatusCode::UNAUTHORIZED);
    let get_of_caps = device.rfc9421(&device.msg_signer, &Method::GET, &caps, b"", unix_now());
    device
        .https
        .send(Method::DELETE, &caps, &get_of_caps, Vec::new())
        .await
        .problem(StatusCode::UNAUTHORIZED);
    let still = admin
        .client(bundle.client_id.as_str())
        .await
        .expect("client");
    assert_eq!(still.capabilities.len(), 1, "nothing deleted by a replay");
    // A DELETE signed as a DELETE goes.
    let reply = device
        .send(Method::DELETE, &caps, &[], Vec::new(), Sign::Rfc9421)
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);

    manager.shutdown().await;
}

/// `http.signature_schemes = ["rfc9421"]`: the old scheme is refused, RFC
/// 9421 served; `require_signed_reads = false`: reads need no credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_scheme_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut strict = config(dir.path());
    strict.http.signature_schemes = vec![margo_manager::config::SignatureScheme::Rfc9421];
    strict.http.require_signed_reads = false;
    let manager = start(strict).await;
    let admin = manager.admin();
    let bundle = admin.add_client("press-11", None).await.expect("provision");
    let device = Device::new(manager.http_addr().expect("HTTPS"), &bundle);
    let deployed = admin
        .deploy(
            bundle.client_id.as_str(),
            vec![yaml(DEP_A, "app-a", "https://example.com/a.tar.gz")],
        )
        .await
        .expect("deploy");
    let status_path = device.path(&format!("/deployments/{DEP_A}/status"));
    let body = serde_json::to_vec(&status_body(
        DEP_A,
        "installed",
        Some(deployed.manifest_version),
    ))
    .expect("json");
    let ct: &[(&str, &str)] = &[("content-type", "application/json")];
    let detail = device
        .send(Method::POST, &status_path, ct, body.clone(), Sign::Yes)
        .await
        .problem(StatusCode::UNAUTHORIZED);
    assert!(detail.contains("signature_schemes"), "{detail}");
    device
        .send(Method::POST, &status_path, ct, body, Sign::Rfc9421)
        .await
        .ok();
    // Reads: no credential needed; an unknown client is then 404.
    device
        .send(
            Method::GET,
            &device.path("/deployments"),
            &[],
            Vec::new(),
            Sign::No,
        )
        .await
        .ok();
    device
        .send(
            Method::GET,
            "/api/v1/clients/zzzzzzzz/deployments",
            &[],
            Vec::new(),
            Sign::No,
        )
        .await
        .problem(StatusCode::NOT_FOUND);
    manager.shutdown().await;
}

/// Every route the router serves is in `manager/openapi.yaml`, and every
/// path and method there is served.
#[test]
fn openapi_document_matches_the_router() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("manager/openapi.yaml");
    let doc: serde_json::Value = serde_norway::from_str(&text).expect("OpenAPI YAML");
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.0")));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = margo_manager::http::route_table()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_string(), p))
        .collect();
    assert_eq!(
        documented, served,
        "manager/openapi.yaml and http::api_routes list different routes"
    );
}

/// A specification payload from `schemas/tests/fixtures/spec` (see its README).
fn spec_fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/tests/fixtures/spec")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every published capabilities shape over HTTP (the 1.0.0 OpenAPI shape,
/// the rc.2-era page example with `"memory": "59 Gi"`, the rc.3-era page
/// example): `201` each time, created or replaced, and the document is kept
/// as sent, its normalised form beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_capabilities_shape_is_stored_as_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let bundle = admin.add_client("press-9", None).await.expect("provision");
    let device = Device::new(manager.http_addr().expect("HTTPS"), &bundle);
    let id = "northstarida.xtapro.k8s.edge";
    for (name, method, path) in [
        (
            "capabilities-openapi-1.0.0-schema.json",
            Method::POST,
            device.path("/capabilities"),
        ),
        (
            "capabilities-00ab1b4b-example.json",
            Method::POST,
            device.path(&format!("/capabilities/{id}")),
        ),
        (
            "capabilities-aae95624-example.json",
            Method::PUT,
            device.path(&format!("/capabilities/{id}")),
        ),
    ] {
        let sent = spec_fixture(name);
        let reply = device
            .send(
                method,
                &path,
                &[("content-type", "application/json")],
                sent.clone(),
                Sign::Yes,
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{name}");
        let details = admin
            .client(bundle.client_id.as_str())
            .await
            .expect("client");
        assert_eq!(details.capabilities.len(), 1, "{name}");
        let entry = &details.capabilities[0];
        assert_eq!(entry.device_id, id);
        let sent_json: serde_json::Value = serde_json::from_slice(&sent).expect("json");
        assert_eq!(entry.manifest, sent_json, "{name}: stored as sent");
        let n = entry.normalized.as_ref().expect("normalised");
        assert_eq!(n.memory_bytes, Some(59 << 30), "{name}");
        assert_eq!(n.storage_bytes, Some(1862 << 30), "{name}");
    }
    // The exact bytes are what the admin API serves for the device.
    let shown = admin
        .client(bundle.client_id.as_str())
        .await
        .expect("client");
    assert_eq!(
        shown.capabilities[0].normalized.as_ref().map(|n| n.shape),
        Some(margo_schemas::revision::Revision::Rc3)
    );
    manager.shutdown().await;
}

/// Issue 12, finding 7: the headers of a device's signed request are never
/// a credential for another request. Every signed request of the
/// `/api/v1/clients/{clientId}` family, replayed on every other method and
/// endpoint of that family, is refused (RFC 9421 binds `@method`,
/// `@target-uri` and the body's `Content-Digest`); each is accepted where
/// it was signed for; and a signature older than `http.signature_max_age`
/// is refused everywhere, so a captured request cannot be replayed later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signed_request_is_a_credential_for_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let bundle = admin.add_client("press-11", None).await.expect("provision");
    let device = Device::new(manager.http_addr().expect("HTTPS"), &bundle);
    let deployed = admin
        .deploy(
            bundle.client_id.as_str(),
            vec![yaml(DEP_A, "app-a", "https://example.com/a.tar.gz")],
        )
        .await
        .expect("deploy");
    let manifest = device.path("/deployments");
    let served = device
        .send(Method::GET, &manifest, &[], Vec::new(), Sign::Rfc9421)
        .await;
    served.ok();
    let served: StateManifest = serde_json::from_slice(&served.body).expect("manifest");
    let doc = &served.deployments[0];
    let json = |v: serde_json::Value| serde_json::to_vec(&v).expect("json");
    // (what, method, path, body): one of each signed route.
    let requests: Vec<(&str, Method, String, Vec<u8>)> = vec![
        ("GET manifest", Method::GET, manifest.clone(), Vec::new()),
        (
            "GET deployment",
            Method::GET,
            device.path(&format!(
                "/deployments/{}/{}",
                doc.deployment_id, doc.digest
            )),
            Vec::new(),
        ),
        (
            "POST status",
            Method::POST,
            device.path(&format!("/deployments/{DEP_A}/status")),
            json(status_body(
                DEP_A,
                "installed",
                Some(deployed.manifest_version),
            )),
        ),
        (
            "PUT capabilities",
            Method::PUT,
            device.path("/capabilities"),
            json(capabilities_body("gw")),
        ),
        (
            "PUT capabilities/{deviceId}",
            Method::PUT,
            device.path("/capabilities/gw"),
            json(capabilities_body("gw")),
        ),
        (
            "DELETE capabilities/{deviceId}",
            Method::DELETE,
            device.path("/capabilities/gw"),
            Vec::new(),
        ),
    ];
    let send = |method: &Method, path: &str, headers: &[(&'static str, String)], body: &[u8]| {
        let mut all = headers.to_vec();
        if !body.is_empty() {
            all.push(("content-type", "application/json".to_string()));
        }
        let (method, path, body) = (method.clone(), path.to_string(), body.to_vec());
        let https = &device.https;
        async move { https.send(method, &path, &all, body).await }
    };
    for (what, method, path, body) in &requests {
        let signed = device.rfc9421(&device.msg_signer, method, path, body, unix_now());
        for (target, t_method, t_path, t_body) in &requests {
            if target == what {
                continue;
            }
            let reply = send(t_method, t_path, &signed, t_body).await;
            assert!(
                matches!(
                    reply.status,
                    StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST
                ),
                "{what}'s signature replayed as {target}: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
        let reply = send(method, path, &signed, body).await;
        assert!(
            reply.status.is_success(),
            "{what} where it was signed for: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        // Captured and replayed later than the freshness window (300 s).
        let stale = device.rfc9421(&device.msg_signer, method, path, body, unix_now() - 301);
        let reply = send(method, path, &stale, body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{what} replayed late"
        );
    }
    manager.shutdown().await;
}

/// A TCP connection to `addr` from the local address `from` (loopback has
/// the whole 127/8, so tests can come from several sources).
async fn connect_from(from: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from.parse().expect("ip"), 0))
        .expect("bind the source address");
    socket.connect(addr).await.expect("connect")
}

/// Whether the server closed `stream` within `wait` (EOF or reset).
async fn closed_within(stream: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Issue 12, finding 4 (HTTPS): one source address holding ~1,100 idle
/// sockets made 27 of 30 legitimate requests fail. Now one source network
/// holds at most `http.max_connections_per_source`; beyond it a connection
/// is closed at once and counted, and other sources are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_every_https_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.http.max_connections_per_source = 2;
    let manager = start(cfg).await;
    let addr = manager.http_addr().expect("HTTPS");
    let stats = manager.http_stats();

    let mut idle_1 = connect_from("127.0.0.1", addr).await;
    let mut idle_2 = connect_from("127.0.0.1", addr).await;
    let mut third = connect_from("127.0.0.1", addr).await;
    assert!(
        closed_within(&mut third, WAIT).await,
        "the third from one source is closed"
    );
    let refused = stats.get(margo_manager::http::HttpMetric::RefusedSourceCap);
    assert_eq!(refused, 1);
    assert!(!closed_within(&mut idle_1, Duration::from_millis(300)).await);
    assert!(!closed_within(&mut idle_2, Duration::from_millis(300)).await);

    // Another source is served while the first holds its share.
    let mut other = connect_from("127.0.0.2", addr).await;
    assert!(
        !closed_within(&mut other, Duration::from_millis(300)).await,
        "another source gets a slot"
    );
    drop(other);
    drop(idle_1);
    // The slot comes back when a connection closes (its handshake fails at
    // EOF and the task ends): then a real request from the first source goes.
    let failed = margo_manager::http::HttpMetric::HandshakeFailed;
    within(WAIT, "both closed connections noticed", async {
        while stats.get(failed) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let https = Https::new(addr, manager.pki().ca_pem());
    let reply = https
        .send(
            Method::GET,
            "/api/v1/onboarding/certificate",
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    drop(idle_2);
    manager.shutdown().await;
}
