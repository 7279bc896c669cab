//! The maps in the kernel, through aya.

use super::*;

/// [`MapWriter`] over the maps of a loaded [`aya::Ebpf`].
pub struct AyaMaps<'a> {
    pub ebpf: &'a mut aya::Ebpf,
}

pub(super) fn map_mut<'e>(
    ebpf: &'e mut aya::Ebpf,
    name: &'static str,
) -> Result<&'e mut Map, DataplaneError> {
    ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))
}

pub(super) fn map_err(
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
