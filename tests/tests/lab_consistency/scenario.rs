//! A scenario run: what the connections must show (`Fate`, `Expect`), the numbers it prints (`Outcome`), and `run_scenario`.

use super::*;

// ---------------------------------------------------------------------------------------------
// Scenarios and their results.

/// What the connections must show at the end of a scenario.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Every connection established and clean: no reset, nothing lost or corrupt.
    NoneBroken,
    /// Every connection established; exactly those on backend2 broke.
    OnlyBackend2Ends,
}

/// A counter a scenario must move (summed over `hosts`), or must leave alone.
pub(crate) struct Expect {
    pub(crate) hosts: &'static [&'static str],
    pub(crate) counter: &'static str,
    pub(crate) moved: bool,
}

pub(crate) const fn moved(hosts: &'static [&'static str], counter: &'static str) -> Expect {
    Expect {
        hosts,
        counter,
        moved: true,
    }
}

pub(crate) const fn still(hosts: &'static [&'static str], counter: &'static str) -> Expect {
    Expect {
        hosts,
        counter,
        moved: false,
    }
}

/// One scenario's numbers.
pub(crate) struct Outcome {
    pub(crate) scenario: String,
    pub(crate) reports: [ConnsReport; 2],
    pub(crate) counters: Counters,
    pub(crate) routes: Vec<RouteChange>,
    pub(crate) elapsed: Duration,
}

impl Outcome {
    pub(crate) fn conns(&self) -> impl Iterator<Item = &ConnReport> {
        self.reports.iter().flat_map(|r| r.conns.iter())
    }

    pub(crate) fn broken(&self) -> Vec<&ConnReport> {
        self.conns().filter(|c| !c.is_clean()).collect()
    }

