//! Reconnect storm: a fleet connected and converged on one deployment, then
//! the broker restarts under it (Mosquitto: stopped and started again on the
//! same port and persistence directory; embedded: the manager process, which
//! holds the broker, stopped and started again on the same data directory
//! and ports). Per device, the time from the restart (SIGTERM to the old
//! broker) until the device is re-synced, which takes all three of:
//!
//! 1. **reconnected**: the agent counted a new ConnAck (`connects` went up)
//!    and says it is connected;
//! 2. **manifest confirmed at the device**: through that new session the
//!    agent received downlink messages again (`received` went up: the
//!    retained manifest on its re-subscription, and the manager's
//!    republication after its own reconnect) and it holds the manifest
//!    version the manager wants it to have;
//! 3. **heard by the manager**: the manager stored the device's `online`
//!    presence with a `last_seen` after the restart (its store stamps it in
//!    the ingest batch that commits it). Mosquitto sends every client's will
//!    (`offline`, retained) when it shuts down, so a retained `online` seen
//!    after the restart is the device's new one, not a replay.
//!
//! Device-side times are observed by polling every agent's counters every
//! `device_poll` (they are as precise as that); the manager-side time is the
//! stored timestamp. Benchmarks report; they never fail on timings.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use margo_agent::stats::AgentStats;
use margo_agent::AgentSnapshot;
use margo_manager::admin::{AdminClient, DeployManyRequest};
use margo_manager::store::now_ms;
use margo_schemas::ids::ClientId;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::fanout::{default_poll, git_commit, installed_at, BrokerLoad, PhaseLoad, DEPLOYMENT_ID};
use super::harness::{ms, BrokerKind, BrokerRestart, Harness};
use super::machine::Machine;
use super::procstat::{self, ProcSample};
use super::report::{self, mib, Percentiles};
use super::rlimit::NofileLimit;
use super::sim::{agent_config, FleetSpec, SimFleet};
use crate::fleet::deployment_yaml;

/// What `margo-fleetsim bench storm` was asked to do.
#[derive(Debug, Clone)]
pub struct StormOptions {
    pub devices: usize,
    pub broker: BrokerKind,
    /// Simulated time of one component action.
    pub delay: Duration,
    pub start_batch: usize,
    /// Each agent's `connect_timeout` (one connection attempt).
    pub agent_connect_timeout: Duration,
    /// How often the manager's status is read (this costs the manager CPU).
    pub poll: Duration,
    /// How often every agent's counters are read.
    pub device_poll: Duration,
    /// Give up waiting for the initial deployment after this.
    pub converge_timeout: Duration,
    /// Devices not re-synced this long after the restart are left behind.
    pub resync_timeout: Duration,
    pub out_dir: PathBuf,
    pub work_dir: Option<PathBuf>,
    /// `RUST_LOG` of the manager process.
    pub manager_log: String,
    pub quick: bool,
    pub nofile: Option<NofileLimit>,
}

impl StormOptions {
    /// Defaults for `devices` devices on `broker` writing to `out_dir`.
    pub fn new(devices: usize, broker: BrokerKind, out_dir: PathBuf) -> StormOptions {
        StormOptions {
            devices,
            broker,
            delay: Duration::from_millis(10),
            start_batch: 50,
            agent_connect_timeout: margo_agent::AgentConfig::default().connect_timeout,
            poll: default_poll(devices),
            device_poll: Duration::from_millis(50),
            converge_timeout: Duration::from_secs(300),
            resync_timeout: Duration::from_secs(300),
            out_dir,
            work_dir: None,
            manager_log: "warn".into(),
            quick: false,
            nofile: None,
        }
    }
}

/// Cumulative device counts at one second after the restart.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimelinePoint {
    pub second: u64,
    pub reconnected: usize,
    pub confirmed: usize,
    pub heard: usize,
    pub resynced: usize,
}

