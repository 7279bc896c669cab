//! The frames the model expects out of an encapsulation (docs/dataplane.md, "Encapsulation"):
//! Ethernet (no VLAN tag) | outer IPv4/IPv6 | [UDP | GUE | hint] | the IP packet and whatever
//! followed it in the frame, exactly as received. Checksums are computed here over the bytes.

use std::net::IpAddr;

use anycast_common::{
    ENCAP_GUE, GUE_HINT_MAGIC, GUE_HINT_WORDS_V4, GUE_HINT_WORDS_V6, PROTO_ICMP, PROTO_TCP,
    PROTO_UDP, SECOND_CHANCE_TTL, TUNNEL_TTL, counter,
    hash::{flow_label, gue_source_port},
};

use super::Expect;
use super::parse::{Ip, be16};
use super::world::{CACHE_MAC, Route, World, route_of};
use crate::fixture::{XDP_DROP, XDP_PASS, XDP_TX, net};

/// Where an encapsulation goes.
pub struct Tunnel {
    pub dst: IpAddr,
    /// The flow's previous owner (carried by GUE only).
    pub hint: Option<IpAddr>,
    pub hash: u32,
    /// The backend id whose cached next hop may serve it (`None`: known by its address alone,
    /// as a GUE hint's previous owner is).
    pub id: Option<u32>,
    /// The outcome counter once sent: `encap` or `second_chance` (which leaves with TTL 255).
    pub outcome: u32,
}

/// RFC 1071 sum of `b` (odd length padded with a zero byte), unfolded.
pub fn sum(b: &[u8]) -> u64 {
    b.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

pub fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let a = |x: IpAddr| match x {
        IpAddr::V4(v) => sum(&v.octets()),
        IpAddr::V6(v) => sum(&v.octets()),
    };
    a(src) + a(dst) + u64::from(proto) + len as u64
}

/// Does the IP packet carry a transport checksum the outer UDP checksum can rest on? Not an
/// IPv4 UDP datagram without one, not a fragment (its checksum covers the whole datagram).
fn has_checksum(f: &[u8], ip: &Ip) -> bool {
    let frag = if ip.v4 {
        be16(f, ip.l2 + 6) & 0x3fff != 0
    } else {
        ip.l3 == 48
    };
    if frag {
        return false;
    }
    !(ip.v4 && ip.proto == PROTO_UDP && be16(f, ip.l4() + 6) == 0)
}

