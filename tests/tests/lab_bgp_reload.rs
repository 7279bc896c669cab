//! Live BGP reconfiguration on the BGP lab (`anycast_tests::lab_bgp`): the edges' agents and
//! their managed BIRDs keep running while the config changes under them.
//!
//! 1. A VIP address is added to both edges' configs: each agent writes its table, rewrites
//!    `bird.conf` and has BIRD `configure`; the router learns the new prefix over both edges and
//!    a real connection to it lands on the backend `anycast lookup` predicts. The prefixes that
//!    did not change stay in the router's ECMP route the whole time (sampled every 20 ms).
//! 2. A BGP setting changes on edge1 (hold and keepalive timers): the reload is accepted, BIRD
//!    restarts that session with the new timers, and edge1 returns to the ECMP route.
//! 3. The VIP address is removed again: the router loses that prefix from both edges, the other
//!    prefixes do not move.
//! 4. A change that needs a restart (`bgp.bird_binary`) is refused with the field named, and the
//!    agent keeps announcing with its last good config.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anycast::proto::{ReloadOutcome, Status};
use anycast_tests::lab::find_binary;
use anycast_tests::lab::reference::*;
use anycast_tests::lab_bgp::{BgpLab, EDGES, Options, live_lookup};

const NEW_VIP: &str = "203.0.113.20";

