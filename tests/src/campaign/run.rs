//! Carrying out a campaign: start the fleet, play the schedule, let it
//! settle, stop everything, judge.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use margo_testkit::mosquitto::Mosquitto;
use tokio::task::block_in_place;

use super::invariants::{self, Verdict};
use super::schedule::{Action, Schedule};
use super::{CampaignOptions, CampaignReport, DEPLOYMENT};
use crate::faultproxy::{FaultCounts, FaultProxy};
use crate::fleet::{
    client_status, deployment_yaml, uplink_seqs, write_file, AgentProc, ManagerProc,
};
use crate::fleetsim::harness::BrokerKind;

/// Every device's name starts with this (`deploy-many --prefix`).
const PREFIX: &str = "camp-";
/// How often the end phase polls the manager.
const POLL: Duration = Duration::from_secs(1);
/// How often a line of progress is printed while the schedule plays.
const PROGRESS: Duration = Duration::from_secs(60);

/// One device: its agent process, its link and what its runtime recorded.
struct Device {
    name: String,
    agent: AgentProc,
    proxy: FaultProxy,
    runtime: Runtime,
    up: bool,
}

/// The exec runtime program of one device: it records every action it is
/// asked to do (`start …` before, `done …` after) in its own log, which the
/// agent never writes.
struct Runtime {
    script: PathBuf,
    log: PathBuf,
    pids: PathBuf,
}

