//! Everything the XDP program and the agent must agree on, byte for byte.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]` with explicit padding, holds no
//! `bool`/`enum`/`Option`, and names its byte order (`_be` = network order). Sizes are pinned by
//! `const` assertions so a layout change breaks the build on both sides at once.
//!
//! The flow hash lives in [`hash`] and is compiled into both the BPF program and the agent, so the
//! host's answer to "which backend does this flow land on" is computed by the same code as the
//! kernel's.
#![no_std]

pub mod hash;

use core::mem::size_of;

/// Address family tags stored in keys and records (not the kernel's `AF_*` values: these are
/// chosen to read naturally in a map dump).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers (IANA).
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// Encapsulation used towards remote backends, stored in [`DataplaneConfig::encap`].
pub const ENCAP_IPIP: u8 = 0;
pub const ENCAP_GUE: u8 = 1;

/// GUE private data carrying the previous owner of a flow (second chance): the first word is
/// `[GUE_HINT_MAGIC[0], GUE_HINT_MAGIC[1], family, 0]`, then the owner's address (4 or 16 bytes).
/// Its presence is told by the GUE header length (2 words for IPv4, 5 for IPv6).
pub const GUE_HINT_MAGIC: [u8; 2] = [0xac, 0x5c];
pub const GUE_HINT_WORDS_V4: u8 = 2;
pub const GUE_HINT_WORDS_V6: u8 = 5;

/// Default UDP destination port of GUE tunnels (the port Katran and the Linux FOU examples use).
pub const GUE_DEFAULT_PORT: u16 = 6080;

/// Outer TTL (IPv4) or hop limit (IPv6) of an encapsulated packet from an edge.
pub const TUNNEL_TTL: u8 = 64;
/// Outer TTL / hop limit of a packet sent on by a second chance: the mark that bounds second
/// chance to one hop whatever the encapsulation (IPIP has no room for a flag). Hop counts only
/// go down, so a receiver that sees more than [`SECOND_CHANCE_TTL_MIN`] knows the packet left
/// its sender at 255, not at [`TUNNEL_TTL`] (the same reasoning as GTSM, RFC 5082).
pub const SECOND_CHANCE_TTL: u8 = 255;
/// See [`SECOND_CHANCE_TTL`]: above this, a tunnelled packet was a second chance already.
pub const SECOND_CHANCE_TTL_MIN: u8 = TUNNEL_TTL;

/// Default Maglev table size: prime, and > 100 x the backends of a large VIP keeps the imbalance
/// under 1% (Maglev, NSDI 2016, section 5.3).
pub const DEFAULT_RING_SIZE: u32 = 65537;

/// Table index meaning "this VIP has no table" (no backends configured or healthy).
pub const NO_TABLE: u32 = u32::MAX;
/// Backend id meaning "empty slot"; never written into a table the agent publishes.
pub const NO_BACKEND: u32 = u32::MAX;

/// Map names, defined once. The eBPF crate names its `static`s exactly like this.
pub mod map_names {
    pub const VIPS: &str = "VIPS";
    pub const RINGS: &str = "RINGS";
    pub const BACKENDS: &str = "BACKENDS";
    pub const CONFIG: &str = "CONFIG";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const DECAP_ALLOW_V4: &str = "DECAP_ALLOW_V4";
    pub const DECAP_ALLOW_V6: &str = "DECAP_ALLOW_V6";
    pub const STATS: &str = "STATS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const CONNS: &str = "CONNS";
    pub const CONNS_NEW: &str = "CONNS_NEW";
    pub const CONN_GUARD: &str = "CONN_GUARD";
    pub const LOG_RATE: &str = "LOG_RATE";
    pub const PTB_GUARD: &str = "PTB_GUARD";
    pub const FRAGS: &str = "FRAGS";
    pub const NEXTHOPS: &str = "NEXTHOPS";
    pub const NEXTHOP_LEASE: &str = "NEXTHOP_LEASE";
    /// aya-log's ring buffer of log records (defined by `aya-log-ebpf`, read by `aya-log`).
    pub const AYA_LOGS: &str = "AYA_LOGS";
}

/// Name of the XDP program inside the object.
pub const PROGRAM_NAME: &str = "anycast_steer";

