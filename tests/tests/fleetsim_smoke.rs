//! CI smoke of the fleet simulator: the quick fan-out, the quick reconnect
//! storm, the quick wire benchmark, the quick uplink ingest benchmark and
//! the quick agent footprint, with a handful of simulated devices (or the
//! real agent binary) against a real `margo-manager serve` process. Asserts convergence, exactly-once storage and that the results
//! are written, never timings.

use std::time::Duration;

use anyhow::Result;
use margo_tests::fleetsim::fanout::{self, FanoutOptions};
use margo_tests::fleetsim::harness::BrokerKind;
use margo_tests::fleetsim::storm::{self, StormOptions};

const DEVICES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_converges_on_a_fanout_deploy_and_the_report_is_written() -> Result<()> {
    margo_tests::init_tracing();
    let out = tempfile::tempdir()?;
    let mut opts = FanoutOptions::new(DEVICES, out.path().to_path_buf());
    opts.quick = true;
    opts.converge_timeout = Duration::from_secs(120);
    opts.manager_log = "info".into();
    let report = fanout::run(&opts).await?;

    assert_eq!(report.phases.len(), 2, "initial and update phases ran");
    for phase in &report.phases {
        assert_eq!(
            (phase.devices, phase.converged, phase.latency_ms.count),
            (DEVICES, DEVICES, DEVICES),
            "{}: every device's installed status is stored at the manager",
            phase.name
        );
    }
    assert!(report.converged());

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("fanout-5.json"))?)?;
    assert_eq!(json["benchmark"], "fanout");
    assert_eq!(json["phases"][1]["converged"], DEVICES);
    let md = std::fs::read_to_string(out.path().join("fanout-5.md"))?;
    assert!(md.contains("| update | 5/5 |"), "{md}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulated_device_resyncs_after_the_embedded_broker_restarts() -> Result<()> {
    margo_tests::init_tracing();
    let out = tempfile::tempdir()?;
    let mut opts = StormOptions::new(DEVICES, BrokerKind::Embedded, out.path().to_path_buf());
    opts.quick = true;
    opts.converge_timeout = Duration::from_secs(120);
    opts.resync_timeout = Duration::from_secs(120);
    opts.manager_log = "info".into();
    let report = storm::run(&opts).await?;

    assert_eq!(
        (report.resynced, report.left_behind),
        (DEVICES, 0),
        "every device re-synced after the restart"
    );
    for (what, p) in [
        ("reconnected", &report.reconnected_ms),
        ("manifest confirmed", &report.confirmed_ms),
        ("heard by the manager", &report.heard_ms),
        ("re-synced", &report.resync_ms),
    ] {
        assert_eq!(p.count, DEVICES, "{what}: every device");
    }
    assert!(
        report.agents.connects >= DEVICES as u64,
        "every agent connected again: {:?}",
        report.agents
    );
    // The embedded broker keeps no sessions across a restart: each agent
    // sees its session gone and asks the manager for a sync.
    assert!(
        report.agents.syncs >= DEVICES as u64,
        "every agent asked for a sync after losing its session: {:?}",
        report.agents
    );
    assert!(report.converged());

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("storm-5-embedded.json"))?)?;
    assert_eq!(json["benchmark"], "storm");
    assert_eq!(json["left_behind"], 0);
    let md = std::fs::read_to_string(out.path().join("storm-5-embedded.md"))?;
    assert!(
        md.contains("**5 of 5 devices re-synced, 0 left behind**"),
        "{md}"
    );
    Ok(())
}

/// The quick bytes-on-the-wire benchmark: every measured check converged
/// (the benchmark fails otherwise), the idle window saw its keep-alive pings
/// and one periodic state report, and the report is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_wire_benchmark_measures_every_check_and_the_idle_device() -> Result<()> {
    use margo_tests::fleetsim::wire::{self, WireOptions};
    margo_tests::init_tracing();
    let out = tempfile::tempdir()?;
    let report = wire::run(&WireOptions {
        out_dir: out.path().to_path_buf(),
        quick: true,
        idle_periods: 2,
        keep_alive: None,
    })
    .await?;
    for t in [&report.mqtt, &report.http] {
        assert_eq!(
            t.no_change_2.connections, 1,
            "{}: one connection per check",
            t.transport
        );
        assert!(
            t.update_check.total > t.no_change_2.total,
            "{}: the update check fetched more than a no-change check",
            t.transport
        );
    }
    assert_eq!(report.idle.periods, 2);
    assert!(
        report.idle.window.up > 0 && report.idle.window.down > 0,
        "keep-alive pings seen"
    );
    assert!(
        report.idle.state_report.up > 0,
        "a periodic state report was sent"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("wire.json"))?)?;
    assert_eq!(json["benchmark"], "wire");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_ingest_benchmark_stores_and_acks_every_message_exactly_once() -> Result<()> {
    use margo_tests::fleetsim::ingest::{self, IngestOptions};

    margo_tests::init_tracing();
    let out = tempfile::tempdir()?;
    let opts = IngestOptions::quick(out.path().to_path_buf());
    let sent = opts.messages as u64;
    let report = ingest::run(&opts).await?;

    assert_eq!(
        (report.sent, report.acked),
        (sent, sent),
        "every message sealed was sent and acked"
    );
    assert_eq!(
        (
            report.manager_stored,
            report.manager_duplicates,
            report.manager_rejected
        ),
        (sent, 0, 0),
        "the manager stored each message once and rejected none"
    );
    assert_eq!(
        report.stored_in_log, sent,
        "the uplink logs hold every message"
    );
    assert!(report.exactly_once, "{}", report.markdown());
    assert!(report.batch_size.count > 0 && report.commit_us.count == report.batch_size.count);
    assert_eq!(report.latency_ms.count as u64, sent);

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("ingest-quick.json"))?)?;
    assert_eq!(json["benchmark"], "ingest");
    assert_eq!(json["acked"], sent);
    let md = std::fs::read_to_string(out.path().join("ingest-quick.md"))?;
    assert!(md.contains("exactly once: yes"), "{md}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_footprint_benchmark_measures_the_real_agent_process() -> Result<()> {
    use margo_tests::fleetsim::footprint::{self, FootprintOptions};

    margo_tests::init_tracing();
    let out = tempfile::tempdir()?;
    let agent = margo_tests::bin("margo-agent");
    let opts = FootprintOptions {
        agent: agent.clone(),
        label: "smoke".into(),
        delay: Duration::from_millis(50),
        settle: Duration::from_secs(1),
        out_dir: out.path().to_path_buf(),
    };
    let report = footprint::run(&opts).await?;

    assert_eq!(report.file_bytes, std::fs::metadata(&agent)?.len());
    assert!(report.idle_rss_bytes > 0, "{}", report.markdown());
    assert!(
        report.idle_rss_anon_bytes > 0 && report.idle_rss_file_bytes > 0,
        "{}",
        report.markdown()
    );
    assert!(report.apply_peak_rss_bytes > 0 && report.threads > 0);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("footprint-smoke.json"))?)?;
    assert_eq!(json["benchmark"], "footprint");
    assert!(out.path().join("footprint-smoke.md").exists());
    Ok(())
}
