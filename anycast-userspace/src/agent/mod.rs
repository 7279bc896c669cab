//! `anycast agent`: validate, load, write the maps, attach, then serve: config reloads
//! (SIGHUP, or the file changing), health checks, the control API and metrics, until a signal.
//!
//! Ordering matters for a safe start: nothing is attached until the config is valid and every
//! map is written, so a bad config never leaves a half-programmed dataplane on an interface.
//!
//! The dataplane outlives the agent (the model of Cilium and Katran): program, links and maps are
//! pinned under `agent.pin_path` ([`crate::dataplane::pins`]), so an agent that exits, crashes or is killed
//! leaves the interfaces forwarding with their last tables. A starting agent adopts the pins:
//! same maps (tables, counters, connection tracking), its own program swapped atomically into
//! each pinned link, then only the difference between the maps and its config written. On
//! SIGINT/SIGTERM the agent stops serving and exits 0, leaving the dataplane in place;
//! `anycast detach --config FILE` (or `anycast agent --detach --config FILE`) removes it.
//!
//! One task owns the state ([`Controller`]): reloads, health verdicts and API requests reach it
//! through channels and are applied one at a time.

mod detach;
mod preflight;
mod reload;
mod tasks;

use reload::{migrate_conns, reload};

pub use detach::{DetachReport, detach, previous_state};
pub use tasks::targets_of;
use tasks::{HealthChecks, NextHops, watch_config};

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anycast_common::map_names;
use aya::programs::XdpMode;
use nix::sys::signal::{SigHandler, SigSet, Signal};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

use crate::api::{self, Call};
use crate::config::VipId;
use crate::config::{Config, ConfigError, HealthConfig, XdpModeSetting};
use crate::control::{Controller, ReloadError};
use crate::dataplane::pins::{self, AdoptPlan, Attached, PinError, PinLayout};
use crate::dataplane::program_log::ProgramLog;
use crate::dataplane::stats::StateFile;
use crate::dataplane::{Dataplane, DataplaneError, Geometry};
use crate::fleet::edge::Edge;
use crate::health::{self, HealthEvent};
use crate::host::{self, HostError};
use crate::proto::{AttachedInterface, ProgramInfo};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Host(#[from] HostError),
    /// Boxed: aya's errors make this variant large and it is on every `?` path.
    #[error(transparent)]
    Dataplane(Box<DataplaneError>),
    #[error(
        "attaching {program} to interface {interface} in {mode} mode failed (is another XDP program already attached? see `ip link show {interface}`)",
        program = anycast_common::PROGRAM_NAME
    )]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: Box<PinError>,
    },
    #[error("setting up signal handling")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Start(#[from] ReloadError),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("starting the BGP announcer")]
    Announce(#[from] crate::announce::BirdError),
    #[error(
        "pinned map {name} at {path} cannot be adopted: {why}; `anycast detach --config FILE` removes the old dataplane (its connection tracking and counters too)"
    )]
    Layout {
        name: String,
        path: PathBuf,
        why: String,
    },
    #[error("an agent (pid {pid}) still runs with these pins; stop it (SIGTERM) before detaching")]
    AgentRunning { pid: u32 },
    #[error(
        "another agent{} runs with agent.pin_path {}: two agents on one dataplane would overwrite each other's tables; stop it first, or give this one its own pin_path",
        pid.map_or(String::new(), |p| format!(" (pid {p})")),
        pin_path.display()
    )]
    AlreadyRunning { pin_path: PathBuf, pid: Option<u32> },
    #[error(
        "{family} forwarding is off ({sysctl} = 0) on an interface the agent attaches to, and VIPs have remote {family} backends: the kernel refuses to route encapsulated packets there, so they would all be dropped; `sysctl -w {sysctl}=1`, or set agent.enable_forwarding = true"
    )]
    ForwardingOff {
        sysctl: String,
        family: &'static str,
    },
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
}

