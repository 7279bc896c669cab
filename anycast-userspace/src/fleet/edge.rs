//! The agent's side of the fleet: one task talks to etcd (reads and watches the document and
//! the edges' reports, keeps this edge's lease, writes its report); the agent's main loop feeds
//! what it hears to [`Edge::handle`], which applies documents through the controller's reload
//! path and turns the edges' health reports into the fleet verdicts the tables use.
//!
//! etcd down: the task reports an outage and reconnects every [`RETRY`]; the dataplane keeps its
//! last good state (nothing is applied without a document). On reconnect the task reads the
//! document again (one key: a full read is as cheap as a resumed watch and cannot miss a
//! compacted revision) and watches from the revision of that read; a watch canceled by
//! compaction ends the session the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

use super::cache::{self, Cached};
use super::doc::{self, DocError};
use super::report::{EdgeReport, HealthReport, HealthView, Refused, fleet_down};
use super::store::{Revision, Store, StoreError};
use crate::config::{Config, ConfigError, FleetConfig, VipId};
use crate::control::{Controller, Sink};
use crate::error::error_chain;

/// Between two attempts to reach etcd.
pub const RETRY: Duration = Duration::from_secs(1);

/// What the etcd task tells the main loop.
#[derive(Debug)]
pub enum Event {
    /// etcd answered; a session (lease, watch) is up.
    Connected,
    /// etcd is unreachable or the session broke.
    Outage(String),
    /// The document, read or watched.
    Document(Revision),
    /// The live edges' health votes, after any change.
    Votes(Vec<HealthReport>),
}

/// The fleet state the agent shows in its metrics and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetState {
    pub connected: bool,
    pub outages: u64,
    pub last_error: Option<String>,
    pub applied: Option<Cached>,
    pub refused: Option<Refused>,
    pub documents_applied: u64,
    pub edges: usize,
}

pub struct Edge {
    config: FleetConfig,
    events: mpsc::UnboundedReceiver<Event>,
    report_tx: watch::Sender<Published>,
    task: AbortHandle,
    pub state: FleetState,
    local_health: BTreeMap<(VipId, IpAddr), bool>,
    others: Vec<HealthReport>,
}

/// What this edge keeps in etcd: its report and its health vote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    pub report: EdgeReport,
    pub vote: HealthReport,
}

/// The config to start with: the cached document merged into the file, if there is a cache
/// and it is still valid with this file; else the file.
pub fn initial_config(path: &Path, file: Config) -> (Config, Option<Cached>) {
    let Some(fleet) = &file.fleet else {
        return (file, None);
    };
    let Some(cached) = cache::load(&fleet.cache_dir) else {
        return (file, None);
    };
    match doc::read_file(path).and_then(|raw| doc::merge(raw, &cached.text)) {
        Ok(c) => {
            info!(
                revision = cached.revision,
                "starting from the cached fleet document (etcd is read once the agent runs)"
            );
            (c, Some(cached))
        }
        Err(e) => {
            warn!(error = %error_chain(&e), "cached fleet document not usable; starting from the file");
            (file, None)
        }
    }
}

