//! Ethernet, one 802.1Q tag, IPv4 (honouring IHL) and IPv6 up to the transport header.
//!
//! Policy for what is not a plain flow (each counted, each passed untouched, since none of it can
//! be steered by ports and the host's own traffic may look like it):
//! - IPv4 fragments (MF set or non-zero offset): `fragment`. Non-first fragments carry no ports,
//!   so hashing them would split a datagram across backends.
//! - IPv6 with an extension header before TCP/UDP (hop-by-hop, routing, fragment, destination
//!   options, AH, mobility, HIP, shim6, experimental): `ipv6_ext`. The fragment header counts as
//!   `fragment`. Internet paths drop most extension headers (RFC 7872); walking them would cost
//!   every IPv6 packet a bounded loop for traffic that rarely exists.
//! - Stacked VLAN tags (QinQ) and non-IP ethertypes: `pass`.
//! - Anything shorter than its headers claim: `parse_error`.

use anycast_common::{FAMILY_V4, FAMILY_V6, counter};
use aya_ebpf::programs::XdpContext;

use crate::packet::{u8_at, u16_be_at, word_at};

// Header sizes from network-types' exact header layouts; the fields themselves are read as raw
// bytes at known offsets (style: never read an enum out of packet memory).
pub const ETH_LEN: usize = network_types::eth::EthHdr::LEN;
pub const VLAN_LEN: usize = network_types::vlan::VlanHdr::LEN;
pub const IPV4_LEN: usize = network_types::ip::Ipv4Hdr::LEN;
pub const IPV6_LEN: usize = network_types::ip::Ipv6Hdr::LEN;
pub const UDP_LEN: usize = network_types::udp::UdpHdr::LEN;
pub const TCP_LEN: usize = network_types::tcp::TcpHdr::LEN;
const _: () = assert!(ETH_LEN == 14 && VLAN_LEN == 4 && IPV4_LEN == 20 && IPV6_LEN == 40);
const _: () = assert!(UDP_LEN == 8 && TCP_LEN == 20);

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

/// An IP packet located in the frame.
pub struct Ip {
    /// Ethernet header plus the VLAN tag, if any.
    pub l2_len: usize,
    pub family: u8,
    /// IP header length (IHL * 4, or 40).
    pub l3_len: usize,
    /// Length of the IP packet by its own header (the frame may carry Ethernet padding after it).
    pub ip_len: u32,
    pub proto: u8,
    /// IPv4 TOS or IPv6 traffic class.
    pub tos: u8,
    /// Addresses as little-endian words of their bytes; IPv4 uses index 0.
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

impl Ip {
    pub const EMPTY: Self = Self {
        l2_len: 0,
        family: 0,
        l3_len: 0,
        ip_len: 0,
        proto: 0,
        tos: 0,
        src: [0; 4],
        dst: [0; 4],
    };

    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        self.l2_len + self.l3_len
    }
}

/// Result of parsing: an IP packet, or the counter under which the packet passes untouched.
pub type Parse = Result<Ip, u32>;

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parse {
    let mut l2_len = ETH_LEN;
    let mut ethertype = u16_be_at(ctx, 12).ok_or(counter::PARSE_ERROR)?;
    if ethertype == ETH_P_8021Q {
        ethertype = u16_be_at(ctx, ETH_LEN + 2).ok_or(counter::PARSE_ERROR)?;
        l2_len += VLAN_LEN;
    }
    match ethertype {
        ETH_P_IP => parse_v4(ctx, l2_len),
        ETH_P_IPV6 => parse_v6(ctx, l2_len),
        _ => Err(counter::PASS),
    }
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l2: usize) -> Parse {
    // The whole fixed header must be present before any field is trusted.
    let src = word_at(ctx, l2 + 12).ok_or(counter::PARSE_ERROR)?;
    let dst = word_at(ctx, l2 + 16).ok_or(counter::PARSE_ERROR)?;
    let vihl = u8_at(ctx, l2).ok_or(counter::PARSE_ERROR)?;
    let l3_len = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || l3_len < IPV4_LEN {
        return Err(counter::PARSE_ERROR);
    }
    let tot_len = u16_be_at(ctx, l2 + 2).ok_or(counter::PARSE_ERROR)?;
    if (tot_len as usize) < l3_len || l2 + tot_len as usize > frame_len(ctx) {
        return Err(counter::PARSE_ERROR);
    }
    let frags = u16_be_at(ctx, l2 + 6).ok_or(counter::PARSE_ERROR)?;
    if frags & 0x3fff != 0 {
        return Err(counter::FRAGMENT);
    }
    let tos = u8_at(ctx, l2 + 1).ok_or(counter::PARSE_ERROR)?;
    let proto = u8_at(ctx, l2 + 9).ok_or(counter::PARSE_ERROR)?;
    Ok(Ip {
        l2_len: l2,
        family: FAMILY_V4,
        l3_len,
        ip_len: u32::from(tot_len),
        proto,
        tos,
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
    })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l2: usize) -> Parse {
    let b = crate::packet::bytes_at::<8>(ctx, l2).ok_or(counter::PARSE_ERROR)?;
    // Reading the last address word first proves the whole fixed header is in the frame.
    let d3 = word_at(ctx, l2 + 36).ok_or(counter::PARSE_ERROR)?;
    if b[0] >> 4 != 6 {
        return Err(counter::PARSE_ERROR);
    }
    let payload_len = u16::from_be_bytes([b[4], b[5]]);
    // Zero payload length means a jumbogram (RFC 2675): not on the paths we serve.
    if payload_len == 0 || l2 + IPV6_LEN + payload_len as usize > frame_len(ctx) {
        return Err(counter::PARSE_ERROR);
    }
    let next = b[6];
    match next {
        44 => return Err(counter::FRAGMENT),
        0 | 43 | 51 | 60 | 135 | 139 | 140 | 253 | 254 => return Err(counter::IPV6_EXT),
        _ => {}
    }
    let s = [
        word_at(ctx, l2 + 8).ok_or(counter::PARSE_ERROR)?,
        word_at(ctx, l2 + 12).ok_or(counter::PARSE_ERROR)?,
        word_at(ctx, l2 + 16).ok_or(counter::PARSE_ERROR)?,
        word_at(ctx, l2 + 20).ok_or(counter::PARSE_ERROR)?,
    ];
    let d = [
        word_at(ctx, l2 + 24).ok_or(counter::PARSE_ERROR)?,
        word_at(ctx, l2 + 28).ok_or(counter::PARSE_ERROR)?,
        word_at(ctx, l2 + 32).ok_or(counter::PARSE_ERROR)?,
        d3,
    ];
    Ok(Ip {
        l2_len: l2,
        family: FAMILY_V6,
        l3_len: IPV6_LEN,
        ip_len: u32::from(payload_len) + IPV6_LEN as u32,
        proto: next,
        tos: (b[0] << 4) | (b[1] >> 4),
        src: s,
        dst: d,
    })
}
