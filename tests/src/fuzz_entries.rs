//! Entry points of the fuzz targets: one function per decoder of untrusted
//! bytes, each taking the raw input and asserting properties of what the
//! decoder made of it (not only "no panic": round trips, agreement between
//! two paths, invariants of an accepted value).
//!
//! The cargo-fuzz crate in `tests/fuzz/` calls these functions, and the
//! stable test `tests/tests/fuzz_regressions.rs` feeds them the checked-in
//! seeds and every crash input ever found, so a fixed crash stays fixed in
//! `cargo test --workspace`. See `docs/fuzzing.md`.
//!
//! Every entry returns normally for input that is refused; it panics only
//! when a property is broken (or the decoder itself panics).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use jiff::{SignedDuration, Timestamp};
use margo_agent::bundle::{self, BundleLimits};
use margo_agent::identity::{Identity, IdentityKind};
use margo_broker::inspect::Inspector;
use margo_schemas::capabilities::DeviceCapabilitiesManifest;
use margo_schemas::codec;
use margo_schemas::config_layers;
use margo_schemas::cose::{SigningKey, VerifyingKey};
use margo_schemas::deployment::{self, ApplicationDeployment};
use margo_schemas::digest::Digest;
use margo_schemas::http_msg_sig::{self, Policy, Request};
use margo_schemas::http_sig;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::manifest::StateManifest;
use margo_schemas::messages::{DeviceConfig, Envelope, Message, PROTOCOL_VERSION};
use margo_schemas::onboarding::{OnboardingRequest, OnboardingResponse};
use margo_schemas::revision::Revision;
use margo_schemas::schedule::{Schedule, ValidSchedule};
use margo_schemas::sfv::{self, MemberValue};
use margo_schemas::sig_key::PublicKey;
use margo_schemas::status::DeploymentStatus;
use margo_schemas::topics::{self, DeviceTopic};
use rumqttc::mqttbytes::v4::Packet;

/// An entry: takes the raw input, panics only on a broken property.
pub type Entry = fn(&[u8]);

/// Every target: its name (the file in `tests/fuzz/fuzz_targets/`, the
/// folder in `tests/fuzz/seeds/` and `tests/fuzz/regressions/`) and entry.
pub const TARGETS: &[(&str, Entry)] = &[
    ("inspect", inspect),
    ("envelope_cose", envelope_cose),
    ("envelope_body", envelope_body),
    ("deployment_yaml", deployment_yaml),
    ("capabilities", capabilities),
    ("status", status),
    ("manifest_json", manifest_json),
    ("schedule", schedule),
    ("config", config),
    ("bundle", bundle),
    ("identity", identity),
    ("http_sig", http_sig),
    ("onboarding", onboarding),
];

/// The client every target acts for.
pub const CLIENT: &str = "fuzzdev";
/// The deployment id in the topics the envelope targets use.
pub const DEPLOYMENT: &str = "d1";
/// Largest packet the inspector target lets through (small, so the limit is reached).
pub const INSPECT_MAX_PACKET: usize = 4096;
/// Largest message the envelope targets open.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// "Now" of the HTTP signature policy (seeds are signed at this time).
pub const HTTP_NOW: i64 = 1_790_000_000;
/// The key id the HTTP signature target accepts.
pub const HTTP_KEYID: &str = "fuzzdev";
/// Separates the files of an identity bundle in an `identity` input.
pub const IDENTITY_SEPARATOR: &[u8] = b"\n--8<--\n";
/// Limits of the bundle target (small, so they are reached).
pub const BUNDLE_LIMITS: BundleLimits = BundleLimits {
    max_entry: 16 * 1024,
    max_total: 64 * 1024,
};

/// A fixed ECDSA P-256 key (PKCS#8, made for these targets only): the
/// "manager" and "device" key of the envelope and HTTP signature targets,
/// so a seed signed with it verifies and the fuzzer gets past the check.
const FUZZ_PKCS8_B64: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg/dqvT+QkJIXXbAiKsRMvJdDpM7KtPOY2aduISH3c0vShRANCAARn31f319rStZ/GsoUAuuQMolAXiAVuKZwvOmRnEmG5QIaLeVS28WQHCyW00YZY71Ua3ALw28nDybk+7BEn1lTx";

