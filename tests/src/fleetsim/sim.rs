//! N real agents in this process: each with its own client certificate and
//! key, an in-memory redb store, the simulated runtime, and its own
//! persistent MQTT session over mutual TLS through the manager's device
//! gateway.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use margo_agent::config::AdapterKind;
use margo_agent::identity::{Identity, IdentityPem};
use margo_agent::{Agent, AgentConfig, AgentError, AgentHandle, AgentOptions, Store};
use margo_manager::admin::{AdminClient, ProvisionedBundle, MAX_BULK_CLIENTS};
use margo_schemas::ids::ClientId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How the simulated devices behave.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Name prefix (`sim-` → `sim-1`, `sim-2`, ...).
    pub prefix: String,
    /// How many devices.
    pub devices: usize,
    /// Simulated time of one component action.
    pub delay: Duration,
    /// Devices started (connecting) at once; the gateway caps pending
    /// handshakes per source address (64 by default) and all devices here
    /// share 127.0.0.1.
    pub start_batch: usize,
    /// Give up if the fleet is not connected within this.
    pub connect_timeout: Duration,
    /// Each agent's `connect_timeout` (one connection attempt).
    pub agent_connect_timeout: Duration,
}

/// One running simulated device.
pub struct SimDevice {
    pub name: String,
    pub client_id: ClientId,
    pub handle: AgentHandle,
}

/// The running fleet.
pub struct SimFleet {
    pub devices: Vec<SimDevice>,
    stop: CancellationToken,
    tasks: JoinSet<(usize, Result<(), AgentError>)>,
}

/// Provisions `count` devices named `{prefix}1..` in bulk through the admin
/// API (chunks of at most [`MAX_BULK_CLIENTS`]), with `broker_url` in their
/// bundles. Prints progress.
pub async fn provision(
    admin: &AdminClient,
    prefix: &str,
    count: usize,
    broker_url: &str,
) -> Result<Vec<IdentityPem>> {
    let started = Instant::now();
    let chunk = (MAX_BULK_CLIENTS as usize).min(1000);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let n = (count - out.len()).min(chunk);
        let first = u32::try_from(out.len() + 1).context("too many devices")?;
        let bulk = admin
            .add_clients(
                prefix,
                u32::try_from(n).context("chunk")?,
                first,
                Some(broker_url),
            )
            .await
            .context("bulk provisioning")?;
        out.extend(bulk.bundles().map(identity_pem));
        println!(
            "[{:>6.1}s] provisioned {}/{count} devices",
            started.elapsed().as_secs_f64(),
            out.len()
        );
    }
    Ok(out)
}

/// The identity an agent loads, from a bundle the manager provisioned.
pub fn identity_pem(b: ProvisionedBundle) -> IdentityPem {
    IdentityPem {
        client_id: b.client_id,
        name: b.name,
        broker_url: b.broker_url,
        key_pem: b.key_pem.into_bytes(),
        cert_pem: b.cert_pem.into_bytes(),
        ca_pem: b.ca_pem.into_bytes(),
        manager_signing_cert_pem: b.signing_cert_pem.into_bytes(),
    }
}

/// The agent configuration of a simulated device.
pub fn agent_config(spec: &FleetSpec) -> AgentConfig {
    let mut config = AgentConfig {
        // Unused: the store and the identity are injected.
        identity_dir: PathBuf::from("in-memory"),
        data_dir: PathBuf::from("in-memory"),
        reconnect_min: Duration::from_millis(500),
        reconnect_max: Duration::from_secs(10),
        connect_timeout: spec.agent_connect_timeout,
        ..AgentConfig::default()
    };
    config.runtime.adapter = AdapterKind::Simulated;
    config.runtime.simulated.delay = spec.delay;
    // Capabilities need host facts a simulated device does not have; they
    // are one message per device at first connect and not what we measure.
    config.capabilities.enabled = false;
    config
}

impl SimFleet {
    /// Starts one agent per identity, `spec.start_batch` at a time, waiting
    /// for each batch to connect before the next. Prints progress.
    pub async fn start(spec: &FleetSpec, identities: Vec<IdentityPem>) -> Result<SimFleet> {
        let started = Instant::now();
        let deadline = started + spec.connect_timeout;
        let total = identities.len();
        let mut fleet = SimFleet {
            devices: Vec::with_capacity(total),
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
        };
        let config = agent_config(spec);
        let mut last_print = Instant::now();
        let mut pending = identities.into_iter();
        loop {
            let batch: Vec<IdentityPem> = pending.by_ref().take(spec.start_batch.max(1)).collect();
            if batch.is_empty() {
                break;
            }
            let from = fleet.devices.len();
            for pem in batch {
                let name = pem.name.clone();
                let identity =
                    Identity::from_pem(pem).with_context(|| format!("identity of {name}"))?;
                let agent = Agent::new(
                    config.clone(),
                    AgentOptions {
                        store: Some(Store::in_memory().context("in-memory store")?),
                        identity: Some(identity),
                        ..AgentOptions::default()
                    },
                )
                .with_context(|| format!("agent {name}"))?;
                let handle = agent.handle();
                let index = fleet.devices.len();
                fleet.devices.push(SimDevice {
                    name,
                    client_id: handle.client_id.clone(),
                    handle,
                });
                let token = fleet.stop.clone();
                fleet
                    .tasks
                    .spawn(async move { (index, agent.run(token).await) });
            }
            // Wait for this batch before starting the next.
            loop {
                fleet.check_alive()?;
                let connected = fleet.devices[from..]
                    .iter()
                    .filter(|d| d.handle.snapshots.borrow().connected)
                    .count();
                if connected == fleet.devices.len() - from {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "only {} of {} devices connected within {:?}",
                        fleet.connected(),
                        total,
                        spec.connect_timeout
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if last_print.elapsed() >= Duration::from_secs(1) || fleet.devices.len() == total {
                println!(
                    "[{:>6.1}s] connected {}/{total} devices",
                    started.elapsed().as_secs_f64(),
                    fleet.devices.len()
                );
                last_print = Instant::now();
            }
        }
        Ok(fleet)
    }

    /// How many devices are connected now.
    pub fn connected(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.handle.snapshots.borrow().connected)
            .count()
    }

    /// Fails if an agent stopped on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(joined) = self.tasks.try_join_next() {
            return Err(match joined {
                Ok((i, Err(e))) => anyhow::anyhow!("agent {} stopped: {e}", self.devices[i].name),
                Ok((i, Ok(()))) => {
                    anyhow::anyhow!("agent {} stopped on its own", self.devices[i].name)
                }
                Err(e) => anyhow::anyhow!("an agent task panicked: {e}"),
            });
        }
        Ok(())
    }

    /// Stops every agent (they say `offline` and disconnect), aborting those
    /// that take longer than `timeout`.
    pub async fn stop(mut self, timeout: Duration) {
        self.stop.cancel();
        let drained = tokio::time::timeout(timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.shutdown().await;
        }
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
