//! `cargo xtask demo`: anycast over BGP, live. The reference topology (tests/src/lab.rs) with its
//! routing done by BGP (tests/src/lab_bgp.rs): the router runs BIRD with ECMP and BFD, each
//! edge's agent runs its own BIRD and announces the VIPs; backends decapsulate.
//!
//! Usage: `anycast-demo [--seconds S] [--conns N] [--flows N] [--encapsulation ipip|gue]
//! [--fail edge1|edge2]` (root).
//!
//! Four phases of S seconds, separated by three routing events, each timed at the router:
//! 1. both edges announce, the router spreads flows over them (ECMP);
//! 2. `anycast drain-edge` on edge1: it withdraws, the router moves everything to edge2;
//! 3. `anycast undrain-edge` on edge1: ECMP again;
//! 4. the failing edge (edge2 unless `--fail edge1`) is black-holed: its link stays up but
//!    nothing gets through, so only BFD can tell; the router routes around it.
//!
//! Throughout, long-lived TCP connections stream data both ways (every byte checked) and short
//! TCP connections are opened one after another. Each short flow is attributed to the edge it
//! entered through by the edges' own connection-tracking maps (read-only), and checked against
//! the backend the edges' agents predict for it (`anycast lookup`). The live view is redrawn in
//! place on a terminal, one line a second otherwise. The summary states what the design
//! promises, checks it, and the demo exits 1 if a promise was broken, or if a BGP session
//! flapped besides the demo's own events (an overloaded machine can starve BFD: the run then
//! shows that, not the design). Ctrl-C at any point deletes the lab.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, IsTerminal as _, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anycast::config::bgp::BgpMode;
use anycast::proto::Request;
use anycast_common::{ConnKey, ConnValue, PROTO_TCP, map_names};
use anycast_tests::lab::reference::{
    self, BACKEND_NAMES, CLIENT, EDGE1, EDGE1_V4, EDGE2, EDGE2_V4, VIP_V4, VIP_V6,
};
use anycast_tests::lab::{self, ConnsOptions, ConnsReport};
use anycast_tests::lab_bgp::{self, BgpLab};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};

struct Args {
    seconds: u64,
    conns: usize,
    flows: usize,
    encapsulation: String,
    /// The edge that fails hard in the last phase.
    fail: &'static str,
}

const WEIGHTS: [u32; 3] = [1, 2, 3];
const EDGES: [&str; 2] = [EDGE1, EDGE2];
/// Connect timeout, and read timeout, of one short flow.
const FLOW_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a routing event may take to show in the router's kernel table.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Short flows in a phase below which the demo does not judge how ECMP spread them.
const ECMP_MIN_FLOWS: usize = 20;

fn main() {
    lab::install_interrupt_cleanup();
    let mut a = Args {
        seconds: 6,
        conns: 60,
        flows: 2000,
        encapsulation: "ipip".to_owned(),
        fail: EDGE2,
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> u64 {
        v.and_then(|n| n.parse().ok())
            .unwrap_or_else(|| usage(&format!("{flag} needs a number")))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = number(args.next(), "--seconds").clamp(1, 600),
            "--conns" => a.conns = number(args.next(), "--conns").clamp(1, 1000) as usize,
            "--flows" => a.flows = number(args.next(), "--flows").clamp(1, 100_000) as usize,
            "--encapsulation" => {
                a.encapsulation = args.next().unwrap_or_default();
                if a.encapsulation != "ipip" && a.encapsulation != "gue" {
                    usage("--encapsulation is ipip or gue");
                }
            }
            "--fail" => {
                a.fail = match args.next().as_deref() {
                    Some("edge1") => EDGE1,
                    Some("edge2") => EDGE2,
                    _ => usage("--fail is edge1 or edge2"),
                }
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("anycast-demo creates network namespaces and loads XDP programs: run it as root");
        std::process::exit(1);
    }
    match run(&a) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::exit(1);
        }
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("{problem}");
    }
    eprintln!(
        "usage: anycast-demo [--seconds S (per phase, default 6)] [--conns N (long-lived, default 60)] \
         [--flows N (short flows per phase, at most; default 2000)] [--encapsulation ipip|gue] \
         [--fail edge1|edge2 (the edge that fails in phase 4, default edge2)]"
    );
    std::process::exit(2);
}

