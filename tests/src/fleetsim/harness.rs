//! A manager process plus a simulated fleet connected to it: what every
//! fleet benchmark and `margo-fleetsim run` start from.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use margo_manager::admin::AdminClient;
use serde::Serialize;
use tempfile::TempDir;

use super::procstat;
use super::sim::{self, FleetSpec, SimFleet};
use crate::faultproxy::{FaultProxy, Timeline, TimelineSpec};
use crate::fleet::ManagerProc;
use margo_testkit::mosquitto::{self, Mosquitto};

/// How long a graceful stop of the manager or Mosquitto may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Which broker the devices connect to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// rumqttd and the device TLS gateway inside the manager process: three
    /// sockets per device in the manager.
    #[default]
    Embedded,
    /// Debian's Mosquitto 2.x as a separate process with the shipped ACL,
    /// terminating the devices' mutual TLS itself; the manager connects to
    /// it as a client (`[broker] mode = "external"`). One socket per device
    /// in Mosquitto, none in the manager.
    Mosquitto,
}

impl BrokerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Embedded => "embedded",
            BrokerKind::Mosquitto => "mosquitto",
        }
    }
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BrokerKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<BrokerKind> {
        match s {
            "embedded" => Ok(BrokerKind::Embedded),
            "mosquitto" => Ok(BrokerKind::Mosquitto),
            other => bail!("unknown broker {other:?} (embedded or mosquitto)"),
        }
    }
}

/// A running manager (`margo-manager serve`) with its embedded broker and
/// gateway or an external Mosquitto, and `spec.devices` simulated devices
/// connected to that broker.
pub struct Harness {
    pub manager: ManagerProc,
    pub admin: AdminClient,
    pub fleet: SimFleet,
    /// The manager's pid (for `/proc`).
    pub pid: u32,
    pub broker: BrokerKind,
    /// The Mosquitto process with [`BrokerKind::Mosquitto`].
    pub mosquitto: Option<Mosquitto>,
    /// The URL in the devices' bundles.
    pub broker_url: String,
    pub provision_ms: f64,
    pub connect_ms: f64,
    /// Manager CPU seconds while the fleet connected, in total and per thread name.
    pub connect_manager_cpu: f64,
    pub connect_threads_cpu: Vec<(String, f64)>,
    /// Mosquitto CPU seconds while the fleet connected (Mosquitto only).
    pub connect_broker_cpu: Option<f64>,
    /// The manager's directory; removed on drop.
    pub work: TempDir,
    /// The proxy every device connects through, with `link_faults`.
    pub proxy: Option<FaultProxy>,
}

impl Harness {
    /// Starts the manager in a fresh directory under `work_dir` (or the
    /// system temp dir) with `RUST_LOG=manager_log`, provisions the devices
    /// in bulk and connects them.
    pub async fn start(
        spec: &FleetSpec,
        work_dir: Option<&Path>,
        manager_log: &str,
    ) -> Result<Harness> {
        Self::start_with(spec, work_dir, manager_log, BrokerKind::Embedded).await
    }

    /// [`Harness::start`] with the devices on `broker`. With Mosquitto, the
    /// manager runs in external mode and Mosquitto (which inherits this
    /// process's open-file limit) listens on a free loopback port with its
    /// persistence in the work directory.
    pub async fn start_with(
        spec: &FleetSpec,
        work_dir: Option<&Path>,
        manager_log: &str,
        broker: BrokerKind,
    ) -> Result<Harness> {
        Self::start_behind(spec, work_dir, manager_log, broker, None).await
    }

