//! The model's reading of a frame: Ethernet, at most one 802.1Q tag, IPv4 or IPv6 up to the
//! transport header. Rule throughout the model: only the bytes of the IP packet by its own
//! length are its payload; what follows in the frame (Ethernet padding) is never read as a field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anycast_common::counter;

/// An IP packet found in a frame.
#[derive(Clone, Debug)]
pub struct Ip {
    pub l2: usize,
    pub v4: bool,
    /// IP header length (IHL * 4; 40, or 48 for an IPv6 fragment).
    pub l3: usize,
    /// The packet's length by its own header.
    pub ip_len: usize,
    pub proto: u8,
    pub tos: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
}

impl Ip {
    pub fn l4(&self) -> usize {
        self.l2 + self.l3
    }

    /// End of the IP packet in the frame.
    pub fn end(&self) -> usize {
        self.l2 + self.ip_len
    }

    /// `n` bytes at `off` if they lie inside the IP packet.
    pub fn bytes<'a>(&self, f: &'a [u8], off: usize, n: usize) -> Option<&'a [u8]> {
        (off + n <= self.end()).then(|| &f[off..off + n])
    }
}

/// A fragment: identification and whether it is the first one.
#[derive(Clone, Debug)]
pub struct Frag {
    pub ip: Ip,
    pub id: u32,
    pub first: bool,
}

pub enum Parsed {
    Ip(Ip),
    Fragment(Option<Frag>),
    /// Not ours to parse: passed untouched, under this counter.
    Pass(u32),
}

pub fn be16(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}

fn v4_at(f: &[u8], off: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(f[off], f[off + 1], f[off + 2], f[off + 3]))
}

fn v6_at(f: &[u8], off: usize) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&f[off..off + 16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// IPv6 extension headers (RFC 8200 and the IANA list) other than the fragment header.
const IPV6_EXT: [u8; 9] = [0, 43, 51, 60, 135, 139, 140, 253, 254];

pub fn parse(f: &[u8]) -> Parsed {
    if f.len() < 14 {
        return Parsed::Pass(counter::PARSE_ERROR);
    }
    let (mut l2, mut et) = (14, be16(f, 12));
    if et == 0x8100 {
        if f.len() < 18 {
            return Parsed::Pass(counter::PARSE_ERROR);
        }
        (l2, et) = (18, be16(f, 16));
    }
    match et {
        0x0800 => parse_v4(f, l2),
        0x86dd => parse_v6(f, l2),
        _ => Parsed::Pass(counter::PASS),
    }
}

fn parse_v4(f: &[u8], l2: usize) -> Parsed {
    if f.len() < l2 + 20 {
        return Parsed::Pass(counter::PARSE_ERROR);
    }
    let l3 = usize::from(f[l2] & 0x0f) * 4;
    let tot = usize::from(be16(f, l2 + 2));
    if f[l2] >> 4 != 4 || l3 < 20 || tot < l3 || l2 + tot > f.len() {
        return Parsed::Pass(counter::PARSE_ERROR);
    }
    let ip = Ip {
        l2,
        v4: true,
        l3,
        ip_len: tot,
        proto: f[l2 + 9],
        tos: f[l2 + 1],
        src: v4_at(f, l2 + 12),
        dst: v4_at(f, l2 + 16),
    };
    let frag = be16(f, l2 + 6);
    if frag & 0x3fff != 0 {
        let id = u32::from(be16(f, l2 + 4));
        return Parsed::Fragment(Some(Frag {
            ip,
            id,
            first: frag & 0x1fff == 0,
        }));
    }
    Parsed::Ip(ip)
}

fn parse_v6(f: &[u8], l2: usize) -> Parsed {
    if f.len() < l2 + 40 || f[l2] >> 4 != 6 {
        return Parsed::Pass(counter::PARSE_ERROR);
    }
    let plen = usize::from(be16(f, l2 + 4));
    // Zero: a jumbogram (RFC 2675), not on the paths served.
    if plen == 0 || l2 + 40 + plen > f.len() {
        return Parsed::Pass(counter::PARSE_ERROR);
    }
    let next = f[l2 + 6];
    let mut ip = Ip {
        l2,
        v4: false,
        l3: 40,
        ip_len: 40 + plen,
        proto: next,
        tos: (f[l2] << 4) | (f[l2 + 1] >> 4),
        src: v6_at(f, l2 + 8),
        dst: v6_at(f, l2 + 24),
    };
    if next == 44 {
        // The fragment header must lie inside the packet.
        if plen < 8 {
            return Parsed::Fragment(None);
        }
        let h = l2 + 40;
        ip.proto = f[h];
        ip.l3 = 48;
        let id = u32::from_be_bytes([f[h + 4], f[h + 5], f[h + 6], f[h + 7]]);
        let first = be16(f, h + 2) >> 3 == 0;
        return Parsed::Fragment(Some(Frag { ip, id, first }));
    }
    if IPV6_EXT.contains(&next) {
        return Parsed::Pass(counter::IPV6_EXT);
    }
    Parsed::Ip(ip)
}

/// Address bytes as the maps' keys hold them (IPv4 in the first four).
pub fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&v.octets());
            o
        }
        IpAddr::V6(v) => v.octets(),
    }
}

/// The flow hash of the shared definition (`anycast_common::hash`), from addresses and the
/// first transport word as it sits in the packet.
pub fn flow_hash(seed: u32, src: IpAddr, dst: IpAddr, ports: [u8; 4], proto: u8) -> u32 {
    use anycast_common::hash;
    let p = u32::from_le_bytes(ports);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => hash::flow_hash_v4(
            seed,
            hash::addr_word_v4(s.octets()),
            hash::addr_word_v4(d.octets()),
            p,
            proto,
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => hash::flow_hash_v6(
            seed,
            &hash::addr_words_v6(s.octets()),
            &hash::addr_words_v6(d.octets()),
            p,
            proto,
        ),
        _ => unreachable!("a flow has one family"),
    }
}
