//! Bytes on the wire, counted by a TCP proxy in front of the device gateway
//! (MQTT over TLS) or the manager's HTTPS listener (Margo HTTP API), both
//! directions, TLS records included (TCP/IP headers are not: the proxy sees
//! the byte streams).
//!
//! Each device is a real agent in this process on a simulated wall clock
//! with a `per-check` schedule (every 15 minutes, all day, UTC), so a check
//! happens only when the benchmark moves the clock to it. The device starts
//! with ten deployments; then:
//! - `first contact`: the check at start-up (full TLS handshake, ten documents);
//! - `no-change check` (twice): nothing changed since the last check;
//! - `update 1 of 10`: one deployment got a new revision before the check.
//!
//! Over HTTP the agent fetches single documents when at most half of the
//! deployments changed (the bundle only on the first sync or bigger changes),
//! so `update 1 of 10` over HTTP is the individual-document path, and the
//! first contact over HTTP is the bundle path.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use margo_agent::clock::{Clock, SimulatedClock};
use margo_agent::config::{AdapterKind, Transport};
use margo_agent::identity::Identity;
use margo_agent::{Agent, AgentHandle, AgentOptions, Store};
use margo_manager::admin::AdminClient;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::machine::Machine;
use super::report;
use crate::fleet::{deployment_yaml, ManagerProc};
use crate::proxy::CountingProxy;

const SCHEDULE: &str = r#"
time_zone = "UTC"
connection = "per-check"
[polling]
rate = "15m"
"#;

/// 2026-03-02T00:00:00Z: any fixed instant does.
const START_MS: u64 = 1_772_409_600_000;

/// What a check cost.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Bytes {
    pub up: u64,
    pub down: u64,
    pub total: u64,
    pub connections: usize,
}

impl Bytes {
    fn plus(self, other: Bytes) -> Bytes {
        Bytes {
            up: self.up + other.up,
            down: self.down + other.down,
            total: self.total + other.total,
            connections: self.connections + other.connections,
        }
    }
}

/// One transport's checks, in order.
#[derive(Debug, Clone, Serialize)]
pub struct TransportBytes {
    pub transport: &'static str,
    /// The check at start-up, ten deployments to fetch.
    pub first_contact: Bytes,
    /// The next check (it carries the reports of the first apply if they
    /// were made after the first check's connection closed).
    pub after_first: Bytes,
    pub no_change_1: Bytes,
    pub no_change_2: Bytes,
    /// The check that brings the new revision of one deployment of ten.
    pub update_check: Bytes,
    /// The check after it (reports of the update if not sent yet).
    pub after_update: Bytes,
    /// `update_check + after_update`: fetching and reporting the update.
    pub update_1_of_10: Bytes,
}

#[derive(Debug, Clone, Serialize)]
pub struct WireReport {
    pub benchmark: &'static str,
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub mqtt: TransportBytes,
    pub http: TransportBytes,
    /// MQTT / HTTP, no-change check (the second one, steady state).
    pub ratio_no_change: f64,
    /// MQTT / HTTP, update of one deployment out of ten.
    pub ratio_update_1_of_10: f64,
}

impl WireReport {
    pub fn markdown(&self) -> String {
        let row = |what: &str, m: Bytes, h: Bytes| {
            format!(
                "| {what} | {} ({} up / {} down, {} conn.) | {} ({} up / {} down, {} conn.) | {:.2} |\n",
                m.total,
                m.up,
                m.down,
                m.connections,
                h.total,
                h.up,
                h.down,
                h.connections,
                m.total as f64 / h.total.max(1) as f64
            )
        };
        let (m, h) = (&self.mqtt, &self.http);
        let mut s = format!(
            "### Bytes on the wire per check (`per-check` schedule, ten deployments)\n\n\
             Machine: {}. Commit {}. Bytes counted by a TCP proxy (TLS records both ways, no TCP/IP headers).\n\n\
             | check | MQTT bytes | HTTP bytes | MQTT/HTTP |\n|---|---|---|---|\n",
            self.machine.markdown(),
            self.git_commit.as_deref().unwrap_or("unknown"),
        );
        s.push_str(&row(
            "first contact (full TLS handshake, 10 documents; HTTP: bundle)",
            m.first_contact,
            h.first_contact,
        ));
        s.push_str(&row(
            "next check (reports of the first apply)",
            m.after_first,
            h.after_first,
        ));
        s.push_str(&row("no-change check #1", m.no_change_1, h.no_change_1));
        s.push_str(&row("no-change check #2", m.no_change_2, h.no_change_2));
        s.push_str(&row(
            "check with 1 of 10 updated (HTTP: single document)",
            m.update_check,
            h.update_check,
        ));
        s.push_str(&row(
            "next check (reports of the update)",
            m.after_update,
            h.after_update,
        ));
        s.push_str(&row(
            "update 1 of 10, fetched and reported (sum of the two)",
            m.update_1_of_10,
            h.update_1_of_10,
        ));
        s
    }
}

