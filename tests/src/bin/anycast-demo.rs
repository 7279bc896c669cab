//! `cargo xtask demo`: the reference topology (tests/src/lab.rs) with live agents on two edges,
//! real client traffic to a VIP, and the route moved from edge1 to edge2 mid-stream.
//!
//! Usage: `anycast-demo [--seconds S] [--conns N] [--flows N] [--encapsulation ipip|gue]` (root).
//!
//! While long-lived TCP connections stream data both ways, the client also opens short TCP
//! connections one after another. The live view (redrawn in place on a terminal, one line per
//! second otherwise) shows how many short flows each backend got through each edge, and the
//! long-lived connections' bytes and resets. After S seconds the router's VIP route moves to
//! edge2; after S more the demo stops the connections, prints a summary and deletes the lab.
//! Ctrl-C at any point deletes the lab too.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anycast_tests::lab::{self, ConnsOptions, ConnsReport, Lab, reference};

struct Args {
    seconds: u64,
    conns: usize,
    flows: usize,
    encapsulation: String,
}

const WEIGHTS: [u32; 3] = [1, 2, 3];

fn main() {
    lab::install_interrupt_cleanup();
    let mut a = Args {
        seconds: 6,
        conns: 60,
        flows: 2000,
        encapsulation: "ipip".to_owned(),
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> u64 {
        v.and_then(|n| n.parse().ok())
            .unwrap_or_else(|| usage(&format!("{flag} needs a number")))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = number(args.next(), "--seconds").clamp(1, 600),
            "--conns" => a.conns = number(args.next(), "--conns").clamp(1, 1000) as usize,
            "--flows" => a.flows = number(args.next(), "--flows").clamp(1, 100_000) as usize,
            "--encapsulation" => {
                a.encapsulation = args.next().unwrap_or_default();
                if a.encapsulation != "ipip" && a.encapsulation != "gue" {
                    usage("--encapsulation is ipip or gue");
                }
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("anycast-demo creates network namespaces and loads XDP programs: run it as root");
        std::process::exit(1);
    }
    match run(&a) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::exit(1);
        }
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("{problem}");
    }
    eprintln!(
        "usage: anycast-demo [--seconds S (per route, default 6)] [--conns N (long-lived, default 60)] \
         [--flows N (short flows per route, at most; default 2000)] [--encapsulation ipip|gue]"
    );
    std::process::exit(2);
}

/// Short flows per edge per backend, and failures per edge.
#[derive(Default)]
struct Tally {
    flows: BTreeMap<&'static str, BTreeMap<String, usize>>,
    failed: BTreeMap<&'static str, usize>,
}