/// The agents' own counters summed over the fleet, during the storm.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AgentCounters {
    /// Successful connections (ConnAcks).
    pub connects: u64,
    /// Failed connection attempts and lost connections.
    pub connection_errors: u64,
    /// `sync` requests (an agent asks after its broker session was lost).
    pub syncs: u64,
    /// Downlink publishes received.
    pub received: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub benchmark: &'static str,
    pub devices: usize,
    pub broker: BrokerKind,
    pub quick: bool,
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub nofile: Option<NofileLimit>,
    /// The simulated agents' reconnect backoff: first delay and cap (each
    /// delay is drawn uniformly from [base/2, base], base doubling per attempt).
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// The simulated agents' `connect_timeout`.
    pub connect_timeout_ms: u64,
    pub device_poll_ms: u64,
    pub poll_ms: u64,
    pub provision_ms: f64,
    pub connect_ms: f64,
    /// Deploy call → every device `installed` and its `state` stored.
    pub converge_ms: f64,
    pub restart: BrokerRestart,
    /// Devices re-synced (all three conditions) within the timeout.
    pub resynced: usize,
    /// Devices not re-synced at the timeout (0 to count as converged).
    pub left_behind: usize,
    /// Per device, from the restart: reconnected; manifest confirmed at the
    /// device; heard by the manager; re-synced (the last of the three).
    pub reconnected_ms: Percentiles,
    pub confirmed_ms: Percentiles,
    pub heard_ms: Percentiles,
    pub resync_ms: Percentiles,
    /// The manager process from the restart to the end (embedded: the new
    /// process since its start, broker included).
    pub manager_cpu_seconds: f64,
    pub manager_peak_rss_bytes: u64,
    pub manager_threads_cpu: Vec<(String, f64)>,
    /// Mosquitto from its start again to the end (Mosquitto only).
    pub mosquitto: Option<PhaseLoad>,
    /// This process (the simulated devices) from the restart to the end.
    pub fleetsim_cpu_seconds: f64,
    pub agents: AgentCounters,
    /// Cumulative counts per second after the restart.
    pub timeline: Vec<TimelinePoint>,
    pub fleetsim_end: ProcSample,
}

impl StormReport {
    /// Whether every device re-synced.
    pub fn converged(&self) -> bool {
        self.left_behind == 0 && self.resynced == self.devices
    }

    pub fn markdown(&self) -> String {
        let row = |name: &str, p: &Percentiles| {
            format!(
                "| {name} | {}/{} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |\n",
                p.count, self.devices, p.p50, p.p95, p.p99, p.max
            )
        };
        let mut s = format!(
            "### Reconnect storm, {} devices, {} broker{}\n\n\
             Machine: {}. Commit {}. Agents' reconnect backoff {} ms doubling to {} ms, \
             each delay uniform in [base/2, base]; connection attempts time out after {} ms. Agents read every {} ms, manager status every {} ms.\n\n\
             Setup: bulk provisioning {:.1} s, connecting all devices {:.1} s, \
             converging on one deployment {:.1} s.\n\n\
             Restart: old broker gone {:.2} s after SIGTERM (clean exit: {}), new one accepting {:.2} s after it.\n\n\
             **{} of {} devices re-synced, {} left behind**; times from the restart (SIGTERM):\n\n\
             | per device | devices | p50 | p95 | p99 | max |\n|---|---|---|---|---|---|\n",
            self.devices,
            self.broker,
            if self.quick { " (quick)" } else { "" },
            self.machine.markdown(),
            self.git_commit.as_deref().unwrap_or("unknown"),
            self.reconnect_min_ms,
            self.reconnect_max_ms,
            self.connect_timeout_ms,
            self.device_poll_ms,
            self.poll_ms,
            self.provision_ms / 1000.0,
            self.connect_ms / 1000.0,
            self.converge_ms / 1000.0,
            self.restart.stop_ms / 1000.0,
            self.restart.clean_stop,
            self.restart.down_ms / 1000.0,
            self.resynced,
            self.devices,
            self.left_behind,
        );
        s.push_str(&row("reconnected", &self.reconnected_ms));
        s.push_str(&row("manifest confirmed at the device", &self.confirmed_ms));
        s.push_str(&row("heard by the manager", &self.heard_ms));
        s.push_str(&row("**re-synced** (last of the three)", &self.resync_ms));
        s.push_str(&format!(
            "\nLoad from the restart to the last device re-synced: manager CPU {:.2} s, peak RSS {}{}; \
             fleetsim (the simulated devices) CPU {:.2} s.\n\n",
            self.manager_cpu_seconds,
            mib(self.manager_peak_rss_bytes),
            match &self.mosquitto {
                Some(b) => format!(
                    "; Mosquitto CPU {:.2} s, peak RSS {}",
                    b.cpu_seconds,
                    mib(b.peak_rss_bytes)
                ),
                None => " (broker included)".into(),
            },
            self.fleetsim_cpu_seconds,
        ));
        s.push_str(&format!(
            "Manager CPU by thread: {}.\n\n",
            self.manager_threads_cpu
                .iter()
                .take(6)
                .map(|(n, t)| format!("{n} {t:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        s.push_str(&format!(
            "Agents during the storm: {} connections, {} failed attempts or lost connections, \
             {} sync requests (session lost), {} downlink messages received.\n\n",
            self.agents.connects,
            self.agents.connection_errors,
            self.agents.syncs,
            self.agents.received
        ));
        s.push_str("Timeline (cumulative devices, seconds after the restart):\n\n| s | reconnected | confirmed | heard | re-synced |\n|---|---|---|---|---|\n");
        for p in &self.timeline {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                p.second, p.reconnected, p.confirmed, p.heard, p.resynced
            ));
        }
        s
    }
}

