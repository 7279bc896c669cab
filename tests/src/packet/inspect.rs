//! Fields read back out of built IP packets.

use anycast_common::hash;

/// TOS byte of an IPv4 packet, or traffic class of an IPv6 packet.
pub fn tos_of(ip: &[u8]) -> u8 {
    match ip[0] >> 4 {
        4 => ip[1],
        6 => (ip[0] << 4) | (ip[1] >> 4),
        v => panic!("not an IP packet (version {v})"),
    }
}

/// The flow hash the contract prescribes for an IP packet carrying TCP/UDP (computed from the
/// packet's bytes with `anycast_common::hash`, the shared definition).
pub fn flow_hash(seed: u32, ip: &[u8]) -> u32 {
    match ip[0] >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let l4 = &ip[ihl..];
            let ports = u32::from_le_bytes([l4[0], l4[1], l4[2], l4[3]]);
            let src = hash::addr_word_v4(ip[12..16].try_into().expect("4 bytes"));
            let dst = hash::addr_word_v4(ip[16..20].try_into().expect("4 bytes"));
            hash::flow_hash_v4(seed, src, dst, ports, ip[9])
        }
        6 => {
            let l4 = &ip[40..];
            let ports = u32::from_le_bytes([l4[0], l4[1], l4[2], l4[3]]);
            let src = hash::addr_words_v6(ip[8..24].try_into().expect("16 bytes"));
            let dst = hash::addr_words_v6(ip[24..40].try_into().expect("16 bytes"));
            hash::flow_hash_v6(seed, &src, &dst, ports, ip[6])
        }
        v => panic!("not an IP packet (version {v})"),
    }
}

/// Length of the IP packet at the start of `ip` according to its own header (total length /
/// 40 + payload length), i.e. without any Ethernet trailer after it.
pub fn ip_len(ip: &[u8]) -> usize {
    match ip[0] >> 4 {
        4 => usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        6 => 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
        v => panic!("not an IP packet (version {v})"),
    }
}

/// True for an IPv4 packet carrying UDP whose checksum field is 0.
pub fn is_v4_udp_without_checksum(ip: &[u8]) -> bool {
    if ip[0] >> 4 != 4 || ip[9] != 17 {
        return false;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    ip[ihl + 6] == 0 && ip[ihl + 7] == 0
}
