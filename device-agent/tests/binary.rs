//! The `margo-agent` binary: config file + identity bundle on disk, ready
//! line on stdout, clean exit on SIGTERM (even while it cannot reach a broker).

#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn prints_ready_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = Fleet::new();
    // Nothing listens on port 9 (discard): the agent keeps backing off.
    let pem = fleet.device("bin1", "mqtts://127.0.0.1:9");
    fleet.write_bundle(&pem, &dir.path().join("identity"));
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "version = 1\nidentity_dir = \"identity\"\ndata_dir = \"data\"\nreconnect_min = \"100ms\"\n\n[runtime]\nadapter = \"simulated\"\n\n[capabilities]\nvendor = \"Acme\"\nmodel_number = \"E1\"\nserial_number = \"1\"\n",
    )
    .expect("config");

    let mut child = Command::new(env!("CARGO_BIN_EXE_margo-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn margo-agent");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(WAIT)
        .expect("ready line within the deadline");
    assert_eq!(line.trim(), "margo-agent ready client=bin1");
    assert!(
        dir.path().join("data/agent.redb").exists(),
        "store created under data_dir"
    );

    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "margo-agent did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_config_names_the_field_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "version = 1\nack_timeout = \"0s\"\n").expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_margo-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run margo-agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ack_timeout"), "{stderr}");
}

/// Issue 12, finding 11: under `umask 000` the data directory is 0700 and
/// `agent.redb` (it holds the deployment YAML) 0600.
#[test]
fn data_dir_and_store_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = Fleet::new();
    let pem = fleet.device("umask1", "mqtts://127.0.0.1:9");
    fleet.write_bundle(&pem, &dir.path().join("identity"));
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "version = 1\nidentity_dir = \"identity\"\ndata_dir = \"state/data\"\nreconnect_min = \"100ms\"\n\n[runtime]\nadapter = \"simulated\"\n\n[capabilities]\nvendor = \"Acme\"\nmodel_number = \"E1\"\nserial_number = \"1\"\n",
    )
    .expect("config");
    let mut child = Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_margo-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn margo-agent");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT);
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("ready line within the deadline");
    assert_eq!(line.trim(), "margo-agent ready client=umask1");
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let wrong: Vec<String> = [
        (dir.path().join("state"), 0o700),
        (dir.path().join("state/data"), 0o700),
        (dir.path().join("state/data/agent.redb"), 0o600),
    ]
    .iter()
    .filter(|(p, want)| mode(p) != *want)
    .map(|(p, want)| format!("{} is {:o}, not {want:o}", p.display(), mode(p)))
    .collect();
    assert!(wrong.is_empty(), "under umask 000: {wrong:#?}");
}
