//! `anycast agent`: validate, load, write the maps, pin them, attach, and wait for a signal.
//!
//! Ordering matters for a safe start: nothing is attached until the config is valid and every
//! map is written, so a bad config never leaves a half-programmed dataplane on an interface. On
//! SIGINT/SIGTERM the program is detached from every interface (by dropping its links), the pins
//! and the state file are removed, and the agent exits 0.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::programs::XdpMode;
use aya::programs::xdp::XdpLinkId;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, XdpModeSetting};
use crate::dataplane::{Dataplane, DataplaneError, unpin_maps};
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

/// `a: b: c` for an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

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

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    let config = Config::load(&opts.config)?;
    for w in config.warnings() {
        warn!("{w}");
    }
    let local = detect_local(&config)?;
    config.check_local(&local)?;
    let mode = opts.xdp_mode.unwrap_or(config.agent.xdp_mode);

    let mut dp = Dataplane::load(&config)?;
    let report = dp.apply(&config, &local)?;
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
    info!(
        backends = report.backends_written,
        ring_entries = report.ring_entries_written,
        local_addresses = local.len(),
        "maps written"
    );

    let pin_path = config.agent.pin_path.clone();
    let state_path = config.agent.state_file.clone();
    let result = attach_and_wait(&mut dp, &config, mode, &pin_path, &state_path).await;
    // Detach before unpinning so that nothing runs against maps we are tearing down.
    drop(dp);
    cleanup(&pin_path, &state_path);
    result
}

fn cleanup(pin_path: &Path, state_path: &Path) {
    if let Err(e) = unpin_maps(pin_path) {
        warn!(error = %error_chain(&e), "unpinning maps");
    }
    let _ = std::fs::remove_dir(pin_path);
    let _ = std::fs::remove_file(state_path);
}

async fn attach_and_wait(
    dp: &mut Dataplane,
    config: &Config,
    mode: XdpModeSetting,
    pin_path: &Path,
    state_path: &Path,
) -> Result<(), AgentError> {
    dp.pin_maps(pin_path)?;
    StateFile {
        pin_path: pin_path.to_owned(),
        pid: std::process::id(),
        ring_size: config.agent.ring_size,
        ids: dp.publisher().id_map(),
    }
    .write(state_path)?;
    info!(pin_path = %pin_path.display(), state_file = %state_path.display(), "maps pinned");

    let mut links = Vec::new();
    for iface in &config.agent.interfaces {
        let (link, used) = attach(dp, iface, mode)?;
        links.push(link);
        let key = format!("net/ipv4/conf/{iface}/accept_local");
        // Encapsulated packets the program hands to the kernel (neighbour not resolved) carry
        // this host's tunnel address as source; without accept_local they are dropped as martians.
        if let Err(e) = host::write_sysctl(&key, "1") {
            warn!(interface = %iface, error = %error_chain(&e), "could not set accept_local");
        }
        info!(interface = %iface, mode = used, "XDP program attached");
    }
    check_forwarding();

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(
        signal = which,
        "shutting down: detaching from every interface"
    );
    let prog = dp.program_mut()?;
    for (iface, link) in config.agent.interfaces.iter().zip(links) {
        if let Err(e) = prog.detach(link) {
            warn!(interface = %iface, error = %error_chain(&e), "detaching");
        }
    }
    Ok(())
}
