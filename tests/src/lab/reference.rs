//! The reference topology:
//!
//! ```text
//!                          +-- r-e1 == e1-r  edge1 (agent; also a backend: "edge1")
//! client c-r == r-c  router+-- r-e2 == e2-r  edge2 (agent)
//!                          +-- r-b1 == b1-r  backend1 (decap-only agent, server "backend1")
//!                          +-- r-b2 == b2-r  backend2 (decap-only agent, server "backend2")
//! ```
//!
//! The router routes the VIPs to one edge ([`reference::route_vips_to`] stands in for BGP; the
//! BGP lab, `crate::lab_bgp`, drops that route and lets BIRD install an ECMP one). An
//! edge encapsulates VIP packets (IPIP) towards the Maglev-chosen backend and sends them back
//! out of its only interface (XDP_TX) to the router, which forwards them; the router's edge-facing
//! veths therefore carry `anycast_pass`. Backends decapsulate in their own XDP program (the lab
//! kernel has no IPIP module) and reply to the client directly through the router. Both edges
//! get the same VIPs, backends, ring size and hash seed, so a flow maps to the same backend
//! whichever edge it reaches.
//!
//! Every host that receives tunnelled packets can also give a second chance (docs/dataplane.md):
//! it encapsulates a packet once more, to the flow's previous owner, and sends it back out of
//! its only interface (XDP_TX). So the router's backend-facing veths carry `anycast_pass` too,
//! and the backends forward IP (the kernel's FIB helper refuses lookups on an interface that does
//! not forward, and the packet would be dropped as `fib_fail`).

use std::net::{IpAddr, SocketAddr};

use super::{
    AgentSpec, End, Lab, LabError, Link, LoopbackAddr, Result, Route, ServerSpec, Sysctl, Topology,
    Transport, VipSpec, XdpPass,
};

pub const CLIENT: &str = "client";
pub const ROUTER: &str = "router";
pub const EDGE1: &str = "edge1";
pub const EDGE2: &str = "edge2";
pub const BACKEND1: &str = "backend1";
pub const BACKEND2: &str = "backend2";

pub const CLIENT_V4: &str = "198.18.1.2";
pub const CLIENT_V6: &str = "fd00:1::2";
pub const EDGE1_V4: &str = "198.18.2.2";
pub const EDGE1_V6: &str = "fd00:2::2";
pub const EDGE2_V4: &str = "198.18.3.2";
pub const EDGE2_V6: &str = "fd00:3::2";
pub const BACKEND1_V4: &str = "198.18.10.2";
pub const BACKEND1_V6: &str = "fd00:10::2";
pub const BACKEND2_V4: &str = "198.18.11.2";
pub const BACKEND2_V6: &str = "fd00:11::2";

pub const VIP_V4: &str = "203.0.113.10";
pub const VIP_V6: &str = "2001:db8::10";
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 7;

/// What the labs ping from the client to see that the fabric carries plain traffic: both edges,
/// both backends, both families.
pub const PING_TARGETS: [&str; 5] = [EDGE1_V4, EDGE2_V4, BACKEND1_V4, EDGE1_V6, BACKEND2_V6];

/// Names the servers answer with, in the order of [`backends_v4`].
pub const BACKEND_NAMES: [&str; 3] = ["backend1", "backend2", "edge1"];

/// Fabric links carry encapsulated packets (20 or 40 bytes more), so they get room for a
/// full-size client packet plus a tunnel header; the client link keeps 1500.
pub const FABRIC_MTU: u32 = 1600;
pub const CLIENT_MTU: u32 = 1500;

pub const HASH_SEED: u32 = 42;
pub const RING_SIZE: u32 = 65537;

pub fn vip_v4_tcp() -> SocketAddr {
    SocketAddr::new(VIP_V4.parse().expect("literal"), TCP_PORT)
}
pub fn vip_v4_udp() -> SocketAddr {
    SocketAddr::new(VIP_V4.parse().expect("literal"), UDP_PORT)
}
pub fn vip_v6_tcp() -> SocketAddr {
    SocketAddr::new(VIP_V6.parse().expect("literal"), TCP_PORT)
}
pub fn vip_v6_udp() -> SocketAddr {
    SocketAddr::new(VIP_V6.parse().expect("literal"), UDP_PORT)
}

