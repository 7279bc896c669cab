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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anycast::dataplane::program_log::ProgramLog;
use anycast_common::{
    AddrKey, Backend, CFG_F_HAS_SRC_V4, CFG_F_HAS_SRC_V6, DataplaneConfig, ENCAP_IPIP,
    GUE_DEFAULT_PORT, LOG_INTERVAL_NS, NO_TABLE, PROTO_TCP, VipKey, VipValue, counter, event,
};
use anycast_tests::fixture::{
    Dataplane, Sizes, XDP_DROP, XDP_PASS, XDP_TX, fixture_netns, ifindex, net,
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
        let a = anycast::dataplane::addr_key_of(addr);
        dp.set_backend(
            id,
            Backend {
                addr_be: a.addr_be,
                family: a.family,
                flags: 0,
                generation: 1,
            },
        );
    }
    for (vip, id) in [
        (V_BAD_TABLE, Some(MISSING_ID)),
        (V_BLACKHOLE4, Some(1)),
        (V_BLACKHOLE6, Some(2)),
        (V_SMALL_MTU, Some(3)),
        (V_OK, Some(4)),
        (V_NO_TABLE, None),
    ] {
        let table = match id {
            Some(id) => {
                dp.set_table(vip, &vec![id; RING as usize]);
                vip
            }
            None => NO_TABLE,
        };
        dp.set_vip(
            VipKey::v4(vip_addr(vip).octets(), 80, PROTO_TCP),
            VipValue {
                vip_id: vip,
                table,
                prev_table: NO_TABLE,
                flags: 0,
            },
        );
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
        let mut cpus = nix::sched::CpuSet::new();
        cpus.set(CPU).expect("cpu set");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)
            .expect("pinning the test thread to one CPU");
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

    /// Runs `frame`, checks the action and that `counter` (one of the outcome counters) grew by
    /// one, and returns the records it produced.
    fn run(&mut self, what: &str, frame: &[u8], action: u32, counter: u32) -> Vec<Rec> {
        let before = self.dp.stats()[counter as usize];
        let r = self
            .dp
            .run(frame, Some(self.dev))
            .unwrap_or_else(|e| panic!("{what}: test run: {e}"));
        assert_eq!(r.action, action, "{what}: action");
        assert_eq!(
            self.dp.stats()[counter as usize] - before,
            1,
            "{what}: counter {}",
            counter::NAMES[counter as usize]
        );
        self.records()
    }

    fn records(&mut self) -> Vec<Rec> {
        self.log.drain();
        std::mem::take(&mut *self.got.0.lock().unwrap())
    }
}

fn one(what: &str, got: Vec<Rec>, level: log::Level, class: u32, text: &str) {
    let want = Rec {
        level,
        class: event::NAMES[class as usize].to_owned(),
        text: text.to_owned(),
    };
    assert_eq!(got, [want], "{what}");
}

