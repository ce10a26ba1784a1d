//! The HTTP transport against a fake Margo manager over real TLS 1.3
//! (tokio-rustls + hyper), with the agent's real redb store in a temp dir.
//! The fake serves a manifest with an `ETag`, single documents and a
//! tar.gz bundle, verifies every request's `Content-Digest` and
//! `X-Payload-Signature` against the device certificate, records every
//! request, and can tamper with what it serves.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{dep, yaml, Fleet, WAIT};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use margo_agent::clock::{Clock, SimulatedClock, SystemClock};
use margo_agent::config::{ApiMode, SignatureScheme, Transport};
use margo_agent::http_transport::{
    CheckError, CheckOutcome, HttpDeps, HttpSettings, HttpTransport,
};
use margo_agent::identity::Identity;
use margo_agent::outbox::Uplink;
use margo_agent::Store;
use margo_schemas::digest::Digest;
use margo_schemas::http_msg_sig::{self, PublicKey};
use margo_schemas::http_sig;
use margo_schemas::manifest::{BundleRef, DeploymentRef, StateManifest};
use margo_schemas::messages::{Message, StateReport, StatusReport};
use margo_schemas::pki;
use margo_schemas::status::{ComponentStatus, DeploymentState, DeploymentStatus};
use margo_testkit::{eventually, within};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CLIENT: &str = "httpclient01";

/// What the fake manager serves and saw.
#[derive(Default)]
struct FakeState {
    /// The manifest body and its ETag.
    manifest: Option<(Vec<u8>, String)>,
    /// Path → body of deployment documents.
    docs: BTreeMap<String, Vec<u8>>,
    /// Path → body of the bundle.
    bundles: BTreeMap<String, Vec<u8>>,
    /// Answer to status and capabilities reports.
    report_status: Option<StatusCode>,
    /// `(method, path, if-none-match)` of every request.
    requests: Vec<(String, String, Option<String>)>,
    /// `(path, body)` of every report.
    reports: Vec<(String, Vec<u8>)>,
    bad_signatures: usize,
    /// Requests that verified with RFC 9421 / with `X-Payload-Signature`.
    rfc9421_signed: usize,
    payload_signed: usize,
    /// Bodiless requests that carried a `Content-Digest` anyway.
    bodiless_with_digest: usize,
}

impl FakeState {
    fn count(&self, method: &str, path_part: &str) -> usize {
        self.requests
            .iter()
            .filter(|(m, p, _)| m == method && p.contains(path_part))
            .count()
    }
}

struct FakeManager {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
}

fn gzip_tar(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, bytes.as_slice())
            .expect("tar entry");
    }
    let mut gz = tar.into_inner().expect("tar");
    gz.flush().expect("flush");
    gz.finish().expect("gzip")
}

impl FakeManager {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("lock")
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Serves `docs` as manifest `version` (with a bundle). `tamper` lists
    /// deployment ids whose served bytes (single and in the bundle) differ
    /// from the digest the manifest gives.
    fn publish(&self, version: u64, docs: &[&[u8]], tamper: &[&str]) {
        let mut refs = Vec::new();
        let mut served = Vec::new();
        for d in docs {
            let parsed =
                margo_schemas::deployment::ApplicationDeployment::parse(d.to_vec()).expect("yaml");
            let digest = Digest::of(d);
            let mut bytes = d.to_vec();
            if tamper.contains(&parsed.id.as_str()) {
                bytes.extend_from_slice(b"# tampered\n");
            }
            let url = format!(
                "/api/v1/clients/{CLIENT}/deployments/{}/{digest}",
                parsed.id
            );
            refs.push(DeploymentRef {
                deployment_id: parsed.id.clone(),
                digest,
                size_bytes: Some(d.len() as u64),
                url: Some(url.clone()),
            });
            served.push((parsed.id.to_string(), url, bytes));
        }
        let archive = gzip_tar(
            &served
                .iter()
                .map(|(id, _, b)| (format!("{id}.yaml"), b.clone()))
                .collect::<Vec<_>>(),
        );
        let bundle_digest = Digest::of(&archive);
        let bundle_path = format!("/api/v1/clients/{CLIENT}/bundles/{bundle_digest}");
        let manifest = StateManifest {
            manifest_version: version,
            bundle: (!refs.is_empty()).then(|| BundleRef {
                media_type: Some("application/vnd.margo.bundle.v1+tar+gzip".into()),
                digest: bundle_digest,
                size_bytes: Some(archive.len() as u64),
                url: Some(bundle_path.clone()),
            }),
            deployments: refs,
        };
        let body = serde_json::to_vec(&manifest).expect("json");
        let etag = format!("\"{}\"", Digest::of(&body));
        let mut s = self.state();
        s.manifest = Some((body, etag));
        s.docs = served.into_iter().map(|(_, url, b)| (url, b)).collect();
        s.bundles = BTreeMap::from([(bundle_path, archive)]);
    }
}

