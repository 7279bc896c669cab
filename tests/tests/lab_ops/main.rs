//! Operations on the reference topology (issue 5, item 7): a backend dying mid-traffic, a broken
//! config pushed, a drain through the CLI, metrics against the traffic sent, the agent SIGKILLed
//! and restarted, and a program upgrade, the last two under long-lived connections; runtime
//! overrides and health verdicts across a restart. The VIPs are routed to edge1, whose agent is
//! the one operated on. Measured numbers are printed (run with `--nocapture` to see them).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anycast::api::Client;
use anycast::config::VipId;
use anycast::proto::{BackendStatus, Health, Status, VipStatus};
use anycast_tests::lab::conns::{ConnsOptions, ConnsReport, LongLived, Phase};
use anycast_tests::lab::{
    ChildSignals, FlowTally, Lab, Transport, find_binary, reference, tcp_request_bound,
    without_colours,
};

mod conns;
mod ops;
use ops::*;

const EDGE: &str = reference::EDGE1;
const FLOWS: usize = 60;
const BUDGET: Duration = Duration::from_secs(60);

#[test]
fn a_killed_backend_is_detected_and_new_flows_avoid_it_while_others_continue() {
    let Some(ops) = Ops::start() else {
        return;
    };
    let conns = ops.long_lived(60, Duration::from_secs(6));
    ops.wait_streaming(&conns, 60);

    let servers = pids_in(&ops.lab, reference::BACKEND2, "anycast-lab-server");
    assert!(!servers.is_empty(), "backend2's server not found");
    let killed_at = seconds_of_day(std::time::SystemTime::now());
    for p in servers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let (detection, st) = ops.wait_for(Duration::from_secs(10), "backend2 unhealthy", |s| {
        backend(vip_v4_tcp(s), reference::BACKEND2_V4).health == Health::Unhealthy
    });
    let log = ops.agent_log();
    for l in log
        .lines()
        .filter(|l| l.contains("unhealthy") || l.contains("VIP table changed"))
    {
        println!("  agent: {l}");
    }
    // The agent's own timestamp of the verdict (the status answer also waits for the table
    // rebuilds the verdicts trigger).
    let verdict = log
        .lines()
        .find(|l| l.contains("backend unhealthy") && l.contains(reference::BACKEND2_V4))
        .and_then(log_time);
    let logged = verdict.map(|t| Duration::from_secs_f64((t - killed_at).max(0.0)));
    println!(
        "OPS health detection: backend2 killed -> first unhealthy verdict after {logged:?} (agent log), shown by `anycast status` after {detection:?} (interval 200 ms, fall 2)"
    );
    let b2 = backend(vip_v4_tcp(&st), reference::BACKEND2_V4);
    assert_eq!(b2.slots, 0, "an unhealthy backend holds no slot: {b2:?}");

    // New flows from source ports outside the ephemeral range: the connections backend2's death
    // reset freed their ports at once, and a new connection reusing one of those 4-tuples would
    // follow the connection-tracking entry of the old one (see the report of this test's PR).
    let tally = ops
        .lab
        .in_netns(reference::CLIENT, || {
            let mut tally = std::collections::BTreeMap::<String, usize>::new();
            for i in 0..FLOWS {
                let source = SocketAddr::from(([0, 0, 0, 0], 20_000 + i as u16));
                let name =
                    tcp_request_bound(source, reference::vip_v4_tcp(), Duration::from_secs(2))
                        .map_or_else(|(_, e)| format!("({:?})", e.kind()), |(_, name)| name);
                *tally.entry(name).or_default() += 1;
            }
            tally
        })
        .expect("client");
    println!("new flows after the failure: {tally:?}");
    let failed: usize = tally
        .iter()
        .filter(|(k, _)| k.starts_with('('))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(failed, 0, "new flows failed: {tally:?}");
    assert!(!tally.contains_key("backend2"), "{tally:?}");
    let tally = ops.client_flows(Transport::Tcp, FLOWS);
    println!("new flows (ephemeral ports) after the failure:\n{tally}");
    assert!(!tally.per_backend.contains_key("backend2"), "{tally}");

    let r = conns.wait();
    println!("long-lived connections across the failure:\n{r}");
    let others: Vec<_> = r.conns.iter().filter(|c| c.backend != "backend2").collect();
    assert!(!others.is_empty(), "{r}");
    assert!(
        others.iter().all(|c| c.is_clean()),
        "connections to other backends disturbed:\n{r}"
    );
}