/// Per device: what it was before the restart and when it got where.
#[derive(Debug, Clone, Default)]
struct Progress {
    reconnected_ms: Option<u64>,
    confirmed_ms: Option<u64>,
    heard_ms: Option<u64>,
}

impl Progress {
    fn resynced_ms(&self) -> Option<u64> {
        Some(
            self.reconnected_ms?
                .max(self.confirmed_ms?)
                .max(self.heard_ms?),
        )
    }
}

/// What the device watcher reads of one agent.
struct Watched {
    snapshots: watch::Receiver<AgentSnapshot>,
    stats: Arc<AgentStats>,
    connects: u64,
    received: u64,
    desired: u64,
}

/// Runs the benchmark; writes `storm-<N>-<broker>.json` and `.md` to
/// `out_dir`. A fleet that does not converge before the restart is an error;
/// devices left behind after it are reported, not an error.
pub async fn run(opts: &StormOptions) -> Result<StormReport> {
    let machine = Machine::read();
    let spec = FleetSpec {
        prefix: "sim-".into(),
        devices: opts.devices,
        delay: opts.delay,
        start_batch: opts.start_batch,
        connect_timeout: Duration::from_secs(60 + opts.devices as u64 / 20),
        agent_connect_timeout: opts.agent_connect_timeout,
    };
    let config = agent_config(&spec);
    let mut h = Harness::start_with(
        &spec,
        opts.work_dir.as_deref(),
        &opts.manager_log,
        opts.broker,
    )
    .await?;
    let (converge_ms, desired) = converge(&h.admin, &mut h.fleet, opts, &spec.prefix).await?;
    let result = storm(&mut h, opts, &desired).await;
    let (provision_ms, connect_ms) = (h.provision_ms, h.connect_ms);
    h.stop().await;
    let measured = result?;

    let report = StormReport {
        benchmark: "storm",
        devices: opts.devices,
        broker: opts.broker,
        quick: opts.quick,
        git_commit: git_commit(),
        machine,
        nofile: opts.nofile,
        reconnect_min_ms: config.reconnect_min.as_millis() as u64,
        reconnect_max_ms: config.reconnect_max.as_millis() as u64,
        connect_timeout_ms: config.connect_timeout.as_millis() as u64,
        device_poll_ms: opts.device_poll.as_millis() as u64,
        poll_ms: opts.poll.as_millis() as u64,
        provision_ms,
        connect_ms,
        converge_ms,
        restart: measured.restart,
        resynced: measured.resync.len(),
        left_behind: opts.devices - measured.resync.len(),
        reconnected_ms: Percentiles::of(&measured.reconnected),
        confirmed_ms: Percentiles::of(&measured.confirmed),
        heard_ms: Percentiles::of(&measured.heard),
        resync_ms: Percentiles::of(&measured.resync),
        manager_cpu_seconds: measured.manager_cpu_seconds,
        manager_peak_rss_bytes: measured.manager_peak_rss_bytes,
        manager_threads_cpu: measured.manager_threads_cpu,
        mosquitto: measured.broker,
        fleetsim_cpu_seconds: measured.fleetsim_cpu_seconds,
        agents: measured.agents,
        timeline: measured.timeline,
        fleetsim_end: procstat::sample(std::process::id())?,
    };
    let stem = format!("storm-{}-{}", opts.devices, opts.broker);
    let (json, md) = report::write(&opts.out_dir, &stem, &report, &report.markdown())?;
    println!("wrote {} and {}", json.display(), md.display());
    Ok(report)
}

