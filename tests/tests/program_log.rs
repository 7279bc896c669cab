//! The program's log lines (aya-log): packets through BPF_PROG_TEST_RUN that trigger each logged
//! anomaly, read back with the agent's reader (`anycast::dataplane::program_log::ProgramLog`, which finds the
//! ring buffer through the program's id, as the agent does).
//!
//! What these pin down (docs/dataplane.md, "Log lines"):
//! - each event class yields one record with its level, its class as target and the exact text,
//!   addresses of both families formatted as addresses; traffic on the fast paths yields none;
//! - N > 1 events of a class on one CPU within a second yield one line; the next line, after the
//!   window, reports the N - 1 suppressed; each class has its own window;
//! - the program's log level (`AYA_LOG_LEVEL`, set at load from the agent's filter) keeps the
//!   lines above it from being written at all, while the counters still count;
//! - the agent's bridge prints a record as a `tracing` event with target `anycast::program`,
//!   the record's level and its class as the field `event` (checked on the JSON format).
//!
//! Every run happens on one CPU (the test thread is pinned), so the per-CPU rate limit sees all
//! of them and `cpu=` is known.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anycast::dataplane::program_log::ProgramLog;
use anycast_common::{
    AddrKey, CFG_F_HAS_SRC_V4, CFG_F_HAS_SRC_V6, DataplaneConfig, ENCAP_IPIP, GUE_DEFAULT_PORT,
    LOG_INTERVAL_NS, NO_TABLE, PROTO_TCP, VipKey, counter, event,
};
use anycast_tests::fixture::{
    Dataplane, Sizes, XDP_DROP, XDP_PASS, XDP_TX, fixture_netns, ifindex, net, pin_to_cpu,
};
use anycast_tests::packet::{self as p, V4, V6};

const RING: u32 = 13;
const SIZES: Sizes = Sizes {
    max_vips: 8,
    ring_size: RING,
    max_backends: 16,
};
/// The CPU every run happens on.
const CPU: usize = 0;

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 1);
const REFUSED_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 6, 1);
const REFUSED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 6, 0, 0, 0, 0, 0, 1);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 7);

/// A backend id no `BACKENDS` of `SIZES` holds.
const MISSING_ID: u32 = 999;

/// VIPs (id = table = VIP_STATS index) and the backend id every slot of their table names.
const V_BAD_TABLE: u32 = 0;
const V_BLACKHOLE4: u32 = 1;
const V_BLACKHOLE6: u32 = 2;
const V_SMALL_MTU: u32 = 3;
const V_OK: u32 = 4;
const V_NO_TABLE: u32 = 5;

fn vip_addr(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 1 + id as u8)
}

/// Backends: id -> address.
fn backends() -> Vec<(u32, IpAddr)> {
    vec![
        (1, net::v4(net::BLACKHOLE_V4, 10).into()),
        (2, net::v6(net::BLACKHOLE_V6, 0x10).into()),
        (3, net::v4(net::SMALL_MTU_V4, 10).into()),
        (4, net::v4(net::BACKENDS_V4, 10).into()),
    ]
}

fn config(conn_insert_limit: u32) -> DataplaneConfig {
    DataplaneConfig {
        tunnel_src_v4_be: net::EDGE_V4.octets(),
        tunnel_src_v6_be: net::EDGE_V6.octets(),
        ring_size: RING,
        hash_seed: 42,
        gue_port_be: GUE_DEFAULT_PORT.to_be(),
        encap: ENCAP_IPIP,
        flags: CFG_F_HAS_SRC_V4 | CFG_F_HAS_SRC_V6,
        conn_udp_timeout_s: 30,
        conn_insert_limit,
    }
}

