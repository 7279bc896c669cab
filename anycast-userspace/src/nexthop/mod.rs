//! The next-hop cache: for every remote backend, the egress interface, next-hop MACs and MTU the
//! kernel would use, resolved here (netlink: routes, neighbours, links) and written into the
//! `NEXTHOPS` map, so that the program skips `bpf_fib_lookup` (100-250 ns a packet) on the
//! encapsulation path.
//!
//! Data flow: the agent gives the [`Targets`] (remote backends by id, with the tunnel sources)
//! after every publish; [`run`] resolves them, writes what changed, and resolves again within a
//! few milliseconds of any route, neighbour or link event, and every [`REFRESH`] in any case.
//! The program falls back to the FIB (counted `fib_lookup`) for a backend whose entry is missing,
//! resolved for another generation of its id, or too small for the packet, and for every
//! backend once the agent's lease on the cache (`NEXTHOP_LEASE`, renewed every [`LEASE_RENEW`])
//! has run out: an absent entry costs speed, not the route. Between a change in the kernel and
//! the rewrite (measured in the next-hop lab: 5-10 ms), packets follow the previous next hop;
//! after the agent dies, for at most `NEXTHOP_LEASE_NS` (3 s).
//!
//! What is resolved is what `ip route get <backend> from <tunnel source>` answers (the output
//! route, ECMP path chosen by the kernel's hash of those addresses, as the FIB helper chooses
//! it), then the neighbour of its gateway (or of the backend, on-link) on the route's interface,
//! and that interface's MAC and MTU (the route's MTU metric when it has one). An unresolved
//! neighbour leaves the entry empty: the program's FIB fallback hands such packets to the
//! kernel, which resolves the neighbour, and the neighbour event brings the entry.

mod netlink;

pub use netlink::{NetlinkError, Resolver};

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use anycast_common::NextHop;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How long after a netlink event the targets are resolved again: events come in bursts (a
/// route change brings route, neighbour and link messages), and one pass serves them all.
pub const SETTLE: Duration = Duration::from_millis(5);
/// Everything is resolved again this often even without an event (a lost event, e.g. a full
/// netlink socket buffer, is repaired by then).
pub const REFRESH: Duration = Duration::from_secs(10);

/// A remote backend whose next hop the program needs: `NEXTHOPS[id]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub id: u32,
    pub generation: u16,
    pub address: IpAddr,
}

/// What to resolve: the remote backends, and the tunnel sources the outer packets leave from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub backends: Vec<Target>,
    pub source_v4: Option<Ipv4Addr>,
    pub source_v6: Option<Ipv6Addr>,
}

impl Targets {
    /// The tunnel source for an outer packet to `address`, if one is configured.
    pub fn source_for(&self, address: IpAddr) -> Option<IpAddr> {
        match address {
            IpAddr::V4(_) => self.source_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.source_v6.map(IpAddr::V6),
        }
    }
}

/// The kernel's answer for one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Usable: egress interface, MACs, MTU.
    Resolved(Route),
    /// Not usable from the cache (the program asks the FIB): why, for the log.
    Unresolved(String),
}

/// A resolved next hop, as the program uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub ifindex: u32,
    /// The neighbour the frame goes to: the gateway, or the backend itself on-link.
    pub neighbour: IpAddr,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub mtu: u32,
}

impl Route {
    pub fn entry(&self, generation: u16) -> NextHop {
        let mut macs = [0; 12];
        macs[..6].copy_from_slice(&self.dmac);
        macs[6..].copy_from_slice(&self.smac);
        NextHop {
            ifindex: self.ifindex,
            mtu: self.mtu.min(u32::from(u16::MAX)) as u16,
            generation,
            macs,
        }
    }
}

/// How often the agent renews the program's lease on the cache (`NEXTHOP_LEASE`), which runs
/// for [`anycast_common::NEXTHOP_LEASE_NS`]: a dataplane whose agent died, and so no longer sees
/// route or neighbour changes, falls back to the kernel's FIB within that time.
pub const LEASE_RENEW: Duration = Duration::from_secs(1);

/// The lease value that holds for `for_ns` from now: `CLOCK_MONOTONIC_COARSE`, the clock of
/// the program's `bpf_ktime_get_coarse_ns`.
pub fn lease_until(for_ns: u64) -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    now.saturating_add(for_ns)
}

