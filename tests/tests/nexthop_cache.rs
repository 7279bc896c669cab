//! The next-hop cache (`NEXTHOPS`), through BPF_PROG_TEST_RUN in the fixture namespace: the
//! agent's resolver finds what the kernel's FIB finds (interface, MACs, MTU; unresolved
//! neighbours and blackholes left to the FIB), a cached entry gives byte for byte the frame the
//! FIB path gives without calling the FIB, and an entry that does not fit (another generation
//! of the id, an MTU too small for the packet, an empty entry) is not used.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use anycast::config::{Config, Encapsulation, VipBuilder};
use anycast::nexthop::{Resolution, Route};
use anycast_common::{NextHop, counter as c};
use anycast_tests::fixture::{Dataplane, XDP_REDIRECT, XDP_TX, fixture_netns, ifindex, net};
use anycast_tests::packet::{self as p, V4, V6};

/// One VIP per backend: reachable through the resolved gateway, over the small-MTU route,
/// through the unresolved gateway, and into the blackhole; each in both families.
fn config(encap: Encapsulation) -> Config {
    let mut vips = Vec::new();
    for (i, (v4, v6)) in [
        (net::BACKENDS_V4, net::BACKENDS_V6),
        (net::SMALL_MTU_V4, net::SMALL_MTU_V6),
        (net::UNRESOLVED_V4, net::UNRESOLVED_V6),
        (net::BLACKHOLE_V4, net::BLACKHOLE_V6),
    ]
    .into_iter()
    .enumerate()
    {
        let i = i as u8;
        vips.push(
            VipBuilder::new(&format!("203.0.113.{}", 10 + i), 80, "tcp")
                .backend(&net::v4(v4, 10).to_string(), 1),
        );
        vips.push(
            VipBuilder::new(&format!("2001:db8::{}", 10 + i), 80, "tcp")
                .backend(&net::v6(v6, 10).to_string(), 1),
        );
    }
    let mut config = net::edge_config()
        .agent("max_backends", 16)
        .vips(vips)
        .build();
    config.agent.encapsulation = encap;
    config
}

fn frame(vip: IpAddr) -> Vec<u8> {
    let body = [0x5au8; 64];
    match vip {
        IpAddr::V4(d) => p::frame(
            None,
            &V4::new(Ipv4Addr::new(198, 18, 100, 7), d).tcp(40000, 80, &body),
        ),
        IpAddr::V6(d) => p::frame(
            None,
            &V6::new("fd00:100::7".parse().expect("v6"), d).tcp(40000, 80, &body),
        ),
    }
}

fn local() -> BTreeSet<IpAddr> {
    [IpAddr::V4(net::EDGE_V4), IpAddr::V6(net::EDGE_V6)].into()
}

/// `body` in the fixture namespace with the program loaded and `config` applied.
fn with_edge(test: &str, encap: Encapsulation, body: impl FnOnce(&mut Dataplane, &Config)) {
    if !anycast_tests::privileged(test) {
        return;
    }
    let config = config(encap);
    fixture_netns().enter(|| {
        let mut dp = Dataplane::from_config(&config);
        dp.apply(&config, &local());
        body(&mut dp, &config)
    });
}

fn counter(dp: &Dataplane, name: u32) -> u64 {
    dp.stats()[name as usize]
}

