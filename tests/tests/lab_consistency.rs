//! Flow consistency on the reference topology (tests/src/lab.rs): long-lived TCP connections with
//! data flowing both ways (`anycast-lab-conns`, every byte checked) while the client's route and
//! the VIP's backend set change. Issue 4, item 6; results in BENCHMARKS.md, "Flow consistency
//! results".
//!
//! | scenario | change while the connections stream | target |
//! |---|---|---|
//! | route flips | the router's VIP route moves edge1 <-> edge2 six times, 1 s apart | none broken |
//! | backend added | backend2 joins (config + SIGHUP on both edges) | none broken |
//! | backend drained | `anycast drain backend2` on both edges | none broken |
//! | backend removed | backend2 leaves the config on both edges, then one more table change | only backend2's |
//! | flip + change | backend2 joins on both edges, then the route moves to edge2 (and back) | none broken |
//! | flip + drain | backend2 drained on both edges, then the route moves to edge2 (and back) | none broken |
//!
//! Removal, as the agent implements it: the removed backend's id stays valid while the VIP's
//! previous table still names it, so while its host stays up its tracked connections keep going
//! to it; the next table change of the VIP releases the id, and then (and only then) they end
//! (`conn_stale`). The test checks both steps.
//!
//! All with `encapsulation = "gue"`: the second-chance hint (the previous owner of a flow) rides
//! in the GUE header. What keeps the connections: connection tracking on the edge that saw the
//! flows (conn_hit), and, where an edge sees flows for the first time after a table change,
//! second chance (the edge names the previous owner, hint_sent; a new owner without a socket for
//! the flow forwards it there once, second_chance). Each scenario prints those counters (deltas
//! over the scenario, from `anycast stats` on every agent) and asserts the ones that prove the
//! mechanism worked.
//!
//! Second chance from a backend host needs what the reference topology gives every lab: IP
//! forwarding on the backends, `anycast_pass` on the router's backend-facing veths.
//!
//! The lab tests of this file take a lock so that they run one at a time: each runs four agents
//! and 240 connections, and the test machines have two cores.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anycast_tests::lab::{
    self, ConnReport, ConnsOptions, ConnsReport, Lab, LongLived, Topology, VipSpec, reference,
};

/// Connections per VIP family: 120 to the IPv4 VIP and 120 to the IPv6 VIP.
const CONNS_PER_FAMILY: usize = 120;
/// Streaming before the first change, and after the last one before stopping.
const SETTLE: Duration = Duration::from_millis(1500);
const ENCAPSULATION: &str = "gue";
/// Counters shown per host (deltas over a scenario).
const COUNTERS: [&str; 9] = [
    "conn_hit",
    "conn_miss",
    "conn_insert",
    "conn_stale",
    "hint_sent",
    "second_chance",
    "encap",
    "local",
    "decap",
];
const HOSTS: [&str; 4] = [
    reference::EDGE1,
    reference::EDGE2,
    reference::BACKEND1,
    reference::BACKEND2,
];

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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

/// The reference topology with GUE and the edges serving `backends`.
fn topology(backends: &[(&str, u32)]) -> Topology {
    let mut t = reference::topology_with(&reference::Options {
        encapsulation: ENCAPSULATION.to_owned(),
        weights: [1, 1, 1],
    });
    for a in &mut t.agents {
        if a.ns == reference::EDGE1 || a.ns == reference::EDGE2 {
            a.vips = vips(backends);
        }
    }
    t
}

fn start_lab(backends: &[(&str, u32)]) -> Lab {
    let mut lab = Lab::build(&topology(backends))
        .unwrap_or_else(|e| panic!("building the reference topology: {e}"));
    lab.start_dataplane()
        .unwrap_or_else(|e| panic!("starting pass programs, agents and servers: {e}"));
    reference::route_vips_to(&lab, reference::EDGE1).expect("routing the VIPs to edge1");
    lab
}

// ---------------------------------------------------------------------------------------------
// The agents, through the CLI.

