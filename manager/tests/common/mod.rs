//! Shared by the manager's test files: a manager on free ports, a fake
//! device behind the gateway, and a small HTTP/1.1 client over tokio-rustls.
//! Waits and the MQTT client come from margo-testkit.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use margo_manager::admin::ProvisionedBundle;
use margo_manager::clock::ManualClock;
use margo_manager::{Manager, ManagerConfig, ManagerHandle};
use margo_schemas::cose::{SigningKey, VerifyingKey};
use margo_schemas::ids::ClientId;
use margo_schemas::messages::{Envelope, Message};
use margo_schemas::pki::{certs_from_pem, client_tls_config, pkcs8_from_pem};
use margo_schemas::topics;
use margo_testkit::mqtt::{Options, TestClient};
use margo_testkit::within;
use rumqttc::QoS;
use tokio::net::TcpStream;

/// Default wait for anything in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// A manager configuration with data in `dir`, every listener on a free
/// loopback port and uplink batches every 5 ms.
pub fn config(dir: &Path) -> ManagerConfig {
    let mut config = ManagerConfig::with_data_dir(dir);
    let any = "127.0.0.1:0".parse().expect("addr");
    config.broker.mqtt_listen = any;
    config.broker.gateway_listen = any;
    config.http.listen = any;
    // Parallel tests must not race for the metrics listener's default port.
    config.metrics.listen = any;
    config.ingest.batch_interval = Duration::from_millis(5);
    config
}

/// Starts a manager with `config`.
pub async fn start(config: ManagerConfig) -> ManagerHandle {
    within(WAIT, "manager start", Manager::start(config))
        .await
        .expect("manager starts")
}

/// Starts a manager with `config` whose wall clock only moves when the test
/// moves the returned [`ManualClock`] (it starts at the system time).
pub async fn start_with_manual_clock(config: ManagerConfig) -> (ManagerHandle, ManualClock) {
    let clock = ManualClock::starting_now();
    let manager = within(
        WAIT,
        "manager start",
        Manager::start_with_clock(config, clock.clock()),
    )
    .await
    .expect("manager starts");
    (manager, clock)
}

/// What a fake device connects and signs with, as the manager issued it.
pub struct DevicePem<'a> {
    pub client_id: &'a ClientId,
    pub ca: &'a str,
    pub cert: &'a str,
    pub key: &'a str,
    pub signing_cert: &'a str,
}

impl<'a> From<&'a ProvisionedBundle> for DevicePem<'a> {
    fn from(bundle: &'a ProvisionedBundle) -> Self {
        Self {
            client_id: &bundle.client_id,
            ca: &bundle.ca_pem,
            cert: &bundle.cert_pem,
            key: &bundle.key_pem,
            signing_cert: &bundle.signing_cert_pem,
        }
    }
}

/// A hand-rolled device: signs its uplink with its own key and verifies
/// every downlink against the manager's signing certificate.
pub struct FakeDevice {
    pub id: ClientId,
    pub mqtt: TestClient,
    pub key: SigningKey,
    pub manager_key: VerifyingKey,
    /// The last uplink seq it used (for tests that count).
    pub seq: u64,
}

impl FakeDevice {
    /// Connects through the gateway at `gateway` with mutual TLS, waits for
    /// the CONNACK and subscribes to `filters`.
    pub async fn connect(
        gateway: SocketAddr,
        pem: DevicePem<'_>,
        clean: bool,
        filters: &[String],
    ) -> Self {
        let tls = client_tls_config(
            pem.ca.as_bytes(),
            Some((pem.cert.as_bytes(), pem.key.as_bytes())),
        )
        .expect("device TLS config");
        let options = Options {
            clean_session: clean,
            ..Options::new(pem.client_id.as_str())
        };
        let mut mqtt = TestClient::device(gateway, Arc::new(tls), options).with_wait(WAIT);
        mqtt.connack().await;
        Self::over(mqtt, pem, filters).await
    }

    /// A device on an MQTT connection the test made (subscribes to
    /// `filters` without waiting for the SUBACK).
    pub async fn over(mqtt: TestClient, pem: DevicePem<'_>, filters: &[String]) -> Self {
        for filter in filters {
            mqtt.client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .expect("subscribe");
        }
        let pkcs8 = pkcs8_from_pem(pem.key.as_bytes(), "device key").expect("device key");
        let signing = certs_from_pem(pem.signing_cert.as_bytes(), "signing cert")
            .expect("signing cert")
            .remove(0);
        Self {
            id: pem.client_id.clone(),
            mqtt,
            key: SigningKey::from_pkcs8(&pkcs8).expect("device signing key"),
            manager_key: VerifyingKey::from_certificate(signing.as_ref())
                .expect("manager signing key"),
            seq: 0,
        }
    }

    /// The next verified downlink message for which `pick` says `Some`
    /// (empty retained payloads skipped).
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Message) -> Option<T>,
    ) -> T {
        let (id, key) = (self.id.clone(), self.manager_key.clone());
        self.mqtt
            .expect_publish(what, |publish| {
                if publish.payload.is_empty() {
                    return None;
                }
                let (client, topic) =
                    topics::parse_device_topic(&publish.topic).expect("a device topic");
                assert_eq!(client, id);
                let env = Envelope::open(&publish.payload, 1 << 20, &key, &id, &topic)
                    .expect("downlink verifies against the manager signing certificate");
                pick(&env.msg)
            })
            .await
    }

    /// The next verified downlink message.
    pub async fn next(&mut self, what: &str) -> Message {
        self.expect(what, |m| Some(m.clone())).await
    }
}

/// An HTTP response, fully read.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON; panics naming the status and the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

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
        within(WAIT, &format!("{method} {path}"), async {
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

/// A Margo device capabilities manifest for device `id` (JSON, as a device sends it).
pub fn capabilities_body(id: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "device.margo.org/v1alpha1",
        "kind": "DeviceCapabilitiesManifest",
        "properties": {
            "id": id,
            "vendor": "Acme",
            "modelNumber": "E1",
            "serialNumber": "sn-1",
            "cpu": [{"cores": 2, "architecture": "arm64"}],
            "memory": "4Gi",
            "storage": "32Gi"
        }
    })
}
