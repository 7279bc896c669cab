//! Encapsulation towards a remote backend, and its transmission.
//!
//! Frame out: Ethernet (no VLAN tag) | outer IPv4 or IPv6 | [UDP | GUE header] | the inner IP
//! packet exactly as received. The outer family is the backend's, whatever the inner one is, so
//! all four pairs (4in4, 6in6, 6in4, 4in6) work.
//!
//! Next hop: the agent's cached entry for the backend (`NEXTHOPS`, resolved from the kernel's
//! routes, neighbours and links, and kept current from netlink events), else `bpf_fib_lookup`
//! (counted `fib_lookup`): a FIB lookup costs about 250 ns (IPv4) to 630 ns (IPv6) a packet on
//! the test machine (BENCHMARKS.md).
//!
//! MTU policy: the outer packet is `inner + 20/40 (+12 for GUE)` bytes. A packet larger than the
//! cached MTU goes to `bpf_fib_lookup`, which checks it against the route's MTU; a packet that
//! does not fit is answered by the top level with "packet too big" (`crate::pmtu`), or dropped
//! and counted `oversize` (it
//! cannot be fragmented: the outer header carries DF, and most inner packets do too). Operators
//! give the fabric between edges and backends that much headroom, or clamp the MSS on the
//! backends; see docs/dataplane.md.

use anycast_common::{
    Backend, CFG_F_HAS_SRC_V4, CFG_F_HAS_SRC_V6, DataplaneConfig, ENCAP_GUE, FAMILY_V4, FAMILY_V6,
    GUE_HINT_MAGIC, GUE_HINT_WORDS_V4, GUE_HINT_WORDS_V6, PROTO_ICMP, PROTO_IPIP, PROTO_IPV6,
    PROTO_TCP, PROTO_UDP, SECOND_CHANCE_TTL, TUNNEL_TTL, counter,
    hash::{flow_label, gue_source_port},
};
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, bpf_fib_lookup__bindgen_ty_1, bpf_fib_lookup__bindgen_ty_2,
        bpf_fib_lookup__bindgen_ty_3, bpf_fib_lookup__bindgen_ty_4, bpf_fib_lookup__bindgen_ty_5,
        xdp_action,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect, bpf_xdp_adjust_head,
    },
    programs::XdpContext,
};

use crate::{
    Verdict,
    csum::{add_addr, add32, be16, finish, fold, pair},
    log, maps,
    packet::{addr_word, addr_words, copy_words, u16_be_at, window, word, word_at, write_word},
    parse::{ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPV4_LEN, IPV6_LEN, Ip, UDP_LEN},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const GUE_LEN: usize = 4;

/// Sum over the inner packet as a UDP checksum sees it, without reading the payload: a transport
/// checksum that verifies means pseudo-header + segment sums to 0xffff, so the segment sums to the
/// complement of the pseudo-header (the local checksum offload identity, RFC 7605 / Linux
/// `lco_csum`). A valid IPv4 header sums to 0xffff as well and drops out. `None`: the inner
/// packet has no transport checksum (IPv4 UDP with checksum 0).
#[inline(always)]
fn inner_sum(ctx: &XdpContext, ip: &Ip) -> Option<u64> {
    // An ICMPv4 message (a steered error, `crate::icmp`) has no pseudo-header: a valid one sums
    // to 0xffff like the IPv4 header before it, so the whole packet drops out.
    if ip.proto == PROTO_ICMP {
        return Some(0);
    }
    // A fragment's transport checksum covers the whole datagram, not this fragment: no identity
    // to use, so no outer checksum (0; for an IPv6 outer header as RFC 6935 allows tunnels).
    // (An IPv4 header with options can be 48 bytes long too: the family decides.)
    let v6_fragment = ip.family == FAMILY_V6 && ip.l3_len == IPV6_LEN + 8;
    if v6_fragment || (ip.family == FAMILY_V4 && is_v4_fragment(ctx, ip)) {
        return None;
    }
    let l4 = ip.l4_off();
    let l4_len = ip.ip_len - ip.l3_len as u32;
    let check_off = match ip.proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        // ICMPv6: a pseudo-header like TCP's and UDP's.
        _ => 2,
    };
    let check = u16_be_at(ctx, l4 + check_off)?;
    if ip.proto == PROTO_UDP && check == 0 && ip.family == FAMILY_V4 {
        return None;
    }
    let proto_len = pair(0, ip.proto) + be16(l4_len as u16);
    if ip.family == FAMILY_V4 {
        // The header drops out (it sums to 0xffff); what is left is minus the pseudo-header.
        Some(u64::from(!fold(add32(
            add32(proto_len, ip.src[0]),
            ip.dst[0],
        ))))
    } else {
        // Header + (minus pseudo-header): the addresses appear in both and cancel, leaving the
        // first two header words minus (protocol + length).
        let h0 = word_at(ctx, ip.l2_len)?;
        let h1 = word_at(ctx, ip.l2_len + 4)?;
        Some(add32(add32(u64::from(!fold(proto_len)), h0), h1))
    }
}

