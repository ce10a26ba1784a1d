//! Keeping the onboarding queue usable under abuse: pending requests
//! expire, one source network may only hold so many of them, and an
//! operator rejects many at once by filter (issue 12, finding 5).
//!
//! Expired requests are forgotten lazily: a polling device whose request
//! expired gets `404` and posts it again (the agent does this on its own),
//! listings leave them out, and a new request that needs a place in the
//! queue first removes every expired one.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use margo_schemas::onboarding::OnboardingState;

use super::{OnboardingError, RequestView, Result};
use crate::store::{RequestRecord, Store, WriteTxn};

/// How long a request waits for an operator when the configuration does
/// not say (`[onboarding] pending_ttl`): three days, a long weekend.
pub const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(3 * 24 * 3600);

/// When `record`, if pending, stops waiting.
pub fn expires_ms(record: &RequestRecord) -> u64 {
    record.expires_ms.unwrap_or_else(|| {
        record
            .last_seen_ms
            .saturating_add(DEFAULT_PENDING_TTL.as_millis() as u64)
    })
}

/// Whether `record` is a pending request past its expiry at `now`.
pub fn is_expired(record: &RequestRecord, now: u64) -> bool {
    record.state == OnboardingState::Pending && now >= expires_ms(record)
}

/// The address of a request's stored source (`ip:port`, or a bare address).
fn source_ip(source: &str) -> Option<IpAddr> {
    source
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| source.parse::<IpAddr>())
        .ok()
}

/// The network a source address counts against: the IPv4 address itself,
/// an IPv6 address's /64 (one subscriber usually holds a whole /64, so
/// per-address limits on single IPv6 addresses would be no limit at all).
/// `source` is what requests store: `ip:port`, or a bare address.
pub fn source_group(source: &str) -> String {
    match source_ip(source) {
        Some(ip) => margo_schemas::source_network::display(ip),
        None => source.to_string(),
    }
}

/// An address or a network (`192.0.2.0/24`, `2001:db8::/32`): what
/// `margoctl onboarding reject --from` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFilter {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for SourceFilter {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| {
            format!("{text:?} is not an IP address or network (a.b.c.d[/n], x::y[/n])")
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0..={max}"))?,
        };
        Ok(Self { net, prefix })
    }
}

impl std::fmt::Display for SourceFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl SourceFilter {
    /// Whether a request stored with `source` (`ip:port` or an address)
    /// came from this network.
    pub fn matches(&self, source: &str) -> bool {
        let Some(ip) = source_ip(source) else {
            return false;
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    };
    a & mask == b & mask
}

/// Which pending requests a bulk reject decides. Filters combine (all must
/// match); with none, `all` must say so explicitly.
#[derive(Debug, Clone, Default)]
pub struct RejectFilter {
    /// Reject every pending request (required when no other filter is given).
    pub all: bool,
    /// Only requests first seen at least this long ago.
    pub older_than: Option<Duration>,
    /// Only requests whose latest source is in this network.
    pub from: Option<SourceFilter>,
}

impl RejectFilter {
    fn matches(&self, record: &RequestRecord, now: u64) -> bool {
        let old_enough = self
            .older_than
            .is_none_or(|age| now.saturating_sub(record.first_seen_ms) >= age.as_millis() as u64);
        let from = self.from.is_none_or(|net| net.matches(&record.source));
        old_enough && from
    }
}

/// Forgets every pending request that expired by `now` and returns the
/// others with their ids, in id order (one pass over the pending index).
pub(super) fn live_pending(txn: &WriteTxn<'_>, now: u64) -> Result<Vec<(String, RequestRecord)>> {
    let mut live = Vec::new();
    for id in txn.pending_request_ids()? {
        let Some(record) = txn.onboarding_request(&id)? else {
            continue;
        };
        if is_expired(&record, now) {
            txn.remove_onboarding_request(&id)?;
        } else {
            live.push((id, record));
        }
    }
    Ok(live)
}

impl Store {
    /// An operator rejects every pending request `filter` selects, in one
    /// transaction; the rejected requests, oldest first. Expired ones are
    /// forgotten instead.
    pub fn onboarding_reject_matching(&self, filter: &RejectFilter) -> Result<Vec<RequestView>> {
        if !filter.all && filter.older_than.is_none() && filter.from.is_none() {
            return Err(OnboardingError::NoFilter);
        }
        let now = self.clock().now_ms();
        self.write(|txn| {
            let mut rejected = Vec::new();
            for (id, mut record) in live_pending(txn, now)? {
                if !filter.matches(&record, now) {
                    continue;
                }
                record.state = OnboardingState::Rejected;
                record.decided_by = Some("operator".into());
                record.decided_ms = Some(now);
                txn.put_onboarding_request(&id, &record)?;
                rejected.push(RequestView::new(&id, record));
            }
            rejected.sort_by_key(|r| r.first_seen);
            Ok(rejected)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_group_by_ipv4_address_and_ipv6_slash_64() {
        assert_eq!(source_group("192.0.2.7:51000"), "192.0.2.7");
        assert_eq!(source_group("192.0.2.7"), "192.0.2.7");
        assert_eq!(
            source_group("[2001:db8:1:2:aaaa::1]:443"),
            source_group("[2001:db8:1:2:bbbb::9]:443")
        );
        assert_ne!(
            source_group("[2001:db8:1:2::1]:443"),
            source_group("[2001:db8:1:3::1]:443")
        );
        assert_eq!(source_group("[::ffff:192.0.2.7]:1"), "192.0.2.7");
        assert_eq!(source_group("not an address"), "not an address");
    }

    #[test]
    fn source_filters_match_addresses_and_networks() {
        let one: SourceFilter = "192.0.2.7".parse().unwrap();
        assert!(one.matches("192.0.2.7:9"));
        assert!(!one.matches("192.0.2.8:9"));
        let net: SourceFilter = "192.0.2.0/24".parse().unwrap();
        assert!(net.matches("192.0.2.200:1") && !net.matches("192.0.3.1:1"));
        assert!(
            net.matches("[::ffff:192.0.2.1]:1"),
            "v4-mapped counts as v4"
        );
        let v6: SourceFilter = "2001:db8::/32".parse().unwrap();
        assert!(v6.matches("[2001:db8:ffff::1]:1") && !v6.matches("[2001:db9::1]:1"));
        assert!(!v6.matches("192.0.2.1:1"));
        let any: SourceFilter = "0.0.0.0/0".parse().unwrap();
        assert!(any.matches("203.0.113.9:1"));
        for bad in [
            "",
            "192.0.2.0/33",
            "2001:db8::/129",
            "host.example",
            "1.2.3.4/x",
        ] {
            assert!(bad.parse::<SourceFilter>().is_err(), "{bad:?}");
        }
    }
}