/// Default capacities. The agent can resize `VIPS`, `RINGS`, `BACKENDS` and the per-VIP /
/// per-backend stats arrays at load time; the eBPF side only declares placeholders.
pub const DEFAULT_MAX_VIPS: u32 = 64;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// Maglev tables kept per VIP: the live one, the previous one (second chance, see the design
/// notes) and one being written. `RINGS` holds `max_vips * TABLES_PER_VIP` tables.
pub const TABLES_PER_VIP: u32 = 3;
pub const MAX_DECAP_PREFIXES: u32 = 1024;
pub const MAX_LOCAL_ADDRS: u32 = 256;
/// Default connection-tracking capacity (entries, shared by all CPUs; about 100 bytes each).
pub const DEFAULT_CONNTRACK_SIZE: u32 = 262_144;
/// `CONNS_NEW` (the new-flow tier) holds this fraction of `conntrack_size`, and at least
/// [`MIN_CONNTRACK_NEW_SIZE`] entries.
pub const CONNTRACK_NEW_DIVISOR: u32 = 4;
pub const MIN_CONNTRACK_NEW_SIZE: u32 = 1024;

/// Capacity of `CONNS_NEW` for a `CONNS` of `conntrack_size` entries.
pub const fn conntrack_new_size(conntrack_size: u32) -> u32 {
    let n = conntrack_size / CONNTRACK_NEW_DIVISOR;
    if n < MIN_CONNTRACK_NEW_SIZE {
        MIN_CONNTRACK_NEW_SIZE
    } else {
        n
    }
}

/// Address-carrying types are `align(4)`: the BPF backend turns byte-array reads into single
/// 32-bit loads only when it knows the alignment (it cannot assume unaligned loads are legal).
///
/// Key of the `VIPS` hash map: (address, port, protocol). Port 0 is the "any port" entry; the
/// program looks up the exact port first and the port-0 entry second.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    /// IPv4 addresses use the first 4 bytes; the rest stays zero.
    pub addr_be: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<VipKey>() == 20);

impl VipKey {
    pub const fn v4(addr_be: [u8; 4], port: u16, proto: u8) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr_be[0];
        a[1] = addr_be[1];
        a[2] = addr_be[2];
        a[3] = addr_be[3];
        Self {
            addr_be: a,
            port_be: port.to_be(),
            proto,
            family: FAMILY_V4,
        }
    }

    pub const fn v6(addr_be: [u8; 16], port: u16, proto: u8) -> Self {
        Self {
            addr_be,
            port_be: port.to_be(),
            proto,
            family: FAMILY_V6,
        }
    }
}

/// Value of the `VIPS` map. Replaced as a whole (one map update), which is what makes a table
/// change atomic for the packets: a packet reads either the old or the new `table`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipValue {
    /// Index into `VIP_STATS`.
    pub vip_id: u32,
    /// Which table in `RINGS` is live, or [`NO_TABLE`].
    pub table: u32,
    /// The table that was live before the last change, or [`NO_TABLE`] (second chance).
    pub prev_table: u32,
    pub flags: u32,
}
const _: () = assert!(size_of::<VipValue>() == 16);

/// `Backend::flags`: the backend's address belongs to this host; deliver with `XDP_PASS`.
pub const BACKEND_F_LOCAL: u8 = 1;

/// Entry of the `BACKENDS` array, indexed by backend id. A free id has `family == 0`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr_be: [u8; 16],
    pub family: u8,
    pub flags: u8,
    /// Changes whenever the id is given to another backend, so a connection-tracking entry
    /// that outlived its backend is recognised as stale instead of followed to a stranger.
    pub generation: u16,
}
const _: () = assert!(size_of::<Backend>() == 20);

/// Entry of the `NEXTHOPS` array, indexed by backend id: how to reach a remote backend, as the
/// agent resolved it from the kernel's routes, neighbours and links (the next-hop cache). The
/// program uses it instead of `bpf_fib_lookup` while `ifindex != 0`, `generation` equals the
/// backend's and the outer packet fits `mtu`; otherwise it asks the FIB (counted `fib_lookup`).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface; 0 = no usable entry (unresolved neighbour, no route, not yet resolved).
    pub ifindex: u32,
    /// Largest outer packet (IP header included) the route carries.
    pub mtu: u16,
    /// `Backend::generation` of the backend this entry was resolved for: an entry left from an
    /// id's earlier backend is never used for the next one.
    pub generation: u16,
    /// Destination MAC (the neighbour: gateway or backend) then source MAC (the egress
    /// interface), in the order of the Ethernet header.
    pub macs: [u8; 12],
}
const _: () = assert!(size_of::<NextHop>() == 20);
const _: () = assert!(core::mem::offset_of!(NextHop, macs) == 8);

