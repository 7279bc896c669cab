//! `anycast-bench`: per-packet cost of each XDP path through BPF_PROG_TEST_RUN, and Maglev table
//! build times. Run with `cargo xtask bench` (release mode, root). Prints a Markdown table.
//!
//! Method:
//! - Paths that leave the packet as it is (non-VIP pass, local VIP) run once with
//!   `repeat = N`: the kernel runs the program N times on the same buffer and reports the
//!   average (net/bpf/test_run.c, `bpf_test_run`).
//! - Paths that rewrite the packet (encapsulation, decapsulation) must not see their own
//!   output, so they run N separate test runs with `repeat = 1` and average the kernel's
//!   `duration`. That figure includes the kernel's per-call timing overhead (the clock reads and
//!   the per-run setup inside the timed region); the tool measures that overhead on the pass
//!   path (loop of repeat=1 minus repeat=N) and prints it, so it can be subtracted.
//! - Every path is checked to take the intended action before it is timed. Runs use the fixture
//!   namespace (veth ingress, resolved gateway, so encapsulated packets end in XDP_TX).
//! - Each figure is the median of `RUNS` runs.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anycast::config::{Config, Encapsulation, VipBuilder};
use anycast::plan::maglev::{self, MaglevBackend};
use anycast_tests::fixture::{
    Dataplane, XDP_PASS, XDP_TX, action_name, fixture_netns, ifindex, net,
};
use anycast_tests::packet::{self as p, V4, V6};

const RUNS: usize = 5;
const REPEAT: u32 = 1_000_000;
const LOOP: u32 = 200_000;
const MAGLEV_RUNS: usize = 7;

/// The fixture namespace's edge (acf0, 198.18.0.1 / fd00:18::1) with one VIP per path:
/// IPv4 and IPv6 VIPs on IPv4 and IPv6 remote backends, and a VIP whose backend is this host.
fn config() -> Config {
    let vip =
        |address: &str, backend: &str| VipBuilder::new(address, 80, "tcp").backend(backend, 1);
    net::edge_config()
        .agent("hash_seed", 1)
        .agent("max_backends", 16)
        .agent("decap_allow", vec!["198.18.5.0/24", "fd00:5::/64"])
        .vips([
            vip("203.0.113.10", "198.19.1.10"),
            vip("2001:db8::10", "fd00:1::10"),
            vip("2001:db8::11", "198.19.1.11"),
            vip("203.0.113.11", "fd00:1::11"),
            vip("203.0.113.12", "198.18.0.1"),
        ])
        .build()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    /// One test run, `repeat = REPEAT`.
    Repeat,
    /// `LOOP` test runs with `repeat = 1`.
    Loop,
}

