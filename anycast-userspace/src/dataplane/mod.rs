//! Loading the XDP program and writing its maps.
//!
//! # Public API (also used by the BPF_PROG_TEST_RUN fixtures in `tests/`)
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeSet;
//! use anycast::{config::Config, dataplane::Dataplane};
//! let config = Config::load("anycast.toml".as_ref())?;
//! let local: BTreeSet<std::net::IpAddr> = ["198.18.10.2".parse()?].into();
//! // Loads anycast::EBPF_OBJECT with RINGS / VIPS / BACKENDS / *_STATS sized from the config,
//! // and loads the XDP program into the kernel (not attached).
//! let mut dp = Dataplane::load(&config)?;
//! dp.apply(&config, &local)?;              // writes every map; errors name what failed
//! let prog = dp.program_mut()?;            // &mut aya::programs::Xdp ("anycast_steer")
//! // prog.test_run(...) or prog.attach(...)
//! let stats = dp.read_stats()?;            // per-CPU values summed
//! assert!(stats.counter("pass").is_some());
//! # Ok(()) }
//! ```
//!
//! # Map layout and publishing order
//!
//! * Backend ids: one per distinct backend address across all VIPs, assigned on first sight and
//!   kept while the address is configured. An id is reused only once no VIP's live or previous
//!   table refers to it, so a packet following a previous table never reaches the wrong host.
//! * VIP ids: one per VIP (`VipValue::vip_id`, the `VIP_STATS` index); VIP id `v` owns the table
//!   numbers `3v, 3v+1, 3v+2` of `RINGS` (table `t` = entries `[t*M, (t+1)*M)`).
//! * A table change is published by writing the whole new table into the VIP's table number that
//!   is neither live nor previous, then replacing the `VipValue` in one map update
//!   (`table = new, prev_table = old live`). Only entries that differ from what that table
//!   number held are written (the writer keeps a shadow copy).
//! * `CONFIG`, `BACKENDS`, `LOCAL_ADDRS` and `DECAP_ALLOW_*` are written before any `VIPS`
//!   update, so a VIP never points at a backend the program cannot resolve.
//!
//! [`Publisher`] holds that bookkeeping and works against any [`MapWriter`]: [`AyaMaps`] for the
//! kernel, [`MemoryMaps`] for tests. [`Publisher::apply`] takes the complete desired state and
//! writes only the difference from what it wrote before, so the same call serves a later
//! "reload only what changed".

pub mod batch;
pub mod conns;
pub mod migrate;
pub mod pins;
pub mod program_log;
pub mod stats;

mod aya_maps;
pub mod bpffs;
mod desired;
mod memory;
mod publish;
mod snapshot;

use crate::error::IoError;
pub use aya_maps::AyaMaps;
use aya_maps::map_err;
pub use desired::{DesiredState, DesiredVip, addr_key_of, vip_key};
pub use memory::{MapOp, MemoryMaps};
pub use publish::{ApplyReport, IdMap, MapWriter, Publisher, VipReport};
use snapshot::label_of_key;
pub use snapshot::{MapSnapshot, snapshot};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anycast_common::{
    AddrKey, BACKEND_F_LOCAL, Backend, CFG_F_HAS_SRC_V4, CFG_F_HAS_SRC_V6, CFG_F_NO_PORT0_VIPS,
    DataplaneConfig, ENCAP_GUE, ENCAP_IPIP, NO_TABLE, PROGRAM_NAME, TABLES_PER_VIP, VipKey,
    VipValue, map_names,
};
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, Map};
use aya::programs::Xdp;
use ipnet::IpNet;

use crate::config::{Config, ConfigError, Encapsulation, MAX_RING_SIZE};
use crate::plan::maglev::addr_key;
use crate::plan::model::{VipTable, vip_table};
use stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("map {0} is not in the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {what}")]
    Map {
        name: &'static str,
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("program {PROGRAM_NAME} is not in the eBPF object")]
    MissingProgram,
    #[error("program {PROGRAM_NAME}: {what}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Capacity(String),
    #[error(
        "{field} changed from {loaded} to {wanted}; the maps are sized at load time, restart the agent to change it"
    )]
    Geometry {
        field: &'static str,
        loaded: u32,
        wanted: u32,
    },
    #[error("pinning map {name} at {path}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Every map the agent writes or reads, for pinning.
