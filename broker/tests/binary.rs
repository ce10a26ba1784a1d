//! Runs the `margo-broker` binary as a child process, like the manager's tests do.

mod common;

use std::process::Stdio;

use common::*;
use margo_testkit::mqtt::{Options, TestClient};
use margo_testkit::pki::{client_tls, TestPki};
use margo_testkit::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("child running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} failed");
}

#[tokio::test]
async fn binary_reports_ready_with_real_ports_and_exits_on_sigterm() {
    let pki = TestPki::new("fleet ca");
    let tls = gateway_tls(&pki);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), &tls.ca_pem).expect("write");
    std::fs::write(dir.path().join("cert.pem"), &tls.cert_pem).expect("write");
    std::fs::write(dir.path().join("key.pem"), &tls.key_pem).expect("write");
    let revoked = dir.path().join("revoked.txt");
    std::fs::write(&revoked, "# none yet\n").expect("write");
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        r#"
version = 1
[mqtt]
listen = "127.0.0.1:0"
[internal]
listen = "127.0.0.1:0"
password_file = "internal.password"
[gateway]
listen = "127.0.0.1:0"
ca = "ca.pem"
cert = "cert.pem"
key = "key.pem"
handshake_timeout = "2s"
"#,
    )
    .expect("write");

    let mut child = Command::new(env!("CARGO_BIN_EXE_margo-broker"))
        .arg("--config")
        .arg(&config)
        .arg("--revocations")
        .arg(&revoked)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn margo-broker");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = within(WAIT, "ready line", lines.next_line())
        .await
        .expect("read stdout")
        .expect("a line before EOF");
    let mut fields = line
        .strip_prefix("margo-broker ready ")
        .expect("ready prefix")
        .split(' ');
    let mqtt: std::net::SocketAddr = fields
        .next()
        .and_then(|f| f.strip_prefix("mqtt="))
        .expect("mqtt=")
        .parse()
        .expect("mqtt addr");
    let internal: std::net::SocketAddr = fields
        .next()
        .and_then(|f| f.strip_prefix("internal="))
        .expect("internal=")
        .parse()
        .expect("internal addr");
    let gateway: std::net::SocketAddr = fields
        .next()
        .and_then(|f| f.strip_prefix("gateway="))
        .expect("gateway=")
        .parse()
        .expect("gateway addr");
    assert_ne!(mqtt.port(), 0);
    assert_ne!(internal.port(), 0);
    assert_ne!(gateway.port(), 0);

    // The password file was created beside the configuration, owner-only;
    // a manager presents it on the internal listener.
    let password_file = dir.path().join("internal.password");
    let password = std::fs::read_to_string(&password_file).expect("password file created");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&password_file)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut manager = TestClient::plain_login(
        internal,
        "manager",
        margo_broker::INTERNAL_USERNAME,
        password.trim(),
    );
    manager.connack().await;
    let mut observer = TestClient::plain(mqtt, "observer");
    observer.connack().await;
    let device_tls = client_tls(&pki, Some(&pki.client("devbin")));
    let mut device = TestClient::device(gateway, device_tls.clone(), Options::new("devbin"));
    device.connack().await;

    // SIGHUP reloads the revocation list and cuts the revoked device.
    std::fs::write(&revoked, "devbin\n").expect("write");
    signal(&child, "HUP");
    device.closed("revoked by SIGHUP reload").await;

    signal(&child, "TERM");
    let status = within(WAIT, "exit after SIGTERM", child.wait())
        .await
        .expect("wait");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn binary_rejects_a_bad_config_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "version = 1\n[mqtt]\nlisten = \"0.0.0.0:0\"\n").expect("write");
    let output = within(
        WAIT,
        "margo-broker exits",
        Command::new(env!("CARGO_BIN_EXE_margo-broker"))
            .arg("--config")
            .arg(&config)
            .output(),
    )
    .await
    .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mqtt.listen"), "stderr: {stderr}");
}

/// `MARGO_BROKER_*` variables override the file: here the file names no
/// gateway and the environment adds one (docs/configuration.md).
#[tokio::test]
async fn binary_takes_listeners_and_gateway_from_the_environment() {
    let pki = TestPki::new("fleet ca");
    let tls = gateway_tls(&pki);
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, pem) in [
        ("ca.pem", &tls.ca_pem),
        ("cert.pem", &tls.cert_pem),
        ("key.pem", &tls.key_pem),
    ] {
        std::fs::write(dir.path().join(name), pem).expect("write");
    }
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "version = 1\n[mqtt]\nlisten = \"127.0.0.1:1\"\n").expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_margo-broker"))
        .arg("--config")
        .arg(&config)
        .env("MARGO_BROKER_MQTT_LISTEN", "127.0.0.1:0")
        .env("MARGO_BROKER_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("MARGO_BROKER_GATEWAY_CA", dir.path().join("ca.pem"))
        .env("MARGO_BROKER_GATEWAY_CERT", dir.path().join("cert.pem"))
        .env("MARGO_BROKER_GATEWAY_KEY", dir.path().join("key.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn margo-broker");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = within(WAIT, "ready line", lines.next_line())
        .await
        .expect("read stdout")
        .expect("a line before EOF");
    assert!(
        line.starts_with("margo-broker ready mqtt=127.0.0.1:"),
        "{line}"
    );
    assert!(
        !line.contains("mqtt=127.0.0.1:1 "),
        "the file's port won: {line}"
    );
    assert!(
        line.contains(" gateway=127.0.0.1:"),
        "no gateway from the environment: {line}"
    );
    signal(&child, "TERM");
    let status = within(WAIT, "exit after SIGTERM", child.wait())
        .await
        .expect("wait");
    assert!(status.success(), "exit status {status}");
}
