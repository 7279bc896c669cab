//! Decapsulation of IPIP, IPv6-in-IP and GUE packets addressed to this host.
//!
//! Only packets whose outer destination is one of this host's tunnel addresses (`LOCAL_ADDRS`)
//! are tunnel traffic for us; of those, only the ones whose outer source is inside `decap_allow`
//! are stripped. Everything else addressed to us as a tunnel is dropped and counted
//! `decap_refused`: no open relay, no spoofed injection past the host's filters.
//!
//! The L2 header (including a VLAN tag) is kept and moved up against the inner packet, with its
//! ethertype set to the inner family, so the stack sees the inner packet arrive on the same
//! interface and VLAN. The outer UDP checksum of GUE is not verified: the inner transport
//! checksum, which the stack verifies, covers the delivered data.

use anycast_common::{
    AddrKey, BACKEND_F_LOCAL, Backend, DataplaneConfig, FAMILY_V4, FAMILY_V6, GUE_HINT_MAGIC,
    GUE_HINT_WORDS_V4, GUE_HINT_WORDS_V6, NO_BACKEND, NO_TABLE, PROTO_IPIP, PROTO_IPV6, PROTO_TCP,
    PROTO_UDP, SECOND_CHANCE_TTL_MIN, counter, hash::ring_slot,
};
use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    maps::lpm_trie::Key,
    programs::XdpContext,
};

use crate::{
    Verdict, chance, encap, log, maps,
    packet::{addr_bytes, bytes_at, u8_at, u16_be_at, word_at, write_at},
    parse,
    parse::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, Ip, TCP_LEN, UDP_LEN, VLAN_LEN},
    select, track,
};

/// Is this a tunnel packet addressed to this host? Cheap checks first: the protocol (and GUE
/// port) before the address lookup.
#[inline(always)]
pub fn is_tunnel(ctx: &XdpContext, ip: &Ip, cfg: &DataplaneConfig) -> bool {
    let tunnel = match ip.proto {
        PROTO_IPIP | PROTO_IPV6 => true,
        // The UDP header must lie inside the IP packet: bytes after it (Ethernet padding) are no
        // port.
        PROTO_UDP => {
            ip.l3_len + UDP_LEN <= ip.ip_len as usize
                && u16_be_at(ctx, ip.l4_off() + 2)
                    .is_some_and(|p| p == u16::from_be(cfg.gue_port_be))
        }
        _ => false,
    };
    if !tunnel {
        return false;
    }
    let key = AddrKey {
        addr_be: addr_bytes(ip.dst),
        family: ip.family,
        _pad: [0; 3],
    };
    // SAFETY: only presence is tested; the value is not read.
    unsafe { maps::LOCAL_ADDRS.get(key) }.is_some()
}

#[inline(always)]
fn source_allowed(ip: &Ip) -> bool {
    if ip.family == FAMILY_V4 {
        let key = Key::new(32, ip.src[0].to_le_bytes());
        maps::DECAP_ALLOW_V4.get(&key).is_some()
    } else {
        maps::DECAP_ALLOW_V6
            .get(Key::new(128, addr_bytes(ip.src)))
            .is_some()
    }
}