struct Path {
    name: &'static str,
    encap: Encapsulation,
    frame: Vec<u8>,
    action: u32,
    method: Method,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn paths() -> Vec<Path> {
    let client4 = Ipv4Addr::new(198, 18, 100, 7);
    let client6: Ipv6Addr = "fd00:100::7".parse().expect("v6");
    let body = [0x5au8; 64];
    let tcp4 = |dst: &str| {
        p::frame(
            None,
            &V4::new(client4, dst.parse().expect("v4")).tcp(40000, 80, &body),
        )
    };
    let tcp6 = |dst: &str| {
        p::frame(
            None,
            &V6::new(client6, dst.parse().expect("v6")).tcp(40000, 80, &body),
        )
    };
    let inner = V4::new(client4, "203.0.113.10".parse().expect("v4")).tcp(40000, 80, &body);
    let tunnel_src = Ipv4Addr::new(198, 18, 5, 1);
    let decap_ipip = p::frame(None, &p::ipip_v4(tunnel_src, net::EDGE_V4, &inner));
    let decap_gue = p::frame(
        None,
        &V4::new(tunnel_src, net::EDGE_V4).udp(
            50000,
            anycast_common::GUE_DEFAULT_PORT,
            &p::gue_v0(&inner, 0),
        ),
    );
    use Encapsulation::{Gue, Ipip};
    use Method::{Loop, Repeat};
    let path = |name, encap, frame, action, method| Path {
        name,
        encap,
        frame,
        action,
        method,
    };
    vec![
        path(
            "non-VIP pass (IPv4 TCP)",
            Ipip,
            tcp4("203.0.113.99"),
            XDP_PASS,
            Repeat,
        ),
        path(
            "non-VIP pass (IPv4 TCP), repeat=1 loop",
            Ipip,
            tcp4("203.0.113.99"),
            XDP_PASS,
            Loop,
        ),
        path(
            "local VIP (IPv4 TCP)",
            Ipip,
            tcp4("203.0.113.12"),
            XDP_PASS,
            Repeat,
        ),
        path("IPIP 4in4", Ipip, tcp4("203.0.113.10"), XDP_TX, Loop),
        path("IPIP 6in6", Ipip, tcp6("2001:db8::10"), XDP_TX, Loop),
        path("IPIP 6in4", Ipip, tcp6("2001:db8::11"), XDP_TX, Loop),
        path("IPIP 4in6", Ipip, tcp4("203.0.113.11"), XDP_TX, Loop),
        path(
            "GUE IPv4 outer (4in4)",
            Gue,
            tcp4("203.0.113.10"),
            XDP_TX,
            Loop,
        ),
        path(
            "GUE IPv6 outer (6in6)",
            Gue,
            tcp6("2001:db8::10"),
            XDP_TX,
            Loop,
        ),
        path("decap IPIP (4in4)", Ipip, decap_ipip, XDP_PASS, Loop),
        path("decap GUE (4in4)", Ipip, decap_gue, XDP_PASS, Loop),
    ]
}

mod control_plane;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("anycast-bench needs root (BPF_PROG_TEST_RUN, network namespaces)");
        std::process::exit(2);
    }
    // `anycast-bench control`: the control plane's latency alone.
    if std::env::args().nth(1).as_deref() == Some("control") {
        control_plane::run();
        return;
    }
    let mut config = config();
    let local: BTreeSet<IpAddr> = [IpAddr::V4(net::EDGE_V4), IpAddr::V6(net::EDGE_V6)].into();
    let ns = fixture_netns();
    let paths = paths();
    let rows = ns.enter(|| {
        let mut dp = Dataplane::from_config(&config);
        let ingress = ifindex(net::DEV);
        let mut current = None;
        let mut rows = Vec::new();
        for path in &paths {
            if current != Some(path.encap) {
                config.agent.encapsulation = path.encap;
                dp.apply(&config, &local);
                current = Some(path.encap);
            }
            let check = dp.run(&path.frame, Some(ingress)).expect("test_run");
            assert_eq!(
                check.action,
                path.action,
                "{}: expected {}, got {}",
                path.name,
                action_name(path.action),
                action_name(check.action)
            );
            let mut samples = Vec::with_capacity(RUNS);
            for _ in 0..RUNS {
                let ns_per_packet = match path.method {
                    Method::Repeat => {
                        let r = dp
                            .run_repeat(&path.frame, Some(ingress), REPEAT)
                            .expect("test_run");
                        r.duration.as_secs_f64() * 1e9
                    }
                    Method::Loop => {
                        let mut total = Duration::ZERO;
                        for _ in 0..LOOP {
                            total += dp
                                .run(&path.frame, Some(ingress))
                                .expect("test_run")
                                .duration;
                        }
                        total.as_secs_f64() * 1e9 / f64::from(LOOP)
                    }
                };
                samples.push(ns_per_packet);
            }
            rows.push((
                path.name,
                action_name(path.action),
                path.method,
                path.frame.len(),
                median(samples),
            ));
        }
        rows
    });

    let pass_repeat = rows
        .iter()
        .find(|r| r.2 == Method::Repeat)
        .map_or(0.0, |r| r.4);
    let pass_loop = rows
        .iter()
        .find(|r| r.2 == Method::Loop && r.1 == action_name(XDP_PASS))
        .map_or(0.0, |r| r.4);
    let overhead = pass_loop - pass_repeat;
    println!("## XDP paths (BPF_PROG_TEST_RUN, median of {RUNS} runs)\n");
    println!(
        "| path | action | frame bytes | method | ns/packet (measured) | ns/packet (less timing overhead) |"
    );
    println!("|---|---|---:|---|---:|---:|");
    for (name, action, method, len, ns_pp) in &rows {
        let (m, net) = match method {
            Method::Repeat => (format!("repeat={REPEAT}"), *ns_pp),
            Method::Loop => (format!("{LOOP} x repeat=1"), ns_pp - overhead),
        };
        println!("| {name} | {action} | {len} | {m} | {ns_pp:.1} | {net:.1} |");
    }
    println!(
        "\nPer-call timing overhead of a repeat=1 run, measured on the non-VIP pass path \
         (loop of repeat=1 minus repeat=N): {overhead:.1} ns. The last column subtracts it from the \
         repeat=1 rows.\n"
    );

    println!("## Maglev table build (M = 65537, median of {MAGLEV_RUNS} runs)\n");
    println!("| backends | build time (ms) |");
    println!("|---:|---:|");
    for n in [10u32, 100, 1000] {
        let backends: Vec<MaglevBackend> = (0..n)
            .map(|i| {
                let a = Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8);
                MaglevBackend::new(IpAddr::V4(a), 1 + i % 3)
            })
            .collect();
        let mut samples = Vec::with_capacity(MAGLEV_RUNS);
        for _ in 0..MAGLEV_RUNS {
            let t = Instant::now();
            let table = maglev::build(&backends, 65537, 1);
            samples.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(table.len(), 65537);
        }
        println!("| {n} | {:.2} |", median(samples));
    }
    println!("\n(weights 1..3, cycling; IPv4 backends)");

    table_io(&config);
    control_plane::run();
}

