//! The fleet on the BGP lab, with a real etcd (issue 15, item 6; docs/fleet.md): the four agents
//! of `anycast_tests::lab_bgp` (both edges and both backends, every one health-checking the
//! backends) run with `[fleet]` against an etcd in its own namespace (`anycast_tests::lab_fleet`).
//! While 200 long-lived connections (100 IPv4, 100 IPv6) stream:
//!
//! 1. 20 fleet writes (weights change every time, a backend joins at the 8th) with route flips
//!    between the edges after the 5th, 10th and 15th: none broken; after each write, the time
//!    until every agent reports the new revision with the same fingerprints (p50/p99 printed,
//!    the median asserted under 1 s);
//! 2. etcd killed (SIGKILL), a route flip during the outage, etcd restored: every agent reports
//!    the outage (`anycast_fleet_etcd_up 0`), keeps forwarding and announcing, registers again
//!    and applies the next write;
//! 3. backend2 unreachable for the health checks of edge2 only (an `ip rule` sending edge2's TCP
//!    to backend2's health port to a `prohibit` route): edge2's own view says down, the fleet
//!    verdict (1 of 4 checkers) keeps it up, and every table stays as it was;
//!
//! and a concurrent writer gets a conflict naming both revisions.
//!
//! The edges' connection tracking is warmed first (each edge away and back once, before any
//! write), as the consistency labs do: a flow that meets an edge for the first time after
//! several table changes could need more than the one previous table second chance knows
//! (IPIP: BENCHMARKS.md, "Flow consistency results"); with every flow tracked on both edges,
//! a route flip after any number of writes keeps every flow on its backend. The lab runs GUE.

use std::time::{Duration, Instant};

use anycast::config::{ConfigBuilder, VipBuilder};
use anycast::fleet::report::assess;
use anycast_tests::lab::{ConnsOptions, LongLived, VipSpec, find_binary, reference};
use anycast_tests::lab_bgp::{self, BgpLab, HEALTH_PORT, HOSTS, Options};
use anycast_tests::lab_fleet::{Etcd, fleet_section};

const CONNS_PER_FAMILY: usize = 100;
const WRITES: usize = 20;
const CONVERGE_LIMIT: Duration = Duration::from_secs(1);
const ROUTE_LIMIT: Duration = Duration::from_secs(30);
const HEALTH: &str =
    "kind = \"tcp\"\nport = 8081\ninterval_ms = 100\ntimeout_ms = 100\nrise = 2\nfall = 3";

fn addrs(name: &str) -> (&'static str, &'static str) {
    match name {
        "edge1" => (reference::EDGE1_V4, reference::EDGE1_V6),
        "backend1" => (reference::BACKEND1_V4, reference::BACKEND1_V6),
        "backend2" => (reference::BACKEND2_V4, reference::BACKEND2_V6),
        other => panic!("{other} is not a backend"),
    }
}

/// The reference VIPs (TCP and UDP, IPv4 and IPv6) on these backends.
fn vips(backends: &[(&str, u32)]) -> Vec<VipSpec> {
    let mut out = Vec::new();
    for (address, v6) in [(reference::VIP_V4, false), (reference::VIP_V6, true)] {
        for (port, protocol) in [(reference::TCP_PORT, "tcp"), (reference::UDP_PORT, "udp")] {
            out.push(VipSpec {
                address: address.to_owned(),
                port,
                protocol: protocol.to_owned(),
                backends: backends
                    .iter()
                    .map(|(n, w)| {
                        let (a4, a6) = addrs(n);
                        ((if v6 { a6 } else { a4 }).to_owned(), *w)
                    })
                    .collect(),
            });
        }
    }
    out
}

/// The fleet document for these backends: the same VIPs and health checks as the agents' files.
fn document(backends: &[(&str, u32)]) -> String {
    let mut c = ConfigBuilder::bare();
    for v in vips(backends) {
        let mut b = VipBuilder::new(&v.address, v.port, &v.protocol).health(HEALTH);
        for (a, w) in &v.backends {
            b = b.backend(a, *w);
        }
        c = c.vip(b);
    }
    format!(
        "hash_seed = {}\nring_size = {}\n{}",
        reference::HASH_SEED,
        reference::RING_SIZE,
        c.toml()
    )
}

