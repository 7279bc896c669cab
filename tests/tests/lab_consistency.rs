//! Flow consistency on the BGP lab (`anycast_tests::lab_bgp`: the reference topology, the router
//! running BIRD with ECMP and BFD, each edge's agent announcing the VIPs through its own BIRD):
//! long-lived TCP connections with data flowing both ways (`anycast-lab-conns`, every byte
//! checked) while the routes and the VIP's backend set change. Issue 4, item 6 and issue 6,
//! item 3; results in BENCHMARKS.md, "Flow consistency results".
//!
//! Both edges announce the VIPs, so the router spreads the connections over both (ECMP, hashing
//! on ports) and each edge carries about half of them. Every route change is made by an edge
//! and observed at the router, never set there by hand:
//!
//! - withdraw: `anycast drain-edge` on the edge (its agent withdraws every VIP through BIRD; the
//!   CLI returns once the edge's VIP traffic has stopped); its connections move to the other edge;
//! - announce: `anycast undrain-edge`; the router spreads over both edges again, and the moved
//!   connections go back;
//! - agent stopped: SIGTERM to the edge's agent, which withdraws before it exits (its BIRD dies
//!   with it, the pinned dataplane stays attached); then a new agent, which adopts the dataplane
//!   and announces again.
//!
//! The time from the edge's command until the router's routes for both VIPs have changed
//! (polled every 10 ms) is printed per change. Not asserted: speed belongs to benchmarks, and a
//! 2-core machine busy with builds starves BIRD and the agents for seconds.
//!
//! | scenario | change while the connections stream | target |
//! |---|---|---|
//! | (a) route changes | edge1 withdraws and announces, edge2 the same, edge1's agent stops and a new one starts | none broken |
//! | (b) backend added | backend2 joins (config + SIGHUP on every agent) | none broken |
//! | (c) backend drained | `anycast drain backend2` on every agent | none broken |
//! | (d) backend removed | backend2 leaves the config on every agent, then one more table change | only backend2's |
//! | (e) add + route changes | backend2 joins, then each edge in turn withdraws for 2 s and announces again | none broken |
//! | (e') drain + route changes | backend2 drained, then the same route changes | none broken |
//! | (f) weight + route changes | `anycast set-weight backend1 3` on every agent, then the same route changes | none broken |
//! | (g) health flap + route changes | backend2's health checks fail on every agent (its slots move away), route changes, its checks pass again (its slots come back), route changes | none broken |
//!
//! Every scenario runs twice: with `encapsulation = "gue"` and with `"ipip"` (modules `gue` and
//! `ipip`), each with IPv4 and IPv6 connections.
//!
//! Removal, as the agent implements it: the removed backend's id stays valid while the VIP's
//! previous table still names it, so while its host stays up its tracked connections keep going
//! to it; the next table change of the VIP releases the id, and then (and only then) they end
//! (`conn_stale`). The test checks both steps.
//!
//! What keeps the connections: connection tracking on the edge that saw the flows (conn_hit),
//! and, where an edge sees flows for the first time after a table change, second chance. Under
//! GUE the edge names the previous owner (hint_sent) and a new owner without a socket for the
//! flow forwards it there once (second_chance). Under IPIP no hint rides along: the edge tracks
//! the flow to the new owner, which computes the flow's owner from its own tables
//! (second_chance_table) and forwards it there once. That needs every agent, backends included,
//! to hold the same VIP tables: the lab gives every agent the same VIPs, and every change here
//! (config, drain, weight, health) reaches all four agents, which the test checks by their
//! table fingerprints. Each scenario prints those counters (deltas over the scenario, from every
//! agent's stats) and asserts the ones that prove the mechanism worked. Second chance from a
//! backend host needs what the reference topology gives every lab: IP forwarding on the
//! backends, `anycast_pass` on the router's backend-facing veths.
//!
//! No scenario is kept with hand-set routes: what a hand-set route move exercised here (one
//! edge's connections arriving at an edge that never saw them, right after a table change) the
//! BGP scenarios (e) and (e') exercise for both edges' connections, with ECMP on top; and the
//! dataplane alone under a hand-set route move (no control plane involved) stays pinned by
//! lab_steering.rs (2 x 100 connections, route edge1 -> edge2 -> edge1).
//!
//! The lab tests of this file take a lock so that they run one at a time: each runs four agents,
//! three BIRDs and 240 connections, and the test machines have two cores.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anycast_tests::lab::conns::Phase;
use anycast_tests::lab::{
    self, ConnReport, ConnsOptions, ConnsReport, LongLived, VipSpec, reference,
};
use anycast_tests::lab_bgp::{self, BgpLab, Options};

