//! Per-packet cost of each XDP path through BPF_PROG_TEST_RUN, the encapsulating ones twice:
//! routed by the next-hop cache (`NEXTHOPS`, filled by the agent's own resolver in the bench
//! namespace) and by `bpf_fib_lookup` (entries cleared), interleaved round by round so that both
//! see the same machine.
//!
//! Method:
//! - Paths that leave the packet as it is (non-VIP pass, local VIP) run once with
//!   `repeat = REPEAT`: the kernel runs the program that many times on the same buffer and
//!   reports the average (net/bpf/test_run.c, `bpf_test_run`).
//! - Paths that rewrite the packet (encapsulation, decapsulation) must not see their own output,
//!   so they run `LOOP` separate test runs with `repeat = 1` and average the kernel's `duration`.
//!   That figure includes the kernel's per-call timing overhead (clock reads and per-run setup
//!   inside the timed region); the tool measures it on the pass path (loop of repeat=1 minus
//!   repeat=N) and subtracts it from the loop rows.
//! - "new flow" sends every run a TCP ACK (or UDP datagram) of another flow (source address and
//!   port), with connection tracking emptied before each sample, so each one misses and inserts
//!   into `CONNS_NEW`. "flood" does the same once `CONNS_NEW` is full (FLOOD_PREFILL other flows
//!   sent first, untimed): every insert evicts, the steady state of a random-tuple flood.
//!   "second packet" sends each of the new flows' second packet (their first sent untimed): a
//!   hit in `CONNS_NEW` and the promotion into `CONNS`. The others repeat one flow, tracked
//!   after its first packet. The bench thread stays on one CPU, whose LRU share those rows fill.
//! - Every path is checked to take the intended action, and for the cached rows not to call the
//!   FIB (the `fib_lookup` counter), before it is timed.
//! - Figures: min and median of `RUNS` rounds.
//! - `--baseline OBJECT` (another build of the eBPF object, e.g. from a `git worktree` of an
//!   earlier commit: `target/release/build/anycast-userspace-*/out/anycast`) adds its figures
//!   (cached, for encapsulating paths), interleaved with this build's in the same rounds, and the
//!   ratio between them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anycast::config::{Config, Encapsulation, VipBuilder};
use anycast_common::{NextHop, counter};
use anycast_tests::fixture::{
    Dataplane, XDP_PASS, XDP_TX, action_name, fixture_netns, ifindex, net, pin_to_cpu,
};
use anycast_tests::packet::{self as p, V4, V6};

const RUNS: usize = 7;
const REPEAT: u32 = 1_000_000;
const LOOP: u32 = 100_000;
/// Flows sent before the flood row: more than one CPU's share of `CONNS_NEW` (a quarter of
/// `conntrack_size`, split between the CPUs), so that every timed insert evicts.
const FLOOD_PREFILL: u32 = 300_000;

/// The fixture namespace's edge (acf0, 198.18.0.1 / fd00:18::1) with one VIP per path: IPv4 and
/// IPv6 VIPs on IPv4 and IPv6 remote backends, and a VIP whose backend is this host.
pub fn config() -> Config {
    config_with("ring_size", 65537)
}

/// [`config`] with one `[agent]` field set to `value`.
pub fn config_with(field: &str, value: u32) -> Config {
    config_moved(field, value, SECOND_CHANCE_BACKEND)
}

/// The VIP of the second-chance row: its backend is this host, and was a remote one in the
/// previous table ([`config_moved`]).
const SECOND_CHANCE_VIP: &str = "203.0.113.14";
const SECOND_CHANCE_BACKEND: &str = "198.18.0.1";
const SECOND_CHANCE_PREVIOUS: &str = "198.19.1.10";

