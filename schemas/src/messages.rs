//! Signed messages on device topics: a CBOR [`Envelope`] inside a COSE_Sign1.
//!
//! Every envelope names the client it concerns, so a message signed for one
//! device is useless on another device's topics; uplink envelopes carry the
//! outbox `seq`, which the manager deduplicates on.

use serde::{Deserialize, Serialize};

use crate::capabilities::DeviceCapabilitiesManifest;
use crate::codec::{self, CodecError};
use crate::cose::{CoseError, SigningKey, VerifyingKey};
use crate::digest::Digest;
use crate::ids::{ClientId, DeploymentId, InstanceId};
use crate::manifest::StateManifest;
use crate::schedule::Schedule;
use crate::status::DeploymentStatus;
use crate::topics::DeviceTopic;

/// Version of the envelope format; a receiver rejects any other.
pub const PROTOCOL_VERSION: u16 = 1;

/// Why a message was rejected.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message is {len} bytes, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("signature: {0}")]
    Signature(#[from] CoseError),
    #[error("body: {0}")]
    Codec(#[from] CodecError),
    #[error("protocol version {0} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("unknown message kind {0:?}")]
    UnknownKind(String),
    #[error("message is for client {found}, expected {expected}")]
    WrongClient { expected: ClientId, found: ClientId },
    #[error("a {kind} message does not belong on this topic")]
    WrongTopic { kind: &'static str },
}

/// Acknowledgement of durably stored uplink, plus the client's current desired version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// Highest uplink seq such that every seq up to it is stored.
    pub acked_seq: u64,
    /// The client's current desired manifest version (0 = none yet).
    pub manifest_version: u64,
    /// The agent store whose uplink this ack answers (the `instance` of the
    /// newest uplink envelope the manager stored for the client). An agent
    /// ignores an ack naming another instance: it answers a clone's seqs.
    /// Absent from managers that predate it, and for agents that send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
}

/// One deployment document, content-addressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentBody {
    pub deployment_id: DeploymentId,
    pub digest: Digest,
    /// The exact YAML bytes whose digest is `digest`.
    #[serde(with = "serde_bytes")]
    pub yaml: Vec<u8>,
}

/// Capabilities of the device itself or of a gateway child (`device_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilitiesReport {
    pub manifest: DeviceCapabilitiesManifest,
}

/// A deployment status, with the manifest version being applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub adopted_manifest_version: u64,
    pub status: DeploymentStatus,
}

/// The agent's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    /// The last manifest version fully applied (0 = none).
    pub adopted_manifest_version: u64,
    /// Version of the agent software.
    pub agent_version: String,
    /// Deployments the agent currently holds, for the operator's view.
    #[serde(default)]
    pub deployments: Vec<DeploymentId>,
    /// The communication schedule in force (None: always connected, no
    /// downtime), so the manager can tell planned absence from trouble.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleInForce>,
}

/// The schedule an agent follows and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInForce {
    /// `local` (the agent's config) or `remote` (a manager `config` message).
    pub source: ScheduleSource,
    /// The `version` of the remote config in force (0 for local).
    #[serde(default)]
    pub config_version: u64,
    pub schedule: Schedule,
}

/// Where a schedule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleSource {
    Local,
    Remote,
}

/// Remote settings for one device, retained and signed on `R/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceConfig {
    /// Grows with every change for this client; a device refuses a version
    /// at or below the one it holds (replay of an older config).
    pub version: u64,
    /// The schedule to follow instead of the local one; None: back to the
    /// local configuration.
    #[serde(default)]
    pub schedule: Option<Schedule>,
}

/// Why the agent asks for a resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncReason {
    /// The broker did not resume our session (queued messages may be lost).
    SessionLost,
    /// A manifest referenced content that did not arrive in time.
    MissingContent,
    /// First connection of this agent.
    Startup,
    /// Periodic in-band check.
    Check,
    /// An ack announced a newer desired version than the device has seen.
    Behind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRequest {
    pub reason: SyncReason,
    /// The manifest version the agent has adopted.
    pub adopted_manifest_version: u64,
}

/// Every message kind, with its body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "camelCase")]
pub enum Message {
    Manifest(StateManifest),
    Deployment(DeploymentBody),
    Ack(Ack),
    Capabilities(CapabilitiesReport),
    Status(StatusReport),
    State(StateReport),
    Sync(SyncRequest),
    Config(DeviceConfig),
}

