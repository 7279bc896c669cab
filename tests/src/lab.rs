//! Network-namespace labs: topologies described as data, built in namespaces that a [`Lab`]
//! deletes again on drop (also when a test panics).
//!
//! Rules (shared/notes/lab.md): the root namespace is never part of a topology, so nothing a lab
//! sends can leave the machine; both ends of every veth are created directly inside their
//! namespaces (`ip link add ... netns A type veth peer ... netns B`) and never exist in the root
//! namespace; every namespace and interface name starts with the lab's unique prefix
//! (`ac<pid % 10000><counter>-`), so labs run in parallel and `cargo xtask clean-lab` can
//! remove what a crashed run left. Lab hosts use 198.18.0.0/15 and fd00::/8, VIPs
//! 203.0.113.0/24 and 2001:db8::/32.
//!
//! Commands run inside a namespace through `nsenter --net=/run/netns/NAME`, which (unlike
//! `ip netns exec`) keeps the caller's mount namespace, so agents see the lab's bpffs mount.
//! Each lab mounts its own bpffs instance at `/run/anycast-lab/<prefix>/bpf`: agents pin there,
//! and unmounting it on drop removes every pin at once.
//!
//! Binaries: the agent is found through `ANYCAST_BIN`, else as `anycast` next to the running
//! executable or one directory up (a test runs from `target/<profile>/deps/`, a binary from
//! `target/<profile>/`). The backend service likewise through `ANYCAST_LAB_SERVER_BIN` or as
//! `anycast-lab-server`. `cargo build` (which `cargo xtask test` runs first) builds both.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where labs keep their files (agent configs, logs) and their bpffs mounts.
pub const RUN_DIR: &str = "/run/anycast-lab";

/// How long [`Lab::start_agents`] waits for every agent to attach its program.
const AGENT_ATTACH_TIMEOUT: Duration = Duration::from_secs(90);

/// Linux interface names have at most 15 bytes (IFNAMSIZ - 1).
const IFNAMSIZ_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("XDP pass program on {ns}/{interface}: {message}")]
    Xdp {
        ns: String,
        interface: String,
        message: String,
    },
    #[error("{what} not found: {hint}")]
    Binary { what: String, hint: String },
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Long-lived TCP connections with data both ways (`anycast-lab-conns`, route-move tests).
mod agent_config;
pub mod conns;
mod process;
mod topology;
mod traffic;

use process::Background;
pub use process::ChildSignals;
pub use topology::{
    AgentSpec, End, LabHealth, Link, LoopbackAddr, Route, ServerSpec, Sysctl, Topology, VipSpec,
    XdpPass,
};
pub use traffic::{
    FlowRecord, FlowTally, tcp_request, tcp_request_from, udp_request, udp_request_from,
};

pub use conns::{ConnReport, ConnsOptions, ConnsReport, LongLived};

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

// ---------------------------------------------------------------------------------------------
// Topology as data. Names here are short (`"router"`, `"r-e1"`); the lab prefixes them.

// ---------------------------------------------------------------------------------------------
// Process-wide registry, so that a signal handler can clean up labs whose destructors will not
// run (see `install_interrupt_cleanup`).

static LIVE_LABS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn namespace_exists_with_prefix(prefix: &str) -> bool {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
        .unwrap_or(false)
}

/// A prefix no other lab uses, claimed by creating its run directory: `mkdir` is atomic, so two
/// test processes whose pids agree modulo 10,000 cannot both take it (and one's cleanup then
/// delete the other's namespaces).
fn new_prefix() -> Result<String> {
    std::fs::create_dir_all(RUN_DIR).map_err(io_err(format!("creating {RUN_DIR}")))?;
    for _ in 0..10_000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("ac{:04}{:02}-", std::process::id() % 10_000, n % 100);
        if namespace_exists_with_prefix(&prefix) {
            continue;
        }
        match std::fs::create_dir(Path::new(RUN_DIR).join(&prefix)) {
            Ok(()) => return Ok(prefix),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(format!("creating {RUN_DIR}/{prefix}"))(e)),
        }
    }
    Err(LabError::Setup("no free lab prefix".to_owned()))
}

/// Deletes every namespace whose name starts with `prefix` (killing the processes in it first)
/// and the lab's run directory with its bpffs. The same logic as `cargo xtask clean-lab`.
pub fn clean_prefix(prefix: &str) {
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            let ns = entry.file_name().to_string_lossy().into_owned();
            if !ns.starts_with(prefix) {
                continue;
            }
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
    let dir = Path::new(RUN_DIR).join(prefix);
    let _ = nix::mount::umount2(&dir.join("bpf"), nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&dir);
}

