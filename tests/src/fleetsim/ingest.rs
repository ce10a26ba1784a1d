//! Uplink ingest: how many signed status messages per second the manager
//! durably stores and acknowledges.
//!
//! The load generator is not the full agent. The point is to measure the
//! manager, and a full agent per device would spend the shared CPU on its
//! own outbox commits and signing. Each simulated device here is what the
//! manager sees of a real one: its own bulk-provisioned certificate and key,
//! a persistent MQTT session over mutual TLS through the device gateway,
//! QoS 1 publishes of status messages sealed exactly like the agent's outbox
//! seals them (`Envelope` with seq from 1, signed COSE_Sign1 with the
//! device key, on `…/status/{deploymentId}`), and the manager's signed
//! `R/ack` verified with the manager's key. The messages are sealed before
//! the measurement starts, so the generator's signing does not compete with
//! the manager for the two cores; each device keeps at most `window`
//! messages unacknowledged, like an agent's outbox sending its backlog.
//!
//! Counted as done: a message whose seq is covered by an `acked_seq` the
//! device received (the manager publishes acks only after the batch that
//! stored the message committed). At the end the manager's own counters
//! (stored, duplicates) and every device's stored uplink log (admin API)
//! are checked against what was sent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use coset::CborSerializable;
use margo_agent::identity::{Identity, IdentityPem};
use margo_manager::admin::{AdminClient, DeployManyRequest, Health};
use margo_manager::ingest::HistogramSnapshot;
use margo_manager::ingest::IngestTimingSnapshot;
use margo_schemas::cose::{SigningKey, VerifyingKey};
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::{Envelope, Message, StatusReport};
use margo_schemas::status::{ComponentStatus, DeploymentState, DeploymentStatus};
use margo_schemas::topics::{self, DeviceTopic};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::fanout::git_commit;
use super::harness::ms;
use super::machine::Machine;
use super::procstat::{self, ProcSample, Sampler};
use super::report::{self, mib, Percentiles};
use super::rlimit::NofileLimit;
use super::sim;
use crate::fleet::{deployment_yaml, ManagerProc};

/// The deployment every status message is about.
pub const DEPLOYMENT_ID: &str = "1a6e5700-0000-4000-8000-000000000001";
/// Largest ack payload accepted from the manager.
const MAX_ACK_BYTES: usize = 64 * 1024;
/// One ack in this many is signature-checked by the load generator.
const VERIFY_EVERY: u64 = 64;
/// Devices connecting at once (the gateway caps pending handshakes per address).
const CONNECT_BATCH: usize = 50;

/// What `margo-fleetsim bench ingest` was asked to do.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub devices: usize,
    /// Messages in total (spread evenly over the devices).
    pub messages: usize,
    /// Stop publishing after this (the sealed messages not sent by then are not counted).
    pub duration: Option<Duration>,
    /// Most unacknowledged messages per device.
    pub window: usize,
    /// `[ingest] batch_max` of the manager (its default when `None`).
    pub batch_max: Option<usize>,
    /// `[ingest] batch_interval` of the manager (its default when `None`).
    pub batch_interval: Option<Duration>,
    /// Give up waiting for acks after this.
    pub timeout: Duration,
    pub out_dir: PathBuf,
    pub work_dir: Option<PathBuf>,
    pub manager_log: String,
    pub quick: bool,
    pub nofile: Option<NofileLimit>,
}

impl IngestOptions {
    /// Defaults: 100 devices, 200,000 messages, a window of 64 per device.
    pub fn new(out_dir: PathBuf) -> IngestOptions {
        IngestOptions {
            devices: 100,
            messages: 200_000,
            duration: None,
            window: 64,
            batch_max: None,
            batch_interval: None,
            timeout: Duration::from_secs(600),
            out_dir,
            work_dir: None,
            manager_log: "warn".into(),
            quick: false,
            nofile: None,
        }
    }