/// The other edge.
fn other(edge: &str) -> &'static str {
    if edge == EDGE1 { EDGE2 } else { EDGE1 }
}

fn edge_v4(edge: &str) -> &'static str {
    if edge == EDGE1 { EDGE1_V4 } else { EDGE2_V4 }
}

fn edge_of_addr(addr: &str) -> &str {
    match addr {
        EDGE1_V4 => EDGE1,
        EDGE2_V4 => EDGE2,
        other => other,
    }
}

/// Short titles of the four phases.
fn phase_titles(fail: &str) -> [String; 4] {
    [
        "ECMP".to_owned(),
        "edge1 drained".to_owned(),
        "ECMP again".to_owned(),
        format!("{fail} dead"),
    ]
}

// ---------------------------------------------------------------------------------------------
// What the demo records

/// Which edges' XDP programs saw a flow (found in their connection-tracking map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Edge(usize),
    /// Both: the router moved the flow while it was open.
    Both,
    /// Neither (a flow that never got past its handshake).
    Unseen,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Edge(i) => EDGES[i],
            Via::Both => "moved",
            Via::Unseen => "none",
        }
    }

    fn includes(self, edge: &str) -> bool {
        match self {
            Via::Edge(i) => EDGES[i] == edge,
            Via::Both => true,
            Via::Unseen => false,
        }
    }
}