/// Connections per VIP family: 120 to the IPv4 VIP and 120 to the IPv6 VIP.
const CONNS_PER_FAMILY: usize = 120;
/// Streaming before the first change, and after the last one before stopping.
const SETTLE: Duration = Duration::from_millis(1500);
/// Counters shown per host (deltas over a scenario).
const COUNTERS: [&str; 11] = [
    "conn_hit",
    "conn_miss",
    "conn_insert",
    "conn_stale",
    "hint_sent",
    "second_chance",
    "second_chance_table",
    "second_chance_last_hop",
    "encap",
    "local",
    "decap",
];
const EDGES: [&str; 2] = [reference::EDGE1, reference::EDGE2];
/// Every agent of the lab: both edges and both backends.
const HOSTS: [&str; 4] = lab_bgp::HOSTS;
/// How long to wait for the router to apply an edge's route change: far above the tens of
/// milliseconds measured on a quiet machine (BENCHMARKS.md), only there to bound the wait (a
/// 2-core machine busy with builds starves BIRD and the agents for seconds). A new agent first
/// loads and verifies the program (seconds of CPU) and opens its BGP sessions.
const WITHDRAW_LIMIT: Duration = Duration::from_secs(30);
const ANNOUNCE_LIMIT: Duration = Duration::from_secs(30);
const NEW_AGENT_LIMIT: Duration = Duration::from_secs(90);

const THREE: [(&str, u32); 3] = [("edge1", 1), ("backend1", 1), ("backend2", 1)];
const WITHOUT_BACKEND2: [(&str, u32); 2] = [("edge1", 1), ("backend1", 1)];

static SERIAL: Mutex<()> = Mutex::new(());

fn backend_addrs(name: &str) -> (&'static str, &'static str) {
    match name {
        "edge1" => (reference::EDGE1_V4, reference::EDGE1_V6),
        "backend1" => (reference::BACKEND1_V4, reference::BACKEND1_V6),
        "backend2" => (reference::BACKEND2_V4, reference::BACKEND2_V6),
        other => panic!("{other} is not a backend of the reference topology"),
    }
}

/// The reference VIPs (TCP and UDP, IPv4 and IPv6) with these backends (by name) and weights.
fn vips(backends: &[(&str, u32)]) -> Vec<VipSpec> {
    let mut v = Vec::new();
    for (address, v6) in [(reference::VIP_V4, false), (reference::VIP_V6, true)] {
        let list: Vec<(String, u32)> = backends
            .iter()
            .map(|(name, w)| {
                let (a4, a6) = backend_addrs(name);
                ((if v6 { a6 } else { a4 }).to_owned(), *w)
            })
            .collect();
        for (port, protocol) in [(reference::TCP_PORT, "tcp"), (reference::UDP_PORT, "udp")] {
            v.push(VipSpec {
                address: address.to_owned(),
                port,
                protocol: protocol.to_owned(),
                backends: list.clone(),
            });
        }
    }
    v
}

/// How the lab's agents encapsulate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Encap {
    Gue,
    Ipip,
}

impl Encap {
    fn name(self) -> &'static str {
        match self {
            Encap::Gue => "gue",
            Encap::Ipip => "ipip",
        }
    }

    /// The counters that prove a second chance carried flows an edge saw for the first time
    /// after a table change: the hint and its hop under GUE; under IPIP no hint, the new owner
    /// computing the hop from its tables.
    fn second_chance_proof(self) -> &'static [Expect] {
        const GUE: [Expect; 2] = [moved(&EDGES, "hint_sent"), moved(&HOSTS, "second_chance")];
        const IPIP: [Expect; 3] = [
            still(&EDGES, "hint_sent"),
            moved(&HOSTS, "second_chance_table"),
            moved(&HOSTS, "second_chance"),
        ];
        match self {
            Encap::Gue => &GUE,
            Encap::Ipip => &IPIP,
        }
    }
}

