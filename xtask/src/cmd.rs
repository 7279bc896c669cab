//! Running child commands with their output streamed to ours.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context as _, bail};

/// The cargo that runs us (`$CARGO`), so that nested builds use the same toolchain.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a command to completion with inherited stdio; an error when it fails.
///
/// A Ctrl-C reaches the child (same process group) and lets it clean up (the demo deletes its
/// namespaces), while xtask must stay to report how it ended. So SIGINT and SIGTERM get a handler
/// that does nothing. Not a blocked mask, nor SIG_IGN: both are inherited across fork and exec
/// (std's `Command` keeps the parent's signal mask), and a blocked SIGTERM reached cargo, the test
/// binaries and every agent and server the labs started, which then never saw the SIGTERM that
/// was to stop them. A caught signal's disposition is reset to the default by exec.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    println!("xtask: running {}", describe(cmd));
    outlive_interrupts()?;
    let status = cmd
        .stdin(Stdio::inherit())
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    LAST_EXIT_CODE.store(status.code().unwrap_or(-1), Ordering::Relaxed);
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

extern "C" fn interrupted(_: nix::libc::c_int) {}

fn outlive_interrupts() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    // SA_RESTART: the wait for the child goes on after the handler.
    let action = SigAction::new(
        SigHandler::Handler(interrupted),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .with_context(|| format!("installing a {sig} handler"))?;
        set.add(sig);
    }
    // Whatever our own parent blocked is not passed on to the child either.
    set.thread_unblock()
        .context("unblocking SIGINT and SIGTERM")
}

/// Exit code of the last command [`run`] waited for (-1: killed by a signal).
pub static LAST_EXIT_CODE: AtomicI32 = AtomicI32::new(0);

/// Runs a command quietly and returns its stdout, or None when it cannot be run or fails.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
