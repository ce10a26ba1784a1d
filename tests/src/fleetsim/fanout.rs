//! Fan-out convergence: one deploy call for the whole fleet, then the
//! per-device latency from that call to the device's `installed` status as
//! stored by the manager (`updatedAt` of the status in the manager's store,
//! stamped in the ingest batch that commits it), and the manager process's
//! CPU time and peak RSS from `/proc`.
//!
//! Two phases: `initial` (the first deployment on fresh devices) and
//! `update` (a new revision of it: the case the targets are about).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use margo_manager::admin::{AdminClient, DeployManyRequest};
use margo_manager::status_view::ClientStatus;
use margo_schemas::ids::ClientId;
use margo_schemas::status::DeploymentState;
use serde::Serialize;

use super::harness::{ms, BrokerKind, Harness};
use super::machine::Machine;
use super::procstat::{self, ProcSample, Sampler};
use super::report::{self, mib, Percentiles};
use super::rlimit::NofileLimit;
use super::sim::{FleetSpec, SimFleet};
use crate::fleet::deployment_yaml;

/// The deployment every simulated device gets.
pub const DEPLOYMENT_ID: &str = "f1ee7517-0000-4000-8000-000000000001";

/// What `margo-fleetsim bench fanout` was asked to do.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    pub devices: usize,
    /// Simulated time of one component action.
    pub delay: Duration,
    pub start_batch: usize,
    /// Each agent's `connect_timeout` (one connection attempt).
    pub agent_connect_timeout: Duration,
    /// How often the manager's status is read while waiting (this costs the
    /// manager CPU, which is counted in its figures).
    pub poll: Duration,
    /// Give up waiting for a phase after this (the report then says how many converged).
    pub converge_timeout: Duration,
    /// Where the JSON and Markdown go.
    pub out_dir: PathBuf,
    /// Parent of the temporary manager directory (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
    /// `RUST_LOG` of the manager process.
    pub manager_log: String,
    pub quick: bool,
    /// The open-file limit the caller set up (for the report).
    pub nofile: Option<NofileLimit>,
    /// The broker the devices connect to.
    pub broker: BrokerKind,
}

impl FanoutOptions {
    /// Defaults for `devices` devices writing to `out_dir`.
    pub fn new(devices: usize, out_dir: PathBuf) -> FanoutOptions {
        FanoutOptions {
            devices,
            delay: Duration::from_millis(10),
            start_batch: 50,
            agent_connect_timeout: margo_agent::AgentConfig::default().connect_timeout,
            poll: default_poll(devices),
            converge_timeout: Duration::from_secs(300),
            out_dir,
            work_dir: None,
            manager_log: "warn".into(),
            quick: false,
            nofile: None,
            broker: BrokerKind::Embedded,
        }
    }
}

/// Status polling interval: reading 10,000 clients' status is itself work
/// for the manager, so poll less often for big fleets.
pub fn default_poll(devices: usize) -> Duration {
    match devices {
        0..=200 => Duration::from_millis(200),
        201..=2000 => Duration::from_millis(500),
        _ => Duration::from_secs(2),
    }
}

/// One deploy-and-converge phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub devices: usize,
    /// Devices whose `installed` status for the new version was stored.
    pub converged: usize,
    /// Duration of the one admin call that deployed to every device.
    pub deploy_call_ms: f64,
    /// Per device: deploy call start → `installed` stored at the manager.
    pub latency_ms: Percentiles,
    /// Deploy call start → the last device's `installed` stored.
    pub total_ms: f64,
    /// Deploy call start → the status poll that saw every device converged.
    pub observed_ms: f64,
    /// Manager process (with its embedded broker and gateway) during the phase.
    pub manager_cpu_seconds: f64,
    /// Highest manager RSS sampled every 100 ms during the phase.
    pub manager_peak_rss_sampled_bytes: u64,
    /// Manager `VmHWM` after the phase (reset at its start if the kernel allowed).
    pub manager_hwm_bytes: u64,
    pub manager_hwm_reset: bool,
    /// This process (the simulated devices) during the phase.
    pub fleetsim_cpu_seconds: f64,
    /// Manager CPU seconds during the phase per thread name (rumqttd's
    /// router vs the manager's tokio workers), highest first.
    pub manager_threads_cpu: Vec<(String, f64)>,
    /// The Mosquitto process during the phase (None with the embedded
    /// broker, whose figures are in the manager's).
    pub broker: Option<PhaseLoad>,
}