    /// The CI variant: 5 devices, 2,000 messages.
    pub fn quick(out_dir: PathBuf) -> IngestOptions {
        IngestOptions {
            devices: 5,
            messages: 2_000,
            window: 32,
            quick: true,
            timeout: Duration::from_secs(120),
            ..IngestOptions::new(out_dir)
        }
    }
}

/// Distribution of a manager-side histogram over the run.
#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    pub count: u64,
    pub mean: f64,
    /// Upper bounds of the percentiles (the manager counts into fixed buckets).
    pub p50_le: u64,
    pub p95_le: u64,
    pub p99_le: u64,
    pub max: u64,
}

impl Distribution {
    fn of(h: &HistogramSnapshot) -> Distribution {
        Distribution {
            count: h.count,
            mean: h.mean(),
            p50_le: h.percentile_bound(50.0),
            p95_le: h.percentile_bound(95.0),
            p99_le: h.percentile_bound(99.0),
            max: h.max,
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub benchmark: &'static str,
    pub quick: bool,
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub nofile: Option<NofileLimit>,
    pub devices: usize,
    pub window: usize,
    /// The manager's `[ingest]` settings as configured (None: its defaults).
    pub batch_max: Option<usize>,
    pub batch_interval_ms: Option<u64>,
    pub payload_bytes_mean: f64,
    pub provision_ms: f64,
    pub seal_ms: f64,
    pub connect_ms: f64,
    /// Messages published / acknowledged (counted from the acks the devices received).
    pub sent: u64,
    pub acked: u64,
    /// First publish → last ack.
    pub elapsed_ms: f64,
    /// `acked / elapsed`.
    pub acked_per_second: f64,
    /// Acked per whole second of the run (the last, partial second left out).
    pub per_second: Vec<u64>,
    /// Median of `per_second`.
    pub per_second_median: u64,
    /// Publish → ack received, per message.
    pub latency_ms: Percentiles,
    /// Manager counters over the run.
    pub manager_stored: u64,
    pub manager_duplicates: u64,
    pub manager_rejected: u64,
    pub manager_batches: u64,
    pub acks_requested: u64,
    pub acks_received: u64,
    /// Uplink log entries of the devices found in the manager's store (admin API).
    pub stored_in_log: u64,
    /// Whether every sent message is in the log exactly once, and acked.
    pub exactly_once: bool,
    /// Messages per committed batch.
    pub batch_size: Distribution,
    /// redb commit (fsync) latency, µs.
    pub commit_us: Distribution,
    /// First publish of a batch received at ingest → acks requested, µs.
    pub batch_us: Distribution,
    /// Manager time per stored message, µs: verification, transaction
    /// writes, commit (sums over batches divided by messages).
    pub verify_us_per_msg: f64,
    pub write_us_per_msg: f64,
    pub commit_us_per_msg: f64,
    /// Manager process (manager, embedded broker and gateway) over the run.
    pub manager_cpu_seconds: f64,
    pub manager_cpu_us_per_msg: f64,
    pub manager_threads_cpu: Vec<(String, f64)>,
    pub manager_peak_rss_sampled_bytes: u64,
    pub manager_hwm_bytes: u64,
    pub manager_hwm_reset: bool,
    /// This process (the load generator) over the run.
    pub fleetsim_cpu_seconds: f64,
    pub manager_end: ProcSample,
}

impl IngestReport {
    pub fn markdown(&self) -> String {
        let d = |x: &Distribution, unit: &str| {
            format!(
                "mean {:.1}{unit}, p50 ≤ {}{unit}, p95 ≤ {}{unit}, p99 ≤ {}{unit}, max {}{unit} ({} batches)",
                x.mean, x.p50_le, x.p95_le, x.p99_le, x.max, x.count
            )
        };
        let mut s = format!(
            "### Uplink ingest, {} devices{}\n\n\
             Machine: {}. Commit {}. Window {} messages per device; manager `[ingest]` \
             batch_max {}, batch_interval {}. Status messages of {:.0} bytes (signed COSE_Sign1), \
             QoS 1 over mutual TLS through the gateway.\n\n\
             Setup: provisioning {:.1} s, sealing {:.1} s, connecting {:.1} s.\n\n\
             | acked / sent | elapsed | **acked/s** | median of per-second | latency p50 | p95 | p99 | max | manager CPU | CPU/msg | manager peak RSS (sampled / VmHWM) | fleetsim CPU |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|\n\
             | {}/{} | {:.2} s | **{:.0}** | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} s | {:.0} µs | {} / {} | {:.2} s |\n\n",
            self.devices,
            if self.quick { " (quick)" } else { "" },
            self.machine.markdown(),
            self.git_commit.as_deref().unwrap_or("unknown"),
            self.window,
            self.batch_max.map_or("default".into(), |b| b.to_string()),
            self.batch_interval_ms
                .map_or("default".into(), |b| format!("{b} ms")),
            self.payload_bytes_mean,
            self.provision_ms / 1000.0,
            self.seal_ms / 1000.0,
            self.connect_ms / 1000.0,
            self.acked,
            self.sent,
            self.elapsed_ms / 1000.0,
            self.acked_per_second,
            self.per_second_median,
            self.latency_ms.p50,
            self.latency_ms.p95,
            self.latency_ms.p99,
            self.latency_ms.max,
            self.manager_cpu_seconds,
            self.manager_cpu_us_per_msg,
            mib(self.manager_peak_rss_sampled_bytes),
            if self.manager_hwm_reset {
                mib(self.manager_hwm_bytes)
            } else {
                "n/a".into()
            },
            self.fleetsim_cpu_seconds,
        );
        s.push_str(&format!(
            "- redb commit batch size: {}\n\
             - redb commit latency: {}\n\
             - batch latency (first publish received → acks requested): {}\n\
             - manager time per message: verify {:.1} µs, transaction writes {:.1} µs, commit {:.1} µs\n\
             - acks: {} requested by ingest, {} received by the devices\n\
             - manager counters: {} stored, {} duplicates, {} rejected in {} batches; \
             {} entries in the devices' uplink logs; every message stored and acked exactly once: {}\n",
            d(&self.batch_size, ""),
            d(&self.commit_us, " µs"),
            d(&self.batch_us, " µs"),
            self.verify_us_per_msg,
            self.write_us_per_msg,
            self.commit_us_per_msg,
            self.acks_requested,
            self.acks_received,
            self.manager_stored,
            self.manager_duplicates,
            self.manager_rejected,
            self.manager_batches,
            self.stored_in_log,
            if self.exactly_once { "yes" } else { "**no**" },
        ));
        let top: Vec<String> = self
            .manager_threads_cpu
            .iter()
            .take(6)
            .map(|(n, t)| format!("{n} {t:.2}"))
            .collect();
        s.push_str(&format!(
            "- manager CPU by thread (s): {}\n- acked per second: {:?}\n",
            top.join(", "),
            self.per_second
        ));
        s
    }
}

/// One simulated device: identity, sealed messages, and what happened.
struct LoadDevice {
    client_id: ClientId,
    /// The manager's key (from the bundle), to check acks.
    manager_key: VerifyingKey,
    tls: Arc<rustls::ClientConfig>,
    payloads: Vec<Vec<u8>>,
}

/// What a device saw.
#[derive(Default)]
struct DeviceResult {
    sent: u64,
    acked: u64,
    acks: u64,
    latencies_ms: Vec<f64>,
}

/// Seals `count` status messages for one device, seq 1..=count, alternating
/// `installing`/`installed` for one component, like the agent's outbox.
fn seal_messages(key: &SigningKey, client: &ClientId, count: usize) -> Result<Vec<Vec<u8>>> {
    let deployment = DeploymentId::new(DEPLOYMENT_ID).context("deployment id")?;
    let now = margo_manager::store::now_ms();
    (1..=count as u64)
        .map(|seq| {
            let state = if seq % 2 == 0 {
                DeploymentState::Installed
            } else {
                DeploymentState::Installing
            };
            let status = DeploymentStatus::new(
                deployment.clone(),
                vec![ComponentStatus {
                    name: "app".into(),
                    state,
                    error: None,
                }],
                None,
            );
            let mut env = Envelope::new(
                client.clone(),
                seq,
                now + seq,
                Message::Status(StatusReport {
                    // The first deploy's manifest (version 1 is the zero one).
                    adopted_manifest_version: 2,
                    status,
                }),
            );
            // The lowest pending seq of an outbox that has everything
            // since seq 1 pending: claims nothing settled that is not stored.
            env.low = 1;
            env.seal(key).context("sealing a status message")
        })
        .collect()
}

async fn ingest_health(admin: &AdminClient) -> Result<Health> {
    admin.health().await.context("manager health")
}

fn counter(h: &Health, name: &str) -> u64 {
    h.ingest.get(name).copied().unwrap_or(0)
}

/// Runs the benchmark; writes `ingest-<devices>.json` and `.md`.
pub async fn run(opts: &IngestOptions) -> Result<IngestReport> {
    if opts.devices == 0 || opts.messages < opts.devices || opts.window == 0 {
        bail!("need at least one device, one message per device and a window of at least 1");
    }
    let machine = Machine::read();
    let work = super::harness::work_dir_in(opts.work_dir.as_deref())?;
    let mut extra = String::new();
    if opts.devices + 64 > margo_broker::Limits::default().max_connections {
        extra.push_str(&format!(
            "[broker.limits]\nmax_connections = {}\n",
            opts.devices + 64
        ));
    }
    // The benchmark measures the manager, not the gateway's per-device rate
    // limit (issue 12, finding 1): lift it far above what a simulated device
    // sends with its window.
    extra.push_str(
        "[broker.device_rate]\nmessages_per_second = 1000000\nmessage_burst = 1000000\n\
         bytes_per_second = 1000000000000\nbyte_burst = 1000000000000\n",
    );
    if opts.batch_max.is_some() || opts.batch_interval.is_some() {
        extra.push_str("[ingest]\n");
        if let Some(b) = opts.batch_max {
            extra.push_str(&format!("batch_max = {b}\n"));
        }
        if let Some(i) = opts.batch_interval {
            extra.push_str(&format!("batch_interval = \"{}ms\"\n", i.as_millis()));
        }
    }
    let mut manager =
        ManagerProc::start_with_env(work.path(), &extra, &[("RUST_LOG", &opts.manager_log)])
            .context("starting margo-manager serve")?;
    let pid = manager.proc.pid().context("manager pid")?;
    let gateway = manager.gateway.context("the manager reported no gateway")?;
    println!("manager pid {pid}: device gateway {gateway}");
    let admin = AdminClient::new(&manager.socket);
    let result = measure(opts, &admin, pid, gateway.port(), machine).await;
    manager.proc.stop(Duration::from_secs(20));
    let report = result?;
    let stem = if opts.quick {
        "ingest-quick".to_string()
    } else {
        format!("ingest-{}", opts.devices)
    };
    let (json, md) = report::write(&opts.out_dir, &stem, &report, &report.markdown())?;
    println!("wrote {} and {}", json.display(), md.display());
    Ok(report)
}

async fn measure(
    opts: &IngestOptions,
    admin: &AdminClient,
    pid: u32,
    gateway_port: u16,
    machine: Machine,
) -> Result<IngestReport> {
    let broker_url = format!("mqtts://localhost:{gateway_port}");
    let t = Instant::now();
    let identities = sim::provision(admin, "load-", opts.devices, &broker_url).await?;
    // The manager refuses status for a deployment never assigned to the
    // client: assign the one every message is about (one transaction).
    admin
        .deploy_many(&DeployManyRequest {
            clients: Vec::new(),
            name_prefix: Some("load-".to_string()),
            documents: vec![deployment_yaml(DEPLOYMENT_ID, "load-app", &["app"], 1)],
        })
        .await
        .context("assigning the reported deployment")?;
    let provision_ms = ms(t.elapsed());

    // Seal every message before measuring, on the blocking pool.
    let t = Instant::now();
    let per_device = opts.messages / opts.devices;
    let extra = opts.messages % opts.devices;
    let mut sealing = JoinSet::new();
    for (i, pem) in identities.into_iter().enumerate() {
        let count = per_device + usize::from(i < extra);
        sealing.spawn_blocking(move || prepare_device(i, pem, count));
    }
    let mut devices: Vec<Option<LoadDevice>> = (0..opts.devices).map(|_| None).collect();
    while let Some(done) = sealing.join_next().await {
        let (i, device) = done.context("sealing task")??;
        devices[i] = Some(device);
    }
    let devices: Vec<LoadDevice> = devices.into_iter().flatten().collect();
    let seal_ms = ms(t.elapsed());
    let total_bytes: usize = devices
        .iter()
        .flat_map(|d| d.payloads.iter().map(Vec::len))
        .sum();
    let payload_bytes_mean = total_bytes as f64 / opts.messages as f64;
    println!(
        "sealed {} status messages ({payload_bytes_mean:.0} bytes each) in {:.1} s",
        opts.messages,
        seal_ms / 1000.0
    );

    // Connect and subscribe, CONNECT_BATCH at a time; each device then
    // waits for `go`.
    let t = Instant::now();
    let go = CancellationToken::new();
    let stop = CancellationToken::new();
    let acked_total = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let mut pending = devices.into_iter();
    let mut connected = 0;
    loop {
        let batch: Vec<LoadDevice> = pending.by_ref().take(CONNECT_BATCH).collect();
        if batch.is_empty() {
            break;
        }
        let mut connecting = JoinSet::new();
        for device in batch {
            connecting.spawn(connect(device, gateway_port, opts.window));
        }
        while let Some(done) = connecting.join_next().await {
            let (device, client, eventloop) = done.context("connect task")??;
            let (go, stop, acked) = (go.clone(), stop.clone(), Arc::clone(&acked_total));
            let window = opts.window;
            tasks.spawn(drive(device, client, eventloop, window, go, stop, acked));
            connected += 1;
        }
        println!(
            "[{:>6.1}s] connected {connected}/{} devices",
            t.elapsed().as_secs_f64(),
            opts.devices
        );
    }
    let connect_ms = ms(t.elapsed());

    // Measure.
    let health_before = ingest_health(admin).await?;
    let before = procstat::sample(pid)?;
    let threads_before = procstat::threads_cpu(pid);
    let me_before = procstat::sample(std::process::id())?;
    let hwm_reset = procstat::reset_peak(pid);
    let sampler = Sampler::start(pid, Duration::from_millis(100));
    let t0 = Instant::now();
    go.cancel();
    let total = opts.messages as u64;
    let mut per_second = Vec::new();
    let mut last = 0;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut results = Vec::with_capacity(opts.devices);
    let deadline = t0 + opts.timeout;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = acked_total.load(Ordering::Relaxed);
                per_second.push(now - last);
                last = now;
                println!(
                    "[{:>6.1}s] {now}/{total} acked ({} in the last second)",
                    t0.elapsed().as_secs_f64(),
                    per_second[per_second.len() - 1]
                );
                if opts.duration.is_some_and(|d| t0.elapsed() >= d) && !stop.is_cancelled() {
                    println!("duration reached: no new messages; waiting for the acks of those in flight");
                    stop.cancel();
                }
                if Instant::now() >= deadline {
                    tasks.shutdown().await;
                    bail!("only {now} of {total} messages acked within {:?}", opts.timeout);
                }
            }
            joined = tasks.join_next() => match joined {
                Some(r) => results.push(r.context("device task")??),
                None => break,
            },
        }
    }
    let elapsed = t0.elapsed();
    let after = procstat::sample(pid)?;
    let threads_after = procstat::threads_cpu(pid);
    let me_after = procstat::sample(std::process::id())?;
    let peak_sampled = sampler.finish().await;
    let health_after = ingest_health(admin).await?;

    // Cross-check against the manager's store: every device's uplink log
    // holds exactly the seqs it sent (and had acked).
    let mut stored_in_log = 0u64;
    let mut exactly_once = true;
    for r in &results {
        let log = admin
            .uplink(r.client_id.as_str())
            .await
            .with_context(|| format!("uplink log of {}", r.client_id))?;
        stored_in_log += log.len() as u64;
        let seqs: Vec<u64> = log.iter().map(|u| u.seq).collect();
        let expected: Vec<u64> = (1..=r.result.sent).collect();
        if seqs != expected || r.result.acked != r.result.sent {
            exactly_once = false;
            println!(
                "{}: sent {}, acked {}, stored seqs {}",
                r.client_id,
                r.result.sent,
                r.result.acked,
                seqs.len()
            );
        }
    }
    let sent: u64 = results.iter().map(|r| r.result.sent).sum();
    let acked: u64 = results.iter().map(|r| r.result.acked).sum();
    let acks_received: u64 = results.iter().map(|r| r.result.acks).sum();
    let latencies: Vec<f64> = results
        .iter()
        .flat_map(|r| r.result.latencies_ms.iter().copied())
        .collect();
    let stat = |name: &str| counter(&health_after, name) - counter(&health_before, name);
    let manager_stored = stat("stored");
    let manager_duplicates = stat("duplicates");
    let rejected_kinds = [
        "badSignature",
        "malformed",
        "unknownClient",
        "revoked",
        "wrongTopic",
        "oversized",
        "unknownKind",
        "invalidBody",
        "unassignedStatus",
    ];
    let manager_rejected = rejected_kinds.iter().map(|k| stat(k)).sum();
    exactly_once &= manager_stored == sent && manager_duplicates == 0 && manager_rejected == 0;
    let timing = timing_since(&health_after.ingest_timing, &health_before.ingest_timing);
    let per_msg = |nanos: u64| nanos as f64 / 1000.0 / manager_stored.max(1) as f64;
    let mut sorted = per_second.clone();
    sorted.sort_unstable();
    let manager_cpu_seconds = after.cpu_seconds - before.cpu_seconds;
    Ok(IngestReport {
        benchmark: "ingest",
        quick: opts.quick,
        git_commit: git_commit(),
        machine,
        nofile: opts.nofile,
        devices: opts.devices,
        window: opts.window,
        batch_max: opts.batch_max,
        batch_interval_ms: opts.batch_interval.map(|d| d.as_millis() as u64),
        payload_bytes_mean,
        provision_ms,
        seal_ms,
        connect_ms,
        sent,
        acked,
        elapsed_ms: ms(elapsed),
        acked_per_second: acked as f64 / elapsed.as_secs_f64(),
        per_second_median: sorted.get(sorted.len() / 2).copied().unwrap_or(0),
        per_second,
        latency_ms: Percentiles::of(&latencies),
        manager_stored,
        manager_duplicates,
        manager_rejected,
        manager_batches: stat("batches"),
        acks_requested: timing.acks_requested,
        acks_received,
        stored_in_log,
        exactly_once,
        batch_size: Distribution::of(&timing.batch_size),
        commit_us: Distribution::of(&timing.commit_micros),
        batch_us: Distribution::of(&timing.batch_micros),
        verify_us_per_msg: per_msg(timing.verify_nanos),
        write_us_per_msg: per_msg(timing.write_nanos),
        commit_us_per_msg: per_msg(timing.commit_micros.sum * 1000),
        manager_cpu_seconds,
        manager_cpu_us_per_msg: manager_cpu_seconds * 1e6 / acked.max(1) as f64,
        manager_threads_cpu: procstat::threads_delta(&threads_before, &threads_after),
        manager_peak_rss_sampled_bytes: peak_sampled.max(after.rss_bytes),
        manager_hwm_bytes: after.hwm_bytes,
        manager_hwm_reset: hwm_reset,
        fleetsim_cpu_seconds: me_after.cpu_seconds - me_before.cpu_seconds,
        manager_end: after,
    })
}