impl From<DataplaneError> for AgentError {
    fn from(e: DataplaneError) -> Self {
        Self::Dataplane(Box::new(e))
    }
}

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub config: PathBuf,
    /// Overrides `agent.xdp_mode`.
    pub xdp_mode: Option<XdpModeSetting>,
}

/// This host's addresses as the dataplane sees them: detected plus `agent.local_addresses`.
pub fn detect_local(config: &Config) -> Result<BTreeSet<IpAddr>, HostError> {
    Ok(config.local_set(host::local_addresses()?))
}

fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "generic",
        XdpMode::Hardware => "offload",
        XdpMode::Default => "default",
    }
}

fn attach(
    dp: &mut Dataplane,
    interface: &str,
    setting: XdpModeSetting,
    link_pin: &Path,
) -> Result<(Attached, &'static str), AgentError> {
    let prog = dp.program_mut()?;
    let try_mode = |prog: &mut aya::programs::Xdp, mode: XdpMode| {
        pins::attach_pinned(prog, interface, mode, link_pin).map_err(|e| AgentError::Attach {
            interface: interface.to_owned(),
            mode: mode_name(mode),
            source: Box::new(e),
        })
    };
    match setting {
        XdpModeSetting::Native => Ok((try_mode(prog, XdpMode::Driver)?, "native")),
        XdpModeSetting::Generic => Ok((try_mode(prog, XdpMode::Skb)?, "generic")),
        XdpModeSetting::NativeOrGeneric => match try_mode(prog, XdpMode::Driver) {
            Ok(a) => Ok((a, "native")),
            Err(e) => {
                warn!(interface, error = %error_chain(&e), "native XDP attach failed, falling back to generic (skb) mode, which is much slower");
                Ok((try_mode(prog, XdpMode::Skb)?, "generic"))
            }
        },
    }
}

pub use crate::error::error_chain;

/// Signals the agent acts on (tokio installs their handlers), and SIGCHLD, which a managed BIRD's
/// exit must raise for tokio to reap it.
const AGENT_SIGNALS: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGCHLD,
];

/// Takes back the signal state a parent may have left: an empty signal mask in the calling
/// thread and the default disposition for [`AGENT_SIGNALS`]. Both survive fork and exec: std's
/// `Command` keeps the parent's mask in the child (its source says so), shells start background
/// jobs with SIGINT ignored, and build tools and supervisors block SIGINT/SIGTERM while they
/// wait for a child. An agent started with SIGTERM blocked has tokio's handler installed and
/// never runs it: the kernel keeps the signal pending (`ShdPnd` in /proc/PID/status) for as long
/// as every thread blocks it, so the agent ignores SIGTERM. Call it before any thread exists
/// (before the runtime), so that every thread inherits the empty mask.
pub fn reset_inherited_signal_state() -> Result<(), AgentError> {
    let err = |e: nix::Error| AgentError::Signal(std::io::Error::from(e));
    for sig in AGENT_SIGNALS {
        // SAFETY: SIG_DFL installs no handler code; tokio installs its own handlers later.
        unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) }.map_err(err)?;
    }
    SigSet::empty().thread_set_mask().map_err(err)
}

/// The agent's signal streams (tokio handlers, installed once, at start).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, AgentError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(AgentError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(AgentError::Signal)?,
            hup: signal(SignalKind::hangup()).map_err(AgentError::Signal)?,
        })
    }
}

