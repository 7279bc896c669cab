//! A small dataplane for BPF_PROG_TEST_RUN tests of per-flow behaviour (connection tracking,
//! second chance): one IPv4 VIP, port 0 (every port), a 13-slot ring, and three backends, `A` and
//! `B` remote (told apart by the outer destination of an encapsulated frame) and `LOCAL`, this
//! host. Tables are uniform (every slot one backend), so where a flow lands depends only on
//! which table the program used, never on its hash.

use std::net::Ipv4Addr;

use anycast_common::{
    BACKEND_F_LOCAL, CFG_F_HAS_SRC_V4, DataplaneConfig, GUE_DEFAULT_PORT, NO_TABLE, PROTO_TCP,
    VipKey,
};

use crate::fixture::{Dataplane, Sizes, net};
use crate::packet::{self, V4};

pub const RING: u32 = 13;
pub const SIZES: Sizes = Sizes {
    max_vips: 4,
    ring_size: RING,
    max_backends: 8,
};
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP_ID: u32 = 0;
/// Backend ids.
pub const A: u32 = 0;
pub const B: u32 = 1;
pub const LOCAL: u32 = 2;

/// The flags [`tcp_segment`] takes.
pub use crate::packet::{TCP_ACK, TCP_RST, TCP_SYN};

/// A backend's address: two in the backends' range, `LOCAL` is the edge itself.
pub fn backend_addr(id: u32) -> Ipv4Addr {
    match id {
        A => net::v4(net::BACKENDS_V4, 10),
        B => net::v4(net::BACKENDS_V4, 11),
        _ => net::EDGE_V4,
    }
}

/// The edge's dataplane config: tunnels from the edge's address, hash seed 7.
pub fn config(encap: u8, udp_timeout_s: u32, insert_limit: u32) -> DataplaneConfig {
    DataplaneConfig {
        tunnel_src_v4_be: net::EDGE_V4.octets(),
        tunnel_src_v6_be: [0; 16],
        ring_size: RING,
        hash_seed: 7,
        gue_port_be: GUE_DEFAULT_PORT.to_be(),
        encap,
        flags: CFG_F_HAS_SRC_V4,
        conn_udp_timeout_s: udp_timeout_s,
        conn_insert_limit: insert_limit,
    }
}

/// Writes backend `id` (its address, `BACKEND_F_LOCAL` for `LOCAL`) with `generation`.
pub fn set_backend(dp: &mut Dataplane, id: u32, generation: u16) {
    let flags = if id == LOCAL { BACKEND_F_LOCAL } else { 0 };
    dp.set_backend_addr(id, backend_addr(id).into(), flags, generation);
}

/// The three backends (generation 1) and `cfg`.
pub fn setup(dp: &mut Dataplane, cfg: &DataplaneConfig) {
    for id in [A, B, LOCAL] {
        set_backend(dp, id, 1);
    }
    dp.set_config(cfg);
}

/// Publishes a table in which every slot holds `id`, the way the agent does: table number
/// `table`, then the VIP value pointing at it (no previous table).
pub fn publish(dp: &mut Dataplane, proto: u8, table: u32, id: u32) {
    publish_change(dp, proto, table, id, NO_TABLE);
}

/// [`publish`] with `prev_table` named as the VIP's previous table (second chance).
pub fn publish_change(dp: &mut Dataplane, proto: u8, table: u32, id: u32, prev_table: u32) {
    let ring = vec![id; RING as usize];
    dp.publish_vip(vip_key(proto), VIP_ID, table, Some(&ring), prev_table);
}

/// The VIP's key for `proto` (port 0: every port).
pub fn vip_key(proto: u8) -> VipKey {
    VipKey::v4(VIP.octets(), 0, proto)
}

/// A 20-byte TCP header from `sport` to port 80 with `flags` (checksum left zero: the program
/// does not verify it).
pub fn tcp_segment(sport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&80u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

/// An IPv4 packet (no Ethernet header) from `src` to the VIP carrying [`tcp_segment`].
pub fn tcp_packet(src: Ipv4Addr, sport: u16, flags: u8) -> Vec<u8> {
    V4::new(src, VIP).raw(PROTO_TCP, &tcp_segment(sport, flags))
}

/// [`tcp_packet`] from [`CLIENT`] in an Ethernet frame from the router.
pub fn tcp_frame(sport: u16, flags: u8) -> Vec<u8> {
    packet::frame(None, &tcp_packet(CLIENT, sport, flags))
}

/// How much `counter` grew between two [`Dataplane::stats`] snapshots.
pub fn delta(before: &[u64], after: &[u64], counter: u32) -> u64 {
    after[counter as usize] - before[counter as usize]
}

/// Where the program sent `frame`: a backend id by the outer destination of the encapsulated
/// frame (whose inner packet must be `frame`'s as it came), or [`LOCAL`] for an untouched pass.
/// Panics on any other outcome.
pub fn landed(dp: &Dataplane, frame: &[u8]) -> u32 {
    let r = dp.run(frame, None).expect("test_run");
    match r.action {
        crate::fixture::XDP_PASS if r.output == frame => LOCAL,
        crate::fixture::XDP_REDIRECT => {
            let dst = packet::outer_dst_v4(&r.output);
            assert_eq!(
                &r.output[34..],
                &frame[14..],
                "the inner packet is the frame's as it came"
            );
            [A, B]
                .into_iter()
                .find(|&id| backend_addr(id) == dst)
                .unwrap_or_else(|| panic!("sent to {dst}"))
        }
        crate::fixture::XDP_DROP => panic!("dropped"),
        a => panic!("unexpected action {a}"),
    }
}
