//! The operations lab: the edge agent with health-checked VIPs (`Ops`: start, status, restarts, configs) and what the tests read from its status, metrics, logs and processes.

use super::*;

/// The port health checks connect to: a second `anycast-lab-server` per backend listens on the
/// backend's own addresses there (the VIP servers bind the VIPs only; a check goes to the
/// backend's address, see README "Health checks").
pub(crate) const HEALTH_PORT: &str = "8080";

/// Health checks every 200 ms, down after 2 failures: detection within ~0.4-0.6 s.
pub(crate) const HEALTH: &str = "\n[vip.health]\nkind = \"tcp\"\nport = 8080\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n";

pub(crate) struct Ops {
    pub(crate) lab: Lab,
    pub(crate) bin: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) agent: Client,
    pub(crate) restarts: usize,
}

impl Ops {
    /// The reference dataplane, VIPs routed to edge1, whose agent runs with health checks;
    /// `None` where the running test is skipped ([`anycast_tests::privileged`]).
    pub(crate) fn start() -> Option<Ops> {
        if !anycast_tests::privileged(&anycast_tests::test_name()) {
            return None;
        }
        let lab = reference::start().unwrap_or_else(|e| panic!("starting the reference lab: {e}"));
        reference::route_vips_to(&lab, EDGE).expect("routing the VIPs to edge1");
        let mut ops = Ops {
            bin: find_binary("anycast", "ANYCAST_BIN").expect("the anycast binary"),
            config: lab.agent_config_path(EDGE),
            socket: lab.agent_socket_path(EDGE),
            agent: lab.agent_client(EDGE),
            lab,
            restarts: 0,
        };
        let server = find_binary("anycast-lab-server", "ANYCAST_LAB_SERVER_BIN")
            .expect("the lab server binary");
        let server = server.to_string_lossy().into_owned();
        for (ns, name, v4, v6) in [
            (
                reference::BACKEND1,
                "backend1",
                reference::BACKEND1_V4,
                reference::BACKEND1_V6,
            ),
            (
                reference::BACKEND2,
                "backend2",
                reference::BACKEND2_V4,
                reference::BACKEND2_V6,
            ),
            (
                reference::EDGE1,
                "edge1",
                reference::EDGE1_V4,
                reference::EDGE1_V6,
            ),
        ] {
            ops.lab
                .spawn(
                    ns,
                    &format!("health-{name}"),
                    &[&server, name, HEALTH_PORT, "8081", v4, v6],
                    &[],
                )
                .expect("starting a health-check server");
        }
        let healthy = with_health(&std::fs::read_to_string(&ops.config).expect("edge config"));
        ops.push_config(&healthy);
        ops.wait_for(
            Duration::from_secs(10),
            "a good reload with health checks",
            |s| {
                reloaded(s, true)
                    && s.vips
                        .iter()
                        .all(|v| v.backends.iter().all(|b| b.health == Health::Healthy))
            },
        );
        Some(ops)
    }

    /// `count` short flows from the client to the IPv4 VIP (within [`BUDGET`]), by the backend
    /// that answered.
    pub(crate) fn client_flows(&self, transport: Transport, count: usize) -> FlowTally {
        let vip = match transport {
            Transport::Tcp => reference::vip_v4_tcp(),
            Transport::Udp => reference::vip_v4_udp(),
        };
        self.lab
            .flows(reference::CLIENT, transport, vip, count, BUDGET)
            .expect("client")
            .tally()
    }

    pub(crate) fn edge_pid(&self) -> nix::unistd::Pid {
        self.lab.agent_pid(EDGE).expect("the edge agent's pid")
    }

