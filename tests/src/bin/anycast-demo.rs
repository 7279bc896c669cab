//! `cargo xtask demo`: the reference topology (tests/src/lab.rs) with live agents, and client
//! traffic to the VIP showing which backend each flow lands on.
//!
//! Usage: `anycast-demo [--flows N]` (root). Ctrl-C at any point deletes the lab.
//! The steps are functions so that the demo can grow (a route change mid-stream, a live view).

use std::time::Duration;

use anycast_tests::lab::{self, Lab, reference};

fn main() {
    lab::install_interrupt_cleanup();
    let mut flows = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--flows" => {
                flows = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| usage("--flows needs a number"));
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("anycast-demo creates network namespaces and loads XDP programs: run it as root");
        std::process::exit(1);
    }
    if let Err(e) = run(flows) {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("{problem}");
    }
    eprintln!("usage: anycast-demo [--flows N]");
    std::process::exit(2);
}

fn run(flows: usize) -> lab::Result<()> {
    let topology = reference::topology();
    println!("== building the reference topology");
    let mut lab = Lab::build(&topology)?;
    println!("   namespaces: {}", lab.namespaces().join(" "));
    println!(
        "   client {} -> router -> edge1 {} / edge2 {} -> backend1 {}, backend2 {}, edge1 (local)",
        reference::CLIENT_V4,
        reference::EDGE1_V4,
        reference::EDGE2_V4,
        reference::BACKEND1_V4,
        reference::BACKEND2_V4
    );
    println!("== starting agents (edges steer, backends decapsulate) and backend servers");
    lab.start_dataplane()?;

    traffic(&lab, reference::EDGE1, flows)?;
    traffic(&lab, reference::EDGE2, flows)?;
    println!("== cleaning up");
    drop(lab);
    println!("   done");
    Ok(())
}

/// Routes the VIP to `edge` and sends `flows` TCP connections to it from the client.
fn traffic(lab: &Lab, edge: &str, flows: usize) -> lab::Result<()> {
    reference::route_vips_to(lab, edge)?;
    let target = reference::vip_v4_tcp();
    println!("== router sends {target} to {edge}; {flows} TCP connections from the client");
    let tally = lab.tcp_flows(reference::CLIENT, target, flows, Duration::from_secs(60))?;
    print!("{tally}");
    Ok(())
}
