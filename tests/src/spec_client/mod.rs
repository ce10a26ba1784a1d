//! A minimal Margo HTTP client written from the specification's text only,
//! for the conformance suite (`tests/tests/margo_conformance.rs`).
//!
//! It is deliberately independent of this project: no `margo-schemas`,
//! `margo-manager` or `margo-agent` import, only generic HTTP, TLS and
//! crypto crates (hyper, tokio-rustls with ring, ring, sha2,
//! data-encoding, flate2, tar). What it does, and where the text says so
//! (files of `margo/specification`,
//! `system-design/specification/margo-management-interface/`):
//!
//! - TLS trusting the WFM's CA ("The client MUST trust the WFM's server
//!   certificate through a pre-provisioned or securely obtained root CA",
//!   `api-requirements-and-security.md` at 8e402245), optionally presenting
//!   a client certificate (rc.3: "Mutual TLS", `-1.0.0-rc.3.yaml` `mTLS`).
//! - Request signing, either scheme ([`signing`]): RFC 9421 HTTP Message
//!   Signatures with `Content-Digest` (RFC 9530), as the 8e402245 page
//!   describes, or the older `X-Payload-Signature` page
//!   (`api-requirements-and-security.md`, default version), in the reading
//!   of `docs/decisions/0004-http-payload-signatures.md`.
//! - The artifacts of `desired-state.md` ([`artifacts`]): `sha256:<hex>`
//!   digests over the exact bytes, the tar.gz bundle.
//!
//! One TLS connection per request; every request has a deadline.

pub mod artifacts;
pub mod signing;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;

pub use signing::{content_digest, Rfc9421Signer, XPayloadSigner};

/// Deadline of one request, connection and TLS handshake included.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(20);

/// A client's X.509 certificate and its P-256 private key (PKCS#8).
#[derive(Clone)]
pub struct Identity {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
}

impl Identity {
    /// From PEM texts (`CERTIFICATE`, `PRIVATE KEY`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| anyhow!("client certificate PEM: {e}"))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| anyhow!("client key PEM (PKCS#8): {e}"))?;
        Ok(Self {
            cert_der: cert.as_ref().to_vec(),
            key_pkcs8: key.secret_pkcs8_der().to_vec(),
        })
    }

    /// The certificate as the onboarding request carries it: "Base64-encoded
    /// X.509 certificate of the client" (`device-client-onboarding.md`; the
    /// page's example `MIIDdzCCAl+g...` is base64 of DER).
    pub fn certificate_base64(&self) -> String {
        data_encoding::BASE64.encode(&self.cert_der)
    }
}

/// How requests are authenticated at the application layer.
pub enum Signing {
    /// Nothing (rc.3: the TLS client certificate is the identity).
    None,
    /// RFC 9421 (`Signature-Input`, `Signature`, `Content-Digest`).
    Rfc9421(Rfc9421Signer),
    /// `X-Payload-Signature` (+ `Content-Digest` when there is a body).
    XPayload(XPayloadSigner),
}

/// A response, fully read (at most 16 MiB).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The media type without parameters, lowercase.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {} body is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// One line for failure messages: status, content type and body.
    pub fn describe(&self) -> String {
        let mut body = String::from_utf8_lossy(&self.body).to_string();
        if body.len() > 600 {
            body.truncate(600);
            body.push('…');
        }
        format!(
            "HTTP {} ({}) {body}",
            self.status.as_u16(),
            self.header("content-type").unwrap_or("no content-type")
        )
    }

    /// Fails unless the status is `status`.
    pub fn expect_status(&self, status: u16) -> Result<&Self> {
        if self.status.as_u16() != status {
            bail!("expected HTTP {status}, got {}", self.describe());
        }
        Ok(self)
    }
}

/// The client: one WFM, one identity, one signing scheme.
pub struct SpecClient {
    addr: SocketAddr,
    /// `host[:port]` as sent in `Host` and used in `@target-uri`.
    authority: String,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    signing: Signing,
}

impl SpecClient {
    /// A client of the WFM at `addr`, addressed as `host` (the name its
    /// certificate carries), trusting `ca_pem`, presenting `client_cert`
    /// in the TLS handshake if given and asked for.
    pub fn new(
        addr: SocketAddr,
        host: &str,
        ca_pem: &str,
        client_cert: Option<&Identity>,
        signing: Signing,
    ) -> Result<Self> {
        let config = tls::client_config(ca_pem, client_cert)?;
        Ok(Self {
            addr,
            authority: format!("{host}:{}", addr.port()),
            server_name: ServerName::try_from(host.to_string())
                .map_err(|e| anyhow!("server name {host}: {e}"))?,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            signing,
        })
    }

    /// `https://<authority><path>`: the `@target-uri` of a request for `path`.
    pub fn target_uri(&self, path: &str) -> String {
        format!("https://{}{path}", self.authority)
    }

    /// The signature headers this client adds to a request (none for
    /// [`Signing::None`]); `body` is `None` for a request without content.
    pub fn auth_headers(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<(String, String)>> {
        match &self.signing {
            Signing::None => Ok(Vec::new()),
            Signing::Rfc9421(s) => s.headers(
                method.as_str(),
                &self.target_uri(path),
                body,
                signing::unix_now(),
            ),
            Signing::XPayload(s) => s.headers(body),
        }
    }

    /// A signed `GET` with `headers` added.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        self.signed(Method::GET, path, headers, None).await
    }

    /// A signed `DELETE`.
    pub async fn delete(&self, path: &str) -> Result<Reply> {
        self.signed(Method::DELETE, path, &[], None).await
    }

    /// A signed request with an `application/json` body.
    pub async fn send_json(&self, method: Method, path: &str, body: &[u8]) -> Result<Reply> {
        self.signed(
            method,
            path,
            &[("content-type", "application/json")],
            Some(body),
        )
        .await
    }

    /// A signed request: the signature headers, then `headers`.
    pub async fn signed(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply> {
        let mut all = self.auth_headers(&method, path, body)?;
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.raw(method, path, &all, body.unwrap_or_default().to_vec())
            .await
    }

    /// Sends exactly `headers` (plus `Host`) and `body`; reads the reply.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Reply> {
        let what = format!("{method} {path}");
        tokio::time::timeout(REQUEST_DEADLINE, self.exchange(method, path, headers, body))
            .await
            .map_err(|_| anyhow!("{what}: no answer within {REQUEST_DEADLINE:?}"))?
            .with_context(|| what.clone())
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Reply> {
        let tcp = TcpStream::connect(self.addr).await.context("TCP connect")?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP/1.1 handshake")?;
        let driver = tokio::spawn(conn);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.authority.as_str());
        for (k, v) in headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder.body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await.context("send")?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = http_body_util::Limited::new(response.into_body(), 16 << 20)
            .collect()
            .await
            .map_err(|e| anyhow!("read body: {e}"))?
            .to_bytes()
            .to_vec();
        driver.abort();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}
