//! Packet builders for the fixtures: inputs, and the expected outputs computed independently of
//! the XDP program (headers and checksums come from `etherparse`, not from the program's code).
//!
//! Everything returns plain `Vec<u8>` so a fixture can cut, pad or corrupt bytes at any layer.
//! Builders panic on impossible values (a test's own mistake), they never return errors.
//!
//! This module: Ethernet, IPv4/IPv6 headers, TCP/UDP packets. [`inspect`]: reading fields back
//! out of built packets; [`encap`]: tunnel packets and the expected encapsulated frames;
//! [`test_run`]: the BPF_PROG_TEST_RUN context and failure dumps. All re-exported here.

mod encap;
mod icmp;
mod inspect;
mod test_run;

pub use encap::*;
pub use icmp::*;
pub use inspect::*;
pub use test_run::*;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{
    EtherType, Ethernet2Header, IpDscp, IpEcn, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options,
    Ipv6FlowLabel, Ipv6Header, SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};

/// MAC of the router that sends traffic to the edge (source MAC of every input frame).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
/// MAC of the edge's own interface (destination MAC of every input frame).
pub const EDGE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;

/// TCP header flag bits (RFC 9293, section 3.1), for segments built byte by byte.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Outer TTL / hop limit the program writes (contract).
pub const OUTER_TTL: u8 = 64;

/// An IPv4 header under construction; `tcp`/`udp`/`raw` finish it into IP packet bytes.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Whole TOS byte (DSCP << 2 | ECN).
    pub tos: u8,
    pub ttl: u8,
    pub identification: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// In 8-byte units.
    pub fragment_offset: u16,
    /// Raw option bytes, a multiple of 4 (IHL = 5 + len/4).
    pub options: Vec<u8>,
}

impl V4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self {
            src,
            dst,
            tos: 0,
            ttl: 61,
            identification: 0x1234,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
            options: Vec::new(),
        }
    }

    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    pub fn fragment(mut self, more_fragments: bool, offset_units: u16) -> Self {
        self.more_fragments = more_fragments;
        self.dont_fragment = false;
        self.fragment_offset = offset_units;
        self
    }

    fn header(&self, proto: u8, payload_len: usize) -> Ipv4Header {
        let mut h = Ipv4Header::new(
            u16::try_from(payload_len).expect("payload fits"),
            self.ttl,
            IpNumber(proto),
            self.src.octets(),
            self.dst.octets(),
        )
        .expect("valid IPv4 header");
        h.dscp = IpDscp::try_new(self.tos >> 2).expect("dscp");
        h.ecn = IpEcn::try_new(self.tos & 3).expect("ecn");
        h.identification = self.identification;
        h.dont_fragment = self.dont_fragment;
        h.more_fragments = self.more_fragments;
        h.fragment_offset = IpFragOffset::try_new(self.fragment_offset).expect("frag offset");
        h.options = Ipv4Options::try_from(&self.options[..])
            .expect("options are a multiple of 4 bytes, at most 40");
        h.total_len = u16::try_from(h.header_len() + payload_len).expect("total length fits");
        h.header_checksum = h.calc_header_checksum();
        h
    }

    /// IPv4 + TCP (data offset 5, flags ACK|PSH, valid checksum).
    pub fn tcp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        tcp_packet(|len| Ip::V4(self.header(6, len)), sport, dport, payload)
    }

    /// IPv4 + UDP with a valid checksum.
    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        udp_packet(|len| Ip::V4(self.header(17, len)), sport, dport, payload)
    }

    /// IPv4 + UDP with checksum 0 ("no checksum", RFC 768).
    pub fn udp_no_checksum(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let ip = self.header(17, 8 + payload.len());
        let u = UdpHeader::without_ipv4_checksum(sport, dport, payload.len()).expect("udp");
        cat(&[&ip.to_bytes(), &u.to_bytes(), payload])
    }

    /// IPv4 header with protocol `proto` followed by `payload` as is (tunnels, ICMP, cut L4).
    pub fn raw(&self, proto: u8, payload: &[u8]) -> Vec<u8> {
        let ip = self.header(proto, payload.len());
        cat(&[&ip.to_bytes(), payload])
    }
}

/// An IPv6 header under construction.
#[derive(Clone, Debug)]
pub struct V6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
}

impl V6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self {
            src,
            dst,
            traffic_class: 0,
            flow_label: 0x12345,
            hop_limit: 61,
        }
    }

    pub fn traffic_class(mut self, tc: u8) -> Self {
        self.traffic_class = tc;
        self
    }

    fn header(&self, next: u8, payload_len: usize) -> Ipv6Header {
        Ipv6Header {
            traffic_class: self.traffic_class,
            flow_label: Ipv6FlowLabel::try_new(self.flow_label).expect("flow label"),
            payload_length: u16::try_from(payload_len).expect("payload fits"),
            next_header: IpNumber(next),
            hop_limit: self.hop_limit,
            source: self.src.octets(),
            destination: self.dst.octets(),
        }
    }

    /// IPv6 + TCP (data offset 5, flags ACK|PSH, valid checksum).
    pub fn tcp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        tcp_packet(|len| Ip::V6(self.header(6, len)), sport, dport, payload)
    }

    /// IPv6 + UDP with a valid checksum.
    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        udp_packet(|len| Ip::V6(self.header(17, len)), sport, dport, payload)
    }

    /// IPv6 header with next header `next` followed by `payload` as is.
    pub fn raw(&self, next: u8, payload: &[u8]) -> Vec<u8> {
        let ip = self.header(next, payload.len());
        cat(&[&ip.to_bytes(), payload])
    }
}

