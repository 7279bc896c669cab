//! Real sockets through the reference topology (tests/src/lab.rs) with live agents, for IPv4 and
//! IPv6 VIPs, TCP and UDP, with IPIP and with GUE encapsulation (each test runs once per
//! encapsulation, on a lab of its own):
//!
//! - every flow lands on the backend `anycast lookup` predicts, through either edge, and over
//!   1,000 flows per VIP and protocol the backends' shares follow their weights (1:2:3);
//! - traffic that is not for a VIP (ping, TCP and UDP to an edge's own address, an edge's own
//!   connections) is unaffected by the program;
//! - long-lived TCP connections with data flowing both ways survive the client's route moving
//!   edge1 -> edge2 -> edge1: no reset, no byte lost or corrupted.
//!
//! Predictions come from `anycast::plan::model` (`decide_with_table`, what `anycast lookup --config FILE
//! --local-address ADDR...` runs, with each VIP's table built once), so the test needs no process
//! per flow; the first flows of each case are also put to the `anycast lookup` command itself, to
//! check the two agree.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anycast::config::Config;
use anycast::plan::model::{self, Flow, Outcome};
use anycast_tests::lab::conns::Phase;
use anycast_tests::lab::{self, ConnsOptions, ConnsReport, FlowRecord, Lab, Transport, reference};

/// backend1 : backend2 : edge1, as in [`reference::BACKEND_NAMES`].
const WEIGHTS: [u32; 3] = [1, 2, 3];
/// Short flows per VIP and protocol through each edge: 2 x 500 = 1,000 per VIP and protocol.
const FLOWS_PER_EDGE: usize = 500;
const FLOW_BUDGET: Duration = Duration::from_secs(60);
/// Flows per case also checked with the `anycast lookup` command.
const CLI_SAMPLES: usize = 3;

