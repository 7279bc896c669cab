//! One random frame: a category's packet ([`packet`]), then, for some, a mutation ([`mutate`]):
//! truncated at any length, Ethernet padding, IP lengths too short or too long, bad IHL or
//! version, a flipped byte, a VLAN or QinQ tag.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anycast_common::{GUE_DEFAULT_PORT, GUE_HINT_MAGIC, PROTO_TCP, PROTO_UDP};

use super::Rng;
use super::generate::{
    ClientFlow, Generator, cat, client, flow_packet, frame, ip_raw, other_dst, payload, tunnel_dst,
    tunnel_src,
};
use super::world::World;
use crate::packet::{self as p, V4, V6};

/// A frame, the category it was drawn from and its variants (tag, mutation).
pub fn packet(
    rng: &mut Rng,
    w: &World,
    g: &Generator,
) -> (&'static str, Vec<&'static str>, Vec<u8>) {
    let (cat_name, f) = match rng.below(100) {
        0..=34 => {
            let c = g.flow(rng);
            let name = if c.proto == PROTO_TCP {
                "flow_tcp"
            } else {
                "flow_udp"
            };
            (name, frame(&flow_packet(rng, &c)))
        }
        35..=41 => ("vip_edge", frame(&edge(rng, g))),
        42..=53 => ("icmp", frame(&icmp(rng, g))),
        54..=65 => ("fragment", frame(&fragment(rng, g))),
        66..=83 => ("tunnel", frame(&tunnel(rng, w, g, 0))),
        84..=88 => ("ipv4_options", frame(&options(rng, g))),
        89..=93 => ("ipv6_ext", frame(&ext(rng, g))),
        _ => ("non_ip", non_ip(rng)),
    };
    let (tag, f) = match rng.below(10) {
        0 => ("+vlan", vlan(&f, &[0x8100])),
        1 => ("+qinq", vlan(&f, &[0x88a8, 0x8100])),
        _ => ("", f),
    };
    let (m, f) = mutate(rng, f);
    let variants = [tag, m].into_iter().filter(|v| !v.is_empty()).collect();
    (cat_name, variants, f)
}

/// Inserts tags (TPIDs in order) after the MAC addresses.
fn vlan(f: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    for (i, t) in tpids.iter().enumerate() {
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&(0x6000u16 | (100 + i as u16)).to_be_bytes());
    }
    out.extend_from_slice(&f[12..]);
    out
}

fn mutate(rng: &mut Rng, mut f: Vec<u8>) -> (&'static str, Vec<u8>) {
    let l3 = p::l3_offset(&f);
    let is_ip = f.len() > l3 + 8 && matches!(f[l3] >> 4, 4 | 6);
    match rng.below(24) {
        0..=2 => {
            let n = 14 + rng.below((f.len() - 13) as u64) as usize;
            f.truncate(n);
            ("+truncated", f)
        }
        3 | 4 => {
            let n = 1 + rng.below(48) as usize;
            let fill = if rng.below(2) == 0 {
                0
            } else {
                rng.next_u64() as u8
            };
            f.extend(std::iter::repeat_n(fill, n));
            ("+padded", f)
        }
        5 | 6 if is_ip => {
            // The IP packet claims fewer bytes than follow: the rest is padding to it.
            let v4 = f[l3] >> 4 == 4;
            let off = l3 + if v4 { 2 } else { 4 };
            let len = u16::from_be_bytes([f[off], f[off + 1]]);
            let cut = 1 + rng.below(u64::from(len).clamp(1, 64)) as u16;
            f[off..off + 2].copy_from_slice(&len.saturating_sub(cut).to_be_bytes());
            ("+short_len", f)
        }
        7 if is_ip => {
            let v4 = f[l3] >> 4 == 4;
            let off = l3 + if v4 { 2 } else { 4 };
            let len = u16::from_be_bytes([f[off], f[off + 1]]);
            f[off..off + 2]
                .copy_from_slice(&len.wrapping_add(1 + rng.below(8) as u16).to_be_bytes());
            ("+long_len", f)
        }
        8 if is_ip => {
            f[l3] = (f[l3] & 0xf0) | rng.below(16) as u8;
            ("+bad_ihl", f)
        }
        9 if is_ip => {
            f[l3] = (f[l3] & 0x0f) | (rng.below(16) as u8) << 4;
            ("+bad_version", f)
        }
        10 => {
            let i = rng.below(f.len() as u64) as usize;
            f[i] ^= 1 << rng.below(8);
            ("+flipped", f)
        }
        _ => ("", f),
    }
}

/// VIP edge cases: a VIP address with another port or protocol, port 0, a VIP without a table,
/// an address that is no VIP, protocols that have no ports.
fn edge(rng: &mut Rng, g: &Generator) -> Vec<u8> {
    let mut c = g.flow(rng);
    match rng.below(6) {
        0 => c.dport = 0,
        1 => c.proto = [132, 50, 47, 255, 0][rng.below(5) as usize],
        2 => c.dst = other_dst(rng, c.dst.is_ipv4()),
        3 => c.proto = PROTO_TCP + PROTO_UDP - c.proto,
        4 => c.dport = rng.below(65536) as u16,
        _ => {
            c.dst = other_dst(rng, c.dst.is_ipv4());
            c.dport = 8443;
        }
    }
    flow_packet(rng, &c)
}

