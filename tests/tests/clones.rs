//! Issue 12, finding 9: two devices running from one identity bundle. Real
//! manager (embedded broker behind the gateway) and two real agents; the
//! second reaches the gateway through a relay whose connections come from
//! another loopback address, as a clone elsewhere in the network would.
//! The manager must say "this identity is in use from two places" (log
//! once, `margoctl status`, `clients show`, the audit log), and neither
//! agent may renumber its outbox because of the other's acks.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use margo_manager::admin::AdminClient;
use margo_tests::eventually;
use margo_tests::fleet::{deployment_yaml, write_file, AgentProc, ManagerProc};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const D1: &str = "11111111-1111-4111-8111-111111111111";
const DETECT: Duration = Duration::from_secs(60);
const START: Duration = Duration::from_secs(30);
/// The agents' renumbering warning (device-agent/src/outbox.rs).
const RENUMBERING: &str = "renumbering";
/// The gateway's one line per suspected clone (broker/src/clones.rs).
const GATEWAY_LINE: &str = "at once: cloned bundle?";

/// Relays TCP connections accepted on loopback to `target`, connecting
/// from `source` (another loopback address).
struct SourceRelay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SourceRelay {
    async fn start(source: IpAddr, target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut outbound) = connect_from(source, target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for SourceRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_with_one_bundle_are_reported_once_and_do_not_renumber() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start(dir.path(), "")?;
    let gateway = manager.gateway.context("embedded gateway")?;
    let url = format!("mqtts://localhost:{}", gateway.port());
    let bundle = manager.provision("twin", &dir.path().join("twin-identity"), Some(&url))?;
    // The clone: a copy of the same bundle on "another device".
    let copy = dir.path().join("twin-copy-identity");
    copy_dir(&bundle, &copy)?;
    let relay = SourceRelay::start([127, 0, 0, 2].into(), gateway).await?;

    let mut first = AgentProc::start(dir.path(), "twin-a", &bundle, "")?;
    first.wait_ready(START)?;
    let mut second = AgentProc::start(
        dir.path(),
        "twin-b",
        &copy,
        &format!("broker_url = \"mqtts://localhost:{}\"", relay.addr.port()),
    )?;
    second.wait_ready(START)?;

    // The manager tells the operator, in the fleet view and per client.
    let details = eventually(
        DETECT,
        "clients show to report a suspected clone",
        || async {
            let details = manager.client_details("twin")?;
            Ok(details["status"]["cloned"].is_object().then_some(details))
        },
    )
    .await?;
    let cloned = &details["status"]["cloned"];
    let sources: Vec<&str> = cloned["sources"]
        .as_array()
        .context("sources")?
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(sources.len() >= 2, "{cloned:#}");
    assert!(cloned["since"].as_u64().is_some(), "{cloned:#}");
    let table = manager.ctl(&["status"])?;
    assert!(
        table.contains("identity in use from") && table.contains("sources (cloned?) since"),
        "margoctl status does not say it:\n{table}"
    );
    let shown = manager.ctl(&["clients", "show", "twin"])?;
    assert!(
        shown.contains("(cloned?)"),
        "clients show does not say it:\n{shown}"
    );
    let admin = AdminClient::new(&manager.socket);
    let audit = admin.audit(100).await?;
    assert_eq!(
        audit.counts.get("cloned-identity"),
        Some(&1),
        "one security event per suspicion: {:#?}",
        audit.events
    );

    // Both detectors have seen it: the gateway (two source addresses) and
    // ingest (two agent stores).
    eventually(DETECT, "the gateway's warning", || async {
        Ok((count(&manager.log_text(), GATEWAY_LINE) >= 1).then_some(()))
    })
    .await?;

    // The agents go on taking the session from each other, and both report
    // on a deployment (uplink, so acks, from both); a while later the
    // manager has still said it once, and neither agent renumbers its
    // outbox for the other's acks.
    let yaml = write_file(
        &dir.path().join("yaml"),
        "d.yaml",
        &deployment_yaml(D1, "alpha", &["web"], 1),
    )?;
    manager.ctl(&["deploy", "twin", &yaml])?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let log = manager.log_text();
    assert_eq!(
        count(&log, "in use from 127.0.0.1 and 127.0.0.2")
            + count(&log, "in use from 127.0.0.2 and 127.0.0.1"),
        1,
        "the gateway logs a suspected clone once per window:\n{log}"
    );
    // Only the second device, at its first appearance, may renumber once
    // (it could be a reset store); after that each ignores the other's acks.
    let renumbered = count(&first.log_text(), RENUMBERING) + count(&second.log_text(), RENUMBERING);
    assert!(
        renumbered <= 1,
        "agents renumbered for each other's acks ({renumbered} times):\n{}\n{}",
        first.log_text(),
        second.log_text()
    );
    let ignored = count(&first.log_text(), "ack for another agent store")
        + count(&second.log_text(), "ack for another agent store");
    assert!(ignored >= 1, "neither agent saw the other's acks");
    let audit = admin.audit(100).await?;
    assert_eq!(
        audit.counts.get("cloned-identity"),
        Some(&1),
        "{:#?}",
        audit.events
    );

    // The operator revokes the identity: the suspicion is settled.
    manager.ctl(&["clients", "revoke", "twin"])?;
    let after = manager.client_details("twin")?;
    assert!(after["status"]["cloned"].is_null(), "{after:#}");
    drop(relay);
    Ok(())
}
