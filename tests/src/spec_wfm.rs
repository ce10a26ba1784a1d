//! A minimal Margo Workload Fleet Manager written from the specification
//! texts alone (`margo/specification`, `system-design/specification/
//! margo-management-interface/`: `workload-management-api-1.0.0-rc.2.yaml`,
//! `-1.0.0-rc.3.yaml`, `desired-state.md`, `device-client-onboarding.md`,
//! `certificate-api.md`, `api-requirements-and-security.md`), to run our agent
//! against something that cannot share our mistakes: it uses only generic
//! crates (hyper, rustls, ring, rcgen, serde_json, tar, flate2), never
//! margo-schemas or margo-manager.
//!
//! What it serves, under a base path (`/v1alpha2/margo` by default):
//! - `GET /api/v1/onboarding/certificate` → `{"certificate": base64(PEM)}`;
//! - `POST /api/v1/onboarding` `{apiVersion, kind: OnboardingRequest,
//!   certificate}` → `201 {"clientId": "<uuid>"}` (the page's only success);
//! - the `{clientId}` routes (1.0.0/rc.2): manifest with `ETag`/`304`/`406`,
//!   single documents and the bundle by digest (`404` otherwise), status
//!   `POST` → 200, capabilities `POST|PUT` (with or without `{deviceId}`) →
//!   201; every one of these requests, GETs included, must be signed with
//!   either scheme Margo's texts name (`api-requirements-and-security.md`):
//!   HTTP Message Signatures (RFC 9421 with RFC 9530 `Content-Digest`,
//!   verified by [`msg_sig`], `keyid` = the clientId of the path) or
//!   `X-Payload-Signature` ([`payload_sig`]: each part base64, `<public
//!   key>;<signature>`, ECDSA P-256 over SHA-256 of the body), both with the
//!   onboarded certificate's key; a request that carries neither, or one
//!   that does not verify, gets `401 {"error": "Invalid signature", ...}`
//!   and counts in [`WfmState::bad_signatures`]; the onboarding request's
//!   signatures, if any, are checked against the certificate it carries;
//! - the rc.3 routes over mutual TLS (the client is whoever presented the
//!   certificate it onboarded with): `GET /api/v1/deployments`, documents,
//!   bundle, `POST /api/v1/deployments/{id}/status` and `PUT
//!   /api/v1/capabilities/{deviceId}` → 201 created / 200 updated; no or an
//!   unknown certificate → 401.
//!
//! The bundle is a gzip tar whose root holds one YAML file per deployment,
//! named `deployment-<n>.yaml`: the specification names no file names.
//! Every request is recorded (method, path, headers, body, whether a client
//! certificate came with it, which signature scheme verified) for
//! assertions.

pub mod msg_sig;
pub mod payload_sig;
pub mod structured_fields;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub const BASE_PATH: &str = "/v1alpha2/margo";
pub const MANIFEST_TYPE: &str = "application/vnd.margo.manifest.v1+json";
pub const BUNDLE_TYPE: &str = "application/vnd.margo.bundle.v1+tar+gzip";

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path without the base path (`/api/v1/...`).
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
    /// Whether a client certificate came with the TLS handshake.
    pub client_cert: bool,
    /// The signature scheme(s) that verified, if any did.
    pub signed_with: Option<SignedWith>,
}

/// Which of Margo's request signature schemes a request carried, verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedWith {
    /// HTTP Message Signatures (RFC 9421) with `Content-Digest` (RFC 9530).
    Rfc9421,
    /// The older `X-Payload-Signature`.
    XPayloadSignature,
    /// Both, each verified (our agent's onboarding request).
    Both,
}

/// An onboarded client.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub cert_der: Vec<u8>,
}

