//! BGP announcement of the VIPs through BIRD 2, driven by the dataplane's state and health.
//!
//! Each VIP address is one prefix (`/32` or `/128`) held by one BIRD `protocol static` named
//! after it ([`protocol_name`]: `anycast_vip_203_0_113_10`, `anycast_vip_2001_db8_0_0_0_0_0_10`),
//! disabled in BIRD's config. Announcing is `enable <proto>` and withdrawing `disable <proto>` on
//! BIRD's control socket: per prefix, in milliseconds, without reconfiguring BIRD.
//!
//! Two modes ([`BgpMode`]):
//! - **managed**: the agent writes BIRD's config from `[bgp]` ([`bird_config`]) and runs
//!   `bird -f` as its child with `PR_SET_PDEATHSIG` = SIGKILL, so BIRD cannot outlive the agent: if
//!   the agent dies, BIRD dies, its BGP sessions close and the peers withdraw at once (or after
//!   the BFD detection time when the host itself is gone).
//! - **external**: the operator runs BIRD and declares the static protocols with the names above
//!   (disabled); the agent only enables and disables them over `bgp.bird_socket`.
//!
//! The policy ([`desired`]) is a pure function of the agent's status: a VIP qualifies while the
//! program is attached, its table is written, and at least `bgp.min_healthy_backends` of its
//! backends are in the table and healthy (or unchecked; a backend still *pending* its first
//! check does not count). A prefix is announced while every VIP on its address qualifies and
//! the edge is not drained (`anycast drain-edge`). On shutdown everything is withdrawn first.
//!
//! The announcer puts the policy through a gate ([`gate`]): a withdrawn prefix is announced
//! anew only once every checked backend's health is settled (`Want::settling`), or after
//! [`SETTLE_LIMIT`]; and while BIRD has no BGP session established, every prefix is withdrawn,
//! so that a returning session brings the VIPs back through the same gate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::bgp::{BgpConfig, BgpMode, ManagedBird};
use crate::proto::{AnnounceStatus, PrefixState, Status, VipStatus};

/// Prefix of the BIRD protocol names the agent drives.
pub const PROTOCOL_PREFIX: &str = "anycast_vip_";

/// The BIRD protocol that holds `address`'s prefix. BIRD symbols are letters, digits and `_`;
/// an IPv6 address is written as its eight groups in hex so every address has one name.
pub fn protocol_name(address: IpAddr) -> String {
    let body = match address {
        IpAddr::V4(a) => a
            .octets()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("_"),
        IpAddr::V6(a) => a
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("_"),
    };
    format!("{PROTOCOL_PREFIX}{body}")
}

fn prefix_of(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// BIRD's config for managed mode: one disabled static protocol per VIP address, one BGP session
/// per neighbor exporting only those, BFD on the sessions when configured. No kernel protocol:
/// the edge learns nothing and the blackhole routes that carry the prefixes never reach its own
/// routing table. Every edge exports the same attributes (origin IGP, its AS, no MED), which is
/// what lets routers merge them into one ECMP route.
///
/// `enabled` are the prefixes BIRD announces right now: they are written without `disabled`, so
/// that a live `configure` with this config keeps them running (BIRD restarts a protocol whose
/// configured `disabled` differs from its state, which would withdraw it).
pub fn bird_config(
    m: &ManagedBird,
    addresses: &BTreeSet<IpAddr>,
    enabled: &BTreeSet<IpAddr>,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by the anycast agent from its [bgp] section; do not edit."
    );
    let _ = writeln!(s, "router id {};", m.router_id);
    let _ = writeln!(s, "log stderr all;");
    let _ = writeln!(s, "protocol device {{ scan time 10; }}");
    if m.bfd {
        let _ = writeln!(
            s,
            "protocol bfd anycast_bfd {{\n  interface \"*\" {{ min rx interval {i} ms; min tx interval {i} ms; multiplier {k}; }};\n}}",
            i = m.bfd_interval_ms,
            k = m.bfd_multiplier
        );
    }
    for a in addresses {
        let family = if a.is_ipv4() { "ipv4" } else { "ipv6" };
        let _ = writeln!(
            s,
            "protocol static {} {{\n{}  {family};\n  route {} blackhole;\n}}",
            protocol_name(*a),
            if enabled.contains(a) {
                ""
            } else {
                "  disabled;\n"
            },
            prefix_of(*a)
        );
    }
    for (i, n) in m.neighbors.iter().enumerate() {
        let family = if n.address.is_ipv4() { "ipv4" } else { "ipv6" };
        let _ = writeln!(s, "protocol bgp anycast_peer_{i} {{");
        let _ = writeln!(s, "  local as {};", m.local_as);
        let _ = writeln!(s, "  neighbor {} as {};", n.address, n.asn);
        let _ = writeln!(s, "  hold time {};", m.hold_time);
        let _ = writeln!(s, "  keepalive time {};", m.keepalive_time);
        // Defaults are 5 s before the first connect and 60 s after an error: an edge that comes
        // back should not stay out of the ECMP group for a minute.
        let _ = writeln!(s, "  connect delay time 1;");
        let _ = writeln!(s, "  connect retry time 5;");
        let _ = writeln!(s, "  error wait time 1, 30;");
        if m.bfd {
            let _ = writeln!(s, "  bfd on;");
        }
        let _ = writeln!(
            s,
            "  {family} {{ import none; export where proto ~ \"{PROTOCOL_PREFIX}*\"; next hop self; }};"
        );
        let _ = writeln!(s, "}}");
    }
    s
}