/// For binaries (the demo): on SIGINT/SIGTERM, delete every live lab of this process and exit
/// with 130. Call it first thing in `main`, before any thread is spawned: it blocks the signals
/// in the calling thread (threads spawned later inherit that) and waits for them on a thread of
/// its own. Child processes inherit that mask (std's `Command` does not reset it): the ones a
/// [`Lab`] starts get an empty one ([`Lab::spawn`]).
pub fn install_interrupt_cleanup() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // A shell starts background jobs with SIGINT ignored, and an ignored signal never
        // reaches `sigwait`: take the default disposition back (the signal stays blocked).
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
    }
    set.thread_block().expect("blocking SIGINT/SIGTERM");
    std::thread::spawn(move || {
        let signal = set
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.as_str().to_owned());
        eprintln!("\n{signal}: cleaning up the lab");
        let prefixes = LIVE_LABS.lock().map(|l| l.clone()).unwrap_or_default();
        for prefix in prefixes {
            clean_prefix(&prefix);
        }
        std::process::exit(130);
    });
}

// ---------------------------------------------------------------------------------------------

/// Keeps an `anycast_pass` XDP program attached: dropping the `Ebpf` detaches it.
struct PassProgram {
    _ebpf: aya::Ebpf,
}

/// A topology built in network namespaces. Dropping it kills the processes it started, detaches
/// its XDP programs, deletes its namespaces (and so its veths) and its bpffs.
pub struct Lab {
    prefix: String,
    topology: Topology,
    dir: PathBuf,
    bpffs: PathBuf,
    namespaces: Vec<String>,
    background: Vec<Background>,
    pass_programs: Vec<PassProgram>,
}

impl Lab {
    /// Creates namespaces, sysctls, links, addresses and routes (no BPF, no processes).
    pub fn build(topology: &Topology) -> Result<Lab> {
        let prefix = new_prefix()?;
        let dir = Path::new(RUN_DIR).join(&prefix);
        let bpffs = dir.join("bpf");
        LIVE_LABS.lock().expect("lab registry").push(prefix.clone());
        let mut lab = Lab {
            prefix,
            topology: topology.clone(),
            dir,
            bpffs,
            namespaces: Vec::new(),
            background: Vec::new(),
            pass_programs: Vec::new(),
        };
        lab.create()?;
        Ok(lab)
    }

    fn create(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.bpffs)
            .map_err(io_err(format!("creating {}", self.bpffs.display())))?;
        nix::mount::mount(
            Some("bpf"),
            &self.bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| LabError::Io {
            what: format!("mounting bpffs at {}", self.bpffs.display()),
            source: e.into(),
        })?;

