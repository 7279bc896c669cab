//! Where a short flow lands: the edge it entered through, read from the edges' own
//! connection-tracking maps, and the backend the edges' agents predict for it.

use std::net::SocketAddr;

use anycast::api::Client;
use anycast_common::{ConnKey, ConnValue, PROTO_TCP, map_names};
use anycast_tests::lab::reference;
use anycast_tests::lab_bgp::BgpLab;
use aya::maps::{HashMap as BpfHashMap, Map, MapData};

use crate::EDGES;
use crate::flows::{Prediction, Via};

/// Which backend every edge's agent names for `local -> target`.
pub fn predict(agents: &[Client; 2], local: SocketAddr, target: SocketAddr) -> Prediction {
    let flow = format!("tcp {local} {target}");
    let mut names = Vec::new();
    for (edge, agent) in EDGES.iter().zip(agents) {
        match agent.lookup(&flow) {
            Ok(d) => match d.outcome.backend().and_then(reference::backend_name) {
                Some(name) => names.push(name),
                None => {
                    return Prediction::Unknown(format!(
                        "{edge}: no known backend in {:?}",
                        d.outcome
                    ));
                }
            },
            Err(e) => return Prediction::Unknown(format!("{edge}: {e}")),
        }
    }
    if names.iter().all(|n| *n == names[0]) {
        Prediction::Backend(names[0])
    } else {
        Prediction::Disagree(names)
    }
}

/// The edges' connection-tracking maps (both tiers, `CONNS_NEW` and `CONNS`, pinned by their
/// agents), opened read-only: an edge's XDP program records a TCP flow in `CONNS_NEW` when the
/// first packet after the SYN passes it, with `bpf_ktime_get_ns` (CLOCK_MONOTONIC) as the time,
/// and copies the entry into `CONNS` on the next.
pub struct Tracker {
    /// Per edge, its tiers.
    maps: Vec<Vec<BpfHashMap<MapData, ConnKey, ConnValue>>>,
}

impl Tracker {
    pub fn open(bgp: &BgpLab) -> Result<Tracker, String> {
        let mut maps = Vec::new();
        for edge in EDGES {
            let config = anycast::config::Config::load(&bgp.lab.agent_config_path(edge))
                .map_err(|e| format!("{edge}'s agent config: {e}"))?;
            let layout = anycast::dataplane::pins::PinLayout::new(&config.agent.pin_path);
            let mut tiers = Vec::new();
            for name in [map_names::CONNS_NEW, map_names::CONNS] {
                let path = layout.map(name);
                let map = MapData::from_pin(&path)
                    .and_then(Map::from_map_data)
                    .map_err(|e| format!("opening {}: {e}", path.display()))?;
                tiers.push(
                    BpfHashMap::try_from(map)
                        .map_err(|e| format!("{}: not a {name} map: {e}", path.display()))?,
                );
            }
            maps.push(tiers);
        }
        Ok(Tracker { maps })
    }

    /// Which edges recorded `local -> target` at or after `since_ns` (an entry from an earlier
    /// flow on the same ports is older).
    pub fn via(&self, local: SocketAddr, target: SocketAddr, since_ns: u64) -> Via {
        let (SocketAddr::V4(l), SocketAddr::V4(t)) = (local, target) else {
            return Via::Unseen;
        };
        let key = ConnKey::v4(
            l.ip().octets(),
            l.port(),
            t.ip().octets(),
            t.port(),
            PROTO_TCP,
        );
        let seen: Vec<bool> = self
            .maps
            .iter()
            .map(|tiers| {
                tiers
                    .iter()
                    .any(|m| m.get(&key, 0).is_ok_and(|v| v.last_seen_ns >= since_ns))
            })
            .collect();
        match seen[..] {
            [true, true] => Via::Both,
            [true, false] => Via::Edge(0),
            [false, true] => Via::Edge(1),
            _ => Via::Unseen,
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
