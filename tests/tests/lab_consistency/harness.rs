//! The lab of these tests: agents, VIP specs per encapsulation, counters, fingerprints, the long-lived connections and route changes (`Ctx`).

use super::*;

pub(crate) fn backend_addrs(name: &str) -> (&'static str, &'static str) {
    match name {
        "edge1" => (reference::EDGE1_V4, reference::EDGE1_V6),
        "backend1" => (reference::BACKEND1_V4, reference::BACKEND1_V6),
        "backend2" => (reference::BACKEND2_V4, reference::BACKEND2_V6),
        other => panic!("{other} is not a backend of the reference topology"),
    }
}

/// The reference VIPs (TCP and UDP, IPv4 and IPv6) with these backends (by name) and weights.
pub(crate) fn vips(backends: &[(&str, u32)]) -> Vec<VipSpec> {
    let mut v = Vec::new();
    for (address, v6) in [(reference::VIP_V4, false), (reference::VIP_V6, true)] {
        let list: Vec<(String, u32)> = backends
            .iter()
            .map(|(name, w)| {
                let (a4, a6) = backend_addrs(name);
                ((if v6 { a6 } else { a4 }).to_owned(), *w)
            })
            .collect();
        for (port, protocol) in [(reference::TCP_PORT, "tcp"), (reference::UDP_PORT, "udp")] {
            v.push(VipSpec {
                address: address.to_owned(),
                port,
                protocol: protocol.to_owned(),
                backends: list.clone(),
            });
        }
    }
    v
}

/// How the lab's agents encapsulate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Encap {
    Gue,
    Ipip,
}

impl Encap {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Encap::Gue => "gue",
            Encap::Ipip => "ipip",
        }
    }

    /// The counters that prove a second chance carried flows an edge saw for the first time
    /// after a table change: the hint and its hop under GUE; under IPIP no hint, the new owner
    /// computing the hop from its tables.
    pub(crate) fn second_chance_proof(self) -> &'static [Expect] {
        const GUE: [Expect; 2] = [moved(&EDGES, "hint_sent"), moved(&HOSTS, "second_chance")];
        const IPIP: [Expect; 3] = [
            still(&EDGES, "hint_sent"),
            moved(&HOSTS, "second_chance_table"),
            moved(&HOSTS, "second_chance"),
        ];
        match self {
            Encap::Gue => &GUE,
            Encap::Ipip => &IPIP,
        }
    }
}

/// A BGP lab with `encap` whose agents (edges and backends) all serve `backends`, both edges
/// announcing; `all_health`: every agent health-checks the backends. `None` when the test may
/// not run (unprivileged, not CI).
pub(crate) fn start(
    encap: Encap,
    backends: &[(&str, u32)],
    all_health: bool,
) -> Option<(MutexGuard<'static, ()>, BgpLab)> {
    BgpLab::start_serial(Options {
        reference: reference::Options {
            encapsulation: encap.name().to_owned(),
            weights: [1, 1, 1],
            ..Default::default()
        },
        vips: Some(vips(backends)),
        all_health,
        ..Options::default()
    })
}

// ---------------------------------------------------------------------------------------------
// The agents: stats, tables, backends.

/// Runs the `anycast` CLI against the agent in `ns`; it must succeed. Returns its stdout.
pub(crate) fn cli(bgp: &BgpLab, ns: &str, args: &[&str]) -> String {
    let out = bgp
        .anycast(ns, args)
        .unwrap_or_else(|e| panic!("{ns}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{ns}: anycast {args:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub(crate) type Counters = BTreeMap<&'static str, BTreeMap<String, u64>>;

pub(crate) fn all_counters(bgp: &BgpLab) -> Counters {
    HOSTS
        .iter()
        .map(|ns| {
            let stats = bgp
                .client(ns)
                .stats()
                .unwrap_or_else(|e| panic!("{ns}: stats: {e}"));
            (*ns, stats.counters.into_iter().collect())
        })
        .collect()
}

pub(crate) fn delta(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .map(|(ns, a)| {
            let b = &before[ns];
            let d = a
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0))))
                .collect();
            (*ns, d)
        })
        .collect()
}

/// Every VIP's table fingerprint on the agent in `ns`, by VIP.
pub(crate) fn fingerprints(bgp: &BgpLab, ns: &str) -> BTreeMap<String, String> {
    bgp.status(ns)
        .vips
        .into_iter()
        .map(|v| {
            (
                v.vip.to_string(),
                v.fingerprint.unwrap_or_else(|| "none".to_owned()),
            )
        })
        .collect()
}

