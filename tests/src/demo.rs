//! `margo-demo`: the whole system in one process.
//!
//! A [`Manager`] with the embedded broker and device gateway on free loopback
//! ports; `N` clients provisioned through the admin API, their identity
//! bundles written as `margoctl clients add` writes them; `N` `margo-agent`
//! [`Agent`]s (simulated runtime) connecting through the gateway with mutual
//! TLS; the two examples of `config/examples/` deployed to every device.
//! Progress comes from the manager's status API (the point is that the
//! manager knows), then the fleet table and what to try next.
//!
//! Layout of the demo directory (it is also the manager's data directory, so
//! `margoctl --data-dir DIR` works):
//!
//! ```text
//! DIR/manager.redb, pki/, admin.sock     the manager
//! DIR/examples/*.yaml                    the deployed documents, to paste into margoctl
//! DIR/devices/<name>/identity/           identity bundle
//! DIR/devices/<name>/data/               the agent's redb
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use margo_agent::config::{AdapterKind, CapabilitiesConfig, RuntimeConfig, SimulatedConfig};
use margo_agent::{Agent, AgentConfig, AgentError, AgentOptions};
use margo_schemas::deployment::ApplicationDeployment;
use margo_schemas::identity::INDEX_FILE;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::status::DeploymentState;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use margo_manager::admin::{AdminClient, AdminError};
use margo_manager::config::ManagerConfig;
use margo_manager::identity_bundle::{write_bundle, BundleError};
use margo_manager::manager::{Manager, ManagerError, ManagerHandle};
use margo_manager::status_table;
use margo_manager::status_view::ClientStatus;

/// The examples shipped in `config/examples/`, embedded so the binary works from anywhere.
pub const EXAMPLES: [(&str, &str); 2] = [
    (
        "line-monitor-helm.yaml",
        include_str!("../../config/examples/line-monitor-helm.yaml"),
    ),
    (
        "vibration-sensor-compose.yaml",
        include_str!("../../config/examples/vibration-sensor-compose.yaml"),
    ),
];

/// Most devices one demo runs (each is a TLS connection and a redb file).
pub const MAX_DEVICES: usize = 1000;
/// How long stopping the agents may take before they are aborted.
const AGENT_STOP: Duration = Duration::from_secs(10);

/// What `margo-demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How many simulated devices (`demo-device-1..N`).
    pub devices: usize,
    /// The demo directory; `None`: a fresh one under the system temp dir,
    /// removed on exit unless `keep`. A given directory is always kept and
    /// may be reused by a later run.
    pub data_dir: Option<PathBuf>,
    /// Keep the fresh temp directory on exit.
    pub keep: bool,
    /// Simulated time of one component action.
    pub delay: Duration,
    /// Give up (and fail) if the fleet has not converged within this.
    pub timeout: Duration,
    /// Return as soon as the fleet converged instead of serving until `shutdown`.
    pub exit_when_converged: bool,
    /// How often progress is read from the manager.
    pub progress_interval: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            devices: 5,
            data_dir: None,
            keep: false,
            delay: Duration::from_millis(300),
            timeout: Duration::from_secs(120),
            exit_when_converged: false,
            progress_interval: Duration::from_millis(500),
        }
    }
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// `devices` is out of range.
    #[error("--devices {0}: must be between 1 and {MAX_DEVICES}")]
    Devices(usize),
    /// The demo directory could not be created.
    #[error("demo directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manager did not start.
    #[error("manager: {0}")]
    Manager(#[from] ManagerError),
    /// An admin API call failed.
    #[error("admin API: {0}")]
    Admin(#[from] AdminError),
    /// A device's identity bundle could not be written.
    #[error("identity bundle of {name}: {source}")]
    Bundle {
        /// The device name.
        name: String,
        /// What failed.
        source: BundleError,
    },
    /// The manager knows a demo device whose bundle is gone (a reused directory).
    #[error("{name} is provisioned in {dir} but its identity bundle {bundle} is missing; use a fresh --data-dir")]
    MissingBundle {
        /// The device name.
        name: String,
        /// The demo directory.
        dir: PathBuf,
        /// The missing bundle directory.
        bundle: PathBuf,
    },
    /// An agent did not start or stopped on its own.
    #[error("agent {name}: {source}")]
    Agent {
        /// The device name.
        name: String,
        /// What failed (boxed: agent errors are large).
        source: Box<AgentError>,
    },
    /// An agent stopped on its own before the demo ended.
    #[error("agent {0} stopped on its own")]
    AgentStopped(String),
    /// An agent task panicked.
    #[error("an agent task panicked: {0}")]
    AgentPanicked(String),
    /// The embedded broker came up without its device gateway.
    #[error("the embedded broker has no device gateway")]
    NoGateway,
    /// The fleet did not converge in time.
    #[error("not converged after {}: {}", humantime::format_duration(*.after), .pending.join(", "))]
    NotConverged {
        /// The timeout.
        after: Duration,
        /// Devices that had not adopted their desired manifest with every deployment installed.
        pending: Vec<String>,
    },
    /// Shut down (Ctrl-C) before the fleet converged.
    #[error("interrupted before the fleet converged")]
    Interrupted,
}

/// One device when the fleet converged, as the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    /// `demo-device-N`.
    pub name: String,
    /// Its client id.
    pub client_id: ClientId,
    /// Desired manifest version.
    pub desired_version: u64,
    /// Adopted manifest version reported by the device.
    pub adopted_version: Option<u64>,
    /// Desired deployments the device reports installed.
    pub installed: Vec<DeploymentId>,
}

