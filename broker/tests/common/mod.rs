//! Test helpers: a throwaway PKI (rcgen), a broker on free ports, MQTT clients
//! whose event loops feed a channel, and waits that fail with a clear message.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use margo_broker::{BrokerConfig, BrokerHandle, EmbeddedBroker, GatewayConfig, GatewayTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;

/// Default wait for anything in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut` or panics with `what` after `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for: {what}"),
    }
}

/// Polls `cond` until it holds or panics with `what`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(WAIT, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A CA that issues server and client certificates.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A client certificate chain and key.
pub struct ClientCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("ca key");
        Self {
            ca: CertifiedIssuer::self_signed(params, key).expect("ca cert"),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// Server certificate for `localhost` and `127.0.0.1`, as gateway TLS material.
    pub fn gateway_tls(&self) -> GatewayTls {
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.ca).expect("server cert");
        GatewayTls {
            ca_pem: self.ca.pem().into_bytes(),
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }
    }

    /// Client certificate with subject CN = `cn`.
    pub fn client(&self, cn: &str) -> ClientCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &self.ca).expect("client cert");
        ClientCert {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A rustls client config (ring provider) trusting `server_ca`, presenting `cert`.
pub fn client_tls(server_ca: &Pki, cert: Option<&ClientCert>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.ca_der()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A broker with a gateway on free loopback ports.
pub async fn start_broker(pki: &Pki, handshake_timeout: Duration) -> BrokerHandle {
    let mut config = BrokerConfig::default();
    config.mqtt.listen = "127.0.0.1:0".parse().expect("addr");
    let mut gateway = GatewayConfig::new(pki.gateway_tls());
    gateway.listen = "127.0.0.1:0".parse().expect("addr");
    gateway.handshake_timeout = handshake_timeout;
    gateway.connect_timeout = Duration::from_secs(3);
    config.gateway = Some(gateway);
    within(WAIT, "broker start", EmbeddedBroker::start(config))
        .await
        .expect("broker starts")
}

/// An MQTT client whose event loop runs in a task and reports into a channel.
/// The task stops at the first connection error (no reconnect).
pub struct Client {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    pub name: String,
}

pub struct Options {
    pub client_id: String,
    pub clean_session: bool,
    pub will: Option<LastWill>,
}

impl Options {
    pub fn new(client_id: &str) -> Self {
        Self {
            client_id: client_id.to_string(),
            clean_session: true,
            will: None,
        }
    }
}

impl Client {
    /// A plain client on the loopback listener.
    pub fn plain(addr: SocketAddr, client_id: &str) -> Self {
        let opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        Self::spawn(opts, client_id)
    }

    /// A device through the gateway.
    pub fn device(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, options: Options) -> Self {
        let mut opts = MqttOptions::new(&options.client_id, addr.ip().to_string(), addr.port());
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        opts.set_clean_session(options.clean_session);
        if let Some(will) = options.will {
            opts.set_last_will(will);
        }
        Self::spawn(opts, &options.client_id)
    }

    fn spawn(mut opts: MqttOptions, name: &str) -> Self {
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(event) => {
                        if tx.send(Ok(event)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        Self {
            client,
            events,
            name: name.to_string(),
        }
    }

    /// Next incoming packet matching `pick`; panics on a connection error or timeout.
    pub async fn expect_incoming<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Packet) -> Option<T>,
    ) -> T {
        let name = self.name.clone();
        within(WAIT, &format!("{name}: {what}"), async {
            loop {
                match self.events.recv().await {
                    Some(Ok(Event::Incoming(packet))) => {
                        if let Some(v) = pick(&packet) {
                            return v;
                        }
                    }
                    Some(Ok(Event::Outgoing(_))) => {}
                    Some(Err(e)) => {
                        panic!("{name}: connection failed while waiting for {what}: {e}")
                    }
                    None => panic!("{name}: event loop ended while waiting for {what}"),
                }
            }
        })
        .await
    }

    pub async fn connack(&mut self) {
        self.expect_incoming("CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(()))
            .await
    }

    pub async fn suback(&mut self) {
        self.expect_incoming("SUBACK", |p| matches!(p, Packet::SubAck(_)).then_some(()))
            .await
    }

    pub async fn puback(&mut self) {
        self.expect_incoming("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await
    }

    /// Waits for a publish on `topic`, returns its payload and retain flag.
    pub async fn publish_on(&mut self, topic: &str) -> (Vec<u8>, bool) {
        let topic = topic.to_string();
        self.expect_incoming(&format!("PUBLISH on {topic}"), |p| match p {
            Packet::Publish(p) if p.topic == topic => Some((p.payload.to_vec(), p.retain)),
            _ => None,
        })
        .await
    }

    /// Waits until the connection fails; returns the error text.
    pub async fn closed(&mut self, what: &str) -> String {
        let name = self.name.clone();
        within(
            WAIT,
            &format!("{name}: connection closed ({what})"),
            async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return e,
                        None => return "event loop ended".to_string(),
                    }
                }
            },
        )
        .await
    }

    /// Asserts that no connection error arrives within `quiet`, draining events.
    pub async fn stays_up(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("{}: connection dropped: {e}", self.name),
                Ok(None) => panic!("{}: event loop ended", self.name),
            }
        }
    }
}
