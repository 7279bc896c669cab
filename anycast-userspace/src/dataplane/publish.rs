//! Publishing a desired state: the diff against what is live, written in the order that keeps
//! every packet's view consistent (tables before the VIP entries that point at them).

use super::*;

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
pub(super) struct VipEntry {
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

    /// The backends written as remote (delivered by encapsulation), by id.
    pub fn remote_backends(&self) -> impl Iterator<Item = (u32, &Backend)> {
        self.backends_written
            .iter()
            .filter(|(_, b)| b.family != 0 && b.flags & BACKEND_F_LOCAL == 0)
            .map(|(id, b)| (*id, b))
    }

    /// The `CONFIG` entry last written.
    pub fn dataplane_config(&self) -> Option<&DataplaneConfig> {
        self.config.as_ref()
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
            // One id lookup per backend, not per slot.
            let id_of: Vec<u32> = v
                .table
                .backends
                .iter()
                .map(|b| self.backend_ids[&b.address()])
                .collect();
            let ids: Vec<u32> = v.table.slots.iter().map(|&i| id_of[i as usize]).collect();
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
        let mut stale: Vec<(IpAddr, u32)> = self
            .backend_ids
            .iter()
            .filter(|(a, _)| !desired.backends.contains_key(a))
            .map(|(a, id)| (*a, *id))
            .collect();
        if !stale.is_empty() {
            // Ids are below max_backends: a bitmap, not a set of every slot of every table.
            let mut referenced = vec![false; g.max_backends as usize];
            for ids in self
                .vips
                .values()
                .flat_map(|e| [e.value.table, e.value.prev_table])
                .filter(|&t| t != NO_TABLE)
                .filter_map(|t| self.shadow.get(&t))
            {
                for &id in ids {
                    if let Some(r) = referenced.get_mut(id as usize) {
                        *r = true;
                    }
                }
            }
            stale.retain(|(_, id)| !referenced.get(*id as usize).copied().unwrap_or(false));
        }
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