impl NextHop {
    /// `macs` as three words (bytes in memory order), for three stores into a frame.
    #[inline(always)]
    pub fn mac_words(&self) -> [u32; 3] {
        let p = self.macs.as_ptr().cast::<u32>();
        // SAFETY: 12 bytes in bounds; `macs` sits at offset 8 of an `align(4)` struct, so each
        // word is aligned (the BPF backend then emits three word loads, not twelve byte loads).
        unsafe { [p.read(), p.add(1).read(), p.add(2).read()] }
    }
}

/// How long the next-hop cache may be used after the agent last renewed its lease
/// (`NEXTHOP_LEASE`, `CLOCK_MONOTONIC_COARSE` ns): a dataplane whose agent died follows the
/// kernel's FIB again after at most this long. The agent renews it three times as often.
pub const NEXTHOP_LEASE_NS: u64 = 3_000_000_000;

/// `DataplaneConfig::flags`.
pub const CFG_F_HAS_SRC_V4: u8 = 1;
pub const CFG_F_HAS_SRC_V6: u8 = 2;
/// No VIP uses port 0 (every port): a packet whose exact (address, port, protocol) is not a VIP
/// is not one, and the program skips the second, port-0 `VIPS` lookup. Set only when known
/// (a zeroed or older config does the lookup), cleared before a port-0 VIP is written and set
/// after the last one is removed, so the program never skips a port-0 VIP that exists.
pub const CFG_F_NO_PORT0_VIPS: u8 = 4;

/// The single entry of the `CONFIG` array: per-host settings the program needs on the VIP path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    pub tunnel_src_v4_be: [u8; 4],
    pub tunnel_src_v6_be: [u8; 16],
    /// Maglev table size M; `RINGS` holds `max_vips * TABLES_PER_VIP * ring_size` entries.
    pub ring_size: u32,
    pub hash_seed: u32,
    pub gue_port_be: u16,
    pub encap: u8,
    pub flags: u8,
    /// A UDP flow idle longer than this is picked afresh from the table.
    pub conn_udp_timeout_s: u32,
    /// New connection-tracking entries allowed per CPU per second; 0 = no limit. Above it the
    /// program stops inserting (flows still follow the table, identical on every edge) instead
    /// of letting a flood evict real connections.
    pub conn_insert_limit: u32,
}
const _: () = assert!(size_of::<DataplaneConfig>() == 40);

/// Key of the `CONNS` LRU map: a flow's 5-tuple as it appears on the wire.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// IPv4 addresses use the first 4 bytes; the rest stays zero.
    pub src_be: [u8; 16],
    pub dst_be: [u8; 16],
    /// The first four bytes of the transport header (source port, destination port).
    pub ports_be: [u8; 4],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<ConnKey>() == 40);

impl ConnKey {
    /// An IPv4 flow's key, as the program builds it from a packet.
    pub const fn v4(src_be: [u8; 4], sport: u16, dst_be: [u8; 4], dport: u16, proto: u8) -> Self {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            src[i] = src_be[i];
            dst[i] = dst_be[i];
            i += 1;
        }
        let (s, d) = (sport.to_be_bytes(), dport.to_be_bytes());
        Self {
            src_be: src,
            dst_be: dst,
            ports_be: [s[0], s[1], d[0], d[1]],
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }
}

/// Value of the `CONNS` map: the backend a flow was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnValue {
    pub backend_id: u32,
    pub generation: u16,
    pub _pad: u16,
    /// `bpf_ktime_get_ns` when the entry was created or last refreshed (UDP ageing).
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<ConnValue>() == 16);

/// Key of the `FRAGS` LRU map: a fragmented datagram (RFC 791 / RFC 8200: source, destination,
/// protocol and identification name it).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src_be: [u8; 16],
    pub dst_be: [u8; 16],
    /// The IP identification: IPv4's 16 bits (high half zero) or the IPv6 fragment header's 32.
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FragKey>() == 40);

/// Value of `FRAGS`: where the datagram's first fragment went, for the later ones to follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragValue {
    pub backend_id: u32,
    pub generation: u16,
    pub _pad: u16,
    /// The flow's hash (GUE source port, IPv6 flow label), as the first fragment's ports gave it.
    pub hash: u32,
    pub vip_id: u32,
}
const _: () = assert!(size_of::<FragValue>() == 16);

/// Datagrams whose later fragments `FRAGS` can follow at once (an LRU: the oldest go first).
pub const FRAGS_SIZE: u32 = 16_384;

/// Per-CPU state of the insertion limit (`CONN_GUARD`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnGuard {
    pub window_start_ns: u64,
    pub inserts: u64,
}
const _: () = assert!(size_of::<ConnGuard>() == 16);

