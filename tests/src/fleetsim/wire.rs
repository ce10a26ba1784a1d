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
//! first contact over HTTP is the bundle path. The variant `http-bundle`
//! sets `http.bundle_over_percent = 0`, so its `update 1 of 10` takes the
//! bundle.
//!
//! Variants: `mqtt` and `http` resume TLS sessions (the default);
//! `mqtt-full-tls` and `http-full-tls` set `tls_resumption = false`, so every
//! check is a full TLS 1.3 handshake (mutual over MQTT; over HTTP the
//! client certificate is not asked for, requests are signed instead).
//!
//! Persistent idle: one more agent without a schedule (always connected,
//! `persistent`), converged on the ten deployments, then left alone for
//! `idle_periods` keep-alive periods of real time, counted from just after
//! a keep-alive ping so the window holds exactly that many pings. Its
//! `state_interval` is set so that the first periodic `state` report falls
//! half a period after a ping, after the window; that report and its ack
//! are counted alone (the pings around it subtracted). Per day: window
//! bytes / periods × periods per day at the measured keep-alive, plus the
//! report's bytes × reports per day at the default `state_interval`.
//! Nothing else is periodic on an idle device (capabilities are sent only
//! when they change; disabled here).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use margo_agent::clock::{Clock, SimulatedClock};
use margo_agent::config::{AdapterKind, AgentConfig, Transport};
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
    fn minus(self, earlier: Bytes) -> Bytes {
        Bytes {
            up: self.up - earlier.up,
            down: self.down - earlier.down,
            total: self.total - earlier.total,
            connections: self.connections - earlier.connections,
        }
    }

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

/// A persistent device left idle.
#[derive(Debug, Clone, Serialize)]
pub struct IdleBytes {
    pub keep_alive_s: u64,
    /// Keep-alive periods in the measured real-time window.
    pub periods: u32,
    pub window_s: f64,
    /// Bytes in the window (both directions).
    pub window: Bytes,
    /// `window.total / periods`.
    pub per_keep_alive: f64,
    pub state_interval_s: u64,
    /// One periodic `state` report and what it brings back.
    pub state_report: Bytes,
    /// `per_keep_alive × 86400 / keep_alive_s`.
    pub keep_alive_per_day: f64,
    /// `state_report.total × 86400 / state_interval_s`.
    pub state_reports_per_day: f64,
    pub per_day: f64,
}

/// What the same device costs per day polling over HTTP every 15 minutes
/// (96 no-change checks, resumed TLS, measured above).
fn http_poll_per_day(http: &TransportBytes) -> f64 {
    http.no_change_2.total as f64 * 96.0
}

