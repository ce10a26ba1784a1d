//! An MQTT client (rumqttc) whose event loop runs in a task and feeds a
//! channel: the test reads what arrived, in order, and sees a connection
//! error as an event instead of a hang. The task stops at the first
//! connection error (no reconnect).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::pki::TlsIdentity;
use crate::within;

/// How long the methods without a limit of their own wait, unless
/// [`TestClient::with_wait`] says otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// A client and the stream of what its event loop saw.
pub struct TestClient {
    pub client: AsyncClient,
    /// Its client id, in failure messages.
    pub name: String,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    task: JoinHandle<()>,
    wait: Duration,
}

/// How a device connects through a TLS listener.
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

impl TestClient {
    /// A plain client on a loopback listener (keep-alive 5 s); does not
    /// wait for the CONNACK.
    pub fn plain(addr: SocketAddr, client_id: &str) -> Self {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(5));
        Self::spawn(opts, 64)
    }

    /// Like [`TestClient::plain`], presenting `username` and `password`
    /// (the embedded broker's internal listener requires its login).
    pub fn plain_login(addr: SocketAddr, client_id: &str, username: &str, password: &str) -> Self {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_credentials(username, password);
        Self::spawn(opts, 64)
    }

    /// A device over TLS with `tls` (keep-alive 5 s); does not wait for the
    /// CONNACK.
    pub fn device(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, options: Options) -> Self {
        let mut opts = MqttOptions::new(&options.client_id, addr.ip().to_string(), addr.port());
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        opts.set_clean_session(options.clean_session);
        if let Some(will) = options.will {
            opts.set_last_will(will);
        }
        opts.set_keep_alive(Duration::from_secs(5));
        Self::spawn(opts, 64)
    }

    /// Connects to 127.0.0.1:`port` (keep-alive 30 s), over mutual TLS when
    /// `tls` is given, with a persistent session when `clean` is false, and
    /// waits up to 10 s for a successful CONNACK.
    pub async fn connect(
        client_id: &str,
        port: u16,
        tls: Option<&TlsIdentity>,
        will: Option<LastWill>,
        clean: bool,
    ) -> Result<Self> {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(clean);
        if let Some(will) = will {
            opts.set_last_will(will);
        }
        if let Some(tls) = tls {
            let config = margo_schemas::pki::client_tls_config(
                &tls.ca_pem,
                Some((&tls.cert_pem, &tls.key_pem)),
            )?;
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        }
        let mut client = Self::spawn(opts, 100);
        client.connected().await?;
        Ok(client)
    }

    /// Runs `opts`'s event loop in a task (request queue of `capacity`).
    pub fn spawn(opts: MqttOptions, capacity: usize) -> Self {
        let name = opts.client_id();
        let (client, mut eventloop) = AsyncClient::new(opts, capacity);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(event) => {
                        if tx.send(Ok(event)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "test client connection ended");
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        Self {
            client,
            name,
            events,
            task,
            wait: DEFAULT_WAIT,
        }
    }

    /// The limit for the methods that take none (default [`DEFAULT_WAIT`]).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Waits for a successful CONNACK; an error if the connection fails or
    /// is refused first, or after the wait.
    pub async fn connected(&mut self) -> Result<()> {
        let (name, limit) = (self.name.clone(), self.wait);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| anyhow!("{name}: no CONNACK within {limit:?}"))?
                .ok_or_else(|| anyhow!("{name}: connection closed before CONNACK"))?;
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != rumqttc::ConnectReturnCode::Success {
                        return Err(anyhow!("{name}: CONNACK {:?}", ack.code));
                    }
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => return Err(anyhow!("{name}: connection failed before CONNACK: {e}")),
            }
        }
    }

    /// The next incoming packet matching `pick`; panics on a connection
    /// error or after the wait.
    pub async fn expect_incoming<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Packet) -> Option<T>,
    ) -> T {
        let name = self.name.clone();
        within(self.wait, &format!("{name}: {what}"), async {
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

    /// The next incoming publish for which `pick` says `Some`; panics like
    /// [`TestClient::expect_incoming`].
    pub async fn expect_publish<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Publish) -> Option<T>,
    ) -> T {
        self.expect_incoming(what, |packet| match packet {
            Packet::Publish(p) => pick(p),
            _ => None,
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

    /// Waits for a publish on `topic`; returns its payload and retain flag.
    pub async fn publish_on(&mut self, topic: &str) -> (Vec<u8>, bool) {
        self.expect_publish(&format!("PUBLISH on {topic}"), |p| {
            (p.topic == topic).then(|| (p.payload.to_vec(), p.retain))
        })
        .await
    }

    /// Subscribes at QoS 1 and waits for the SUBACK; an error if the
    /// connection ends or after the wait.
    pub async fn subscribe(&mut self, filter: &str) -> Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        let wait = self.wait;
        self.wait_for(wait, "SUBACK", |ev| {
            matches!(ev, Event::Incoming(Packet::SubAck(_)))
        })
        .await
        .map(|_| ())
    }

    /// Publishes at QoS 1 and waits for the PUBACK; an error if the
    /// connection ends or after the wait.
    pub async fn publish(&mut self, topic: &str, retain: bool, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await?;
        let wait = self.wait;
        self.wait_for(wait, "PUBACK", |ev| {
            matches!(ev, Event::Incoming(Packet::PubAck(_)))
        })
        .await
        .map(|_| ())
    }

    /// The next incoming publish within `limit`; `None` after `limit` or
    /// when the connection ends.
    pub async fn next_publish(&mut self, limit: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => return Some(p),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) | Err(_) => return None,
            }
        }
    }

    /// The next event matching `pred` within `limit`; an error when the
    /// connection ends first or after `limit`.
    pub async fn wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(ev))) if pred(&ev) => return Ok(ev),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => {
                    return Err(anyhow!("connection closed while waiting for {what}: {e}"))
                }
                Ok(None) => return Err(anyhow!("connection closed while waiting for {what}")),
                Err(_) => return Err(anyhow!("timed out after {limit:?} waiting for {what}")),
            }
        }
    }

    /// Waits until the connection fails; returns the error text. Panics
    /// after the wait.
    pub async fn closed(&mut self, what: &str) -> String {
        let name = self.name.clone();
        within(
            self.wait,
            &format!("{name}: connection closed ({what})"),
            async {
                loop {
                    match self.events.recv().await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return e.to_string(),
                        None => return "event loop ended".to_string(),
                    }
                }
            },
        )
        .await
    }

    /// Waits for the connection to fail and asserts that the broker
    /// refused it with CONNACK "not authorized" (not a bare close). Panics
    /// after the wait.
    pub async fn refused_not_authorized(&mut self, what: &str) {
        let name = self.name.clone();
        let refused = within(self.wait, &format!("{name}: {what}"), async {
            loop {
                match self.events.recv().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return e,
                    None => panic!("{name}: event loop ended without an error ({what})"),
                }
            }
        })
        .await;
        assert!(
            matches!(
                refused,
                ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized)
            ),
            "{name}: expected CONNACK not authorized, got {refused:?}"
        );
    }

    /// Asserts that the connection stays up for `quiet`, reading events.
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

    /// Whether the connection is still up after `grace`, reading events.
    pub async fn still_connected(&mut self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Err(_)) | None) => return false,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return !self.task.is_finished(),
            }
        }
    }

    /// Drops the TCP connection without DISCONNECT (the broker fires the will).
    pub fn crash(self) {
        self.task.abort();
    }
}