/// Every VIP service as a target for [`Lab::flows`]: TCP and UDP, each on the IPv4 and on the
/// IPv6 VIP.
pub fn vip_targets() -> [(Transport, SocketAddr); 4] {
    [
        (Transport::Tcp, vip_v4_tcp()),
        (Transport::Tcp, vip_v6_tcp()),
        (Transport::Udp, vip_v4_udp()),
        (Transport::Udp, vip_v6_udp()),
    ]
}

pub fn backends_v4() -> Vec<(String, u32)> {
    [BACKEND1_V4, BACKEND2_V4, EDGE1_V4]
        .iter()
        .map(|a| ((*a).to_owned(), 1))
        .collect()
}
pub fn backends_v6() -> Vec<(String, u32)> {
    [BACKEND1_V6, BACKEND2_V6, EDGE1_V6]
        .iter()
        .map(|a| ((*a).to_owned(), 1))
        .collect()
}

/// The VIPs every edge serves: TCP and UDP on the IPv4 and the IPv6 VIP.
pub fn vips() -> Vec<VipSpec> {
    vips_with(&Options::default())
}

/// [`vips`] with the backends weighted as `opts.weights` says.
pub fn vips_with(opts: &Options) -> Vec<VipSpec> {
    let weighted = |addrs: [&str; 3]| -> Vec<(String, u32)> {
        addrs
            .iter()
            .zip(opts.weights)
            .map(|(a, w)| ((*a).to_owned(), w))
            .collect()
    };
    let mut v = Vec::new();
    for (address, backends) in [
        (VIP_V4, weighted([BACKEND1_V4, BACKEND2_V4, EDGE1_V4])),
        (VIP_V6, weighted([BACKEND1_V6, BACKEND2_V6, EDGE1_V6])),
    ] {
        for (port, protocol) in [(TCP_PORT, "tcp"), (UDP_PORT, "udp")] {
            v.push(VipSpec {
                address: address.to_owned(),
                port,
                protocol: protocol.to_owned(),
                backends: backends.clone(),
            });
        }
    }
    v
}

/// Variations of the reference topology.
#[derive(Clone, Debug)]
pub struct Options {
    /// `"ipip"` or `"gue"`: how the edges encapsulate.
    pub encapsulation: String,
    /// Weights of backend1, backend2 and edge1 (the order of [`BACKEND_NAMES`]).
    pub weights: [u32; 3],
    /// MTU of the links between the router and the edges and backends.
    pub fabric_mtu: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            encapsulation: "ipip".to_owned(),
            weights: [1, 1, 1],
            fabric_mtu: FABRIC_MTU,
        }
    }
}

/// The backend name (as its server answers) of a backend address, IPv4 or IPv6.
pub fn backend_name(addr: IpAddr) -> Option<&'static str> {
    let a = addr.to_string();
    [
        (BACKEND1_V4, BACKEND1_V6, BACKEND_NAMES[0]),
        (BACKEND2_V4, BACKEND2_V6, BACKEND_NAMES[1]),
        (EDGE1_V4, EDGE1_V6, BACKEND_NAMES[2]),
    ]
    .iter()
    .find(|(v4, v6, _)| a == *v4 || a == *v6)
    .map(|(_, _, name)| *name)
}

/// The addresses of an edge (what `anycast lookup --local-address` needs to answer for it).
pub fn edge_addresses(edge: &str) -> Option<[&'static str; 2]> {
    match edge {
        EDGE1 => Some([EDGE1_V4, EDGE1_V6]),
        EDGE2 => Some([EDGE2_V4, EDGE2_V6]),
        _ => None,
    }
}

/// A host around the router and its veth to it.
struct Spoke {
    ns: &'static str,
    /// The host's end of the veth, and the router's.
    dev: &'static str,
    router_dev: &'static str,
    /// The host's addresses on the link (a /24 and a /64), and the router's: its default gateway.
    v4: &'static str,
    v6: &'static str,
    router_v4: &'static str,
    router_v6: &'static str,
}

