//! The host's model of the dataplane's decision: which backend a flow lands on.
//!
//! It follows the XDP program step by step, with the same code where it matters: the VIP lookup
//! (exact port first, then the port-0 entry), the flow hash ([`anycast_common::hash`], the very
//! functions compiled into the program, fed the words the program loads from the packet), the
//! slot `hash % ring_size`, and the Maglev table the agent would publish ([`vip_table`], also
//! published by the dataplane layer). It models the live table only; the program's second chance on
//! the previous table is not a choice a fresh flow can observe.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use anycast_common::hash::{
    addr_word_v4, addr_words_v6, flow_hash_v4, flow_hash_v6, ports_word, ring_slot,
};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Encapsulation, Protocol, VipConfig, vip_label};
use crate::plan::maglev::{self, MaglevBackend};

/// A VIP's Maglev table: `slots[i]` indexes `backends` (canonical order). Empty `slots` = the VIP
/// has no weighted backend (NO_TABLE in the dataplane).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipTable {
    pub backends: Vec<MaglevBackend>,
    pub slots: Vec<u32>,
}

/// A table's fingerprint and its slots per backend address ([`VipTable::facts`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableFacts {
    pub fingerprint: Option<String>,
    pub slots: std::collections::BTreeMap<IpAddr, usize>,
}

impl VipTable {
    /// A stable fingerprint of the table: each backend is named by FNV-1a (64-bit) over its
    /// family byte and 16 address bytes; the fingerprint is FNV-1a over those names slot by slot
    /// (one step per slot, so it costs one pass over the table), as 16 hex digits. It depends on
    /// what a packet would see (slot -> backend address), not on backend ids or listing order,
    /// so two edges that publish the same table report the same fingerprint. `None` for a VIP
    /// without a table.
    pub fn fingerprint(&self) -> Option<String> {
        if self.slots.is_empty() {
            return None;
        }
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let names: Vec<u64> = self
            .backends
            .iter()
            .map(|b| {
                std::iter::once(b.family)
                    .chain(b.addr)
                    .fold(OFFSET, |h, byte| (h ^ u64::from(byte)).wrapping_mul(PRIME))
            })
            .collect();
        let h = self
            .slots
            .iter()
            .fold(OFFSET, |h, &i| (h ^ names[i as usize]).wrapping_mul(PRIME));
        Some(format!("{h:016x}"))
    }

    /// Slots per backend, indexed like `backends`: one pass over the table.
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.backends.len()];
        for &i in &self.slots {
            counts[i as usize] += 1;
        }
        counts
    }

    /// What status and the diff report of this table, computed once per table build.
    pub fn facts(&self) -> TableFacts {
        TableFacts {
            fingerprint: self.fingerprint(),
            slots: self
                .backends
                .iter()
                .map(MaglevBackend::address)
                .zip(self.slot_counts())
                .collect(),
        }
    }

    /// The backend address each slot sends packets to.
    pub fn slot_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.slots
            .iter()
            .map(|&i| self.backends[i as usize].address())
    }

    /// Slots whose backend differs between `self` and `other` (same ring size). A table that
    /// appears or disappears moves every slot.
    pub fn slots_moved(&self, other: &Self) -> usize {
        if self.slots.is_empty() || other.slots.is_empty() {
            return self.slots.len().max(other.slots.len());
        }
        self.slot_addresses()
            .zip(other.slot_addresses())
            .filter(|(a, b)| a != b)
            .count()
    }
}

pub fn vip_table(vip: &VipConfig, ring_size: u32, hash_seed: u32) -> VipTable {
    let list: Vec<MaglevBackend> = vip
        .backends
        .iter()
        .map(|b| MaglevBackend::new(b.address, b.weight))
        .collect();
    let slots = maglev::build(&list, ring_size, hash_seed);
    VipTable {
        backends: maglev::canonical_order(&list),
        slots,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowParseError {
    #[error(
        "expected \"PROTO SRC:PORT DST:PORT\" (e.g. \"tcp 198.51.100.7:40000 203.0.113.10:80\" or \"udp [2001:db8::1]:5353 [2001:db8::10]:53\"), got {0:?}"
    )]
    Shape(String),
    #[error("{0:?} is not \"tcp\" or \"udp\"")]
    Protocol(String),
    #[error("{0:?} is not an address:port (IPv6 as [addr]:port)")]
    Address(String),
    #[error("source {src} and destination {dst} are of different address families")]
    MixedFamilies { src: SocketAddr, dst: SocketAddr },
}