/// CPU and peak memory of a process during a phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PhaseLoad {
    pub cpu_seconds: f64,
    /// The higher of the 100 ms samples and `VmHWM` (reset at the start).
    pub peak_rss_bytes: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub benchmark: &'static str,
    pub devices: usize,
    pub broker: BrokerKind,
    pub quick: bool,
    pub delay_ms: u64,
    pub poll_ms: u64,
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub nofile: Option<NofileLimit>,
    pub provision_ms: f64,
    pub connect_ms: f64,
    /// Manager CPU while the fleet connected (TLS handshakes at the gateway,
    /// sessions and subscriptions in rumqttd, startup syncs), total and per thread.
    pub connect_manager_cpu_seconds: f64,
    pub connect_threads_cpu: Vec<(String, f64)>,
    /// Mosquitto's CPU seconds while the fleet connected (Mosquitto only).
    pub connect_broker_cpu_seconds: Option<f64>,
    pub phases: Vec<Phase>,
    /// Manager process totals at the end (CPU since start, `VmHWM`).
    pub manager_end: ProcSample,
    /// This process at the end.
    pub fleetsim_end: ProcSample,
    /// Mosquitto at the end (CPU since start, `VmHWM`), if it was the broker.
    pub broker_end: Option<ProcSample>,
}

impl FanoutReport {
    /// Whether every device converged in every phase.
    pub fn converged(&self) -> bool {
        self.phases.iter().all(|p| p.converged == p.devices)
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### Fan-out convergence, {} devices, {} broker{}\n\n\
             Machine: {}. Simulated runtime: {} ms per component action. \
             Status polled every {} ms. Commit {}.\n\n\
             Setup: bulk provisioning {:.1} s, connecting all devices {:.1} s.\n\n\
             | phase | converged | deploy call | p50 | p95 | p99 | max | total | manager CPU | manager peak RSS (sampled / VmHWM) | Mosquitto CPU | Mosquitto peak RSS | fleetsim CPU |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
            self.devices,
            self.broker,
            if self.quick { " (quick)" } else { "" },
            self.machine.markdown(),
            self.delay_ms,
            self.poll_ms,
            self.git_commit.as_deref().unwrap_or("unknown"),
            self.provision_ms / 1000.0,
            self.connect_ms / 1000.0,
        );
        for p in &self.phases {
            s.push_str(&format!(
                "| {} | {}/{} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} s | {:.2} s | {} / {} | {} | {} | {:.2} s |\n",
                p.name,
                p.converged,
                p.devices,
                p.deploy_call_ms,
                p.latency_ms.p50,
                p.latency_ms.p95,
                p.latency_ms.p99,
                p.latency_ms.max,
                p.total_ms / 1000.0,
                p.manager_cpu_seconds,
                mib(p.manager_peak_rss_sampled_bytes),
                if p.manager_hwm_reset { mib(p.manager_hwm_bytes) } else { "n/a".into() },
                p.broker.map_or("–".into(), |b| format!("{:.2} s", b.cpu_seconds)),
                p.broker.map_or("–".into(), |b| mib(b.peak_rss_bytes)),
                p.fleetsim_cpu_seconds,
            ));
        }
        s.push_str("\nManager CPU by thread (seconds):\n\n");
        let top = |threads: &[(String, f64)]| -> String {
            threads
                .iter()
                .take(6)
                .map(|(n, t)| format!("{n} {t:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(
            "- connecting the fleet ({:.2} s in total): {}\n",
            self.connect_manager_cpu_seconds,
            top(&self.connect_threads_cpu)
        ));
        for p in &self.phases {
            s.push_str(&format!("- {}: {}\n", p.name, top(&p.manager_threads_cpu)));
        }
        s.push_str(&format!(
            "\nManager at the end: {:.1} s CPU since start, VmHWM {}. fleetsim: {:.1} s CPU, VmHWM {}.\n",
            self.manager_end.cpu_seconds,
            mib(self.manager_end.hwm_bytes),
            self.fleetsim_end.cpu_seconds,
            mib(self.fleetsim_end.hwm_bytes),
        ));
        if let Some(b) = &self.broker_end {
            s.push_str(&format!(
                "Mosquitto: {:.2} s CPU while the fleet connected, {:.1} s CPU since start, VmHWM {}.\n",
                self.connect_broker_cpu_seconds.unwrap_or(0.0),
                b.cpu_seconds,
                mib(b.hwm_bytes),
            ));
        }
        s
    }
}

