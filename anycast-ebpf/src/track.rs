//! Connection tracking: a flow keeps the backend it started with while tables change.
//!
//! Two tiers, both LRU maps with the same key and value: `CONNS_NEW` (new flows, on probation)
//! and `CONNS` (established). A lookup tries `CONNS`, then `CONNS_NEW`.
//! - A flow's first tracked packet creates its entry in `CONNS_NEW` (`conn_new`); its second
//!   moves it into `CONNS` (`conn_insert`). A flood of random tuples, one packet each (spoofed
//!   ACKs, UDP), therefore only churns `CONNS_NEW`: established flows keep their entries and
//!   their backends through the flood and any table change during it. A young flow keeps its
//!   backend through a table change too, as long as the flood has not pushed it out of
//!   `CONNS_NEW` before its second packet.
//! - TCP: any packet of the flow except a bare SYN and except RST is tracked. A bare SYN removes
//!   the entries left on its tuple by an earlier connection (reused ports). The first such packet
//!   is normally the client's ACK completing the handshake, so a SYN flood from spoofed sources
//!   (which never completes one) creates no state at all. The handshake itself follows the
//!   table, which every edge computes identically.
//! - UDP: every packet; an entry idle longer than `conn_udp_timeout_s` is picked afresh.
//! - At most `conn_insert_limit` promotions into `CONNS` per CPU per second (0 = unlimited): a
//!   flood that repeats each tuple can churn the established tier at most that fast; past it,
//!   flows keep their `CONNS_NEW` entry.
//!
//! An entry is followed only while its backend id still carries the same generation, so an
//! entry that outlived its backend (id freed, or reused for another backend) is ignored.

use anycast_common::{
    BACKEND_F_LOCAL, ConnGuard, ConnKey, ConnValue, DataplaneConfig, ENCAP_GUE, FAMILY_V4,
    NO_BACKEND, NO_TABLE, PROTO_TCP, PROTO_UDP, VipValue, counter,
    hash::{flow_hash_v4, flow_hash_v6, ring_slot},
};
use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, maps::LruHashMap};

use crate::{maps, packet::addr_bytes, parse::Ip};

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const NS_PER_S: u64 = 1_000_000_000;
/// A UDP entry's timestamp is refreshed at most this often: a write per packet would bounce the
/// entry's cache line between CPUs for nothing.
const REFRESH_NS: u64 = NS_PER_S;

/// Value of [`pick`]'s `prev` when the insertion limit refused this flow's entry. Never a
/// backend id (`agent.max_backends` is at most 2^20), so a caller that looks it up in `BACKENDS`
/// finds nothing, and only then needs to tell it apart: no instruction on the other paths.
pub const PREV_INSERT_LIMITED: u32 = NO_BACKEND - 1;

/// In [`pick`]'s `ports_flags`: look the flow up (connection tracking, then the table) without
/// creating or removing an entry, whatever the TCP flags: for packets about a flow rather than of
/// it (ICMP errors, `crate::icmp`), which must not let anyone who can send one fill the table.
pub const LOOKUP_ONLY: u64 = 1 << 40;

/// In [`pick`]'s `ports_flags`: the caller computes the flow hash itself if it needs it
/// ([`tunnel_hash`]), so a tracked hit skips it. Only the encapsulation uses the hash (GUE source
/// port, IPv6 flow label), and an IPIP tunnel over IPv4 uses neither.
pub const LAZY_HASH: u64 = 1 << 41;

/// In [`pick`]'s result (low word, above every backend id: `agent.max_backends` is at most
/// 2^20): the hash half was not computed ([`LAZY_HASH`] and a tracked hit).
const HASH_PENDING: u32 = 1 << 31;

/// Result of [`pick`]: the backend id in the low 32 bits, the flow hash in the high 32 (0 when
/// [`LAZY_HASH`] let a tracked hit skip it: see [`tunnel_hash`]). `NO_BACKEND` as the id: the
/// VIP has no backend for this flow.
#[inline(always)]
pub const fn split(r: u64) -> (u32, u32) {
    let id = r as u32;
    let id = if id == NO_BACKEND {
        id
    } else {
        id & !HASH_PENDING
    };
    (id, (r >> 32) as u32)
}