impl FromStr for Flow {
    type Err = FlowParseError;

    /// `tcp 198.51.100.7:40000 203.0.113.10:80`; an `->` between the addresses is accepted so
    /// the first part of `anycast lookup`'s output parses back.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split_whitespace().filter(|p| *p != "->").collect();
        let [proto, src, dst] = parts[..] else {
            return Err(FlowParseError::Shape(s.to_owned()));
        };
        let protocol = Protocol::parse(&proto.to_ascii_lowercase())
            .ok_or_else(|| FlowParseError::Protocol(proto.to_owned()))?;
        let src: SocketAddr = src
            .parse()
            .map_err(|_| FlowParseError::Address(src.to_owned()))?;
        let dst: SocketAddr = dst
            .parse()
            .map_err(|_| FlowParseError::Address(dst.to_owned()))?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(FlowParseError::MixedFamilies { src, dst });
        }
        Ok(Self { protocol, src, dst })
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.protocol, self.src, self.dst)
    }
}

impl Flow {
    /// The program's flow hash for this flow, from the words it loads out of the packet.
    pub fn hash(&self, seed: u32) -> u32 {
        let ports = ports_word(self.src.port(), self.dst.port());
        let proto = self.protocol.number();
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => flow_hash_v4(
                seed,
                addr_word_v4(s.octets()),
                addr_word_v4(d.octets()),
                ports,
                proto,
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => flow_hash_v6(
                seed,
                &addr_words_v6(s.octets()),
                &addr_words_v6(d.octets()),
                ports,
                proto,
            ),
            _ => unreachable!("Flow::from_str rejects mixed families"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(a: IpAddr) -> Self {
        if a.is_ipv4() { Self::Ipv4 } else { Self::Ipv6 }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        })
    }
}

/// The VIP entry a flow matched (index into `Config::vips`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipMatch {
    pub index: usize,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub label: String,
}

/// What the program does with the flow, mirroring its outcome counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Not addressed to a VIP: `XDP_PASS` untouched (counter `pass`).
    NotAVip,
    /// VIP without a weighted backend: dropped (counter `no_backend`).
    NoBackend { vip: VipMatch },
    /// The backend is this host: passed to the local stack (counter `local`).
    Local {
        vip: VipMatch,
        slot: u32,
        backend: IpAddr,
    },
    /// Encapsulated to a remote backend (counter `encap`); the outer header is of the backend's
    /// family.
    Encap {
        vip: VipMatch,
        slot: u32,
        backend: IpAddr,
        encapsulation: Encapsulation,
        outer_family: Family,
    },
    /// Remote backend of a family with no tunnel source configured: dropped
    /// (counter `no_tunnel_source`). The agent refuses such a config; `lookup` reports it.
    NoTunnelSource {
        vip: VipMatch,
        slot: u32,
        backend: IpAddr,
        outer_family: Family,
    },
}

