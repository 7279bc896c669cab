//! The world the fuzzer sets up: VIPs, backends (remote behind a resolved gateway, remote behind
//! an unresolved one, this host), Maglev tables from the agent's plan code, this host's tunnel
//! addresses and the decap allowlist. The model reads it; [`World::write`] puts it into the
//! program's maps with the fixture's raw setters. A new phase ([`World::next_phase`]) draws new
//! weights, the encapsulation and whether the next-hop cache is filled, so every VIP's previous
//! table is the last phase's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anycast::plan::maglev::{self, MaglevBackend};
use anycast_common::{
    AddrKey, BACKEND_F_LOCAL, CFG_F_HAS_SRC_V4, CFG_F_HAS_SRC_V6, CFG_F_NO_PORT0_VIPS,
    DataplaneConfig, ENCAP_GUE, ENCAP_IPIP, GUE_DEFAULT_PORT, NO_TABLE, NextHop, PROTO_TCP,
    PROTO_UDP, VipKey, VipValue,
};

use super::Rng;
use crate::fixture::{Dataplane, Sizes, net};

/// A small prime ring keeps the table writes of a phase cheap.
pub const RING: u32 = 1021;
pub const MAX_VIPS: u32 = 8;
pub const MAX_BACKENDS: u32 = 16;

pub const SIZES: Sizes = Sizes {
    max_vips: MAX_VIPS,
    ring_size: RING,
    max_backends: MAX_BACKENDS,
};

/// How the FIB of the fixture namespace routes an outer destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Through the gateway with a permanent neighbour: sent out of the ingress device (XDP_TX).
    Resolved,
    /// Through a gateway without a neighbour: handed to the kernel (XDP_PASS, encapsulated).
    Unresolved,
    /// No usable route (blackhole, or no route at all): dropped, `fib_fail`.
    Fail,
}

pub fn route_of(a: IpAddr) -> Route {
    let o = match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    match a {
        IpAddr::V4(_) if o[..3] == [198, 19, 1] => Route::Resolved,
        IpAddr::V4(_) if o[..3] == [198, 19, 2] => Route::Unresolved,
        IpAddr::V6(_) if o[..8] == [0xfd, 0, 0, 1, 0, 0, 0, 0] => Route::Resolved,
        IpAddr::V6(_) if o[..8] == [0xfd, 0, 0, 2, 0, 0, 0, 0] => Route::Unresolved,
        _ => Route::Fail,
    }
}

#[derive(Clone, Debug)]
pub struct BackendDef {
    pub id: u32,
    pub addr: IpAddr,
    pub local: bool,
}

#[derive(Clone, Debug)]
pub struct VipDef {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    /// Backend ids that may get weight.
    pub members: Vec<u32>,
    /// Live and previous table: slot -> backend id (`None`: no table).
    pub table: Option<Vec<u32>>,
    pub prev: Option<Vec<u32>>,
    /// Index in `RINGS` of the live and previous table.
    pub table_index: u32,
    pub prev_index: u32,
}

pub struct World {
    pub cfg: DataplaneConfig,
    pub backends: Vec<BackendDef>,
    pub vips: Vec<VipDef>,
    /// This host's tunnel addresses (`LOCAL_ADDRS`).
    pub local: Vec<IpAddr>,
    pub allow_v4: (Ipv4Addr, u32),
    pub allow_v6: (Ipv6Addr, u32),
    pub phase: u32,
    /// Whether this phase's next-hop cache (`NEXTHOPS`) holds the resolved backends.
    pub cache: bool,
    /// Whether this phase goes without its port-0 VIPs (and says so: `CFG_F_NO_PORT0_VIPS`).
    pub no_port0: bool,
}

/// The destination MAC of the cached next hops: not the FIB's gateway, so that the output shows
/// which one routed a frame.
pub const CACHE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc0];

pub const VIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP4B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const VIP4C: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const VIP6B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x12);
/// Tunnel sources inside the allowlist (`ALLOW_*`) and outside it.
pub const ALLOW_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 0);
pub const ALLOW_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0, 0);

