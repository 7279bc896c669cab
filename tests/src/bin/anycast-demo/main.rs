//! `cargo xtask demo`: anycast over BGP, live. The reference topology (tests/src/lab.rs) with its
//! routing done by BGP (tests/src/lab_bgp.rs): the router runs BIRD with ECMP and BFD, each
//! edge's agent runs its own BIRD and announces the VIPs; backends decapsulate.
//!
//! Usage: `anycast-demo [--seconds S] [--conns N] [--flows N] [--encapsulation ipip|gue]
//! [--fail edge1|edge2]` (root).
//!
//! Four phases of S seconds, separated by three routing events, each timed at the router:
//! 1. both edges announce, the router spreads flows over them (ECMP);
//! 2. `anycast drain-edge` on edge1: it withdraws, the router moves everything to edge2;
//! 3. `anycast undrain-edge` on edge1: ECMP again;
//! 4. the failing edge (edge2 unless `--fail edge1`) is black-holed: its link stays up but
//!    nothing gets through, so only BFD can tell; the router routes around it.
//!
//! Throughout, long-lived TCP connections stream data both ways (every byte checked) and short
//! TCP connections are opened one after another. Each short flow is attributed to the edge it
//! entered through by the edges' own connection-tracking maps (read-only), and checked against
//! the backend the edges' agents predict for it (`anycast lookup`). The live view is redrawn in
//! place on a terminal, one line a second otherwise. The summary states what the design
//! promises, checks it, and the demo exits 1 if a promise was broken, or if a BGP session
//! flapped besides the demo's own events (an overloaded machine can starve BFD: the run then
//! shows that, not the design). Ctrl-C at any point deletes the lab.

mod args;
mod bgp;
mod events;
mod fleet;
mod flows;
mod phases;
mod summary;
mod tracker;
mod view;

use std::time::{Duration, Instant};

use anycast_tests::lab::reference::{self, CLIENT, EDGE1, EDGE2, VIP_V4, VIP_V6};
use anycast_tests::lab::{self, ConnsOptions};
use anycast_tests::lab_bgp::{self, BgpLab};

use crate::args::Args;

const WEIGHTS: [u32; 3] = [1, 2, 3];
const EDGES: [&str; 2] = [EDGE1, EDGE2];
/// Connect timeout, and read timeout, of one short flow.
const FLOW_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a routing event may take to show in the router's kernel table.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Short flows in a phase below which the demo does not judge how ECMP spread them.
const ECMP_MIN_FLOWS: usize = 20;

fn main() {
    lab::install_interrupt_cleanup();
    let a = Args::parse(std::env::args().skip(1));
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

/// Short titles of the four phases.
fn phase_titles(fail: &str) -> [String; 4] {
    [
        "ECMP".to_owned(),
        "edge1 drained".to_owned(),
        "ECMP again".to_owned(),
        format!("{fail} dead"),
    ]
}

fn run(a: &Args) -> lab::Result<bool> {
    let variant = reference::Options {
        encapsulation: a.encapsulation.clone(),
        weights: WEIGHTS,
        ..Default::default()
    };
    println!("== building the lab in network namespaces; BGP decides where the VIP is routed");
    println!(
        "   client {} --> router (BIRD, AS {}): one route to the VIP, ECMP over the edges that announce it",
        reference::CLIENT_V4,
        lab_bgp::ROUTER_AS
    );
    for edge in EDGES {
        println!(
            "                       |== eBGP + BFD ==> {edge} {} (agent + its BIRD, AS {})",
            bgp::edge_v4(edge),
            lab_bgp::EDGE_AS
        );
    }
    println!(
        "   VIP {VIP_V4} (tcp/80) on both edges; each picks the backend with the same Maglev table and sends the packet there ({}):",
        a.encapsulation
    );
    println!(
        "   backend1 {} (weight {}), backend2 {} (weight {}), edge1 itself (weight {}); backends answer the client directly",
        reference::BACKEND1_V4,
        WEIGHTS[0],
        reference::BACKEND2_V4,
        WEIGHTS[1],
        WEIGHTS[2]
    );
    let t = Instant::now();
    let fleet_cache =
        std::env::temp_dir().join(format!("anycast-demo-fleet-{}", std::process::id()));
    let bgp = BgpLab::start(lab_bgp::Options {
        reference: variant,
        extra_config: if a.fleet {
            fleet::sections(&fleet_cache)
        } else {
            Default::default()
        },
        ..lab_bgp::Options::default()
    })?;
    println!("   namespaces: {}", bgp.lab.namespaces().join(" "));
    println!(
        "== lab up, agents attached, both edges announce {VIP_V4}/32 and {VIP_V6}/128 over BGP ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let etcd = if a.fleet {
        Some(fleet::start(&bgp)?)
    } else {
        None
    };
    let tracker = tracker::Tracker::open(&bgp).map_err(lab::LabError::Setup)?;
    let known = bgp::wait_settled(&bgp)?;
    bgp::show_router(&bgp)?;
    let timers = bgp::bgp_timers(&bgp);
    if let Some(t) = &timers {
        println!("   {t}");
    }

    let target = reference::vip_v4_tcp();
    println!(
        "== opening {} long-lived connections to {target} (data both ways, every byte checked)",
        a.conns
    );
    let conns = bgp.lab.start_long_lived(
        CLIENT,
        target,
        ConnsOptions {
            conns: a.conns,
            // Bounded; the demo stops them itself after the last phase.
            duration: Duration::from_secs(a.seconds * 4 + 120),
            ..ConnsOptions::default()
        },
    )?;
    // Opened in time or not, the phases start: the summary counts what was established.
    let _ = conns.wait_connected(Instant::now() + Duration::from_secs(30));

    let started = Instant::now();
    let mut record = phases::run(a, &bgp, &tracker, &conns, started, known)?;
    let report = conns.stop();
    for c in bgp::session_changes(&record.sessions, &bgp::sessions(&bgp)?, Some(a.fail)) {
        record.flapped.push(format!("phase 4: {c}"));
    }
    println!(
        "\n== summary ({} encapsulation, {:.1} s)",
        a.encapsulation,
        started.elapsed().as_secs_f64()
    );
    print!(
        "{}",
        view::render(
            started.elapsed(),
            (3, &phase_titles(a.fail)),
            &bgp::route_line(&bgp),
            &record.flows,
            &report,
            None
        )
    );
    let ok = summary::summarize(
        a,
        timers.as_deref(),
        &record.events,
        &record.flapped,
        &record.flows,
        &report,
    );
    if a.fleet {
        println!("== fleet view after the phases");
        fleet::show(&bgp)?;
    }
    println!("== cleaning up");
    drop(etcd);
    let _ = std::fs::remove_dir_all(&fleet_cache);
    drop(bgp);
    println!("   done");
    Ok(ok)
}
