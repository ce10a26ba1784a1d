//! MQTT test clients (rumqttc) whose event loops feed a channel.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// TLS material for a client: PEM bytes.
#[derive(Clone)]
pub struct TlsIdentity {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A connected client and the stream of what it receives.
pub struct TestClient {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<()>,
}

impl TestClient {
    /// Connects to 127.0.0.1:`port`, over mutual TLS when `tls` is given,
    /// with a persistent session when `clean` is false.
    pub async fn connect(
        client_id: &str,
        port: u16,
        tls: Option<&TlsIdentity>,
        will: Option<LastWill>,
        clean: bool,
    ) -> Result<TestClient> {
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
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Event::Outgoing(rumqttc::Outgoing::Disconnect));
                        tracing::debug!(error = %e, "test client connection ended");
                        return;
                    }
                }
            }
        });
        // Wait for the ConnAck.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ev = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .map_err(|_| anyhow!("{client_id}: no CONNACK within 10 s"))?
                .ok_or_else(|| anyhow!("{client_id}: connection closed before CONNACK"))?;
            match ev {
                Event::Incoming(Packet::ConnAck(ack)) => {
                    if ack.code != rumqttc::ConnectReturnCode::Success {
                        return Err(anyhow!("{client_id}: CONNACK {:?}", ack.code));
                    }
                    break;
                }
                Event::Outgoing(rumqttc::Outgoing::Disconnect) => {
                    return Err(anyhow!("{client_id}: connection failed before CONNACK"))
                }
                _ => {}
            }
        }
        Ok(TestClient {
            client,
            events: rx,
            task,
        })
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) -> Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        self.wait_for(Duration::from_secs(10), "SUBACK", |ev| {
            matches!(ev, Event::Incoming(Packet::SubAck(_)))
        })
        .await
        .map(|_| ())
    }

    /// Publishes QoS 1 and waits for the PUBACK.
    pub async fn publish(&mut self, topic: &str, retain: bool, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await?;
        self.wait_for(Duration::from_secs(10), "PUBACK", |ev| {
            matches!(ev, Event::Incoming(Packet::PubAck(_)))
        })
        .await
        .map(|_| ())
    }

    /// The next incoming publish within `limit`, if any.
    pub async fn next_publish(&mut self, limit: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::Incoming(Packet::Publish(p)))) => return Some(p),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Waits for an event matching `pred`.
    pub async fn wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) if pred(&ev) => return Ok(ev),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(anyhow!("connection closed while waiting for {what}")),
                Err(_) => return Err(anyhow!("timed out after {limit:?} waiting for {what}")),
            }
        }
    }

    /// Whether the connection is still up after `grace` (no error event seen).
    pub async fn still_connected(&mut self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(None) => {
                    return false
                }
                Ok(Some(_)) => continue,
                Err(_) => return !self.task.is_finished(),
            }
        }
    }

    /// Drops the TCP connection without DISCONNECT (the broker fires the will).
    pub fn crash(self) {
        self.task.abort();
    }
}