/// Where the entries go: the `NEXTHOPS` and `NEXTHOP_LEASE` maps, or a test's memory.
pub trait NextHopWriter {
    fn write(&mut self, id: u32, entry: &NextHop) -> Result<(), String>;
    /// Lets the program use the entries until `until` ([`lease_until`]).
    fn lease(&mut self, until: u64) -> Result<(), String>;
}

/// The two maps of the cache.
pub struct NextHopMaps<T> {
    pub entries: aya::maps::Array<T, NextHop>,
    pub lease: aya::maps::Array<T, u64>,
}

impl<T: std::borrow::BorrowMut<aya::maps::MapData>> NextHopWriter for NextHopMaps<T> {
    fn write(&mut self, id: u32, entry: &NextHop) -> Result<(), String> {
        self.entries.set(id, *entry, 0).map_err(|e| e.to_string())
    }

    fn lease(&mut self, until: u64) -> Result<(), String> {
        self.lease.set(0, until, 0).map_err(|e| e.to_string())
    }
}

/// The cache's maps in memory (tests).
#[derive(Debug, Default)]
pub struct MemoryNextHops {
    pub entries: BTreeMap<u32, NextHop>,
    pub lease: u64,
}

impl NextHopWriter for MemoryNextHops {
    fn write(&mut self, id: u32, entry: &NextHop) -> Result<(), String> {
        self.entries.insert(id, *entry);
        Ok(())
    }

    fn lease(&mut self, until: u64) -> Result<(), String> {
        self.lease = until;
        Ok(())
    }
}

/// What the cache holds, to write only what changed and to log changes once.
#[derive(Debug, Default)]
pub struct Cache {
    written: BTreeMap<u32, NextHop>,
    reasons: BTreeMap<u32, String>,
}

/// The outcome of one [`Cache::apply`], for logs and the lab.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub written: usize,
    pub resolved: usize,
    pub unresolved: usize,
}

