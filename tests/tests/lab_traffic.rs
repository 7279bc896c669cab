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