/// The flow hash for a tunnel to `dst`, from [`pick`]'s result `r`: computed now if `pick` left
/// it pending and the tunnel uses it (GUE, or an IPv6 outer header), else 0 when unused.
#[inline(always)]
pub fn tunnel_hash(
    r: u64,
    cfg: &DataplaneConfig,
    ip: &Ip,
    ports: u32,
    dst: &anycast_common::Backend,
) -> u32 {
    let pending = r as u32 != NO_BACKEND && r as u32 & HASH_PENDING != 0;
    if pending && (cfg.encap == ENCAP_GUE || dst.family != FAMILY_V4) {
        flow_hash(cfg, ip, ports)
    } else {
        (r >> 32) as u32
    }
}

/// Chooses the backend of a VIP packet: the tracked one if the flow is known, else the live
/// table's.
///
/// The tracked answer ([`lookup`]) and the table's ([`from_table`]) are BPF subprograms of their
/// own, called one after the other: their keys, values and spills never sit in the same frame,
/// nor in the caller's while the encapsulation runs (steer -> steer_vip -> one of them is the
/// deepest chain, within the 512-byte BPF stack).
///
/// They take no context: LLVM would otherwise pass them packet pointers in a form the verifier
/// refuses. The caller passes the first transport word (ports) in the low half of
/// `ports_flags` and the TCP flags byte above it. `prev` receives the previous owner of the flow
/// when a second chance may be needed (see `chance`), [`PREV_INSERT_LIMITED`] when the flow was
/// not promoted because of the insertion limit, else `NO_BACKEND`.
#[inline(always)]
pub fn pick(
    ip: &Ip,
    cfg: &DataplaneConfig,
    vip: &VipValue,
    ports_flags: u64,
    prev: &mut u32,
) -> u64 {
    *prev = NO_BACKEND;
    let lazy = ports_flags & LAZY_HASH != 0;
    if lazy {
        let id = lookup(ip, cfg, ports_flags, prev);
        if id != NO_BACKEND {
            return u64::from(id | HASH_PENDING);
        }
    }
    let hash = flow_hash(cfg, ip, ports_flags as u32);
    let mut id = if lazy {
        NO_BACKEND
    } else {
        lookup(ip, cfg, ports_flags, prev)
    };
    if id == NO_BACKEND {
        // Five arguments at most for a BPF call: the previous owner comes back in the high half.
        let (backend, previous) = split(from_table(ip, cfg, vip, ports_flags, hash));
        id = backend;
        *prev = previous;
    }
    (u64::from(hash) << 32) | u64::from(id)
}

/// How a packet with these `ports_flags` (see [`pick`]) is tracked: (looked up, may create or
/// promote an entry, a mid-flow TCP packet).
#[inline(always)]
fn mode(ip: &Ip, ports_flags: u64) -> (bool, bool, bool) {
    let lookup_only = ports_flags & LOOKUP_ONLY != 0;
    let flags = (ports_flags >> 32) as u8;
    if ip.proto == PROTO_TCP {
        let mid = lookup_only || mid_flow(flags);
        (mid, mid && flags & TCP_RST == 0 && !lookup_only, mid)
    } else {
        let udp = ip.proto == PROTO_UDP;
        (udp, udp && !lookup_only, false)
    }
}

#[inline(always)]
fn conn_key(ip: &Ip, ports_flags: u64) -> ConnKey {
    ConnKey {
        src_be: addr_bytes(ip.src),
        dst_be: addr_bytes(ip.dst),
        ports_be: (ports_flags as u32).to_le_bytes(),
        proto: ip.proto,
        family: ip.family,
        _pad: [0; 2],
    }
}

