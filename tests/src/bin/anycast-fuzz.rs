//! `anycast-fuzz --packets N [--seed S] [--chunk C]`: N random and mutated frames through the
//! XDP program (BPF_PROG_TEST_RUN) and through the host model, compared on action, backend,
//! every output byte and the outcome counters (`anycast_tests::fuzz`). Prints packets/s and a
//! tally per category and outcome; on a disagreement, the seed, the packet index, the input and
//! both outputs in hex, and exits 1. Run with `cargo xtask fuzz` (release mode, root).

use anycast_tests::fuzz::{Options, run_in_fixture};

fn main() {
    let mut o = Options {
        packets: 100_000,
        seed: 20_261_204,
        chunk: 10_000,
        ifindex: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> u64 {
            let v = args
                .next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")));
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{name} {v}: not a non-negative integer")))
        };
        match a.as_str() {
            "--packets" => o.packets = value("--packets"),
            "--seed" => o.seed = value("--seed"),
            "--chunk" => o.chunk = value("--chunk"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if o.chunk == 0 {
        usage("--chunk must be at least 1");
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("anycast-fuzz needs root (BPF_PROG_TEST_RUN, network namespaces)");
        std::process::exit(2);
    }
    println!(
        "anycast-fuzz: seed {}, {} packets, chunks of {}",
        o.seed, o.packets, o.chunk
    );
    let report = run_in_fixture(&o);
    print!("{}", report.summary());
    if report.disagreements > 0 {
        std::process::exit(1);
    }
}

fn usage(problem: &str) -> ! {
    eprintln!("anycast-fuzz: {problem}\nusage: anycast-fuzz --packets N [--seed S] [--chunk C]");
    std::process::exit(2);
}
