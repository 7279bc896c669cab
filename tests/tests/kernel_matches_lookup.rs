//! The kernel program and the host model (`anycast::plan::model::decide` / `decide_with_table`, what
//! `anycast lookup` prints) agree on the backend of every flow: 12,000 random flows (fixed seed), IPv4 and IPv6,
//! TCP and UDP, exact-port and port-0 VIPs, weighted backends of both families including local
//! ones, ring size 65537, through IPIP and GUE.
//!
//! The maps are written by the agent's own writer (`anycast::dataplane::Dataplane::apply`), so
//! this pins the whole chain: config -> Maglev tables -> map layout -> kernel lookup, against
//! the model. The kernel's choice is read from the output packet: the outer destination address of an
//! encapsulated packet, or XDP_PASS with the packet untouched for a local backend (which local
//! backend is then checked in aggregate through BACKEND_STATS).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anycast::config::{Config, Protocol, VipBuilder};
use anycast::plan::model::{self, Flow, Outcome};
use anycast_tests::fixture::{Dataplane, XDP_DROP, XDP_PASS, XDP_REDIRECT, fixture_netns, net};
use anycast_tests::packet as p;

const FLOWS: usize = 12_000;

/// Every kind of VIP the lookup model must agree on: a port VIP and an all-ports VIP on one
/// address, IPv4 and IPv6 VIPs with backends of both families, this host as a backend, a
/// weight-0 backend, and a VIP with no backend.
fn config() -> Config {
    let vip = |address: &str, port, protocol, backends: &[(&str, u32)]| {
        VipBuilder::new(address, port, protocol).backends(backends)
    };
    net::edge_config()
        .agent("hash_seed", 2_718_281_828_i64)
        .agent("max_backends", 64)
        .agent("decap_allow", vec!["198.18.5.0/24"])
        .vips([
            vip(
                "203.0.113.10",
                80,
                "tcp",
                &[
                    ("198.19.1.1", 1),
                    ("198.19.1.2", 2),
                    ("198.19.1.3", 3),
                    ("fd00:1::1", 1),
                    ("198.18.0.1", 1),
                ],
            ),
            vip(
                "203.0.113.10",
                0,
                "tcp",
                &[("198.19.1.4", 1), ("198.19.1.5", 1), ("fd00:1::5", 2)],
            ),
            vip(
                "203.0.113.11",
                53,
                "udp",
                &[("198.19.1.6", 5), ("fd00:1::2", 1), ("198.19.1.1", 1)],
            ),
            vip(
                "2001:db8::10",
                443,
                "tcp",
                &[
                    ("fd00:1::3", 1),
                    ("fd00:1::4", 3),
                    ("198.19.1.7", 1),
                    ("fd00:18::1", 1),
                ],
            ),
            vip(
                "2001:db8::10",
                0,
                "udp",
                &[("fd00:1::6", 7), ("fd00:1::7", 2), ("198.19.1.8", 0)],
            ),
            vip("203.0.113.12", 8443, "tcp", &[]),
        ])
        .build()
}

/// splitmix64: a fixed, dependency-free generator so every run tests the same flows.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random flow: mostly to a configured VIP (with its port, or a random one for a port-0 VIP
/// and sometimes for an exact one), some to a VIP address with another port or protocol.
fn random_flow(rng: &mut Rng, config: &Config) -> Flow {
    let v = &config.vips[rng.below(config.vips.len() as u64) as usize];
    let mut dport = if v.port == 0 || rng.below(10) == 0 {
        1 + rng.below(65535) as u16
    } else {
        v.port
    };
    let mut protocol = v.protocol;
    if rng.below(20) == 0 {
        protocol = if protocol == Protocol::Tcp {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        dport = 1 + rng.below(65535) as u16;
    }
    let sport = 1 + rng.below(65535) as u16;
    let src = match v.address {
        IpAddr::V4(_) => {
            let r = rng.next() as u32;
            IpAddr::V4(Ipv4Addr::new(
                198,
                18,
                128 | (r >> 24) as u8 & 0x7f,
                (r >> 8) as u8,
            ))
        }
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x100,
            0,
            0,
            rng.next() as u16,
            rng.next() as u16,
            rng.next() as u16,
            rng.next() as u16,
        )),
    };
    Flow {
        protocol,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(v.address, dport),
    }
}

fn packet_of(flow: &Flow, payload_len: usize) -> Vec<u8> {
    let payload = vec![0x5a; payload_len];
    p::frame(
        None,
        &p::l4_packet(flow.protocol.number(), flow.src, flow.dst, &payload),
    )
}

