//! Revocation: a gateway that answers CONNACK "not authorized" puts the
//! agent into the Revoked state, with no fast reconnect loop; when the
//! gateway accepts it again (revocation undone) the slow retry reconnects.

mod common;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use margo_agent::{ConnectionStatus, Store};
use margo_testkit::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// CONNACK return code 5: not authorized (MQTT 3.1.1).
const NOT_AUTHORIZED: u8 = 5;

/// A tiny MQTT server: answers every CONNECT with CONNACK `code`, then
/// reads and discards whatever the client sends.
async fn fake_gateway(code: Arc<AtomicU8>, connections: Arc<AtomicUsize>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let code = code.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // The CONNECT packet (small enough to arrive in one read here).
                if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                if socket.write_all(&[0x20, 0x02, 0x00, code]).await.is_err() {
                    return;
                }
                if code != 0 {
                    return;
                }
                while socket.read(&mut buf).await.unwrap_or(0) > 0 {}
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_not_authorized_means_revoked_without_a_reconnect_storm() {
    margo_schemas::pki::install_crypto_provider();
    let code = Arc::new(AtomicU8::new(NOT_AUTHORIZED));
    let connections = Arc::new(AtomicUsize::new(0));
    let port = fake_gateway(Arc::clone(&code), Arc::clone(&connections)).await;
    let fleet = Fleet::new();
    let identity = fleet.identity("revoked1", "mqtts://127.0.0.1:9");
    let agent = agent(identity, Store::in_memory().expect("store"), sim(), |c| {
        c.broker_url = Some(format!("mqtt://127.0.0.1:{port}"));
        // A normal failure would be retried every few milliseconds.
        c.reconnect_min = Duration::from_millis(10);
        c.reconnect_max = Duration::from_millis(1500);
    });
    let handle = agent.handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));

    let mut snapshots = handle.snapshots.clone();
    within(WAIT, "snapshot says revoked", async {
        while snapshots.borrow_and_update().connection != ConnectionStatus::Revoked {
            let _ = snapshots.changed().await;
        }
    })
    .await;
    // With 10 ms backoff a reconnect loop would have connected dozens of times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "no fast reconnects while revoked"
    );
    let s = handle.snapshots.borrow().clone();
    assert_eq!(s.connection, ConnectionStatus::Revoked);
    assert!(!s.connected);
    assert_eq!(s.counters.revoked_refusals, 1);

    // The operator undoes the revocation: the slow retry (≤ reconnect_max) gets in.
    code.store(0, Ordering::SeqCst);
    within(WAIT, "reconnected after the revocation was undone", async {
        while snapshots.borrow_and_update().connection != ConnectionStatus::Connected {
            let _ = snapshots.changed().await;
        }
    })
    .await;
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    shutdown.cancel();
    within(WAIT, "agent stops", task)
        .await
        .expect("join")
        .expect("agent ran cleanly");
}
