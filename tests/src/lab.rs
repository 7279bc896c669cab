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
use std::fmt::Write as _;
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
pub mod conns;

pub use conns::{ConnReport, ConnsOptions, ConnsReport, LongLived};

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

// ---------------------------------------------------------------------------------------------
// Topology as data. Names here are short (`"router"`, `"r-e1"`); the lab prefixes them.

/// One end of a veth link.
#[derive(Clone, Debug)]
pub struct End {
    /// Short namespace name.
    pub ns: String,
    /// Short interface name (at most 15 bytes with the prefix: keep it to 6).
    pub name: String,
    /// Addresses in CIDR notation, IPv4 and IPv6.
    pub addrs: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Link {
    pub a: End,
    pub b: End,
    pub mtu: u32,
    /// `ethtool -K <dev> tx off` on both ends: packets a namespace's own stack sends leave with
    /// partial checksums, which are wrong once XDP_TX/redirect has moved them (lab.md).
    pub tx_checksum_off: bool,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub ns: String,
    /// `default` or a prefix.
    pub dst: String,
    pub via: String,
}

#[derive(Clone, Debug)]
pub struct Sysctl {
    pub ns: String,
    pub key: String,
    pub value: String,
}

/// An address on a namespace's `lo` (VIPs: no dummy devices on these kernels).
#[derive(Clone, Debug)]
pub struct LoopbackAddr {
    pub ns: String,
    pub addr: String,
}

/// An interface whose veth peer sends to it with XDP_TX/redirect: it needs a native XDP program
/// (`anycast_pass`, XDP_PASS) or those frames are dropped as `xdp_tx_errors` (lab.md).
#[derive(Clone, Debug)]
pub struct XdpPass {
    pub ns: String,
    pub interface: String,
}

#[derive(Clone, Debug)]
pub struct VipSpec {
    pub address: String,
    pub port: u16,
    pub protocol: String,
    /// (address, weight)
    pub backends: Vec<(String, u32)>,
}

/// An `anycast agent` in a namespace. `interfaces` are short names; the pin path is chosen by
/// the lab (one directory per agent in the lab's own bpffs).
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub ns: String,
    pub interfaces: Vec<String>,
    pub tunnel_source: Option<String>,
    pub tunnel_source_v6: Option<String>,
    pub encapsulation: String,
    pub decap_allow: Vec<String>,
    pub ring_size: u32,
    pub hash_seed: u32,
    /// Empty for decapsulate-only agents.
    pub vips: Vec<VipSpec>,
    /// Every VIP health-checks its backends ([`LabHealth`]).
    pub health: Option<LabHealth>,
}

/// Health checks of a lab agent's VIPs: TCP to `port` of each backend's address, every
/// `interval_ms`, down after 3 failures, up after 2 successes.
#[derive(Clone, Copy, Debug)]
pub struct LabHealth {
    pub port: u16,
    pub interval_ms: u32,
}

/// An `anycast-lab-server` answering with `name` on `addrs` (usually the VIPs on `lo`).
#[derive(Clone, Debug)]
pub struct ServerSpec {
    pub ns: String,
    pub name: String,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub addrs: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// Short namespace names, in creation order.
    pub namespaces: Vec<String>,
    pub sysctls: Vec<Sysctl>,
    pub links: Vec<Link>,
    pub loopback: Vec<LoopbackAddr>,
    pub routes: Vec<Route>,
    pub xdp_pass: Vec<XdpPass>,
    pub agents: Vec<AgentSpec>,
    pub servers: Vec<ServerSpec>,
}

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

/// The signal state a [`Lab::spawn_with`] process starts with. Both parts survive exec (nsenter
/// passes them on to the command it runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildSignals {
    /// An empty mask; SIGINT, SIGTERM and SIGHUP at their default disposition.
    Default,
    /// SIGINT, SIGTERM and SIGHUP blocked and ignored: the worst a parent can pass on (a shell's
    /// background job has SIGINT ignored; a build tool or supervisor may block them while it
    /// waits). For tests that a daemon takes its signals back.
    BlockedAndIgnored,
}