/// Waits (bounded) until every agent (edges and backends) publishes the same tables, different
/// from `before`: the second chance of a flow depends on the backends' tables as much as on the
/// edges'.
pub(crate) fn wait_tables_changed(bgp: &BgpLab, before: &BTreeMap<String, String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all: Vec<BTreeMap<String, String>> =
            HOSTS.iter().map(|ns| fingerprints(bgp, ns)).collect();
        if all.iter().all(|f| f == &all[0]) && &all[0] != before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the agents did not publish a new common table within 15 s:\n{}before {before:?}\nedge1 log:\n{}",
            HOSTS
                .iter()
                .zip(&all)
                .map(|(ns, f)| format!("{ns} {f:?}\n"))
                .collect::<String>(),
            bgp.edge_log(reference::EDGE1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Connections.

pub(crate) struct Running {
    pub(crate) v4: LongLived,
    pub(crate) v6: LongLived,
}

pub(crate) fn start_conns(bgp: &BgpLab) -> Running {
    let opts = ConnsOptions {
        conns: CONNS_PER_FAMILY,
        // An upper bound: each scenario stops them once its changes are over.
        duration: Duration::from_secs(120),
        ..ConnsOptions::default()
    };
    let v4 = bgp
        .lab
        .start_long_lived(reference::CLIENT, reference::vip_v4_tcp(), opts.clone())
        .expect("starting IPv4 connections");
    let v6 = bgp
        .lab
        .start_long_lived(reference::CLIENT, reference::vip_v6_tcp(), opts)
        .expect("starting IPv6 connections");
    let deadline = Instant::now() + Duration::from_secs(40);
    for (c, what) in [(&v4, "IPv4"), (&v6, "IPv6")] {
        if let Err(s) = c.wait_connected(deadline) {
            panic!("{what}: still connecting after 40 s:\n{s}");
        }
    }
    Running { v4, v6 }
}

impl Running {
    pub(crate) fn assert_streaming(&self, what: &str) {
        for s in [self.v4.snapshot(), self.v6.snapshot()] {
            assert_eq!(
                s.phase,
                Phase::Streaming,
                "{what}: the connections stopped streaming before the changes were over:\n{s}"
            );
        }
    }

    pub(crate) fn stop(self) -> [ConnsReport; 2] {
        [self.v4.stop(), self.v6.stop()]
    }
}

pub(crate) fn broken_so_far(c: &ConnReport) -> bool {
    !c.established || c.resets > 0 || c.closed_early || c.error.is_some() || c.corrupt_at.is_some()
}

// ---------------------------------------------------------------------------------------------
// Changes made while the connections stream.

/// A route change an edge made, and how long the router took to apply it (both VIPs).
pub(crate) struct RouteChange {
    pub(crate) what: String,
    pub(crate) kind: Change,
    pub(crate) took: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// `drain-edge`, or the agent stopped: the router must drop the edge.
    Withdraw,
    /// `undrain-edge`: the router must take the edge back.
    Announce,
    /// A new agent: the router must take the edge back once it has started and announced.
    NewAgent,
}

/// What a scenario's change can do, and what it did.
pub(crate) struct Ctx<'a> {
    pub(crate) bgp: &'a mut BgpLab,
    pub(crate) running: &'a Running,
    pub(crate) routes: Vec<RouteChange>,
}

pub(crate) fn other_edge(edge: &str) -> &'static str {
    if edge == reference::EDGE1 {
        reference::EDGE2
    } else {
        reference::EDGE1
    }
}

/// Waits until the router's routes to both VIPs go through exactly `edges`; returns the time
/// since `since`.
pub(crate) fn wait_routes(
    bgp: &BgpLab,
    edges: &[&str],
    since: Instant,
    limit: Duration,
) -> Duration {
    for (vip, v6) in [(reference::VIP_V4, false), (reference::VIP_V6, true)] {
        let hops: Vec<&str> = edges
            .iter()
            .map(|e| {
                let (a4, a6, _, _) = lab_bgp::edge_link(e);
                if v6 { a6 } else { a4 }
            })
            .collect();
        let left = limit.saturating_sub(since.elapsed());
        bgp.wait_nexthops(vip, &hops, left).unwrap_or_else(|e| {
            panic!(
                "{e}\nedge logs:\n{}{}",
                bgp.edge_log(EDGES[0]),
                bgp.edge_log(EDGES[1])
            )
        });
    }
    since.elapsed()
}