/// Verifies a request as a Margo WFM would: RFC 9421 with the schemas
/// verifier (covering @method, the target, content-digest with a body,
/// created within 300 s, keyid = the client id) and the body's
/// Content-Digest, or the old X-Payload-Signature with the certificate key.
fn verify(
    key: &PublicKey,
    method: &str,
    path_and_query: &str,
    headers: &hyper::HeaderMap,
    body: &[u8],
    s: &mut FakeState,
) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if body.is_empty() && headers.contains_key(http_msg_sig::CONTENT_DIGEST) {
        s.bodiless_with_digest += 1;
    }
    if headers.contains_key(http_msg_sig::SIGNATURE_INPUT) {
        let lines: Vec<(&str, &str)> = headers
            .iter()
            .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
            .collect();
        let request = http_msg_sig::Request {
            method,
            scheme: "https",
            authority: header("host").unwrap_or_default(),
            path_and_query,
            headers: &lines,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let policy = http_msg_sig::Policy {
            now,
            max_age: 300,
            max_future_skew: 60,
            has_body: !body.is_empty(),
        };
        http_msg_sig::verify_request(&request, key, &policy, &|k| k == CLIENT)
            .map_err(|e| e.to_string())?;
        if !body.is_empty() {
            http_msg_sig::check_content_digest(
                &request.field_lines(http_msg_sig::CONTENT_DIGEST),
                body,
            )
            .map_err(|e| e.to_string())?;
        }
        s.rfc9421_signed += 1;
    } else {
        http_sig::verify_with_key(
            header(http_sig::CONTENT_DIGEST),
            header(http_sig::PAYLOAD_SIGNATURE),
            body,
            key,
            true,
        )
        .map_err(|e| e.to_string())?;
        s.payload_signed += 1;
    }
    Ok(())
}

async fn handle(
    request: Request<Incoming>,
    key: Arc<PublicKey>,
    state: Arc<Mutex<FakeState>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let method = request.method().to_string();
    let headers = request.headers().clone();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut s = state.lock().expect("lock");
    s.requests.push((
        method.clone(),
        path.clone(),
        header("if-none-match").map(str::to_string),
    ));
    let reply = |status: StatusCode, body: Vec<u8>, etag: Option<&str>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Some(tag) = etag {
            r.headers_mut()
                .insert("etag", tag.parse().expect("etag header"));
        }
        r
    };
    if let Err(e) = verify(&key, &method, &path_and_query, &headers, &body, &mut s) {
        s.bad_signatures += 1;
        return Ok(reply(
            StatusCode::UNAUTHORIZED,
            format!(r#"{{"detail":"{e}"}}"#).into_bytes(),
            None,
        ));
    }
    let manifest_path = format!("/api/v1/clients/{CLIENT}/deployments");
    let response = if method == "GET" && path == manifest_path {
        match &s.manifest {
            None => reply(StatusCode::NOT_FOUND, b"{}".to_vec(), None),
            Some((_, etag)) if header("if-none-match") == Some(etag.as_str()) => {
                reply(StatusCode::NOT_MODIFIED, Vec::new(), Some(etag))
            }
            Some((body, etag)) => reply(StatusCode::OK, body.clone(), Some(etag)),
        }
    } else if method == "GET" {
        match s.docs.get(&path).or_else(|| s.bundles.get(&path)) {
            Some(b) => reply(StatusCode::OK, b.clone(), None),
            None => reply(StatusCode::NOT_FOUND, b"{}".to_vec(), None),
        }
    } else {
        s.reports.push((path.clone(), body.to_vec()));
        let status = s.report_status.unwrap_or(StatusCode::OK);
        reply(
            status,
            br#"{"type":"about:blank","title":"t","status":0,"detail":"fake refusal"}"#.to_vec(),
            None,
        )
    };
    Ok(response)
}