/// What the policy wants for one prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Want {
    pub announce: bool,
    pub reason: String,
    /// `Some(why)`: the prefix qualifies, but some of its backends' health is not settled yet
    /// (pending a first check, a restored verdict not yet confirmed, a rise or fall under way):
    /// a prefix that is withdrawn stays withdrawn until it settles ([`gate`]); one that is
    /// announced stays announced.
    pub settling: Option<String>,
}

/// What the policy wants for every VIP address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub prefixes: BTreeMap<IpAddr, Want>,
    /// The agent is stopping: withdraw everything, then stop.
    pub last: bool,
}

/// Why a VIP does or does not qualify for announcement (`Ok` = qualifies, with a reason too).
fn vip_verdict(v: &VipStatus, attached: bool, min: u32) -> Result<String, String> {
    if !attached {
        return Err("program not attached".into());
    }
    if v.fingerprint.is_none() {
        return Err("no table written".into());
    }
    let in_table = |b: &&crate::proto::BackendStatus| b.weight_effective > 0 && b.slots > 0;
    let healthy = v
        .backends
        .iter()
        .filter(in_table)
        .filter(|b| matches!(b.health, "healthy" | "unchecked"))
        .count();
    let pending = v
        .backends
        .iter()
        .filter(in_table)
        .filter(|b| b.health == "pending")
        .count();
    let pending = if pending > 0 {
        format!(" ({pending} pending a first check)")
    } else {
        String::new()
    };
    let n = v.backends.len();
    if (healthy as u64) < u64::from(min) {
        return Err(format!(
            "{healthy} of {n} backends healthy{pending}, fewer than bgp.min_healthy_backends = {min}"
        ));
    }
    Ok(format!("{healthy} of {n} backends healthy{pending}"))
}

