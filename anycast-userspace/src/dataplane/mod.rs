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
pub mod migrate;
pub mod pins;
pub mod program_log;
pub mod stats;

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
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
}

/// One VIP as it should be in the dataplane.
#[derive(Clone, Debug)]
pub struct DesiredVip {
    pub key: VipKey,
    /// `203.0.113.10:80/tcp`, for logs and the state file.
    pub label: String,
    pub table: VipTable,
    /// How long the Maglev build took.
    pub build_time: Duration,
}

/// Everything the maps should hold, computed from a validated config and this host's addresses.
#[derive(Clone, Debug)]
pub struct DesiredState {
    pub geometry: Geometry,
    pub config: DataplaneConfig,
    /// Every backend address of every VIP, and whether it is local.
    pub backends: BTreeMap<IpAddr, bool>,
    pub local_addrs: BTreeSet<IpAddr>,
    pub decap_allow: BTreeSet<IpNet>,
    pub vips: Vec<DesiredVip>,
}

/// The dataplane's (family, 16-byte address) form of `a`.
pub fn addr_key_of(a: IpAddr) -> AddrKey {
    match a {
        IpAddr::V4(a) => AddrKey::v4(a.octets()),
        IpAddr::V6(a) => AddrKey::v6(a.octets()),
    }
}

pub fn vip_key(address: IpAddr, port: u16, proto: u8) -> VipKey {
    match address {
        IpAddr::V4(a) => VipKey::v4(a.octets(), port, proto),
        IpAddr::V6(a) => VipKey::v6(a.octets(), port, proto),
    }
}

impl DesiredState {
    /// Runs [`Config::check_local`] (remote backends need a tunnel source of their family) and
    /// builds every VIP's table.
    pub fn new(config: &Config, local: &BTreeSet<IpAddr>) -> Result<Self, ConfigError> {
        config.check_local(local)?;
        let a = &config.agent;
        let mut flags = 0;
        if a.tunnel_source.is_some() {
            flags |= CFG_F_HAS_SRC_V4;
        }
        if a.tunnel_source_v6.is_some() {
            flags |= CFG_F_HAS_SRC_V6;
        }
        if config.vips.iter().all(|v| v.port != 0) {
            flags |= CFG_F_NO_PORT0_VIPS;
        }
        let dp_config = DataplaneConfig {
            tunnel_src_v4_be: a.tunnel_source.map(|s| s.octets()).unwrap_or_default(),
            tunnel_src_v6_be: a.tunnel_source_v6.map(|s| s.octets()).unwrap_or_default(),
            ring_size: a.ring_size,
            hash_seed: a.hash_seed,
            gue_port_be: a.gue_port.to_be(),
            encap: match a.encapsulation {
                Encapsulation::Ipip => ENCAP_IPIP,
                Encapsulation::Gue => ENCAP_GUE,
            },
            flags,
            conn_udp_timeout_s: a.conntrack_udp_timeout_s,
            conn_insert_limit: a.conntrack_insert_limit,
        };
        let backends = config
            .vips
            .iter()
            .flat_map(|v| {
                v.backends
                    .iter()
                    .map(|b| (b.address, local.contains(&b.address)))
            })
            .collect();
        let vips = config
            .vips
            .iter()
            .map(|v| {
                let start = Instant::now();
                let table = vip_table(v, a.ring_size, a.hash_seed);
                DesiredVip {
                    key: vip_key(v.address, v.port, v.protocol.number()),
                    label: v.label(),
                    table,
                    build_time: start.elapsed(),
                }
            })
            .collect();
        Ok(Self {
            geometry: Geometry::of(config),
            config: dp_config,
            backends,
            local_addrs: local.clone(),
            decap_allow: a.decap_allow.iter().copied().collect(),
            vips,
        })
    }
}

/// The map operations the agent needs; see the module docs for the order they are called in.
pub trait MapWriter {
    fn set_config(&mut self, config: &DataplaneConfig) -> Result<(), DataplaneError>;
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError>;
    /// `(index into RINGS, backend id)` pairs.
    fn set_ring_entries(&mut self, entries: &[(u32, u32)]) -> Result<(), DataplaneError>;
    fn insert_local_addr(&mut self, key: &AddrKey) -> Result<(), DataplaneError>;
    fn remove_local_addr(&mut self, key: &AddrKey) -> Result<(), DataplaneError>;
    fn insert_decap_prefix(&mut self, net: &IpNet) -> Result<(), DataplaneError>;
    fn remove_decap_prefix(&mut self, net: &IpNet) -> Result<(), DataplaneError>;
    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), DataplaneError>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError>;
}

#[derive(Clone, Debug)]
struct VipEntry {
    value: VipValue,
    label: String,
}

