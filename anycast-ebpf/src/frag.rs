//! Fragments of datagrams to VIPs, sent where the datagram's flow goes.
//!
//! Only a datagram's first fragment carries the ports that pick a VIP's backend. It decides:
//! looked up as the flow's own packets are (connection tracking, looked up not created, then the
//! table), recorded in `FRAGS` under (source, destination, protocol, identification), and sent
//! on. The later fragments find the record and follow it, with the same encapsulation and hash,
//! so the backend's kernel reassembles the datagram. IPv4 fragments and the IPv6 fragment header
//! (directly after the fixed header) are handled alike.
//!
//! A later fragment with no record (its first fragment came after it, or was never seen, or the
//! record was evicted) cannot be told from a fragment of the host's own traffic: it passes to the
//! local stack untouched and counted `fragment`, as every fragment did before (documented rule).
//! Fragments of other protocols than TCP and UDP, and first fragments that are not to a VIP, pass
//! the same way.

use anycast_common::{
    DataplaneConfig, FAMILY_V4, FAMILY_V6, FragKey, FragValue, NO_BACKEND, PROTO_TCP, PROTO_UDP,
    VipValue, counter,
};
use aya_ebpf::programs::XdpContext;

use crate::{
    Verdict, maps,
    packet::{addr_bytes, u8_at, u16_be_at, word_at},
    parse::{ETH_LEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPV4_LEN, IPV6_LEN, Ip, VLAN_LEN},
    select::{to_flow_backend, vip_of},
    track,
};

/// The IPv6 fragment header's length.
const FRAG_HDR_LEN: usize = 8;
const PROTO_FRAGMENT: u8 = 44;

/// Parses a fragment into `ip` (its `l3_len` covers an IPv6 fragment header) and returns its
/// identification and whether it is a first fragment; `None`: not one we can steer.
#[inline(always)]
pub fn parse(ctx: &XdpContext, ip: &mut Ip) -> Option<(u32, bool)> {
    let mut l2 = ETH_LEN;
    let mut ethertype = u16_be_at(ctx, 12)?;
    if ethertype == ETH_P_8021Q {
        ethertype = u16_be_at(ctx, ETH_LEN + 2)?;
        l2 += VLAN_LEN;
    }
    ip.l2_len = l2;
    if ethertype == ETH_P_IP {
        let vihl = u8_at(ctx, l2)?;
        let l3_len = usize::from(vihl & 0x0f) * 4;
        let tot_len = u16_be_at(ctx, l2 + 2)?;
        if vihl >> 4 != 4 || l3_len < IPV4_LEN || usize::from(tot_len) < l3_len {
            return None;
        }
        let frags = u16_be_at(ctx, l2 + 6)?;
        ip.family = FAMILY_V4;
        ip.l3_len = l3_len;
        ip.ip_len = u32::from(tot_len);
        ip.tos = u8_at(ctx, l2 + 1)?;
        ip.proto = u8_at(ctx, l2 + 9)?;
        ip.src[0] = word_at(ctx, l2 + 12)?;
        ip.dst[0] = word_at(ctx, l2 + 16)?;
        let id = u32::from(u16_be_at(ctx, l2 + 4)?);
        Some((id, frags & 0x1fff == 0))
    } else if ethertype == ETH_P_IPV6 {
        let b0 = u8_at(ctx, l2)?;
        let b1 = u8_at(ctx, l2 + 1)?;
        let plen = u16_be_at(ctx, l2 + 4)?;
        // The fragment header must lie inside the packet (not in Ethernet padding after it).
        if b0 >> 4 != 6 || u8_at(ctx, l2 + 6)? != PROTO_FRAGMENT || usize::from(plen) < FRAG_HDR_LEN
        {
            return None;
        }
        let f = l2 + IPV6_LEN;
        ip.family = FAMILY_V6;
        ip.l3_len = IPV6_LEN + FRAG_HDR_LEN;
        ip.ip_len = u32::from(plen) + IPV6_LEN as u32;
        ip.tos = (b0 << 4) | (b1 >> 4);
        ip.proto = u8_at(ctx, f)?;
        // Unrolled: a loop's bounds checks become arithmetic on data_end, which the verifier
        // refuses.
        ip.src = [
            word_at(ctx, l2 + 8)?,
            word_at(ctx, l2 + 12)?,
            word_at(ctx, l2 + 16)?,
            word_at(ctx, l2 + 20)?,
        ];
        ip.dst = [
            word_at(ctx, l2 + 24)?,
            word_at(ctx, l2 + 28)?,
            word_at(ctx, l2 + 32)?,
            word_at(ctx, l2 + 36)?,
        ];
        let off = u16_be_at(ctx, f + 2)? >> 3;
        let id = u32::from_be_bytes(crate::packet::bytes_at::<4>(ctx, f + 4)?);
        Some((id, off == 0))
    } else {
        None
    }
}

