//! End to end over veth: the reference topology with live agents (XDP in native mode), client
//! traffic to the VIPs, answers from the backends the edges chose.

use std::time::Duration;

use anycast_tests::lab::{FlowTally, reference};

const FLOWS: usize = 60;
const BUDGET: Duration = Duration::from_secs(60);

/// Every flow answered, and by each of the VIP's three backends (with 60 flows and equal weights
/// a backend with no flow at all has probability ~1e-10).
fn assert_spread(tally: &FlowTally, what: &str) {
    assert_eq!(tally.failed(), 0, "{what}: flows failed:\n{tally}");
    assert_eq!(tally.answered(), FLOWS, "{what}:\n{tally}");
    for name in reference::BACKEND_NAMES {
        assert!(
            tally.per_backend.get(name).copied().unwrap_or(0) > 0,
            "{what}: no flow reached {name}:\n{tally}"
        );
    }
    assert_eq!(
        tally.per_backend.len(),
        reference::BACKEND_NAMES.len(),
        "{what}: unexpected answers:\n{tally}"
    );
}

/// The reference lab with the VIPs routed to edge1; `None` where the test is skipped.
fn edge1_lab() -> Option<anycast_tests::lab::Lab> {
    if !anycast_tests::privileged(&anycast_tests::test_name()) {
        return None;
    }
    let lab = reference::start().unwrap_or_else(|e| panic!("starting the reference lab: {e}"));
    reference::route_vips_to(&lab, reference::EDGE1).expect("routing the VIPs");
    Some(lab)
}

/// One lab for all: starting agents is the slow part of a lab test (the verifier). The detailed
/// checks (predicted backends, weights, GUE, route moves) are in `lab_steering.rs`.
#[test]
fn tcp_and_udp_flows_to_ipv4_and_ipv6_vips_are_spread_over_their_backends_and_ping_passes() {
    if !anycast_tests::privileged(&anycast_tests::test_name()) {
        return;
    }
    let lab = reference::start().unwrap_or_else(|e| panic!("starting the reference lab: {e}"));
    for edge in [reference::EDGE1, reference::EDGE2] {
        reference::route_vips_to(&lab, edge).expect("routing the VIPs");
        for (transport, target) in reference::vip_targets() {
            let tally = lab
                .flows(reference::CLIENT, transport, target, FLOWS, BUDGET)
                .expect("client")
                .tally();
            assert_spread(&tally, &format!("{transport} to {target} via {edge}"));
        }
    }
    for target in reference::PING_TARGETS {
        if let Err(out) = lab.ping(reference::CLIENT, target, 3) {
            panic!("client cannot ping {target} with agents running:\n{out}");
        }
    }
}