fn anycast(args: &[&str]) -> String {
    let bin = lab::find_binary("anycast", "ANYCAST_BIN").expect("the anycast binary");
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running anycast {args:?}: {e}"));
    assert!(
        out.status.success(),
        "anycast {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn api_json(lab: &Lab, ns: &str, command: &str) -> serde_json::Value {
    let socket = lab.agent_socket_path(ns);
    let text = anycast(&[command, "--json", "--socket", &socket.to_string_lossy()]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{ns}: {command} --json: {e}: {text}"))
}

fn counters(lab: &Lab, ns: &str) -> BTreeMap<String, u64> {
    let v = api_json(lab, ns, "stats");
    let c = if v["counters"].is_object() {
        &v["counters"]
    } else {
        &v["result"]["counters"]
    };
    c.as_object()
        .unwrap_or_else(|| panic!("{ns}: stats without counters: {v}"))
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect()
}

type Counters = BTreeMap<&'static str, BTreeMap<String, u64>>;

fn all_counters(lab: &Lab) -> Counters {
    HOSTS.iter().map(|ns| (*ns, counters(lab, ns))).collect()
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

fn get(c: &Counters, ns: &str, name: &str) -> u64 {
    c.get(ns).and_then(|m| m.get(name)).copied().unwrap_or(0)
}

/// Every VIP's table fingerprint on the agent in `ns`, by VIP.
fn fingerprints(lab: &Lab, ns: &str) -> BTreeMap<String, String> {
    let v = api_json(lab, ns, "status");
    let s = if v["vips"].is_array() {
        &v
    } else {
        &v["result"]
    };
    s["vips"]
        .as_array()
        .unwrap_or_else(|| panic!("{ns}: status without vips: {v}"))
        .iter()
        .map(|x| {
            (
                x["vip"].as_str().unwrap_or("?").to_owned(),
                x["fingerprint"].as_str().unwrap_or("none").to_owned(),
            )
        })
        .collect()
}

/// Waits (bounded) until both edges publish the same tables, different from `before`.
fn wait_tables_changed(lab: &Lab, before: &BTreeMap<String, String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (e1, e2) = (
            fingerprints(lab, reference::EDGE1),
            fingerprints(lab, reference::EDGE2),
        );
        if e1 == e2 && &e1 != before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the edges did not publish a new common table within 10 s:\nedge1 {e1:?}\nedge2 {e2:?}\nbefore {before:?}\nedge1 log:\n{}",
            lab.log("agent-edge1")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn agent_pid(lab: &Lab, ns: &str) -> i32 {
    let path = lab.dir().join(format!("state-{ns}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("state file JSON");
    v["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {}", path.display())) as i32
}

/// Rewrites both edges' config files with `backends` (atomically: a rename, so the agents' file
/// watchers never read half a file) and sends each agent SIGHUP; waits until both publish the
/// new tables.
fn set_backends(lab: &Lab, backends: &[(&str, u32)]) {
    let before = fingerprints(lab, reference::EDGE1);
    for edge in [reference::EDGE1, reference::EDGE2] {
        let mut spec = lab
            .topology()
            .agents
            .iter()
            .find(|a| a.ns == edge)
            .cloned()
            .expect("an edge agent");
        spec.vips = vips(backends);
        let text = lab.agent_config(&spec).expect("config text");
        let path = lab.agent_config_path(edge);
        let tmp = path.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("writing the new config");
        std::fs::rename(&tmp, &path).expect("replacing the config");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent_pid(lab, edge)),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP to the agent");
    }
    wait_tables_changed(lab, &before, &format!("config {backends:?}"));
}

fn drain_on_both_edges(lab: &Lab, backend: &str) {
    let before = fingerprints(lab, reference::EDGE1);
    for edge in [reference::EDGE1, reference::EDGE2] {
        let socket = lab.agent_socket_path(edge);
        anycast(&["drain", backend, "--socket", &socket.to_string_lossy()]);
    }
    wait_tables_changed(lab, &before, &format!("drain {backend}"));
}

// ---------------------------------------------------------------------------------------------
// Connections and results.

struct Running {
    v4: LongLived,
    v6: LongLived,
}

fn start_conns(lab: &Lab) -> Running {
    let opts = ConnsOptions {
        conns: CONNS_PER_FAMILY,
        // An upper bound: each scenario stops them once its changes are over.
        duration: Duration::from_secs(90),
        ..ConnsOptions::default()
    };
    let v4 = lab
        .start_long_lived(reference::CLIENT, reference::vip_v4_tcp(), opts.clone())
        .expect("starting IPv4 connections");
    let v6 = lab
        .start_long_lived(reference::CLIENT, reference::vip_v6_tcp(), opts)
        .expect("starting IPv6 connections");
    let deadline = Instant::now() + Duration::from_secs(40);
    for (c, what) in [(&v4, "IPv4"), (&v6, "IPv6")] {
        loop {
            let s = c.snapshot();
            if s.phase != "connecting" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: still connecting after 40 s:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Running { v4, v6 }
}

impl Running {
    /// Broken so far (resets, early close, errors, corrupt bytes; bytes in flight do not count).
    fn broken_now(&self) -> Vec<(usize, String)> {
        [self.v4.snapshot(), self.v6.snapshot()]
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

    fn assert_streaming(&self, what: &str) {
        for s in [self.v4.snapshot(), self.v6.snapshot()] {
            assert_eq!(
                s.phase, "streaming",
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

/// One scenario's numbers.
struct Outcome {
    scenario: String,
    reports: [ConnsReport; 2],
    counters: Counters,
    elapsed: Duration,
}

impl Outcome {
    fn conns(&self) -> impl Iterator<Item = &ConnReport> {
        self.reports.iter().flat_map(|r| r.conns.iter())
    }

    fn broken(&self) -> Vec<&ConnReport> {
        self.conns().filter(|c| !c.is_clean()).collect()
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
        let _ = writeln!(
            s,
            "{:<9} {}",
            "counters",
            COUNTERS
                .iter()
                .map(|c| format!("{c:>14}"))
                .collect::<String>()
        );
        for ns in HOSTS {
            let _ = writeln!(
                s,
                "{ns:<9} {}",
                COUNTERS
                    .iter()
                    .map(|c| format!("{:>14}", get(&self.counters, ns, c)))
                    .collect::<String>()
            );
        }
        let _ = writeln!(
            s,
            "| {} | {conns} | {} | {} | {resets} | {stalls} | {lost} | {} ms | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            lab::conns::human_bytes(bytes),
            self.broken().len(),
            gap.as_millis(),
            HOSTS
                .iter()
                .map(|h| get(&self.counters, h, "conn_hit"))
                .sum::<u64>(),
            HOSTS
                .iter()
                .map(|h| get(&self.counters, h, "conn_miss"))
                .sum::<u64>(),
            HOSTS
                .iter()
                .map(|h| get(&self.counters, h, "conn_insert"))
                .sum::<u64>(),
            HOSTS
                .iter()
                .map(|h| get(&self.counters, h, "conn_stale"))
                .sum::<u64>(),
            HOSTS
                .iter()
                .map(|h| get(&self.counters, h, "hint_sent"))
                .sum::<u64>(),
            HOSTS
                .iter()
                .map(|h| get(&self.counters, h, "second_chance"))
                .sum::<u64>(),
        );
        s
    }

    fn assert_all_established(&self) {
        for r in &self.reports {
            assert_eq!(
                r.established(),
                r.requested,
                "{}: not all established:\n{r}",
                self.scenario
            );
            assert!(
                r.conns.iter().all(|c| c.sent > 0),
                "{}: a connection sent nothing:\n{r}",
                self.scenario
            );
        }
    }

    fn assert_none_broken(&self) {
        self.assert_all_established();
        let broken = self.broken();
        assert!(
            broken.is_empty(),
            "{}: {} broken connections, first: {:?}\n{}",
            self.scenario,
            broken.len(),
            broken.iter().take(5).collect::<Vec<_>>(),
            self.summary()
        );
    }
}

/// Runs `change` while the connections stream (SETTLE before and after), and reports.
fn run_scenario(lab: &Lab, scenario: &str, change: impl FnOnce(&Running)) -> Outcome {
    let running = start_conns(lab);
    let before = all_counters(lab);
    let t0 = Instant::now();
    std::thread::sleep(SETTLE);
    change(&running);
    std::thread::sleep(SETTLE);
    running.assert_streaming(scenario);
    let reports = running.stop();
    let elapsed = t0.elapsed();
    let counters = delta(&before, &all_counters(lab));
    let o = Outcome {
        scenario: scenario.to_owned(),
        reports,
        counters,
        elapsed,
    };
    println!("{}", o.summary());
    o
}

const THREE: [(&str, u32); 3] = [("edge1", 1), ("backend1", 1), ("backend2", 1)];
const WITHOUT_BACKEND2: [(&str, u32); 2] = [("edge1", 1), ("backend1", 1)];

// ---------------------------------------------------------------------------------------------

#[test]
fn long_lived_connections_survive_six_route_flips_between_edges() {
    if !anycast_tests::privileged("long_lived_connections_survive_six_route_flips_between_edges") {
        return;
    }
    let _serial = serial();
    let lab = start_lab(&THREE);
    let o = run_scenario(&lab, "(a) 6 route flips, 1 s apart", |_| {
        for i in 0..6 {
            let edge = if i % 2 == 0 {
                reference::EDGE2
            } else {
                reference::EDGE1
            };
            reference::route_vips_to(&lab, edge).expect("moving the route");
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    o.assert_none_broken();
    for edge in [reference::EDGE1, reference::EDGE2] {
        assert!(
            get(&o.counters, edge, "conn_hit") > 0,
            "{edge} tracked nothing:\n{}",
            o.summary()
        );
    }
    // Same tables on both edges and no table change: nothing to give a second chance to.
    assert_eq!(
        get(&o.counters, reference::EDGE2, "hint_sent"),
        0,
        "{}",
        o.summary()
    );
}

#[test]
fn long_lived_connections_survive_adding_a_backend() {
    if !anycast_tests::privileged("long_lived_connections_survive_adding_a_backend") {
        return;
    }
    let _serial = serial();
    let lab = start_lab(&WITHOUT_BACKEND2);
    let o = run_scenario(&lab, "(b) backend2 added", |_| set_backends(&lab, &THREE));
    o.assert_none_broken();
    assert!(
        get(&o.counters, reference::EDGE1, "conn_hit") > 0,
        "{}",
        o.summary()
    );
    // New connections do land on the added backend.
    let tally = lab
        .tcp_flows(
            reference::CLIENT,
            reference::vip_v4_tcp(),
            30,
            Duration::from_secs(30),
        )
        .expect("client");
    assert!(
        tally.per_backend.get("backend2").copied().unwrap_or(0) > 0,
        "no new flow on backend2:\n{tally}"
    );
}

#[test]
fn long_lived_connections_survive_draining_a_backend() {
    if !anycast_tests::privileged("long_lived_connections_survive_draining_a_backend") {
        return;
    }
    let _serial = serial();
    let lab = start_lab(&THREE);
    let o = run_scenario(&lab, "(c) backend2 drained", |_| {
        drain_on_both_edges(&lab, reference::BACKEND2_V4);
        drain_on_both_edges(&lab, reference::BACKEND2_V6);
    });
    o.assert_none_broken();
    let on_b2 = o.conns().filter(|c| c.backend == "backend2").count();
    assert!(
        on_b2 > 0,
        "no connection on the drained backend:\n{}",
        o.summary()
    );
    assert!(
        get(&o.counters, reference::EDGE1, "conn_hit") > 0,
        "{}",
        o.summary()
    );
    // Drained: no new connection goes there.
    let tally = lab
        .tcp_flows(
            reference::CLIENT,
            reference::vip_v4_tcp(),
            30,
            Duration::from_secs(30),
        )
        .expect("client");
    assert_eq!(
        tally.per_backend.get("backend2"),
        None,
        "new flows on the drained backend:\n{tally}"
    );
}

#[test]
fn removing_a_backend_ends_only_its_own_connections() {
    if !anycast_tests::privileged("removing_a_backend_ends_only_its_own_connections") {
        return;
    }
    let _serial = serial();
    let lab = start_lab(&THREE);
    let mut after_removal = Vec::new();
    let o = run_scenario(&lab, "(d) backend2 removed, then a reweight", |running| {
        set_backends(&lab, &WITHOUT_BACKEND2);
        std::thread::sleep(SETTLE);
        after_removal = running.broken_now();
        // The next table change releases backend2's id (no live or previous table names it any
        // more), and with it the tracked connections that still pointed there.
        set_backends(&lab, &[("edge1", 1), ("backend1", 2)]);
    });
    o.assert_all_established();
    let on_b2: Vec<&ConnReport> = o.conns().filter(|c| c.backend == "backend2").collect();
    let broken = o.broken();
    println!(
        "(d): {} connections on backend2; broken after the removal alone: {} {:?}; broken at the end: {} (on backend2: {})",
        on_b2.len(),
        after_removal.len(),
        after_removal.iter().take(5).collect::<Vec<_>>(),
        broken.len(),
        broken.iter().filter(|c| c.backend == "backend2").count()
    );
    assert!(
        !on_b2.is_empty(),
        "no connection on backend2:\n{}",
        o.summary()
    );
    let others: Vec<&&ConnReport> = broken.iter().filter(|c| c.backend != "backend2").collect();
    assert!(
        others.is_empty(),
        "(d): {} connections on other backends broke, first: {:?}\n{}",
        others.len(),
        others.iter().take(5).collect::<Vec<_>>(),
        o.summary()
    );
    assert!(
        after_removal.iter().all(|(_, b)| b == "backend2"),
        "(d): connections of other backends broke at the removal: {after_removal:?}"
    );
    // Once backend2's id is released its tracked connections are stale and end: exactly the
    // removed backend's connections.
    assert_eq!(
        broken.len(),
        on_b2.len(),
        "(d): not every backend2 connection ended once its id was released:\n{}",
        o.summary()
    );
    assert!(
        get(&o.counters, reference::EDGE1, "conn_stale") > 0,
        "{}",
        o.summary()
    );
}

#[test]
fn long_lived_connections_survive_a_backend_change_with_a_route_flip() {
    if !anycast_tests::privileged(
        "long_lived_connections_survive_a_backend_change_with_a_route_flip",
    ) {
        return;
    }
    let _serial = serial();
    let lab = start_lab(&WITHOUT_BACKEND2);
    let o = run_scenario(&lab, "(e) backend2 added + route to edge2 and back", |_| {
        set_backends(&lab, &THREE);
        reference::route_vips_to(&lab, reference::EDGE2).expect("route to edge2");
        std::thread::sleep(Duration::from_secs(2));
        reference::route_vips_to(&lab, reference::EDGE1).expect("route back to edge1");
    });
    o.assert_none_broken();
    // edge2 never saw these flows: it named the previous owner of each flow whose slot moved, and
    // the new owners (which had no socket for them) passed them on.
    assert!(
        get(&o.counters, reference::EDGE2, "hint_sent") > 0,
        "{}",
        o.summary()
    );
    let chances: u64 = HOSTS
        .iter()
        .map(|h| get(&o.counters, h, "second_chance"))
        .sum();
    assert!(chances > 0, "no second chance given:\n{}", o.summary());
}

#[test]
fn long_lived_connections_survive_a_drain_with_a_route_flip() {
    if !anycast_tests::privileged("long_lived_connections_survive_a_drain_with_a_route_flip") {
        return;
    }
    let _serial = serial();
    let lab = start_lab(&THREE);
    let o = run_scenario(
        &lab,
        "(e') backend2 drained + route to edge2 and back",
        |_| {
            drain_on_both_edges(&lab, reference::BACKEND2_V4);
            drain_on_both_edges(&lab, reference::BACKEND2_V6);
            reference::route_vips_to(&lab, reference::EDGE2).expect("route to edge2");
            std::thread::sleep(Duration::from_secs(2));
            reference::route_vips_to(&lab, reference::EDGE1).expect("route back to edge1");
        },
    );
    o.assert_none_broken();
    assert!(
        o.conns().any(|c| c.backend == "backend2"),
        "no connection on backend2:\n{}",
        o.summary()
    );
    // The drained backend's flows reached edge2's new owners with a hint and were passed back.
    assert!(
        get(&o.counters, reference::EDGE2, "hint_sent") > 0,
        "{}",
        o.summary()
    );
    let chances: u64 = HOSTS
        .iter()
        .map(|h| get(&o.counters, h, "second_chance"))
        .sum();
    assert!(chances > 0, "no second chance given:\n{}", o.summary());
}

/// Issue 4, item 3: edges with the same config report identical table fingerprints, through
/// their agents' status and through `anycast lookup --config`; a different config does not.
#[test]
fn edges_with_the_same_config_report_identical_table_fingerprints() {
    if !anycast_tests::privileged("edges_with_the_same_config_report_identical_table_fingerprints")
    {
        return;
    }
    let _serial = serial();
    let lab = start_lab(&THREE);
    let e1 = fingerprints(&lab, reference::EDGE1);
    let e2 = fingerprints(&lab, reference::EDGE2);
    println!("edge1 {e1:?}\nedge2 {e2:?}");
    assert_eq!(e1.len(), 4, "four VIPs: {e1:?}");
    assert!(e1.values().all(|f| f != "none"), "{e1:?}");
    assert_eq!(e1, e2, "same config, different tables");

    let lookup = |edge: &str| -> String {
        let path = lab.agent_config_path(edge);
        let out = anycast(&[
            "lookup",
            "--config",
            &path.to_string_lossy(),
            "tcp",
            "198.51.100.7:40000",
            "203.0.113.10:80",
        ]);
        let fp = e1["203.0.113.10:80/tcp"].clone();
        assert!(
            out.contains(&fp),
            "{edge}: lookup --config does not show the agent's fingerprint {fp}: {out}"
        );
        out
    };
    lookup(reference::EDGE1);
    lookup(reference::EDGE2);

    // Another weight on edge2 only: its tables differ from edge1's, and the fingerprints say so.
    let mut spec = lab
        .topology()
        .agents
        .iter()
        .find(|a| a.ns == reference::EDGE2)
        .cloned()
        .expect("edge2");
    spec.vips = vips(&[("edge1", 1), ("backend1", 1), ("backend2", 2)]);
    let path = lab.agent_config_path(reference::EDGE2);
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, lab.agent_config(&spec).expect("config")).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_pid(&lab, reference::EDGE2)),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let e2 = loop {
        let e2 = fingerprints(&lab, reference::EDGE2);
        if e2 != e1 {
            break e2;
        }
        assert!(
            Instant::now() < deadline,
            "edge2 did not reload within 10 s"
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
    let out1 = lookup(reference::EDGE1);
    let path = lab.agent_config_path(reference::EDGE2);
    let out2 = anycast(&[
        "lookup",
        "--config",
        &path.to_string_lossy(),
        "tcp",
        "198.51.100.7:40000",
        "203.0.113.10:80",
    ]);
    assert!(out2.contains(&e2["203.0.113.10:80/tcp"]), "{out2}");
    assert_ne!(out1, out2);
}