/// An ICMP error (or not) from a router about a packet from the VIP to its client, with the
/// quote cut anywhere; now and then the quoted packet is a first fragment or another family.
fn icmp(rng: &mut Rng, g: &Generator) -> Vec<u8> {
    let c = g.flow(rng);
    let v4 = c.dst.is_ipv4();
    let back = ClientFlow {
        src: c.dst,
        dst: c.src,
        sport: c.dport,
        dport: c.sport,
        proto: c.proto,
    };
    let mut quoted = flow_packet(rng, &back);
    if !v4 && rng.below(4) == 0 {
        // A quoted first fragment: the ports follow the fragment header.
        let next = quoted[6];
        let off = if rng.below(3) == 0 { 0x0008u16 } else { 0x0001 };
        let o = off.to_be_bytes();
        let fh = [next, 0, o[0], o[1], 0, 0, 0x12, 0x34];
        quoted = cat(&[&quoted[..40], &fh, &quoted[40..]]);
        quoted[6] = 44;
        let plen = (quoted.len() - 40) as u16;
        quoted[4..6].copy_from_slice(&plen.to_be_bytes());
    }
    if v4 && rng.below(6) == 0 {
        // A quoted later fragment.
        quoted[7] = 0x10;
    }
    let keep = match rng.below(4) {
        0 => rng.below(quoted.len() as u64 + 1) as usize,
        _ => quoted.len().min(if v4 {
            28 + rng.below(40) as usize
        } else {
            48 + rng.below(40) as usize
        }),
    };
    quoted.truncate(keep);
    let ty = if v4 {
        [3, 3, 11, 0, 8, 5][rng.below(6) as usize]
    } else {
        [1, 2, 2, 3, 128, 129, 4][rng.below(7) as usize]
    };
    let mut msg = vec![ty, rng.below(5) as u8, 0, 0, 0, 0, 0x05, 0x00];
    msg.extend_from_slice(&quoted);
    let router = if v4 {
        IpAddr::V4(Ipv4Addr::new(198, 18, 9, 1 + rng.below(9) as u8))
    } else {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1))
    };
    let dst = if rng.below(8) == 0 {
        other_dst(rng, v4)
    } else {
        c.dst
    };
    // Mostly the family's own ICMP; now and then the other one.
    let proto = match (v4, rng.below(10)) {
        (true, 0) => 58,
        (true, _) => 1,
        (false, 0) => 1,
        (false, _) => 58,
    };
    ip_raw(router, dst, proto, 60, &msg)
}

/// A fragment of a datagram of a pool flow: first or later, IPv4 or the IPv6 fragment header.
fn fragment(rng: &mut Rng, g: &Generator) -> Vec<u8> {
    let c = g.frag_flow(rng);
    let id = g.frag_id(rng);
    let first = rng.below(2) == 0;
    let whole = flow_packet(rng, &c);
    let hl = if c.src.is_ipv4() { 20 } else { 40 };
    let data: Vec<u8> = if first {
        whole[hl..].to_vec()
    } else {
        payload(rng)
    };
    let off = if first { 0 } else { 1 + rng.below(180) as u16 };
    let more = !first || rng.below(4) != 0;
    match (c.src, c.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = V4::new(s, d).fragment(more, off);
            h.identification = id as u16;
            h.raw(c.proto, &data)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let o = (off << 3 | u16::from(more)).to_be_bytes();
            let i = id.to_be_bytes();
            let fh = [c.proto, 0, o[0], o[1], i[0], i[1], i[2], i[3]];
            V6::new(s, d).raw(44, &cat(&[&fh, &data]))
        }
        _ => unreachable!("one family"),
    }
}