/// How long the config file must be quiet before a change is reloaded: editors write a file in
/// several steps (truncate, write, rename).
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);
/// At most this many health verdicts are published in one write.
const HEALTH_BATCH: usize = 256;

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    // Handlers first: a SIGTERM that arrives while the program loads (the verifier takes
    // seconds) is held until the start is complete and then stops the agent cleanly, instead of
    // killing it between two pinning steps.
    let signals = Signals::new()?;
    let config = Config::load(&opts.config)?;
    // With [fleet]: the last applied fleet document, if cached, so that a restart while etcd
    // is down runs the fleet's tables rather than the file's defaults.
    let (config, fleet_cached) = crate::fleet::edge::initial_config(&opts.config, config);
    for w in config.warnings() {
        warn!("{w}");
    }
    let local = detect_local(&config)?;
    config.check_local(&local)?;
    preflight::check_forwarding(&config, &local)?;
    let mode = opts.xdp_mode.unwrap_or(config.agent.xdp_mode);

    match pins::ensure_bpffs(&config.agent.pin_path)? {
        pins::Bpffs::Present { .. } => {}
        pins::Bpffs::Mounted {
            dir,
            private_namespace,
        } => {
            info!(dir = %dir.display(), "bpffs was not mounted at agent.pin_path's parent: mounted it there");
            if private_namespace {
                warn!(
                    dir = %dir.display(),
                    "that bpffs is in a mount namespace of the agent's own (not PID 1's): the pins, and with them the attached program, go when the namespace does (when the agent exits, if nothing else holds it); mount bpffs at {} on the host to keep the dataplane across restarts",
                    dir.display()
                );
            }
        }
    }
    // Held until the agent exits: a second agent on these pins is refused before it loads
    // anything.
    let _pin_lock = preflight::lock_pins(&config.agent.pin_path)?;
    let layout = PinLayout::new(&config.agent.pin_path);
    let geometry = Geometry::of(&config);
    let plan = pins::plan(
        &layout,
        &pins::object_layouts(crate::EBPF_OBJECT, geometry)?,
    )?;
    for (name, why) in &plan.replaced {
        if name == map_names::CONNS && plan.migrate_conns.is_some() {
            info!(map = %name, "pinned map replaced by a new one, its entries to be copied over: {why}");
        } else if name == map_names::CONNS {
            warn!(map = %name, "pinned map replaced by a new one: tracked connections are lost (those whose table slot is unchanged keep their backend; second chance rescues others while the previous table lasts): {why}");
        } else {
            warn!(map = %name, "pinned map replaced by a new one (its contents are lost): {why}");
        }
    }
    let log_level = crate::dataplane::program_log::program_level();
    if log_level == 0 {
        info!(
            "program log lines off: the log filter rejects {}, so the program does not write them",
            crate::dataplane::program_log::TARGET
        );
    }
    let mut dp =
        Dataplane::load_object_adopting(crate::EBPF_OBJECT, geometry, &plan.adopt, log_level)?;
    if plan.adopts_state() {
        let snap = dp.adopt_maps()?;
        info!(
            pin_path = %layout.root().display(),
            maps = plan.adopt.len(),
            vips = snap.vips.len(),
            backends = snap.backends.len(),
            "adopting the pinned dataplane: tables and counters carry over"
        );
    } else if !plan.adopt.is_empty() {
        info!(maps = plan.adopt.len(), "adopting pinned counters");
    }
    let previous = previous_state(&config);
    let (mut ctl, report, restored) = Controller::start_restoring(
        dp,
        opts.config.clone(),
        config.clone(),
        local,
        previous.as_ref().map(|p| &p.runtime),
    )?;
    if previous.is_some() {
        info!(
            state_file = %config.agent.state_file.display(),
            overrides = restored.overrides,
            health_verdicts = restored.verdicts,
            edge_drained = restored.edge_drained,
            "runtime state of the previous agent restored (applied before the first tables)"
        );
    }
    for d in &restored.dropped {
        warn!("runtime state of the previous agent dropped: {d}");
    }
    if plan.adopted(map_names::CONNS) {
        info!("connection tracking carries over (pinned CONNS map reused)");
    }
    if let Some(m) = &plan.migrate_conns {
        migrate_conns(&mut ctl, m);
    }
    for v in &report.vips {
        info!(
            vip = %v.label,
            vip_id = v.vip_id,
            backends = v.backends,
            weighted = v.weighted_backends,
            table = if v.table == anycast_common::NO_TABLE { "none".to_string() } else { v.table.to_string() },
            "VIP published, table built in {:.1} ms",
            v.build_time.as_secs_f64() * 1e3
        );
    }
    for s in ctl.status().vips {
        info!(vip = %s.vip, fingerprint = s.fingerprint.as_deref().unwrap_or("none"), "table fingerprint");
    }
    info!(
        backends = report.backends_written,
        ring_entries = report.ring_entries_written,
        "maps written"
    );

    let result = attach_and_serve(
        &mut ctl,
        &config,
        mode,
        &layout,
        &plan,
        previous.as_ref(),
        signals,
        fleet_cached,
    )
    .await;
    // The program, its links and the maps stay pinned: the dataplane keeps forwarding.
    drop(ctl);
    if let Some(p) = config.agent.api_socket.as_deref() {
        let _ = std::fs::remove_file(p);
    }
    result
}

