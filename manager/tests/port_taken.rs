//! Issue 12, finding 3: the manager never runs on a foreign broker. A
//! listener that cannot bind (the embedded broker's plain listener, the
//! gateway, HTTPS, metrics) is a fatal start error naming the address and the
//! configuration key that moves it, and no ready line is printed. Before the
//! fix, a taken `[broker] mqtt_listen` port was only logged by rumqttd and
//! the manager connected its session to whatever held the port.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};

use common::*;
use margo_manager::{Manager, ManagerConfig};
use margo_testkit::mosquitto::{self, Mosquitto};
use margo_testkit::pki::TestPki;
use margo_testkit::within;

fn occupied() -> (TcpListener, SocketAddr) {
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let addr = holder.local_addr().expect("addr");
    (holder, addr)
}

async fn start_error(config: ManagerConfig) -> String {
    match within(WAIT, "manager start", Manager::start(config)).await {
        Ok(manager) => {
            let line = manager.ready_line();
            manager.shutdown().await;
            panic!("the manager started although a port is taken: {line}");
        }
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn every_taken_listener_is_a_start_error_naming_its_key() {
    type Set = fn(&mut ManagerConfig, SocketAddr);
    let cases: [(&str, Set); 5] = [
        ("[broker] mqtt_listen", |c, a| c.broker.mqtt_listen = a),
        ("[broker] internal_listen", |c, a| {
            c.broker.internal_listen = a
        }),
        ("[broker] gateway_listen", |c, a| {
            c.broker.gateway_listen = a
        }),
        ("[http] listen", |c, a| c.http.listen = a),
        ("[metrics] listen", |c, a| {
            c.metrics.enabled = true;
            c.metrics.listen = a;
        }),
    ];
    for (key, set) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        let (_holder, taken) = occupied();
        set(&mut config, taken);
        let error = start_error(config).await;
        assert!(error.contains(&taken.to_string()), "{key}: {error}");
        assert!(error.contains(key), "{key}: {error}");
    }
}

/// `margo-manager serve` with its MQTT port held by `holder`: exits non-zero,
/// says which address and key, prints no ready line.
fn serve_fails_on(taken: SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("manager.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\ndata_dir = {:?}\n[broker]\nmqtt_listen = \"{taken}\"\n\
             gateway_listen = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            data.display().to_string()
        ),
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_margo-manager"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("margo-manager runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("ready"), "ready line printed: {stdout}");
    assert!(stderr.contains(&taken.to_string()), "{stderr}");
    assert!(stderr.contains("[broker] mqtt_listen"), "{stderr}");
}

#[test]
fn serve_exits_when_a_tcp_listener_holds_the_mqtt_port() {
    let (_holder, taken) = occupied();
    serve_fails_on(taken);
}

#[test]
fn serve_exits_when_mosquitto_holds_the_mqtt_port() {
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
    serve_fails_on(format!("127.0.0.1:{port}").parse().expect("addr"));
}