/// Deploys one deployment to every device and waits until each has it
/// installed and its `state` (adopted version) stored, and its outbox is
/// empty: a quiet fleet. Returns the time taken and each device's version.
async fn converge(
    admin: &AdminClient,
    fleet: &mut SimFleet,
    opts: &StormOptions,
    prefix: &str,
) -> Result<(f64, HashMap<ClientId, u64>)> {
    let t0 = Instant::now();
    let doc = deployment_yaml(DEPLOYMENT_ID, "fleet-app", &["app"], 1);
    let responses = admin
        .deploy_many(&DeployManyRequest {
            clients: Vec::new(),
            name_prefix: Some(prefix.to_string()),
            documents: vec![doc],
        })
        .await
        .context("deploy to the fleet")?;
    let desired: HashMap<ClientId, u64> = responses
        .into_iter()
        .map(|r| (r.client_id, r.manifest_version))
        .collect();
    let deadline = t0 + opts.converge_timeout;
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(opts.poll).await;
        fleet.check_alive()?;
        let status = admin.status(None).await.context("manager status")?;
        let done = status
            .iter()
            .filter(|c| {
                desired
                    .get(&c.client_id)
                    .is_some_and(|v| installed_at(c, *v).is_some() && c.adopted_version >= Some(*v))
            })
            .count();
        let quiet = fleet
            .devices
            .iter()
            .all(|d| d.handle.snapshots.borrow().outbox_len == 0);
        if last_print.elapsed() >= Duration::from_secs(1) || done == desired.len() {
            println!(
                "[{:>6.1}s] converging: {done}/{} devices installed and adopted",
                t0.elapsed().as_secs_f64(),
                desired.len()
            );
            last_print = Instant::now();
        }
        if done == desired.len() && quiet {
            return Ok((ms(t0.elapsed()), desired));
        }
        if Instant::now() >= deadline {
            bail!(
                "only {done} of {} devices converged within {:?}; no storm on an unconverged fleet",
                desired.len(),
                opts.converge_timeout
            );
        }
    }
}

/// What [`storm`] measured.
struct Measured {
    restart: BrokerRestart,
    reconnected: Vec<f64>,
    confirmed: Vec<f64>,
    heard: Vec<f64>,
    resync: Vec<f64>,
    manager_cpu_seconds: f64,
    manager_peak_rss_bytes: u64,
    manager_threads_cpu: Vec<(String, f64)>,
    broker: Option<PhaseLoad>,
    fleetsim_cpu_seconds: f64,
    agents: AgentCounters,
    timeline: Vec<TimelinePoint>,
}

fn counters(stats: &AgentStats) -> AgentCounters {
    let s = stats.snapshot();
    AgentCounters {
        connects: s.connects,
        connection_errors: s.connection_errors,
        syncs: s.syncs,
        received: s.received,
    }
}

fn sum_counters(fleet: &SimFleet) -> AgentCounters {
    fleet
        .devices
        .iter()
        .map(|d| counters(&d.handle.stats))
        .fold(AgentCounters::default(), |a, c| AgentCounters {
            connects: a.connects + c.connects,
            connection_errors: a.connection_errors + c.connection_errors,
            syncs: a.syncs + c.syncs,
            received: a.received + c.received,
        })
}