/// The fragment `ip` (parsed by [`parse`]: `id`, `first`) of `frame_len` bytes, whose first
/// transport word is `ports` (first fragments only): where it goes.
///
/// A BPF subprogram of its own, and one that takes no context: LLVM would pass it the packet
/// pointers in a form the verifier refuses (see `track::pick`); the top level reads the ports.
#[inline(never)]
pub fn steer(ip: &Ip, cfg: &DataplaneConfig, ports: u32, id_first: u64, frame_len: u64) -> Verdict {
    let (id, first) = (id_first as u32, id_first >> 32 != 0);
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Verdict::pass(counter::FRAGMENT);
    }
    let key = FragKey {
        src_be: addr_bytes(ip.src),
        dst_be: addr_bytes(ip.dst),
        id,
        proto: ip.proto,
        family: ip.family,
        _pad: [0; 2],
    };
    let (backend_id, hash, vip_id) = if first {
        let Some(vip) = vip_of(ip, (ports >> 16) as u16, cfg) else {
            return Verdict::pass(counter::FRAGMENT);
        };
        let (backend_id, hash) = pick(ip, cfg, &vip, ports);
        if backend_id == NO_BACKEND {
            maps::count_traffic(&maps::VIP_STATS, vip.vip_id, frame_len);
            return Verdict::drop(counter::NO_BACKEND);
        }
        let generation = maps::BACKENDS.get(backend_id).map_or(0, |b| b.generation);
        let value = FragValue {
            backend_id,
            generation,
            _pad: 0,
            hash,
            vip_id: vip.vip_id,
        };
        let _ = maps::FRAGS.insert(key, value, 0);
        (backend_id, hash, vip.vip_id)
    } else {
        // SAFETY: the value is copied out before any other map operation.
        let Some(v) = (unsafe { maps::FRAGS.get(key) }).copied() else {
            return Verdict::pass(counter::FRAGMENT);
        };
        // The record outlived its backend (id freed or reused): the datagram is lost anyway.
        if !maps::BACKENDS
            .get(v.backend_id)
            .is_some_and(|b| b.family != 0 && b.generation == v.generation)
        {
            return Verdict::drop(counter::NO_BACKEND);
        }
        (v.backend_id, v.hash, v.vip_id)
    };
    maps::count_traffic(&maps::VIP_STATS, vip_id, frame_len);
    to_flow_backend(backend_id, hash, frame_len, counter::FRAGMENT_STEERED)
}

/// The flow's backend and hash, as its unfragmented packets get them (tracked entry looked up,
/// never created by a fragment, else the table).
#[inline(always)]
fn pick(ip: &Ip, cfg: &DataplaneConfig, vip: &VipValue, ports: u32) -> (u32, u32) {
    let mut prev = NO_BACKEND;
    track::split(track::pick(
        ip,
        cfg,
        vip,
        u64::from(ports) | track::LOOKUP_ONLY,
        &mut prev,
    ))
}
