//! `margo-agent onboard` against a test HTTPS manager (tokio-rustls + hyper)
//! that implements the docs/onboarding.md contract minimally: it serves the
//! fleet CA, verifies `Content-Digest` and `X-Payload-Signature` against the
//! posted certificate's key, and answers 201, 202 → poll → approved, or 403.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use margo_agent::clock::SystemClock;
use margo_agent::http::ManagerUrl;
use margo_agent::identity::{Identity, WireClientId};
use margo_agent::onboard::{OnboardError, OnboardOutcome, OnboardSettings, Onboarding};
use margo_schemas::digest::Digest;
use margo_schemas::http_sig;
use margo_schemas::ids::ClientId;
use margo_schemas::onboarding::{
    IssuedIdentity, OnboardingRequest, OnboardingResponse, OnboardingState, ResponseExtensions,
};
use margo_schemas::pki;
use margo_testkit::pki::TestPki;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const CLIENT_ID: &str = "k3v9onboarded0000000000000";
/// DER prefix of a P-256 SubjectPublicKeyInfo before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 201 at once if the token is "good-token", else 403.
    Token,
    /// 202, then "pending" on the first poll, "approved" on the second.
    PendingThenApproved,
    /// 202, then "pending" forever.
    PendingForever,
    /// 202, then 403 on the first poll.
    Rejected,
}

#[derive(Debug, Default)]
struct Seen {
    ca_gets: usize,
    posts: usize,
    polls: usize,
    bad_signatures: usize,
    /// The request id (hex fingerprint of the device certificate) and its key, from the POST.
    device: Option<(String, Vec<u8>)>,
    claimed_name: Option<String>,
    claimed_vendor: Option<String>,
}

struct Manager {
    addr: SocketAddr,
    ca_fingerprint: Digest,
    seen: Arc<Mutex<Seen>>,
    mode: Arc<Mutex<Mode>>,
}

/// The kit's test CA with the manager's signing certificate.
struct Pki {
    ca: TestPki,
    signing_pem: String,
}

impl Pki {
    fn new() -> Self {
        let ca = TestPki::new("onboarding test fleet ca");
        let signing_pem = ca.leaf("margo-manager-signing").cert_pem();
        Self { ca, signing_pem }
    }

    /// The client certificate for the device's own key, CN = clientId.
    fn issue(&self, point: &[u8]) -> String {
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(point);
        let public = rcgen::SubjectPublicKeyInfo::from_der(&spki).expect("spki");
        self.ca.certify(CLIENT_ID, &public)
    }
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).expect("json"),
    )));
    *response.status_mut() = status;
    response
}

fn answer(
    pki: &Pki,
    request_id: &str,
    state: OnboardingState,
    point: Option<&[u8]>,
) -> OnboardingResponse {
    let request_id = request_id.to_string();
    OnboardingResponse {
        client_id: point.map(|_| ClientId::new(CLIENT_ID).expect("id")),
        extensions: ResponseExtensions {
            request_id: request_id.clone(),
            state,
            location: format!("/api/v1/onboarding/requests/{request_id}"),
            retry_after_secs: None,
            identity: point.map(|p| IssuedIdentity {
                name: "press-7".into(),
                client_certificate: pki.issue(p),
                ca_certificate: pki.ca.ca_pem(),
                manager_signing_certificate: pki.signing_pem.clone(),
                broker_url: "mqtts://127.0.0.1:8883".into(),
            }),
        },
    }
}