fn setup(dp: &mut Dataplane) {
    for (id, addr) in backends() {
        dp.set_backend_addr(id, addr, 0, 1);
    }
    for (vip, id) in [
        (V_BAD_TABLE, Some(MISSING_ID)),
        (V_BLACKHOLE4, Some(1)),
        (V_BLACKHOLE6, Some(2)),
        (V_SMALL_MTU, Some(3)),
        (V_OK, Some(4)),
        (V_NO_TABLE, None),
    ] {
        let ring = id.map(|id| vec![id; RING as usize]);
        let key = VipKey::v4(vip_addr(vip).octets(), 80, PROTO_TCP);
        dp.publish_vip(key, vip, vip, ring.as_deref(), NO_TABLE);
    }
    dp.add_local(AddrKey::v4(net::EDGE_V4.octets()));
    dp.add_local(AddrKey::v6(net::EDGE_V6.octets()));
    dp.allow_v4(Ipv4Addr::new(198, 18, 5, 0), 24);
    dp.allow_v6(Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0, 0), 64);
    dp.set_config(&config(0));
}

/// A TCP segment (ACK|PSH) from the client to VIP `vip`, with `payload` bytes.
fn to_vip(vip: u32, sport: u16, payload: usize) -> Vec<u8> {
    p::frame(
        None,
        &V4::new(CLIENT_V4, vip_addr(vip)).tcp(sport, 80, &vec![0x5a; payload]),
    )
}

/// `frame` (untagged) with VLAN tag 100.
fn tagged(frame: Vec<u8>) -> Vec<u8> {
    p::frame(Some(100), &frame[14..])
}

/// A TCP segment from the client to this host's own address (not a VIP).
fn to_local() -> Vec<u8> {
    p::frame(None, &V4::new(CLIENT_V4, net::EDGE_V4).tcp(1, 22, b"x"))
}

fn inner_v4() -> Vec<u8> {
    V4::new(CLIENT_V4, vip_addr(V_OK)).tcp(40000, 80, b"hello")
}

fn tunnel_v4(src: Ipv4Addr) -> Vec<u8> {
    p::frame(None, &p::ipip_v4(src, net::EDGE_V4, &inner_v4()))
}

fn tunnel_v6(src: Ipv6Addr) -> Vec<u8> {
    let inner = V6::new(CLIENT_V6, Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10))
        .tcp(40000, 80, b"hello");
    p::frame(None, &p::ipip_v6(src, net::EDGE_V6, &inner))
}

/// A record as the reader hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    level: log::Level,
    class: String,
    text: String,
}

/// A `log::Log` that keeps what it is given.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Rec>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        self.0.lock().unwrap().push(Rec {
            level: r.level(),
            class: r.target().to_owned(),
            text: r.args().to_string(),
        });
    }
    fn flush(&self) {}
}

/// The loaded program, its log reader and what the reader received.
struct Bench {
    dp: Dataplane,
    log: ProgramLog<Capture>,
    got: Capture,
    dev: u32,
}

impl Bench {
    /// Loads the program with `log_level`, fills the maps, pins this thread to [`CPU`]. Call
    /// from inside the fixture namespace.
    fn new(log_level: u8) -> Bench {
        pin_to_cpu(CPU);
        let mut dp = Dataplane::load_with_log_level(SIZES, log_level);
        setup(&mut dp);
        let got = Capture::default();
        let log = ProgramLog::open_with(dp.program_id(), got.clone())
            .unwrap_or_else(|e| panic!("opening the program's log: {e}"));
        Bench {
            dp,
            log,
            got,
            dev: ifindex(net::DEV),
        }
    }

    /// Runs `s`, checks the action and that its counter (one of the outcome counters) grew by
    /// one, and returns the records it produced.
    fn run(&mut self, s: &Step) -> Vec<Rec> {
        let what = s.what;
        let before = self.dp.stats()[s.counter as usize];
        let r = self
            .dp
            .run(&s.frame, Some(self.dev))
            .unwrap_or_else(|e| panic!("{what}: test run: {e}"));
        assert_eq!(r.action, s.action, "{what}: action");
        assert_eq!(
            self.dp.stats()[s.counter as usize] - before,
            1,
            "{what}: counter {}",
            counter::NAMES[s.counter as usize]
        );
        self.records()
    }