    /// [`Harness::start_with`] with every device connecting through one
    /// [`FaultProxy`] that plays the seeded `link_faults` timeline from the
    /// moment the fleet is connected (`margo-fleetsim run --link-faults N`).
    pub async fn start_behind(
        spec: &FleetSpec,
        work_dir: Option<&Path>,
        manager_log: &str,
        broker: BrokerKind,
        link_faults: Option<&TimelineSpec>,
    ) -> Result<Harness> {
        let work = work_dir_in(work_dir)?;
        let mut extra = String::new();
        let mosquitto_port = crate::free_port();
        match broker {
            // rumqttd holds one connection per device plus the manager's.
            BrokerKind::Embedded => {
                if spec.devices + 64 > margo_broker::Limits::default().max_connections {
                    extra.push_str(&format!(
                        "[broker.limits]\nmax_connections = {}\n",
                        spec.devices + 64
                    ));
                }
            }
            BrokerKind::Mosquitto => {
                if !mosquitto::available() {
                    bail!("--broker mosquitto needs /usr/sbin/mosquitto (apt-get install -y mosquitto)");
                }
                // The manager creates the PKI Mosquitto uses on start and
                // retries until Mosquitto is up.
                extra.push_str(&format!(
                    "[broker]\nmode = \"external\"\nurl = \"mqtts://localhost:{mosquitto_port}\"\n"
                ));
            }
        }
        let manager =
            ManagerProc::start_with_env(work.path(), &extra, &[("RUST_LOG", manager_log)])
                .context("starting margo-manager serve")?;
        let pid = manager.proc.pid().context("manager pid")?;
        let (broker_url, mosquitto) = match broker {
            BrokerKind::Embedded => {
                let gateway = manager.gateway.context("the manager reported no gateway")?;
                println!(
                    "manager pid {pid}: device gateway {gateway}, admin socket {}",
                    manager.socket.display()
                );
                (format!("mqtts://localhost:{}", gateway.port()), None)
            }
            BrokerKind::Mosquitto => {
                let pki = manager.data_dir.join("pki");
                let m = Mosquitto::start_on(
                    mosquitto_port,
                    &work.path().join("mosquitto"),
                    &pki.join("ca.crt"),
                    &pki.join("gateway.crt"),
                    &pki.join("gateway.key"),
                )?;
                println!(
                    "manager pid {pid}, mosquitto pid {} on port {mosquitto_port}, admin socket {}",
                    m.pid().unwrap_or(0),
                    manager.socket.display()
                );
                (format!("mqtts://localhost:{mosquitto_port}"), Some(m))
            }
        };
        let (broker_url, proxy) = match link_faults {
            None => (broker_url, None),
            Some(_) => {
                let port = broker_url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .context("the broker URL has no port")?;
                let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await?;
                let url = format!("mqtts://localhost:{}", proxy.addr.port());
                (url, Some(proxy))
            }
        };
        let admin = AdminClient::new(&manager.socket);
        if broker == BrokerKind::Mosquitto {
            // The manager started before Mosquitto and retries with backoff;
            // devices' reports published before it subscribes would wait
            // for their ack timeout.
            wait_connected(&admin, Duration::from_secs(60)).await?;
        }
        let t = Instant::now();
        let identities = sim::provision(&admin, &spec.prefix, spec.devices, &broker_url).await?;
        let provision_ms = ms(t.elapsed());
        let cpu_before = procstat::sample(pid)?.cpu_seconds;
        let threads_before = procstat::threads_cpu(pid);
        let broker_pid = mosquitto.as_ref().and_then(Mosquitto::pid);
        let broker_before = broker_pid.map(procstat::sample).transpose()?;
        let t = Instant::now();
        let fleet = SimFleet::start(spec, identities).await?;
        let connect_ms = ms(t.elapsed());
        let connect_manager_cpu = procstat::sample(pid)?.cpu_seconds - cpu_before;
        let connect_threads_cpu =
            procstat::threads_delta(&threads_before, &procstat::threads_cpu(pid));
        let connect_broker_cpu = match (broker_pid, broker_before) {
            (Some(p), Some(before)) => Some(procstat::sample(p)?.cpu_seconds - before.cpu_seconds),
            _ => None,
        };
        if let (Some(p), Some(timeline)) = (&proxy, link_faults) {
            let _playing = p.play(&Timeline::seeded(timeline));
        }
        Ok(Harness {
            proxy,
            manager,
            admin,
            fleet,
            pid,
            broker,
            mosquitto,
            broker_url,
            provision_ms,
            connect_ms,
            connect_manager_cpu,
            connect_threads_cpu,
            connect_broker_cpu,
            work,
        })
    }

    /// Mosquitto's pid, with [`BrokerKind::Mosquitto`].
    pub fn broker_pid(&self) -> Option<u32> {
        self.mosquitto.as_ref().and_then(Mosquitto::pid)
    }

    /// Restarts the broker the devices are connected to: Mosquitto is
    /// stopped (SIGTERM: wills sent, persistence written) and started again
    /// on the same port and persistence directory; the embedded broker is
    /// restarted with its process, the manager (SIGTERM, then the same data
    /// directory and ports). Returns when the new broker accepts connections.
    pub fn restart_broker(&mut self) -> Result<BrokerRestart> {
        let t = Instant::now();
        let clean = match &mut self.mosquitto {
            Some(m) => {
                let clean = m.stop(STOP_TIMEOUT);
                let stopped_ms = ms(t.elapsed());
                m.restart().context("starting mosquitto again")?;
                (clean, stopped_ms)
            }
            None => {
                let clean = self.manager.proc.stop(STOP_TIMEOUT);
                let stopped_ms = ms(t.elapsed());
                self.manager
                    .restart()
                    .context("starting margo-manager again")?;
                self.pid = self.manager.proc.pid().context("manager pid")?;
                (clean, stopped_ms)
            }
        };
        Ok(BrokerRestart {
            clean_stop: clean.0,
            stop_ms: clean.1,
            down_ms: ms(t.elapsed()),
        })
    }

    /// Stops the devices, then the manager (SIGTERM), then Mosquitto, and
    /// removes the directory.
    pub async fn stop(mut self) {
        self.fleet.stop(Duration::from_secs(20)).await;
        self.manager.proc.stop(Duration::from_secs(20));
        if let Some(m) = &mut self.mosquitto {
            m.stop(Duration::from_secs(20));
        }
    }
}

/// How a [`Harness::restart_broker`] went.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BrokerRestart {
    /// Whether the old process exited by itself after SIGTERM.
    pub clean_stop: bool,
    /// SIGTERM → the old process gone.
    pub stop_ms: f64,
    /// SIGTERM → the new process accepting connections (embedded: ready).
    pub down_ms: f64,
}

/// Waits until the manager says it is connected to its broker.
async fn wait_connected(admin: &AdminClient, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if admin.health().await.is_ok_and(|h| h.connected) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the manager did not connect to its broker within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh `fleetsim-*` directory under `parent` (or the system temp dir),
/// removed on drop.
pub fn work_dir_in(parent: Option<&Path>) -> Result<TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("fleetsim-");
    Ok(match parent {
        Some(parent) => {
            std::fs::create_dir_all(parent)?;
            builder.tempdir_in(parent)?
        }
        None => builder.tempdir()?,
    })
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
