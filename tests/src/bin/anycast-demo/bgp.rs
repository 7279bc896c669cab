//! What the router makes of the edges: its BGP and BFD sessions, its route to the VIP, and the
//! timers they run with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anycast::config::bgp::BgpMode;
use anycast_tests::lab;
use anycast_tests::lab::reference::{self, EDGE1, EDGE1_V4, EDGE2, EDGE2_V4, VIP_V4};
use anycast_tests::lab_bgp::{BgpLab, same_routes};

/// The router's BGP sessions with the edges: name -> `state since info`.
pub type Sessions = BTreeMap<String, String>;

/// The other edge.
pub fn other(edge: &str) -> &'static str {
    if edge == EDGE1 { EDGE2 } else { EDGE1 }
}

pub fn edge_v4(edge: &str) -> &'static str {
    if edge == EDGE1 { EDGE1_V4 } else { EDGE2_V4 }
}

fn edge_of_addr(addr: &str) -> &str {
    match addr {
        EDGE1_V4 => EDGE1,
        EDGE2_V4 => EDGE2,
        other => other,
    }
}

/// Lines of a BIRD or `ip` answer, indented, without birdc's greeting.
pub fn indented(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("BIRD ") && !l.trim().is_empty())
        .map(|l| format!("     {l}"))
        .collect()
}

/// The router's sessions, its route to the VIP as BIRD and the kernel have it, its BFD sessions.
pub fn show_router(bgp: &BgpLab) -> lab::Result<()> {
    println!("== the router's view: one VIP, two edges");
    println!("   $ birdc show protocols          (BGP sessions to both edges, BFD)");
    for l in indented(&bgp.birdc_router("show protocols")?) {
        println!("{l}");
    }
    println!("   $ birdc show route for {VIP_V4}/32   (learned from both edges)");
    for l in indented(&bgp.birdc_router(&format!("show route for {VIP_V4}/32"))?) {
        println!("{l}");
    }
    println!("   $ ip route show {VIP_V4}        (installed: one route, two next hops)");
    for l in indented(&bgp.lab.ip(reference::ROUTER, &["route", "show", VIP_V4])?) {
        println!("{l}");
    }
    println!("   $ birdc show bfd sessions");
    for l in indented(&bgp.birdc_router("show bfd sessions")?) {
        println!("{l}");
    }
    Ok(())
}

/// The router's VIP route in a few words: `via edge1 + edge2`.
pub fn route_line(bgp: &BgpLab) -> String {
    match bgp.nexthops(VIP_V4) {
        Ok(hops) if hops.is_empty() => "no route".to_owned(),
        Ok(hops) => format!(
            "via {}",
            hops.iter()
                .map(|h| edge_of_addr(h))
                .collect::<Vec<_>>()
                .join(" + ")
        ),
        Err(e) => e.to_string(),
    }
}

/// The BFD timers the router's BIRD runs with `addr`, as `(interval, timeout)` from `show bfd
/// sessions` (seconds, as BIRD prints them).
pub fn bfd_timers(bgp: &BgpLab, addr: &str) -> Option<(String, String)> {
    let out = bgp.birdc_router("show bfd sessions").ok()?;
    out.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.first() == Some(&addr) && w.len() >= 3)
            .then(|| (w[w.len() - 2].to_owned(), w[w.len() - 1].to_owned()))
    })
}

/// The BGP timers of the edges' agents in this lab, and the agent's defaults: edge1's `[bgp]`
/// section parsed as it is, and with its timers left out.
pub fn bgp_timers(bgp: &BgpLab) -> Option<String> {
    const TIMERS: [&str; 4] = [
        "bfd_interval_ms",
        "bfd_multiplier",
        "hold_time",
        "keepalive_time",
    ];
    let text = bgp.edge_config(EDGE1).ok()?;
    let defaults: String = text
        .lines()
        .filter(|l| !TIMERS.iter().any(|k| l.starts_with(k)))
        .map(|l| format!("{l}\n"))
        .collect();
    let describe = |config: &str| -> Option<String> {
        let c = anycast::config::Config::parse(config).ok()?;
        let BgpMode::Managed(m) = c.bgp?.mode else {
            return None;
        };
        Some(format!(
            "BFD {} ms x {} (a silent edge is down after {:.1} s), hold time {} s",
            m.bfd_interval_ms,
            m.bfd_multiplier,
            f64::from(m.bfd_interval_ms * m.bfd_multiplier) / 1e3,
            m.hold_time
        ))
    };
    Some(format!(
        "timers in this lab: {}; the agent's defaults: {}",
        describe(&text)?,
        describe(&defaults)?
    ))
}

