//! The quick crash campaign (issue 12): a few real agents behind
//! fault-injecting proxies through a short rollout while a seeded schedule
//! kills the manager, Mosquitto and agents and breaks links; every
//! invariant must hold. A failing seed replays with the command the report
//! prints (`margo-fleetsim campaign … --seed S`).
//!
//! Fixed seeds, so a failure here is a reproducible schedule, not bad luck.

use std::time::Duration;

use anyhow::Result;
use margo_testkit::mosquitto;
use margo_tests::campaign::{self, CampaignOptions};
use margo_tests::fleetsim::harness::BrokerKind;

/// Devices, versions and fault time of the quick variant.
const DEVICES: usize = 3;
const VERSIONS: u32 = 4;
const DURATION: Duration = Duration::from_secs(40);

async fn quick(seed: u64, broker: BrokerKind) -> Result<()> {
    margo_tests::init_tracing();
    let mut opts = CampaignOptions::new(seed, DEVICES, VERSIONS, DURATION);
    opts.broker = broker;
    let report = campaign::run(&opts).await?;
    println!("{}", report.text());
    assert!(report.passed(), "campaign failed:\n{}", report.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_campaign_embedded_broker() -> Result<()> {
    quick(1201, BrokerKind::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_campaign_mosquitto() -> Result<()> {
    if !mosquitto::available() {
        return Ok(());
    }
    quick(1202, BrokerKind::Mosquitto).await
}

#[test]
fn a_seed_replays_its_schedule() {
    use margo_tests::campaign::schedule::Schedule;
    let opts = |seed| CampaignOptions::new(seed, DEVICES, VERSIONS, DURATION).schedule_spec();
    let a = Schedule::draw(&opts(1201));
    assert_eq!(a, Schedule::draw(&opts(1201)));
    assert_ne!(a, Schedule::draw(&opts(1202)));
    let counts = a.counts();
    assert!(
        counts.len() >= 4,
        "a schedule with few kinds of steps: {counts:?}"
    );
}
