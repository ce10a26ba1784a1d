//! `margo-fleetsim`: many real margo agents in one process against a real
//! `margo-manager serve` process, and the benchmarks built on them.
//!
//!     margo-fleetsim run --devices 1000 [--hold 60s]
//!     margo-fleetsim bench fanout --devices 1000 [--broker mosquitto] [--quick] [--out target/bench]
//!     margo-fleetsim bench storm --devices 1000 [--broker mosquitto] [--quick]
//!     margo-fleetsim bench ingest --devices 100 [--messages M | --duration D] [--quick]
//!     margo-fleetsim campaign --devices N --versions V --duration D [--seed S] [--broker mosquitto]
//!
//! Build the manager with the same profile first: the simulator starts
//! `margo-manager` (and `margoctl`) from its own directory
//! (`MARGO_BIN_DIR` overrides). Benchmarks report numbers; they never fail
//! on timings.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use margo_tests::campaign::{self, CampaignOptions};
use margo_tests::faultproxy::{FaultKind, Timeline, TimelineSpec};
use margo_tests::fleetsim::fanout::{self, FanoutOptions};
use margo_tests::fleetsim::footprint::{self, FootprintOptions};
use margo_tests::fleetsim::harness::{BrokerKind, Harness};
use margo_tests::fleetsim::ingest::{self, IngestOptions};
use margo_tests::fleetsim::rlimit::{fleet_needs, raise_nofile};
use margo_tests::fleetsim::sim::FleetSpec;
use margo_tests::fleetsim::storm::{self, StormOptions};
use margo_tests::fleetsim::wire;

#[derive(Parser)]
#[command(
    name = "margo-fleetsim",
    version,
    about = "Simulated margo fleets against a real manager, and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a manager and N simulated devices, keep them connected for a while.
    Run(RunArgs),
    /// Randomized crash campaign: real agents behind fault-injecting
    /// proxies through a rollout while a seeded schedule kills the manager,
    /// Mosquitto and agents and breaks links; prints each invariant with
    /// PASS/FAIL and exits 1 on any FAIL.
    Campaign(CampaignArgs),
    /// Benchmarks: each writes a JSON result and a Markdown table.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Args)]
struct FleetArgs {
    /// Number of simulated devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Simulated time of one component action.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Devices connecting at once while the fleet starts.
    #[arg(long, default_value_t = 50)]
    start_batch: usize,
    /// Each simulated agent's `connect_timeout` (the agent's default is 30 s;
    /// rumqttc's own is 5 s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    agent_connect_timeout: Duration,
    /// Parent directory of the manager's temporary data directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// RUST_LOG of the manager process.
    #[arg(long, default_value = "warn")]
    manager_log: String,
    /// The broker: `embedded` (rumqttd and the device gateway inside the
    /// manager) or `mosquitto` (/usr/sbin/mosquitto, the manager in external mode).
    #[arg(long, default_value = "embedded")]
    broker: BrokerKind,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// How long to keep the fleet running once connected (then stop).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Connect every device through one fault-injecting proxy that plays
    /// this many link faults (cut, reset, half-open, latency, bandwidth)
    /// drawn from --link-seed over the hold time.
    #[arg(long)]
    link_faults: Option<usize>,
    #[arg(long, default_value_t = 1)]
    link_seed: u64,
}