#[derive(Debug, Clone, Serialize)]
pub struct WireReport {
    pub benchmark: &'static str,
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub load_average: Option<String>,
    pub mqtt: TransportBytes,
    pub http: TransportBytes,
    /// `tls_resumption = false` (absent with `--quick`).
    pub mqtt_full_tls: Option<TransportBytes>,
    pub http_full_tls: Option<TransportBytes>,
    /// `http.bundle_over_percent = 0` (absent with `--quick`).
    pub http_bundle: Option<TransportBytes>,
    pub idle: IdleBytes,
    /// MQTT / HTTP, no-change check (the second one, steady state).
    pub ratio_no_change: f64,
    /// MQTT / HTTP, no-change check, both without TLS resumption.
    pub ratio_no_change_full_tls: Option<f64>,
    /// MQTT / HTTP, update of one deployment out of ten (HTTP: single documents).
    pub ratio_update_1_of_10: f64,
    /// MQTT / HTTP bundle, update of one deployment out of ten.
    pub ratio_update_1_of_10_bundle: Option<f64>,
    /// HTTP polling every 15 minutes, per day (96 × the HTTP no-change check).
    pub http_poll_15min_per_day: f64,
    /// MQTT persistent idle per day / HTTP 15-minute polling per day.
    pub ratio_idle_per_day: f64,
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
        if let (Some(mf), Some(hf)) = (&self.mqtt_full_tls, &self.http_full_tls) {
            s.push_str("\nWithout TLS session resumption (`tls_resumption = false`, a full handshake per check):\n\n\
                        | check | MQTT bytes | HTTP bytes | MQTT/HTTP |\n|---|---|---|---|\n");
            s.push_str(&row("no-change check #2", mf.no_change_2, hf.no_change_2));
            s.push_str(&row(
                "update 1 of 10, fetched and reported",
                mf.update_1_of_10,
                hf.update_1_of_10,
            ));
        }
        if let Some(hb) = &self.http_bundle {
            s.push_str("\nUpdate of one deployment out of ten, HTTP bundle (`http.bundle_over_percent = 0`):\n\n\
                        | check | MQTT bytes | HTTP bundle bytes | MQTT/HTTP |\n|---|---|---|---|\n");
            s.push_str(&row(
                "check with 1 of 10 updated",
                m.update_check,
                hb.update_check,
            ));
            s.push_str(&row(
                "update 1 of 10, fetched and reported",
                m.update_1_of_10,
                hb.update_1_of_10,
            ));
        }
        let i = &self.idle;
        s.push_str(&format!(
            "\nPersistent idle (no schedule, keep-alive {} s, state report every {} s):\n\n\
             | measured | bytes |\n|---|---|\n\
             | {} keep-alive periods ({:.0} s real time) | {} ({} up / {} down) |\n\
             | per keep-alive period | {:.1} |\n\
             | one periodic state report and its ack | {} ({} up / {} down) |\n\
             | **per day**: {:.0} keep-alive + {:.0} state reports | **{:.0}** |\n\
             | HTTP polling every 15 min, per day (96 × the no-change check) | {:.0} |\n\
             | MQTT/HTTP per day | {:.2} |\n",
            i.keep_alive_s,
            i.state_interval_s,
            i.periods,
            i.window_s,
            i.window.total,
            i.window.up,
            i.window.down,
            i.per_keep_alive,
            i.state_report.total,
            i.state_report.up,
            i.state_report.down,
            i.keep_alive_per_day,
            i.state_reports_per_day,
            i.per_day,
            self.http_poll_15min_per_day,
            self.ratio_idle_per_day,
        ));
        s
    }
}

/// What differs between the measured agents.
#[derive(Debug, Clone, Copy)]
struct Variant {
    label: &'static str,
    transport: Transport,
    tls_resumption: bool,
    bundle_over_percent: u8,
}

impl Variant {
    const fn new(label: &'static str, transport: Transport) -> Variant {
        Variant {
            label,
            transport,
            tls_resumption: true,
            bundle_over_percent: 50,
        }
    }

    const fn full_tls(self, label: &'static str) -> Variant {
        Variant {
            label,
            tls_resumption: false,
            ..self
        }
    }