#[test]
fn each_logged_anomaly_yields_one_line_with_its_details_and_traffic_none() {
    if !anycast_tests::privileged("each_logged_anomaly_yields_one_line_with_its_details") {
        return;
    }
    let ns = fixture_netns();
    ns.enter(|| {
        let mut b = Bench::new(anycast::dataplane::program_log::ALL_LEVELS);

        // Traffic on the fast paths, and a VIP without a table (an expected state, counted
        // no_backend), logs nothing.
        let got = b.run("encapsulated", &to_vip(V_OK, 40000, 64), XDP_TX, counter::ENCAP);
        assert_eq!(got, [], "encapsulation");
        let frame = p::frame(None, &V4::new(CLIENT_V4, net::EDGE_V4).tcp(1, 22, b"x"));
        assert_eq!(b.run("pass", &frame, XDP_PASS, counter::PASS), []);
        let got = b.run("decap", &tunnel_v4(ALLOWED_V4), XDP_PASS, counter::DECAP);
        assert_eq!(got, [], "decapsulation");
        let got = b.run("no table", &to_vip(V_NO_TABLE, 1, 8), XDP_DROP, counter::NO_BACKEND);
        assert_eq!(got, [], "VIP without a table");

        let got = b.run(
            "table names a missing backend",
            &to_vip(V_BAD_TABLE, 40000, 64),
            XDP_DROP,
            counter::INTERNAL_ERROR,
        );
        one(
            "table_inconsistent",
            got,
            log::Level::Error,
            event::TABLE_INCONSISTENT,
            &format!(
                "VIP table names a backend id beyond BACKENDS, packet dropped: vip_id={V_BAD_TABLE} table={V_BAD_TABLE} backend_id={MISSING_ID} cpu={CPU} suppressed=0"
            ),
        );

        // BPF_FIB_LKUP_RET_BLACKHOLE = 1, for either outer family.
        let got = b.run(
            "blackholed IPv4 backend",
            &to_vip(V_BLACKHOLE4, 40000, 64),
            XDP_DROP,
            counter::FIB_FAIL,
        );
        one(
            "fib_fail, IPv4 backend",
            got,
            log::Level::Warn,
            event::FIB_FAIL,
            &format!(
                "no route to the backend, packet dropped: rc=1 backend={} cpu={CPU} suppressed=0",
                net::v4(net::BLACKHOLE_V4, 10)
            ),
        );
        b.dp.reset_log_rate();
        let got = b.run(
            "blackholed IPv6 backend",
            &to_vip(V_BLACKHOLE6, 40000, 64),
            XDP_DROP,
            counter::FIB_FAIL,
        );
        one(
            "fib_fail, IPv6 backend",
            got,
            log::Level::Warn,
            event::FIB_FAIL,
            &format!(
                "no route to the backend, packet dropped: rc=1 backend={} cpu={CPU} suppressed=0",
                net::v6(net::BLACKHOLE_V6, 0x10)
            ),
        );

        // 1281 bytes of IPv4 (20 + 20 + 1241) fit the route's MTU of 1300 only before the 20
        // bytes of the outer header.
        let frame = to_vip(V_SMALL_MTU, 40000, 1241);
        let got = b.run("too large for the route", &frame, XDP_DROP, counter::OVERSIZE);
        one(
            "oversize",
            got,
            log::Level::Warn,
            event::OVERSIZE,
            &format!(
                "encapsulated packet exceeds the route MTU, packet dropped: length=1281 encapsulated=1301 mtu={} backend={} cpu={CPU} suppressed=0",
                net::SMALL_MTU,
                net::v4(net::SMALL_MTU_V4, 10)
            ),
        );
        let fits = to_vip(V_SMALL_MTU, 40000, 1240);
        assert_eq!(b.run("fits", &fits, XDP_TX, counter::ENCAP), [], "1300 bytes fit");

        let got = b.run(
            "IPIP from a refused source",
            &tunnel_v4(REFUSED_V4),
            XDP_DROP,
            counter::DECAP_REFUSED,
        );
        one(
            "decap_refused, IPv4",
            got,
            log::Level::Warn,
            event::DECAP_REFUSED,
            &format!(
                "tunnel packet from a source outside decap_allow dropped: src={REFUSED_V4} dst={} proto=4 cpu={CPU} suppressed=0",
                net::EDGE_V4
            ),
        );
        b.dp.reset_log_rate();
        let got = b.run(
            "6in6 from a refused source",
            &tunnel_v6(REFUSED_V6),
            XDP_DROP,
            counter::DECAP_REFUSED,
        );
        one(
            "decap_refused, IPv6",
            got,
            log::Level::Warn,
            event::DECAP_REFUSED,
            &format!(
                "tunnel packet from a source outside decap_allow dropped: src={REFUSED_V6} dst={} proto=41 cpu={CPU} suppressed=0",
                net::EDGE_V6
            ),
        );

        // One new entry per CPU per second: the first flow is tracked, the second is not (and
        // still encapsulated).
        b.dp.set_config(&config(1));
        b.dp.clear_conns();
        let got = b.run("first flow", &to_vip(V_OK, 50000, 8), XDP_TX, counter::CONN_INSERT);
        assert_eq!(got, [], "a tracked flow");
        let got = b.run(
            "second flow",
            &to_vip(V_OK, 50001, 8),
            XDP_TX,
            counter::CONN_INSERT_LIMITED,
        );
        one(
            "conn_insert_limited",
            got,
            log::Level::Warn,
            event::CONN_INSERT_LIMITED,
            &format!(
                "connection-tracking insert limit reached, new flows follow the table untracked: limit_per_s=1 cpu={CPU} suppressed=0"
            ),
        );
        assert_eq!(b.dp.conn_count(), 1, "the limited flow is not tracked");
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
        let frame = tunnel_v4(REFUSED_V4);
        let start = Instant::now();
        let mut lines = Vec::new();
        for i in 0..BURST {
            lines.extend(b.run(
                &format!("refused tunnel packet {i}"),
                &frame,
                XDP_DROP,
                counter::DECAP_REFUSED,
            ));
        }
        // Another class has its own window.
        let other = b.run(
            "blackholed backend",
            &to_vip(V_BLACKHOLE4, 40000, 64),
            XDP_DROP,
            counter::FIB_FAIL,
        );
        let burst = start.elapsed();
        let window = Duration::from_nanos(LOG_INTERVAL_NS);
        assert!(
            burst < window,
            "the burst took {burst:?}, longer than the {window:?} window: the machine is too \
             loaded for this test to tell one window from two"
        );
        let line = |suppressed: u64| Rec {
            level: log::Level::Warn,
            class: event::NAMES[event::DECAP_REFUSED as usize].to_owned(),
            text: format!(
                "tunnel packet from a source outside decap_allow dropped: src={REFUSED_V4} dst={} proto=4 cpu={CPU} suppressed={suppressed}",
                net::EDGE_V4
            ),
        };
        assert_eq!(lines, [line(0)], "{BURST} events within one window");
        assert_eq!(other.len(), 1, "fib_fail in the same second: {other:?}");
        let rate = b.dp.log_rate(event::DECAP_REFUSED)[CPU];
        assert_eq!(rate.suppressed, BURST - 1, "suppressed events counted");

        // The window opened during the first run, after `start`; the margin covers that run.
        std::thread::sleep(window.saturating_sub(start.elapsed()) + Duration::from_millis(250));
        let next = b.run("after the window", &frame, XDP_DROP, counter::DECAP_REFUSED);
        assert_eq!(next, [line(BURST - 1)], "the first line after the window");
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
        let got = b.run(
            "table names a missing backend",
            &to_vip(V_BAD_TABLE, 40000, 64),
            XDP_DROP,
            counter::INTERNAL_ERROR,
        );
        assert_eq!(got, [], "level 0, error line");
        let got = b.run(
            "refused",
            &tunnel_v4(REFUSED_V4),
            XDP_DROP,
            counter::DECAP_REFUSED,
        );
        assert_eq!(got, [], "level 0, warn line");
        drop(b);

        // 1 (error): the error line only.
        let mut b = Bench::new(aya_log::Level::Error as u8);
        let got = b.run(
            "table names a missing backend",
            &to_vip(V_BAD_TABLE, 40000, 64),
            XDP_DROP,
            counter::INTERNAL_ERROR,
        );
        assert_eq!(got.len(), 1, "level error, error line: {got:?}");
        assert_eq!(got[0].level, log::Level::Error);
        let got = b.run(
            "refused",
            &tunnel_v4(REFUSED_V4),
            XDP_DROP,
            counter::DECAP_REFUSED,
        );
        assert_eq!(got, [], "level error, warn line");
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
    assert_eq!(
        l["fields"]["message"],
        format!(
            "tunnel packet from a source outside decap_allow dropped: src={REFUSED_V4} dst={} proto=4 cpu={CPU} suppressed=0",
            net::EDGE_V4
        ),
        "{l}"
    );
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
