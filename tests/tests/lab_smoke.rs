//! The lab harness itself: the reference topology comes up in network namespaces, carries plain
//! IP between its hosts, and leaves nothing behind, not even when the test panics.

use std::path::Path;
use std::time::Duration;

use anycast_tests::lab::{Lab, reference};
use anycast_tests::netns::with_prefix as namespaces_with_prefix;

/// The reference topology built (no dataplane); `None` where the running test is skipped
/// ([`anycast_tests::privileged`]).
fn built() -> Option<Lab> {
    anycast_tests::privileged(&anycast_tests::test_name())
        .then(|| Lab::build(&reference::topology()).expect("building the reference topology"))
}

#[test]
fn reference_topology_creates_its_namespaces_and_removes_them_on_drop() {
    let Some(lab) = built() else { return };
    let prefix = lab.prefix().to_owned();
    let mut present = namespaces_with_prefix(&prefix);
    present.sort();
    let mut expected: Vec<String> = reference::topology()
        .namespaces
        .iter()
        .map(|n| lab.ns(n))
        .collect();
    expected.sort();
    assert_eq!(present, expected);
    assert!(lab.dir().join("bpf").exists(), "the lab's bpffs is mounted");
    drop(lab);
    assert_eq!(
        namespaces_with_prefix(&prefix),
        Vec::<String>::new(),
        "namespaces left after drop"
    );
    assert!(
        !Path::new(anycast_tests::lab::RUN_DIR)
            .join(&prefix)
            .exists(),
        "run dir left after drop"
    );
}

#[test]
fn lab_is_removed_when_the_test_panics() {
    if !anycast_tests::privileged("lab_is_removed_when_the_test_panics") {
        return;
    }
    let prefix = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::build(&reference::topology()).expect("building the reference topology");
        *prefix.lock().unwrap() = lab.prefix().to_owned();
        assert!(!namespaces_with_prefix(lab.prefix()).is_empty());
        panic!("deliberate panic with a live lab");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert_eq!(
        namespaces_with_prefix(&prefix),
        Vec::<String>::new(),
        "namespaces left after a panic"
    );
}

#[test]
fn lab_interfaces_never_appear_in_the_root_namespace() {
    let Some(lab) = built() else { return };
    let root_links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    assert!(
        !root_links.contains(lab.prefix()),
        "lab interface in the root namespace:\n{root_links}"
    );
    let router_links = lab
        .ip(reference::ROUTER, &["-o", "link"])
        .expect("ip link in the router");
    for i in ["r-c", "r-e1", "r-e2", "r-b1", "r-b2"] {
        assert!(
            router_links.contains(&lab.ifname(i).unwrap()),
            "{i} missing in the router:\n{router_links}"
        );
    }
}

#[test]
fn client_reaches_edges_and_backends_through_the_router_with_plain_ping() {
    let Some(lab) = built() else { return };
    for target in reference::PING_TARGETS {
        if let Err(out) = lab.ping(reference::CLIENT, target, 1) {
            panic!("client cannot ping {target}:\n{out}");
        }
    }
}

#[test]
fn agent_config_follows_the_toml_contract() {
    let Some(lab) = built() else { return };
    let topology = lab.topology();
    let edge = lab.agent_config(&topology.agents[0]).expect("edge config");
    assert!(
        edge.contains(&format!(
            "interfaces = [\"{}\"]",
            lab.ifname("e1-r").unwrap()
        )),
        "{edge}"
    );
    assert!(edge.contains("tunnel_source = \"198.18.2.2\""), "{edge}");
    assert!(edge.contains("encapsulation = \"ipip\""), "{edge}");
    assert!(
        edge.contains("[[vip.backend]]\naddress = \"198.18.10.2\"\nweight = 1"),
        "{edge}"
    );
    assert!(
        edge.contains(&format!("pin_path = \"{}/bpf/edge1\"", lab.dir().display())),
        "{edge}"
    );
    let backend = lab
        .agent_config(&topology.agents[2])
        .expect("backend config");
    // A backend's agent has the edges' VIPs (the same tables, for second chance under IPIP).
    let vips = |text: &str| -> String {
        text.find("\n[[vip]]")
            .map_or(String::new(), |i| text[i..].to_owned())
    };
    assert!(
        !vips(&backend).is_empty() && vips(&backend) == vips(&edge),
        "a backend's agent carries the edges' VIPs:\n{backend}"
    );
    assert!(
        backend.contains("decap_allow = [\"198.18.0.0/15\", \"fd00::/8\"]"),
        "{backend}"
    );
}

#[test]
fn pass_program_attaches_natively_and_detaches_on_drop() {
    let Some(mut lab) = built() else { return };
    lab.attach_pass(reference::ROUTER, "r-e1")
        .expect("attaching anycast_pass");
    let dev = lab.ifname("r-e1").unwrap();
    let link = lab
        .ip(reference::ROUTER, &["-d", "link", "show", "dev", &dev])
        .expect("ip link");
    // `xdp` alone is the native (driver) mode; generic would show `xdpgeneric`.
    assert!(
        link.contains("xdp ") || link.contains("prog/xdp"),
        "no native XDP on {dev}:\n{link}"
    );
    assert!(
        !link.contains("xdpgeneric"),
        "generic instead of native XDP on {dev}:\n{link}"
    );
    // Plain traffic still crosses the interface.
    if let Err(out) = lab.ping(reference::CLIENT, reference::EDGE1_V4, 1) {
        panic!("ping across an XDP_PASS interface failed:\n{out}");
    }
}

#[test]
fn backend_servers_answer_with_their_own_names() {
    let Some(mut lab) = built() else { return };
    lab.start_servers().expect("starting the backend servers");
    // From inside each host to the VIP on its own `lo`: no XDP involved.
    for (ns, name) in [
        (reference::BACKEND1, "backend1"),
        (reference::BACKEND2, "backend2"),
        (reference::EDGE1, "edge1"),
    ] {
        for (transport, target) in reference::vip_targets() {
            lab.flows(ns, transport, target, 3, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{transport} client: {e}"))
                .assert_all_answered_by(name, &format!("{transport} {target} in {ns}"));
        }
    }
}
