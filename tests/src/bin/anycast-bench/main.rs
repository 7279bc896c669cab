//! `anycast-bench`: the dataplane's per-packet cost (XDP paths through BPF_PROG_TEST_RUN, with
//! the next-hop cache and with the FIB), map memory, Maglev table builds, table writes and the
//! control plane's latency. Run with `cargo xtask bench` (release mode, root). Prints Markdown.
//!
//! `anycast-bench SECTION` runs one section: `xdp [--baseline OBJECT]` (with `live` and
//! `memory`), `live` (packets/s in live-frames mode), `maglev`, `control`, `fleet` (a fleet
//! revision at 1,000 edges, no root needed); no argument runs them all.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anycast::config::Config;
use anycast::plan::maglev::{self, MaglevBackend};

mod control_plane;
mod fleet;
mod live;
mod memory;
mod xdp;

const MAGLEV_RUNS: usize = 7;
const MAGLEV_BUILD_RUNS: usize = 21;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let section = args.get(1).map(String::as_str);
    // The Maglev table builds are pure computation: no privileges needed.
    if section == Some("maglev") {
        maglev_build();
        return;
    }
    if section == Some("fleet") {
        fleet::run();
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("anycast-bench needs root (BPF_PROG_TEST_RUN, network namespaces)");
        std::process::exit(2);
    }
    match section {
        Some("xdp") => {
            let baseline = match args.get(2).map(String::as_str) {
                Some("--baseline") => {
                    let path = args.get(3).expect("--baseline OBJECT");
                    Some(std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}")))
                }
                Some(other) => panic!("anycast-bench xdp: unknown argument {other}"),
                None => None,
            };
            xdp::run(baseline.as_deref());
            live::run();
            memory::run();
        }
        Some("live") => live::run(),
        Some("control") => control_plane::run(),
        Some(other) => {
            panic!("anycast-bench: unknown section {other} (xdp, live, maglev, control, fleet)")
        }
        None => {
            xdp::run(None);
            live::run();
            memory::run();
            maglev_build();
            table_io(&xdp::config());
            control_plane::run();
            fleet::run();
        }
    }
}

/// `maglev::build` at M = 65537 for N = 10 .. 10000 IPv4 backends, weights cycling 1, 2, 3.
fn maglev_build() {
    const M: u32 = 65537;
    println!("## Maglev table build (M = {M}, min and median of {MAGLEV_BUILD_RUNS} builds)\n");
    println!("| backends | min (ms) | median (ms) |");
    println!("|---:|---:|---:|");
    for n in [10u32, 100, 1000, 10_000] {
        let backends: Vec<MaglevBackend> = (0..n)
            .map(|i| {
                let a = Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8);
                MaglevBackend::new(IpAddr::V4(a), 1 + i % 3)
            })
            .collect();
        let mut samples = Vec::with_capacity(MAGLEV_BUILD_RUNS);
        for _ in 0..MAGLEV_BUILD_RUNS {
            let t = Instant::now();
            let table = maglev::build(&backends, M, 1);
            samples.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(table.len(), M as usize);
        }
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        println!("| {n} | {min:.2} | {:.2} |", median(samples));
    }
    println!("\n(weights 1..3, cycling; IPv4 backends)");
}

/// Writing and reading one 65,537-slot table of `RINGS`: element by element (one `bpf(2)` call
/// per slot) against the batch commands the agent uses (`anycast::dataplane::batch`).
fn table_io(config: &Config) {
    use std::os::fd::AsFd as _;
    let mut dp = anycast::dataplane::Dataplane::load(config).expect("loading the object");
    let m = config.agent.ring_size;
    let keys: Vec<u32> = (0..m).collect();
    let values: Vec<u32> = (0..m).map(|i| i % 7).collect();
    let mut rings: aya::maps::Array<_, u32> = aya::maps::Array::try_from(
        dp.ebpf_mut()
            .map_mut(anycast_common::map_names::RINGS)
            .expect("RINGS"),
    )
    .expect("RINGS is an array");
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("write, element by element", Vec::new()),
        ("write, BPF_MAP_UPDATE_BATCH", Vec::new()),
        ("read, element by element", Vec::new()),
        ("read, BPF_MAP_LOOKUP_BATCH", Vec::new()),
    ];
    for _ in 0..MAGLEV_RUNS {
        let t = Instant::now();
        for (&k, &v) in keys.iter().zip(&values) {
            rings.set(k, v, 0).expect("write");
        }
        rows[0].1.push(t.elapsed().as_secs_f64() * 1e3);
        let fd = aya::maps::IterableMap::map(&rings).fd().as_fd();
        let t = Instant::now();
        assert!(anycast::dataplane::batch::update(fd, &keys, &values).expect("batch write"));
        rows[1].1.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let read: Vec<u32> = keys
            .iter()
            .map(|k| rings.get(k, 0).expect("read"))
            .collect();
        rows[2].1.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(read, values);
        let fd = aya::maps::IterableMap::map(&rings).fd().as_fd();
        let t = Instant::now();
        let read = anycast::dataplane::batch::lookup(fd, m, m)
            .expect("batch read")
            .expect("supported");
        rows[3].1.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(read.len(), m as usize);
    }
    println!(
        "\n## Table writes and reads (one table of M = {m} slots, median of {MAGLEV_RUNS} runs)\n"
    );
    println!("| operation | time (ms) |");
    println!("|---|---:|");
    for (name, samples) in rows {
        println!("| {name} | {:.2} |", median(samples));
    }
}