#[derive(Args)]
struct CampaignArgs {
    /// Agent processes (each behind its own fault proxy).
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Successive versions rolled out.
    #[arg(long, default_value_t = 20)]
    versions: u32,
    /// How long faults are injected.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The schedule's seed (default: drawn, and printed so it replays).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value = "embedded")]
    broker: BrokerKind,
    /// Bound on convergence once the faults stop [default: 180 s + 1 s per device].
    #[arg(long, value_parser = humantime::parse_duration)]
    converge_timeout: Option<Duration>,
    /// Parent of the working directory (logs and stores; kept on failure).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the working directory even when every invariant holds.
    #[arg(long)]
    keep: bool,
    /// Print the schedule and exit.
    #[arg(long)]
    dry_run: bool,
    /// Print each step as it is carried out.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Bench {
    /// Deploy a new version to every device; per-device latency to `installed`
    /// stored at the manager, manager CPU and peak RSS.
    Fanout {
        #[command(flatten)]
        fleet: FleetArgs,
        /// A small fleet (20 devices) for CI; overrides --devices.
        #[arg(long)]
        quick: bool,
        /// Where the JSON and Markdown results go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Status polling interval (default grows with the fleet).
        #[arg(long, value_parser = humantime::parse_duration)]
        poll: Option<Duration>,
        /// Stop waiting for a phase after this.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// The real margo-agent binary as a process: file size, idle RSS with two
    /// deployments, peak RSS during an apply.
    Footprint {
        /// The margo-agent executable (default: next to this one).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Name of this build in the results (file footprint-<label>.json).
        #[arg(long, default_value = "release")]
        label: String,
        /// Simulated time of one component action during the apply.
        #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
        delay: Duration,
        /// Idle time before reading the idle RSS.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// A shorter settle (1 s) for CI.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Restart the broker under a converged fleet; per-device time until
    /// re-synced (reconnected, manifest confirmed, heard by the manager).
    Storm {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Five devices on the chosen broker, for CI; overrides --devices.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Devices not re-synced this long after the restart are left behind.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Bytes on the wire per check, MQTT vs the Margo HTTP API, through a
    /// counting proxy: no-change checks and an update of one deployment of ten.
    Wire {
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Only the resumed MQTT and HTTP checks, and an idle window of two
        /// 3 s keep-alive periods (CI).
        #[arg(long)]
        quick: bool,
        /// Keep-alive periods in the persistent idle window.
        #[arg(long, default_value_t = 3)]
        idle_periods: u32,
        /// Keep-alive of the idle device (default: the agent's).
        #[arg(long, value_parser = humantime::parse_duration)]
        keep_alive: Option<Duration>,
    },
    /// Signed status messages durably stored and acked per second, with the
    /// manager's commit batch sizes and commit latencies.
    Ingest(IngestArgs),
}

#[derive(Args)]
struct IngestArgs {
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Messages in total, sealed before the run [default: 200000, or 30000 per second of --duration].
    #[arg(long)]
    messages: Option<usize>,
    /// Stop publishing after this (and wait for the acks of messages in flight).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Most unacknowledged messages per device.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// The manager's `[ingest] batch_max` (default: its own).
    #[arg(long)]
    batch_max: Option<usize>,
    /// The manager's `[ingest] batch_interval` (default: its own).
    #[arg(long, value_parser = humantime::parse_duration)]
    batch_interval: Option<Duration>,
    /// 5 devices, 2,000 messages (CI); overrides the sizes.
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    work_dir: Option<PathBuf>,
    #[arg(long, default_value = "warn")]
    manager_log: String,
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Raises the open-file limit for `devices` on `broker` (this process and
/// the manager and Mosquitto it starts, which inherit it) and says what it got.
fn prepare_limits_for(
    devices: usize,
    broker: BrokerKind,
) -> Result<margo_tests::fleetsim::rlimit::NofileLimit> {
    let need = fleet_needs(devices, broker);
    let who = match broker {
        BrokerKind::Embedded => {
            "the manager with the embedded broker needs about {need}: three sockets per device"
        }
        BrokerKind::Mosquitto => {
            "Mosquitto and this process need about {need}: one socket per device each"
        }
    }
    .replace("{need}", &need.to_string());
    let limit = raise_nofile(need);
    println!(
        "open files: soft {:?} → {:?}, hard {:?} → {:?} ({who})",
        limit.soft_before, limit.soft, limit.hard_before, limit.hard
    );
    if limit.soft.is_some_and(|s| s < need) {
        bail!(
            "RLIMIT_NOFILE {:?} is too low for {devices} devices ({who}); \
             raise the hard limit (ulimit -Hn), run fewer devices or use --broker mosquitto",
            limit.soft
        );
    }
    Ok(limit)
}

fn spec(args: &FleetArgs, devices: usize) -> FleetSpec {
    FleetSpec {
        prefix: "sim-".into(),
        devices,
        delay: args.delay,
        start_batch: args.start_batch,
        connect_timeout: Duration::from_secs(60 + devices as u64 / 20),
        agent_connect_timeout: args.agent_connect_timeout,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            prepare_limits_for(args.fleet.devices, args.fleet.broker)?;
            let spec = spec(&args.fleet, args.fleet.devices);
            let link = args.link_faults.map(|faults| TimelineSpec {
                seed: args.link_seed,
                span: args.hold,
                faults,
                kinds: FaultKind::ALL.to_vec(),
            });
            if let Some(l) = &link {
                print!("link faults (seed {}):\n{}", l.seed, Timeline::seeded(l));
            }
            let h = Harness::start_behind(
                &spec,
                args.fleet.work_dir.as_deref(),
                &args.fleet.manager_log,
                args.fleet.broker,
                link.as_ref(),
            )
            .await?;
            println!(
                "{} devices connected; try: margoctl --socket {} status   (stopping in {})",
                h.fleet.devices.len(),
                h.manager.socket.display(),
                humantime::format_duration(args.hold)
            );
            tokio::select! {
                _ = tokio::time::sleep(args.hold) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            println!("{} devices connected; stopping", h.fleet.connected());
            if let Some(p) = &h.proxy {
                println!("link faults injected: {:?}", p.counts());
            }
            h.stop().await;
        }
        Command::Campaign(a) => {
            let seed = a.seed.unwrap_or_else(|| fastrand::u64(..));
            let mut opts = CampaignOptions::new(seed, a.devices, a.versions, a.duration);
            opts.broker = a.broker;
            opts.work_dir = a.work_dir;
            (opts.keep, opts.verbose) = (a.keep, a.verbose);
            if let Some(t) = a.converge_timeout {
                opts.converge_timeout = t;
            }
            if a.dry_run {
                let schedule = campaign::schedule::Schedule::draw(&opts.schedule_spec());
                println!("seed {seed}: {}", opts.replay_command());
                print!("{schedule}");
                for (kind, n) in schedule.counts() {
                    println!("{:<16} {n}", kind.as_str());
                }
                return Ok(());
            }
            // One agent process and one proxy (two sockets) per device here.
            prepare_limits_for(a.devices, a.broker)?;
            let report = campaign::run(&opts).await?;
            println!();
            print!("{}", report.text());
            if !report.passed() {
                std::process::exit(1);
            }
        }
        Command::Bench { bench } => match bench {
            Bench::Fanout {
                fleet,
                quick,
                out,
                poll,
                timeout,
            } => {
                let devices = if quick { 20 } else { fleet.devices };
                let nofile = prepare_limits_for(devices, fleet.broker)?;
                let mut opts = FanoutOptions::new(devices, out);
                opts.broker = fleet.broker;
                opts.delay = fleet.delay;
                opts.start_batch = fleet.start_batch;
                opts.agent_connect_timeout = fleet.agent_connect_timeout;
                opts.work_dir = fleet.work_dir;
                opts.manager_log = fleet.manager_log;
                opts.quick = quick;
                opts.converge_timeout = timeout;
                opts.nofile = Some(nofile);
                if let Some(poll) = poll {
                    opts.poll = poll;
                }
                let report = fanout::run(&opts).await?;
                println!();
                print!("{}", report.markdown());
                if !report.converged() {
                    // Not a timing failure: some device never got there.
                    bail!("not every device converged; see the report");
                }
            }
            Bench::Footprint {
                agent,
                label,
                delay,
                settle,
                quick,
                out,
            } => {
                let opts = FootprintOptions {
                    agent: agent.unwrap_or_else(|| margo_tests::bin("margo-agent")),
                    label,
                    delay,
                    settle: if quick {
                        Duration::from_secs(1)
                    } else {
                        settle
                    },
                    out_dir: out,
                };
                let report = footprint::run(&opts).await?;
                println!();
                print!("{}", report.markdown());
            }
            Bench::Storm {
                fleet,
                quick,
                out,
                timeout,
            } => {
                let devices = if quick { 5 } else { fleet.devices };
                let mut opts = StormOptions::new(devices, fleet.broker, out);
                opts.nofile = Some(prepare_limits_for(devices, fleet.broker)?);
                (opts.delay, opts.start_batch) = (fleet.delay, fleet.start_batch);
                (opts.work_dir, opts.manager_log) = (fleet.work_dir, fleet.manager_log);
                (opts.quick, opts.resync_timeout) = (quick, timeout);
                opts.agent_connect_timeout = fleet.agent_connect_timeout;
                let report = storm::run(&opts).await?;
                println!();
                print!("{}", report.markdown());
                if !report.converged() {
                    bail!(
                        "{} devices were left behind; see the report",
                        report.left_behind
                    );
                }
            }
            Bench::Wire {
                out,
                quick,
                idle_periods,
                keep_alive,
            } => {
                let report = wire::run(&wire::WireOptions {
                    out_dir: out,
                    quick,
                    idle_periods,
                    keep_alive,
                })
                .await?;
                println!();
                print!("{}", report.markdown());
            }
            Bench::Ingest(a) => {
                let mut opts = if a.quick {
                    IngestOptions::quick(a.out)
                } else {
                    IngestOptions::new(a.out)
                };
                if !a.quick {
                    opts.devices = a.devices;
                    opts.window = a.window;
                    opts.duration = a.duration;
                    opts.messages = a.messages.unwrap_or(match a.duration {
                        Some(d) => (d.as_secs_f64() * 30_000.0) as usize,
                        None => opts.messages,
                    });
                }
                (opts.batch_max, opts.batch_interval) = (a.batch_max, a.batch_interval);
                (opts.work_dir, opts.manager_log) = (a.work_dir, a.manager_log);
                opts.nofile = Some(prepare_limits_for(opts.devices, BrokerKind::Embedded)?);
                let report = ingest::run(&opts).await?;
                println!();
                print!("{}", report.markdown());
                if !report.exactly_once {
                    bail!("not every message was stored and acked exactly once; see the report");
                }
            }
        },
    }
    Ok(())
}