pub const ALL_MAPS: [&str; 10] = [
    map_names::VIPS,
    map_names::RINGS,
    map_names::BACKENDS,
    map_names::CONFIG,
    map_names::LOCAL_ADDRS,
    map_names::DECAP_ALLOW_V4,
    map_names::DECAP_ALLOW_V6,
    map_names::STATS,
    map_names::VIP_STATS,
    map_names::BACKEND_STATS,
];

/// Map sizes fixed when the object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub ring_size: u32,
    pub max_vips: u32,
    pub max_backends: u32,
    pub conntrack_size: u32,
}

impl Geometry {
    pub fn of(config: &Config) -> Self {
        Self {
            ring_size: config.agent.ring_size,
            max_vips: config.agent.max_vips,
            max_backends: config.agent.max_backends,
            conntrack_size: config.agent.conntrack_size,
        }
    }

    pub fn ring_entries(&self) -> u32 {
        self.max_vips * TABLES_PER_VIP * self.ring_size
    }

    /// Entries of `CONNS_NEW`, the new-flow tier in front of `CONNS`.
    pub fn conntrack_new_size(&self) -> u32 {
        anycast_common::conntrack_new_size(self.conntrack_size)
    }
}

/// The loaded object (program loaded into the kernel, not attached) and the map bookkeeping.
pub struct Dataplane {
    ebpf: aya::Ebpf,
    publisher: Publisher,
}

impl Dataplane {
    /// Loads [`crate::EBPF_OBJECT`] with the maps sized from `config` and loads the XDP program
    /// into the kernel. Needs CAP_BPF (root).
    pub fn load(config: &Config) -> Result<Self, DataplaneError> {
        Self::load_object(crate::EBPF_OBJECT, Geometry::of(config))
    }

    /// Loads `object` with every log level of the program on (see [`crate::dataplane::program_log`]).
    pub fn load_object(object: &[u8], geometry: Geometry) -> Result<Self, DataplaneError> {
        Self::load_object_adopting(
            object,
            geometry,
            &[],
            crate::dataplane::program_log::ALL_LEVELS,
        )
    }

    /// Like [`Dataplane::load_object`], but the maps named in `adopt` are not created: the
    /// pinned maps at the given paths are used instead (their layout checked beforehand, see
    /// [`crate::dataplane::pins`]). Publishing state is not learnt here: see [`Dataplane::adopt_maps`].
    /// `log_level` is the program's aya-log level (`AYA_LOG_LEVEL`, read-only once loaded: the
    /// verifier drops the log calls above it; 0 = none, see
    /// [`crate::dataplane::program_log::program_level`]).
    pub fn load_object_adopting(
        object: &[u8],
        geometry: Geometry,
        adopt: &[(String, PathBuf)],
        log_level: u8,
    ) -> Result<Self, DataplaneError> {
        assert!(geometry.ring_size <= MAX_RING_SIZE);
        let mut loader = aya::EbpfLoader::new();
        for (name, path) in adopt {
            loader.map_pin_path(name.as_str(), path.as_path());
        }
        let ebpf = loader
            .override_global(aya_log::LEVEL, &log_level, true)
            .map_max_entries(map_names::RINGS, geometry.ring_entries())
            .map_max_entries(map_names::VIPS, geometry.max_vips)
            .map_max_entries(map_names::VIP_STATS, geometry.max_vips)
            .map_max_entries(map_names::BACKENDS, geometry.max_backends)
            .map_max_entries(map_names::BACKEND_STATS, geometry.max_backends)
            .map_max_entries(map_names::NEXTHOPS, geometry.max_backends)
            .map_max_entries(map_names::CONNS, geometry.conntrack_size)
            .map_max_entries(map_names::CONNS_NEW, geometry.conntrack_new_size())
            .load(object)
            .map_err(DataplaneError::Load)?;
        let mut dp = Self {
            ebpf,
            publisher: Publisher::new(geometry),
        };
        dp.program_mut_unloaded()?
            .load()
            .map_err(|source| DataplaneError::Program {
                what: "loading into the kernel".into(),
                source,
            })?;
        Ok(dp)
    }

