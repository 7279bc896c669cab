//! Packets per second per core in live-frames mode: BPF_PROG_TEST_RUN with
//! BPF_F_TEST_XDP_LIVE_FRAMES builds real xdp_frames from the input, runs the program on each
//! and carries out its verdict, so XDP_TX really leaves by the fixture's veth (whose peer runs
//! `anycast_pass`: veth delivers XDP_TX frames only to an XDP peer) and XDP_PASS really enters
//! the stack.
//!
//! Refill: each test run has a page pool of its own, initialised from the input once per page,
//! and a page the program rewrote (encapsulated) would come back to the pool with the tunnel
//! headers on it. So each run is one batch of `BATCH` frames, each on a fresh page, and the
//! kernel's time per frame includes the page set-up the driver would have done.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anycast_tests::fixture::{action_name, fixture_netns, ifindex, net, pin_to_cpu};

use super::xdp::{Path, config, paths, prepare, set_cache, stats};

/// Frames per run (the kernel's batch size, and its page pool's).
const BATCH: u32 = 256;
/// Runs per sample, and samples per path.
const RUNS_PER_SAMPLE: u32 = 400;
const SAMPLES: usize = 7;

/// The paths the live table covers: pass, local VIP, and the tracked encapsulations (cached).
fn live_paths() -> Vec<Path> {
    paths()
        .into_iter()
        .filter(|p| p.conns.is_none() && !p.name.contains("decap") && !p.name.contains("loop"))
        .collect()
}

pub fn run() {
    let mut config = config();
    let local: BTreeSet<IpAddr> = [IpAddr::V4(net::EDGE_V4), IpAddr::V6(net::EDGE_V6)].into();
    let ns = fixture_netns();
    let rows = ns.enter(|| {
        pin_to_cpu(0);
        let _peer = attach_pass(net::PEER);
        let dev = ifindex(net::DEV);
        let mut rows = Vec::new();
        for path in live_paths() {
            config.agent.encapsulation = path.encap;
            let (mut dp, cached) = prepare(anycast::EBPF_OBJECT, &config, &local, &path, Some(dev));
            set_cache(&mut dp, &cached, true);
            let mut samples = Vec::with_capacity(SAMPLES);
            for _ in 0..SAMPLES {
                let mut ns_total = 0.0;
                for _ in 0..RUNS_PER_SAMPLE {
                    let d = dp
                        .run_live(&path.frames[0], dev, BATCH)
                        .unwrap_or_else(|e| panic!("{}: live test run: {e}", path.name));
                    ns_total += d.as_secs_f64() * 1e9;
                }
                samples.push(ns_total / f64::from(RUNS_PER_SAMPLE));
            }
            rows.push((path.name.clone(), action_name(path.action), stats(samples)));
        }
        rows
    });
    println!(
        "## XDP live frames (BPF_F_TEST_XDP_LIVE_FRAMES on a veth, one core; {BATCH} fresh frames per run, {RUNS_PER_SAMPLE} runs per sample, min / median of {SAMPLES})\n"
    );
    println!("| path | verdict carried out | ns/frame (min / median) | Mpps per core (median) |");
    println!("|---|---|---:|---:|");
    for (name, action, (min, median)) in rows {
        println!(
            "| {name} | {action} | {min:.0} / {median:.0} | {:.2} |",
            1e3 / median
        );
    }
    println!();
}

/// `anycast_pass` attached natively to `dev` (in the calling thread's namespace) while the
/// returned object lives.
fn attach_pass(dev: &str) -> aya::Ebpf {
    use aya::programs::{Xdp, xdp::XdpMode};
    let mut ebpf = aya::Ebpf::load(anycast::EBPF_OBJECT).expect("loading the object");
    let prog: &mut Xdp = ebpf
        .program_mut("anycast_pass")
        .expect("anycast_pass")
        .try_into()
        .expect("XDP");
    prog.load().expect("loading anycast_pass");
    prog.attach(dev, XdpMode::Driver)
        .unwrap_or_else(|e| panic!("attaching anycast_pass to {dev}: {e}"));
    ebpf
}
