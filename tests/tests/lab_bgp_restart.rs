//! Restart without route churn, on the BGP lab (`anycast_tests::lab_bgp`): the router runs BIRD
//! with BFD (200 ms x 5) towards each edge, whose agent runs a managed BIRD.
//!
//! 1. edge1's agent is killed with SIGKILL while long-lived TCP connections stream through the
//!    VIP, stays dead for longer than the BFD detection time, and is started again. Its BIRD
//!    outlives it (same pid), the new agent re-adopts it, and the router's route for the VIP
//!    (`birdc show route`, both paths with the time each was learned, sampled every 50 ms) does
//!    not change once, from before the kill until after the new agent runs. No connection
//!    breaks.
//! 2. The re-adopted BIRD obeys the new agent: `anycast drain-edge` withdraws edge1 at once,
//!    `undrain-edge` announces it again.
//! 3. An orderly stop (SIGTERM) still withdraws at once, and stops BIRD.
//!
//! Timings are printed (`--nocapture`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anycast_tests::lab::conns::Phase;
use anycast_tests::lab::reference::*;
use anycast_tests::lab::{ConnsOptions, LongLived};
use anycast_tests::lab_bgp::{BgpLab, Options, RouteSample, same_routes, watch_route};

fn streaming(bgp: &BgpLab, n: usize, duration: Duration) -> LongLived {
    let opts = ConnsOptions {
        conns: n,
        duration,
        ..ConnsOptions::default()
    };
    let ll = bgp
        .lab
        .start_long_lived(CLIENT, vip_v4_tcp(), opts)
        .expect("starting long-lived connections");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = ll.snapshot();
        if s.phase == Phase::Streaming && s.established() == n {
            return ll;
        }
        assert!(
            Instant::now() < deadline,
            "connections not streaming after 15 s: {} of {n} established",
            s.established()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `edge`'s agent reports every VIP announced.
fn all_announced(bgp: &BgpLab, edge: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let a = bgp
            .client(edge)
            .status()
            .map(|s| {
                s.vips
                    .iter()
                    .all(|v| v.announcement.as_ref().is_some_and(|a| a.announced))
            })
            .unwrap_or(false);
        if a {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{edge}'s agent does not report its VIPs announced after {limit:?}:\n{}",
            bgp.current_edge_log(edge)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_agent_restarts_without_route_churn_and_a_real_withdrawal_still_withdraws() {
    let Some((_serial, mut bgp)) = BgpLab::start_serial(Options {
        // 3 s to detect a dead edge (as in production): a loaded 2-core machine does not flap
        // the sessions, and the agent stays dead for longer than that below.
        bfd: Some((500, 6)),
        ..Options::default()
    }) else {
        return;
    };
    let prefix = format!("{VIP_V4}/32");
    all_announced(&bgp, EDGE1, Duration::from_secs(10));
    let before = bgp.router_route(&prefix).expect("router route");
    assert!(
        before.contains(EDGE1_V4) && before.contains(EDGE2_V4),
        "the router's route does not go over both edges:\n{before}"
    );
    let bird_pid = bgp
        .edge_bird_pid(EDGE1)
        .expect("edge1's BIRD wrote its pid");
    let ll = streaming(&bgp, 40, Duration::from_secs(10));

    let stop = AtomicBool::new(false);
    let router = bgp.router_socket();
    let t0 = Instant::now();
    let (samples, down_for, readopted_after) = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            watch_route(
                &router,
                &prefix,
                Duration::from_millis(50),
                Duration::from_secs(30),
                &stop,
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let restart = {
            bgp.kill_edge(EDGE1).expect("killing edge1's agent");
            let killed = Instant::now();
            // Longer than the BFD detection time (3 s) and a keepalive interval (3 s): the
            // sessions have to live on by themselves. (A BIRD that died with its agent would
            // have closed them at once.)
            std::thread::sleep(Duration::from_millis(3500));
            assert_eq!(
                bgp.edge_bird_pid(EDGE1),
                Some(bird_pid),
                "edge1's BIRD did not outlive its agent"
            );
            bgp.start_edge(EDGE1).expect("starting edge1's agent again");
            let down_for = killed.elapsed();
            let started = Instant::now();
            all_announced(&bgp, EDGE1, Duration::from_secs(10));
            (down_for, started.elapsed())
        };
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        let samples = watch.join().expect("watcher").expect("watching the route");
        (samples, restart.0, restart.1)
    });
    let changed: Vec<&RouteSample> = samples
        .iter()
        .filter(|s| !same_routes(&s.bird, &before))
        .collect();
    eprintln!(
        "restart: agent down {:.0} ms, re-adopted and announcing {:.0} ms after it started; {} route samples over {:.1} s, {} differ",
        down_for.as_secs_f64() * 1e3,
        readopted_after.as_secs_f64() * 1e3,
        samples.len(),
        t0.elapsed().as_secs_f64(),
        changed.len()
    );
    assert!(
        samples.len() >= 40,
        "only {} samples of the route",
        samples.len()
    );
    assert!(
        changed.is_empty(),
        "the router's route changed across the restart; before:\n{before}\nfirst change at {:?}:\n{}\nedge1 log:\n{}",
        changed[0].at,
        changed[0].bird,
        bgp.current_edge_log(EDGE1)
    );
    assert_eq!(bgp.edge_bird_pid(EDGE1), Some(bird_pid));
    let log = bgp.current_edge_log(EDGE1);
    assert!(log.contains("re-adopting the running BIRD"), "{log}");
    assert!(!log.contains("VIP withdrawn"), "{log}");

    let report = ll.wait();
    eprintln!(
        "restart: {} connections, {} clean, per backend {:?}, longest gap {:?}",
        report.conns.len(),
        report.conns.iter().filter(|c| c.is_clean()).count(),
        report.per_backend(),
        report.max_gap()
    );
    for c in &report.conns {
        assert!(c.is_clean(), "connection broke across the restart: {c:?}");
    }

    // The new agent drives the adopted BIRD: a drain withdraws at once.
    let (out, withdraw) = std::thread::scope(|s| {
        let watch = s.spawn(|| bgp.wait_nexthops(VIP_V4, &[EDGE2_V4], Duration::from_secs(5)));
        let out = bgp
            .anycast(EDGE1, &["drain-edge", "--quiet-ms", "200"])
            .unwrap();
        (out, watch.join().expect("watcher"))
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let withdraw =
        withdraw.unwrap_or_else(|e| panic!("{e}\nedge1 log:\n{}", bgp.current_edge_log(EDGE1)));
    eprintln!(
        "drain-edge on the re-adopted BIRD: router dropped edge1 after {:.0} ms",
        withdraw.as_secs_f64() * 1e3
    );
    assert!(withdraw < Duration::from_millis(2500), "{withdraw:?}");
    let out = bgp.anycast(EDGE1, &["undrain-edge"]).unwrap();
    assert!(out.status.success());
    bgp.wait_nexthops(VIP_V4, &[EDGE1_V4, EDGE2_V4], Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\nedge1 log:\n{}", bgp.current_edge_log(EDGE1)));

    // An orderly stop withdraws at once (well before BFD or the hold timer) and stops BIRD.
    let withdraw = std::thread::scope(|s| {
        let watch = s.spawn(|| bgp.wait_nexthops(VIP_V4, &[EDGE2_V4], Duration::from_secs(5)));
        assert_eq!(bgp.signal_edge(EDGE1, nix::sys::signal::Signal::SIGTERM), 1);
        watch.join().expect("watcher")
    });
    let withdraw =
        withdraw.unwrap_or_else(|e| panic!("{e}\nedge1 log:\n{}", bgp.current_edge_log(EDGE1)));
    eprintln!(
        "SIGTERM: router dropped edge1 after {:.0} ms",
        withdraw.as_secs_f64() * 1e3
    );
    assert!(withdraw < Duration::from_millis(2500), "{withdraw:?}");
    bgp.stop_edge(EDGE1)
        .expect("edge1's agent exits cleanly on SIGTERM");
    assert_eq!(
        bgp.edge_bird_pid(EDGE1),
        None,
        "edge1's BIRD still runs after an orderly stop"
    );
}
