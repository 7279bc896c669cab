//! ICMPv4 and ICMPv6 messages (errors with a quote), checksums included.

use std::net::Ipv6Addr;

/// The Internet checksum of `parts` (RFC 1071), as the header carries it.
fn inet_checksum(parts: &[&[u8]]) -> [u8; 2] {
    let mut sum = 0u32;
    for b in parts.iter().flat_map(|p| p.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([b[0], *b.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

/// An ICMPv4 message: type, code, the 4 bytes after the checksum, and the quoted bytes.
pub fn icmp4(ty: u8, code: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
    let mut m = [&[ty, code, 0, 0][..], &rest, quote].concat();
    let c = inet_checksum(&[&m]);
    m[2..4].copy_from_slice(&c);
    m
}

/// An ICMPv6 message from `src` to `dst` (its checksum covers the pseudo-header).
pub fn icmp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut m = [&[ty, code, 0, 0][..], &rest, quote].concat();
    let len = (m.len() as u32).to_be_bytes();
    let c = inet_checksum(&[&src.octets(), &dst.octets(), &len, &[0, 0, 0, 58], &m]);
    m[2..4].copy_from_slice(&c);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_its_checksum_sums_to_zero() {
        let m = icmp4(3, 4, [0, 0, 0x05, 0x78], &[0x45, 0, 0, 28, 1, 2, 3]);
        assert_eq!(inet_checksum(&[&m]), [0, 0]);
        let (s, d) = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
        let m = icmp6(s, d, 2, 0, [0, 0, 5, 0x78], &[0x60, 1, 2]);
        let len = (m.len() as u32).to_be_bytes();
        assert_eq!(
            inet_checksum(&[&s.octets(), &d.octets(), &len, &[0, 0, 0, 58], &m]),
            [0, 0]
        );
    }
}