#[test]
fn the_resolver_finds_what_the_fib_finds() {
    with_edge(
        "the_resolver_finds_what_the_fib_finds",
        Encapsulation::Ipip,
        |dp, _| {
            let resolved = dp.cache_nexthops();
            assert_eq!(
                resolved.len(),
                8,
                "every remote backend is a target: {resolved:?}"
            );
            let dev = ifindex(net::DEV);
            for (t, r) in &resolved {
                let a = t.address;
                let in_net = |v4: &str, v6: &str| {
                    [v4, v6]
                        .iter()
                        .any(|n| n.parse::<ipnet::IpNet>().expect("prefix").contains(&a))
                };
                let gw = match a {
                    IpAddr::V4(_) => IpAddr::V4(net::GW_V4),
                    IpAddr::V6(_) => IpAddr::V6(net::GW_V6),
                };
                let expect_route = |mtu| {
                    Resolution::Resolved(Route {
                        ifindex: dev,
                        neighbour: gw,
                        dmac: net::GW_MAC,
                        smac: net::DEV_MAC,
                        mtu,
                    })
                };
                if in_net(net::BACKENDS_V4, net::BACKENDS_V6) {
                    assert_eq!(r, &expect_route(1500), "{a}");
                } else if in_net(net::SMALL_MTU_V4, net::SMALL_MTU_V6) {
                    assert_eq!(r, &expect_route(net::SMALL_MTU as u32), "{a}");
                } else if in_net(net::UNRESOLVED_V4, net::UNRESOLVED_V6) {
                    assert!(
                        matches!(r, Resolution::Unresolved(why) if why.contains("not resolved")),
                        "{a}: {r:?}"
                    );
                } else {
                    assert!(in_net(net::BLACKHOLE_V4, net::BLACKHOLE_V6), "{a}");
                    assert!(matches!(r, Resolution::Unresolved(_)), "{a}: {r:?}");
                }
                let entry = dp.nexthop(t.id);
                match r {
                    Resolution::Resolved(route) => {
                        assert_eq!(entry, route.entry(t.generation), "{a}")
                    }
                    Resolution::Unresolved(_) => assert_eq!(entry, NextHop::default(), "{a}"),
                }
            }
        },
    );
}

#[test]
fn a_cached_next_hop_gives_the_fibs_bytes_without_the_fib() {
    for encap in [Encapsulation::Ipip, Encapsulation::Gue] {
        with_edge(
            "a_cached_next_hop_gives_the_fibs_bytes_without_the_fib",
            encap,
            |dp, config| {
                let ingress = Some(ifindex(net::DEV));
                let frames: Vec<Vec<u8>> = config
                    .vips
                    .iter()
                    .take(4)
                    .map(|v| frame(v.address))
                    .collect();
                let mut by_fib = Vec::new();
                for f in &frames {
                    let before = counter(dp, c::FIB_LOOKUP);
                    let r = dp.run(f, ingress).expect("test_run");
                    assert_eq!(r.action, XDP_TX, "{encap:?}: FIB path");
                    assert_eq!(
                        counter(dp, c::FIB_LOOKUP),
                        before + 1,
                        "{encap:?}: no cache yet"
                    );
                    by_fib.push(r.output);
                }
                dp.cache_nexthops();
                for (f, fib_out) in frames.iter().zip(&by_fib) {
                    let (lookups, encaps) = (counter(dp, c::FIB_LOOKUP), counter(dp, c::ENCAP));
                    let r = dp.run(f, ingress).expect("test_run");
                    assert_eq!(r.action, XDP_TX, "{encap:?}: cached path");
                    assert_eq!(
                        &r.output, fib_out,
                        "{encap:?}: the cache must give the FIB's frame"
                    );
                    assert_eq!(
                        counter(dp, c::FIB_LOOKUP),
                        lookups,
                        "{encap:?}: the FIB was called"
                    );
                    assert_eq!(counter(dp, c::ENCAP), encaps + 1);
                }
                // Unresolved and blackholed backends still go to the FIB, which decides as before.
                for v in config.vips.iter().skip(4) {
                    let before = counter(dp, c::FIB_LOOKUP);
                    let r = dp.run(&frame(v.address), ingress).expect("test_run");
                    assert_eq!(counter(dp, c::FIB_LOOKUP), before + 1, "{}", v.address);
                    assert_ne!(r.action, XDP_TX, "{}: no usable next hop", v.address);
                }
            },
        );
    }
}

