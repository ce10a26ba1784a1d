//! The fuzz targets' entries on stable Rust: every checked-in seed
//! (`tests/fuzz/seeds/<target>/`) and every input a fuzz run ever crashed
//! on (`tests/fuzz/regressions/<target>/`) goes through the same function
//! the cargo-fuzz target calls (`margo_tests::fuzz_entries`), which checks
//! its properties. An input must not panic and must finish in bounded
//! time. See docs/fuzzing.md.
//!
//! The seeds are made by `write_seeds` below (ignored; run it to renew
//! them): `cargo test -p margo-tests --test fuzz_regressions -- --ignored write_seeds`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use margo_tests::fuzz_entries::{self as entries, TARGETS};

/// Most time one input may take in a debug build: the decoders are
/// bounded, so anything near this is a bug (a loop, a blow-up).
const MAX_PER_INPUT: Duration = Duration::from_secs(10);
/// Most bytes of checked-in seeds per target.
const MAX_SEED_BYTES: u64 = 32 * 1024;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = read
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn run_target(name: &str) {
    let entry = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz entry {name}"));
    let seeds = inputs(&fuzz_dir().join("seeds").join(name));
    assert!(!seeds.is_empty(), "no seeds for {name}");
    let seed_bytes: u64 = seeds
        .iter()
        .map(|p| p.metadata().expect("seed").len())
        .sum();
    assert!(
        seed_bytes <= MAX_SEED_BYTES,
        "seeds of {name} are {seed_bytes} bytes; keep them small"
    );
    let regressions = inputs(&fuzz_dir().join("regressions").join(name));
    let mut failures = Vec::new();
    for path in seeds.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("read input");
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| entry(&data));
        let took = started.elapsed();
        if outcome.is_err() {
            failures.push(format!("{}: panicked", path.display()));
        } else if took > MAX_PER_INPUT {
            failures.push(format!("{}: took {took:?}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_target(stringify!($name));
            }
        )*

        #[test]
        fn every_entry_has_a_test_and_a_fuzz_target() {
            let tested = [$(stringify!($name)),*];
            let cargo = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("tests/fuzz/Cargo.toml");
            for (name, _) in TARGETS {
                assert!(tested.contains(name), "fuzz entry {name} has no test here");
                let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
                let source = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                assert!(
                    source.contains(&format!("fuzz_entries::{name}(")),
                    "{} does not call fuzz_entries::{name}",
                    file.display()
                );
                assert!(
                    cargo.contains(&format!("name = \"{name}\"")),
                    "tests/fuzz/Cargo.toml has no [[bin]] {name}"
                );
            }
            assert_eq!(tested.len(), TARGETS.len());
        }
    };
}