impl ChildSignals {
    fn apply(self, c: &mut Command) {
        use std::os::unix::process::CommandExt as _;
        let hostile = self == ChildSignals::BlockedAndIgnored;
        // SAFETY: only async-signal-safe calls (sigemptyset, sigaddset, pthread_sigmask,
        // signal) between fork and exec, on values owned by the closure.
        unsafe {
            c.pre_exec(move || {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                    if hostile {
                        libc::sigaddset(&mut set, sig);
                    }
                    let handler = if hostile {
                        libc::SIG_IGN
                    } else {
                        libc::SIG_DFL
                    };
                    if libc::signal(sig, handler) == libc::SIG_ERR {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                match libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) {
                    0 => Ok(()),
                    e => Err(std::io::Error::from_raw_os_error(e)),
                }
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------

struct Background {
    name: String,
    child: Child,
    log: PathBuf,
}

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

    /// Starts a background process in `ns`; its stdout and stderr go to `<dir>/<name>.log`. It
    /// is killed when the lab drops. It starts with an empty signal mask and the default
    /// dispositions of SIGINT, SIGTERM and SIGHUP, whatever this process has (std's `Command`
    /// passes the parent's mask on; the demo blocks SIGINT/SIGTERM for its cleanup thread), so the
    /// SIGTERM the lab stops it with arrives.
    pub fn spawn(
        &mut self,
        ns: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        self.spawn_with(ns, name, args, env, ChildSignals::Default)
    }

    /// Like [`Lab::spawn`], with the signal state the process starts with chosen.
    pub fn spawn_with(
        &mut self,
        ns: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        signals: ChildSignals,
    ) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(io_err("cloning log file"))?;
        let mut c = self.enter(ns);
        c.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            c.env(k, v);
        }
        signals.apply(&mut c);
        let child = c
            .spawn()
            .map_err(io_err(format!("starting {args:?} in {ns}")))?;
        self.background.push(Background {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(())
    }

    /// Sends `signal` to the background processes started with [`Lab::spawn`] under `name`;
    /// returns how many there were.
    pub fn signal(&self, name: &str, signal: nix::sys::signal::Signal) -> usize {
        let mut n = 0;
        for b in self.background.iter().filter(|b| b.name == name) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(b.child.id() as i32), signal);
            n += 1;
        }
        n
    }

    /// Sends `signal` to the background processes started under `name` and waits (at most
    /// `timeout`) until each has exited; they are then forgotten, so [`Lab::check_alive`] does not
    /// report them and the name can be spawned again. Returns their exit statuses. The handle is
    /// the process itself: [`Lab::spawn`] runs `nsenter --net=... -- CMD`, which enters the
    /// namespace and execs CMD in the same process.
    pub fn stop(
        &mut self,
        name: &str,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Result<Vec<std::process::ExitStatus>> {
        let (mut stopping, keep): (Vec<Background>, Vec<Background>) =
            std::mem::take(&mut self.background)
                .into_iter()
                .partition(|b| b.name == name);
        self.background = keep;
        if stopping.is_empty() {
            return Err(LabError::Setup(format!(
                "no background process named {name}"
            )));
        }
        let deadline = Instant::now() + timeout;
        let mut statuses = Vec::new();
        for b in &mut stopping {
            let pid = nix::unistd::Pid::from_raw(b.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
            loop {
                match b.child.try_wait() {
                    Ok(Some(status)) => {
                        statuses.push(status);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(None) => {
                        let _ = b.child.kill();
                        let _ = b.child.wait();
                        return Err(LabError::Setup(format!(
                            "{name} (pid {pid}) did not exit within {timeout:?} of {signal}"
                        )));
                    }
                    Err(e) => return Err(io_err(format!("waiting for {name}"))(e)),
                }
            }
        }
        Ok(statuses)
    }

    /// The log of a background process started with [`Lab::spawn`].
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Errors if a background process has exited, with the tail of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        for b in &mut self.background {
            if let Ok(Some(status)) = b.child.try_wait() {
                let log = std::fs::read_to_string(&b.log).unwrap_or_default();
                return Err(LabError::Setup(format!(
                    "{} exited ({status}); log:\n{}",
                    b.name,
                    tail(&log, 30)
                )));
            }
        }
        Ok(())
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

    /// The agent's config file for `spec` (TOML, the contract of `anycast agent --config`).
    pub fn agent_config(&self, spec: &AgentSpec) -> Result<String> {
        let interfaces: Vec<String> = spec
            .interfaces
            .iter()
            .map(|i| self.ifname(i))
            .collect::<Result<_>>()?;
        let mut s = String::from("[agent]\n");
        let list = |v: &[String]| {
            v.iter()
                .map(|x| format!("{x:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "interfaces = [{}]", list(&interfaces));
        if let Some(src) = &spec.tunnel_source {
            let _ = writeln!(s, "tunnel_source = {src:?}");
        }
        if let Some(src) = &spec.tunnel_source_v6 {
            let _ = writeln!(s, "tunnel_source_v6 = {src:?}");
        }
        let _ = writeln!(s, "encapsulation = {:?}", spec.encapsulation);
        let _ = writeln!(s, "decap_allow = [{}]", list(&spec.decap_allow));
        let _ = writeln!(s, "ring_size = {}", spec.ring_size);
        let _ = writeln!(s, "hash_seed = {}", spec.hash_seed);
        // Each agent its own pins and state file: the defaults would be shared by every agent
        // of every lab on the machine.
        let _ = writeln!(
            s,
            "pin_path = {:?}",
            self.bpffs.join(&spec.ns).display().to_string()
        );
        let _ = writeln!(
            s,
            "state_file = {:?}",
            self.dir
                .join(format!("state-{}.json", spec.ns))
                .display()
                .to_string()
        );
        let _ = writeln!(
            s,
            "api_socket = {:?}",
            self.dir
                .join(format!("api-{}.sock", spec.ns))
                .display()
                .to_string()
        );
        // Small connection table: labs run several agents on one machine.
        let _ = writeln!(s, "conntrack_size = 16384");
        for vip in &spec.vips {
            let _ = writeln!(
                s,
                "\n[[vip]]\naddress = {:?}\nport = {}\nprotocol = {:?}",
                vip.address, vip.port, vip.protocol
            );
            for (address, weight) in &vip.backends {
                let _ = writeln!(
                    s,
                    "[[vip.backend]]\naddress = {address:?}\nweight = {weight}"
                );
            }
            if let Some(h) = spec.health {
                let _ = writeln!(
                    s,
                    "[vip.health]\nkind = \"tcp\"\nport = {}\ninterval_ms = {}\ntimeout_ms = 100\nrise = 2\nfall = 3",
                    h.port, h.interval_ms
                );
            }
        }
        Ok(s)
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

    /// `count` TCP requests from `ns` to `target`, each its own connection (so its own source
    /// port, so its own flow), bounded by `budget` in total; tallies which backend answered.
    pub fn tcp_flows(
        &self,
        ns: &str,
        target: SocketAddr,
        count: usize,
        budget: Duration,
    ) -> Result<FlowTally> {
        let flows = self.flows(ns, Transport::Tcp, target, count, budget)?;
        Ok(FlowTally::of(flows, count))
    }

    /// Like [`Lab::tcp_flows`] with UDP datagrams, each from a fresh socket (fresh source port).
    pub fn udp_flows(
        &self,
        ns: &str,
        target: SocketAddr,
        count: usize,
        budget: Duration,
    ) -> Result<FlowTally> {
        let flows = self.flows(ns, Transport::Udp, target, count, budget)?;
        Ok(FlowTally::of(flows, count))
    }

    /// `count` short flows from `ns` to `target`, one after the other, until `budget` is spent:
    /// each a TCP request on its own connection or a UDP datagram from its own socket (so its
    /// own source port, so its own flow).
    fn flows(
        &self,
        ns: &str,
        transport: Transport,
        target: SocketAddr,
        count: usize,
        budget: Duration,
    ) -> Result<Vec<FlowResult>> {
        self.in_netns(ns, || {
            let deadline = Instant::now() + budget;
            (0..count)
                .map_while(|i| {
                    (Instant::now() < deadline).then(|| match transport {
                        Transport::Tcp => tcp_request_from(target, Duration::from_secs(2)),
                        Transport::Udp => udp_request_from(
                            target,
                            format!("flow {i}").as_bytes(),
                            Duration::from_secs(1),
                        ),
                    })
                })
                .collect()
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Udp,
}

/// One short flow's outcome: (source address, the name that answered), or what failed (with the
/// source address if the socket got one).
type FlowResult = std::result::Result<(SocketAddr, String), (Option<SocketAddr>, std::io::Error)>;

impl Lab {
    /// Starts `opts.conns` long-lived TCP connections from `ns` to `target` (an
    /// `anycast-lab-server`), streaming both ways; see [`conns`]. Returns at once: move routes,
    /// look at [`LongLived::snapshot`], then [`LongLived::stop`] or [`LongLived::wait`].
    pub fn start_long_lived(
        &self,
        ns: &str,
        target: SocketAddr,
        opts: ConnsOptions,
    ) -> Result<LongLived> {
        LongLived::start_in(&format!("/run/netns/{}", self.ns(ns)), target, opts)
    }

    /// [`Lab::start_long_lived`] with `n` connections streaming for `duration`, waited for.
    pub fn long_lived(
        &self,
        ns: &str,
        target: SocketAddr,
        n: usize,
        duration: Duration,
    ) -> Result<ConnsReport> {
        let opts = ConnsOptions {
            conns: n,
            duration,
            ..ConnsOptions::default()
        };
        Ok(self.start_long_lived(ns, target, opts)?.wait())
    }

    /// Like [`Lab::tcp_flows`], but keeps each flow: its source address and who answered.
    pub fn tcp_flow_records(
        &self,
        ns: &str,
        target: SocketAddr,
        count: usize,
        budget: Duration,
    ) -> Result<Vec<FlowRecord>> {
        let flows = self.flows(ns, Transport::Tcp, target, count, budget)?;
        Ok(FlowRecord::of(target, flows))
    }

    /// Like [`Lab::udp_flows`], but keeps each flow: its source address and who answered.
    pub fn udp_flow_records(
        &self,
        ns: &str,
        target: SocketAddr,
        count: usize,
        budget: Duration,
    ) -> Result<Vec<FlowRecord>> {
        let flows = self.flows(ns, Transport::Udp, target, count, budget)?;
        Ok(FlowRecord::of(target, flows))
    }
}

/// One short flow: from where, to where, and the name of the backend that answered (or why
/// nothing did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub local: Option<SocketAddr>,
    pub target: SocketAddr,
    pub answer: std::result::Result<String, String>,
}

impl FlowRecord {
    fn of(target: SocketAddr, flows: Vec<FlowResult>) -> Vec<FlowRecord> {
        flows
            .into_iter()
            .map(|f| match f {
                Ok((local, name)) => FlowRecord {
                    local: Some(local),
                    target,
                    answer: Ok(name),
                },
                Err((local, e)) => FlowRecord {
                    local,
                    target,
                    answer: Err(e.to_string()),
                },
            })
            .collect()
    }
}

/// [`tcp_request`] that also tells the connection's source address.
pub fn tcp_request_from(
    target: SocketAddr,
    timeout: Duration,
) -> std::result::Result<(SocketAddr, String), (Option<SocketAddr>, std::io::Error)> {
    let mut s = TcpStream::connect_timeout(&target, timeout).map_err(|e| (None, e))?;
    let local = s.local_addr().map_err(|e| (None, e))?;
    let result = (|| {
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        s.take(4096).read_to_string(&mut reply)?;
        reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_owned())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not an HTTP reply: {reply:?}"),
                )
            })
    })();
    result
        .map(|name| (local, name))
        .map_err(|e| (Some(local), e))
}

/// Repeats `f` while it fails with EINTR (a signal for another thread of a test process can
/// interrupt a blocking socket call; std's `read_to_string` retries, a bare `recv` does not).
fn retry_eintr<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// [`udp_request`] that also tells the socket's source address.
pub fn udp_request_from(
    target: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> std::result::Result<(SocketAddr, String), (Option<SocketAddr>, std::io::Error)> {
    let bind: SocketAddr = match target.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let s = UdpSocket::bind(bind).map_err(|e| (None, e))?;
    s.connect(target).map_err(|e| (None, e))?;
    let local = s.local_addr().map_err(|e| (None, e))?;
    let result = (|| {
        s.set_read_timeout(Some(timeout))?;
        retry_eintr(|| s.send(payload))?;
        let mut buf = [0u8; 2048];
        let n = retry_eintr(|| s.recv(&mut buf))?;
        let reply = &buf[..n];
        let name_end = reply.iter().position(|b| *b == b' ').unwrap_or(n);
        if &reply[(name_end + 1).min(n)..] != payload {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "echo does not match the payload",
            ));
        }
        Ok(String::from_utf8_lossy(&reply[..name_end]).into_owned())
    })();
    result
        .map(|name| (local, name))
        .map_err(|e| (Some(local), e))
}

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

/// Which backend answered how many flows, and what went wrong with the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowTally {
    pub per_backend: BTreeMap<String, usize>,
    pub failures: BTreeMap<String, usize>,
    /// Flows not attempted because the time budget ran out.
    pub not_sent: usize,
}

impl FlowTally {
    /// The tally of `flows`, out of `count` asked for (the rest were not sent in time).
    fn of(flows: Vec<FlowResult>, count: usize) -> FlowTally {
        let mut tally = FlowTally {
            not_sent: count.saturating_sub(flows.len()),
            ..FlowTally::default()
        };
        for f in flows {
            match f {
                Ok((_, name)) => *tally.per_backend.entry(name).or_default() += 1,
                Err((_, e)) => {
                    *tally.failures.entry(format!("{:?}", e.kind())).or_default() += 1;
                }
            }
        }
        tally
    }

    pub fn answered(&self) -> usize {
        self.per_backend.values().sum()
    }

    pub fn failed(&self) -> usize {
        self.failures.values().sum::<usize>() + self.not_sent
    }
}

impl std::fmt::Display for FlowTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.answered() + self.failed();
        writeln!(f, "{:<12} {:>6} {:>7}", "backend", "flows", "share")?;
        for (name, n) in &self.per_backend {
            writeln!(
                f,
                "{name:<12} {n:>6} {:>6.1}%",
                100.0 * *n as f64 / total.max(1) as f64
            )?;
        }
        for (kind, n) in &self.failures {
            writeln!(
                f,
                "{:<12} {n:>6} {:>6.1}%",
                format!("({kind})"),
                100.0 * *n as f64 / total.max(1) as f64
            )?;
        }
        if self.not_sent > 0 {
            writeln!(f, "{:<12} {:>6}", "(not sent)", self.not_sent)?;
        }
        Ok(())
    }
}

/// One HTTP-ish request to an `anycast-lab-server`; returns the backend's name.
pub fn tcp_request(target: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    tcp_request_from(target, timeout)
        .map(|(_, name)| name)
        .map_err(|(_, e)| e)
}

/// One datagram to an `anycast-lab-server`; returns the backend's name (it echoes the payload
/// after its name).
pub fn udp_request(
    target: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> std::io::Result<String> {
    udp_request_from(target, payload, timeout)
        .map(|(_, name)| name)
        .map_err(|(_, e)| e)
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

/// The reference topology:
///
/// ```text
///                          +-- r-e1 == e1-r  edge1 (agent; also a backend: "edge1")
/// client c-r == r-c  router+-- r-e2 == e2-r  edge2 (agent)
///                          +-- r-b1 == b1-r  backend1 (decap-only agent, server "backend1")
///                          +-- r-b2 == b2-r  backend2 (decap-only agent, server "backend2")
/// ```
///
/// The router routes the VIPs to one edge ([`reference::route_vips_to`] stands in for BGP; the
/// BGP lab, `crate::lab_bgp`, drops that route and lets BIRD install an ECMP one). An
/// edge encapsulates VIP packets (IPIP) towards the Maglev-chosen backend and sends them back
/// out of its only interface (XDP_TX) to the router, which forwards them; the router's edge-facing
/// veths therefore carry `anycast_pass`. Backends decapsulate in their own XDP program (the lab
/// kernel has no IPIP module) and reply to the client directly through the router. Both edges
/// get the same VIPs, backends, ring size and hash seed, so a flow maps to the same backend
/// whichever edge it reaches.
///
/// Every host that receives tunnelled packets can also give a second chance (docs/dataplane.md):
/// it encapsulates a packet once more, to the flow's previous owner, and sends it back out of
/// its only interface (XDP_TX). So the router's backend-facing veths carry `anycast_pass` too,
/// and the backends forward IP (the kernel's FIB helper refuses lookups on an interface that does
/// not forward, and the packet would be dropped as `fib_fail`).
pub mod reference {
    use super::*;

    pub const CLIENT: &str = "client";
    pub const ROUTER: &str = "router";
    pub const EDGE1: &str = "edge1";
    pub const EDGE2: &str = "edge2";
    pub const BACKEND1: &str = "backend1";
    pub const BACKEND2: &str = "backend2";

    pub const CLIENT_V4: &str = "198.18.1.2";
    pub const CLIENT_V6: &str = "fd00:1::2";
    pub const EDGE1_V4: &str = "198.18.2.2";
    pub const EDGE1_V6: &str = "fd00:2::2";
    pub const EDGE2_V4: &str = "198.18.3.2";
    pub const EDGE2_V6: &str = "fd00:3::2";
    pub const BACKEND1_V4: &str = "198.18.10.2";
    pub const BACKEND1_V6: &str = "fd00:10::2";
    pub const BACKEND2_V4: &str = "198.18.11.2";
    pub const BACKEND2_V6: &str = "fd00:11::2";

    pub const VIP_V4: &str = "203.0.113.10";
    pub const VIP_V6: &str = "2001:db8::10";
    pub const TCP_PORT: u16 = 80;
    pub const UDP_PORT: u16 = 7;

    /// Names the servers answer with, in the order of [`backends_v4`].
    pub const BACKEND_NAMES: [&str; 3] = ["backend1", "backend2", "edge1"];

    /// Fabric links carry encapsulated packets (20 or 40 bytes more), so they get room for a
    /// full-size client packet plus a tunnel header; the client link keeps 1500.
    pub const FABRIC_MTU: u32 = 1600;
    pub const CLIENT_MTU: u32 = 1500;

    pub const HASH_SEED: u32 = 42;
    pub const RING_SIZE: u32 = 65537;

    pub fn vip_v4_tcp() -> SocketAddr {
        SocketAddr::new(VIP_V4.parse().expect("literal"), TCP_PORT)
    }
    pub fn vip_v4_udp() -> SocketAddr {
        SocketAddr::new(VIP_V4.parse().expect("literal"), UDP_PORT)
    }
    pub fn vip_v6_tcp() -> SocketAddr {
        SocketAddr::new(VIP_V6.parse().expect("literal"), TCP_PORT)
    }
    pub fn vip_v6_udp() -> SocketAddr {
        SocketAddr::new(VIP_V6.parse().expect("literal"), UDP_PORT)
    }

    pub fn backends_v4() -> Vec<(String, u32)> {
        [BACKEND1_V4, BACKEND2_V4, EDGE1_V4]
            .iter()
            .map(|a| ((*a).to_owned(), 1))
            .collect()
    }
    pub fn backends_v6() -> Vec<(String, u32)> {
        [BACKEND1_V6, BACKEND2_V6, EDGE1_V6]
            .iter()
            .map(|a| ((*a).to_owned(), 1))
            .collect()
    }

    /// The VIPs every edge serves: TCP and UDP on the IPv4 and the IPv6 VIP.
    pub fn vips() -> Vec<VipSpec> {
        vips_with(&Options::default())
    }

    /// [`vips`] with the backends weighted as `opts.weights` says.
    pub fn vips_with(opts: &Options) -> Vec<VipSpec> {
        let weighted = |addrs: [&str; 3]| -> Vec<(String, u32)> {
            addrs
                .iter()
                .zip(opts.weights)
                .map(|(a, w)| ((*a).to_owned(), w))
                .collect()
        };
        let mut v = Vec::new();
        for (address, backends) in [
            (VIP_V4, weighted([BACKEND1_V4, BACKEND2_V4, EDGE1_V4])),
            (VIP_V6, weighted([BACKEND1_V6, BACKEND2_V6, EDGE1_V6])),
        ] {
            for (port, protocol) in [(TCP_PORT, "tcp"), (UDP_PORT, "udp")] {
                v.push(VipSpec {
                    address: address.to_owned(),
                    port,
                    protocol: protocol.to_owned(),
                    backends: backends.clone(),
                });
            }
        }
        v
    }

    /// Variations of the reference topology.
    #[derive(Clone, Debug)]
    pub struct Options {
        /// `"ipip"` or `"gue"`: how the edges encapsulate.
        pub encapsulation: String,
        /// Weights of backend1, backend2 and edge1 (the order of [`BACKEND_NAMES`]).
        pub weights: [u32; 3],
    }

    impl Default for Options {
        fn default() -> Self {
            Options {
                encapsulation: "ipip".to_owned(),
                weights: [1, 1, 1],
            }
        }
    }

    /// The backend name (as its server answers) of a backend address, IPv4 or IPv6.
    pub fn backend_name(addr: IpAddr) -> Option<&'static str> {
        let a = addr.to_string();
        [
            (BACKEND1_V4, BACKEND1_V6, BACKEND_NAMES[0]),
            (BACKEND2_V4, BACKEND2_V6, BACKEND_NAMES[1]),
            (EDGE1_V4, EDGE1_V6, BACKEND_NAMES[2]),
        ]
        .iter()
        .find(|(v4, v6, _)| a == *v4 || a == *v6)
        .map(|(_, _, name)| *name)
    }

    /// The addresses of an edge (what `anycast lookup --local-address` needs to answer for it).
    pub fn edge_addresses(edge: &str) -> Option<[&'static str; 2]> {
        match edge {
            EDGE1 => Some([EDGE1_V4, EDGE1_V6]),
            EDGE2 => Some([EDGE2_V4, EDGE2_V6]),
            _ => None,
        }
    }

    fn end(ns: &str, name: &str, v4: &str, v6: &str, len6: u8) -> End {
        End {
            ns: ns.to_owned(),
            name: name.to_owned(),
            addrs: vec![format!("{v4}/24"), format!("{v6}/{len6}")],
        }
    }

    fn sysctl(ns: &str, key: &str, value: &str) -> Sysctl {
        Sysctl {
            ns: ns.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    fn route(ns: &str, dst: &str, via: &str) -> Route {
        Route {
            ns: ns.to_owned(),
            dst: dst.to_owned(),
            via: via.to_owned(),
        }
    }

    fn agent(
        ns: &str,
        interface: &str,
        v4: &str,
        v6: &str,
        vips: Vec<VipSpec>,
        encapsulation: &str,
    ) -> AgentSpec {
        AgentSpec {
            ns: ns.to_owned(),
            interfaces: vec![interface.to_owned()],
            tunnel_source: Some(v4.to_owned()),
            tunnel_source_v6: Some(v6.to_owned()),
            encapsulation: encapsulation.to_owned(),
            decap_allow: vec!["198.18.0.0/15".to_owned(), "fd00::/8".to_owned()],
            ring_size: RING_SIZE,
            hash_seed: HASH_SEED,
            vips,
            health: None,
        }
    }

    /// The reference topology, as data.
    pub fn topology() -> Topology {
        topology_with(&Options::default())
    }

    /// The reference topology with other weights or encapsulation.
    pub fn topology_with(opts: &Options) -> Topology {
        let namespaces = [CLIENT, ROUTER, EDGE1, EDGE2, BACKEND1, BACKEND2]
            .map(str::to_owned)
            .to_vec();
        let mut sysctls = Vec::new();
        for ns in &namespaces {
            // Decapsulated packets arrive from the router with the client's source: strict
            // reverse-path filtering must not judge them.
            sysctls.push(sysctl(ns, "net.ipv4.conf.all.rp_filter", "0"));
            sysctls.push(sysctl(ns, "net.ipv4.conf.default.rp_filter", "0"));
            // No duplicate address detection, link-local addresses included: a tentative
            // address delays neighbour discovery by a second after the lab comes up.
            sysctls.push(sysctl(ns, "net.ipv6.conf.all.accept_dad", "0"));
            sysctls.push(sysctl(ns, "net.ipv6.conf.default.accept_dad", "0"));
        }
        for ns in [ROUTER, EDGE1, EDGE2, BACKEND1, BACKEND2] {
            // Edges and backends forward too: packets the XDP program hands to the kernel
            // (neighbour not yet resolved) are forwarded by the stack, and the FIB lookup of a
            // second chance needs forwarding on the receiving interface.
            sysctls.push(sysctl(ns, "net.ipv4.ip_forward", "1"));
            sysctls.push(sysctl(ns, "net.ipv6.conf.all.forwarding", "1"));
        }
        for ns in [EDGE1, EDGE2, BACKEND1, BACKEND2] {
            sysctls.push(sysctl(ns, "net.ipv4.conf.all.accept_local", "1"));
        }

        let link = |a: End, b: End, mtu: u32| Link {
            a,
            b,
            mtu,
            tx_checksum_off: true,
        };
        let links = vec![
            link(
                end(CLIENT, "c-r", CLIENT_V4, CLIENT_V6, 64),
                end(ROUTER, "r-c", "198.18.1.1", "fd00:1::1", 64),
                CLIENT_MTU,
            ),
            link(
                end(EDGE1, "e1-r", EDGE1_V4, EDGE1_V6, 64),
                end(ROUTER, "r-e1", "198.18.2.1", "fd00:2::1", 64),
                FABRIC_MTU,
            ),
            link(
                end(EDGE2, "e2-r", EDGE2_V4, EDGE2_V6, 64),
                end(ROUTER, "r-e2", "198.18.3.1", "fd00:3::1", 64),
                FABRIC_MTU,
            ),
            link(
                end(BACKEND1, "b1-r", BACKEND1_V4, BACKEND1_V6, 64),
                end(ROUTER, "r-b1", "198.18.10.1", "fd00:10::1", 64),
                FABRIC_MTU,
            ),
            link(
                end(BACKEND2, "b2-r", BACKEND2_V4, BACKEND2_V6, 64),
                end(ROUTER, "r-b2", "198.18.11.1", "fd00:11::1", 64),
                FABRIC_MTU,
            ),
        ];

        let mut loopback = Vec::new();
        for ns in [EDGE1, EDGE2, BACKEND1, BACKEND2] {
            loopback.push(LoopbackAddr {
                ns: ns.to_owned(),
                addr: format!("{VIP_V4}/32"),
            });
            loopback.push(LoopbackAddr {
                ns: ns.to_owned(),
                addr: format!("{VIP_V6}/128"),
            });
        }

        let mut routes = vec![
            route(CLIENT, "default", "198.18.1.1"),
            route(CLIENT, "default", "fd00:1::1"),
        ];
        for (ns, v4, v6) in [
            (EDGE1, "198.18.2.1", "fd00:2::1"),
            (EDGE2, "198.18.3.1", "fd00:3::1"),
            (BACKEND1, "198.18.10.1", "fd00:10::1"),
            (BACKEND2, "198.18.11.1", "fd00:11::1"),
        ] {
            routes.push(route(ns, "default", v4));
            routes.push(route(ns, "default", v6));
        }
        routes.push(route(ROUTER, &format!("{VIP_V4}/32"), EDGE1_V4));
        routes.push(route(ROUTER, &format!("{VIP_V6}/128"), EDGE1_V6));

        // Edges transmit encapsulated packets with XDP_TX, and so do backends giving a second
        // chance: the router's ends of their veths need a native XDP program.
        let xdp_pass = ["r-e1", "r-e2", "r-b1", "r-b2"]
            .iter()
            .map(|i| XdpPass {
                ns: ROUTER.to_owned(),
                interface: (*i).to_owned(),
            })
            .collect();

        let encap = opts.encapsulation.as_str();
        let agents = vec![
            agent(EDGE1, "e1-r", EDGE1_V4, EDGE1_V6, vips_with(opts), encap),
            agent(EDGE2, "e2-r", EDGE2_V4, EDGE2_V6, vips_with(opts), encap),
            // The backends' agents have the edges' VIP tables (the same config): they decapsulate,
            // and compute the previous owner of a flow they have no socket for (second chance
            // under IPIP).
            agent(
                BACKEND1,
                "b1-r",
                BACKEND1_V4,
                BACKEND1_V6,
                vips_with(opts),
                encap,
            ),
            agent(
                BACKEND2,
                "b2-r",
                BACKEND2_V4,
                BACKEND2_V6,
                vips_with(opts),
                encap,
            ),
        ];

        let vip_addrs = vec![VIP_V4.to_owned(), VIP_V6.to_owned()];
        let servers = [
            (BACKEND1, "backend1"),
            (BACKEND2, "backend2"),
            (EDGE1, "edge1"),
        ]
        .iter()
        .map(|(ns, name)| ServerSpec {
            ns: (*ns).to_owned(),
            name: (*name).to_owned(),
            tcp_port: TCP_PORT,
            udp_port: UDP_PORT,
            addrs: vip_addrs.clone(),
        })
        .collect();

        Topology {
            namespaces,
            sysctls,
            links,
            loopback,
            routes,
            xdp_pass,
            agents,
            servers,
        }
    }

    /// Points the router's VIP routes at `edge` ([`EDGE1`] or [`EDGE2`]): what a BGP
    /// announcement from that edge would do.
    pub fn route_vips_to(lab: &Lab, edge: &str) -> Result<()> {
        let (v4, v6) = match edge {
            EDGE1 => (EDGE1_V4, EDGE1_V6),
            EDGE2 => (EDGE2_V4, EDGE2_V6),
            other => {
                return Err(LabError::Setup(format!(
                    "{other} is not an edge of the reference topology"
                )));
            }
        };
        lab.set_route(ROUTER, &format!("{VIP_V4}/32"), v4)?;
        lab.set_route(ROUTER, &format!("{VIP_V6}/128"), v6)
    }
}
