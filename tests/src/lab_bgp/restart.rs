//! Restarting an edge's agent without route churn: its managed BIRD outlives an agent that is
//! killed and is re-adopted by the next one (anycast-userspace/src/announce/process.rs).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::BgpLab;
use crate::lab::{LabError, Result};

/// One look at the router's route to a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSample {
    /// Since the watch started.
    pub at: Duration,
    /// `birdc show route PREFIX` on the router, greeting left out: every path with the time
    /// it was learned, so a path withdrawn and learned again shows.
    pub bird: String,
}

impl BgpLab {
    /// Kills `edge`'s agent with SIGKILL (no withdrawal, no cleanup: a crash) and waits until it
    /// is gone.
    pub fn kill_edge(&mut self, edge: &str) -> Result<()> {
        let name = self
            .agents
            .remove(edge)
            .ok_or_else(|| LabError::Setup(format!("no agent running in {edge}")))?;
        self.lab
            .stop(&name, Signal::SIGKILL, Duration::from_secs(5))
            .map(|_| ())
    }

    /// Sends `signal` to `edge`'s running agent without waiting; returns how many processes got it.
    pub fn signal_edge(&self, edge: &str, signal: Signal) -> usize {
        self.agents
            .get(edge)
            .map_or(0, |name| self.lab.signal(name, signal))
    }

    /// The pid `edge`'s managed BIRD wrote (`bird.pid` in its run directory), if that process
    /// is alive.
    pub fn edge_bird_pid(&self, edge: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.edge_bird_dir(edge).join("bird.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_ok()
            .then_some(pid)
    }

    /// The router's `show route` for `prefix` ([`RouteSample::bird`]).
    pub fn router_route(&self, prefix: &str) -> Result<String> {
        router_route(&self.router_socket(), prefix)
    }
}

/// `birdc -s SOCKET show route PREFIX` (the control socket is a file: no namespace needed), the
/// greeting left out.
pub fn router_route(socket: &Path, prefix: &str) -> Result<String> {
    let out = std::process::Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .args(["show", "route", prefix])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| LabError::Setup(format!("running birdc: {e}")))?;
    // A route BIRD does not have is an answer too (`Network not found`, exit status 1): it
    // differs from any route, and says so.
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .lines()
    .filter(|l| !l.starts_with("BIRD ") && !l.trim().is_empty())
    .collect::<Vec<_>>()
    .join("\n"))
}

/// Samples [`router_route`] every `every` until `stop` is set (at most `limit`).
pub fn watch_route(
    socket: &Path,
    prefix: &str,
    every: Duration,
    limit: Duration,
    stop: &AtomicBool,
) -> Result<Vec<RouteSample>> {
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < limit {
        let at = t0.elapsed();
        samples.push(RouteSample {
            at,
            bird: router_route(socket, prefix)?,
        });
        std::thread::sleep(every.saturating_sub(t0.elapsed() - at));
    }
    Ok(samples)
}

/// Milliseconds since midnight of a BIRD time `HH:MM:SS.mmm` (a trailing `]` allowed).
fn bird_time_ms(word: &str) -> Option<i64> {
    let t = word.strip_suffix(']').unwrap_or(word);
    let (hms, ms) = t.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() || ms.len() != 3 {
        return None;
    }
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<i64>().ok()?)
}

/// Whether two `show route` answers hold the same paths, learned at the same times. BIRD keeps
/// a route's time on its monotonic clock and converts it to wall-clock time when it prints it,
/// so the printed milliseconds wobble by one or two between answers: times within 50 ms are the
/// same. A path withdrawn and learned again has a time seconds later, or is missing meanwhile.
pub fn same_routes(a: &str, b: &str) -> bool {
    let (wa, wb): (Vec<&str>, Vec<&str>) = (
        a.split_whitespace().collect(),
        b.split_whitespace().collect(),
    );
    wa.len() == wb.len()
        && wa.iter().zip(&wb).all(|(x, y)| {
            x == y
                || matches!((bird_time_ms(x), bird_time_ms(y)), (Some(p), Some(q)) if (p - q).abs() <= 50)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_times_wobble_but_a_relearned_path_differs() {
        let a =
            "203.0.113.10/32 unicast [edge1_ipv4 20:02:56.077] * (100) [AS65001i]\n via 198.18.2.2";
        let b = a.replace("56.077", "56.078");
        assert!(same_routes(a, &b));
        assert!(!same_routes(a, &a.replace("56.077", "59.301")));
        assert!(!same_routes(a, &a.replace("* (100)", "(100)")));
        assert!(!same_routes(a, "Network not found"));
        assert_eq!(bird_time_ms("00:00:01.002]"), Some(1002));
        assert_eq!(bird_time_ms("(100)"), None);
    }
}