/// The router's BGP sessions with the edges, from `birdc show protocols` (a session that went
/// down and up again has another `since`).
pub fn sessions(bgp: &BgpLab) -> lab::Result<Sessions> {
    let out = bgp.birdc_router("show protocols")?;
    Ok(out
        .lines()
        .filter(|l| l.starts_with("edge"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // Name Proto Table State Since Info...
            (w.len() >= 5).then(|| (w[0].to_owned(), w[3..].join(" ")))
        })
        .collect())
}

/// Whether two readings hold the same sessions in the same states since the same times (BIRD
/// prints a time converted from its monotonic clock, so its milliseconds wobble between answers:
/// `same_routes` takes times within 50 ms as the same; a session that went down and up again has
/// a `since` seconds later).
fn same_sessions(a: &Sessions, b: &Sessions) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, va), (nb, vb))| na == nb && same_routes(va, vb))
}

/// Sessions of `now` that differ from `before`, leaving out those of `except` (an edge).
pub fn session_changes(before: &Sessions, now: &Sessions, except: Option<&str>) -> Vec<String> {
    before
        .iter()
        .filter(|(name, _)| except.is_none_or(|e| !name.starts_with(e)))
        .filter(|(name, was)| now.get(*name).is_none_or(|n| !same_routes(was, n)))
        .map(|(name, was)| {
            format!(
                "{name} was `{was}`, now `{}`",
                now.get(name).map_or("gone", String::as_str)
            )
        })
        .collect()
}

/// Waits (bounded) until BGP has settled: all four sessions with the edges established, their
/// BFD sessions up, the VIP routed over both edges, and nothing of that changed for 2 s. BGP can
/// be established before BFD is (a failure would then be noticed by the hold timer only), and
/// on a loaded machine sessions can flap while the lab starts. Returns the sessions' state.
pub fn wait_settled(bgp: &BgpLab) -> lab::Result<Sessions> {
    const STABLE: Duration = Duration::from_secs(2);
    let peers = [EDGE1_V4, EDGE2_V4, reference::EDGE1_V6, reference::EDGE2_V6];
    let start = Instant::now();
    let mut last: Option<(Sessions, Instant)> = None;
    let mut flaps = 0usize;
    loop {
        let now = sessions(bgp)?;
        let bfd = bgp.birdc_router("show bfd sessions")?;
        let bfd_up = |peer: &str| {
            bfd.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&peer) && w.get(2) == Some(&"Up")
            })
        };
        let good = now.len() == 4
            && now
                .values()
                .all(|v| v.starts_with("up ") && v.ends_with("Established"))
            && peers.iter().all(|p| bfd_up(p))
            && bgp.nexthops(VIP_V4)? == [EDGE1_V4, EDGE2_V4];
        match &last {
            Some((was, since)) if good && same_sessions(was, &now) => {
                if since.elapsed() >= STABLE {
                    if flaps > 0 {
                        println!(
                            "   (BGP took {:.1} s to settle: the sessions changed {flaps} time(s) after first coming up; an overloaded machine can starve BFD)",
                            start.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(now);
                }
            }
            _ => {
                flaps += usize::from(last.is_some());
                last = good.then(|| (now.clone(), Instant::now()));
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(lab::LabError::Setup(format!(
                "BGP did not settle within 60 s (sessions, BFD and the VIP's route over both edges, stable for {STABLE:?}); the router's BGP sessions:\n{now:#?}\nits BFD sessions:\n{bfd}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
