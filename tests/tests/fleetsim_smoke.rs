//! CI smoke of the fleet simulator: the quick fan-out and the quick uplink
//! ingest benchmark, with a handful of simulated devices against a real
//! `margo-manager serve` process. Asserts convergence, exactly-once storage
//! and that the results are written, never timings.

use std::time::Duration;

use anyhow::Result;
use margo_tests::fleetsim::fanout::{self, FanoutOptions};

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