impl World {
    pub fn new(seed: u64) -> Self {
        let b = |id, addr: &str, local| BackendDef {
            id,
            addr: addr.parse().expect("address"),
            local,
        };
        let backends = vec![
            b(1, "198.19.1.1", false),
            b(2, "198.19.1.2", false),
            b(3, "198.19.1.3", false),
            b(4, "fd00:1::1", false),
            b(5, "fd00:1::2", false),
            b(6, "fd00:1::3", false),
            b(7, "198.19.2.1", false),
            b(8, "fd00:2::1", false),
            b(9, &net::EDGE_V4.to_string(), true),
            b(10, &net::EDGE_V6.to_string(), true),
        ];
        let v = |id, addr: IpAddr, port, proto, members: &[u32]| VipDef {
            id,
            addr,
            port,
            proto,
            members: members.to_vec(),
            table: None,
            prev: None,
            table_index: NO_TABLE,
            prev_index: NO_TABLE,
        };
        let vips = vec![
            v(0, VIP4.into(), 80, PROTO_TCP, &[1, 2, 3, 4, 9]),
            v(1, VIP4.into(), 0, PROTO_TCP, &[1, 2, 5, 7]),
            v(2, VIP4B.into(), 53, PROTO_UDP, &[3, 6, 7, 9]),
            v(3, VIP6.into(), 443, PROTO_TCP, &[4, 5, 6, 1, 10]),
            v(4, VIP6.into(), 0, PROTO_UDP, &[5, 6, 8, 2]),
            v(5, VIP4C.into(), 8443, PROTO_TCP, &[]),
            v(6, VIP6B.into(), 0, PROTO_TCP, &[6, 8, 10]),
        ];
        let octets = |a: Ipv6Addr| a.octets();
        let mut src6 = [0u8; 16];
        src6.copy_from_slice(&octets(net::EDGE_V6));
        let cfg = DataplaneConfig {
            tunnel_src_v4_be: net::EDGE_V4.octets(),
            tunnel_src_v6_be: src6,
            ring_size: RING,
            hash_seed: (seed as u32) ^ 0x5eed_f00d,
            gue_port_be: GUE_DEFAULT_PORT.to_be(),
            encap: ENCAP_IPIP,
            flags: CFG_F_HAS_SRC_V4 | CFG_F_HAS_SRC_V6,
            // No UDP entry idles out and promotions are unlimited: tracking depends on the
            // packets alone, never on the clock.
            conn_udp_timeout_s: 1 << 30,
            conn_insert_limit: 0,
        };
        Self {
            cfg,
            backends,
            vips,
            local: vec![net::EDGE_V4.into(), net::EDGE_V6.into()],
            allow_v4: (ALLOW_V4, 24),
            allow_v6: (ALLOW_V6, 64),
            phase: 0,
            cache: false,
            no_port0: false,
        }
    }

    pub fn backend(&self, id: u32) -> Option<&BackendDef> {
        self.backends.iter().find(|b| b.id == id)
    }

    /// New weights (0..=3 each, a VIP whose weights are all 0 has no table) and a new
    /// encapsulation; the live tables become the previous ones.
    pub fn next_phase(&mut self, rng: &mut Rng) {
        self.phase += 1;
        self.cache = rng.below(2) == 0;
        self.no_port0 = rng.below(4) == 0;
        self.cfg.encap = if rng.below(2) == 0 {
            ENCAP_IPIP
        } else {
            ENCAP_GUE
        };
        let seed = self.cfg.hash_seed;
        let addrs: Vec<(u32, IpAddr)> = self.backends.iter().map(|b| (b.id, b.addr)).collect();
        for vip in &mut self.vips {
            let list: Vec<MaglevBackend> = vip
                .members
                .iter()
                .map(|id| {
                    let addr = addrs.iter().find(|(i, _)| i == id).expect("member").1;
                    MaglevBackend::new(addr, rng.below(4) as u32)
                })
                .collect();
            let order = maglev::canonical_order(&list);
            let slots = maglev::build(&list, RING, seed);
            let table = (!slots.is_empty()).then(|| {
                slots
                    .iter()
                    .map(|&i| {
                        let a = order[i as usize].address();
                        addrs.iter().find(|(_, x)| *x == a).expect("backend").0
                    })
                    .collect::<Vec<u32>>()
            });
            vip.prev = vip.table.take();
            vip.prev_index = vip.table_index;
            // Now and then a VIP forgets its previous table (published with a single table).
            if rng.below(8) == 0 {
                vip.prev = None;
                vip.prev_index = NO_TABLE;
            }
            vip.table = table;
            vip.table_index = match &vip.table {
                Some(_) => vip.id * 3 + self.phase % 3,
                None => NO_TABLE,
            };
        }
    }

