//! The human-readable fleet table of `margoctl status` and the demo: one line
//! per client, then one per deployment and one per component.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::status_view::ClientStatus;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `12s ago`, `3m ago`, ..., or `never`.
fn ago(ms: Option<u64>, now_ms: u64) -> String {
    let Some(ms) = ms else {
        return "never".into();
    };
    let secs = now_ms.saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Renders `clients` as a table; "last seen" is relative to `now_ms`.
pub fn render(clients: &[ClientStatus], now_ms: u64) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{:<28} {:<20} {:<22} {:>7} {:>7} {:>8}  LAST SEEN",
        "CLIENT", "NAME", "AVAILABILITY", "DESIRED", "ADOPTED", "ACKED"
    );
    for c in clients {
        let _ = writeln!(
            out,
            "{:<28} {:<20} {:<22} {:>7} {:>7} {:>8}  {}",
            c.client_id,
            c.name,
            c.availability.as_str(),
            c.desired_version,
            or_dash(c.adopted_version),
            c.acked_seq,
            ago(c.last_seen, now_ms)
        );
        if let Some(cloned) = &c.cloned {
            let _ = writeln!(out, "    ! {}", cloned.describe());
        }
        for d in &c.deployments {
            let desired = if d.desired_digest.is_some() {
                ""
            } else {
                " (not desired)"
            };
            let error = d
                .error
                .as_ref()
                .map(|e| format!("  error {}: {}", e.code, e.message))
                .unwrap_or_default();
            let api = d
                .api_version
                .as_ref()
                .map(|v| format!("  {v}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {:<38} {:<28} {:<10} v{}{api}{desired}{error}",
                d.deployment_id,
                d.name.as_deref().unwrap_or("-"),
                or_dash(d.state),
                or_dash(d.reported_manifest_version),
            );
            for comp in &d.components {
                let _ = writeln!(out, "        {:<34} {}", comp.name, comp.state);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use margo_schemas::ids::{ClientId, DeploymentId};
    use margo_schemas::status::{ComponentStatus, DeploymentState};

    use super::*;
    use crate::status_view::DeploymentView;

    #[test]
    fn renders_clients_deployments_and_components() {
        let client = ClientStatus {
            client_id: ClientId::new("abc").expect("id"),
            name: "press-7".into(),
            revoked: false,
            desired_version: 2,
            adopted_version: Some(1),
            applying_version: Some(1),
            presence: "online".into(),
            last_seen: Some(10_000),
            acked_seq: 9,
            agent_version: None,
            schedule_in_force: None,
            availability: crate::availability::Availability::BetweenChecks,
            cloned: None,
            deployments: vec![DeploymentView {
                deployment_id: DeploymentId::new("d1").expect("id"),
                name: Some("line-monitor".into()),
                api_version: Some("application.margo.org/v1alpha1".into()),
                desired_digest: Some("sha256:00".into()),
                state: Some(DeploymentState::Installing),
                components: vec![ComponentStatus {
                    name: "timeseries-db".into(),
                    state: DeploymentState::Installed,
                    error: None,
                }],
                error: None,
                reported_manifest_version: Some(2),
                updated_at: Some(10_000),
            }],
        };
        let text = render(&[client], 75_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("CLIENT"));
        assert!(lines[0].contains("AVAILABILITY"));
        assert!(lines[1].contains("press-7") && lines[1].ends_with("1m ago"));
        assert!(lines[1].contains(" between-checks "), "{text}");
        assert!(lines[2].contains("line-monitor") && lines[2].contains("installing"));
        assert!(
            lines[2].contains(" v2  application.margo.org/v1alpha1"),
            "{text}"
        );
        assert!(lines[3].contains("timeseries-db") && lines[3].ends_with("installed"));
    }

    #[test]
    fn a_suspected_clone_is_shown_under_its_client() {
        let mut client = ClientStatus {
            client_id: ClientId::new("abc").expect("id"),
            name: "press-7".into(),
            revoked: false,
            desired_version: 1,
            adopted_version: None,
            applying_version: None,
            presence: "online".into(),
            last_seen: None,
            acked_seq: 0,
            agent_version: None,
            schedule_in_force: None,
            availability: crate::availability::Availability::Online,
            cloned: None,
            deployments: Vec::new(),
        };
        client.cloned = Some(crate::status_view::CloneSuspicion {
            sources: vec!["address 192.0.2.1".into(), "address 192.0.2.2".into()],
            since: 0,
            last_seen: 0,
        });
        let text = render(&[client], 75_000);
        assert!(
            text.lines().nth(2).is_some_and(|l| l.contains(
                "! identity in use from 2 sources (cloned?) since 1970-01-01T00:00:00Z: address 192.0.2.1, address 192.0.2.2"
            )),
            "{text}"
        );
    }
}