/// Is the IPv4 packet a fragment (more fragments, or a non-zero offset)?
#[inline(always)]
fn is_v4_fragment(ctx: &XdpContext, ip: &Ip) -> bool {
    u16_be_at(ctx, ip.l2_len + 6).is_some_and(|f| f & 0x3fff != 0)
}

/// Where to send a packet: the tunnel's far end, and optionally a hint naming the flow's
/// previous owner (second chance; carried only by GUE). `hint.family == 0`: no hint.
#[repr(C)]
pub struct Tunnel {
    pub dst: Backend,
    pub hint: Backend,
    pub hash: u32,
}

/// Per-CPU scratch space for the encapsulation: the BPF stack is 512 bytes for the whole call
/// chain, and these two structures would take a fifth of it.
#[repr(C)]
pub struct Scratch {
    pub tunnel: Tunnel,
    pub fib: bpf_fib_lookup,
    /// What the caller counts once the encapsulation succeeded: the outcome counter, and the
    /// backend whose BACKEND_STATS get the frame: the id of `tunnel.dst`, which also indexes
    /// its cached next hop (`NEXTHOPS`); `NO_BACKEND` when the far end is known only by address
    /// (a GUE hint's previous owner): no stats, and the FIB routes it.
    pub outcome: u32,
    pub stat_id: u32,
    pub frame_len: u64,
    /// A failed FIB lookup's log line, for the top level to write (a log subprogram called from
    /// under the encapsulation would pass the 512-byte stack): [`FAIL_NONE`], [`FAIL_FIB`] with
    /// the helper's return code in `fail_args[0]`, or [`FAIL_OVERSIZE`] with the inner and outer
    /// lengths. Reset by the one who logs it.
    pub fail: u32,
    pub fail_args: [u32; 2],
    /// The next hop's destination then source MAC as three words in header order, from the
    /// cache or the FIB, written into the frame with three stores.
    pub macs: [u32; 3],
    /// The lease on the next-hop cache, as this CPU last read it (non-zero: held), and how many
    /// more cached packets it serves before the clock is read again (see `lease_held_sampled`).
    pub lease_ok: u32,
    pub lease_countdown: u32,
}

/// How many packets of a CPU one reading of the next-hop cache's lease serves: the clock read
/// costs about 30 ns, a sixty-fourth of it per packet is noise.
const LEASE_SAMPLE: u32 = 64;

pub const FAIL_NONE: u32 = 0;
pub const FAIL_FIB: u32 = 1;
pub const FAIL_OVERSIZE: u32 = 2;

/// The MTU to announce to the client of a packet the FIB found too big for the route to its
/// backend (the route MTU less the tunnel headers), if that is why the encapsulation failed.
#[inline(always)]
pub fn too_big_mtu() -> Option<u32> {
    let sc = scratch()?;
    if sc.fail != FAIL_OVERSIZE {
        return None;
    }
    // SAFETY: on BPF_FIB_LKUP_RET_FRAG_NEEDED the kernel stores the route MTU in `mtu_result`
    // (net/core/filter.c); every variant of the union is a u16.
    let route_mtu = u32::from(unsafe { sc.fib.__bindgen_anon_1.mtu_result });
    let overhead = sc.fail_args[1].wrapping_sub(sc.fail_args[0]);
    Some(route_mtu.saturating_sub(overhead))
}

/// Forgets the failure in this CPU's scratch (it was answered, not dropped: no log line).
#[inline(always)]
pub fn clear_failure() {
    if let Some(sc) = scratch() {
        sc.fail = FAIL_NONE;
    }
}