/// An IP header of either family, so that the transport builders are written once.
pub(crate) enum Ip {
    V4(Ipv4Header),
    V6(Ipv6Header),
}

impl Ip {
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        match self {
            Ip::V4(h) => h.to_bytes().to_vec(),
            Ip::V6(h) => h.to_bytes().to_vec(),
        }
    }

    /// A UDP header with the checksum over this IP header's pseudo-header.
    pub(crate) fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> UdpHeader {
        match self {
            Ip::V4(h) => UdpHeader::with_ipv4_checksum(sport, dport, h, payload),
            Ip::V6(h) => UdpHeader::with_ipv6_checksum(sport, dport, h, payload),
        }
        .expect("udp")
    }
}

/// `ip(payload length)` + TCP (data offset 5, flags ACK|PSH, valid checksum) + `payload`.
fn tcp_packet(ip: impl FnOnce(usize) -> Ip, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = TcpHeader::new(sport, dport, 0x0102_0304, 0xfaf0);
    t.acknowledgment_number = 0x0a0b_0c0d;
    t.ack = true;
    t.psh = true;
    let ip = ip(t.header_len() + payload.len());
    t.checksum = match &ip {
        Ip::V4(h) => t.calc_checksum_ipv4(h, payload),
        Ip::V6(h) => t.calc_checksum_ipv6(h, payload),
    }
    .expect("tcp checksum");
    cat(&[&ip.to_bytes(), &t.to_bytes(), payload])
}

/// `ip(payload length)` + UDP with a valid checksum + `payload`.
fn udp_packet(ip: impl FnOnce(usize) -> Ip, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ip = ip(8 + payload.len());
    let u = ip.udp(sport, dport, payload);
    cat(&[&ip.to_bytes(), &u.to_bytes(), payload])
}

/// An IP packet from `src` to `dst` (one family) carrying TCP (as [`V4::tcp`]) or UDP (as
/// [`V4::udp`]), for tests that build packets from a flow's addresses.
pub fn l4_packet(proto: u8, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let ip = |len| match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ip::V4(V4::new(s, d).header(proto, len)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ip::V6(V6::new(s, d).header(proto, len)),
        _ => panic!("{src} -> {dst}: addresses of two families"),
    };
    match proto {
        6 => tcp_packet(ip, src.port(), dst.port(), payload),
        17 => udp_packet(ip, src.port(), dst.port(), payload),
        other => panic!("protocol {other} is neither TCP nor UDP"),
    }
}

/// Concatenates byte slices.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

/// An Ethernet frame: `dst`, `src`, optional single 802.1Q tag (VLAN id), `ethertype`, payload.
pub fn eth(
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + payload.len());
    match vlan {
        None => {
            let h = Ethernet2Header {
                source: src,
                destination: dst,
                ether_type: EtherType(ethertype),
            };
            out.extend_from_slice(&h.to_bytes());
        }
        Some(id) => {
            let h = Ethernet2Header {
                source: src,
                destination: dst,
                ether_type: EtherType(ETH_P_8021Q),
            };
            out.extend_from_slice(&h.to_bytes());
            let tag = SingleVlanHeader {
                pcp: VlanPcp::try_new(3).expect("pcp"),
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(id).expect("vlan id"),
                ether_type: EtherType(ethertype),
            };
            out.extend_from_slice(&tag.to_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// An input frame from the router to the edge carrying `ip` (ethertype from the IP version).
pub fn frame(vlan: Option<u16>, ip: &[u8]) -> Vec<u8> {
    eth(EDGE_MAC, ROUTER_MAC, vlan, ethertype_of(ip), ip)
}

/// Ethertype of an IP packet from its version nibble.
pub fn ethertype_of(ip: &[u8]) -> u16 {
    match ip.first().map(|b| b >> 4) {
        Some(4) => ETH_P_IP,
        Some(6) => ETH_P_IPV6,
        v => panic!("not an IP packet (version {v:?})"),
    }
}

/// A minimal ARP request (who-has `target` tell `sender`), broadcast.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&ROUTER_MAC);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    eth([0xff; 6], ROUTER_MAC, None, ETH_P_ARP, &arp)
}

/// Pads a frame with zero bytes to `len` (Ethernet minimum-size padding after the IP packet).
pub fn pad_to(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    if frame.len() < len {
        frame.resize(len, 0);
    }
    frame
}
