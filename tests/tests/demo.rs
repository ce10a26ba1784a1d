//! `margo-demo` as a library call: a manager with the embedded broker
//! and gateway on loopback port 0 and three real agents in this process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use margo_manager::AdminClient;
use margo_schemas::deployment::ApplicationDeployment;
use margo_schemas::ids::DeploymentId;
use margo_schemas::status::DeploymentState;
use margo_tests::demo::{is_converged, run_demo, DemoOptions, EXAMPLES};
use tokio_util::sync::CancellationToken;

/// Far more than three devices with a 20 ms delay need; a failure here is a hang.
const CONVERGE: Duration = Duration::from_secs(60);

fn example_ids() -> Vec<DeploymentId> {
    let mut ids: Vec<DeploymentId> = EXAMPLES
        .iter()
        .map(|(file, text)| {
            ApplicationDeployment::parse(text.as_bytes().to_vec())
                .unwrap_or_else(|e| panic!("{file}: {e}"))
                .id
        })
        .collect();
    ids.sort();
    ids
}

fn options(dir: Option<&std::path::Path>, exit_when_converged: bool) -> DemoOptions {
    DemoOptions {
        devices: 3,
        data_dir: dir.map(|d| d.to_path_buf()),
        delay: Duration::from_millis(20),
        timeout: CONVERGE,
        exit_when_converged,
        progress_interval: Duration::from_millis(100),
        ..DemoOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_converge_with_both_examples_installed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = run_demo(options(Some(dir.path()), true), CancellationToken::new());
    let report = tokio::time::timeout(CONVERGE + Duration::from_secs(30), demo)
        .await
        .unwrap_or_else(|_| {
            panic!("run_demo did not return within {CONVERGE:?} plus shutdown time")
        })
        .unwrap_or_else(|e| panic!("demo failed: {e}"));

    let expected = example_ids();
    let names: Vec<&str> = report.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["demo-device-1", "demo-device-2", "demo-device-3"]);
    for device in &report.devices {
        // Version 1 is the zero-deployment manifest; the examples make 2.
        assert!(device.desired_version >= 2, "{device:?}");
        assert_eq!(
            device.adopted_version,
            Some(device.desired_version),
            "{} did not adopt its desired manifest: {device:?}",
            device.name
        );
        let mut installed = device.installed.clone();
        installed.sort();
        assert_eq!(installed, expected, "{} installed", device.name);
    }

    // The manager's own view at convergence, deployment by deployment.
    assert_eq!(report.status.len(), 3);
    for client in &report.status {
        assert!(is_converged(client), "not converged: {client:#?}");
        let mut ids: Vec<DeploymentId> = client
            .deployments
            .iter()
            .map(|d| d.deployment_id.clone())
            .collect();
        ids.sort();
        assert_eq!(ids, expected, "{}: deployments", client.name);
        for d in &client.deployments {
            assert!(d.desired_digest.is_some(), "{}: {d:?}", client.name);
            assert_eq!(d.state, Some(DeploymentState::Installed), "{}", client.name);
            assert!(!d.components.is_empty(), "{}: no components", client.name);
            assert!(
                d.components
                    .iter()
                    .all(|c| c.state == DeploymentState::Installed),
                "{}: {d:?}",
                client.name
            );
        }
    }
    assert!(report.mqtt_addr.is_some_and(|a| a.ip().is_loopback()));
    assert!(report.gateway_addr.is_some_and(|a| a.ip().is_loopback()));
    assert!(report.kept, "a given --data-dir is kept");
    assert!(
        !report.admin_socket.exists(),
        "the admin socket is removed on shutdown"
    );
}

/// Without `exit_when_converged` the demo serves (an independent admin client
/// sees the converged fleet) until the shutdown token is cancelled, then stops
/// cleanly; a second run on the same directory reuses the provisioned devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_until_cancelled_and_resumes_in_the_same_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = CancellationToken::new();
    let finished = AtomicBool::new(false);
    // `Manager::start` is not `Send`, so the demo cannot be spawned: both
    // futures run in this task.
    let demo = async {
        let result = run_demo(options(Some(dir.path()), false), token.clone()).await;
        finished.store(true, Ordering::SeqCst);
        result
    };
    let observer = async {
        let admin = AdminClient::new(dir.path().join("admin.sock"));
        let converged = tokio::time::timeout(CONVERGE, async {
            loop {
                if let Ok(status) = admin.status(None).await {
                    if status.len() == 3 && status.iter().all(is_converged) {
                        return status;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        // Let the demo print its table and start serving before stopping it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let serving = !finished.load(Ordering::SeqCst);
        token.cancel();
        (converged, serving)
    };
    let (report, (converged, serving)) =
        tokio::time::timeout(CONVERGE + Duration::from_secs(30), async {
            tokio::join!(demo, observer)
        })
        .await
        .expect("the demo did not stop within 30 s of cancellation");
    let converged = converged.unwrap_or_else(|_| {
        panic!("the serving demo's manager did not report 3 converged devices within {CONVERGE:?}")
    });
    assert!(serving, "the demo stopped before being cancelled");
    let report = report.unwrap_or_else(|e| panic!("demo failed: {e}"));
    let first_ids: Vec<_> = report.devices.iter().map(|d| d.client_id.clone()).collect();
    let mut seen: Vec<_> = converged.iter().map(|c| c.client_id.clone()).collect();
    let mut reported = first_ids.clone();
    seen.sort();
    reported.sort();
    assert_eq!(
        seen, reported,
        "the report names other clients than the manager"
    );

    // Same directory again: same clients, nothing redeployed, converged at once.
    let again = tokio::time::timeout(
        CONVERGE + Duration::from_secs(30),
        run_demo(options(Some(dir.path()), true), CancellationToken::new()),
    )
    .await
    .expect("the second run did not return in time")
    .unwrap_or_else(|e| panic!("second run failed: {e}"));
    let again_ids: Vec<_> = again.devices.iter().map(|d| d.client_id.clone()).collect();
    assert_eq!(
        again_ids, first_ids,
        "the second run provisioned new clients"
    );
    for (before, after) in report.devices.iter().zip(&again.devices) {
        assert_eq!(
            before.desired_version, after.desired_version,
            "redeploying identical documents must not bump the manifest version"
        );
    }
}
