//! VIP match and backend selection.

use anycast_common::{
    BACKEND_F_LOCAL, CFG_F_NO_PORT0_VIPS, DataplaneConfig, NO_BACKEND, PROTO_TCP, PROTO_UDP,
    VipKey, VipValue, counter,
};
use aya_ebpf::programs::XdpContext;

use crate::{
    Verdict, chance, encap, log, maps,
    packet::{addr_bytes, has_bytes, u8_at, word_at},
    parse::{Ip, TCP_LEN, UDP_LEN},
    track,
};

/// The VIP a packet to `ip.dst`, destination port `port_be` (network order), belongs to: the
/// exact (address, port, protocol) first, then the VIP of every port on that address.
#[inline(always)]
pub fn vip_of(ip: &Ip, port_be: u16, cfg: &DataplaneConfig) -> Option<VipValue> {
    let mut key = VipKey {
        addr_be: addr_bytes(ip.dst),
        port_be,
        proto: ip.proto,
        family: ip.family,
    };
    // SAFETY (both gets): the value is copied out before any other map operation.
    if let Some(v) = unsafe { maps::VIPS.get(key) } {
        return Some(*v);
    }
    // Most TCP/UDP packets an edge sees on a non-VIP address end here with one lookup instead
    // of two when the config has no port-0 VIP.
    if cfg.flags & CFG_F_NO_PORT0_VIPS != 0 {
        return None;
    }
    key.port_be = 0;
    unsafe { maps::VIPS.get(key) }.copied()
}

/// A BPF subprogram of its own, so that the tunnel path's frames stack on a small caller.
#[inline(never)]
pub fn steer_vip(ctx: &XdpContext, ip: &Ip, cfg: &DataplaneConfig) -> Verdict {
    let hdr = match ip.proto {
        PROTO_TCP => TCP_LEN,
        PROTO_UDP => UDP_LEN,
        _ => return Verdict::pass(counter::PASS),
    };
    let l4 = ip.l4_off();
    // The fixed transport header must be inside both the frame and the IP packet.
    let in_frame = if hdr == TCP_LEN {
        has_bytes::<TCP_LEN>(ctx, l4)
    } else {
        has_bytes::<UDP_LEN>(ctx, l4)
    };
    if !in_frame || ip.l3_len + hdr > ip.ip_len as usize {
        return Verdict::pass(counter::PARSE_ERROR);
    }
    let Some(ports) = word_at(ctx, l4) else {
        return Verdict::pass(counter::PARSE_ERROR);
    };

    // The destination port is the high half of the ports word (bytes 2..4 of the header).
    let Some(vip) = vip_of(ip, (ports >> 16) as u16, cfg) else {
        return Verdict::pass(counter::PASS);
    };
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    maps::count_traffic(&maps::VIP_STATS, vip.vip_id, frame_len);

    // Fail closed from here on: the packet is VIP traffic, and handing it to this host's stack
    // would deliver it to whatever local service binds the VIP, i.e. to the wrong backend.
    // TCP_LEN bytes were checked above for TCP, so the flags byte (offset 13) is there.
    let tcp_flags = if ip.proto == PROTO_TCP {
        u8_at(ctx, l4 + 13).unwrap_or(0)
    } else {
        0
    };
    let mut prev = NO_BACKEND;
    let picked = track::pick(
        ip,
        cfg,
        &vip,
        u64::from(ports) | u64::from(tcp_flags) << 32 | track::LAZY_HASH,
        &mut prev,
    );
    let (backend_id, _) = track::split(picked);
    if backend_id == NO_BACKEND {
        return Verdict::drop(counter::NO_BACKEND);
    }
    let Some(backend) = maps::BACKENDS.get(backend_id) else {
        // Only a table id can be missing: a tracked one was looked up by `pick`.
        log::table_inconsistent(vip.vip_id, vip.table, backend_id);
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    let hint = if prev == NO_BACKEND {
        None
    } else {
        let h = maps::BACKENDS.get(prev);
        if h.is_none() && prev == track::PREV_INSERT_LIMITED {
            log::conn_insert_limited();
        }
        h
    };

    let Some(sc) = encap::scratch() else {
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    if backend.flags & BACKEND_F_LOCAL != 0 {
        // This host is the new owner; if it does not hold the connection, the previous owner
        // gets the packet (second chance from the edge itself: no hint needed).
        if let Some(h) = hint
            && h.flags & BACKEND_F_LOCAL == 0
            && !chance::has_socket(ctx, ip, ports)
        {
            let hash = track::tunnel_hash(picked, cfg, ip, ports, h);
            sc.request(h, None, hash, prev, counter::SECOND_CHANCE, frame_len);
            return Verdict::encapsulate(false);
        }
        maps::count_traffic(&maps::BACKEND_STATS, backend_id, frame_len);
        return Verdict::pass(counter::LOCAL);
    }
    let hash = track::tunnel_hash(picked, cfg, ip, ports, backend);
    sc.request(backend, hint, hash, backend_id, counter::ENCAP, frame_len);
    Verdict::encapsulate(false)
}

/// Sends a packet about or of a flow (an ICMP error, a fragment) where the flow's packets go:
/// backend `backend_id` with the flow's `hash`, counted `detail` on top of `local` or `encap`.
#[inline(always)]
pub fn to_flow_backend(backend_id: u32, hash: u32, frame_len: u64, detail: u32) -> Verdict {
    let Some(backend) = maps::BACKENDS.get(backend_id) else {
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    maps::count(detail);
    if backend.flags & BACKEND_F_LOCAL != 0 {
        maps::count_traffic(&maps::BACKEND_STATS, backend_id, frame_len);
        return Verdict::pass(counter::LOCAL);
    }
    let Some(sc) = encap::scratch() else {
        return Verdict::drop(counter::INTERNAL_ERROR);
    };
    sc.request(backend, None, hash, backend_id, counter::ENCAP, frame_len);
    Verdict::encapsulate(false)
}
