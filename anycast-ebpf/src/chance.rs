//! Second chance: a TCP packet of a flow that no local socket knows is sent on, once, to the
//! backend that owned the flow under the previous table (daisy chaining, as Cloudflare's Unimog
//! does; GLB's "second chance" is the same idea).
//!
//! When a VIP's table changes, an edge that has no connection-tracking entry for a flow (it never
//! saw it, e.g. BGP just moved the client to it) picks the new table's backend, which may not be
//! the one holding the connection. Under GUE the edge names the previous table's backend for that
//! slot in the GUE header (a hint); the receiving host checks for a socket of the flow and,
//! finding none, forwards the packet to the hinted host. IPIP has no room for the hint: the
//! receiving host computes the previous owner from its own tables (`decap::table_chance`), which
//! is right when its agent has the edges' VIP tables. An edge that is itself the new owner checks
//! its own sockets.
//!
//! One hop at most: a second chance leaves with outer TTL / hop limit
//! [`SECOND_CHANCE_TTL`](anycast_common::SECOND_CHANCE_TTL), and a tunnelled packet that arrives
//! above [`SECOND_CHANCE_TTL_MIN`](anycast_common::SECOND_CHANCE_TTL_MIN) is delivered, never sent
//! on (`decap`).
//!
//! Only TCP: a UDP service's socket is an unconnected one that matches every flow. Bare SYNs
//! never take the extra hop: a new connection belongs to the new table.

use anycast_common::FAMILY_V4;
use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1},
    bindings::{
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Tuple4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as Tuple6,
    },
    helpers::generated::{bpf_sk_release, bpf_skc_lookup_tcp},
    programs::XdpContext,
};

use crate::parse::Ip;

/// `TCP_LISTEN` (include/net/tcp_states.h).
const TCP_LISTEN: u32 = 10;

/// Does a socket of this host hold the TCP flow of `ip` (established, half-open request or
/// time-wait)? A listener alone does not count: it would answer a mid-flow packet with a reset.
/// `ports` is the first word of the TCP header as loaded from the packet.
#[inline(always)]
pub fn has_socket(ctx: &XdpContext, ip: &Ip, ports: u32) -> bool {
    let sport = ports as u16;
    let dport = (ports >> 16) as u16;
    let (mut tuple, size) = if ip.family == FAMILY_V4 {
        (
            bpf_sock_tuple {
                __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                    ipv4: Tuple4 {
                        saddr: ip.src[0],
                        daddr: ip.dst[0],
                        sport,
                        dport,
                    },
                },
            },
            core::mem::size_of::<Tuple4>(),
        )
    } else {
        (
            bpf_sock_tuple {
                __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
                    ipv6: Tuple6 {
                        saddr: ip.src,
                        daddr: ip.dst,
                        sport,
                        dport,
                    },
                },
            },
            core::mem::size_of::<Tuple6>(),
        )
    };
    // SAFETY: the tuple lives on the stack for the call; the size matches its family.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: non-null socket reference from the lookup; `state` is readable on sock_common,
    // and the reference is released on the only path out.
    let state = unsafe { (*sk).state };
    unsafe { bpf_sk_release(sk.cast()) };
    state != TCP_LISTEN
}