/// The tracked backend of the flow, `NO_BACKEND` if it has none to follow; promotes a young
/// flow on its second packet. A bare SYN removes what its tuple left.
#[inline(never)]
fn lookup(ip: &Ip, cfg: &DataplaneConfig, ports_flags: u64, prev: &mut u32) -> u32 {
    let (track, insert, tcp_mid_flow) = mode(ip, ports_flags);
    let key = conn_key(ip, ports_flags);
    if ip.proto == PROTO_TCP && !tcp_mid_flow {
        // A bare SYN starts a new connection on this tuple: an entry left by an earlier
        // connection with the same ports (ports are reused) must not steer its ACKs to the old
        // backend.
        let _ = maps::CONNS.remove(key);
        let _ = maps::CONNS_NEW.remove(key);
    }
    if !track {
        return NO_BACKEND;
    }
    let udp = ip.proto == PROTO_UDP;
    let mut now = 0u64;
    let established = tracked(&maps::CONNS, &key, cfg, udp, &mut now);
    if let Ok(e) = established {
        maps::count(counter::CONN_HIT);
        return e.backend_id;
    }
    let young = tracked(&maps::CONNS_NEW, &key, cfg, udp, &mut now);
    // Once per packet, whichever tier held the ignored entry.
    if established == Err(Ignored::Stale) || young == Err(Ignored::Stale) {
        maps::count(counter::CONN_STALE);
    }
    let Ok(e) = young else {
        maps::count(counter::CONN_MISS);
        return NO_BACKEND;
    };
    maps::count(counter::CONN_HIT);
    // The flow's second tracked packet: it has shown it is more than one spoofed packet, so it
    // moves to the established tier. The young entry is left to age out of CONNS_NEW rather
    // than deleted: one helper call less, and harmless (CONNS is looked up first). It is
    // inserted from where it lies (a map value is a valid value argument), not copied.
    if insert {
        if allow_insert(cfg, &mut now) {
            if maps::CONNS.insert(key, e, 0).is_ok() {
                maps::count(counter::CONN_INSERT);
            }
        } else {
            maps::count(counter::CONN_INSERT_LIMITED);
            // The caller logs it: a log subprogram called from here would push the deepest
            // call chain past the 512-byte stack.
            *prev = PREV_INSERT_LIMITED;
        }
    }
    e.backend_id
}

/// The live table's backend for a flow [`lookup`] did not answer (`NO_BACKEND`: the VIP has no
/// table) in the low half, and in the high half the previous table's owner when a second chance
/// may be needed (else `NO_BACKEND`); creates the flow's entry in `CONNS_NEW`.
#[inline(never)]
fn from_table(ip: &Ip, cfg: &DataplaneConfig, vip: &VipValue, ports_flags: u64, hash: u32) -> u64 {
    const NONE: u64 = (NO_BACKEND as u64) << 32;
    if vip.table == NO_TABLE || cfg.ring_size == 0 {
        return NONE | u64::from(NO_BACKEND);
    }
    let slot = ring_slot(hash, cfg.ring_size);
    let Some(backend_id) = ring_at(cfg, vip.table, slot) else {
        return NONE | u64::from(NO_BACKEND);
    };
    let mut prev = NO_BACKEND;
    let (_, insert, tcp_mid_flow) = mode(ip, ports_flags);
    // A mid-flow TCP packet we hold no state for, on a VIP whose table changed: if the previous
    // table gave this slot to another backend, that one may hold the connection.
    if tcp_mid_flow
        && vip.prev_table != NO_TABLE
        && let Some(p) = ring_at(cfg, vip.prev_table, slot)
        && p != backend_id
    {
        prev = p;
    }
    let answer = (u64::from(prev) << 32) | u64::from(backend_id);
    if !insert {
        return answer;
    }
    let Some(b) = maps::BACKENDS.get(backend_id) else {
        return answer;
    };
    // Not tracked only while a hint really carries the flow: a GUE hint, which must ride on
    // every packet until the flow ends (an entry would silence it), or this host as the new
    // owner, which checks its own sockets on every packet. Under IPIP nothing carries it: the
    // flow is tracked to the new owner, which computes the previous owner itself
    // (`decap::table_chance`).
    let hinted = prev != NO_BACKEND && (cfg.encap == ENCAP_GUE || b.flags & BACKEND_F_LOCAL != 0);
    if !hinted {
        let value = ConnValue {
            backend_id,
            generation: b.generation,
            _pad: 0,
            // SAFETY: helper without arguments.
            last_seen_ns: unsafe { bpf_ktime_get_ns() },
        };
        if maps::CONNS_NEW
            .insert(conn_key(ip, ports_flags), value, 0)
            .is_ok()
        {
            maps::count(counter::CONN_NEW);
        }
    }
    answer
}