    fn program_mut_unloaded(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let p = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DataplaneError::MissingProgram)?;
        p.try_into().map_err(|source| DataplaneError::Program {
            what: "is not an XDP program".into(),
            source,
        })
    }

    /// The XDP program, loaded into the kernel, ready for `attach` or `test_run`.
    pub fn program_mut(&mut self) -> Result<&mut Xdp, DataplaneError> {
        self.program_mut_unloaded()
    }

    /// Teaches the publisher what adopted maps hold (see [`Publisher::adopt`]).
    pub fn adopt_maps(&mut self) -> Result<MapSnapshot, DataplaneError> {
        let snap = snapshot(&self.ebpf, self.publisher.geometry())?;
        self.publisher.adopt(&snap);
        Ok(snap)
    }

    pub fn ebpf(&self) -> &aya::Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut aya::Ebpf {
        &mut self.ebpf
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Writes the maps for `config` with `local` as this host's addresses (backends among them
    /// are delivered locally; tunnels addressed to them are decapsulated).
    pub fn apply(
        &mut self,
        config: &Config,
        local: &BTreeSet<IpAddr>,
    ) -> Result<ApplyReport, DataplaneError> {
        let desired = DesiredState::new(config, local)?;
        self.apply_state(&desired)
    }

    pub fn apply_state(&mut self, desired: &DesiredState) -> Result<ApplyReport, DataplaneError> {
        let Self { ebpf, publisher } = self;
        publisher.apply(&mut AyaMaps { ebpf }, desired)
    }

    /// Outcome counters and per-VIP / per-backend traffic, summed over CPUs.
    pub fn read_stats(&self) -> Result<Stats, DataplaneError> {
        stats::read(
            |name| self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name)),
            &self.publisher.id_map(),
        )
    }

    /// Pins every map as `dir/maps/<NAME>` (see [`crate::dataplane::pins`]), replacing stale pins.
    pub fn pin_maps(&self, dir: &Path) -> Result<(), DataplaneError> {
        let dir = &crate::dataplane::pins::PinLayout::new(dir).maps_dir();
        std::fs::create_dir_all(dir).map_err(|source| {
            DataplaneError::Io(IoError {
                what: "creating the pin directory (is bpffs mounted at /sys/fs/bpf?)",
                path: dir.into(),
                source,
            })
        })?;
        unpin_maps(dir)?;
        for name in ALL_MAPS {
            let map = self
                .ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap(name))?;
            let path = dir.join(name);
            map.pin(&path)
                .map_err(|source| DataplaneError::Pin { name, path, source })?;
        }
        Ok(())
    }
}