impl Runtime {
    fn create(dir: &Path) -> Result<Runtime> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        let (script, log, pids) = (
            dir.join("runtime.sh"),
            dir.join("runtime.log"),
            dir.join("pids"),
        );
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 echo $$ >> {pids:?}\n\
                 echo \"start $1 $MARGO_DEPLOYMENT_ID $(date +%s.%N) $MARGO_PARAMETERS\" >> {log:?}\n\
                 sleep 0.2\n\
                 echo \"done $1 $MARGO_DEPLOYMENT_ID $(date +%s.%N) $MARGO_PARAMETERS\" >> {log:?}\n",
                pids = pids.display().to_string(),
                log = log.display().to_string(),
            ),
        )?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        Ok(Runtime { script, log, pids })
    }

    fn agent_toml(&self) -> String {
        format!(
            "[runtime]\nadapter = \"exec\"\n[runtime.exec]\nprogram = {:?}\ntimeout = \"60s\"\n",
            self.script.display().to_string()
        )
    }

    /// A device that loses power loses its running runtime actions too:
    /// SIGKILL the runtime programs of a killed agent that still run.
    fn kill_running(&self) {
        let script = self.script.display().to_string();
        for pid in std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
        {
            let pid = pid.trim();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&script) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid])
                    .status();
            }
        }
    }

    fn lines(&self) -> Vec<invariants::RuntimeLine> {
        invariants::parse_runtime_log(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

/// The manager and, in external mode, Mosquitto.
struct Brokers {
    manager: ManagerProc,
    mosquitto: Option<Mosquitto>,
    /// Where the devices' proxies forward to.
    upstream: SocketAddr,
}

fn start_brokers(dir: &Path, broker: BrokerKind) -> Result<Brokers> {
    match broker {
        BrokerKind::Embedded => {
            let manager = ManagerProc::start(dir, "")?;
            let upstream = manager.gateway.context("the manager reported no gateway")?;
            Ok(Brokers {
                manager,
                mosquitto: None,
                upstream,
            })
        }
        BrokerKind::Mosquitto => {
            let port = crate::free_port();
            let manager = ManagerProc::start(
                dir,
                &format!("[broker]\nmode = \"external\"\nurl = \"mqtts://localhost:{port}\"\n"),
            )?;
            let pki = manager.data_dir.join("pki");
            let mosquitto = Mosquitto::start_on(
                port,
                &dir.join("mosquitto"),
                &pki.join("ca.crt"),
                &pki.join("gateway.crt"),
                &pki.join("gateway.key"),
            )?;
            Ok(Brokers {
                manager,
                mosquitto: Some(mosquitto),
                upstream: SocketAddr::from(([127, 0, 0, 1], port)),
            })
        }
    }
}

/// Runs the campaign of `opts` and judges it. An error means the campaign
/// itself could not run (a process would not start); a broken invariant is
/// a FAIL in the report.
pub async fn run(opts: &CampaignOptions) -> Result<CampaignReport> {
    let started = Instant::now();
    let schedule = Schedule::draw(&opts.schedule_spec());
    println!(
        "campaign seed={} ({} steps); replay: {}",
        opts.seed,
        schedule.events.len(),
        opts.replay_command()
    );
    let tmp = match &opts.work_dir {
        Some(parent) => {
            std::fs::create_dir_all(parent)?;
            tempfile::Builder::new()
                .prefix("margo-campaign-")
                .tempdir_in(parent)?
        }
        None => tempfile::Builder::new()
            .prefix("margo-campaign-")
            .tempdir()?,
    };
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("schedule.txt"), schedule.to_string())?;
    let outcome = match carry_out(opts, &dir, &schedule).await {
        Ok(o) => o,
        Err(e) => {
            let kept = tmp.keep();
            return Err(e.context(format!(
                "campaign seed {}: logs in {}",
                opts.seed,
                kept.display()
            )));
        }
    };
    let mut report = CampaignReport {
        options: opts.clone(),
        executed: outcome.executed,
        link: outcome.link,
        converged_after: outcome.converged_after,
        final_rollout: outcome.final_rollout.map(|t| super::Spread::of(&t)),
        verdicts: outcome.verdicts,
        dir: dir.clone(),
        elapsed: started.elapsed(),
    };
    if !report.passed() || opts.keep {
        report.dir = tmp.keep();
    }
    Ok(report)
}

/// What [`carry_out`] returns for the report.
struct Outcome {
    executed: BTreeMap<&'static str, usize>,
    link: FaultCounts,
    converged_after: Option<Duration>,
    final_rollout: Option<Vec<Duration>>,
    verdicts: Vec<Verdict>,
}

/// Starts the fleet in `dir`, plays `schedule`, settles, stops and judges.
async fn carry_out(opts: &CampaignOptions, dir: &Path, schedule: &Schedule) -> Result<Outcome> {
    let dir = dir.to_path_buf();

    let mut brokers = block_in_place(|| start_brokers(&dir, opts.broker))?;
    let mut devices = Vec::with_capacity(opts.devices);
    for i in 0..opts.devices {
        devices.push(start_device(&dir, &brokers, i).await?);
    }
    if opts.verbose {
        println!("{} devices started", devices.len());
    }

    // The schedule.
    let mut executed: BTreeMap<&'static str, usize> = BTreeMap::new();
    let t0 = tokio::time::Instant::now();
    let mut last_progress = Instant::now();
    let mut final_deploy = None;
    for (at, action) in &schedule.events {
        tokio::time::sleep_until(t0 + *at).await;
        if opts.verbose {
            println!(
                "  +{:>8.3}s (due {:>8.3}s) {action}",
                t0.elapsed().as_secs_f64(),
                at.as_secs_f64()
            );
        }
        step(&dir, &mut brokers, &mut devices, *action).await?;
        if *action
            == (Action::Deploy {
                revision: opts.versions,
            })
        {
            final_deploy = Some(unix_now());
        }
        *executed.entry(action.kind().as_str()).or_insert(0) += 1;
        if last_progress.elapsed() >= PROGRESS {
            last_progress = Instant::now();
            let done: usize = executed.values().sum();
            println!(
                "  +{:>5.0}s {done}/{} steps, {} manager kills, {} agents up",
                t0.elapsed().as_secs_f64(),
                schedule.events.len(),
                executed.get("manager-kill").unwrap_or(&0),
                devices.iter().filter(|d| d.up).count()
            );
        }
    }
    let faults_over = Instant::now();
    println!(
        "faults over after {:.0} s; waiting for the fleet to converge",
        t0.elapsed().as_secs_f64()
    );

    // Settle: clean links, every agent running, then wait for the fleet.
    for d in &mut devices {
        d.proxy.heal();
        if !d.up {
            block_in_place(|| d.agent.restart())?;
            d.up = true;
        }
    }
    let converged = wait_converged(
        &brokers.manager,
        &devices,
        opts.versions,
        opts.converge_timeout,
    )
    .await;
    let converged_after = converged.is_ok().then(|| faults_over.elapsed());
    let final_rollout = final_deploy.map(|t| rollout_times(&devices, opts.versions, t));
    let acked = if converged.is_ok() {
        wait_acked(&brokers.manager, &devices, opts.converge_timeout).await
    } else {
        Err(anyhow::anyhow!(
            "not waited for: the fleet did not converge"
        ))
    };

    // Stop everything, then judge from what is on disk: half the agents
    // lose power (SIGKILL), so their stores are opened after a crash too;
    // the others and the manager stop on SIGTERM.
    let mut unclean = Vec::new();
    for (i, d) in devices.iter_mut().enumerate() {
        if i % 2 == 1 {
            block_in_place(|| d.agent.kill());
        } else if !block_in_place(|| d.agent.stop()) {
            unclean.push(d.name.clone());
        }
    }
    if !block_in_place(|| brokers.manager.proc.stop(Duration::from_secs(30))) {
        unclean.push("manager".into());
    }
    if let Some(m) = brokers.mosquitto.as_mut() {
        block_in_place(|| m.stop(Duration::from_secs(30)));
    }
    let link = devices.iter().fold(FaultCounts::default(), |a, d| {
        let c = d.proxy.counts();
        FaultCounts {
            latency: a.latency + c.latency,
            bandwidth: a.bandwidth + c.bandwidth,
            cut: a.cut + c.cut,
            reset: a.reset + c.reset,
            half_open: a.half_open + c.half_open,
            connections_broken: a.connections_broken + c.connections_broken,
        }
    });

    let mut verdicts = vec![converged_verdict(&converged, &devices, opts.versions)];
    verdicts.extend(judge_stores(&brokers.manager, &devices, &acked));
    verdicts.push(monotonic_verdict(&devices));
    let panics = invariants::panics(std::slice::from_ref(&dir));
    verdicts.push(Verdict::from_failures(
        "no panic",
        format!(
            "no panic in any log{}",
            if unclean.is_empty() {
                String::new()
            } else {
                format!(" (not stopped cleanly on SIGTERM: {unclean:?})")
            }
        ),
        &panics,
    ));

    drop(devices);
    Ok(Outcome {
        executed,
        link,
        converged_after,
        final_rollout,
        verdicts,
    })
}

async fn start_device(dir: &Path, brokers: &Brokers, i: usize) -> Result<Device> {
    let name = format!("{PREFIX}{i}");
    let proxy = FaultProxy::start(brokers.upstream).await?;
    let url = format!("mqtts://localhost:{}", proxy.addr.port());
    let runtime = Runtime::create(&dir.join("runtime").join(&name))?;
    let agent = block_in_place(|| {
        let bundle =
            brokers
                .manager
                .provision(&name, &dir.join(format!("{name}-identity")), Some(&url))?;
        AgentProc::start(dir, &name, &bundle, &runtime.agent_toml())
    })?;
    Ok(Device {
        name,
        agent,
        proxy,
        runtime,
        up: true,
    })
}

/// Carries out one step. Kills of the manager and of Mosquitto include
/// their downtime and restart (the steps due meanwhile wait).
async fn step(
    dir: &Path,
    brokers: &mut Brokers,
    devices: &mut [Device],
    action: Action,
) -> Result<()> {
    match action {
        Action::Deploy { revision } => {
            let file = write_file(
                &dir.join("yaml"),
                &format!("v{revision}.yaml"),
                &deployment_yaml(DEPLOYMENT, "campaign", &["app"], revision),
            )?;
            // Deploying the same documents again changes nothing, so a
            // retry after an error is safe.
            let mut last = None;
            for _ in 0..5 {
                match block_in_place(|| {
                    brokers
                        .manager
                        .ctl(&["deploy-many", "--prefix", PREFIX, &file])
                }) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if let Some(e) = last {
                return Err(e.context(format!("deploy revision {revision}")));
            }
        }
        Action::KillManager { down } => {
            block_in_place(|| brokers.manager.kill());
            tokio::time::sleep(down).await;
            restart_manager(&mut brokers.manager).await?;
        }
        Action::KillBroker { down } => {
            if let Some(m) = brokers.mosquitto.as_mut() {
                block_in_place(|| m.kill());
                tokio::time::sleep(down).await;
                block_in_place(|| m.restart()).context("restart mosquitto")?;
            }
        }
        Action::KillAgent { device } => {
            if let Some(d) = devices.get_mut(device).filter(|d| d.up) {
                block_in_place(|| {
                    d.agent.kill();
                    d.runtime.kill_running();
                });
                d.up = false;
            }
        }
        Action::StartAgent { device } => {
            if let Some(d) = devices.get_mut(device).filter(|d| !d.up) {
                block_in_place(|| d.agent.restart())
                    .with_context(|| format!("restart agent {}", d.name))?;
                d.up = true;
            }
        }
        Action::Link { device, fault } => {
            if let Some(d) = devices.get(device) {
                d.proxy.inject(fault);
            }
        }
    }
    Ok(())
}

/// A restart that fails (e.g. a port not yet free) is tried again a few times.
async fn restart_manager(manager: &mut ManagerProc) -> Result<()> {
    let mut last = None;
    for _ in 0..5 {
        match block_in_place(|| manager.restart()) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
        .context("restart the manager"))
}

/// Seconds since the Unix epoch (the runtime programs' `date +%s.%N`).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// For each device, from the deploy of the final revision (`deployed`,
/// Unix seconds) to its runtime's first `done` of that revision.
fn rollout_times(devices: &[Device], versions: u32, deployed: f64) -> Vec<Duration> {
    devices
        .iter()
        .filter_map(|d| {
            d.runtime
                .lines()
                .iter()
                .find(|l| {
                    l.phase == "done"
                        && l.deployment == DEPLOYMENT
                        && l.revision == Some(u64::from(versions))
                })
                .and_then(|l| l.at)
                .map(|at| Duration::from_secs_f64((at - deployed).max(0.0)))
        })
        .collect()
}

/// Why a device is not (yet) at the final version, or None when it is.
fn lagging(status: &serde_json::Value, device: &Device, versions: u32) -> Option<String> {
    let Some(c) = client_status(status, &device.name) else {
        return Some(format!("{}: not in the status", device.name));
    };
    let desired = c["desiredVersion"].as_u64().unwrap_or(0);
    let adopted = c["adoptedVersion"].as_u64().unwrap_or(0);
    let installed = c["deployments"].as_array().is_some_and(|ds| {
        ds.iter().any(|d| {
            d["deploymentId"].as_str() == Some(DEPLOYMENT)
                && d["state"].as_str() == Some("installed")
        })
    });
    let done = invariants::applied_revisions(&device.runtime.lines(), DEPLOYMENT, "done");
    let last = done.last().copied().unwrap_or(0);
    (desired == 0 || adopted != desired || !installed || last != u64::from(versions)).then(|| {
        format!(
            "{}: desired v{desired}, adopted v{adopted}, installed {installed}, runtime at revision {last}",
            device.name
        )
    })
}

async fn wait_converged(
    manager: &ManagerProc,
    devices: &[Device],
    versions: u32,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let behind: Vec<String> = match block_in_place(|| manager.status()) {
            Ok(status) => devices
                .iter()
                .filter_map(|d| lagging(&status, d, versions))
                .collect(),
            Err(e) => vec![format!("status: {e:#}")],
        };
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} device(s) not at revision {versions} after {timeout:?}: {}",
                behind.len(),
                behind
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the manager acked, for every device, the highest seq it stored.
async fn wait_acked(manager: &ManagerProc, devices: &[Device], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = block_in_place(|| manager.status())?;
        let mut behind = Vec::new();
        for d in devices {
            let acked = client_status(&status, &d.name)
                .and_then(|c| c["ackedSeq"].as_u64())
                .unwrap_or(0);
            let stored = uplink_seqs(manager, &d.name).await?;
            if acked == 0 || stored.last() != Some(&acked) {
                behind.push(format!(
                    "{}: acked {acked}, stored up to {:?}",
                    d.name,
                    stored.last()
                ));
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("not every uplink acked: {}", behind.join("; "));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn converged_verdict(converged: &Result<()>, devices: &[Device], versions: u32) -> Verdict {
    let failures = match converged {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("{e:#}")],
    };
    Verdict::from_failures(
        "converged",
        format!(
            "{} devices at revision {versions} (manager: adopted = desired, installed; runtime: last applied)",
            devices.len()
        ),
        &failures,
    )
}

/// Opens every redb file (the processes are stopped) and compares the
/// uplink each agent generated with what the manager stored.
fn judge_stores(manager: &ManagerProc, devices: &[Device], acked: &Result<()>) -> Vec<Verdict> {
    let mut open_failures = Vec::new();
    let mut seq_failures = Vec::new();
    if let Err(e) = acked {
        seq_failures.push(format!("{e:#}"));
    }
    let path = manager.data_dir.join("manager.redb");
    let store = match margo_manager::store::Store::open(&path) {
        Ok(s) => Some(s),
        Err(e) => {
            open_failures.push(format!("{}: {e}", path.display()));
            None
        }
    };
    let mut total = 0u64;
    for d in devices {
        let path = d.agent.data_dir.join("agent.redb");
        let agent = margo_agent::Store::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                let outbox = s.outbox_load().map_err(|e| e.to_string())?;
                s.applied().map_err(|e| e.to_string())?;
                Ok(outbox)
            });
        let (next, pending) = match agent {
            Ok(o) => o,
            Err(e) => {
                open_failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let Some(store) = &store else { continue };
        let stored = store
            .resolve(&d.name)
            .and_then(|id| store.uplink(&id))
            .map(|u| u.into_iter().map(|u| u.seq).collect::<Vec<u64>>());
        match stored {
            Ok(stored) => {
                total += stored.len() as u64;
                let pending: Vec<u64> = pending.iter().map(|(s, _)| *s).collect();
                if let Err(e) = invariants::exactly_once(&stored, next, &pending) {
                    seq_failures.push(format!("{}: {e}", d.name));
                }
            }
            Err(e) => open_failures.push(format!("{}'s uplink in manager.redb: {e}", d.name)),
        }
    }
    vec![
        Verdict::from_failures(
            "uplink exactly once",
            format!(
                "{total} uplink seqs generated by {} agents, each stored once",
                devices.len()
            ),
            &seq_failures,
        ),
        Verdict::from_failures(
            "stores open",
            format!(
                "manager.redb and {} agent.redb opened and read",
                devices.len()
            ),
            &open_failures,
        ),
    ]
}

/// No device applied (nor was asked to apply) a revision lower than one before it.
fn monotonic_verdict(devices: &[Device]) -> Verdict {
    let mut failures = Vec::new();
    let mut applies = 0usize;
    for d in devices {
        let lines = d.runtime.lines();
        for phase in ["start", "done"] {
            let revs = invariants::applied_revisions(&lines, DEPLOYMENT, phase);
            if phase == "done" {
                applies += revs.len();
            }
            if let Some(r) = invariants::first_regression(&revs) {
                failures.push(format!("{} ({phase}): {r}", d.name));
            }
        }
    }
    Verdict::from_failures(
        "no version went back",
        format!("{applies} applies recorded by the devices' runtimes, revisions never decreasing"),
        &failures,
    )
}
