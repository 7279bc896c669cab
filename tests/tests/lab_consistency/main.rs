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
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use anycast_tests::lab::conns::Phase;
use anycast_tests::lab::{
    self, ConnReport, ConnsOptions, ConnsReport, LongLived, Transport, VipSpec, reference,
};
use anycast_tests::lab_bgp::{self, BgpLab, Options};

mod harness;
mod scenario;
use harness::*;
use scenario::*;

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

/// Scenario `(letter, encapsulation) what, then edge1 and edge2 away 2 s each`: `change`, then
/// [`both_edges_away_and_back`]. None may break; each edge received the other's connections for
/// the first time after the table change, and for each flow whose slot moved, the new owner
/// (which had no socket for it) passed it on to the previous owner.
fn then_route_changes(
    bgp: &mut BgpLab,
    encap: Encap,
    (letter, what): (&str, &str),
    change: impl FnOnce(&mut Ctx<'_>),
) -> Outcome {
    run_scenario(
        bgp,
        &format!(
            "({letter}, {}) {what}, then edge1 and edge2 away 2 s each",
            encap.name()
        ),
        Fate::NoneBroken,
        encap.second_chance_proof(),
        |c| {
            change(c);
            both_edges_away_and_back(c);
        },
    )
}

fn long_lived_connections_survive_edges_withdrawing_and_announcing(encap: Encap) {
    let Some((_serial, mut bgp)) = start(encap, &THREE, false) else {
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
    let Some((_serial, mut bgp)) = start(encap, &WITHOUT_BACKEND2, false) else {
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
    let Some((_serial, mut bgp)) = start(encap, &THREE, false) else {
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
    let Some((_serial, mut bgp)) = start(encap, &THREE, false) else {
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
    let Some((_serial, mut bgp)) = start(encap, &WITHOUT_BACKEND2, false) else {
        return;
    };
    then_route_changes(&mut bgp, encap, ("e", "backend2 added"), |c| {
        c.set_backends(&THREE);
    });
}

fn long_lived_connections_survive_a_drain_with_route_changes(encap: Encap) {
    let Some((_serial, mut bgp)) = start(encap, &THREE, false) else {
        return;
    };
    let o = then_route_changes(&mut bgp, encap, ("e'", "backend2 drained"), |c| {
        c.drain_backend2();
    });
    // The drained backend's connections reached the new owners and were passed back.
    assert!(
        o.conns().any(|c| c.backend == "backend2"),
        "no connection on backend2:\n{}",
        o.summary()
    );
}

fn long_lived_connections_survive_a_weight_change_with_route_changes(encap: Encap) {
    let Some((_serial, mut bgp)) = start(encap, &THREE, false) else {
        return;
    };
    then_route_changes(&mut bgp, encap, ("f", "backend1 weight 3"), |c| {
        c.override_everywhere("backend1", &["set-weight", "3"]);
    });
}

fn long_lived_connections_survive_a_health_flap_with_route_changes(encap: Encap) {
    let Some((_serial, mut bgp)) = start(encap, &THREE, true) else {
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
    let Some((_serial, mut bgp)) = start(Encap::Gue, &THREE, false) else {
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