/// What one [`Publisher::apply`] did, for logging.
#[derive(Clone, Debug, Default)]
pub struct ApplyReport {
    pub vips: Vec<VipReport>,
    pub removed_vips: Vec<String>,
    pub backends_written: usize,
    pub ring_entries_written: usize,
}

#[derive(Clone, Debug)]
pub struct VipReport {
    pub label: String,
    pub vip_id: u32,
    /// Live table number, or `NO_TABLE`.
    pub table: u32,
    pub backends: usize,
    pub weighted_backends: usize,
    /// False when the table was already live and nothing was written for this VIP.
    pub changed: bool,
    pub build_time: Duration,
}

/// An id -> thing map for `anycast stats`, written by the agent as JSON (see [`crate::dataplane::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMap {
    pub vips: Vec<(u32, String)>,
    pub backends: Vec<(u32, IpAddr, bool)>,
}

/// The bookkeeping behind [`MapWriter`] calls: ids, live tables, shadow copies of the tables.
#[derive(Debug)]
pub struct Publisher {
    geometry: Geometry,
    config: Option<DataplaneConfig>,
    backend_ids: BTreeMap<IpAddr, u32>,
    backends_written: HashMap<u32, Backend>,
    free_backend_ids: BTreeSet<u32>,
    /// Generation of each backend id in use (see `Backend::generation`).
    generations: BTreeMap<u32, u16>,
    generation: u16,
    vips: BTreeMap<VipKey, VipEntry>,
    free_vip_ids: BTreeSet<u32>,
    local_addrs: BTreeSet<IpAddr>,
    decap: BTreeSet<IpNet>,
    /// Backend ids last written into each table number.
    shadow: HashMap<u32, Vec<u32>>,
}