impl Cache {
    /// Writes the entries of `resolved` that differ from what the map holds, and clears the
    /// entries of ids no longer among the targets.
    pub fn apply(
        &mut self,
        writer: &mut dyn NextHopWriter,
        targets: &Targets,
        resolved: &[(Target, Resolution)],
    ) -> Result<Applied, String> {
        let mut out = Applied::default();
        let mut wanted = BTreeMap::new();
        for (t, r) in resolved {
            let entry = match r {
                Resolution::Resolved(route) => {
                    out.resolved += 1;
                    if self.reasons.remove(&t.id).is_some()
                        || self.written.get(&t.id).is_none_or(|e| e.ifindex == 0)
                    {
                        info!(backend = %t.address, neighbour = %route.neighbour, ifindex = route.ifindex, mac = %mac(&route.dmac), mtu = route.mtu, "next hop resolved");
                    } else if self.written.get(&t.id) != Some(&route.entry(t.generation)) {
                        info!(backend = %t.address, neighbour = %route.neighbour, ifindex = route.ifindex, mac = %mac(&route.dmac), mtu = route.mtu, "next hop changed");
                    }
                    route.entry(t.generation)
                }
                Resolution::Unresolved(why) => {
                    out.unresolved += 1;
                    if self.reasons.get(&t.id) != Some(why) {
                        warn!(backend = %t.address, reason = %why, "next hop not cached; packets to this backend use the kernel's FIB");
                        self.reasons.insert(t.id, why.clone());
                    }
                    NextHop::default()
                }
            };
            wanted.insert(t.id, entry);
        }
        let gone: Vec<u32> = self
            .written
            .keys()
            .filter(|id| !targets.backends.iter().any(|t| t.id == **id))
            .copied()
            .collect();
        for id in gone {
            writer.write(id, &NextHop::default())?;
            self.written.remove(&id);
            self.reasons.remove(&id);
            out.written += 1;
        }
        for (id, entry) in wanted {
            if self.written.get(&id) != Some(&entry) {
                writer.write(id, &entry)?;
                self.written.insert(id, entry);
                out.written += 1;
            }
        }
        Ok(out)
    }
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Keeps `writer` (the `NEXTHOPS` map) current for the targets in `targets` until the sender is
/// dropped. Resolution errors are logged and retried at the next event or refresh.
pub async fn run(
    mut targets: watch::Receiver<Arc<Targets>>,
    mut writer: impl NextHopWriter,
) -> Result<(), NetlinkError> {
    let (resolver, mut events) = Resolver::with_events()?;
    let mut cache = Cache::default();
    let mut due = Some(tokio::time::Instant::now());
    let mut renew = tokio::time::interval(LEASE_RENEW);
    let mut resolved_once = false;
    loop {
        let wait = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = targets.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                due = Some(tokio::time::Instant::now());
            }
            Some(()) = events.recv() => {
                let at = tokio::time::Instant::now() + SETTLE;
                due = Some(due.map_or(at, |d| d.min(at)));
            }
            _ = renew.tick() => {
                // Only once the entries are this agent's own (an adopted map may hold another
                // agent's).
                if resolved_once && let Err(e) = writer.lease(lease_until(anycast_common::NEXTHOP_LEASE_NS)) {
                    warn!(error = %e, "renewing the next-hop cache's lease");
                }
            }
            () = wait => {
                let t = targets.borrow_and_update().clone();
                let resolved = resolver.resolve_all(&t).await;
                match cache.apply(&mut writer, &t, &resolved) {
                    Ok(a) => {
                        if a.written > 0 {
                            debug!(written = a.written, resolved = a.resolved, unresolved = a.unresolved, "next-hop cache updated");
                        }
                        if !resolved_once {
                            resolved_once = true;
                            let _ = writer.lease(lease_until(anycast_common::NEXTHOP_LEASE_NS));
                        }
                    }
                    Err(e) => warn!(error = %e, "writing the next-hop cache"),
                }
                due = Some(tokio::time::Instant::now() + REFRESH);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: u32, generation: u16) -> Target {
        Target {
            id,
            generation,
            address: IpAddr::V4(Ipv4Addr::new(198, 18, 10, id as u8)),
        }
    }

    fn route(last: u8) -> Resolution {
        Resolution::Resolved(Route {
            ifindex: 7,
            neighbour: "198.18.1.1".parse().unwrap(),
            dmac: [2, 0, 0, 0, 0, last],
            smac: [2, 0, 0, 0, 1, 1],
            mtu: 1500,
        })
    }

    #[test]
    fn entries_carry_macs_in_header_order_and_the_generation() {
        let Resolution::Resolved(r) = route(9) else {
            unreachable!()
        };
        let e = r.entry(3);
        assert_eq!(e.macs, [2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 1, 1]);
        assert_eq!((e.ifindex, e.mtu, e.generation), (7, 1500, 3));
    }

    #[test]
    fn only_changes_are_written_and_removed_targets_are_cleared() {
        let mut map = MemoryNextHops::default();
        let mut cache = Cache::default();
        let mut t = Targets {
            backends: vec![target(1, 1), target(2, 1)],
            ..Targets::default()
        };
        let r = vec![(target(1, 1), route(1)), (target(2, 1), route(2))];
        assert_eq!(cache.apply(&mut map, &t, &r).unwrap().written, 2);
        // The same answer again writes nothing.
        assert_eq!(cache.apply(&mut map, &t, &r).unwrap().written, 0);
        // A new MAC for 2, an unresolved 1.
        let r = vec![
            (target(1, 1), Resolution::Unresolved("no neighbour".into())),
            (target(2, 1), route(5)),
        ];
        let a = cache.apply(&mut map, &t, &r).unwrap();
        assert_eq!((a.written, a.resolved, a.unresolved), (2, 1, 1));
        assert_eq!(map.entries[&1], NextHop::default());
        assert_eq!(map.entries[&2].macs[5], 5);
        // Backend 2 leaves: its entry is cleared.
        t.backends.truncate(1);
        let r = vec![(target(1, 1), route(1))];
        assert_eq!(cache.apply(&mut map, &t, &r).unwrap().written, 2);
        assert_eq!(map.entries[&2], NextHop::default());
        assert_eq!(map.entries[&1].ifindex, 7);
    }

    #[test]
    fn a_new_generation_of_an_id_is_rewritten() {
        let mut map = MemoryNextHops::default();
        let mut cache = Cache::default();
        let t = Targets {
            backends: vec![target(1, 1)],
            ..Targets::default()
        };
        cache
            .apply(&mut map, &t, &[(target(1, 1), route(1))])
            .unwrap();
        let t = Targets {
            backends: vec![target(1, 2)],
            ..Targets::default()
        };
        assert_eq!(
            cache
                .apply(&mut map, &t, &[(target(1, 2), route(1))])
                .unwrap()
                .written,
            1
        );
        assert_eq!(map.entries[&1].generation, 2);
    }
}
