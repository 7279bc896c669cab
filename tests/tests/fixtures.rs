//! The fixture table: packets through the XDP program with BPF_PROG_TEST_RUN, each with its
//! expected action, output bytes and counter changes.
//!
//! Expected outputs are built independently of the program (etherparse for headers and
//! checksums); the only shared code is `anycast_common::hash`, which *is* the contract for the
//! flow hash, the GUE source port and the outer flow label.
//!
//! Decisions the table pins down (see docs/dataplane.md):
//! - VIP_STATS / BACKEND_STATS bytes are the length of the received frame (L2 included).
//! - An IPv6 Fragment header counts `fragment` (like an IPv4 fragment: no ports to steer by);
//!   every other IPv6 extension header counts `ipv6_ext`.
//! - `fib_fail` and `oversize` drops count only themselves (no `encap`), and BACKEND_STATS is not
//!   checked for packets dropped after the backend was chosen.
//! - On an unresolved neighbour the encapsulated frame keeps the received frame's MACs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anycast_common::{
    AddrKey, BACKEND_F_LOCAL, Backend, CFG_F_HAS_SRC_V4, CFG_F_HAS_SRC_V6, DataplaneConfig,
    ENCAP_GUE, ENCAP_IPIP, GUE_DEFAULT_PORT, NO_TABLE, PROTO_TCP, PROTO_UDP, VipKey, VipValue,
    counter as c, hash,
};
use anycast_tests::fixture::{
    Dataplane, Expect, Fixture, Output, Sizes, Traffic, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
    fixture_netns, net,
};
use anycast_tests::packet::{self as p, Gue, Outer, V4, V6};

const SEED: u32 = 0x5eed_1234;
const RING: u32 = 13;
const SIZES: Sizes = Sizes {
    max_vips: 32,
    ring_size: RING,
    max_backends: 16,
};

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 7);
/// Tunnel sources allowed to decapsulate here, and ones that are not.
const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 1);
const ALLOWED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0, 1);
const REFUSED_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 6, 1);
const REFUSED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 6, 0, 0, 0, 0, 0, 1);

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("v4")
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("v6")
}

/// Backends by id.
fn backends() -> Vec<(u32, IpAddr, bool)> {
    vec![
        (0, net::EDGE_V4.into(), true),
        (1, net::v4(net::BACKENDS_V4, 10).into(), false),
        (2, net::v6(net::BACKENDS_V6, 0x10).into(), false),
        (3, net::v4(net::BACKENDS_V4, 11).into(), false),
        (4, net::v4(net::UNRESOLVED_V4, 10).into(), false),
        (5, net::v4(net::SMALL_MTU_V4, 10).into(), false),
        (6, net::v6(net::UNRESOLVED_V6, 0x10).into(), false),
        (7, net::v6(net::SMALL_MTU_V6, 0x10).into(), false),
        (8, net::v4(net::BLACKHOLE_V4, 10).into(), false),
        (9, net::EDGE_V6.into(), true),
    ]
}

fn backend_addr(id: u32) -> IpAddr {
    backends()
        .into_iter()
        .find(|b| b.0 == id)
        .expect("backend id")
        .1
}

/// A VIP: id (= table, = VIP_STATS index), address, port (0 = any), protocol, and the ring
/// content (`None` = no table).
struct Vip {
    id: u32,
    addr: IpAddr,
    port: u16,
    proto: u8,
    ring: Option<fn(u32) -> u32>,
}

const V_TCP4: u32 = 0;
const V_UDP4: u32 = 1;
const V_TCP6: u32 = 2;
const V_6TO4: u32 = 3;
const V_4TO6: u32 = 4;
const V_LOCAL4: u32 = 5;
const V_ANYPORT: u32 = 6;
const V_EXACT443: u32 = 7;
const V_EMPTY: u32 = 8;
const V_UNRES4: u32 = 9;
const V_MTU4: u32 = 10;
const V_UNRES6: u32 = 11;
const V_MTU6: u32 = 12;
const V_MIXED: u32 = 13;
const V_BLACKHOLE: u32 = 14;
const V_UDP6: u32 = 15;
const V_UDP4TO6: u32 = 16;
const V_LOCAL6: u32 = 17;
const V_UDP6TO4: u32 = 18;