impl Publisher {
    pub fn new(geometry: Geometry) -> Self {
        Self {
            geometry,
            config: None,
            backend_ids: BTreeMap::new(),
            backends_written: HashMap::new(),
            free_backend_ids: (0..geometry.max_backends).collect(),
            generations: BTreeMap::new(),
            generation: 0,
            vips: BTreeMap::new(),
            free_vip_ids: (0..geometry.max_vips).collect(),
            local_addrs: BTreeSet::new(),
            decap: BTreeSet::new(),
            shadow: HashMap::new(),
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn backend_id(&self, address: IpAddr) -> Option<u32> {
        self.backend_ids.get(&address).copied()
    }

    pub fn vip_value(&self, key: &VipKey) -> Option<VipValue> {
        self.vips.get(key).map(|e| e.value)
    }

    pub fn id_map(&self) -> IdMap {
        let mut vips: Vec<_> = self
            .vips
            .values()
            .map(|e| (e.value.vip_id, e.label.clone()))
            .collect();
        vips.sort();
        let backends = self
            .backend_ids
            .iter()
            .map(|(a, id)| {
                (
                    *id,
                    *a,
                    self.backends_written
                        .get(id)
                        .is_some_and(|b| b.flags & BACKEND_F_LOCAL != 0),
                )
            })
            .collect();
        IdMap { vips, backends }
    }

    /// Takes over maps another agent wrote (a restart or an upgrade adopting pinned maps): the
    /// ids, generations, live and previous tables and sets are learnt from `snap`, so that the
    /// next [`Publisher::apply`] of an unchanged config writes nothing and moves no flow.
    /// Backend ids and generations are kept, which keeps connection-tracking entries valid.
    pub fn adopt(&mut self, snap: &MapSnapshot) {
        let g = self.geometry;
        self.config = snap.config;
        for (&id, b) in &snap.backends {
            if b.family == 0 || id >= g.max_backends {
                continue;
            }
            let addr = crate::plan::maglev::key_addr(b.family, b.addr_be);
            self.free_backend_ids.remove(&id);
            self.backends_written.insert(id, *b);
            self.generations.insert(id, b.generation);
            self.generation = self.generation.max(b.generation);
            // Two ids for one address cannot come from this publisher; keep the lowest, and
            // the other stays reserved until `apply` finds it unreferenced.
            self.backend_ids.entry(addr).or_insert(id);
        }
        for (key, value) in &snap.vips {
            if value.vip_id >= g.max_vips {
                continue;
            }
            self.free_vip_ids.remove(&value.vip_id);
            self.vips.insert(
                *key,
                VipEntry {
                    value: *value,
                    label: label_of_key(key),
                },
            );
        }
        self.shadow.extend(
            snap.tables
                .iter()
                .filter(|(_, ids)| ids.len() == g.ring_size as usize)
                .map(|(t, ids)| (*t, ids.clone())),
        );
        self.local_addrs = snap.local_addrs.clone();
        self.decap = snap.decap.clone();
    }

    /// Brings the maps from what this publisher last wrote to `desired`.
    pub fn apply(
        &mut self,
        maps: &mut dyn MapWriter,
        desired: &DesiredState,
    ) -> Result<ApplyReport, DataplaneError> {
        let g = self.geometry;
        for (field, loaded, wanted) in [
            ("agent.ring_size", g.ring_size, desired.geometry.ring_size),
            ("agent.max_vips", g.max_vips, desired.geometry.max_vips),
            (
                "agent.max_backends",
                g.max_backends,
                desired.geometry.max_backends,
            ),
        ] {
            if loaded != wanted {
                return Err(DataplaneError::Geometry {
                    field,
                    loaded,
                    wanted,
                });
            }
        }
        if desired.vips.len() > g.max_vips as usize {
            return Err(DataplaneError::Capacity(format!(
                "{} VIPs, more than max_vips = {}",
                desired.vips.len(),
                g.max_vips
            )));
        }
        if desired.local_addrs.len() > anycast_common::MAX_LOCAL_ADDRS as usize {
            return Err(DataplaneError::Capacity(format!(
                "this host has {} addresses, more than the dataplane's {} LOCAL_ADDRS entries",
                desired.local_addrs.len(),
                anycast_common::MAX_LOCAL_ADDRS
            )));
        }
        let mut report = ApplyReport::default();

        // The "no port-0 VIP" promise holds in the maps only while it holds for both the old and
        // the new VIP set: it is withdrawn here, before a port-0 VIP is written, and given at the
        // end, after the last one is removed.
        let mut early = desired.config;
        if self
            .config
            .is_none_or(|c| c.flags & CFG_F_NO_PORT0_VIPS == 0)
        {
            early.flags &= !CFG_F_NO_PORT0_VIPS;
        }
        if self.config != Some(early) {
            maps.set_config(&early)?;
            self.config = Some(early);
        }

        // Backends: ids for new addresses first, so that tables can refer to them.
        for (&addr, &local) in &desired.backends {
            let id = match self.backend_ids.get(&addr) {
                Some(&id) => id,
                None => {
                    let id = self.free_backend_ids.pop_first().ok_or_else(|| {
                        DataplaneError::Capacity(format!(
                            "no free backend id for {addr} (max_backends = {})",
                            g.max_backends
                        ))
                    })?;
                    self.backend_ids.insert(addr, id);
                    self.generation = self.generation.wrapping_add(1).max(1);
                    self.generations.insert(id, self.generation);
                    id
                }
            };
            let (family, addr_be) = addr_key(addr);
            let b = Backend {
                addr_be,
                family,
                flags: if local { BACKEND_F_LOCAL } else { 0 },
                generation: self.generations.get(&id).copied().unwrap_or(1),
            };
            if self.backends_written.get(&id) != Some(&b) {
                maps.set_backend(id, &b)?;
                self.backends_written.insert(id, b);
                report.backends_written += 1;
            }
        }

        for a in desired.local_addrs.difference(&self.local_addrs.clone()) {
            maps.insert_local_addr(&addr_key_of(*a))?;
            self.local_addrs.insert(*a);
        }
        for a in self.local_addrs.clone().difference(&desired.local_addrs) {
            maps.remove_local_addr(&addr_key_of(*a))?;
            self.local_addrs.remove(a);
        }
        for n in desired.decap_allow.difference(&self.decap.clone()) {
            maps.insert_decap_prefix(n)?;
            self.decap.insert(*n);
        }
        for n in self.decap.clone().difference(&desired.decap_allow) {
            maps.remove_decap_prefix(n)?;
            self.decap.remove(n);
        }

        let m = g.ring_size;
        for v in &desired.vips {
            let ids: Vec<u32> = v
                .table
                .slots
                .iter()
                .map(|&i| self.backend_ids[&v.table.backends[i as usize].address()])
                .collect();
            let existing = self.vips.get(&v.key).cloned();
            let (vip_id, live, prev) = match &existing {
                Some(e) => (e.value.vip_id, e.value.table, e.value.prev_table),
                None => {
                    let id = self.free_vip_ids.pop_first().ok_or_else(|| {
                        DataplaneError::Capacity(format!("no free VIP id for {}", v.label))
                    })?;
                    (id, NO_TABLE, NO_TABLE)
                }
            };
            let unchanged = existing.is_some()
                && if ids.is_empty() {
                    live == NO_TABLE
                } else {
                    live != NO_TABLE && self.shadow.get(&live) == Some(&ids)
                };
            let weighted = v.table.backends.iter().filter(|b| b.weight > 0).count();
            if unchanged {
                if let Some(e) = self.vips.get_mut(&v.key) {
                    e.label.clone_from(&v.label);
                }
                report.vips.push(VipReport {
                    label: v.label.clone(),
                    vip_id,
                    table: live,
                    backends: v.table.backends.len(),
                    weighted_backends: weighted,
                    changed: false,
                    build_time: v.build_time,
                });
                continue;
            }
            let new_table = if ids.is_empty() {
                NO_TABLE
            } else {
                let t = (vip_id * TABLES_PER_VIP..(vip_id + 1) * TABLES_PER_VIP)
                    .find(|&t| t != live && t != prev)
                    .expect("three tables per VIP, at most two in use");
                let base = t * m;
                let old = self.shadow.get(&t);
                let entries: Vec<(u32, u32)> = ids
                    .iter()
                    .enumerate()
                    .filter(|&(i, id)| old.is_none_or(|o| o[i] != *id))
                    .map(|(i, &id)| (base + i as u32, id))
                    .collect();
                maps.set_ring_entries(&entries)?;
                report.ring_entries_written += entries.len();
                self.shadow.insert(t, ids);
                t
            };
            let value = VipValue {
                vip_id,
                table: new_table,
                prev_table: live,
                flags: 0,
            };
            maps.set_vip(&v.key, &value)?;
            self.vips.insert(
                v.key,
                VipEntry {
                    value,
                    label: v.label.clone(),
                },
            );
            report.vips.push(VipReport {
                label: v.label.clone(),
                vip_id,
                table: new_table,
                backends: v.table.backends.len(),
                weighted_backends: weighted,
                changed: true,
                build_time: v.build_time,
            });
        }

        let wanted: BTreeSet<VipKey> = desired.vips.iter().map(|v| v.key).collect();
        let gone: Vec<VipKey> = self
            .vips
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for k in gone {
            maps.remove_vip(&k)?;
            let e = self.vips.remove(&k).expect("listed above");
            self.free_vip_ids.insert(e.value.vip_id);
            report.removed_vips.push(e.label);
        }

        // Ids of addresses no longer configured are released once no live or previous table
        // can send a packet to them.
        let referenced: BTreeSet<u32> = self
            .vips
            .values()
            .flat_map(|e| [e.value.table, e.value.prev_table])
            .filter(|&t| t != NO_TABLE)
            .filter_map(|t| self.shadow.get(&t))
            .flat_map(|ids| ids.iter().copied())
            .collect();
        let stale: Vec<(IpAddr, u32)> = self
            .backend_ids
            .iter()
            .filter(|(a, id)| !desired.backends.contains_key(a) && !referenced.contains(id))
            .map(|(a, id)| (*a, *id))
            .collect();
        for (a, id) in stale {
            // A zeroed record (family 0) tells the program that tracked connections still
            // pointing at this id have lost their backend.
            let freed = Backend {
                addr_be: [0; 16],
                family: 0,
                flags: 0,
                generation: 0,
            };
            maps.set_backend(id, &freed)?;
            self.backend_ids.remove(&a);
            self.backends_written.remove(&id);
            self.generations.remove(&id);
            self.free_backend_ids.insert(id);
        }
        if self.config != Some(desired.config) {
            maps.set_config(&desired.config)?;
            self.config = Some(desired.config);
        }
        Ok(report)
    }
}

/// What the maps hold, as far as the [`Publisher`] is concerned: read from pinned maps when an
/// agent adopts them ([`AyaMaps::snapshot`]), or from [`MemoryMaps`] in tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSnapshot {
    pub config: Option<DataplaneConfig>,
    /// Ids in use (`family != 0`).
    pub backends: BTreeMap<u32, Backend>,
    pub vips: BTreeMap<VipKey, VipValue>,
    /// Live and previous tables of every VIP: table number -> backend id per slot.
    pub tables: BTreeMap<u32, Vec<u32>>,
    pub local_addrs: BTreeSet<IpAddr>,
    pub decap: BTreeSet<IpNet>,
}

impl MapSnapshot {
    fn table_numbers(&self) -> BTreeSet<u32> {
        self.vips
            .values()
            .flat_map(|v| [v.table, v.prev_table])
            .filter(|&t| t != NO_TABLE)
            .collect()
    }
}

fn label_of_key(key: &VipKey) -> String {
    let address = crate::plan::maglev::key_addr(key.family, key.addr_be);
    let port = u16::from_be(key.port_be);
    match key.proto {
        anycast_common::PROTO_TCP => {
            crate::config::vip_label(address, port, crate::config::Protocol::Tcp)
        }
        anycast_common::PROTO_UDP => {
            crate::config::vip_label(address, port, crate::config::Protocol::Udp)
        }
        p => format!("{address}:{port}/proto-{p}"),
    }
}

/// Reads what the [`Publisher`] needs to know from a loaded object's maps.
pub fn snapshot(ebpf: &aya::Ebpf, geometry: Geometry) -> Result<MapSnapshot, DataplaneError> {
    let map = |name: &'static str| ebpf.map(name).ok_or(DataplaneError::MissingMap(name));
    let mut snap = MapSnapshot::default();

    let name = map_names::CONFIG;
    let a: Array<_, DataplaneConfig> =
        Array::try_from(map(name)?).map_err(map_err(name, "opening"))?;
    let c = a.get(&0, 0).map_err(map_err(name, "reading entry 0"))?;
    snap.config = (c.ring_size != 0).then_some(c);

    let name = map_names::BACKENDS;
    let a: Array<_, Backend> = Array::try_from(map(name)?).map_err(map_err(name, "opening"))?;
    for id in 0..a.len().min(geometry.max_backends) {
        let b = a
            .get(&id, 0)
            .map_err(map_err(name, format!("reading backend id {id}")))?;
        if b.family != 0 {
            snap.backends.insert(id, b);
        }
    }

    let name = map_names::VIPS;
    let h: BpfHashMap<_, VipKey, VipValue> =
        BpfHashMap::try_from(map(name)?).map_err(map_err(name, "opening"))?;
    for e in h.iter() {
        let (k, v) = e.map_err(map_err(name, "iterating"))?;
        snap.vips.insert(k, v);
    }

    let name = map_names::RINGS;
    let a: Array<_, u32> = Array::try_from(map(name)?).map_err(map_err(name, "opening"))?;
    let m = geometry.ring_size;
    for t in snap.table_numbers() {
        let fd = aya::maps::IterableMap::map(&a).fd().as_fd();
        match crate::dataplane::batch::lookup(fd, t * m, m) {
            Ok(Some(ids)) => {
                snap.tables.insert(t, ids);
                continue;
            }
            Ok(None) => {} // a kernel without batch lookups: one entry at a time
            Err(io_error) => {
                return Err(map_err(name, format!("reading table {t}"))(
                    aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_lookup_batch",
                        io_error,
                    }),
                ));
            }
        }
        let mut ids = Vec::with_capacity(m as usize);
        for s in 0..m {
            let i = t * m + s;
            ids.push(
                a.get(&i, 0)
                    .map_err(map_err(name, format!("reading entry {i}")))?,
            );
        }
        snap.tables.insert(t, ids);
    }

    let name = map_names::LOCAL_ADDRS;
    let h: BpfHashMap<_, AddrKey, u32> =
        BpfHashMap::try_from(map(name)?).map_err(map_err(name, "opening"))?;
    for k in h.keys() {
        let k = k.map_err(map_err(name, "iterating"))?;
        snap.local_addrs
            .insert(crate::plan::maglev::key_addr(k.family, k.addr_be));
    }

    let name = map_names::DECAP_ALLOW_V4;
    let t: LpmTrie<_, [u8; 4], u8> =
        LpmTrie::try_from(map(name)?).map_err(map_err(name, "opening"))?;
    for k in t.keys() {
        let k = k.map_err(map_err(name, "iterating"))?;
        if let Ok(n) = ipnet::Ipv4Net::new(k.data().into(), k.prefix_len() as u8) {
            snap.decap.insert(IpNet::V4(n));
        }
    }
    let name = map_names::DECAP_ALLOW_V6;
    let t: LpmTrie<_, [u8; 16], u8> =
        LpmTrie::try_from(map(name)?).map_err(map_err(name, "opening"))?;
    for k in t.keys() {
        let k = k.map_err(map_err(name, "iterating"))?;
        if let Ok(n) = ipnet::Ipv6Net::new(k.data().into(), k.prefix_len() as u8) {
            snap.decap.insert(IpNet::V6(n));
        }
    }
    Ok(snap)
}

