//! The lab harness itself: the reference topology comes up in network namespaces, carries plain
//! IP between its hosts, and leaves nothing behind, not even when the test panics.

use std::path::Path;

use anycast_tests::lab::{Lab, reference};

fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn reference_topology_creates_its_namespaces_and_removes_them_on_drop() {
    if !anycast_tests::privileged(
        "reference_topology_creates_its_namespaces_and_removes_them_on_drop",
    ) {
        return;
    }
    let lab = Lab::build(&reference::topology()).expect("building the reference topology");
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
    if !anycast_tests::privileged("lab_interfaces_never_appear_in_the_root_namespace") {
        return;
    }
    let lab = Lab::build(&reference::topology()).expect("building the reference topology");
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
    if !anycast_tests::privileged(
        "client_reaches_edges_and_backends_through_the_router_with_plain_ping",
    ) {
        return;
    }
    let lab = Lab::build(&reference::topology()).expect("building the reference topology");
    for target in reference::PING_TARGETS {
        if let Err(out) = lab.ping(reference::CLIENT, target, 1) {
            panic!("client cannot ping {target}:\n{out}");
        }
    }
}

#[test]
fn agent_config_follows_the_toml_contract() {
    if !anycast_tests::privileged("agent_config_follows_the_toml_contract") {
        return;
    }
    let topology = reference::topology();
    let lab = Lab::build(&topology).expect("building the reference topology");
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
    if !anycast_tests::privileged("pass_program_attaches_natively_and_detaches_on_drop") {
        return;
    }
    let mut lab = Lab::build(&reference::topology()).expect("building the reference topology");
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
    if !anycast_tests::privileged("backend_servers_answer_with_their_own_names") {
        return;
    }
    let mut lab = Lab::build(&reference::topology()).expect("building the reference topology");
    lab.start_servers().expect("starting the backend servers");
    // From inside each host to the VIP on its own `lo`: no XDP involved.
    for (ns, name) in [
        (reference::BACKEND1, "backend1"),
        (reference::BACKEND2, "backend2"),
        (reference::EDGE1, "edge1"),
    ] {
        for target in [reference::vip_v4_tcp(), reference::vip_v6_tcp()] {
            let tally = lab
                .tcp_flows(ns, target, 3, std::time::Duration::from_secs(10))
                .expect("tcp client");
            assert_eq!(
                tally.per_backend.get(name),
                Some(&3),
                "TCP {target} in {ns}:\n{tally}"
            );
        }
        for target in [reference::vip_v4_udp(), reference::vip_v6_udp()] {
            let tally = lab
                .udp_flows(ns, target, 3, std::time::Duration::from_secs(10))
                .expect("udp client");
            assert_eq!(
                tally.per_backend.get(name),
                Some(&3),
                "UDP {target} in {ns}:\n{tally}"
            );
        }
    }
}