/// Replaces `edge`'s config file (the agent's file watch reloads it) and waits (bounded) until
/// the agent reports a reload newer than the last one; returns that reload's outcome.
fn reload(bgp: &BgpLab, edge: &str, text: &str) -> ReloadOutcome {
    let count = |s: &Status| s.reloads_ok + s.reloads_error;
    let n0 = count(&bgp.status(edge));
    std::fs::write(bgp.lab.agent_config_path(edge), text).expect("writing the config");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = bgp.status(edge);
        let n = count(&s);
        if n > n0 {
            return s
                .last_reload
                .unwrap_or_else(|| panic!("{edge}: {n} reloads, no last one"));
        }
        assert!(
            Instant::now() < deadline,
            "{edge}: no reload within 10 s of the config change"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Samples the router's route to each of `vips` every 20 ms until stopped; returns every sample
/// where it did not go through both edges.
struct RouteWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl RouteWatch {
    fn start(bgp: &BgpLab) -> RouteWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = bgp.lab.ns(ROUTER);
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !s.load(Ordering::Relaxed) {
                for (vip, family, want) in [
                    (VIP_V4, "-4", [EDGE1_V4, EDGE2_V4]),
                    (VIP_V6, "-6", [EDGE1_V6, EDGE2_V6]),
                ] {
                    let out = anycast_tests::netns::ip(&ns)
                        .args([family, "route", "show", vip])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    if !want.iter().all(|w| out.contains(&format!("via {w} "))) {
                        bad.push(format!("{vip}: {}", out.trim()));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            bad
        });
        RouteWatch { stop, thread }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("route watch thread")
    }
}

fn with_new_vip(config: &str) -> String {
    let mut block =
        format!("\n[[vip]]\naddress = {NEW_VIP:?}\nport = {TCP_PORT}\nprotocol = \"tcp\"\n");
    for (address, weight) in backends_v4() {
        block.push_str(&format!(
            "[[vip.backend]]\naddress = {address:?}\nweight = {weight}\n"
        ));
    }
    let at = config.find("\n[bgp]\n").expect("[bgp] in the edge config");
    format!("{}{block}{}", &config[..at], &config[at..])
}

#[test]
fn bgp_settings_and_vip_addresses_change_without_a_restart() {
    if !anycast_tests::privileged("lab_bgp_reload") {
        return;
    }
    let mut bgp = BgpLab::start(Options::default()).expect("starting the BGP lab");
    let server = find_binary("anycast-lab-server", "ANYCAST_LAB_SERVER_BIN")
        .expect("anycast-lab-server")
        .to_string_lossy()
        .into_owned();
    // The new VIP's backends accept it (address on lo, a server bound to it); the edges hold
    // it on lo like the other VIPs.
    for ns in [EDGE1, EDGE2, BACKEND1, BACKEND2] {
        bgp.lab
            .ip(ns, &["addr", "add", &format!("{NEW_VIP}/32"), "dev", "lo"])
            .expect("adding the new VIP to lo");
    }
    for (ns, name) in [
        (BACKEND1, "backend1"),
        (BACKEND2, "backend2"),
        (EDGE1, "edge1"),
    ] {
        bgp.lab
            .spawn(
                ns,
                &format!("server-new-vip-{name}"),
                &[
                    &server,
                    name,
                    &TCP_PORT.to_string(),
                    &UDP_PORT.to_string(),
                    NEW_VIP,
                ],
                &[],
            )
            .expect("starting a server on the new VIP");
    }
    let base: Vec<String> = EDGES
        .iter()
        .map(|e| std::fs::read_to_string(bgp.lab.agent_config_path(e)).expect("edge config"))
        .collect();

    // 1. Add a VIP address.
    let watch = RouteWatch::start(&bgp);
    let t = Instant::now();
    for (edge, text) in EDGES.iter().zip(&base) {
        let r = reload(&bgp, edge, &with_new_vip(text));
        assert!(r.ok, "{edge}: adding {NEW_VIP} was refused: {r:?}");
    }
    let learned = bgp
        .wait_nexthops(NEW_VIP, &[EDGE1_V4, EDGE2_V4], Duration::from_secs(10))
        .expect("the router learns the new VIP from both edges");
    eprintln!(
        "add: router has {NEW_VIP} via both edges {:.0} ms after the first config write",
        (t.elapsed().max(learned)).as_secs_f64() * 1e3
    );
    // Real connections to the new VIP, each on the backend the edges' lookup names.
    let target: std::net::SocketAddr = format!("{NEW_VIP}:{TCP_PORT}").parse().unwrap();
    let records = bgp
        .lab
        .in_netns(CLIENT, || {
            (0..60)
                .map(|_| anycast_tests::lab::tcp_request_from(target, Duration::from_secs(3)))
                .collect::<Vec<_>>()
        })
        .expect("client namespace");
    let mut landed = std::collections::BTreeMap::<String, usize>::new();
    for r in records {
        let (local, name) = r.unwrap_or_else(|(_, e)| panic!("a request to {NEW_VIP}: {e}"));
        let want = live_lookup(&bgp.api_socket(EDGE1), "tcp", local, target);
        assert_eq!(
            name, want,
            "{local} -> {target} landed on {name}, lookup says {want}"
        );
        *landed.entry(name).or_default() += 1;
    }
    eprintln!("add: 60 connections to {NEW_VIP}, each on its lookup backend: {landed:?}");
    let bad = watch.finish();
    assert!(
        bad.is_empty(),
        "the unchanged prefixes left the router's ECMP route while a VIP was added ({} samples): {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    for edge in EDGES {
        let log = bgp.edge_log(edge);
        assert!(
            log.contains("managed BIRD reconfigured"),
            "{edge}: BIRD was not reconfigured:\n{log}"
        );
    }

    // 2. A BGP session setting changes on edge1.
    // The router holds 9 s; the session negotiates the lower of both, so go below it.
    let timers = |c: &str| {
        assert!(c.contains("hold_time = 9\nkeepalive_time = 3"), "{c}");
        c.replace(
            "hold_time = 9\nkeepalive_time = 3",
            "hold_time = 6\nkeepalive_time = 2",
        )
    };
    let e1_timers = timers(&with_new_vip(&base[0]));
    let t = Instant::now();
    let r = reload(&bgp, EDGE1, &e1_timers);
    assert!(r.ok, "edge1: changing the timers was refused: {r:?}");
    let conf = std::fs::read_to_string(bgp.edge_bird_dir(EDGE1).join("bird.conf")).unwrap();
    assert!(
        conf.contains("hold time 6;") && conf.contains("keepalive time 2;"),
        "{conf}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let proto = bgp
            .birdc_router("show protocols all edge1_ipv4")
            .unwrap_or_default();
        // Both of edge1's sessions (IPv4 and IPv6) restart: wait for every prefix.
        let ok = [VIP_V4, VIP_V6, NEW_VIP]
            .iter()
            .all(|v| bgp.nexthops(v).unwrap_or_default().len() == 2)
            && proto.contains("Hold timer:")
            && proto.contains("/6");
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "edge1's session did not come back with hold time 6 within 20 s:\n{proto}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "timers: edge1's session re-established with hold time 6, back in ECMP, {:.0} ms after the write",
        t.elapsed().as_secs_f64() * 1e3
    );

    // 3. Remove the VIP address again (edge1 keeps its new timers).
    let watch = RouteWatch::start(&bgp);
    let t = Instant::now();
    for (edge, text) in [(EDGE1, timers(&base[0])), (EDGE2, base[1].clone())] {
        let r = reload(&bgp, edge, &text);
        assert!(r.ok, "{edge}: removing {NEW_VIP} was refused: {r:?}");
    }
    let gone = bgp
        .wait_nexthops(NEW_VIP, &[], Duration::from_secs(10))
        .expect("the router forgets the removed VIP");
    eprintln!(
        "remove: {NEW_VIP} gone from the router {:.0} ms after the first config write",
        (t.elapsed().max(gone)).as_secs_f64() * 1e3
    );
    let bad = watch.finish();
    assert!(
        bad.is_empty(),
        "the unchanged prefixes left the router's ECMP route while a VIP was removed: {:?}",
        &bad[..bad.len().min(5)]
    );
    for edge in EDGES {
        let prefixes: Vec<String> = bgp
            .status(edge)
            .vips
            .into_iter()
            .filter_map(|v| v.announcement.map(|a| a.prefix))
            .collect();
        assert!(
            !prefixes.iter().any(|p| p.starts_with(NEW_VIP)),
            "{edge} still reports {NEW_VIP}: {prefixes:?}"
        );
    }

    // 4. A change that needs a restart is refused; announcements stay.
    let broken = base[1].replace(
        "\n[bgp]\n",
        "\n[bgp]\nbird_binary = \"/usr/sbin/bird-other\"\n",
    );
    let r = reload(&bgp, EDGE2, &broken);
    assert!(!r.ok, "edge2 accepted a new bird_binary: {r:?}");
    let msg = &r.message;
    assert!(
        msg.contains("bgp.bird_binary"),
        "the refusal does not name the field: {msg}"
    );
    eprintln!("restart-only change refused: {msg}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        bgp.nexthops(VIP_V4).unwrap().len(),
        2,
        "edge2 stopped announcing after a refused reload"
    );
}