fn lab_with(encapsulation: &str) -> Lab {
    reference::start_with(&reference::Options {
        encapsulation: encapsulation.to_owned(),
        weights: WEIGHTS,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("starting the reference topology ({encapsulation}): {e}"))
}

/// What `anycast lookup --config <edge config> --local-address <edge addresses>` answers, for
/// both edges.
struct Predictor {
    edges: Vec<(&'static str, std::path::PathBuf, Config, Vec<IpAddr>)>,
    /// Each edge's VIP tables, built once (`decide` would build one per flow).
    tables: Vec<Vec<model::VipTable>>,
}

impl Predictor {
    fn new(lab: &Lab) -> Predictor {
        let edges = [reference::EDGE1, reference::EDGE2]
            .into_iter()
            .map(|edge| {
                let path = lab.agent_config_path(edge);
                let config = Config::load(&path)
                    .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
                let local = reference::edge_addresses(edge)
                    .expect("an edge")
                    .iter()
                    .map(|a| a.parse().expect("literal"))
                    .collect();
                (edge, path, config, local)
            })
            .collect::<Vec<_>>();
        let tables = edges
            .iter()
            .map(|(_, _, config, _)| {
                config
                    .vips
                    .iter()
                    .map(|v| model::vip_table(v, config.agent.ring_size, config.agent.hash_seed))
                    .collect()
            })
            .collect();
        Predictor { edges, tables }
    }

    /// The backend name both edges choose for the flow (they must agree).
    fn backend(&self, protocol: &str, src: SocketAddr, dst: SocketAddr) -> &'static str {
        let flow: Flow = format!("{protocol} {src} {dst}")
            .parse()
            .unwrap_or_else(|e| panic!("flow {protocol} {src} {dst}: {e}"));
        let mut names =
            self.edges
                .iter()
                .zip(&self.tables)
                .map(|((edge, _, config, local), tables)| {
                    let local = config.local_set(local.iter().copied());
                    let index = model::match_vip(config, &flow)
                        .unwrap_or_else(|| panic!("{edge}: {flow} is not for a VIP"));
                    let d = model::decide_with_table(config, &local, &flow, index, &tables[index]);
                    let backend = match d.outcome {
                        Outcome::Local { backend, .. } | Outcome::Encap { backend, .. } => backend,
                        other => panic!("{edge}: {flow} is not steered: {other:?}"),
                    };
                    reference::backend_name(backend)
                        .unwrap_or_else(|| panic!("{edge}: {flow} -> unknown backend {backend}"))
                });
        let first = names.next().expect("two edges");
        for other in names {
            assert_eq!(first, other, "the edges disagree about {flow}");
        }
        first
    }

    /// The `anycast lookup` command gives the same answer as [`Predictor::backend`].
    fn check_cli(&self, protocol: &str, src: SocketAddr, dst: SocketAddr, expected: &str) {
        let bin = lab::find_binary("anycast", "ANYCAST_BIN").expect("the anycast binary");
        for (edge, path, _, local) in &self.edges {
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg("lookup").arg("--config").arg(path);
            for a in local {
                cmd.arg("--local-address").arg(a.to_string());
            }
            cmd.args([protocol, &src.to_string(), &dst.to_string()]);
            let out = cmd.output().expect("running anycast lookup");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{cmd:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let backend = text
                .split("backend ")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .unwrap_or_else(|| panic!("{cmd:?} printed no backend: {text}"));
            let name = reference::backend_name(backend.parse().expect("an address"));
            assert_eq!(name, Some(expected), "{edge}: `anycast lookup` says {text}");
        }
    }
}

/// The largest deviation of an observed share from `p` that the test accepts over `n` flows:
/// 4.5 standard deviations of a binomial share (a false failure per backend about 1 in 150,000),
/// plus 0.01 for the Maglev table's own rounding of the weights.
fn tolerance(p: f64, n: usize) -> f64 {
    4.5 * (p * (1.0 - p) / n as f64).sqrt() + 0.01
}

fn check_shares(counts: &BTreeMap<String, usize>, what: &str) {
    let n: usize = counts.values().sum();
    let total_weight: u32 = WEIGHTS.iter().sum();
    let mut lines = String::new();
    let mut bad = Vec::new();
    for (name, w) in reference::BACKEND_NAMES.iter().zip(WEIGHTS) {
        let p = f64::from(w) / f64::from(total_weight);
        let got = counts.get(*name).copied().unwrap_or(0) as f64 / n as f64;
        let tol = tolerance(p, n);
        lines.push_str(&format!(
            "  {name:<9} weight {w}  expected {:5.1}%  observed {:5.1}%  tolerance +-{:.1}%\n",
            100.0 * p,
            100.0 * got,
            100.0 * tol
        ));
        if (got - p).abs() > tol {
            bad.push(*name);
        }
    }
    println!("{what}: {n} flows\n{lines}");
    assert!(bad.is_empty(), "{what}: shares off for {bad:?}:\n{lines}");
}

/// Sends short flows to `target` through each edge in turn; every one must be answered by the
/// predicted backend; then the shares are checked over all of them.
fn flows_land_on_predicted_backends(
    lab: &Lab,
    predictor: &Predictor,
    protocol: &str,
    target: SocketAddr,
) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for edge in [reference::EDGE1, reference::EDGE2] {
        reference::route_vips_to(lab, edge).expect("routing the VIPs");
        let started = Instant::now();
        let transport = match protocol {
            "tcp" => Transport::Tcp,
            _ => Transport::Udp,
        };
        let records: Vec<FlowRecord> = lab
            .flows(
                reference::CLIENT,
                transport,
                target,
                FLOWS_PER_EDGE,
                FLOW_BUDGET,
            )
            .expect("client")
            .records();
        let what = format!("{protocol} to {target} via {edge}");
        assert_eq!(records.len(), FLOWS_PER_EDGE, "{what}: time budget ran out");
        let mut wrong = Vec::new();
        let mut failed = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let Some(local) = r.local else {
                failed.push(format!("{r:?}"));
                continue;
            };
            let expected = predictor.backend(protocol, local, target);
            if i < CLI_SAMPLES {
                predictor.check_cli(protocol, local, target, expected);
            }
            match &r.answer {
                Ok(name) if name == expected => *counts.entry(name.clone()).or_default() += 1,
                Ok(name) => {
                    wrong.push(format!("{local}: answered by {name}, predicted {expected}"))
                }
                Err(e) => failed.push(format!("{local}: {e} (predicted {expected})")),
            }
        }
        println!(
            "{what}: {} flows in {:.1} s",
            records.len(),
            started.elapsed().as_secs_f64()
        );
        assert!(
            failed.is_empty() && wrong.is_empty(),
            "{what}: {} failed, {} on the wrong backend; first: {:?} {:?}",
            failed.len(),
            wrong.len(),
            failed.iter().take(5).collect::<Vec<_>>(),
            wrong.iter().take(5).collect::<Vec<_>>()
        );
    }
    check_shares(&counts, &format!("{protocol} to {target}"));
}

