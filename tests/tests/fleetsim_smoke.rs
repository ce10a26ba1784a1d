//! CI smoke of the fleet simulator: the quick fan-out with a handful of
//! simulated devices against a real `margo-manager serve` process. Asserts
//! convergence and that the results are written, never timings.

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
