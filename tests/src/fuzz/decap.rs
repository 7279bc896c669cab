//! The model of a tunnel packet addressed to this host (docs/dataplane.md, "Decapsulation" and
//! "Second chance"): refused unless its source is in the allowlist; IPIP / IPv6-in-IP and GUE
//! (variant 0 with an optional previous-owner hint, variant 1) are stripped, the L2 header kept
//! with the inner ethertype, and the frame ends where the outer IP packet ends. A decapsulated
//! mid-flow TCP packet that no local socket holds (the fixture namespace has none) may be sent on
//! once: to the hint, or to the owner this host's own tables name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anycast_common::{
    GUE_HINT_MAGIC, GUE_HINT_WORDS_V4, GUE_HINT_WORDS_V6, PROTO_TCP, PROTO_UDP,
    SECOND_CHANCE_TTL_MIN, counter, hash::ring_slot,
};

use super::Expect;
use super::emit::{self, Tunnel};
use super::parse::{Ip, Parsed, parse};
use super::track::Flow;
use super::world::World;

/// Is `ip` a tunnel packet to this host: IPIP or IPv6-in-IP, or UDP to the GUE port (its UDP
/// header inside the packet), to one of this host's tunnel addresses.
pub fn is_tunnel(w: &World, f: &[u8], ip: &Ip) -> bool {
    let tunnel = match ip.proto {
        4 | 41 => true,
        PROTO_UDP => ip
            .bytes(f, ip.l4(), 8)
            .is_some_and(|u| u16::from_be_bytes([u[2], u[3]]) == u16::from_be(w.cfg.gue_port_be)),
        _ => false,
    };
    tunnel && w.is_local(ip.dst)
}

pub fn decapsulate(w: &World, f: &[u8], ip: &Ip) -> Expect {
    if !w.allowed(ip.src) {
        return Expect::drop(counter::DECAP_REFUSED);
    }
    let bad = || Expect::drop(counter::PARSE_ERROR);
    let mut hint = None;
    let (inner_v4, strip) = match ip.proto {
        4 => (true, ip.l3),
        41 => (false, ip.l3),
        _ => {
            let g = ip.l4() + 8;
            let Some(b) = ip.bytes(f, g, 2) else {
                return bad();
            };
            match b[0] >> 6 {
                0 if b[0] & 0x20 == 0 => {
                    let words = b[0] & 0x1f;
                    if words == GUE_HINT_WORDS_V4 || words == GUE_HINT_WORDS_V6 {
                        hint = read_hint(f, ip, g + 4, words);
                    }
                    let len = ip.l3 + 8 + 4 + usize::from(words) * 4;
                    match b[1] {
                        4 => (true, len),
                        41 => (false, len),
                        _ => return bad(),
                    }
                }
                1 => (b[0] >> 4 == 4, ip.l3 + 8),
                _ => return bad(),
            }
        }
    };
    let ttl = f[ip.l2 + if ip.v4 { 8 } else { 7 }];
    let Some(v) = ip.bytes(f, ip.l2 + strip, 1) else {
        return bad();
    };
    if v[0] >> 4 != if inner_v4 { 4 } else { 6 } {
        return bad();
    }
    let mut out = f[..ip.l2].to_vec();
    let et = if inner_v4 { [0x08, 0x00] } else { [0x86, 0xdd] };
    out[ip.l2 - 2..ip.l2].copy_from_slice(&et);
    out.extend_from_slice(&f[ip.l2 + strip..ip.end()]);
    let delivered = Expect::pass(&out, counter::DECAP);
    if ttl > SECOND_CHANCE_TTL_MIN {
        return delivered.with(counter::SECOND_CHANCE_LAST_HOP);
    }
    let Parsed::Ip(inner) = parse(&out) else {
        return delivered;
    };
    let Some(flow) = mid_flow_tcp(&out, &inner) else {
        return delivered;
    };
    let hash = flow.hash(w.cfg.hash_seed);
    let (to, id) = match hint {
        Some(h) => (h, None),
        None => match table_chance(w, &flow, hash) {
            Some((id, a)) => (a, Some(id)),
            None => return delivered,
        },
    };
    let t = Tunnel {
        dst: to,
        hint: None,
        hash,
        id,
        outcome: counter::SECOND_CHANCE,
    };
    let e = emit::encapsulate(w, &out, &inner, &t);
    if id.is_some() {
        e.with(counter::SECOND_CHANCE_TABLE)
    } else {
        e
    }
}

fn read_hint(f: &[u8], ip: &Ip, off: usize, words: u8) -> Option<IpAddr> {
    let m = ip.bytes(f, off, 4)?;
    if m[..2] != GUE_HINT_MAGIC {
        return None;
    }
    if m[2] == 4 && words == GUE_HINT_WORDS_V4 {
        let a = ip.bytes(f, off + 4, 4)?;
        return Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])));
    }
    if m[2] == 6 && words == GUE_HINT_WORDS_V6 {
        let a: [u8; 16] = ip.bytes(f, off + 4, 16)?.try_into().ok()?;
        return Some(IpAddr::V6(Ipv6Addr::from(a)));
    }
    None
}

/// A TCP packet (its whole fixed header inside the packet) other than a bare SYN.
fn mid_flow_tcp(f: &[u8], inner: &Ip) -> Option<Flow> {
    if inner.proto != PROTO_TCP {
        return None;
    }
    let t = inner.bytes(f, inner.l4(), 20)?;
    if t[13] & 0x12 == 0x02 {
        return None;
    }
    Some(Flow {
        src: inner.src,
        dst: inner.dst,
        proto: PROTO_TCP,
        ports: [t[0], t[1], t[2], t[3]],
    })
}

/// The remote owner this host's tables give a flow whose VIP's table changed: the previous
/// table's owner of its slot if another, remote backend; else the live table's, if remote.
fn table_chance(w: &World, flow: &Flow, hash: u32) -> Option<(u32, IpAddr)> {
    let vip = w.vip_of(flow.dst, flow.dport(), flow.proto)?;
    let (table, prev) = (vip.table.as_ref()?, vip.prev.as_ref()?);
    let slot = ring_slot(hash, w.cfg.ring_size) as usize;
    let (cur, old) = (table[slot], prev[slot]);
    let remote = |id| w.backend(id).filter(|b| !b.local).map(|b| (id, b.addr));
    if old != cur
        && let Some(a) = remote(old)
    {
        return Some(a);
    }
    remote(cur)
}
