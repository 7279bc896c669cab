//! The maps in memory: the dataplane's twin for tests, recording every operation.

use super::*;

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
