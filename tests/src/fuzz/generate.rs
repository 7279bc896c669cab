//! Random packets by category, from the fixture's packet builders: VIP flows (a pool of flows,
//! so that tracking sees second packets), VIP edge cases, ICMP errors, fragments, tunnel
//! packets (inside and outside the allowlist, nested), IPv4 options, IPv6 extension headers,
//! VLAN and QinQ tags, non-IP frames. [`super::craft`] then mutates some of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anycast_common::{PROTO_TCP, PROTO_UDP};

use super::Rng;
use super::world::{ALLOW_V4, ALLOW_V6, VIP4B, VIP4C, VIP6B, World};
use crate::fixture::net;
use crate::packet::{self as p, V4, V6};

/// A client flow of the pool.
#[derive(Clone, Copy, Debug)]
pub struct ClientFlow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

pub struct Generator {
    pub pool: Vec<ClientFlow>,
    /// Fragment ids in use (so later fragments meet their first).
    ids: Vec<u32>,
}

const VIP_PORTS: [u16; 8] = [80, 443, 53, 8443, 4500, 0, 22, 65535];

impl Generator {
    pub fn new(rng: &mut Rng, w: &World) -> Self {
        let pool = (0..512).map(|_| random_flow(rng, w)).collect();
        let ids = (0..8).map(|_| rng.next_u64() as u32).collect();
        Self { pool, ids }
    }

    pub fn flow(&self, rng: &mut Rng) -> ClientFlow {
        self.pool[rng.below(self.pool.len() as u64) as usize]
    }

    pub fn frag_id(&self, rng: &mut Rng) -> u32 {
        self.ids[rng.below(self.ids.len() as u64) as usize]
    }

    /// A flow of the few that fragment, so that later fragments meet their first.
    pub fn frag_flow(&self, rng: &mut Rng) -> ClientFlow {
        self.pool[rng.below(32) as usize]
    }
}

fn random_flow(rng: &mut Rng, w: &World) -> ClientFlow {
    let vip = &w.vips[rng.below(w.vips.len() as u64) as usize];
    let dport = if vip.port == 0 || rng.below(8) == 0 {
        VIP_PORTS[rng.below(VIP_PORTS.len() as u64) as usize]
    } else {
        vip.port
    };
    let proto = if rng.below(10) == 0 {
        PROTO_TCP + PROTO_UDP - vip.proto
    } else {
        vip.proto
    };
    ClientFlow {
        src: client(rng, vip.addr.is_ipv4()),
        dst: vip.addr,
        sport: rng.below(65536) as u16,
        dport,
        proto,
    }
}

pub fn client(rng: &mut Rng, v4: bool) -> IpAddr {
    let r = rng.next_u64();
    if v4 {
        IpAddr::V4(Ipv4Addr::new(
            198,
            18,
            128 | (r as u8 & 0x7f),
            (r >> 8) as u8,
        ))
    } else {
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x100,
            0,
            0,
            0,
            0,
            (r >> 16) as u16,
            r as u16,
        ))
    }
}

/// An address of either family that is no VIP (or is one, now and then, of the other family).
pub fn other_dst(rng: &mut Rng, v4: bool) -> IpAddr {
    match (v4, rng.below(4)) {
        (true, 0) => VIP4B.into(),
        (true, 1) => VIP4C.into(),
        (true, _) => IpAddr::V4(Ipv4Addr::new(203, 0, 113, rng.below(256) as u8)),
        (false, 0) => VIP6B.into(),
        (false, _) => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            rng.below(32) as u16,
        )),
    }
}

pub fn payload(rng: &mut Rng) -> Vec<u8> {
    let n = match rng.below(16) {
        0 => 900 + rng.below(400),
        1..=3 => 0,
        _ => rng.below(160),
    } as usize;
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ 0x5a).collect()
}

/// [`l4`] with a random payload.
pub fn flow_packet(rng: &mut Rng, c: &ClientFlow) -> Vec<u8> {
    let data = payload(rng);
    l4(rng, c, &data)
}

const FLAGS: [u8; 8] = [0x02, 0x12, 0x10, 0x18, 0x04, 0x14, 0x11, 0x00];

/// An IP packet (no L2) of `proto` from `src:sport` to `dst:dport`; TCP with random flags.
pub fn l4(rng: &mut Rng, c: &ClientFlow, data: &[u8]) -> Vec<u8> {
    let mut pkt = match (c.src, c.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let h = V4::new(s, d).tos(rng.below(256) as u8);
            match c.proto {
                PROTO_TCP => h.tcp(c.sport, c.dport, data),
                PROTO_UDP if rng.below(8) == 0 => h.udp_no_checksum(c.sport, c.dport, data),
                PROTO_UDP => h.udp(c.sport, c.dport, data),
                other => h.raw(other, data),
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = V6::new(s, d).traffic_class(rng.below(256) as u8);
            match c.proto {
                PROTO_TCP => h.tcp(c.sport, c.dport, data),
                PROTO_UDP => h.udp(c.sport, c.dport, data),
                other => h.raw(other, data),
            }
        }
        _ => unreachable!("one family"),
    };
    if c.proto == PROTO_TCP {
        let l4 = if c.src.is_ipv4() { 20 } else { 40 };
        pkt[l4 + 13] = FLAGS[rng.below(FLAGS.len() as u64) as usize];
    }
    pkt
}

/// A tunnel source: mostly inside the allowlist.
pub fn tunnel_src(rng: &mut Rng, v4: bool) -> IpAddr {
    let inside = rng.below(5) != 0;
    let host = 1 + rng.below(200) as u8;
    match (v4, inside) {
        (true, true) => {
            let mut o = ALLOW_V4.octets();
            o[3] = host;
            o.into()
        }
        (true, false) => IpAddr::V4(Ipv4Addr::new(198, 18, 6, host)),
        (false, true) => {
            let mut s = ALLOW_V6.segments();
            s[7] = u16::from(host);
            s.into()
        }
        (false, false) => IpAddr::V6(Ipv6Addr::new(0xfd00, 6, 0, 0, 0, 0, 0, u16::from(host))),
    }
}

/// A tunnel destination: mostly this host's own tunnel address.
pub fn tunnel_dst(rng: &mut Rng, v4: bool) -> IpAddr {
    match (v4, rng.below(6) != 0) {
        (true, true) => net::EDGE_V4.into(),
        (false, true) => net::EDGE_V6.into(),
        (true, false) => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9)),
        (false, false) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 9)),
    }
}

/// An IP packet of the outer family carrying `payload` as protocol `proto`, TTL `ttl`.
pub fn ip_raw(src: IpAddr, dst: IpAddr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = V4::new(s, d);
            h.ttl = ttl;
            h.raw(proto, payload)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = V6::new(s, d);
            h.hop_limit = ttl;
            h.raw(proto, payload)
        }
        _ => unreachable!("one family"),
    }
}

pub fn frame(ip: &[u8]) -> Vec<u8> {
    p::frame(None, ip)
}

pub use p::cat;