/// Writes the log line a failed encapsulation left in this CPU's scratch, if any. Called by the
/// top level, whose frame is the shallowest.
#[inline(always)]
pub fn log_failure() {
    let Some(sc) = scratch() else {
        return;
    };
    let (fail, [a, b]) = (sc.fail, sc.fail_args);
    sc.fail = FAIL_NONE;
    if fail == FAIL_FIB {
        log::fib_fail(i64::from(a as i32));
    } else if fail == FAIL_OVERSIZE {
        log::oversize(a, b);
    }
}

impl Scratch {
    /// Asks for an encapsulation towards `dst`, which the top level runs (see
    /// `Verdict::encapsulate`): `hint` names the flow's previous owner (GUE only), `hash` is the
    /// flow's, and once the frame is sent `outcome` is counted and `frame_len` bytes go to
    /// `stat_id`'s BACKEND_STATS (`NO_BACKEND`: none).
    #[inline(always)]
    pub fn request(
        &mut self,
        dst: &Backend,
        hint: Option<&Backend>,
        hash: u32,
        stat_id: u32,
        outcome: u32,
        frame_len: u64,
    ) {
        self.tunnel.dst = *dst;
        match hint {
            Some(h) => self.tunnel.hint = *h,
            None => self.tunnel.hint.family = 0,
        }
        self.tunnel.hash = hash;
        self.stat_id = stat_id;
        self.outcome = outcome;
        self.frame_len = frame_len;
    }
}

/// This CPU's scratch, or `None` (never, for a 1-entry per-CPU array). The only way to it.
///
/// The reference is exclusive: an XDP program runs to completion on its CPU, from the NAPI poll
/// with bottom halves disabled, so no other run uses this CPU's entry while it lives, and the
/// agent never writes the map. Within a run, each user is done with it before the next one takes
/// it (a subprogram before its verdict goes back to the top level, the encapsulation before the
/// log line of its failure).
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: a per-CPU array value, valid for the whole run and exclusive to it (see above).
    maps::SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Encapsulates towards the `Tunnel` the caller wrote into this CPU's [`Scratch`].