    fn apply(&self, config: &mut AgentConfig) {
        config.tls_resumption = self.tls_resumption;
        config.http.bundle_over_percent = self.bundle_over_percent;
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
        tweak: impl FnOnce(&mut AgentConfig),
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
        let identity = Identity::from_pem(super::sim::identity_pem(b))?;
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
        tweak(&mut config);
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
        Ok(self.snapshot().minus(before))
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
    upstream: std::net::SocketAddr,
    variant: Variant,
) -> Result<TransportBytes> {
    let label = variant.label;
    let name = format!("wire-{label}");
    let name = name.as_str();
    let device = WireDevice::start(admin, name, variant.transport, upstream, docs(false), |c| {
        variant.apply(c)
    })
    .await?;
    // The check at start-up: it may already be under way.
    device.quiet(Duration::from_secs(60)).await?;
    let first_contact = device.snapshot();
    // Version 1 is the zero-deployment manifest: the ten deployments are 2,
    // the update 3.
    let adopted = device.handle.snapshots.borrow().adopted_manifest_version;
    if adopted < 2 {
        bail!("{label}: the first check did not apply the ten deployments (adopted v{adopted})");
    }
    let after_first = device.check().await?;
    let no_change_1 = device.check().await?;
    let no_change_2 = device.check().await?;
    admin.deploy(name, docs(true)).await?;
    let update_check = device.check().await?;
    let adopted = device.handle.snapshots.borrow().adopted_manifest_version;
    if adopted < 3 {
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

/// How to run the wire benchmark.
#[derive(Debug, Clone)]
pub struct WireOptions {
    pub out_dir: PathBuf,
    /// Only the resumed MQTT and HTTP checks and a short idle window.
    pub quick: bool,
    /// Keep-alive periods of the persistent idle window.
    pub idle_periods: u32,
    /// The idle device's keep-alive (None: the agent's default).
    pub keep_alive: Option<Duration>,
}

/// Converges a persistent device, then counts an idle window and one
/// periodic state report (see the module docs).
async fn measure_idle(
    admin: &AdminClient,
    upstream: std::net::SocketAddr,
    periods: u32,
    keep_alive: Option<Duration>,
) -> Result<IdleBytes> {
    let defaults = AgentConfig::default();
    let keep_alive = keep_alive.unwrap_or(defaults.keep_alive);
    let state_interval = defaults.state_interval;
    // The first periodic report: after the window, mid-way between pings.
    let report_after = keep_alive * (periods + 3) + keep_alive / 2;
    let device = WireDevice::start(
        admin,
        "wire-idle",
        Transport::Mqtt,
        upstream,
        docs(false),
        |c| {
            c.schedule = None;
            c.keep_alive = keep_alive;
            c.state_interval = report_after;
        },
    )
    .await?;
    let converge = Instant::now() + Duration::from_secs(60);
    loop {
        let s = device.handle.snapshots.borrow().clone();
        // Version 2: the deployed one (1 is the zero-deployment manifest).
        if s.connected && s.adopted_manifest_version >= 2 && s.outbox_len == 0 {
            break;
        }
        if Instant::now() > converge {
            bail!(
                "idle: not converged within 60 s (adopted v{}, outbox {})",
                s.adopted_manifest_version,
                s.outbox_len
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Quiet for a second, then the first keep-alive exchange starts the window.
    device.proxy.settled_bytes(Duration::from_secs(1)).await;
    let quiet = device.snapshot();
    let ping_deadline = Instant::now() + keep_alive + Duration::from_secs(10);
    while device.snapshot().total == quiet.total {
        if Instant::now() > ping_deadline {
            bail!("idle: no keep-alive exchange within {keep_alive:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ping = Instant::now();
    // Half a second after a ping: the window holds exactly `periods` pings.
    let margin = Duration::from_millis(500).min(keep_alive / 4);
    tokio::time::sleep(margin).await;
    let before = device.snapshot();
    let start = Instant::now();
    tokio::time::sleep_until((ping + keep_alive * periods + margin).into()).await;
    let after = device.snapshot();
    let window_s = start.elapsed().as_secs_f64();
    let window = after.minus(before);
    // The periodic state report: wait for it, let its ack arrive, and take
    // away the pings since the window ended.
    let published = || {
        device
            .handle
            .stats
            .published
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let sent = published();
    let report_deadline = Instant::now() + report_after + keep_alive * 2;
    while published() == sent {
        if Instant::now() > report_deadline || device.task.is_finished() {
            bail!("idle: no periodic state report within {report_after:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    device
        .proxy
        .settled_bytes(Duration::from_millis(300).min(keep_alive / 8))
        .await;
    let span = device.snapshot().minus(after);
    let pings = ((ping.elapsed().as_secs_f64() / keep_alive.as_secs_f64()).floor() as u64)
        .saturating_sub(u64::from(periods));
    let (ping_up, ping_down) = (
        window.up / u64::from(periods),
        window.down / u64::from(periods),
    );
    let (up, down) = (
        span.up.saturating_sub(pings * ping_up),
        span.down.saturating_sub(pings * ping_down),
    );
    let state_report = Bytes {
        up,
        down,
        total: up + down,
        connections: span.connections,
    };
    device.stop().await;
    let per_keep_alive = window.total as f64 / f64::from(periods);
    let keep_alive_per_day = per_keep_alive * 86_400.0 / keep_alive.as_secs_f64();
    let state_reports_per_day = state_report.total as f64 * 86_400.0 / state_interval.as_secs_f64();
    Ok(IdleBytes {
        keep_alive_s: keep_alive.as_secs(),
        periods,
        window_s,
        window,
        per_keep_alive,
        state_interval_s: state_interval.as_secs(),
        state_report,
        keep_alive_per_day,
        state_reports_per_day,
        per_day: keep_alive_per_day + state_reports_per_day,
    })
}

pub async fn run(options: &WireOptions) -> Result<WireReport> {
    let machine = Machine::read();
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.trim().to_string());
    let work = tempfile::Builder::new().prefix("wire-").tempdir()?;
    let mut manager = ManagerProc::start_with_env(work.path(), "", &[("RUST_LOG", "warn")])?;
    let admin = AdminClient::new(&manager.socket);
    let gateway = manager.gateway.context("no gateway")?;
    let https = manager.http.context("no HTTPS listener")?;
    let mqtt_v = Variant::new("mqtt", Transport::Mqtt);
    let http_v = Variant::new("http", Transport::Http);
    let mqtt = measure(&admin, gateway, mqtt_v).await?;
    let http = measure(&admin, https, http_v).await?;
    let (mut mqtt_full_tls, mut http_full_tls, mut http_bundle) = (None, None, None);
    if !options.quick {
        mqtt_full_tls = Some(measure(&admin, gateway, mqtt_v.full_tls("mqtt-full-tls")).await?);
        http_full_tls = Some(measure(&admin, https, http_v.full_tls("http-full-tls")).await?);
        let bundle = Variant {
            bundle_over_percent: 0,
            ..Variant::new("http-bundle", Transport::Http)
        };
        http_bundle = Some(measure(&admin, https, bundle).await?);
    }
    let (periods, keep_alive) = if options.quick {
        (
            2,
            Some(options.keep_alive.unwrap_or(Duration::from_secs(3))),
        )
    } else {
        (options.idle_periods.max(1), options.keep_alive)
    };
    let idle = measure_idle(&admin, gateway, periods, keep_alive).await?;
    manager.proc.stop(Duration::from_secs(15));
    let ratio = |m: &TransportBytes, h: &TransportBytes, f: fn(&TransportBytes) -> Bytes| {
        f(m).total as f64 / f(h).total.max(1) as f64
    };
    let poll_day = http_poll_per_day(&http);
    let report = WireReport {
        benchmark: "wire",
        git_commit: super::fanout::git_commit(),
        machine,
        load_average,
        ratio_no_change: ratio(&mqtt, &http, |t| t.no_change_2),
        ratio_no_change_full_tls: mqtt_full_tls
            .as_ref()
            .zip(http_full_tls.as_ref())
            .map(|(m, h)| ratio(m, h, |t| t.no_change_2)),
        ratio_update_1_of_10: ratio(&mqtt, &http, |t| t.update_1_of_10),
        ratio_update_1_of_10_bundle: http_bundle
            .as_ref()
            .map(|h| ratio(&mqtt, h, |t| t.update_1_of_10)),
        http_poll_15min_per_day: poll_day,
        ratio_idle_per_day: idle.per_day / poll_day.max(1.0),
        mqtt,
        http,
        mqtt_full_tls,
        http_full_tls,
        http_bundle,
        idle,
    };
    let (json, md) = report::write(&options.out_dir, "wire", &report, &report.markdown())?;
    println!("wrote {} and {}", json.display(), md.display());
    Ok(report)
}