/// What the edges' agents say about a flow (`anycast lookup`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Prediction {
    Backend(&'static str),
    /// The edges name different backends.
    Disagree(Vec<&'static str>),
    /// An agent could not be asked, or named an unknown address.
    Unknown(String),
}

/// One short flow (one TCP connection).
#[derive(Clone, Debug)]
struct Flow {
    phase: usize,
    started: Instant,
    local: Option<SocketAddr>,
    /// The name of the backend that answered, or why none did.
    answer: Result<String, String>,
    via: Via,
    predicted: Prediction,
}

impl Flow {
    fn on_predicted(&self) -> bool {
        matches!((&self.answer, &self.predicted), (Ok(name), Prediction::Backend(p)) if name == p)
    }
}

/// A routing event and what the router made of it.
#[derive(Clone, Debug)]
struct Event {
    title: String,
    at: Instant,
    /// When the router's kernel route had changed as expected, or why it did not.
    converged: Result<Instant, String>,
    /// What the operator's command said, the router's view afterwards.
    lines: Vec<String>,
    /// A promise of the event broken (e.g. `drain-edge` timed out).
    problem: Option<String>,
}

impl Event {
    fn took(&self) -> Option<Duration> {
        self.converged
            .as_ref()
            .ok()
            .map(|c| c.duration_since(self.at))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the lab

/// A connection to an agent's control API, kept open (newline-delimited JSON, in order).
struct Agent {
    socket: PathBuf,
    conn: Option<BufReader<UnixStream>>,
}

impl Agent {
    fn new(socket: PathBuf) -> Agent {
        Agent { socket, conn: None }
    }

    fn call(&mut self, request: &Request) -> Result<serde_json::Value, String> {
        let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
        line.push('\n');
        let mut last_error = String::new();
        // Twice: the agent may have closed a connection this side still holds.
        for _ in 0..2 {
            if self.conn.is_none() {
                let s = UnixStream::connect(&self.socket)
                    .and_then(|s| {
                        s.set_read_timeout(Some(Duration::from_secs(10)))
                            .map(|()| s)
                    })
                    .map_err(|e| format!("connecting to {}: {e}", self.socket.display()))?;
                self.conn = Some(BufReader::new(s));
            }
            let conn = self.conn.as_mut().expect("connected above");
            let mut answer = String::new();
            match conn
                .get_mut()
                .write_all(line.as_bytes())
                .and_then(|()| conn.read_line(&mut answer))
            {
                Ok(n) if n > 0 => {
                    let v: serde_json::Value = serde_json::from_str(&answer)
                        .map_err(|e| format!("garbled answer {answer:?}: {e}"))?;
                    if let Some(e) = v.get("error") {
                        return Err(e.as_str().unwrap_or("?").to_owned());
                    }
                    return v
                        .get("result")
                        .cloned()
                        .ok_or_else(|| format!("no result in {answer:?}"));
                }
                Ok(_) => last_error = "connection closed".to_owned(),
                Err(e) => last_error = e.to_string(),
            }
            self.conn = None;
        }
        Err(format!("{}: {last_error}", self.socket.display()))
    }

    /// Packets the agent's dataplane counted for every VIP.
    fn vip_packets(&mut self) -> Option<u64> {
        let v = self.call(&Request::Stats).ok()?;
        Some(
            v["vips"]
                .as_array()?
                .iter()
                .filter_map(|v| v["packets"].as_u64())
                .sum(),
        )
    }
}

/// Which backend every edge's agent names for `local -> target`.
fn predict(agents: &mut [Agent], local: SocketAddr, target: SocketAddr) -> Prediction {
    let mut names = Vec::new();
    for (edge, agent) in EDGES.iter().zip(agents) {
        let flow = format!("tcp {local} {target}");
        match agent.call(&Request::Lookup { flow }) {
            Ok(v) => match v["backend"]
                .as_str()
                .and_then(|b| b.parse::<IpAddr>().ok())
                .and_then(reference::backend_name)
            {
                Some(name) => names.push(name),
                None => return Prediction::Unknown(format!("{edge}: no known backend in {v}")),
            },
            Err(e) => return Prediction::Unknown(format!("{edge}: {e}")),
        }
    }
    if names.iter().all(|n| *n == names[0]) {
        Prediction::Backend(names[0])
    } else {
        Prediction::Disagree(names)
    }
}

/// The edges' connection-tracking maps (`CONNS`, pinned by their agents), opened read-only: an
/// edge's XDP program records a TCP flow there when the first packet after the SYN passes it,
/// with `bpf_ktime_get_ns` (CLOCK_MONOTONIC) as the time.
struct Tracker {
    maps: Vec<BpfHashMap<MapData, ConnKey, ConnValue>>,
}

impl Tracker {
    fn open(bgp: &BgpLab) -> Result<Tracker, String> {
        let mut maps = Vec::new();
        for edge in EDGES {
            let config = anycast::config::Config::load(&bgp.lab.agent_config_path(edge))
                .map_err(|e| format!("{edge}'s agent config: {e}"))?;
            let path = anycast::dataplane::pins::PinLayout::new(&config.agent.pin_path)
                .map(map_names::CONNS);
            let map = MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            maps.push(
                BpfHashMap::try_from(map)
                    .map_err(|e| format!("{}: not the CONNS map: {e}", path.display()))?,
            );
        }
        Ok(Tracker { maps })
    }

    /// Which edges recorded `local -> target` at or after `since_ns` (an entry from an earlier
    /// flow on the same ports is older).
    fn via(&self, local: SocketAddr, target: SocketAddr, since_ns: u64) -> Via {
        let (SocketAddr::V4(l), SocketAddr::V4(t)) = (local, target) else {
            return Via::Unseen;
        };
        let key = ConnKey::v4(
            l.ip().octets(),
            l.port(),
            t.ip().octets(),
            t.port(),
            PROTO_TCP,
        );
        let seen: Vec<bool> = self
            .maps
            .iter()
            .map(|m| m.get(&key, 0).is_ok_and(|v| v.last_seen_ns >= since_ns))
            .collect();
        match seen[..] {
            [true, true] => Via::Both,
            [true, false] => Via::Edge(0),
            [false, true] => Via::Edge(1),
            _ => Via::Unseen,
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One short flow from `source`: a socket bound before connecting, so its source address is
/// known even when the connection fails (to ask the agents which backend it was meant for); then
/// one HTTP-ish request, answered by the backend's name.
fn short_flow(source: IpAddr, target: SocketAddr) -> (Option<SocketAddr>, Result<String, String>) {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = match Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    ) {
        Ok(s) => s,
        Err(e) => return (None, Err(format!("socket: {e}"))),
    };
    let local = socket
        .bind(&SocketAddr::new(source, 0).into())
        .and_then(|()| socket.local_addr())
        .ok()
        .and_then(|a| a.as_socket());
    if let Err(e) = socket.connect_timeout(&target.into(), FLOW_TIMEOUT) {
        return (local, Err(format!("connect: {e}")));
    }
    let mut s: TcpStream = socket.into();
    let result = (|| -> std::io::Result<String> {
        s.set_read_timeout(Some(FLOW_TIMEOUT))?;
        s.set_write_timeout(Some(FLOW_TIMEOUT))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        (&mut s).take(4096).read_to_string(&mut reply)?;
        reply
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_owned())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not an HTTP reply: {reply:?}"),
                )
            })
    })();
    (local, result.map_err(|e| e.to_string()))
}

/// Lines of a BIRD or `ip` answer, indented, without birdc's greeting.
fn indented(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("BIRD ") && !l.trim().is_empty())
        .map(|l| format!("     {l}"))
        .collect()
}