targets!(
    inspect,
    envelope_cose,
    envelope_body,
    deployment_yaml,
    capabilities,
    status,
    manifest_json,
    schedule,
    config,
    bundle,
    identity,
    http_sig,
    onboarding,
);

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = fuzz_dir().join("seeds").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seeds that matter most get past the checks a fuzzer cannot pass by
/// chance (signatures, keys, a whole session): a seed that rots into a
/// refusal would leave the fuzzer at the door.
#[test]
fn key_seeds_are_accepted() {
    use margo_schemas::http_msg_sig::{self, Policy, Request};
    use margo_schemas::messages::Envelope;

    let topics = entries::envelope_topics();
    for kind in [
        "manifest",
        "deployment",
        "config",
        "ack",
        "capabilities",
        "status",
        "state",
        "sync",
    ] {
        let data = seed("envelope_cose", kind);
        let topic = &topics[usize::from(data[0]) % topics.len()];
        let key = entries::fuzz_signing_key().public_key();
        Envelope::open(
            &data[1..],
            entries::MAX_MESSAGE,
            &key,
            &entries::fuzz_client(),
            topic,
        )
        .unwrap_or_else(|e| panic!("envelope_cose/{kind}: {e}"));
    }

    let data = seed("http_sig", "post");
    let text = std::str::from_utf8(&data).expect("UTF-8");
    let (head, body) = text.split_once("\n\n").expect("head and body");
    let mut lines = head.lines();
    let uri = lines
        .next()
        .expect("request line")
        .split_once(' ')
        .expect("method")
        .1;
    let (scheme, rest) = uri.split_once("://").expect("scheme");
    let (authority, path) = rest.split_at(rest.find('/').expect("path"));
    let headers: Vec<(&str, &str)> = lines.map(|l| l.split_once(": ").expect("header")).collect();
    let request = Request {
        method: "POST",
        scheme,
        authority,
        path_and_query: path,
        headers: &headers,
    };
    let policy = Policy {
        now: entries::HTTP_NOW,
        max_age: 300,
        max_future_skew: 60,
        has_body: true,
    };
    let key = margo_schemas::sig_key::PublicKey::from_certificate(entries::fuzz_certificate())
        .expect("key");
    http_msg_sig::verify_request(&request, &key, &policy, &|k| k == entries::HTTP_KEYID)
        .expect("http_sig/post verifies");
    assert!(body.starts_with('{'));

    let docs = entries::bundle_documents();
    let wanted = docs
        .iter()
        .map(|(id, yaml)| (id.clone(), margo_schemas::digest::Digest::of(yaml)))
        .collect();
    let data = seed("bundle", "tar-gz");
    let decoded = margo_agent::bundle::decode(&data[1..], &wanted, entries::BUNDLE_LIMITS)
        .expect("bundle/tar-gz decodes");
    assert_eq!(decoded.usable.len(), 2);

    let dir = tempfile::tempdir().expect("tempdir");
    let data = seed("identity", "bundle");
    let parts = entries::split_all(&data, entries::IDENTITY_SEPARATOR);
    assert_eq!(parts.len(), entries::IDENTITY_FILES.len());
    for (name, bytes) in entries::IDENTITY_FILES.iter().zip(parts) {
        std::fs::write(dir.path().join(name), bytes).expect("write");
    }
    margo_agent::identity::Identity::load(dir.path()).expect("identity/bundle loads");

    let mut inspector = margo_broker::inspect::Inspector::new(entries::fuzz_client(), 4096);
    let mut buf = bytes::BytesMut::from(&seed("inspect", "session")[..]);
    let mut forwarded = 0;
    while inspector
        .next(&mut buf)
        .expect("inspect/session passes")
        .is_some()
    {
        forwarded += 1;
    }
    assert_eq!(forwarded, 7);
}

/// Writes the seed corpus from the project's fixtures, config examples
/// and values built here (the old seeds are replaced).
#[test]
#[ignore = "writes tests/fuzz/seeds; run by hand to renew the seeds"]
fn write_seeds() {
    seeds::write_all(&fuzz_dir().join("seeds"));
}

mod seeds {
    use std::io::Write;
    use std::path::Path;

    use bytes::BytesMut;
    use margo_schemas::capabilities::{DeviceCapabilitiesManifest, DeviceProperties};
    use margo_schemas::codec;
    use margo_schemas::digest::Digest;
    use margo_schemas::http_msg_sig::RequestSigner;
    use margo_schemas::http_sig::PayloadSigner;
    use margo_schemas::ids::{ClientId, DeploymentId, DeviceId};
    use margo_schemas::manifest::{BundleRef, DeploymentRef, StateManifest};
    use margo_schemas::messages::{
        Ack, CapabilitiesReport, DeploymentBody, DeviceConfig, Envelope, Message, StateReport,
        StatusReport, SyncReason, SyncRequest,
    };
    use margo_schemas::onboarding::OnboardingRequest;
    use margo_schemas::revision::Revision;
    use margo_schemas::schedule::Schedule;
    use margo_schemas::status::{ComponentStatus, DeploymentState, DeploymentStatus};
    use margo_schemas::topics;
    use margo_testkit::pki::TestPki;
    use rumqttc::mqttbytes::v4::{Connect, LastWill, Packet, PubAck, Publish, Subscribe};
    use rumqttc::mqttbytes::QoS;

    use super::entries;