/// One recorded [`MapWriter`] call of [`MemoryMaps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    Config,
    Backend(u32),
    /// A batch of ring writes: (first index, number of entries).
    Ring {
        first: u32,
        count: usize,
    },
    InsertLocal(AddrKey),
    RemoveLocal(AddrKey),
    InsertDecap(IpNet),
    RemoveDecap(IpNet),
    SetVip(VipKey, VipValue),
    RemoveVip(VipKey),
}

/// In-memory maps for tests: the contents plus the journal of calls, in order.
#[derive(Debug, Default)]
pub struct MemoryMaps {
    pub config: Option<DataplaneConfig>,
    pub backends: BTreeMap<u32, Backend>,
    pub rings: HashMap<u32, u32>,
    pub local_addrs: BTreeSet<(u8, [u8; 16])>,
    pub decap: BTreeSet<IpNet>,
    pub vips: BTreeMap<VipKey, VipValue>,
    pub journal: Vec<MapOp>,
}

impl MemoryMaps {
    /// The backend address the program would pick for table `table`, slot `slot`.
    pub fn backend_at(&self, ring_size: u32, table: u32, slot: u32) -> Option<IpAddr> {
        let id = self.rings.get(&(table * ring_size + slot))?;
        let b = self.backends.get(id)?;
        Some(crate::plan::maglev::key_addr(b.family, b.addr_be))
    }
}

