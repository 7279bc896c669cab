//! The BPF_PROG_TEST_RUN fixture runner: a network namespace with the routes and neighbours that
//! `bpf_fib_lookup` needs, a thin writer for the program's maps, and a table runner that checks
//! action, output bytes and counter deltas of every fixture and reports all failures at once.
//!
//! Why a namespace: `bpf_fib_lookup` in an XDP test run resolves in the netns of the packet's
//! ingress device, which is the loopback device of the calling thread's netns when no `ctx_in`
//! is given (net/bpf/test_run.c, `bpf_prog_test_run_xdp`). So every run happens on a dedicated
//! thread that has entered the fixture namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anycast_common::{
    AddrKey, Backend, ConnKey, ConnValue, DataplaneConfig, LogRate, TABLES_PER_VIP, TrafficStats,
    VipKey, VipValue, counter, map_names,
};
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions, Xdp};

use crate::packet::{self, hex_diff};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn action_name(a: u32) -> String {
    match a {
        XDP_ABORTED => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        other => format!("action {other}"),
    }
}

/// The fixture namespace's addresses. Lab hosts use 198.18.0.0/15 and fd00::/8 only.
pub mod net {
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The veth inside the fixture namespace that routes to backends use.
    pub const DEV: &str = "acf0";
    /// Its peer (same namespace, up, no addresses: only there so `DEV` has a carrier).
    pub const PEER: &str = "acf1";
    /// MAC of `DEV` (= source MAC of frames the program sends out of it).
    pub const DEV_MAC: [u8; 6] = crate::packet::EDGE_MAC;
    /// MAC of the gateway with a permanent neighbour entry.
    pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    pub const EDGE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const GW_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    /// A gateway without a neighbour entry: lookups through it return NO_NEIGH.
    pub const GW_UNRESOLVED_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
    pub const EDGE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1);
    pub const GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
    pub const GW_UNRESOLVED_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 3);

    /// Backends reachable through `GW_V4` / `GW_V6`.
    pub const BACKENDS_V4: &str = "198.19.1.0/24";
    pub const BACKENDS_V6: &str = "fd00:1::/64";
    /// Backends behind the unresolved gateway.
    pub const UNRESOLVED_V4: &str = "198.19.2.0/24";
    pub const UNRESOLVED_V6: &str = "fd00:2::/64";
    /// Backends behind a route with MTU 1300.
    pub const SMALL_MTU_V4: &str = "198.19.3.0/24";
    pub const SMALL_MTU_V6: &str = "fd00:3::/64";
    pub const SMALL_MTU: usize = 1300;
    /// Blackholed backends (FIB failure other than NO_NEIGH / FRAG_NEEDED).
    pub const BLACKHOLE_V4: &str = "198.19.4.0/24";
    pub const BLACKHOLE_V6: &str = "fd00:4::/64";

    pub fn v4(net: &str, host: u8) -> Ipv4Addr {
        let base: Ipv4Addr = net
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("v4 prefix");
        let o = base.octets();
        Ipv4Addr::new(o[0], o[1], o[2], host)
    }

    pub fn v6(net: &str, host: u16) -> Ipv6Addr {
        let base: Ipv6Addr = net
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("v6 prefix");
        let mut s = base.segments();
        s[7] = host;
        Ipv6Addr::from(s)
    }
}

/// A network namespace deleted on drop (also when the test panics). Named
/// `acfix<pid>_<n>` so parallel runs do not collide and a crashed run can be cleaned up by
/// prefix (`ip netns | grep ^acfix`).
pub struct Netns {
    name: String,
}