/// What a demo run achieved.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The demo directory (removed by now unless kept).
    pub data_dir: PathBuf,
    /// Whether `data_dir` still exists.
    pub kept: bool,
    /// The admin socket the demo served on.
    pub admin_socket: PathBuf,
    /// The embedded broker's plain loopback listener.
    pub mqtt_addr: Option<SocketAddr>,
    /// The device gateway.
    pub gateway_addr: Option<SocketAddr>,
    /// From the first deploy until the manager saw every device converged.
    pub converged_after: Duration,
    /// Every demo device, in order.
    pub devices: Vec<DeviceReport>,
    /// The manager's status of the demo devices at convergence.
    pub status: Vec<ClientStatus>,
}

/// Whether the manager sees `c` converged: online, it adopted its desired
/// manifest (a deployed one, not the zero-deployment version 1 every client
/// starts with) and reports every desired deployment installed.
pub fn is_converged(c: &ClientStatus) -> bool {
    c.presence == "online"
        && !c.revoked
        && c.desired_version > 1
        && c.adopted_version == Some(c.desired_version)
        && desired(c).all(|d| d.state == Some(DeploymentState::Installed))
}

fn desired(c: &ClientStatus) -> impl Iterator<Item = &margo_manager::status_view::DeploymentView> {
    c.deployments.iter().filter(|d| d.desired_digest.is_some())
}

/// Runs the demo: see the module documentation. Returns when converged (with
/// `exit_when_converged`) or when `shutdown` is cancelled after convergence.
pub async fn run_demo(
    opts: DemoOptions,
    shutdown: CancellationToken,
) -> Result<DemoReport, DemoError> {
    if !(1..=MAX_DEVICES).contains(&opts.devices) {
        return Err(DemoError::Devices(opts.devices));
    }
    let (dir, temporary) = match &opts.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| DemoError::Dir {
                path: dir.clone(),
                source,
            })?;
            (dir.clone(), false)
        }
        None => (fresh_temp_dir()?, true),
    };
    let keep = !temporary || opts.keep;
    println!("demo directory: {}", dir.display());
    let result = run_in(&dir, &opts, &shutdown).await;
    if keep {
        println!("kept the demo directory {}", dir.display());
    } else {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => println!("removed the demo directory (--keep keeps it)"),
            Err(error) => {
                warn!(dir = %dir.display(), %error, "could not remove the demo directory")
            }
        }
    }
    result.map(|mut report| {
        report.kept = keep;
        report
    })
}

