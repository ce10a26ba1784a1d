//! The `[metrics]` listener of a real manager: `GET /metrics` is Prometheus
//! text with the manager's and the gateway's counters, and they move when a
//! device connects through the gateway, a status arrives and a forbidden
//! subscribe is refused; `/healthz` and `/readyz` answer 200 once ready.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use common::{config, start, FakeDevice, WAIT};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::{Envelope, Message, StatusReport};
use margo_schemas::status::{ComponentStatus, DeploymentState, DeploymentStatus};
use margo_schemas::topics;
use margo_testkit::{eventually_async, within};
use rumqttc::QoS;
use tokio::net::TcpStream;

const DEPLOYMENT_ID: &str = "a3e2f5dc-912e-494f-8395-52cf3769bc06";

fn yaml() -> String {
    format!(
        "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
         metadata:\n  annotations:\n    id: {DEPLOYMENT_ID}\n    applicationId: com-example-app\n  name: example-app\n\
         spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
         \x20     - name: web\n        properties:\n          packageLocation: https://example.com/app.tar.gz\n          revision: \"1\"\n"
    )
}

/// One plain HTTP/1.1 GET: status, content type and body.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    within(WAIT, &format!("GET {path}"), async {
        let tcp = TcpStream::connect(addr).await.expect("TCP connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP handshake");
        let driver = tokio::spawn(conn);
        let request = Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        driver.abort();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).expect("UTF-8 body"),
        )
    })
    .await
}

/// Parses Prometheus text: `name{labels} value` lines keyed by
/// `name{labels}` exactly as written (`name` alone without labels).
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("a sample line has a value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {line:?} is a number: {e}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, content_type, body) = get(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4");
    parse(&body)
}

/// Waits until `series` is at least `min` in a scrape.
async fn wait_for(addr: SocketAddr, series: &str, min: f64) {
    eventually_async(
        WAIT,
        &format!("{series} >= {min} in /metrics"),
        async || scrape(addr).await.get(series).is_some_and(|v| *v >= min),
    )
    .await;
}

fn status(id: &ClientId) -> Envelope {
    Envelope::new(
        id.clone(),
        1,
        1,
        Message::Status(StatusReport {
            adopted_manifest_version: 2,
            status: DeploymentStatus::new(
                DeploymentId::new(DEPLOYMENT_ID).expect("id"),
                vec![ComponentStatus {
                    name: "web".into(),
                    state: DeploymentState::Installed,
                    error: None,
                }],
                None,
            ),
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_connect_status_and_refused_subscribe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.metrics.enabled = true;
    cfg.metrics.listen = "127.0.0.1:0".parse().expect("addr");
    let manager = start(cfg).await;
    let addr = manager.metrics_addr().expect("metrics listener");
    assert!(
        manager.ready_line().contains(&format!(" metrics={addr}")),
        "{}",
        manager.ready_line()
    );

    let (status_code, _, body) = get(addr, "/healthz").await;
    assert_eq!(status_code, StatusCode::OK, "{body}");
    // Manager::start returns once the broker link is up and the store open.
    let (status_code, _, body) = get(addr, "/readyz").await;
    assert_eq!(status_code, StatusCode::OK, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    // Present; not compared, since the other test's manager (same process,
    // same recorder) sets it to 0 while its broker link is down.
    assert!(scrape(addr).await.contains_key("margo_mqtt_link_connected"));

    // The recorder is per process: read the counters as they are now and
    // look for them to move.
    let before = scrape(addr).await;
    let at = |series: &str| before.get(series).copied().unwrap_or(0.0);

    let admin = manager.admin();
    let gateway = manager.gateway_addr().expect("embedded gateway");
    let bundle = admin.add_client("press-9", None).await.expect("add client");
    let id = bundle.client_id.clone();
    let filters = [topics::desired_filter(&id), topics::ack(&id)];
    let mut device = FakeDevice::connect(gateway, (&bundle).into(), true, &filters).await;

    let accepted = "margo_gateway_connections_accepted_total";
    let handshakes = "margo_gateway_handshakes_total{outcome=\"ok\"}";
    wait_for(addr, accepted, at(accepted) + 1.0).await;
    wait_for(addr, handshakes, at(handshakes) + 1.0).await;
    wait_for(addr, "margo_gateway_live_connections", 1.0).await;

    // A status for an assigned deployment is stored.
    admin.deploy("press-9", vec![yaml()]).await.expect("deploy");
    device
        .expect("manifest v2", |m| match m {
            Message::Manifest(m) if m.manifest_version == 2 => Some(()),
            _ => None,
        })
        .await;
    let payload = status(&id).seal(&device.key).expect("seal");
    device
        .mqtt
        .client
        .publish(
            topics::status(&id, &DeploymentId::new(DEPLOYMENT_ID).expect("id")),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .expect("publish status");
    let received = "margo_ingest_received_total";
    let statuses = "margo_ingest_stored_total{kind=\"status\"}";
    let stored = "margo_ingest_messages_total{outcome=\"stored\"}";
    wait_for(addr, received, at(received) + 1.0).await;
    wait_for(addr, statuses, at(statuses) + 1.0).await;
    wait_for(addr, stored, at(stored) + 1.0).await;

    // Another device's topics are refused at the gateway: the connection
    // is closed and counted by reason.
    let other = ClientId::new("someoneelse").expect("id");
    device
        .mqtt
        .client
        .subscribe(topics::desired_filter(&other), QoS::AtLeastOnce)
        .await
        .expect("subscribe request queued");
    device.mqtt.closed("forbidden subscribe").await;
    let refused = "margo_gateway_violations_total{reason=\"subscribe\"}";
    wait_for(addr, refused, at(refused) + 1.0).await;

    // The batch that stored the status is in the ingest histograms.
    let commits = "margo_ingest_commit_seconds_count";
    wait_for(addr, commits, at(commits) + 1.0).await;
    let text = get(addr, "/metrics").await.2;
    assert!(
        text.contains("# TYPE margo_ingest_commit_seconds histogram")
            && text.contains("margo_ingest_commit_seconds_bucket{le=\"0.00001\"}"),
        "{text}"
    );

    // The same numbers stay readable on the admin socket, this manager's
    // own: one device, one status, one refused subscribe.
    let health = admin.health().await.expect("health");
    let value = |map: &BTreeMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);
    assert!(value(&health.ingest, "received") >= 1);
    let (ingest, gateway) = (&health.ingest, &health.gateway);
    assert_eq!(value(ingest, "storedStatus"), 1, "{ingest:?}");
    assert_eq!(value(gateway, "handshakesOk"), 1, "{gateway:?}");
    assert_eq!(value(gateway, "violationSubscribe"), 1, "{gateway:?}");
    assert!(health.ingest_timing.commit_micros.count >= 1);

    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_broker_link_is_down() {
    // A port nothing listens on: the external broker never answers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.broker.mode = margo_manager::config::BrokerMode::External;
    cfg.broker.url = Some(format!("mqtt://{closed}"));
    cfg.metrics.enabled = true;
    cfg.metrics.listen = "127.0.0.1:0".parse().expect("addr");
    let manager = start(cfg).await;
    assert!(!manager.is_connected());
    let addr = manager.metrics_addr().expect("metrics listener");

    let (status_code, _, body) = get(addr, "/healthz").await;
    assert_eq!(status_code, StatusCode::OK, "{body}");
    let (status_code, _, body) = get(addr, "/readyz").await;
    assert_eq!(status_code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("\"broker\":\"disconnected\""), "{body}");
    manager.shutdown().await;
}