async fn start_fake(fleet: &Fleet, identity: &Identity) -> FakeManager {
    pki::install_crypto_provider();
    let tls_files = fleet.gateway_tls();
    let tls = rustls::ServerConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(
            pki::certs_from_pem(&tls_files.cert_pem, "cert").expect("cert"),
            pki::key_from_pem(&tls_files.key_pem, "key").expect("key"),
        )
        .expect("server tls");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let der = pki::certs_from_pem(&identity.pem.cert_pem, "device")
        .expect("device cert")
        .remove(0);
    let point = Arc::new(PublicKey::from_certificate(&der).expect("device key"));
    let state = Arc::new(Mutex::new(FakeState::default()));
    let shared = Arc::clone(&state);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, point, state) =
                (acceptor.clone(), Arc::clone(&point), Arc::clone(&shared));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    handle(req, Arc::clone(&point), Arc::clone(&state))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    FakeManager { addr, state }
}

/// A device, its fake manager, and a transport on a fresh file store.
struct Rig {
    identity: Identity,
    fake: FakeManager,
    store: Store,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Rig {
        let fleet = Fleet::new();
        let identity = fleet.identity(CLIENT, "mqtts://127.0.0.1:9");
        let fake = start_fake(&fleet, &identity).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("agent.redb")).expect("store");
        Rig {
            identity,
            fake,
            store,
            _dir: dir,
        }
    }

    fn agent(&self, clock: Option<Arc<dyn Clock>>) -> margo_agent::Agent {
        let url = self.fake.url();
        let mut config = margo_agent::AgentConfig {
            broker_url: Some("mqtt://127.0.0.1:9".into()),
            allow_plain_mqtt: true,
            capabilities: common::test_capabilities(),
            transport: Transport::Http,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(200),
            ..margo_agent::AgentConfig::default()
        };
        config.http.manager_url = Some(url);
        config.http.api = ApiMode::Rc2;
        margo_agent::Agent::new(
            config,
            margo_agent::AgentOptions {
                store: Some(self.store.clone()),
                identity: Some(self.identity.clone()),
                runtime: Some(common::sim()),
                clock,
                host: None,
            },
        )
        .expect("agent")
    }

    /// A transport built from the agent's parts (the reconciler is not run).
    fn transport(&self) -> (HttpTransport, Uplink, Arc<margo_agent::stats::AgentStats>) {
        self.transport_signing(SignatureScheme::Rfc9421)
    }

    /// The same, signing with `signature`.
    fn transport_signing(
        &self,
        signature: SignatureScheme,
    ) -> (HttpTransport, Uplink, Arc<margo_agent::stats::AgentStats>) {
        let agent = self.agent(None);
        let parts = agent.parts().expect("parts");
        let stats = agent.handle().stats;
        let settings = HttpSettings {
            manager: margo_agent::http::ManagerUrl::parse(&self.fake.url()).expect("url"),
            // The fake manager serves the clientId routes, signed.
            api: ApiMode::Rc2,
            max_body_bytes: 1 << 20,
            max_bundle_bytes: 4 << 20,
            request_timeout: Duration::from_secs(10),
            poll_rate: Duration::from_secs(300),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
            schedule: None,
            tls_resumption: true,
            bundle_over_percent: 50,
            signature,
        };
        let transport = HttpTransport::new(
            settings,
            HttpDeps {
                identity: self.identity.clone(),
                sink: parts.sink,
                uplink: parts.uplink.clone(),
                store: self.store.clone(),
                clock: Arc::new(SystemClock),
                stats: Arc::clone(&stats),
                snapshots: parts.snapshots,
            },
        )
        .expect("transport");
        (transport, parts.uplink, stats)
    }

    fn accepted_version(&self) -> u64 {
        self.store
            .accepted_manifest()
            .expect("store")
            .map_or(0, |m| m.version())
    }
}

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const C: &str = "cccccccc-0000-4000-8000-000000000003";