/// `<temp>/margo-demo-XXXXXXXX`, mode 0700, newly created.
fn fresh_temp_dir() -> Result<PathBuf, DemoError> {
    let base = std::env::temp_dir();
    let mut last = None;
    for _ in 0..16 {
        let suffix: String = (0..8).map(|_| fastrand::lowercase()).collect();
        let path = base.join(format!("margo-demo-{suffix}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(source) => return Err(DemoError::Dir { path, source }),
        }
    }
    Err(DemoError::Dir {
        path: base,
        source: last.unwrap_or_else(|| std::io::Error::other("no free name")),
    })
}

/// Starts the manager, runs the demo, and stops agents then manager whatever happened.
async fn run_in(
    dir: &Path,
    opts: &DemoOptions,
    shutdown: &CancellationToken,
) -> Result<DemoReport, DemoError> {
    let loopback_any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let mut config = ManagerConfig::with_data_dir(dir);
    config.broker.mqtt_listen = loopback_any;
    config.broker.gateway_listen = loopback_any;
    config.http.listen = loopback_any;
    config.metrics.listen = loopback_any;
    let manager = Manager::start(config).await?;
    let agents_token = CancellationToken::new();
    let mut agents = JoinSet::new();
    let result = drive(dir, opts, shutdown, &manager, &mut agents, &agents_token).await;
    agents_token.cancel();
    let stopped = tokio::time::timeout(AGENT_STOP, async {
        while let Some(joined) = agents.join_next().await {
            if let Ok((name, Err(error))) = joined {
                warn!(device = %name, %error, "agent stopped with an error");
            }
        }
    })
    .await;
    if stopped.is_err() {
        warn!("agents did not stop within {AGENT_STOP:?}; aborting them");
        agents.shutdown().await;
    }
    manager.shutdown().await;
    result
}

type AgentTasks = JoinSet<(String, Result<(), AgentError>)>;

async fn drive(
    dir: &Path,
    opts: &DemoOptions,
    shutdown: &CancellationToken,
    manager: &ManagerHandle,
    agents: &mut AgentTasks,
    agents_token: &CancellationToken,
) -> Result<DemoReport, DemoError> {
    let admin = manager.admin();
    let gateway = manager.gateway_addr().ok_or(DemoError::NoGateway)?;
    println!(
        "manager ready: admin socket {}, plain MQTT {} (loopback), device gateway {} (mutual TLS)",
        manager.admin_socket().display(),
        manager.mqtt(),
        gateway
    );
    // The gateway certificate has `localhost` as a SAN.
    let broker_url = format!("mqtts://localhost:{}", gateway.port());
    let names: Vec<String> = (1..=opts.devices)
        .map(|i| format!("demo-device-{i}"))
        .collect();

    provision(&admin, dir, &names, &broker_url).await?;
    println!(
        "provisioned {} devices; starting their agents (simulated runtime, {} per component action)",
        names.len(),
        humantime::format_duration(opts.delay)
    );
    for name in &names {
        let agent = new_agent(dir, name, &broker_url, opts.delay)?;
        let name = name.clone();
        let token = agents_token.clone();
        agents.spawn(async move { (name, agent.run(token).await) });
    }
    let deployed_at = Instant::now();
    deploy_examples(&admin, dir, &names).await?;
    println!(
        "deployed {} to every device; waiting for the manager to see them converge",
        EXAMPLES.map(|(file, _)| file).join(" and ")
    );

    let status = wait_converged(&admin, &names, opts, shutdown, agents, deployed_at).await?;
    let converged_after = deployed_at.elapsed();

    println!();
    print!("{}", status_table::render(&status, status_table::now_ms()));
    println!();
    if opts.exit_when_converged {
        println!(
            "converged; exiting (--exit-when-converged). Without it the demo keeps serving and shows margoctl commands to try."
        );
    } else {
        print_next_steps(dir, manager, &names);
    }

    let devices = status
        .iter()
        .map(|c| DeviceReport {
            name: c.name.clone(),
            client_id: c.client_id.clone(),
            desired_version: c.desired_version,
            adopted_version: c.adopted_version,
            installed: desired(c)
                .filter(|d| d.state == Some(DeploymentState::Installed))
                .map(|d| d.deployment_id.clone())
                .collect(),
        })
        .collect();
    let report = DemoReport {
        data_dir: dir.to_path_buf(),
        kept: true,
        admin_socket: manager.admin_socket().to_path_buf(),
        mqtt_addr: manager.mqtt_addr(),
        gateway_addr: manager.gateway_addr(),
        converged_after,
        devices,
        status,
    };
    if !opts.exit_when_converged {
        println!("serving; Ctrl-C stops the agents and the manager");
        let internal = manager.shutdown_token();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = internal.cancelled() => {}
        }
        println!("stopping the agents and the manager");
    }
    Ok(report)
}