impl Ctx<'_> {
    pub(crate) fn record(&mut self, what: String, kind: Change, took: Duration) {
        println!(
            "route: {what}: the router followed in {} ms",
            took.as_millis()
        );
        self.routes.push(RouteChange { what, kind, took });
    }

    /// `anycast drain-edge` on `edge`: the router must route both VIPs to the other edge only,
    /// and the CLI must see the edge's VIP traffic stop.
    pub(crate) fn withdraw(&mut self, edge: &str) {
        let bgp = &*self.bgp;
        let t0 = Instant::now();
        let (out, took) = std::thread::scope(|s| {
            let watch = s.spawn(|| wait_routes(bgp, &[other_edge(edge)], t0, WITHDRAW_LIMIT));
            let out = cli(
                bgp,
                edge,
                &["drain-edge", "--timeout", "30", "--quiet-ms", "500"],
            );
            (
                out,
                watch
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            )
        });
        assert!(
            out.contains("VIP traffic stopped"),
            "{edge}: drain-edge: {out}"
        );
        self.record(format!("{edge} drain-edge"), Change::Withdraw, took);
    }

    /// `anycast undrain-edge` on `edge`: the router must spread over both edges again.
    pub(crate) fn announce(&mut self, edge: &str) {
        let t0 = Instant::now();
        cli(self.bgp, edge, &["undrain-edge"]);
        let took = wait_routes(self.bgp, &EDGES, t0, ANNOUNCE_LIMIT);
        self.record(format!("{edge} undrain-edge"), Change::Announce, took);
    }

    /// SIGTERM to `edge`'s agent: it withdraws before it exits.
    pub(crate) fn stop_agent(&mut self, edge: &str) {
        let t0 = Instant::now();
        self.bgp
            .stop_edge(edge)
            .unwrap_or_else(|e| panic!("stopping {edge}'s agent: {e}"));
        let took = wait_routes(self.bgp, &[other_edge(edge)], t0, WITHDRAW_LIMIT);
        self.record(
            format!("{edge} agent stopped (SIGTERM)"),
            Change::Withdraw,
            took,
        );
    }

    /// A new agent on `edge`: it adopts the pinned dataplane and announces again.
    pub(crate) fn start_agent(&mut self, edge: &str) {
        let t0 = Instant::now();
        self.bgp
            .start_edge(edge)
            .unwrap_or_else(|e| panic!("starting {edge}'s agent again: {e}"));
        let took = wait_routes(self.bgp, &EDGES, t0, NEW_AGENT_LIMIT);
        self.record(format!("{edge} new agent"), Change::NewAgent, took);
    }

    /// Withdraws `edge` for `dwell` (its connections stream through the other edge), then
    /// announces it again.
    pub(crate) fn away_and_back(&mut self, edge: &str, dwell: Duration) {
        self.withdraw(edge);
        std::thread::sleep(dwell);
        self.announce(edge);
    }

    /// Rewrites every agent's config with `backends` and waits until all publish the new tables.
    pub(crate) fn set_backends(&mut self, backends: &[(&str, u32)]) {
        let before = fingerprints(self.bgp, reference::EDGE1);
        for ns in HOSTS {
            self.bgp
                .set_vips(ns, vips(backends))
                .unwrap_or_else(|e| panic!("{ns}: new config: {e}"));
        }
        wait_tables_changed(self.bgp, &before, &format!("config {backends:?}"));
    }

    /// Runs `anycast ARGS... ADDR` on every agent for each of `backend`'s addresses, waiting
    /// after each address until all publish the new tables.
    pub(crate) fn override_everywhere(&mut self, backend: &str, args: &[&str]) {
        let (a4, a6) = backend_addrs(backend);
        for addr in [a4, a6] {
            let before = fingerprints(self.bgp, reference::EDGE1);
            let mut full: Vec<&str> = args.to_vec();
            full.insert(1, addr);
            for ns in HOSTS {
                cli(self.bgp, ns, &full);
            }
            wait_tables_changed(self.bgp, &before, &format!("{full:?}"));
        }
    }

    /// `anycast drain` of backend2's addresses on every agent.
    pub(crate) fn drain_backend2(&mut self) {
        self.override_everywhere("backend2", &["drain"]);
    }

    /// backend2's health-check server stops (every agent's checks of it fail), or starts again.
    pub(crate) fn backend2_health(&mut self, up: bool) {
        let before = fingerprints(self.bgp, reference::EDGE1);
        let r = if up {
            self.bgp.restart_health_servers_of(&[reference::BACKEND2])
        } else {
            self.bgp.stop_health_servers_of(&[reference::BACKEND2])
        };
        r.unwrap_or_else(|e| panic!("backend2's health server: {e}"));
        wait_tables_changed(
            self.bgp,
            &before,
            if up {
                "backend2 healthy again"
            } else {
                "backend2 unhealthy"
            },
        );
    }

    /// Connections broken so far (resets, early close, errors, corrupt bytes; bytes in flight
    /// do not count): (id, backend).
    pub(crate) fn broken_now(&self) -> Vec<(usize, String)> {
        [self.running.v4.snapshot(), self.running.v6.snapshot()]
            .iter()
            .flat_map(|r| {
                r.conns
                    .iter()
                    .filter(|c| broken_so_far(c))
                    .map(|c| (c.id, c.backend.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