fn timing_since(
    after: &IngestTimingSnapshot,
    before: &IngestTimingSnapshot,
) -> IngestTimingSnapshot {
    IngestTimingSnapshot {
        batch_size: after.batch_size.since(&before.batch_size),
        commit_micros: after.commit_micros.since(&before.commit_micros),
        batch_micros: after.batch_micros.since(&before.batch_micros),
        verify_nanos: after.verify_nanos - before.verify_nanos,
        write_nanos: after.write_nanos - before.write_nanos,
        acks_requested: after.acks_requested - before.acks_requested,
    }
}

fn prepare_device(index: usize, pem: IdentityPem, count: usize) -> Result<(usize, LoadDevice)> {
    let name = pem.name.clone();
    let identity = Identity::from_pem(pem).with_context(|| format!("identity of {name}"))?;
    let tls = margo_schemas::pki::client_tls_config(
        &identity.pem.ca_pem,
        Some((&identity.pem.cert_pem, &identity.pem.key_pem)),
    )?;
    let payloads = seal_messages(&identity.signing_key, &identity.client_id, count)?;
    Ok((
        index,
        LoadDevice {
            client_id: identity.client_id,
            manager_key: identity
                .manager_key
                .context("a bundle identity has a manager signing key")?,
            tls: Arc::new(tls),
            payloads,
        },
    ))
}