/// What the WFM holds; tests change it between polls.
#[derive(Debug, Default)]
pub struct WfmState {
    pub requests: Vec<Recorded>,
    pub clients: Vec<Client>,
    pub manifest_version: u64,
    /// `(deploymentId, YAML bytes)` in manifest order.
    pub deployments: Vec<(String, Vec<u8>)>,
    /// Status bodies by deployment id, in arrival order.
    pub statuses: Vec<(String, Value)>,
    /// Capabilities bodies as received.
    pub capabilities: Vec<Value>,
    /// Answer the next `n` capabilities requests with this status.
    pub refuse_capabilities: Option<(u16, usize)>,
    /// Requests whose signature was missing or did not verify.
    pub bad_signatures: usize,
    /// Why each of those was refused (`METHOD path: reason`).
    pub signature_errors: Vec<String>,
    /// rc.3: status documents seen (for 201 created / 200 updated).
    seen_status: std::collections::BTreeSet<String>,
    seen_capabilities: std::collections::BTreeSet<String>,
}

pub struct SpecWfm {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    state: Arc<Mutex<WfmState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SpecWfm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `sha256:<64 lowercase hex>` (desired-state.md, "Protocol - Digest").
pub fn digest(bytes: &[u8]) -> String {
    let hex: String = sha256(bytes).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn b64() -> data_encoding::Encoding {
    data_encoding::BASE64
}

/// Accepts any client certificate (the application decides who it is) but
/// checks the handshake signature; a certificate is requested, not required.
#[derive(Debug)]
struct AnyClient(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for AnyClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl SpecWfm {
    /// Starts on 127.0.0.1 with a fresh CA and server certificate.
    pub async fn start() -> Result<SpecWfm> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "spec WFM root CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let server_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let server_key = rcgen::KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &ca)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(AnyClient(Arc::clone(&provider))))
            .with_single_cert(
                vec![server_cert.der().clone(), ca.der().clone()],
                PrivateKeyDer::try_from(server_key.serialize_der())
                    .map_err(|e| anyhow::anyhow!("server key: {e}"))?,
            )?;
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(WfmState {
            manifest_version: 1,
            ..WfmState::default()
        }));
        let ca_pem = ca.pem();
        let shared = Arc::new(Shared {
            state: Arc::clone(&state),
            ca_pem: ca_pem.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.as_ref().to_vec());
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        let peer = peer.clone();
                        async move { Ok::<_, std::convert::Infallible>(shared.handle(req, peer).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(SpecWfm {
            addr,
            ca_der: ca.der().to_vec(),
            ca_pem,
            state,
            task,
        })
    }

    /// `https://localhost:<port>/v1alpha2/margo`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}{BASE_PATH}", self.addr.port())
    }

    /// The CA fingerprint as our agent's configuration takes it.
    pub fn ca_fingerprint(&self) -> String {
        digest(&self.ca_der)
    }

    pub fn state(&self) -> MutexGuard<'_, WfmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the desired state: a new manifest version with `deployments`.
    pub fn publish(&self, deployments: Vec<(String, Vec<u8>)>) {
        let mut s = self.state();
        s.manifest_version += 1;
        s.deployments = deployments;
    }
}

struct Shared {
    state: Arc<Mutex<WfmState>>,
    ca_pem: String,
}

/// One request as the routes see it.
struct Received<'a> {
    method: &'a Method,
    /// Without the base path.
    path: &'a str,
    headers: &'a BTreeMap<String, String>,
    body: &'a [u8],
    /// The client certificate of the TLS handshake, if any.
    peer: Option<&'a [u8]>,
    /// The parts RFC 9421's components are taken from.
    message: msg_sig::Message<'a>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn respond(status: StatusCode, content_type: Option<&str>, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn problem(status: StatusCode, detail: &str) -> Response<Full<Bytes>> {
    let body = json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail});
    respond(
        status,
        Some("application/problem+json"),
        body.to_string().into_bytes(),
    )
}

fn accepts(accept: Option<&str>, media: &str) -> bool {
    let Some(accept) = accept else {
        return true;
    };
    let (major, _) = media.split_once('/').unwrap_or((media, ""));
    accept.split(',').any(|item| {
        let t = item.split(';').next().unwrap_or("").trim();
        t == media || t == "*/*" || t == format!("{major}/*")
    })
}

fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The bundle: a gzip tar whose root holds each YAML (names are ours to choose).
fn bundle(deployments: &[(String, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    for (n, (_, yaml)) in deployments.iter().enumerate() {
        let mut header = tar::Header::new_gnu();
        header.set_size(yaml.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let _ = tar.append_data(
            &mut header,
            format!("deployment-{}.yaml", n + 1),
            yaml.as_slice(),
        );
    }
    match tar.into_inner() {
        Ok(mut gz) => {
            let _ = gz.flush();
            gz.finish().unwrap_or_default()
        }
        Err(_) => Vec::new(),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WfmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn handle(&self, req: Request<Incoming>, peer: Option<Vec<u8>>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let full = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let headers: BTreeMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        // Every field line, repeated names included, for RFC 9421.
        let fields: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| headers.get("host").cloned())
            .unwrap_or_default();
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(b) => b.to_bytes().to_vec(),
            Err(_) => return problem(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        };
        let path = full.strip_prefix(BASE_PATH).unwrap_or("").to_string();
        let rx = Received {
            method: &method,
            path: &path,
            headers: &headers,
            body: &body,
            peer: peer.as_deref(),
            message: msg_sig::Message {
                method: method.as_str(),
                scheme: "https",
                authority: &authority,
                path: &full,
                query: query.as_deref(),
                fields: &fields,
                body: &body,
            },
        };
        let (response, signed_with) = if full.starts_with(BASE_PATH) {
            self.route(&rx)
        } else {
            (
                problem(StatusCode::NOT_FOUND, "not under the base path"),
                None,
            )
        };
        self.lock().requests.push(Recorded {
            method: method.to_string(),
            path,
            headers,
            body,
            status: response.status().as_u16(),
            client_cert: peer.is_some(),
            signed_with,
        });
        response
    }

    /// Checks whichever signatures `rx` carries against the key of
    /// `cert_der`: every one present must verify and one must be present.
    /// `keyid`: the RFC 9421 key name to require (the clientId).
    fn authenticate(
        rx: &Received<'_>,
        cert_der: &[u8],
        keyid: Option<&str>,
    ) -> Result<SignedWith, String> {
        let has = |name: &str| rx.message.fields.iter().any(|(n, _)| n == name);
        let rfc9421 = has("signature-input") || has("signature");
        let payload = rx.headers.get("x-payload-signature");
        if rfc9421 {
            let key = msg_sig::ClientKey::from_certificate(cert_der).map_err(|e| e.to_string())?;
            let policy = msg_sig::Policy {
                now: unix_now(),
                keyid: keyid.map(str::to_string),
                margo: true,
            };
            msg_sig::verify(&rx.message, &key, &policy).map_err(|e| format!("RFC 9421: {e}"))?;
        }
        if let Some(header) = payload {
            if !payload_sig::verify(header, rx.body, cert_der) {
                return Err("X-Payload-Signature does not verify".into());
            }
        }
        match (rfc9421, payload.is_some()) {
            (true, true) => Ok(SignedWith::Both),
            (true, false) => Ok(SignedWith::Rfc9421),
            (false, true) => Ok(SignedWith::XPayloadSignature),
            (false, false) => {
                Err("unsigned: neither Signature-Input/Signature nor X-Payload-Signature".into())
            }
        }
    }

    /// Counts a refused signature and answers as the Margo page says.
    fn deny(s: &mut WfmState, rx: &Received<'_>, why: &str) -> Response<Full<Bytes>> {
        s.bad_signatures += 1;
        s.signature_errors
            .push(format!("{} {}: {why}", rx.method, rx.path));
        respond(
            StatusCode::UNAUTHORIZED,
            Some("application/json"),
            json!({"error": "Invalid signature", "message": why})
                .to_string()
                .into_bytes(),
        )
    }

    fn route(&self, rx: &Received<'_>) -> (Response<Full<Bytes>>, Option<SignedWith>) {
        let segments: Vec<&str> = rx
            .path
            .strip_prefix("/api/v1/")
            .map(|p| p.split('/').collect())
            .unwrap_or_default();
        match (rx.method, segments.as_slice()) {
            (&Method::GET, ["onboarding", "certificate"]) => {
                let body = json!({"certificate": b64().encode(self.ca_pem.as_bytes())});
                let r = respond(
                    StatusCode::OK,
                    Some("application/json"),
                    body.to_string().into_bytes(),
                );
                (r, None)
            }
            (&Method::POST, ["onboarding"]) => self.onboard(rx),
            (_, ["clients", client, rest @ ..]) => {
                let Some(known) = self
                    .lock()
                    .clients
                    .iter()
                    .find(|c| c.id == *client)
                    .cloned()
                else {
                    return (problem(StatusCode::NOT_FOUND, "unknown client"), None);
                };
                let verdict = Self::authenticate(rx, &known.cert_der, Some(client));
                let url_base = format!("/api/v1/clients/{client}");
                let r = self.desired(rx, rest, &url_base, false, Some(&verdict));
                (r, verdict.ok())
            }
            (_, rest) => {
                // rc.3: the client is the one whose certificate came with the handshake.
                let known = rx.peer.and_then(|der| {
                    self.lock()
                        .clients
                        .iter()
                        .find(|c| c.cert_der == der)
                        .cloned()
                });
                if known.is_none() {
                    let r = problem(StatusCode::UNAUTHORIZED, "no known client certificate");
                    return (r, None);
                }
                (self.desired(rx, rest, "/api/v1", true, None), None)
            }
        }
    }

    fn onboard(&self, rx: &Received<'_>) -> (Response<Full<Bytes>>, Option<SignedWith>) {
        let invalid = || {
            let r = respond(
                StatusCode::BAD_REQUEST,
                Some("application/json"),
                br#"{"error": "Invalid certificate"}"#.to_vec(),
            );
            (r, None)
        };
        let Ok(request) = serde_json::from_slice::<Value>(rx.body) else {
            return invalid();
        };
        if request["kind"] != "OnboardingRequest" || !request["apiVersion"].is_string() {
            return invalid();
        }
        let Some(text) = request["certificate"].as_str() else {
            return invalid();
        };
        let Ok(decoded) = b64().decode(text.trim().as_bytes()) else {
            return invalid();
        };
        // Base64 of the DER, or of the PEM text.
        let der = if decoded.starts_with(b"-----BEGIN") {
            let pem = String::from_utf8_lossy(&decoded).to_string();
            let inner: String = pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<Vec<_>>()
                .join("");
            match b64().decode(inner.as_bytes()) {
                Ok(d) => d,
                Err(_) => return invalid(),
            }
        } else {
            decoded
        };
        if msg_sig::ClientKey::from_certificate(&der).is_err() {
            return invalid();
        }
        // Signed by the key being onboarded, if signed at all (no client
        // id exists yet to name the key, so `keyid` is not checked).
        let signed_with = match Self::authenticate(rx, &der, None) {
            Ok(scheme) => Some(scheme),
            Err(why) if why.starts_with("unsigned") => None,
            Err(why) => return (Self::deny(&mut self.lock(), rx, &why), None),
        };
        let id = uuid_v4();
        self.lock().clients.push(Client {
            id: id.clone(),
            cert_der: der,
        });
        let r = respond(
            StatusCode::CREATED,
            Some("application/json"),
            json!({"clientId": id}).to_string().into_bytes(),
        );
        (r, signed_with)
    }

    /// The desired-state, status and capabilities routes. `auth`: the
    /// signature verdict on the `{clientId}` routes (`None` on the rc.3
    /// routes, where mutual TLS identified the client), enforced after
    /// content negotiation as the status codes imply.
    fn desired(
        &self,
        rx: &Received<'_>,
        rest: &[&str],
        url_base: &str,
        rc3: bool,
        auth: Option<&Result<SignedWith, String>>,
    ) -> Response<Full<Bytes>> {
        let mut s = self.lock();
        let refused = match auth {
            Some(Err(why)) => Some(why.as_str()),
            _ => None,
        };
        let headers = rx.headers;
        match (rx.method, rest) {
            (&Method::GET, ["deployments"]) => {
                if !accepts(headers.get("accept").map(String::as_str), MANIFEST_TYPE) {
                    return problem(StatusCode::NOT_ACCEPTABLE, "manifest media type only");
                }
                if let Some(why) = refused {
                    return Self::deny(&mut s, rx, why);
                }
                let deployments: Vec<Value> = s
                    .deployments
                    .iter()
                    .map(|(id, yaml)| {
                        let d = digest(yaml);
                        json!({"deploymentId": id, "digest": d, "sizeBytes": yaml.len(),
                               "url": format!("{url_base}/deployments/{id}/{d}")})
                    })
                    .collect();
                let bundle_ref = if s.deployments.is_empty() {
                    Value::Null
                } else {
                    let b = bundle(&s.deployments);
                    let d = digest(&b);
                    json!({"mediaType": BUNDLE_TYPE, "digest": d, "sizeBytes": b.len(),
                           "url": format!("{url_base}/bundles/{d}")})
                };
                let manifest = json!({"manifestVersion": s.manifest_version,
                                      "bundle": bundle_ref, "deployments": deployments});
                let bytes = manifest.to_string().into_bytes();
                let etag = format!("\"{}\"", digest(&bytes));
                if headers.get("if-none-match") == Some(&etag) {
                    return Response::builder()
                        .status(StatusCode::NOT_MODIFIED)
                        .header("etag", etag)
                        .body(Full::new(Bytes::new()))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                }
                let mut r = respond(StatusCode::OK, Some(MANIFEST_TYPE), bytes);
                if let Ok(v) = etag.parse() {
                    r.headers_mut().insert("etag", v);
                }
                r
            }
            (&Method::GET, ["deployments", id, d]) => {
                if let Some(why) = refused {
                    return Self::deny(&mut s, rx, why);
                }
                match s
                    .deployments
                    .iter()
                    .find(|(i, y)| i == id && digest(y) == *d)
                {
                    Some((_, yaml)) => {
                        let mut r = respond(StatusCode::OK, Some("application/yaml"), yaml.clone());
                        if let Ok(v) = format!("\"{d}\"").parse() {
                            r.headers_mut().insert("etag", v);
                        }
                        r
                    }
                    None => problem(StatusCode::NOT_FOUND, "no such digest"),
                }
            }
            (&Method::GET, ["bundles", d]) => {
                if let Some(why) = refused {
                    return Self::deny(&mut s, rx, why);
                }
                let b = bundle(&s.deployments);
                if s.deployments.is_empty() || digest(&b) != *d {
                    return problem(StatusCode::NOT_FOUND, "no such bundle");
                }
                let mut r = respond(StatusCode::OK, Some(BUNDLE_TYPE), b);
                if let Ok(v) = format!("\"{d}\"").parse() {
                    r.headers_mut().insert("etag", v);
                }
                r
            }
            (&Method::POST, ["deployments", id, "status"]) => {
                if let Some(why) = refused {
                    return Self::deny(&mut s, rx, why);
                }
                let Ok(value) = serde_json::from_slice::<Value>(rx.body) else {
                    return problem(StatusCode::BAD_REQUEST, "not JSON");
                };
                s.statuses.push((id.to_string(), value));
                let created = s.seen_status.insert(id.to_string());
                if rc3 && created {
                    respond(StatusCode::CREATED, None, Vec::new())
                } else {
                    respond(StatusCode::OK, None, Vec::new())
                }
            }
            (&Method::POST | &Method::PUT, ["capabilities", ..]) => {
                if let Some((status, n)) = s.refuse_capabilities {
                    if n > 0 {
                        s.refuse_capabilities = (n > 1).then_some((status, n - 1));
                        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
                        return problem(code, "refused by the test");
                    }
                }
                if let Some(why) = refused {
                    return Self::deny(&mut s, rx, why);
                }
                let Ok(value) = serde_json::from_slice::<Value>(rx.body) else {
                    return problem(StatusCode::BAD_REQUEST, "not JSON");
                };
                let key = rest.get(1).copied().unwrap_or("").to_string();
                s.capabilities.push(value);
                let created = s.seen_capabilities.insert(key);
                if rc3 && !created {
                    respond(StatusCode::OK, None, Vec::new())
                } else {
                    respond(StatusCode::CREATED, None, Vec::new())
                }
            }
            _ => problem(StatusCode::NOT_FOUND, "no such route"),
        }
    }
}

/// Loads the first certificate of a PEM text as DER (for assertions).
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let inner: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    b64()
        .decode(inner.as_bytes())
        .context("PEM body is not base64")
}