impl Edge {
    pub fn start(config: FleetConfig, applied: Option<Cached>) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let first = EdgeReport {
            edge: config.edge.clone(),
            pop: config.pop.clone(),
            applied_revision: applied.as_ref().map_or(0, |c| c.revision),
            ..Default::default()
        };
        let vote = HealthReport {
            edge: config.edge.clone(),
            down: Vec::new(),
        };
        let (report_tx, report_rx) = watch::channel(Published {
            report: first,
            vote,
        });
        let cfg = config.clone();
        let task = tokio::spawn(run(cfg, tx, report_rx)).abort_handle();
        Self {
            config,
            events,
            report_tx,
            task,
            state: FleetState {
                applied,
                ..Default::default()
            },
            local_health: BTreeMap::new(),
            others: Vec::new(),
        }
    }

    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The file at `path` with the applied document in place, for file reloads: the file's
    /// `[agent]` may change under a fleet, its `[[vip]]` does not count while a document is
    /// applied.
    pub fn load(&self, path: &Path) -> Result<Config, ConfigError> {
        match &self.state.applied {
            None => Config::load(path),
            Some(c) => doc::read_file(path)
                .and_then(|raw| doc::merge(raw, &c.text))
                .map_err(|e| match e {
                    DocError::File(e) | DocError::Invalid(e) => e,
                    other => ConfigError::Invalid {
                        field: "fleet document".into(),
                        problem: error_chain(&other),
                    },
                }),
        }
    }

    /// Applies one event; `local` gives this host's addresses for a reload.
    pub fn handle<S: Sink>(
        &mut self,
        ev: Event,
        ctl: &mut Controller<S>,
        local: impl FnOnce(&Config) -> Option<BTreeSet<IpAddr>>,
    ) {
        match ev {
            Event::Connected => {
                if !self.state.connected {
                    info!(endpoints = %self.config.endpoints.join(","), "fleet: etcd reachable");
                }
                self.state.connected = true;
                self.state.last_error = None;
            }
            Event::Outage(e) => {
                if self.state.connected || self.state.last_error.is_none() {
                    self.state.outages += 1;
                    error!(error = %e, "fleet: etcd unreachable; the dataplane keeps its last good state and keeps forwarding");
                }
                self.state.connected = false;
                self.state.last_error = Some(e);
            }
            Event::Document(rev) => self.apply(rev, ctl, local),
            Event::Votes(all) => {
                self.state.edges = all.len();
                self.others = all
                    .into_iter()
                    .filter(|r| r.edge != self.config.edge)
                    .collect();
                self.sync_health(ctl);
            }
        }
        self.refresh(ctl);
    }

    fn apply<S: Sink>(
        &mut self,
        rev: Revision,
        ctl: &mut Controller<S>,
        local: impl FnOnce(&Config) -> Option<BTreeSet<IpAddr>>,
    ) {
        if self
            .state
            .applied
            .as_ref()
            .is_some_and(|c| c.revision == rev.revision && c.text == rev.text)
        {
            return;
        }
        let trigger = format!("fleet revision {}", rev.revision);
        let merged = doc::read_file(ctl.config_path()).and_then(|raw| doc::merge(raw, &rev.text));
        let result = match merged {
            Err(e) => Err(error_chain(&e)),
            Ok(config) => match local(&config) {
                None => Err("cannot list this host's addresses".to_owned()),
                Some(local) => ctl
                    .reload(&trigger, Ok(config), local)
                    .map(|_| ())
                    .map_err(|e| error_chain(&e)),
            },
        };
        match result {
            Ok(()) => {
                let cached = Cached {
                    revision: rev.revision,
                    text: rev.text,
                };
                if let Err(e) = cache::store(&self.config.cache_dir, &cached) {
                    warn!(dir = %self.config.cache_dir.display(), error = %e, "fleet document applied but not cached");
                }
                info!(revision = cached.revision, "fleet document applied");
                self.state.applied = Some(cached);
                self.state.refused = None;
                self.state.documents_applied += 1;
                self.sync_health(ctl);
            }
            Err(error) => {
                error!(revision = rev.revision, %error, "fleet document refused; nothing applied, the dataplane keeps its last good state");
                self.state.refused = Some(Refused {
                    revision: rev.revision,
                    error,
                });
            }
        }
    }

    /// Records this edge's own verdicts; the controller gets the fleet's.
    pub fn local_health<'a, S: Sink>(
        &mut self,
        verdicts: impl IntoIterator<Item = (VipId, IpAddr, bool, &'a str)>,
        ctl: &mut Controller<S>,
    ) {
        for (vip, backend, healthy, _) in verdicts {
            self.local_health.insert((vip, backend), healthy);
        }
        self.sync_health(ctl);
        self.refresh(ctl);
    }

    /// Gives the controller the fleet verdict of every backend this edge checks, where it
    /// differs from what the controller has.
    fn sync_health<S: Sink>(&mut self, ctl: &mut Controller<S>) {
        let checks = ctl.checks();
        self.local_health.retain(|k, _| checks.contains_key(k));
        let mut votes = self.others.clone();
        votes.push(self.vote());
        let down = fleet_down(&votes);
        // Only backends with a verdict of their own check: a pending one stays pending.
        let changes: Vec<(VipId, IpAddr, bool)> = checks
            .keys()
            .filter(|k| self.local_health.contains_key(k) || down.contains(k))
            .map(|&(vip, b)| (vip, b, !down.contains(&(vip, b))))
            .filter(|&(vip, b, v)| ctl.health(vip, b) != Some(v))
            .collect();
        if !changes.is_empty() {
            ctl.set_health_verdicts(changes.iter().map(|&(vip, b, v)| {
                (
                    vip,
                    b,
                    v,
                    "fleet verdict (majority of the edges checking it)",
                )
            }));
        }
    }

    fn vote(&self) -> HealthReport {
        HealthReport {
            edge: self.config.edge.clone(),
            down: self
                .local_health
                .iter()
                .filter(|(_, healthy)| !**healthy)
                .map(|(k, _)| *k)
                .collect(),
        }
    }

    fn report_with<S: Sink>(&self, ctl: &Controller<S>) -> EdgeReport {
        let status = ctl.status();
        let announced = status
            .bgp
            .as_ref()
            .map(|b| {
                b.prefixes
                    .values()
                    .filter(|p| p.announced)
                    .map(|p| p.prefix.clone())
                    .collect()
            })
            .unwrap_or_default();
        EdgeReport {
            edge: self.config.edge.clone(),
            pop: self.config.pop.clone(),
            applied_revision: self.state.applied.as_ref().map_or(0, |c| c.revision),
            fingerprints: status
                .vips
                .iter()
                .map(|v| (v.vip.to_string(), v.fingerprint.clone()))
                .collect(),
            refused: self.state.refused.clone(),
            health: self
                .local_health
                .iter()
                .filter(|(_, healthy)| !**healthy)
                .map(|(&(vip, backend), &healthy)| HealthView {
                    vip,
                    backend,
                    healthy,
                })
                .collect(),
            announced,
            etcd_outages: self.state.outages,
        }
    }

    /// This edge's link to the fleet, for `anycast status`.
    pub fn view(&self) -> crate::proto::FleetView {
        let s = &self.state;
        crate::proto::FleetView {
            edge: self.config.edge.clone(),
            pop: self.config.pop.clone(),
            connected: s.connected,
            outages: s.outages,
            last_error: s.last_error.clone(),
            applied_revision: s.applied.as_ref().map(|c| c.revision),
            refused_revision: s.refused.as_ref().map(|r| r.revision),
            refused_error: s.refused.as_ref().map(|r| r.error.clone()),
            documents_applied: s.documents_applied,
            live_edges: s.edges,
        }
    }

    /// Hands the etcd task this edge's report, if it changed.
    pub fn refresh<S: Sink>(&self, ctl: &Controller<S>) {
        let r = Published {
            report: self.report_with(ctl),
            vote: self.vote(),
        };
        self.report_tx.send_if_modified(|cur| {
            let changed = *cur != r;
            if changed {
                *cur = r;
            }
            changed
        });
    }

    /// Prometheus lines for `/metrics`.
    pub fn metrics(&self) -> String {
        let s = &self.state;
        format!(
            "# HELP anycast_fleet_etcd_up 1 when etcd answers this edge's session, 0 during an outage.\n\
             # TYPE anycast_fleet_etcd_up gauge\nanycast_fleet_etcd_up {}\n\
             # HELP anycast_fleet_etcd_outages_total Times this edge lost etcd.\n\
             # TYPE anycast_fleet_etcd_outages_total counter\nanycast_fleet_etcd_outages_total {}\n\
             # HELP anycast_fleet_applied_revision The fleet revision whose document runs (0: none).\n\
             # TYPE anycast_fleet_applied_revision gauge\nanycast_fleet_applied_revision {}\n\
             # HELP anycast_fleet_refused_revision The last fleet revision refused (0: none since the last applied).\n\
             # TYPE anycast_fleet_refused_revision gauge\nanycast_fleet_refused_revision {}\n\
             # HELP anycast_fleet_documents_applied_total Fleet documents applied.\n\
             # TYPE anycast_fleet_documents_applied_total counter\nanycast_fleet_documents_applied_total {}\n\
             # HELP anycast_fleet_edges Live edges in the fleet, as last seen.\n\
             # TYPE anycast_fleet_edges gauge\nanycast_fleet_edges {}\n",
            u8::from(s.connected),
            s.outages,
            s.applied.as_ref().map_or(0, |c| c.revision),
            s.refused.as_ref().map_or(0, |r| r.revision),
            s.documents_applied,
            s.edges,
        )
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    cfg: FleetConfig,
    tx: mpsc::UnboundedSender<Event>,
    mut report: watch::Receiver<Published>,
) {
    loop {
        let e = session(&cfg, &tx, &mut report).await;
        if tx.send(Event::Outage(error_chain(&e))).is_err() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One session with etcd: read, register, watch, heartbeat until something breaks.
async fn session(
    cfg: &FleetConfig,
    tx: &mpsc::UnboundedSender<Event>,
    report: &mut watch::Receiver<Published>,
) -> StoreError {
    match session_inner(cfg, tx, report).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn session_inner(
    cfg: &FleetConfig,
    tx: &mpsc::UnboundedSender<Event>,
    report: &mut watch::Receiver<Published>,
) -> Result<Never, StoreError> {
    let mut store = Store::connect(cfg).await?;
    let (doc, read_at) = store.document().await?;
    let _ = tx.send(Event::Connected);
    if let Some(d) = doc {
        let _ = tx.send(Event::Document(d));
    }
    let lease = store.grant(cfg.lease_ttl_s).await?;
    let (mut keeper, mut alive) = store
        .client()
        .lease_keep_alive(lease)
        .await
        .map_err(store.err("keeping the edge's lease"))?;
    let mut last = report.borrow_and_update().clone();
    store.put_report(&last.report, lease).await?;
    store.put_vote(&last.vote, lease).await?;
    let mut votes: BTreeMap<String, HealthReport> = store
        .votes()
        .await?
        .into_iter()
        .map(|r| (r.edge.clone(), r))
        .collect();
    let _ = tx.send(Event::Votes(votes.values().cloned().collect()));
    let (config_key, health_prefix) = (store.config_key(), store.health_prefix());
    // Two watches on one stream: the document and the votes. Not the reports: nothing on an
    // edge needs the others', and a watch of them would cost every write edges x edges events.
    let mut stream = store
        .client()
        .watch(
            config_key.clone(),
            Some(WatchOptions::new().with_start_revision(read_at + 1)),
        )
        .await
        .map_err(store.err("watching the fleet document"))?;
    stream
        .watch(
            health_prefix.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(read_at + 1),
            ),
        )
        .await
        .map_err(store.err("watching the health votes"))?;
    let mut beat = tokio::time::interval(Duration::from_secs(u64::from(cfg.lease_ttl_s)) / 3);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                keeper.keep_alive().await.map_err(store.err("heartbeat"))?;
            }
            m = alive.message() => {
                match m.map_err(store.err("heartbeat"))? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Err(StoreError::Lost("the edge's lease expired")),
                }
            }
            r = report.changed() => {
                if r.is_err() {
                    return Err(StoreError::Lost("the agent stopped"));
                }
                let current = report.borrow_and_update().clone();
                if current.report != last.report {
                    store.put_report(&current.report, lease).await?;
                }
                if current.vote != last.vote {
                    store.put_vote(&current.vote, lease).await?;
                }
                last = current;
            }
            m = stream.message() => {
                let m = m.map_err(store.err("watching the fleet"))?
                    .ok_or(StoreError::Lost("the watch stream ended"))?;
                if m.canceled() {
                    return Err(StoreError::Lost(if m.compact_revision() > 0 {
                        "the watch fell behind a compaction; reading the document again"
                    } else {
                        "the watch was canceled"
                    }));
                }
                let mut votes_changed = false;
                for ev in m.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    if key == config_key && ev.event_type() == EventType::Put {
                        match store.revision_of(kv) {
                            Ok(d) => { let _ = tx.send(Event::Document(d)); }
                            Err(e) => error!(error = %error_chain(&e), "fleet document unreadable"),
                        }
                    } else if let Some(name) = key.strip_prefix(&health_prefix) {
                        votes_changed = true;
                        match ev.event_type() {
                            EventType::Delete => { votes.remove(name); }
                            EventType::Put => match super::store::parse_json(kv) {
                                Ok(r) => { votes.insert(name.to_owned(), r); }
                                Err(e) => warn!(error = %error_chain(&e), "health vote ignored"),
                            },
                        }
                    }
                }
                if votes_changed {
                    let _ = tx.send(Event::Votes(votes.values().cloned().collect()));
                }
            }
        }
    }
}
