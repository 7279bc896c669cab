//! The running agent's state and every change to it: the last good config, runtime overrides
//! (drain, weights), backend health, and turning them into the dataplane's desired state.
//!
//! What the dataplane gets is the *effective* config ([`effective_config`]): the config file,
//! then the runtime overrides on top (a drain is weight 0; a weight override replaces the file's
//! weight; a VIP-specific override beats an all-VIP one). Then health ([`with_health`]): an
//! unhealthy backend leaves its VIP's table, and only its own slots move. Maglev alone would
//! also move about 1% of other slots when a backend leaves its input, so the table is patched
//! instead: every slot keeps its backend from the table without health, except the unhealthy
//! backends' slots, which take their backend from the Maglev table of the healthy backends.
//! That is a pure function of (config, overrides, healthy set): edges that agree on health
//! publish identical tables, and recovery restores exactly the previous table. A VIP whose
//! checked backends are *all* unhealthy fails open (keeps its table, logged at error level and
//! reported as "all backends down"): a check that fails everywhere at once is more often the
//! check (a firewall, a wrong port) than every backend.
//!
//! The result is published through the diffing [`crate::dataplane::Publisher`], so a change
//! writes only the VIP tables that changed; nothing is detached or reloaded.
//!
//! [`Controller`] is pure bookkeeping over a [`Sink`] (the loaded [`Dataplane`] in the agent, a
//! [`MemorySink`] in tests); the agent feeds it config reloads, health transitions and API
//! requests from one task, so none of this needs locking.

mod error;
mod overrides;
mod reload;
mod requests;
mod sink;
mod status;

pub use crate::proto::VipChange;
pub use error::RequestError;
use error::scope;
pub use overrides::{HealthMap, Overrides, Restored, effective_config, with_health};
use reload::tables_of;
pub use reload::{ReloadError, diff};
pub use sink::{MemorySink, Sink};

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::{error, info, warn};

