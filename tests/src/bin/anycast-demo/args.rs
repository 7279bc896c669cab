//! The command line.

use anycast_tests::lab::reference::{EDGE1, EDGE2};

pub struct Args {
    pub seconds: u64,
    pub conns: usize,
    pub flows: usize,
    pub encapsulation: String,
    /// The edge that fails hard in the last phase.
    pub fail: &'static str,
    /// Every agent under `[fleet]` with a real etcd; the fleet view is shown.
    pub fleet: bool,
}

impl Args {
    /// The arguments after the program's name; exits with the usage on a bad one or `--help`.
    pub fn parse(mut args: impl Iterator<Item = String>) -> Args {
        let mut a = Args {
            seconds: 6,
            conns: 60,
            flows: 2000,
            encapsulation: "ipip".to_owned(),
            fail: EDGE2,
            fleet: false,
        };
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
                "--fail" => {
                    a.fail = match args.next().as_deref() {
                        Some("edge1") => EDGE1,
                        Some("edge2") => EDGE2,
                        _ => usage("--fail is edge1 or edge2"),
                    }
                }
                "--fleet" => a.fleet = true,
                "-h" | "--help" => usage(""),
                other => usage(&format!("unknown argument {other}")),
            }
        }
        a
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("{problem}");
    }
    eprintln!(
        "usage: anycast-demo [--seconds S (per phase, default 6)] [--conns N (long-lived, default 60)] \
         [--flows N (short flows per phase, at most; default 2000)] [--encapsulation ipip|gue] \
         [--fail edge1|edge2 (the edge that fails in phase 4, default edge2)] \
         [--fleet (every agent under [fleet] with a real etcd; shows `anycast fleet status`)]"
    );
    std::process::exit(2);
}
