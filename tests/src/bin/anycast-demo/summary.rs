//! What the design promises, checked against what the demo recorded.

use std::time::Duration;

use anycast_tests::lab::reference::EDGE1;
use anycast_tests::lab::{self, ConnsReport};

use crate::args::Args;
use crate::events::Event;
use crate::flows::{Flow, Prediction, Via};
use crate::{ECMP_MIN_FLOWS, EDGES, FLOW_TIMEOUT};

/// Prints the routing events and the checks; whether every promise held.
pub fn summarize(
    a: &Args,
    timers: Option<&str>,
    events: &[Event],
    flapped: &[String],
    flows: &[Flow],
    report: &ConnsReport,
) -> bool {
    let mut problems: Vec<String> = Vec::new();
    let ms = |d: Option<Duration>| {
        d.map_or("-".to_owned(), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1e3)
        })
    };

    println!("routing events, timed at the router (kernel route polled every 10 ms):");
    for e in events {
        println!("  {:>8}  {}", ms(e.took()), e.title);
        if let Err(err) = &e.converged {
            problems.push(err.clone());
        }
        if let Some(p) = &e.problem {
            problems.push(p.clone());
        }
    }
    if let Some(t) = timers {
        println!("  ({t})");
    }
    let [drain, _undrain, fail] = [0, 1, 2].map(|i| events.get(i));

    println!("checks:");
    let mut check = |ok: bool, text: String| {
        println!("  {} {text}", if ok { "ok     " } else { "BROKEN " });
        if !ok {
            problems.push(text);
        }
    };

    // What the rest rests on: the routing changed only by the demo's events.
    check(
        flapped.is_empty(),
        format!(
            "the router's BGP sessions with the edges stayed established, except {}'s after its failure{}",
            a.fail,
            if flapped.is_empty() {
                String::new()
            } else {
                format!(
                    ": {} changes besides (an overloaded machine can starve BFD; what follows then shows that, not the design):\n          {}",
                    flapped.len(),
                    flapped.join("\n          ")
                )
            }
        ),
    );

    // Every answered flow: on the backend both edges' agents name.
    let answered: Vec<&Flow> = flows.iter().filter(|f| f.answer.is_ok()).collect();
    let on_predicted = answered.iter().filter(|f| f.on_predicted()).count();
    check(
        on_predicted == answered.len() && !answered.is_empty(),
        format!(
            "{on_predicted} of {} answered short flows came from the backend both edges' `anycast lookup` names, whichever edge they entered",
            answered.len()
        ),
    );
    for f in answered.iter().filter(|f| !f.on_predicted()).take(5) {
        println!(
            "          {} answered by {:?}, predicted {:?}",
            f.local.map_or("-".to_owned(), |l| l.to_string()),
            f.answer,
            f.predicted
        );
    }
    let unseen = answered.iter().filter(|f| f.via == Via::Unseen).count();
    check(
        unseen == 0,
        format!(
            "{} of {} answered short flows found in an edge's connection table (where they entered)",
            answered.len() - unseen,
            answered.len()
        ),
    );

    // ECMP: both edges carry new flows while both announce.
    for p in [0, 2] {
        let in_phase: Vec<&&Flow> = answered.iter().filter(|f| f.phase == p).collect();
        let per_edge = EDGES.map(|e| in_phase.iter().filter(|f| f.via.includes(e)).count());
        if in_phase.len() >= ECMP_MIN_FLOWS {
            check(
                per_edge.iter().all(|n| *n > 0),
                format!(
                    "phase {}: ECMP spread new flows over both edges (edge1 {}, edge2 {})",
                    p + 1,
                    per_edge[0],
                    per_edge[1]
                ),
            );
        } else {
            println!(
                "  -       phase {}: {} flows, too few to judge ECMP",
                p + 1,
                in_phase.len()
            );
        }
    }

    // Once the router has dropped an edge, no new flow enters it.
    for (event, edge, p) in [(drain, EDGE1, 1), (fail, a.fail, 3)] {
        let Some(Ok(converged)) = event.map(|e| &e.converged) else {
            continue;
        };
        let after: Vec<&Flow> = flows
            .iter()
            .filter(|f| f.phase == p && f.started > *converged)
            .collect();
        let wrong = after.iter().filter(|f| f.via.includes(edge)).count();
        if after.is_empty() {
            println!(
                "  -       phase {}: no new flow after the router dropped {edge}",
                p + 1
            );
            continue;
        }
        check(
            wrong == 0,
            format!(
                "phase {}: after the router dropped {edge}, {wrong} of {} new flows entered it",
                p + 1,
                after.len()
            ),
        );
    }

    // Failed short flows: only those in flight towards the dead edge before the router
    // converged, or those whose backend is the dead edge's own server.
    let fail_window = fail.and_then(|e| {
        let c = e.converged.as_ref().ok()?;
        // A flow may take two timeouts (connect, then the answer).
        Some((e.at.checked_sub(FLOW_TIMEOUT * 2)?, *c))
    });
    let (mut in_window, mut to_dead, mut unexpected) = (0, 0, Vec::new());
    for f in flows.iter().filter(|f| f.answer.is_err()) {
        let after_failure = fail_window.is_some_and(|(from, _)| f.started >= from);
        if after_failure && f.predicted == Prediction::Backend(a.fail) {
            to_dead += 1;
        } else if fail_window.is_some_and(|(from, to)| f.started >= from && f.started <= to) {
            in_window += 1;
        } else {
            unexpected.push(f);
        }
    }
    check(
        unexpected.is_empty(),
        format!(
            "{} short flows failed outside the failure's window: drain and undrain lose none{}",
            unexpected.len(),
            if in_window + to_dead > 0 {
                format!(
                    " ({in_window} in flight towards {} before the router routed around it; {to_dead} whose backend is {}'s own server, which died with it)",
                    a.fail, a.fail
                )
            } else {
                String::new()
            }
        ),
    );
    for f in unexpected.iter().take(5) {
        println!(
            "          {} phase {} via {}: {:?}",
            f.local.map_or("-".to_owned(), |l| l.to_string()),
            f.phase + 1,
            f.via.label(),
            f.answer
        );
    }

    // Long-lived connections: those whose backend lives survive everything.
    let (dead, live): (Vec<_>, Vec<_>) = report
        .conns
        .iter()
        .partition(|c| c.established && c.backend == a.fail);
    let clean = live.iter().filter(|c| c.is_clean()).count();
    check(
        clean == live.len() && live.len() + dead.len() == report.requested,
        format!(
            "{clean} of {} long-lived connections to live backends clean across drain, undrain and {}'s failure: {} resets, {} bytes lost, {} corrupt (longest echo gap {} ms)",
            report.requested - dead.len(),
            a.fail,
            live.iter().map(|c| u64::from(c.resets)).sum::<u64>(),
            live.iter().map(|c| c.lost()).sum::<u64>(),
            live.iter().filter(|c| c.corrupt_at.is_some()).count(),
            live.iter()
                .map(|c| c.max_gap)
                .max()
                .unwrap_or_default()
                .as_millis()
        ),
    );
    if dead.is_empty() {
        println!(
            "  -       long-lived connections whose backend was on {} itself: 0 ({} serves no backend in this lab; `--fail edge1` shows that case). The design does not keep those: their server is gone with the edge",
            a.fail, a.fail
        );
    } else {
        println!(
            "  -       long-lived connections whose backend was on {} itself: {}. They end with it, as the design says (their server is gone): {} clean, {} lost",
            a.fail,
            dead.len(),
            dead.iter().filter(|c| c.is_clean()).count(),
            lab::conns::human_bytes(dead.iter().map(|c| c.lost()).sum::<u64>())
        );
    }

    if problems.is_empty() {
        println!(
            "\nOK: BGP moved the VIP (drain {}, undrain {}, {} dead {}) and no promise broke: every flow kept the backend both edges compute",
            ms(drain.and_then(Event::took)),
            ms(events.get(1).and_then(Event::took)),
            a.fail,
            ms(fail.and_then(Event::took)),
        );
        true
    } else {
        println!("\nPROBLEM: {} check(s) failed:", problems.len());
        for p in &problems {
            println!("  - {p}");
        }
        false
    }
}
