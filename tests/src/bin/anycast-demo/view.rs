//! What the demo shows while it runs and in its summary: short flows by phase and edge, the
//! long-lived connections, redrawn in place on a terminal or one line a second otherwise.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use anycast_tests::lab::ConnsReport;
use anycast_tests::lab::reference::{BACKEND_NAMES, EDGE1, EDGE2, VIP_V4};

use crate::WEIGHTS;
use crate::events::Event;
use crate::flows::{Flow, Via};

/// Short flows by (phase, edge they entered through): answers per backend, on the predicted
/// backend, failed.
#[derive(Default)]
struct Cell {
    per_backend: BTreeMap<String, usize>,
    total: usize,
    on_predicted: usize,
    failed: usize,
}

fn cells(flows: &[Flow]) -> BTreeMap<(usize, usize), (Via, Cell)> {
    let order = |v: Via| match v {
        Via::Edge(i) => i,
        Via::Both => 2,
        Via::Unseen => 3,
    };
    let mut m: BTreeMap<(usize, usize), (Via, Cell)> = BTreeMap::new();
    for f in flows {
        let (_, c) = m
            .entry((f.phase, order(f.via)))
            .or_insert_with(|| (f.via, Cell::default()));
        c.total += 1;
        match &f.answer {
            Ok(name) => *c.per_backend.entry(name.clone()).or_default() += 1,
            Err(_) => c.failed += 1,
        }
        c.on_predicted += usize::from(f.on_predicted());
    }
    m
}

pub fn render(
    t: Duration,
    (phase, titles): (usize, &[String; 4]),
    route: &str,
    flows: &[Flow],
    conns: &ConnsReport,
    rate: Option<[f64; 2]>,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "t = {:>5.1} s   phase {}/4: {:<14} router: {VIP_V4} {route}",
        t.as_secs_f64(),
        phase + 1,
        titles[phase]
    );
    if let Some(r) = rate {
        let _ = writeln!(
            s,
            "VIP packets/s steered by edge1 {:.0}, by edge2 {:.0}",
            r[0], r[1]
        );
    }
    let _ = writeln!(
        s,
        "short flows (one TCP connection each): the edge they entered through, the backend that answered"
    );
    let _ = write!(s, "  {:<16} {:<6}", "phase", "via");
    for name in BACKEND_NAMES {
        let _ = write!(s, " {name:>9}");
    }
    let _ = writeln!(s, " {:>7} {:>10} {:>7}", "total", "predicted", "failed");
    let mut last_phase = None;
    for ((p, _), (via, c)) in cells(flows) {
        let label = if last_phase == Some(p) {
            String::new()
        } else {
            format!("{} {}", p + 1, titles[p])
        };
        last_phase = Some(p);
        let _ = write!(s, "  {label:<16} {:<6}", via.label());
        for name in BACKEND_NAMES {
            let _ = write!(s, " {:>9}", c.per_backend.get(name).copied().unwrap_or(0));
        }
        let _ = writeln!(s, " {:>7} {:>10} {:>7}", c.total, c.on_predicted, c.failed);
    }
    let _ = write!(s, "  {:<16} {:<6}", "weight", "");
    for w in WEIGHTS {
        let _ = write!(s, " {w:>9}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "long-lived connections (data both ways, every byte checked), by backend:"
    );
    for line in conns.to_string().lines() {
        let _ = writeln!(s, "  {line}");
    }
    s
}

pub fn progress_line(
    t: Duration,
    title: &str,
    route: &str,
    flows: &[Flow],
    conns: &ConnsReport,
    rate: [f64; 2],
) -> String {
    let count = |f: &dyn Fn(&Flow) -> bool| flows.iter().filter(|x| f(x)).count();
    format!(
        "t={:>5.1}s {title:<13} | router {route:<17} | VIP pkt/s edge1 {:>5.0} edge2 {:>5.0} | short flows {:>4} (edge1 {:>4}, edge2 {:>4}), {:>4} on predicted backend, {} failed | long-lived {}/{} live, {} resets",
        t.as_secs_f64(),
        rate[0],
        rate[1],
        flows.len(),
        count(&|f| f.via.includes(EDGE1)),
        count(&|f| f.via.includes(EDGE2)),
        count(&|f| f.on_predicted()),
        count(&|f| f.answer.is_err()),
        conns.live(),
        conns.requested,
        conns.resets()
    )
}

/// A terminal view redrawn in place, or plain lines when stdout is not a terminal.
pub struct View {
    tty: bool,
    lines: usize,
}

impl View {
    pub fn new(tty: bool) -> View {
        View { tty, lines: 0 }
    }

    fn clear_frame(&mut self, out: &mut impl std::io::Write) {
        if self.tty && self.lines > 0 {
            // Up to the frame's first line, clear to the end of the screen.
            let _ = write!(out, "\x1b[{}A\x1b[J", self.lines);
            self.lines = 0;
        }
    }

    pub fn frame(&mut self, frame: &str) {
        let mut out = std::io::stdout().lock();
        self.clear_frame(&mut out);
        let _ = write!(out, "{frame}");
        self.lines = frame.lines().count();
        let _ = out.flush();
    }

    pub fn line(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// A line that stays above the redrawn frame.
    pub fn note(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        self.clear_frame(&mut out);
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    pub fn note_event(&mut self, e: &Event) {
        let mut text = e.lines.join("\n");
        if let Err(err) = &e.converged {
            text.push_str(&format!("\n   PROBLEM: {err}"));
        }
        if let Some(p) = &e.problem {
            text.push_str(&format!("\n   PROBLEM: {p}"));
        }
        self.note(&text);
    }
}
