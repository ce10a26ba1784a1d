//! Client → broker packet inspection: framing with the rumqttc MQTT 3.1.1
//! codec, authorization against the per-device topic rules of
//! `margo_schemas::topics` (devices on the gateway) or the read-only rules
//! of the operator's loopback listener (observers), and the CONNECT rewrite
//! (client id, clean session and the broker login of the internal listener).
//!
//! Pure and synchronous (no I/O), so it can be unit-tested and fuzzed.

use bytes::{Bytes, BytesMut};
use margo_schemas::ids::ClientId;
use margo_schemas::topics::{
    device_may_publish, device_may_retain, device_may_set_will, device_may_subscribe,
    MAX_PRESENCE_BYTES,
};
use rumqttc::mqttbytes::v4::{
    Connect, PubAck, PubComp, PubRec, PubRel, Publish, Subscribe, Unsubscribe,
};
use rumqttc::mqttbytes::{self, check, FixedHeader, PacketType, Protocol};

/// Why a device's connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// The first packet was not CONNECT.
    #[error("first packet is {0:?}, not CONNECT")]
    NotConnect(PacketType),
    /// A CONNECT after the first one.
    #[error("second CONNECT")]
    SecondConnect,
    /// CONNECT asked for a protocol other than MQTT 3.1.1.
    #[error("protocol {0:?} is not MQTT 3.1.1")]
    Protocol(Protocol),
    /// A last will on a topic the device may not use.
    #[error("last will on {0:?} not allowed")]
    WillTopic(String),
    /// A SUBSCRIBE with a filter the device may not use.
    #[error("subscribe to {0:?} not allowed")]
    Subscribe(String),
    /// A PUBLISH on a topic the device may not use.
    #[error("publish on {0:?} not allowed")]
    Publish(String),
    /// A retained PUBLISH (or retained will) other than the device's own
    /// presence of at most [`MAX_PRESENCE_BYTES`]: devices store no
    /// retained data in the broker (issue 12, finding 1).
    #[error("retained publish on {0:?} not allowed (only the own presence, at most {MAX_PRESENCE_BYTES} bytes)")]
    Retain(String),
    /// A packet type only a broker sends.
    #[error("{0:?} is a broker-to-client packet")]
    ServerOnly(PacketType),
    /// An observer (the operator's read-only listener) tried to write: a
    /// PUBLISH, a PUBREL or a last will (issue 12, finding 2).
    #[error("read-only listener: {0} not allowed")]
    ReadOnly(&'static str),
    /// Not a well-formed MQTT 3.1.1 packet, or over the size limit.
    #[error("malformed packet: {0}")]
    Malformed(mqttbytes::Error),
}

impl Violation {
    /// The topic or filter involved, for logging.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Self::WillTopic(t) | Self::Subscribe(t) | Self::Publish(t) | Self::Retain(t) => Some(t),
            _ => None,
        }
    }

    /// Short kind: the `reason` label of `margo_gateway_violations_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotConnect(_) => "not_connect",
            Self::SecondConnect => "second_connect",
            Self::Protocol(_) => "protocol",
            Self::WillTopic(_) => "will",
            Self::Subscribe(_) => "subscribe",
            Self::Publish(_) => "publish",
            Self::Retain(_) => "retain",
            Self::ServerOnly(_) => "server_only",
            Self::ReadOnly(_) => "read_only",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// Prefix of every observer's client id at the broker. Device ids are
/// lowercase letters and digits only and the manager's ids start with
/// `margo-`, so an observer can never take over their sessions.
pub const OBSERVER_PREFIX: &str = "observer-";

/// The user name and password a relayed CONNECT presents to the broker's
/// authenticated internal listener.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Whose traffic is inspected.
#[derive(Debug, Clone)]
enum Role {
    /// A device authenticated (by its certificate) as this identity.
    Device(ClientId),
    /// A read-only observer on the operator's loopback listener, with a
    /// tag unique to its connection: its client id at the broker is
    /// `observer-<tag>-<its own id>`, so no two observer connections share
    /// an id (a script reconnecting at once under the same id would
    /// otherwise race its own previous session; clean sessions lose
    /// nothing by it).
    Observer { connection: String },
}

/// Per-connection inspector of the client → broker byte stream.
#[derive(Debug)]
pub struct Inspector {
    role: Role,
    login: Option<Login>,
    max_packet_bytes: usize,
    connected: bool,
    keep_alive: Option<u16>,
}

