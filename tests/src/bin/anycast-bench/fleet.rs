//! `anycast-bench fleet`: the cost of one fleet revision at 100 PoPs x 10 edges, 1,000 VIPs and
//! 10,000 backends (docs/fleet.md): the document's size, what one write sends out of etcd, and
//! what one edge spends to validate, build and apply it (the agent's own code on the in-memory
//! dataplane twin; the kernel map writes are measured by the `xdp`/table sections).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anycast::config::{Config, RawConfig};
use anycast::control::{Controller, MemorySink};
use anycast::fleet::doc;
use anycast::fleet::report::{EdgeReport, HealthReport};

const EDGES: usize = 100 * 10;
const VIPS: usize = 1000;
const PER_VIP: usize = 10;
const RUNS: usize = 5;

fn backend(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).expect("small");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 256 + i)
}

/// 1,000 TCP VIPs (one address, ports 1..=1000), each with its own 10 backends (10,000
/// distinct addresses, weights 1..3) and a TCP health check.
fn document(ring_size: u32, weight_bump: usize) -> String {
    let mut s = format!("hash_seed = 42\nring_size = {ring_size}\n");
    for v in 0..VIPS {
        let _ = write!(
            s,
            "\n[[vip]]\naddress = \"203.0.113.10\"\nport = {}\nprotocol = \"tcp\"\nbackend = [",
            v + 1
        );
        for b in 0..PER_VIP {
            let i = v * PER_VIP + b;
            let w = 1 + (i + usize::from(i == weight_bump)) % 3;
            let _ = write!(
                s,
                "{}{{ address = \"{}\", weight = {w} }}",
                if b == 0 { "" } else { ", " },
                backend(i)
            );
        }
        s.push_str("]\n[vip.health]\nkind = \"tcp\"\ninterval_ms = 1000\n");
    }
    s
}

fn file(ring_size: u32) -> String {
    format!(
        "[agent]\ninterfaces = [\"eth0\"]\ntunnel_source = \"198.18.0.1\"\nring_size = {ring_size}\nhash_seed = 42\nmax_vips = 1024\nmax_backends = 16384\n"
    )
}

fn raw(ring_size: u32) -> RawConfig {
    toml_raw(&file(ring_size))
}

fn toml_raw(text: &str) -> RawConfig {
    // The agent reads its file with the same parser (`fleet::doc::read_file`).
    let path =
        std::env::temp_dir().join(format!("anycast-bench-fleet-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("writing the bench's agent file");
    let r = doc::read_file(&path).expect("the bench's agent file");
    let _ = std::fs::remove_file(path);
    r
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run() {
    println!(
        "## Fleet revision at scale ({EDGES} edges = 100 PoPs x 10, {VIPS} VIPs, {} backends; median of {RUNS})\n",
        VIPS * PER_VIP
    );
    println!(
        "| ring size | document | validate | build 1,000 tables | first apply | apply one weight change | report per edge | etcd out per write |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ring in [4099u32, 65537] {
        let text = document(ring, usize::MAX);
        let changed = document(ring, 5);
        let mut validate = Vec::new();
        let mut build = Vec::new();
        let mut first = Vec::new();
        let mut change = Vec::new();
        let mut report_bytes = 0;
        for _ in 0..RUNS {
            let t = Instant::now();
            let config = doc::merge(raw(ring), &text).expect("a valid document");
            validate.push(ms(t));
            let t = Instant::now();
            let fps = doc::fingerprints(&config);
            build.push(ms(t));
            let report = EdgeReport {
                edge: "pop042-edge07".into(),
                pop: "pop042".into(),
                applied_revision: 123_456,
                fingerprints: fps,
                ..Default::default()
            };
            report_bytes = serde_json::to_vec(&report).expect("serializes").len();
            let local: BTreeSet<IpAddr> =
                BTreeSet::from([IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))]);
            let t = Instant::now();
            let (mut ctl, _) = Controller::start(
                MemorySink::new(&config),
                "bench.toml".into(),
                config,
                local.clone(),
            )
            .expect("first apply");
            first.push(ms(t));
            let new = doc::merge(raw(ring), &changed).expect("valid");
            let t = Instant::now();
            let changes = ctl.reload("bench", Ok(new), local).expect("reload");
            change.push(ms(t));
            assert_eq!(changes.len(), 1, "one VIP changed");
        }
        let vote = serde_json::to_vec(&HealthReport {
            edge: "pop042-edge07".into(),
            down: Vec::new(),
        })
        .expect("serializes")
        .len();
        // Each edge watches the document (one event of its size) and the votes (unchanged by a
        // write); reports are written once each and watched by nobody.
        let out = EDGES * text.len();
        println!(
            "| {ring} | {:.0} KiB | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} KiB (vote {vote} B) | {:.0} MiB ({EDGES} x document) |",
            text.len() as f64 / 1024.0,
            median(validate),
            median(build),
            median(first),
            median(change),
            report_bytes as f64 / 1024.0,
            out as f64 / (1024.0 * 1024.0),
        );
    }
    println!();
    let _ = Config::parse(&file(4099)).expect("the bench's agent file is valid");
}
