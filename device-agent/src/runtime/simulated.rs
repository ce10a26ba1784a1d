//! The simulated adapter: no workloads, just time and configurable failures.
//! Used by the demo, the fleet simulator and the tests.
//!
//! - Each component action takes the configured delay, or the component
//!   property `simulatedDelayMs` (a number) when present.
//! - An action fails when the component has a property
//!   `simulatedFailure: "<message>"`, or when the deployment id or component
//!   name is in the failure list (config `fail`, or [`SimulatedRuntime::set_fail`]).
//! - It records what is "running" and counts calls per (deployment, component).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use margo_schemas::deployment::{ApplicationDeployment, Component, ProfileType};
use margo_schemas::digest::Digest;

use super::{ApplyKind, Runtime, RuntimeError, RuntimeFuture, RuntimeInfo};
use crate::clock::Clock;
use crate::config::SimulatedConfig;

/// Component property overriding the configured delay (milliseconds).
pub const DELAY_PROPERTY: &str = "simulatedDelayMs";
/// Component property that makes every action on the component fail with its value.
pub const FAILURE_PROPERTY: &str = "simulatedFailure";

#[derive(Debug, Default)]
struct SimState {
    fail: BTreeSet<String>,
    running: BTreeMap<(String, String), Digest>,
    applies: BTreeMap<(String, String), u64>,
    removes: BTreeMap<(String, String), u64>,
}

/// The simulated runtime. Clone-free: share it as `Arc<SimulatedRuntime>`.
#[derive(Debug)]
pub struct SimulatedRuntime {
    delay: Mutex<Duration>,
    clock: Arc<dyn Clock>,
    state: Mutex<SimState>,
}

impl SimulatedRuntime {
    /// A simulated runtime with `config`'s delay and failure list.
    pub fn new(config: &SimulatedConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            delay: Mutex::new(config.delay),
            clock,
            state: Mutex::new(SimState {
                fail: config.fail.iter().cloned().collect(),
                ..SimState::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the failure list (deployment ids or component names).
    pub fn set_fail<I: IntoIterator<Item = S>, S: Into<String>>(&self, names: I) {
        self.state().fail = names.into_iter().map(Into::into).collect();
    }

    /// Replaces the default per-component delay.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// How often `apply` ran for (deployment id, component).
    pub fn apply_count(&self, deployment: &str, component: &str) -> u64 {
        self.state()
            .applies
            .get(&(deployment.to_string(), component.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// How often `remove` ran for (deployment id, component).
    pub fn remove_count(&self, deployment: &str, component: &str) -> u64 {
        self.state()
            .removes
            .get(&(deployment.to_string(), component.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// What is running: (deployment id, component) → digest of the deployment version.
    pub fn running(&self) -> BTreeMap<(String, String), Digest> {
        self.state().running.clone()
    }

    fn delay_for(&self, component: &Component) -> Duration {
        component
            .properties
            .get(DELAY_PROPERTY)
            .and_then(serde_json::Value::as_u64)
            .map_or_else(
                || *self.delay.lock().unwrap_or_else(PoisonError::into_inner),
                Duration::from_millis,
            )
    }

    fn failure_for(
        &self,
        deployment: &ApplicationDeployment,
        component: &Component,
    ) -> Option<String> {
        if let Some(value) = component.properties.get(FAILURE_PROPERTY) {
            return Some(match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        let state = self.state();
        if state.fail.contains(deployment.id.as_str()) || state.fail.contains(&component.name) {
            return Some(format!(
                "simulated failure of {} in {}",
                component.name, deployment.id
            ));
        }
        None
    }

    async fn act(
        &self,
        deployment: &ApplicationDeployment,
        component: &Component,
        remove: bool,
    ) -> Result<(), RuntimeError> {
        let key = (deployment.id.to_string(), component.name.clone());
        {
            let mut state = self.state();
            let counts = if remove {
                &mut state.removes
            } else {
                &mut state.applies
            };
            *counts.entry(key.clone()).or_default() += 1;
        }
        let delay = self.delay_for(component);
        if !delay.is_zero() {
            self.clock.sleep(delay).await;
        }
        if let Some(message) = self.failure_for(deployment, component) {
            return Err(RuntimeError::Failed(message));
        }
        let mut state = self.state();
        if remove {
            state.running.remove(&key);
        } else {
            state.running.insert(key, deployment.digest());
        }
        Ok(())
    }
}

impl Runtime for SimulatedRuntime {
    fn supported(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "simulated",
            profiles: vec![ProfileType::HelmV3, ProfileType::Compose],
        }
    }

    fn apply<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
        _kind: ApplyKind,
    ) -> RuntimeFuture<'a> {
        Box::pin(self.act(deployment, component, false))
    }

    fn remove<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
    ) -> RuntimeFuture<'a> {
        Box::pin(self.act(deployment, component, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    const DOC: &str = "apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  annotations:
    id: d1
  name: app
spec:
  deploymentProfile:
    type: compose
    components:
      - name: ok
        properties:
          simulatedDelayMs: 1
      - name: bad
        properties:
          simulatedFailure: disk full
";

    #[tokio::test]
    async fn delays_failures_and_counts() {
        let rt = SimulatedRuntime::new(&SimulatedConfig::default(), Arc::new(SystemClock));
        let doc = ApplicationDeployment::parse(DOC.as_bytes().to_vec()).unwrap();
        let ok = &doc.components[0];
        let bad = &doc.components[1];
        rt.apply(&doc, ok, ApplyKind::Install).await.unwrap();
        assert_eq!(
            rt.apply(&doc, bad, ApplyKind::Install).await,
            Err(RuntimeError::Failed("disk full".into()))
        );
        assert_eq!(rt.apply_count("d1", "ok"), 1);
        assert_eq!(rt.apply_count("d1", "bad"), 1);
        assert_eq!(rt.running().len(), 1);
        rt.set_fail(["ok"]);
        assert!(rt.apply(&doc, ok, ApplyKind::Update).await.is_err());
        rt.set_fail(Vec::<String>::new());
        rt.remove(&doc, ok).await.unwrap();
        assert!(rt.running().is_empty());
        assert_eq!(rt.remove_count("d1", "ok"), 1);
    }
}
