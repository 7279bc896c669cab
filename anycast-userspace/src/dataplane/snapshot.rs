//! Reading the live maps back (adoption by a new agent, and tests).

use super::*;

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
    pub(super) fn table_numbers(&self) -> BTreeSet<u32> {
        self.vips
            .values()
            .flat_map(|v| [v.table, v.prev_table])
            .filter(|&t| t != NO_TABLE)
            .collect()
    }
}

pub(super) fn label_of_key(key: &VipKey) -> String {
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