// A BPF subprogram of its own: inlined, its stack slots would add to the caller's 512 bytes.
#[inline(never)]
pub fn decapsulate(ctx: &XdpContext, ip: &Ip, cfg: &DataplaneConfig) -> Verdict {
    if !source_allowed(ip) {
        log::decap_refused(ip);
        return Verdict::drop(counter::DECAP_REFUSED);
    }
    // Bytes after the outer IP packet (Ethernet padding) are not part of it: trimmed first, so
    // that nothing below reads them as GUE header, hint or inner packet, and the inner packet
    // reaches the stack (or the next tunnel) without them.
    if !trim(ctx, (ip.l2_len + ip.ip_len as usize) as u32) {
        return Verdict::drop(counter::INTERNAL_ERROR);
    }
    let Some(sc) = encap::scratch() else {
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    // The hint, if any, is read into the scratch tunnel: it is where a second chance sends to.
    let hint: &mut Backend = &mut sc.tunnel.dst;
    hint.family = 0;
    // From here the packet is tunnel traffic for us from a trusted source; a malformed one is
    // dropped rather than handed to the stack as something it is not.
    let (inner_v4, strip) = match ip.proto {
        PROTO_IPIP => (true, ip.l3_len),
        PROTO_IPV6 => (false, ip.l3_len),
        _ => {
            let gue = ip.l4_off() + UDP_LEN;
            let Some(b) = bytes_at::<2>(ctx, gue) else {
                return Verdict::drop(counter::PARSE_ERROR);
            };
            match b[0] >> 6 {
                // GUE variant 0: 4-byte header + hlen words of options; C bit = control message.
                0 if b[0] & 0x20 == 0 => {
                    let words = b[0] & 0x1f;
                    let hlen = (words as usize) * 4;
                    if words == GUE_HINT_WORDS_V4 || words == GUE_HINT_WORDS_V6 {
                        read_hint(ctx, gue + 4, words, hint);
                    }
                    match b[1] {
                        PROTO_IPIP => (true, ip.l3_len + UDP_LEN + 4 + hlen),
                        PROTO_IPV6 => (false, ip.l3_len + UDP_LEN + 4 + hlen),
                        _ => return Verdict::drop(counter::PARSE_ERROR),
                    }
                }
                // GUE variant 1: the inner IP header follows UDP directly.
                1 => (b[0] >> 4 == 4, ip.l3_len + UDP_LEN),
                _ => return Verdict::drop(counter::PARSE_ERROR),
            }
        }
    };
    let l2 = ip.l2_len;
    // The outer TTL (IPv4) or hop limit (IPv6): above SECOND_CHANCE_TTL_MIN, the packet left its
    // sender as a second chance already (see `chance`).
    let ttl_off = if ip.family == FAMILY_V4 { 8 } else { 7 };
    let Some(ttl) = u8_at(ctx, l2 + ttl_off) else {
        return Verdict::drop(counter::PARSE_ERROR);
    };
    let Some(version) = u8_at(ctx, l2 + strip) else {
        return Verdict::drop(counter::PARSE_ERROR);
    };
    let expected = if inner_v4 { 4 } else { 6 };
    if version >> 4 != expected {
        return Verdict::drop(counter::PARSE_ERROR);
    }
    let ethertype = if inner_v4 { ETH_P_IP } else { ETH_P_IPV6 }.to_be_bytes();

    // Move the L2 header forward to sit just before the inner packet. strip >= 20 > 18, so the
    // old and new places never overlap.
    let moved = if l2 == ETH_LEN {
        match bytes_at::<ETH_LEN>(ctx, 0) {
            Some(mut h) => {
                h[12] = ethertype[0];
                h[13] = ethertype[1];
                write_at(ctx, strip, h)
            }
            None => None,
        }
    } else {
        match bytes_at::<{ ETH_LEN + VLAN_LEN }>(ctx, 0) {
            Some(mut h) => {
                h[16] = ethertype[0];
                h[17] = ethertype[1];
                write_at(ctx, strip, h)
            }
            None => None,
        }
    };
    if moved.is_none() {
        return Verdict::drop(counter::PARSE_ERROR);
    }
    // SAFETY: ctx is the program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip as i32) } != 0 {
        return Verdict::drop(counter::INTERNAL_ERROR);
    }
    if ttl > SECOND_CHANCE_TTL_MIN {
        // Delivered here whatever happens: a second chance takes one hop, never two.
        maps::count(counter::SECOND_CHANCE_LAST_HOP);
        return Verdict::pass(counter::DECAP);
    }
    if hint.family != 0 {
        return second_chance(ctx, cfg, sc);
    }
    table_chance(ctx, cfg, sc)
}

/// Cuts the frame after its first `end` bytes, if it is longer; false if that failed.
// A subprogram of its own: inlined, its values would take stack slots in `decapsulate`'s frame,
// which the deepest call chain's 512 bytes cannot spare.
#[inline(never)]
fn trim(ctx: &XdpContext, end: u32) -> bool {
    let frame_len = (ctx.data_end() - ctx.data()) as u32;
    // SAFETY: ctx is the program's context; shrinking to the end of the IP packet keeps at
    // least the Ethernet header (the caller parsed one).
    frame_len <= end || unsafe { bpf_xdp_adjust_tail(ctx.ctx, end as i32 - frame_len as i32) } == 0
}

/// Reads a previous-owner hint from GUE private data at `off` (see anycast_common::GUE_HINT_MAGIC).
#[inline(always)]
fn read_hint(ctx: &XdpContext, off: usize, words: u8, hint: &mut Backend) {
    let Some(m) = bytes_at::<4>(ctx, off) else {
        return;
    };
    if m[0] != GUE_HINT_MAGIC[0] || m[1] != GUE_HINT_MAGIC[1] {
        return;
    }
    if m[2] == FAMILY_V4 && words == GUE_HINT_WORDS_V4 {
        if let Some(a) = word_at(ctx, off + 4) {
            hint.addr_be = addr_bytes([a, 0, 0, 0]);
            hint.family = FAMILY_V4;
        }
    } else if m[2] == FAMILY_V6
        && words == GUE_HINT_WORDS_V6
        && let (Some(a), Some(b), Some(c), Some(d)) = (
            word_at(ctx, off + 4),
            word_at(ctx, off + 8),
            word_at(ctx, off + 12),
            word_at(ctx, off + 16),
        )
    {
        hint.addr_be = addr_bytes([a, b, c, d]);
        hint.family = FAMILY_V6;
    }
}