// A BPF subprogram of its own: inlined, its stack slots would add to the caller's 512 bytes.
#[inline(never)]
pub fn encapsulate(ctx: &XdpContext, ip: &Ip, cfg: &DataplaneConfig) -> Verdict {
    let Some(sc) = scratch() else {
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    // A second chance leaves marked (see `chance`): its receiver delivers it, never sends it on.
    let ttl = if sc.outcome == counter::SECOND_CHANCE {
        SECOND_CHANCE_TTL
    } else {
        TUNNEL_TTL
    };
    let (t, fib) = (&sc.tunnel, &mut sc.fib);
    let backend = &t.dst;
    let hash = t.hash;
    let outer_v4 = backend.family == FAMILY_V4;
    let (has_src, outer_ip_len) = if outer_v4 {
        (cfg.flags & CFG_F_HAS_SRC_V4 != 0, IPV4_LEN)
    } else {
        (cfg.flags & CFG_F_HAS_SRC_V6 != 0, IPV6_LEN)
    };
    if !has_src {
        return Verdict::drop(counter::NO_TUNNEL_SOURCE);
    }
    let gue = cfg.encap == ENCAP_GUE;
    let inner_proto = if ip.family == FAMILY_V4 {
        PROTO_IPIP
    } else {
        PROTO_IPV6
    };
    let hint_words = if !gue {
        0
    } else if t.hint.family == FAMILY_V4 {
        GUE_HINT_WORDS_V4
    } else if t.hint.family == FAMILY_V6 {
        GUE_HINT_WORDS_V6
    } else {
        0
    };
    let hint_len = hint_words as usize * 4;
    let (outer_proto, tunnel_len) = if gue {
        (PROTO_UDP, outer_ip_len + UDP_LEN + GUE_LEN + hint_len)
    } else {
        (inner_proto, outer_ip_len)
    };
    let outer_len = ip.ip_len + tunnel_len as u32;
    if outer_len > 0xffff {
        return Verdict::drop(counter::OVERSIZE);
    }
    let dst_w = addr_words(&backend.addr_be);
    let src_w = if outer_v4 {
        // Offset 0 of the DataplaneConfig, which u32 fields make 4-aligned.
        [addr_word(&cfg.tunnel_src_v4_be), 0, 0, 0]
    } else {
        addr_words(&cfg.tunnel_src_v6_be)
    };

    // Route first, while the packet is still intact: a drop needs no undo. The agent's cached
    // next hop when it is usable (resolved for this very backend, and the packet fits its MTU);
    // otherwise the kernel's FIB, which also decides what an oversized packet gets.
    let resolved = match maps::NEXTHOPS.get(sc.stat_id) {
        Some(nh)
            if nh.ifindex != 0
                && nh.generation == backend.generation
                && outer_len <= u32::from(nh.mtu)
                && lease_held_sampled(&mut sc.lease_ok, &mut sc.lease_countdown) =>
        {
            // Into the scratch, so that one transmit path serves both sources (and no map
            // pointer stays live across the head adjustment).
            fib.ifindex = nh.ifindex;
            sc.macs = nh.mac_words();
            true
        }
        _ => {
            maps::count(counter::FIB_LOOKUP);
            match fib_route(ctx, ip, cfg, u32::from(outer_proto) << 16 | outer_len) {
                FIB_RESOLVED => {
                    let (d, m) = (fib.dmac, fib.smac);
                    sc.macs = [
                        word([d[0], d[1], d[2], d[3]]),
                        word([d[4], d[5], m[0], m[1]]),
                        word([m[2], m[3], m[4], m[5]]),
                    ];
                    true
                }
                FIB_UNRESOLVED => false,
                v => return Verdict(v),
            }
        }
    };

    let inner = if gue { inner_sum(ctx, ip) } else { None };

    // Grow the head by the tunnel headers, less the VLAN tag we drop.
    let delta = tunnel_len as i32 - (ip.l2_len - ETH_LEN) as i32;
    // SAFETY: ctx is the program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -delta) } != 0 {
        return Verdict::drop(counter::INTERNAL_ERROR);
    }
    if resolved {
        let Some(mut macs) = window::<12>(ctx, 0) else {
            return Verdict::drop(counter::INTERNAL_ERROR);
        };
        macs.put_word::<0>(sc.macs[0]);
        macs.put_word::<4>(sc.macs[1]);
        macs.put_word::<8>(sc.macs[2]);
    } else {
        // Keep the frame's own MACs (destination = this host, so the stack accepts it). They
        // still sit at the old start of the frame, `delta` bytes in (delta >= 16, so the copy
        // does not overlap); copied before any header is written over them.
        if copy_words::<3>(ctx, delta as usize, 0).is_none() {
            return Verdict::drop(counter::INTERNAL_ERROR);
        }
    }
    // In memory order, as one half-word store writes it.
    let ethertype = u16::from_le_bytes(if outer_v4 { ETH_P_IP } else { ETH_P_IPV6 }.to_be_bytes());
    let len_be = (outer_len as u16).to_be_bytes();

    if outer_v4 {
        let Some(mut hdr) = window::<{ ETH_LEN + IPV4_LEN }>(ctx, 0) else {
            return Verdict::drop(counter::INTERNAL_ERROR);
        };
        let sum = pair(0x45, ip.tos)
            + be16(outer_len as u16)
            + pair(0x40, 0)
            + pair(ttl, outer_proto)
            + add32(add32(0, src_w[0]), dst_w[0]);
        let c = finish(sum);
        hdr.put_half::<12>(ethertype);
        hdr.put_word::<ETH_LEN>(word([0x45, ip.tos, len_be[0], len_be[1]]));
        hdr.put_word::<{ ETH_LEN + 4 }>(word([0, 0, 0x40, 0]));
        hdr.put_word::<{ ETH_LEN + 8 }>(word([ttl, outer_proto, c[0], c[1]]));
        hdr.put_word::<{ ETH_LEN + 12 }>(src_w[0]);
        hdr.put_word::<{ ETH_LEN + 16 }>(dst_w[0]);
    } else {
        let Some(mut hdr) = window::<{ ETH_LEN + IPV6_LEN }>(ctx, 0) else {
            return Verdict::drop(counter::INTERNAL_ERROR);
        };
        let fl = flow_label(hash);
        let plen = ((outer_len as usize - IPV6_LEN) as u16).to_be_bytes();
        hdr.put_half::<12>(ethertype);
        hdr.put_word::<ETH_LEN>(word([
            0x60 | (ip.tos >> 4),
            (ip.tos << 4) | ((fl >> 16) as u8 & 0x0f),
            (fl >> 8) as u8,
            fl as u8,
        ]));
        hdr.put_word::<{ ETH_LEN + 4 }>(word([plen[0], plen[1], outer_proto, ttl]));
        hdr.put_addr::<{ ETH_LEN + 8 }>(&src_w);
        hdr.put_addr::<{ ETH_LEN + 24 }>(&dst_w);
    }
    if gue {
        let udp_len = (ip.ip_len as usize + UDP_LEN + GUE_LEN + hint_len) as u16;
        let hint_magic =
            u32::from_le_bytes([GUE_HINT_MAGIC[0], GUE_HINT_MAGIC[1], t.hint.family, 0]);
        let hint_w = addr_words(&t.hint.addr_be);
        let sport = gue_source_port(hash);
        let check = match inner {
            Some(inner) => {
                let mut s = add_addr(add_addr(inner, &src_w), &dst_w);
                s += pair(0, PROTO_UDP) + be16(udp_len); // pseudo-header
                s += be16(sport) + u64::from(cfg.gue_port_be) + be16(udp_len); // UDP header
                s += pair(hint_words, inner_proto); // GUE header: version 0, hlen, flags 0
                if hint_words == GUE_HINT_WORDS_V4 {
                    s = add32(add32(s, hint_magic), hint_w[0]);
                } else if hint_words == GUE_HINT_WORDS_V6 {
                    s = add_addr(add32(s, hint_magic), &hint_w);
                }
                let c = !fold(s);
                // 0 means "no checksum" in UDP; a computed 0 is sent as 0xffff (RFC 768).
                if c == 0 {
                    [0xff, 0xff]
                } else {
                    c.to_le_bytes()
                }
            }
            None => [0, 0],
        };
        let sp = sport.to_be_bytes();
        let dp = cfg.gue_port_be.to_le_bytes();
        let ul = udp_len.to_be_bytes();
        let Some(mut udp) = window::<{ UDP_LEN + GUE_LEN }>(ctx, ETH_LEN + outer_ip_len) else {
            return Verdict::drop(counter::INTERNAL_ERROR);
        };
        udp.put_word::<0>(word([sp[0], sp[1], dp[0], dp[1]]));
        udp.put_word::<4>(word([ul[0], ul[1], check[0], check[1]]));
        udp.put_word::<8>(word([hint_words, inner_proto, 0, 0]));
        let h = ETH_LEN + outer_ip_len + UDP_LEN + GUE_LEN;
        if hint_words == GUE_HINT_WORDS_V4 {
            if write_word(ctx, h, hint_magic).is_none()
                || write_word(ctx, h + 4, hint_w[0]).is_none()
            {
                return Verdict::drop(counter::INTERNAL_ERROR);
            }
            maps::count(counter::HINT_SENT);
        } else if hint_words == GUE_HINT_WORDS_V6 {
            if write_word(ctx, h, hint_magic).is_none()
                || write_word(ctx, h + 4, hint_w[0]).is_none()
                || write_word(ctx, h + 8, hint_w[1]).is_none()
                || write_word(ctx, h + 12, hint_w[2]).is_none()
                || write_word(ctx, h + 16, hint_w[3]).is_none()
            {
                return Verdict::drop(counter::INTERNAL_ERROR);
            }
            maps::count(counter::HINT_SENT);
        }
        maps::count(counter::ENCAP_GUE);
    }
    if ip.family != backend.family {
        maps::count(counter::ENCAP_CROSS_FAMILY);
    }

    if !resolved {
        // The kernel resolves the neighbour and forwards this packet itself; later packets of the
        // flow then take the fast path.
        maps::count(counter::FIB_NO_NEIGH);
        return Verdict::pass(counter::ENCAP);
    }
    if fib.ifindex == ctx.ingress_ifindex() as u32 {
        maps::count(counter::TX);
        return Verdict::new(xdp_action::XDP_TX, counter::ENCAP);
    }
    maps::count(counter::REDIRECT);
    // SAFETY: plain helper call; returns XDP_REDIRECT on success, XDP_ABORTED otherwise.
    let action = unsafe { bpf_redirect(fib.ifindex, 0) } as u32;
    Verdict::new(action, counter::ENCAP)
}

