//! VIP match and backend selection.

use anycast_common::{
    BACKEND_F_LOCAL, DataplaneConfig, FAMILY_V4, NO_TABLE, PROTO_TCP, PROTO_UDP, VipKey, counter,
    hash::{flow_hash_v4, flow_hash_v6},
};
use aya_ebpf::programs::XdpContext;

use crate::{
    Verdict, encap, maps,
    packet::{addr_bytes, ptr_at, word_at},
    parse::{Ip, TCP_LEN, UDP_LEN},
};

#[inline(always)]
pub fn steer_vip(ctx: &XdpContext, ip: &Ip, cfg: &DataplaneConfig) -> Verdict {
    let hdr = match ip.proto {
        PROTO_TCP => TCP_LEN,
        PROTO_UDP => UDP_LEN,
        _ => return Verdict::pass(counter::PASS),
    };
    let l4 = ip.l4_off();
    // The fixed transport header must be inside both the frame and the IP packet.
    let in_frame = if hdr == TCP_LEN {
        ptr_at::<[u8; TCP_LEN]>(ctx, l4).is_some()
    } else {
        ptr_at::<[u8; UDP_LEN]>(ctx, l4).is_some()
    };
    if !in_frame || ip.l3_len + hdr > ip.ip_len as usize {
        return Verdict::pass(counter::PARSE_ERROR);
    }
    let Some(ports) = word_at(ctx, l4) else {
        return Verdict::pass(counter::PARSE_ERROR);
    };

    let mut key = VipKey {
        addr_be: addr_bytes(ip.dst),
        // The destination port is the high half of the ports word (bytes 2..4 of the header).
        port_be: (ports >> 16) as u16,
        proto: ip.proto,
        family: ip.family,
    };
    // SAFETY (both gets): the value is copied out before any other map operation.
    let vip = match unsafe { maps::VIPS.get(&key) } {
        Some(v) => *v,
        None => {
            key.port_be = 0;
            match unsafe { maps::VIPS.get(&key) } {
                Some(v) => *v,
                None => return Verdict::pass(counter::PASS),
            }
        }
    };
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    maps::count_traffic(&maps::VIP_STATS, vip.vip_id, frame_len);

    // Fail closed from here on: the packet is VIP traffic, and handing it to this host's stack
    // would deliver it to whatever local service binds the VIP, i.e. to the wrong backend.
    if vip.table == NO_TABLE {
        return Verdict::drop(counter::NO_BACKEND);
    }
    let hash = if ip.family == FAMILY_V4 {
        flow_hash_v4(cfg.hash_seed, ip.src[0], ip.dst[0], ports, ip.proto)
    } else {
        flow_hash_v6(cfg.hash_seed, &ip.src, &ip.dst, ports, ip.proto)
    };
    let ring_size = cfg.ring_size;
    if ring_size == 0 {
        return Verdict::drop(counter::INTERNAL_ERROR);
    }
    let index = vip.table.wrapping_mul(ring_size).wrapping_add(hash % ring_size);
    let Some(&backend_id) = maps::RINGS.get(index) else {
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    let Some(backend) = maps::BACKENDS.get(backend_id) else {
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    if backend.flags & BACKEND_F_LOCAL != 0 {
        maps::count_traffic(&maps::BACKEND_STATS, backend_id, frame_len);
        return Verdict::pass(counter::LOCAL);
    }
    let v = encap::encapsulate(ctx, ip, cfg, backend_id, hash);
    if v.counter() == counter::ENCAP {
        maps::count_traffic(&maps::BACKEND_STATS, backend_id, frame_len);
    }
    v
}
