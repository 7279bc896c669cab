//! The anycast XDP program.
//!
//! Packet path: parse -> classify (tunnel to us? VIP?) -> select (flow hash into the VIP's Maglev
//! table) -> deliver locally, or encapsulate -> transmit (FIB next hop). See docs/dataplane.md.
#![no_std]
#![no_main]

mod chance;
mod csum;
mod decap;
mod encap;
mod frag;
mod icmp;
mod log;
mod maps;
mod packet;
mod parse;
mod pmtu;
mod select;
mod track;

use anycast_common::{PROTO_ICMP, PROTO_ICMPV6, counter};
use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// What happened to a packet: the XDP action (low byte) and the one outcome counter it adds to
/// (next byte). One register wide, so subprograms return it without a stack slot.
#[derive(Clone, Copy)]
pub struct Verdict(u32);

impl Verdict {
    #[inline(always)]
    pub const fn new(action: u32, counter: u32) -> Self {
        Self((counter << 8) | (action & 0xff))
    }

    #[inline(always)]
    pub const fn pass(counter: u32) -> Self {
        Self::new(xdp_action::XDP_PASS, counter)
    }

    #[inline(always)]
    pub const fn drop(counter: u32) -> Self {
        Self::new(xdp_action::XDP_DROP, counter)
    }

    /// Not a final verdict: the tunnel target is in the per-CPU scratch and the top level must
    /// run the encapsulation (keeping that deepest frame off the other subprograms' stacks).
    /// `reparse`: the frame changed (decapsulated) and must be parsed again first.
    #[inline(always)]
    pub const fn encapsulate(reparse: bool) -> Self {
        Self::new(if reparse { PENDING_REPARSE } else { PENDING }, 0)
    }

    #[inline(always)]
    pub const fn action(self) -> u32 {
        self.0 & 0xff
    }

    #[inline(always)]
    pub const fn counter(self) -> u32 {
        self.0 >> 8
    }
}

/// Pseudo-actions of a pending encapsulation (never returned to the kernel).
const PENDING: u32 = 0xfe;
const PENDING_REPARSE: u32 = 0xff;

/// Attached to every edge/backend interface. Non-VIP traffic leaves with XDP_PASS untouched;
/// every decision lands in exactly one outcome counter.
#[xdp]
pub fn anycast_steer(ctx: XdpContext) -> u32 {
    let v = steer(&ctx);
    maps::count(v.counter());
    v.action()
}

#[inline(always)]
fn steer(ctx: &XdpContext) -> Verdict {
    // Fail open: a frame we cannot parse as IP is not ours to judge; the stack drops it if it is
    // garbage. Nothing is rewritten before parsing succeeds.
    let (ip, v) = match parse::parse(ctx) {
        Ok(ip) => {
            let Some(cfg) = maps::CONFIG.get(0) else {
                return Verdict::pass(counter::INTERNAL_ERROR);
            };
            let v = if decap::is_tunnel(ctx, &ip, cfg) {
                decap::decapsulate(ctx, &ip, cfg)
            } else if ip.proto == PROTO_ICMP || ip.proto == PROTO_ICMPV6 {
                icmp::steer_error(ctx, &ip, cfg)
            } else {
                select::steer_vip(ctx, &ip, cfg)
            };
            (ip, v)
        }
        // A fragment may belong to a VIP's datagram (rare: off the path of every other packet).
        Err(counter::FRAGMENT) => {
            let Some(cfg) = maps::CONFIG.get(0) else {
                return Verdict::pass(counter::INTERNAL_ERROR);
            };
            let mut ip = parse::Ip::EMPTY;
            let Some((id, first)) = frag::parse(ctx, &mut ip) else {
                return Verdict::pass(counter::FRAGMENT);
            };
            // The first fragment holds at least the first 8 bytes of the transport header
            // (RFC 791, RFC 8200); a later one has no ports.
            // The ports must lie inside the fragment, not in what follows it (Ethernet padding).
            if first && ip.l3_len + 4 > ip.ip_len as usize {
                return Verdict::pass(counter::FRAGMENT);
            }
            let ports = if first {
                match packet::word_at(ctx, ip.l4_off()) {
                    Some(p) => p,
                    None => return Verdict::pass(counter::FRAGMENT),
                }
            } else {
                0
            };
            let frame_len = (ctx.data_end() - ctx.data()) as u64;
            let v = frag::steer(
                &ip,
                cfg,
                ports,
                u64::from(first) << 32 | u64::from(id),
                frame_len,
            );
            (ip, v)
        }
        Err(c) => return Verdict::pass(c),
    };
    // The same entry again (an inlined array lookup: cheaper than keeping the pointer in this
    // frame, which the deepest call chain's 512-byte stack shares).
    let Some(cfg) = maps::CONFIG.get(0) else {
        return Verdict::pass(counter::INTERNAL_ERROR);
    };
    let v = match v.action() {
        PENDING => {
            let v = encap::encapsulate(ctx, &ip, cfg);
            // Too big for the route once encapsulated: the client is told to send smaller.
            if v.counter() == counter::OVERSIZE
                && let Some(mtu) = encap::too_big_mtu()
            {
                let answer = pmtu::answer(ctx, &ip, mtu);
                if answer.counter() == counter::ICMP_TOO_BIG {
                    encap::clear_failure();
                    return answer;
                }
            }
            v
        }
        // A second chance (decapsulated here): its client is not ours to answer.
        PENDING_REPARSE => match parse::parse(ctx) {
            Ok(inner) => encap::encapsulate(ctx, &inner, cfg),
            Err(_) => return Verdict::drop(counter::INTERNAL_ERROR),
        },
        _ => return v,
    };
    if v.counter() != counter::ENCAP {
        encap::log_failure();
        return v;
    }
    let Some(sc) = encap::scratch() else {
        return v;
    };
    // Written by the subprogram that asked for the encapsulation.
    let (outcome, stat_id, frame_len) = (sc.outcome, sc.stat_id, sc.frame_len);
    if stat_id != anycast_common::NO_BACKEND {
        maps::count_traffic(&maps::BACKEND_STATS, stat_id, frame_len);
    }
    Verdict::new(v.action(), outcome)
}

/// Peers of veth links that receive XDP_TX/redirected frames need a native XDP program of their
/// own (veth delivers such frames only to an XDP-enabled peer); this one passes everything.
#[xdp]
pub fn anycast_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL: bpf_fib_lookup and bpf_redirect are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
