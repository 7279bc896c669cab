//! BGP announcement of the VIPs through BIRD 2, driven by the dataplane's state and health.
//!
//! Each VIP address is one prefix (`/32` or `/128`) held by one BIRD `protocol static` named
//! after it ([`protocol_name`]: `anycast_vip_203_0_113_10`, `anycast_vip_2001_db8_0_0_0_0_0_10`),
//! disabled in BIRD's config. Announcing is `enable <proto>` and withdrawing `disable <proto>` on
//! BIRD's control socket: per prefix, in milliseconds, without reconfiguring BIRD.
//!
//! Two modes ([`BgpMode`]):
//! - **managed**: the agent writes BIRD's config from `[bgp]` ([`bird_config`]) and runs
//!   `bird -f`. BIRD outlives an agent that dies (crash, SIGKILL, upgrade): its sessions and
//!   routes stay, as the pinned dataplane keeps forwarding, and the next agent re-adopts it
//!   (`process`). An orderly stop (SIGTERM) withdraws every prefix and then stops BIRD.
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

mod bird;
mod policy;
mod process;

use crate::error::IoError;
pub use bird::{BirdClient, BirdError, PROTOCOL_PREFIX, bgp_sessions, bird_config, protocol_name};
use bird::{prefix_of, write_bird_config};
pub use policy::{Desired, SETTLE_LIMIT, Want, desired, gate};
use process::{BirdProcess, announced_in, start_or_adopt};

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

/// How often the announcer asks BIRD for its BGP sessions (and thereby notices a dead BIRD).
const SESSION_POLL: Duration = Duration::from_millis(250);

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
    let unchanged = |field, a: &Path, b: &Path, why| {
        if a == b {
            Ok(())
        } else {
            Err((field, path(a), path(b), why))
        }
    };
    match (&old.mode, &new.mode) {
        (BgpMode::Managed(a), BgpMode::Managed(b)) => {
            unchanged(
                "bgp.bird_binary",
                &a.bird_binary,
                &b.bird_binary,
                "the managed BIRD is started with the agent",
            )?;
            unchanged(
                "bgp.run_dir",
                &a.run_dir,
                &b.run_dir,
                "the managed BIRD's config and control socket live there",
            )
        }
        (BgpMode::External { bird_socket: a }, BgpMode::External { bird_socket: b }) => unchanged(
            "bgp.bird_socket",
            a,
            b,
            "the external BIRD the agent drives is chosen at start",
        ),
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
        mode: cfg.mode_name().to_owned(),
        bird_socket: socket.clone(),
        bird: "connecting".into(),
        edge_drained: false,
        min_healthy_backends: cfg.min_healthy_backends,
        prefixes: addresses.iter().map(|a| (*a, prefix_state(*a))).collect(),
    }));
    let (bird, managed) = match &cfg.mode {
        BgpMode::Managed(m) => (Some(start_or_adopt(m, addresses)?), Some(m.clone())),
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
    bird: Option<(BirdProcess, bool)>,
) {
    let adopted = bird.as_ref().is_some_and(|(_, a)| *a);
    let mut bird = bird.map(|(p, _)| p);
    let socket = t.socket.clone();
    let shared = t.shared.clone();
    let mut client: Option<BirdClient> = None;
    // What BIRD has, as far as we know; `None` = unknown (new connection): send everything.
    let mut applied: BTreeMap<IpAddr, bool> = BTreeMap::new();
    let mut last_error = String::new();
    // A managed BIRD's config was rewritten and BIRD has not loaded it yet.
    // An adopted BIRD runs the previous agent's config: it loads this agent's once connected.
    let mut pending_configure = adopted;
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
        if let Some(process) = &mut bird
            && let Some(st) = process.exited()
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
                Ok(mut c) => {
                    info!(socket = %socket.display(), "connected to BIRD");
                    // What BIRD announces now (a BIRD that outlived the previous agent, or one
                    // that came back): the gate keeps what qualifies, rather than withdrawing
                    // and announcing it anew.
                    applied = match c.command("show protocols").await {
                        Ok(reply) => announced_in(&reply, &t.addresses),
                        Err(e) => {
                            warn!(error = %crate::error::error_chain(&e), "asking BIRD what it announces; reconnecting");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    for (addr, on) in &applied {
                        if *on {
                            t.set_announced(*addr, true, "BIRD announces it (kept from before)");
                        }
                    }
                    shared.lock().expect("announce state").bird = "connected".into();
                    client = Some(c);
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
                    | BirdError::Io(IoError {
                        what: "writing" | "renaming into place",
                        ..
                    })),
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
    if let Some(process) = bird {
        process.stop().await;
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

    /// The BIRD settings of a `[bgp]` section that must validate to managed mode.
    fn managed_bird(text: &str) -> ManagedBird {
        match validate(raw(text), None).unwrap().mode {
            BgpMode::Managed(m) => m,
            mode => panic!("not managed: {mode:?}"),
        }
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
        let n = "neighbors = [{ address = \"1.1.1.2\", as = 1 }]";
        for (text, want) in [
            ("neighbors = []".to_owned(), "bgp.local_as: required"),
            (
                "local_as = 65001\nrouter_id = \"1.1.1.1\"".to_owned(),
                "bgp.neighbors:",
            ),
            (
                "local_as = 65001\nneighbors = [{ address = \"x\", as = 1 }]".to_owned(),
                "bgp.router_id: required",
            ),
            (
                "local_as = 65001\nrouter_id = \"1.1.1.1\"\nneighbors = [{ address = \"x\", as = 1 }]"
                    .to_owned(),
                "bgp.neighbors[0].address: \"x\" is not an IP address",
            ),
            (
                format!("local_as = 65001\nrouter_id = \"1.1.1.1\"\nhold_time = 2\n{n}"),
                "bgp.hold_time: 2 s",
            ),
            (
                format!("local_as = 0\nrouter_id = \"1.1.1.1\"\n{n}"),
                "bgp.local_as: 0 is out of range",
            ),
            (
                "bird_socket = \"/run/bird/bird.ctl\"\nlocal_as = 65001".to_owned(),
                "bgp.local_as: only for a BIRD the agent manages",
            ),
        ] {
            let e = err(&text);
            assert!(e.starts_with(want), "{text}: {e}");
        }
        let ext = validate(raw("bird_socket = \"/run/bird/bird.ctl\""), None).unwrap();
        assert_eq!(ext.socket(), PathBuf::from("/run/bird/bird.ctl"));
    }

    #[test]
    fn generated_bird_config_holds_one_disabled_static_per_address_and_exports_only_those() {
        let m = managed_bird(
            "local_as = 65001\nrouter_id = \"198.18.2.2\"\nneighbors = [{ address = \"198.18.2.1\", as = 65000 }, { address = \"fd00:2::1\", as = 65000 }]",
        );
        let addrs: BTreeSet<IpAddr> = ["203.0.113.10", "2001:db8::10"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let c = bird_config(&m, &addrs, &BTreeSet::new());
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
        let m = managed_bird(
            "local_as = 65001\nrouter_id = \"198.18.2.2\"\nneighbors = [{ address = \"198.18.2.1\", as = 65000 }]",
        );
        let a: IpAddr = "203.0.113.10".parse().unwrap();
        let b: IpAddr = "203.0.113.20".parse().unwrap();
        let c = bird_config(&m, &[a, b].into(), &[a].into());
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