const KINDS: [&str; 8] = [
    "manifest",
    "deployment",
    "ack",
    "capabilities",
    "status",
    "state",
    "sync",
    "config",
];

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Manifest(_) => "manifest",
            Self::Deployment(_) => "deployment",
            Self::Ack(_) => "ack",
            Self::Capabilities(_) => "capabilities",
            Self::Status(_) => "status",
            Self::State(_) => "state",
            Self::Sync(_) => "sync",
            Self::Config(_) => "config",
        }
    }

    /// Whether this message may travel on `topic` (kind matches, ids agree).
    pub fn fits_topic(&self, topic: &DeviceTopic) -> bool {
        match (self, topic) {
            (Self::Manifest(_), DeviceTopic::DesiredManifest)
            | (Self::Ack(_), DeviceTopic::Ack)
            | (Self::Capabilities(_), DeviceTopic::Capabilities)
            | (Self::State(_), DeviceTopic::State)
            | (Self::Sync(_), DeviceTopic::Sync)
            | (Self::Config(_), DeviceTopic::Config) => true,
            (Self::Deployment(d), DeviceTopic::DesiredDeployment(id)) => &d.deployment_id == id,
            (Self::Status(s), DeviceTopic::Status(id)) => &s.status.deployment_id == id,
            _ => false,
        }
    }
}

/// The signed body of every device-topic message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u16,
    /// The client this message concerns.
    pub client: ClientId,
    /// Uplink outbox sequence number (0 on downlink).
    pub seq: u64,
    /// Uplink: the lowest seq still pending in the sender's outbox. Every seq
    /// below it was acknowledged or deliberately dropped by the outbox's
    /// overflow policy, so the receiver may count it as settled (0 on downlink).
    #[serde(default)]
    pub low: u64,
    /// Milliseconds since the Unix epoch when it was signed.
    pub ts: u64,
    pub msg: Message,
    /// Uplink: the sending agent store's random id, so acks can be told
    /// apart when two devices share one identity (absent from older agents
    /// and on downlink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
}

