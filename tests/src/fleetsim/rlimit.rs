//! Open-file limit: every simulated device holds a TLS socket here, and the
//! broker one more: with the embedded broker the manager (which inherits
//! this limit) holds three per device (gateway in and out, rumqttd), with
//! Mosquitto that process (which inherits it too) one per device and the
//! manager none.

use super::harness::BrokerKind;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The open-file limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct NofileLimit {
    pub soft_before: Option<u64>,
    pub hard_before: Option<u64>,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, and the hard limit to
/// `want` when that is higher and the process may (root with
/// CAP_SYS_RESOURCE, up to `fs.nr_open`). Never lowers anything; a refused
/// raise leaves the soft limit at the hard one.
pub fn raise_nofile(want: u64) -> NofileLimit {
    let before = getrlimit(Resource::Nofile);
    let hard = before.maximum;
    if hard.is_some_and(|h| h < want) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: Some(want),
            },
        );
    }
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        );
    }
    let after = getrlimit(Resource::Nofile);
    NofileLimit {
        soft_before: before.current,
        hard_before: before.maximum,
        soft: after.current,
        hard: after.maximum,
    }
}

/// Open files the manager process needs for `devices` devices with the
/// embedded broker and gateway (three sockets each) plus headroom.
pub fn manager_needs(devices: usize) -> u64 {
    3 * devices as u64 + 1024
}

/// Open files the most demanding process of a fleet of `devices` on
/// `broker` needs: the manager with the embedded broker
/// ([`manager_needs`]); with Mosquitto, Mosquitto and this process (one
/// socket per device each) plus headroom.
pub fn fleet_needs(devices: usize, broker: BrokerKind) -> u64 {
    match broker {
        BrokerKind::Embedded => manager_needs(devices),
        BrokerKind::Mosquitto => devices as u64 + 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_need_follows_the_broker() {
        // 10,000 devices: three sockets each in the manager with the
        // embedded broker (over this machine's 20,000), one each in
        // Mosquitto and in the simulator with Mosquitto.
        assert_eq!(fleet_needs(10_000, BrokerKind::Embedded), 31_024);
        assert_eq!(fleet_needs(10_000, BrokerKind::Mosquitto), 11_024);
        assert_eq!(
            fleet_needs(5, BrokerKind::Embedded),
            manager_needs(5),
            "the embedded need is the manager's"
        );
    }

    #[test]
    fn broker_kinds_parse_and_print() {
        for kind in [BrokerKind::Embedded, BrokerKind::Mosquitto] {
            assert_eq!(kind.to_string().parse::<BrokerKind>().ok(), Some(kind));
        }
        assert!("rumqttd".parse::<BrokerKind>().is_err());
    }
}
