//! An agent run in-process on a simulated wall clock, against a real
//! `margo-manager` process and its device gateway, behind a counting proxy.
//! Days of schedule run as a discrete-event simulation: wait until the agent
//! is idle (away, with a planned next contact), then set the clock to it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use margo_agent::clock::{Clock, SimulatedClock};
use margo_agent::config::AdapterKind;
use margo_agent::{Agent, AgentConfig, AgentError, AgentHandle, AgentOptions, ConnectionStatus};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fleet::ManagerProc;
use crate::proxy::CountingProxy;

/// The agent, its clock and the proxy in front of the gateway.
pub struct SimAgent {
    pub name: String,
    pub clock: SimulatedClock,
    pub proxy: CountingProxy,
    pub handle: AgentHandle,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), AgentError>>>,
}

impl SimAgent {
    /// Provisions `name` at `manager` (broker URL = the proxy) and starts an
    /// agent whose wall clock reads `start_ms`. `configure` adjusts the
    /// config (schedule, intervals) before the agent is built. Runtime:
    /// simulated (10 ms per action); capabilities off; exact check times
    /// (`wake_spread = 0s`).
    pub async fn start(
        dir: &Path,
        manager: &ManagerProc,
        name: &str,
        start_ms: u64,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> Result<SimAgent> {
        let gateway = manager.gateway.context("the manager runs no gateway")?;
        let clock = SimulatedClock::starting_at(start_ms);
        let stamp_clock = clock.clone();
        let proxy = CountingProxy::start(gateway, Arc::new(move || stamp_clock.unix_ms())).await?;
        let bundle = manager.provision(
            name,
            &dir.join(format!("{name}-identity")),
            Some(&format!("mqtts://localhost:{}", proxy.addr.port())),
        )?;
        let mut config = AgentConfig {
            identity_dir: bundle,
            data_dir: dir.join(format!("{name}-data")),
            wake_spread: Duration::ZERO,
            check_settle: Duration::from_millis(150),
            check_timeout: Duration::from_secs(20),
            ..AgentConfig::default()
        };
        config.runtime.adapter = AdapterKind::Simulated;
        config.runtime.simulated.delay = Duration::from_millis(10);
        config.capabilities.enabled = false;
        configure(&mut config);
        let agent = Agent::new(
            config,
            AgentOptions {
                clock: Some(Arc::new(clock.clone())),
                ..AgentOptions::default()
            },
        )?;
        let handle = agent.handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent.run(stop.clone()));
        Ok(SimAgent {
            name: name.to_string(),
            clock,
            proxy,
            handle,
            stop,
            task: Some(task),
        })
    }

    /// Waits (real time, up to `limit`) until the agent is away with a
    /// planned contact later than the clock, and returns that instant.
    pub async fn next_contact(&mut self, limit: Duration) -> Result<u64> {
        let clock = self.clock.clone();
        let mut rx = self.handle.snapshots.clone();
        let wait = async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    let away = matches!(
                        s.connection,
                        ConnectionStatus::Scheduled | ConnectionStatus::Downtime
                    );
                    if let Some(next) = s.next_contact_ms.filter(|_| away) {
                        if next > clock.unix_ms() && clock.next_wake() == Some(next) {
                            return Ok(next);
                        }
                    }
                }
                // The sleeper registers just after the snapshot changes, so
                // look again shortly even without a change.
                if let Ok(Err(_)) =
                    tokio::time::timeout(Duration::from_millis(20), rx.changed()).await
                {
                    return Err(anyhow!("the agent stopped"));
                }
            }
        };
        tokio::time::timeout(limit, wait).await.map_err(|_| {
            let s = self.handle.snapshots.borrow().clone();
            anyhow!(
                "{}: not idle within {limit:?} at clock {} (connection {:?}, next contact {:?})",
                self.name,
                self.clock.unix_ms(),
                s.connection,
                s.next_contact_ms
            )
        })?
    }

    /// Stops the agent and waits for it.
    pub async fn stop(&mut self) -> Result<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.context("agent task")??;
        }
        Ok(())
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