/// [`config_with`], with [`SECOND_CHANCE_VIP`]'s backend at `second_chance_backend`.
fn config_moved(field: &str, value: u32, second_chance_backend: &str) -> Config {
    let vip =
        |address: &str, backend: &str| VipBuilder::new(address, 80, "tcp").backend(backend, 1);
    net::edge_config()
        .agent("hash_seed", 1)
        .agent("max_backends", 16)
        // Large enough that one CPU's share of CONNS_NEW (a quarter, split between the CPUs)
        // holds all LOOP flows of the "new flow" and "second packet" rows: they measure the
        // insert and the promotion, not an eviction (the "flood" row measures that).
        .agent("conntrack_size", 1_048_576)
        .agent("decap_allow", vec!["198.18.5.0/24", "fd00:5::/64"])
        .agent(field, value)
        .vips([
            vip("203.0.113.10", "198.19.1.10"),
            vip("2001:db8::10", "fd00:1::10"),
            vip("2001:db8::11", "198.19.1.11"),
            vip("203.0.113.11", "fd00:1::11"),
            vip("203.0.113.12", "198.18.0.1"),
            VipBuilder::new("203.0.113.13", 53, "udp").backend("198.19.1.10", 1),
            vip(SECOND_CHANCE_VIP, second_chance_backend),
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

pub(super) struct Path {
    pub(super) name: String,
    pub(super) encap: Encapsulation,
    /// Cycled through, one per run.
    pub(super) frames: Vec<Vec<u8>>,
    pub(super) action: u32,
    method: Method,
    /// Encapsulates: timed with the cache and with the FIB.
    pub(super) routed: bool,
    /// `None`: connection tracking keeps what earlier runs left (the path's one flow is tracked
    /// after its first packet). `Some(frames)`: before each sample, tracking is emptied and
    /// these frames are sent, untimed.
    pub(super) conns: Option<Vec<Vec<u8>>>,
    /// Published before the bench's config, so that the VIPs it changes keep this one's tables
    /// as their previous ones (second chance).
    before: Option<Config>,
}

const BODY: [u8; 64] = [0x5a; 64];

fn client4() -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 100, 7)
}

fn client6() -> Ipv6Addr {
    "fd00:100::7".parse().expect("v6")
}

fn tcp4(dst: &str) -> Vec<u8> {
    p::frame(
        None,
        &V4::new(client4(), dst.parse().expect("v4")).tcp(40000, 80, &BODY),
    )
}

fn tcp6(dst: &str) -> Vec<u8> {
    p::frame(
        None,
        &V6::new(client6(), dst.parse().expect("v6")).tcp(40000, 80, &BODY),
    )
}

/// `n` TCP ACKs (port 80) or UDP datagrams (port 53) of distinct flows to `dst` (source
/// 198.18.`base`.0 and up, x 256 ports): what a random-tuple flood sends.
fn new_flows4(dst: &str, udp: bool, base: u8, n: u32) -> Vec<Vec<u8>> {
    let dst: Ipv4Addr = dst.parse().expect("v4");
    (0..n)
        .map(|i| {
            let src = Ipv4Addr::new(198, 18, base | (i >> 16) as u8, (i >> 8) as u8);
            let ip = V4::new(src, dst);
            let sport = 1024 + (i & 0xff) as u16;
            let packet = if udp {
                ip.udp(sport, 53, &BODY)
            } else {
                ip.tcp(sport, 80, &BODY)
            };
            p::frame(None, &packet)
        })
        .collect()
}

pub(super) fn paths() -> Vec<Path> {
    let inner = V4::new(client4(), "203.0.113.10".parse().expect("v4")).tcp(40000, 80, &BODY);
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
    let path = |name: &str, encap, frames, action, method, routed| Path {
        name: name.to_owned(),
        encap,
        frames,
        action,
        method,
        routed,
        conns: None,
        before: None,
    };
    let mut v = vec![
        path(
            "non-VIP pass (IPv4 TCP)",
            Ipip,
            vec![tcp4("203.0.113.99")],
            XDP_PASS,
            Repeat,
            false,
        ),
        path(
            "non-VIP pass (IPv4 TCP), repeat=1 loop",
            Ipip,
            vec![tcp4("203.0.113.99")],
            XDP_PASS,
            Loop,
            false,
        ),
        path(
            "local VIP (IPv4 TCP, tracked)",
            Ipip,
            vec![tcp4("203.0.113.12")],
            XDP_PASS,
            Repeat,
            false,
        ),
    ];
    for (encap, e) in [(Ipip, "IPIP"), (Gue, "GUE")] {
        for (pair, frame) in [
            ("4in4", tcp4("203.0.113.10")),
            ("6in6", tcp6("2001:db8::10")),
            ("6in4", tcp6("2001:db8::11")),
            ("4in6", tcp4("203.0.113.11")),
        ] {
            v.push(path(
                &format!("{e} {pair}, tracked"),
                encap,
                vec![frame],
                XDP_TX,
                Loop,
                true,
            ));
        }
    }
    let flows = |dst, udp| new_flows4(dst, udp, 128, LOOP);
    for (name, frames, prefill) in [
        (
            "IPIP 4in4, new flow (ACK: miss, CONNS_NEW insert)",
            flows("203.0.113.10", false),
            vec![],
        ),
        (
            "IPIP 4in4, new flow (UDP: miss, CONNS_NEW insert)",
            flows("203.0.113.13", true),
            vec![],
        ),
        (
            "IPIP 4in4, flood (ACK, CONNS_NEW full: the insert evicts)",
            flows("203.0.113.10", false),
            new_flows4("203.0.113.10", false, 64, FLOOD_PREFILL),
        ),
        (
            "IPIP 4in4, flow's second packet (ACK: promotion)",
            flows("203.0.113.10", false),
            flows("203.0.113.10", false),
        ),
    ] {
        v.push(Path {
            conns: Some(prefill),
            ..path(name, Ipip, frames, XDP_TX, Loop, true)
        });
    }
    // A tunnelled ACK of a flow this host (the VIP's new owner) holds no socket for: sent on to
    // the previous table's owner, which IPIP cannot name, so the host computes it.
    let moved = V4::new(client4(), SECOND_CHANCE_VIP.parse().expect("v4")).tcp(40000, 80, &BODY);
    v.push(Path {
        before: Some(config_moved("ring_size", 65537, SECOND_CHANCE_PREVIOUS)),
        ..path(
            "decap IPIP + second chance (4in4, previous owner from the tables)",
            Ipip,
            vec![p::frame(
                None,
                &p::ipip_v4(tunnel_src, net::EDGE_V4, &moved),
            )],
            XDP_TX,
            Loop,
            true,
        )
    });
    v.extend(internet_paths(&path));
    v.push(path(
        "decap IPIP (4in4)",
        Ipip,
        vec![decap_ipip],
        XDP_PASS,
        Loop,
        false,
    ));
    v.push(path(
        "decap GUE (4in4)",
        Gue,
        vec![decap_gue],
        XDP_PASS,
        Loop,
        false,
    ));
    v
}

/// The paths of ICMP errors about VIP flows and of fragments (docs/dataplane.md "ICMP errors
/// about VIP flows", "Fragments"), each to a remote backend over IPIP and so timed with the
/// cache and with the FIB.
fn internet_paths(
    path: &impl Fn(&str, Encapsulation, Vec<Vec<u8>>, u32, Method, bool) -> Path,
) -> Vec<Path> {
    let vip4: Ipv4Addr = "203.0.113.10".parse().expect("v4");
    let vip6: Ipv6Addr = "2001:db8::10".parse().expect("v6");
    let router4 = Ipv4Addr::new(198, 51, 100, 1);
    let router6: Ipv6Addr = "2001:db8:ff::1".parse().expect("v6");
    // The backend's answer on the tracked flow of tcp4/tcp6, as a path router quotes it
    // (IP header, TCP header and 8 bytes of data).
    let answer4 = V4::new(vip4, client4()).tcp(80, 40000, &BODY);
    let answer6 = V6::new(vip6, client6()).tcp(80, 40000, &BODY);
    let mtu = [0, 0, 0x05, 0x78];
    let frag_needed = V4::new(router4, vip4).raw(1, &p::icmp4(3, 4, mtu, &answer4[..48]));
    let too_big =
        V6::new(router6, vip6).raw(58, &p::icmp6(router6, vip6, 2, 0, mtu, &answer6[..68]));
    let flow4 = tcp4("203.0.113.10");
    let flow6 = tcp6("2001:db8::10");
    // Fragments of one 1000-byte UDP datagram (IP id 7) to the UDP VIP: the first carries the
    // ports and is remembered, the later ones follow it (the FRAGS table).
    let fragment = |offset: u16| {
        let mut ip = V4::new(client4(), "203.0.113.13".parse().expect("v4")).fragment(true, offset);
        ip.identification = 7;
        let packet = if offset == 0 {
            let udp = [
                &40700u16.to_be_bytes()[..],
                &53u16.to_be_bytes(),
                &1008u16.to_be_bytes(),
                &[0, 0],
                &BODY,
            ]
            .concat();
            ip.raw(17, &udp)
        } else {
            ip.raw(17, &BODY)
        };
        p::frame(None, &packet)
    };
    let tracked = |name: &str, frame: Vec<u8>, flow: &[u8]| Path {
        // The flow's first two packets: it is in CONNS, as an established flow's ICMP finds it.
        conns: Some(vec![flow.to_vec(), flow.to_vec()]),
        ..path(
            name,
            Encapsulation::Ipip,
            vec![frame],
            XDP_TX,
            Method::Loop,
            true,
        )
    };
    vec![
        tracked(
            "ICMPv4 frag needed about a tracked flow (IPIP 4in4)",
            p::frame(None, &frag_needed),
            &flow4,
        ),
        tracked(
            "ICMPv6 packet too big about a tracked flow (IPIP 6in6)",
            p::frame(None, &too_big),
            &flow6,
        ),
        path(
            "IPv4 first fragment (UDP, IPIP 4in4)",
            Encapsulation::Ipip,
            vec![fragment(0)],
            XDP_TX,
            Method::Loop,
            true,
        ),
        Path {
            conns: Some(vec![fragment(0)]),
            ..path(
                "IPv4 later fragment, follows its first (IPIP 4in4)",
                Encapsulation::Ipip,
                vec![fragment(8)],
                XDP_TX,
                Method::Loop,
                true,
            )
        },
    ]
}

/// One timed sample of `path`: ns per packet as the kernel measured it.
fn sample(dp: &mut Dataplane, path: &Path, ingress: Option<u32>) -> f64 {
    if let Some(prefill) = &path.conns {
        dp.clear_conns();
        for f in prefill {
            dp.run(f, ingress).expect("test_run");
        }
    }
    match path.method {
        Method::Repeat => {
            let r = dp
                .run_repeat(&path.frames[0], ingress, REPEAT)
                .expect("test_run");
            r.duration.as_secs_f64() * 1e9
        }
        Method::Loop => {
            let mut total = Duration::ZERO;
            for i in 0..LOOP as usize {
                let f = &path.frames[i % path.frames.len()];
                total += dp.run(f, ingress).expect("test_run").duration;
            }
            total.as_secs_f64() * 1e9 / f64::from(LOOP)
        }
    }
}

/// (min, median).
pub(super) fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

struct Row {
    name: String,
    action: String,
    method: Method,
    len: usize,
    fib: (f64, f64),
    cache: Option<(f64, f64)>,
    /// The baseline object's figure (its cached one for encapsulating paths).
    baseline: Option<(f64, f64)>,
}

/// Loads `object`, publishes `config`, fills the next-hop cache, and checks `path`'s action
/// with the cache off and (for encapsulating paths) on.
pub(super) fn prepare(
    object: &[u8],
    config: &Config,
    local: &BTreeSet<IpAddr>,
    path: &Path,
    ingress: Option<u32>,
) -> (Dataplane, Vec<(u32, NextHop)>) {
    let mut dp = Dataplane::from_config_object(config, object);
    if let Some(before) = &path.before {
        let mut before = before.clone();
        before.agent.encapsulation = config.agent.encapsulation;
        dp.apply(&before, local);
    }
    dp.apply(config, local);
    let resolved = dp.cache_nexthops();
    let cached: Vec<(u32, NextHop)> = resolved
        .iter()
        .map(|(t, _)| (t.id, dp.nexthop(t.id)))
        .collect();
    for on in [false, true] {
        if on && !path.routed {
            continue;
        }
        set_cache(&mut dp, &cached, on);
        // What a sample sends first (a later fragment's first fragment), so that the check
        // sees what the timed runs see.
        for f in path.conns.iter().flatten() {
            dp.run(f, ingress).expect("test_run");
        }
        let before = dp.stats()[counter::FIB_LOOKUP as usize];
        let check = dp.run(&path.frames[0], ingress).expect("test_run");
        assert_eq!(
            check.action,
            path.action,
            "{}: expected {}, got {}",
            path.name,
            action_name(path.action),
            action_name(check.action)
        );
        let lookups = dp.stats()[counter::FIB_LOOKUP as usize] - before;
        if path.routed {
            assert_eq!(
                lookups,
                u64::from(!on),
                "{}: cache {on}: FIB lookups",
                path.name
            );
        }
    }
    (dp, cached)
}

pub(super) fn set_cache(dp: &mut Dataplane, cached: &[(u32, NextHop)], on: bool) {
    for (id, nh) in cached {
        dp.set_nexthop(*id, if on { *nh } else { NextHop::default() });
    }
}

pub fn run(baseline: Option<&[u8]>) {
    let mut config = config();
    let local: BTreeSet<IpAddr> = [IpAddr::V4(net::EDGE_V4), IpAddr::V6(net::EDGE_V6)].into();
    let ns = fixture_netns();
    let paths = paths();
    let rows = ns.enter(|| {
        // Test runs execute on the calling CPU, and each CPU has its own share of the LRU
        // maps: one CPU for every row, so the prefill fills the share the timed runs use.
        pin_to_cpu(0);
        let ingress = Some(ifindex(net::DEV));
        let mut rows = Vec::new();
        for path in &paths {
            config.agent.encapsulation = path.encap;
            let (mut dp, cached) = prepare(anycast::EBPF_OBJECT, &config, &local, path, ingress);
            let mut base = baseline.map(|o| prepare(o, &config, &local, path, ingress));
            // Samples: FIB, cache, baseline; each round takes one of each.
            let mut samples = [Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..RUNS {
                set_cache(&mut dp, &cached, false);
                samples[0].push(sample(&mut dp, path, ingress));
                if path.routed {
                    set_cache(&mut dp, &cached, true);
                    samples[1].push(sample(&mut dp, path, ingress));
                }
                if let Some((b, c)) = &mut base {
                    set_cache(b, c, path.routed);
                    samples[2].push(sample(b, path, ingress));
                }
            }
            let [fib, cache, base] = samples;
            rows.push(Row {
                name: path.name.clone(),
                action: action_name(path.action),
                method: path.method,
                len: path.frames[0].len(),
                fib: stats(fib),
                cache: path.routed.then(|| stats(cache)),
                baseline: baseline.is_some().then(|| stats(base)),
            });
        }
        rows
    });

    let repeat = rows
        .iter()
        .find(|r| r.method == Method::Repeat)
        .map_or(0.0, |r| r.fib.1);
    let looped = rows
        .iter()
        .find(|r| r.method == Method::Loop && r.action == action_name(XDP_PASS))
        .map_or(0.0, |r| r.fib.1);
    let overhead = looped - repeat;
    println!("## XDP paths (BPF_PROG_TEST_RUN; min / median of {RUNS} rounds, ns/packet)\n");
    println!(
        "Loop rows: {LOOP} runs of repeat=1 each, less the per-call timing overhead of \
         {overhead:.1} ns (non-VIP pass, loop minus repeat={REPEAT}). Encapsulating rows: routed by \
         `bpf_fib_lookup` (next-hop cache empty) and by the cache, interleaved.\n"
    );
    let with_base = baseline.is_some();
    println!(
        "| path | action | frame bytes | min / median (encapsulating: FIB) | cache: min / median | cache / FIB (median) |{}",
        if with_base {
            " baseline: min / median | this / baseline (median) |"
        } else {
            ""
        }
    );
    println!(
        "|---|---|---:|---:|---:|---:|{}",
        if with_base { "---:|---:|" } else { "" }
    );
    for r in &rows {
        let less = if r.method == Method::Loop {
            overhead
        } else {
            0.0
        };
        let fmt = |(min, med): (f64, f64)| format!("{:.0} / {:.0}", min - less, med - less);
        let (cache, ratio) = match r.cache {
            Some(c) => (fmt(c), format!("{:.2}", (c.1 - less) / (r.fib.1 - less))),
            None => (String::new(), String::new()),
        };
        let base = match r.baseline {
            Some(b) => {
                let this = r.cache.unwrap_or(r.fib);
                format!(" {} | {:.2} |", fmt(b), (this.1 - less) / (b.1 - less))
            }
            None => String::new(),
        };
        println!(
            "| {} | {} | {} | {} | {cache} | {ratio} |{base}",
            r.name,
            r.action,
            r.len,
            fmt(r.fib)
        );
    }
    println!();
}