    /// Writes the world into the program's maps (tables first, then the VIPs naming them). The
    /// no-port-0 promise is kept as the agent keeps it: cleared before a port-0 VIP is written,
    /// set after the last one is removed.
    pub fn write(&mut self, dp: &mut Dataplane) {
        self.cfg.flags &= !CFG_F_NO_PORT0_VIPS;
        dp.set_config(&self.cfg);
        let ifindex = crate::fixture::ifindex(net::DEV);
        for b in &self.backends {
            dp.set_backend_addr(b.id, b.addr, if b.local { BACKEND_F_LOCAL } else { 0 }, 1);
            let nh = if self.cache && !b.local && route_of(b.addr) == Route::Resolved {
                let mut macs = [0u8; 12];
                macs[..6].copy_from_slice(&CACHE_MAC);
                macs[6..].copy_from_slice(&net::DEV_MAC);
                NextHop {
                    ifindex,
                    mtu: 1500,
                    generation: 1,
                    macs,
                }
            } else {
                NextHop::default()
            };
            dp.set_nexthop(b.id, nh);
        }
        for vip in &self.vips {
            if let Some(t) = &vip.table {
                dp.set_table(vip.table_index, t);
            }
            let key = vip_key(vip.addr, vip.port, vip.proto);
            if self.no_port0 && vip.port == 0 {
                dp.remove_vip(key);
                continue;
            }
            dp.set_vip(
                key,
                VipValue {
                    vip_id: vip.id,
                    table: vip.table_index,
                    prev_table: vip.prev_index,
                    flags: 0,
                },
            );
        }
        if self.no_port0 {
            self.cfg.flags |= CFG_F_NO_PORT0_VIPS;
            dp.set_config(&self.cfg);
        }
    }

    /// The parts that never change: tunnel addresses and the allowlist.
    pub fn write_static(&self, dp: &mut Dataplane) {
        for a in &self.local {
            dp.add_local(addr_key(*a));
        }
        dp.allow_v4(self.allow_v4.0, self.allow_v4.1);
        dp.allow_v6(self.allow_v6.0, self.allow_v6.1);
        // The cache never expires: whether a phase uses it is its entries' business.
        dp.set_nexthop_lease(u64::MAX);
    }

    /// The VIP of (destination, port, protocol): the exact port first, then port 0.
    pub fn vip_of(&self, dst: IpAddr, port: u16, proto: u8) -> Option<&VipDef> {
        let find = |p| {
            self.vips.iter().find(|v| {
                v.addr == dst && v.port == p && v.proto == proto && !(self.no_port0 && v.port == 0)
            })
        };
        find(port).or_else(|| find(0))
    }

    pub fn is_local(&self, a: IpAddr) -> bool {
        self.local.contains(&a)
    }

    pub fn allowed(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(v) => {
                let m = u32::MAX << (32 - self.allow_v4.1);
                u32::from(v) & m == u32::from(self.allow_v4.0) & m
            }
            IpAddr::V6(v) => {
                let m = u128::MAX << (128 - self.allow_v6.1);
                u128::from(v) & m == u128::from(self.allow_v6.0) & m
            }
        }
    }
}

pub fn addr_key(a: IpAddr) -> AddrKey {
    anycast::dataplane::addr_key_of(a)
}

pub fn vip_key(addr: IpAddr, port: u16, proto: u8) -> VipKey {
    match addr {
        IpAddr::V4(a) => VipKey::v4(a.octets(), port, proto),
        IpAddr::V6(a) => VipKey::v6(a.octets(), port, proto),
    }
}