fn doc(id: &str, revision: u32) -> Vec<u8> {
    yaml(id, &format!("app-r{revision}"), &[("web", "")])
}

#[tokio::test]
async fn bundle_first_then_single_documents_and_304_downloads_nothing() {
    let rig = Rig::new().await;
    let (mut t, _, stats) = rig.transport();
    assert_eq!(
        within(WAIT, "first check", t.check()).await.expect("check"),
        CheckOutcome::UnknownClient
    );
    let (a1, b1, c1) = (doc(A, 1), doc(B, 1), doc(C, 1));
    rig.fake.publish(1, &[&a1, &b1, &c1], &[]);
    let outcome = within(WAIT, "v1", t.check()).await.expect("v1");
    assert_eq!(
        outcome,
        CheckOutcome::Accepted {
            version: 1,
            bundle: true,
            documents: 3
        },
        "first sync takes the bundle"
    );
    assert_eq!(rig.accepted_version(), 1);
    let etag = rig
        .fake
        .state()
        .manifest
        .as_ref()
        .expect("manifest")
        .1
        .clone();
    assert_eq!(rig.store.http_etag().expect("etag"), Some(etag.clone()));

    // Unchanged: one conditional GET answered 304, nothing else.
    let before = rig.fake.state().requests.len();
    assert_eq!(
        within(WAIT, "304", t.check()).await.expect("304"),
        CheckOutcome::NotModified
    );
    {
        let s = rig.fake.state();
        assert_eq!(s.requests.len(), before + 1, "{:?}", &s.requests[before..]);
        assert_eq!(s.requests[before].2.as_deref(), Some(etag.as_str()));
    }
    assert_eq!(stats.http_not_modified.load(Ordering::Relaxed), 1);

    // One of three changed: a single document, no bundle.
    let a2 = doc(A, 2);
    rig.fake.publish(2, &[&a2, &b1, &c1], &[]);
    let bundles_before = rig.fake.state().count("GET", "/bundles/");
    let outcome = within(WAIT, "v2", t.check()).await.expect("v2");
    assert_eq!(
        outcome,
        CheckOutcome::Accepted {
            version: 2,
            bundle: false,
            documents: 1
        }
    );
    assert_eq!(rig.fake.state().count("GET", "/bundles/"), bundles_before);

    // Two of three changed (more than half): the bundle again.
    let (b3, c3) = (doc(B, 3), doc(C, 3));
    rig.fake.publish(3, &[&a2, &b3, &c3], &[]);
    let outcome = within(WAIT, "v3", t.check()).await.expect("v3");
    assert!(
        matches!(
            outcome,
            CheckOutcome::Accepted {
                version: 3,
                bundle: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    // The accepted manifest is the transport-neutral form (what MQTT accepts).
    let accepted = rig.store.accepted_manifest().expect("store").expect("some");
    assert!(accepted.manifest.bundle.is_none());
    assert!(accepted
        .manifest
        .deployments
        .iter()
        .all(|d| d.url.is_none()));
    assert_eq!(rig.fake.state().bad_signatures, 0, "every request signed");

    // A restart keeps the ETag: the first check of a new transport is a 304.
    drop(t);
    let (mut again, _, _) = rig.transport();
    assert_eq!(
        within(WAIT, "after restart", again.check())
            .await
            .expect("check"),
        CheckOutcome::NotModified
    );
}

#[tokio::test]
async fn a_digest_mismatch_keeps_the_previous_state_and_etag() {
    let rig = Rig::new().await;
    let (mut t, _, stats) = rig.transport();
    let (a1, b1, c1) = (doc(A, 1), doc(B, 1), doc(C, 1));

    // First sync through a tampered bundle: nothing accepted, no ETag.
    rig.fake.publish(1, &[&a1, &b1, &c1], &[B]);
    let err = within(WAIT, "tampered bundle", t.check())
        .await
        .expect_err("tampered bundle refused");
    assert!(err.is_security_event(), "{err}");
    assert_eq!(rig.accepted_version(), 0);
    assert_eq!(rig.store.http_etag().expect("etag"), None);
    assert!(!rig.store.cache_contains(&Digest::of(&a1)).expect("cache"));

    rig.fake.publish(1, &[&a1, &b1, &c1], &[]);
    within(WAIT, "clean v1", t.check()).await.expect("v1");
    let etag_v1 = rig.store.http_etag().expect("etag");
    assert!(etag_v1.is_some());

    // A single tampered document: v1 stays, its ETag stays.
    let a2 = doc(A, 2);
    rig.fake.publish(2, &[&a2, &b1, &c1], &[A]);
    let err = within(WAIT, "tampered document", t.check())
        .await
        .expect_err("tampered document refused");
    assert!(err.is_security_event(), "{err}");
    assert!(matches!(err, CheckError::Rejected(_)), "{err}");
    assert_eq!(rig.accepted_version(), 1);
    assert_eq!(rig.store.http_etag().expect("etag"), etag_v1);
    assert!(!rig.store.cache_contains(&Digest::of(&a2)).expect("cache"));
    assert!(stats.security_events.load(Ordering::Relaxed) >= 2);

    // Fixed on the manager: accepted at the next check.
    rig.fake.publish(2, &[&a2, &b1, &c1], &[]);
    within(WAIT, "clean v2", t.check()).await.expect("v2");
    assert_eq!(rig.accepted_version(), 2);
}

#[tokio::test]
async fn a_lower_manifest_version_is_refused() {
    let rig = Rig::new().await;
    let (mut t, _, stats) = rig.transport();
    let (a1, b1) = (doc(A, 1), doc(B, 1));
    rig.fake.publish(5, &[&a1, &b1], &[]);
    within(WAIT, "v5", t.check()).await.expect("v5");
    let etag = rig.store.http_etag().expect("etag");

    rig.fake.publish(4, &[&a1], &[]);
    let err = within(WAIT, "v4", t.check())
        .await
        .expect_err("rollback refused");
    assert!(
        matches!(
            err,
            CheckError::Rejected(margo_agent::sync::DownlinkError::Rollback {
                offered: 4,
                accepted: 5
            })
        ),
        "{err}"
    );
    assert_eq!(rig.accepted_version(), 5);
    assert_eq!(rig.store.http_etag().expect("etag"), etag);
    assert_eq!(stats.security_events.load(Ordering::Relaxed), 1);

    // Equal version, other content: a conflict, also refused.
    rig.fake.publish(5, &[&a1], &[]);
    let err = within(WAIT, "v5 forged", t.check())
        .await
        .expect_err("conflict refused");
    assert!(err.is_security_event(), "{err}");
    assert_eq!(rig.accepted_version(), 5);
}

#[tokio::test]
async fn garbage_and_server_errors_keep_state_and_etag() {
    let rig = Rig::new().await;
    let (mut t, _, _) = rig.transport();
    rig.fake.publish(1, &[&doc(A, 1)], &[]);
    within(WAIT, "v1", t.check()).await.expect("v1");
    let etag = rig.store.http_etag().expect("etag");
    // A manifest that is not JSON, then a valid one whose document is gone (404).
    rig.fake.state().manifest = Some((b"<html>oops".to_vec(), "\"x\"".into()));
    let err = within(WAIT, "garbage", t.check())
        .await
        .expect_err("garbage");
    assert!(matches!(err, CheckError::Malformed { .. }), "{err}");
    rig.fake.publish(2, &[&doc(A, 2)], &[]);
    {
        let mut s = rig.fake.state();
        s.docs.clear();
        s.bundles.clear();
    }
    let err = within(WAIT, "missing doc", t.check())
        .await
        .expect_err("404");
    assert!(matches!(err, CheckError::Answer { status, .. } if status == StatusCode::NOT_FOUND));
    assert_eq!(rig.accepted_version(), 1);
    assert_eq!(rig.store.http_etag().expect("etag"), etag);
}

/// Every request is signed, GETs included, with either scheme; RFC 9421
/// sends no Content-Digest on bodiless requests. The fake manager verifies
/// both with the schemas verifiers.
#[tokio::test]
async fn every_request_is_signed_with_either_scheme() {
    for scheme in [SignatureScheme::Rfc9421, SignatureScheme::XPayloadSignature] {
        let rig = Rig::new().await;
        let (mut t, uplink, _) = rig.transport_signing(scheme);
        let a1 = doc(A, 1);
        rig.fake.publish(1, &[&a1], &[]);
        within(WAIT, "check", t.check()).await.expect("check");
        uplink
            .send(status_msg(A, DeploymentState::Installed))
            .expect("enqueue");
        let d = within(WAIT, "drain", t.drain_uplink()).await;
        assert_eq!(d.delivered, 1, "{scheme:?}");
        let s = rig.fake.state();
        assert_eq!(s.bad_signatures, 0, "{scheme:?}");
        let total = s.requests.len();
        assert!(total >= 3, "manifest, bundle, status: {total}");
        match scheme {
            SignatureScheme::Rfc9421 => {
                assert_eq!((s.rfc9421_signed, s.payload_signed), (total, 0));
                assert_eq!(s.bodiless_with_digest, 0, "no Content-Digest on GETs");
            }
            SignatureScheme::XPayloadSignature => {
                assert_eq!((s.rfc9421_signed, s.payload_signed), (0, total));
            }
        }
    }
}

fn status_msg(id: &str, state: DeploymentState) -> Message {
    Message::Status(StatusReport {
        adopted_manifest_version: 1,
        status: DeploymentStatus::new(
            dep(id),
            vec![ComponentStatus {
                name: "web".into(),
                state,
                error: None,
            }],
            None,
        ),
    })
}

#[tokio::test]
async fn uplink_is_removed_only_when_delivered() {
    let rig = Rig::new().await;
    let (mut t, uplink, stats) = rig.transport();
    uplink
        .send(status_msg(A, DeploymentState::Installed))
        .expect("enqueue");
    uplink
        .send(Message::State(StateReport {
            adopted_manifest_version: 1,
            agent_version: "t".into(),
            deployments: vec![],
            schedule: None,
        }))
        .expect("enqueue");

    // 503: nothing removed.
    rig.fake.state().report_status = Some(StatusCode::SERVICE_UNAVAILABLE);
    let d = within(WAIT, "503", t.drain_uplink()).await;
    assert_eq!((d.delivered, d.left), (0, 2));
    assert_eq!(uplink.lock().len(), 2);

    // 200: the status goes; the state report has no HTTP form and is skipped.
    rig.fake.state().report_status = None;
    let d = within(WAIT, "200", t.drain_uplink()).await;
    assert_eq!((d.delivered, d.skipped, d.left), (1, 1, 0));
    assert!(uplink.lock().is_empty());
    {
        let s = rig.fake.state();
        let (path, body) = s.reports.last().expect("report");
        assert_eq!(
            path,
            &format!("/api/v1/clients/{CLIENT}/deployments/{A}/status")
        );
        let json: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(json["adoptedManifestVersion"], 1);
        assert_eq!(json["deploymentId"], A);
        assert_eq!(json["status"]["state"], "installed");
        assert_eq!(s.bad_signatures, 0);
    }

    // 409 (stale) counts as delivered; 422 is refused for good and dropped.
    uplink
        .send(status_msg(B, DeploymentState::Installed))
        .expect("enqueue");
    rig.fake.state().report_status = Some(StatusCode::CONFLICT);
    let d = within(WAIT, "409", t.drain_uplink()).await;
    assert_eq!(d.delivered, 1);
    uplink
        .send(status_msg(C, DeploymentState::Installed))
        .expect("enqueue");
    rig.fake.state().report_status = Some(StatusCode::UNPROCESSABLE_ENTITY);
    let d = within(WAIT, "422", t.drain_uplink()).await;
    assert_eq!((d.delivered, d.refused), (0, 1));
    assert!(uplink.lock().is_empty());
    assert_eq!(stats.uplink_refused.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_over_http_installs_and_reports_through_the_shared_reconciler() {
    let rig = Rig::new().await;
    let a1 = doc(A, 1);
    rig.fake.publish(1, &[&a1], &[]);
    let agent = rig.agent(None);
    let handle = agent.handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    let status_path = format!("/api/v1/clients/{CLIENT}/deployments/{A}/status");
    eventually(WAIT, "an installed status reaches the manager", || {
        rig.fake.state().reports.iter().any(|(p, b)| {
            p == &status_path
                && serde_json::from_slice::<serde_json::Value>(b)
                    .is_ok_and(|j| j["status"]["state"] == "installed")
        })
    })
    .await;
    eventually(WAIT, "capabilities reach the manager", || {
        rig.fake
            .state()
            .reports
            .iter()
            .any(|(p, _)| p.contains("/capabilities/"))
    })
    .await;
    eventually(WAIT, "adopted", || {
        handle.snapshots.borrow().adopted_manifest_version == 1
    })
    .await;
    assert_eq!(rig.fake.state().bad_signatures, 0);
    shutdown.cancel();
    within(WAIT, "agent stops", task)
        .await
        .expect("join")
        .expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_downtime_no_request_is_made() {
    let rig = Rig::new().await;
    rig.fake.publish(1, &[&doc(A, 1)], &[]);
    // Monday 2026-03-02 10:00 UTC, inside a daily downtime 09:00-12:00;
    // checks every 15 minutes otherwise.
    let monday_10 = 1_772_445_600_000u64;
    let clock = SimulatedClock::starting_at(monday_10);
    let schedule: margo_schemas::schedule::Schedule = toml::from_str(
        "time_zone = \"UTC\"\nconnection = \"persistent\"\n[polling]\nrate = \"15m\"\n\
         [[downtime]]\nkind = \"daily\"\nstart = \"09:00\"\nend = \"12:00\"\n",
    )
    .expect("schedule");
    let url = rig.fake.url();
    let mut config = margo_agent::AgentConfig {
        broker_url: Some("mqtt://127.0.0.1:9".into()),
        allow_plain_mqtt: true,
        capabilities: common::test_capabilities(),
        transport: Transport::Http,
        schedule: Some(schedule),
        ..margo_agent::AgentConfig::default()
    };
    config.http.manager_url = Some(url);
    config.http.api = ApiMode::Rc2;
    let agent = margo_agent::Agent::new(
        config,
        margo_agent::AgentOptions {
            store: Some(rig.store.clone()),
            identity: Some(rig.identity.clone()),
            runtime: Some(common::sim()),
            clock: Some(Arc::new(clock.clone())),
            host: None,
        },
    )
    .expect("agent");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    // The transport goes to sleep until the first check after the downtime.
    eventually(WAIT, "the transport sleeps for 12:00", || {
        clock.next_wake() == Some(monday_10 + 2 * 3600 * 1000)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rig.fake.state().requests.is_empty(),
        "requests inside downtime: {:?}",
        rig.fake.state().requests
    );
    // 12:00: the check happens, and the enqueued capabilities go out.
    clock.set_unix_ms(monday_10 + 2 * 3600 * 1000);
    eventually(WAIT, "a check at 12:00", || {
        rig.fake.state().count("GET", "/deployments") >= 1
    })
    .await;
    eventually(WAIT, "capabilities after the downtime", || {
        rig.fake.state().count("PUT", "/capabilities/") >= 1
    })
    .await;
    shutdown.cancel();
    within(WAIT, "agent stops", task)
        .await
        .expect("join")
        .expect("clean stop");
}