#[test]
fn kernel_backend_choice_matches_host_model_for_random_flows() {
    if !anycast_tests::privileged("kernel_backend_choice_matches_host_model_for_random_flows") {
        return;
    }
    let mut config = config();
    let local: BTreeSet<IpAddr> = [IpAddr::V4(net::EDGE_V4), IpAddr::V6(net::EDGE_V6)].into();
    config.check_local(&local).expect("config fits this host");

    let ns = fixture_netns();
    let (mismatches, per_outcome) = ns.enter(|| {
        let mut dp = Dataplane::from_config(&config);
        dp.apply(&config, &local);
        let backend_before = dp.backend_stats();
        let tables_of = |config: &Config| -> Vec<model::VipTable> {
            config
                .vips
                .iter()
                .map(|v| model::vip_table(v, config.agent.ring_size, config.agent.hash_seed))
                .collect()
        };
        let mut tables = tables_of(&config);
        let mut rng = Rng(0x0dd_ba11_cafe_f00d);
        let mut mismatches = Vec::new();
        let mut per_outcome: BTreeMap<String, usize> = BTreeMap::new();
        let mut expected_local: BTreeMap<u32, u64> = BTreeMap::new();
        for i in 0..FLOWS {
            if i == FLOWS / 2 {
                // Second half through GUE: the choice must not depend on the encapsulation.
                config.agent.encapsulation = anycast::config::Encapsulation::Gue;
                dp.apply(&config, &local);
            }
            if i == FLOWS * 3 / 4 {
                // Last quarter without port-0 VIPs: the agent promises the program there are
                // none (CFG_F_NO_PORT0_VIPS) and it skips the second VIPS lookup; the other
                // VIPs' addresses with other ports must still be "not a VIP".
                config.vips.retain(|v| v.port != 0);
                tables = tables_of(&config);
                dp.apply(&config, &local);
                assert_ne!(
                    dp.config().flags & anycast_common::CFG_F_NO_PORT0_VIPS,
                    0,
                    "no port-0 VIP: the promise is given"
                );
            }
            let flow = random_flow(&mut rng, &config);
            let frame = packet_of(&flow, (i % 7) * 13);
            let decision = match model::match_vip(&config, &flow) {
                Some(index) => {
                    model::decide_with_table(&config, &local, &flow, index, &tables[index])
                }
                None => model::decide(&config, &local, &flow),
            };
            if i % 1000 == 0 {
                // decide_with_table is decide with the table built once; keep them tied.
                assert_eq!(
                    decision,
                    model::decide(&config, &local, &flow),
                    "decide_with_table != decide"
                );
            }
            let r = dp.run(&frame, None).expect("test_run");
            let (label, ok) = match &decision.outcome {
                Outcome::NotAVip => (
                    "not_a_vip".to_string(),
                    r.action == XDP_PASS && r.output == frame,
                ),
                Outcome::NoBackend { .. } => ("no_backend".to_string(), r.action == XDP_DROP),
                Outcome::Local { backend, .. } => {
                    *expected_local
                        .entry(dp.backend_id(*backend).expect("backend has an id"))
                        .or_default() += 1;
                    (
                        format!("local {backend}"),
                        r.action == XDP_PASS && r.output == frame,
                    )
                }
                Outcome::Encap { backend, .. } => (
                    format!("encap {backend}"),
                    r.action == XDP_REDIRECT && p::outer_dst(&r.output) == Some(*backend),
                ),
                Outcome::NoTunnelSource { .. } => {
                    ("no_tunnel_source".to_string(), r.action == XDP_DROP)
                }
            };
            *per_outcome.entry(label).or_default() += 1;
            if !ok && mismatches.len() < 20 {
                mismatches.push(format!(
                    "{decision}\n    kernel: {} outer dst {:?}",
                    anycast_tests::fixture::action_name(r.action),
                    p::outer_dst(&r.output)
                ));
            }
        }
        // Which local backend took a local flow is invisible in the packet: check the totals.
        let backend_after = dp.backend_stats();
        for (id, n) in &expected_local {
            let got = backend_after[*id as usize].packets - backend_before[*id as usize].packets;
            if got != *n {
                mismatches.push(format!(
                    "BACKEND_STATS[{id}] (local): model {n} packets, kernel {got}"
                ));
            }
        }
        (mismatches, per_outcome)
    });
    eprintln!("outcomes over {FLOWS} flows: {per_outcome:#?}");
    assert!(
        mismatches.is_empty(),
        "kernel and model disagree (first {}):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // The flows exercised every kind of outcome and many backends (not a vacuous pass).
    for kind in [
        "not_a_vip",
        "no_backend",
        "local 198.18.0.1",
        "local fd00:18::1",
        "encap fd00:1::1",
        "encap 198.19.1.7",
    ] {
        assert!(
            per_outcome.get(kind).copied().unwrap_or(0) > 10,
            "too few flows with outcome {kind}: {per_outcome:?}"
        );
    }
    assert!(
        per_outcome
            .keys()
            .filter(|k| k.starts_with("encap"))
            .count()
            >= 12,
        "{per_outcome:?}"
    );
}