/// The router's VIP route in a few words: `via edge1 + edge2`.
fn route_line(bgp: &BgpLab) -> String {
    match bgp.nexthops(VIP_V4) {
        Ok(hops) if hops.is_empty() => "no route".to_owned(),
        Ok(hops) => format!(
            "via {}",
            hops.iter()
                .map(|h| edge_of_addr(h))
                .collect::<Vec<_>>()
                .join(" + ")
        ),
        Err(e) => e.to_string(),
    }
}

/// The BFD timers the router's BIRD runs with `addr`, as `(interval, timeout)` from `show bfd
/// sessions` (seconds, as BIRD prints them).
fn bfd_timers(bgp: &BgpLab, addr: &str) -> Option<(String, String)> {
    let out = bgp.birdc_router("show bfd sessions").ok()?;
    out.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.first() == Some(&addr) && w.len() >= 3)
            .then(|| (w[w.len() - 2].to_owned(), w[w.len() - 1].to_owned()))
    })
}

/// The BGP timers of the edges' agents in this lab, and the agent's defaults: edge1's `[bgp]`
/// section parsed as it is, and with its timers left out.
fn bgp_timers(bgp: &BgpLab) -> Option<String> {
    const TIMERS: [&str; 4] = [
        "bfd_interval_ms",
        "bfd_multiplier",
        "hold_time",
        "keepalive_time",
    ];
    let text = bgp.edge_config(EDGE1).ok()?;
    let defaults: String = text
        .lines()
        .filter(|l| !TIMERS.iter().any(|k| l.starts_with(k)))
        .map(|l| format!("{l}\n"))
        .collect();
    let describe = |config: &str| -> Option<String> {
        let c = anycast::config::Config::parse(config).ok()?;
        let BgpMode::Managed(m) = c.bgp?.mode else {
            return None;
        };
        Some(format!(
            "BFD {} ms x {} (a silent edge is down after {:.1} s), hold time {} s",
            m.bfd_interval_ms,
            m.bfd_multiplier,
            f64::from(m.bfd_interval_ms * m.bfd_multiplier) / 1e3,
            m.hold_time
        ))
    };
    Some(format!(
        "timers in this lab: {}; the agent's defaults: {}",
        describe(&text)?,
        describe(&defaults)?
    ))
}

/// The router's BGP sessions with the edges, from `birdc show protocols`: name -> `state since
/// info` (a session that went down and up again has another `since`).
fn sessions(bgp: &BgpLab) -> lab::Result<BTreeMap<String, String>> {
    let out = bgp.birdc_router("show protocols")?;
    Ok(out
        .lines()
        .filter(|l| l.starts_with("edge"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // Name Proto Table State Since Info...
            (w.len() >= 5).then(|| (w[0].to_owned(), w[3..].join(" ")))
        })
        .collect())
}