impl Outcome {
    /// The backend the flow goes to, if any (also when it would be dropped for want of a
    /// tunnel source: the backend is chosen).
    pub fn backend(&self) -> Option<IpAddr> {
        match self {
            Outcome::Local { backend, .. }
            | Outcome::Encap { backend, .. }
            | Outcome::NoTunnelSource { backend, .. } => Some(*backend),
            Outcome::NotAVip | Outcome::NoBackend { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub flow: Flow,
    pub hash: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// [`VipTable::fingerprint`] of the matched VIP's table (absent when not a VIP or no table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_fingerprint: Option<String>,
}

/// Finds the VIP entry the program would match: exact port first, then the port-0 entry.
pub fn match_vip(config: &Config, flow: &Flow) -> Option<usize> {
    let find = |port: u16| {
        config.vips.iter().position(|v| {
            v.address == flow.dst.ip() && v.protocol == flow.protocol && v.port == port
        })
    };
    find(flow.dst.port()).or_else(|| find(0))
}

/// The decision for `flow` given the config and this host's addresses (`local`).
pub fn decide(config: &Config, local: &BTreeSet<IpAddr>, flow: &Flow) -> Decision {
    let seed = config.agent.hash_seed;
    let hash = flow.hash(seed);
    let Some(index) = match_vip(config, flow) else {
        return Decision {
            flow: *flow,
            hash,
            outcome: Outcome::NotAVip,
            table_fingerprint: None,
        };
    };
    let v = &config.vips[index];
    let table = vip_table(v, config.agent.ring_size, seed);
    decide_with_table(config, local, flow, index, &table)
}

/// As [`decide`], with the VIP's table already built (for callers that look up many flows).
pub fn decide_with_table(
    config: &Config,
    local: &BTreeSet<IpAddr>,
    flow: &Flow,
    index: usize,
    table: &VipTable,
) -> Decision {
    let hash = flow.hash(config.agent.hash_seed);
    let v = &config.vips[index];
    let vip = VipMatch {
        index,
        address: v.address,
        port: v.port,
        protocol: v.protocol,
        label: vip_label(v.address, v.port, v.protocol),
    };
    if table.slots.is_empty() {
        return Decision {
            flow: *flow,
            hash,
            outcome: Outcome::NoBackend { vip },
            table_fingerprint: None,
        };
    }
    let slot = ring_slot(hash, config.agent.ring_size);
    let backend = table.backends[table.slots[slot as usize] as usize].address();
    let outcome = if local.contains(&backend) {
        Outcome::Local { vip, slot, backend }
    } else {
        let outer_family = Family::of(backend);
        let has_source = match outer_family {
            Family::Ipv4 => config.agent.tunnel_source.is_some(),
            Family::Ipv6 => config.agent.tunnel_source_v6.is_some(),
        };
        if has_source {
            Outcome::Encap {
                vip,
                slot,
                backend,
                encapsulation: config.agent.encapsulation,
                outer_family,
            }
        } else {
            Outcome::NoTunnelSource {
                vip,
                slot,
                backend,
                outer_family,
            }
        }
    };
    Decision {
        flow: *flow,
        hash,
        outcome,
        table_fingerprint: table.fingerprint(),
    }
}

impl fmt::Display for Decision {
    /// `tcp 198.51.100.7:40000 -> 203.0.113.10:80  vip 203.0.113.10:80/tcp  hash 0x1234abcd slot 4321  backend 198.18.10.2 (remote, ipip)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            flow,
            hash,
            outcome,
            table_fingerprint,
        } = self;
        write!(f, "{flow}  ")?;
        match outcome {
            Outcome::NotAVip => write!(f, "not a VIP (passed to the kernel)  hash {hash:#010x}"),
            Outcome::NoBackend { vip } => write!(
                f,
                "vip {}  hash {hash:#010x}  no backend (dropped)",
                vip.label
            ),
            Outcome::Local { vip, slot, backend } => {
                write!(
                    f,
                    "vip {}  hash {hash:#010x} slot {slot}  backend {backend} (local)",
                    vip.label
                )
            }
            Outcome::Encap {
                vip,
                slot,
                backend,
                encapsulation,
                outer_family,
            } => {
                write!(
                    f,
                    "vip {}  hash {hash:#010x} slot {slot}  backend {backend} (remote, {encapsulation}",
                    vip.label
                )?;
                let inner = Family::of(flow.dst.ip());
                if inner != *outer_family {
                    write!(f, ", {inner}-in-{outer_family}")?;
                }
                f.write_str(")")
            }
            Outcome::NoTunnelSource {
                vip,
                slot,
                backend,
                outer_family,
            } => write!(
                f,
                "vip {}  hash {hash:#010x} slot {slot}  backend {backend} (remote, but no {outer_family} tunnel source: dropped)",
                vip.label
            ),
        }?;
        if let Some(fp) = table_fingerprint {
            write!(f, "  table {fp}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigBuilder, VipBuilder};

    /// IPv4 tunnels only; a port VIP and an all-ports VIP on one address, an IPv6 VIP, and a
    /// VIP with no backend.
    fn cfg_text() -> String {
        ConfigBuilder::reference()
            .agent("encapsulation", "ipip")
            .without_agent("tunnel_source_v6")
            .without_agent("decap_allow")
            .vip(VipBuilder::new("203.0.113.10", 0, "tcp").backend("198.18.20.2", 1))
            .vip(VipBuilder::new("2001:db8::10", 53, "udp").backend("198.18.10.2", 1))
            .vip(VipBuilder::new("203.0.113.11", 80, "tcp"))
            .toml()
    }

    fn cfg() -> Config {
        Config::parse(&cfg_text()).unwrap()
    }

    /// [`decide`] for a flow written as `anycast lookup` takes it.
    fn decide_flow(c: &Config, local: &BTreeSet<IpAddr>, flow: &str) -> Decision {
        decide(c, local, &flow.parse().unwrap())
    }

    #[test]
    fn parses_flows() {
        let f: Flow = "tcp 198.51.100.7:40000 203.0.113.10:80".parse().unwrap();
        assert_eq!(f.protocol, Protocol::Tcp);
        assert_eq!(f.src, "198.51.100.7:40000".parse().unwrap());
        let f: Flow = "udp [2001:db8::1]:5353 [2001:db8::10]:53".parse().unwrap();
        assert_eq!(f.dst, "[2001:db8::10]:53".parse().unwrap());
        let back: Flow = f.to_string().parse().unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn rejects_bad_flows() {
        assert!(matches!(
            "tcp 1.2.3.4:1".parse::<Flow>(),
            Err(FlowParseError::Shape(_))
        ));
        assert!(matches!(
            "icmp 1.2.3.4:1 5.6.7.8:2".parse::<Flow>(),
            Err(FlowParseError::Protocol(_))
        ));
        assert!(matches!(
            "tcp 1.2.3.4 5.6.7.8:2".parse::<Flow>(),
            Err(FlowParseError::Address(_))
        ));
        assert!(matches!(
            "tcp 1.2.3.4:1 [::1]:2".parse::<Flow>(),
            Err(FlowParseError::MixedFamilies { .. })
        ));
    }

    #[test]
    fn hash_is_the_shared_flow_hash_of_the_wire_words() {
        let f: Flow = "tcp 198.51.100.7:40000 203.0.113.10:80".parse().unwrap();
        let words = [
            u32::from_le_bytes([198, 51, 100, 7]),
            u32::from_le_bytes([203, 0, 113, 10]),
            u32::from_le_bytes([0x9c, 0x40, 0x00, 0x50]),
            6,
        ];
        assert_eq!(f.hash(42), anycast_common::hash::murmur3_words(42, &words));
    }

    #[test]
    fn exact_port_wins_then_port_zero() {
        let c = cfg();
        let local = BTreeSet::new();
        let d = decide_flow(&c, &local, "tcp 198.51.100.7:40000 203.0.113.10:80");
        match &d.outcome {
            Outcome::Encap { vip, backend, .. } => {
                assert_eq!(vip.index, 0);
                assert!(backend.to_string().starts_with("198.18.10."));
            }
            o => panic!("unexpected {o:?}"),
        }
        let d = decide_flow(&c, &local, "tcp 198.51.100.7:40000 203.0.113.10:443");
        match &d.outcome {
            Outcome::Encap { vip, backend, .. } => {
                assert_eq!(vip.index, 1);
                assert_eq!(vip.label, "203.0.113.10:any/tcp");
                assert_eq!(backend.to_string(), "198.18.20.2");
            }
            o => panic!("unexpected {o:?}"),
        }
        let d = decide_flow(&c, &local, "udp 198.51.100.7:40000 203.0.113.10:80");
        assert_eq!(d.outcome, Outcome::NotAVip);
    }

    #[test]
    fn local_backend_is_delivered_locally() {
        let c = cfg();
        let local: BTreeSet<IpAddr> = ["198.18.20.2".parse().unwrap()].into();
        let d = decide_flow(&c, &local, "tcp 198.51.100.7:1 203.0.113.10:22");
        assert!(matches!(d.outcome, Outcome::Local { .. }), "{d}");
        assert!(
            d.to_string()
                .contains("backend 198.18.20.2 (local)  table "),
            "{d}"
        );
    }

    #[test]
    fn slot_and_backend_follow_the_table() {
        let c = cfg();
        let f: Flow = "tcp 198.51.100.7:40000 203.0.113.10:80".parse().unwrap();
        let d = decide(&c, &BTreeSet::new(), &f);
        let t = vip_table(&c.vips[0], 1009, 42);
        let slot = f.hash(42) % 1009;
        let Outcome::Encap {
            slot: s, backend, ..
        } = d.outcome
        else {
            panic!()
        };
        assert_eq!(s, slot);
        assert_eq!(
            backend,
            t.backends[t.slots[slot as usize] as usize].address()
        );
    }

    #[test]
    fn output_format() {
        let c = cfg();
        let f: Flow = "tcp 198.51.100.7:40000 203.0.113.10:80".parse().unwrap();
        let d = decide(&c, &BTreeSet::new(), &f);
        let Outcome::Encap { slot, backend, .. } = &d.outcome else {
            panic!()
        };
        assert_eq!(
            d.to_string(),
            format!(
                "tcp 198.51.100.7:40000 -> 203.0.113.10:80  vip 203.0.113.10:80/tcp  hash {:#010x} slot {slot}  backend {backend} (remote, ipip)  table {}",
                d.hash,
                d.table_fingerprint.as_deref().unwrap()
            )
        );
        let d = decide_flow(
            &c,
            &BTreeSet::new(),
            "udp [2001:db8::1]:5353 [2001:db8::10]:53",
        );
        assert!(d.to_string().contains("vip [2001:db8::10]:53/udp"), "{d}");
        assert!(
            d.to_string()
                .contains("backend 198.18.10.2 (remote, ipip, IPv6-in-IPv4)  table "),
            "{d}"
        );
        let d = decide_flow(&c, &BTreeSet::new(), "tcp 198.51.100.7:1 203.0.113.11:80");
        assert!(d.to_string().ends_with("no backend (dropped)"), "{d}");
        let d = decide_flow(&c, &BTreeSet::new(), "tcp 198.51.100.7:1 192.0.2.1:80");
        assert!(d.to_string().contains("not a VIP"), "{d}");
    }

    #[test]
    fn fingerprint_ignores_listing_order_and_follows_weights() {
        let c = cfg();
        let t = vip_table(&c.vips[0], 1009, 42);
        let fp = t.fingerprint().unwrap();
        assert_eq!(fp.len(), 16);
        let mut swapped = c.vips[0].clone();
        swapped.backends.reverse();
        assert_eq!(vip_table(&swapped, 1009, 42).fingerprint().unwrap(), fp);
        let mut heavier = c.vips[0].clone();
        heavier.backends[0].weight = 2;
        let t2 = vip_table(&heavier, 1009, 42);
        assert_ne!(t2.fingerprint().unwrap(), fp);
        assert!(t.slots_moved(&t2) > 0 && t.slots_moved(&t2) < 1009);
        assert_eq!(t.slots_moved(&t), 0);
        // Another seed is another table.
        assert_ne!(vip_table(&c.vips[0], 1009, 43).fingerprint().unwrap(), fp);
        // No weighted backend: no table, no fingerprint.
        assert_eq!(vip_table(&c.vips[3], 1009, 42).fingerprint(), None);
        // Pinned value: a change here changes what operators compare across edges.
        assert_eq!(fp, "6bc2bf73db76bf42");
        let d = decide_flow(
            &c,
            &BTreeSet::new(),
            "tcp 198.51.100.7:40000 203.0.113.10:80",
        );
        assert_eq!(d.table_fingerprint.as_deref(), Some(fp.as_str()));
        assert!(d.to_string().ends_with(&format!("table {fp}")), "{d}");
    }

    #[test]
    fn json_output() {
        let c = cfg();
        let d = decide_flow(
            &c,
            &BTreeSet::new(),
            "tcp 198.51.100.7:40000 203.0.113.10:443",
        );
        let j = serde_json::to_value(&d).unwrap();
        assert_eq!(j["outcome"], "encap");
        assert_eq!(j["backend"], "198.18.20.2");
        assert_eq!(j["encapsulation"], "ipip");
        assert_eq!(j["outer_family"], "ipv4");
        assert_eq!(j["vip"]["port"], 0);
        assert_eq!(j["flow"]["protocol"], "tcp");
        assert_eq!(j["hash"], d.hash);
        // The CLI reads the agent's answer back into a Decision to print it.
        assert_eq!(serde_json::from_value::<Decision>(j).unwrap(), d);
    }

    #[test]
    fn missing_tunnel_source_is_reported() {
        let c = Config::parse(&cfg_text().replace("tunnel_source = \"198.18.1.2\"\n", "")).unwrap();
        let d = decide_flow(&c, &BTreeSet::new(), "tcp 198.51.100.7:1 203.0.113.10:22");
        assert!(matches!(d.outcome, Outcome::NoTunnelSource { .. }));
    }
}