impl MemoryMaps {
    pub fn snapshot(&self, ring_size: u32) -> MapSnapshot {
        let mut snap = MapSnapshot {
            config: self.config,
            backends: self
                .backends
                .iter()
                .filter(|(_, b)| b.family != 0)
                .map(|(i, b)| (*i, *b))
                .collect(),
            vips: self.vips.clone(),
            tables: BTreeMap::new(),
            local_addrs: self
                .local_addrs
                .iter()
                .map(|(f, a)| crate::plan::maglev::key_addr(*f, *a))
                .collect(),
            decap: self.decap.clone(),
        };
        for t in snap.table_numbers() {
            let ids = (0..ring_size)
                .map(|s| self.rings.get(&(t * ring_size + s)).copied().unwrap_or(0))
                .collect();
            snap.tables.insert(t, ids);
        }
        snap
    }
}

impl MapWriter for MemoryMaps {
    fn set_config(&mut self, config: &DataplaneConfig) -> Result<(), DataplaneError> {
        self.config = Some(*config);
        self.journal.push(MapOp::Config);
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.backends.insert(id, *backend);
        self.journal.push(MapOp::Backend(id));
        Ok(())
    }
    fn set_ring_entries(&mut self, entries: &[(u32, u32)]) -> Result<(), DataplaneError> {
        for &(i, id) in entries {
            self.rings.insert(i, id);
        }
        self.journal.push(MapOp::Ring {
            first: entries.first().map_or(0, |e| e.0),
            count: entries.len(),
        });
        Ok(())
    }
    fn insert_local_addr(&mut self, key: &AddrKey) -> Result<(), DataplaneError> {
        self.local_addrs.insert((key.family, key.addr_be));
        self.journal.push(MapOp::InsertLocal(*key));
        Ok(())
    }
    fn remove_local_addr(&mut self, key: &AddrKey) -> Result<(), DataplaneError> {
        self.local_addrs.remove(&(key.family, key.addr_be));
        self.journal.push(MapOp::RemoveLocal(*key));
        Ok(())
    }
    fn insert_decap_prefix(&mut self, net: &IpNet) -> Result<(), DataplaneError> {
        self.decap.insert(*net);
        self.journal.push(MapOp::InsertDecap(*net));
        Ok(())
    }
    fn remove_decap_prefix(&mut self, net: &IpNet) -> Result<(), DataplaneError> {
        self.decap.remove(net);
        self.journal.push(MapOp::RemoveDecap(*net));
        Ok(())
    }
    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), DataplaneError> {
        self.vips.insert(*key, *value);
        self.journal.push(MapOp::SetVip(*key, *value));
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        self.vips.remove(key);
        self.journal.push(MapOp::RemoveVip(*key));
        Ok(())
    }
}