/// The ports word of the decapsulated packet `inner` if it is a TCP packet that may take a second
/// chance: a mid-flow one ([`track::mid_flow`]; a new connection belongs to this host).
#[inline(always)]
fn mid_flow_tcp(ctx: &XdpContext, inner: &Ip) -> Option<u32> {
    // The fixed TCP header must lie inside the inner packet, as on the VIP path.
    if inner.proto != PROTO_TCP || inner.l3_len + TCP_LEN > inner.ip_len as usize {
        return None;
    }
    let l4 = inner.l4_off();
    let ports = word_at(ctx, l4)?;
    let flags = u8_at(ctx, l4 + 13)?;
    track::mid_flow(flags).then_some(ports)
}

/// The packet, now decapsulated, carried a hint: deliver it if a local socket holds its TCP
/// flow, else send it once to the hinted previous owner, without a hint (one extra hop at most).
#[inline(always)]
fn second_chance(ctx: &XdpContext, cfg: &DataplaneConfig, sc: &mut encap::Scratch) -> Verdict {
    let Ok(inner) = parse::parse(ctx) else {
        return Verdict::pass(counter::DECAP);
    };
    let Some(ports) = mid_flow_tcp(ctx, &inner) else {
        return Verdict::pass(counter::DECAP);
    };
    if chance::has_socket(ctx, &inner, ports) {
        return Verdict::pass(counter::DECAP);
    }
    let hash = track::flow_hash(cfg, &inner, ports);
    // `tunnel.dst` already holds the hinted owner; no stat_id, so no frame length either.
    sc.tunnel.hint.family = 0;
    sc.tunnel.hash = hash;
    sc.stat_id = NO_BACKEND;
    sc.outcome = counter::SECOND_CHANCE;
    // The frame now starts with the inner packet: the caller parses it again and encapsulates.
    Verdict::encapsulate(true)
}

/// A backend of this host's tables that a second chance can go to: a remote one.
#[inline(always)]
fn remote(id: u32) -> Option<&'static Backend> {
    maps::BACKENDS
        .get(id)
        .filter(|b| b.family != 0 && b.flags & BACKEND_F_LOCAL == 0)
}

/// The packet, now decapsulated, carried no hint (IPIP, or GUE from an edge that saw no table
/// change for the flow), and it is VIP traffic no local socket holds: this host computes where
/// the flow lives from its own tables and sends the packet there once. The previous table's
/// owner of the flow's slot if that is another, remote backend (the flow started before the
/// last table change; an edge that never saw it sent it to the new owner, this host); else the
/// live table's owner if that is remote (an edge tracked the flow to this host under an earlier
/// table that gave it the slot, and the slot has moved on). Only on a VIP whose table changed. Right when this host's agent has the
/// VIP tables the edges have (the same config); with other tables the packet fares no worse
/// than the reset this host's stack would answer it with.
///
/// A BPF subprogram of its own: its VIP key and the inner `Ip` stay off the decapsulation's
/// frame.
#[inline(never)]
fn table_chance(ctx: &XdpContext, cfg: &DataplaneConfig, sc: &mut encap::Scratch) -> Verdict {
    let Ok(inner) = parse::parse(ctx) else {
        return Verdict::pass(counter::DECAP);
    };
    // Cheap checks first; the socket lookup only for a flow this host does not own.
    let Some(ports) = mid_flow_tcp(ctx, &inner) else {
        return Verdict::pass(counter::DECAP);
    };
    if cfg.ring_size == 0 {
        return Verdict::pass(counter::DECAP);
    }
    let Some(vip) = select::vip_of(&inner, (ports >> 16) as u16, cfg) else {
        return Verdict::pass(counter::DECAP);
    };
    // Only after a table change: with a single table, the edges send every flow where this
    // host's table does, and a flow this host has no socket for is not one it could find.
    if vip.table == NO_TABLE || vip.prev_table == NO_TABLE {
        return Verdict::pass(counter::DECAP);
    }
    let hash = track::flow_hash(cfg, &inner, ports);
    let slot = ring_slot(hash, cfg.ring_size);
    let Some(cur) = track::ring_at(cfg, vip.table, slot) else {
        return Verdict::pass(counter::DECAP);
    };
    let prev = track::ring_at(cfg, vip.prev_table, slot).unwrap_or(cur);
    let target = if prev != cur { remote(prev) } else { None };
    let (id, owner) = match target {
        Some(b) => (prev, b),
        None => match remote(cur) {
            Some(b) => (cur, b),
            None => return Verdict::pass(counter::DECAP),
        },
    };
    if chance::has_socket(ctx, &inner, ports) {
        return Verdict::pass(counter::DECAP);
    }
    maps::count(counter::SECOND_CHANCE_TABLE);
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    sc.request(owner, None, hash, id, counter::SECOND_CHANCE, frame_len);
    Verdict::encapsulate(true)
}