/// Runs the benchmark: a manager process, `devices` simulated devices, two
/// phases; writes `fanout-<N>.json` and `.md` to `out_dir`. Returns the
/// report (with `converged < devices` rather than an error when a phase
/// timed out, so that the numbers are still written).
pub async fn run(opts: &FanoutOptions) -> Result<FanoutReport> {
    let machine = Machine::read();
    let spec = FleetSpec {
        prefix: "sim-".into(),
        devices: opts.devices,
        delay: opts.delay,
        start_batch: opts.start_batch,
        connect_timeout: Duration::from_secs(60 + opts.devices as u64 / 20),
        agent_connect_timeout: opts.agent_connect_timeout,
    };
    let broker_at_start = opts.broker;
    let mut h = Harness::start_with(
        &spec,
        opts.work_dir.as_deref(),
        &opts.manager_log,
        broker_at_start,
    )
    .await?;
    let pid = h.pid;
    let broker_pid = h.broker_pid();
    let connect_broker_cpu_seconds = h.connect_broker_cpu;
    let mut phases = Vec::new();
    for (name, revision) in [("initial", 1), ("update", 2)] {
        let doc = deployment_yaml(DEPLOYMENT_ID, "fleet-app", &["app"], revision);
        let pids = Pids {
            manager: pid,
            broker: broker_pid,
        };
        let phase = run_phase(&h.admin, &mut h.fleet, opts, pids, name, &spec.prefix, doc).await?;
        println!(
            "{name}: {}/{} converged; p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; manager CPU {:.2} s",
            phase.converged,
            phase.devices,
            phase.latency_ms.p50,
            phase.latency_ms.p99,
            phase.latency_ms.max,
            phase.manager_cpu_seconds
        );
        let converged = phase.converged == phase.devices;
        phases.push(phase);
        if !converged {
            break;
        }
        // Let the `state` reports (adopted version) land so the next phase
        // starts from a quiet fleet.
        wait_adopted(&h.admin, opts, revision_version(&h.admin).await?).await?;
    }
    let manager_end = procstat::sample(pid)?;
    let fleetsim_end = procstat::sample(std::process::id())?;
    let broker_end = broker_pid.map(procstat::sample).transpose()?;
    let (provision_ms, connect_ms) = (h.provision_ms, h.connect_ms);
    let (connect_manager_cpu_seconds, connect_threads_cpu) =
        (h.connect_manager_cpu, h.connect_threads_cpu.clone());
    h.stop().await;

    let report = FanoutReport {
        benchmark: "fanout",
        devices: opts.devices,
        broker: opts.broker,
        quick: opts.quick,
        delay_ms: opts.delay.as_millis() as u64,
        poll_ms: opts.poll.as_millis() as u64,
        git_commit: git_commit(),
        machine,
        nofile: opts.nofile,
        provision_ms,
        connect_ms,
        connect_manager_cpu_seconds,
        connect_threads_cpu,
        connect_broker_cpu_seconds,
        phases,
        manager_end,
        fleetsim_end,
        broker_end,
    };
    let stem = match opts.broker {
        BrokerKind::Embedded => format!("fanout-{}", opts.devices),
        other => format!("fanout-{}-{other}", opts.devices),
    };
    let (json, md) = report::write(&opts.out_dir, &stem, &report, &report.markdown())?;
    println!("wrote {} and {}", json.display(), md.display());
    Ok(report)
}

/// The desired version every client has now (they move in lockstep here).
async fn revision_version(admin: &AdminClient) -> Result<u64> {
    let status = admin.status(None).await?;
    Ok(status.iter().map(|c| c.desired_version).min().unwrap_or(0))
}

/// Waits until the manager has every client's `state` report for `version`.
async fn wait_adopted(admin: &AdminClient, opts: &FanoutOptions, version: u64) -> Result<()> {
    let deadline = Instant::now() + opts.converge_timeout;
    loop {
        let status = admin.status(None).await?;
        if status.iter().all(|c| c.adopted_version >= Some(version)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let behind = status
                .iter()
                .filter(|c| c.adopted_version < Some(version))
                .count();
            anyhow::bail!("{behind} devices did not report adopting v{version} in time");
        }
        tokio::time::sleep(opts.poll).await;
    }
}

/// When `c` stored `installed` for at least `version` of the deployment.
pub(crate) fn installed_at(c: &ClientStatus, version: u64) -> Option<u64> {
    c.deployments
        .iter()
        .find(|d| d.deployment_id.as_str() == DEPLOYMENT_ID)
        .filter(|d| {
            d.state == Some(DeploymentState::Installed)
                && d.reported_manifest_version.is_some_and(|v| v >= version)
        })
        .and_then(|d| d.updated_at)
}

