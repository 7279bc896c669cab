//! The differential fuzzer: random and mutated frames through the real program
//! (BPF_PROG_TEST_RUN) and through a host model of what it should do ([`model`]), compared on
//! the action, the backend (the outer destination), every output byte, and per chunk the outcome
//! counters. Any frame the program passes untouched by its verdict (not decapsulated, not
//! encapsulated for the kernel to forward) must come out byte for byte as it went in.
//!
//! Reproducible: the frames, the world's phases and the model depend on the seed alone; a
//! disagreement names the seed, the packet index and the chunk size. See docs/dataplane.md,
//! "The differential fuzzer".

mod craft;
mod decap;
mod emit;
mod generate;
mod model;
mod parse;
mod track;
pub mod world;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anycast_common::counter;

use crate::fixture::{Dataplane, XDP_DROP, XDP_PASS, action_name};
use crate::packet::hex_diff;

/// splitmix64: small, fast, and the same sequence everywhere for a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What the model expects of one frame.
#[derive(Clone, Debug)]
pub struct Expect {
    pub action: u32,
    /// The output frame (`None` for a drop, whose bytes do not matter).
    pub output: Option<Vec<u8>>,
    /// The one outcome counter the frame adds to.
    pub counter: u32,
    /// Where it went: the outer destination, or the local backend.
    pub to: Option<IpAddr>,
    /// The detail counters it adds to ([`DETAILS`]).
    pub details: Vec<u32>,
}

/// The counters of which every frame adds to exactly one.
pub const OUTCOMES: [u32; 15] = [
    counter::PASS,
    counter::LOCAL,
    counter::ENCAP,
    counter::DECAP,
    counter::NO_BACKEND,
    counter::PARSE_ERROR,
    counter::OVERSIZE,
    counter::DECAP_REFUSED,
    counter::FRAGMENT,
    counter::IPV6_EXT,
    counter::NO_TUNNEL_SOURCE,
    counter::INTERNAL_ERROR,
    counter::FIB_FAIL,
    counter::SECOND_CHANCE,
    counter::ICMP_TOO_BIG,
];

/// Counters that describe how a frame went, compared like the outcomes (the `conn_*` ones are
/// left out: the model does not count lookups).
pub const DETAILS: [u32; 10] = [
    counter::FIB_NO_NEIGH,
    counter::TX,
    counter::ENCAP_GUE,
    counter::ENCAP_CROSS_FAMILY,
    counter::HINT_SENT,
    counter::SECOND_CHANCE_TABLE,
    counter::SECOND_CHANCE_LAST_HOP,
    counter::FIB_LOOKUP,
    counter::ICMP_STEERED,
    counter::FRAGMENT_STEERED,
];

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub packets: u64,
    pub seed: u64,
    /// Frames per chunk: the world changes phase (weights, encapsulation, previous tables) and
    /// tracking starts empty at every chunk.
    pub chunk: u64,
    /// Ingress device of the runs (the fixture's veth: a resolved next hop means XDP_TX).
    pub ifindex: u32,
}

#[derive(Default)]
pub struct Report {
    pub packets: u64,
    pub elapsed: Duration,
    /// Frames per category (as drawn), per variant (VLAN tags, mutations) and per expected
    /// outcome.
    pub categories: BTreeMap<String, u64>,
    pub variants: BTreeMap<String, u64>,
    /// Detail counters the model expected (and the program's agreed with), summed.
    pub detail_counts: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub disagreements: u64,
    /// The first few disagreements, described.
    pub details: Vec<String>,
}

const MAX_DETAILS: usize = 10;

