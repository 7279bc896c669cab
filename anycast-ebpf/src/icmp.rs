//! ICMP errors about VIP flows, delivered to the flow's backend.
//!
//! A backend answers a client from the VIP; a router on the way back that cannot forward the
//! answer (too big for its next link, no route, TTL exceeded) sends its ICMP error to the VIP, and
//! BGP carries that to an edge, not to the backend whose socket needs it (path MTU discovery
//! fails without it: the backend keeps sending too-big packets into a black hole). The error
//! quotes the packet it is about: its IP header and at least the first 8 bytes after it (the
//! ports). Steered here:
//! - ICMPv4 destination unreachable (3, "fragmentation needed" among them) and time exceeded
//!   (11); ICMPv6 destination unreachable (1), packet too big (2) and time exceeded (3);
//! - addressed to the address the quoted packet came from, and quoting a TCP or UDP packet (or
//!   the first fragment of one, whose ports follow an IPv6 fragment header) of the same family
//!   from a VIP (address, port, protocol), without other IPv6 extension headers.
//!
//! The flow is the quoted packet reversed (client -> VIP): the same hash, the same tracked entry
//! (looked up, never created: an error is about a flow, not part of it), the same table slot, so
//! the error reaches the backend the flow's packets reach, by the same encapsulation, and the
//! backend's kernel acts on it. Anything else (echo requests to a VIP, errors quoting other
//! traffic, a quote cut short) passes to this host's stack untouched.

use anycast_common::{
    DataplaneConfig, FAMILY_V4, NO_BACKEND, PROTO_ICMP, PROTO_TCP, PROTO_UDP, counter,
};
use aya_ebpf::programs::XdpContext;

use crate::{
    Verdict, log, maps,
    packet::{u8_at, u16_be_at, word_at},
    parse::{IPV4_LEN, IPV6_LEN, Ip},
    select::{to_flow_backend, vip_of},
    track,
};

const ICMP_HEADER: usize = 8;
const PROTO_FRAGMENT: u8 = 44;
const FRAG_HDR_LEN: usize = 8;

/// Is `(family, type)` an error that quotes the packet it is about?
#[inline(always)]
fn is_error(v4: bool, ty: u8) -> bool {
    if v4 {
        ty == 3 || ty == 11
    } else {
        ty == 1 || ty == 2 || ty == 3
    }
}