/// Waits until every agent reports `rev` with identical fingerprints; the time since `t0`.
fn converge(etcd: &mut Etcd, rev: i64, t0: Instant, limit: Duration) -> Result<Duration, String> {
    let mut last = String::new();
    while t0.elapsed() < limit {
        match etcd.edges() {
            Ok(edges) => {
                let done = edges.len() == HOSTS.len()
                    && edges.iter().all(|e| {
                        e.applied_revision == rev
                            && !e.fingerprints.is_empty()
                            && e.fingerprints == edges[0].fingerprints
                    });
                if done {
                    return Ok(t0.elapsed());
                }
                last = format!("{edges:#?}");
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!(
        "revision {rev}: the agents did not agree within {limit:?}; last seen:\n{last}"
    ))
}

fn cli(bgp: &BgpLab, ns: &str, args: &[&str]) -> String {
    let out = bgp
        .anycast(ns, args)
        .unwrap_or_else(|e| panic!("{ns}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{ns}: anycast {args:?}: {text}");
    text
}

/// `anycast fleet ARGS...` with edge1's config, run inside edge1's namespace (where etcd is
/// reachable), as an operator on that edge would.
fn fleet_cli(bgp: &BgpLab, args: &[&str]) -> String {
    let bin = find_binary("anycast", "ANYCAST_BIN").expect("the anycast binary");
    let config = bgp.lab.agent_config_path(reference::EDGE1);
    let mut full = vec![bin.to_str().expect("UTF-8 path"), "fleet", "-c"];
    full.push(config.to_str().expect("UTF-8 path"));
    full.extend_from_slice(args);
    let out = bgp
        .lab
        .exec(reference::EDGE1, &full)
        .unwrap_or_else(|e| panic!("anycast {full:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "anycast {full:?}: {text}");
    text
}

fn wait_routes(bgp: &BgpLab, edges: &[&str]) {
    for (vip, v6) in [(reference::VIP_V4, false), (reference::VIP_V6, true)] {
        let hops: Vec<&str> = edges
            .iter()
            .map(|e| {
                let (a4, a6, _, _) = lab_bgp::edge_link(e);
                if v6 { a6 } else { a4 }
            })
            .collect();
        bgp.wait_nexthops(vip, &hops, ROUTE_LIMIT)
            .unwrap_or_else(|e| panic!("routes to {vip} via {edges:?}: {e}"));
    }
}

/// `edge` withdraws (its connections move to the other edge) and announces again.
fn away_and_back(bgp: &BgpLab, edge: &str) {
    let other = if edge == reference::EDGE1 {
        reference::EDGE2
    } else {
        reference::EDGE1
    };
    cli(
        bgp,
        edge,
        &["drain-edge", "--timeout", "30", "--quiet-ms", "300"],
    );
    wait_routes(bgp, &[other]);
    std::thread::sleep(Duration::from_millis(700));
    cli(bgp, edge, &["undrain-edge"]);
    wait_routes(bgp, &lab_bgp::EDGES);
    println!("route flip: {edge} away and back");
}

fn assert_streaming(conns: &[&LongLived], what: &str) {
    for c in conns {
        let s = c.snapshot();
        let broken: Vec<_> = s
            .conns
            .iter()
            .filter(|c| !c.established || c.resets > 0 || c.closed_early || c.error.is_some())
            .map(|c| (c.id, c.backend.clone()))
            .collect();
        assert!(
            broken.is_empty(),
            "{what}: broken connections {broken:?}\n{s}"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn metric(bgp: &BgpLab, ns: &str, name: &str) -> Option<u64> {
    let out = bgp
        .lab
        .exec_ok(
            ns,
            &[
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://127.0.0.1:9742/metrics",
            ],
        )
        .ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

fn partial_health_rule(bgp: &BgpLab, add: bool) {
    let op = if add { "add" } else { "del" };
    for (family, addr) in [
        ("-4", reference::BACKEND2_V4),
        ("-6", reference::BACKEND2_V6),
    ] {
        let port = HEALTH_PORT.to_string();
        let rule = [
            family, "rule", op, "to", addr, "ipproto", "tcp", "dport", &port, "lookup", "4242",
            "priority", "100",
        ];
        bgp.lab
            .ip(reference::EDGE2, &rule)
            .unwrap_or_else(|e| panic!("ip {rule:?}: {e}"));
        if add {
            bgp.lab
                .ip(
                    reference::EDGE2,
                    &[family, "route", "add", "prohibit", addr, "table", "4242"],
                )
                .unwrap_or_else(|e| panic!("prohibit route: {e}"));
        }
    }
}

#[test]
fn a_fleet_from_etcd_keeps_every_connection_and_every_table_identical() {
    let initial = [("edge1", 1), ("backend1", 1)];
    // The [fleet] sections are written before the lab (and its run directory) exists: the
    // agents' caches go under the system's temporary directory.
    let cache_root = std::env::temp_dir().join(format!("anycast-lab-fleet-{}", std::process::id()));
    let extra = HOSTS
        .iter()
        .map(|ns| ((*ns).to_owned(), fleet_section(&cache_root, ns)))
        .collect();
    let Some((_serial, bgp)) = BgpLab::start_serial(Options {
        reference: reference::Options {
            encapsulation: "gue".to_owned(),
            weights: [1, 1, 1],
            ..Default::default()
        },
        vips: Some(vips(&initial)),
        all_health: true,
        extra_config: extra,
        ..Options::default()
    }) else {
        return;
    };
    let mut etcd = Etcd::start(&bgp.lab, &HOSTS).unwrap_or_else(|e| panic!("etcd: {e}"));
    let doc_path = bgp.lab.dir().join("fleet.toml");

    // Registration, then the first document (the files' own VIPs) through the CLI.
    let t0 = Instant::now();
    while etcd.edges().map_or(0, |e| e.len()) < HOSTS.len() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "agents not registered: {:?}",
            etcd.edges()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{} agents registered in {} ms",
        HOSTS.len(),
        t0.elapsed().as_millis()
    );
    std::fs::write(&doc_path, document(&initial)).unwrap();
    let doc_arg = doc_path.to_string_lossy();
    let out = fleet_cli(&bgp, &["diff", &doc_arg]);
    assert!(
        out.contains("no VIP table changes"),
        "the files' VIPs: {out}"
    );
    fleet_cli(&bgp, &["apply", &doc_arg]);
    let rev = etcd.document().unwrap().expect("applied").revision;
    converge(&mut etcd, rev, Instant::now(), Duration::from_secs(10)).unwrap();

    // A concurrent writer: both read `cur`, the second write is refused naming both revisions.
    let cur = etcd.document().unwrap();
    let won = etcd
        .write(
            &document(&initial).replace("weight = 1", "weight = 1 "),
            cur.as_ref(),
        )
        .unwrap();
    let lost = etcd.write(&document(&initial), cur.as_ref()).unwrap_err();
    assert!(
        lost.contains(&format!("is at revision {won}, not at revision {rev}")),
        "{lost}"
    );
    converge(&mut etcd, won, Instant::now(), Duration::from_secs(10)).unwrap();

    let opts = ConnsOptions {
        conns: CONNS_PER_FAMILY,
        duration: Duration::from_secs(150),
        ..ConnsOptions::default()
    };
    let v4 = bgp
        .lab
        .start_long_lived(reference::CLIENT, reference::vip_v4_tcp(), opts.clone())
        .expect("IPv4 connections");
    let v6 = bgp
        .lab
        .start_long_lived(reference::CLIENT, reference::vip_v6_tcp(), opts)
        .expect("IPv6 connections");
    let deadline = Instant::now() + Duration::from_secs(40);
    for c in [&v4, &v6] {
        c.wait_connected(deadline)
            .unwrap_or_else(|s| panic!("still connecting after 40 s:\n{s}"));
    }
    std::thread::sleep(Duration::from_secs(1));
    away_and_back(&bgp, reference::EDGE1);
    away_and_back(&bgp, reference::EDGE2);
    assert_streaming(&[&v4, &v6], "warm-up");

    // 1. Writes while the connections stream and routes flip.
    let mut times = Vec::new();
    let mut backends = initial.to_vec();
    for i in 0..WRITES {
        if i == 7 {
            backends.push(("backend2", 1));
        }
        backends[1].1 = 1 + (i as u32 % 3);
        let cur = etcd.document().unwrap();
        let t = Instant::now();
        let rev = etcd.write(&document(&backends), cur.as_ref()).unwrap();
        let took = converge(&mut etcd, rev, t, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        println!(
            "write {i}: revision {rev}, every agent on its tables in {:.1} ms",
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        if i % 5 == 4 && i + 1 < WRITES {
            away_and_back(
                &bgp,
                if i % 10 == 4 {
                    reference::EDGE2
                } else {
                    reference::EDGE1
                },
            );
        }
    }
    assert_streaming(&[&v4, &v6], "writes and route flips");
    let mut sorted = times.clone();
    sorted.sort();
    let (p50, p99) = (percentile(&sorted, 0.5), percentile(&sorted, 0.99));
    println!(
        "fleet write -> every agent reports the new revision, same fingerprints: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {WRITES} writes",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        sorted[sorted.len() - 1].as_secs_f64() * 1e3
    );
    // The median is asserted; the tail is the machine's (debug builds of four agents, each
    // building four 65537-slot tables, on two cores shared with whatever else runs): printed,
    // and bounded by `converge`'s 10 s. Measured: BENCHMARKS.md, "Fleet".
    assert!(
        p50 < CONVERGE_LIMIT,
        "p50 {p50:?} over {CONVERGE_LIMIT:?}: {times:?}"
    );

    // 2. etcd killed under traffic, a route flip meanwhile, etcd back.
    let before = etcd.edges().unwrap();
    etcd.kill();
    let t = Instant::now();
    for ns in HOSTS {
        while metric(&bgp, ns, "anycast_fleet_etcd_up") != Some(0) {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{ns}: no outage reported"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "outage reported by every agent after {} ms",
        t.elapsed().as_millis()
    );
    // Each agent's own status says so too, and what it keeps running.
    for ns in HOSTS {
        let f = bgp.lab.agent_client(ns).status().expect("status").fleet;
        let f = f.unwrap_or_else(|| panic!("{ns}: `anycast status` shows no fleet link"));
        assert!(
            !f.connected
                && f.last_error.is_some()
                && f.outages >= 1
                && f.applied_revision.is_some(),
            "{ns}: `anycast status` during the outage: {f:?}"
        );
    }
    away_and_back(&bgp, reference::EDGE1);
    assert_streaming(&[&v4, &v6], "etcd down");
    etcd.restart().unwrap();
    let t = Instant::now();
    loop {
        let e = etcd.edges().unwrap_or_default();
        if e.len() == HOSTS.len() && e.iter().all(|r| r.etcd_outages >= 1) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "not back: {e:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = etcd.edges().unwrap();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            b.fingerprints, a.fingerprints,
            "{}: tables changed over the outage",
            a.edge
        );
    }
    backends[1].1 = 5;
    let cur = etcd.document().unwrap();
    let t = Instant::now();
    let rev = etcd.write(&document(&backends), cur.as_ref()).unwrap();
    let took = converge(&mut etcd, rev, t, Duration::from_secs(10)).unwrap();
    println!(
        "after etcd's return: a write reached every agent in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    for ns in HOSTS {
        let f = bgp.lab.agent_client(ns).status().expect("status").fleet;
        let f = f.unwrap_or_else(|| panic!("{ns}: `anycast status` shows no fleet link"));
        assert!(
            f.connected && f.last_error.is_none() && f.applied_revision == Some(rev),
            "{ns}: `anycast status` after etcd's return (revision {rev}): {f:?}"
        );
    }

    // 3. backend2 unreachable from edge2's health checks only.
    let before = etcd.edges().unwrap();
    partial_health_rule(&bgp, true);
    let t = Instant::now();
    loop {
        let e = etcd.edges().unwrap();
        let edge2 = e
            .iter()
            .find(|r| r.edge == reference::EDGE2)
            .expect("edge2");
        let down = edge2.health.iter().filter(|h| !h.healthy).count();
        if down == vips(&backends).len() {
            for (b, a) in before.iter().zip(&e) {
                assert_eq!(b.fingerprints, a.fingerprints, "{}: table changed", a.edge);
            }
            assert!(assess(&e, rev).iter().all(|a| a.ok()), "{e:#?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "edge2 never saw backend2 down: {edge2:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let e = etcd.edges().unwrap();
    for (b, a) in before.iter().zip(&e) {
        assert_eq!(b.fingerprints, a.fingerprints, "{}: table changed", a.edge);
    }
    println!("backend2 unreachable from edge2 only: edge2's own view down, every table unchanged");
    let status = fleet_cli(&bgp, &["status"]);
    assert!(
        status.contains("own checks see down: 198.18.11.2"),
        "{status}"
    );
    partial_health_rule(&bgp, false);

    let reports = [v4.stop(), v6.stop()];
    for r in &reports {
        println!("{r}");
        assert!(r.is_clean(), "connections broken or lost:\n{r}");
        assert_eq!(r.established(), CONNS_PER_FAMILY, "{r}");
    }
    drop(etcd);
    let _ = std::fs::remove_dir_all(cache_root);
}
