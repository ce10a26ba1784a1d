//! The margo-mqtt topic tree, and the per-device authorization rules over it.
//!
//! Every topic string in the project is built here. Device-scoped topics live
//! under `margo/v1/clients/{clientId}`; see `docs/architecture.md`.

use crate::ids::{ClientId, DeploymentId};

/// Root of everything this protocol publishes.
pub const ROOT: &str = "margo/v1";
/// Prefix of every device-scoped topic.
pub const CLIENTS: &str = "margo/v1/clients";
/// Prefix of the operator-facing JSON fleet view.
pub const FLEET: &str = "margo/v1/fleet";

fn client_root(client: &ClientId) -> String {
    format!("{CLIENTS}/{client}")
}

/// `R/desired/manifest`: signed state manifest (manager → device, retained).
pub fn desired_manifest(client: &ClientId) -> String {
    format!("{}/desired/manifest", client_root(client))
}

/// `R/desired/deployments/{deploymentId}`: signed deployment YAML (manager → device, retained).
pub fn desired_deployment(client: &ClientId, deployment: &DeploymentId) -> String {
    format!("{}/desired/deployments/{deployment}", client_root(client))
}

/// `R/desired/#`: what a device subscribes to for its desired state.
pub fn desired_filter(client: &ClientId) -> String {
    format!("{}/desired/#", client_root(client))
}

/// `R/config`: signed remote settings (manager → device, retained).
pub fn config(client: &ClientId) -> String {
    format!("{}/config", client_root(client))
}

/// `R/ack`: signed uplink acknowledgement (manager → device, retained).
pub fn ack(client: &ClientId) -> String {
    format!("{}/ack", client_root(client))
}

/// `R/capabilities` (device → manager).
pub fn capabilities(client: &ClientId) -> String {
    format!("{}/capabilities", client_root(client))
}

/// `R/status/{deploymentId}` (device → manager).
pub fn status(client: &ClientId, deployment: &DeploymentId) -> String {
    format!("{}/status/{deployment}", client_root(client))
}

/// `R/state` (device → manager).
pub fn state(client: &ClientId) -> String {
    format!("{}/state", client_root(client))
}

/// `R/sync` (device → manager).
pub fn sync(client: &ClientId) -> String {
    format!("{}/sync", client_root(client))
}

/// `R/presence` (device → operators, retained, also the last will).
pub fn presence(client: &ClientId) -> String {
    format!("{}/presence", client_root(client))
}

/// `margo/v1/fleet/{clientId}`: JSON device summary for MQTT Explorer.
pub fn fleet_device(client: &ClientId) -> String {
    format!("{FLEET}/{client}")
}

/// `margo/v1/fleet/summary`: JSON fleet counts.
pub fn fleet_summary() -> String {
    format!("{FLEET}/summary")
}

/// The uplink filters on which no retained message should ever be: all
/// but presence. The manager subscribes to them again now and then to find
/// (and clear) retained messages a device left on an external broker.
pub fn manager_retained_sweep_filters() -> Vec<String> {
    ["capabilities", "status/+", "state", "sync"]
        .iter()
        .map(|leaf| format!("{CLIENTS}/+/{leaf}"))
        .collect()
}

/// Filters the manager subscribes to for device uplink.
pub fn manager_uplink_filters() -> Vec<String> {
    ["capabilities", "status/+", "state", "sync", "presence"]
        .iter()
        .map(|leaf| format!("{CLIENTS}/+/{leaf}"))
        .collect()
}

/// A device-scoped topic, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceTopic {
    DesiredManifest,
    DesiredDeployment(DeploymentId),
    Config,
    Ack,
    Capabilities,
    Status(DeploymentId),
    State,
    Sync,
    Presence,
}

impl DeviceTopic {
    /// Whether the device itself publishes on this topic (uplink).
    pub fn is_uplink(&self) -> bool {
        matches!(
            self,
            Self::Capabilities | Self::Status(_) | Self::State | Self::Sync | Self::Presence
        )
    }
}

/// Splits `margo/v1/clients/{clientId}/...` into its client and leaf; `None` for any other topic.
pub fn parse_device_topic(topic: &str) -> Option<(ClientId, DeviceTopic)> {
    let rest = topic.strip_prefix(CLIENTS)?.strip_prefix('/')?;
    let (client, leaf) = rest.split_once('/')?;
    let client = ClientId::new(client).ok()?;
    let parsed = match leaf {
        "desired/manifest" => DeviceTopic::DesiredManifest,
        "config" => DeviceTopic::Config,
        "ack" => DeviceTopic::Ack,
        "capabilities" => DeviceTopic::Capabilities,
        "state" => DeviceTopic::State,
        "sync" => DeviceTopic::Sync,
        "presence" => DeviceTopic::Presence,
        other => {
            if let Some(id) = other.strip_prefix("desired/deployments/") {
                DeviceTopic::DesiredDeployment(DeploymentId::new(id).ok()?)
            } else if let Some(id) = other.strip_prefix("status/") {
                DeviceTopic::Status(DeploymentId::new(id).ok()?)
            } else {
                return None;
            }
        }
    };
    Some((client, parsed))
}

/// May the device authenticated as `client` publish on `topic`?
///
/// Only its own uplink topics. Wildcards are never valid in a publish topic.
pub fn device_may_publish(client: &ClientId, topic: &str) -> bool {
    match parse_device_topic(topic) {
        Some((owner, leaf)) => &owner == client && leaf.is_uplink(),
        None => false,
    }
}

