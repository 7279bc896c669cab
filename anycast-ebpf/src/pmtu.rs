//! Path MTU: a VIP packet that does not fit the route to its backend once encapsulated is
//! answered, to the client, with ICMP "fragmentation needed" (IPv4, RFC 792 / RFC 1191) or ICMPv6
//! "packet too big" (RFC 4443 / RFC 8201), carrying the MTU the client can use: the route's MTU
//! less the tunnel headers. The client's stack lowers its path MTU (TCP its segment size) and
//! sends again, smaller; without the answer, a client whose path carries 1500 bytes everywhere
//! uploads into a black hole.
//!
//! The frame is rewritten in place into the answer and sent back out of the interface it came in
//! by (`XDP_TX`): Ethernet addresses swapped, a new IP header from the VIP (the packet's
//! destination) to the client, the ICMP header, and the first [`QUOTE`] bytes of the packet as
//! the quote (its IP header and 108 bytes more: RFC 792 asks for 8, RFC 1812 and RFC 4443 for as
//! many as fit; 128 keep the answer small). IPv4 packets without DF get the same answer (they
//! would be fragmented by a router; here the outer header must not be, so the client is asked to
//! send smaller). At most [`PTB_PER_SECOND`] answers per CPU per second; past that, and for
//! VLAN-tagged frames and second chances, the packet is dropped and counted `oversize` as before.

use anycast_common::{ConnGuard, FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6, counter};
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};

use crate::{
    Verdict,
    csum::{add_addr, add32, be16, finish, pair},
    maps,
    packet::{window, word, word_at},
    parse::{ETH_LEN, IPV4_LEN, IPV6_LEN, Ip},
};

/// Bytes of the offending packet quoted in the answer (from its IP header on).
pub const QUOTE: usize = 128;
const ICMP_LEN: usize = 8;
/// Answers per CPU per second.
pub const PTB_PER_SECOND: u64 = 1000;
/// The smallest MTU an IPv6 link may have (RFC 8200): never announce less.
const IPV6_MIN_MTU: u32 = 1280;
/// RFC 1191's smallest sensible plateau for IPv4.
const IPV4_MIN_MTU: u32 = 576;

/// Per-CPU fixed one-second window on answers.
#[inline(always)]
fn allow() -> bool {
    let Some(g) = maps::PTB_GUARD.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    let g: &mut ConnGuard = unsafe { &mut *g };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(g.window_start_ns) >= 1_000_000_000 {
        g.window_start_ns = now;
        g.inserts = 0;
    }
    if g.inserts >= PTB_PER_SECOND {
        return false;
    }
    g.inserts += 1;
    true
}

