//! The agent prints the XDP program's log lines, and a restarted agent, which adopts the pinned
//! dataplane (aya-log's ring buffer `AYA_LOGS` included) and reads the program it swapped into
//! the pinned link, prints the lines the program wrote while no agent ran, then new ones.
//!
//! The reference topology, VIPs routed to edge1. An anomaly is made with real traffic: a
//! blackhole route on edge1 towards one backend makes the program's FIB lookup fail for the
//! flows that backend owns (`fib_fail`, logged with the backend's address). Each phase uses a
//! different backend, so the address in a line tells which phase wrote it.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anycast_tests::lab::{Lab, find_binary, reference, without_colours};

const EDGE: &str = reference::EDGE1;
/// UDP datagrams per phase, each from its own socket (its own flow); a backend of weight 1 of 6
/// gets none of them with probability (5/6)^400, nil. Enough too that, once a dead agent's
/// lease on the next-hop cache has run out, every CPU has read it again (once per 64 cached
/// packets) and the FIB routes the rest.
const DATAGRAMS: usize = 400;

fn fib_fail_line(backend: &str) -> String {
    format!("no route to the backend, packet dropped: rc=1 backend={backend} ")
}

/// Program lines of an agent log that name `backend`.
fn program_lines(log: &str, backend: &str) -> Vec<String> {
    let want = fib_fail_line(backend);
    log.lines()
        .map(without_colours)
        .filter(|l| l.contains("anycast::program") && l.contains(&want))
        .collect()
}

struct Phase<'a> {
    lab: &'a Lab,
}

impl Phase<'_> {
    /// Blackholes `backend` on edge1, sends the datagrams (without waiting for answers: the
    /// ones for `backend` are dropped), removes the blackhole.
    fn fib_fail_towards(&self, backend: &str) {
        let route = format!("{backend}/32");
        self.lab
            .ip(EDGE, &["route", "add", "blackhole", &route])
            .expect("adding the blackhole route");
        // A running agent takes the backend out of its next-hop cache within milliseconds of
        // the route change (the program then asks the FIB, which refuses); wait that out.
        std::thread::sleep(Duration::from_millis(100));
        let vip: SocketAddr = reference::vip_v4_udp();
        let sent = self
            .lab
            .in_netns(reference::CLIENT, || -> std::io::Result<usize> {
                for _ in 0..DATAGRAMS {
                    let s = UdpSocket::bind((reference::CLIENT_V4, 0))?;
                    s.send_to(b"anycast program log", vip)?;
                }
                Ok(DATAGRAMS)
            })
            .expect("entering the client namespace")
            .expect("sending the datagrams");
        assert_eq!(sent, DATAGRAMS);
        // Let the last datagrams cross the router before the route goes.
        std::thread::sleep(Duration::from_millis(200));
        self.lab
            .ip(EDGE, &["route", "del", "blackhole", &route])
            .expect("removing the blackhole route");
    }
}

/// Waits up to `limit` for `log()` to hold a program line naming `backend`.
fn wait_for_line(log: impl Fn() -> String, backend: &str, limit: Duration, what: &str) -> String {
    let start = Instant::now();
    loop {
        let text = log();
        if !program_lines(&text, backend).is_empty() {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: no program line for backend {backend} within {limit:?}; agent log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_agent_prints_program_lines_and_a_restarted_agent_those_written_while_none_ran() {
    if !anycast_tests::privileged(
        "the_agent_prints_program_lines_and_a_restarted_agent_those_written_while_none_ran",
    ) {
        return;
    }
    let mut lab = reference::start().unwrap_or_else(|e| panic!("starting the reference lab: {e}"));
    reference::route_vips_to(&lab, EDGE).expect("routing the VIPs to edge1");
    let config = lab.agent_config_path(EDGE);
    let first = format!("agent-{EDGE}");
    let second = format!("agent-{EDGE}-restarted");

    // (1) The running agent prints the program's line, as a tracing event of anycast::program.
    Phase { lab: &lab }.fib_fail_towards(reference::BACKEND1_V4);
    let log1 = wait_for_line(
        || lab.log(&first),
        reference::BACKEND1_V4,
        Duration::from_secs(10),
        "running agent",
    );
    let line = &program_lines(&log1, reference::BACKEND1_V4)[0];
    assert!(
        line.contains("WARN") && line.contains("event=\"fib_fail\""),
        "level and class of {line:?}"
    );
    println!("running agent printed: {line}");

    // (2) SIGKILL: the program keeps forwarding, and keeps logging into the pinned ring buffer
    // with nobody reading. Once the dead agent's lease on the next-hop cache has run out (the
    // program asks the kernel's FIB again, and sees the blackhole), and in a new rate window,
    // anomalies towards backend2.
    nix::sys::signal::kill(
        lab.agent_pid(EDGE).expect("the agent's pid"),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("killing the agent");
    std::thread::sleep(
        Duration::from_nanos(anycast_common::NEXTHOP_LEASE_NS) + Duration::from_millis(500),
    );
    Phase { lab: &lab }.fib_fail_towards(reference::BACKEND2_V4);
    std::thread::sleep(Duration::from_millis(300));

    // (3) A new agent adopts the pins and prints what was written meanwhile; no traffic now.
    let bin = find_binary("anycast", "ANYCAST_BIN").expect("the anycast binary");
    let (bin, config) = (
        bin.to_string_lossy().into_owned(),
        config.to_string_lossy().into_owned(),
    );
    let restarted = Instant::now();
    lab.spawn(
        EDGE,
        &second,
        &[&bin, "agent", "--config", &config],
        &[("RUST_LOG", "info")],
    )
    .expect("starting the agent again");
    let log2 = wait_for_line(
        || lab.log(&second),
        reference::BACKEND2_V4,
        Duration::from_secs(30),
        "restarted agent",
    );
    println!(
        "restarted agent printed, {:?} after its start: {}",
        restarted.elapsed(),
        program_lines(&log2, reference::BACKEND2_V4)[0]
    );
    assert!(
        log2.contains("adopting the pinned dataplane"),
        "the new agent adopted the pins; log:\n{log2}"
    );
    assert!(
        program_lines(&lab.log(&first), reference::BACKEND2_V4).is_empty(),
        "the killed agent cannot have printed backend2's line"
    );

    // (4) And it reads the program it swapped in: new anomalies are printed too.
    std::thread::sleep(Duration::from_millis(1100));
    let before = program_lines(&lab.log(&second), reference::BACKEND1_V4).len();
    Phase { lab: &lab }.fib_fail_towards(reference::BACKEND1_V4);
    let start = Instant::now();
    while program_lines(&lab.log(&second), reference::BACKEND1_V4).len() <= before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "restarted agent: no new program line; log:\n{}",
            lab.log(&second)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