    pub(crate) fn count(&self, hosts: &[&str], counter: &str) -> u64 {
        hosts
            .iter()
            .map(|h| {
                self.counters
                    .get(h)
                    .and_then(|m| m.get(counter))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// The times the router took to apply the route changes of one kind, in order (ms).
    pub(crate) fn times(&self, kind: Change) -> String {
        let t: Vec<String> = self
            .routes
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.took.as_millis().to_string())
            .collect();
        if t.is_empty() {
            "-".to_owned()
        } else {
            t.join(", ")
        }
    }

    pub(crate) fn summary(&self) -> String {
        let conns = self.conns().count();
        let requested: usize = self.reports.iter().map(|r| r.requested).sum();
        let bytes: u64 = self.reports.iter().map(|r| r.sent() + r.received()).sum();
        let resets: u64 = self.reports.iter().map(ConnsReport::resets).sum();
        let stalls: u64 = self.reports.iter().map(ConnsReport::stalls).sum();
        let lost: u64 = self.reports.iter().map(ConnsReport::lost).sum();
        let gap_ms = self
            .reports
            .iter()
            .map(ConnsReport::max_gap)
            .max()
            .unwrap_or_default()
            .as_millis();
        let (scenario, bytes) = (&self.scenario, lab::conns::human_bytes(bytes));
        let broken = self.broken().len();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "=== {scenario}: {conns}/{requested} connections, {bytes} both ways, broken {broken}, resets {resets}, stalls {stalls}, lost {lost} B, longest echo gap {gap_ms} ms, {:.1} s",
            self.elapsed.as_secs_f64()
        );
        for r in &self.reports {
            let _ = write!(s, "{r}");
        }
        for r in &self.routes {
            let _ = writeln!(
                s,
                "route: {}: router followed in {} ms",
                r.what,
                r.took.as_millis()
            );
        }
        let _ = writeln!(
            s,
            "{:<9}{}",
            "counters",
            COUNTERS
                .iter()
                .map(|c| format!(" {c:>w$}", w = c.len().max(8)))
                .collect::<String>()
        );
        for ns in HOSTS {
            let _ = writeln!(
                s,
                "{ns:<9}{}",
                COUNTERS
                    .iter()
                    .map(|c| format!(" {:>w$}", self.count(&[ns], c), w = c.len().max(8)))
                    .collect::<String>()
            );
        }
        // The BENCHMARKS.md row.
        let _ = writeln!(
            s,
            "| {scenario} | {conns} | {bytes} | {broken} | {resets} | {stalls} | {lost} | {gap_ms} ms | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
            self.times(Change::Withdraw),
            self.times(Change::Announce),
            self.times(Change::NewAgent),
            self.count(&HOSTS, "conn_hit"),
            self.count(&HOSTS, "conn_miss"),
            self.count(&HOSTS, "conn_insert"),
            self.count(&HOSTS, "conn_stale"),
            self.count(&HOSTS, "hint_sent"),
            self.count(&HOSTS, "second_chance"),
        );
        s
    }

    pub(crate) fn check(&self, fate: Fate, expect: &[Expect]) {
        for r in &self.reports {
            assert_eq!(
                r.established(),
                r.requested,
                "{}: not all established:\n{}",
                self.scenario,
                self.summary()
            );
            assert!(
                r.conns.iter().all(|c| c.sent > 0),
                "{}: a connection sent nothing:\n{}",
                self.scenario,
                self.summary()
            );
        }
        let broken = self.broken();
        let allowed = |c: &ConnReport| fate == Fate::OnlyBackend2Ends && c.backend == "backend2";
        let unexpected: Vec<&&ConnReport> = broken.iter().filter(|c| !allowed(c)).collect();
        assert!(
            unexpected.is_empty(),
            "{}: {} connections broke, first: {:?}\n{}",
            self.scenario,
            unexpected.len(),
            unexpected.iter().take(5).collect::<Vec<_>>(),
            self.summary()
        );
        if fate == Fate::OnlyBackend2Ends {
            let on_b2 = self.conns().filter(|c| c.backend == "backend2").count();
            assert!(
                on_b2 > 0,
                "{}: no connection on backend2:\n{}",
                self.scenario,
                self.summary()
            );
            assert_eq!(
                broken.len(),
                on_b2,
                "{}: not every backend2 connection ended:\n{}",
                self.scenario,
                self.summary()
            );
        }
        for e in expect {
            let n = self.count(e.hosts, e.counter);
            assert_eq!(
                n > 0,
                e.moved,
                "{}: {} on {:?} is {n}, expected {}:\n{}",
                self.scenario,
                e.counter,
                e.hosts,
                if e.moved { "> 0" } else { "0" },
                self.summary()
            );
        }
    }
}

/// Runs `change` while 240 connections stream (SETTLE before and after), prints the numbers, and
/// checks the connections' `fate` and the counters in `expect`.
pub(crate) fn run_scenario(
    bgp: &mut BgpLab,
    scenario: &str,
    fate: Fate,
    expect: &[Expect],
    change: impl FnOnce(&mut Ctx<'_>),
) -> Outcome {
    let running = start_conns(bgp);
    let before = all_counters(bgp);
    let t0 = Instant::now();
    std::thread::sleep(SETTLE);
    let mut ctx = Ctx {
        bgp,
        running: &running,
        routes: Vec::new(),
    };
    change(&mut ctx);
    let routes = ctx.routes;
    std::thread::sleep(SETTLE);
    running.assert_streaming(scenario);
    let reports = running.stop();
    let elapsed = t0.elapsed();
    let counters = delta(&before, &all_counters(bgp));
    let o = Outcome {
        scenario: scenario.to_owned(),
        reports,
        counters,
        routes,
        elapsed,
    };
    println!("{}", o.summary());
    o.check(fate, expect);
    o
}

/// 30 new connections to the IPv4 VIP, by the backend that answered.
pub(crate) fn new_flows(bgp: &BgpLab) -> lab::FlowTally {
    bgp.lab
        .flows(
            reference::CLIENT,
            Transport::Tcp,
            reference::vip_v4_tcp(),
            30,
            Duration::from_secs(30),
        )
        .expect("client")
        .tally()
}
