//! `margo-manager serve` with its default log settings logs no ERROR for
//! routine MQTT traffic on the loopback listener (issue 12, finding 10): a
//! probe that never sends CONNECT, a clean connect and disconnect, a client
//! that drops its socket, and per-check cycles. (A session takeover on the
//! internal listener still logs rumqttd's ERROR "Duplicate client_id": that
//! one is worth seeing.) And a local user connecting to that listener as
//! `margo-manager` no longer takes over the manager's session (issue 12,
//! finding 2: before the fix, each takeover cost a full republication).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const MANAGER: &str = env!("CARGO_BIN_EXE_margo-manager");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s) for `client_id`.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let id_len = u16::try_from(id.len()).expect("short id");
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10, u8::try_from(body.len()).expect("short packet")];
    packet.extend(body);
    packet
}

/// Connects as `client_id` and reads the CONNACK.
fn connect(addr: SocketAddr, client_id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
        .write_all(&connect_packet(client_id))
        .expect("send CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    stream
}

/// A `margo-manager serve` on free ports with the default log settings.
struct Served {
    _child: Running,
    ready: String,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start() -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let init = Command::new(MANAGER)
            .args(["init", "--data-dir"])
            .arg(&data)
            .output()
            .expect("init runs");
        assert!(init.status.success(), "{init:?}");
        let config = dir.path().join("manager.toml");
        std::fs::write(
            &config,
            format!(
                "version = 1\ndata_dir = {:?}\n[broker]\nmqtt_listen = \"127.0.0.1:0\"\ngateway_listen = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
                data.display().to_string()
            ),
        )
        .expect("write config");
        let mut child = Command::new(MANAGER)
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let child = Running(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let logs = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().expect("logs").push(line);
            }
        });
        let ready = rx.recv_timeout(WAIT).expect("the ready line");
        Served {
            _child: child,
            ready,
            logs,
            _dir: dir,
        }
    }

    fn addr(&self, field: &str) -> SocketAddr {
        let prefix = format!("{field}=");
        self.ready
            .split(' ')
            .find_map(|f| f.strip_prefix(prefix.as_str()))
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no {field}= in {}", self.ready))
    }

    /// One sample of `name` from `GET /metrics` (no labels).
    fn metric(&self, name: &str) -> f64 {
        let mut stream = TcpStream::connect(self.addr("metrics")).expect("metrics");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("response");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }
}

#[test]
fn routine_mqtt_traffic_logs_no_error() {
    let served = Served::start();
    let mqtt = served.addr("mqtt");
    let logs = Arc::clone(&served.logs);

    // A probe: the socket closes before CONNECT.
    drop(TcpStream::connect(mqtt).expect("probe"));
    // A clean connect and DISCONNECT.
    let mut clean = connect(mqtt, "log-probe-clean");
    clean.write_all(&[0xe0, 0]).expect("DISCONNECT");
    drop(clean);
    // A client that drops its socket without DISCONNECT.
    drop(connect(mqtt, "log-probe-drop"));
    // A per-check cycle: connect, stay a moment, disconnect, again.
    for _ in 0..2 {
        let mut cycle = connect(mqtt, "log-probe-cycle");
        std::thread::sleep(Duration::from_millis(200));
        cycle.write_all(&[0xe0, 0]).expect("DISCONNECT");
    }
    std::thread::sleep(Duration::from_secs(1));

    drop(served);
    let logs = logs.lock().expect("logs").join("\n");
    assert!(
        !logs.lines().any(|l| l.contains("ERROR")),
        "ERROR lines at the default log level:\n{logs}"
    );
}

#[test]
fn a_local_user_cannot_take_over_the_managers_session() {
    let served = Served::start();
    let mqtt = served.addr("mqtt");
    let connects = served.metric("margo_mqtt_link_connects_total");
    assert_eq!(connects, 1.0, "the manager's own first connect");
    let republished = served.metric("margo_publisher_republish_all_total");
    let mut thieves = Vec::new();
    for _ in 0..5 {
        thieves.push(connect(mqtt, "margo-manager"));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        served.metric("margo_mqtt_link_connects_total"),
        1.0,
        "the manager's session was taken over and reconnected"
    );
    assert_eq!(
        served.metric("margo_publisher_republish_all_total"),
        republished
    );
}
