//! The routing events between the phases: what the operator (or the failure) does, and when the
//! router's kernel route showed it.

use std::time::{Duration, Instant};

use anycast_tests::lab::reference::{EDGE1, EDGE1_V4, EDGE2_V4, VIP_V4};
use anycast_tests::lab_bgp::BgpLab;

use crate::CONVERGE_TIMEOUT;
use crate::bgp::{bfd_timers, edge_v4, indented, other, route_line};

/// A routing event and what the router made of it.
#[derive(Clone, Debug)]
pub struct Event {
    pub title: String,
    pub at: Instant,
    /// When the router's kernel route had changed as expected, or why it did not.
    pub converged: Result<Instant, String>,
    /// What the operator's command said, the router's view afterwards.
    pub lines: Vec<String>,
    /// A promise of the event broken (e.g. `drain-edge` timed out).
    pub problem: Option<String>,
}

impl Event {
    pub fn took(&self) -> Option<Duration> {
        self.converged
            .as_ref()
            .ok()
            .map(|c| c.duration_since(self.at))
    }
}

pub enum Action {
    Drain,
    Undrain,
    Fail(&'static str),
}

/// The event that starts `phase` (1 to 3).
pub fn plan(phase: usize, fail: &'static str) -> (String, Action) {
    match phase {
        1 => (
            "operator drains edge1: `anycast drain-edge` (its agent withdraws every VIP over BGP)"
                .to_owned(),
            Action::Drain,
        ),
        2 => (
            "operator undrains edge1: `anycast undrain-edge` (its agent announces the VIPs again)"
                .to_owned(),
            Action::Undrain,
        ),
        _ => (
            format!(
                "{fail} fails hard: its link is black-holed (the link stays up, nothing gets through: only BFD can tell)"
            ),
            Action::Fail(fail),
        ),
    }
}

/// Takes the action and waits (bounded) until the router's kernel route shows it. `taken` is
/// called the moment the action takes effect (new short flows count for the next phase).
pub fn run(bgp: &BgpLab, title: String, action: Action, taken: impl FnOnce()) -> Event {
    let mut lines = Vec::new();
    let mut problem = None;
    // The router's kernel route, polled until it goes through `want`: when it did.
    let watch = |want: &[&str]| {
        bgp.wait_nexthops(VIP_V4, want, CONVERGE_TIMEOUT)
            .map(|_| Instant::now())
            .map_err(|e| e.to_string())
    };
    let cli = |args: &[&str], lines: &mut Vec<String>| -> Option<String> {
        match bgp.anycast(EDGE1, args) {
            Ok(o) => {
                lines.push(format!(
                    "   $ anycast {}   (on edge1; exit {})",
                    args.join(" "),
                    o.status.code().unwrap_or(-1)
                ));
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                lines.extend(text.lines().map(|l| format!("     {l}")));
                (!o.status.success())
                    .then(|| format!("`anycast {}` on edge1 failed ({})", args[0], o.status))
            }
            Err(e) => Some(format!("`anycast {}`: {e}", args[0])),
        }
    };
    let at;
    let converged = match action {
        Action::Drain => {
            at = Instant::now();
            taken();
            std::thread::scope(|s| {
                let watcher = s.spawn(|| watch(&[EDGE2_V4]));
                problem = cli(
                    &["drain-edge", "--timeout", "10", "--quiet-ms", "1000"],
                    &mut lines,
                );
                watcher.join().expect("route watcher")
            })
        }
        Action::Undrain => {
            at = Instant::now();
            taken();
            std::thread::scope(|s| {
                let watcher = s.spawn(|| watch(&[EDGE1_V4, EDGE2_V4]));
                problem = cli(&["undrain-edge"], &mut lines);
                watcher.join().expect("route watcher")
            })
        }
        Action::Fail(edge) => {
            // Read while the session is up (a session that is down shows other timers).
            let timers = bfd_timers(bgp, edge_v4(edge));
            at = Instant::now();
            let cut = bgp.black_hole(edge).map_err(|e| e.to_string());
            taken();
            let converged = cut.and_then(|()| watch(&[edge_v4(other(edge))]));
            if let Some((interval, timeout)) = timers {
                lines.push(format!(
                    "   BFD with {edge}: a packet every {interval} s, declared down after {timeout} s without one"
                ));
            }
            if let Ok(p) = bgp.birdc_router("show protocols") {
                lines.push("   $ birdc show protocols   (on the router)".to_owned());
                lines.extend(
                    indented(&p)
                        .into_iter()
                        .filter(|l| l.contains(edge) || l.contains("Name")),
                );
            }
            converged
        }
    };
    if let Ok(c) = &converged {
        lines.insert(
            0,
            format!(
                "   router: {VIP_V4} {} after {:.0} ms",
                route_line(bgp),
                c.duration_since(at).as_secs_f64() * 1e3
            ),
        );
    }
    Event {
        title,
        at,
        converged,
        lines,
        problem,
    }
}