/// Does the agent still keep the next-hop cache current (its lease in `NEXTHOP_LEASE`)? Without
/// an agent, routes and neighbours may change unseen: the FIB is asked again once the lease
/// runs out. One coarse clock read (no hardware clock access), only for a packet the cache would
/// route.
#[inline(always)]
fn lease_held() -> bool {
    match maps::NEXTHOP_LEASE.get(0) {
        Some(until) => {
            // SAFETY: helper without arguments.
            let now = unsafe { bpf_ktime_get_coarse_ns() };
            now < *until
        }
        None => false,
    }
}

/// [`lease_held`], read once every [`LEASE_SAMPLE`] cached packets of this CPU (the scratch's
/// `lease_ok` and `lease_countdown`). After the
/// agent stops renewing the lease, a CPU keeps using the cache for at most that many packets
/// past its expiry.
#[inline(always)]
fn lease_held_sampled(ok: &mut u32, countdown: &mut u32) -> bool {
    if *countdown == 0 {
        *ok = u32::from(lease_held());
        *countdown = LEASE_SAMPLE;
    }
    *countdown -= 1;
    *ok != 0
}

/// [`fib_route`]'s answers other than a drop verdict.
const FIB_RESOLVED: u32 = 0;
const FIB_UNRESOLVED: u32 = 1;