/// The entry of `key` in one tier, if it is to be followed: its backend id still carries the
/// recorded generation and, for UDP, it has not idled out (refreshing its timestamp at most
/// once per [`REFRESH_NS`]).
#[inline(always)]
fn tracked(
    map: &LruHashMap<ConnKey, ConnValue>,
    key: &ConnKey,
    cfg: &DataplaneConfig,
    udp: bool,
    now: &mut u64,
) -> Result<&'static ConnValue, Ignored> {
    let Some(entry) = map.get_ptr_mut(key) else {
        return Err(Ignored::Absent);
    };
    // SAFETY: LRU map value pointer, valid for this program run.
    let (backend_id, generation, last_seen_ns) = unsafe {
        (
            (*entry).backend_id,
            (*entry).generation,
            (*entry).last_seen_ns,
        )
    };
    let valid = match maps::BACKENDS.get(backend_id) {
        Some(b) => b.family != 0 && b.generation == generation,
        None => false,
    };
    let mut fresh = true;
    if udp {
        if *now == 0 {
            // SAFETY: helper without arguments.
            *now = unsafe { bpf_ktime_get_ns() };
        }
        let age = now.wrapping_sub(last_seen_ns);
        fresh = age < u64::from(cfg.conn_udp_timeout_s) * NS_PER_S;
        if valid && fresh && age > REFRESH_NS {
            // SAFETY: as above; a racing writer on another CPU stores the same kind of value,
            // and either timestamp is good enough.
            unsafe { (*entry).last_seen_ns = *now };
        }
    }
    if valid && fresh {
        // SAFETY: as above; no mutable access follows.
        return Ok(unsafe { &*entry });
    }
    Err(Ignored::Stale)
}

/// Why [`tracked`] gave no entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ignored {
    Absent,
    /// Present, but its backend left or (UDP) it idled out: counted `conn_stale`.
    Stale,
}

/// Is a TCP packet with these flags part of a flow already under way: anything but a bare SYN
/// (SYN without ACK), which opens a new connection. The one rule for tracking and for the second
/// chance.
#[inline(always)]
pub const fn mid_flow(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN
}

#[inline(always)]
/// The flow hash of a packet (the one rule for kernel and host: anycast_common::hash).
pub fn flow_hash(cfg: &DataplaneConfig, inner: &Ip, ports: u32) -> u32 {
    if inner.family == FAMILY_V4 {
        flow_hash_v4(
            cfg.hash_seed,
            inner.src[0],
            inner.dst[0],
            ports,
            inner.proto,
        )
    } else {
        flow_hash_v6(cfg.hash_seed, &inner.src, &inner.dst, ports, inner.proto)
    }
}

/// The backend id in `slot` of Maglev table `table` (`slot < ring_size`).
#[inline(always)]
pub fn ring_at(cfg: &DataplaneConfig, table: u32, slot: u32) -> Option<u32> {
    maps::RINGS
        .get(table.wrapping_mul(cfg.ring_size).wrapping_add(slot))
        .copied()
}

/// Per-CPU fixed one-second window on insertions.
#[inline(always)]
fn allow_insert(cfg: &DataplaneConfig, now: &mut u64) -> bool {
    if *now == 0 {
        // SAFETY: helper without arguments.
        *now = unsafe { bpf_ktime_get_ns() };
    }
    let limit = u64::from(cfg.conn_insert_limit);
    if limit == 0 {
        return true;
    }
    let Some(g) = maps::CONN_GUARD.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot, only this CPU writes it.
    let g: &mut ConnGuard = unsafe { &mut *g };
    if now.wrapping_sub(g.window_start_ns) >= NS_PER_S {
        g.window_start_ns = *now;
        g.inserts = 0;
    }
    if g.inserts >= limit {
        return false;
    }
    g.inserts += 1;
    true
}