/// A per-check device on a simulated clock behind a counting proxy.
struct WireDevice {
    clock: SimulatedClock,
    proxy: CountingProxy,
    handle: AgentHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), margo_agent::AgentError>>,
}

impl WireDevice {
    async fn start(
        admin: &AdminClient,
        name: &str,
        transport: Transport,
        upstream: std::net::SocketAddr,
        initial: Vec<String>,
    ) -> Result<WireDevice> {
        let clock = SimulatedClock::starting_at(START_MS);
        let stamp = clock.clone();
        let proxy = CountingProxy::start(upstream, Arc::new(move || stamp.unix_ms())).await?;
        let url = match transport {
            Transport::Mqtt => format!("mqtts://localhost:{}", proxy.addr.port()),
            Transport::Http => format!("https://localhost:{}", proxy.addr.port()),
        };
        // The bundle's broker URL is unused over HTTP; it must still parse.
        let broker = format!("mqtts://localhost:{}", proxy.addr.port());
        let b = admin.add_client(name, Some(&broker)).await?;
        // Desired state before the device's first check.
        admin.deploy(name, initial).await?;
        let identity = Identity::from_pem(margo_agent::identity::IdentityPem {
            client_id: b.client_id,
            name: b.name,
            broker_url: b.broker_url,
            key_pem: b.key_pem.into_bytes(),
            cert_pem: b.cert_pem.into_bytes(),
            ca_pem: b.ca_pem.into_bytes(),
            manager_signing_cert_pem: b.signing_cert_pem.into_bytes(),
        })?;
        let mut config = margo_agent::AgentConfig {
            identity_dir: PathBuf::from("in-memory"),
            data_dir: PathBuf::from("in-memory"),
            transport,
            wake_spread: Duration::ZERO,
            check_settle: Duration::from_millis(150),
            check_timeout: Duration::from_secs(20),
            schedule: Some(toml::from_str(SCHEDULE).context("schedule")?),
            ..margo_agent::AgentConfig::default()
        };
        if transport == Transport::Http {
            config.http.manager_url = Some(url);
        }
        config.runtime.adapter = AdapterKind::Simulated;
        config.runtime.simulated.delay = Duration::ZERO;
        config.capabilities.enabled = false;
        let agent = Agent::new(
            config,
            AgentOptions {
                store: Some(Store::in_memory()?),
                identity: Some(identity),
                clock: Some(Arc::new(clock.clone())),
                ..AgentOptions::default()
            },
        )?;
        let handle = agent.handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent.run(stop.clone()));
        Ok(WireDevice {
            clock,
            proxy,
            handle,
            stop,
            task,
        })
    }

    fn snapshot(&self) -> Bytes {
        let (up, down) = self.proxy.bytes();
        Bytes {
            up,
            down,
            total: up + down,
            connections: self.proxy.connections().len(),
        }
    }

    /// Waits until nothing moves on the wire for a second and the agent
    /// sleeps until a later check; returns that instant.
    async fn quiet(&self, limit: Duration) -> Result<u64> {
        let deadline = Instant::now() + limit;
        let mut last = self.snapshot().total;
        let mut still_since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.task.is_finished() {
                bail!("the agent stopped");
            }
            let now = self.snapshot().total;
            if now != last {
                last = now;
                still_since = Instant::now();
            }
            // Reports made after a check's connection closed wait in the
            // outbox for the next check (per-check sends nothing between checks).
            let next = self.clock.next_wake().filter(|t| *t > self.clock.unix_ms());
            if let Some(next) = next {
                if still_since.elapsed() >= Duration::from_secs(1) {
                    return Ok(next);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "not quiet within {limit:?} (clock {}, next wake {:?}, outbox {})",
                    self.clock.unix_ms(),
                    self.clock.next_wake(),
                    self.handle.snapshots.borrow().outbox_len
                );
            }
        }
    }

    /// Moves the clock to the next check and returns what that check cost.
    async fn check(&self) -> Result<Bytes> {
        let next = self.quiet(Duration::from_secs(30)).await?;
        let before = self.snapshot();
        self.clock.set_unix_ms(next);
        self.quiet(Duration::from_secs(30)).await?;
        let after = self.snapshot();
        Ok(Bytes {
            up: after.up - before.up,
            down: after.down - before.down,
            total: after.total - before.total,
            connections: after.connections - before.connections,
        })
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn docs(update_first: bool) -> Vec<String> {
    (0..10)
        .map(|i| {
            let id = format!("0000000{i}-0000-4000-8000-00000000000{i}");
            let rev = if update_first && i == 0 { 2 } else { 1 };
            deployment_yaml(&id, &format!("app{i}"), &["web", "db"], rev)
        })
        .collect()
}

async fn measure(
    admin: &AdminClient,
    name: &str,
    transport: Transport,
    upstream: std::net::SocketAddr,
    label: &'static str,
) -> Result<TransportBytes> {
    let device = WireDevice::start(admin, name, transport, upstream, docs(false)).await?;
    // The check at start-up: it may already be under way.
    device.quiet(Duration::from_secs(60)).await?;
    let first_contact = device.snapshot();
    let adopted = device.handle.snapshots.borrow().adopted_manifest_version;
    if adopted < 1 {
        bail!("{label}: the first check did not apply the ten deployments (adopted v{adopted})");
    }
    let after_first = device.check().await?;
    let no_change_1 = device.check().await?;
    let no_change_2 = device.check().await?;
    admin.deploy(name, docs(true)).await?;
    let update_check = device.check().await?;
    let adopted = device.handle.snapshots.borrow().adopted_manifest_version;
    if adopted < 2 {
        bail!("{label}: the update check did not apply the update (adopted v{adopted})");
    }
    let after_update = device.check().await?;
    let outbox = device.handle.snapshots.borrow().outbox_len;
    if outbox > 0 {
        bail!("{label}: {outbox} reports still unsent after the check that follows the update");
    }
    device.stop().await;
    Ok(TransportBytes {
        transport: label,
        first_contact,
        after_first,
        no_change_1,
        no_change_2,
        update_check,
        after_update,
        update_1_of_10: update_check.plus(after_update),
    })
}

pub async fn run(out_dir: &std::path::Path) -> Result<WireReport> {
    let machine = Machine::read();
    let work = tempfile::Builder::new().prefix("wire-").tempdir()?;
    let mut manager = ManagerProc::start_with_env(work.path(), "", &[("RUST_LOG", "warn")])?;
    let admin = AdminClient::new(&manager.socket);
    let gateway = manager.gateway.context("no gateway")?;
    let https = manager.http.context("no HTTPS listener")?;
    let mqtt = measure(&admin, "wire-mqtt", Transport::Mqtt, gateway, "mqtt").await?;
    let http = measure(&admin, "wire-http", Transport::Http, https, "http").await?;
    manager.proc.stop(Duration::from_secs(15));
    let report = WireReport {
        benchmark: "wire",
        git_commit: super::fanout::git_commit(),
        machine,
        ratio_no_change: mqtt.no_change_2.total as f64 / http.no_change_2.total.max(1) as f64,
        ratio_update_1_of_10: mqtt.update_1_of_10.total as f64
            / http.update_1_of_10.total.max(1) as f64,
        mqtt,
        http,
    };
    let (json, md) = report::write(out_dir, "wire", &report, &report.markdown())?;
    println!("wrote {} and {}", json.display(), md.display());
    Ok(report)
}
