//! Connection tracking: a flow keeps the backend it started with while tables change.
//!
//! What creates an entry:
//! - TCP: any packet of the flow except a bare SYN and except RST. A bare SYN removes an entry
//!   left on its tuple by an earlier connection (reused ports). The first such packet is
//!   normally the client's ACK completing the handshake, so a SYN flood from spoofed sources
//!   (which never completes one) creates no state and cannot evict real connections. The
//!   handshake itself follows the table, which every edge computes identically.
//! - UDP: the first packet; an entry idle longer than `conn_udp_timeout_s` is picked afresh.
//! - At most `conn_insert_limit` new entries per CPU per second (0 = unlimited): past it, flows
//!   still follow the table, so an ACK or UDP flood can churn at most that many entries a second.
//!
//! An entry is followed only while its backend id still carries the same generation, so an
//! entry that outlived its backend (id freed, or reused for another backend) is ignored.

use anycast_common::{
    BACKEND_F_LOCAL, ConnGuard, ConnKey, ConnValue, DataplaneConfig, ENCAP_GUE, FAMILY_V4,
    NO_BACKEND, NO_TABLE, PROTO_TCP, PROTO_UDP, VipValue, counter,
    hash::{flow_hash_v4, flow_hash_v6, ring_slot},
};
use aya_ebpf::helpers::generated::bpf_ktime_get_ns;

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

/// Result of [`pick`]: the backend id in the low 32 bits, the flow hash in the high 32.
/// `NO_BACKEND` as the id: the VIP has no backend for this flow.
#[inline(always)]
pub const fn split(r: u64) -> (u32, u32) {
    (r as u32, (r >> 32) as u32)
}

/// Chooses the backend of a VIP packet: the tracked one if the flow is known, else the live
/// table's. A BPF subprogram of its own so its key and value do not sit in the caller's frame
/// while the encapsulation runs.
///
/// It takes no context: LLVM would otherwise pass it packet pointers in a form the verifier
/// refuses. The caller passes the first transport word (ports) in the low half of
/// `ports_flags` and the TCP flags byte above it. `prev` receives the previous owner of the flow
/// when a second chance may be needed (see `chance`), [`PREV_INSERT_LIMITED`] when the flow was
/// not tracked because of the insertion limit, else `NO_BACKEND`.
#[inline(never)]
pub fn pick(
    ip: &Ip,
    cfg: &DataplaneConfig,
    vip: &VipValue,
    ports_flags: u64,
    prev: &mut u32,
) -> u64 {
    let ports = ports_flags as u32;
    let tcp_flags = u32::from((ports_flags >> 32) as u8);
    *prev = NO_BACKEND;
    let hash = flow_hash(cfg, ip, ports);
    let with_hash = u64::from(hash) << 32;

    let lookup_only = ports_flags & LOOKUP_ONLY != 0;
    let tcp_mid_flow = ip.proto == PROTO_TCP && (lookup_only || mid_flow(tcp_flags as u8));
    let (track, insert) = if ip.proto == PROTO_TCP {
        let flags = tcp_flags as u8;
        (tcp_mid_flow, tcp_mid_flow && flags & TCP_RST == 0)
    } else {
        (ip.proto == PROTO_UDP, ip.proto == PROTO_UDP)
    };
    let insert = insert && !lookup_only;

    let key = ConnKey {
        src_be: addr_bytes(ip.src),
        dst_be: addr_bytes(ip.dst),
        ports_be: ports.to_le_bytes(),
        proto: ip.proto,
        family: ip.family,
        _pad: [0; 2],
    };
    let udp = ip.proto == PROTO_UDP;
    let mut now = 0u64;
    if ip.proto == PROTO_TCP && !tcp_mid_flow {
        // A bare SYN starts a new connection on this tuple: an entry left by an earlier
        // connection with the same ports (ports are reused) must not steer its ACKs to the old
        // backend.
        let _ = maps::CONNS.remove(key);
    }
    if track {
        if let Some(entry) = maps::CONNS.get_ptr_mut(key) {
            // SAFETY: LRU map value pointer, valid for this program run.
            let e = unsafe { *entry };
            let valid = match maps::BACKENDS.get(e.backend_id) {
                Some(b) => b.family != 0 && b.generation == e.generation,
                None => false,
            };
            let mut fresh = true;
            if udp {
                // SAFETY: helper without arguments.
                now = unsafe { bpf_ktime_get_ns() };
                let age = now.wrapping_sub(e.last_seen_ns);
                fresh = age < u64::from(cfg.conn_udp_timeout_s) * NS_PER_S;
                if valid && fresh && age > REFRESH_NS {
                    // SAFETY: as above; a racing writer on another CPU stores the same kind
                    // of value, and either timestamp is good enough.
                    unsafe { (*entry).last_seen_ns = now };
                }
            }
            if valid && fresh {
                maps::count(counter::CONN_HIT);
                return with_hash | u64::from(e.backend_id);
            }
            maps::count(counter::CONN_STALE);
        }
        maps::count(counter::CONN_MISS);
    }

    if vip.table == NO_TABLE || cfg.ring_size == 0 {
        return u64::from(NO_BACKEND);
    }
    let slot = ring_slot(hash, cfg.ring_size);
    let Some(backend_id) = ring_at(cfg, vip.table, slot) else {
        return u64::from(NO_BACKEND);
    };
    // A mid-flow TCP packet we hold no state for, on a VIP whose table changed: if the previous
    // table gave this slot to another backend, that one may hold the connection.
    if tcp_mid_flow
        && vip.prev_table != NO_TABLE
        && let Some(p) = ring_at(cfg, vip.prev_table, slot)
        && p != backend_id
    {
        *prev = p;
    }
    if insert {
        let (generation, flags) = match maps::BACKENDS.get(backend_id) {
            Some(b) => (b.generation, b.flags),
            None => return with_hash | u64::from(backend_id),
        };
        // Not tracked only while a hint really carries the flow: a GUE hint, which must ride on
        // every packet until the flow ends (an entry would silence it), or this host as the new
        // owner, which checks its own sockets on every packet. Under IPIP nothing carries it:
        // the flow is tracked to the new owner, which computes the previous owner itself
        // (`decap::table_chance`).
        let hinted =
            *prev != NO_BACKEND && (cfg.encap == ENCAP_GUE || flags & BACKEND_F_LOCAL != 0);
        if !hinted {
            if allow_insert(cfg, &mut now) {
                let value = ConnValue {
                    backend_id,
                    generation,
                    _pad: 0,
                    last_seen_ns: now,
                };
                if maps::CONNS.insert(key, value, 0).is_ok() {
                    maps::count(counter::CONN_INSERT);
                }
            } else {
                maps::count(counter::CONN_INSERT_LIMITED);
                // The caller logs it: a log subprogram called from here would push the deepest
                // call chain (steer -> steer_vip -> pick) past the 512-byte BPF stack.
                *prev = PREV_INSERT_LIMITED;
            }
        }
    }
    with_hash | u64::from(backend_id)
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
