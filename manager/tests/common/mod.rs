//! Shared by the manager's HTTPS test files: waits that fail with a clear
//! message and a small HTTP/1.1 client over tokio-rustls.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use margo_schemas::pki::client_tls_config;
use tokio::net::TcpStream;

/// Default wait for anything in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `fut` or panics with `what` after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for: {what}"),
    }
}

/// An HTTP response, fully read.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// An HTTPS client that trusts only the fleet CA (`ca_pem`) and talks to
/// `localhost` at `addr`, one connection per request.
pub struct Https {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
}

impl Https {
    pub fn new(addr: SocketAddr, ca_pem: &str) -> Self {
        let tls = client_tls_config(ca_pem.as_bytes(), None).expect("client TLS config");
        Self {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        }
    }

    /// Like [`Https::new`], presenting `cert_pem` (PEM chain) with `key_pem`
    /// (PKCS#8 PEM) as TLS client certificate when the server asks.
    pub fn with_client_cert(addr: SocketAddr, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Self {
        let tls = client_tls_config(
            ca_pem.as_bytes(),
            Some((cert_pem.as_bytes(), key_pem.as_bytes())),
        )
        .expect("client TLS config with a client certificate");
        Self {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        }
    }

    /// Sends one request with exactly `headers` (plus `host`) and reads the reply.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Reply {
        within(&format!("{method} {path}"), async {
            let tcp = TcpStream::connect(self.addr).await.expect("TCP connect");
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("HTTP handshake");
            let driver = tokio::spawn(conn);
            let mut builder = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "localhost");
            for (k, v) in headers {
                builder = builder.header(*k, v.as_str());
            }
            let request = builder.body(Full::new(Bytes::from(body))).expect("request");
            let response = sender.send_request(request).await.expect("response");
            let status = response.status();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .to_vec();
            driver.abort();
            Reply {
                status,
                headers,
                body,
            }
        })
        .await
    }
}