/// Provisions every device through the admin API and writes its bundle, as
/// `margoctl clients add` does; in a reused directory, keeps the devices found.
async fn provision(
    admin: &AdminClient,
    dir: &Path,
    names: &[String],
    broker_url: &str,
) -> Result<(), DemoError> {
    let known: BTreeSet<String> = admin
        .list_clients()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    for name in names {
        let identity_dir = dir.join("devices").join(name).join("identity");
        if known.contains(name) {
            if identity_dir.join(INDEX_FILE).exists() {
                continue;
            }
            return Err(DemoError::MissingBundle {
                name: name.clone(),
                dir: dir.to_path_buf(),
                bundle: identity_dir,
            });
        }
        let bundle = admin.add_client(name, Some(broker_url)).await?;
        write_bundle(&identity_dir, &bundle).map_err(|source| DemoError::Bundle {
            name: name.clone(),
            source,
        })?;
    }
    Ok(())
}

/// A real agent with its own redb under `devices/<name>/data`, simulated runtime.
fn new_agent(
    dir: &Path,
    name: &str,
    broker_url: &str,
    delay: Duration,
) -> Result<Agent, DemoError> {
    let device_dir = dir.join("devices").join(name);
    let config = AgentConfig {
        identity_dir: device_dir.join("identity"),
        data_dir: device_dir.join("data"),
        // The gateway port changes from run to run; a reused bundle holds an old one.
        broker_url: Some(broker_url.to_string()),
        runtime: RuntimeConfig {
            adapter: AdapterKind::Simulated,
            simulated: SimulatedConfig {
                delay,
                fail: Vec::new(),
            },
            ..RuntimeConfig::default()
        },
        // Simulated devices have no DMI data to read; say what they are.
        capabilities: CapabilitiesConfig {
            vendor: Some("margo-mqtt demo".to_string()),
            model_number: Some("simulated-edge-1".to_string()),
            serial_number: Some(name.to_string()),
            ..CapabilitiesConfig::default()
        },
        ..AgentConfig::default()
    };
    Agent::new(config, AgentOptions::default()).map_err(|source| DemoError::Agent {
        name: name.to_string(),
        source: Box::new(source),
    })
}

/// Writes the examples to `DIR/examples/` (for the printed margoctl commands)
/// and assigns both to every device.
async fn deploy_examples(
    admin: &AdminClient,
    dir: &Path,
    names: &[String],
) -> Result<(), DemoError> {
    let examples_dir = dir.join("examples");
    std::fs::create_dir_all(&examples_dir).map_err(|source| DemoError::Dir {
        path: examples_dir.clone(),
        source,
    })?;
    for (file, text) in EXAMPLES {
        let path = examples_dir.join(file);
        std::fs::write(&path, text).map_err(|source| DemoError::Dir { path, source })?;
    }
    let documents: Vec<String> = EXAMPLES.iter().map(|(_, t)| t.to_string()).collect();
    for name in names {
        admin.deploy(name, documents.clone()).await?;
    }
    Ok(())
}

/// Counts for the progress line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Progress {
    converged: usize,
    devices: usize,
    installed: usize,
    deployments: usize,
    /// The desired version if every device has the same one.
    version: Option<u64>,
}

impl Progress {
    fn of(status: &[ClientStatus], devices: usize) -> Self {
        let mut versions = status.iter().map(|c| c.desired_version);
        let first = versions.next();
        Self {
            converged: status.iter().filter(|c| is_converged(c)).count(),
            devices,
            installed: status
                .iter()
                .flat_map(desired)
                .filter(|d| d.state == Some(DeploymentState::Installed))
                .count(),
            deployments: status.iter().flat_map(desired).count(),
            version: first.filter(|v| versions.all(|w| w == *v)),
        }
    }

    fn line(&self, elapsed: Duration) -> String {
        let at = match self.version {
            Some(v) => format!("at manifest v{v}"),
            None => "at their desired manifest".to_string(),
        };
        format!(
            "[{:>5.1}s] converging: {}/{} devices {at}, {}/{} deployments installed",
            elapsed.as_secs_f64(),
            self.converged,
            self.devices,
            self.installed,
            self.deployments
        )
    }
}