/// [`MapWriter`] over the maps of a loaded [`aya::Ebpf`].
pub struct AyaMaps<'a> {
    pub ebpf: &'a mut aya::Ebpf,
}

fn map_mut<'e>(ebpf: &'e mut aya::Ebpf, name: &'static str) -> Result<&'e mut Map, DataplaneError> {
    ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))
}

fn map_err(
    name: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Map { name, what, source }
}

impl AyaMaps<'_> {
    fn decap_trie_insert<const N: usize>(
        &mut self,
        name: &'static str,
        prefix: u32,
        bytes: [u8; N],
        insert: bool,
    ) -> Result<(), DataplaneError> {
        let mut trie: LpmTrie<_, [u8; N], u8> =
            LpmTrie::try_from(map_mut(self.ebpf, name)?).map_err(map_err(name, "opening"))?;
        let key = LpmKey::new(prefix, bytes);
        if insert {
            trie.insert(&key, 1, 0)
                .map_err(map_err(name, "inserting a prefix"))
        } else {
            trie.remove(&key)
                .map_err(map_err(name, "removing a prefix"))
        }
    }

    fn decap(&mut self, net: &IpNet, insert: bool) -> Result<(), DataplaneError> {
        match net {
            IpNet::V4(n) => self.decap_trie_insert(
                map_names::DECAP_ALLOW_V4,
                u32::from(n.prefix_len()),
                n.addr().octets(),
                insert,
            ),
            IpNet::V6(n) => self.decap_trie_insert(
                map_names::DECAP_ALLOW_V6,
                u32::from(n.prefix_len()),
                n.addr().octets(),
                insert,
            ),
        }
    }
}

