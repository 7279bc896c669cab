//! Every map of the program, in one place. Names and value types come from `anycast_common`.
//! Sizes here are placeholders for the ones the agent sets at load time
//! (`EbpfLoader::set_max_entries`) from its config.

use anycast_common::{
    AddrKey, Backend, ConnGuard, ConnKey, ConnValue, DEFAULT_CONNTRACK_SIZE, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE, DataplaneConfig, FRAGS_SIZE, FragKey, FragValue, LogRate,
    MAX_DECAP_PREFIXES, MAX_LOCAL_ADDRS, NextHop, TABLES_PER_VIP, TrafficStats, VipKey, VipValue,
    counter, event,
};
use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};

#[map]
pub static VIPS: HashMap<VipKey, VipValue> = HashMap::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// All Maglev tables back to back: table `t` is `[t * ring_size, (t + 1) * ring_size)`, each
/// entry a backend id. One flat array rather than an array of maps: aya-ebpf 0.2 has no
/// map-in-map, and a flat array lookup is a single bounds check and add.
#[map]
pub static RINGS: Array<u32> =
    Array::with_max_entries(DEFAULT_MAX_VIPS * TABLES_PER_VIP * DEFAULT_RING_SIZE, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// The next-hop cache, indexed by backend id (see `NextHop`): written by the agent from the
/// kernel's routes and neighbours, read by `encap` instead of calling `bpf_fib_lookup`.
#[map]
pub static NEXTHOPS: Array<NextHop> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Until when (`bpf_ktime_get_coarse_ns`) `NEXTHOPS` may be used: the agent renews it while it
/// keeps the cache current (`NEXTHOP_LEASE_NS`); 0, or past: every packet asks the FIB.
#[map]
pub static NEXTHOP_LEASE: Array<u64> = Array::with_max_entries(1, 0);

#[map]
pub static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);

#[map]
pub static LOCAL_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

#[map]
pub static DECAP_ALLOW_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_DECAP_PREFIXES, 0);

#[map]
pub static DECAP_ALLOW_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_DECAP_PREFIXES, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
pub static VIP_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Connection tracking: one LRU hash shared by all CPUs (a flow moved to another CPU by RSS
/// changes or by a NIC's rehash is still found), with per-CPU LRU lists (BPF_F_NO_COMMON_LRU)
/// so that insertions on one CPU never contend on a global list lock. Eviction is
/// least-recently-used within the inserting CPU's share.
#[map]
pub static CONNS: LruHashMap<ConnKey, ConnValue> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_SIZE, BPF_F_NO_COMMON_LRU);

/// The new-flow (probation) tier in front of `CONNS`: a flow's first tracked packet creates its
/// entry here, its second moves it into `CONNS` (`crate::track`). A flood of one-packet tuples
/// evicts only other young flows, never an established one. Sized by the agent
/// (`anycast_common::conntrack_new_size`); same per-CPU LRU lists as `CONNS`.
#[map]
pub static CONNS_NEW: LruHashMap<ConnKey, ConnValue> = LruHashMap::with_max_entries(
    anycast_common::conntrack_new_size(DEFAULT_CONNTRACK_SIZE),
    BPF_F_NO_COMMON_LRU,
);

/// Fragmented datagrams to VIPs: where each one's first fragment went (`crate::frag`).
#[map]
pub static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::with_max_entries(FRAGS_SIZE, 0);

#[map]
pub static SCRATCH: PerCpuArray<crate::encap::Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static CONN_GUARD: PerCpuArray<ConnGuard> = PerCpuArray::with_max_entries(1, 0);

/// Rate limit of the "packet too big" answers (`crate::pmtu`): per CPU, a one-second window.
#[map]
pub static PTB_GUARD: PerCpuArray<ConnGuard> = PerCpuArray::with_max_entries(1, 0);

/// Rate limit of the log lines (`crate::log`): per CPU, one entry per event class. The log
/// records themselves go to aya-log's `AYA_LOGS` ring buffer, defined by `aya-log-ebpf`.
#[map]
pub static LOG_RATE: PerCpuArray<LogRate> = PerCpuArray::with_max_entries(event::COUNT, 0);

/// Adds one to a global outcome counter. Per-CPU, so a plain add: no atomics on the packet path.
#[inline(always)]
pub fn count(c: u32) {
    if let Some(p) = STATS.get_ptr_mut(c) {
        // SAFETY: per-CPU slot, only this CPU's program instance writes it while we run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_traffic(map: &PerCpuArray<TrafficStats>, index: u32, bytes: u64) {
    if let Some(p) = map.get_ptr_mut(index) {
        // SAFETY: as in `count`.
        unsafe {
            (*p).packets += 1;
            (*p).bytes += bytes;
        }
    }
}