/// Polls the manager's status until every demo device converged; prints progress.
async fn wait_converged(
    admin: &AdminClient,
    names: &[String],
    opts: &DemoOptions,
    shutdown: &CancellationToken,
    agents: &mut AgentTasks,
    started: Instant,
) -> Result<Vec<ClientStatus>, DemoError> {
    let tty = std::io::stdout().is_terminal();
    let deadline = started + opts.timeout;
    let mut tick = tokio::time::interval(opts.progress_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_line = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {
                if tty { println!(); }
                return Err(DemoError::Interrupted);
            }
            Some(joined) = agents.join_next() => {
                if tty { println!(); }
                return Err(match joined {
                    Ok((name, Err(source))) => DemoError::Agent {
                        name,
                        source: Box::new(source),
                    },
                    Ok((name, Ok(()))) => DemoError::AgentStopped(name),
                    Err(e) => DemoError::AgentPanicked(e.to_string()),
                });
            }
        }
        let status = demo_status(admin, names).await?;
        let progress = Progress::of(&status, names.len());
        let line = progress.line(started.elapsed());
        if tty {
            print!("\r{line}");
            let _ = std::io::stdout().flush();
        } else if progress_changed(&last_line, &line) {
            println!("{line}");
        }
        last_line = line;
        if progress.converged == names.len() {
            if tty {
                println!();
            }
            return Ok(status);
        }
        if Instant::now() >= deadline {
            if tty {
                println!();
            }
            println!();
            print!("{}", status_table::render(&status, status_table::now_ms()));
            let pending = status
                .iter()
                .filter(|c| !is_converged(c))
                .map(|c| c.name.clone())
                .collect();
            return Err(DemoError::NotConverged {
                after: opts.timeout,
                pending,
            });
        }
    }
}

/// Whether two progress lines differ in more than the elapsed time.
fn progress_changed(last: &str, line: &str) -> bool {
    let counts = |l: &str| l.split_once(']').map(|(_, rest)| rest.to_string());
    counts(last) != counts(line)
}

/// The manager's status of the demo devices, in device order.
async fn demo_status(
    admin: &AdminClient,
    names: &[String],
) -> Result<Vec<ClientStatus>, DemoError> {
    let mut by_name: BTreeMap<String, ClientStatus> = admin
        .status(None)
        .await?
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    Ok(names.iter().filter_map(|n| by_name.remove(n)).collect())
}

fn print_next_steps(dir: &Path, manager: &ManagerHandle, names: &[String]) {
    let ctl = margoctl_command();
    let socket = manager.admin_socket().display().to_string();
    let first = names.first().map(String::as_str).unwrap_or("demo-device-1");
    let (example_file, example_text) = EXAMPLES[1];
    let example_id = ApplicationDeployment::parse(example_text.as_bytes().to_vec())
        .map(|d| d.id.to_string())
        .unwrap_or_else(|_| "<deploymentId>".into());
    let example_path = dir.join("examples").join(example_file);
    println!("Try next (in another terminal, while the demo runs):");
    if ctl == MARGOCTL {
        println!("  (build margoctl first: cargo build --release --bin margoctl)");
    }
    println!("  {ctl} --socket {socket} status");
    println!("  {ctl} --socket {socket} undeploy {first} {example_id}");
    println!(
        "  {ctl} --socket {socket} deploy {first} {}",
        example_path.display()
    );
    if let Some(mqtt) = manager.mqtt_addr() {
        println!(
            "  watch the topics: MQTT Explorer on {} (plain MQTT, loopback only), or",
            mqtt
        );
        println!(
            "  mosquitto_sub -h {} -p {} -t 'margo/#' -v",
            mqtt.ip(),
            mqtt.port()
        );
    }
}

const MARGOCTL: &str = "margoctl";

/// `margoctl` next to this executable if it is there, else the bare name.
fn margoctl_command() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(MARGOCTL)))
        .filter(|path| path.is_file())
        .map(|path| path.display().to_string())
        .unwrap_or_else(|| MARGOCTL.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_parse_and_have_distinct_ids() {
        let ids: std::collections::BTreeSet<_> = EXAMPLES
            .iter()
            .map(|(file, text)| {
                ApplicationDeployment::parse(text.as_bytes().to_vec())
                    .unwrap_or_else(|e| panic!("{file}: {e}"))
                    .id
            })
            .collect();
        assert_eq!(ids.len(), EXAMPLES.len());
    }

    #[test]
    fn progress_lines_compare_without_the_clock() {
        let p = Progress {
            converged: 3,
            devices: 5,
            installed: 7,
            deployments: 10,
            version: Some(1),
        };
        let a = p.line(Duration::from_millis(1500));
        assert_eq!(
            a,
            "[  1.5s] converging: 3/5 devices at manifest v1, 7/10 deployments installed"
        );
        assert!(!progress_changed(&a, &p.line(Duration::from_secs(9))));
        let q = Progress { installed: 8, ..p };
        assert!(progress_changed(&a, &q.line(Duration::from_secs(9))));
    }
}