/// The policy; see the module docs.
pub fn desired(status: &Status, min_healthy: u32, edge_drained: bool, stopping: bool) -> Desired {
    let attached = !status.program.interfaces.is_empty();
    let mut by_addr: BTreeMap<IpAddr, Vec<(String, Result<String, String>)>> = BTreeMap::new();
    let mut unsettled: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for v in &status.vips {
        by_addr
            .entry(v.vip.address)
            .or_default()
            .push((v.vip.to_string(), vip_verdict(v, attached, min_healthy)));
        *unsettled.entry(v.vip.address).or_default() +=
            v.backends.iter().filter(|b| !b.health_settled).count();
    }
    let prefixes = by_addr
        .into_iter()
        .map(|(a, verdicts)| {
            let several = verdicts.len() > 1;
            let label = |vip: &str, r: &str| {
                if several {
                    format!("{vip}: {r}")
                } else {
                    r.to_owned()
                }
            };
            let no = |reason: String| Want {
                announce: false,
                reason,
                settling: None,
            };
            let want = if stopping {
                no("agent stopping".into())
            } else if edge_drained {
                no("edge drained (anycast drain-edge)".into())
            } else if let Some((vip, Err(r))) = verdicts.iter().find(|(_, r)| r.is_err()) {
                no(label(vip, r))
            } else {
                let n = unsettled.get(&a).copied().unwrap_or(0);
                Want {
                    announce: true,
                    reason: verdicts
                        .iter()
                        .map(|(vip, r)| label(vip, r.as_deref().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join("; "),
                    settling: (n > 0).then(|| {
                        format!(
                            "waiting for the health checks of {n} backend{} to settle",
                            if n == 1 { "" } else { "s" }
                        )
                    }),
                }
            };
            (a, want)
        })
        .collect();
    Desired {
        prefixes,
        last: stopping,
    }
}

/// The longest a prefix waits for its backends' health to settle ([`gate`]): a backend whose
/// checks keep flapping must not keep a VIP off the air.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// How often the announcer asks BIRD for its BGP sessions (and thereby notices a dead BIRD).
const SESSION_POLL: Duration = Duration::from_millis(250);

/// Whether a prefix goes to BIRD as announced, and why: the policy's [`Want`] through the gate.
///
/// - No BGP session established (`sessions_up == false`): withdrawn, so that the prefix is
///   announced again through this gate when a session returns, not the instant BGP comes back
///   with whatever table the edge has then (after a link outage its health view is usually in
///   the middle of changing).
/// - A prefix not announced now (`on == false`) is announced only once its backends' health is
///   settled (`want.settling` is `None`), or after it has waited [`SETTLE_LIMIT`]
///   (`waited`): the table it is announced with is the one it will keep.
/// - An announced prefix stays announced while it qualifies, settled or not.
pub fn gate(want: &Want, on: bool, sessions_up: bool, waited: Duration) -> (bool, String) {
    if !want.announce {
        return (false, want.reason.clone());
    }
    if !sessions_up {
        return (false, "no BGP session established".into());
    }
    if !on
        && let Some(why) = &want.settling
        && waited < SETTLE_LIMIT
    {
        return (false, why.clone());
    }
    (true, want.reason.clone())
}

/// The BGP sessions in a `show protocols` reply: (configured, established).
pub fn bgp_sessions(reply: &[String]) -> (usize, usize) {
    let mut configured = 0;
    let mut established = 0;
    for line in reply {
        let mut words = line.split_whitespace();
        let (Some(_name), Some(proto)) = (words.next(), words.next()) else {
            continue;
        };
        if proto == "BGP" {
            configured += 1;
            if line.contains("Established") {
                established += 1;
            }
        }
    }
    (configured, established)
}

/// Whether a `[bgp]` change can be applied to a running announcer ([`Handle::reconfigure`]):
/// `Err((field, old, new, why))` names what needs a restart. The mode, a managed BIRD's binary and run
/// directory, and an external BIRD's socket identify the BIRD the agent talks to; everything else
/// (AS, router id, neighbours, timers, BFD, `min_healthy_backends`) and the VIP address set
/// change live.
pub fn live_change(
    old: &BgpConfig,
    new: &BgpConfig,
) -> Result<(), (&'static str, String, String, &'static str)> {
    let path = |p: &Path| p.display().to_string();
    match (&old.mode, &new.mode) {
        (BgpMode::Managed(a), BgpMode::Managed(b)) => {
            if a.bird_binary != b.bird_binary {
                return Err((
                    "bgp.bird_binary",
                    path(&a.bird_binary),
                    path(&b.bird_binary),
                    "the managed BIRD is started with the agent",
                ));
            }
            if a.run_dir != b.run_dir {
                return Err((
                    "bgp.run_dir",
                    path(&a.run_dir),
                    path(&b.run_dir),
                    "the managed BIRD's config and control socket live there",
                ));
            }
            Ok(())
        }
        (BgpMode::External { bird_socket: a }, BgpMode::External { bird_socket: b }) => {
            if a == b {
                Ok(())
            } else {
                Err((
                    "bgp.bird_socket",
                    path(a),
                    path(b),
                    "the external BIRD the agent drives is chosen at start",
                ))
            }
        }
        (a, b) => {
            let describe = |m: &BgpMode| match m {
                BgpMode::Managed(_) => "unset (managed BIRD)".to_owned(),
                BgpMode::External { bird_socket } => {
                    format!("{} (external BIRD)", path(bird_socket))
                }
            };
            Err((
                "bgp.bird_socket",
                describe(a),
                describe(b),
                "switching between a managed and an external BIRD is done at start",
            ))
        }
    }
}

/// A live change for the announcer's task.
#[derive(Debug)]
struct Reconfig {
    /// The new managed BIRD settings (None: external mode).
    managed: Option<ManagedBird>,
    addresses: BTreeSet<IpAddr>,
}

/// The controller's side of the announcer: feeds it the policy's input, reads its state.
pub struct Handle {
    cfg: BgpConfig,
    tx: watch::Sender<Desired>,
    reconfig: mpsc::UnboundedSender<Reconfig>,
    shared: Arc<Mutex<AnnounceStatus>>,
    edge_drained: bool,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Handle {
    pub fn config(&self) -> &BgpConfig {
        &self.cfg
    }

    pub fn status(&self) -> AnnounceStatus {
        let mut s = self.shared.lock().expect("announce state").clone();
        s.edge_drained = self.edge_drained;
        s
    }

    pub fn edge_drained(&self) -> bool {
        self.edge_drained
    }

    pub fn set_edge_drained(&mut self, drained: bool) {
        self.edge_drained = drained;
    }

    /// Applies a changed `[bgp]` section and/or VIP address set without restarting BIRD, once
    /// [`live_change`] allowed it. Prefixes that leave the set are withdrawn first; a managed
    /// BIRD gets a new config (announced prefixes kept enabled in it) and `configure`; BGP
    /// sessions whose settings changed are restarted by BIRD, the others are untouched. The
    /// caller then hands the policy its new input ([`Handle::update`]), which announces new
    /// prefixes once their tables are written.
    pub fn reconfigure(&mut self, cfg: BgpConfig, addresses: &BTreeSet<IpAddr>) {
        self.shared
            .lock()
            .expect("announce state")
            .min_healthy_backends = cfg.min_healthy_backends;
        let managed = match &cfg.mode {
            BgpMode::Managed(m) => Some(m.clone()),
            BgpMode::External { .. } => None,
        };
        self.cfg = cfg;
        let _ = self.reconfig.send(Reconfig {
            managed,
            addresses: addresses.clone(),
        });
    }

    /// Recomputes the policy from `status` and hands it to the task if it changed.
    pub fn update(&self, status: &Status) {
        let d = desired(
            status,
            self.cfg.min_healthy_backends,
            self.edge_drained,
            false,
        );
        self.tx.send_if_modified(|cur| {
            if *cur == d {
                false
            } else {
                *cur = d;
                true
            }
        });
    }

    /// Withdraws every prefix and waits (bounded) until BIRD has done it; a managed BIRD is then
    /// stopped.
    pub async fn shutdown(mut self, status: &Status) {
        let d = desired(
            status,
            self.cfg.min_healthy_backends,
            self.edge_drained,
            true,
        );
        let _ = self.tx.send(d);
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(3), task).await {
                Ok(_) => {}
                Err(_) => warn!("BGP withdrawal on shutdown did not finish within 3 s"),
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BIRD answered {command:?} with {reply:?}")]
    Refused { command: String, reply: String },
    #[error("BIRD closed the control connection")]
    Closed,
    #[error("BIRD did not answer {0:?} within 5 s")]
    Timeout(String),
}

/// A connection to BIRD's control socket (the protocol `birdc` speaks): one command per line;
/// a reply is lines `CODE-text` or ` text`, ending with a line `CODE text`. Codes 8xxx and 9xxx
/// are errors.
pub struct BirdClient {
    path: PathBuf,
    read: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl BirdClient {
    pub async fn connect(path: &Path) -> Result<Self, BirdError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|source| BirdError::Io {
                what: "connecting to BIRD's control socket",
                path: path.to_owned(),
                source,
            })?;
        let (r, w) = s.into_split();
        let mut c = Self {
            path: path.to_owned(),
            read: BufReader::new(r),
            write: w,
        };
        c.reply("(greeting)").await?;
        Ok(c)
    }

    async fn reply(&mut self, command: &str) -> Result<Vec<String>, BirdError> {
        let mut lines = Vec::new();
        let read = async {
            loop {
                let mut l = String::new();
                let n = self
                    .read
                    .read_line(&mut l)
                    .await
                    .map_err(|source| BirdError::Io {
                        what: "reading from BIRD's control socket",
                        path: self.path.clone(),
                        source,
                    })?;
                if n == 0 {
                    return Err(BirdError::Closed);
                }
                let l = l.trim_end_matches('\n').to_owned();
                let b = l.as_bytes();
                let end = b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b' ';
                let code = (b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit)).then(|| b[0]);
                lines.push(l);
                if matches!(code, Some(b'8' | b'9')) && end {
                    return Err(BirdError::Refused {
                        command: command.to_owned(),
                        reply: lines.join(" | "),
                    });
                }
                if end {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .map_err(|_| BirdError::Timeout(command.to_owned()))??;
        Ok(lines)
    }

    /// Sends one command and returns its reply lines.
    pub async fn command(&mut self, command: &str) -> Result<Vec<String>, BirdError> {
        let mut line = command.to_owned();
        line.push('\n');
        self.write
            .write_all(line.as_bytes())
            .await
            .map_err(|source| BirdError::Io {
                what: "writing to BIRD's control socket",
                path: self.path.clone(),
                source,
            })?;
        self.reply(command).await
    }
}

/// A prefix as the announcer starts it: withdrawn.
fn prefix_state(address: IpAddr) -> PrefixState {
    PrefixState {
        prefix: prefix_of(address),
        protocol: protocol_name(address),
        announced: false,
        wanted: false,
        reason: "starting".into(),
        since: now(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Starts the announcer for `addresses` (every VIP address of the config). In managed mode it
/// writes BIRD's config and starts BIRD; then it applies the policy as it changes. Nothing is
/// announced before the first [`Handle::update`].
pub fn start(cfg: BgpConfig, addresses: &BTreeSet<IpAddr>) -> Result<Handle, BirdError> {
    let socket = cfg.socket();
    let shared = Arc::new(Mutex::new(AnnounceStatus {
        mode: cfg.mode_name(),
        bird_socket: socket.clone(),
        bird: "connecting".into(),
        edge_drained: false,
        min_healthy_backends: cfg.min_healthy_backends,
        prefixes: addresses.iter().map(|a| (*a, prefix_state(*a))).collect(),
    }));
    let (bird, managed) = match &cfg.mode {
        BgpMode::Managed(m) => (Some(spawn_bird(m, addresses)?), Some(m.clone())),
        BgpMode::External { .. } => (None, None),
    };
    let (tx, rx) = watch::channel(Desired::default());
    let (reconfig, reconfig_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(
        Task {
            socket,
            shared: shared.clone(),
            managed,
            addresses: addresses.clone(),
        },
        rx,
        reconfig_rx,
        bird,
    ));
    Ok(Handle {
        cfg,
        tx,
        reconfig,
        shared,
        edge_drained: false,
        task: Some(task),
    })
}

fn spawn_bird(
    m: &ManagedBird,
    addresses: &BTreeSet<IpAddr>,
) -> Result<tokio::process::Child, BirdError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| BirdError::Io { what, path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&m.run_dir)
        .map_err(io("creating", &m.run_dir))?;
    let conf = m.run_dir.join("bird.conf");
    let sock = m.run_dir.join("bird.ctl");
    write_bird_config(m, addresses, &BTreeSet::new())?;
    // A socket left by a BIRD that was killed: BIRD refuses to start over a live one only.
    let _ = std::fs::remove_file(&sock);
    let mut cmd = tokio::process::Command::new(&m.bird_binary);
    cmd.arg("-f")
        .arg("-c")
        .arg(&conf)
        .arg("-s")
        .arg(&sock)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, setpgid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // BIRD must not outlive the agent (its announcements would). The death signal is
            // tied to the thread that forks; the agent's runtime is single-threaded (main.rs),
            // so that thread is the process's main thread.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            // Its own process group: a Ctrl-C at the agent's terminal reaches the agent only,
            // which withdraws first and then stops BIRD.
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io("starting BIRD", &m.bird_binary))?;
    info!(
        pid = child.id().unwrap_or(0),
        config = %conf.display(),
        socket = %sock.display(),
        neighbors = m.neighbors.len(),
        bfd = m.bfd,
        "BIRD started (managed; dies with the agent)"
    );
    Ok(child)
}

/// Writes a managed BIRD's config (temporary file + rename: BIRD never reads half a file).
fn write_bird_config(
    m: &ManagedBird,
    addresses: &BTreeSet<IpAddr>,
    enabled: &BTreeSet<IpAddr>,
) -> Result<PathBuf, BirdError> {
    let conf = m.run_dir.join("bird.conf");
    let tmp = m.run_dir.join("bird.conf.tmp");
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| BirdError::Io { what, path, source }
    };
    std::fs::write(&tmp, bird_config(m, addresses, enabled)).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &conf).map_err(io("renaming into place", &conf))?;
    Ok(conf)
}

/// The announcer task's fixed context and what a reconfiguration changes.
struct Task {
    socket: PathBuf,
    shared: Arc<Mutex<AnnounceStatus>>,
    managed: Option<ManagedBird>,
    addresses: BTreeSet<IpAddr>,
}

impl Task {
    fn set_announced(&self, addr: IpAddr, announced: bool, reason: &str) {
        let mut s = self.shared.lock().expect("announce state");
        if let Some(p) = s.prefixes.get_mut(&addr)
            && p.announced != announced
        {
            p.announced = announced;
            p.since = now();
            if announced {
                info!(prefix = %p.prefix, protocol = %p.protocol, reason, "VIP announced");
            } else {
                warn!(prefix = %p.prefix, protocol = %p.protocol, reason, "VIP withdrawn");
            }
        }
    }

    /// Applies a live change: withdraws prefixes that leave the set, rewrites a managed BIRD's
    /// config and has BIRD load it. `Err` = the BIRD connection failed (reconnect and retry the
    /// config load); a refused command or config is logged and not retried.
    async fn reconfigure(
        &mut self,
        r: Reconfig,
        client: &mut Option<BirdClient>,
        applied: &mut BTreeMap<IpAddr, bool>,
        pending_configure: &mut bool,
    ) {
        let gone: Vec<IpAddr> = self.addresses.difference(&r.addresses).copied().collect();
        let added: Vec<IpAddr> = r.addresses.difference(&self.addresses).copied().collect();
        for addr in &gone {
            if applied.get(addr) == Some(&true)
                && let Some(c) = client.as_mut()
            {
                let cmd = format!("disable {}", protocol_name(*addr));
                if let Err(e) = c.command(&cmd).await {
                    error!(prefix = %prefix_of(*addr), command = %cmd, error = %crate::error::error_chain(&e), "BIRD command failed");
                    if !matches!(e, BirdError::Refused { .. }) {
                        *client = None;
                    }
                }
            }
            self.set_announced(*addr, false, "VIP address removed from the config");
            applied.remove(addr);
        }
        {
            let mut s = self.shared.lock().expect("announce state");
            for addr in &gone {
                s.prefixes.remove(addr);
            }
            for addr in &added {
                s.prefixes.insert(*addr, prefix_state(*addr));
            }
        }
        let bird_changed = self.managed != r.managed;
        self.addresses = r.addresses;
        self.managed = r.managed;
        info!(
            added = added.len(),
            removed = gone.len(),
            bird_config_changed = bird_changed,
            "BGP configuration changed"
        );
        if self.managed.is_some() && (bird_changed || !added.is_empty() || !gone.is_empty()) {
            *pending_configure = true;
        }
    }

    /// Writes a managed BIRD's config from the current state and has BIRD load it.
    async fn load_config(
        &self,
        c: &mut BirdClient,
        applied: &BTreeMap<IpAddr, bool>,
    ) -> Result<(), BirdError> {
        let Some(m) = &self.managed else {
            return Ok(());
        };
        let enabled: BTreeSet<IpAddr> = applied
            .iter()
            .filter(|(_, on)| **on)
            .map(|(a, _)| *a)
            .collect();
        let conf = write_bird_config(m, &self.addresses, &enabled)?;
        let reply = c.command("configure").await?;
        info!(config = %conf.display(), reply = %reply.join(" | "), "managed BIRD reconfigured");
        Ok(())
    }
}

async fn run(
    mut t: Task,
    mut rx: watch::Receiver<Desired>,
    mut reconfig: mpsc::UnboundedReceiver<Reconfig>,
    mut bird: Option<tokio::process::Child>,
) {
    let socket = t.socket.clone();
    let shared = t.shared.clone();
    let mut client: Option<BirdClient> = None;
    // What BIRD has, as far as we know; `None` = unknown (new connection): send everything.
    let mut applied: BTreeMap<IpAddr, bool> = BTreeMap::new();
    let mut last_error = String::new();
    // A managed BIRD's config was rewritten and BIRD has not loaded it yet.
    let mut pending_configure = false;
    // A live change received while waiting, applied at the top of the loop (before the policy,
    // so a new prefix's protocol exists before it is enabled).
    let mut queued: Vec<Reconfig> = Vec::new();
    // Whether BIRD has a BGP session established (`None`: not asked yet on this connection); a
    // BIRD without BGP protocols counts as up (external mode, sessions elsewhere).
    let mut sessions_up: Option<bool> = None;
    // Since when each prefix has been held by the health gate.
    let mut held_since: BTreeMap<IpAddr, tokio::time::Instant> = BTreeMap::new();
    loop {
        while let Ok(r) = reconfig.try_recv() {
            queued.push(r);
        }
        for r in queued.drain(..) {
            t.reconfigure(r, &mut client, &mut applied, &mut pending_configure)
                .await;
        }
        if let Some(child) = &mut bird
            && let Ok(Some(st)) = child.try_wait()
        {
            error!(status = %st, "managed BIRD exited; every prefix is withdrawn until the agent restarts");
            shared.lock().expect("announce state").bird = format!("exited ({st})");
            for p in shared.lock().expect("announce state").prefixes.values_mut() {
                if p.announced {
                    p.announced = false;
                    p.since = now();
                }
            }
            bird = None;
            client = None;
            // Stay in the loop for the policy's sake, but there is nothing to talk to.
            if rx.borrow().last {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                Some(r) = reconfig.recv() => queued.push(r),
            }
            continue;
        }
        let want = rx.borrow_and_update().clone();
        if client.is_none() {
            match BirdClient::connect(&socket).await {
                Ok(c) => {
                    info!(socket = %socket.display(), "connected to BIRD");
                    shared.lock().expect("announce state").bird = "connected".into();
                    client = Some(c);
                    applied.clear();
                    sessions_up = None;
                    last_error.clear();
                }
                Err(e) => {
                    let msg = crate::error::error_chain(&e);
                    if msg != last_error {
                        warn!(error = %msg, "BIRD not reachable yet; retrying");
                        last_error = msg.clone();
                    }
                    shared.lock().expect("announce state").bird = format!("connecting: {msg}");
                    if want.last {
                        break;
                    }
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { break },
                        Some(r) = reconfig.recv() => queued.push(r),
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        if pending_configure && !want.last {
            match t.load_config(c, &applied).await {
                Ok(()) => pending_configure = false,
                Err(
                    e @ (BirdError::Refused { .. }
                    | BirdError::Io {
                        what: "writing" | "renaming into place",
                        ..
                    }),
                ) => {
                    error!(error = %crate::error::error_chain(&e), "the managed BIRD did not take its new config; it keeps the previous one");
                    pending_configure = false;
                }
                Err(e) => {
                    warn!(error = %crate::error::error_chain(&e), "reconfiguring BIRD; reconnecting");
                    client = None;
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        if sessions_up.is_none() && !want.last {
            match c.command("show protocols").await {
                Ok(reply) => {
                    let (configured, established) = bgp_sessions(&reply);
                    sessions_up = Some(configured == 0 || established > 0);
                }
                Err(e) => {
                    warn!(error = %crate::error::error_chain(&e), "asking BIRD for its BGP sessions; reconnecting");
                    client = None;
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        let mut failed = false;
        for (addr, w) in &want.prefixes {
            if !t.addresses.contains(addr) {
                continue; // the policy's input is older than the last reconfiguration
            }
            let on = applied.get(addr) == Some(&true);
            let held = w.announce && !on && w.settling.is_some();
            let waited = if held {
                held_since
                    .entry(*addr)
                    .or_insert_with(|| {
                        info!(prefix = %prefix_of(*addr), reason = w.settling.as_deref().unwrap_or_default(), "VIP qualifies; held back until its health checks settle");
                        tokio::time::Instant::now()
                    })
                    .elapsed()
            } else {
                held_since.remove(addr);
                Duration::ZERO
            };
            let (announce, reason) = gate(w, on, sessions_up != Some(false), waited);
            {
                let mut s = shared.lock().expect("announce state");
                if let Some(p) = s.prefixes.get_mut(addr) {
                    p.wanted = announce;
                    p.reason.clone_from(&reason);
                }
            }
            if applied.get(addr) == Some(&announce) {
                continue;
            }
            if held && waited >= SETTLE_LIMIT {
                warn!(prefix = %prefix_of(*addr), waited_ms = waited.as_millis() as u64, reason = ?w.settling, "health did not settle; announcing anyway");
            }
            let proto = protocol_name(*addr);
            let cmd = format!("{} {proto}", if announce { "enable" } else { "disable" });
            match c.command(&cmd).await {
                Ok(_) => {
                    applied.insert(*addr, announce);
                    t.set_announced(*addr, announce, &reason);
                }
                Err(e) => {
                    error!(prefix = %prefix_of(*addr), command = %cmd, error = %crate::error::error_chain(&e), "BIRD command failed");
                    if !matches!(e, BirdError::Refused { .. }) {
                        failed = true;
                        break;
                    }
                }
            }
        }
        if failed {
            client = None;
            shared.lock().expect("announce state").bird = "connecting: connection lost".into();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if want.last {
            break;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { break },
            Some(r) = reconfig.recv() => queued.push(r),
            // Follows the BGP sessions (the gate above), notices a dead BIRD child and
            // reconnects after BIRD restarts.
            () = tokio::time::sleep(SESSION_POLL) => {
                if let Some(c) = client.as_mut() {
                    match c.command("show protocols").await {
                        Ok(reply) => {
                            let (configured, established) = bgp_sessions(&reply);
                            let up = configured == 0 || established > 0;
                            if sessions_up.is_some_and(|was| was != up) {
                                if up {
                                    info!(established, configured, "a BGP session is established: the VIPs are announced again through the health gate");
                                } else {
                                    warn!(configured, "no BGP session established: every VIP withdrawn until one is");
                                }
                            }
                            sessions_up = Some(up);
                        }
                        Err(_) => client = None,
                    }
                }
            }
        }
    }
    if let Some(mut child) = bird {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(1), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        info!("managed BIRD stopped");
    }
    shared.lock().expect("announce state").bird = "stopped".into();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::bgp::{RawBgp, validate};
    use std::net::Ipv4Addr;

    fn raw(text: &str) -> RawBgp {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_gate_announces_anew_only_with_settled_health_and_a_session() {
        let want = |announce: bool, settling: Option<&str>| Want {
            announce,
            reason: "2 of 2 backends healthy".into(),
            settling: settling.map(str::to_owned),
        };
        let z = Duration::ZERO;
        let settling = want(
            true,
            Some("waiting for the health checks of 1 backend to settle"),
        );
        // Withdrawn and settling: stays withdrawn, saying why.
        assert_eq!(
            gate(&settling, false, true, z),
            (false, settling.settling.clone().unwrap())
        );
        // Announced and settling: stays announced.
        assert!(gate(&settling, true, true, z).0);
        // Settled: announced.
        assert_eq!(
            gate(&want(true, None), false, true, z),
            (true, "2 of 2 backends healthy".into())
        );
        // Not for ever: after SETTLE_LIMIT a flapping backend no longer holds it back.
        assert!(gate(&settling, false, true, SETTLE_LIMIT).0);
        // No BGP session: withdrawn whatever the policy says, so that it comes back through the
        // gate.
        assert_eq!(
            gate(&want(true, None), true, false, z),
            (false, "no BGP session established".into())
        );
        // The policy's no stays no.
        let no = want(false, None);
        assert_eq!(
            gate(&no, true, true, SETTLE_LIMIT),
            (false, no.reason.clone())
        );
    }

    #[test]
    fn bgp_sessions_are_read_from_show_protocols() {
        let reply: Vec<String> = [
            "2002-Name       Proto      Table      State  Since         Info",
            "1002-device1    Device     ---        up     10:00:00.000  ",
            " anycast_vip_203_0_113_10 Static     master4    up     10:00:01.000  ",
            " router_ipv4 BGP        ---        up     10:00:02.000  Established   ",
            " router_ipv6 BGP        ---        start  10:00:02.000  Active        Socket: Connection refused",
            "0000 ",
        ]
        .iter()
        .map(|l| (*l).to_owned())
        .collect();
        assert_eq!(bgp_sessions(&reply), (2, 1));
        assert_eq!(bgp_sessions(&reply[..2]), (0, 0));
        let down: Vec<String> = reply
            .iter()
            .map(|l| l.replace("Established", "Connect"))
            .collect();
        assert_eq!(bgp_sessions(&down), (2, 0));
    }

    #[test]
    fn protocol_names_are_bird_symbols_and_unique_per_address() {
        assert_eq!(
            protocol_name("203.0.113.10".parse().unwrap()),
            "anycast_vip_203_0_113_10"
        );
        assert_eq!(
            protocol_name("2001:db8::10".parse().unwrap()),
            "anycast_vip_2001_db8_0_0_0_0_0_10"
        );
    }

    #[test]
    fn managed_config_is_validated_with_field_names() {
        let ok = validate(
            raw("local_as = 65001\nneighbors = [{ address = \"198.18.2.1\", as = 65000 }]"),
            Some("198.18.2.2".parse().unwrap()),
        )
        .unwrap();
        let BgpMode::Managed(m) = &ok.mode else {
            panic!()
        };
        assert_eq!(m.router_id, "198.18.2.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!((m.hold_time, m.keepalive_time, m.bfd), (90, 30, true));
        assert_eq!(ok.min_healthy_backends, 1);
        let err = |t: &str| validate(raw(t), None).unwrap_err().to_string();
        assert!(err("neighbors = []").starts_with("bgp.local_as: required"));
        assert!(err("local_as = 65001\nrouter_id = \"1.1.1.1\"").starts_with("bgp.neighbors:"));
        assert!(
            err("local_as = 65001\nneighbors = [{ address = \"x\", as = 1 }]")
                .starts_with("bgp.router_id: required")
        );
        assert!(
            err("local_as = 65001\nrouter_id = \"1.1.1.1\"\nneighbors = [{ address = \"x\", as = 1 }]")
                .starts_with("bgp.neighbors[0].address: \"x\" is not an IP address")
        );
        assert!(
            err("local_as = 65001\nrouter_id = \"1.1.1.1\"\nhold_time = 2\nneighbors = [{ address = \"1.1.1.2\", as = 1 }]")
                .starts_with("bgp.hold_time: 2 s")
        );
        assert!(
            err("local_as = 0\nrouter_id = \"1.1.1.1\"\nneighbors = [{ address = \"1.1.1.2\", as = 1 }]")
                .starts_with("bgp.local_as: 0 is out of range")
        );
        assert!(
            err("bird_socket = \"/run/bird/bird.ctl\"\nlocal_as = 65001")
                .starts_with("bgp.local_as: only for a BIRD the agent manages")
        );
        let ext = validate(raw("bird_socket = \"/run/bird/bird.ctl\""), None).unwrap();
        assert_eq!(ext.socket(), PathBuf::from("/run/bird/bird.ctl"));
    }

    #[test]
    fn generated_bird_config_holds_one_disabled_static_per_address_and_exports_only_those() {
        let cfg = validate(
            raw("local_as = 65001\nrouter_id = \"198.18.2.2\"\nneighbors = [{ address = \"198.18.2.1\", as = 65000 }, { address = \"fd00:2::1\", as = 65000 }]"),
            None,
        )
        .unwrap();
        let BgpMode::Managed(m) = &cfg.mode else {
            panic!()
        };
        let addrs: BTreeSet<IpAddr> = ["203.0.113.10", "2001:db8::10"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let c = bird_config(m, &addrs, &BTreeSet::new());
        assert!(c.contains("protocol static anycast_vip_203_0_113_10 {\n  disabled;\n  ipv4;\n  route 203.0.113.10/32 blackhole;"), "{c}");
        assert!(c.contains("route 2001:db8::10/128 blackhole;"));
        assert!(c.contains("neighbor 198.18.2.1 as 65000;"));
        assert!(c.contains(
            "  ipv4 { import none; export where proto ~ \"anycast_vip_*\"; next hop self; };"
        ));
        assert!(c.contains(
            "  ipv6 { import none; export where proto ~ \"anycast_vip_*\"; next hop self; };"
        ));
        assert!(c.contains("bfd on;") && c.contains("multiplier 3;"));
        assert!(
            !c.contains("protocol kernel"),
            "the edge must not install its blackholes"
        );
    }
    #[test]
    fn announced_prefixes_stay_enabled_in_a_rewritten_config() {
        let cfg = validate(
            raw("local_as = 65001\nrouter_id = \"198.18.2.2\"\nneighbors = [{ address = \"198.18.2.1\", as = 65000 }]"),
            None,
        )
        .unwrap();
        let BgpMode::Managed(m) = &cfg.mode else {
            panic!()
        };
        let a: IpAddr = "203.0.113.10".parse().unwrap();
        let b: IpAddr = "203.0.113.20".parse().unwrap();
        let c = bird_config(m, &[a, b].into(), &[a].into());
        assert!(
            c.contains("protocol static anycast_vip_203_0_113_10 {\n  ipv4;"),
            "{c}"
        );
        assert!(
            c.contains("protocol static anycast_vip_203_0_113_20 {\n  disabled;\n  ipv4;"),
            "{c}"
        );
    }

    #[test]
    fn live_changes_are_everything_but_which_bird() {
        let managed = |extra: &str| {
            validate(
                raw(&format!("local_as = 65001\nrouter_id = \"198.18.2.2\"\nneighbors = [{{ address = \"198.18.2.1\", as = 65000 }}]\n{extra}")),
                None,
            )
            .unwrap()
        };
        let external =
            |sock: &str| validate(raw(&format!("bird_socket = {sock:?}")), None).unwrap();
        let base = managed("");
        assert_eq!(
            live_change(
                &base,
                &managed("hold_time = 30\nbfd = false\nmin_healthy_backends = 2")
            ),
            Ok(())
        );
        assert_eq!(
            live_change(&base, &managed("bird_binary = \"/opt/bird\""))
                .unwrap_err()
                .0,
            "bgp.bird_binary"
        );
        assert_eq!(
            live_change(&base, &managed("run_dir = \"/tmp/x\""))
                .unwrap_err()
                .0,
            "bgp.run_dir"
        );
        assert_eq!(
            live_change(&base, &external("/run/bird.ctl"))
                .unwrap_err()
                .0,
            "bgp.bird_socket"
        );
        assert_eq!(live_change(&external("/a"), &external("/a")), Ok(()));
        assert_eq!(
            live_change(&external("/a"), &external("/b")).unwrap_err().0,
            "bgp.bird_socket"
        );
    }
}