/// One lab for both: starting agents is the slow part of a lab test (the verifier).
fn flows_follow_lookup_and_weights_and_other_traffic_passes(encapsulation: &str) {
    let mut lab = lab_with(encapsulation);
    non_vip_traffic_is_unaffected(&mut lab);
    let predictor = Predictor::new(&lab);
    for (protocol, target) in [
        ("tcp", reference::vip_v4_tcp()),
        ("udp", reference::vip_v4_udp()),
        ("tcp", reference::vip_v6_tcp()),
        ("udp", reference::vip_v6_udp()),
    ] {
        flows_land_on_predicted_backends(&lab, &predictor, protocol, target);
    }
}

fn sock(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse().expect("literal"), port)
}

/// Extra servers on the hosts' own addresses (port 80 and 7 like the VIPs: only the VIP address
/// is steered, not the port).
const HOST_PORT_TCP: u16 = reference::TCP_PORT;
const HOST_PORT_UDP: u16 = reference::UDP_PORT;

fn non_vip_traffic_is_unaffected(lab: &mut Lab) {
    let server = lab::find_binary("anycast-lab-server", "ANYCAST_LAB_SERVER_BIN").expect("server");
    let server = server.to_string_lossy().into_owned();
    let (tcp, udp) = (HOST_PORT_TCP.to_string(), HOST_PORT_UDP.to_string());
    for (ns, v4, v6) in [
        (reference::EDGE1, reference::EDGE1_V4, reference::EDGE1_V6),
        (reference::EDGE2, reference::EDGE2_V4, reference::EDGE2_V6),
        (
            reference::BACKEND1,
            reference::BACKEND1_V4,
            reference::BACKEND1_V6,
        ),
    ] {
        let name = format!("{ns}-host");
        lab.spawn(
            ns,
            &format!("server-{name}"),
            &[&server, &name, &tcp, &udp, v4, v6],
            &[],
        )
        .expect("starting a host server");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for ns in [reference::EDGE1, reference::EDGE2, reference::BACKEND1] {
        while !lab.log(&format!("server-{ns}-host")).contains("listening") {
            lab.check_alive().expect("host servers");
            assert!(Instant::now() < deadline, "server in {ns} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    for target in [
        reference::EDGE1_V4,
        reference::EDGE1_V6,
        reference::EDGE2_V4,
        reference::EDGE2_V6,
        reference::BACKEND1_V4,
        reference::BACKEND2_V6,
    ] {
        if let Err(out) = lab.ping(reference::CLIENT, target, 3) {
            panic!("client cannot ping {target} with the program attached:\n{out}");
        }
    }

    // To the edges' own addresses, from the client: the program passes them to the stack.
    for (addr, name) in [
        (reference::EDGE1_V4, "edge1-host"),
        (reference::EDGE1_V6, "edge1-host"),
        (reference::EDGE2_V4, "edge2-host"),
        (reference::EDGE2_V6, "edge2-host"),
    ] {
        for (transport, port) in [
            (Transport::Tcp, HOST_PORT_TCP),
            (Transport::Udp, HOST_PORT_UDP),
        ] {
            lab.flows(
                reference::CLIENT,
                transport,
                sock(addr, port),
                20,
                Duration::from_secs(20),
            )
            .unwrap_or_else(|e| panic!("{transport} client: {e}"))
            .assert_all_answered_by(name, &format!("{transport} to {addr}"));
        }
    }

    // An edge's own connections out: the replies come in through its program.
    for edge in [reference::EDGE1, reference::EDGE2] {
        for addr in [reference::BACKEND1_V4, reference::BACKEND1_V6] {
            let target = sock(addr, HOST_PORT_TCP);
            lab.flows(edge, Transport::Tcp, target, 20, Duration::from_secs(20))
                .expect("tcp client")
                .assert_all_answered_by("backend1-host", &format!("TCP from {edge} to {addr}"));
        }
    }

    // And the VIP still works alongside.
    let tally = lab
        .flows(
            reference::CLIENT,
            Transport::Tcp,
            reference::vip_v4_tcp(),
            30,
            Duration::from_secs(20),
        )
        .expect("tcp client")
        .tally();
    assert_eq!(tally.answered(), 30, "VIP:\n{tally}");
}

/// Waits until the connections stream, with a bound.
fn wait_streaming(c: &lab::LongLived, what: &str) {
    if let Err(s) = c.wait_connected(Instant::now() + Duration::from_secs(30)) {
        panic!("{what}: still connecting after 30 s:\n{s}");
    }
}

fn check_long_lived(report: &ConnsReport, predictor: &Predictor, what: &str) {
    println!("{what}:\n{report}");
    assert_eq!(
        report.established(),
        report.requested,
        "{what}: not all established:\n{report}"
    );
    assert_eq!(report.resets(), 0, "{what}: resets:\n{report}");
    assert_eq!(report.lost(), 0, "{what}: bytes lost:\n{report}");
    assert_eq!(report.corrupt(), 0, "{what}: corrupt streams:\n{report}");
    assert!(report.is_clean(), "{what}:\n{report}");
    let target = report.target.expect("a target");
    for c in &report.conns {
        assert!(c.sent > 0, "{what}: connection {} sent nothing", c.id);
        let expected = predictor.backend("tcp", c.local.expect("established"), target);
        assert_eq!(
            c.backend, expected,
            "{what}: connection {} from {:?}",
            c.id, c.local
        );
    }
    assert_eq!(
        report.per_backend().len(),
        reference::BACKEND_NAMES.len(),
        "{what}: not every backend got connections:\n{report}"
    );
}

/// Packets the agent in `ns` steered (counters `encap` + `local`), from `anycast stats`.
fn steered_packets(lab: &Lab, ns: &str) -> u64 {
    let bin = lab::find_binary("anycast", "ANYCAST_BIN").expect("the anycast binary");
    let out = std::process::Command::new(bin)
        .arg("stats")
        .arg("--socket")
        .arg(lab.agent_socket_path(ns))
        .output()
        .expect("anycast stats");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            matches!(w.next(), Some("encap" | "local")).then(|| w.next()?.parse::<u64>().ok())?
        })
        .sum()
}

fn long_lived_connections_survive_route_moves(encapsulation: &str) {
    const CONNS: usize = 100;
    let lab = lab_with(encapsulation);
    let predictor = Predictor::new(&lab);
    reference::route_vips_to(&lab, reference::EDGE1).expect("route");
    let opts = ConnsOptions {
        conns: CONNS,
        // An upper bound: the test stops them 1.5 s after the last move.
        duration: Duration::from_secs(60),
        ..ConnsOptions::default()
    };
    let v4 = lab
        .start_long_lived(reference::CLIENT, reference::vip_v4_tcp(), opts.clone())
        .expect("starting IPv4 connections");
    let v6 = lab
        .start_long_lived(reference::CLIENT, reference::vip_v6_tcp(), opts)
        .expect("starting IPv6 connections");
    wait_streaming(&v4, "IPv4");
    wait_streaming(&v6, "IPv6");
    let t0 = Instant::now();
    let edge2_before = steered_packets(&lab, reference::EDGE2);
    std::thread::sleep(Duration::from_millis(1500));
    reference::route_vips_to(&lab, reference::EDGE2).expect("route to edge2");
    let moved = t0.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let edge2_during = steered_packets(&lab, reference::EDGE2);
    reference::route_vips_to(&lab, reference::EDGE1).expect("route back to edge1");
    let back = t0.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let mid = (v4.snapshot(), v6.snapshot());
    let (r4, r6) = (v4.stop(), v6.stop());
    println!(
        "route to edge2 at {:.1} s, back to edge1 at {:.1} s, stopped at {:.1} s; edge2 steered {} packets meanwhile",
        moved.as_secs_f64(),
        back.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        edge2_during - edge2_before
    );
    assert!(
        mid.0.phase == Phase::Streaming && mid.1.phase == Phase::Streaming,
        "the connections stopped streaming before the moves were over:\n{}\n{}",
        mid.0,
        mid.1
    );
    assert!(
        edge2_during > edge2_before,
        "edge2 steered nothing while the route pointed at it: the move did not take effect"
    );
    check_long_lived(&r4, &predictor, &format!("{encapsulation}, IPv4 VIP"));
    check_long_lived(&r6, &predictor, &format!("{encapsulation}, IPv6 VIP"));
}

/// Each test once per encapsulation: modules `ipip` and `gue`.
macro_rules! per_encapsulation {
    ($($name:ident => $body:ident;)*) => {
        per_encapsulation!(@module ipip $($name => $body;)*);
        per_encapsulation!(@module gue $($name => $body;)*);
    };
    (@module $encap:ident $($name:ident => $body:ident;)*) => {
        mod $encap {
            $(#[test]
            fn $name() {
                if !anycast_tests::privileged(concat!(stringify!($encap), "::", stringify!($name))) {
                    return;
                }
                super::$body(stringify!($encap));
            })*
        }
    };
}

per_encapsulation! {
    vip_flows_land_on_the_backend_lookup_predicts_in_weight_proportion_and_other_traffic_passes
        => flows_follow_lookup_and_weights_and_other_traffic_passes;
    long_lived_tcp_connections_survive_moving_the_route_between_edges_and_back
        => long_lived_connections_survive_route_moves;
}
