//! The connection-tracking tables as operators read them (`anycast conns`, `anycast lookup`):
//! both tiers (`CONNS_NEW`, new flows on probation, and `CONNS`, established; see
//! anycast-ebpf/src/track.rs) read from the pinned maps, with each entry's backend resolved
//! through the pinned `BACKENDS` map (address and generation: an entry whose generation is not
//! its id's any more is stale, and the program ignores it).
//!
//! The maps are read, never written, by a process of their own: the agent's work is not held up,
//! and they can be read while no agent runs. An LRU map changes while it is read: an entry
//! evicted meanwhile is skipped, one added meanwhile may or may not be seen.
//!
//! CPU: `CONNS` is one hash map with per-CPU LRU lists; an entry records neither the CPU that
//! created it nor the list it is on, so no CPU can be reported.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anycast_common::{Backend, ConnKey, ConnValue, FAMILY_V4, map_names};
use aya::maps::{Array, HashMap, Map, MapData};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::dataplane::DataplaneError;
use crate::plan::model::Flow;

/// Which table an entry is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// `CONNS`: the flow's second tracked packet promoted it.
    Established,
    /// `CONNS_NEW`: one tracked packet so far (probation).
    New,
}

impl Tier {
    pub fn map_name(self) -> &'static str {
        match self {
            Tier::Established => map_names::CONNS,
            Tier::New => map_names::CONNS_NEW,
        }
    }
}

/// One tracked connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedConn {
    pub tier: Tier,
    /// `tcp`, `udp`, or the IP protocol number.
    pub protocol: String,
    pub client: SocketAddr,
    /// The flow's destination: the VIP address and the port the client used.
    pub vip: SocketAddr,
    pub backend_id: u32,
    /// The backend the entry sends to; `None` when the id has no backend now or another one
    /// (generation changed): the program ignores such an entry.
    pub backend: Option<IpAddr>,
    /// Milliseconds since the entry's timestamp: its creation (or promotion) for TCP, its last
    /// refresh for UDP (refreshed at most once a second). The map keeps one timestamp, so this is
    /// both the age of a TCP entry and how long a UDP flow has been quiet.
    pub since_ms: u64,
}

/// Which entries `anycast conns` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `ADDR`, `ADDR:PORT` or `ADDR:PORT/PROTO` of the VIP.
    pub vip: Option<String>,
    pub backend: Option<IpAddr>,
    pub client: Option<IpNet>,
}

impl Filter {
    pub fn matches(&self, c: &TrackedConn) -> bool {
        let vip_ok = self.vip.as_deref().is_none_or(|v| {
            let (addr_port, proto) = match v.rsplit_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (v, None),
            };
            proto.is_none_or(|p| p.eq_ignore_ascii_case(&c.protocol))
                && match addr_port.parse::<SocketAddr>() {
                    Ok(sa) => sa == c.vip,
                    Err(_) => addr_port
                        .trim_matches(|ch| ch == '[' || ch == ']')
                        .parse::<IpAddr>()
                        .is_ok_and(|a| a == c.vip.ip()),
                }
        });
        vip_ok
            && self.backend.is_none_or(|b| c.backend == Some(b))
            && self.client.is_none_or(|n| n.contains(&c.client.ip()))
    }
}

/// What `anycast conns` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnsReport {
    /// Entries read per tier, before the filter (shadowed `CONNS_NEW` entries left out).
    pub total: BTreeMap<Tier, u64>,
    /// `CONNS_NEW` entries of flows that are in `CONNS` too (a promotion leaves the probation
    /// entry, and the program looks in `CONNS` first): counted here, not in `total`, not listed.
    #[serde(default)]
    pub shadowed: u64,
    /// Entries that match the filter.
    pub matched: u64,
    /// Matching entries per backend (`stale` for entries the program ignores).
    pub per_backend: BTreeMap<String, u64>,
    /// The matching entries, most recent first, at most the limit.
    pub conns: Vec<TrackedConn>,
}

/// The key the program builds for `flow` (the client's packets: source = client).
pub fn key_of(flow: &Flow) -> ConnKey {
    let to16 = |a: IpAddr| match a {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            b
        }
        IpAddr::V6(v) => v.octets(),
    };
    let (s, d) = (flow.src.port().to_be_bytes(), flow.dst.port().to_be_bytes());
    ConnKey {
        src_be: to16(flow.src.ip()),
        dst_be: to16(flow.dst.ip()),
        ports_be: [s[0], s[1], d[0], d[1]],
        proto: flow.protocol.number(),
        family: if flow.src.is_ipv4() {
            FAMILY_V4
        } else {
            anycast_common::FAMILY_V6
        },
        _pad: [0; 2],
    }
}

