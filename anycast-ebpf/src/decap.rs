//! Decapsulation of IPIP, IPv6-in-IP and GUE packets addressed to this host.
//!
//! Only packets whose outer destination is one of this host's tunnel addresses (`LOCAL_ADDRS`)
//! are tunnel traffic for us; of those, only the ones whose outer source is inside `decap_allow`
//! are stripped. Everything else addressed to us as a tunnel is dropped and counted
//! `decap_refused`: no open relay, no spoofed injection past the host's filters.
//!
//! The L2 header (including a VLAN tag) is kept and moved up against the inner packet, with its
//! ethertype set to the inner family, so the stack sees the inner packet arrive on the same
//! interface and VLAN. The outer UDP checksum of GUE is not verified: the inner transport
//! checksum, which the stack verifies, covers the delivered data.

use anycast_common::{AddrKey, DataplaneConfig, FAMILY_V4, PROTO_IPIP, PROTO_IPV6, PROTO_UDP, counter};
use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, maps::lpm_trie::Key, programs::XdpContext};

use crate::{
    Verdict, maps,
    packet::{addr_bytes, bytes_at, u8_at, u16_be_at, write_at},
    parse::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, Ip, UDP_LEN, VLAN_LEN},
};

/// Is this a tunnel packet addressed to this host? Cheap checks first: the protocol (and GUE
/// port) before the address lookup.
#[inline(always)]
pub fn is_tunnel(ctx: &XdpContext, ip: &Ip, cfg: &DataplaneConfig) -> bool {
    let tunnel = match ip.proto {
        PROTO_IPIP | PROTO_IPV6 => true,
        PROTO_UDP => {
            u16_be_at(ctx, ip.l4_off() + 2).is_some_and(|p| p == u16::from_be(cfg.gue_port_be))
        }
        _ => false,
    };
    if !tunnel {
        return false;
    }
    let key = AddrKey { addr_be: addr_bytes(ip.dst), family: ip.family, _pad: [0; 3] };
    // SAFETY: only presence is tested; the value is not read.
    unsafe { maps::LOCAL_ADDRS.get(&key) }.is_some()
}

#[inline(always)]
fn source_allowed(ip: &Ip) -> bool {
    if ip.family == FAMILY_V4 {
        let key = Key::new(32, ip.src[0].to_le_bytes());
        maps::DECAP_ALLOW_V4.get(&key).is_some()
    } else {
        maps::DECAP_ALLOW_V6.get(&Key::new(128, addr_bytes(ip.src))).is_some()
    }
}

// A BPF subprogram of its own: inlined, its stack slots would add to the caller's 512 bytes.
#[inline(never)]
pub fn decapsulate(ctx: &XdpContext, ip: &Ip) -> Verdict {
    if !source_allowed(ip) {
        return Verdict::drop(counter::DECAP_REFUSED);
    }
    // From here the packet is tunnel traffic for us from a trusted source; a malformed one is
    // dropped rather than handed to the stack as something it is not.
    let (inner_v4, strip) = match ip.proto {
        PROTO_IPIP => (true, ip.l3_len),
        PROTO_IPV6 => (false, ip.l3_len),
        _ => {
            let gue = ip.l4_off() + UDP_LEN;
            let Some(b) = bytes_at::<2>(ctx, gue) else {
                return Verdict::drop(counter::PARSE_ERROR);
            };
            match b[0] >> 6 {
                // GUE variant 0: 4-byte header + hlen words of options; C bit = control message.
                0 if b[0] & 0x20 == 0 => {
                    let hlen = ((b[0] & 0x1f) as usize) * 4;
                    match b[1] {
                        PROTO_IPIP => (true, ip.l3_len + UDP_LEN + 4 + hlen),
                        PROTO_IPV6 => (false, ip.l3_len + UDP_LEN + 4 + hlen),
                        _ => return Verdict::drop(counter::PARSE_ERROR),
                    }
                }
                // GUE variant 1: the inner IP header follows UDP directly.
                1 => (b[0] >> 4 == 4, ip.l3_len + UDP_LEN),
                _ => return Verdict::drop(counter::PARSE_ERROR),
            }
        }
    };
    let l2 = ip.l2_len;
    let Some(version) = u8_at(ctx, l2 + strip) else {
        return Verdict::drop(counter::PARSE_ERROR);
    };
    let expected = if inner_v4 { 4 } else { 6 };
    if version >> 4 != expected {
        return Verdict::drop(counter::PARSE_ERROR);
    }
    let ethertype = if inner_v4 { ETH_P_IP } else { ETH_P_IPV6 }.to_be_bytes();

    // Move the L2 header forward to sit just before the inner packet. strip >= 20 > 18, so the
    // old and new places never overlap.
    let moved = if l2 == ETH_LEN {
        match bytes_at::<ETH_LEN>(ctx, 0) {
            Some(mut h) => {
                h[12] = ethertype[0];
                h[13] = ethertype[1];
                write_at(ctx, strip, h)
            }
            None => None,
        }
    } else {
        match bytes_at::<{ ETH_LEN + VLAN_LEN }>(ctx, 0) {
            Some(mut h) => {
                h[16] = ethertype[0];
                h[17] = ethertype[1];
                write_at(ctx, strip, h)
            }
            None => None,
        }
    };
    if moved.is_none() {
        return Verdict::drop(counter::PARSE_ERROR);
    }
    // SAFETY: ctx is the program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip as i32) } != 0 {
        return Verdict::drop(counter::INTERNAL_ERROR);
    }
    Verdict::pass(counter::DECAP)
}