/// Per-CPU state of one log event class (`LOG_RATE`, one entry per [`event`] class): when its
/// last line was written, and how many events were not written since.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogRate {
    pub last_ns: u64,
    pub suppressed: u64,
}
const _: () = assert!(size_of::<LogRate>() == 16);

/// The program writes at most one log line per event class per CPU in this interval; the
/// events in between are only counted (in `STATS`, and as `suppressed=` on the next line).
pub const LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// Classes of the rare anomalies the program logs (aya-log), indexes of `LOG_RATE`. Each is
/// already counted in `STATS`; the line adds what a counter cannot carry (addresses, return
/// codes, lengths). The class name is the log record's target.
pub mod event {
    /// A live table names a backend id beyond `BACKENDS` (counted `internal_error`).
    pub const TABLE_INCONSISTENT: u32 = 0;
    /// `bpf_fib_lookup` found no usable route to a backend (counted `fib_fail`).
    pub const FIB_FAIL: u32 = 1;
    /// An encapsulated packet does not fit the route MTU (counted `oversize`).
    pub const OVERSIZE: u32 = 2;
    /// A tunnel packet to this host from a source outside `decap_allow` (counted
    /// `decap_refused`).
    pub const DECAP_REFUSED: u32 = 3;
    /// The per-CPU connection-tracking insertion limit was reached (counted
    /// `conn_insert_limited`).
    pub const CONN_INSERT_LIMITED: u32 = 4;
    pub const COUNT: u32 = 5;

    /// Names, indexed by class: the target of each log record.
    pub const NAMES: [&str; COUNT as usize] = [
        "table_inconsistent",
        "fib_fail",
        "oversize",
        "decap_refused",
        "conn_insert_limited",
    ];
}

/// Key of the `LOCAL_ADDRS` hash map: addresses of this host that accept tunnelled packets.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr_be: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<AddrKey>() == 20);

impl AddrKey {
    pub const fn v4(addr_be: [u8; 4]) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr_be[0];
        a[1] = addr_be[1];
        a[2] = addr_be[2];
        a[3] = addr_be[3];
        Self {
            addr_be: a,
            family: FAMILY_V4,
            _pad: [0; 3],
        }
    }

    pub const fn v6(addr_be: [u8; 16]) -> Self {
        Self {
            addr_be,
            family: FAMILY_V6,
            _pad: [0; 3],
        }
    }
}

/// Per-VIP and per-backend traffic counters (values of per-CPU arrays).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<TrafficStats>() == 16);