const fn spoke(
    ns: &'static str,
    [dev, router_dev]: [&'static str; 2],
    [v4, v6]: [&'static str; 2],
    [router_v4, router_v6]: [&'static str; 2],
) -> Spoke {
    Spoke {
        ns,
        dev,
        router_dev,
        v4,
        v6,
        router_v4,
        router_v6,
    }
}

/// Every host but the router, in the order of [`topology`]'s links; all but the client run an
/// agent and carry the VIPs on `lo`.
#[rustfmt::skip]
const SPOKES: [Spoke; 5] = [
    //    namespace  veth ends          the host's addresses        the router's
    spoke(CLIENT,   ["c-r",  "r-c"],  [CLIENT_V4,   CLIENT_V6],   ["198.18.1.1",  "fd00:1::1"]),
    spoke(EDGE1,    ["e1-r", "r-e1"], [EDGE1_V4,    EDGE1_V6],    ["198.18.2.1",  "fd00:2::1"]),
    spoke(EDGE2,    ["e2-r", "r-e2"], [EDGE2_V4,    EDGE2_V6],    ["198.18.3.1",  "fd00:3::1"]),
    spoke(BACKEND1, ["b1-r", "r-b1"], [BACKEND1_V4, BACKEND1_V6], ["198.18.10.1", "fd00:10::1"]),
    spoke(BACKEND2, ["b2-r", "r-b2"], [BACKEND2_V4, BACKEND2_V6], ["198.18.11.1", "fd00:11::1"]),
];

/// The spokes with an agent: every one but the client.
fn agent_spokes() -> impl Iterator<Item = &'static Spoke> {
    SPOKES.iter().filter(|s| s.ns != CLIENT)
}

fn end(ns: &str, name: &str, v4: &str, v6: &str) -> End {
    End {
        ns: ns.to_owned(),
        name: name.to_owned(),
        addrs: vec![format!("{v4}/24"), format!("{v6}/64")],
    }
}

fn sysctl(ns: &str, key: &str, value: &str) -> Sysctl {
    Sysctl {
        ns: ns.to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

fn route(ns: &str, dst: &str, via: &str) -> Route {
    Route {
        ns: ns.to_owned(),
        dst: dst.to_owned(),
        via: via.to_owned(),
    }
}

fn agent(s: &Spoke, vips: Vec<VipSpec>, encapsulation: &str) -> AgentSpec {
    AgentSpec {
        ns: s.ns.to_owned(),
        interfaces: vec![s.dev.to_owned()],
        tunnel_source: Some(s.v4.to_owned()),
        tunnel_source_v6: Some(s.v6.to_owned()),
        encapsulation: encapsulation.to_owned(),
        decap_allow: vec!["198.18.0.0/15".to_owned(), "fd00::/8".to_owned()],
        ring_size: RING_SIZE,
        hash_seed: HASH_SEED,
        vips,
        health: None,
        extra_config: String::new(),
    }
}

/// The reference topology, as data.
pub fn topology() -> Topology {
    topology_with(&Options::default())
}

/// The reference topology with other weights or encapsulation.
pub fn topology_with(opts: &Options) -> Topology {
    let namespaces = [CLIENT, ROUTER, EDGE1, EDGE2, BACKEND1, BACKEND2]
        .map(str::to_owned)
        .to_vec();
    let mut sysctls = Vec::new();
    for ns in &namespaces {
        // Decapsulated packets arrive from the router with the client's source: strict
        // reverse-path filtering must not judge them.
        sysctls.push(sysctl(ns, "net.ipv4.conf.all.rp_filter", "0"));
        sysctls.push(sysctl(ns, "net.ipv4.conf.default.rp_filter", "0"));
        // No duplicate address detection, link-local addresses included: a tentative
        // address delays neighbour discovery by a second after the lab comes up.
        sysctls.push(sysctl(ns, "net.ipv6.conf.all.accept_dad", "0"));
        sysctls.push(sysctl(ns, "net.ipv6.conf.default.accept_dad", "0"));
    }
    for ns in [ROUTER, EDGE1, EDGE2, BACKEND1, BACKEND2] {
        // Edges and backends forward too: packets the XDP program hands to the kernel
        // (neighbour not yet resolved) are forwarded by the stack, and the FIB lookup of a
        // second chance needs forwarding on the receiving interface.
        sysctls.push(sysctl(ns, "net.ipv4.ip_forward", "1"));
        sysctls.push(sysctl(ns, "net.ipv6.conf.all.forwarding", "1"));
    }
    for ns in [EDGE1, EDGE2, BACKEND1, BACKEND2] {
        sysctls.push(sysctl(ns, "net.ipv4.conf.all.accept_local", "1"));
    }

    let links = SPOKES
        .iter()
        .map(|s| Link {
            a: end(s.ns, s.dev, s.v4, s.v6),
            b: end(ROUTER, s.router_dev, s.router_v4, s.router_v6),
            mtu: if s.ns == CLIENT {
                CLIENT_MTU
            } else {
                opts.fabric_mtu
            },
            tx_checksum_off: true,
        })
        .collect();

    let mut loopback = Vec::new();
    for s in agent_spokes() {
        for addr in [format!("{VIP_V4}/32"), format!("{VIP_V6}/128")] {
            loopback.push(LoopbackAddr {
                ns: s.ns.to_owned(),
                addr,
            });
        }
    }

    let mut routes = Vec::new();
    for s in &SPOKES {
        routes.push(route(s.ns, "default", s.router_v4));
        routes.push(route(s.ns, "default", s.router_v6));
    }
    routes.push(route(ROUTER, &format!("{VIP_V4}/32"), EDGE1_V4));
    routes.push(route(ROUTER, &format!("{VIP_V6}/128"), EDGE1_V6));

    // Edges transmit encapsulated packets with XDP_TX, and so do backends giving a second
    // chance: the router's ends of their veths need a native XDP program.
    let xdp_pass = agent_spokes()
        .map(|s| XdpPass {
            ns: ROUTER.to_owned(),
            interface: s.router_dev.to_owned(),
        })
        .collect();

    // The backends' agents have the edges' VIP tables (the same config): they decapsulate, and
    // compute the previous owner of a flow they have no socket for (second chance under IPIP).
    let agents = agent_spokes()
        .map(|s| agent(s, vips_with(opts), &opts.encapsulation))
        .collect();

    let vip_addrs = vec![VIP_V4.to_owned(), VIP_V6.to_owned()];
    let servers = [
        (BACKEND1, "backend1"),
        (BACKEND2, "backend2"),
        (EDGE1, "edge1"),
    ]
    .iter()
    .map(|(ns, name)| ServerSpec {
        ns: (*ns).to_owned(),
        name: (*name).to_owned(),
        tcp_port: TCP_PORT,
        udp_port: UDP_PORT,
        addrs: vip_addrs.clone(),
    })
    .collect();

    Topology {
        namespaces,
        sysctls,
        links,
        loopback,
        routes,
        xdp_pass,
        agents,
        servers,
    }
}

/// The reference topology built and its dataplane running ([`Lab::start_dataplane`]: pass
/// programs, agents waited for until attached, servers), the VIPs routed to edge1.
pub fn start() -> Result<Lab> {
    let mut lab = Lab::build(&topology())?;
    lab.start_dataplane()?;
    Ok(lab)
}

/// [`start`] with a variation of the topology ([`topology_with`]).
pub fn start_with(opts: &Options) -> Result<Lab> {
    let mut lab = Lab::build(&topology_with(opts))?;
    lab.start_dataplane()?;
    Ok(lab)
}

/// Points the router's VIP routes at `edge` ([`EDGE1`] or [`EDGE2`]): what a BGP
/// announcement from that edge would do.
pub fn route_vips_to(lab: &Lab, edge: &str) -> Result<()> {
    let (v4, v6) = match edge {
        EDGE1 => (EDGE1_V4, EDGE1_V6),
        EDGE2 => (EDGE2_V4, EDGE2_V6),
        other => {
            return Err(LabError::Setup(format!(
                "{other} is not an edge of the reference topology"
            )));
        }
    };
    lab.set_route(ROUTER, &format!("{VIP_V4}/32"), v4)?;
    lab.set_route(ROUTER, &format!("{VIP_V6}/128"), v6)
}