    fn records(&mut self) -> Vec<Rec> {
        self.log.drain();
        std::mem::take(&mut *self.got.0.lock().unwrap())
    }
}

/// A frame to run, the action it must get and the outcome counter it must grow by one.
struct Step {
    what: &'static str,
    frame: Vec<u8>,
    action: u32,
    counter: u32,
}

/// An action and the outcome counter that goes with it.
type Outcome = (u32, u32);
const ENCAPSULATED: Outcome = (XDP_TX, counter::ENCAP);
const PASSED: Outcome = (XDP_PASS, counter::PASS);
const DECAPSULATED: Outcome = (XDP_PASS, counter::DECAP);
const NO_BACKEND: Outcome = (XDP_DROP, counter::NO_BACKEND);
const OVERSIZE: Outcome = (XDP_DROP, counter::OVERSIZE);
const INTERNAL_ERROR: Outcome = (XDP_DROP, counter::INTERNAL_ERROR);
const FIB_FAIL: Outcome = (XDP_DROP, counter::FIB_FAIL);
const DECAP_REFUSED: Outcome = (XDP_DROP, counter::DECAP_REFUSED);

fn step(what: &'static str, frame: Vec<u8>, (action, counter): Outcome) -> Step {
    Step {
        what,
        frame,
        action,
        counter,
    }
}

/// A VIP whose table names a backend id beyond BACKENDS: dropped, an error line.
fn bad_table() -> Step {
    let frame = to_vip(V_BAD_TABLE, 40000, 64);
    step("table names a missing backend", frame, INTERNAL_ERROR)
}

/// IPIP from a source outside decap_allow: dropped, a warn line.
fn refused_v4() -> Step {
    step(
        "IPIP from a refused source",
        tunnel_v4(REFUSED_V4),
        DECAP_REFUSED,
    )
}

/// To a VIP whose backend is blackholed: dropped, a warn line.
fn blackholed(vip: u32) -> Step {
    step("blackholed backend", to_vip(vip, 40000, 64), FIB_FAIL)
}

/// A record of class `class`.
fn line(level: log::Level, class: u32, text: String) -> Rec {
    Rec {
        level,
        class: event::NAMES[class as usize].to_owned(),
        text,
    }
}

/// The decap_refused line for a tunnel packet `src` -> `dst` carrying IP protocol `proto`.
fn decap_refused(src: IpAddr, dst: IpAddr, proto: u8, suppressed: u64) -> Rec {
    line(
        log::Level::Warn,
        event::DECAP_REFUSED,
        format!(
            "tunnel packet from a source outside decap_allow dropped: src={src} dst={dst} proto={proto} cpu={CPU} suppressed={suppressed}"
        ),
    )
}

/// The decap_refused line of [`refused_v4`].
fn refused_v4_line(suppressed: u64) -> Rec {
    decap_refused(REFUSED_V4.into(), net::EDGE_V4.into(), 4, suppressed)
}

/// The fib_fail line of a blackholed backend (BPF_FIB_LKUP_RET_BLACKHOLE = 1).
fn fib_fail(backend: IpAddr) -> Rec {
    line(
        log::Level::Warn,
        event::FIB_FAIL,
        format!(
            "no route to the backend, packet dropped: rc=1 backend={backend} cpu={CPU} suppressed=0"
        ),
    )
}