/// May the device authenticated as `client` subscribe to `filter`?
///
/// Exactly its own downlink filters: `R/desired/#`, `R/desired/manifest`,
/// `R/desired/deployments/+` or a single deployment, `R/config`, `R/ack`.
/// Nothing that could match another client's topics.
pub fn device_may_subscribe(client: &ClientId, filter: &str) -> bool {
    let root = client_root(client);
    let Some(leaf) = filter
        .strip_prefix(root.as_str())
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    match leaf {
        "desired/#" | "desired/manifest" | "desired/deployments/+" | "config" | "ack" => true,
        other => other
            .strip_prefix("desired/deployments/")
            .is_some_and(|id| DeploymentId::new(id).is_ok()),
    }
}

/// Largest retained presence payload (or last will) a device may leave in
/// the broker; the agents send `online` and `offline`.
pub const MAX_PRESENCE_BYTES: usize = 64;

/// May a device leave a retained message of `len` bytes on `topic`? Only a
/// presence of at most [`MAX_PRESENCE_BYTES`]: devices store no other
/// retained data in the broker (the gateway refuses it; on an external
/// broker the manager clears it).
pub fn device_may_retain(topic: &str, len: usize) -> bool {
    len <= MAX_PRESENCE_BYTES
        && matches!(parse_device_topic(topic), Some((_, DeviceTopic::Presence)))
}

/// Whether `topic` is a device uplink topic (`R/capabilities`,
/// `R/status/+`, `R/state`, `R/sync`, `R/presence`) of any client.
pub fn is_device_uplink(topic: &str) -> bool {
    parse_device_topic(topic).is_some_and(|(_, leaf)| leaf.is_uplink())
}

/// May the device authenticated as `client` set a last will on `topic`?
///
/// Only its own presence topic.
pub fn device_may_set_will(client: &ClientId, topic: &str) -> bool {
    topic == presence(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }
    fn d(s: &str) -> DeploymentId {
        DeploymentId::new(s).unwrap()
    }

    #[test]
    fn builders_and_parser_agree() {
        let a = c("abc123");
        let dep = d("3f1c");
        let cases = [
            (desired_manifest(&a), DeviceTopic::DesiredManifest),
            (
                desired_deployment(&a, &dep),
                DeviceTopic::DesiredDeployment(dep.clone()),
            ),
            (config(&a), DeviceTopic::Config),
            (ack(&a), DeviceTopic::Ack),
            (capabilities(&a), DeviceTopic::Capabilities),
            (status(&a, &dep), DeviceTopic::Status(dep.clone())),
            (state(&a), DeviceTopic::State),
            (sync(&a), DeviceTopic::Sync),
            (presence(&a), DeviceTopic::Presence),
        ];
        for (topic, leaf) in cases {
            assert_eq!(
                parse_device_topic(&topic),
                Some((a.clone(), leaf)),
                "{topic}"
            );
        }
        assert_eq!(
            desired_manifest(&a),
            "margo/v1/clients/abc123/desired/manifest"
        );
    }

    #[test]
    fn devices_publish_only_their_own_uplink() {
        let a = c("aaa");
        let b = c("bbb");
        let dep = d("x1");
        assert!(device_may_publish(&a, &status(&a, &dep)));
        assert!(device_may_publish(&a, &presence(&a)));
        assert!(!device_may_publish(&a, &status(&b, &dep)));
        assert!(!device_may_publish(&a, &desired_manifest(&a)));
        assert!(!device_may_publish(&a, &ack(&a)));
        assert!(!device_may_publish(&a, "margo/v1/clients/aaa/status/+"));
        assert!(!device_may_publish(&a, "margo/v1/clients/aaa/status/#"));
        assert!(!device_may_publish(&a, "margo/v1/fleet/aaa"));
        assert!(!device_may_publish(&a, "margo/v1/clients/aaa/other"));
    }

    #[test]
    fn devices_subscribe_only_to_their_own_downlink() {
        let a = c("aaa");
        assert!(device_may_subscribe(&a, &desired_filter(&a)));
        assert!(device_may_subscribe(&a, &config(&a)));
        assert!(device_may_subscribe(&a, &ack(&a)));
        assert!(device_may_subscribe(
            &a,
            "margo/v1/clients/aaa/desired/deployments/+"
        ));
        for bad in [
            "#",
            "margo/#",
            "margo/v1/clients/+/desired/#",
            "margo/v1/clients/bbb/desired/#",
            "margo/v1/clients/aaa/#",
            "margo/v1/clients/aaa/+",
            "margo/v1/clients/aaa/status/+",
            "margo/v1/clients/aaa/desired/deployments/#/x",
            "margo/v1/clients/aaab/desired/#",
            "margo/v1/clients/aa/desired/#",
            "$share/g/margo/v1/clients/aaa/desired/#",
        ] {
            assert!(!device_may_subscribe(&a, bad), "{bad} allowed");
        }
    }

    #[test]
    fn will_only_on_own_presence() {
        let a = c("aaa");
        assert!(device_may_set_will(&a, "margo/v1/clients/aaa/presence"));
        assert!(!device_may_set_will(&a, "margo/v1/clients/bbb/presence"));
        assert!(!device_may_set_will(&a, "margo/v1/clients/aaa/status/x"));
    }

    #[test]
    fn devices_retain_only_a_small_presence() {
        let a = c("aaa");
        assert!(device_may_retain(&presence(&a), 7));
        assert!(!device_may_retain(&presence(&a), MAX_PRESENCE_BYTES + 1));
        assert!(!device_may_retain(&state(&a), 1));
        assert!(!device_may_retain("margo/v1/fleet/summary", 1));
        assert!(is_device_uplink(&state(&a)) && is_device_uplink(&presence(&a)));
        assert!(!is_device_uplink(&ack(&a)) && !is_device_uplink("other/topic"));
    }
}
