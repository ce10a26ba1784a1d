//! Issue 12, finding 4: strangers holding sockets took the manager to `Too
//! many open files`, and then no device got in. Near the open-file limit
//! the gateway now admits only source networks that held a device session
//! recently. This test lowers its own process's limit (it runs alone in
//! this test binary) and plays the strangers and the device from different
//! loopback addresses.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use margo_broker::{BrokerConfig, EmbeddedBroker, GatewayConfig, GatewayMetric};
use margo_testkit::pki::{client_tls, TestPki};
use margo_testkit::wait::eventually_async;
use margo_testkit::within;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const STRANGER: &str = "127.0.0.2";
const DEVICE: &str = "127.0.0.3";
const LATE_STRANGER: &str = "127.0.0.4";

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().expect("ip"), 0))?;
    socket.connect(to).await
}

/// Whether the gateway closes `stream` at once (before any TLS byte).
async fn closed_at_once(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A full device session from `from`: TLS, CONNECT, CONNACK accepted.
async fn device_session(from: &str, gw: SocketAddr, pki: &TestPki) -> std::io::Result<()> {
    let connector = tokio_rustls::TlsConnector::from(client_tls(pki, Some(&pki.client("devfd"))));
    let tcp = connect_from(from, gw).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await?;
    let mut connect = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Connect::new("devfd")
        .write(&mut connect)
        .expect("encode connect");
    tls.write_all(&connect).await?;
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack).await?;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    Ok(())
}

#[tokio::test]
async fn near_the_descriptor_limit_only_known_devices_get_in() {
    // Room for the broker and about 150 more descriptors; the top 100 are
    // the reserve.
    let limit = getrlimit(Resource::Nofile);
    let soft = open_fds() + 400;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft.min(limit.maximum.unwrap_or(u64::MAX))),
            maximum: limit.maximum,
        },
    )
    .expect("lower the soft open-file limit");

    let pki = TestPki::new("fleet ca");
    let mut config = BrokerConfig::default();
    config.mqtt.listen = "127.0.0.1:0".parse().expect("addr");
    config.limits.fd_reserve = 250;
    let mut gateway = GatewayConfig::new(gateway_tls(&pki));
    gateway.listen = "127.0.0.1:0".parse().expect("addr");
    gateway.max_pending_per_ip = 1000;
    gateway.handshake_timeout = Duration::from_secs(60);
    config.gateway = Some(gateway);
    let broker = within(WAIT, "broker start", EmbeddedBroker::start(config))
        .await
        .expect("broker starts");
    let gw = broker.gateway_addr().expect("gateway");
    let stats = broker.stats();

    // The device has been here before.
    device_session(DEVICE, gw, &pki)
        .await
        .expect("first session");

    // Strangers open sockets and say nothing until the reserve turns them
    // away (before the fix: until the process ran out of descriptors).
    let mut strangers = Vec::new();
    while stats.get(GatewayMetric::RefusedFdReserve) == 0 {
        assert!(strangers.len() < 300, "no refusal after 300 strangers");
        for _ in 0..10 {
            strangers.push(connect_from(STRANGER, gw).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut late = connect_from(LATE_STRANGER, gw).await.expect("connect");
    assert!(
        closed_at_once(&mut late).await,
        "a new stranger is turned away"
    );
    // The known device still gets in.
    within(
        WAIT,
        "the known device's session",
        device_session(DEVICE, gw, &pki),
    )
    .await
    .expect("known device admitted in the reserve");

    // When the strangers leave, everyone is welcome again.
    drop(strangers);
    drop(late);
    eventually_async(WAIT, "a stranger admitted again", async || {
        let mut again = connect_from(LATE_STRANGER, gw).await.expect("connect");
        !closed_at_once(&mut again).await
    })
    .await;
    broker.shutdown().await;
}