/// An ICMP error a router on the path sends to a VIP about a VIP flow's answer reaches the
/// backend that owns the flow (as `anycast lookup` names it), whose kernel acts on it: a
/// "fragmentation needed" / "packet too big" lowers its path MTU towards the client; the other
/// backends learn nothing.
#[test]
fn icmp_errors_about_vip_flows_reach_the_flows_backend_whose_kernel_lowers_its_path_mtu() {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::{IpAddr, SocketAddr};
    let Some(lab) = edge1_lab() else {
        return;
    };
    let hosts = [
        (
            reference::BACKEND1,
            reference::BACKEND1_V4,
            reference::BACKEND1_V6,
        ),
        (
            reference::BACKEND2,
            reference::BACKEND2_V4,
            reference::BACKEND2_V6,
        ),
        (reference::EDGE1, reference::EDGE1_V4, reference::EDGE1_V6),
    ];
    let agent = lab.agent_client(reference::EDGE1);
    for (vip, client, mtu) in [
        (reference::VIP_V4, reference::CLIENT_V4, 1300u16),
        (reference::VIP_V6, reference::CLIENT_V6, 1400u16),
    ] {
        let v4 = !vip.contains(':');
        let client_port = 45000u16;
        let flow = if v4 {
            format!("udp {client}:{client_port} {vip}:{}", reference::UDP_PORT)
        } else {
            format!(
                "udp [{client}]:{client_port} [{vip}]:{}",
                reference::UDP_PORT
            )
        };
        let decision = agent.lookup(&flow).expect("lookup");
        let owner = match decision.outcome {
            anycast::plan::model::Outcome::Encap { backend, .. }
            | anycast::plan::model::Outcome::Local { backend, .. } => backend,
            o => panic!("{flow}: not steered: {o:?}"),
        };
        let owner_ns = hosts
            .iter()
            .find(|(_, a4, a6)| owner.to_string() == *a4 || owner.to_string() == *a6)
            .map(|(ns, _, _)| *ns)
            .unwrap_or_else(|| panic!("{flow}: owner {owner} is no lab host"));
        // The backend's answer as the router saw it: VIP:7 -> client:45000, IP header + 8 bytes.
        let (vip_ip, client_ip): (IpAddr, IpAddr) = (vip.parse().unwrap(), client.parse().unwrap());
        let quote = match (vip_ip, client_ip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                anycast_tests::packet::V4::new(s, d).udp(reference::UDP_PORT, client_port, &[0; 64])
                    [..28]
                    .to_vec()
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                anycast_tests::packet::V6::new(s, d).udp(reference::UDP_PORT, client_port, &[0; 64])
                    [..48]
                    .to_vec()
            }
            _ => unreachable!(),
        };
        let mtu_be = mtu.to_be_bytes();
        // Type, code, checksum (the kernel fills ICMPv6's; ICMPv4's is ours), MTU.
        let mut icmp = if v4 {
            vec![3, 4, 0, 0, 0, 0, mtu_be[0], mtu_be[1]]
        } else {
            vec![2, 0, 0, 0, 0, 0, mtu_be[0], mtu_be[1]]
        };
        icmp.extend_from_slice(&quote);
        if v4 {
            let mut sum = 0u32;
            for c in icmp.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            icmp[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
        // The router sends it: on the path back from the backends to the client.
        lab.in_netns(reference::ROUTER, || {
            let (domain, proto) = if v4 {
                (Domain::IPV4, Protocol::ICMPV4)
            } else {
                (Domain::IPV6, Protocol::ICMPV6)
            };
            let s = Socket::new(domain, Type::RAW, Some(proto)).expect("raw socket");
            s.send_to(&icmp, &SocketAddr::new(vip_ip, 0).into())
                .expect("sending the ICMP error");
        })
        .expect("router namespace");
        let learnt = |ns: &str| {
            let out = lab
                .ip(ns, &["route", "get", client, "from", vip])
                .unwrap_or_default();
            out.contains(&format!("mtu {mtu}"))
        };
        let t0 = std::time::Instant::now();
        while !learnt(owner_ns) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{flow}: the owner {owner_ns} did not lower its path MTU to {client}: {}",
                lab.ip(owner_ns, &["route", "get", client, "from", vip])
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("{flow}: owner {owner_ns} lowered its path MTU to {mtu}");
        for (ns, _, _) in hosts.iter().filter(|(ns, _, _)| *ns != owner_ns) {
            assert!(
                !learnt(ns),
                "{flow}: {ns} is not the owner but learnt the MTU"
            );
        }
    }
    let stats = agent.stats().expect("stats");
    assert_eq!(
        stats.counter("icmp_steered"),
        Some(2),
        "the edge steered both errors"
    );
}

/// 3000-byte UDP datagrams, which the client's kernel sends in fragments (its link carries 1500
/// bytes), from many source ports: each is answered by the backend `anycast lookup` names for its
/// flow (the first fragment picks it, the later ones follow; the backend's kernel reassembles).
#[test]
fn fragmented_udp_datagrams_are_answered_by_their_flows_backend() {
    use std::net::{IpAddr, SocketAddr, UdpSocket};
    let Some(lab) = edge1_lab() else {
        return;
    };
    let agent = lab.agent_client(reference::EDGE1);
    let before = agent
        .stats()
        .expect("stats")
        .counter("fragment_steered")
        .unwrap_or(0);
    let mut answered = 0;
    for (client, vip) in [
        (reference::CLIENT_V4, reference::VIP_V4),
        (reference::CLIENT_V6, reference::VIP_V6),
    ] {
        let (client, vip): (IpAddr, IpAddr) = (client.parse().unwrap(), vip.parse().unwrap());
        let target = SocketAddr::new(vip, reference::UDP_PORT);
        for port in 47000u16..47020 {
            let src = SocketAddr::new(client, port);
            let want = match agent
                .lookup(&format!("udp {src} {target}"))
                .expect("lookup")
                .outcome
            {
                anycast::plan::model::Outcome::Encap { backend, .. }
                | anycast::plan::model::Outcome::Local { backend, .. } => {
                    reference::backend_name(backend).expect("a lab backend")
                }
                o => panic!("udp {src}: not steered: {o:?}"),
            };
            let got = lab
                .in_netns(reference::CLIENT, || -> std::io::Result<String> {
                    let s = UdpSocket::bind(src)?;
                    s.set_read_timeout(Some(Duration::from_millis(1500)))?;
                    let datagram = vec![0x61u8; 3000];
                    let mut buf = vec![0u8; 65536];
                    // A reply too big for the client's link is answered by the router with
                    // "packet too big" (IPv6 routers do not fragment); the backend's next reply
                    // fits: retry.
                    for _ in 0..3 {
                        s.send_to(&datagram, target)?;
                        if let Ok((n, _)) = s.recv_from(&mut buf) {
                            let text = String::from_utf8_lossy(&buf[..n]);
                            return Ok(text.split(' ').next().unwrap_or_default().to_owned());
                        }
                    }
                    Ok(String::new())
                })
                .expect("client namespace")
                .expect("udp");
            assert_eq!(
                got, want,
                "udp {src} -> {target}: answered by {got:?}, lookup says {want}"
            );
            answered += 1;
        }
    }
    let steered = agent
        .stats()
        .expect("stats")
        .counter("fragment_steered")
        .unwrap_or(0)
        - before;
    println!(
        "{answered} fragmented datagrams answered by their flows' backends; {steered} fragments steered"
    );
    // Each datagram is at least three fragments; edge1's own flows are steered too.
    assert!(
        steered >= 3 * answered as u64,
        "{steered} fragments steered for {answered} datagrams"
    );
}