/// A tunnel packet: IPIP / IPv6-in-IP, GUE variant 0 (with or without a hint, or with other
/// option words), GUE variant 1, or a GUE control message; the inner packet a pool flow's or,
/// nested, another tunnel packet.
fn tunnel(rng: &mut Rng, w: &World, g: &Generator, depth: u32) -> Vec<u8> {
    let mut inner = if depth < 2 && rng.below(8) == 0 {
        tunnel(rng, w, g, depth + 1)
    } else {
        let c = g.flow(rng);
        flow_packet(rng, &c)
    };
    if rng.below(10) == 0 {
        // The inner packet claims fewer bytes than the tunnel carries: the rest is no part of it.
        let off = if inner[0] >> 4 == 4 { 2 } else { 4 };
        let len = u16::from_be_bytes([inner[off], inner[off + 1]]);
        let cut = 1 + rng.below(24) as u16;
        inner[off..off + 2].copy_from_slice(&len.saturating_sub(cut).to_be_bytes());
    }
    let outer_v4 = rng.below(2) == 0;
    let src = tunnel_src(rng, outer_v4);
    let dst = tunnel_dst(rng, outer_v4);
    let ttl = [64, 64, 63, 1, 65, 255][rng.below(6) as usize];
    let iproto = if inner[0] >> 4 == 4 { 4 } else { 41 };
    let kind = rng.below(10);
    if kind < 3 {
        let proto = if rng.below(10) == 0 {
            45 - iproto
        } else {
            iproto
        };
        return ip_raw(src, dst, proto, ttl, &inner);
    }
    let gue = match kind {
        3..=5 => p::gue_v0(&inner, 0),
        6 | 7 => {
            let h = hint(rng, w);
            let words = if h.len() == 8 { 2u8 } else { 5 };
            let words = if rng.below(8) == 0 { 7 - words } else { words };
            let mut v = vec![words, iproto, 0, 0];
            v.extend_from_slice(&h);
            v.resize(4 + usize::from(words) * 4, 0);
            cat(&[&v, &inner])
        }
        8 => inner.clone(),
        _ => {
            let mut v = p::gue_v0(&inner, rng.below(4) as u8);
            v[0] |= [0x20, 0x80, 0xc0, 0x00][rng.below(4) as usize];
            if rng.below(2) == 0 {
                v[1] = rng.below(256) as u8;
            }
            v
        }
    };
    let sport = 49152 + rng.below(16384) as u16;
    let udp = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => V4::new(s, d).udp(sport, GUE_DEFAULT_PORT, &gue),
        (IpAddr::V6(s), IpAddr::V6(d)) => V6::new(s, d).udp(sport, GUE_DEFAULT_PORT, &gue),
        _ => unreachable!("one family"),
    };
    let hl = if outer_v4 { 20 } else { 40 };
    ip_raw(src, dst, PROTO_UDP, ttl, &udp[hl..])
}

/// A previous-owner hint (magic, family, address) naming a backend or another address.
fn hint(rng: &mut Rng, w: &World) -> Vec<u8> {
    let a: IpAddr = match rng.below(4) {
        0 => IpAddr::V4(Ipv4Addr::new(198, 19, 4, 1)),
        1 => IpAddr::V6(Ipv6Addr::new(0xfd00, 4, 0, 0, 0, 0, 0, 1)),
        _ => {
            let remote: Vec<_> = w.backends.iter().filter(|b| !b.local).collect();
            remote[rng.below(remote.len() as u64) as usize].addr
        }
    };
    let magic = if rng.below(10) == 0 {
        [0xac, 0x5d]
    } else {
        GUE_HINT_MAGIC
    };
    match a {
        IpAddr::V4(v) => cat(&[&magic, &[4, 0], &v.octets()]),
        IpAddr::V6(v) => cat(&[&magic, &[6, 0], &v.octets()]),
    }
}

/// A VIP packet with IPv4 options (IHL > 5).
fn options(rng: &mut Rng, g: &Generator) -> Vec<u8> {
    let mut c = g.flow(rng);
    if !c.dst.is_ipv4() {
        c.src = client(rng, true);
        c.dst = super::world::VIP4.into();
        c.dport = 80;
        c.proto = PROTO_TCP;
    }
    let (IpAddr::V4(s), IpAddr::V4(d)) = (c.src, c.dst) else {
        unreachable!("IPv4")
    };
    let words = 1 + rng.below(10) as usize;
    let mut opts = vec![1u8; words * 4];
    opts[words * 4 - 1] = 0;
    let h = V4::new(s, d).options(&opts);
    match c.proto {
        PROTO_UDP => h.udp(c.sport, c.dport, &payload(rng)),
        _ => h.tcp(c.sport, c.dport, &payload(rng)),
    }
}

/// An IPv6 VIP packet behind a chain of extension headers.
fn ext(rng: &mut Rng, g: &Generator) -> Vec<u8> {
    let mut c = g.flow(rng);
    if c.dst.is_ipv4() {
        c.src = client(rng, false);
        c.dst = super::world::VIP6.into();
        c.dport = 443;
    }
    let whole = flow_packet(rng, &c);
    let mut body = whole[40..].to_vec();
    let mut next = whole[6];
    for _ in 0..1 + rng.below(3) {
        let kind = [0u8, 43, 60, 51, 135][rng.below(5) as usize];
        let mut h = vec![next, 0, 0, 0, 0, 0, 0, 0];
        if kind == 43 {
            h[2] = 4;
        }
        body = cat(&[&h, &body]);
        next = kind;
    }
    let (IpAddr::V6(s), IpAddr::V6(d)) = (c.src, c.dst) else {
        unreachable!("IPv6")
    };
    V6::new(s, d).raw(next, &body)
}

fn non_ip(rng: &mut Rng) -> Vec<u8> {
    if rng.below(2) == 0 {
        return p::arp_request(Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));
    }
    let et = [0x88cc, 0x8847, 0x0000, 0xffff, 0x86dc][rng.below(5) as usize];
    let body: Vec<u8> = (0..rng.below(80)).map(|_| rng.next_u64() as u8).collect();
    p::eth(p::EDGE_MAC, p::ROUTER_MAC, None, et, &body)
}
