//! Tunnel packets (IPIP, GUE) and the encapsulated frames the program must emit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header};

use super::{
    ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, Ip, OUTER_TTL, V4, V6, cat, eth, ip_len,
    is_v4_udp_without_checksum, tos_of,
};

/// Destination of an outer header.
#[derive(Clone, Copy, Debug)]
pub enum Outer {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
    },
    /// `flow_label` is what the program must write: `hash::flow_label(flow hash)`.
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        flow_label: u32,
    },
}

/// GUE parameters of an encapsulation.
#[derive(Clone, Copy, Debug)]
pub struct Gue {
    pub src_port: u16,
    pub dst_port: u16,
}

fn inner_proto(inner: &[u8]) -> u8 {
    match inner[0] >> 4 {
        4 => 4,
        6 => 41,
        v => panic!("not an IP packet (version {v})"),
    }
}

fn outer_header(
    outer: Outer,
    tos: u8,
    proto: u8,
    payload: &[u8],
    gue: Option<Gue>,
    udp_zero: bool,
) -> Vec<u8> {
    let len = u16::try_from(payload.len() + gue.map_or(0, |_| 8)).expect("fits");
    let next = IpNumber(if gue.is_some() { 17 } else { proto });
    let ip = match outer {
        Outer::V4 { src, dst } => {
            let mut ip = Ipv4Header::new(len, OUTER_TTL, next, src.octets(), dst.octets())
                .expect("outer IPv4");
            ip.dscp = IpDscp::try_new(tos >> 2).expect("dscp");
            ip.ecn = IpEcn::try_new(tos & 3).expect("ecn");
            ip.identification = 0;
            ip.dont_fragment = true;
            ip.header_checksum = ip.calc_header_checksum();
            Ip::V4(ip)
        }
        Outer::V6 {
            src,
            dst,
            flow_label,
        } => Ip::V6(Ipv6Header {
            traffic_class: tos,
            flow_label: Ipv6FlowLabel::try_new(flow_label).expect("flow label"),
            payload_length: len,
            next_header: next,
            hop_limit: OUTER_TTL,
            source: src.octets(),
            destination: dst.octets(),
        }),
    };
    let mut out = ip.to_bytes();
    if let Some(g) = gue {
        let mut u = ip.udp(g.src_port, g.dst_port, payload);
        if udp_zero {
            u.checksum = 0;
        }
        out.extend_from_slice(&u.to_bytes());
    }
    out
}

/// The frame the program must emit for `input_frame` (with an optional VLAN tag, which is
/// removed) encapsulated towards `outer`, with Ethernet addresses `dst_mac`/`src_mac`:
/// Ethernet + outer IP [+ UDP + GUE] + the inner IP packet as received + any Ethernet trailer.
pub fn encapsulated(
    input_frame: &[u8],
    outer: Outer,
    gue: Option<Gue>,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
) -> Vec<u8> {
    let l3 = l3_offset(input_frame);
    let rest = &input_frame[l3..];
    let n = ip_len(rest);
    let (inner, trailer) = rest.split_at(n);
    let proto = inner_proto(inner);
    let tos = tos_of(inner);
    let payload = match gue {
        // draft-ietf-intarea-gue section 3.1: variant 0, C=0, Hlen=0, Proto/ctype = inner protocol.
        Some(_) => cat(&[&[0x00, proto, 0x00, 0x00], inner]),
        None => inner.to_vec(),
    };
    let udp_zero = gue.is_some() && is_v4_udp_without_checksum(inner);
    let hdr = outer_header(outer, tos, proto, &payload, gue, udp_zero);
    let ethertype = match outer {
        Outer::V4 { .. } => ETH_P_IP,
        Outer::V6 { .. } => ETH_P_IPV6,
    };
    eth(
        dst_mac,
        src_mac,
        None,
        ethertype,
        &cat(&[&hdr, &payload, trailer]),
    )
}

/// Outer destination address of an encapsulated frame (no VLAN tag); `None` for a frame that is
/// not IP or too short.
pub fn outer_dst(frame: &[u8]) -> Option<IpAddr> {
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        ETH_P_IP => Some(IpAddr::from(<[u8; 4]>::try_from(frame.get(30..34)?).ok()?)),
        ETH_P_IPV6 => Some(IpAddr::from(<[u8; 16]>::try_from(frame.get(38..54)?).ok()?)),
        _ => None,
    }
}

/// [`outer_dst`] of a frame that must have an outer IPv4 header.
pub fn outer_dst_v4(frame: &[u8]) -> Ipv4Addr {
    match outer_dst(frame) {
        Some(IpAddr::V4(a)) => a,
        other => panic!("expected an outer IPv4 header, outer destination {other:?}"),
    }
}

/// Offset of the IP header in a frame with at most one VLAN tag.
pub fn l3_offset(frame: &[u8]) -> usize {
    if u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_8021Q {
        18
    } else {
        14
    }
}

/// IPv4 tunnel packet (IPIP / 6in4) carrying `inner`.
pub fn ipip_v4(src: Ipv4Addr, dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    V4::new(src, dst).raw(inner_proto(inner), inner)
}

/// IPv6 tunnel packet (4in6 / 6in6) carrying `inner`.
pub fn ipip_v6(src: Ipv6Addr, dst: Ipv6Addr, inner: &[u8]) -> Vec<u8> {
    V6::new(src, dst).raw(inner_proto(inner), inner)
}

/// GUE header variant 0 with `hlen` words of option bytes (zeros), protocol of `inner`.
pub fn gue_v0(inner: &[u8], hlen_words: u8) -> Vec<u8> {
    let mut g = vec![hlen_words & 0x1f, inner_proto(inner), 0, 0];
    g.extend(std::iter::repeat_n(0u8, usize::from(hlen_words) * 4));
    g.extend_from_slice(inner);
    g
}