impl Envelope {
    pub fn new(client: ClientId, seq: u64, ts: u64, msg: Message) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            client,
            seq,
            low: 0,
            ts,
            msg,
            instance: None,
        }
    }

    /// Encodes and signs.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>, MessageError> {
        Ok(key.sign(codec::encode(self)?)?)
    }

    /// Verifies, decodes and checks an envelope received on `topic` for `client`.
    pub fn open(
        bytes: &[u8],
        max: usize,
        key: &VerifyingKey,
        client: &ClientId,
        topic: &DeviceTopic,
    ) -> Result<Self, MessageError> {
        if bytes.len() > max {
            return Err(MessageError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        let payload = key.verify(bytes)?;
        let env = decode_envelope(&payload, max)?;
        if &env.client != client {
            return Err(MessageError::WrongClient {
                expected: client.clone(),
                found: env.client,
            });
        }
        if !env.msg.fits_topic(topic) {
            return Err(MessageError::WrongTopic {
                kind: env.msg.kind(),
            });
        }
        Ok(env)
    }
}

#[derive(Deserialize)]
struct Peek {
    v: u16,
    msg: PeekMsg,
}

#[derive(Deserialize)]
struct PeekMsg {
    kind: String,
}

fn decode_envelope(payload: &[u8], max: usize) -> Result<Envelope, MessageError> {
    // Look at version and kind first so the error says what was wrong.
    let peek: Peek = codec::decode(payload, max)?;
    if peek.v != PROTOCOL_VERSION {
        return Err(MessageError::Version(peek.v));
    }
    if !KINDS.contains(&peek.msg.kind.as_str()) {
        return Err(MessageError::UnknownKind(
            peek.msg.kind.chars().take(40).collect(),
        ));
    }
    Ok(codec::decode(payload, max)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ComponentStatus, DeploymentState};

    fn client() -> ClientId {
        ClientId::new("abc").unwrap()
    }

    #[test]
    fn seal_open_roundtrip() {
        let (key, _) = SigningKey::generate().unwrap();
        let id = DeploymentId::new("d1").unwrap();
        let status = DeploymentStatus::new(
            id.clone(),
            vec![ComponentStatus {
                name: "c".into(),
                state: DeploymentState::Installed,
                error: None,
            }],
            None,
        );
        let env = Envelope::new(
            client(),
            7,
            1,
            Message::Status(StatusReport {
                adopted_manifest_version: 3,
                status,
            }),
        );
        let bytes = env.seal(&key).unwrap();
        let topic = DeviceTopic::Status(id);
        let back = Envelope::open(&bytes, 65536, &key.public_key(), &client(), &topic).unwrap();
        assert_eq!(back, env);

        let other = ClientId::new("xyz").unwrap();
        assert!(matches!(
            Envelope::open(&bytes, 65536, &key.public_key(), &other, &topic),
            Err(MessageError::WrongClient { .. })
        ));
        assert!(matches!(
            Envelope::open(
                &bytes,
                65536,
                &key.public_key(),
                &client(),
                &DeviceTopic::State
            ),
            Err(MessageError::WrongTopic { .. })
        ));
        assert!(matches!(
            Envelope::open(&bytes, 10, &key.public_key(), &client(), &topic),
            Err(MessageError::TooLarge { .. })
        ));
    }

    #[test]
    fn config_travels_only_on_the_config_topic_and_keeps_its_schedule() {
        let (key, _) = SigningKey::generate().unwrap();
        let schedule: Schedule = toml::from_str(
            "time_zone = \"Europe/Berlin\"\nconnection = \"per-check\"\n[polling]\nrate = \"30m\"\n",
        )
        .unwrap();
        let env = Envelope::new(
            client(),
            0,
            1,
            Message::Config(DeviceConfig {
                version: 4,
                schedule: Some(schedule),
            }),
        );
        let bytes = env.seal(&key).unwrap();
        let back = Envelope::open(
            &bytes,
            65536,
            &key.public_key(),
            &client(),
            &DeviceTopic::Config,
        )
        .unwrap();
        assert_eq!(back, env);
        assert!(matches!(
            Envelope::open(
                &bytes,
                65536,
                &key.public_key(),
                &client(),
                &DeviceTopic::Ack
            ),
            Err(MessageError::WrongTopic { kind: "config" })
        ));
    }

    #[test]
    fn instance_is_optional_both_ways() {
        // An older agent's envelope and an older manager's ack have none.
        let old = Envelope::new(
            client(),
            3,
            1,
            Message::Sync(SyncRequest {
                reason: SyncReason::Check,
                adopted_manifest_version: 0,
            }),
        );
        let bytes = codec::encode(&old).unwrap();
        let decoded: Envelope = codec::decode(&bytes, 4096).unwrap();
        assert_eq!(decoded.instance, None);
        let mut new = old.clone();
        new.instance = Some(InstanceId::generate());
        let decoded: Envelope = codec::decode(&codec::encode(&new).unwrap(), 4096).unwrap();
        assert_eq!(decoded, new);

        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct OldAck {
            acked_seq: u64,
            manifest_version: u64,
        }
        let ack: Ack = codec::decode(
            &codec::encode(&OldAck {
                acked_seq: 4,
                manifest_version: 2,
            })
            .unwrap(),
            4096,
        )
        .unwrap();
        assert_eq!(ack.instance, None);
        assert_eq!(ack.acked_seq, 4);
    }

    #[test]
    fn unknown_kind_and_version_are_named() {
        let (key, _) = SigningKey::generate().unwrap();
        #[derive(Serialize)]
        struct Fake {
            v: u16,
            client: String,
            seq: u64,
            ts: u64,
            msg: FakeMsg,
        }
        #[derive(Serialize)]
        struct FakeMsg {
            kind: String,
            body: u8,
        }
        let fake = |v, kind: &str| {
            key.sign(
                codec::encode(&Fake {
                    v,
                    client: "abc".into(),
                    seq: 0,
                    ts: 0,
                    msg: FakeMsg {
                        kind: kind.into(),
                        body: 0,
                    },
                })
                .unwrap(),
            )
            .unwrap()
        };
        let pk = key.public_key();
        assert!(matches!(
            Envelope::open(&fake(1, "reboot"), 4096, &pk, &client(), &DeviceTopic::State),
            Err(MessageError::UnknownKind(k)) if k == "reboot"
        ));
        assert!(matches!(
            Envelope::open(&fake(9, "state"), 4096, &pk, &client(), &DeviceTopic::State),
            Err(MessageError::Version(9))
        ));
    }

    #[test]
    fn deployment_must_match_topic_id() {
        let body = DeploymentBody {
            deployment_id: DeploymentId::new("a").unwrap(),
            digest: Digest::of(b"x"),
            yaml: b"x".to_vec(),
        };
        let msg = Message::Deployment(body);
        assert!(msg.fits_topic(&DeviceTopic::DesiredDeployment(
            DeploymentId::new("a").unwrap()
        )));
        assert!(!msg.fits_topic(&DeviceTopic::DesiredDeployment(
            DeploymentId::new("b").unwrap()
        )));
    }
}