use crate::config::{
    BackendConfig, Config, ConfigError, HealthConfig, MAX_WEIGHT, VipConfig, VipId,
};
use crate::dataplane::stats::{
    RuntimeState, SavedOverride, SavedVerdict, StateFile, Stats, Traffic, VipTraffic,
};
use crate::dataplane::{
    ApplyReport, Dataplane, DataplaneError, DesiredState, IdMap, MemoryMaps, Publisher,
};
use crate::error::error_chain;
use crate::plan::model::{self, Decision, Flow, TableFacts, VipTable};
use crate::proto::{
    BackendStatus, Changed, EdgeDrained, OverrideEntry, ProgramInfo, ReloadOutcome, Request,
    Response, Status, VipStatus,
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The agent's state; see the module docs.
pub struct Controller<S: Sink> {
    sink: S,
    config_path: PathBuf,
    base: Config,
    local: BTreeSet<IpAddr>,
    overrides: Overrides,
    health: HealthMap,
    /// Checked backends whose verdict the running check task has confirmed (health::HealthEvent::settled).
    settled: std::collections::BTreeSet<(VipId, IpAddr)>,
    /// What was last published, and each VIP's table.
    effective: Config,
    tables: BTreeMap<VipId, VipTable>,
    /// Maglev tables already built: a publication rebuilds only the VIPs whose input changed.
    built: TableCache,
    /// Fingerprint and slots per backend of each table in `tables`, computed when it is built.
    facts: BTreeMap<VipId, TableFacts>,
    last_reload: Option<ReloadOutcome>,
    reloads_ok: u64,
    reloads_error: u64,
    program: ProgramInfo,
    /// Rewritten after every publication so `anycast stats --pin-path` names the right ids.
    state_file: Option<(PathBuf, StateFile)>,
    /// The BGP announcer, with `[bgp]` ([`crate::announce`]).
    announce: Option<crate::announce::Handle>,
    /// An edge drain restored from the state file, for the announcer when it is set.
    edge_drained: bool,
    /// Publications that changed each VIP's table since start (metrics).
    table_changes: BTreeMap<VipId, u64>,
    /// The fleet link as the agent last reported it ([`Self::set_fleet_view`]), with `[fleet]`.
    fleet: Option<crate::proto::FleetView>,
}

/// Maglev tables by VIP, with the input each was built from (ring size, seed, backends and
/// weights in config order): the full tables, and the healthy backends' tables of VIPs with
/// unhealthy backends (`with_health`).
#[derive(Debug, Default)]
struct TableCache {
    full: Tables,
    fallback: Tables,
}

type TableInput = (u32, u32, Vec<(IpAddr, u32)>);

#[derive(Debug, Default)]
struct Tables(BTreeMap<VipId, (TableInput, VipTable)>);

impl Tables {
    fn table(&mut self, v: &VipConfig, ring: u32, seed: u32) -> VipTable {
        let input = (
            ring,
            seed,
            v.backends.iter().map(|b| (b.address, b.weight)).collect(),
        );
        let id = VipId::of(v);
        if let Some((had, t)) = self.0.get(&id)
            && *had == input
        {
            return t.clone();
        }
        let t = model::vip_table(v, ring, seed);
        self.0.insert(id, (input, t.clone()));
        t
    }
}

impl TableCache {
    /// Forgets the VIPs no longer configured.
    fn retain(&mut self, ids: &BTreeSet<VipId>) {
        self.full.0.retain(|id, _| ids.contains(id));
        self.fallback.0.retain(|id, _| ids.contains(id));
    }
}

impl<S: Sink> Controller<S> {
    /// Publishes `config` (already validated with [`Config::check_local`] by the caller or not:
    /// it is checked here too) and returns the controller and what was written.
    pub fn start(
        sink: S,
        config_path: PathBuf,
        config: Config,
        local: BTreeSet<IpAddr>,
    ) -> Result<(Self, ApplyReport), ReloadError> {
        Self::start_restoring(sink, config_path, config, local, None)
            .map(|(c, report, _)| (c, report))
    }

    /// Like [`Controller::start`], with the overrides and health verdicts of `saved` (a previous
    /// agent's) applied before the first tables are computed: an unchanged config then yields the
    /// tables the previous agent left in the maps, and an adopting sink writes nothing. Entries
    /// the config has no place for any more are dropped and listed in [`Restored::dropped`].
    pub fn start_restoring(
        sink: S,
        config_path: PathBuf,
        config: Config,
        local: BTreeSet<IpAddr>,
        saved: Option<&RuntimeState>,
    ) -> Result<(Self, ApplyReport, Restored), ReloadError> {
        config.check_local(&local)?;
        let mut c = Self {
            sink,
            config_path,
            effective: config.clone(),
            base: config,
            local,
            overrides: Overrides::default(),
            health: HealthMap::new(),
            settled: std::collections::BTreeSet::new(),
            tables: BTreeMap::new(),
            facts: BTreeMap::new(),
            built: TableCache::default(),
            last_reload: None,
            reloads_ok: 0,
            reloads_error: 0,
            program: ProgramInfo::default(),
            state_file: None,
            announce: None,
            edge_drained: false,
            table_changes: BTreeMap::new(),
            fleet: None,
        };
        let restored = saved.map(|s| c.restore(s)).unwrap_or_default();
        let (effective, desired) = c.desired()?;
        let report = c
            .sink
            .apply_state(&desired)
            .map_err(|e| ReloadError::Apply(Box::new(e)))?;
        c.set_tables(tables_of(&effective, &desired));
        c.effective = effective;
        Ok((c, report, restored))
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn config(&self) -> &Config {
        &self.base
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// The Prometheus text ([`crate::metrics`]).
    pub fn metrics(&self) -> String {
        let stats = match self.sink.read_stats() {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %error_chain(&e), "reading the counters for metrics");
                None
            }
        };
        crate::metrics::render(&self.status(), stats.as_ref())
    }

    pub fn effective(&self) -> &Config {
        &self.effective
    }

    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    pub fn table(&self, vip: VipId) -> Option<&VipTable> {
        self.tables.get(&vip)
    }

    pub fn reload_counts(&self) -> (u64, u64) {
        (self.reloads_ok, self.reloads_error)
    }

    pub fn set_announcer(&mut self, mut announcer: crate::announce::Handle) {
        if self.edge_drained {
            info!(
                "edge drain restored from the state file: every VIP stays withdrawn until `anycast undrain-edge`"
            );
            announcer.set_edge_drained(true);
        }
        self.announce = Some(announcer);
        self.sync_announce();
    }

    pub fn take_announcer(&mut self) -> Option<crate::announce::Handle> {
        self.announce.take()
    }

    /// Hands the announcer `self.base`'s `[bgp]` and VIP addresses if they differ from `old`'s
    /// (checked by [`restart_only`] to be live changes).
    fn reconfigure_announcer(&mut self, old: &Config) {
        let addrs = |c: &Config| -> BTreeSet<IpAddr> { c.vips.iter().map(|v| v.address).collect() };
        let (Some(a), Some(bgp)) = (self.announce.as_mut(), self.base.bgp.as_ref()) else {
            return;
        };
        let new_addrs = addrs(&self.base);
        if old.bgp.as_ref() != Some(bgp) || addrs(old) != new_addrs {
            a.reconfigure(bgp.clone(), &new_addrs);
        }
    }

    /// Hands the announcement policy its current input (cheap when nothing changed).
    pub fn sync_announce(&self) {
        if let Some(a) = &self.announce {
            a.update(&self.status());
        }
    }

    pub fn set_program(&mut self, program: ProgramInfo) {
        self.program = program;
        self.sync_announce();
    }

    /// Keeps `state` (its `ids` replaced) written after every publication.
    pub fn keep_state_file(&mut self, path: PathBuf, state: StateFile) {
        self.state_file = Some((path, state));
        self.write_state_file();
    }

    /// Rewrites the state file (temporary file, then rename): after every publication and every
    /// change of an override, a health verdict or the edge drain.
    fn write_state_file(&mut self) {
        let ids = self.sink.id_map();
        let runtime = self.runtime_state();
        if let Some((path, s)) = &mut self.state_file {
            s.ids = ids;
            s.runtime = runtime;
            if let Err(e) = s.write(path) {
                warn!(error = %error_chain(&e), "writing the state file");
            }
        }
    }

    /// Writes the effective state and logs one line per changed VIP.
    /// The effective config and the dataplane's desired state: config, overrides, health.
    fn desired(&mut self) -> Result<(Config, DesiredState), ConfigError> {
        let effective = effective_config(&self.base, &self.overrides);
        let (ring, seed) = (effective.agent.ring_size, effective.agent.hash_seed);
        let cache = &mut self.built;
        let mut desired = DesiredState::with_tables(&effective, &self.local, |v| {
            cache.full.table(v, ring, seed)
        })?;
        for (v, d) in effective.vips.iter().zip(&mut desired.vips) {
            let full = std::mem::replace(
                &mut d.table,
                VipTable {
                    backends: Vec::new(),
                    slots: Vec::new(),
                },
            );
            d.table = with_health(full, v, &self.health, |healthy| {
                cache.fallback.table(healthy, ring, seed)
            });
        }
        let ids: BTreeSet<VipId> = effective.vips.iter().map(VipId::of).collect();
        cache.retain(&ids);
        Ok((effective, desired))
    }

    /// The tables just published, and their facts (recomputed only for a table that changed).
    fn set_tables(&mut self, tables: BTreeMap<VipId, VipTable>) {
        let old = std::mem::take(&mut self.facts);
        self.facts = tables
            .iter()
            .map(|(id, t)| {
                let f = match (old.get(id), self.tables.get(id)) {
                    (Some(f), Some(was)) if was == t => f.clone(),
                    _ => t.facts(),
                };
                (*id, f)
            })
            .collect();
        self.tables = tables;
    }

    fn publish(&mut self, why: &str) -> Result<Vec<VipChange>, DataplaneError> {
        let (effective, desired) = self.desired()?;
        self.sink.apply_state(&desired)?;
        let tables = tables_of(&effective, &desired);
        let changes = diff(&self.effective, &self.tables, &effective, &tables);
        for c in &changes {
            *self.table_changes.entry(c.vip).or_default() += 1;
            let list = |v: &[IpAddr]| {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let weights = c
                .reweighted
                .iter()
                .map(|(a, o, n)| format!("{a}:{o}->{n}"))
                .collect::<Vec<_>>()
                .join(",");
            info!(
                vip = %c.vip,
                added = %list(&c.added),
                removed = %list(&c.removed),
                reweighted = %weights,
                slots_moved = c.slots_moved,
                fingerprint = c.fingerprint.as_deref().unwrap_or("none"),
                vip_added = c.vip_added,
                vip_removed = c.vip_removed,
                "VIP table changed ({why})"
            );
        }
        self.effective = effective;
        self.set_tables(tables);
        self.write_state_file();
        self.sync_announce();
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigBuilder, VipBuilder};
    use crate::dataplane::{MapOp, vip_key};
    use crate::proto::AttachedInterface;

    /// A checked VIP on three backends and an unchecked one on two.
    fn cfg_text() -> String {
        ConfigBuilder::reference()
            .without_agent("tunnel_source_v6")
            .agent("decap_allow", vec!["198.18.0.0/15"])
            .agent("max_vips", 4)
            .agent("max_backends", 8)
            .edit_vip(0, |v| v.backend("198.18.10.4", 1).health("kind = \"tcp\""))
            .vip(
                VipBuilder::new("203.0.113.11", 53, "udp")
                    .backends(&[("198.18.10.2", 1), ("198.18.10.5", 1)]),
            )
            .toml()
    }

    fn start(cfg: &str) -> Controller<MemorySink> {
        let c = Config::parse(cfg).unwrap();
        let (ctl, _) = Controller::start(
            MemorySink::new(&c),
            "/etc/anycast.toml".into(),
            c,
            BTreeSet::new(),
        )
        .unwrap();
        ctl
    }

    fn vip(s: &str) -> VipId {
        let c = Config::parse(&cfg_text()).unwrap();
        c.vips
            .iter()
            .map(VipId::of)
            .find(|v| v.to_string() == s)
            .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn journal_len(c: &Controller<MemorySink>) -> usize {
        c.sink().maps.journal.len()
    }

    fn reload(c: &mut Controller<MemorySink>, text: &str) -> Result<Vec<VipChange>, ReloadError> {
        c.reload("test", Config::parse(text), BTreeSet::new())
    }

    #[test]
    fn a_weight_change_writes_only_that_vips_table() {
        let mut c = start(&cfg_text());
        let before = journal_len(&c);
        let k10 = vip_key(ip("203.0.113.10"), 80, 6);
        let live = c.sink().maps.vips[&k10];
        let changes = reload(
            &mut c,
            &cfg_text().replacen(
                "address = \"198.18.10.3\"\nweight = 1",
                "address = \"198.18.10.3\"\nweight = 3",
                1,
            ),
        )
        .unwrap();
        assert_eq!(changes.len(), 1, "{changes:?}");
        let ch = &changes[0];
        assert_eq!(ch.vip.to_string(), "203.0.113.10:80/tcp");
        assert_eq!(ch.reweighted, vec![(ip("198.18.10.3"), 1, 3)]);
        assert!(ch.added.is_empty() && ch.removed.is_empty());
        assert!(ch.slots_moved > 0 && ch.slots_moved < 1009);
        let ops = &c.sink().maps.journal[before..];
        // The new table goes into one of that VIP's own table numbers, then one VIP update.
        let v = c.sink().maps.vips[&k10];
        for op in ops {
            match op {
                MapOp::Ring { first, .. } => {
                    assert_eq!(first / 1009 / anycast_common::TABLES_PER_VIP, live.vip_id);
                }
                MapOp::SetVip(k, _) => assert_eq!(*k, k10),
                other => panic!("unexpected write {other:?}"),
            }
        }
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, MapOp::SetVip(..)))
                .count(),
            1
        );
        assert_eq!((v.prev_table, v.vip_id), (live.table, live.vip_id));
        assert_eq!(
            c.status().vips[0].fingerprint,
            c.table(vip("203.0.113.10:80/tcp")).unwrap().fingerprint()
        );
        assert_eq!(c.reload_counts(), (1, 0));
        // The same file again: nothing written.
        let n = journal_len(&c);
        let again = cfg_text().replacen(
            "address = \"198.18.10.3\"\nweight = 1",
            "address = \"198.18.10.3\"\nweight = 3",
            1,
        );
        assert!(reload(&mut c, &again).unwrap().is_empty());
        assert_eq!(journal_len(&c), n);
    }

    #[test]
    fn an_invalid_reload_writes_nothing_and_names_the_field() {
        let mut c = start(&cfg_text());
        let before = journal_len(&c);
        let fp = c.status().vips[0].fingerprint.clone();
        let text = cfg_text();
        for (from, to, want) in [
            (
                "weight = 1",
                "weight = 70000",
                "vip[0].backend[0].weight: 70000 is out of range 0..=65535",
            ),
            (
                "ring_size = 1009",
                "ring_size = 1013",
                "agent.ring_size: changed from 1009 to 1013; the maps are sized at load time",
            ),
            (
                "max_vips = 4",
                "max_vips = 4\nconntrack_size = 4096",
                "agent.conntrack_size: changed from 262144 to 4096",
            ),
            ("[\"eth0\"]", "[\"eth1\"]", "agent.interfaces: changed from"),
            // Remote backend without a tunnel source: check_local.
            (
                "tunnel_source = \"198.18.1.2\"\n",
                "",
                "vip[0].backend[0].address: 198.18.10.2 is a remote IPv4 backend",
            ),
        ] {
            assert!(text.contains(from), "{from}");
            let e = reload(&mut c, &text.replacen(from, to, 1)).unwrap_err();
            assert!(e.to_string().starts_with(want), "{from} -> {to}: {e}");
        }
        let e = c
            .reload("test", Config::parse("[agent"), BTreeSet::new())
            .unwrap_err();
        assert!(error_chain(&e).contains("invalid TOML"), "{e}");
        assert_eq!(
            journal_len(&c),
            before,
            "a rejected config wrote to the maps"
        );
        assert_eq!(c.status().vips[0].fingerprint, fp);
        let s = c.status();
        let last = s.last_reload.unwrap();
        assert!(!last.ok && last.message.contains("invalid TOML"));
        assert_eq!(s.reloads_error, 6);
        assert_eq!(c.config(), &Config::parse(&cfg_text()).unwrap());
    }

    #[test]
    fn a_vip_added_and_a_backend_removed() {
        let mut c = start(&cfg_text());
        let text = format!(
            "{}[[vip]]\naddress = \"203.0.113.12\"\nport = 443\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"198.18.10.6\"\nweight = 1\n",
            cfg_text().replacen(
                "[[vip.backend]]\naddress = \"198.18.10.5\"\nweight = 1\n",
                "",
                1
            )
        );
        let ch = reload(&mut c, &text).unwrap();
        assert_eq!(ch.len(), 2, "{ch:?}");
        assert_eq!(ch[0].removed, vec![ip("198.18.10.5")]);
        assert!(ch[1].vip_added && ch[1].slots_moved == 1009);
    }

    #[test]
    fn verdicts_that_arrive_together_are_published_in_one_write() {
        let v = vip("203.0.113.10:80/tcp");
        let (down1, down2) = (ip("198.18.10.3"), ip("198.18.10.4"));
        // One at a time: two table writes (two VIP updates).
        let mut one = start(&cfg_text());
        let n = journal_len(&one);
        one.set_health(v, down1, false, "test");
        one.set_health(v, down2, false, "test");
        let vip_writes = |c: &Controller<MemorySink>, from: usize| {
            c.sink().maps.journal[from..]
                .iter()
                .filter(|o| matches!(o, MapOp::SetVip(..)))
                .count()
        };
        assert_eq!(vip_writes(&one, n), 2);
        // Together: one.
        let mut both = start(&cfg_text());
        let n = journal_len(&both);
        both.set_health_verdicts([(v, down1, false, "test"), (v, down2, false, "test")]);
        assert_eq!(vip_writes(&both, n), 1);
        // The same table, and the same facts in status, either way.
        assert_eq!(one.table(v), both.table(v));
        let slots = |c: &Controller<MemorySink>| {
            c.status().vips[0]
                .backends
                .iter()
                .map(|b| (b.address, b.slots))
                .collect::<Vec<_>>()
        };
        assert_eq!(slots(&one), slots(&both));
        assert_eq!(
            slots(&both)[0],
            (ip("198.18.10.2"), 1009),
            "one healthy backend left"
        );
        assert_eq!(
            both.status().vips[0].fingerprint,
            both.table(v).unwrap().fingerprint()
        );
        // Back up together: the table without health again, from the cache.
        both.set_health_verdicts([(v, down1, true, "test"), (v, down2, true, "test")]);
        let fresh = start(&cfg_text());
        assert_eq!(both.table(v), fresh.table(v));
        assert_eq!(slots(&both), slots(&fresh));
    }

    #[test]
    fn an_unhealthy_backend_moves_only_its_own_slots_and_returns() {
        let mut c = start(&cfg_text());
        let v = vip("203.0.113.10:80/tcp");
        let t0 = c.table(v).unwrap().clone();
        let down = ip("198.18.10.3");
        c.set_health(v, down, false, "test");
        let t1 = c.table(v).unwrap().clone();
        assert!(t1.slot_addresses().all(|a| a != down));
        for (a, b) in t0.slot_addresses().zip(t1.slot_addresses()) {
            if a != down {
                assert_eq!(a, b, "a healthy backend's slot moved");
            }
        }
        let st = c.status();
        let b = &st.vips[0].backends[1];
        assert_eq!(
            (b.health, b.weight_effective, b.slots),
            (crate::proto::Health::Unhealthy, 0, 0)
        );
        assert_eq!(st.vips[0].state, crate::proto::VipState::Ok);
        // The other VIP (no health check) is untouched, and reports its backends unchecked.
        assert_eq!(
            st.vips[1].backends[0].health,
            crate::proto::Health::Unchecked
        );
        c.set_health(v, down, true, "test");
        assert_eq!(c.table(v).unwrap().fingerprint(), t0.fingerprint());
        // Every backend down: reported.
        for b in ["198.18.10.2", "198.18.10.3", "198.18.10.4"] {
            c.set_health(v, ip(b), false, "test");
        }
        let st = c.status();
        assert_eq!(st.vips[0].state, crate::proto::VipState::AllBackendsDown);
        assert_eq!(st.vips[0].fingerprint, t0.fingerprint(), "fails open");
        // A late report about a VIP without checks is ignored.
        let n = journal_len(&c);
        c.set_health(vip("203.0.113.11:53/udp"), ip("198.18.10.2"), false, "test");
        assert_eq!(journal_len(&c), n);
    }

    /// The announcement gate's input: a VIP's prefix is `settling` until every checked backend's
    /// verdict is confirmed by its running check, and again while a rise or fall is under way.
    #[test]
    fn a_vip_is_settling_until_every_check_has_confirmed_its_verdict() {
        let mut c = start(&cfg_text());
        c.set_program(ProgramInfo {
            name: "anycast_steer".into(),
            id: None,
            interfaces: vec![AttachedInterface {
                name: "eth0".into(),
                mode: "native".into(),
                forwarding: None,
            }],
        });
        let v = vip("203.0.113.10:80/tcp");
        let want = |c: &Controller<MemorySink>| {
            crate::announce::desired(&c.status(), 1, false, false).prefixes[&v.address].clone()
        };
        let settling = |c: &Controller<MemorySink>| {
            let w = want(c);
            assert!(w.announce, "{w:?}");
            w.settling
        };
        let backends = ["198.18.10.2", "198.18.10.3", "198.18.10.4"];
        // Pending: no verdict yet (and pending backends do not count as healthy).
        assert!(!want(&c).announce);
        c.set_health(v, ip(backends[0]), true, "test");
        c.set_health_settled(v, ip(backends[0]), true);
        assert_eq!(
            settling(&c).as_deref(),
            Some("waiting for the health checks of 2 backends to settle")
        );
        c.set_health(v, ip(backends[1]), true, "test");
        c.set_health_settled(v, ip(backends[1]), true);
        assert!(settling(&c).unwrap().contains("of 1 backend to"));
        // An unhealthy verdict, settled, does not hold the VIP back.
        c.set_health(v, ip(backends[2]), false, "test");
        c.set_health_settled(v, ip(backends[2]), true);
        assert_eq!(settling(&c), None);
        assert!(c.status().vips[0].backends.iter().all(|b| b.health_settled));
        // A rise under way unsettles it again; a VIP without checks is always settled.
        c.set_health_settled(v, ip(backends[2]), false);
        assert!(settling(&c).is_some());
        assert!(c.status().vips[1].backends.iter().all(|b| b.health_settled));
    }

    /// The API's status is one typed protocol: what the agent sends, the CLI reads back whole.
    #[test]
    fn status_round_trips_through_the_typed_protocol() {
        let mut c = start(&cfg_text());
        let v = vip("203.0.113.10:80/tcp");
        c.set_health(v, ip("198.18.10.3"), false, "test");
        req(&mut c, r#"{"request":"drain","backend":"198.18.10.4"}"#).unwrap();
        let st = c.status();
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["vips"][0]["backends"][1]["health"], "unhealthy");
        assert_eq!(json["vips"][0]["vip"], "203.0.113.10:80/tcp");
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, st);
        let text = crate::cli::render_status(&back);
        assert!(text.contains("vip 203.0.113.10:80/tcp  ok"), "{text}");
        assert!(text.contains("unhealthy"), "{text}");
        assert!(text.contains("198.18.10.4 drained for every VIP"), "{text}");
    }

    fn req(c: &mut Controller<MemorySink>, json: &str) -> Result<serde_json::Value, String> {
        let r: Request = serde_json::from_str(json).unwrap();
        c.handle(r).into_result()
    }

    #[test]
    fn overrides_sit_on_top_of_the_config_and_survive_reloads() {
        let mut c = start(&cfg_text());
        let v10 = vip("203.0.113.10:80/tcp");
        let v11 = vip("203.0.113.11:53/udp");
        let b2 = ip("198.18.10.2");
        req(&mut c, r#"{"request":"drain","backend":"198.18.10.2"}"#).unwrap();
        for v in [v10, v11] {
            assert!(c.table(v).unwrap().slot_addresses().all(|a| a != b2));
        }
        // A reload that changes something else keeps the drain.
        reload(&mut c, &cfg_text().replacen("weight = 1", "weight = 2", 2)).unwrap();
        assert!(c.table(v10).unwrap().slot_addresses().all(|a| a != b2));
        let st = c.status();
        assert!(st.vips[0].backends[0].drained);
        assert_eq!(st.vips[0].backends[0].weight_config, 2);
        assert_eq!(st.vips[0].backends[0].weight_effective, 0);
        assert_eq!(st.overrides.len(), 1);
        req(&mut c, r#"{"request":"undrain","backend":"198.18.10.2"}"#).unwrap();
        assert!(c.table(v10).unwrap().slot_addresses().any(|a| a == b2));
        // Per-VIP weight beats the file.
        req(
            &mut c,
            r#"{"request":"set_weight","vip":"203.0.113.11:53/udp","backend":"198.18.10.5","weight":5}"#,
        )
        .unwrap();
        let st = c.status();
        assert_eq!(st.vips[1].backends[1].weight_effective, 5);
        assert_eq!(st.vips[1].backends[1].weight_override, Some(5));
        assert!(st.vips[1].backends[1].slots > 700, "{:?}", st.vips[1]);
        req(
            &mut c,
            r#"{"request":"set_weight","vip":"203.0.113.11","backend":"198.18.10.5","clear":true}"#,
        )
        .unwrap();
        assert_eq!(c.status().vips[1].backends[1].weight_effective, 1);
    }

    /// A new controller over the maps `c` wrote, as an agent adopting pinned maps sees them.
    fn adopt_from(
        c: &mut Controller<MemorySink>,
        saved: Option<&RuntimeState>,
    ) -> (Controller<MemorySink>, ApplyReport, Restored) {
        let config = c.config().clone();
        let mut maps = std::mem::take(&mut c.sink_mut().maps);
        let mut sink = MemorySink::new(&config);
        sink.publisher.adopt(&maps.snapshot(config.agent.ring_size));
        maps.journal.clear();
        sink.maps = maps;
        Controller::start_restoring(
            sink,
            "/etc/anycast.toml".into(),
            config,
            BTreeSet::new(),
            saved,
        )
        .unwrap()
    }

    #[test]
    fn a_restart_with_the_saved_runtime_state_writes_nothing_and_keeps_overrides_and_health() {
        let mut c = start(&cfg_text());
        let (v10, v11) = (vip("203.0.113.10:80/tcp"), vip("203.0.113.11:53/udp"));
        req(
            &mut c,
            r#"{"request":"drain","vip":"203.0.113.10:80/tcp","backend":"198.18.10.2"}"#,
        )
        .unwrap();
        req(
            &mut c,
            r#"{"request":"set_weight","backend":"198.18.10.5","weight":3}"#,
        )
        .unwrap();
        c.set_health(v10, ip("198.18.10.3"), false, "test");
        c.set_health(v10, ip("198.18.10.4"), true, "test");
        let status = c.status();
        let tables = (c.table(v10).cloned(), c.table(v11).cloned());
        // Through JSON, as the state file carries it.
        let saved: RuntimeState =
            serde_json::from_str(&serde_json::to_string(&c.runtime_state()).unwrap()).unwrap();
        assert_eq!(saved, c.runtime_state());
        assert_eq!((saved.overrides.len(), saved.health.len()), (2, 2));

        let (mut d, report, restored) = adopt_from(&mut c, Some(&saved));
        assert_eq!(
            restored,
            Restored {
                overrides: 2,
                verdicts: 2,
                edge_drained: false,
                dropped: vec![],
            }
        );
        assert_eq!(
            (report.backends_written, report.ring_entries_written),
            (0, 0)
        );
        assert!(report.vips.iter().all(|v| !v.changed));
        assert!(
            d.sink().maps.journal.is_empty(),
            "{:?}",
            d.sink().maps.journal
        );
        assert_eq!((d.table(v10).cloned(), d.table(v11).cloned()), tables);
        let again = d.status();
        assert_eq!(again.overrides, status.overrides);
        // The same VIPs, less the table-change counters: a new agent counts from zero.
        let since_start = |vips: &[crate::proto::VipStatus]| {
            vips.iter()
                .cloned()
                .map(|mut v| {
                    v.table_changes = 0;
                    v
                })
                .collect::<Vec<_>>()
        };
        assert!(status.vips.iter().any(|v| v.table_changes > 0));
        assert!(again.vips.iter().all(|v| v.table_changes == 0));
        assert_eq!(since_start(&again.vips), since_start(&status.vips));
        assert_eq!(d.health(v10, ip("198.18.10.3")), Some(false));
        // The health checks start from the restored verdicts; undrain works as before.
        req(&mut d, r#"{"request":"undrain","backend":"198.18.10.2"}"#).unwrap();
        assert!(
            d.table(v10)
                .unwrap()
                .slot_addresses()
                .any(|a| a == ip("198.18.10.2"))
        );

        // Without the saved state the new controller puts the drained, the reweighted and the
        // unhealthy backends back: tables rewritten, flows moved.
        let mut c = start(&cfg_text());
        req(
            &mut c,
            r#"{"request":"drain","vip":"203.0.113.10:80/tcp","backend":"198.18.10.2"}"#,
        )
        .unwrap();
        let (_, report, _) = adopt_from(&mut c, None);
        assert!(report.ring_entries_written > 0);
    }

    #[test]
    fn saved_state_the_config_has_no_place_for_is_dropped_with_the_reason() {
        let mut c = start(&cfg_text());
        let saved = RuntimeState {
            overrides: vec![
                SavedOverride {
                    vip: Some("192.0.2.1:80/tcp".into()),
                    backend: ip("198.18.10.2"),
                    drained: true,
                    weight: None,
                },
                SavedOverride {
                    vip: Some("203.0.113.10:80/tcp".into()),
                    backend: ip("198.18.10.5"),
                    drained: true,
                    weight: None,
                },
                SavedOverride {
                    vip: None,
                    backend: ip("198.18.99.9"),
                    drained: false,
                    weight: Some(2),
                },
                SavedOverride {
                    vip: None,
                    backend: ip("198.18.10.3"),
                    drained: false,
                    weight: Some(70_000),
                },
                SavedOverride {
                    vip: None,
                    backend: ip("198.18.10.4"),
                    drained: true,
                    weight: None,
                },
            ],
            health: vec![
                SavedVerdict {
                    vip: "203.0.113.11:53/udp".into(),
                    backend: ip("198.18.10.2"),
                    healthy: false,
                },
                SavedVerdict {
                    vip: "203.0.113.10:80/tcp".into(),
                    backend: ip("198.18.10.3"),
                    healthy: false,
                },
            ],
            edge_drained: true,
        };
        let (d, _, restored) = adopt_from(&mut c, Some(&saved));
        assert_eq!((restored.overrides, restored.verdicts), (1, 1));
        assert!(restored.edge_drained);
        assert_eq!(
            restored.dropped,
            vec![
                "drain of 198.18.10.2: unknown VIP \"192.0.2.1:80/tcp\" (configured: 203.0.113.10:80/tcp, 203.0.113.11:53/udp)",
                "drain of 198.18.10.5: 198.18.10.5 is not a backend of VIP 203.0.113.10:80/tcp (its backends: 198.18.10.2, 198.18.10.3, 198.18.10.4)",
                "weight 2 of 198.18.99.9: unknown backend 198.18.99.9: no VIP lists it",
                "weight 70000 of 198.18.10.3: out of range 0..=65535",
                "health verdict of 198.18.10.2 for VIP 203.0.113.11:53/udp: no longer checked",
            ]
        );
        assert!(
            d.overrides()
                .is_drained(vip("203.0.113.10:80/tcp"), ip("198.18.10.4"))
        );
        assert_eq!(
            d.health(vip("203.0.113.10:80/tcp"), ip("198.18.10.3")),
            Some(false)
        );
        // Kept for an announcer set later.
        assert!(d.runtime_state().edge_drained);
    }

    #[test]
    fn an_override_of_a_backend_the_config_drops_goes_with_it() {
        let mut c = start(&cfg_text());
        let v11 = vip("203.0.113.11:53/udp");
        req(&mut c, r#"{"request":"drain","backend":"198.18.10.5"}"#).unwrap();
        req(
            &mut c,
            r#"{"request":"set_weight","vip":"203.0.113.10:80/tcp","backend":"198.18.10.2","weight":4}"#,
        )
        .unwrap();
        let without = cfg_text().replacen(
            "[[vip.backend]]\naddress = \"198.18.10.5\"\nweight = 1\n",
            "",
            1,
        );
        reload(&mut c, &without).unwrap();
        assert_eq!(c.status().overrides.len(), 1, "the other override stays");
        // The backend returns without its old drain.
        reload(&mut c, &cfg_text()).unwrap();
        assert!(!c.overrides().is_drained(v11, ip("198.18.10.5")));
        assert!(
            c.table(v11)
                .unwrap()
                .slot_addresses()
                .any(|a| a == ip("198.18.10.5"))
        );
        // A rejected reload drops nothing.
        req(&mut c, r#"{"request":"drain","backend":"198.18.10.5"}"#).unwrap();
        let broken = without.replacen("weight = 1", "weight = 70000", 1);
        reload(&mut c, &broken).unwrap_err();
        assert!(c.overrides().is_drained(v11, ip("198.18.10.5")));
    }

    #[test]
    fn bad_requests_get_clear_errors() {
        let mut c = start(&cfg_text());
        let n = journal_len(&c);
        let e = req(
            &mut c,
            r#"{"request":"drain","vip":"192.0.2.1:80/tcp","backend":"198.18.10.2"}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("unknown VIP \"192.0.2.1:80/tcp\" (configured: 203.0.113.10:80/tcp, 203.0.113.11:53/udp)"), "{e}");
        let e = req(
            &mut c,
            r#"{"request":"drain","vip":"203.0.113.10:80/tcp","backend":"198.18.10.5"}"#,
        )
        .unwrap_err();
        assert!(
            e.starts_with("198.18.10.5 is not a backend of VIP 203.0.113.10:80/tcp"),
            "{e}"
        );
        let e = req(&mut c, r#"{"request":"drain","backend":"198.18.99.9"}"#).unwrap_err();
        assert_eq!(e, "unknown backend 198.18.99.9: no VIP lists it");
        let e = req(&mut c, r#"{"request":"drain","backend":"nope"}"#).unwrap_err();
        assert_eq!(e, "\"nope\" is not an IP address");
        let e = req(
            &mut c,
            r#"{"request":"set_weight","backend":"198.18.10.2","weight":70000}"#,
        )
        .unwrap_err();
        assert_eq!(e, "weight 70000 is out of range 0..=65535");
        let e = req(
            &mut c,
            r#"{"request":"set_weight","backend":"198.18.10.2","weight":-1}"#,
        )
        .unwrap_err();
        assert_eq!(e, "weight -1 is out of range 0..=65535");
        let e = req(&mut c, r#"{"request":"undrain","backend":"198.18.10.2"}"#).unwrap_err();
        assert_eq!(e, "198.18.10.2 is not drained for every VIP");
        let e = req(&mut c, r#"{"request":"lookup","flow":"tcp 1.2.3.4"}"#).unwrap_err();
        assert!(e.starts_with("expected \"PROTO SRC:PORT DST:PORT\""), "{e}");
        assert_eq!(journal_len(&c), n);
        assert!(serde_json::from_str::<Request>(r#"{"request":"reboot"}"#).is_err());
    }

    #[test]
    fn lookup_uses_the_live_tables() {
        let mut c = start(&cfg_text());
        let flow = "tcp 198.51.100.7:40000 203.0.113.10:80";
        let d = c.lookup(flow).unwrap();
        let model::Outcome::Encap { backend, .. } = d.outcome else {
            panic!("{d}")
        };
        req(
            &mut c,
            &format!(r#"{{"request":"drain","vip":"203.0.113.10:80/tcp","backend":"{backend}"}}"#),
        )
        .unwrap();
        let j = req(
            &mut c,
            &format!(r#"{{"request":"lookup","flow":"{flow}"}}"#),
        )
        .unwrap();
        assert_ne!(j["backend"], backend.to_string());
        assert_eq!(
            j["table_fingerprint"],
            c.status().vips[0].fingerprint.clone().unwrap()
        );
        let st = req(&mut c, r#"{"request":"status"}"#).unwrap();
        assert_eq!(st["vips"][0]["vip"], "203.0.113.10:80/tcp");
        assert_eq!(st["config_path"], "/etc/anycast.toml");
        let stats = req(&mut c, r#"{"request":"stats"}"#).unwrap();
        assert_eq!(stats["counters"]["pass"], 0);
    }
}