    fn repo() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root")
    }

    fn fixture(path: &str) -> Vec<u8> {
        std::fs::read(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn put(root: &Path, target: &str, name: &str, bytes: &[u8]) {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("seed directory");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }

    /// TOML without its comment lines: the examples' explanations are
    /// most of their bytes and nothing to a parser.
    fn uncommented(bytes: &[u8]) -> Vec<u8> {
        let text = std::str::from_utf8(bytes).expect("UTF-8");
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn picked(pick: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![pick];
        out.extend_from_slice(bytes);
        out
    }

    pub fn write_all(root: &Path) {
        for (name, _) in entries::TARGETS {
            let _ = std::fs::remove_dir_all(root.join(name));
        }
        inspect(root);
        envelopes(root);
        documents(root);
        schedules_and_config(root);
        bundle(root);
        identity_and_onboarding(root);
        http_sig(root);
    }

    fn packet(p: Packet) -> Vec<u8> {
        let mut buf = BytesMut::new();
        p.write(&mut buf, 1 << 20).expect("encodes");
        buf.to_vec()
    }

    fn inspect(root: &Path) {
        let client = entries::fuzz_client();
        let mut connect = Connect::new(entries::CLIENT);
        connect.last_will = Some(LastWill::new(
            topics::presence(&client),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        let connect = packet(Packet::Connect(connect));
        let mut session = connect.clone();
        let mut sub = Subscribe::new(topics::desired_filter(&client), QoS::AtLeastOnce);
        sub.pkid = 1;
        session.extend(packet(Packet::Subscribe(sub)));
        let mut publish = Publish::new(topics::state(&client), QoS::AtLeastOnce, "x");
        publish.pkid = 2;
        session.extend(packet(Packet::Publish(publish)));
        let presence = Publish::new(topics::presence(&client), QoS::AtMostOnce, "online");
        let mut presence = presence;
        presence.retain = true;
        session.extend(packet(Packet::Publish(presence)));
        session.extend(packet(Packet::PubAck(PubAck::new(3))));
        session.extend(packet(Packet::PingReq));
        session.extend(packet(Packet::Disconnect));
        put(root, "inspect", "session", &session);
        put(root, "inspect", "connect", &connect);
        let mut foreign = connect;
        let other = ClientId::new("other").expect("id");
        let mut publish = Publish::new(topics::state(&other), QoS::AtLeastOnce, "x");
        publish.pkid = 1;
        foreign.extend(packet(Packet::Publish(publish)));
        put(root, "inspect", "foreign-publish", &foreign);
    }

    fn sample_status() -> DeploymentStatus {
        DeploymentStatus::new(
            DeploymentId::new(entries::DEPLOYMENT).expect("id"),
            vec![ComponentStatus {
                name: "web".into(),
                state: DeploymentState::Installed,
                error: None,
            }],
            None,
        )
    }

    fn sample_manifest(http: bool) -> StateManifest {
        let docs = entries::bundle_documents();
        StateManifest {
            manifest_version: 3,
            bundle: http.then(|| BundleRef {
                media_type: Some("application/vnd.margo.bundle.v1+tar+gzip".into()),
                digest: Digest::of(b"bundle"),
                size_bytes: Some(100),
                url: Some("/api/v1/clients/fuzzdev/bundles/sha256:00".into()),
            }),
            deployments: docs
                .iter()
                .map(|(id, yaml)| DeploymentRef {
                    deployment_id: id.clone(),
                    digest: Digest::of(yaml),
                    size_bytes: Some(yaml.len() as u64),
                    url: http.then(|| format!("/api/v1/clients/fuzzdev/deployments/{id}")),
                })
                .collect(),
        }
    }

    fn sample_schedule() -> Schedule {
        let text = fixture("config/schedules/office-hours.toml");
        toml::from_str(std::str::from_utf8(&text).expect("UTF-8")).expect("sample schedule")
    }

    fn envelopes(root: &Path) {
        let client = entries::fuzz_client();
        let id = DeploymentId::new(entries::DEPLOYMENT).expect("id");
        let (_, yaml) = entries::bundle_documents().remove(0);
        let capabilities = DeviceCapabilitiesManifest::new(DeviceProperties {
            id: DeviceId::new(entries::CLIENT).expect("id"),
            vendor: "v".into(),
            model_number: "m".into(),
            serial_number: "s".into(),
            cpu: Vec::new(),
            memory: Some("1 Gi".into()),
            storage: None,
            peripherals: Vec::new(),
            interfaces: Vec::new(),
            otel_collector: None,
            supported_runtimes: Vec::new(),
            supported_deployment_types: Vec::new(),
            extensions: Default::default(),
        });
        // (topic index in entries::envelope_topics, message)
        let messages: Vec<(u8, Message, u64)> = vec![
            (0, Message::Manifest(sample_manifest(false)), 0),
            (
                1,
                Message::Deployment(DeploymentBody {
                    deployment_id: id.clone(),
                    digest: Digest::of(&yaml),
                    yaml,
                }),
                0,
            ),
            (
                2,
                Message::Config(DeviceConfig {
                    version: 2,
                    schedule: Some(sample_schedule()),
                }),
                0,
            ),
            (
                3,
                Message::Ack(Ack {
                    acked_seq: 5,
                    manifest_version: 3,
                    instance: None,
                }),
                0,
            ),
            (
                4,
                Message::Capabilities(CapabilitiesReport {
                    manifest: capabilities,
                }),
                1,
            ),
            (
                5,
                Message::Status(StatusReport {
                    adopted_manifest_version: 3,
                    status: sample_status(),
                }),
                2,
            ),
            (
                6,
                Message::State(StateReport {
                    adopted_manifest_version: 3,
                    agent_version: "0.1.0".into(),
                    deployments: vec![id],
                    schedule: None,
                }),
                3,
            ),
            (
                7,
                Message::Sync(SyncRequest {
                    reason: SyncReason::Startup,
                    adopted_manifest_version: 0,
                }),
                4,
            ),
        ];
        for (pick, msg, seq) in messages {
            let kind = msg.kind();
            let env = Envelope::new(client.clone(), seq, 1_790_000_000_000, msg);
            let body = codec::encode(&env).expect("encodes");
            put(root, "envelope_body", kind, &picked(pick, &body));
            let wire = env.seal(entries::fuzz_signing_key()).expect("seals");
            put(root, "envelope_cose", kind, &picked(pick, &wire));
        }
        put(root, "envelope_cose", "presence", &picked(8, b"online"));
    }

    fn documents(root: &Path) {
        for name in [
            "standalone-device-application-deployment.yaml",
            "cluster-enabled-application-deployment.yaml",
        ] {
            let bytes = fixture(&format!("tests/fixtures/margo-spec/desired-state/{name}"));
            put(root, "deployment_yaml", name, &bytes);
        }
        for (id, yaml) in entries::bundle_documents() {
            put(root, "deployment_yaml", &format!("{id}.yaml"), &yaml);
        }
        for name in [
            "capabilities-example.json",
            "gateway1.json",
            "gateway1-deviceA.json",
        ] {
            let bytes = fixture(&format!(
                "tests/fixtures/margo-spec/device-capabilities/{name}"
            ));
            put(root, "capabilities", name, &bytes);
        }
        put(
            root,
            "status",
            "status-example.json",
            &fixture("tests/fixtures/margo-spec/deployment-status/status-example.json"),
        );
        for revision in [Revision::Rc3, Revision::V1_0_0] {
            let wire = sample_status().to_wire(revision, 3);
            put(
                root,
                "status",
                &format!("ours-{revision:?}.json"),
                &serde_json::to_vec(&wire).expect("JSON"),
            );
        }
        put(
            root,
            "manifest_json",
            "http.json",
            &serde_json::to_vec(&sample_manifest(true)).expect("JSON"),
        );
        put(
            root,
            "manifest_json",
            "mqtt.json",
            &serde_json::to_vec(&sample_manifest(false)).expect("JSON"),
        );
    }

    fn schedules_and_config(root: &Path) {
        let dir = repo().join("config/schedules");
        let mut schedules: Vec<_> = std::fs::read_dir(&dir)
            .expect("config/schedules")
            .map(|e| e.expect("entry").path())
            .collect();
        schedules.sort();
        for path in schedules.iter().take(6) {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let text = uncommented(&std::fs::read(path).expect("read"));
            put(root, "schedule", &name, &picked(0, &text));
        }
        let config = DeviceConfig {
            version: 1,
            schedule: Some(sample_schedule()),
        };
        put(
            root,
            "schedule",
            "device-config.cbor",
            &picked(1, &codec::encode(&config).expect("encodes")),
        );
        for (pick, name) in [
            (0, "config/margo-agent.toml"),
            (1, "config/margo-manager.toml"),
            (2, "config/margo-broker.toml"),
        ] {
            let text = uncommented(&fixture(name));
            let seed_name = name.trim_start_matches("config/");
            put(root, "config", seed_name, &picked(pick, &text));
        }
        put(
            root,
            "config",
            "revocations",
            &picked(3, b"# revoked\nfuzzdev\n\n  other-device  \n"),
        );
        for (i, scalar) in [
            "1h 30m",
            "true",
            "18446744073709551615",
            "[::1]:8883",
            "mqtts://edge.example.com:8883",
        ]
        .iter()
        .enumerate()
        {
            put(
                root,
                "config",
                &format!("scalar-{i}"),
                &picked(4, scalar.as_bytes()),
            );
        }
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, name, *bytes)
                .expect("tar entry");
        }
        tar.into_inner().expect("tar")
    }

    fn bundle(root: &Path) {
        let docs = entries::bundle_documents();
        let names: Vec<String> = docs.iter().map(|(id, _)| format!("{id}.yaml")).collect();
        let tar = tar_of(&[(&names[0], &docs[0].1), (&names[1], &docs[1].1)]);
        put(root, "bundle", "raw-tar", &picked(1, &tar));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&tar).expect("gzip");
        put(
            root,
            "bundle",
            "tar-gz",
            &picked(0, &gz.finish().expect("gzip")),
        );
        let one = tar_of(&[(&names[0], &docs[0].1)]);
        put(root, "bundle", "missing-one", &picked(1, &one));
    }

    fn identity_and_onboarding(root: &Path) {
        let pki = TestPki::new("fuzz CA");
        let client = pki.client(entries::CLIENT);
        let manager = pki.leaf("margo-manager signing");
        let index = format!(
            "version = 1\nclient_id = \"{}\"\nname = \"fuzz\"\nbroker_url = \"mqtts://127.0.0.1:8883\"\n",
            entries::CLIENT
        );
        let parts: Vec<Vec<u8>> = vec![
            index.into_bytes(),
            client.key_pem().into_bytes(),
            client.cert_pem().into_bytes(),
            pki.ca_pem().into_bytes(),
            manager.cert_pem().into_bytes(),
        ];
        put(
            root,
            "identity",
            "bundle",
            &parts.join(entries::IDENTITY_SEPARATOR),
        );
        let plain = format!(
            "version = 2\nclient_id = \"{}\"\nname = \"fuzz\"\nmanager_url = \"https://127.0.0.1:8443\"\n",
            entries::CLIENT
        );
        let plain_parts: Vec<Vec<u8>> = vec![
            plain.into_bytes(),
            parts[1].clone(),
            parts[2].clone(),
            parts[3].clone(),
        ];
        put(
            root,
            "identity",
            "plain",
            &plain_parts.join(entries::IDENTITY_SEPARATOR),
        );

        let der = client.cert.der().to_vec();
        let request = OnboardingRequest::new(&der);
        put(
            root,
            "onboarding",
            "request.json",
            &serde_json::to_vec(&request).expect("JSON"),
        );
        let mut with_ext = serde_json::to_value(&request).expect("JSON");
        with_ext["x-margo-mqtt-extensions"] =
            serde_json::json!({"enrollmentToken": "t0k3n", "name": "fuzz"});
        put(
            root,
            "onboarding",
            "request-ext.json",
            &serde_json::to_vec(&with_ext).expect("JSON"),
        );
        put(
            root,
            "onboarding",
            "response.json",
            br#"{"clientId":"fuzzdev","x-margo-mqtt-extensions":{"requestId":"ab","state":"approved"}}"#,
        );
    }

    fn http_sig(root: &Path) {
        let signer =
            RequestSigner::from_pkcs8(&entries::fuzz_pkcs8(), entries::HTTP_KEYID).expect("signer");
        let uri = "https://manager.example:8443/api/v1/clients/fuzzdev/capabilities";
        let body = br#"{"properties":{"id":"fuzzdev"}}"#;
        for (name, body) in [("post", Some(&body[..])), ("get", None)] {
            let method = if body.is_some() { "POST" } else { "GET" };
            let headers = signer
                .sign(method, uri, body, entries::HTTP_NOW)
                .expect("signs");
            let mut text = format!("{method} {uri}\n");
            for (n, v) in headers {
                text.push_str(&format!("{n}: {v}\n"));
            }
            text.push('\n');
            let mut bytes = text.into_bytes();
            bytes.extend_from_slice(body.unwrap_or_default());
            put(root, "http_sig", name, &bytes);
        }
        let payload = PayloadSigner::from_pkcs8(&entries::fuzz_pkcs8()).expect("signer");
        let (digest, signature) = payload.headers(body).expect("headers");
        let mut text = format!(
            "POST {uri}\ncontent-digest: {digest}\nx-payload-signature: {signature}\ndigest: {}\n\n",
            Digest::of(body)
        )
        .into_bytes();
        text.extend_from_slice(body);
        put(root, "http_sig", "payload-signature", &text);
    }
}
