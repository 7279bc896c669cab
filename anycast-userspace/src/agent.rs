//! `anycast agent`: validate, load, write the maps, pin them, attach, then serve: config reloads
//! (SIGHUP, or the file changing), health checks, the control API and metrics, until a signal.
//!
//! Ordering matters for a safe start: nothing is attached until the config is valid and every
//! map is written, so a bad config never leaves a half-programmed dataplane on an interface. On
//! SIGINT/SIGTERM the program is detached from every interface (by dropping its links), the pins
//! and the state file are removed, and the agent exits 0.
//!
//! One task owns the state ([`Controller`]): reloads, health verdicts and API requests reach it
//! through channels and are applied one at a time.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::programs::XdpMode;
use aya::programs::xdp::XdpLinkId;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

use crate::api::{self, Call};
use crate::config::{Config, ConfigError, HealthConfig, XdpModeSetting};
use crate::control::{AttachedInterface, Controller, ProgramInfo, ReloadError, VipId};
use crate::dataplane::{Dataplane, DataplaneError, unpin_maps};
use crate::health::{self, HealthEvent};
use crate::host::{self, HostError};
use crate::stats::StateFile;

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
        source: Box<aya::programs::ProgramError>,
    },
    #[error("waiting for signals")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Start(#[from] ReloadError),
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
) -> Result<(XdpLinkId, &'static str), AgentError> {
    let prog = dp.program_mut()?;
    let try_mode = |prog: &mut aya::programs::Xdp, mode: XdpMode| {
        prog.attach(interface, mode)
            .map_err(|source| AgentError::Attach {
                interface: interface.to_owned(),
                mode: mode_name(mode),
                source: Box::new(source),
            })
    };
    match setting {
        XdpModeSetting::Native => Ok((try_mode(prog, XdpMode::Driver)?, "native")),
        XdpModeSetting::Generic => Ok((try_mode(prog, XdpMode::Skb)?, "generic")),
        XdpModeSetting::NativeOrGeneric => match try_mode(prog, XdpMode::Driver) {
            Ok(id) => Ok((id, "native")),
            Err(e) => {
                warn!(interface, error = %error_chain(&e), "native XDP attach failed, falling back to generic (skb) mode, which is much slower");
                Ok((try_mode(prog, XdpMode::Skb)?, "generic"))
            }
        },
    }
}

pub use crate::control::error_chain;

fn check_forwarding() {
    for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
        if host::read_sysctl(key).as_deref() == Some("0") {
            warn!(
                sysctl = key,
                "IP forwarding is off: encapsulated packets handed to the kernel (unresolved neighbour) will not be forwarded"
            );
        }
    }
}

/// How long the config file must be quiet before a change is reloaded: editors write a file in
/// several steps (truncate, write, rename).
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    let config = Config::load(&opts.config)?;
    for w in config.warnings() {
        warn!("{w}");
    }
    let local = detect_local(&config)?;
    config.check_local(&local)?;
    let mode = opts.xdp_mode.unwrap_or(config.agent.xdp_mode);

    let dp = Dataplane::load(&config)?;
    let (mut ctl, report) = Controller::start(dp, opts.config.clone(), config.clone(), local)?;
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

    let pin_path = config.agent.pin_path.clone();
    let state_path = config.agent.state_file.clone();
    let result = attach_and_serve(&mut ctl, &config, mode, &pin_path, &state_path).await;
    // Detach before unpinning so that nothing runs against maps we are tearing down.
    drop(ctl);
    cleanup(&pin_path, &state_path, config.agent.api_socket.as_deref());
    result
}

fn cleanup(pin_path: &Path, state_path: &Path, api_socket: Option<&Path>) {
    if let Err(e) = unpin_maps(pin_path) {
        warn!(error = %error_chain(&e), "unpinning maps");
    }
    let _ = std::fs::remove_dir(pin_path);
    let _ = std::fs::remove_file(state_path);
    if let Some(p) = api_socket {
        let _ = std::fs::remove_file(p);
    }
}

/// One health-check task per checked (VIP, backend), kept in step with the config.
#[derive(Default)]
struct HealthChecks {
    running: HashMap<(VipId, IpAddr), (HealthConfig, AbortHandle)>,
}