fn vips() -> Vec<Vip> {
    let a4 = |s: &str| IpAddr::V4(v4(s));
    let a6 = |s: &str| IpAddr::V6(v6(s));
    vec![
        Vip {
            id: V_TCP4,
            addr: a4("203.0.113.10"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 1),
        },
        Vip {
            id: V_UDP4,
            addr: a4("203.0.113.10"),
            port: 53,
            proto: PROTO_UDP,
            ring: Some(|_| 1),
        },
        Vip {
            id: V_TCP6,
            addr: a6("2001:db8::10"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 2),
        },
        Vip {
            id: V_6TO4,
            addr: a6("2001:db8::11"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 1),
        },
        Vip {
            id: V_4TO6,
            addr: a4("203.0.113.11"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 2),
        },
        Vip {
            id: V_LOCAL4,
            addr: a4("203.0.113.12"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 0),
        },
        Vip {
            id: V_ANYPORT,
            addr: a4("203.0.113.20"),
            port: 0,
            proto: PROTO_TCP,
            ring: Some(|_| 1),
        },
        Vip {
            id: V_EXACT443,
            addr: a4("203.0.113.20"),
            port: 443,
            proto: PROTO_TCP,
            ring: Some(|_| 3),
        },
        Vip {
            id: V_EMPTY,
            addr: a4("203.0.113.13"),
            port: 80,
            proto: PROTO_TCP,
            ring: None,
        },
        Vip {
            id: V_UNRES4,
            addr: a4("203.0.113.14"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 4),
        },
        Vip {
            id: V_MTU4,
            addr: a4("203.0.113.15"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 5),
        },
        Vip {
            id: V_UNRES6,
            addr: a6("2001:db8::12"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 6),
        },
        Vip {
            id: V_MTU6,
            addr: a6("2001:db8::13"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 7),
        },
        Vip {
            id: V_MIXED,
            addr: a4("203.0.113.16"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(mixed_ring),
        },
        Vip {
            id: V_BLACKHOLE,
            addr: a4("203.0.113.17"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 8),
        },
        Vip {
            id: V_UDP6,
            addr: a6("2001:db8::14"),
            port: 53,
            proto: PROTO_UDP,
            ring: Some(|_| 2),
        },
        Vip {
            id: V_UDP4TO6,
            addr: a4("203.0.113.18"),
            port: 0,
            proto: PROTO_UDP,
            ring: Some(|_| 2),
        },
        Vip {
            id: V_LOCAL6,
            addr: a6("2001:db8::15"),
            port: 80,
            proto: PROTO_TCP,
            ring: Some(|_| 9),
        },
        Vip {
            id: V_UDP6TO4,
            addr: a6("2001:db8::16"),
            port: 53,
            proto: PROTO_UDP,
            ring: Some(|_| 1),
        },
    ]
}

/// Ring of `V_MIXED`: even slots backend 1, odd slots backend 3, so the slot the hash picks shows.
fn mixed_ring(slot: u32) -> u32 {
    if slot.is_multiple_of(2) { 1 } else { 3 }
}

fn vip(id: u32) -> Vip {
    vips().into_iter().find(|v| v.id == id).expect("vip id")
}
fn vip4(id: u32) -> Ipv4Addr {
    match vip(id).addr {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("vip {id} is IPv6"),
    }
}
fn vip6(id: u32) -> Ipv6Addr {
    match vip(id).addr {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => panic!("vip {id} is IPv4"),
    }
}

fn config(encap: u8, flags: u8) -> DataplaneConfig {
    DataplaneConfig {
        tunnel_src_v4_be: net::EDGE_V4.octets(),
        tunnel_src_v6_be: net::EDGE_V6.octets(),
        ring_size: RING,
        hash_seed: SEED,
        gue_port_be: GUE_DEFAULT_PORT.to_be(),
        encap,
        flags,
        conn_udp_timeout_s: 30,
        conn_insert_limit: 0,
    }
}

fn ipip() -> DataplaneConfig {
    config(ENCAP_IPIP, CFG_F_HAS_SRC_V4 | CFG_F_HAS_SRC_V6)
}
fn gue() -> DataplaneConfig {
    config(ENCAP_GUE, CFG_F_HAS_SRC_V4 | CFG_F_HAS_SRC_V6)
}

fn setup(dp: &mut Dataplane) {
    for (id, addr, local) in backends() {
        let a = anycast::dataplane::addr_key_of(addr);
        dp.set_backend(
            id,
            Backend {
                addr_be: a.addr_be,
                family: a.family,
                flags: if local { BACKEND_F_LOCAL } else { 0 },
                generation: 1,
            },
        );
    }
    for v in vips() {
        let key = match v.addr {
            IpAddr::V4(a) => VipKey::v4(a.octets(), v.port, v.proto),
            IpAddr::V6(a) => VipKey::v6(a.octets(), v.port, v.proto),
        };
        let table = match v.ring {
            Some(f) => {
                let ids: Vec<u32> = (0..RING).map(f).collect();
                dp.set_table(v.id, &ids);
                v.id
            }
            None => NO_TABLE,
        };
        dp.set_vip(
            key,
            VipValue {
                vip_id: v.id,
                table,
                prev_table: NO_TABLE,
                flags: 0,
            },
        );
    }
    dp.add_local(AddrKey::v4(net::EDGE_V4.octets()));
    dp.add_local(AddrKey::v6(net::EDGE_V6.octets()));
    dp.allow_v4(v4("198.18.5.0"), 24);
    dp.allow_v6(v6("fd00:5::"), 64);
    dp.set_config(&ipip());
}

/// Which backend the contract picks for an input frame to `vip_id`.
fn chosen_backend(vip_id: u32, frame: &[u8]) -> u32 {
    let ring = vip(vip_id).ring.expect("vip has a ring");
    let h = p::flow_hash(SEED, &frame[p::l3_offset(frame)..]);
    ring(hash::ring_slot(h, RING))
}

#[derive(Clone, Copy)]
enum Leaves {
    /// Ingress loopback (no ctx): egress is the veth, so bpf_redirect.
    Redirect,
    /// Ingress = the veth the route leaves by.
    Tx,
    /// Neighbour unresolved: handed to the kernel with the original MACs.
    NoNeigh,
}

/// Expected result of a VIP packet encapsulated to the backend the contract picks.
fn encap_fixture(
    name: &str,
    cfg: DataplaneConfig,
    vip_id: u32,
    input: Vec<u8>,
    leaves: Leaves,
) -> Fixture {
    let backend = chosen_backend(vip_id, &input);
    let inner = &input[p::l3_offset(&input)..];
    let h = p::flow_hash(SEED, inner);
    let outer = match backend_addr(backend) {
        IpAddr::V4(dst) => Outer::V4 {
            src: net::EDGE_V4,
            dst,
        },
        IpAddr::V6(dst) => Outer::V6 {
            src: net::EDGE_V6,
            dst,
            flow_label: hash::flow_label(h),
        },
    };
    let is_gue = cfg.encap == ENCAP_GUE;
    let g = is_gue.then(|| Gue {
        src_port: hash::gue_source_port(h),
        dst_port: u16::from_be(cfg.gue_port_be),
    });
    let (dmac, smac) = match leaves {
        Leaves::Redirect | Leaves::Tx => (net::GW_MAC, net::DEV_MAC),
        Leaves::NoNeigh => (
            input[0..6].try_into().expect("6"),
            input[6..12].try_into().expect("6"),
        ),
    };
    let out = p::encapsulated(&input, outer, g, dmac, smac);
    let cross = (inner[0] >> 4 == 4) != matches!(outer, Outer::V4 { .. });
    let mut counters = vec![c::ENCAP];
    if is_gue {
        counters.push(c::ENCAP_GUE);
    }
    if cross {
        counters.push(c::ENCAP_CROSS_FAMILY);
    }
    let (action, ingress) = match leaves {
        Leaves::Redirect => {
            counters.push(c::REDIRECT);
            (XDP_REDIRECT, None)
        }
        Leaves::Tx => {
            counters.push(c::TX);
            (XDP_TX, Some(net::DEV))
        }
        Leaves::NoNeigh => {
            counters.push(c::FIB_NO_NEIGH);
            (XDP_PASS, None)
        }
    };
    let len = input.len() as u64;
    Fixture {
        name: name.into(),
        ingress,
        config: cfg,
        expect: Expect::Run {
            action,
            output: Output::Bytes(out),
            counters,
            vip: Some(Traffic {
                id: vip_id,
                packets: 1,
                bytes: len,
            }),
            backend: Ok(Some(Traffic {
                id: backend,
                packets: 1,
                bytes: len,
            })),
        },
        input,
    }
}

/// A packet that must pass untouched, counting `counter`, touching no VIP.
fn untouched(name: &str, input: Vec<u8>, counter: u32) -> Fixture {
    Fixture {
        name: name.into(),
        input,
        ingress: None,
        config: ipip(),
        expect: Expect::Run {
            action: XDP_PASS,
            output: Output::Unchanged,
            counters: vec![counter],
            vip: None,
            backend: Ok(None),
        },
    }
}

fn local_fixture(name: &str, vip_id: u32, input: Vec<u8>) -> Fixture {
    let backend = chosen_backend(vip_id, &input);
    let len = input.len() as u64;
    Fixture {
        name: name.into(),
        ingress: None,
        config: ipip(),
        expect: Expect::Run {
            action: XDP_PASS,
            output: Output::Unchanged,
            counters: vec![c::LOCAL],
            vip: Some(Traffic {
                id: vip_id,
                packets: 1,
                bytes: len,
            }),
            backend: Ok(Some(Traffic {
                id: backend,
                packets: 1,
                bytes: len,
            })),
        },
        input,
    }
}

/// A VIP packet that must be dropped with `counter`.
fn vip_drop(
    name: &str,
    cfg: DataplaneConfig,
    vip_id: u32,
    input: Vec<u8>,
    counter: u32,
    backend_checked: bool,
) -> Fixture {
    let len = input.len() as u64;
    Fixture {
        name: name.into(),
        ingress: None,
        config: cfg,
        expect: Expect::Run {
            action: XDP_DROP,
            output: Output::Ignored,
            counters: vec![counter],
            vip: Some(Traffic {
                id: vip_id,
                packets: 1,
                bytes: len,
            }),
            backend: if backend_checked { Ok(None) } else { Err(()) },
        },
        input,
    }
}

/// A tunnelled packet to this host from an allowed source: outer headers stripped, L2 kept.
fn decap_fixture(name: &str, input: Vec<u8>, inner: &[u8]) -> Fixture {
    let l3 = p::l3_offset(&input);
    let mut out = input[..l3].to_vec();
    let et = p::ethertype_of(inner).to_be_bytes();
    out[l3 - 2..l3].copy_from_slice(&et);
    out.extend_from_slice(inner);
    Fixture {
        name: name.into(),
        input,
        ingress: None,
        config: ipip(),
        expect: Expect::Run {
            action: XDP_PASS,
            output: Output::Bytes(out),
            counters: vec![c::DECAP],
            vip: None,
            backend: Ok(None),
        },
    }
}

fn decap_refused(name: &str, input: Vec<u8>) -> Fixture {
    Fixture {
        name: name.into(),
        input,
        ingress: None,
        config: ipip(),
        expect: Expect::Run {
            action: XDP_DROP,
            output: Output::Ignored,
            counters: vec![c::DECAP_REFUSED],
            vip: None,
            backend: Ok(None),
        },
    }
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn tcp4(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    V4::new(CLIENT_V4, dst)
        .tos(0x2a)
        .tcp(40000, dport, &payload(32))
}
fn udp4(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    V4::new(CLIENT_V4, dst).udp(40001, dport, &payload(24))
}
fn tcp6(dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    V6::new(CLIENT_V6, dst)
        .traffic_class(0x2a)
        .tcp(40002, dport, &payload(32))
}
fn udp6(dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    V6::new(CLIENT_V6, dst).udp(40003, dport, &payload(24))
}

/// Cuts a frame to `len` bytes.
fn cut(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// An IPv4 packet to `dst` with protocol `proto` whose L4 part is only `l4_len` bytes (lengths
/// in the IP header consistent, so only the transport header is short).
fn short_l4_v4(dst: Ipv4Addr, proto: u8, l4_len: usize) -> Vec<u8> {
    let full = match proto {
        PROTO_TCP => V4::new(CLIENT_V4, dst).tcp(40000, 80, &[]),
        _ => V4::new(CLIENT_V4, dst).udp(40001, 53, &[]),
    };
    V4::new(CLIENT_V4, dst).raw(proto, &full[20..20 + l4_len])
}

fn short_l4_v6(dst: Ipv6Addr, proto: u8, l4_len: usize) -> Vec<u8> {
    let full = match proto {
        PROTO_TCP => V6::new(CLIENT_V6, dst).tcp(40000, 80, &[]),
        _ => V6::new(CLIENT_V6, dst).udp(40001, 53, &[]),
    };
    V6::new(CLIENT_V6, dst).raw(proto, &full[40..40 + l4_len])
}

fn set_u16(mut b: Vec<u8>, at: usize, v: u16) -> Vec<u8> {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
    b
}

#[expect(
    clippy::vec_init_then_push,
    reason = "the table reads as a list of rows with comments between groups"
)]
fn fixtures() -> Vec<Fixture> {
    let f = p::frame;
    let mut t = Vec::new();

    // --- not for us: untouched ---
    t.push(untouched(
        "non_vip_tcp_v4_passes_untouched",
        f(None, &tcp4(v4("203.0.113.99"), 80)),
        c::PASS,
    ));
    t.push(untouched(
        "non_vip_tcp_v6_passes_untouched",
        f(None, &tcp6(v6("2001:db8::99"), 80)),
        c::PASS,
    ));
    t.push(untouched(
        "non_vip_udp_v4_passes_untouched",
        f(None, &udp4(v4("203.0.113.99"), 53)),
        c::PASS,
    ));
    t.push(untouched(
        "arp_passes_untouched",
        p::arp_request(CLIENT_V4, net::EDGE_V4),
        c::PASS,
    ));
    t.push(untouched(
        "vip_address_other_port_passes",
        f(None, &tcp4(vip4(V_TCP4), 81)),
        c::PASS,
    ));
    t.push(untouched(
        "vip_address_other_protocol_passes",
        f(
            None,
            &V4::new(CLIENT_V4, vip4(V_TCP4)).udp(1, 80, &payload(8)),
        ),
        c::PASS,
    ));
    t.push(untouched(
        "vip_address_icmp_passes",
        f(
            None,
            &V4::new(CLIENT_V4, vip4(V_TCP4)).raw(1, &[8, 0, 0xf7, 0xfe, 0, 1, 0, 0]),
        ),
        c::PASS,
    ));
    t.push(untouched(
        "vlan_non_vip_passes_with_tag",
        f(Some(100), &tcp4(v4("203.0.113.99"), 80)),
        c::PASS,
    ));
    t.push(untouched(
        "tcp_to_local_address_passes",
        f(None, &tcp4(net::EDGE_V4, 22)),
        c::PASS,
    ));
    t.push(untouched(
        "udp_to_local_address_other_port_passes",
        f(None, &udp4(net::EDGE_V4, 53)),
        c::PASS,
    ));
    t.push(untouched(
        "ipip_to_non_local_address_passes",
        f(
            None,
            &p::ipip_v4(ALLOWED_V4, v4("198.18.9.9"), &tcp4(vip4(V_TCP4), 80)),
        ),
        c::PASS,
    ));

    // --- local backend ---
    t.push(local_fixture(
        "local_vip_v4_passes_untouched",
        V_LOCAL4,
        f(None, &tcp4(vip4(V_LOCAL4), 80)),
    ));
    t.push(local_fixture(
        "local_vip_v6_passes_untouched",
        V_LOCAL6,
        f(None, &tcp6(vip6(V_LOCAL6), 80)),
    ));

    // --- IPIP, every family pair ---
    t.push(encap_fixture(
        "ipip_4in4_tcp",
        ipip(),
        V_TCP4,
        f(None, &tcp4(vip4(V_TCP4), 80)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "ipip_4in4_udp",
        ipip(),
        V_UDP4,
        f(None, &udp4(vip4(V_UDP4), 53)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "ipip_6in6_tcp",
        ipip(),
        V_TCP6,
        f(None, &tcp6(vip6(V_TCP6), 80)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "ipip_6in6_udp",
        ipip(),
        V_UDP6,
        f(None, &udp6(vip6(V_UDP6), 53)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "ipip_6in4_tcp",
        ipip(),
        V_6TO4,
        f(None, &tcp6(vip6(V_6TO4), 80)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "ipip_4in6_tcp",
        ipip(),
        V_4TO6,
        f(None, &tcp4(vip4(V_4TO6), 80)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "ipip_4in4_copies_tos",
        ipip(),
        V_TCP4,
        f(
            None,
            &V4::new(CLIENT_V4, vip4(V_TCP4))
                .tos(0xb9)
                .tcp(40100, 80, &payload(10)),
        ),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "ipip_6in6_copies_traffic_class",
        ipip(),
        V_TCP6,
        f(
            None,
            &V6::new(CLIENT_V6, vip6(V_TCP6))
                .traffic_class(0xb9)
                .tcp(40100, 80, &payload(10)),
        ),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "port0_vip_matches_any_port",
        ipip(),
        V_ANYPORT,
        f(None, &tcp4(vip4(V_ANYPORT), 8080)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "exact_port_vip_beats_port0_vip",
        ipip(),
        V_EXACT443,
        f(None, &tcp4(vip4(V_EXACT443), 443)),
        Leaves::Redirect,
    ));
    // Several source ports through a ring of two backends: the slot must be hash % ring_size.
    let mut seen = [false; 2];
    for sport in 41000u16..41040 {
        let input = f(
            None,
            &V4::new(CLIENT_V4, vip4(V_MIXED)).tcp(sport, 80, &payload(4)),
        );
        let b = chosen_backend(V_MIXED, &input);
        let i = usize::from(b == 3);
        if !seen[i] {
            seen[i] = true;
            t.push(encap_fixture(
                &format!("ring_slot_is_hash_mod_ring_size_sport{sport}"),
                ipip(),
                V_MIXED,
                input,
                Leaves::Redirect,
            ));
        }
    }
    assert!(
        seen[0] && seen[1],
        "source ports should reach both backends of the mixed ring"
    );

    // --- VLAN ---
    t.push(encap_fixture(
        "vlan_vip_encapsulated_tag_removed",
        ipip(),
        V_TCP4,
        f(Some(100), &tcp4(vip4(V_TCP4), 80)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "vlan_vip_v6_encapsulated_tag_removed",
        ipip(),
        V_TCP6,
        f(Some(101), &tcp6(vip6(V_TCP6), 80)),
        Leaves::Redirect,
    ));

    // --- IPv4 options: IHL=6 with four NOPs, inner bytes (options included) preserved ---
    t.push(encap_fixture(
        "ipv4_options_vip_encapsulated_options_preserved",
        ipip(),
        V_TCP4,
        f(
            None,
            &V4::new(CLIENT_V4, vip4(V_TCP4))
                .options(&[1, 1, 1, 1])
                .tcp(40200, 80, &payload(20)),
        ),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "ipv4_options_vip_gue_options_preserved",
        gue(),
        V_TCP4,
        f(
            None,
            &V4::new(CLIENT_V4, vip4(V_TCP4))
                .options(&[1, 1, 1, 1])
                .tcp(40201, 80, &payload(20)),
        ),
        Leaves::Redirect,
    ));
    // A minimum-size frame: 54 bytes of headers padded to 60; the padding stays after the inner packet.
    t.push(encap_fixture(
        "ethernet_padding_stays_after_inner_packet",
        ipip(),
        V_TCP4,
        p::pad_to(
            f(None, &V4::new(CLIENT_V4, vip4(V_TCP4)).tcp(40300, 80, &[])),
            60,
        ),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "ethernet_padding_stays_after_inner_packet_gue",
        gue(),
        V_TCP4,
        p::pad_to(
            f(None, &V4::new(CLIENT_V4, vip4(V_TCP4)).tcp(40301, 80, &[])),
            60,
        ),
        Leaves::Redirect,
    ));

    // --- GUE ---
    t.push(encap_fixture(
        "gue_4in4_tcp",
        gue(),
        V_TCP4,
        f(None, &tcp4(vip4(V_TCP4), 80)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "gue_4in4_udp",
        gue(),
        V_UDP4,
        f(None, &udp4(vip4(V_UDP4), 53)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "gue_6in6_tcp",
        gue(),
        V_TCP6,
        f(None, &tcp6(vip6(V_TCP6), 80)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "gue_6in6_udp",
        gue(),
        V_UDP6,
        f(None, &udp6(vip6(V_UDP6), 53)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "gue_6in4_udp",
        gue(),
        V_UDP6TO4,
        f(None, &udp6(vip6(V_UDP6TO4), 53)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "gue_6in4_tcp",
        gue(),
        V_6TO4,
        f(None, &tcp6(vip6(V_6TO4), 80)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "gue_4in6_tcp",
        gue(),
        V_4TO6,
        f(None, &tcp4(vip4(V_4TO6), 80)),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "gue_4in4_inner_udp_without_checksum_outer_checksum_zero",
        gue(),
        V_UDP4,
        f(
            None,
            &V4::new(CLIENT_V4, vip4(V_UDP4)).udp_no_checksum(40400, 53, &payload(24)),
        ),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "gue_4in6_inner_udp_without_checksum_outer_checksum_zero",
        gue(),
        V_UDP4TO6,
        f(
            None,
            &V4::new(CLIENT_V4, vip4(V_UDP4TO6)).udp_no_checksum(40401, 5353, &payload(24)),
        ),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "gue_4in6_inner_udp_with_checksum",
        gue(),
        V_UDP4TO6,
        f(
            None,
            &V4::new(CLIENT_V4, vip4(V_UDP4TO6)).udp(40402, 5353, &payload(25)),
        ),
        Leaves::Redirect,
    ));
    t.push(encap_fixture(
        "gue_vlan_tag_removed",
        gue(),
        V_UDP6,
        f(Some(7), &udp6(vip6(V_UDP6), 53)),
        Leaves::Redirect,
    ));
    let mut gue_port = gue();
    gue_port.gue_port_be = 7777u16.to_be();
    t.push(encap_fixture(
        "gue_uses_configured_port",
        gue_port,
        V_TCP4,
        f(None, &tcp4(vip4(V_TCP4), 80)),
        Leaves::Redirect,
    ));

    // --- XDP_TX when the route leaves by the ingress device ---
    t.push(encap_fixture(
        "xdp_tx_when_egress_is_ingress_v4",
        ipip(),
        V_TCP4,
        f(None, &tcp4(vip4(V_TCP4), 80)),
        Leaves::Tx,
    ));
    t.push(encap_fixture(
        "xdp_tx_when_egress_is_ingress_v6",
        ipip(),
        V_TCP6,
        f(None, &tcp6(vip6(V_TCP6), 80)),
        Leaves::Tx,
    ));
    t.push(encap_fixture(
        "xdp_tx_when_egress_is_ingress_gue",
        gue(),
        V_4TO6,
        f(None, &tcp4(vip4(V_4TO6), 80)),
        Leaves::Tx,
    ));

    // --- FIB outcomes ---
    t.push(encap_fixture(
        "no_neighbour_v4_handed_to_kernel",
        ipip(),
        V_UNRES4,
        f(None, &tcp4(vip4(V_UNRES4), 80)),
        Leaves::NoNeigh,
    ));
    t.push(encap_fixture(
        "no_neighbour_v6_handed_to_kernel",
        ipip(),
        V_UNRES6,
        f(None, &tcp6(vip6(V_UNRES6), 80)),
        Leaves::NoNeigh,
    ));
    t.push(encap_fixture(
        "no_neighbour_vlan_handed_to_kernel_tag_removed",
        gue(),
        V_UNRES4,
        f(Some(9), &tcp4(vip4(V_UNRES4), 80)),
        Leaves::NoNeigh,
    ));
    // Outer = 20 + inner: inner 1280 fits a 1300 route exactly, 1281 does not.
    let sized4 = |inner_len: usize| {
        V4::new(CLIENT_V4, vip4(V_MTU4)).tcp(40500, 80, &payload(inner_len - 40))
    };
    t.push(encap_fixture(
        "small_mtu_route_exact_fit_v4",
        ipip(),
        V_MTU4,
        f(None, &sized4(net::SMALL_MTU - 20)),
        Leaves::Redirect,
    ));
    t.push(vip_drop(
        "oversize_v4_dropped",
        ipip(),
        V_MTU4,
        f(None, &sized4(net::SMALL_MTU - 19)),
        c::OVERSIZE,
        false,
    ));
    let sized6 = |inner_len: usize| {
        V6::new(CLIENT_V6, vip6(V_MTU6)).tcp(40501, 80, &payload(inner_len - 60))
    };
    t.push(encap_fixture(
        "small_mtu_route_exact_fit_v6",
        ipip(),
        V_MTU6,
        f(None, &sized6(net::SMALL_MTU - 40)),
        Leaves::Redirect,
    ));
    t.push(vip_drop(
        "oversize_v6_dropped",
        ipip(),
        V_MTU6,
        f(None, &sized6(net::SMALL_MTU - 39)),
        c::OVERSIZE,
        false,
    ));
    t.push(vip_drop(
        "fib_blackhole_dropped",
        ipip(),
        V_BLACKHOLE,
        f(None, &tcp4(vip4(V_BLACKHOLE), 80)),
        c::FIB_FAIL,
        false,
    ));

    // --- no backend / no tunnel source ---
    t.push(vip_drop(
        "vip_without_backends_dropped",
        ipip(),
        V_EMPTY,
        f(None, &tcp4(vip4(V_EMPTY), 80)),
        c::NO_BACKEND,
        true,
    ));
    t.push(vip_drop(
        "no_v6_tunnel_source_drops_6in6",
        config(ENCAP_IPIP, CFG_F_HAS_SRC_V4),
        V_TCP6,
        f(None, &tcp6(vip6(V_TCP6), 80)),
        c::NO_TUNNEL_SOURCE,
        false,
    ));
    t.push(vip_drop(
        "no_v6_tunnel_source_drops_4in6",
        config(ENCAP_GUE, CFG_F_HAS_SRC_V4),
        V_4TO6,
        f(None, &tcp4(vip4(V_4TO6), 80)),
        c::NO_TUNNEL_SOURCE,
        false,
    ));
    t.push(vip_drop(
        "no_v4_tunnel_source_drops_4in4",
        config(ENCAP_IPIP, CFG_F_HAS_SRC_V6),
        V_TCP4,
        f(None, &tcp4(vip4(V_TCP4), 80)),
        c::NO_TUNNEL_SOURCE,
        false,
    ));
    // With only the v6 source configured, a v6 backend still works.
    t.push(encap_fixture(
        "only_v6_tunnel_source_4in6_works",
        config(ENCAP_IPIP, CFG_F_HAS_SRC_V6),
        V_4TO6,
        f(None, &tcp4(vip4(V_4TO6), 80)),
        Leaves::Redirect,
    ));

    // --- fragments and IPv6 extension headers ---
    t.push(untouched(
        "ipv4_first_fragment_vip_passes",
        f(
            None,
            &V4::new(CLIENT_V4, vip4(V_TCP4))
                .fragment(true, 0)
                .tcp(40600, 80, &payload(40)),
        ),
        c::FRAGMENT,
    ));
    t.push(untouched(
        "ipv4_later_fragment_vip_passes",
        f(
            None,
            &V4::new(CLIENT_V4, vip4(V_TCP4))
                .fragment(false, 100)
                .raw(PROTO_TCP, &payload(40)),
        ),
        c::FRAGMENT,
    ));
    t.push(untouched(
        "ipv4_middle_fragment_non_vip_passes",
        f(
            None,
            &V4::new(CLIENT_V4, v4("203.0.113.99"))
                .fragment(true, 7)
                .raw(PROTO_UDP, &payload(40)),
        ),
        c::FRAGMENT,
    ));
    let tcp_seg = V6::new(CLIENT_V6, vip6(V_TCP6)).tcp(40700, 80, &payload(16))[40..].to_vec();
    let mut hbh = vec![PROTO_TCP, 0, 1, 4, 0, 0, 0, 0]; // Hop-by-Hop: next TCP, PadN
    hbh.extend_from_slice(&tcp_seg);
    t.push(untouched(
        "ipv6_hop_by_hop_vip_passes",
        f(None, &V6::new(CLIENT_V6, vip6(V_TCP6)).raw(0, &hbh)),
        c::IPV6_EXT,
    ));
    let mut frag = vec![PROTO_TCP, 0, 0, 1, 0, 0, 0x12, 0x34]; // Fragment header: offset 0, M=1
    frag.extend_from_slice(&tcp_seg);
    t.push(untouched(
        "ipv6_fragment_header_vip_passes",
        f(None, &V6::new(CLIENT_V6, vip6(V_TCP6)).raw(44, &frag)),
        c::FRAGMENT,
    ));
    let mut dst_opts = vec![PROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
    dst_opts.extend_from_slice(&tcp_seg);
    t.push(untouched(
        "ipv6_destination_options_non_vip_passes",
        f(
            None,
            &V6::new(CLIENT_V6, v6("2001:db8::99")).raw(60, &dst_opts),
        ),
        c::IPV6_EXT,
    ));

    // --- truncated or inconsistent headers: passed untouched, parse_error ---
    let vip_tcp4 = f(None, &tcp4(vip4(V_TCP4), 80));
    let vip_tcp6 = f(None, &tcp6(vip6(V_TCP6), 80));
    // Shorter than an Ethernet header: BPF_PROG_TEST_RUN refuses it (bpf_test_init, EINVAL),
    // so no such frame reaches the program through this harness.
    t.push(Fixture {
        name: "ethernet_truncated_refused_by_test_run".into(),
        input: cut(vip_tcp4.clone(), 13),
        ingress: None,
        config: ipip(),
        expect: Expect::KernelRejects(libc::EINVAL),
    });
    t.push(untouched(
        "ethernet_header_only_ipv4_ethertype",
        cut(vip_tcp4.clone(), 14),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "ethernet_header_only_ipv6_ethertype",
        cut(vip_tcp6.clone(), 14),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "vlan_tag_truncated",
        cut(f(Some(100), &tcp4(vip4(V_TCP4), 80)), 16),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "vlan_then_ipv4_truncated",
        cut(f(Some(100), &tcp4(vip4(V_TCP4), 80)), 18 + 10),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "ipv4_header_truncated_vip",
        cut(vip_tcp4.clone(), 14 + 19),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "ipv4_header_truncated_non_vip",
        cut(f(None, &tcp4(v4("203.0.113.99"), 80)), 14 + 12),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "ipv4_options_truncated_vip",
        cut(
            f(
                None,
                &V4::new(CLIENT_V4, vip4(V_TCP4))
                    .options(&[1, 1, 1, 1])
                    .tcp(1, 80, &[]),
            ),
            14 + 22,
        ),
        c::PARSE_ERROR,
    ));
    let mut ihl4 = tcp4(vip4(V_TCP4), 80);
    ihl4[0] = 0x44;
    t.push(untouched(
        "ipv4_ihl_below_5_vip",
        f(None, &ihl4),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "ipv4_total_length_below_header_vip",
        f(None, &set_u16(tcp4(vip4(V_TCP4), 80), 2, 16)),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "ipv4_frame_shorter_than_total_length_vip",
        cut(vip_tcp4.clone(), vip_tcp4.len() - 4),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "ipv6_header_truncated_vip",
        cut(vip_tcp6.clone(), 14 + 39),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "ipv6_payload_length_zero_vip",
        f(None, &set_u16(tcp6(vip6(V_TCP6), 80), 4, 0)),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "ipv6_frame_shorter_than_payload_length_vip",
        cut(vip_tcp6.clone(), vip_tcp6.len() - 4),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "tcp_ports_truncated_vip_v4",
        f(None, &short_l4_v4(vip4(V_TCP4), PROTO_TCP, 3)),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "tcp_header_truncated_after_ports_vip_v4",
        f(None, &short_l4_v4(vip4(V_TCP4), PROTO_TCP, 12)),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "tcp_header_truncated_non_vip_v4",
        f(None, &short_l4_v4(v4("203.0.113.99"), PROTO_TCP, 12)),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "udp_header_truncated_vip_v4",
        f(None, &short_l4_v4(vip4(V_UDP4), PROTO_UDP, 6)),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "tcp_header_truncated_vip_v6",
        f(None, &short_l4_v6(vip6(V_TCP6), PROTO_TCP, 12)),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "udp_header_truncated_vip_v6",
        f(None, &short_l4_v6(vip6(V_UDP6), PROTO_UDP, 6)),
        c::PARSE_ERROR,
    ));
    t.push(untouched(
        "vlan_tcp_header_truncated_vip_v4",
        f(Some(5), &short_l4_v4(vip4(V_TCP4), PROTO_TCP, 12)),
        c::PARSE_ERROR,
    ));

    // --- decapsulation ---
    let in4 = tcp4(vip4(V_TCP4), 80);
    let in6 = tcp6(vip6(V_TCP6), 80);
    let gue_udp4 =
        |src: Ipv4Addr, body: &[u8]| V4::new(src, net::EDGE_V4).udp(50000, GUE_DEFAULT_PORT, body);
    let gue_udp6 =
        |src: Ipv6Addr, body: &[u8]| V6::new(src, net::EDGE_V6).udp(50001, GUE_DEFAULT_PORT, body);
    t.push(decap_fixture(
        "decap_ipip_4in4_allowed",
        f(None, &p::ipip_v4(ALLOWED_V4, net::EDGE_V4, &in4)),
        &in4,
    ));
    t.push(decap_fixture(
        "decap_ipip_6in4_allowed",
        f(None, &p::ipip_v4(ALLOWED_V4, net::EDGE_V4, &in6)),
        &in6,
    ));
    t.push(decap_fixture(
        "decap_ipip_6in6_allowed",
        f(None, &p::ipip_v6(ALLOWED_V6, net::EDGE_V6, &in6)),
        &in6,
    ));
    t.push(decap_fixture(
        "decap_ipip_4in6_allowed",
        f(None, &p::ipip_v6(ALLOWED_V6, net::EDGE_V6, &in4)),
        &in4,
    ));
    t.push(decap_fixture(
        "decap_gue_v4_outer_allowed",
        f(None, &gue_udp4(ALLOWED_V4, &p::gue_v0(&in4, 0))),
        &in4,
    ));
    t.push(decap_fixture(
        "decap_gue_v6_outer_allowed",
        f(None, &gue_udp6(ALLOWED_V6, &p::gue_v0(&in6, 0))),
        &in6,
    ));
    t.push(decap_fixture(
        "decap_gue_6in4_allowed",
        f(None, &gue_udp4(ALLOWED_V4, &p::gue_v0(&in6, 0))),
        &in6,
    ));
    t.push(decap_fixture(
        "decap_gue_4in6_allowed",
        f(None, &gue_udp6(ALLOWED_V6, &p::gue_v0(&in4, 0))),
        &in4,
    ));
    t.push(decap_fixture(
        "decap_gue_with_option_words_allowed",
        f(None, &gue_udp4(ALLOWED_V4, &p::gue_v0(&in4, 1))),
        &in4,
    ));
    t.push(decap_fixture(
        "decap_gue_variant1_v4_inner_allowed",
        f(None, &gue_udp4(ALLOWED_V4, &in4)),
        &in4,
    ));
    t.push(decap_fixture(
        "decap_gue_variant1_v6_inner_allowed",
        f(None, &gue_udp6(ALLOWED_V6, &in6)),
        &in6,
    ));
    t.push(decap_fixture(
        "decap_vlan_tag_kept",
        f(Some(200), &p::ipip_v4(ALLOWED_V4, net::EDGE_V4, &in6)),
        &in6,
    ));
    t.push(decap_fixture(
        "decap_gue_vlan_tag_kept",
        f(Some(201), &gue_udp6(ALLOWED_V6, &p::gue_v0(&in4, 0))),
        &in4,
    ));
    t.push(decap_refused(
        "decap_ipip_v4_refused",
        f(None, &p::ipip_v4(REFUSED_V4, net::EDGE_V4, &in4)),
    ));
    t.push(decap_refused(
        "decap_ipip_v6_refused",
        f(None, &p::ipip_v6(REFUSED_V6, net::EDGE_V6, &in6)),
    ));
    t.push(decap_refused(
        "decap_gue_v4_refused",
        f(None, &gue_udp4(REFUSED_V4, &p::gue_v0(&in4, 0))),
    ));
    t.push(decap_refused(
        "decap_gue_v6_refused",
        f(None, &gue_udp6(REFUSED_V6, &p::gue_v0(&in6, 0))),
    ));
    t
}

#[test]
fn fixture_table() {
    if !anycast_tests::privileged("fixture_table") {
        return;
    }
    let ns = fixture_netns();
    let fixtures = fixtures();
    let failures = ns.enter(|| {
        let mut dp = Dataplane::load(SIZES);
        setup(&mut dp);
        anycast_tests::fixture::run_table(&mut dp, &fixtures)
    });
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed: {}\n\n{}",
        failures.len(),
        fixtures.len(),
        failures
            .iter()
            .map(|f| f
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("fixture ")
                .trim_end_matches(':'))
            .collect::<Vec<_>>()
            .join(", "),
        failures.join("\n\n")
    );
    eprintln!("{} fixtures passed", fixtures.len());
}

/// The expected outputs themselves are well-formed: every encapsulated expectation parses with
/// etherparse, and its outer checksums verify (guards the fixture builders, not the program).
#[test]
fn expected_outputs_are_well_formed() {
    for f in fixtures() {
        if let Expect::Run {
            output: Output::Bytes(b),
            ..
        } = &f.expect
        {
            let parsed = etherparse::SlicedPacket::from_ethernet(b);
            assert!(
                parsed.is_ok(),
                "{}: expected output does not parse: {:?}",
                f.name,
                parsed.err()
            );
            if let Ok(etherparse::SlicedPacket {
                net: Some(etherparse::NetSlice::Ipv4(ip)),
                ..
            }) = parsed
            {
                let h = ip.header().to_header();
                assert_eq!(
                    h.header_checksum,
                    h.calc_header_checksum(),
                    "{}: outer IPv4 checksum",
                    f.name
                );
            }
        }
    }
}

/// The fixtures' flow hash (read from packet bytes) is the model's (`Flow::hash`, from the
/// flow's fields), so expected outputs and `anycast lookup` talk about the same hash.
#[test]
fn packet_flow_hash_matches_model_flow_hash() {
    use anycast::plan::model::Flow;
    let cases = [
        (
            "tcp 198.18.100.7:40000 203.0.113.10:80",
            tcp4(vip4(V_TCP4), 80),
        ),
        (
            "udp 198.18.100.7:40001 203.0.113.10:53",
            udp4(vip4(V_UDP4), 53),
        ),
        (
            "tcp [fd00:100::7]:40002 [2001:db8::10]:80",
            tcp6(vip6(V_TCP6), 80),
        ),
        (
            "udp [fd00:100::7]:40003 [2001:db8::14]:53",
            udp6(vip6(V_UDP6), 53),
        ),
    ];
    for (flow, ip) in cases {
        let f: Flow = flow.parse().expect("flow");
        assert_eq!(p::flow_hash(SEED, &ip), f.hash(SEED), "{flow}");
    }
    // IPv4 options move the transport header; the hash still reads the ports after them.
    let with_opts =
        V4::new(CLIENT_V4, vip4(V_TCP4))
            .options(&[1, 1, 1, 1])
            .tcp(40000, 80, &payload(32));
    let f: Flow = "tcp 198.18.100.7:40000 203.0.113.10:80"
        .parse()
        .expect("flow");
    assert_eq!(p::flow_hash(SEED, &with_opts), f.hash(SEED));
}