fn addr(be: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(be[0], be[1], be[2], be[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*be))
    }
}

/// An entry as operators read it. `backend_of` is `BACKENDS[id]`; `now_ns` the monotonic clock
/// the program's `bpf_ktime_get_ns` reads.
pub fn describe(
    tier: Tier,
    key: &ConnKey,
    value: &ConnValue,
    backend_of: impl Fn(u32) -> Option<Backend>,
    now_ns: u64,
) -> TrackedConn {
    let protocol = match key.proto {
        anycast_common::PROTO_TCP => "tcp".to_owned(),
        anycast_common::PROTO_UDP => "udp".to_owned(),
        n => n.to_string(),
    };
    let port = |i: usize| u16::from_be_bytes([key.ports_be[i], key.ports_be[i + 1]]);
    let backend = backend_of(value.backend_id)
        .filter(|b| b.generation == value.generation && b.family != 0)
        .map(|b| addr(&b.addr_be, b.family));
    TrackedConn {
        tier,
        protocol,
        client: SocketAddr::new(addr(&key.src_be, key.family), port(0)),
        vip: SocketAddr::new(addr(&key.dst_be, key.family), port(2)),
        backend_id: value.backend_id,
        backend,
        since_ms: now_ns.saturating_sub(value.last_seen_ns) / 1_000_000,
    }
}

/// Adds matching entries to `report`, keeping the `limit` most recent.
pub fn collect(
    report: &mut ConnsReport,
    entries: impl IntoIterator<Item = TrackedConn>,
    filter: &Filter,
    limit: usize,
) {
    for c in entries {
        *report.total.entry(c.tier).or_default() += 1;
        if !filter.matches(&c) {
            continue;
        }
        report.matched += 1;
        let b = c
            .backend
            .map_or_else(|| "stale".to_owned(), |b| b.to_string());
        *report.per_backend.entry(b).or_default() += 1;
        report.conns.push(c);
        if report.conns.len() > limit.saturating_mul(2).max(1024) {
            trim(report, limit);
        }
    }
    trim(report, limit);
}

fn trim(report: &mut ConnsReport, limit: usize) {
    report.conns.sort_by_key(|c| (c.since_ms, c.tier, c.client));
    report.conns.truncate(limit);
}

fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