impl Inspector {
    /// An inspector for a device authenticated as `identity`.
    pub fn new(identity: ClientId, max_packet_bytes: usize) -> Self {
        Self::with_role(Role::Device(identity), max_packet_bytes)
    }

    /// An inspector for a read-only observer: no publish, no will, a clean
    /// session, and its client id put under [`OBSERVER_PREFIX`] with
    /// `connection`, a tag unique to this connection.
    pub fn observer(connection: String, max_packet_bytes: usize) -> Self {
        Self::with_role(Role::Observer { connection }, max_packet_bytes)
    }

    fn with_role(role: Role, max_packet_bytes: usize) -> Self {
        Self {
            role,
            login: None,
            max_packet_bytes,
            connected: false,
            keep_alive: None,
        }
    }

    /// The login the rewritten CONNECT presents to the broker (replacing
    /// whatever the client sent); without one the CONNECT carries none.
    #[must_use]
    pub fn with_login(mut self, login: Option<Login>) -> Self {
        self.login = login;
        self
    }

    /// Whether the CONNECT has been seen.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// The keep-alive the device asked for in its CONNECT, in seconds.
    pub fn keep_alive(&self) -> Option<u16> {
        self.keep_alive
    }

    /// Takes the next complete packet off the front of `buf` and judges it.
    ///
    /// `Ok(Some(bytes))`: forward `bytes` to the broker: the packet's original
    /// bytes, except for CONNECT, which is rewritten. `Ok(None)`: `buf` holds no complete packet yet (read more). Bytes of an
    /// incomplete packet stay in `buf`. `Err`: close the connection.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Violation> {
        let header = match check(buf.iter(), self.max_packet_bytes) {
            Ok(header) => header,
            Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
            Err(e) => return Err(Violation::Malformed(e)),
        };
        let frame = buf.split_to(header.frame_length()).freeze();
        self.judge(header, frame).map(Some)
    }

    fn judge(&mut self, header: FixedHeader, frame: Bytes) -> Result<Bytes, Violation> {
        let kind = header.packet_type().map_err(Violation::Malformed)?;
        if !self.connected {
            if kind != PacketType::Connect {
                return Err(Violation::NotConnect(kind));
            }
            return self.connect(header, frame);
        }
        let malformed = Violation::Malformed;
        match kind {
            PacketType::Connect => return Err(Violation::SecondConnect),
            PacketType::Publish => {
                let Role::Device(identity) = &self.role else {
                    return Err(Violation::ReadOnly("publish"));
                };
                let publish = Publish::read(header, frame.clone()).map_err(malformed)?;
                if !device_may_publish(identity, &publish.topic) {
                    return Err(Violation::Publish(publish.topic));
                }
                if publish.retain && !device_may_retain(&publish.topic, publish.payload.len()) {
                    return Err(Violation::Retain(publish.topic));
                }
            }
            PacketType::Subscribe => {
                let subscribe = Subscribe::read(header, frame.clone()).map_err(malformed)?;
                if let Role::Device(identity) = &self.role {
                    if let Some(bad) = subscribe
                        .filters
                        .into_iter()
                        .find(|f| !device_may_subscribe(identity, &f.path))
                    {
                        return Err(Violation::Subscribe(bad.path));
                    }
                }
            }
            PacketType::Unsubscribe => {
                Unsubscribe::read(header, frame.clone()).map_err(malformed)?;
            }
            PacketType::PubAck => {
                PubAck::read(header, frame.clone()).map_err(malformed)?;
            }
            PacketType::PubRec => {
                PubRec::read(header, frame.clone()).map_err(malformed)?;
            }
            PacketType::PubRel => {
                // Only the sender of a QoS 2 PUBLISH sends PUBREL.
                if matches!(self.role, Role::Observer { .. }) {
                    return Err(Violation::ReadOnly("pubrel"));
                }
                PubRel::read(header, frame.clone()).map_err(malformed)?;
            }
            PacketType::PubComp => {
                PubComp::read(header, frame.clone()).map_err(malformed)?;
            }
            PacketType::PingReq | PacketType::Disconnect => {
                if frame.len() != 2 {
                    return Err(Violation::Malformed(mqttbytes::Error::MalformedPacket));
                }
            }
            PacketType::ConnAck
            | PacketType::SubAck
            | PacketType::UnsubAck
            | PacketType::PingResp => return Err(Violation::ServerOnly(kind)),
        }
        Ok(frame)
    }

    fn connect(&mut self, header: FixedHeader, frame: Bytes) -> Result<Bytes, Violation> {
        let mut connect = Connect::read(header, frame).map_err(Violation::Malformed)?;
        if connect.protocol != Protocol::V4 {
            return Err(Violation::Protocol(connect.protocol));
        }
        match &self.role {
            Role::Device(identity) => {
                if let Some(will) = &connect.last_will {
                    if !device_may_set_will(identity, &will.topic) {
                        return Err(Violation::WillTopic(will.topic.clone()));
                    }
                    if will.retain && !device_may_retain(&will.topic, will.message.len()) {
                        return Err(Violation::Retain(will.topic.clone()));
                    }
                }
                connect.client_id = identity.to_string();
            }
            Role::Observer { connection } => {
                if connect.last_will.is_some() {
                    return Err(Violation::ReadOnly("last will"));
                }
                // Never a persistent session: the broker would queue the
                // whole fleet's traffic for an observer that went away.
                connect.clean_session = true;
                connect.client_id = if connect.client_id.is_empty() {
                    format!("{OBSERVER_PREFIX}{connection}")
                } else {
                    format!("{OBSERVER_PREFIX}{connection}-{}", connect.client_id)
                };
            }
        }
        connect.login = self
            .login
            .as_ref()
            .map(|l| mqttbytes::v4::Login::new(&l.username, &l.password));
        let mut out = BytesMut::with_capacity(connect.size());
        connect.write(&mut out).map_err(Violation::Malformed)?;
        self.connected = true;
        self.keep_alive = Some(connect.keep_alive);
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use margo_schemas::topics;
    use rumqttc::mqttbytes::v4::{LastWill, Packet};
    use rumqttc::mqttbytes::QoS;

    const MAX: usize = 1024 * 1024;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).expect("valid id")
    }

    fn encode(mut packet: Packet) -> BytesMut {
        match &mut packet {
            Packet::Publish(p) => p.pkid = 1,
            Packet::Subscribe(s) => s.pkid = 1,
            Packet::Unsubscribe(u) => u.pkid = 1,
            _ => {}
        }
        let mut buf = BytesMut::new();
        packet.write(&mut buf, MAX).expect("encodes");
        buf
    }

    fn connected(identity: &str) -> Inspector {
        let mut inspector = Inspector::new(id(identity), MAX);
        let mut buf = encode(Packet::Connect(Connect::new(identity)));
        assert!(inspector.next(&mut buf).expect("connect ok").is_some());
        inspector
    }

    fn forwarded(inspector: &mut Inspector, packet: Packet) -> Result<Bytes, Violation> {
        let mut buf = encode(packet);
        let original = buf.clone().freeze();
        match inspector.next(&mut buf)? {
            Some(bytes) => {
                assert_eq!(bytes, original, "forwarded bytes differ");
                assert!(buf.is_empty());
                Ok(bytes)
            }
            None => panic!("complete packet not framed"),
        }
    }

    #[test]
    fn connect_is_rewritten_to_the_certificate_identity() {
        let mut inspector = Inspector::new(id("aaa"), MAX);
        let mut connect = Connect::new("bbb");
        connect.set_login("user", "secret");
        connect.clean_session = false;
        connect.keep_alive = 30;
        let mut buf = encode(Packet::Connect(connect));
        let Some(out) = inspector.next(&mut buf).expect("allowed") else {
            panic!("no verdict");
        };
        let mut out = BytesMut::from(&out[..]);
        let Packet::Connect(rewritten) = Packet::read(&mut out, MAX).expect("re-reads") else {
            panic!("not a connect");
        };
        assert_eq!(rewritten.client_id, "aaa");
        assert_eq!(rewritten.login, None);
        assert!(!rewritten.clean_session);
        assert_eq!(rewritten.keep_alive, 30);
        assert_eq!(inspector.keep_alive(), Some(30));
    }

    #[test]
    fn first_packet_must_be_connect_and_only_once() {
        let mut inspector = Inspector::new(id("aaa"), MAX);
        let mut buf = encode(Packet::PingReq);
        assert!(matches!(
            inspector.next(&mut buf),
            Err(Violation::NotConnect(PacketType::PingReq))
        ));
        let mut inspector = connected("aaa");
        let mut buf = encode(Packet::Connect(Connect::new("aaa")));
        assert!(matches!(
            inspector.next(&mut buf),
            Err(Violation::SecondConnect)
        ));
    }

    #[test]
    fn mqtt5_connect_is_refused() {
        let mut inspector = Inspector::new(id("aaa"), MAX);
        let mut connect = Connect::new("aaa");
        connect.protocol = Protocol::V5;
        let mut buf = encode(Packet::Connect(connect));
        assert!(inspector.next(&mut buf).is_err());
    }

    #[test]
    fn will_only_on_own_presence() {
        let a = id("aaa");
        let b = id("bbb");
        let mut ok = Connect::new("aaa");
        ok.last_will = Some(LastWill::new(
            topics::presence(&a),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        let mut buf = encode(Packet::Connect(ok));
        assert!(Inspector::new(a.clone(), MAX).next(&mut buf).is_ok());

        let mut bad = Connect::new("aaa");
        bad.last_will = Some(LastWill::new(
            topics::presence(&b),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        let mut buf = encode(Packet::Connect(bad));
        let err = Inspector::new(a, MAX).next(&mut buf).expect_err("refused");
        assert_eq!(err.topic(), Some("margo/v1/clients/bbb/presence"));
    }

    #[test]
    fn publish_and_subscribe_rules() {
        let a = id("aaa");
        let b = id("bbb");
        let mut inspector = connected("aaa");
        let publish =
            |topic: String| Packet::Publish(Publish::new(topic, QoS::AtLeastOnce, b"x".to_vec()));
        forwarded(&mut inspector, publish(topics::state(&a))).expect("own uplink");
        assert!(matches!(
            forwarded(&mut inspector, publish(topics::state(&b))),
            Err(Violation::Publish(_))
        ));
        assert!(matches!(
            forwarded(&mut inspector, publish(topics::desired_manifest(&a))),
            Err(Violation::Publish(_))
        ));
        forwarded(
            &mut inspector,
            Packet::Subscribe(Subscribe::new_many([
                rumqttc::mqttbytes::v4::SubscribeFilter::new(
                    topics::desired_filter(&a),
                    QoS::AtLeastOnce,
                ),
                rumqttc::mqttbytes::v4::SubscribeFilter::new(topics::ack(&a), QoS::AtLeastOnce),
            ])),
        )
        .expect("own downlink");
        assert!(matches!(
            forwarded(
                &mut inspector,
                Packet::Subscribe(Subscribe::new_many([
                    rumqttc::mqttbytes::v4::SubscribeFilter::new(
                        topics::ack(&a),
                        QoS::AtLeastOnce
                    ),
                    rumqttc::mqttbytes::v4::SubscribeFilter::new("#".into(), QoS::AtLeastOnce),
                ]))
            ),
            Err(Violation::Subscribe(f)) if f == "#"
        ));
        forwarded(&mut inspector, Packet::PingReq).expect("ping");
        forwarded(&mut inspector, Packet::PubAck(PubAck::new(7))).expect("puback");
        forwarded(
            &mut inspector,
            Packet::Unsubscribe(Unsubscribe::new("anything")),
        )
        .expect("unsubscribe");
        forwarded(&mut inspector, Packet::Disconnect).expect("disconnect");
    }

    #[test]
    fn retained_data_only_as_own_small_presence() {
        let a = id("aaa");
        let mut inspector = connected("aaa");
        let retained = |topic: String, payload: Vec<u8>| {
            let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
            p.retain = true;
            Packet::Publish(p)
        };
        forwarded(
            &mut inspector,
            retained(topics::presence(&a), b"online".to_vec()),
        )
        .expect("own presence");
        for topic in [
            topics::state(&a),
            topics::capabilities(&a),
            topics::status(
                &a,
                &margo_schemas::ids::DeploymentId::new("x").expect("valid id"),
            ),
        ] {
            assert!(matches!(
                forwarded(&mut connected("aaa"), retained(topic, b"x".to_vec())),
                Err(Violation::Retain(_))
            ));
        }
        assert!(matches!(
            forwarded(
                &mut inspector,
                retained(topics::presence(&a), vec![b'x'; MAX_PRESENCE_BYTES + 1])
            ),
            Err(Violation::Retain(_))
        ));

        let mut big_will = Connect::new("aaa");
        big_will.last_will = Some(LastWill::new(
            topics::presence(&a),
            vec![b'x'; MAX_PRESENCE_BYTES + 1],
            QoS::AtLeastOnce,
            true,
        ));
        let mut buf = encode(Packet::Connect(big_will));
        assert!(matches!(
            Inspector::new(a, MAX).next(&mut buf),
            Err(Violation::Retain(_))
        ));
    }

    fn observer_connect(connect: Connect) -> Result<Connect, Violation> {
        let mut inspector = Inspector::observer("7".into(), MAX);
        let mut buf = encode(Packet::Connect(connect));
        let out = inspector.next(&mut buf)?.expect("a whole packet");
        let mut out = BytesMut::from(&out[..]);
        match Packet::read(&mut out, MAX).expect("re-reads") {
            Packet::Connect(rewritten) => Ok(rewritten),
            other => panic!("not a connect: {other:?}"),
        }
    }

    #[test]
    fn observers_get_their_own_ids_a_clean_session_and_no_writes() {
        let mut named = Connect::new("margo-manager");
        named.clean_session = false;
        let rewritten = observer_connect(named).expect("allowed");
        assert_eq!(rewritten.client_id, "observer-7-margo-manager");
        assert!(rewritten.clean_session);
        let rewritten = observer_connect(Connect::new("")).expect("allowed");
        assert_eq!(rewritten.client_id, "observer-7");

        let mut willing = Connect::new("x");
        willing.last_will = Some(LastWill::new("t", "w", QoS::AtMostOnce, false));
        assert!(matches!(
            observer_connect(willing),
            Err(Violation::ReadOnly("last will"))
        ));
        let mut inspector = Inspector::observer("a".into(), MAX);
        let mut buf = encode(Packet::Connect(Connect::new("x")));
        inspector.next(&mut buf).expect("connect");
        forwarded(
            &mut inspector,
            Packet::Subscribe(Subscribe::new("#", QoS::AtLeastOnce)),
        )
        .expect("subscribe anywhere");
        forwarded(&mut inspector, Packet::PubAck(PubAck::new(3))).expect("acks deliveries");
        assert!(matches!(
            forwarded(
                &mut inspector,
                Packet::Publish(Publish::new("t", QoS::AtMostOnce, b"x".to_vec()))
            ),
            Err(Violation::ReadOnly("publish"))
        ));
    }

    #[test]
    fn server_only_packets_are_refused() {
        let mut inspector = connected("aaa");
        assert!(matches!(
            forwarded(&mut inspector, Packet::PingResp),
            Err(Violation::ServerOnly(PacketType::PingResp))
        ));
    }

    #[test]
    fn partial_packets_wait_and_pipelined_packets_split() {
        let mut inspector = connected("aaa");
        let a = id("aaa");
        let mut stream = encode(Packet::Publish(Publish::new(
            topics::state(&a),
            QoS::AtLeastOnce,
            vec![7u8; 300],
        )));
        stream.extend_from_slice(&encode(Packet::PingReq));
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in stream.iter() {
            buf.extend_from_slice(&[*byte]);
            while let Some(bytes) = inspector.next(&mut buf).expect("allowed") {
                out.extend_from_slice(&bytes);
            }
        }
        assert_eq!(out, stream.to_vec());
    }

    #[test]
    fn oversized_and_garbage_input_is_refused() {
        let mut inspector = Inspector::new(id("aaa"), 16);
        let mut buf = encode(Packet::Connect(Connect::new("aaaaaaaaaaaaaaaaaaaaaaaa")));
        assert!(matches!(
            inspector.next(&mut buf),
            Err(Violation::Malformed(_))
        ));
        let mut inspector = Inspector::new(id("aaa"), MAX);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4)[..]);
        assert!(inspector.next(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0x10u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(Inspector::new(id("aaa"), MAX).next(&mut buf).is_err());
    }

    proptest::proptest! {
        /// Arbitrary bytes in arbitrary chunks never panic the inspector,
        /// never grow its buffer past one packet plus a chunk, and after the
        /// CONNECT only whole input frames are forwarded, unchanged.
        #[test]
        fn arbitrary_input_never_panics(
            connected_first in proptest::bool::ANY,
            chunks in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..16),
        ) {
            let mut inspector = if connected_first { connected("aaa") } else { Inspector::new(id("aaa"), 256) };
            let mut buf = BytesMut::new();
            let mut input = Vec::new();
            let mut output = Vec::new();
            'feed: for chunk in chunks {
                buf.extend_from_slice(&chunk);
                input.extend_from_slice(&chunk);
                loop {
                    match inspector.next(&mut buf) {
                        Ok(Some(bytes)) => output.extend_from_slice(&bytes),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                proptest::prop_assert!(buf.len() <= MAX + 5 + 64);
            }
            if connected_first {
                proptest::prop_assert!(input.starts_with(&output));
            }
        }
    }
}