        let t = self.topology.clone();
        for ns in &t.namespaces {
            let full = self.ns(ns);
            run_checked(Command::new("ip").args(["netns", "add", &full]))?;
            self.namespaces.push(full);
            self.ip(ns, &["link", "set", "lo", "up"])?;
        }
        for s in &t.sysctls {
            self.exec_ok(
                &s.ns,
                &["sysctl", "-q", "-w", &format!("{}={}", s.key, s.value)],
            )?;
        }
        for l in &t.links {
            let (a, b) = (self.ifname(&l.a.name)?, self.ifname(&l.b.name)?);
            let mtu = l.mtu.to_string();
            run_checked(Command::new("ip").args([
                "link",
                "add",
                &a,
                "netns",
                &self.ns(&l.a.ns),
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                &self.ns(&l.b.ns),
                "mtu",
                &mtu,
            ]))?;
            for (end, dev) in [(&l.a, &a), (&l.b, &b)] {
                for addr in &end.addrs {
                    let mut args = vec!["addr", "add", addr.as_str(), "dev", dev.as_str()];
                    if addr.contains(':') {
                        // No duplicate address detection: the address is usable at once.
                        args.push("nodad");
                    }
                    self.ip(&end.ns, &args)?;
                }
                if l.tx_checksum_off {
                    self.exec_ok(&end.ns, &["ethtool", "-K", dev, "tx", "off"])?;
                }
                self.ip(&end.ns, &["link", "set", dev, "up"])?;
            }
        }
        for a in &t.loopback {
            let mut args = vec!["addr", "add", a.addr.as_str(), "dev", "lo"];
            if a.addr.contains(':') {
                args.push("nodad");
            }
            self.ip(&a.ns, &args)?;
        }
        for r in &t.routes {
            self.set_route(&r.ns, &r.dst, &r.via)?;
        }
        Ok(())
    }

    /// The lab's prefix, e.g. `ac123401-`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Full namespace name of a short one.
    pub fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// Full interface name of a short one.
    pub fn ifname(&self, short: &str) -> Result<String> {
        let name = format!("{}{short}", self.prefix);
        if name.len() > IFNAMSIZ_MAX {
            return Err(LabError::Setup(format!(
                "interface name {name} is longer than {IFNAMSIZ_MAX} bytes"
            )));
        }
        Ok(name)
    }

    /// Full names of the namespaces this lab created.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Directory for this lab's files (agent configs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file [`Lab::start_agents`] writes for the agent in `ns`.
    pub fn agent_config_path(&self, ns: &str) -> PathBuf {
        self.dir.join(format!("agent-{ns}.toml"))
    }

    /// The control socket of the agent in `ns` (`anycast status --socket PATH`).
    pub fn agent_socket_path(&self, ns: &str) -> PathBuf {
        self.dir.join(format!("api-{ns}.sock"))
    }

    fn enter(&self, ns: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns(ns))).arg("--");
        c
    }

    /// Runs a command inside namespace `ns` (short name) and returns its output, whatever its
    /// exit status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let mut c = self.enter(ns);
        c.args(args).stdin(Stdio::null());
        c.output()
            .map_err(io_err(format!("running {args:?} in {ns}")))
    }

    /// Like [`Lab::exec`], but an error unless the command succeeds; returns its stdout.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut c = self.enter(ns);
        c.args(args);
        run_checked(&mut c)
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<String> {
        run_checked(Command::new("ip").arg("-n").arg(self.ns(ns)).args(args))
    }

    /// Adds or replaces a route (`ip route replace`); routes to IPv6 prefixes are recognised by a `:`.
    pub fn set_route(&self, ns: &str, dst: &str, via: &str) -> Result<()> {
        let family = if dst.contains(':') || via.contains(':') {
            "-6"
        } else {
            "-4"
        };
        self.ip(ns, &[family, "route", "replace", dst, "via", via])
            .map(drop)
    }

    /// Runs `f` on a thread that has entered namespace `ns`: sockets it creates live there.
    pub fn in_netns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&self.ns(ns), f)
    }

    /// Attaches the `anycast_pass` program (XDP_PASS) natively to `interface` in `ns`.
    pub fn attach_pass(&mut self, ns: &str, interface: &str) -> Result<()> {
        let dev = self.ifname(interface)?;
        let full = self.ns(ns);
        let xdp_err = |message: String| LabError::Xdp {
            ns: full.clone(),
            interface: dev.clone(),
            message,
        };
        let ebpf = in_netns(&full, || -> Result<aya::Ebpf, String> {
            use aya::programs::{Xdp, xdp::XdpMode};
            let mut ebpf = aya::Ebpf::load(anycast::EBPF_OBJECT)
                .map_err(|e| format!("loading the object: {e}"))?;
            let prog: &mut Xdp = ebpf
                .program_mut("anycast_pass")
                .ok_or("the object has no program `anycast_pass`")?
                .try_into()
                .map_err(|e| format!("anycast_pass is not XDP: {e}"))?;
            prog.load().map_err(|e| format!("load: {e}"))?;
            // Native: generic mode would hide the very behaviour this program exists for.
            prog.attach(&dev, XdpMode::Driver)
                .map_err(|e| format!("attach (driver mode): {e}"))?;
            Ok(ebpf)
        })?
        .map_err(xdp_err)?;
        self.pass_programs.push(PassProgram { _ebpf: ebpf });
        Ok(())
    }

    /// Everything that makes the topology carry VIP traffic: pass programs, agents (waiting until
    /// each has attached its XDP program) and backend servers.
    pub fn start_dataplane(&mut self) -> Result<()> {
        for x in self.topology.xdp_pass.clone() {
            self.attach_pass(&x.ns, &x.interface)?;
        }
        self.start_agents()?;
        self.start_servers()
    }

    pub fn start_agents(&mut self) -> Result<()> {
        let bin = find_binary("anycast", "ANYCAST_BIN")?;
        let bin = bin.to_string_lossy().into_owned();
        for spec in self.topology.agents.clone() {
            let config = self.dir.join(format!("agent-{}.toml", spec.ns));
            std::fs::write(&config, self.agent_config(&spec)?)
                .map_err(io_err(format!("writing {}", config.display())))?;
            let config = config.to_string_lossy().into_owned();
            self.spawn(
                &spec.ns,
                &format!("agent-{}", spec.ns),
                &[&bin, "agent", "--config", &config],
                &[("RUST_LOG", "info")],
            )?;
        }
        // The verifier takes seconds per program, and a 2-core CI machine runs two labs (eight
        // agents) at once.
        let deadline = Instant::now() + AGENT_ATTACH_TIMEOUT;
        for spec in self.topology.agents.clone() {
            for interface in &spec.interfaces {
                let dev = self.ifname(interface)?;
                loop {
                    self.check_alive()?;
                    let link = self.ip(&spec.ns, &["-d", "link", "show", "dev", &dev])?;
                    if link.contains("prog/xdp") {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(LabError::Setup(format!(
                            "agent in {} did not attach XDP to {dev} within {} s; log:\n{}",
                            spec.ns,
                            AGENT_ATTACH_TIMEOUT.as_secs(),
                            tail(&self.log(&format!("agent-{}", spec.ns)), 30)
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }

    pub fn start_servers(&mut self) -> Result<()> {
        let bin = find_binary("anycast-lab-server", "ANYCAST_LAB_SERVER_BIN")?;
        let bin = bin.to_string_lossy().into_owned();
        for s in self.topology.servers.clone() {
            let (tcp, udp) = (s.tcp_port.to_string(), s.udp_port.to_string());
            let mut args = vec![bin.as_str(), s.name.as_str(), tcp.as_str(), udp.as_str()];
            args.extend(s.addrs.iter().map(String::as_str));
            self.spawn(&s.ns, &format!("server-{}", s.name), &args, &[])?;
        }
        // Listening is quick; wait for every server to say so, or to die.
        let deadline = Instant::now() + Duration::from_secs(5);
        for s in self.topology.servers.clone() {
            while !self
                .log(&format!("server-{}", s.name))
                .contains("listening")
            {
                self.check_alive()?;
                if Instant::now() > deadline {
                    return Err(LabError::Setup(format!("server {} did not start", s.name)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

/// One short flow's outcome: (source address, the name that answered), or what failed (with the
/// source address if the socket got one).
type FlowResult = std::result::Result<(SocketAddr, String), (Option<SocketAddr>, std::io::Error)>;

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for b in &self.background {
                let log = std::fs::read_to_string(&b.log).unwrap_or_default();
                eprintln!(
                    "--- lab {}: {} log (tail) ---\n{}",
                    self.prefix,
                    b.name,
                    tail(&log, 40)
                );
            }
        }
        for b in &mut self.background {
            // SIGTERM first: an agent detaches and unpins on a clean exit.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(b.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for b in &mut self.background {
            while matches!(b.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = b.child.kill();
            let _ = b.child.wait();
        }
        self.pass_programs.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        // Backstop: whatever else carries the prefix (processes the agents forked, a namespace
        // created but not yet recorded when `create` failed).
        clean_prefix(&self.prefix);
        if let Ok(mut live) = LIVE_LABS.lock() {
            live.retain(|p| p != &self.prefix);
        }
    }
}

/// Runs `f` on a new thread that has entered the network namespace named `ns_full`.
pub fn in_netns<T: Send>(ns_full: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{ns_full}");
    let file = File::open(&path).map_err(io_err(format!("opening {path}")))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // setns(CLONE_NEWNET) changes only this thread's namespace (a fresh thread, so the
            // caller's own thread never leaves the root namespace).
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                LabError::Io {
                    what: format!("entering {ns_full}"),
                    source: e.into(),
                }
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Finds a workspace binary: `$env_var`, else next to the current executable or one directory
/// up (tests run from `target/<profile>/deps`).
pub fn find_binary(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LabError::Binary {
                what: name.to_owned(),
                hint: format!("{env_var}={} is not a file", path.display()),
            })
        };
    }
    let exe = std::env::current_exe().map_err(io_err("locating the current executable"))?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| LabError::Binary {
            what: name.to_owned(),
            hint: format!("looked at {candidates:?}; run `cargo build` first or set {env_var}"),
        })
}

fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running {cmd:?}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: format!("{cmd:?}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------

pub mod reference;