/// Writing and reading one 65,537-slot table of `RINGS`: element by element (one `bpf(2)` call
/// per slot) against the batch commands the agent uses (`anycast::dataplane::batch`).
fn table_io(config: &Config) {
    use std::os::fd::AsFd as _;
    let mut dp = anycast::dataplane::Dataplane::load(config).expect("loading the object");
    let m = config.agent.ring_size;
    let keys: Vec<u32> = (0..m).collect();
    let values: Vec<u32> = (0..m).map(|i| i % 7).collect();
    let mut rings: aya::maps::Array<_, u32> = aya::maps::Array::try_from(
        dp.ebpf_mut()
            .map_mut(anycast_common::map_names::RINGS)
            .expect("RINGS"),
    )
    .expect("RINGS is an array");
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("write, element by element", Vec::new()),
        ("write, BPF_MAP_UPDATE_BATCH", Vec::new()),
        ("read, element by element", Vec::new()),
        ("read, BPF_MAP_LOOKUP_BATCH", Vec::new()),
    ];
    for _ in 0..MAGLEV_RUNS {
        let t = Instant::now();
        for (&k, &v) in keys.iter().zip(&values) {
            rings.set(k, v, 0).expect("write");
        }
        rows[0].1.push(t.elapsed().as_secs_f64() * 1e3);
        let fd = aya::maps::IterableMap::map(&rings).fd().as_fd();
        let t = Instant::now();
        assert!(anycast::dataplane::batch::update(fd, &keys, &values).expect("batch write"));
        rows[1].1.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let read: Vec<u32> = keys
            .iter()
            .map(|k| rings.get(k, 0).expect("read"))
            .collect();
        rows[2].1.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(read, values);
        let fd = aya::maps::IterableMap::map(&rings).fd().as_fd();
        let t = Instant::now();
        let read = anycast::dataplane::batch::lookup(fd, m, m)
            .expect("batch read")
            .expect("supported");
        rows[3].1.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(read.len(), m as usize);
    }
    println!(
        "\n## Table writes and reads (one table of M = {m} slots, median of {MAGLEV_RUNS} runs)\n"
    );
    println!("| operation | time (ms) |");
    println!("|---|---:|");
    for (name, samples) in rows {
        println!("| {name} | {:.2} |", median(samples));
    }
}
