//! Lab prefixes: each lab claims one no other lab uses, registers it while it lives (so that a
//! signal handler can clean up labs whose destructors will not run), and everything that carries
//! it is removed at the end.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{LabError, RUN_DIR, Result, io_err};
use crate::netns;

/// The prefixes of this process's live labs (see [`install_interrupt_cleanup`]).
static LIVE_LABS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A prefix no other lab uses, claimed by creating its run directory: `mkdir` is atomic, so two
/// test processes whose pids agree modulo 10,000 cannot both take it (and one's cleanup then
/// delete the other's namespaces). Registered as live until [`release`].
pub(super) fn claim() -> Result<String> {
    std::fs::create_dir_all(RUN_DIR).map_err(io_err(format!("creating {RUN_DIR}")))?;
    for _ in 0..10_000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("ac{:04}{:02}-", std::process::id() % 10_000, n % 100);
        if !netns::with_prefix(&prefix).is_empty() {
            continue;
        }
        match std::fs::create_dir(Path::new(RUN_DIR).join(&prefix)) {
            Ok(()) => {
                LIVE_LABS.lock().expect("lab registry").push(prefix.clone());
                return Ok(prefix);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(format!("creating {RUN_DIR}/{prefix}"))(e)),
        }
    }
    Err(LabError::Setup("no free lab prefix".to_owned()))
}

/// [`clean_prefix`], and the prefix is no longer live.
pub(super) fn release(prefix: &str) {
    clean_prefix(prefix);
    if let Ok(mut live) = LIVE_LABS.lock() {
        live.retain(|p| p != prefix);
    }
}

/// Deletes every namespace whose name starts with `prefix` (killing the processes in it first,
/// [`netns::delete_with_prefix`]) and the lab's run directory with its bpffs. The same logic as
/// `cargo xtask clean-lab`.
pub fn clean_prefix(prefix: &str) {
    netns::delete_with_prefix(prefix);
    let dir = Path::new(RUN_DIR).join(prefix);
    let _ = nix::mount::umount2(&dir.join("bpf"), nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&dir);
}

/// For binaries (the demo): on SIGINT/SIGTERM, delete every live lab of this process and exit
/// with 130. Call it first thing in `main`, before any thread is spawned: it blocks the signals
/// in the calling thread (threads spawned later inherit that) and waits for them on a thread of
/// its own. Child processes inherit that mask (std's `Command` does not reset it): the ones a
/// [`Lab`](super::Lab) starts get an empty one ([`Lab::spawn`](super::Lab::spawn)).
pub fn install_interrupt_cleanup() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // A shell starts background jobs with SIGINT ignored, and an ignored signal never
        // reaches `sigwait`: take the default disposition back (the signal stays blocked).
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
    }
    set.thread_block().expect("blocking SIGINT/SIGTERM");
    std::thread::spawn(move || {
        let signal = set
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.as_str().to_owned());
        eprintln!("\n{signal}: cleaning up the lab");
        let prefixes = LIVE_LABS.lock().map(|l| l.clone()).unwrap_or_default();
        for prefix in prefixes {
            clean_prefix(&prefix);
        }
        std::process::exit(130);
    });
}