/// The fixed key's PKCS#8 DER.
pub fn fuzz_pkcs8() -> Vec<u8> {
    data_encoding::BASE64
        .decode(FUZZ_PKCS8_B64.as_bytes())
        .expect("the fixed key is base64")
}

/// The fixed key as a COSE signer.
pub fn fuzz_signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_pkcs8(&fuzz_pkcs8()).expect("the fixed key loads"))
}

fn fuzz_verifying_key() -> &'static VerifyingKey {
    static KEY: OnceLock<VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| fuzz_signing_key().public_key())
}

/// A self-signed certificate of the fixed key (DER), for the HTTP targets.
pub fn fuzz_certificate() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    CERT.get_or_init(|| {
        let pair =
            rcgen::KeyPair::try_from(fuzz_pkcs8().as_slice()).expect("rcgen reads the fixed key");
        let mut params = rcgen::CertificateParams::new(vec![CLIENT.to_string()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, CLIENT);
        params
            .self_signed(&pair)
            .expect("self-signed")
            .der()
            .to_vec()
    })
}

fn fuzz_public_key() -> &'static PublicKey {
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    KEY.get_or_init(|| PublicKey::from_certificate(fuzz_certificate()).expect("a P-256 key"))
}

/// The client of every target.
pub fn fuzz_client() -> ClientId {
    ClientId::new(CLIENT).expect("a valid client id")
}

/// The topics the envelope targets open on; the first input byte picks one.
pub fn envelope_topics() -> Vec<DeviceTopic> {
    let d = DeploymentId::new(DEPLOYMENT).expect("a valid deployment id");
    vec![
        DeviceTopic::DesiredManifest,
        DeviceTopic::DesiredDeployment(d.clone()),
        DeviceTopic::Config,
        DeviceTopic::Ack,
        DeviceTopic::Capabilities,
        DeviceTopic::Status(d),
        DeviceTopic::State,
        DeviceTopic::Sync,
        DeviceTopic::Presence,
    ]
}

// ---------------------------------------------------------------------------
// The gateway's packet inspector
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct InspectRun {
    forwarded: Vec<Bytes>,
    verdict: Option<String>,
}

/// The gateway's inspector (`margo_broker::inspect`) on a client → broker
/// byte stream. Properties: the verdict and what is forwarded do not depend
/// on how the bytes arrive (all at once or in small pieces); the first
/// forwarded packet is a CONNECT rewritten to the certificate identity
/// without credentials; every later one is forwarded byte for byte, parses
/// as MQTT 3.1.1, and is a packet the device may send.
pub fn inspect(data: &[u8]) {
    let whole = run_inspector(data, data.len().max(1));
    let piece = usize::from(data.first().copied().unwrap_or(0) % 13) + 1;
    let pieces = run_inspector(data, piece);
    assert_eq!(
        whole, pieces,
        "the inspector's verdict depends on how the bytes arrive"
    );
}

fn run_inspector(data: &[u8], piece: usize) -> InspectRun {
    let identity = fuzz_client();
    let mut inspector = Inspector::new(identity.clone(), INSPECT_MAX_PACKET);
    let mut buf = BytesMut::new();
    let mut run = InspectRun {
        forwarded: Vec::new(),
        verdict: None,
    };
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let before = Bytes::copy_from_slice(&buf);
            match inspector.next(&mut buf) {
                Ok(Some(out)) => {
                    let consumed = before.len() - buf.len();
                    assert!(
                        consumed >= 2,
                        "a forwarded packet consumed {consumed} bytes"
                    );
                    assert!(
                        consumed <= INSPECT_MAX_PACKET + 5,
                        "a {consumed}-byte packet passed the {INSPECT_MAX_PACKET}-byte limit"
                    );
                    if run.forwarded.is_empty() {
                        check_rewritten_connect(&out, &identity);
                    } else {
                        assert_eq!(out, before.slice(..consumed), "forwarded bytes differ");
                        check_forwarded(&out, &identity);
                    }
                    run.forwarded.push(out);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before.len(), "an incomplete packet lost bytes");
                    break;
                }
                Err(violation) => {
                    run.verdict = Some(violation.to_string());
                    return run;
                }
            }
        }
    }
    run
}