/// A BGP lab with `encap` whose agents (edges and backends) all serve `backends`, both edges
/// announcing; `all_health`: every agent health-checks the backends. `None` when the test may
/// not run (unprivileged, not CI).
fn start(
    test: &str,
    encap: Encap,
    backends: &[(&str, u32)],
    all_health: bool,
) -> Option<(MutexGuard<'static, ()>, BgpLab)> {
    let test = format!("{}::{test}", encap.name());
    if !anycast_tests::privileged(&test) {
        return None;
    }
    let serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = Instant::now();
    let bgp = BgpLab::start(Options {
        reference: reference::Options {
            encapsulation: encap.name().to_owned(),
            weights: [1, 1, 1],
        },
        vips: Some(vips(backends)),
        all_health,
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("{test}: starting the BGP lab: {e}"));
    println!(
        "{test}: lab up, ECMP over both edges, in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Some((serial, bgp))
}

// ---------------------------------------------------------------------------------------------
// The agents: stats, tables, backends.

/// Runs the `anycast` CLI against the agent in `ns`; it must succeed. Returns its stdout.
fn cli(bgp: &BgpLab, ns: &str, args: &[&str]) -> String {
    let out = bgp
        .anycast(ns, args)
        .unwrap_or_else(|e| panic!("{ns}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{ns}: anycast {args:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

type Counters = BTreeMap<&'static str, BTreeMap<String, u64>>;

fn all_counters(bgp: &BgpLab) -> Counters {
    HOSTS
        .iter()
        .map(|ns| {
            let stats = bgp
                .client(ns)
                .stats()
                .unwrap_or_else(|e| panic!("{ns}: stats: {e}"));
            (*ns, stats.counters.into_iter().collect())
        })
        .collect()
}

fn delta(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .map(|(ns, a)| {
            let b = &before[ns];
            let d = a
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0))))
                .collect();
            (*ns, d)
        })
        .collect()
}

/// Every VIP's table fingerprint on the agent in `ns`, by VIP.
fn fingerprints(bgp: &BgpLab, ns: &str) -> BTreeMap<String, String> {
    bgp.status(ns)
        .vips
        .into_iter()
        .map(|v| {
            (
                v.vip.to_string(),
                v.fingerprint.unwrap_or_else(|| "none".to_owned()),
            )
        })
        .collect()
}

/// Waits (bounded) until every agent (edges and backends) publishes the same tables, different
/// from `before`: the second chance of a flow depends on the backends' tables as much as on the
/// edges'.
fn wait_tables_changed(bgp: &BgpLab, before: &BTreeMap<String, String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all: Vec<BTreeMap<String, String>> =
            HOSTS.iter().map(|ns| fingerprints(bgp, ns)).collect();
        if all.iter().all(|f| f == &all[0]) && &all[0] != before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the agents did not publish a new common table within 15 s:\n{}before {before:?}\nedge1 log:\n{}",
            HOSTS
                .iter()
                .zip(&all)
                .map(|(ns, f)| format!("{ns} {f:?}\n"))
                .collect::<String>(),
            bgp.edge_log(reference::EDGE1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Connections.

struct Running {
    v4: LongLived,
    v6: LongLived,
}

fn start_conns(bgp: &BgpLab) -> Running {
    let opts = ConnsOptions {
        conns: CONNS_PER_FAMILY,
        // An upper bound: each scenario stops them once its changes are over.
        duration: Duration::from_secs(120),
        ..ConnsOptions::default()
    };
    let v4 = bgp
        .lab
        .start_long_lived(reference::CLIENT, reference::vip_v4_tcp(), opts.clone())
        .expect("starting IPv4 connections");
    let v6 = bgp
        .lab
        .start_long_lived(reference::CLIENT, reference::vip_v6_tcp(), opts)
        .expect("starting IPv6 connections");
    let deadline = Instant::now() + Duration::from_secs(40);
    for (c, what) in [(&v4, "IPv4"), (&v6, "IPv6")] {
        if let Err(s) = c.wait_connected(deadline) {
            panic!("{what}: still connecting after 40 s:\n{s}");
        }
    }
    Running { v4, v6 }
}

impl Running {
    fn assert_streaming(&self, what: &str) {
        for s in [self.v4.snapshot(), self.v6.snapshot()] {
            assert_eq!(
                s.phase,
                Phase::Streaming,
                "{what}: the connections stopped streaming before the changes were over:\n{s}"
            );
        }
    }

    fn stop(self) -> [ConnsReport; 2] {
        [self.v4.stop(), self.v6.stop()]
    }
}

fn broken_so_far(c: &ConnReport) -> bool {
    !c.established || c.resets > 0 || c.closed_early || c.error.is_some() || c.corrupt_at.is_some()
}

// ---------------------------------------------------------------------------------------------
// Changes made while the connections stream.

/// A route change an edge made, and how long the router took to apply it (both VIPs).
struct RouteChange {
    what: String,
    kind: Change,
    took: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// `drain-edge`, or the agent stopped: the router must drop the edge.
    Withdraw,
    /// `undrain-edge`: the router must take the edge back.
    Announce,
    /// A new agent: the router must take the edge back once it has started and announced.
    NewAgent,
}

/// What a scenario's change can do, and what it did.
struct Ctx<'a> {
    bgp: &'a mut BgpLab,
    running: &'a Running,
    routes: Vec<RouteChange>,
}

fn other_edge(edge: &str) -> &'static str {
    if edge == reference::EDGE1 {
        reference::EDGE2
    } else {
        reference::EDGE1
    }
}

/// Waits until the router's routes to both VIPs go through exactly `edges`; returns the time
/// since `since`.
fn wait_routes(bgp: &BgpLab, edges: &[&str], since: Instant, limit: Duration) -> Duration {
    for (vip, v6) in [(reference::VIP_V4, false), (reference::VIP_V6, true)] {
        let hops: Vec<&str> = edges
            .iter()
            .map(|e| {
                let (a4, a6, _, _) = lab_bgp::edge_link(e);
                if v6 { a6 } else { a4 }
            })
            .collect();
        let left = limit.saturating_sub(since.elapsed());
        bgp.wait_nexthops(vip, &hops, left).unwrap_or_else(|e| {
            panic!(
                "{e}\nedge logs:\n{}{}",
                bgp.edge_log(EDGES[0]),
                bgp.edge_log(EDGES[1])
            )
        });
    }
    since.elapsed()
}

impl Ctx<'_> {
    fn record(&mut self, what: String, kind: Change, took: Duration) {
        println!(
            "route: {what}: the router followed in {} ms",
            took.as_millis()
        );
        self.routes.push(RouteChange { what, kind, took });
    }

    /// `anycast drain-edge` on `edge`: the router must route both VIPs to the other edge only,
    /// and the CLI must see the edge's VIP traffic stop.
    fn withdraw(&mut self, edge: &str) {
        let bgp = &*self.bgp;
        let t0 = Instant::now();
        let (out, took) = std::thread::scope(|s| {
            let watch = s.spawn(|| wait_routes(bgp, &[other_edge(edge)], t0, WITHDRAW_LIMIT));
            let out = cli(
                bgp,
                edge,
                &["drain-edge", "--timeout", "30", "--quiet-ms", "500"],
            );
            (
                out,
                watch
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            )
        });
        assert!(
            out.contains("VIP traffic stopped"),
            "{edge}: drain-edge: {out}"
        );
        self.record(format!("{edge} drain-edge"), Change::Withdraw, took);
    }

    /// `anycast undrain-edge` on `edge`: the router must spread over both edges again.
    fn announce(&mut self, edge: &str) {
        let t0 = Instant::now();
        cli(self.bgp, edge, &["undrain-edge"]);
        let took = wait_routes(self.bgp, &EDGES, t0, ANNOUNCE_LIMIT);
        self.record(format!("{edge} undrain-edge"), Change::Announce, took);
    }

    /// SIGTERM to `edge`'s agent: it withdraws before it exits.
    fn stop_agent(&mut self, edge: &str) {
        let t0 = Instant::now();
        self.bgp
            .stop_edge(edge)
            .unwrap_or_else(|e| panic!("stopping {edge}'s agent: {e}"));
        let took = wait_routes(self.bgp, &[other_edge(edge)], t0, WITHDRAW_LIMIT);
        self.record(
            format!("{edge} agent stopped (SIGTERM)"),
            Change::Withdraw,
            took,
        );
    }

    /// A new agent on `edge`: it adopts the pinned dataplane and announces again.
    fn start_agent(&mut self, edge: &str) {
        let t0 = Instant::now();
        self.bgp
            .start_edge(edge)
            .unwrap_or_else(|e| panic!("starting {edge}'s agent again: {e}"));
        let took = wait_routes(self.bgp, &EDGES, t0, NEW_AGENT_LIMIT);
        self.record(format!("{edge} new agent"), Change::NewAgent, took);
    }

    /// Withdraws `edge` for `dwell` (its connections stream through the other edge), then
    /// announces it again.
    fn away_and_back(&mut self, edge: &str, dwell: Duration) {
        self.withdraw(edge);
        std::thread::sleep(dwell);
        self.announce(edge);
    }

    /// Rewrites every agent's config with `backends` and waits until all publish the new tables.
    fn set_backends(&mut self, backends: &[(&str, u32)]) {
        let before = fingerprints(self.bgp, reference::EDGE1);
        for ns in HOSTS {
            self.bgp
                .set_vips(ns, vips(backends))
                .unwrap_or_else(|e| panic!("{ns}: new config: {e}"));
        }
        wait_tables_changed(self.bgp, &before, &format!("config {backends:?}"));
    }

    /// Runs `anycast ARGS... ADDR` on every agent for each of `backend`'s addresses, waiting
    /// after each address until all publish the new tables.
    fn override_everywhere(&mut self, backend: &str, args: &[&str]) {
        let (a4, a6) = backend_addrs(backend);
        for addr in [a4, a6] {
            let before = fingerprints(self.bgp, reference::EDGE1);
            let mut full: Vec<&str> = args.to_vec();
            full.insert(1, addr);
            for ns in HOSTS {
                cli(self.bgp, ns, &full);
            }
            wait_tables_changed(self.bgp, &before, &format!("{full:?}"));
        }
    }

    /// `anycast drain` of backend2's addresses on every agent.
    fn drain_backend2(&mut self) {
        self.override_everywhere("backend2", &["drain"]);
    }

    /// backend2's health-check server stops (every agent's checks of it fail), or starts again.
    fn backend2_health(&mut self, up: bool) {
        let before = fingerprints(self.bgp, reference::EDGE1);
        let r = if up {
            self.bgp.restart_health_servers_of(&[reference::BACKEND2])
        } else {
            self.bgp.stop_health_servers_of(&[reference::BACKEND2])
        };
        r.unwrap_or_else(|e| panic!("backend2's health server: {e}"));
        wait_tables_changed(
            self.bgp,
            &before,
            if up {
                "backend2 healthy again"
            } else {
                "backend2 unhealthy"
            },
        );
    }

    /// Connections broken so far (resets, early close, errors, corrupt bytes; bytes in flight
    /// do not count): (id, backend).
    fn broken_now(&self) -> Vec<(usize, String)> {
        [self.running.v4.snapshot(), self.running.v6.snapshot()]
            .iter()
            .flat_map(|r| {
                r.conns
                    .iter()
                    .filter(|c| broken_so_far(c))
                    .map(|c| (c.id, c.backend.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios and their results.

/// What the connections must show at the end of a scenario.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Every connection established and clean: no reset, nothing lost or corrupt.
    NoneBroken,
    /// Every connection established; exactly those on backend2 broke.
    OnlyBackend2Ends,
}

/// A counter a scenario must move (summed over `hosts`), or must leave alone.
struct Expect {
    hosts: &'static [&'static str],
    counter: &'static str,
    moved: bool,
}

const fn moved(hosts: &'static [&'static str], counter: &'static str) -> Expect {
    Expect {
        hosts,
        counter,
        moved: true,
    }
}

const fn still(hosts: &'static [&'static str], counter: &'static str) -> Expect {
    Expect {
        hosts,
        counter,
        moved: false,
    }
}

/// One scenario's numbers.
struct Outcome {
    scenario: String,
    reports: [ConnsReport; 2],
    counters: Counters,
    routes: Vec<RouteChange>,
    elapsed: Duration,
}

impl Outcome {
    fn conns(&self) -> impl Iterator<Item = &ConnReport> {
        self.reports.iter().flat_map(|r| r.conns.iter())
    }

    fn broken(&self) -> Vec<&ConnReport> {
        self.conns().filter(|c| !c.is_clean()).collect()
    }

    fn count(&self, hosts: &[&str], counter: &str) -> u64 {
        hosts
            .iter()
            .map(|h| {
                self.counters
                    .get(h)
                    .and_then(|m| m.get(counter))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// The times the router took to apply the route changes of one kind, in order (ms).
    fn times(&self, kind: Change) -> String {
        let t: Vec<String> = self
            .routes
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.took.as_millis().to_string())
            .collect();
        if t.is_empty() {
            "-".to_owned()
        } else {
            t.join(", ")
        }
    }

    fn summary(&self) -> String {
        let conns = self.conns().count();
        let requested: usize = self.reports.iter().map(|r| r.requested).sum();
        let bytes: u64 = self.reports.iter().map(|r| r.sent() + r.received()).sum();
        let resets: u64 = self.reports.iter().map(ConnsReport::resets).sum();
        let stalls: u64 = self.reports.iter().map(ConnsReport::stalls).sum();
        let lost: u64 = self.reports.iter().map(ConnsReport::lost).sum();
        let gap = self
            .reports
            .iter()
            .map(ConnsReport::max_gap)
            .max()
            .unwrap_or_default();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "=== {}: {conns}/{requested} connections, {} both ways, broken {}, resets {resets}, stalls {stalls}, lost {lost} B, longest echo gap {} ms, {:.1} s",
            self.scenario,
            lab::conns::human_bytes(bytes),
            self.broken().len(),
            gap.as_millis(),
            self.elapsed.as_secs_f64()
        );
        for r in &self.reports {
            let _ = write!(s, "{r}");
        }
        for r in &self.routes {
            let _ = writeln!(
                s,
                "route: {}: router followed in {} ms",
                r.what,
                r.took.as_millis()
            );
        }
        let _ = writeln!(
            s,
            "{:<9}{}",
            "counters",
            COUNTERS
                .iter()
                .map(|c| format!(" {c:>w$}", w = c.len().max(8)))
                .collect::<String>()
        );
        for ns in HOSTS {
            let _ = writeln!(
                s,
                "{ns:<9}{}",
                COUNTERS
                    .iter()
                    .map(|c| format!(" {:>w$}", self.count(&[ns], c), w = c.len().max(8)))
                    .collect::<String>()
            );
        }
        // The BENCHMARKS.md row.
        let _ = writeln!(
            s,
            "| {} | {conns} | {} | {} | {resets} | {stalls} | {lost} | {} ms | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
            self.scenario,
            lab::conns::human_bytes(bytes),
            self.broken().len(),
            gap.as_millis(),
            self.times(Change::Withdraw),
            self.times(Change::Announce),
            self.times(Change::NewAgent),
            self.count(&HOSTS, "conn_hit"),
            self.count(&HOSTS, "conn_miss"),
            self.count(&HOSTS, "conn_insert"),
            self.count(&HOSTS, "conn_stale"),
            self.count(&HOSTS, "hint_sent"),
            self.count(&HOSTS, "second_chance"),
        );
        s
    }

    fn check(&self, fate: Fate, expect: &[Expect]) {
        for r in &self.reports {
            assert_eq!(
                r.established(),
                r.requested,
                "{}: not all established:\n{}",
                self.scenario,
                self.summary()
            );
            assert!(
                r.conns.iter().all(|c| c.sent > 0),
                "{}: a connection sent nothing:\n{}",
                self.scenario,
                self.summary()
            );
        }
        let broken = self.broken();
        let allowed = |c: &ConnReport| fate == Fate::OnlyBackend2Ends && c.backend == "backend2";
        let unexpected: Vec<&&ConnReport> = broken.iter().filter(|c| !allowed(c)).collect();
        assert!(
            unexpected.is_empty(),
            "{}: {} connections broke, first: {:?}\n{}",
            self.scenario,
            unexpected.len(),
            unexpected.iter().take(5).collect::<Vec<_>>(),
            self.summary()
        );
        if fate == Fate::OnlyBackend2Ends {
            let on_b2 = self.conns().filter(|c| c.backend == "backend2").count();
            assert!(
                on_b2 > 0,
                "{}: no connection on backend2:\n{}",
                self.scenario,
                self.summary()
            );
            assert_eq!(
                broken.len(),
                on_b2,
                "{}: not every backend2 connection ended:\n{}",
                self.scenario,
                self.summary()
            );
        }
        for e in expect {
            let n = self.count(e.hosts, e.counter);
            assert_eq!(
                n > 0,
                e.moved,
                "{}: {} on {:?} is {n}, expected {}:\n{}",
                self.scenario,
                e.counter,
                e.hosts,
                if e.moved { "> 0" } else { "0" },
                self.summary()
            );
        }
    }
}

/// Runs `change` while 240 connections stream (SETTLE before and after), prints the numbers, and
/// checks the connections' `fate` and the counters in `expect`.
fn run_scenario(
    bgp: &mut BgpLab,
    scenario: &str,
    fate: Fate,
    expect: &[Expect],
    change: impl FnOnce(&mut Ctx<'_>),
) -> Outcome {
    let running = start_conns(bgp);
    let before = all_counters(bgp);
    let t0 = Instant::now();
    std::thread::sleep(SETTLE);
    let mut ctx = Ctx {
        bgp,
        running: &running,
        routes: Vec::new(),
    };
    change(&mut ctx);
    let routes = ctx.routes;
    std::thread::sleep(SETTLE);
    running.assert_streaming(scenario);
    let reports = running.stop();
    let elapsed = t0.elapsed();
    let counters = delta(&before, &all_counters(bgp));
    let o = Outcome {
        scenario: scenario.to_owned(),
        reports,
        counters,
        routes,
        elapsed,
    };
    println!("{}", o.summary());
    o.check(fate, expect);
    o
}

/// 30 new connections to the IPv4 VIP, by the backend that answered.
fn new_flows(bgp: &BgpLab) -> lab::FlowTally {
    bgp.lab
        .tcp_flows(
            reference::CLIENT,
            reference::vip_v4_tcp(),
            30,
            Duration::from_secs(30),
        )
        .expect("client")
}

// ---------------------------------------------------------------------------------------------

/// Each scenario as a test, once per encapsulation (modules `gue` and `ipip`).
macro_rules! per_encapsulation {
    ($($name:ident),* $(,)?) => {
        mod gue {
            $(#[test] fn $name() { super::$name(super::Encap::Gue) })*
        }
        mod ipip {
            $(#[test] fn $name() { super::$name(super::Encap::Ipip) })*
        }
    };
}

per_encapsulation!(
    long_lived_connections_survive_edges_withdrawing_and_announcing,
    long_lived_connections_survive_adding_a_backend,
    long_lived_connections_survive_draining_a_backend,
    removing_a_backend_ends_only_its_own_connections,
    long_lived_connections_survive_a_backend_change_with_route_changes,
    long_lived_connections_survive_a_drain_with_route_changes,
    long_lived_connections_survive_a_weight_change_with_route_changes,
    long_lived_connections_survive_a_health_flap_with_route_changes,
);

/// Each edge in turn away for 2 s and back: the other edge sees its connections for the first
/// time.
fn both_edges_away_and_back(c: &mut Ctx<'_>) {
    c.away_and_back(reference::EDGE1, Duration::from_secs(2));
    c.away_and_back(reference::EDGE2, Duration::from_secs(2));
}

fn long_lived_connections_survive_edges_withdrawing_and_announcing(encap: Encap) {
    let test = "long_lived_connections_survive_edges_withdrawing_and_announcing";
    let Some((_serial, mut bgp)) = start(test, encap, &THREE, false) else {
        return;
    };
    run_scenario(
        &mut bgp,
        &format!(
            "(a, {}) edge1, edge2 withdraw and announce; edge1's agent stopped and started",
            encap.name()
        ),
        Fate::NoneBroken,
        &[
            // Each edge carried its own connections, and took the other's in while it was away
            // (first sight: an entry each).
            moved(&[reference::EDGE1], "conn_hit"),
            moved(&[reference::EDGE2], "conn_hit"),
            moved(&[reference::EDGE1], "conn_insert"),
            moved(&[reference::EDGE2], "conn_insert"),
            // Same tables everywhere and no table change: nothing to give a second chance to.
            still(&EDGES, "hint_sent"),
            still(&HOSTS, "second_chance"),
        ],
        |c| {
            let dwell = Duration::from_secs(1);
            c.away_and_back(reference::EDGE1, dwell);
            c.away_and_back(reference::EDGE2, dwell);
            c.stop_agent(reference::EDGE1);
            std::thread::sleep(dwell);
            c.start_agent(reference::EDGE1);
        },
    );
}

fn long_lived_connections_survive_adding_a_backend(encap: Encap) {
    let test = "long_lived_connections_survive_adding_a_backend";
    let Some((_serial, mut bgp)) = start(test, encap, &WITHOUT_BACKEND2, false) else {
        return;
    };
    run_scenario(
        &mut bgp,
        &format!("(b, {}) backend2 added", encap.name()),
        Fate::NoneBroken,
        &[
            moved(&[reference::EDGE1], "conn_hit"),
            moved(&[reference::EDGE2], "conn_hit"),
        ],
        |c| c.set_backends(&THREE),
    );
    // New connections do land on the added backend.
    let tally = new_flows(&bgp);
    assert!(
        tally.per_backend.get("backend2").copied().unwrap_or(0) > 0,
        "no new flow on backend2:\n{tally}"
    );
}

fn long_lived_connections_survive_draining_a_backend(encap: Encap) {
    let test = "long_lived_connections_survive_draining_a_backend";
    let Some((_serial, mut bgp)) = start(test, encap, &THREE, false) else {
        return;
    };
    let o = run_scenario(
        &mut bgp,
        &format!("(c, {}) backend2 drained", encap.name()),
        Fate::NoneBroken,
        &[
            moved(&[reference::EDGE1], "conn_hit"),
            moved(&[reference::EDGE2], "conn_hit"),
        ],
        |c| c.drain_backend2(),
    );
    assert!(
        o.conns().any(|c| c.backend == "backend2"),
        "no connection on the drained backend:\n{}",
        o.summary()
    );
    // Drained: no new connection goes there.
    let tally = new_flows(&bgp);
    assert_eq!(
        tally.per_backend.get("backend2"),
        None,
        "new flows on the drained backend:\n{tally}"
    );
}

fn removing_a_backend_ends_only_its_own_connections(encap: Encap) {
    let test = "removing_a_backend_ends_only_its_own_connections";
    let Some((_serial, mut bgp)) = start(test, encap, &THREE, false) else {
        return;
    };
    let mut after_removal = Vec::new();
    run_scenario(
        &mut bgp,
        &format!("(d, {}) backend2 removed, then a reweight", encap.name()),
        Fate::OnlyBackend2Ends,
        &[moved(&EDGES, "conn_stale")],
        |c| {
            c.set_backends(&WITHOUT_BACKEND2);
            std::thread::sleep(SETTLE);
            after_removal = c.broken_now();
            // The next table change releases backend2's id (no live or previous table names it
            // any more), and with it the tracked connections that still pointed there.
            c.set_backends(&[("edge1", 1), ("backend1", 2)]);
        },
    );
    println!(
        "(d): broken after the removal alone: {} {:?}",
        after_removal.len(),
        after_removal.iter().take(5).collect::<Vec<_>>()
    );
    // While the previous table names backend2, its connections keep going to it.
    assert!(
        after_removal.is_empty(),
        "(d): connections broke at the removal itself: {after_removal:?}"
    );
}

fn long_lived_connections_survive_a_backend_change_with_route_changes(encap: Encap) {
    let test = "long_lived_connections_survive_a_backend_change_with_route_changes";
    let Some((_serial, mut bgp)) = start(test, encap, &WITHOUT_BACKEND2, false) else {
        return;
    };
    run_scenario(
        &mut bgp,
        &format!(
            "(e, {}) backend2 added, then edge1 and edge2 away 2 s each",
            encap.name()
        ),
        Fate::NoneBroken,
        // Each edge received the other's connections for the first time after the table change;
        // for each flow whose slot moved, the new owner (which had no socket for it) passed it on
        // to the previous owner.
        encap.second_chance_proof(),
        |c| {
            c.set_backends(&THREE);
            both_edges_away_and_back(c);
        },
    );
}

fn long_lived_connections_survive_a_drain_with_route_changes(encap: Encap) {
    let test = "long_lived_connections_survive_a_drain_with_route_changes";
    let Some((_serial, mut bgp)) = start(test, encap, &THREE, false) else {
        return;
    };
    let o = run_scenario(
        &mut bgp,
        &format!(
            "(e', {}) backend2 drained, then edge1 and edge2 away 2 s each",
            encap.name()
        ),
        Fate::NoneBroken,
        encap.second_chance_proof(),
        |c| {
            c.drain_backend2();
            both_edges_away_and_back(c);
        },
    );
    // The drained backend's connections reached the new owners and were passed back.
    assert!(
        o.conns().any(|c| c.backend == "backend2"),
        "no connection on backend2:\n{}",
        o.summary()
    );
}

fn long_lived_connections_survive_a_weight_change_with_route_changes(encap: Encap) {
    let test = "long_lived_connections_survive_a_weight_change_with_route_changes";
    let Some((_serial, mut bgp)) = start(test, encap, &THREE, false) else {
        return;
    };
    run_scenario(
        &mut bgp,
        &format!(
            "(f, {}) backend1 weight 3, then edge1 and edge2 away 2 s each",
            encap.name()
        ),
        Fate::NoneBroken,
        encap.second_chance_proof(),
        |c| {
            c.override_everywhere("backend1", &["set-weight", "3"]);
            both_edges_away_and_back(c);
        },
    );
}

fn long_lived_connections_survive_a_health_flap_with_route_changes(encap: Encap) {
    let test = "long_lived_connections_survive_a_health_flap_with_route_changes";
    let Some((_serial, mut bgp)) = start(test, encap, &THREE, true) else {
        return;
    };
    let o = run_scenario(
        &mut bgp,
        &format!(
            "(g, {}) backend2 unhealthy, edges away and back, backend2 healthy, edges away and back",
            encap.name()
        ),
        Fate::NoneBroken,
        encap.second_chance_proof(),
        |c| {
            c.backend2_health(false);
            both_edges_away_and_back(c);
            c.backend2_health(true);
            both_edges_away_and_back(c);
        },
    );
    assert!(
        o.conns().any(|c| c.backend == "backend2"),
        "no connection on backend2:\n{}",
        o.summary()
    );
}

/// Issue 4, item 3: edges with the same config report identical table fingerprints, through
/// their agents' status and through `anycast lookup --config`; a different config does not.
#[test]
fn edges_with_the_same_config_report_identical_table_fingerprints() {
    let Some((_serial, mut bgp)) = start(
        "edges_with_the_same_config_report_identical_table_fingerprints",
        Encap::Gue,
        &THREE,
        false,
    ) else {
        return;
    };
    let e1 = fingerprints(&bgp, reference::EDGE1);
    let e2 = fingerprints(&bgp, reference::EDGE2);
    println!("edge1 {e1:?}\nedge2 {e2:?}");
    assert_eq!(e1.len(), 4, "four VIPs: {e1:?}");
    assert!(e1.values().all(|f| f != "none"), "{e1:?}");
    assert_eq!(e1, e2, "same config, different tables");

    let lookup = |bgp: &BgpLab, edge: &str| -> String {
        let path = bgp.lab.agent_config_path(edge);
        let bin = lab::find_binary("anycast", "ANYCAST_BIN").expect("the anycast binary");
        let out = std::process::Command::new(&bin)
            .args(["lookup", "--config"])
            .arg(&path)
            .args(["tcp", "198.51.100.7:40000", "203.0.113.10:80"])
            .output()
            .expect("running anycast lookup");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{edge}: lookup --config: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    for edge in EDGES {
        let out = lookup(&bgp, edge);
        let fp = &e1["203.0.113.10:80/tcp"];
        assert!(
            out.contains(fp.as_str()),
            "{edge}: lookup --config does not show the agent's fingerprint {fp}: {out}"
        );
    }

    // Another weight on edge2 only: its tables differ from edge1's, and the fingerprints say so.
    bgp.set_edge_vips(
        reference::EDGE2,
        vips(&[("edge1", 1), ("backend1", 1), ("backend2", 2)]),
    )
    .expect("edge2's new config");
    let deadline = Instant::now() + Duration::from_secs(10);
    let e2 = loop {
        let e2 = fingerprints(&bgp, reference::EDGE2);
        if e2 != e1 {
            break e2;
        }
        assert!(
            Instant::now() < deadline,
            "edge2 did not reload within 10 s:\n{}",
            bgp.edge_log(reference::EDGE2)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("edge2 reweighted {e2:?}");
    assert_eq!(e2.len(), 4);
    for (vip, fp) in &e1 {
        assert_ne!(
            e2.get(vip),
            Some(fp),
            "{vip}: a different table with the same fingerprint"
        );
    }
    let out1 = lookup(&bgp, reference::EDGE1);
    let out2 = lookup(&bgp, reference::EDGE2);
    assert!(out2.contains(e2["203.0.113.10:80/tcp"].as_str()), "{out2}");
    assert_ne!(out1, out2);
}