/// The processes measured in a phase.
#[derive(Debug, Clone, Copy)]
struct Pids {
    manager: u32,
    /// Mosquitto, when it is the broker.
    broker: Option<u32>,
}

async fn run_phase(
    admin: &AdminClient,
    fleet: &mut SimFleet,
    opts: &FanoutOptions,
    pids: Pids,
    name: &str,
    prefix: &str,
    doc: String,
) -> Result<Phase> {
    let pid = pids.manager;
    let broker = pids.broker.map(BrokerLoad::start).transpose()?;
    let before = procstat::sample(pid)?;
    let threads_before = procstat::threads_cpu(pid);
    let me_before = procstat::sample(std::process::id())?;
    let hwm_reset = procstat::reset_peak(pid);
    let sampler = Sampler::start(pid, Duration::from_millis(100));
    let t0_ms = margo_manager::store::now_ms();
    let t0 = Instant::now();
    let responses = admin
        .deploy_many(&DeployManyRequest {
            clients: Vec::new(),
            name_prefix: Some(prefix.to_string()),
            documents: vec![doc],
        })
        .await
        .context("deploy to the fleet")?;
    let deploy_call_ms = ms(t0.elapsed());
    let targets: HashMap<ClientId, u64> = responses
        .into_iter()
        .map(|r| (r.client_id, r.manifest_version))
        .collect();
    let devices = targets.len();
    let deadline = t0 + opts.converge_timeout;
    let mut done: HashMap<ClientId, u64> = HashMap::new();
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(opts.poll).await;
        fleet.check_alive()?;
        let status = admin.status(None).await.context("manager status")?;
        for c in &status {
            if done.contains_key(&c.client_id) {
                continue;
            }
            if let Some(v) = targets.get(&c.client_id) {
                if let Some(at) = installed_at(c, *v) {
                    done.insert(c.client_id.clone(), at);
                }
            }
        }
        if last_print.elapsed() >= Duration::from_secs(1) || done.len() == devices {
            println!(
                "[{:>6.1}s] {name}: {}/{devices} devices report installed (stored at the manager)",
                t0.elapsed().as_secs_f64(),
                done.len()
            );
            last_print = Instant::now();
        }
        if done.len() == devices || Instant::now() >= deadline {
            break;
        }
    }
    let observed_ms = ms(t0.elapsed());
    let after = procstat::sample(pid)?;
    let threads_after = procstat::threads_cpu(pid);
    let me_after = procstat::sample(std::process::id())?;
    let peak_sampled = sampler.finish().await;
    let broker = match broker {
        Some(b) => Some(b.finish().await?),
        None => None,
    };
    let latencies: Vec<f64> = done
        .values()
        .map(|at| at.saturating_sub(t0_ms) as f64)
        .collect();
    let latency_ms = Percentiles::of(&latencies);
    Ok(Phase {
        name: name.to_string(),
        devices,
        converged: done.len(),
        deploy_call_ms,
        total_ms: latency_ms.max,
        latency_ms,
        observed_ms,
        manager_cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        manager_peak_rss_sampled_bytes: peak_sampled.max(after.rss_bytes),
        manager_hwm_bytes: after.hwm_bytes,
        manager_hwm_reset: hwm_reset,
        fleetsim_cpu_seconds: me_after.cpu_seconds - me_before.cpu_seconds,
        manager_threads_cpu: procstat::threads_delta(&threads_before, &threads_after),
        broker,
    })
}

/// CPU and peak RSS of a process from now until [`BrokerLoad::finish`].
pub(crate) struct BrokerLoad {
    pid: u32,
    before: ProcSample,
    hwm_reset: bool,
    sampler: Sampler,
}

impl BrokerLoad {
    pub(crate) fn start(pid: u32) -> Result<BrokerLoad> {
        Ok(BrokerLoad {
            pid,
            before: procstat::sample(pid)?,
            hwm_reset: procstat::reset_peak(pid),
            sampler: Sampler::start(pid, Duration::from_millis(100)),
        })
    }

    pub(crate) async fn finish(self) -> Result<PhaseLoad> {
        let after = procstat::sample(self.pid)?;
        let sampled = self.sampler.finish().await.max(after.rss_bytes);
        Ok(PhaseLoad {
            cpu_seconds: after.cpu_seconds - self.before.cpu_seconds,
            peak_rss_bytes: if self.hwm_reset {
                sampled.max(after.hwm_bytes)
            } else {
                sampled
            },
        })
    }
}

/// `git rev-parse --short HEAD` of the current directory, if any.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