fn reparse(frame: &Bytes) -> Packet {
    let mut buf = BytesMut::from(&frame[..]);
    let packet = Packet::read(&mut buf, usize::MAX)
        .unwrap_or_else(|e| panic!("a forwarded packet does not parse: {e:?}"));
    assert!(buf.is_empty(), "a forwarded packet has trailing bytes");
    packet
}

fn check_rewritten_connect(frame: &Bytes, identity: &ClientId) {
    let Packet::Connect(connect) = reparse(frame) else {
        panic!("the first forwarded packet is not CONNECT");
    };
    assert_eq!(
        connect.client_id,
        identity.as_str(),
        "CONNECT not rewritten"
    );
    assert!(connect.login.is_none(), "credentials forwarded");
    if let Some(will) = &connect.last_will {
        assert!(topics::device_may_set_will(identity, &will.topic));
        assert!(!will.retain || topics::device_may_retain(&will.topic, will.message.len()));
    }
}

fn check_forwarded(frame: &Bytes, identity: &ClientId) {
    match reparse(frame) {
        Packet::Publish(p) => {
            assert!(
                topics::device_may_publish(identity, &p.topic),
                "publish on {:?}",
                p.topic
            );
            assert!(!p.retain || topics::device_may_retain(&p.topic, p.payload.len()));
        }
        Packet::Subscribe(s) => {
            for f in &s.filters {
                assert!(
                    topics::device_may_subscribe(identity, &f.path),
                    "subscribe {:?}",
                    f.path
                );
            }
        }
        Packet::Connect(_)
        | Packet::ConnAck(_)
        | Packet::SubAck(_)
        | Packet::UnsubAck(_)
        | Packet::PingResp => panic!("forwarded a packet a device may not send"),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Signed envelopes: the manager's uplink verify, the agent's downlink open
// ---------------------------------------------------------------------------

/// Raw MQTT payload bytes (a COSE_Sign1 as received) on the topic the first
/// byte picks, through `Envelope::open` and, on uplink topics, the
/// manager's `ingest::open_uplink`; see [`open_everywhere`].
pub fn envelope_cose(data: &[u8]) {
    let Some((&pick, wire)) = data.split_first() else {
        return;
    };
    open_everywhere(wire, pick);
}

/// The CBOR body of an envelope, signed here with the fixed key so the
/// fuzzer reaches the envelope decoder behind the signature check; then as
/// [`envelope_cose`].
pub fn envelope_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let wire = fuzz_signing_key()
        .sign(body.to_vec())
        .expect("the fixed key signs");
    open_everywhere(&wire, pick);
}

/// Properties: an opened envelope names our client, fits its topic and has
/// our protocol version; sealing it again and opening gives the same
/// envelope; the manager's uplink path accepts only what `open` accepts
/// and only seq > 0, low ≤ seq and a valid status; on downlink topics the
/// agent's checks of the content (manifest validation, document digest)
/// run without panicking.
pub fn open_everywhere(wire: &[u8], pick: u8) {
    let all = envelope_topics();
    let topic = &all[usize::from(pick) % all.len()];
    let key = fuzz_verifying_key();
    let client = fuzz_client();
    let opened = Envelope::open(wire, MAX_MESSAGE, key, &client, topic);
    if let Ok(env) = &opened {
        assert_eq!(env.client, client);
        assert_eq!(env.v, PROTOCOL_VERSION);
        assert!(env.msg.fits_topic(topic));
        let again = env
            .seal(fuzz_signing_key())
            .expect("an opened envelope seals");
        // Re-encoding may grow a message (canonical CBOR lengths): allow it.
        let back = Envelope::open(&again, usize::MAX, key, &client, topic)
            .expect("a re-sealed envelope opens");
        assert_eq!(&back, env, "envelope changed across encode/decode");
    }
    if topic.is_uplink() {
        let uplink = margo_manager::ingest::open_uplink(&client, topic, wire, key, MAX_MESSAGE);
        match uplink {
            Ok(margo_manager::store::UplinkItem::Message(env)) => {
                assert!(opened.is_ok(), "the manager accepted what open refused");
                assert!(env.seq > 0 && env.low <= env.seq);
                if let Message::Status(report) = &env.msg {
                    assert!(report.status.validate().is_ok());
                }
            }
            Ok(margo_manager::store::UplinkItem::Presence { client: c, .. }) => {
                assert_eq!(topic, &DeviceTopic::Presence);
                assert_eq!(c, client);
            }
            Err(_) => {}
        }
        return;
    }
    // Downlink: what the agent does with the content (sync.rs).
    let Ok(env) = opened else {
        return;
    };
    match env.msg {
        Message::Manifest(m) => {
            let _ = m.validate();
        }
        Message::Deployment(d) => {
            if let Ok(doc) = ApplicationDeployment::parse_verified(d.yaml, &d.digest) {
                assert_eq!(doc.digest(), d.digest);
            }
        }
        Message::Config(c) => {
            if let Some(s) = c.schedule {
                check_schedule(s, &[Timestamp::UNIX_EPOCH]);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// ApplicationDeployment YAML
// ---------------------------------------------------------------------------

/// ApplicationDeployment YAML, lax (what a device accepts) and strict (what
/// an operator may submit). Properties: strict accepts only what lax
/// accepts, with the same result; an accepted document keeps its exact
/// bytes and their digest, verifies against that digest, stays within the
/// component and parameter limits, and `document_name` names it.
pub fn deployment_yaml(data: &[u8]) {
    let lax = ApplicationDeployment::parse(data.to_vec());
    let strict = ApplicationDeployment::parse_strict(data.to_vec());
    if let Ok(s) = &strict {
        assert_eq!(
            Some(s),
            lax.as_ref().ok(),
            "strict accepted what lax refused"
        );
    }
    let name = deployment::document_name(data);
    let Ok(doc) = lax else {
        return;
    };
    assert_eq!(doc.bytes(), data);
    assert_eq!(doc.digest(), Digest::of(data));
    assert!(ApplicationDeployment::parse_verified(data.to_vec(), &doc.digest()).is_ok());
    assert!(ApplicationDeployment::parse_verified(data.to_vec(), &Digest::of(b"other")).is_err());
    assert!(doc.components.len() <= deployment::MAX_COMPONENTS);
    assert!(doc.parameters.len() <= deployment::MAX_PARAMETERS);
    for c in &doc.components {
        let _ = doc.parameters_for(&c.name).count();
    }
    assert_eq!(name.as_deref(), Some(doc.name.as_str()));
}

// ---------------------------------------------------------------------------
// Capabilities, status, manifests: JSON over HTTP, CBOR over MQTT
// ---------------------------------------------------------------------------

/// A capabilities body as the manager's HTTP API reads it. Properties: the
/// manager's parse and the schemas' agree; the exact text is kept; the
/// normalised form is the same after a JSON value round trip and after the
/// CBOR round trip the MQTT transport makes.
pub fn capabilities(data: &[u8]) {
    let manager = margo_manager::http::uplink::parse_capabilities(data);
    let Ok(doc) = DeviceCapabilitiesManifest::from_json(data) else {
        assert!(manager.is_err(), "the manager read what the schemas refuse");
        return;
    };
    assert_eq!(manager.ok().as_ref(), Some(&doc));
    assert_eq!(doc.original(), std::str::from_utf8(data).ok());
    let normal = doc.normalize();
    let value = DeviceCapabilitiesManifest::from_value(doc.to_value()).expect("an object");
    assert_eq!(value.normalize(), normal);
    let cbor = codec::encode(&doc).expect("encodes");
    let back: DeviceCapabilitiesManifest =
        codec::decode(&cbor, usize::MAX).expect("our own CBOR decodes");
    assert_eq!(back.normalize(), normal, "capabilities changed across CBOR");
}

/// A status body as the manager's HTTP API reads it. Properties: what
/// validates keeps its meaning across the wire shape of every revision
/// (parsed back equal but for `apiVersion`/`kind`) and across CBOR.
pub fn status(data: &[u8]) {
    let Ok(body) = margo_manager::http::uplink::parse_status(data) else {
        return;
    };
    let status = body.status;
    if status.validate().is_err() {
        return;
    }
    for revision in [Revision::Rc3, Revision::Rc2, Revision::V1_0_0] {
        let wire = status.to_wire(revision, 7);
        let text = serde_json::to_vec(&wire).expect("JSON");
        let back = margo_manager::http::uplink::parse_status(&text)
            .unwrap_or_else(|e| panic!("our own {revision:?} status does not parse: {e:?}"));
        assert_eq!(back.adopted_manifest_version, Some(7));
        assert!(back.status.validate().is_ok());
        assert_eq!(without_shape(back.status), without_shape(status.clone()));
    }
    let cbor = codec::encode(&status).expect("encodes");
    let back: DeploymentStatus = codec::decode(&cbor, usize::MAX).expect("decodes");
    assert_eq!(back, status, "status changed across CBOR");
}

fn without_shape(mut s: DeploymentStatus) -> DeploymentStatus {
    s.api_version = None;
    s.kind = None;
    s
}

/// A desired-state manifest as the agent's HTTP transport reads it (JSON
/// from the WFM). Properties: a valid manifest stays valid in its
/// transport-neutral form and survives the JSON and CBOR round trips.
pub fn manifest_json(data: &[u8]) {
    let Ok(manifest) = serde_json::from_slice::<StateManifest>(data) else {
        return;
    };
    if manifest.validate().is_err() {
        return;
    }
    let neutral = margo_agent::http_transport::transport_neutral(manifest.clone());
    assert!(
        neutral.validate().is_ok(),
        "the neutral form does not validate"
    );
    let json = serde_json::to_vec(&manifest).expect("JSON");
    let back: StateManifest = serde_json::from_slice(&json).expect("our own JSON parses");
    assert_eq!(back, manifest);
    let cbor = codec::encode(&neutral).expect("encodes");
    let back: StateManifest = codec::decode(&cbor, usize::MAX).expect("decodes");
    assert_eq!(back, neutral);
}

// ---------------------------------------------------------------------------
// Schedules and configuration files
// ---------------------------------------------------------------------------

/// A communication schedule: TOML (the agent's file; first byte even) or the
/// CBOR `DeviceConfig` a manager sends (first byte odd). See [`check_schedule`].
pub fn schedule(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let parsed = if pick % 2 == 0 {
        std::str::from_utf8(rest)
            .ok()
            .and_then(|t| toml::from_str::<Schedule>(t).ok())
    } else {
        codec::decode::<DeviceConfig>(rest, MAX_MESSAGE)
            .ok()
            .and_then(|c| c.schedule)
    };
    let Some(schedule) = parsed else {
        return;
    };
    // Instants from the input: spread over years around now.
    let seed = Digest::of(data);
    let instants: Vec<Timestamp> = seed.as_bytes()[..12]
        .chunks(4)
        .map(|b| {
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            Timestamp::from_second(1_700_000_000 + i64::from(n) % 300_000_000).expect("in range")
        })
        .collect();
    check_schedule(schedule, &instants);
}

/// Properties of a schedule that validates: the wire form round-trips
/// (TOML, and validate → wire form → validate); `next_change_after(t)` is
/// after `t`, changes `may_communicate`, and nothing changes just before
/// it; checks fall at instants where the agent may communicate, at or
/// after (or strictly before) the instant asked about.
pub fn check_schedule(schedule: Schedule, instants: &[Timestamp]) {
    if let Ok(text) = toml::to_string(&schedule) {
        let back: Schedule = toml::from_str(&text).expect("our own TOML parses");
        assert_eq!(back, schedule, "schedule changed across TOML");
    }
    let Ok(valid) = ValidSchedule::try_from(schedule) else {
        return;
    };
    let again = ValidSchedule::try_from(Schedule::from(valid.clone()))
        .expect("a valid schedule's wire form validates");
    assert_eq!(again, valid);
    let _ = valid.polls_all_day();
    let _ = valid.to_string();
    for &t in instants {
        let may = valid.may_communicate(t);
        let _ = valid.in_downtime(t);
        if let Some(next) = valid.next_change_after(t) {
            assert!(next > t, "next change {next} is not after {t}");
            assert_ne!(valid.may_communicate(next), may, "no change at {next}");
            let just_before = next - SignedDuration::from_nanos(1);
            if just_before > t {
                assert_eq!(
                    valid.may_communicate(just_before),
                    may,
                    "changed before {next}"
                );
            }
        }
        if let Some(check) = valid.next_check_at_or_after(t) {
            assert!(check >= t);
            assert!(
                valid.may_communicate(check),
                "check at {check} while blocked"
            );
        }
        if let Some(last) = valid.last_expected_check_before(t) {
            assert!(last < t);
            assert!(valid.may_communicate(last), "check at {last} while blocked");
        }
    }
}

/// Configuration text the binaries read (first byte picks): the agent's,
/// the manager's and the broker's TOML files, the broker's revocation list,
/// and the scalar parsers of environment variables. Properties: what
/// parses validates without panicking; a revocation list round-trips;
/// scalars round-trip through their text form.
pub fn config(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let path = Path::new("/etc/margo/fuzz.toml");
    match pick % 5 {
        0 => {
            if let Ok(mut c) = margo_agent::config::AgentConfig::from_toml(text) {
                // `validate` reads the schedule file: a fuzzed path could
                // name a device that never ends (/dev/zero). The schedule
                // itself is the `schedule` target's.
                c.schedule_file = None;
                let _ = c.validate();
            }
        }
        1 => {
            if let Ok(c) = margo_manager::ManagerConfig::from_toml(text, path) {
                let _ = c.validate();
            }
        }
        2 => {
            if let Ok(c) = margo_broker::BrokerFileConfig::from_toml(text, path) {
                let _ = c.validate();
            }
        }
        3 => {
            if let Ok(ids) = margo_broker::parse_revocation_list(text) {
                let joined: String = ids.iter().map(|id| format!("{id}\n")).collect();
                let back = margo_broker::parse_revocation_list(&joined).expect("our own list");
                assert_eq!(back, ids);
            }
        }
        _ => scalars(text),
    }
}

fn scalars(text: &str) {
    if let Ok(d) = config_layers::parse_duration("f", text) {
        let shown = humantime::format_duration(d).to_string();
        assert_eq!(config_layers::parse_duration("f", &shown).ok(), Some(d));
    }
    if let Ok(b) = config_layers::parse_bool("f", text) {
        assert_eq!(config_layers::parse_bool("f", &b.to_string()).ok(), Some(b));
    }
    if let Ok(n) = config_layers::parse_number::<u64>("f", text) {
        assert_eq!(
            config_layers::parse_number::<u64>("f", &n.to_string()).ok(),
            Some(n)
        );
    }
    if let Ok(a) = config_layers::parse_socket_addr("f", text) {
        assert_eq!(
            config_layers::parse_socket_addr("f", &a.to_string()).ok(),
            Some(a)
        );
    }
    if let Ok(u) = margo_schemas::broker_url::BrokerUrl::parse(text) {
        let back = margo_schemas::broker_url::BrokerUrl::parse(&u.to_string())
            .expect("a shown broker URL parses");
        assert_eq!(back, u);
    }
}

// ---------------------------------------------------------------------------
// Archives and identity bundles
// ---------------------------------------------------------------------------

/// The two documents the bundle target's manifest lists.
pub fn bundle_documents() -> Vec<(DeploymentId, Vec<u8>)> {
    ["web", "db"]
        .into_iter()
        .map(|id| {
            let yaml = format!(
                "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
                 metadata:\n  annotations:\n    id: {id}\n  name: app-{id}\n\
                 spec:\n  deploymentProfile:\n    type: compose\n    components:\n      - name: {id}\n        properties: {{}}\n"
            );
            (DeploymentId::new(id).expect("id"), yaml.into_bytes())
        })
        .collect()
}

/// A deployment bundle (`GET .../bundles/{digest}`, tar.gz) as the agent's
/// HTTP transport unpacks it. The first byte picks whether the rest is the
/// archive as received (even) or a tar to be gzipped first (odd), so the
/// fuzzer can reach the tar reader. Properties: an accepted bundle yields
/// every listed deployment exactly once, each usable document with the
/// listed digest and within the entry limit.
pub fn bundle(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let archive = if pick % 2 == 0 {
        rest.to_vec()
    } else {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).expect("gzip to memory");
        gz.finish().expect("gzip to memory")
    };
    let wanted: BTreeMap<DeploymentId, Digest> = bundle_documents()
        .into_iter()
        .map(|(id, yaml)| (id, Digest::of(&yaml)))
        .collect();
    let Ok(decoded) = bundle::decode(&archive, &wanted, BUNDLE_LIMITS) else {
        return;
    };
    let mut seen: Vec<DeploymentId> = decoded.usable.iter().map(|d| d.id.clone()).collect();
    for doc in &decoded.usable {
        assert_eq!(Some(&doc.digest()), wanted.get(&doc.id));
        assert!(doc.bytes().len() <= BUNDLE_LIMITS.max_entry);
    }
    for (id, digest, _) in &decoded.unusable {
        assert_eq!(Some(digest), wanted.get(id));
        seen.push(id.clone());
    }
    seen.sort();
    let listed: Vec<DeploymentId> = wanted.keys().cloned().collect();
    assert_eq!(seen, listed, "a listed deployment is missing or repeated");
}

/// The files of an identity bundle, in the order an `identity` input holds
/// them (separated by [`IDENTITY_SEPARATOR`]).
pub const IDENTITY_FILES: [&str; 5] = [
    margo_schemas::identity::INDEX_FILE,
    margo_schemas::identity::KEY_FILE,
    margo_schemas::identity::CERT_FILE,
    margo_schemas::identity::CA_FILE,
    margo_schemas::identity::MANAGER_SIGNING_CERT_FILE,
];

fn identity_dir() -> &'static Mutex<PathBuf> {
    static DIR: OnceLock<Mutex<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("margo-fuzz-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Mutex::new(dir)
    })
}

/// An identity bundle directory as the agent loads it (`identity.toml`,
/// the key, the certificates). Properties: a loaded identity's key is its
/// certificate's key, and a bundle (version 1) identity has the manager's
/// key and the index's client id as its certificate's name.
pub fn identity(data: &[u8]) {
    let parts = split_all(data, IDENTITY_SEPARATOR);
    let dir = identity_dir().lock().unwrap_or_else(|e| e.into_inner());
    for (i, name) in IDENTITY_FILES.iter().enumerate() {
        let path = dir.join(name);
        match parts.get(i) {
            Some(bytes) => std::fs::write(&path, bytes).expect("write scratch file"),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let Ok(identity) = Identity::load(&dir) else {
        return;
    };
    let cert = margo_schemas::pki::certs_from_pem(&identity.pem.cert_pem, "client.crt")
        .expect("a loaded identity has its certificate");
    let cert_key = VerifyingKey::from_certificate(&cert[0]).expect("a P-256 certificate");
    assert_eq!(identity.signing_key.public_key(), cert_key);
    match identity.kind {
        IdentityKind::Bundle => {
            assert!(identity.manager_key.is_some());
            let info = margo_schemas::pki::cert_info(&cert[0]).expect("parses");
            assert_eq!(
                info.common_name.as_deref(),
                Some(identity.client_id.as_str())
            );
        }
        IdentityKind::Plain => assert!(identity.manager_key.is_none()),
    }
}

/// `data` cut at every `sep` (the identity target's file separator).
pub fn split_all<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(sep.len()).position(|w| w == sep) {
        parts.push(&rest[..at]);
        rest = &rest[at + sep.len()..];
    }
    parts.push(rest);
    parts
}

// ---------------------------------------------------------------------------
// HTTP signatures and onboarding
// ---------------------------------------------------------------------------

/// An HTTP request as text: `METHOD scheme://authority/path?query`, header
/// lines `name: value`, an empty line, the body. Runs the Structured Field
/// parser on every header value, RFC 9421 verification with the fixed key
/// (the seeds are signed with it), `Content-Digest`, `X-Payload-Signature`
/// and the `sha256:` digest parser. Properties: every parsed dictionary
/// member serialises and parses back to itself; a verified signature has
/// the accepted key id, a `created` inside the policy window and covers the
/// body's digest when there is a body; a digest check that passes fails
/// for any other body; our own `Content-Digest` always passes.
pub fn http_sig(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let first = lines.next().unwrap_or("");
    let (method, target) = first.split_once(' ').unwrap_or((first, ""));
    let (scheme, rest) = target.split_once("://").unwrap_or(("https", target));
    let (authority, path_and_query) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim(), v.trim()))
        .collect();
    let request = Request {
        method,
        scheme,
        authority,
        path_and_query,
        headers: &headers,
    };

    for (_, value) in &headers {
        structured_round_trip(value);
        if let Ok(d) = Digest::parse(value) {
            assert_eq!(Digest::parse(&d.to_string()).ok(), Some(d));
        }
    }

    let policy = Policy {
        now: HTTP_NOW,
        max_age: 300,
        max_future_skew: 60,
        has_body: !body.is_empty(),
    };
    let keyid_ok = |k: &str| k == HTTP_KEYID;
    if let Ok(v) = http_msg_sig::verify_request(&request, fuzz_public_key(), &policy, &keyid_ok) {
        assert_eq!(v.keyid, HTTP_KEYID);
        assert!(v.created >= HTTP_NOW - 300 && v.created <= HTTP_NOW + 60);
        if policy.has_body {
            assert!(v
                .components
                .iter()
                .any(|c| c == http_msg_sig::CONTENT_DIGEST));
        }
    }

    let digest_lines = request.field_lines(http_msg_sig::CONTENT_DIGEST);
    if !digest_lines.is_empty() && http_msg_sig::check_content_digest(&digest_lines, body).is_ok() {
        let mut other = body.to_vec();
        other.push(b'!');
        assert!(
            http_msg_sig::check_content_digest(&digest_lines, &other).is_err(),
            "a content digest matched two bodies"
        );
    }
    let ours = http_msg_sig::content_digest(body);
    assert!(http_msg_sig::check_content_digest(&[&ours], body).is_ok());
    assert!(http_sig::verify_content_digest(Some(&ours), body).is_ok());

    let header = |name: &str| request.field_lines(name).first().copied();
    let _ = http_sig::verify_with_key(
        header(http_sig::CONTENT_DIGEST),
        header(http_sig::PAYLOAD_SIGNATURE),
        body,
        fuzz_public_key(),
        false,
    );
}

fn structured_round_trip(value: &str) {
    let Ok(members) = sfv::parse_dictionary(&[value]) else {
        return;
    };
    for m in members {
        let text = match &m.value {
            MemberValue::InnerList(list) => {
                let mut t = sfv::serialize_inner_list(list);
                sfv::serialize_params(&list.params, &mut t);
                t
            }
            MemberValue::Item(item) => {
                let mut t = String::new();
                sfv::serialize_item(item, &mut t);
                t
            }
        };
        let line = format!("{}={text}", m.key);
        let back = sfv::parse_dictionary(&[line.as_str()])
            .unwrap_or_else(|e| panic!("{line:?} (serialised from {value:?}) does not parse: {e}"));
        assert_eq!(back.len(), 1);
        assert_eq!(
            back[0].value, m.value,
            "{value:?} changed across serialisation"
        );
    }
}

/// An onboarding request body as the manager reads it, and the answers
/// the agent reads. Properties: the certificate the manager takes out of
/// a request round-trips through a new request; its checks run.
pub fn onboarding(data: &[u8]) {
    let _ = serde_json::from_slice::<OnboardingResponse>(data);
    let Ok((request, der)) = margo_manager::http::onboarding::read_request(data) else {
        return;
    };
    assert_eq!(
        OnboardingRequest::new(&der)
            .certificate_der()
            .ok()
            .as_deref(),
        Some(&der[..]),
        "the certificate changed across a request"
    );
    if let Some(ext) = &request.extensions {
        let _ = ext.validate();
    }
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    let _ = margo_manager::http::onboarding::check_device_certificate(&der, peer);
}