fn run(a: &Args) -> lab::Result<bool> {
    let topology = reference::topology_with(&reference::Options {
        encapsulation: a.encapsulation.clone(),
        weights: WEIGHTS,
    });
    println!("== building the reference topology in network namespaces");
    let mut lab = Lab::build(&topology)?;
    println!("   namespaces: {}", lab.namespaces().join(" "));
    println!(
        "   client {} -> router -> edge1 {} | edge2 {} -> backend1 {}, backend2 {}, edge1 (local)",
        reference::CLIENT_V4,
        reference::EDGE1_V4,
        reference::EDGE2_V4,
        reference::BACKEND1_V4,
        reference::BACKEND2_V4
    );
    println!(
        "   VIP {} (tcp/80), weights backend1 {} : backend2 {} : edge1 {}, {} encapsulation",
        reference::VIP_V4,
        WEIGHTS[0],
        WEIGHTS[1],
        WEIGHTS[2],
        a.encapsulation
    );
    println!("== starting agents (edges steer, backends decapsulate) and backend servers");
    lab.start_dataplane()?;
    reference::route_vips_to(&lab, reference::EDGE1)?;
    println!("== router: VIP -> edge1");

    let target = reference::vip_v4_tcp();
    println!(
        "== opening {} long-lived connections to {target} (data both ways, every byte checked)",
        a.conns
    );
    let conns = lab.start_long_lived(
        reference::CLIENT,
        target,
        ConnsOptions {
            conns: a.conns,
            // Bounded; the demo stops them itself after both phases.
            duration: Duration::from_secs(a.seconds * 2 + 60),
            ..ConnsOptions::default()
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while conns.snapshot().phase == "connecting" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }

    let tty = std::io::stdout().is_terminal();
    let tally = Mutex::new(Tally::default());
    let edge = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let edges = [reference::EDGE1, reference::EDGE2];
    let started = Instant::now();
    let phase = Duration::from_secs(a.seconds);
    let result = std::thread::scope(|s| -> lab::Result<()> {
        // Short flows, in batches; the route moves only between batches, so every flow is
        // counted under the edge it entered through.
        let traffic = s.spawn(|| -> lab::Result<()> {
            let mut routed = 0;
            let mut sent = [0usize; 2];
            while !stop.load(Ordering::Relaxed) {
                let e = edge.load(Ordering::Relaxed);
                if e != routed {
                    reference::route_vips_to(&lab, edges[e])?;
                    routed = e;
                }
                if sent[e] >= a.flows {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let batch = 10.min(a.flows - sent[e]);
                let records = lab.tcp_flow_records(
                    reference::CLIENT,
                    target,
                    batch,
                    Duration::from_secs(10),
                )?;
                sent[e] += batch;
                let mut t = tally.lock().expect("tally");
                for r in records {
                    match r.answer {
                        Ok(name) => {
                            *t.flows
                                .entry(edges[e])
                                .or_default()
                                .entry(name)
                                .or_default() += 1;
                        }
                        Err(_) => *t.failed.entry(edges[e]).or_default() += 1,
                    }
                }
                // Leave the CPU some room for the long-lived connections (2-core machines).
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });

        let mut view = View::new(tty);
        let mut steered = [0u64; 2];
        let mut last_stats = Instant::now() - Duration::from_secs(10);
        let mut moved_at: Option<Duration> = None;
        loop {
            let t = started.elapsed();
            if moved_at.is_none() && t >= phase {
                edge.store(1, Ordering::Relaxed);
                moved_at = Some(t);
                view.note(&format!(
                    "== {:.1} s: router moves the VIP route edge1 -> edge2 (long-lived connections keep streaming)",
                    t.as_secs_f64()
                ));
            }
            if t >= phase * 2 || traffic.is_finished() {
                break;
            }
            if last_stats.elapsed() >= Duration::from_secs(1) {
                for (i, e) in edges.iter().enumerate() {
                    steered[i] = steered_packets(&lab, e).unwrap_or(steered[i]);
                }
                last_stats = Instant::now();
            }
            let snapshot = conns.snapshot();
            let frame = render(
                t,
                edges[edge.load(Ordering::Relaxed)],
                &tally.lock().expect("tally"),
                &snapshot,
                steered,
            );
            view.show(
                &frame,
                &progress_line(
                    t,
                    edges[edge.load(Ordering::Relaxed)],
                    &tally.lock().expect("tally"),
                    &snapshot,
                ),
            );
            std::thread::sleep(Duration::from_millis(if tty { 250 } else { 1000 }));
        }
        stop.store(true, Ordering::Relaxed);
        traffic
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    result?;

    println!("== stopping: draining the long-lived connections");
    let report = conns.stop();
    let mut steered = [0u64; 2];
    for (i, e) in edges.iter().enumerate() {
        steered[i] = steered_packets(&lab, e).unwrap_or(0);
    }
    let t = tally.lock().expect("tally");
    println!("\n== summary");
    print!(
        "{}",
        render(started.elapsed(), reference::EDGE2, &t, &report, steered)
    );
    let short_failed: usize = t.failed.values().sum();
    let short_total: usize =
        t.flows.values().flat_map(|m| m.values()).sum::<usize>() + short_failed;
    let ok = report.is_clean() && short_failed == 0;
    println!(
        "\n{} {} long-lived connections moved edge1 -> edge2 mid-stream: {} resets, {} bytes lost, {} corrupt; \
         {} short flows, {} failed",
        if ok { "OK:" } else { "PROBLEM:" },
        report.established(),
        report.resets(),
        report.lost(),
        report.corrupt(),
        short_total,
        short_failed
    );
    if ok {
        println!(
            "   both edges build the same Maglev table, so a flow keeps its backend whichever edge it enters"
        );
    }
    println!("== cleaning up");
    drop(t);
    drop(lab);
    println!("   done");
    Ok(ok)
}

/// Packets the agent in `ns` steered (`encap` + `local`), through `anycast stats`.
fn steered_packets(lab: &Lab, ns: &str) -> Option<u64> {
    let bin = lab::find_binary("anycast", "ANYCAST_BIN").ok()?;
    let out = std::process::Command::new(bin)
        .arg("stats")
        .arg("--socket")
        .arg(lab.agent_socket_path(ns))
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                matches!(w.next(), Some("encap" | "local"))
                    .then(|| w.next()?.parse::<u64>().ok())?
            })
            .sum(),
    )
}

fn render(
    t: Duration,
    routed_to: &str,
    tally: &Tally,
    conns: &ConnsReport,
    steered: [u64; 2],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "t = {:>5.1} s   router: VIP {} -> {routed_to}",
        t.as_secs_f64(),
        reference::VIP_V4
    );
    let _ = writeln!(
        s,
        "short flows (one TCP connection each), by the edge they entered through:"
    );
    let _ = write!(s, "  {:<8}", "edge");
    for name in reference::BACKEND_NAMES {
        let _ = write!(s, " {name:>9}");
    }
    let _ = writeln!(
        s,
        " {:>7} {:>7} {:>16}",
        "total", "failed", "edge steered pkts"
    );
    for (i, edge) in [reference::EDGE1, reference::EDGE2].iter().enumerate() {
        let m = tally.flows.get(edge);
        let _ = write!(s, "  {edge:<8}");
        let mut total = 0;
        for name in reference::BACKEND_NAMES {
            let n = m.and_then(|m| m.get(name)).copied().unwrap_or(0);
            total += n;
            let _ = write!(s, " {n:>9}");
        }
        let _ = writeln!(
            s,
            " {total:>7} {:>7} {:>16}",
            tally.failed.get(edge).copied().unwrap_or(0),
            steered[i]
        );
    }
    let _ = write!(s, "  {:<8}", "weight");
    for w in WEIGHTS {
        let _ = write!(s, " {w:>9}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "long-lived connections (data both ways, every byte checked):"
    );
    for line in conns.to_string().lines() {
        let _ = writeln!(s, "  {line}");
    }
    s
}

fn progress_line(t: Duration, routed_to: &str, tally: &Tally, conns: &ConnsReport) -> String {
    let per_edge = |e: &str| tally.flows.get(e).map_or(0, |m| m.values().sum::<usize>());
    format!(
        "t={:>5.1}s route->{routed_to} short flows via edge1 {} via edge2 {} failed {} | long-lived live {}/{} sent {} received {} resets {}",
        t.as_secs_f64(),
        per_edge(reference::EDGE1),
        per_edge(reference::EDGE2),
        tally.failed.values().sum::<usize>(),
        conns.live(),
        conns.requested,
        lab::conns::human_bytes(conns.sent()),
        lab::conns::human_bytes(conns.received()),
        conns.resets()
    )
}

/// A terminal view redrawn in place, or plain lines when stdout is not a terminal.
struct View {
    tty: bool,
    lines: usize,
}

impl View {
    fn new(tty: bool) -> View {
        View { tty, lines: 0 }
    }

    fn show(&mut self, frame: &str, line: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            if self.lines > 0 {
                // Up to the frame's first line, clear to the end of the screen.
                let _ = write!(out, "\x1b[{}A\x1b[J", self.lines);
            }
            let _ = write!(out, "{frame}");
            self.lines = frame.lines().count();
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    /// A line that stays above the redrawn frame.
    fn note(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty && self.lines > 0 {
            let _ = write!(out, "\x1b[{}A\x1b[J", self.lines);
            self.lines = 0;
        }
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}