#[test]
fn a_broken_config_is_rejected_drain_works_through_the_cli_and_metrics_count_the_traffic() {
    let Some(ops) = Ops::start() else {
        return;
    };
    let good = std::fs::read_to_string(&ops.config).unwrap();
    let before = ops.status().expect("status");
    let conns = ops.long_lived(50, Duration::from_secs(8));
    ops.wait_streaming(&conns, 50);

    // (b) A broken config: rejected, named, traffic unaffected.
    let pushed = Instant::now();
    ops.push_config(&good.replacen("weight = 1", "weight = 70000", 1));
    let (_, st) = ops.wait_for(Duration::from_secs(5), "the reload to be rejected", |s| {
        reloaded(s, false)
    });
    println!(
        "OPS broken config rejected in {:?}: {}",
        pushed.elapsed(),
        last_reload_message(&st)
    );
    let msg = last_reload_message(&st);
    assert!(msg.contains("weight") && msg.contains("70000"), "{msg}");
    assert_eq!(Ops::fingerprints(&st), Ops::fingerprints(&before));
    let tally = ops.client_flows(Transport::Tcp, FLOWS);
    assert_eq!(tally.failed(), 0, "after the broken config:\n{tally}");
    assert_eq!(tally.per_backend.len(), 3, "{tally}");
    let pushed = Instant::now();
    ops.push_config(&good);
    let (reload, _) = ops.wait_for(Duration::from_secs(5), "the good config back", |s| {
        reloaded(s, true)
    });
    println!(
        "OPS good config reloaded in {reload:?} ({:?} after the write)",
        pushed.elapsed()
    );

    // (c) Drain through the CLI: new flows avoid backend1, existing ones continue.
    let out = ops.cli(&[
        "drain",
        reference::BACKEND1_V4,
        "--vip",
        &format!("{}:80/tcp", reference::VIP_V4),
    ]);
    assert!(
        out.status.success(),
        "anycast drain: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tally = ops.client_flows(Transport::Tcp, FLOWS);
    println!("new flows while backend1 is drained:\n{tally}");
    assert_eq!(tally.failed(), 0, "{tally}");
    assert!(!tally.per_backend.contains_key("backend1"), "{tally}");
    let r = conns.wait();
    println!("long-lived connections across the broken config and the drain:\n{r}");
    assert!(
        r.per_backend().get("backend1").copied().unwrap_or(0) > 0,
        "no long-lived connection on backend1 to check the drain with:\n{r}"
    );
    assert_clean(&r, "broken config + drain");
    let out = ops.cli(&["undrain", reference::BACKEND1_V4]);
    assert!(out.status.success());

    // (d) Metrics against the traffic sent: exactly one packet per UDP request to the VIP.
    let label = format!("vip=\"{}:7/udp\"", reference::VIP_V4);
    let m0 = ops.metrics();
    let p0 = metric(&m0, "anycast_vip_packets_total", &label);
    let out0 = metric(&m0, "anycast_packets_total", "outcome=\"encap\"")
        + metric(&m0, "anycast_packets_total", "outcome=\"local\"");
    let tally = ops.client_flows(Transport::Udp, FLOWS);
    assert_eq!(tally.failed(), 0, "{tally}");
    let m1 = ops.metrics();
    let p1 = metric(&m1, "anycast_vip_packets_total", &label);
    let out1 = metric(&m1, "anycast_packets_total", "outcome=\"encap\"")
        + metric(&m1, "anycast_packets_total", "outcome=\"local\"");
    println!(
        "OPS metrics: {FLOWS} UDP datagrams sent, anycast_vip_packets_total{{{label}}} +{}, encap+local +{}",
        p1 - p0,
        out1 - out0
    );
    assert_eq!(
        p1 - p0,
        FLOWS as u64,
        "VIP packet counter vs datagrams sent"
    );
    assert!(out1 - out0 >= FLOWS as u64);
    for name in [
        "anycast_backend_packets_total",
        "anycast_backend_healthy",
        "anycast_vip_table_fingerprint_info",
        "anycast_config_reloads_total{result=\"error\"}",
        "anycast_build_info",
    ] {
        assert!(m1.contains(name), "{name} missing from the metrics");
    }
    assert!(metric(&m1, "anycast_config_reloads_total", "result=\"error\"") >= 1);
    // The next-hop cache carried the encapsulated traffic: the FIB helper is the exception.
    let fib = metric(&m1, "anycast_packets_total", "outcome=\"fib_lookup\"")
        - metric(&m0, "anycast_packets_total", "outcome=\"fib_lookup\"");
    let encap = metric(&m1, "anycast_packets_total", "outcome=\"encap\"")
        - metric(&m0, "anycast_packets_total", "outcome=\"encap\"");
    println!("OPS next-hop cache: {encap} packets encapsulated, {fib} routed by the FIB helper");
    assert!(
        encap > 0,
        "no encapsulated traffic to check the next-hop cache with"
    );
    assert!(
        fib * 10 <= encap,
        "the FIB routed {fib} of {encap} encapsulated packets"
    );

    // (e) Misconfigured starts are refused before they touch the dataplane, naming the problem.
    // A second agent on the same pins names the running one.
    let config = ops.config.to_string_lossy().into_owned();
    let out = ops
        .lab
        .exec(
            EDGE,
            &[&ops.bin.to_string_lossy(), "agent", "--config", &config],
        )
        .expect("second agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second agent on the same pins started: {err}"
    );
    let pid = ops.edge_pid().to_string();
    assert!(
        err.contains("another agent") && err.contains(&format!("pid {pid}")),
        "the refusal must name the running agent (pid {pid}): {err}"
    );
    // IP forwarding off on the steering interface, remote backends configured: refused, the
    // sysctl named (its own pin path, so the pin lock is not what refuses it).
    let st = ops.status().expect("status");
    let iface = st.program.interfaces[0].name.clone();
    let key = format!("net.ipv4.conf.{iface}.forwarding");
    let other = std::env::temp_dir().join(format!("anycast-fwd-{}.toml", std::process::id()));
    let own_paths: String = good
        .lines()
        .map(|l| match l.strip_suffix('"') {
            Some(v) if l.starts_with("pin_path = ") || l.starts_with("state_file = ") => {
                format!("{v}-fwd\"\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert!(own_paths.contains("-fwd\""), "{own_paths}");
    std::fs::write(&other, own_paths).expect("writing the second config");
    let other_s = other.to_string_lossy().into_owned();
    let proc = format!("/proc/sys/{}", key.replace('.', "/"));
    let sysctl = |v: &str| {
        let out = ops
            .lab
            .exec(EDGE, &["sh", "-c", &format!("echo {v} > {proc}")])
            .expect("sysctl");
        assert!(out.status.success(), "setting {key}={v}: {out:?}");
    };
    sysctl("0");
    let out = ops
        .lab
        .exec(
            EDGE,
            &[&ops.bin.to_string_lossy(), "agent", "--config", &other_s],
        )
        .expect("agent with forwarding off");
    sysctl("1");
    let _ = std::fs::remove_file(&other);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an agent started with forwarding off: {err}"
    );
    assert!(
        err.contains(&key) && err.contains("enable_forwarding"),
        "{err}"
    );
    let st = ops.status().expect("status");
    let edge_if = st
        .program
        .interfaces
        .iter()
        .find(|i| i.name == iface)
        .expect("interface in status");
    assert_eq!(
        edge_if.forwarding.map(|f| f.ipv4),
        Some(true),
        "{edge_if:?}"
    );
}

#[test]
fn the_agent_sigkilled_restarted_and_upgraded_under_long_lived_connections_breaks_none() {
    const CONNS: usize = 100;
    let Some(mut ops) = Ops::start() else {
        return;
    };
    let before = ops.status().expect("status");
    let conns = ops.long_lived(CONNS, Duration::from_secs(9));
    ops.wait_streaming(&conns, CONNS);

    // (e) SIGKILL: the dataplane keeps forwarding with its last tables; a new agent adopts it.
    ops.signal(nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ops.xdp_attached(), "the XDP program went with the agent");
    assert!(ops.status().is_none(), "the killed agent still answers");
    let udp = ops.client_flows(Transport::Udp, 20);
    assert_eq!(udp.failed(), 0, "no agent, dataplane must forward:\n{udp}");
    let (restart, after) = ops.restart_agent(before.program.id);
    println!(
        "OPS restart after SIGKILL: new agent serving in {restart:?} (program {:?} -> {:?})",
        before.program.id, after.program.id
    );
    assert_eq!(
        Ops::fingerprints(&after),
        Ops::fingerprints(&before),
        "the adopted tables changed"
    );
    let log = ops.agent_log();
    for l in log.lines().filter(|l| {
        [
            "adopting",
            "maps written",
            "pinned link",
            "dataplane pinned",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        println!("  restarted agent: {l}");
    }
    assert!(log.contains("adopting the pinned dataplane"), "{log}");
    assert!(log.contains("replaced in the pinned link"), "{log}");

    // (f) Upgrade: a clean stop leaves the dataplane; the next agent loads its program and swaps
    // it into the pinned link, keeping the tables. Its config doubles conntrack_size, so the
    // connection-tracking map is new and the tracked connections are copied into it.
    std::thread::sleep(Duration::from_millis(500));
    let took = ops.stop_with_sigterm();
    println!("OPS agent stopped {took:?} after SIGTERM");
    assert!(
        ops.xdp_attached(),
        "SIGTERM must leave the dataplane attached"
    );
    let text = std::fs::read_to_string(&ops.config).unwrap();
    assert!(text.contains("conntrack_size = 16384"), "{text}");
    std::fs::write(
        &ops.config,
        text.replace("conntrack_size = 16384", "conntrack_size = 32768"),
    )
    .unwrap();
    let (upgrade, upgraded) = ops.restart_agent(after.program.id);
    println!(
        "OPS upgrade (SIGTERM, new agent, program swapped in the pinned link): {upgrade:?} (program {:?} -> {:?})",
        after.program.id, upgraded.program.id
    );
    assert_eq!(Ops::fingerprints(&upgraded), Ops::fingerprints(&before));
    let log = without_colours(&ops.agent_log());
    let carried = log
        .lines()
        .find(|l| l.contains("connection tracking carried over into the new CONNS map"))
        .unwrap_or_else(|| panic!("no connection-tracking copy logged:\n{log}"));
    println!("  upgraded agent: {carried}");
    let copied: usize = carried
        .split_once("copied=")
        .and_then(|(_, r)| r.split(' ').next()?.parse().ok())
        .expect("copied=N");
    assert!(
        copied >= CONNS,
        "{CONNS} long-lived connections are tracked, {copied} entries copied"
    );
    assert!(
        log.contains("maps written backends=0 ring_entries=0"),
        "{log}"
    );

    let r = conns.wait();
    println!("long-lived connections across SIGKILL + restart + upgrade:\n{r}");
    println!(
        "OPS restart disruption: {} connections, {} resets, {} bytes lost, longest echo gap {:?}",
        r.conns.len(),
        r.resets(),
        r.lost(),
        r.max_gap()
    );
    assert_clean(&r, "SIGKILL, restart, upgrade");
    let tally: FlowTally = ops.client_flows(Transport::Tcp, FLOWS);
    assert_eq!(tally.failed(), 0, "{tally}");

    // `anycast detach` removes the dataplane (refused while the agent runs).
    let cfg = ops.config.to_string_lossy().into_owned();
    let out = Command::new(&ops.bin)
        .args(["detach", "--config", &cfg])
        .output()
        .unwrap();
    assert!(!out.status.success(), "detach while the agent runs");
    ops.stop_with_sigterm();
    let out = Command::new(&ops.bin)
        .args(["detach", "--config", &cfg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!ops.xdp_attached(), "detach left the program attached");
}

#[test]
fn overrides_and_health_verdicts_survive_an_agent_restart_without_a_table_write() {
    let Some(mut ops) = Ops::start() else {
        return;
    };
    let vip = format!("{}:80/tcp", reference::VIP_V4);
    let ok = |out: std::process::Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(
        ops.cli(&["drain", reference::BACKEND1_V4, "--vip", &vip]),
        "anycast drain",
    );
    ok(
        ops.cli(&["set-weight", reference::EDGE1_V4, "1", "--vip", &vip]),
        "anycast set-weight",
    );
    // backend2's health-check server dies (its VIP server keeps running): unhealthy everywhere.
    assert_eq!(
        ops.lab
            .signal("health-backend2", nix::sys::signal::Signal::SIGKILL),
        1
    );
    let backend2: [IpAddr; 2] =
        [reference::BACKEND2_V4, reference::BACKEND2_V6].map(|a| a.parse().expect("literal"));
    let unhealthy = |s: &Status| {
        s.vips.iter().all(|v| {
            v.backends
                .iter()
                .any(|b| backend2.contains(&b.address) && b.health == Health::Unhealthy)
        })
    };
    let (_, before) = ops.wait_for(Duration::from_secs(10), "backend2 unhealthy", unhealthy);
    let state = ops.lab.agent_state(EDGE).expect("the state file");
    println!("state file runtime section: {:?}", state.runtime);
    assert_eq!(state.runtime.overrides.len(), 2);

    ops.signal(nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    let (restart, after) = ops.restart_agent(before.program.id);
    println!("OPS restart with runtime state: new agent serving in {restart:?}");
    let log = without_colours(&ops.agent_log());
    for l in log.lines().filter(|l| {
        ["restored", "dropped", "maps written"]
            .iter()
            .any(|k| l.contains(k))
    }) {
        println!("  restarted agent: {l}");
    }
    assert!(
        log.contains("runtime state of the previous agent restored") && log.contains("overrides=2"),
        "{log}"
    );
    assert!(
        log.contains("maps written backends=0 ring_entries=0"),
        "the restarted agent rewrote tables:\n{log}"
    );
    assert!(!log.contains("VIP table changed"), "{log}");
    assert_eq!(
        Ops::fingerprints(&after),
        Ops::fingerprints(&before),
        "the adopted tables changed"
    );
    assert!(unhealthy(&after), "health verdicts not restored: {after:?}");
    let b1 = backend(vip_v4_tcp(&after), reference::BACKEND1_V4);
    assert!(b1.drained && b1.slots == 0, "{b1:?}");
    assert_eq!(
        backend(vip_v4_tcp(&after), reference::EDGE1_V4).weight_override,
        Some(1)
    );
    let tally = ops.client_flows(Transport::Tcp, FLOWS);
    println!("new flows after the restart (backend1 drained, backend2 unhealthy):\n{tally}");
    assert_eq!(tally.failed(), 0, "{tally}");
    assert_eq!(
        tally.per_backend.keys().collect::<Vec<_>>(),
        ["edge1"],
        "{tally}"
    );

    // Undrain through the CLI on the new agent: backend1 takes flows again.
    ok(
        ops.cli(&["undrain", reference::BACKEND1_V4, "--vip", &vip]),
        "anycast undrain",
    );
    let st = ops.status().expect("status");
    let b1 = backend(vip_v4_tcp(&st), reference::BACKEND1_V4);
    assert!(!b1.drained && b1.slots > 0, "{b1:?}");
    assert_ne!(vip_v4_tcp(&st).fingerprint, vip_v4_tcp(&after).fingerprint);
    let tally = ops.client_flows(Transport::Tcp, FLOWS);
    println!("new flows after the undrain:\n{tally}");
    assert_eq!(tally.failed(), 0, "{tally}");
    assert!(tally.per_backend.contains_key("backend1"), "{tally}");
    assert!(!tally.per_backend.contains_key("backend2"), "{tally}");
}