/// Sessions of `now` that differ from `before`, leaving out those of `except` (an edge).
fn session_changes(
    before: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
    except: Option<&str>,
) -> Vec<String> {
    before
        .iter()
        .filter(|(name, _)| except.is_none_or(|e| !name.starts_with(e)))
        .filter(|(name, was)| now.get(*name) != Some(*was))
        .map(|(name, was)| {
            format!(
                "{name} was `{was}`, now `{}`",
                now.get(name).map_or("gone", String::as_str)
            )
        })
        .collect()
}

/// Waits (bounded) until BGP has settled: all four sessions with the edges established, their
/// BFD sessions up, the VIP routed over both edges, and nothing of that changed for 2 s. BGP can
/// be established before BFD is (a failure would then be noticed by the hold timer only), and
/// on a loaded machine sessions can flap while the lab starts. Returns the sessions' state.
fn wait_settled(bgp: &BgpLab) -> lab::Result<BTreeMap<String, String>> {
    const STABLE: Duration = Duration::from_secs(2);
    let peers = [EDGE1_V4, EDGE2_V4, reference::EDGE1_V6, reference::EDGE2_V6];
    let start = Instant::now();
    let mut last: Option<(BTreeMap<String, String>, Instant)> = None;
    let mut flaps = 0usize;
    loop {
        let now = sessions(bgp)?;
        let bfd = bgp.birdc_router("show bfd sessions")?;
        let bfd_up = |peer: &str| {
            bfd.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&peer) && w.get(2) == Some(&"Up")
            })
        };
        let good = now.len() == 4
            && now
                .values()
                .all(|v| v.starts_with("up ") && v.ends_with("Established"))
            && peers.iter().all(|p| bfd_up(p))
            && bgp.nexthops(VIP_V4)? == [EDGE1_V4, EDGE2_V4];
        match &last {
            Some((was, since)) if good && *was == now => {
                if since.elapsed() >= STABLE {
                    if flaps > 0 {
                        println!(
                            "   (BGP took {:.1} s to settle: the sessions changed {flaps} time(s) after first coming up; an overloaded machine can starve BFD)",
                            start.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(now);
                }
            }
            _ => {
                flaps += usize::from(last.is_some());
                last = good.then(|| (now.clone(), Instant::now()));
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(lab::LabError::Setup(format!(
                "BGP did not settle within 60 s (sessions, BFD and the VIP's route over both edges, stable for {STABLE:?}); the router's BGP sessions:\n{now:#?}\nits BFD sessions:\n{bfd}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// The demo

fn run(a: &Args) -> lab::Result<bool> {
    let variant = reference::Options {
        encapsulation: a.encapsulation.clone(),
        weights: WEIGHTS,
    };
    println!("== building the lab in network namespaces; BGP decides where the VIP is routed");
    println!(
        "   client {} --> router (BIRD, AS {}): one route to the VIP, ECMP over the edges that announce it",
        reference::CLIENT_V4,
        lab_bgp::ROUTER_AS
    );
    for edge in EDGES {
        println!(
            "                       |== eBGP + BFD ==> {edge} {} (agent + its BIRD, AS {})",
            edge_v4(edge),
            lab_bgp::EDGE_AS
        );
    }
    println!(
        "   VIP {VIP_V4} (tcp/80) on both edges; each picks the backend with the same Maglev table and sends the packet there ({}):",
        a.encapsulation
    );
    println!(
        "   backend1 {} (weight {}), backend2 {} (weight {}), edge1 itself (weight {}); backends answer the client directly",
        reference::BACKEND1_V4,
        WEIGHTS[0],
        reference::BACKEND2_V4,
        WEIGHTS[1],
        WEIGHTS[2]
    );
    let t = Instant::now();
    let bgp = BgpLab::start(lab_bgp::Options {
        reference: variant,
        ..lab_bgp::Options::default()
    })?;
    println!("   namespaces: {}", bgp.lab.namespaces().join(" "));
    println!(
        "== lab up, agents attached, both edges announce {VIP_V4}/32 and {VIP_V6}/128 over BGP ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let tracker = Tracker::open(&bgp).map_err(lab::LabError::Setup)?;
    let mut known = wait_settled(&bgp)?;

    println!("== the router's view: one VIP, two edges");
    println!("   $ birdc show protocols          (BGP sessions to both edges, BFD)");
    for l in indented(&bgp.birdc_router("show protocols")?) {
        println!("{l}");
    }
    println!("   $ birdc show route for {VIP_V4}/32   (learned from both edges)");
    for l in indented(&bgp.birdc_router(&format!("show route for {VIP_V4}/32"))?) {
        println!("{l}");
    }
    println!("   $ ip route show {VIP_V4}        (installed: one route, two next hops)");
    for l in indented(&bgp.lab.ip(reference::ROUTER, &["route", "show", VIP_V4])?) {
        println!("{l}");
    }
    println!("   $ birdc show bfd sessions");
    for l in indented(&bgp.birdc_router("show bfd sessions")?) {
        println!("{l}");
    }
    let timers = bgp_timers(&bgp);
    if let Some(t) = &timers {
        println!("   {t}");
    }

    let target = reference::vip_v4_tcp();
    let client: IpAddr = reference::CLIENT_V4.parse().expect("literal");
    println!(
        "== opening {} long-lived connections to {target} (data both ways, every byte checked)",
        a.conns
    );
    let conns = bgp.lab.start_long_lived(
        CLIENT,
        target,
        ConnsOptions {
            conns: a.conns,
            // Bounded; the demo stops them itself after the last phase.
            duration: Duration::from_secs(a.seconds * 4 + 120),
            ..ConnsOptions::default()
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while conns.snapshot().phase == "connecting" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }

    let titles = phase_titles(a.fail);
    let tty = std::io::stdout().is_terminal();
    let flows: Mutex<Vec<Flow>> = Mutex::new(Vec::new());
    let phase = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut events: Vec<Event> = Vec::new();
    // BGP sessions that changed state other than by the demo's own events.
    let mut flapped: Vec<String> = Vec::new();
    println!(
        "== phase 1/4: {} for {} s: short flows and long-lived connections over both edges",
        titles[0], a.seconds
    );

    let result = std::thread::scope(|s| -> lab::Result<()> {
        // Short flows, one after another, from the client's namespace. The control API's
        // sockets and the pinned maps are not network-namespaced, so lookups and attribution
        // run from there too.
        let traffic = s.spawn(|| {
            bgp.lab.in_netns(CLIENT, || {
                let mut agents = EDGES.map(|e| Agent::new(bgp.api_socket(e)));
                let mut sent = [0usize; 4];
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..10 {
                        let p = phase.load(Ordering::Relaxed);
                        if sent[p] >= a.flows {
                            std::thread::sleep(Duration::from_millis(50));
                            break;
                        }
                        let (at, since) = (Instant::now(), monotonic_ns());
                        let (local, answer) = short_flow(client, target);
                        let (via, predicted) = match local {
                            Some(l) => (
                                tracker.via(l, target, since),
                                predict(&mut agents, l, target),
                            ),
                            None => (
                                Via::Unseen,
                                Prediction::Unknown("no source address".to_owned()),
                            ),
                        };
                        flows.lock().expect("flows").push(Flow {
                            phase: p,
                            started: at,
                            local,
                            answer,
                            via,
                            predicted,
                        });
                        sent[p] += 1;
                    }
                    // Leave the CPU some room for the long-lived connections (2-core machines).
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        });

        let mut view = View::new(tty);
        let mut agents = EDGES.map(|e| Agent::new(bgp.api_socket(e)));
        let mut rate = [0f64; 2];
        let mut last_packets: [Option<(Instant, u64)>; 2] = [None; 2];
        let mut pending: Option<std::thread::ScopedJoinHandle<'_, Event>> = None;
        let mut route = route_line(&bgp);
        let mut next_tick = Instant::now();
        'phases: for p in 0..4 {
            if p > 0 {
                if let Some(h) = pending.take() {
                    let e = h
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    view.note_event(&e);
                    events.push(e);
                }
                // No session may have changed: drain and undrain keep them up.
                let now = sessions(&bgp)?;
                for c in session_changes(&known, &now, None) {
                    view.note(&format!("   BGP session flapped during phase {p}: {c}"));
                    flapped.push(format!("phase {p}: {c}"));
                }
                known = now;
                let (title, action) = event_plan(p, a.fail);
                view.note(&format!(
                    "== {:.1} s: {title}",
                    started.elapsed().as_secs_f64()
                ));
                let (bgp, phase) = (&bgp, &phase);
                pending = Some(s.spawn(move || {
                    run_event(bgp, title, action, || phase.store(p, Ordering::Relaxed))
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
                    let e = pending
                        .take()
                        .expect("checked")
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    view.note_event(&e);
                    events.push(e);
                }
                if Instant::now() >= next_tick {
                    next_tick += Duration::from_secs(1);
                    route = route_line(&bgp);
                    for (i, agent) in agents.iter_mut().enumerate() {
                        let now = Instant::now();
                        if let Some(n) = agent.vip_packets() {
                            if let Some((then, before)) = last_packets[i] {
                                rate[i] = n.saturating_sub(before) as f64
                                    / now.duration_since(then).as_secs_f64();
                            }
                            last_packets[i] = Some((now, n));
                        }
                    }
                    if !tty {
                        let f = flows.lock().expect("flows");
                        view.line(&progress_line(
                            started.elapsed(),
                            &titles[p],
                            &route,
                            &f,
                            &conns.snapshot(),
                            rate,
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
                        Some(rate),
                    ));
                }
                std::thread::sleep(Duration::from_millis(if tty { 250 } else { 50 }));
            }
        }
        if let Some(h) = pending.take() {
            let e = h
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            view.note_event(&e);
            events.push(e);
        }
        stop.store(true, Ordering::Relaxed);
        view.note("== stopping: the last short flow, then draining the long-lived connections");
        traffic
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    result?;

    let report = conns.stop();
    for c in session_changes(&known, &sessions(&bgp)?, Some(a.fail)) {
        flapped.push(format!("phase 4: {c}"));
    }
    let flows = flows.into_inner().expect("flows");
    println!(
        "\n== summary ({} encapsulation, {:.1} s)",
        a.encapsulation,
        started.elapsed().as_secs_f64()
    );
    print!(
        "{}",
        render(
            started.elapsed(),
            (3, &titles),
            &route_line(&bgp),
            &flows,
            &report,
            None
        )
    );
    let ok = summarize(a, timers.as_deref(), &events, &flapped, &flows, &report);
    println!("== cleaning up");
    drop(bgp);
    println!("   done");
    Ok(ok)
}

enum Action {
    Drain,
    Undrain,
    Fail(&'static str),
}

fn event_plan(phase: usize, fail: &'static str) -> (String, Action) {
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
fn run_event(bgp: &BgpLab, title: String, action: Action, taken: impl FnOnce()) -> Event {
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

// ---------------------------------------------------------------------------------------------
// Views

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

fn render(
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

fn progress_line(
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
struct View {
    tty: bool,
    lines: usize,
}

impl View {
    fn new(tty: bool) -> View {
        View { tty, lines: 0 }
    }

    fn clear_frame(&mut self, out: &mut impl std::io::Write) {
        if self.tty && self.lines > 0 {
            // Up to the frame's first line, clear to the end of the screen.
            let _ = write!(out, "\x1b[{}A\x1b[J", self.lines);
            self.lines = 0;
        }
    }

    fn frame(&mut self, frame: &str) {
        let mut out = std::io::stdout().lock();
        self.clear_frame(&mut out);
        let _ = write!(out, "{frame}");
        self.lines = frame.lines().count();
        let _ = out.flush();
    }

    fn line(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// A line that stays above the redrawn frame.
    fn note(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        self.clear_frame(&mut out);
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    fn note_event(&mut self, e: &Event) {
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

// ---------------------------------------------------------------------------------------------
// What the design promises, checked

fn summarize(
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
