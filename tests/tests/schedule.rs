//! The schedule over simulated days: an in-process agent on a simulated wall
//! clock against a real `margo-manager` process (embedded broker, device
//! gateway, mutual TLS), with every connection counted by a TCP proxy in
//! front of the gateway, never by the agent itself.

use std::time::Duration;

use anyhow::Result;
use jiff::civil::date;
use jiff::tz::TimeZone;
use margo_agent::schedule_plan::ms;
use margo_agent::ConnectionStatus;
use margo_tests::eventually;
use margo_tests::fleet::{client_status, deployment_yaml, wait_converged, write_file, ManagerProc};
use margo_tests::simagent::SimAgent;

const D1: &str = "11111111-1111-4111-8111-111111111111";
const IDLE: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(60);

/// Berlin local time → Unix ms, computed here independently of the agent.
fn berlin(y: i16, m: i8, d: i8, h: i8, min: i8) -> u64 {
    let zoned = date(y, m, d)
        .at(h, min, 0, 0)
        .to_zoned(TimeZone::get("Europe/Berlin").unwrap())
        .unwrap();
    ms(zoned.timestamp())
}

const OFFICE_HOURS: &str = r#"
time_zone = "Europe/Berlin"
connection = "per-check"
[polling]
period = [{ start = "08:00", end = "18:00" }]
rate = "15m"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_check_office_hours_connect_exactly_at_each_check_for_two_days() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start(dir.path(), "")?;
    // Monday 2 March 2026, 00:00 in Berlin: outside the polling period.
    let start = berlin(2026, 3, 2, 0, 0);
    let mut agent = SimAgent::start(dir.path(), &manager, "office-1", start, |c| {
        c.schedule = Some(toml::from_str(OFFICE_HOURS).unwrap());
    })
    .await?;

    let mut expected = Vec::new();
    for day in [2, 3] {
        for k in 0..40 {
            expected.push(berlin(2026, 3, day, 8, 0) + k * 15 * 60_000);
        }
    }
    let evening = berlin(2026, 3, 2, 19, 0);
    let next_morning = berlin(2026, 3, 3, 8, 0);
    let end = berlin(2026, 3, 4, 0, 0);
    let files = dir.path().join("yaml");
    let mut deployed = false;
    loop {
        let next = agent.next_contact(IDLE).await?;
        if next >= end {
            break;
        }
        if !deployed && next > evening {
            // 19:00: the operator deploys; the device is away until morning.
            agent.clock.set_unix_ms(evening);
            let before = agent.proxy.connections().len();
            let v1 = write_file(
                &files,
                "a1.yaml",
                &deployment_yaml(D1, "alpha", &["web"], 1),
            )?;
            manager.ctl(&["deploy", "office-1", &v1])?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(
                agent.proxy.connections().len(),
                before,
                "a deploy must not make a per-check device connect outside its checks"
            );
            // At most the zero-deployment manifest (version 1) of a check before.
            assert!(agent.handle.snapshots.borrow().accepted_manifest_version <= 1);
            assert_eq!(agent.next_contact(IDLE).await?, next_morning);
            deployed = true;
        }
        agent.clock.set_unix_ms(next);
        if next == next_morning {
            // The first check of the next morning brings the deployment.
            agent.next_contact(IDLE).await?;
            let snapshot = agent.handle.snapshots.borrow().clone();
            assert_eq!(
                snapshot.accepted_manifest_version, 2,
                "the 08:00 check applies what was deployed at 19:00"
            );
            assert!(snapshot.deployments.contains_key(D1), "{snapshot:?}");
        }
    }

    let seen = agent.proxy.connections();
    assert_eq!(
        seen.len(),
        expected.len(),
        "one connection per check, 40 a day (08:00..17:45), none outside"
    );
    assert_eq!(seen, expected, "connections at exactly the check times");
    // Everything the device reported reached the manager during its checks.
    wait_converged(&manager, &["office-1"], 2, &[(D1, "installed")], CONVERGE).await?;
    assert!(agent.handle.snapshots.borrow().outbox_len == 0);
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_schedule_takes_effect_is_reported_and_can_be_cleared() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start(dir.path(), "")?;
    // Monday 19:00 in Berlin, no local schedule: connected all the time.
    let mut agent = SimAgent::start(
        dir.path(),
        &manager,
        "field-9",
        berlin(2026, 3, 2, 19, 0),
        |_| {},
    )
    .await?;
    let connected = |agent: &SimAgent| {
        let s = agent.handle.snapshots.borrow();
        s.connection == ConnectionStatus::Connected && s.next_contact_ms.is_none()
    };
    eventually(CONVERGE, "connected", || async {
        Ok(connected(&agent).then_some(()))
    })
    .await?;

    // The operator sets office hours: outside them now, so the agent reports
    // the schedule it follows and leaves until 08:00.
    let file = write_file(&dir.path().join("schedules"), "office.toml", OFFICE_HOURS)?;
    manager.ctl(&["clients", "schedule", "field-9", "--file", &file])?;
    assert_eq!(agent.next_contact(IDLE).await?, berlin(2026, 3, 3, 8, 0));
    let in_force = |version: u64| {
        let manager = &manager;
        move || async move {
            let status = manager.status()?;
            let reported = client_status(&status, "field-9").map(|c| c["scheduleInForce"].clone());
            Ok(reported.filter(|s| {
                s["source"] == "remote" && s["configVersion"].as_u64() == Some(version)
            }))
        }
    };
    let reported = eventually(CONVERGE, "the remote schedule reported", in_force(1)).await?;
    assert_eq!(reported["schedule"]["connection"], "per-check");

    // It is followed: one connection at 08:00, then away until 08:15.
    let before = agent.proxy.connections().len();
    agent.clock.set_unix_ms(berlin(2026, 3, 3, 8, 0));
    assert_eq!(agent.next_contact(IDLE).await?, berlin(2026, 3, 3, 8, 15));
    let seen = agent.proxy.connections();
    assert_eq!(seen.len(), before + 1);
    assert_eq!(seen.last(), Some(&berlin(2026, 3, 3, 8, 0)));

    // Cleared: the 08:15 check brings it, and without a local schedule the
    // agent stays connected from then on and reports no schedule.
    manager.ctl(&["clients", "schedule", "field-9", "--clear"])?;
    agent.clock.set_unix_ms(berlin(2026, 3, 3, 8, 15));
    eventually(CONVERGE, "connected for good", || async {
        Ok(connected(&agent).then_some(()))
    })
    .await?;
    eventually(CONVERGE, "no schedule reported", || async {
        let status = manager.status()?;
        Ok(client_status(&status, "field-9")
            .is_some_and(|c| c["scheduleInForce"].is_null())
            .then_some(()))
    })
    .await?;
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_mode_stays_connected_and_checks_in_band_at_the_polling_rate() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = ManagerProc::start(dir.path(), "")?;
    let start = berlin(2026, 3, 2, 9, 0);
    let mut agent = SimAgent::start(dir.path(), &manager, "line-3", start, |c| {
        c.schedule = Some(
            toml::from_str(
                "time_zone = \"Europe/Berlin\"\n[polling]\nperiod = [{ start = \"08:00\", end = \"18:00\" }]\nrate = \"15m\"\n",
            )
            .unwrap(),
        );
        // Only the in-band checks send state reports in this hour.
        c.state_interval = Duration::from_secs(24 * 3600);
    })
    .await?;
    let admin = margo_manager::admin::AdminClient::new(&manager.socket);
    let state_times = || async {
        let uplink = admin
            .uplink("line-3")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok::<_, anyhow::Error>(
            uplink
                .into_iter()
                .filter(|u| u.kind == "state")
                .map(|u| u.ts)
                .collect::<Vec<_>>(),
        )
    };
    eventually(CONVERGE, "connected", || async {
        let s = agent.handle.snapshots.borrow().clone();
        Ok((s.connection == ConnectionStatus::Connected && s.outbox_len == 0).then_some(()))
    })
    .await?;
    let before = state_times().await?.len();
    let checks: Vec<u64> = (1..=4).map(|k| start + k * 15 * 60_000).collect();
    for (i, check) in checks.iter().enumerate() {
        agent.clock.set_unix_ms(*check);
        eventually(
            CONVERGE,
            &format!("state report of the check at {check}"),
            || async { Ok((state_times().await?.len() > before + i).then_some(())) },
        )
        .await?;
    }
    let times = state_times().await?;
    assert_eq!(
        &times[before..],
        checks.as_slice(),
        "one state report per check, at the check"
    );
    assert_eq!(agent.proxy.connections().len(), 1, "connected throughout");
    agent.stop().await
}