/// The IP packet with its IPv4 header checksum and its transport checksum made valid: the
/// outer UDP checksum is the one it would be for a valid inner packet (the edge never reads the
/// payload: docs/dataplane.md). A packet whose checksums are valid is unchanged.
fn normalized(f: &[u8], ip: &Ip) -> Vec<u8> {
    let mut p = f[ip.l2..ip.end()].to_vec();
    if ip.v4 {
        p[10] = 0;
        p[11] = 0;
        let c = !fold(sum(&p[..ip.l3]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let (off, pseudo_sum) = match ip.proto {
        PROTO_TCP => (16, true),
        PROTO_UDP => (6, true),
        PROTO_ICMP if ip.v4 => (2, false),
        _ => (2, true),
    };
    let l4 = ip.l3;
    p[l4 + off] = 0;
    p[l4 + off + 1] = 0;
    let mut s = sum(&p[l4..]);
    if pseudo_sum {
        s += pseudo(ip.src, ip.dst, ip.proto, ip.ip_len - ip.l3);
    }
    let c = !fold(s);
    p[l4 + off..l4 + off + 2].copy_from_slice(&c.to_be_bytes());
    p
}

/// The result of encapsulating the packet `ip` of frame `f` through `t`.
pub fn encapsulate(w: &World, f: &[u8], ip: &Ip, t: &Tunnel) -> Expect {
    let outer_v4 = t.dst.is_ipv4();
    let gue = w.cfg.encap == ENCAP_GUE;
    let hint = if gue { t.hint } else { None };
    let hint_bytes: Vec<u8> = match hint {
        None => vec![],
        Some(h) => {
            let (fam, a): (u8, Vec<u8>) = match h {
                IpAddr::V4(v) => (4, v.octets().to_vec()),
                IpAddr::V6(v) => (6, v.octets().to_vec()),
            };
            let mut b = vec![GUE_HINT_MAGIC[0], GUE_HINT_MAGIC[1], fam, 0];
            b.extend(a);
            b
        }
    };
    let outer_ip_len = if outer_v4 { 20 } else { 40 };
    let inner_proto = if ip.v4 { 4 } else { 41 };
    let tunnel_len = outer_ip_len + if gue { 12 + hint_bytes.len() } else { 0 };
    let outer_len = ip.ip_len + tunnel_len;
    let ttl = if t.outcome == counter::SECOND_CHANCE {
        SECOND_CHANCE_TTL
    } else {
        TUNNEL_TTL
    };
    let route = route_of(t.dst);
    // The next-hop cache serves a resolved backend when the phase fills it; everything else
    // asks the FIB.
    let cached = w.cache && route == Route::Resolved && t.id.is_some();
    let mut details = if cached {
        vec![]
    } else {
        vec![counter::FIB_LOOKUP]
    };
    if route == Route::Fail {
        let mut e = Expect::drop(counter::FIB_FAIL);
        e.details = details;
        return e;
    }
    if gue {
        details.push(counter::ENCAP_GUE);
        if hint.is_some() {
            details.push(counter::HINT_SENT);
        }
    }
    if outer_v4 != ip.v4 {
        details.push(counter::ENCAP_CROSS_FAMILY);
    }
    details.push(if route == Route::Resolved {
        counter::TX
    } else {
        counter::FIB_NO_NEIGH
    });
    let src = if outer_v4 {
        IpAddr::V4(net::EDGE_V4)
    } else {
        IpAddr::V6(net::EDGE_V6)
    };
    let next = if gue { PROTO_UDP } else { inner_proto };
    let mut out = Vec::with_capacity(f.len() + tunnel_len);
    match route {
        Route::Resolved if cached => {
            out.extend_from_slice(&CACHE_MAC);
            out.extend_from_slice(&net::DEV_MAC);
        }
        Route::Resolved => {
            out.extend_from_slice(&net::GW_MAC);
            out.extend_from_slice(&net::DEV_MAC);
        }
        // The kernel resolves the neighbour: the frame keeps its own addresses.
        _ => out.extend_from_slice(&f[..12]),
    }
    let mut hdr = Vec::with_capacity(outer_ip_len);
    match (src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let l = (outer_len as u16).to_be_bytes();
            hdr.extend_from_slice(&[0x45, ip.tos, l[0], l[1], 0, 0, 0x40, 0, ttl, next, 0, 0]);
            hdr.extend_from_slice(&s.octets());
            hdr.extend_from_slice(&d.octets());
            let c = !fold(sum(&hdr));
            hdr[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&[0x86, 0xdd]);
            let fl = flow_label(t.hash);
            let l = ((outer_len - 40) as u16).to_be_bytes();
            hdr.extend_from_slice(&[
                0x60 | (ip.tos >> 4),
                (ip.tos << 4) | ((fl >> 16) as u8 & 0x0f),
                (fl >> 8) as u8,
                fl as u8,
                l[0],
                l[1],
                next,
                ttl,
            ]);
            hdr.extend_from_slice(&s.octets());
            hdr.extend_from_slice(&d.octets());
        }
        _ => unreachable!("the tunnel source has the backend's family"),
    }
    out.extend_from_slice(&hdr);
    if gue {
        let words = match hint {
            None => 0,
            Some(IpAddr::V4(_)) => GUE_HINT_WORDS_V4,
            Some(IpAddr::V6(_)) => GUE_HINT_WORDS_V6,
        };
        let udp_len = ip.ip_len + 12 + hint_bytes.len();
        let sp = gue_source_port(t.hash).to_be_bytes();
        let dp = u16::from_be(w.cfg.gue_port_be).to_be_bytes();
        let ul = (udp_len as u16).to_be_bytes();
        let mut udp = vec![sp[0], sp[1], dp[0], dp[1], ul[0], ul[1], 0, 0];
        udp.extend_from_slice(&[words, inner_proto, 0, 0]);
        udp.extend_from_slice(&hint_bytes);
        if has_checksum(f, ip) {
            let inner = normalized(f, ip);
            let s = pseudo(src, t.dst, PROTO_UDP, udp_len) + sum(&udp) + sum(&inner);
            let c = match !fold(s) {
                0 => 0xffff,
                c => c,
            };
            udp[6..8].copy_from_slice(&c.to_be_bytes());
        }
        out.extend_from_slice(&udp);
    }
    out.extend_from_slice(&f[ip.l2..]);
    let action = if route == Route::Resolved {
        XDP_TX
    } else {
        XDP_PASS
    };
    Expect {
        action,
        output: Some(out),
        counter: t.outcome,
        to: Some(t.dst),
        details,
    }
}

impl Expect {
    pub fn drop(counter: u32) -> Self {
        Self {
            action: XDP_DROP,
            output: None,
            counter,
            to: None,
            details: vec![],
        }
    }

    /// Passed untouched.
    pub fn pass(f: &[u8], counter: u32) -> Self {
        Self {
            action: XDP_PASS,
            output: Some(f.to_vec()),
            counter,
            to: None,
            details: vec![],
        }
    }

    /// Adds detail counter `c` (counted before whatever follows).
    pub fn with(mut self, c: u32) -> Self {
        self.details.insert(0, c);
        self
    }
}