/// Removes the pins [`Dataplane::pin_maps`] creates (missing ones are fine), and `dir/maps` if
/// empty.
pub fn unpin_maps(dir: &Path) -> Result<(), DataplaneError> {
    let layout = crate::dataplane::pins::PinLayout::new(dir);
    for name in ALL_MAPS {
        let path = layout.map(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DataplaneError::Io(IoError {
                    what: "removing stale pin",
                    path,
                    source,
                }));
            }
        }
    }
    let _ = std::fs::remove_dir(layout.maps_dir());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigBuilder, VipBuilder};

    /// Three VIPs over GUE: the reference VIP (weights 1 and 2), an IPv6 all-ports VIP with an
    /// IPv4 and an IPv6 backend, and a VIP whose only backend has weight 0.
    fn cfg_text() -> String {
        ConfigBuilder::reference()
            .agent("encapsulation", "gue")
            .agent("gue_port", 7000)
            .agent("ring_size", 101)
            .agent("max_vips", 4)
            .agent("max_backends", 8)
            .vips([
                VipBuilder::new("203.0.113.10", 80, "tcp")
                    .backends(&[("198.18.10.2", 1), ("198.18.10.3", 2)]),
                VipBuilder::new("2001:db8::10", 0, "udp")
                    .backends(&[("198.18.10.2", 1), ("fd00::10:2", 1)]),
                VipBuilder::new("203.0.113.11", 53, "udp").backend("198.18.10.9", 0),
            ])
            .toml()
    }

    fn setup(cfg: &str, local: &[&str]) -> (Config, BTreeSet<IpAddr>, Publisher, MemoryMaps) {
        let c = Config::parse(cfg).unwrap();
        let local: BTreeSet<IpAddr> = local.iter().map(|s| s.parse().unwrap()).collect();
        let p = Publisher::new(Geometry::of(&c));
        (c, local, p, MemoryMaps::default())
    }

    fn first_vip_op(j: &[MapOp]) -> usize {
        j.iter()
            .position(|o| matches!(o, MapOp::SetVip(..)))
            .unwrap()
    }

    #[test]
    fn no_port0_promise_is_withdrawn_before_a_port0_vip_and_given_after_the_last_one_left() {
        let without = cfg_text().replace("port = 0\n", "port = 5353\n");
        let local_addrs = ["198.18.10.2", "198.18.1.2"];
        let (c0, local, mut p, mut m) = setup(&without, &local_addrs);
        let c1 = Config::parse(&cfg_text()).unwrap();
        p.apply(&mut m, &DesiredState::new(&c0, &local).unwrap())
            .unwrap();
        let promise = |m: &MemoryMaps| m.config.unwrap().flags & CFG_F_NO_PORT0_VIPS != 0;
        assert!(promise(&m), "no port-0 VIP configured");
        let pos = |j: &[MapOp], f: &dyn Fn(&MapOp) -> bool| j.iter().position(f).unwrap();
        let port0 =
            |o: &MapOp| matches!(o, MapOp::SetVip(k, _) | MapOp::RemoveVip(k) if k.port_be == 0);

        m.journal.clear();
        p.apply(&mut m, &DesiredState::new(&c1, &local).unwrap())
            .unwrap();
        assert!(!promise(&m));
        let config_at = pos(&m.journal, &|o| matches!(o, MapOp::Config));
        assert!(config_at < pos(&m.journal, &port0), "{:?}", m.journal);

        m.journal.clear();
        p.apply(&mut m, &DesiredState::new(&c0, &local).unwrap())
            .unwrap();
        assert!(promise(&m));
        let config_at = pos(&m.journal, &|o| matches!(o, MapOp::Config));
        assert!(pos(&m.journal, &port0) < config_at, "{:?}", m.journal);

        // Unchanged: nothing written.
        m.journal.clear();
        p.apply(&mut m, &DesiredState::new(&c0, &local).unwrap())
            .unwrap();
        assert!(!m.journal.iter().any(|o| matches!(o, MapOp::Config)));
    }

    #[test]
    fn writes_everything_and_vips_last() {
        let (c, local, mut p, mut m) = setup(&cfg_text(), &["198.18.10.2", "198.18.1.2"]);
        let r = p
            .apply(&mut m, &DesiredState::new(&c, &local).unwrap())
            .unwrap();
        let j = &m.journal;
        let first_vip = first_vip_op(j);
        for (i, op) in j.iter().enumerate() {
            if matches!(
                op,
                MapOp::Config | MapOp::Backend(_) | MapOp::InsertLocal(_) | MapOp::InsertDecap(_)
            ) {
                assert!(i < first_vip, "{op:?} after the first VIP update");
            }
        }
        let cfg = m.config.unwrap();
        assert_eq!(cfg.ring_size, 101);
        assert_eq!(cfg.hash_seed, 42);
        assert_eq!(cfg.encap, ENCAP_GUE);
        assert_eq!(u16::from_be(cfg.gue_port_be), 7000);
        assert_eq!(cfg.flags, CFG_F_HAS_SRC_V4 | CFG_F_HAS_SRC_V6);
        assert_eq!(cfg.tunnel_src_v4_be, [198, 18, 1, 2]);
        // 4 distinct backends, one local.
        assert_eq!(m.backends.len(), 4);
        let id = p.backend_id("198.18.10.2".parse().unwrap()).unwrap();
        assert_eq!(m.backends[&id].flags, BACKEND_F_LOCAL);
        let id3 = p.backend_id("198.18.10.3".parse().unwrap()).unwrap();
        assert_eq!(m.backends[&id3].flags, 0);
        assert_eq!(m.local_addrs.len(), 2);
        assert_eq!(m.decap.len(), 2);
        assert_eq!(m.vips.len(), 3);
        assert_eq!(r.vips.len(), 3);
        // The drained-only VIP has no table.
        let k = vip_key("203.0.113.11".parse().unwrap(), 53, 17);
        assert_eq!(m.vips[&k].table, NO_TABLE);
        // Every slot of a live table resolves to a configured backend of that VIP, matching the model.
        let k = vip_key("203.0.113.10".parse().unwrap(), 80, 6);
        let v = m.vips[&k];
        assert_eq!(v.prev_table, NO_TABLE);
        assert!(v.table / TABLES_PER_VIP == v.vip_id);
        let t = vip_table(&c.vips[0], 101, 42);
        for s in 0..101 {
            assert_eq!(
                m.backend_at(101, v.table, s),
                Some(t.backends[t.slots[s as usize] as usize].address())
            );
        }
    }

    #[test]
    fn table_is_written_before_it_is_published() {
        let (c, local, mut p, mut m) = setup(&cfg_text(), &[]);
        p.apply(&mut m, &DesiredState::new(&c, &local).unwrap())
            .unwrap();
        let mut ring_seen = BTreeSet::new();
        for op in &m.journal {
            match op {
                MapOp::Ring { first, count } => {
                    assert_eq!(*count, 101, "a fresh table is written whole");
                    ring_seen.insert(first / 101);
                }
                MapOp::SetVip(_, v) if v.table != NO_TABLE => assert!(ring_seen.contains(&v.table)),
                _ => {}
            }
        }
    }

    #[test]
    fn reapplying_the_same_state_writes_nothing() {
        let (c, local, mut p, mut m) = setup(&cfg_text(), &[]);
        let d = DesiredState::new(&c, &local).unwrap();
        p.apply(&mut m, &d).unwrap();
        let n = m.journal.len();
        let r = p.apply(&mut m, &d).unwrap();
        assert_eq!(m.journal.len(), n, "{:?}", &m.journal[n..]);
        assert!(r.vips.iter().all(|v| !v.changed));
    }

    #[test]
    fn a_change_goes_to_a_free_table_and_keeps_the_previous_one() {
        let (c, local, mut p, mut m) = setup(&cfg_text(), &[]);
        p.apply(&mut m, &DesiredState::new(&c, &local).unwrap())
            .unwrap();
        let k = vip_key("203.0.113.10".parse().unwrap(), 80, 6);
        let v1 = m.vips[&k];
        let mut tables = vec![v1.table];
        let mut prev = v1;
        for (i, w) in [3, 1, 4, 1].into_iter().enumerate() {
            let c2 = Config::parse(&cfg_text().replacen("weight = 2", &format!("weight = {w}"), 1))
                .unwrap();
            m.journal.clear();
            p.apply(&mut m, &DesiredState::new(&c2, &local).unwrap())
                .unwrap();
            let v = m.vips[&k];
            assert_eq!(v.vip_id, v1.vip_id);
            assert_eq!(v.prev_table, prev.table, "round {i}");
            assert_ne!(v.table, prev.table);
            assert_ne!(
                v.table, prev.prev_table,
                "round {i}: overwrote the previous table"
            );
            assert_eq!(v.table / TABLES_PER_VIP, v.vip_id);
            // Only this VIP was republished, and only after its ring writes.
            let sets: Vec<_> = m
                .journal
                .iter()
                .filter(|o| matches!(o, MapOp::SetVip(..)))
                .collect();
            assert_eq!(sets.len(), 1);
            assert!(matches!(m.journal.last(), Some(MapOp::SetVip(..))));
            tables.push(v.table);
            prev = v;
        }
        // Reused table numbers get only the differing entries written.
        let c2 = Config::parse(&cfg_text()).unwrap();
        m.journal.clear();
        p.apply(&mut m, &DesiredState::new(&c2, &local).unwrap())
            .unwrap();
        let written: usize = m
            .journal
            .iter()
            .map(|o| {
                if let MapOp::Ring { count, .. } = o {
                    *count
                } else {
                    0
                }
            })
            .sum();
        assert!(written < 101, "rewrote {written} entries of a reused table");
    }

    #[test]
    fn removed_vips_and_backends_are_released() {
        let (c, local, mut p, mut m) = setup(&cfg_text(), &[]);
        p.apply(&mut m, &DesiredState::new(&c, &local).unwrap())
            .unwrap();
        let id3 = p.backend_id("198.18.10.3".parse().unwrap()).unwrap();
        // Drop VIP 0 (the only one using 198.18.10.3).
        let start = cfg_text().find("[[vip]]").unwrap();
        let second = start + 1 + cfg_text()[start + 1..].find("[[vip]]").unwrap();
        let cfg2 = format!("{}{}", &cfg_text()[..start], &cfg_text()[second..]);
        let c2 = Config::parse(&cfg2).unwrap();
        let r = p
            .apply(&mut m, &DesiredState::new(&c2, &local).unwrap())
            .unwrap();
        assert_eq!(r.removed_vips, vec!["203.0.113.10:80/tcp".to_string()]);
        assert_eq!(m.vips.len(), 2);
        assert!(p.backend_id("198.18.10.3".parse().unwrap()).is_none());
        // The freed id goes to the next new backend; the VIP id too.
        let c3 = Config::parse(&cfg2.replace("198.18.10.9", "198.18.10.7")).unwrap();
        p.apply(&mut m, &DesiredState::new(&c3, &local).unwrap())
            .unwrap();
        let ids: BTreeSet<u32> = p.id_map().backends.iter().map(|b| b.0).collect();
        assert!(ids.len() == 3 && ids.iter().all(|&i| i < 8));
        let _ = id3;
    }

    #[test]
    fn an_id_stays_reserved_while_a_previous_table_uses_it() {
        let (c, local, mut p, mut m) = setup(&cfg_text(), &[]);
        p.apply(&mut m, &DesiredState::new(&c, &local).unwrap())
            .unwrap();
        let id3 = p.backend_id("198.18.10.3".parse().unwrap()).unwrap();
        // Remove backend 198.18.10.3 from VIP 0 but keep the VIP: the previous table still has it.
        let c2 = Config::parse(&cfg_text().replacen(
            "[[vip.backend]]\naddress = \"198.18.10.3\"\nweight = 2\n",
            "",
            1,
        ))
        .unwrap();
        p.apply(&mut m, &DesiredState::new(&c2, &local).unwrap())
            .unwrap();
        assert_eq!(p.backend_id("198.18.10.3".parse().unwrap()), Some(id3));
        // One more change pushes that table out of prev_table: now it is released.
        let c3 = Config::parse(&cfg_text().replacen(
            "[[vip.backend]]\naddress = \"198.18.10.3\"\nweight = 2\n",
            "[[vip.backend]]\naddress = \"198.18.10.4\"\nweight = 1\n",
            1,
        ))
        .unwrap();
        p.apply(&mut m, &DesiredState::new(&c3, &local).unwrap())
            .unwrap();
        assert_eq!(p.backend_id("198.18.10.3".parse().unwrap()), None);
    }

    #[test]
    fn local_addresses_and_prefixes_follow_the_desired_state() {
        let (c, _, mut p, mut m) = setup(&cfg_text(), &[]);
        let l1: BTreeSet<IpAddr> =
            ["198.18.10.2".parse().unwrap(), "fd00::1:2".parse().unwrap()].into();
        p.apply(&mut m, &DesiredState::new(&c, &l1).unwrap())
            .unwrap();
        let l2: BTreeSet<IpAddr> = ["198.18.10.3".parse().unwrap()].into();
        p.apply(&mut m, &DesiredState::new(&c, &l2).unwrap())
            .unwrap();
        assert_eq!(m.local_addrs.len(), 1);
        let id2 = p.backend_id("198.18.10.2".parse().unwrap()).unwrap();
        let id3 = p.backend_id("198.18.10.3".parse().unwrap()).unwrap();
        assert_eq!(m.backends[&id2].flags, 0);
        assert_eq!(m.backends[&id3].flags, BACKEND_F_LOCAL);
    }

    #[test]
    fn an_adopting_publisher_rewrites_nothing_for_the_same_config() {
        let (c, local, mut p, mut m) = setup(&cfg_text(), &["198.18.10.2"]);
        let d = DesiredState::new(&c, &local).unwrap();
        p.apply(&mut m, &d).unwrap();
        // A second change, so that prev_table is in use too.
        let c2 = Config::parse(&cfg_text().replacen("weight = 2", "weight = 3", 1)).unwrap();
        let d2 = DesiredState::new(&c2, &local).unwrap();
        p.apply(&mut m, &d2).unwrap();
        let before = (m.vips.clone(), m.backends.clone());

        let mut q = Publisher::new(Geometry::of(&c2));
        q.adopt(&m.snapshot(101));
        m.journal.clear();
        let r = q.apply(&mut m, &d2).unwrap();
        assert!(m.journal.is_empty(), "{:?}", m.journal);
        assert!(r.vips.iter().all(|v| !v.changed));
        assert_eq!((m.vips.clone(), m.backends.clone()), before);
        assert_eq!(q.id_map(), p.id_map());

        // A change after adoption goes to the table that is neither live nor previous.
        let k = vip_key("203.0.113.10".parse().unwrap(), 80, 6);
        let v = m.vips[&k];
        q.apply(&mut m, &d).unwrap();
        let w = m.vips[&k];
        assert_eq!(w.prev_table, v.table);
        assert!(w.table != v.table && w.table != v.prev_table);
        // New backends get ids the adopted ones do not use, with a newer generation.
        let c3 = Config::parse(&cfg_text().replace("198.18.10.9", "198.18.10.7")).unwrap();
        q.apply(&mut m, &DesiredState::new(&c3, &local).unwrap())
            .unwrap();
        let id7 = q.backend_id("198.18.10.7".parse().unwrap()).unwrap();
        let gens: Vec<u16> = m.backends.values().map(|b| b.generation).collect();
        assert_eq!(m.backends[&id7].generation, *gens.iter().max().unwrap());
        assert_eq!(
            m.backends.values().filter(|b| b.family != 0).count(),
            m.backends
                .values()
                .filter(|b| b.family != 0)
                .map(|b| b.addr_be)
                .collect::<BTreeSet<_>>()
                .len()
        );
    }

    #[test]
    fn ring_size_cannot_change_after_load() {
        let (c, local, mut p, mut m) = setup(&cfg_text(), &[]);
        p.apply(&mut m, &DesiredState::new(&c, &local).unwrap())
            .unwrap();
        let c2 = Config::parse(&cfg_text().replace("ring_size = 101", "ring_size = 103")).unwrap();
        let e = p
            .apply(&mut m, &DesiredState::new(&c2, &local).unwrap())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("agent.ring_size changed from 101 to 103"),
            "{e}"
        );
    }

    #[test]
    fn desired_state_needs_tunnel_sources_for_remote_backends() {
        let c =
            Config::parse(&cfg_text().replace("tunnel_source_v6 = \"fd00::1:2\"\n", "")).unwrap();
        let e = DesiredState::new(&c, &BTreeSet::new()).unwrap_err();
        assert!(e.to_string().contains("agent.tunnel_source_v6"), "{e}");
        let local: BTreeSet<IpAddr> = ["fd00::10:2".parse().unwrap()].into();
        assert!(DesiredState::new(&c, &local).is_ok());
    }
}