impl MapWriter for AyaMaps<'_> {
    fn set_config(&mut self, config: &DataplaneConfig) -> Result<(), DataplaneError> {
        let name = map_names::CONFIG;
        let mut a: Array<_, DataplaneConfig> =
            Array::try_from(map_mut(self.ebpf, name)?).map_err(map_err(name, "opening"))?;
        a.set(0, config, 0)
            .map_err(map_err(name, "writing entry 0"))
    }

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError> {
        let name = map_names::BACKENDS;
        let mut a: Array<_, Backend> =
            Array::try_from(map_mut(self.ebpf, name)?).map_err(map_err(name, "opening"))?;
        a.set(id, backend, 0)
            .map_err(map_err(name, format!("writing backend id {id}")))
    }

    fn set_ring_entries(&mut self, entries: &[(u32, u32)]) -> Result<(), DataplaneError> {
        let name = map_names::RINGS;
        let mut a: Array<_, u32> =
            Array::try_from(map_mut(self.ebpf, name)?).map_err(map_err(name, "opening"))?;
        let (keys, values): (Vec<u32>, Vec<u32>) = entries.iter().copied().unzip();
        let fd = aya::maps::IterableMap::map(&a).fd().as_fd();
        match crate::dataplane::batch::update(fd, &keys, &values) {
            Ok(true) => return Ok(()),
            Ok(false) => {} // a kernel without batch updates: one entry at a time
            Err(io_error) => {
                return Err(map_err(name, format!("writing {} entries", entries.len()))(
                    aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_update_batch",
                        io_error,
                    }),
                ));
            }
        }
        for &(i, id) in entries {
            a.set(i, id, 0)
                .map_err(map_err(name, format!("writing entry {i}")))?;
        }
        Ok(())
    }

    fn insert_local_addr(&mut self, key: &AddrKey) -> Result<(), DataplaneError> {
        let name = map_names::LOCAL_ADDRS;
        let mut h: BpfHashMap<_, AddrKey, u32> =
            BpfHashMap::try_from(map_mut(self.ebpf, name)?).map_err(map_err(name, "opening"))?;
        h.insert(key, 1, 0)
            .map_err(map_err(name, "inserting an address"))
    }

    fn remove_local_addr(&mut self, key: &AddrKey) -> Result<(), DataplaneError> {
        let name = map_names::LOCAL_ADDRS;
        let mut h: BpfHashMap<_, AddrKey, u32> =
            BpfHashMap::try_from(map_mut(self.ebpf, name)?).map_err(map_err(name, "opening"))?;
        h.remove(key).map_err(map_err(name, "removing an address"))
    }

    fn insert_decap_prefix(&mut self, net: &IpNet) -> Result<(), DataplaneError> {
        self.decap(net, true)
    }

    fn remove_decap_prefix(&mut self, net: &IpNet) -> Result<(), DataplaneError> {
        self.decap(net, false)
    }

    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), DataplaneError> {
        let name = map_names::VIPS;
        let mut h: BpfHashMap<_, VipKey, VipValue> =
            BpfHashMap::try_from(map_mut(self.ebpf, name)?).map_err(map_err(name, "opening"))?;
        h.insert(key, value, 0)
            .map_err(map_err(name, "writing a VIP"))
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        let name = map_names::VIPS;
        let mut h: BpfHashMap<_, VipKey, VipValue> =
            BpfHashMap::try_from(map_mut(self.ebpf, name)?).map_err(map_err(name, "opening"))?;
        h.remove(key).map_err(map_err(name, "removing a VIP"))
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
            .map_max_entries(map_names::CONNS, geometry.conntrack_size)
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
        std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
            what: "creating the pin directory (is bpffs mounted at /sys/fs/bpf?)",
            path: dir.into(),
            source,
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
                return Err(DataplaneError::Io {
                    what: "removing stale pin",
                    path,
                    source,
                });
            }
        }
    }
    let _ = std::fs::remove_dir(layout.maps_dir());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CFG: &str = r#"