async fn handle(
    request: Request<Incoming>,
    pki: Arc<Pki>,
    seen: Arc<Mutex<Seen>>,
    mode: Arc<Mutex<Mode>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let headers = request.headers().clone();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mode = *mode.lock().expect("lock");
    let mut s = seen.lock().expect("lock");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let response = match (method.as_str(), path.as_str()) {
        ("GET", "/api/v1/onboarding/certificate") => {
            s.ca_gets += 1;
            json(
                StatusCode::OK,
                &serde_json::json!({"certificate": data_encoding::BASE64.encode(pki.ca.ca_pem().as_bytes())}),
            )
        }
        ("POST", "/api/v1/onboarding") => {
            s.posts += 1;
            let req: OnboardingRequest = serde_json::from_slice(&body).expect("request json");
            let der = req.certificate_der().expect("valid request");
            let point = pki::cert_info(&der)
                .expect("cert")
                .p256_public_key
                .expect("p256");
            if let Err(e) = http_sig::verify_request(
                header(http_sig::CONTENT_DIGEST),
                header(http_sig::PAYLOAD_SIGNATURE),
                &body,
                &point,
            ) {
                s.bad_signatures += 1;
                return Ok(json(
                    StatusCode::from_u16(e.status()).expect("status"),
                    &serde_json::json!({"error": e.to_string()}),
                ));
            }
            let ext = req.extensions.clone().unwrap_or_default();
            s.claimed_name = ext.name.clone();
            s.claimed_vendor = ext.vendor.clone();
            let request_id = pki::fingerprint(&der).hex();
            s.device = Some((request_id.clone(), point.clone()));
            match mode {
                Mode::Token if ext.enrollment_token.as_deref() == Some("good-token") => json(
                    StatusCode::CREATED,
                    &answer(&pki, &request_id, OnboardingState::Approved, Some(&point)),
                ),
                Mode::Token => json(
                    StatusCode::FORBIDDEN,
                    &serde_json::json!({"error": "token"}),
                ),
                _ => {
                    let mut r = json(
                        StatusCode::ACCEPTED,
                        &answer(&pki, &request_id, OnboardingState::Pending, None),
                    );
                    r.headers_mut().insert(
                        hyper::header::LOCATION,
                        format!("/api/v1/onboarding/requests/{request_id}")
                            .parse()
                            .expect("hv"),
                    );
                    r.headers_mut()
                        .insert(hyper::header::RETRY_AFTER, "0".parse().expect("hv"));
                    r
                }
            }
        }
        ("GET", p)
            if s.device
                .as_ref()
                .is_some_and(|(id, _)| p == format!("/api/v1/onboarding/requests/{id}")) =>
        {
            s.polls += 1;
            let (request_id, point) = s.device.clone().expect("device");
            let point = Some(point);
            match (mode, s.polls) {
                (Mode::Rejected, _) => json(
                    StatusCode::FORBIDDEN,
                    &serde_json::json!({"error": "rejected"}),
                ),
                (Mode::PendingThenApproved, n) if n >= 2 => json(
                    StatusCode::OK,
                    &answer(
                        &pki,
                        &request_id,
                        OnboardingState::Approved,
                        point.as_deref(),
                    ),
                ),
                _ => json(
                    StatusCode::OK,
                    &answer(&pki, &request_id, OnboardingState::Pending, None),
                ),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "no route"}),
        ),
    };
    Ok(response)
}

async fn start_manager(mode: Mode) -> Manager {
    margo_schemas::pki::install_crypto_provider();
    let pki = Arc::new(Pki::new());
    let server = pki.ca.server();
    let tls = rustls::ServerConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(server.chain(), server.key_der())
        .expect("server tls");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mode = Arc::new(Mutex::new(mode));
    let ca_fingerprint = pki::fingerprint(&pki.ca.ca_der());
    let (s, m) = (Arc::clone(&seen), Arc::clone(&mode));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, pki, s, m) = (acceptor.clone(), Arc::clone(&pki), s.clone(), m.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    handle(req, Arc::clone(&pki), Arc::clone(&s), Arc::clone(&m))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Manager {
        addr,
        ca_fingerprint,
        seen,
        mode,
    }
}

fn settings(manager: &Manager, dir: &Path) -> OnboardSettings {
    OnboardSettings {
        manager_url: ManagerUrl::parse(&format!("https://127.0.0.1:{}", manager.addr.port()))
            .expect("url"),
        ca_fingerprint: Some(manager.ca_fingerprint),
        insecure_tofu: false,
        identity_dir: dir.to_path_buf(),
        name: Some("press-7".into()),
        token: None,
        vendor: Some("Acme".into()),
        model_number: None,
        serial_number: None,
        poll_min: Duration::from_millis(20),
        poll_max: Duration::from_millis(100),
    }
}

async fn onboard(settings: OnboardSettings) -> Result<OnboardOutcome, OnboardError> {
    let run = Onboarding::new(settings, Arc::new(SystemClock)).run(CancellationToken::new());
    tokio::time::timeout(WAIT, run)
        .await
        .expect("onboarding finishes in time")
}

#[tokio::test]
async fn wrong_ca_fingerprint_is_refused_before_anything_is_posted() {
    let manager = start_manager(Mode::PendingThenApproved).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&manager, dir.path());
    let wrong = Digest::of(b"some other CA");
    s.ca_fingerprint = Some(wrong);
    let err = onboard(s).await.expect_err("must refuse");
    let text = err.to_string();
    assert!(
        matches!(err, OnboardError::FingerprintMismatch { .. }),
        "{text}"
    );
    assert!(
        text.contains(&wrong.to_string()),
        "shows the expected one: {text}"
    );
    assert!(
        text.contains(&manager.ca_fingerprint.to_string()),
        "shows the presented one: {text}"
    );
    assert!(text.contains("margoctl ca"), "says what to check: {text}");
    let seen = manager.seen.lock().expect("lock");
    assert_eq!(seen.ca_gets, 1);
    assert_eq!(
        seen.posts, 0,
        "nothing may be posted to an unpinned manager"
    );
    assert!(!dir.path().join("identity.toml").exists());
}

