//! Long-lived TCP connections with data flowing both ways, every byte checked: run it in a
//! client's network namespace against `anycast-lab-server`s behind a VIP, move routes while it
//! runs, and read per backend how many connections were reset, stalled, lost or corrupted bytes.
//!
//! Usage: `anycast-lab-conns [OPTIONS] TARGET` where TARGET is `ADDR:PORT` or `[ADDR6]:PORT`.
//!
//! ```text
//! --conns N        connections (default 100, at most 2000)
//! --duration SECS  streaming time once all are open (default 10, at most 3600)
//! --rate BYTES     bytes per second per connection, each way (default 16384)
//! --stall-ms MS    no echo for this long with bytes outstanding = a stall (default 1000)
//! --netns NAME     enter the named namespace NAME (/run/netns/NAME) first (else: the current one)
//! --progress SECS  print a progress line this often (default 0: none)
//! --per-conn       print one line per connection at the end
//! ```
//!
//! SIGINT/SIGTERM end the streaming early; the report is printed all the same. Exit status 0 when
//! every connection was established and clean (no reset, nothing lost or corrupt), 1 otherwise.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anycast_tests::lab::conns::{ConnsOptions, LongLived, human_bytes};

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("anycast-lab-conns: {problem}");
    }
    eprintln!(
        "usage: anycast-lab-conns [--conns N] [--duration SECS] [--rate BYTES] [--stall-ms MS] \
         [--netns NAME] [--progress SECS] [--per-conn] ADDR:PORT"
    );
    std::process::exit(2);
}

fn number<T: std::str::FromStr>(args: &mut impl Iterator<Item = String>, flag: &str) -> T {
    args.next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage(&format!("{flag} needs a number")))
}

fn main() {
    let mut opts = ConnsOptions::default();
    let mut netns: Option<String> = None;
    let mut progress = 0u64;
    let mut per_conn = false;
    let mut target: Option<SocketAddr> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--conns" => opts.conns = number(&mut args, "--conns"),
            "--duration" => {
                opts.duration = Duration::from_secs_f64(number(&mut args, "--duration"))
            }
            "--rate" => opts.rate = number(&mut args, "--rate"),
            "--stall-ms" => opts.stall = Duration::from_millis(number(&mut args, "--stall-ms")),
            "--progress" => progress = number(&mut args, "--progress"),
            "--netns" => netns = Some(args.next().unwrap_or_else(|| usage("--netns needs a name"))),
            "--per-conn" => per_conn = true,
            "-h" | "--help" => usage(""),
            other if other.starts_with('-') => usage(&format!("unknown option {other}")),
            other => {
                target = Some(
                    other
                        .parse()
                        .unwrap_or_else(|e| usage(&format!("target {other}: {e}"))),
                );
            }
        }
    }
    let Some(target) = target else {
        usage("no target")
    };
    if opts.conns == 0 || opts.conns > 2000 {
        usage("--conns must be 1..=2000");
    }
    if opts.duration > Duration::from_secs(3600) {
        usage("--duration must be at most 3600");
    }
    if opts.rate == 0 {
        usage("--rate must be positive");
    }

    // SIGINT/SIGTERM: stop streaming, drain, report (blocked here, awaited on a thread; threads
    // spawned later inherit the mask).
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.thread_block().expect("blocking SIGINT/SIGTERM");
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        std::thread::spawn(move || {
            if set.wait().is_ok() {
                interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }

    let conns = match &netns {
        Some(name) => LongLived::start_in(name, target, opts.clone()).unwrap_or_else(|e| {
            eprintln!("anycast-lab-conns: {e}");
            std::process::exit(2)
        }),
        None => LongLived::start(target, opts.clone()),
    };
    eprintln!(
        "anycast-lab-conns: {} connections to {target}, {} s at {}/s each way",
        opts.conns,
        opts.duration.as_secs_f64(),
        human_bytes(opts.rate)
    );
    let mut next_progress = Instant::now() + Duration::from_secs(progress.max(1));
    while !conns.is_finished() {
        if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("anycast-lab-conns: interrupted; draining");
            break;
        }
        if progress > 0 && Instant::now() >= next_progress {
            println!("{}", conns.snapshot().progress());
            next_progress += Duration::from_secs(progress);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = conns.stop();
    print!("{report}");
    if per_conn {
        print!("{}", report.per_conn());
    }
    std::process::exit(if report.is_clean() { 0 } else { 1 });
}