#[test]
fn an_entry_is_used_only_for_its_generation_and_within_its_mtu() {
    with_edge(
        "an_entry_is_used_only_for_its_generation_and_within_its_mtu",
        Encapsulation::Ipip,
        |dp, config| {
            let ingress = Some(ifindex(net::DEV));
            let vip = config.vips[0].address;
            let backend = config.vips[0].backends[0].address;
            let id = dp.backend_id(backend).expect("backend id");
            dp.cache_nexthops();
            let good = dp.nexthop(id);
            assert_ne!(good.ifindex, 0);
            let f = frame(vip);
            let macs = |out: &[u8]| <[u8; 12]>::try_from(&out[..12]).expect("12 bytes");
            let run = |dp: &Dataplane| {
                let before = counter(dp, c::FIB_LOOKUP);
                let r = dp.run(&f, ingress).expect("test_run");
                (
                    r.action,
                    macs(&r.output),
                    counter(dp, c::FIB_LOOKUP) - before,
                )
            };
            let fib_macs = {
                let mut m = [0; 12];
                m[..6].copy_from_slice(&net::GW_MAC);
                m[6..].copy_from_slice(&net::DEV_MAC);
                m
            };
            // Distinct MACs prove the entry is what the frame carries.
            let marked = NextHop {
                macs: [2, 0, 0, 0, 0xaa, 1, 2, 0, 0, 0, 0xaa, 2],
                ..good
            };
            dp.set_nexthop(id, marked);
            assert_eq!(run(dp), (XDP_TX, marked.macs, 0), "the cached entry");
            dp.set_nexthop(
                id,
                NextHop {
                    generation: good.generation.wrapping_add(1),
                    ..marked
                },
            );
            assert_eq!(
                run(dp),
                (XDP_TX, fib_macs, 1),
                "another generation: the FIB"
            );
            // The frame is 118 bytes, 124 at the IP layer once encapsulated.
            dp.set_nexthop(id, NextHop { mtu: 123, ..marked });
            assert_eq!(
                run(dp),
                (XDP_TX, fib_macs, 1),
                "MTU too small: the FIB decides"
            );
            dp.set_nexthop(id, NextHop { mtu: 124, ..marked });
            assert_eq!(run(dp), (XDP_TX, marked.macs, 0), "exactly the MTU: cached");
            dp.set_nexthop(id, NextHop::default());
            assert_eq!(run(dp), (XDP_TX, fib_macs, 1), "an empty entry: the FIB");
            // The agent's lease ran out (its agent died): the FIB, whatever the entry says.
            dp.set_nexthop(id, marked);
            assert_eq!(run(dp), (XDP_TX, marked.macs, 0), "leased");
            dp.set_nexthop_lease(anycast::nexthop::lease_until(0));
            // Each CPU reads the lease once every 64 cached packets: within 64 per CPU (two
            // CPUs here, whichever the test thread runs on), every packet asks the FIB.
            let mut last = run(dp);
            for _ in 0..2 * 64 {
                last = run(dp);
            }
            assert_eq!(last, (XDP_TX, fib_macs, 1), "the lease ran out: the FIB");
            dp.set_nexthop_lease(anycast::nexthop::lease_until(60_000_000_000));
            for _ in 0..2 * 64 {
                last = run(dp);
            }
            assert_eq!(last, (XDP_TX, marked.macs, 0), "leased again: the cache");
            // An entry naming another interface redirects there.
            let lo = ifindex("lo");
            dp.set_nexthop(
                id,
                NextHop {
                    ifindex: lo,
                    ..marked
                },
            );
            let (action, _, lookups) = run(dp);
            assert_eq!(
                (action, lookups),
                (XDP_REDIRECT, 0),
                "egress {lo} != ingress"
            );
        },
    );
}