#[tokio::test]
async fn pending_request_is_polled_until_approved_and_the_bundle_is_written() {
    let manager = start_manager(Mode::PendingThenApproved).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let outcome = onboard(settings(&manager, dir.path()))
        .await
        .expect("onboarded");
    assert_eq!(
        outcome,
        OnboardOutcome::Onboarded {
            client_id: WireClientId::new(CLIENT_ID).expect("id"),
            name: "press-7".into()
        }
    );
    {
        let seen = manager.seen.lock().expect("lock");
        assert_eq!((seen.posts, seen.polls, seen.bad_signatures), (1, 2, 0));
        assert_eq!(seen.claimed_name.as_deref(), Some("press-7"));
        assert_eq!(seen.claimed_vendor.as_deref(), Some("Acme"));
    }
    // The bundle loads with the agent's own checks: CN = clientId, key matches, signing cert issued by the CA.
    let identity = Identity::load(dir.path()).expect("bundle loads");
    assert_eq!(identity.client_id.as_str(), CLIENT_ID);
    assert_eq!(identity.broker_url, "mqtts://127.0.0.1:8883");
    let key_pem = std::fs::read_to_string(dir.path().join("client.key")).expect("key");
    let key = rcgen::KeyPair::from_pem(&key_pem).expect("pkcs8 pem");
    let cert = pki::certs_from_pem(&identity.pem.cert_pem, "client.crt").expect("cert");
    let info = pki::cert_info(&cert[0]).expect("info");
    assert_eq!(info.p256_public_key.as_deref(), Some(key.public_key_raw()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("client.key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "client.key must be private");
    }
    assert!(
        !dir.path().join("onboarding.toml").exists(),
        "pending state cleared"
    );

    // Re-running is idempotent: nothing is requested.
    let again = onboard(settings(&manager, dir.path()))
        .await
        .expect("again");
    assert_eq!(
        again,
        OnboardOutcome::AlreadyOnboarded(WireClientId::new(CLIENT_ID).expect("id"))
    );
    let seen = manager.seen.lock().expect("lock");
    assert_eq!((seen.ca_gets, seen.posts, seen.polls), (1, 1, 2));
}

#[tokio::test]
async fn an_interrupted_wait_resumes_polling_with_the_same_key() {
    let manager = start_manager(Mode::PendingForever).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(
        Onboarding::new(settings(&manager, dir.path()), Arc::new(SystemClock))
            .run(shutdown.clone()),
    );
    tokio::time::timeout(WAIT, async {
        while manager.seen.lock().expect("lock").polls < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("first poll");
    shutdown.cancel();
    let stopped = run.await.expect("task");
    assert!(
        matches!(stopped, Err(OnboardError::Cancelled)),
        "{stopped:?}"
    );
    assert!(
        dir.path().join("onboarding.toml").exists(),
        "pending request kept"
    );
    let key_before = std::fs::read(dir.path().join("client.key")).expect("key");

    *manager.mode.lock().expect("lock") = Mode::PendingThenApproved;
    onboard(settings(&manager, dir.path()))
        .await
        .expect("onboarded after resuming");
    let seen = manager.seen.lock().expect("lock");
    assert_eq!(seen.posts, 1, "resumed by polling, not by posting again");
    assert_eq!(
        std::fs::read(dir.path().join("client.key")).expect("key"),
        key_before,
        "the key is never regenerated"
    );
    Identity::load(dir.path()).expect("bundle loads");
}

#[tokio::test]
async fn an_enrollment_token_is_approved_at_once() {
    let manager = start_manager(Mode::Token).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&manager, dir.path());
    s.token = Some("good-token".into());
    let outcome = onboard(s).await.expect("onboarded");
    assert!(matches!(outcome, OnboardOutcome::Onboarded { .. }));
    assert_eq!(manager.seen.lock().expect("lock").polls, 0);
    Identity::load(dir.path()).expect("bundle loads");
}

#[tokio::test]
async fn rejection_is_a_clear_error() {
    let manager = start_manager(Mode::Rejected).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let err = onboard(settings(&manager, dir.path()))
        .await
        .expect_err("rejected");
    assert!(matches!(err, OnboardError::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("rejected"), "{err}");
    assert!(!dir.path().join("identity.toml").exists());

    // A bad token is a 403 on the POST itself.
    let manager = start_manager(Mode::Token).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&manager, dir.path());
    s.token = Some("wrong".into());
    assert!(matches!(
        onboard(s).await,
        Err(OnboardError::Rejected { .. })
    ));
}

#[tokio::test]
async fn insecure_tofu_trusts_and_remembers_the_first_ca() {
    let manager = start_manager(Mode::PendingForever).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&manager, dir.path());
    s.ca_fingerprint = None;
    s.insecure_tofu = true;
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(Onboarding::new(s, Arc::new(SystemClock)).run(shutdown.clone()));
    tokio::time::timeout(WAIT, async {
        while manager.seen.lock().expect("lock").polls < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("first poll");
    shutdown.cancel();
    let _ = run.await.expect("task");
    let pending = std::fs::read_to_string(dir.path().join("onboarding.toml")).expect("pending");
    assert!(
        pending.contains(&manager.ca_fingerprint.to_string()),
        "{pending}"
    );
}