impl Report {
    fn disagree(&mut self, s: String) {
        self.disagreements += 1;
        if self.details.len() < MAX_DETAILS {
            self.details.push(s);
        }
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let secs = self.elapsed.as_secs_f64();
        let _ = writeln!(
            s,
            "{} packets in {:.1} s: {:.0} packets/s, {} disagreements",
            self.packets,
            secs,
            self.packets as f64 / secs.max(1e-9),
            self.disagreements
        );
        let _ = writeln!(s, "by category:");
        for (k, v) in &self.categories {
            let _ = writeln!(s, "  {k:<32} {v}");
        }
        let _ = writeln!(s, "variants (on top of a category):");
        for (k, v) in &self.variants {
            let _ = writeln!(s, "  {k:<32} {v}");
        }
        let _ = writeln!(s, "by outcome (expected, and met):");
        for (k, v) in &self.outcomes {
            let _ = writeln!(s, "  {k:<32} {v}");
        }
        let _ = writeln!(s, "detail counters (expected, and met):");
        for (k, v) in &self.detail_counts {
            let _ = writeln!(s, "  {k:<32} {v}");
        }
        for d in &self.details {
            let _ = writeln!(s, "{d}");
        }
        s
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the fuzzer against the loaded program `dp` (fresh maps), on the calling thread (which
/// must be inside the fixture namespace, pinned to one CPU).
pub fn run(dp: &mut Dataplane, o: &Options) -> Report {
    let mut rng = Rng::new(o.seed);
    let mut w = world::World::new(o.seed);
    w.next_phase(&mut rng);
    w.write_static(dp);
    w.write(dp);
    let g = generate::Generator::new(&mut rng, &w);
    let mut st = track::State::default();
    let mut report = Report::default();
    let mut expected = [0u64; counter::COUNT as usize];
    let mut before = dp.stats();
    let start = Instant::now();
    for i in 0..o.packets {
        if i > 0 && i % o.chunk == 0 {
            check_counters(dp, &mut before, &mut expected, &mut report, o, i);
            w.next_phase(&mut rng);
            dp.clear_conns();
            dp.clear_frags();
            st = track::State::default();
            w.write(dp);
        }
        let (base, variants, f) = craft::packet(&mut rng, &w, &g);
        for v in &variants {
            *report.variants.entry((*v).to_string()).or_default() += 1;
        }
        let category = format!("{base}{}", variants.concat());
        let e = model::steer(&w, &mut st, &f);
        expected[e.counter as usize] += 1;
        for &d in &e.details {
            expected[d as usize] += 1;
            *report
                .detail_counts
                .entry(counter::NAMES[d as usize].to_string())
                .or_default() += 1;
        }
        *report.categories.entry(base.to_string()).or_default() += 1;
        *report
            .outcomes
            .entry(format!(
                "{} {}",
                action_name(e.action),
                counter::NAMES[e.counter as usize]
            ))
            .or_default() += 1;
        let got = match dp.run(&f, Some(o.ifindex)) {
            Ok(r) => r,
            Err(err) => {
                report.disagree(format!(
                    "seed {} packet {i} ({category}): BPF_PROG_TEST_RUN failed: {err}\n  input {}",
                    o.seed,
                    hex(&f)
                ));
                continue;
            }
        };
        let mut problems = Vec::new();
        if got.action != e.action {
            problems.push(format!(
                "action {} (model: {})",
                action_name(got.action),
                action_name(e.action)
            ));
        }
        if got.action != XDP_DROP
            && let Some(out) = &e.output
            && got.output != *out
        {
            problems.push(format!(
                "output differs (model -> program):\n{}",
                hex_diff(out, &got.output)
            ));
        }
        let forwarded_by_kernel = [counter::DECAP, counter::ENCAP, counter::SECOND_CHANCE];
        if got.action == XDP_PASS && !forwarded_by_kernel.contains(&e.counter) && got.output != f {
            problems.push("passed, but not untouched".into());
        }
        if !problems.is_empty() {
            report.disagree(format!(
                "DISAGREEMENT seed {} packet {i} chunk {} ({category}): {}\n  model: {} {} to {:?}\n  input   {}\n  model   {}\n  program {}\n  reproduce: cargo xtask fuzz --seed {} --packets {} --chunk {}",
                o.seed,
                o.chunk,
                problems.join("; "),
                action_name(e.action),
                counter::NAMES[e.counter as usize],
                e.to,
                hex(&f),
                e.output.as_deref().map_or("(drop)".into(), hex),
                hex(&got.output),
                o.seed,
                i + 1,
                o.chunk
            ));
        }
        report.packets += 1;
    }
    check_counters(dp, &mut before, &mut expected, &mut report, o, o.packets);
    report.elapsed = start.elapsed();
    report
}

/// The outcome counters the chunk added, against the model's.
fn check_counters(
    dp: &Dataplane,
    before: &mut [u64; counter::COUNT as usize],
    expected: &mut [u64; counter::COUNT as usize],
    report: &mut Report,
    o: &Options,
    i: u64,
) {
    let now = dp.stats();
    for c in OUTCOMES.into_iter().chain(DETAILS) {
        let got = now[c as usize] - before[c as usize];
        let want = expected[c as usize];
        if got != want {
            report.disagree(format!(
                "DISAGREEMENT seed {} chunk ending at packet {i}: counter {} added {got}, model {want}",
                o.seed,
                counter::NAMES[c as usize]
            ));
        }
    }
    *before = now;
    *expected = [0; counter::COUNT as usize];
}

/// Runs the fuzzer in a fresh fixture namespace on a fresh program, pinned to CPU 0 (the
/// per-CPU LRU lists of the tracking maps then see every run). `ifindex` in `o` is ignored:
/// the namespace's veth is the ingress.
pub fn run_in_fixture(o: &Options) -> Report {
    let ns = crate::fixture::fixture_netns();
    ns.enter(|| {
        crate::fixture::pin_to_cpu(0);
        let mut dp = Dataplane::load(world::SIZES);
        let o = Options {
            ifindex: crate::fixture::ifindex(crate::fixture::net::DEV),
            ..*o
        };
        run(&mut dp, &o)
    })
}
