//! A manager process plus a simulated fleet connected to it: what every
//! fleet benchmark and `margo-fleetsim run` start from.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use margo_manager::admin::AdminClient;
use tempfile::TempDir;

use super::procstat;
use super::sim::{self, FleetSpec, SimFleet};
use crate::fleet::ManagerProc;

/// A running manager (`margo-manager serve`, embedded broker and gateway)
/// and `spec.devices` simulated devices connected through its gateway.
pub struct Harness {
    pub manager: ManagerProc,
    pub admin: AdminClient,
    pub fleet: SimFleet,
    /// The manager's pid (for `/proc`).
    pub pid: u32,
    pub provision_ms: f64,
    pub connect_ms: f64,
    /// Manager CPU seconds while the fleet connected, in total and per thread name.
    pub connect_manager_cpu: f64,
    pub connect_threads_cpu: Vec<(String, f64)>,
    /// The manager's directory; removed on drop.
    pub work: TempDir,
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
        let work = match work_dir {
            Some(parent) => {
                std::fs::create_dir_all(parent)?;
                tempfile::Builder::new()
                    .prefix("fleetsim-")
                    .tempdir_in(parent)?
            }
            None => tempfile::Builder::new().prefix("fleetsim-").tempdir()?,
        };
        let mut extra = String::new();
        // rumqttd holds one connection per device plus the manager's.
        if spec.devices + 64 > margo_broker::Limits::default().max_connections {
            extra.push_str(&format!(
                "[broker.limits]\nmax_connections = {}\n",
                spec.devices + 64
            ));
        }
        let manager =
            ManagerProc::start_with_env(work.path(), &extra, &[("RUST_LOG", manager_log)])
                .context("starting margo-manager serve")?;
        let pid = manager.proc.pid().context("manager pid")?;
        let gateway = manager.gateway.context("the manager reported no gateway")?;
        println!(
            "manager pid {pid}: device gateway {gateway}, admin socket {}",
            manager.socket.display()
        );
        let admin = AdminClient::new(&manager.socket);
        let broker_url = format!("mqtts://localhost:{}", gateway.port());
        let t = Instant::now();
        let identities = sim::provision(&admin, &spec.prefix, spec.devices, &broker_url).await?;
        let provision_ms = ms(t.elapsed());
        let cpu_before = procstat::sample(pid)?.cpu_seconds;
        let threads_before = procstat::threads_cpu(pid);
        let t = Instant::now();
        let fleet = SimFleet::start(spec, identities).await?;
        let connect_ms = ms(t.elapsed());
        let connect_manager_cpu = procstat::sample(pid)?.cpu_seconds - cpu_before;
        let connect_threads_cpu =
            procstat::threads_delta(&threads_before, &procstat::threads_cpu(pid));
        Ok(Harness {
            manager,
            admin,
            fleet,
            pid,
            provision_ms,
            connect_ms,
            connect_manager_cpu,
            connect_threads_cpu,
            work,
        })
    }

    /// Stops the devices, then the manager (SIGTERM), and removes the directory.
    pub async fn stop(mut self) {
        self.fleet.stop(Duration::from_secs(20)).await;
        self.manager.proc.stop(Duration::from_secs(20));
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