static NETNS_SEQ: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn new() -> Self {
        let name = format!(
            "acfix{}_{}",
            std::process::id(),
            NETNS_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run_cmd("ip", &["netns", "add", &name]);
        Self { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`; panics with the command's stderr on failure.
    pub fn ip(&self, args: &str) {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend(args.split_whitespace());
        run_cmd("ip", &a);
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result (a panic
    /// in `f` is resumed on the caller's thread).
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run_cmd(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates the fixture namespace: a veth pair, the edge's addresses, a resolved gateway
/// (permanent neighbour) and an unresolved one, routes to the backend prefixes through each, a
/// route with MTU 1300 and a blackhole, and forwarding on (bpf_fib_lookup returns
/// FWD_DISABLED without it).
pub fn fixture_netns() -> Netns {
    use net::*;
    let ns = Netns::new();
    ns.ip("link set lo up");
    ns.ip(&format!(
        "link add {DEV} address {} type veth peer name {PEER} address {}",
        mac(DEV_MAC),
        mac([0x02, 0, 0, 0, 0, 0x03])
    ));
    ns.ip(&format!("link set {DEV} up"));
    ns.ip(&format!("link set {PEER} up"));
    ns.ip(&format!("addr add {EDGE_V4}/24 dev {DEV}"));
    ns.ip(&format!("-6 addr add {EDGE_V6}/64 dev {DEV} nodad"));
    ns.ip(&format!(
        "neigh add {GW_V4} lladdr {} dev {DEV} nud permanent",
        mac(GW_MAC)
    ));
    ns.ip(&format!(
        "-6 neigh add {GW_V6} lladdr {} dev {DEV} nud permanent",
        mac(GW_MAC)
    ));
    ns.ip(&format!("route add {BACKENDS_V4} via {GW_V4} dev {DEV}"));
    ns.ip(&format!("-6 route add {BACKENDS_V6} via {GW_V6} dev {DEV}"));
    ns.ip(&format!(
        "route add {UNRESOLVED_V4} via {GW_UNRESOLVED_V4} dev {DEV}"
    ));
    ns.ip(&format!(
        "-6 route add {UNRESOLVED_V6} via {GW_UNRESOLVED_V6} dev {DEV}"
    ));
    // `lock`: bpf_fib_lookup takes an IPv4 route's MTU only when it is locked or
    // net.ipv4.ip_forward_use_pmtu is set (net/ipv4/route.c, ip_mtu_from_fib_result).
    ns.ip(&format!(
        "route add {SMALL_MTU_V4} via {GW_V4} dev {DEV} mtu lock {SMALL_MTU}"
    ));
    ns.ip(&format!(
        "-6 route add {SMALL_MTU_V6} via {GW_V6} dev {DEV} mtu lock {SMALL_MTU}"
    ));
    ns.ip(&format!("route add blackhole {BLACKHOLE_V4}"));
    ns.ip(&format!("-6 route add blackhole {BLACKHOLE_V6}"));
    ns.enter(|| {
        for (path, v) in [
            ("/proc/sys/net/ipv4/ip_forward", "1"),
            ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
        ] {
            std::fs::write(path, v).unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
    });
    ns
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Ifindex of a device in the calling thread's namespace.
pub fn ifindex(dev: &str) -> u32 {
    nix::net::if_::if_nametoindex(dev).unwrap_or_else(|e| panic!("if_nametoindex {dev}: {e}"))
}

/// Map sizes of a loaded program.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub max_vips: u32,
    pub ring_size: u32,
    pub max_backends: u32,
}

/// The loaded program and a thin writer for its maps.
///
/// Loading goes through the agent's loader (`anycast::dataplane::Dataplane`), and so does
/// publishing a whole configuration ([`Dataplane::from_config`], [`Dataplane::apply`]). The
/// fixture table instead writes hand-made map state (one-backend rings, a ring alternating two
/// backends, a VIP without a table) with the raw setters below, because it tests the program,
/// not the agent's map writer.
pub struct Dataplane {
    inner: anycast::dataplane::Dataplane,
    pub sizes: Sizes,
}

/// Result of one BPF_PROG_TEST_RUN.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub action: u32,
    pub output: Vec<u8>,
    pub duration: Duration,
}

impl Dataplane {
    /// Loads the program with the given map sizes (maps empty).
    pub fn load(sizes: Sizes) -> Self {
        Self::load_with_log_level(sizes, anycast::dataplane::program_log::ALL_LEVELS)
    }

    /// Loads the program with the given map sizes and aya-log level (`AYA_LOG_LEVEL`: 0 none,
    /// 1 error .. 5 trace).
    pub fn load_with_log_level(sizes: Sizes, log_level: u8) -> Self {
        let geometry = anycast::dataplane::Geometry {
            ring_size: sizes.ring_size,
            max_vips: sizes.max_vips,
            max_backends: sizes.max_backends,
            conntrack_size: anycast_common::DEFAULT_CONNTRACK_SIZE,
        };
        let inner = anycast::dataplane::Dataplane::load_object_adopting(
            anycast::EBPF_OBJECT,
            geometry,
            &[],
            log_level,
        )
        .unwrap_or_else(|e| {
            panic!(
                "loading {}: {}",
                anycast_common::PROGRAM_NAME,
                error_chain(&e)
            )
        });
        Self { inner, sizes }
    }

    /// Loads the program sized for `config` (the agent's `Dataplane::load`).
    pub fn from_config(config: &anycast::config::Config) -> Self {
        let inner = anycast::dataplane::Dataplane::load(config).unwrap_or_else(|e| {
            panic!(
                "loading {}: {}",
                anycast_common::PROGRAM_NAME,
                error_chain(&e)
            )
        });
        let sizes = Sizes {
            max_vips: config.agent.max_vips,
            ring_size: config.agent.ring_size,
            max_backends: config.agent.max_backends,
        };
        Self { inner, sizes }
    }

    /// Publishes `config` through the agent's map writer.
    pub fn apply(&mut self, config: &anycast::config::Config, local: &BTreeSet<IpAddr>) {
        self.inner
            .apply(config, local)
            .unwrap_or_else(|e| panic!("applying the config: {}", error_chain(&e)));
    }

    /// Backend id the agent's writer gave `address`.
    pub fn backend_id(&self, address: IpAddr) -> Option<u32> {
        self.inner.publisher().backend_id(address)
    }

    /// The loaded `anycast_steer` program (e.g. to pin it for a second handle).
    pub fn program_mut(&mut self) -> &mut Xdp {
        self.inner
            .program_mut()
            .unwrap_or_else(|e| panic!("program: {}", error_chain(&e)))
    }

    pub fn agent(&self) -> &anycast::dataplane::Dataplane {
        &self.inner
    }

    fn map_mut(&mut self, name: &str) -> &mut aya::maps::Map {
        self.inner
            .ebpf_mut()
            .map_mut(name)
            .unwrap_or_else(|| panic!("no map {name} in the object"))
    }

    fn map(&self, name: &str) -> &aya::maps::Map {
        self.inner
            .ebpf()
            .map(name)
            .unwrap_or_else(|| panic!("no map {name} in the object"))
    }

    /// What `CONFIG` holds.
    pub fn config(&self) -> DataplaneConfig {
        let a: Array<_, DataplaneConfig> =
            Array::try_from(self.map(map_names::CONFIG)).expect("CONFIG");
        a.get(&0, 0).expect("read CONFIG")
    }

    pub fn set_config(&mut self, cfg: &DataplaneConfig) {
        let mut a: Array<_, DataplaneConfig> =
            Array::try_from(self.map_mut(map_names::CONFIG)).expect("CONFIG");
        a.set(0, cfg, 0).expect("write CONFIG");
    }

    pub fn set_vip(&mut self, key: VipKey, value: VipValue) {
        let mut m: HashMap<_, VipKey, VipValue> =
            HashMap::try_from(self.map_mut(map_names::VIPS)).expect("VIPS");
        m.insert(key, value, 0).expect("write VIPS");
    }

    /// Writes table `table` of `RINGS` (`ids.len()` must be the ring size; tables < max_vips * 3).
    pub fn set_table(&mut self, table: u32, ids: &[u32]) {
        let ring = self.sizes.ring_size;
        assert_eq!(
            ids.len(),
            ring as usize,
            "table length must be the ring size"
        );
        assert!(
            table < self.sizes.max_vips * TABLES_PER_VIP,
            "table {table} out of range"
        );
        let mut a: Array<_, u32> = Array::try_from(self.map_mut(map_names::RINGS)).expect("RINGS");
        for (i, id) in (0u32..).zip(ids) {
            a.set(table * ring + i, id, 0).expect("write RINGS");
        }
    }

    /// Forgets every tracked connection.
    pub fn clear_conns(&mut self) {
        let mut m: HashMap<_, ConnKey, ConnValue> =
            HashMap::try_from(self.map_mut(map_names::CONNS)).expect("CONNS");
        let keys: Vec<ConnKey> = m.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
    }

    /// Number of tracked connections.
    pub fn conn_count(&self) -> usize {
        let m: HashMap<_, ConnKey, ConnValue> =
            HashMap::try_from(self.map(map_names::CONNS)).expect("CONNS");
        m.keys().filter_map(Result::ok).count()
    }

    pub fn set_backend(&mut self, id: u32, b: Backend) {
        let mut a: Array<_, Backend> =
            Array::try_from(self.map_mut(map_names::BACKENDS)).expect("BACKENDS");
        a.set(id, b, 0).expect("write BACKENDS");
    }

    pub fn add_local(&mut self, key: AddrKey) {
        let mut m: HashMap<_, AddrKey, u32> =
            HashMap::try_from(self.map_mut(map_names::LOCAL_ADDRS)).expect("LOCAL_ADDRS");
        m.insert(key, 1, 0).expect("write LOCAL_ADDRS");
    }

    pub fn allow_v4(&mut self, prefix: Ipv4Addr, len: u32) {
        let mut t: LpmTrie<_, [u8; 4], u8> =
            LpmTrie::try_from(self.map_mut(map_names::DECAP_ALLOW_V4)).expect("DECAP_ALLOW_V4");
        t.insert(&Key::new(len, prefix.octets()), 1, 0)
            .expect("write DECAP_ALLOW_V4");
    }

    pub fn allow_v6(&mut self, prefix: Ipv6Addr, len: u32) {
        let mut t: LpmTrie<_, [u8; 16], u8> =
            LpmTrie::try_from(self.map_mut(map_names::DECAP_ALLOW_V6)).expect("DECAP_ALLOW_V6");
        t.insert(&Key::new(len, prefix.octets()), 1, 0)
            .expect("write DECAP_ALLOW_V6");
    }

    /// The kernel's id of the loaded `anycast_steer` program.
    pub fn program_id(&mut self) -> u32 {
        self.program_mut()
            .info()
            .unwrap_or_else(|e| panic!("program info: {e}"))
            .id()
    }

    /// The log rate limit of event class `class` (`anycast_common::event`), one entry per CPU.
    pub fn log_rate(&self, class: u32) -> Vec<LogRate> {
        let a: PerCpuArray<_, LogRate> =
            PerCpuArray::try_from(self.map(map_names::LOG_RATE)).expect("LOG_RATE");
        a.get(&class, 0)
            .expect("read LOG_RATE")
            .iter()
            .copied()
            .collect()
    }

    /// Forgets when each event class was last logged (the next event of every class is logged).
    pub fn reset_log_rate(&mut self) {
        let cpus = aya::util::nr_cpus().expect("number of CPUs");
        let mut a: PerCpuArray<_, LogRate> =
            PerCpuArray::try_from(self.map_mut(map_names::LOG_RATE)).expect("LOG_RATE");
        for class in 0..anycast_common::event::COUNT {
            a.set(
                class,
                aya::maps::PerCpuValues::try_from(vec![LogRate::default(); cpus])
                    .expect("per-CPU values"),
                0,
            )
            .expect("write LOG_RATE");
        }
    }

    /// Global counters summed over CPUs, indexed by `anycast_common::counter`.
    pub fn stats(&self) -> [u64; counter::COUNT as usize] {
        let a: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(map_names::STATS)).expect("STATS");
        let mut out = [0u64; counter::COUNT as usize];
        for (i, o) in (0u32..).zip(out.iter_mut()) {
            *o = a.get(&i, 0).expect("read STATS").iter().sum();
        }
        out
    }

    fn traffic(&self, map: &str, n: u32) -> Vec<TrafficStats> {
        let a: PerCpuArray<_, TrafficStats> =
            PerCpuArray::try_from(self.map(map)).expect("stats map");
        (0..n)
            .map(|i| {
                a.get(&i, 0)
                    .expect("read stats")
                    .iter()
                    .fold(TrafficStats::default(), |acc, s| TrafficStats {
                        packets: acc.packets + s.packets,
                        bytes: acc.bytes + s.bytes,
                    })
            })
            .collect()
    }

    /// Per-VIP counters summed over CPUs, indexed by vip id.
    pub fn vip_stats(&self) -> Vec<TrafficStats> {
        self.traffic(map_names::VIP_STATS, self.sizes.max_vips)
    }

    /// Per-backend counters summed over CPUs, indexed by backend id.
    pub fn backend_stats(&self) -> Vec<TrafficStats> {
        self.traffic(map_names::BACKEND_STATS, self.sizes.max_backends)
    }

    fn prog(&self) -> &Xdp {
        self.inner
            .ebpf()
            .program(anycast_common::PROGRAM_NAME)
            .expect("program")
            .try_into()
            .expect("program is XDP")
    }

    /// One BPF_PROG_TEST_RUN of `input`; with `ingress_ifindex` the context names that device as
    /// the ingress (so the FIB lookup starts there and egress == ingress means XDP_TX).
    pub fn run(&self, input: &[u8], ingress_ifindex: Option<u32>) -> std::io::Result<RunResult> {
        self.run_repeat(input, ingress_ifindex, 1)
    }

    /// BPF_PROG_TEST_RUN with `repeat` rounds; `duration` is the kernel's per-round average.
    /// Only meaningful for paths that do not rewrite the packet (later rounds see the output).
    pub fn run_repeat(
        &self,
        input: &[u8],
        ingress_ifindex: Option<u32>,
        repeat: u32,
    ) -> std::io::Result<RunResult> {
        let mut out = vec![0u8; 4096];
        let ctx = ingress_ifindex.map(|i| packet::xdp_md(input.len(), i, 0));
        let r = self
            .prog()
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: ctx.as_ref().map(|c| &c[..]),
                repeat,
                ..TestRunOptions::new()
            })
            .map_err(|e| match e {
                aya::programs::ProgramError::SyscallError(s) => s.io_error,
                other => std::io::Error::other(other.to_string()),
            })?;
        out.truncate(r.data_size_out as usize);
        Ok(RunResult {
            action: r.return_value,
            output: out,
            duration: r.duration,
        })
    }
}

/// What a fixture's output bytes must be.
#[derive(Clone, Debug)]
pub enum Output {
    /// Exactly the input.
    Unchanged,
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// Not checked (dropped packets).
    Ignored,
}

/// Expected per-VIP / per-backend counter change: `None` = every entry unchanged.
#[derive(Clone, Copy, Debug)]
pub struct Traffic {
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
pub enum Expect {
    Run {
        action: u32,
        output: Output,
        /// Global counter deltas; counters not listed must not change.
        counters: Vec<u32>,
        vip: Option<Traffic>,
        /// `Err(())` = not checked (the contract does not pin it for this outcome).
        backend: Result<Option<Traffic>, ()>,
    },
    /// BPF_PROG_TEST_RUN itself refuses the input with this errno (e.g. frames shorter than
    /// an Ethernet header: net/bpf/test_run.c, bpf_test_init).
    KernelRejects(i32),
}

/// One row of the fixture table.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: String,
    pub input: Vec<u8>,
    /// `Some(dev)`: run with an `xdp_md` context naming that device as ingress.
    pub ingress: Option<&'static str>,
    /// Written to `CONFIG` before the run.
    pub config: DataplaneConfig,
    pub expect: Expect,
}

/// Runs every fixture (from inside the fixture namespace) and returns a failure report per
/// failing fixture, named, with a hex diff where bytes differ.
pub fn run_table(dp: &mut Dataplane, fixtures: &[Fixture]) -> Vec<String> {
    let mut seen = BTreeMap::new();
    for f in fixtures {
        assert!(
            seen.insert(f.name.clone(), ()).is_none(),
            "duplicate fixture name {}",
            f.name
        );
    }
    let mut failures = Vec::new();
    for f in fixtures {
        dp.set_config(&f.config);
        // Each row stands alone: no row may find a connection an earlier row created.
        dp.clear_conns();
        let ingress = f.ingress.map(ifindex);
        let before = (dp.stats(), dp.vip_stats(), dp.backend_stats());
        let result = dp.run(&f.input, ingress);
        let after = (dp.stats(), dp.vip_stats(), dp.backend_stats());
        let mut problems = Vec::new();
        match (&f.expect, result) {
            (Expect::KernelRejects(errno), Err(e)) => {
                if e.raw_os_error() != Some(*errno) {
                    problems.push(format!("test_run failed with {e}, expected errno {errno}"));
                }
            }
            (Expect::KernelRejects(errno), Ok(r)) => {
                problems.push(format!(
                    "test_run accepted the input (returned {}), expected errno {errno}",
                    action_name(r.action)
                ));
            }
            (Expect::Run { .. }, Err(e)) => problems.push(format!("test_run failed: {e}")),
            (
                Expect::Run {
                    action,
                    output,
                    counters,
                    vip,
                    backend,
                },
                Ok(r),
            ) => {
                if r.action != *action {
                    problems.push(format!(
                        "action: expected {}, got {}",
                        action_name(*action),
                        action_name(r.action)
                    ));
                }
                let want = match output {
                    Output::Unchanged => Some(&f.input),
                    Output::Bytes(b) => Some(b),
                    Output::Ignored => None,
                };
                if let Some(want) = want
                    && *want != r.output
                {
                    problems.push(format!(
                        "output bytes differ:\n{}",
                        hex_diff(want, &r.output)
                    ));
                }
                let mut want_counters = [0u64; counter::COUNT as usize];
                for c in counters {
                    want_counters[*c as usize] += 1;
                }
                let mut got: Vec<u64> = after
                    .0
                    .iter()
                    .zip(before.0.iter())
                    .map(|(a, b)| a - b)
                    .collect();
                // Connection tracking has its own tests (tests/tests/conntrack.rs); here its
                // counters would only restate each row's TCP flags.
                for c in counter::CONN_HIT..counter::COUNT {
                    got[c as usize] = 0;
                }
                if got != want_counters {
                    problems.push(format!(
                        "counters: expected {}, got {}",
                        counter_list(&want_counters),
                        counter_list(&got)
                    ));
                }
                check_traffic("VIP_STATS", &before.1, &after.1, *vip, &mut problems);
                if let Ok(b) = backend {
                    check_traffic("BACKEND_STATS", &before.2, &after.2, *b, &mut problems);
                }
            }
        }
        if problems.is_empty() {
            eprintln!("ok   {}", f.name);
        } else {
            eprintln!("FAIL {}", f.name);
            failures.push(format!("fixture {}:\n  {}", f.name, problems.join("\n  ")));
        }
    }
    failures
}

fn counter_list(v: &[u64]) -> String {
    let items: Vec<String> = v
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 0)
        .map(|(i, n)| format!("{}={n}", counter::NAMES[i]))
        .collect();
    if items.is_empty() {
        "{}".into()
    } else {
        format!("{{{}}}", items.join(", "))
    }
}

fn check_traffic(
    map: &str,
    before: &[TrafficStats],
    after: &[TrafficStats],
    want: Option<Traffic>,
    problems: &mut Vec<String>,
) {
    for (i, (b, a)) in (0u32..).zip(before.iter().zip(after)) {
        let got = (a.packets - b.packets, a.bytes - b.bytes);
        let exp = match want {
            Some(t) if t.id == i => (t.packets, t.bytes),
            _ => (0, 0),
        };
        if got != exp {
            problems.push(format!(
                "{map}[{i}]: expected +{} packets / +{} bytes, got +{} / +{}",
                exp.0, exp.1, got.0, got.1
            ));
        }
    }
}

/// An error and its sources, one line ("a: b: c").
pub fn error_chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