#[test]
fn each_logged_anomaly_yields_one_line_with_its_details_and_traffic_none() {
    if !anycast_tests::privileged("each_logged_anomaly_yields_one_line_with_its_details") {
        return;
    }
    // Traffic on the fast paths, and a VIP without a table (an expected state, counted
    // no_backend), logs nothing. 1280 bytes of IPv4 (20 + 20 + 1240) fit the route's MTU of
    // 1300 with the 20 bytes of the outer header.
    let quiet = [
        step("encapsulation", to_vip(V_OK, 40000, 64), ENCAPSULATED),
        step("pass", to_local(), PASSED),
        step("decapsulation", tunnel_v4(ALLOWED_V4), DECAPSULATED),
        step("no table", to_vip(V_NO_TABLE, 1, 8), NO_BACKEND),
        step("fits", to_vip(V_SMALL_MTU, 40000, 1240), ENCAPSULATED),
    ];
    let (small_mtu, mtu) = (net::v4(net::SMALL_MTU_V4, 10), net::SMALL_MTU);
    let anomalies = [
        (
            bad_table(),
            line(
                log::Level::Error,
                event::TABLE_INCONSISTENT,
                format!(
                    "VIP table names a backend id beyond BACKENDS, packet dropped: vip_id={V_BAD_TABLE} table={V_BAD_TABLE} backend_id={MISSING_ID} cpu={CPU} suppressed=0"
                ),
            ),
        ),
        (
            blackholed(V_BLACKHOLE4),
            fib_fail(net::v4(net::BLACKHOLE_V4, 10).into()),
        ),
        (
            blackholed(V_BLACKHOLE6),
            fib_fail(net::v6(net::BLACKHOLE_V6, 0x10).into()),
        ),
        // 1281 bytes of IPv4 (20 + 20 + 1241) fit the route's MTU of 1300 only before the 20
        // bytes of the outer header. Tagged: an untagged client gets "packet too big" instead
        // (no line: nothing is lost); a tagged frame is dropped, and that is logged.
        (
            step(
                "too large",
                tagged(to_vip(V_SMALL_MTU, 40000, 1241)),
                OVERSIZE,
            ),
            line(
                log::Level::Warn,
                event::OVERSIZE,
                format!(
                    "encapsulated packet exceeds the route MTU, packet dropped: length=1281 encapsulated=1301 mtu={mtu} backend={small_mtu} cpu={CPU} suppressed=0"
                ),
            ),
        ),
        (refused_v4(), refused_v4_line(0)),
        (
            step("refused 6in6", tunnel_v6(REFUSED_V6), DECAP_REFUSED),
            decap_refused(REFUSED_V6.into(), net::EDGE_V6.into(), 41, 0),
        ),
    ];
    let ns = fixture_netns();
    ns.enter(|| {
        let mut b = Bench::new(anycast::dataplane::program_log::ALL_LEVELS);
        for s in &quiet {
            assert_eq!(b.run(s), [], "{}", s.what);
        }
        let mut seen = BTreeSet::new();
        for (s, want) in anomalies {
            // One line per class per window: the second event of a class gets a fresh window.
            if !seen.insert(want.class.clone()) {
                b.dp.reset_log_rate();
            }
            assert_eq!(b.run(&s), [want], "{}", s.what);
        }

        // One promotion into the established tier per CPU per second: the first flow's second
        // packet is promoted, the second flow's is not (and still encapsulated).
        b.dp.set_config(&config(1));
        b.dp.clear_conns();
        for port in [50000, 50001] {
            let new = step("new flow", to_vip(V_OK, port, 8), (XDP_TX, counter::CONN_NEW));
            assert_eq!(b.run(&new), [], "{}", new.what);
        }
        let first = step("first flow", to_vip(V_OK, 50000, 8), (XDP_TX, counter::CONN_INSERT));
        assert_eq!(b.run(&first), [], "{}", first.what);
        let limited_outcome = (XDP_TX, counter::CONN_INSERT_LIMITED);
        let second = step("second flow", to_vip(V_OK, 50001, 8), limited_outcome);
        let limited = line(
            log::Level::Warn,
            event::CONN_INSERT_LIMITED,
            format!(
                "connection-tracking promotion limit reached, new flows stay in the new-flow tier: limit_per_s=1 cpu={CPU} suppressed=0"
            ),
        );
        assert_eq!(b.run(&second), [limited], "conn_insert_limited");
        assert_eq!(b.dp.established_count(), 1, "the limited flow is not promoted");
        assert_eq!(b.dp.conn_count(), 2, "the limited flow keeps its new-flow entry");
    });
}