/// Restarts the broker under the converged fleet and follows every device
/// until it is re-synced or `resync_timeout` passes.
async fn storm(
    h: &mut Harness,
    opts: &StormOptions,
    desired: &HashMap<ClientId, u64>,
) -> Result<Measured> {
    let n = h.fleet.devices.len();
    let index: HashMap<ClientId, usize> = h
        .fleet
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.client_id.clone(), i))
        .collect();
    let watched: Vec<Watched> = h
        .fleet
        .devices
        .iter()
        .map(|d| {
            let c = counters(&d.handle.stats);
            Watched {
                snapshots: d.handle.snapshots.clone(),
                stats: Arc::clone(&d.handle.stats),
                connects: c.connects,
                received: c.received,
                desired: desired.get(&d.client_id).copied().unwrap_or(0),
            }
        })
        .collect();
    let agents_before = sum_counters(&h.fleet);
    let progress = Arc::new(Mutex::new(vec![Progress::default(); n]));
    let reconnected = Arc::new(AtomicUsize::new(0));
    let confirmed = Arc::new(AtomicUsize::new(0));

    let me_before = procstat::sample(std::process::id())?;
    let manager_before = procstat::sample(h.pid)?;
    let threads_before = procstat::threads_cpu(h.pid);
    let stop_ms = now_ms();
    let t0 = Instant::now();

    // Watch the agents from before the restart, so no reconnect is seen late.
    let stop_watch = CancellationToken::new();
    let watcher = tokio::spawn(watch_devices(
        watched,
        Arc::clone(&progress),
        Arc::clone(&reconnected),
        Arc::clone(&confirmed),
        opts.device_poll,
        stop_watch.clone(),
    ));

    println!("restarting the {} broker under {n} devices", h.broker);
    let restart = tokio::task::block_in_place(|| h.restart_broker())?;
    println!(
        "[{:>6.1}s] broker back (old one gone after {:.2} s)",
        t0.elapsed().as_secs_f64(),
        restart.stop_ms / 1000.0
    );
    // Embedded: a new manager process, measured from its start (its VmHWM
    // is its peak). Mosquitto: the same manager, its peak reset now.
    let embedded = h.broker == BrokerKind::Embedded;
    let manager_pid = h.pid;
    let manager_hwm_reset = !embedded && procstat::reset_peak(manager_pid);
    let manager_sampler = procstat::Sampler::start(manager_pid, Duration::from_millis(100));
    let broker_load = h.broker_pid().map(BrokerLoad::start).transpose()?;

    let deadline = t0 + opts.resync_timeout;
    let mut heard = 0usize;
    let mut last_print = Instant::now();
    let mut last_reconnected = 0usize;
    loop {
        h.fleet.check_alive()?;
        match h.admin.status(None).await {
            Ok(status) => {
                let mut p = progress.lock().unwrap_or_else(PoisonError::into_inner);
                for c in status {
                    let Some(&i) = index.get(&c.client_id) else {
                        continue;
                    };
                    if p[i].heard_ms.is_none() && c.presence == "online" {
                        if let Some(seen) = c.last_seen.filter(|s| *s >= stop_ms) {
                            p[i].heard_ms = Some(seen);
                            heard += 1;
                        }
                    }
                }
            }
            // The embedded manager may still be starting its admin socket.
            Err(error) => tracing::debug!(%error, "manager status during the storm"),
        }
        let done = {
            let p = progress.lock().unwrap_or_else(PoisonError::into_inner);
            p.iter().filter(|d| d.resynced_ms().is_some()).count()
        };
        if last_print.elapsed() >= Duration::from_secs(1) || done == n {
            let r = reconnected.load(Ordering::Relaxed);
            println!(
                "[{:>6.1}s] reconnected {r}/{n} (+{}), manifest confirmed {}/{n}, heard by the manager {heard}/{n}, re-synced {done}/{n}",
                t0.elapsed().as_secs_f64(),
                r - last_reconnected,
                confirmed.load(Ordering::Relaxed),
            );
            last_reconnected = r;
            last_print = Instant::now();
        }
        if done == n || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(opts.poll).await;
    }
    stop_watch.cancel();
    watcher.await.context("device watcher")?;

    let manager_after = procstat::sample(manager_pid)?;
    let manager_sampled = manager_sampler.finish().await;
    let broker = match broker_load {
        Some(b) => Some(b.finish().await?),
        None => None,
    };
    let me_after = procstat::sample(std::process::id())?;
    let agents_after = sum_counters(&h.fleet);
    let (manager_cpu_seconds, manager_threads_cpu) = if embedded {
        (
            manager_after.cpu_seconds,
            procstat::threads_delta(&[], &procstat::threads_cpu(manager_pid)),
        )
    } else {
        (
            manager_after.cpu_seconds - manager_before.cpu_seconds,
            procstat::threads_delta(&threads_before, &procstat::threads_cpu(manager_pid)),
        )
    };
    let manager_peak_rss_bytes = if embedded || manager_hwm_reset {
        manager_sampled.max(manager_after.hwm_bytes)
    } else {
        manager_sampled
    };

    let progress = progress.lock().unwrap_or_else(PoisonError::into_inner);
    let since = |t: Option<u64>| t.map(|t| t.saturating_sub(stop_ms) as f64);
    let collect = |f: &dyn Fn(&Progress) -> Option<u64>| -> Vec<f64> {
        progress.iter().filter_map(|p| since(f(p))).collect()
    };
    let reconnected_v = collect(&|p| p.reconnected_ms);
    let confirmed_v = collect(&|p| p.confirmed_ms);
    let heard_v = collect(&|p| p.heard_ms);
    let resync_v = collect(&Progress::resynced_ms);
    let last = [&reconnected_v, &confirmed_v, &heard_v, &resync_v]
        .iter()
        .flat_map(|v| v.iter())
        .fold(0.0f64, |a, b| a.max(*b));
    let count_by =
        |v: &[f64], second: u64| v.iter().filter(|t| **t <= second as f64 * 1000.0).count();
    let timeline = (0..=(last / 1000.0).ceil() as u64)
        .map(|second| TimelinePoint {
            second,
            reconnected: count_by(&reconnected_v, second),
            confirmed: count_by(&confirmed_v, second),
            heard: count_by(&heard_v, second),
            resynced: count_by(&resync_v, second),
        })
        .collect();

    Ok(Measured {
        restart,
        reconnected: reconnected_v,
        confirmed: confirmed_v,
        heard: heard_v,
        resync: resync_v,
        manager_cpu_seconds,
        manager_peak_rss_bytes,
        manager_threads_cpu,
        broker,
        fleetsim_cpu_seconds: me_after.cpu_seconds - me_before.cpu_seconds,
        agents: AgentCounters {
            connects: agents_after.connects - agents_before.connects,
            connection_errors: agents_after.connection_errors - agents_before.connection_errors,
            syncs: agents_after.syncs - agents_before.syncs,
            received: agents_after.received - agents_before.received,
        },
        timeline,
    })
}

/// Reads every agent's counters every `every` and stamps when it
/// reconnected and when it confirmed its manifest through the new session.
async fn watch_devices(
    watched: Vec<Watched>,
    progress: Arc<Mutex<Vec<Progress>>>,
    reconnected: Arc<AtomicUsize>,
    confirmed: Arc<AtomicUsize>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let mut p = progress.lock().unwrap_or_else(PoisonError::into_inner);
        for (w, d) in watched.iter().zip(p.iter_mut()) {
            if d.confirmed_ms.is_some() {
                continue;
            }
            let stats = w.stats.snapshot();
            if d.reconnected_ms.is_none() {
                if stats.connects > w.connects && w.snapshots.borrow().connected {
                    d.reconnected_ms = Some(now);
                    reconnected.fetch_add(1, Ordering::Relaxed);
                } else {
                    continue;
                }
            }
            if stats.received > w.received
                && w.snapshots.borrow().accepted_manifest_version >= w.desired
            {
                d.confirmed_ms = Some(now);
                confirmed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