/// Connects one device (persistent session, mutual TLS) and subscribes to its ack.
async fn connect(
    device: LoadDevice,
    port: u16,
    window: usize,
) -> Result<(LoadDevice, AsyncClient, EventLoop)> {
    let mut opts = MqttOptions::new(device.client_id.as_str(), "localhost", port);
    opts.set_keep_alive(Duration::from_secs(60));
    opts.set_clean_session(false);
    opts.set_inflight(u16::try_from(window).unwrap_or(u16::MAX));
    opts.set_max_packet_size(MAX_ACK_BYTES, MAX_ACK_BYTES);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::clone(&device.tls),
    )));
    let (client, mut eventloop) = AsyncClient::new(opts, window + 8);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let what = device.client_id.to_string();
    let mut subscribed = false;
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| anyhow!("{what}: not connected and subscribed within 30 s"))?
            .with_context(|| format!("{what}: connecting"))?;
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    bail!("{what}: CONNACK {:?}", ack.code);
                }
                client
                    .subscribe(topics::ack(&device.client_id), QoS::AtLeastOnce)
                    .await?;
            }
            Event::Incoming(Packet::SubAck(_)) => subscribed = true,
            _ => {}
        }
        if subscribed {
            return Ok((device, client, eventloop));
        }
    }
}