#[test]
fn a_burst_within_the_window_yields_one_line_and_the_next_line_counts_the_rest() {
    if !anycast_tests::privileged("a_burst_within_the_window_yields_one_line") {
        return;
    }
    const BURST: u64 = 20;
    let ns = fixture_netns();
    ns.enter(|| {
        let mut b = Bench::new(anycast::dataplane::program_log::ALL_LEVELS);
        let refused = refused_v4();
        let start = Instant::now();
        let mut lines = Vec::new();
        for _ in 0..BURST {
            lines.extend(b.run(&refused));
        }
        // Another class has its own window.
        let other = b.run(&blackholed(V_BLACKHOLE4));
        let burst = start.elapsed();
        let window = Duration::from_nanos(LOG_INTERVAL_NS);
        assert!(
            burst < window,
            "the burst took {burst:?}, longer than the {window:?} window: the machine is too \
             loaded for this test to tell one window from two"
        );
        assert_eq!(lines, [refused_v4_line(0)], "{BURST} events within one window");
        assert_eq!(other.len(), 1, "fib_fail in the same second: {other:?}");
        let rate = b.dp.log_rate(event::DECAP_REFUSED)[CPU];
        assert_eq!(rate.suppressed, BURST - 1, "suppressed events counted");

        // The window opened during the first run, after `start`; the margin covers that run.
        std::thread::sleep(window.saturating_sub(start.elapsed()) + Duration::from_millis(250));
        let next = b.run(&refused);
        assert_eq!(next, [refused_v4_line(BURST - 1)], "the first line after the window");
        assert_eq!(b.dp.log_rate(event::DECAP_REFUSED)[CPU].suppressed, 0);
        eprintln!(
            "{BURST} decap_refused events in {burst:?}: 1 line; next window: 1 line with suppressed={}",
            BURST - 1
        );
    });
}

#[test]
fn the_program_level_keeps_lines_above_it_from_being_written() {
    if !anycast_tests::privileged("the_program_level_keeps_lines_above_it_from_being_written") {
        return;
    }
    let ns = fixture_netns();
    ns.enter(|| {
        // 0: nothing is written, the counters still count.
        let mut b = Bench::new(0);
        assert_eq!(b.run(&bad_table()), [], "level 0, error line");
        assert_eq!(b.run(&refused_v4()), [], "level 0, warn line");
        drop(b);

        // 1 (error): the error line only.
        let mut b = Bench::new(aya_log::Level::Error as u8);
        let got = b.run(&bad_table());
        assert_eq!(got.len(), 1, "level error, error line: {got:?}");
        assert_eq!(got[0].level, log::Level::Error);
        assert_eq!(b.run(&refused_v4()), [], "level error, warn line");
    });
}

#[test]
fn the_agents_reader_prints_a_record_as_a_json_line_with_target_level_and_class() {
    if !anycast_tests::privileged("the_agents_reader_prints_a_record_as_a_json_line") {
        return;
    }
    let ns = fixture_netns();
    let out = ns.enter(|| {
        let mut b = Bench::new(anycast::dataplane::program_log::ALL_LEVELS);
        // The agent's reader (ProgramLog::open: the tracing bridge) on the same program.
        let mut reader = ProgramLog::open(b.dp.program_id()).expect("opening the program's log");
        let r =
            b.dp.run(&tunnel_v4(REFUSED_V4), Some(b.dev))
                .expect("test run");
        assert_eq!(r.action, XDP_DROP);
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(out.clone())
            .json()
            .finish();
        tracing::subscriber::with_default(subscriber, || reader.drain());
        String::from_utf8(out.0.lock().unwrap().clone()).expect("utf-8")
    });
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    let l = &lines[0];
    assert_eq!(l["target"], "anycast::program", "{l}");
    assert_eq!(l["level"], "WARN", "{l}");
    assert_eq!(l["fields"]["event"], "decap_refused", "{l}");
    assert_eq!(l["fields"]["message"], refused_v4_line(0).text, "{l}");
    eprintln!("{out}");
}

/// A writer a `tracing` subscriber shares with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}