/// A BPF subprogram of its own (the tunnel path's frames stack on a small caller).
#[inline(never)]
pub fn steer_error(ctx: &XdpContext, ip: &Ip, cfg: &DataplaneConfig) -> Verdict {
    let v4 = ip.family == FAMILY_V4;
    // An ICMP of the other family (ICMPv4 in IPv6) is nobody's error.
    if v4 != (ip.proto == PROTO_ICMP) {
        return Verdict::pass(counter::PASS);
    }
    // Bytes after the IP packet (Ethernet padding) would be read as the quote's. A real error
    // has none: quoting at least a 20-byte header and 8 bytes, it is longer than the smallest
    // Ethernet frame. Such a frame passes. (Checked here, where few values are live: checked
    // at the quoted ports, it costs this frame a stack slot the deepest call chain lacks.)
    if ctx.data_end() - ctx.data() > ip.l2_len + ip.ip_len as usize {
        return Verdict::pass(counter::PASS);
    }
    let l4 = ip.l4_off();
    let Some(ty) = u8_at(ctx, l4) else {
        return Verdict::pass(counter::PASS);
    };
    if !is_error(v4, ty) {
        return Verdict::pass(counter::PASS);
    }
    let q = l4 + ICMP_HEADER;
    // The quoted header: its protocol, addresses and where its transport header starts.
    // Reversed: the flow runs from the quoted destination (the client) to its source.
    let mut flow = Ip {
        l2_len: ip.l2_len,
        family: ip.family,
        l3_len: ip.l3_len,
        ip_len: ip.ip_len,
        proto: 0,
        tos: ip.tos,
        src: [0; 4],
        dst: [0; 4],
    };
    let (proto, quoted_l4) = if v4 {
        let Some(vihl) = u8_at(ctx, q) else {
            return Verdict::pass(counter::PASS);
        };
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < IPV4_LEN {
            return Verdict::pass(counter::PASS);
        }
        // One read at a time: a tuple of them lets LLVM reorder the loads past their bounds
        // checks in a way the verifier cannot follow.
        let Some(frag) = u16_be_at(ctx, q + 6) else {
            return Verdict::pass(counter::PASS);
        };
        let Some(proto) = u8_at(ctx, q + 9) else {
            return Verdict::pass(counter::PASS);
        };
        let Some(qs) = word_at(ctx, q + 12) else {
            return Verdict::pass(counter::PASS);
        };
        let Some(qd) = word_at(ctx, q + 16) else {
            return Verdict::pass(counter::PASS);
        };
        // A quoted later fragment has no ports (a first one, MF set, has them).
        if frag & 0x1fff != 0 {
            return Verdict::pass(counter::PASS);
        }
        flow.src[0] = qd;
        flow.dst[0] = qs;
        (proto, q + ihl)
    } else {
        let Some(next) = u8_at(ctx, q + 6) else {
            return Verdict::pass(counter::PASS);
        };
        let mut i = 0;
        while i < 4 {
            let (Some(s), Some(d)) = (word_at(ctx, q + 8 + i * 4), word_at(ctx, q + 24 + i * 4))
            else {
                return Verdict::pass(counter::PASS);
            };
            flow.dst[i] = s;
            flow.src[i] = d;
            i += 1;
        }
        // A quoted first fragment (a too-big answer is usually one: the fragment that did not
        // fit) has its ports after the fragment header; a later one has none.
        if next != PROTO_FRAGMENT {
            (next, q + IPV6_LEN)
        } else {
            let Some(inner_next) = u8_at(ctx, q + IPV6_LEN) else {
                return Verdict::pass(counter::PASS);
            };
            let Some(off) = u16_be_at(ctx, q + IPV6_LEN + 2) else {
                return Verdict::pass(counter::PASS);
            };
            if off >> 3 != 0 {
                return Verdict::pass(counter::PASS);
            }
            (inner_next, q + IPV6_LEN + FRAG_HDR_LEN)
        }
    };
    flow.proto = proto;
    if flow.proto != PROTO_TCP && flow.proto != PROTO_UDP {
        return Verdict::pass(counter::PASS);
    }
    // Sent to where the quoted packet came from: the VIP.
    if flow.dst != ip.dst {
        return Verdict::pass(counter::PASS);
    }
    // The quoted ports are (VIP port, client port); the flow's ports word is the other way round.
    let Some(quoted_ports) = word_at(ctx, quoted_l4) else {
        return Verdict::pass(counter::PASS);
    };
    let ports = quoted_ports.rotate_left(16);
    let Some(vip) = vip_of(&flow, (ports >> 16) as u16, cfg) else {
        return Verdict::pass(counter::PASS);
    };
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    maps::count_traffic(&maps::VIP_STATS, vip.vip_id, frame_len);
    let mut prev = NO_BACKEND;
    let (backend_id, hash) = track::split(track::pick(
        &flow,
        cfg,
        &vip,
        u64::from(ports) | track::LOOKUP_ONLY,
        &mut prev,
    ));
    if backend_id == NO_BACKEND {
        return Verdict::drop(counter::NO_BACKEND);
    }
    if maps::BACKENDS.get(backend_id).is_none() {
        log::table_inconsistent(vip.vip_id, vip.table, backend_id);
        return Verdict::drop(counter::INTERNAL_ERROR);
    }
    to_flow_backend(backend_id, hash, frame_len, counter::ICMP_STEERED)
}