#[expect(
    clippy::too_many_arguments,
    reason = "the start-up state handed over from `run`, each used once"
)]
async fn attach_and_serve(
    ctl: &mut Controller<Dataplane>,
    config: &Config,
    mode: XdpModeSetting,
    layout: &PinLayout,
    plan: &AdoptPlan,
    previous: Option<&StateFile>,
    mut signals: Signals,
    fleet_cached: Option<crate::fleet::cache::Cached>,
) -> Result<(), AgentError> {
    let state_path = config.agent.state_file.as_path();
    layout.create_dirs()?;
    let started = std::time::Instant::now();
    let mut attached = Vec::new();
    for iface in &config.agent.interfaces {
        let (how, used) = attach(ctl.sink_mut(), iface, mode, &layout.link(iface))?;
        // An adopted link keeps the mode it was created in.
        let used = match how {
            Attached::New => used.to_owned(),
            Attached::Replaced => previous
                .and_then(|p| p.attached.iter().find(|(i, _)| i == iface))
                .map_or_else(|| used.to_owned(), |(_, m)| m.clone()),
        };
        let key = format!("net/ipv4/conf/{iface}/accept_local");
        // Encapsulated packets the program hands to the kernel (neighbour not resolved) carry
        // this host's tunnel address as source; without accept_local they are dropped as martians.
        if let Err(e) = host::write_sysctl(&key, "1") {
            warn!(interface = %iface, error = %error_chain(&e), "could not set accept_local");
        }
        match how {
            Attached::New => {
                info!(interface = %iface, mode = %used, link = %layout.link(iface).display(), "XDP program attached, link pinned")
            }
            Attached::Replaced => {
                info!(interface = %iface, mode = %used, "XDP program replaced in the pinned link (atomic)")
            }
        }
        attached.push(AttachedInterface {
            name: iface.clone(),
            mode: used,
            forwarding: host::forwarding(iface),
        });
    }
    for stale in layout.pinned_links() {
        if !config.agent.interfaces.contains(&stale) {
            pins::remove_link(layout, &stale)?;
            info!(interface = %stale, "detached from an interface no longer configured");
        }
    }
    pins::pin_program(ctl.sink_mut().program_mut()?, layout)?;
    pins::pin_created_maps(ctl.sink().ebpf(), layout, plan)?;
    info!(
        pin_path = %layout.root().display(),
        "dataplane pinned (maps/, links/, prog): it keeps forwarding if the agent exits; attach took {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let state = StateFile {
        pin_path: layout.root().to_owned(),
        pid: std::process::id(),
        ring_size: config.agent.ring_size,
        ids: ctl.sink().publisher().id_map(),
        attached: attached
            .iter()
            .map(|a| (a.name.clone(), a.mode.clone()))
            .collect(),
        runtime: ctl.runtime_state(),
    };
    state.write(state_path)?;
    ctl.keep_state_file(state_path.to_owned(), state);

    let id = ctl
        .sink_mut()
        .program_mut()
        .ok()
        .and_then(|p| p.info().ok())
        .map(|i| i.id());
    ctl.set_program(ProgramInfo {
        name: anycast_common::PROGRAM_NAME.to_owned(),
        id,
        interfaces: attached,
    });
    if let Some(bgp) = &config.bgp {
        let addresses = config.vips.iter().map(|v| v.address).collect();
        ctl.set_announcer(crate::announce::start(bgp.clone(), &addresses)?);
    }

    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    let mut tasks = Vec::new();
    if let Some(path) = &config.agent.api_socket {
        match api::bind(path) {
            Ok(l) => {
                info!(socket = %path.display(), "control API listening");
                tasks.push(tokio::spawn(api::serve(l, calls_tx.clone())).abort_handle());
            }
            Err(e) => error!(error = %error_chain(&e), "control API disabled"),
        }
    }
    if let Some(addr) = config.agent.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                info!(listen = %addr, "metrics endpoint listening (GET /metrics)");
                let tx = calls_tx.clone();
                tasks.push(
                    tokio::spawn(async move {
                        if let Err(e) = crate::metrics::serve(l, tx).await {
                            error!(error = %e, "metrics endpoint stopped");
                        }
                    })
                    .abort_handle(),
                );
            }
            Err(e) => {
                error!(listen = %addr, error = %e, "metrics endpoint disabled: cannot bind agent.metrics_listen")
            }
        }
    }
    drop(calls_tx);
    match id.map(ProgramLog::open) {
        Some(Ok(logs)) => tasks.push(
            tokio::spawn(async move {
                if let Err(e) = logs.forward().await {
                    error!(error = %error_chain(&e), "program log lines no longer read");
                }
            })
            .abort_handle(),
        ),
        Some(Err(e)) => {
            error!(error = %error_chain(&e), "program log lines not read")
        }
        None => error!("program log lines not read: the loaded program's id is unknown"),
    }

    let nexthops = match NextHops::start(ctl) {
        Ok(n) => Some(n),
        Err(e) => {
            error!(error = %e, "next-hop cache disabled; encapsulated packets use the kernel's FIB");
            None
        }
    };

    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let mut checks = HealthChecks::default();
    checks.reconcile(ctl, &health_tx);

    let (file_tx, mut file_rx) = mpsc::unbounded_channel();
    let _watcher = watch_config(ctl.config_path(), file_tx);

    let mut fleet = config.fleet.clone().map(|f| Edge::start(f, fleet_cached));
    if let Some(f) = &fleet {
        f.refresh(ctl);
        ctl.set_fleet_view(f.view());
    }

    let mut file_changed: Option<tokio::time::Instant> = None;
    let which = loop {
        let fleet_event = async {
            match fleet.as_mut() {
                Some(f) => f.next().await,
                None => std::future::pending().await,
            }
        };
        let debounce = async {
            match file_changed {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.term.recv() => break "SIGTERM",
            _ = signals.int.recv() => break "SIGINT",
            _ = signals.hup.recv() => {
                file_changed = None;
                reload(ctl, "SIGHUP", fleet.as_ref());
                checks.reconcile(ctl, &health_tx);
            }
            Some(()) = file_rx.recv() => {
                file_changed = Some(tokio::time::Instant::now() + RELOAD_DEBOUNCE);
            }
            () = debounce => {
                file_changed = None;
                reload(ctl, "file change", fleet.as_ref());
                checks.reconcile(ctl, &health_tx);
            }
            Some(ev) = health_rx.recv() => {
                // Verdicts that arrived together are published in one write (bounded, so that
                // a flood of them still lets the rest of this loop run).
                let mut batch = vec![ev];
                while batch.len() < HEALTH_BATCH {
                    match health_rx.try_recv() {
                        Ok(ev) => batch.push(ev),
                        Err(_) => break,
                    }
                }
                let verdicts =
                    batch.iter().map(|ev| (ev.vip, ev.backend, ev.healthy, ev.detail.as_str()));
                // In a fleet this edge's own verdicts are its vote; the tables follow the
                // fleet's verdict (crate::fleet::report).
                match fleet.as_mut() {
                    Some(f) => f.local_health(verdicts, ctl),
                    None => ctl.set_health_verdicts(verdicts),
                }
                for ev in &batch {
                    ctl.set_health_settled(ev.vip, ev.backend, ev.settled);
                }
                tokio::task::yield_now().await;
            }
            Some(ev) = fleet_event => {
                if let Some(f) = fleet.as_mut() {
                    f.handle(ev, ctl, |c| host::local_addresses().ok().map(|d| c.local_set(d)));
                    ctl.set_fleet_view(f.view());
                }
                checks.reconcile(ctl, &health_tx);
            }
            Some(call) = calls.recv() => match call {
                Call::Api(req, reply) => { let _ = reply.send(ctl.handle(req)); }
                Call::Metrics(reply) => {
                    let mut m = ctl.metrics();
                    if let Some(f) = &fleet {
                        m.push_str(&f.metrics());
                    }
                    let _ = reply.send(m);
                }
            },
        }
        if let Some(n) = &nexthops {
            n.update(ctl);
        }
    };
    if let Some(a) = ctl.take_announcer() {
        let status = ctl.status();
        a.shutdown(&status).await;
    }
    for t in tasks {
        t.abort();
    }
    drop(checks);
    drop(nexthops);
    drop(fleet);
    info!(
        signal = which,
        pin_path = %layout.root().display(),
        "shutting down; the dataplane stays attached with its last tables (`anycast detach` removes it)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_state_file_is_ignored_and_a_good_one_used() {
        let dir = std::env::temp_dir().join(format!("anycast-prev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let config = crate::config::ConfigBuilder::reference()
            .agent("pin_path", "/sys/fs/bpf/x")
            .agent("state_file", path.display().to_string())
            .build();
        assert_eq!(previous_state(&config), None, "no file: a first start");
        std::fs::write(&path, "{\"pin_path\": tru").unwrap();
        assert_eq!(previous_state(&config), None, "corrupt: ignored");
        let mut s = StateFile {
            pin_path: "/sys/fs/bpf/other".into(),
            pid: 1,
            ring_size: 65537,
            ids: crate::dataplane::IdMap::default(),
            attached: vec![],
            runtime: crate::dataplane::stats::RuntimeState {
                edge_drained: true,
                ..Default::default()
            },
        };
        s.write(&path).unwrap();
        assert_eq!(previous_state(&config), None, "another pin path: ignored");
        s.pin_path = "/sys/fs/bpf/x".into();
        s.write(&path).unwrap();
        assert_eq!(previous_state(&config), Some(s));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The state a careless parent leaves: the agent's signals blocked (inherited mask) and
    /// SIGHUP ignored (inherited disposition). Run on a thread of its own: the mask is per thread.
    #[test]
    fn an_inherited_blocked_mask_and_ignored_signals_are_reset() {
        std::thread::spawn(|| {
            let mut blocked = SigSet::empty();
            for sig in AGENT_SIGNALS {
                blocked.add(sig);
            }
            blocked.thread_block().unwrap();
            // SAFETY: SIG_IGN installs no handler code.
            unsafe { nix::sys::signal::signal(Signal::SIGHUP, SigHandler::SigIgn) }.unwrap();

            reset_inherited_signal_state().unwrap();

            let mask = SigSet::thread_get_mask().unwrap();
            for sig in AGENT_SIGNALS {
                assert!(!mask.contains(sig), "{sig} still blocked");
            }
            // SAFETY: reading back and restoring the default disposition.
            let previous =
                unsafe { nix::sys::signal::signal(Signal::SIGHUP, SigHandler::SigDfl) }.unwrap();
            assert_eq!(previous, SigHandler::SigDfl, "SIGHUP still ignored");
        })
        .join()
        .unwrap();
    }
}
