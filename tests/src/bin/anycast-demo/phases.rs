//! The four phases: short flows sent throughout, a routing event between phases, the live view
//! redrawn meanwhile.

use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use anycast::api::Client;
use anycast_tests::lab::reference::{self, CLIENT};
use anycast_tests::lab::{self, LongLived};
use anycast_tests::lab_bgp::BgpLab;

use crate::args::Args;
use crate::bgp::{Sessions, route_line, session_changes, sessions};
use crate::events::{self, Event};
use crate::flows::{Flow, Sender};
use crate::tracker::Tracker;
use crate::view::{View, progress_line, render};
use crate::{EDGES, phase_titles};

/// What the phases recorded.
pub struct Record {
    pub events: Vec<Event>,
    /// BGP sessions that changed state other than by the demo's own events.
    pub flapped: Vec<String>,
    pub flows: Vec<Flow>,
    /// The router's sessions as the last event found them.
    pub sessions: Sessions,
}

/// Runs the phases from `started`, with `known` the router's sessions once BGP settled.
pub fn run(
    a: &Args,
    bgp: &BgpLab,
    tracker: &Tracker,
    conns: &LongLived,
    started: Instant,
    mut known: Sessions,
) -> lab::Result<Record> {
    let titles = phase_titles(a.fail);
    let tty = std::io::stdout().is_terminal();
    let agents = EDGES.map(|e| Client::new(bgp.api_socket(e)));
    let client: IpAddr = reference::CLIENT_V4.parse().expect("literal");
    let sender = Sender {
        tracker,
        agents: &agents,
        source: client,
        target: reference::vip_v4_tcp(),
        per_phase: a.flows,
    };
    let flows: Mutex<Vec<Flow>> = Mutex::new(Vec::new());
    let phase = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut events: Vec<Event> = Vec::new();
    let mut flapped: Vec<String> = Vec::new();
    println!(
        "== phase 1/4: {} for {} s: short flows and long-lived connections over both edges",
        titles[0], a.seconds
    );

    std::thread::scope(|s| -> lab::Result<()> {
        // Short flows, one after another, from the client's namespace. The control API's
        // sockets and the pinned maps are not network-namespaced, so lookups and attribution
        // run from there too.
        let traffic = s.spawn(|| {
            bgp.lab
                .in_netns(CLIENT, || sender.run(&phase, &stop, &flows))
        });

        let mut view = View::new(tty);
        let mut rates = Rates::default();
        let mut pending: Option<ScopedJoinHandle<'_, Event>> = None;
        let mut route = route_line(bgp);
        let mut next_tick = Instant::now();
        'phases: for p in 0..4 {
            if p > 0 {
                if let Some(h) = pending.take() {
                    finish(h, &mut view, &mut events);
                }
                // No session may have changed: drain and undrain keep them up.
                let now = sessions(bgp)?;
                for c in session_changes(&known, &now, None) {
                    view.note(&format!("   BGP session flapped during phase {p}: {c}"));
                    flapped.push(format!("phase {p}: {c}"));
                }
                known = now;
                let (title, action) = events::plan(p, a.fail);
                view.note(&format!(
                    "== {:.1} s: {title}",
                    started.elapsed().as_secs_f64()
                ));
                let phase = &phase;
                pending = Some(s.spawn(move || {
                    events::run(bgp, title, action, || phase.store(p, Ordering::Relaxed))
                }));
                view.note(&format!(
                    "== phase {}/4: {} for {} s",
                    p + 1,
                    titles[p],
                    a.seconds
                ));
            }
            let end = Instant::now() + Duration::from_secs(a.seconds);
            while Instant::now() < end {
                if traffic.is_finished() {
                    // It stops only when told to, or on an error (returned below).
                    break 'phases;
                }
                if pending.as_ref().is_some_and(|h| h.is_finished()) {
                    finish(pending.take().expect("checked"), &mut view, &mut events);
                }
                if Instant::now() >= next_tick {
                    next_tick += Duration::from_secs(1);
                    route = route_line(bgp);
                    rates.sample(&agents);
                    if !tty {
                        let f = flows.lock().expect("flows");
                        view.line(&progress_line(
                            started.elapsed(),
                            &titles[p],
                            &route,
                            &f,
                            &conns.snapshot(),
                            rates.per_second,
                        ));
                    }
                }
                if tty {
                    let f = flows.lock().expect("flows");
                    view.frame(&render(
                        started.elapsed(),
                        (p, &titles),
                        &route,
                        &f,
                        &conns.snapshot(),
                        Some(rates.per_second),
                    ));
                }
                std::thread::sleep(Duration::from_millis(if tty { 250 } else { 50 }));
            }
        }
        if let Some(h) = pending.take() {
            finish(h, &mut view, &mut events);
        }
        stop.store(true, Ordering::Relaxed);
        view.note("== stopping: the last short flow, then draining the long-lived connections");
        traffic
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;

    Ok(Record {
        events,
        flapped,
        flows: flows.into_inner().expect("flows"),
        sessions: known,
    })
}

/// Waits for an event's thread, shows what it found and keeps it.
fn finish(h: ScopedJoinHandle<'_, Event>, view: &mut View, events: &mut Vec<Event>) {
    let e = h
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    view.note_event(&e);
    events.push(e);
}

/// VIP packets per second each edge's dataplane steered, from its agent's counters.
#[derive(Default)]
struct Rates {
    per_second: [f64; 2],
    last: [Option<(Instant, u64)>; 2],
}

impl Rates {
    fn sample(&mut self, agents: &[Client; 2]) {
        for (i, agent) in agents.iter().enumerate() {
            let now = Instant::now();
            let Ok(stats) = agent.stats() else {
                continue;
            };
            let n: u64 = stats.vips.iter().map(|v| v.traffic.packets).sum();
            if let Some((then, before)) = self.last[i] {
                self.per_second[i] =
                    n.saturating_sub(before) as f64 / now.duration_since(then).as_secs_f64();
            }
            self.last[i] = Some((now, n));
        }
    }
}
