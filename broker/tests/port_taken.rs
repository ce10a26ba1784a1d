//! Issue 12, finding 3: a listener that cannot bind is a fatal start error
//! naming the address and the configuration key that moves it. Before the
//! fix, rumqttd only logged `AddrInUse` on its own thread, the readiness
//! probe connected to whatever held the port, and the broker reported ready
//! on a foreign listener.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;

use common::*;
use margo_broker::{BrokerConfig, EmbeddedBroker, GatewayConfig};
use margo_testkit::mosquitto::{self, Mosquitto};
use margo_testkit::pki::TestPki;
use margo_testkit::within;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

fn occupied() -> (TcpListener, SocketAddr) {
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let addr = holder.local_addr().expect("addr");
    (holder, addr)
}

fn config_on(pki: &TestPki, mqtt: SocketAddr, gateway: SocketAddr) -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.mqtt.listen = mqtt;
    let mut g = GatewayConfig::new(gateway_tls(pki));
    g.listen = gateway;
    config.gateway = Some(g);
    config
}

async fn start_error(config: BrokerConfig) -> String {
    match within(WAIT, "broker start", EmbeddedBroker::start(config)).await {
        Ok(broker) => panic!(
            "the broker started although its port is taken: mqtt={}",
            broker.mqtt_addr()
        ),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn plain_listener_port_held_by_a_tcp_listener_is_a_start_error() {
    let pki = TestPki::new("fleet ca");
    let (_holder, taken) = occupied();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let error = start_error(config_on(&pki, taken, any)).await;
    assert!(error.contains(&taken.to_string()), "{error}");
    assert!(error.contains("[mqtt] listen"), "{error}");
}

#[tokio::test]
async fn gateway_port_held_by_a_tcp_listener_is_a_start_error() {
    let pki = TestPki::new("fleet ca");
    let (_holder, taken) = occupied();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let error = start_error(config_on(&pki, any, taken)).await;
    assert!(error.contains(&taken.to_string()), "{error}");
    assert!(error.contains("[gateway] listen"), "{error}");
}

#[tokio::test]
async fn plain_listener_port_held_by_mosquitto_is_a_start_error() {
    if !mosquitto::available() {
        return;
    }
    let pki = TestPki::new("fleet ca");
    let dir = tempfile::tempdir().expect("tempdir");
    pki.write_server_files(dir.path()).expect("pem files");
    let port = margo_testkit::free_port();
    let _mosquitto = Mosquitto::start_on(
        port,
        &dir.path().join("mosquitto"),
        &dir.path().join("ca.crt"),
        &dir.path().join("server.crt"),
        &dir.path().join("server.key"),
    )
    .expect("mosquitto starts");
    let taken: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let error = start_error(config_on(&pki, taken, any)).await;
    assert!(error.contains(&taken.to_string()), "{error}");
    assert!(error.contains("[mqtt] listen"), "{error}");
}

#[tokio::test]
async fn binary_exits_with_a_clear_error_and_no_ready_line() {
    let pki = TestPki::new("fleet ca");
    let tls = gateway_tls(&pki);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), &tls.ca_pem).expect("write");
    std::fs::write(dir.path().join("cert.pem"), &tls.cert_pem).expect("write");
    std::fs::write(dir.path().join("key.pem"), &tls.key_pem).expect("write");
    let (_holder, taken) = occupied();
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[mqtt]\nlisten = \"{taken}\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n\
             ca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
        ),
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_margo-broker"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn margo-broker");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let status = within(WAIT, "margo-broker to exit", child.wait())
        .await
        .expect("wait");
    let mut out = String::new();
    let mut err = String::new();
    stdout.read_to_string(&mut out).await.expect("stdout");
    stderr.read_to_string(&mut err).await.expect("stderr");
    assert!(!status.success(), "exit {status:?}\n{out}\n{err}");
    assert!(!out.contains("ready"), "ready line printed: {out}");
    assert!(err.contains(&taken.to_string()), "{err}");
    assert!(err.contains("[mqtt] listen"), "{err}");
}