fn open(pin_path: &Path, name: &'static str) -> Result<Map, DataplaneError> {
    let path = crate::dataplane::pins::PinLayout::new(pin_path).map(name);
    let data = MapData::from_pin(&path).map_err(|source| DataplaneError::Map {
        name,
        what: format!("opening pin {}", path.display()),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| DataplaneError::Map {
        name,
        what: "reading map info".into(),
        source,
    })
}

/// The pinned maps of a dataplane, open for reading.
pub struct PinnedConns {
    conns: HashMap<MapData, ConnKey, ConnValue>,
    conns_new: HashMap<MapData, ConnKey, ConnValue>,
    backends: Array<MapData, Backend>,
}

impl PinnedConns {
    pub fn open(pin_path: &Path) -> Result<Self, DataplaneError> {
        let hash = |name| {
            HashMap::try_from(open(pin_path, name)?).map_err(|source| DataplaneError::Map {
                name,
                what: "opening as a hash map".into(),
                source,
            })
        };
        let name = map_names::BACKENDS;
        Ok(Self {
            conns: hash(map_names::CONNS)?,
            conns_new: hash(map_names::CONNS_NEW)?,
            backends: Array::try_from(open(pin_path, name)?).map_err(|source| {
                DataplaneError::Map {
                    name,
                    what: "opening as an array".into(),
                    source,
                }
            })?,
        })
    }

    fn backend(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }

    /// Every entry of both tiers through `filter`, at most `limit` of them listed.
    pub fn report(&self, filter: &Filter, limit: usize) -> ConnsReport {
        let now = now_ns();
        let mut report = ConnsReport::default();
        let mut established = std::collections::HashSet::new();
        for (tier, map) in [
            (Tier::Established, &self.conns),
            (Tier::New, &self.conns_new),
        ] {
            let mut shadowed = 0;
            // An entry evicted between the key walk and its lookup is an error here: skipped.
            let entries: Vec<TrackedConn> = map
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, _)| match tier {
                    Tier::Established => {
                        established.insert(*k);
                        true
                    }
                    Tier::New if established.contains(k) => {
                        shadowed += 1;
                        false
                    }
                    Tier::New => true,
                })
                .map(|(k, v)| describe(tier, &k, &v, |id| self.backend(id), now))
                .collect();
            report.shadowed += shadowed;
            collect(&mut report, entries, filter, limit);
        }
        report
    }

    /// The entry for `flow`, looked up as the program does: `CONNS`, then `CONNS_NEW`.
    pub fn lookup(&self, flow: &Flow) -> Option<TrackedConn> {
        let key = key_of(flow);
        let now = now_ns();
        [
            (Tier::Established, &self.conns),
            (Tier::New, &self.conns_new),
        ]
        .into_iter()
        .find_map(|(tier, map)| {
            map.get(&key, 0)
                .ok()
                .map(|v| describe(tier, &key, &v, |id| self.backend(id), now))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(a: &str, generation: u16) -> Backend {
        let ip: IpAddr = a.parse().unwrap();
        let key = key_of(&Flow {
            protocol: crate::config::Protocol::Tcp,
            src: SocketAddr::new(ip, 1),
            dst: SocketAddr::new(ip, 2),
        });
        Backend {
            addr_be: key.src_be,
            family: key.family,
            flags: 0,
            generation,
        }
    }

    fn entry(
        flow: &str,
        backend_id: u32,
        generation: u16,
        last_seen_ns: u64,
    ) -> (ConnKey, ConnValue) {
        (
            key_of(&flow.parse().unwrap()),
            ConnValue {
                backend_id,
                generation,
                _pad: 0,
                last_seen_ns,
            },
        )
    }

    #[test]
    fn entries_read_back_as_the_flow_and_backend_they_track() {
        let backends = [backend("198.18.10.2", 7), backend("fd00:10::2", 1)];
        let get = |id: u32| backends.get(id as usize).copied();
        let (k, v) = entry(
            "tcp 198.51.100.7:40000 203.0.113.10:80",
            0,
            7,
            1_000_000_000,
        );
        let c = describe(Tier::Established, &k, &v, get, 3_500_000_000);
        assert_eq!(c.client, "198.51.100.7:40000".parse().unwrap());
        assert_eq!(c.vip, "203.0.113.10:80".parse().unwrap());
        assert_eq!(c.backend, Some("198.18.10.2".parse().unwrap()));
        assert_eq!((c.protocol.as_str(), c.since_ms), ("tcp", 2500));
        // Another generation: the id went to another backend; the program ignores the entry.
        let (k, v) = entry("udp [2001:db8::7]:5353 [2001:db8::10]:53", 1, 2, 0);
        let c = describe(Tier::New, &k, &v, get, 0);
        assert_eq!(c.backend, None);
        assert_eq!(c.vip, "[2001:db8::10]:53".parse().unwrap());
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["tier"], "new");
    }

    #[test]
    fn filters_counts_and_the_limit() {
        let backends = [backend("198.18.10.2", 1), backend("198.18.10.3", 1)];
        let get = |id: u32| backends.get(id as usize).copied();
        let conns: Vec<TrackedConn> = (0..10u64)
            .map(|i| {
                let (k, v) = entry(
                    &format!("tcp 198.51.100.{}:{} 203.0.113.10:80", i % 3, 40000 + i),
                    (i % 2) as u32,
                    1,
                    i * 1_000_000,
                );
                describe(Tier::Established, &k, &v, get, 20_000_000)
            })
            .collect();
        let mut all = ConnsReport::default();
        collect(&mut all, conns.clone(), &Filter::default(), 3);
        assert_eq!((all.matched, all.total[&Tier::Established]), (10, 10));
        assert_eq!(all.per_backend["198.18.10.2"], 5);
        // Most recent first: the largest timestamps.
        assert_eq!(
            all.conns.iter().map(|c| c.since_ms).collect::<Vec<_>>(),
            [11, 12, 13]
        );
        for (filter, want) in [
            (
                Filter {
                    backend: Some("198.18.10.3".parse().unwrap()),
                    ..Filter::default()
                },
                5,
            ),
            (
                Filter {
                    client: Some("198.51.100.1/32".parse().unwrap()),
                    ..Filter::default()
                },
                3,
            ),
            (
                Filter {
                    vip: Some("203.0.113.10:80/tcp".into()),
                    ..Filter::default()
                },
                10,
            ),
            (
                Filter {
                    vip: Some("203.0.113.10:80/udp".into()),
                    ..Filter::default()
                },
                0,
            ),
            (
                Filter {
                    vip: Some("203.0.113.11".into()),
                    ..Filter::default()
                },
                0,
            ),
        ] {
            let mut r = ConnsReport::default();
            collect(&mut r, conns.clone(), &filter, 100);
            assert_eq!(r.matched, want, "{filter:?}");
            assert_eq!(r.conns.len() as u64, want);
        }
    }
}