/// Answers the packet `ip` (still as received) with "too big", announcing `mtu` (the route MTU
/// less the tunnel headers). A BPF subprogram of its own, called by the top level only.
#[inline(never)]
pub fn answer(ctx: &XdpContext, ip: &Ip, mtu: u32) -> Verdict {
    // Untagged frames only (a tagged one would need its tag back), and a packet at least as long
    // as the quote (an oversized one always is).
    if ip.l2_len != ETH_LEN || (ip.ip_len as usize) < QUOTE || !allow() {
        return Verdict::drop(counter::OVERSIZE);
    }
    let v4 = ip.family == FAMILY_V4;
    let ip_hdr = if v4 { IPV4_LEN } else { IPV6_LEN };
    let new_head = ip_hdr + ICMP_LEN;
    // The original MACs (destination: this host; source: the router), read before the head moves.
    let (Some(m0), Some(m1), Some(m2)) = (word_at(ctx, 0), word_at(ctx, 4), word_at(ctx, 8)) else {
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    // The quote stays where it is: the new IP and ICMP headers go in front of it, and the frame
    // ends after it.
    let frame_len = ctx.data_end() - ctx.data();
    let new_len = (ETH_LEN + new_head + QUOTE) as i32;
    // SAFETY: ctx is the program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(new_head as i32)) } != 0 {
        return Verdict::drop(counter::INTERNAL_ERROR);
    }
    let grown = (frame_len + new_head) as i32;
    // SAFETY: as above; shrinking is always allowed down to the Ethernet header.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len - grown) } != 0 {
        return Verdict::drop(counter::INTERNAL_ERROR);
    }
    // Swap the MACs: [dst = old src, src = old dst].
    let Some(mut eth) = window::<ETH_LEN>(ctx, 0) else {
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    let (old_dst, old_src) = ([m0, m1 & 0xffff], [(m1 >> 16) | (m2 << 16), m2 >> 16]);
    eth.put_word::<0>(old_src[0]);
    eth.put_half::<4>(old_src[1] as u16);
    eth.put_half::<6>(old_dst[0] as u16);
    eth.put_word::<8>((old_dst[0] >> 16) | (old_dst[1] << 16));
    let q = ETH_LEN + new_head;
    // The quote's checksum sum, word by word (bounded: QUOTE / 4 words).
    let Some(quote) = window::<QUOTE>(ctx, q) else {
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    let mut quote_sum = 0u64;
    let mut i = 0;
    while i < QUOTE / 4 {
        let Some(w) = quote.word(i) else {
            return Verdict::drop(counter::INTERNAL_ERROR);
        };
        quote_sum = add32(quote_sum, w);
        i += 1;
    }
    if v4 {
        let mtu = mtu.max(IPV4_MIN_MTU);
        let Some(mut h) = window::<{ ETH_LEN + IPV4_LEN + ICMP_LEN }>(ctx, 0) else {
            return Verdict::drop(counter::INTERNAL_ERROR);
        };
        let total = (IPV4_LEN + ICMP_LEN + QUOTE) as u16;
        let t = total.to_be_bytes();
        // From the VIP (the packet's destination) to the client (its source).
        let (src, dst) = (ip.dst[0], ip.src[0]);
        let c =
            finish(pair(0x45, 0) + be16(total) + pair(64, PROTO_ICMP) + add32(add32(0, src), dst));
        h.put_half::<12>(u16::from_le_bytes(0x0800u16.to_be_bytes()));
        h.put_word::<ETH_LEN>(word([0x45, 0, t[0], t[1]]));
        h.put_word::<{ ETH_LEN + 4 }>(0);
        h.put_word::<{ ETH_LEN + 8 }>(word([64, PROTO_ICMP, c[0], c[1]]));
        h.put_word::<{ ETH_LEN + 12 }>(src);
        h.put_word::<{ ETH_LEN + 16 }>(dst);
        let m = (mtu as u16).to_be_bytes();
        let c = finish(pair(3, 4) + pair(m[0], m[1]) + quote_sum);
        h.put_word::<{ ETH_LEN + IPV4_LEN }>(word([3, 4, c[0], c[1]]));
        h.put_word::<{ ETH_LEN + IPV4_LEN + 4 }>(word([0, 0, m[0], m[1]]));
    } else {
        let mtu = mtu.max(IPV6_MIN_MTU);
        let Some(mut h) = window::<{ ETH_LEN + IPV6_LEN + ICMP_LEN }>(ctx, 0) else {
            return Verdict::drop(counter::INTERNAL_ERROR);
        };
        let plen = (ICMP_LEN + QUOTE) as u16;
        let p = plen.to_be_bytes();
        let (src, dst) = (ip.dst, ip.src);
        h.put_half::<12>(u16::from_le_bytes(0x86ddu16.to_be_bytes()));
        h.put_word::<ETH_LEN>(word([0x60, 0, 0, 0]));
        h.put_word::<{ ETH_LEN + 4 }>(word([p[0], p[1], PROTO_ICMPV6, 64]));
        h.put_addr::<{ ETH_LEN + 8 }>(&src);
        h.put_addr::<{ ETH_LEN + 24 }>(&dst);
        let m = mtu.to_be_bytes();
        // Pseudo-header (addresses, upper-layer length, next header), ICMPv6 header, quote.
        let sum = add_addr(add_addr(0, &src), &dst)
            + be16(plen)
            + pair(0, PROTO_ICMPV6)
            + pair(2, 0)
            + pair(m[0], m[1])
            + pair(m[2], m[3])
            + quote_sum;
        let c = finish(sum);
        h.put_word::<{ ETH_LEN + IPV6_LEN }>(word([2, 0, c[0], c[1]]));
        h.put_word::<{ ETH_LEN + IPV6_LEN + 4 }>(word([m[0], m[1], m[2], m[3]]));
    }
    Verdict::new(xdp_action::XDP_TX, counter::ICMP_TOO_BIG)
}