/// Indexes of the global per-CPU `STATS` array: one counter per outcome of the program.
/// Each packet increments exactly one of the outcome counters (`PASS` .. `DECAP_REFUSED`);
/// the `FIB_*`, `TX`/`REDIRECT` counters further describe how encapsulated packets left.
pub mod counter {
    /// Not for a VIP and not a tunnel to us: passed untouched.
    pub const PASS: u32 = 0;
    /// VIP packet whose backend is this host: passed to the local stack.
    pub const LOCAL: u32 = 1;
    /// VIP packet encapsulated to a remote backend (any encapsulation, any family pair).
    pub const ENCAP: u32 = 2;
    /// Tunnelled packet from an allowed source, stripped and passed.
    pub const DECAP: u32 = 3;
    /// VIP packet, but the VIP has no backend: dropped.
    pub const NO_BACKEND: u32 = 4;
    /// Headers cut short or inconsistent (truncated, bad IHL, bad lengths): passed untouched
    /// when not yet known to be VIP traffic, dropped when half-way through the VIP path.
    pub const PARSE_ERROR: u32 = 5;
    /// Encapsulated packet larger than the egress MTU: dropped (see the MTU policy).
    pub const OVERSIZE: u32 = 6;
    /// Tunnelled packet to us from a source outside `decap_allow`: dropped.
    pub const DECAP_REFUSED: u32 = 7;
    /// IPv4 fragment or IPv6 Fragment header: passed untouched (fragments carry no ports).
    pub const FRAGMENT: u32 = 8;
    /// IPv6 with extension headers before the transport header: passed untouched.
    pub const IPV6_EXT: u32 = 9;
    /// Remote backend of a family for which no tunnel source is configured: dropped.
    pub const NO_TUNNEL_SOURCE: u32 = 10;
    /// `bpf_xdp_adjust_head` or a table/map lookup failed (should never happen): dropped.
    pub const INTERNAL_ERROR: u32 = 11;
    /// Encapsulated, and the neighbour was unknown: handed to the kernel to resolve and forward.
    pub const FIB_NO_NEIGH: u32 = 12;
    /// Encapsulated, and the FIB had no usable route (blackhole, unreachable...): dropped.
    pub const FIB_FAIL: u32 = 13;
    /// Encapsulated and sent back out of the ingress interface.
    pub const TX: u32 = 14;
    /// Encapsulated and redirected to another interface.
    pub const REDIRECT: u32 = 15;
    /// Encapsulated with GUE (a subset of `ENCAP`).
    pub const ENCAP_GUE: u32 = 16;
    /// Encapsulated with an outer header of the other family (6-in-4 or 4-in-6).
    pub const ENCAP_CROSS_FAMILY: u32 = 17;
    /// VIP packet whose flow was found in connection tracking (backend kept).
    pub const CONN_HIT: u32 = 18;
    /// VIP packet of a flow not (or no longer validly) tracked: backend from the table.
    pub const CONN_MISS: u32 = 19;
    /// A flow promoted into `CONNS`, the established tier: its second tracked packet found
    /// the entry its first created in `CONNS_NEW`.
    pub const CONN_INSERT: u32 = 20;
    /// Promotion refused because the per-CPU insertion limit was reached (the flow keeps its
    /// entry in `CONNS_NEW`).
    pub const CONN_INSERT_LIMITED: u32 = 21;
    /// Tracked entry ignored: its backend left, or the UDP flow idled out.
    pub const CONN_STALE: u32 = 22;
    /// Outcome: a tunnelled (or locally chosen) TCP packet that no local socket knows, sent on
    /// once to the backend that owned its flow under the previous table.
    pub const SECOND_CHANCE: u32 = 23;
    /// Encapsulated with a previous-owner hint in the GUE header (a subset of `encap`).
    pub const HINT_SENT: u32 = 24;
    /// A second chance (a subset of `second_chance`) whose previous owner this host computed
    /// from its own tables, for a tunnelled packet that carried no hint (IPIP).
    pub const SECOND_CHANCE_TABLE: u32 = 25;
    /// A tunnelled packet that was already a second chance (outer TTL above
    /// [`SECOND_CHANCE_TTL_MIN`](super::SECOND_CHANCE_TTL_MIN)): delivered here, never sent on
    /// again (a subset of `decap`).
    pub const SECOND_CHANCE_LAST_HOP: u32 = 26;
    /// An encapsulated packet routed by `bpf_fib_lookup` because the next-hop cache
    /// (`NEXTHOPS`) had no usable entry for its backend: not resolved yet, neighbour unresolved,
    /// or the packet larger than the cached MTU (a subset of the encapsulation attempts).
    pub const FIB_LOOKUP: u32 = 27;
    /// An ICMP error (destination unreachable, time exceeded; ICMPv6 packet too big) about a
    /// VIP flow, sent to the flow's backend like the flow's own packets (a subset of `encap` and
    /// `local`).
    pub const ICMP_STEERED: u32 = 28;
    /// Outcome: a VIP packet too big for the route to its backend once encapsulated, answered
    /// to the client with ICMP "fragmentation needed" / ICMPv6 "packet too big" (`XDP_TX`).
    pub const ICMP_TOO_BIG: u32 = 29;
    /// A fragment of a datagram to a VIP sent where the datagram's flow goes: the first
    /// fragment by its ports, later ones by `FRAGS` (a subset of `encap` and `local`).
    pub const FRAGMENT_STEERED: u32 = 30;
    /// A flow's first tracked packet: entry created in `CONNS_NEW`, the new-flow (probation)
    /// tier, which a flood of one-packet tuples churns without touching `CONNS`.
    pub const CONN_NEW: u32 = 31;
    pub const COUNT: u32 = 32;

    /// Names for display and metrics, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass",
        "local",
        "encap",
        "decap",
        "no_backend",
        "parse_error",
        "oversize",
        "decap_refused",
        "fragment",
        "ipv6_ext",
        "no_tunnel_source",
        "internal_error",
        "fib_no_neigh",
        "fib_fail",
        "tx",
        "redirect",
        "encap_gue",
        "encap_cross_family",
        "conn_hit",
        "conn_miss",
        "conn_insert",
        "conn_insert_limited",
        "conn_stale",
        "second_chance",
        "hint_sent",
        "second_chance_table",
        "second_chance_last_hop",
        "fib_lookup",
        "icmp_steered",
        "icmp_too_big",
        "fragment_steered",
        "conn_new",
    ];
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], have no implicit padding (asserted sizes with
    // explicit `_pad` fields) and accept every bit pattern.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for DataplaneConfig {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for TrafficStats {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnValue {}
    unsafe impl aya::Pod for ConnGuard {}
    unsafe impl aya::Pod for LogRate {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
}