    pub(crate) fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.edge_pid(), sig)
            .unwrap_or_else(|e| panic!("sending {sig} to the edge agent: {e}"));
    }

    /// Writes the config file and sends SIGHUP (the file watch may reload it first: either way
    /// one reload sees the new text).
    pub(crate) fn push_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("writing the config");
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("running anycast")
    }

    /// The edge agent's status; `None` when it does not answer.
    pub(crate) fn status(&self) -> Option<Status> {
        self.agent.status().ok()
    }

    pub(crate) fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        mut ok: impl FnMut(&Status) -> bool,
    ) -> (Duration, Status) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status()
                && ok(&s)
            {
                return (start.elapsed(), s);
            }
            assert!(
                start.elapsed() < limit,
                "waited {limit:?} for {what}; last status: {:?}\nagent log:\n{}",
                self.status(),
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn agent_log(&self) -> String {
        let name = if self.restarts == 0 {
            format!("agent-{EDGE}")
        } else {
            format!("agent-{EDGE}-{}", self.restarts)
        };
        self.lab.log(&name)
    }

    pub(crate) fn fingerprints(s: &Status) -> Vec<String> {
        s.vips
            .iter()
            .map(|v| format!("{} {:?}", v.vip, v.fingerprint))
            .collect()
    }

    /// Starts another agent with the same config (the previous one must be gone) and waits until
    /// it answers with a new program; returns how long that took. It starts with SIGINT, SIGTERM
    /// and SIGHUP blocked and ignored, as a careless parent can leave them (cargo xtask once
    /// did): the agent must take them back, or (f) sees it ignore SIGTERM.
    pub(crate) fn restart_agent(&mut self, old_program: Option<u32>) -> (Duration, Status) {
        self.restarts += 1;
        let start = Instant::now();
        let mut agent = self.lab.command(EDGE);
        agent
            .arg(&self.bin)
            .args(["agent", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info");
        ChildSignals::BlockedAndIgnored.apply(&mut agent);
        self.lab
            .spawn_command(&format!("agent-{EDGE}-{}", self.restarts), agent)
            .expect("starting the agent again");
        let (_, s) = self.wait_for(Duration::from_secs(20), "the new agent", |s| {
            s.program.id.is_some() && s.program.id != old_program
        });
        (start.elapsed(), s)
    }

    /// Sends SIGTERM to the edge agent and waits until it has exited; returns how long that took.
    /// The limit is not a speed check (the stop takes milliseconds): an agent still there after
    /// it ignored the signal, and the failure shows its signal state.
    pub(crate) fn stop_with_sigterm(&self) -> Duration {
        const LIMIT: Duration = Duration::from_secs(10);
        let pid = self.edge_pid();
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        // The agent is a child of this process: exited, it stays a zombie until the lab reaps it.
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
        }) {
            if start.elapsed() > LIMIT {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let sig: Vec<&str> = status
                    .lines()
                    .filter(|l| l.starts_with("Sig") || l.starts_with("ShdPnd"))
                    .collect();
                panic!(
                    "agent {pid} still running {LIMIT:?} after SIGTERM; {sig:?}\nagent log:\n{}",
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = start.elapsed();
        let log = self.agent_log();
        assert!(
            log.lines()
                .any(|l| l.contains("shutting down") && l.contains("SIGTERM")),
            "the agent did not stop through its SIGTERM handler:\n{log}"
        );
        assert!(self.status().is_none(), "a stopped agent still answers");
        took
    }

    pub(crate) fn xdp_attached(&self) -> bool {
        let dev = self.lab.ifname("e1-r").expect("edge1's interface");
        self.lab
            .ip(EDGE, &["-d", "link", "show", "dev", &dev])
            .expect("ip link")
            .contains("prog/xdp")
    }

    pub(crate) fn metrics(&self) -> String {
        self.lab
            .in_netns(EDGE, || -> std::io::Result<String> {
                let mut s = TcpStream::connect(("127.0.0.1", 9742))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                let mut body = String::new();
                s.read_to_string(&mut body)?;
                Ok(body)
            })
            .expect("entering edge1")
            .expect("scraping the metrics endpoint in edge1")
    }

    pub(crate) fn long_lived(&self, conns: usize, duration: Duration) -> LongLived {
        LongLived::start_in(
            &self.lab.ns(reference::CLIENT),
            reference::vip_v4_tcp(),
            ConnsOptions {
                conns,
                duration,
                ..ConnsOptions::default()
            },
        )
        .expect("starting long-lived connections")
    }

    pub(crate) fn wait_streaming(&self, c: &LongLived, conns: usize) {
        let start = Instant::now();
        while c.snapshot().established() < conns || c.snapshot().phase == Phase::Connecting {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "connections not established:\n{}",
                c.snapshot()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The status entry of the IPv4 TCP VIP.
pub(crate) fn vip_v4_tcp(s: &Status) -> &VipStatus {
    let vip: VipId = format!("{}:{}/tcp", reference::VIP_V4, reference::TCP_PORT)
        .parse()
        .expect("a VIP label");
    s.vips
        .iter()
        .find(|v| v.vip == vip)
        .unwrap_or_else(|| panic!("no VIP {vip} in {s:?}"))
}

/// The status of `backend` in `vip`'s.
pub(crate) fn backend<'v>(vip: &'v VipStatus, backend: &str) -> &'v BackendStatus {
    let address: IpAddr = backend.parse().expect("an address");
    vip.backends
        .iter()
        .find(|b| b.address == address)
        .unwrap_or_else(|| panic!("no backend {address} in {vip:?}"))
}

/// The last reload is reported and its outcome is `ok`.
pub(crate) fn reloaded(s: &Status, ok: bool) -> bool {
    s.last_reload.as_ref().is_some_and(|r| r.ok == ok)
}

pub(crate) fn last_reload_message(s: &Status) -> &str {
    s.last_reload.as_ref().map_or("", |r| r.message.as_str())
}

pub(crate) fn with_health(config: &str) -> String {
    // Every [[vip]] block gets a [vip.health] table at its end.
    let mut out = String::new();
    for (i, block) in config.split("\n[[vip]]").enumerate() {
        if i > 0 {
            out.push_str("\n[[vip]]");
            out.push_str(block.trim_end());
            out.push_str(HEALTH);
        } else {
            out.push_str(block);
        }
    }
    out
}

pub(crate) fn metric(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Seconds since midnight UTC.
pub(crate) fn seconds_of_day(t: std::time::SystemTime) -> f64 {
    let d = t.duration_since(std::time::UNIX_EPOCH).expect("clock");
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_nanos()) / 1e9
}

/// The time of day of a tracing log line (`...2026-11-22T13:21:34.164171Z ...`), in seconds.
pub(crate) fn log_time(line: &str) -> Option<f64> {
    let t = line.find('T').map(|i| &line[i + 1..])?;
    let end = t.find('Z')?;
    let mut parts = t[..end].split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

pub(crate) fn pids_in(lab: &Lab, ns: &str, binary: &str) -> Vec<i32> {
    anycast_tests::netns::pids(&lab.ns(ns))
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(binary))
        })
        .collect()
}

pub(crate) fn assert_clean(r: &ConnsReport, what: &str) {
    assert!(
        r.is_clean() && r.lost() == 0 && r.resets() == 0,
        "{what}: connections broken or bytes lost:\n{r}"
    );
}