/// The kernel's route to the scratch's tunnel far end (`bpf_fib_lookup`, from the ingress
/// interface, as a forwarded packet of `outer_len` bytes of protocol `outer_proto`):
/// [`FIB_RESOLVED`] with next-hop MACs and egress in the scratch's `fib`, [`FIB_UNRESOLVED`]
/// when the neighbour is not resolved yet, else the drop verdict (as its raw value).
// A BPF subprogram of its own, on the cold path only: inlined, the lookup's locals would grow
// `encapsulate`'s frame past the 512-byte stack of the deepest call chain.
#[inline(never)]
fn fib_route(ctx: &XdpContext, ip: &Ip, cfg: &DataplaneConfig, outer_proto_len: u32) -> u32 {
    let Some(sc) = scratch() else {
        return Verdict::drop(counter::INTERNAL_ERROR).0;
    };
    let (outer_proto, outer_len) = ((outer_proto_len >> 16) as u8, outer_proto_len & 0xffff);
    let (t, fib) = (&sc.tunnel, &mut sc.fib);
    let outer_v4 = t.dst.family == FAMILY_V4;
    *fib = bpf_fib_lookup {
        family: if outer_v4 { AF_INET } else { AF_INET6 },
        l4_protocol: outer_proto,
        sport: 0,
        dport: 0,
        __bindgen_anon_1: bpf_fib_lookup__bindgen_ty_1 {
            tot_len: outer_len as u16,
        },
        ifindex: ctx.ingress_ifindex() as u32,
        __bindgen_anon_2: bpf_fib_lookup__bindgen_ty_2 { flowinfo: 0 },
        __bindgen_anon_3: bpf_fib_lookup__bindgen_ty_3 { ipv6_src: [0; 4] },
        __bindgen_anon_4: bpf_fib_lookup__bindgen_ty_4 { ipv6_dst: [0; 4] },
        __bindgen_anon_5: bpf_fib_lookup__bindgen_ty_5 { tbid: 0 },
        smac: [0; 6],
        dmac: [0; 6],
    };
    if outer_v4 {
        fib.__bindgen_anon_2.tos = ip.tos;
        fib.__bindgen_anon_3.ipv4_src = addr_word(&cfg.tunnel_src_v4_be);
        fib.__bindgen_anon_4.ipv4_dst = addr_words(&t.dst.addr_be)[0];
    } else {
        fib.__bindgen_anon_3.ipv6_src = addr_words(&cfg.tunnel_src_v6_be);
        fib.__bindgen_anon_4.ipv6_dst = addr_words(&t.dst.addr_be);
    }
    // SAFETY: ctx is the program's context; the struct size is passed as the helper requires.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => FIB_RESOLVED,
        BPF_FIB_LKUP_RET_NO_NEIGH => FIB_UNRESOLVED,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            sc.fail = FAIL_OVERSIZE;
            sc.fail_args = [ip.ip_len, outer_len];
            Verdict::drop(counter::OVERSIZE).0
        }
        // Blackhole, unreachable, prohibit, forwarding disabled on the ingress device, helper
        // errors: nowhere to send it.
        _ => {
            sc.fail = FAIL_FIB;
            sc.fail_args = [rc as i32 as u32, 0];
            Verdict::drop(counter::FIB_FAIL).0
        }
    }
}