impl HealthChecks {
    fn reconcile(
        &mut self,
        ctl: &Controller<Dataplane>,
        events: &mpsc::UnboundedSender<HealthEvent>,
    ) {
        let wanted = ctl.checks();
        self.running.retain(|key, (cfg, task)| {
            let keep = wanted.get(key) == Some(cfg);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, cfg) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let (vip, backend) = key;
            let task = tokio::spawn(health::run(
                vip,
                backend,
                cfg.clone(),
                ctl.health(vip, backend),
                events.clone(),
            ));
            self.running.insert(key, (cfg, task.abort_handle()));
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

/// Sends a notice whenever the config file may have changed. The directory is watched, not the
/// file: editors and config managers replace a file by renaming a new one over it, which a
/// watch on the old inode would miss.
fn watch_config(path: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(ToOwned::to_owned);
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
            && ev.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    };
    match notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
            None
        }
    }
}

fn reload(ctl: &mut Controller<Dataplane>, trigger: &str) {
    let new = Config::load(ctl.config_path());
    let local = match host::local_addresses() {
        Ok(detected) => new.as_ref().unwrap_or(ctl.config()).local_set(detected),
        Err(e) => {
            error!(trigger, error = %error_chain(&e), "config not reloaded: cannot list this host's addresses");
            return;
        }
    };
    // Errors are logged (field named) and recorded for `anycast status` by the controller.
    let _ = ctl.reload(trigger, new, local);
}

async fn attach_and_serve(
    ctl: &mut Controller<Dataplane>,
    config: &Config,
    mode: XdpModeSetting,
    pin_path: &Path,
    state_path: &Path,
) -> Result<(), AgentError> {
    ctl.sink().pin_maps(pin_path)?;
    let state = StateFile {
        pin_path: pin_path.to_owned(),
        pid: std::process::id(),
        ring_size: config.agent.ring_size,
        ids: ctl.sink().publisher().id_map(),
    };
    state.write(state_path)?;
    ctl.keep_state_file(state_path.to_owned(), state);
    info!(pin_path = %pin_path.display(), state_file = %state_path.display(), "maps pinned");

    let mut links = Vec::new();
    let mut attached = Vec::new();
    for iface in &config.agent.interfaces {
        let (link, used) = attach(ctl.sink_mut(), iface, mode)?;
        links.push(link);
        attached.push(AttachedInterface {
            name: iface.clone(),
            mode: used.to_owned(),
        });
        let key = format!("net/ipv4/conf/{iface}/accept_local");
        // Encapsulated packets the program hands to the kernel (neighbour not resolved) carry
        // this host's tunnel address as source; without accept_local they are dropped as martians.
        if let Err(e) = host::write_sysctl(&key, "1") {
            warn!(interface = %iface, error = %error_chain(&e), "could not set accept_local");
        }
        info!(interface = %iface, mode = used, "XDP program attached");
    }
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
    check_forwarding();

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

    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let mut checks = HealthChecks::default();
    checks.reconcile(ctl, &health_tx);

    let (file_tx, mut file_rx) = mpsc::unbounded_channel();
    let _watcher = watch_config(ctl.config_path(), file_tx);

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
    let mut file_changed: Option<tokio::time::Instant> = None;
    let which = loop {
        let debounce = async {
            match file_changed {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                file_changed = None;
                reload(ctl, "SIGHUP");
                checks.reconcile(ctl, &health_tx);
            }
            Some(()) = file_rx.recv() => {
                file_changed = Some(tokio::time::Instant::now() + RELOAD_DEBOUNCE);
            }
            () = debounce => {
                file_changed = None;
                reload(ctl, "file change");
                checks.reconcile(ctl, &health_tx);
            }
            Some(ev) = health_rx.recv() => {
                ctl.set_health(ev.vip, ev.backend, ev.healthy, &ev.detail);
            }
            Some(call) = calls.recv() => match call {
                Call::Api(req, reply) => { let _ = reply.send(ctl.handle(req)); }
                Call::Metrics(reply) => { let _ = reply.send(ctl.metrics()); }
            },
        }
    };
    for t in tasks {
        t.abort();
    }
    drop(checks);
    info!(
        signal = which,
        "shutting down: detaching from every interface"
    );
    let prog = ctl.sink_mut().program_mut()?;
    for (iface, link) in config.agent.interfaces.iter().zip(links) {
        if let Err(e) = prog.detach(link) {
            warn!(interface = %iface, error = %error_chain(&e), "detaching");
        }
    }
    Ok(())
}