[agent]
interfaces = ["eth0"]
tunnel_source = "198.18.1.2"
tunnel_source_v6 = "fd00::1:2"
encapsulation = "gue"
gue_port = 7000
decap_allow = ["198.18.0.0/15", "fd00::/8"]
ring_size = 101
hash_seed = 42
max_vips = 4
max_backends = 8
[[vip]]
address = "203.0.113.10"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "198.18.10.2"
weight = 1
[[vip.backend]]
address = "198.18.10.3"
weight = 2
[[vip]]
address = "2001:db8::10"
port = 0
protocol = "udp"
[[vip.backend]]
address = "198.18.10.2"
weight = 1
[[vip.backend]]
address = "fd00::10:2"
weight = 1
[[vip]]
address = "203.0.113.11"
port = 53
protocol = "udp"
[[vip.backend]]
address = "198.18.10.9"
weight = 0
"#;

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
        let without = CFG.replace("port = 0\n", "port = 5353\n");
        let local_addrs = ["198.18.10.2", "198.18.1.2"];
        let (c0, local, mut p, mut m) = setup(&without, &local_addrs);
        let c1 = Config::parse(CFG).unwrap();
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
        let (c, local, mut p, mut m) = setup(CFG, &["198.18.10.2", "198.18.1.2"]);
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
        let (c, local, mut p, mut m) = setup(CFG, &[]);
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
        let (c, local, mut p, mut m) = setup(CFG, &[]);
        let d = DesiredState::new(&c, &local).unwrap();
        p.apply(&mut m, &d).unwrap();
        let n = m.journal.len();
        let r = p.apply(&mut m, &d).unwrap();
        assert_eq!(m.journal.len(), n, "{:?}", &m.journal[n..]);
        assert!(r.vips.iter().all(|v| !v.changed));
    }

    #[test]
    fn a_change_goes_to_a_free_table_and_keeps_the_previous_one() {
        let (c, local, mut p, mut m) = setup(CFG, &[]);
        p.apply(&mut m, &DesiredState::new(&c, &local).unwrap())
            .unwrap();
        let k = vip_key("203.0.113.10".parse().unwrap(), 80, 6);
        let v1 = m.vips[&k];
        let mut tables = vec![v1.table];
        let mut prev = v1;
        for (i, w) in [3, 1, 4, 1].into_iter().enumerate() {
            let c2 =
                Config::parse(&CFG.replacen("weight = 2", &format!("weight = {w}"), 1)).unwrap();
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
        let c2 = Config::parse(CFG).unwrap();
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
        let (c, local, mut p, mut m) = setup(CFG, &[]);
        p.apply(&mut m, &DesiredState::new(&c, &local).unwrap())
            .unwrap();
        let id3 = p.backend_id("198.18.10.3".parse().unwrap()).unwrap();
        // Drop VIP 0 (the only one using 198.18.10.3).
        let start = CFG.find("[[vip]]").unwrap();
        let second = start + 1 + CFG[start + 1..].find("[[vip]]").unwrap();
        let cfg2 = format!("{}{}", &CFG[..start], &CFG[second..]);
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
        let (c, local, mut p, mut m) = setup(CFG, &[]);
        p.apply(&mut m, &DesiredState::new(&c, &local).unwrap())
            .unwrap();
        let id3 = p.backend_id("198.18.10.3".parse().unwrap()).unwrap();
        // Remove backend 198.18.10.3 from VIP 0 but keep the VIP: the previous table still has it.
        let c2 = Config::parse(&CFG.replacen(
            "[[vip.backend]]\naddress = \"198.18.10.3\"\nweight = 2\n",
            "",
            1,
        ))
        .unwrap();
        p.apply(&mut m, &DesiredState::new(&c2, &local).unwrap())
            .unwrap();
        assert_eq!(p.backend_id("198.18.10.3".parse().unwrap()), Some(id3));
        // One more change pushes that table out of prev_table: now it is released.
        let c3 = Config::parse(&CFG.replacen(
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
        let (c, _, mut p, mut m) = setup(CFG, &[]);
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
        let (c, local, mut p, mut m) = setup(CFG, &["198.18.10.2"]);
        let d = DesiredState::new(&c, &local).unwrap();
        p.apply(&mut m, &d).unwrap();
        // A second change, so that prev_table is in use too.
        let c2 = Config::parse(&CFG.replacen("weight = 2", "weight = 3", 1)).unwrap();
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
        let c3 = Config::parse(&CFG.replace("198.18.10.9", "198.18.10.7")).unwrap();
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
        let (c, local, mut p, mut m) = setup(CFG, &[]);
        p.apply(&mut m, &DesiredState::new(&c, &local).unwrap())
            .unwrap();
        let c2 = Config::parse(&CFG.replace("ring_size = 101", "ring_size = 103")).unwrap();
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
        let c = Config::parse(&CFG.replace("tunnel_source_v6 = \"fd00::1:2\"\n", "")).unwrap();
        let e = DesiredState::new(&c, &BTreeSet::new()).unwrap_err();
        assert!(e.to_string().contains("agent.tunnel_source_v6"), "{e}");
        let local: BTreeSet<IpAddr> = ["fd00::10:2".parse().unwrap()].into();
        assert!(DesiredState::new(&c, &local).is_ok());
    }
}