/// Polls `cached_dmac` (the dmac of a frame the cache routed, or `None`) every millisecond
/// until `want` accepts it, and returns how long that took.
async fn follow(
    cached_dmac: &impl Fn() -> Option<[u8; 6]>,
    what: String,
    want: impl Fn([u8; 6]) -> bool,
) {
    let t0 = std::time::Instant::now();
    loop {
        if cached_dmac().is_some_and(&want) {
            let took = t0.elapsed();
            println!("{what}: followed in {:.1} ms", took.as_secs_f64() * 1e3);
            assert!(took <= FOLLOW_BOUND, "{what}: took {took:?}");
            return;
        }
        assert!(t0.elapsed() < 10 * FOLLOW_BOUND, "{what}: never followed");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// How long a route or neighbour change may take to reach the cache (issue: within 100 ms).
const FOLLOW_BOUND: std::time::Duration = std::time::Duration::from_millis(100);

#[test]
fn next_hops_follow_route_neighbour_and_ecmp_changes_within_100ms() {
    let test = "next_hops_follow_route_neighbour_and_ecmp_changes_within_100ms";
    if !anycast_tests::privileged(test) {
        return;
    }
    let config = config(Encapsulation::Ipip);
    let ns = fixture_netns();
    // A second gateway on the link, and the MAC the first one moves to.
    let (gw2_mac, moved_mac) = ([2, 0, 0, 0, 0, 4], [2, 0, 0, 0, 0, 5]);
    let (gw2_v4, gw2_v6) = ("198.18.0.4", "fd00:18::4");
    for gw2 in [gw2_v4, gw2_v6] {
        ns.ip(&format!(
            "neigh add {gw2} lladdr 02:00:00:00:00:04 dev {} nud permanent",
            net::DEV
        ));
    }
    ns.enter(|| {
        let mut dp = Dataplane::from_config(&config);
        dp.apply(&config, &local());
        let targets = anycast::agent::targets_of(dp.agent().publisher());
        let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(targets));
        let handle = dp.nexthops_handle();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let ingress = Some(ifindex(net::DEV));
        rt.block_on(async {
            tokio::spawn(anycast::nexthop::run(rx, handle));
            for (vip, backends, gw, gw2) in [
                (config.vips[0].address, net::BACKENDS_V4, net::GW_V4.to_string(), gw2_v4),
                (config.vips[1].address, net::BACKENDS_V6, net::GW_V6.to_string(), gw2_v6),
            ] {
                let f = frame(vip);
                // The dmac a packet leaves with when the cache (not the FIB) routed it.
                let cached_dmac = || {
                    let before = counter(&dp, c::FIB_LOOKUP);
                    let r = dp.run(&f, ingress).expect("test_run");
                    let fib = counter(&dp, c::FIB_LOOKUP) > before;
                    (r.action == XDP_TX && !fib).then(|| <[u8; 6]>::try_from(&r.output[..6]).expect("mac"))
                };
                follow(&cached_dmac, format!("{vip}: {}", "first resolution"), |m| m == net::GW_MAC).await;
                ns.ip(&format!("route replace {backends} via {gw2} dev {}", net::DEV));
                follow(&cached_dmac, format!("{vip}: {}", "route moved to the second gateway"), |m| m == gw2_mac).await;
                ns.ip(&format!("neigh replace {gw2} lladdr 02:00:00:00:00:05 dev {} nud permanent", net::DEV));
                follow(&cached_dmac, format!("{vip}: {}", "the gateway's MAC changed"), |m| m == moved_mac).await;
                ns.ip(&format!(
                    "route replace {backends} nexthop via {gw} dev {dev} nexthop via {gw2} dev {dev}",
                    dev = net::DEV
                ));
                // The kernel's hash picks one of the two paths for this backend; the cache must
                // follow the one the kernel's own lookup picks.
                let backend = config.vips[if vip.is_ipv4() { 0 } else { 1 }].backends[0].address;
                let edge = if vip.is_ipv4() { IpAddr::V4(net::EDGE_V4) } else { IpAddr::V6(net::EDGE_V6) };
                let out = std::process::Command::new("ip")
                    .args(["route", "get", &backend.to_string(), "from", &edge.to_string()])
                    .output()
                    .expect("ip route get");
                let out = String::from_utf8_lossy(&out.stdout).into_owned();
                let picked = if out.contains(&format!("via {gw2} ")) { moved_mac } else { net::GW_MAC };
                assert!(out.contains(&format!("via {gw} ")) || out.contains(&format!("via {gw2} ")), "{out}");
                follow(&cached_dmac, format!("{vip}: ECMP over both gateways ({})", out.trim()), |m| m == picked).await;
                ns.ip(&format!("route replace {backends} via {gw} dev {}", net::DEV));
                follow(&cached_dmac, format!("{vip}: {}", "route back to the first gateway"), |m| m == net::GW_MAC).await;
            }
        });
    });
}