struct Driven {
    client_id: ClientId,
    result: DeviceResult,
}

/// Publishes the device's messages keeping at most `window` unacked, until
/// all are acked (or `stop`: then until those sent are acked).
async fn drive(
    mut device: LoadDevice,
    client: AsyncClient,
    mut eventloop: EventLoop,
    window: usize,
    go: CancellationToken,
    stop: CancellationToken,
    acked_total: Arc<AtomicU64>,
) -> Result<Driven> {
    let what = device.client_id.to_string();
    let status_topic = topics::status(
        &device.client_id,
        &DeploymentId::new(DEPLOYMENT_ID).context("deployment id")?,
    );
    let ack_topic = topics::ack(&device.client_id);
    // Keep the session alive (and take the retained ack) until `go`.
    loop {
        tokio::select! {
            () = go.cancelled() => break,
            event = eventloop.poll() => { event.with_context(|| format!("{what}: waiting"))?; }
        }
    }
    let n = device.payloads.len();
    let mut sent_at: Vec<Instant> = Vec::with_capacity(n);
    let mut result = DeviceResult {
        latencies_ms: Vec::with_capacity(n),
        ..DeviceResult::default()
    };
    let mut acked = 0usize;
    let mut payloads = std::mem::take(&mut device.payloads).into_iter();
    loop {
        if !stop.is_cancelled() {
            while sent_at.len() < n && sent_at.len() - acked < window {
                let Some(payload) = payloads.next() else {
                    break;
                };
                client
                    .try_publish(status_topic.as_str(), QoS::AtLeastOnce, false, payload)
                    .with_context(|| format!("{what}: publish"))?;
                sent_at.push(Instant::now());
            }
        }
        if acked == sent_at.len() && (sent_at.len() == n || stop.is_cancelled()) {
            break;
        }
        let event = eventloop
            .poll()
            .await
            .with_context(|| format!("{what}: connection"))?;
        let Event::Incoming(Packet::Publish(publish)) = event else {
            continue;
        };
        if publish.topic != ack_topic {
            continue;
        }
        // Every VERIFY_EVERY-th ack (and the first) is verified like the
        // agent verifies each: the manager's signature, this client, the
        // ack topic; the others are only decoded, to leave the CPU to the
        // manager.
        let verify = result.acks % VERIFY_EVERY == 0;
        let acked_seq = ack_seq(&publish.payload, &device, verify)?;
        result.acks += 1;
        let now = Instant::now();
        let upto = usize::try_from(acked_seq).unwrap_or(usize::MAX);
        if upto > sent_at.len() {
            bail!(
                "{what}: the manager acked seq {acked_seq} but only {} were sent",
                sent_at.len()
            );
        }
        if upto > acked {
            for at in &sent_at[acked..upto] {
                result.latencies_ms.push(ms(now - *at));
            }
            acked_total.fetch_add((upto - acked) as u64, Ordering::Relaxed);
            acked = upto;
        }
    }
    result.sent = sent_at.len() as u64;
    result.acked = acked as u64;
    let _ = client.try_disconnect();
    Ok(Driven {
        client_id: device.client_id,
        result,
    })
}

/// The `acked_seq` of an ack payload, its signature verified with the
/// manager's key when `verify`.
fn ack_seq(payload: &[u8], device: &LoadDevice, verify: bool) -> Result<u64> {
    let client = &device.client_id;
    let envelope = if verify {
        Envelope::open(
            payload,
            MAX_ACK_BYTES,
            &device.manager_key,
            client,
            &DeviceTopic::Ack,
        )
        .with_context(|| format!("{client}: ack"))?
    } else {
        let sign1 = coset::CoseSign1::from_slice(payload)
            .map_err(|e| anyhow!("{client}: ack is not a COSE_Sign1: {e}"))?;
        let body = sign1
            .payload
            .ok_or_else(|| anyhow!("{client}: ack without payload"))?;
        let envelope: Envelope = margo_schemas::codec::decode(&body, MAX_ACK_BYTES)
            .with_context(|| format!("{client}: ack body"))?;
        if &envelope.client != client {
            bail!("{client}: ack for {}", envelope.client);
        }
        envelope
    };
    match envelope.msg {
        Message::Ack(ack) => Ok(ack.acked_seq),
        other => bail!("{client}: a {} on the ack topic", other.kind()),
    }
}
