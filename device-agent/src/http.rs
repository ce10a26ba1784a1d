//! A minimal HTTPS client for the onboarding API: hyper's low-level HTTP/1.1
//! connection over tokio-rustls (ring), one connection per request.
//!
//! Two TLS modes: [`unverified_tls`] for the single request that fetches the
//! fleet CA (nothing to verify against yet; the answer is pinned by
//! fingerprint before it is used), and [`verified_tls`] with the pinned CA
//! as the only root, TLS 1.3, for everything else.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use margo_schemas::pki;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use crate::manager_url::{ManagerUrl, UrlError};

/// Largest response body read.
pub const MAX_BODY: usize = 1024 * 1024;
/// Limit for one whole request (connect, TLS, send, read).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request did not produce an answer (all retryable).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("response body: {0}")]
    Body(String),
    #[error("response body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Accepts any server certificate but still checks the handshake signature
/// with the presented key. Used only to fetch the CA, which is then pinned.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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

/// TLS 1.3 configuration that does not verify the server (CA fetch only).
pub fn unverified_tls() -> Result<rustls::ClientConfig, pki::PkiError> {
    let provider = pki::crypto_provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| pki::PkiError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
            .with_no_client_auth(),
    )
}

/// TLS 1.3 configuration trusting only `ca_pem`.
pub fn verified_tls(ca_pem: &[u8]) -> Result<rustls::ClientConfig, pki::PkiError> {
    pki::client_tls_config(ca_pem, None)
}

/// A request body: its media type, bytes and extra headers (e.g. its signatures).
#[derive(Debug, Clone)]
pub struct RequestBody {
    pub content_type: &'static str,
    pub bytes: Bytes,
}

/// A response: status, headers, body (at most the client's body limit).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The `Retry-After` header in seconds (the HTTP-date form is ignored).
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }

    /// The first 300 characters of the body, for error messages.
    /// The `detail` of an RFC 9457 problem body, if the body is one.
    pub fn problem_detail(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        value
            .get("detail")
            .and_then(|d| d.as_str())
            .map(|d| d.chars().take(300).collect())
    }

    pub fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(300)
            .collect()
    }
}

/// A JSON request body with extra headers (e.g. its signatures).
#[derive(Debug, Clone)]
pub struct JsonBody {
    pub bytes: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// An HTTPS client for one manager. The rustls configuration is shared by
/// every request, so TLS 1.3 session tickets resume later connections.
#[derive(Debug, Clone)]
pub struct HttpsClient {
    url: ManagerUrl,
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    max_body: usize,
    timeout: Duration,
    /// Signs every request once its final target is known.
    auth: Option<Arc<crate::request_auth::RequestAuth>>,
}

impl HttpsClient {
    pub fn new(url: ManagerUrl, tls: rustls::ClientConfig) -> Result<Self, pki::PkiError> {
        let server_name = ServerName::try_from(url.host.clone())
            .map_err(|e| pki::PkiError::Tls(format!("server name {:?}: {e}", url.host)))?;
        Ok(Self {
            url,
            tls: Arc::new(tls),
            server_name,
            max_body: MAX_BODY,
            timeout: REQUEST_TIMEOUT,
            auth: None,
        })
    }

    /// The same client, signing every request with `auth`.
    pub fn with_auth(mut self, auth: Arc<crate::request_auth::RequestAuth>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The same client with another response body limit and request deadline.
    pub fn with_limits(mut self, max_body: usize, timeout: Duration) -> Self {
        self.max_body = max_body;
        self.timeout = timeout;
        self
    }

    pub fn url(&self) -> &ManagerUrl {
        &self.url
    }

    /// Sends one request over a new connection.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<JsonBody>,
    ) -> Result<Answer, HttpError> {
        let (headers, body) = match body {
            Some(JsonBody { bytes, headers }) => (
                headers,
                Some(RequestBody {
                    content_type: "application/json",
                    bytes: Bytes::from(bytes),
                }),
            ),
            None => (Vec::new(), None),
        };
        self.exchange(method, path, &headers, body).await
    }

    /// Sends one request with extra `headers` and an optional body over a
    /// new connection; the whole exchange is bounded by the request deadline
    /// and the response body by the body limit.
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<RequestBody>,
    ) -> Result<Answer, HttpError> {
        match tokio::time::timeout(
            self.timeout,
            self.exchange_inner(method, path, headers, body),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout(self.timeout)),
        }
    }

    async fn exchange_inner(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<RequestBody>,
    ) -> Result<Answer, HttpError> {
        let addr = self.url.authority();
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|source| HttpError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let tls = TlsConnector::from(Arc::clone(&self.tls))
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| HttpError::Tls {
                addr: addr.clone(),
                source,
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTPS connection ended with an error");
            }
        });
        // The signature covers the request exactly as sent: method, the
        // target URI (scheme, the Host value, path and query) and the body.
        let signed = self.auth.as_ref().map(|auth| {
            let body: &[u8] = body.as_ref().map_or(&[], |b| b.bytes.as_ref());
            auth.headers(method.as_str(), &format!("https://{addr}{path}"), body)
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &addr)
            .header(
                USER_AGENT,
                concat!("margo-agent/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        for (name, value) in signed.iter().flatten() {
            builder = builder.header(*name, value.as_str());
        }
        let payload = match body {
            Some(RequestBody {
                content_type,
                bytes,
            }) => {
                builder = builder.header(CONTENT_TYPE, HeaderValue::from_static(content_type));
                bytes
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(payload))?;
        let max_body = self.max_body;
        let result = async {
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let declared = parts
                .headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max_body as u64) {
                return Err(HttpError::TooLarge { limit: max_body });
            }
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        HttpError::TooLarge { limit: max_body }
                    } else {
                        HttpError::Body(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        }
        .await;
        driver.abort();
        result
    }
}
