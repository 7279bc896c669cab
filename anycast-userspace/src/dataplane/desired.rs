//! The desired state of the maps: what the agent wants the program to see, from the config.

use super::*;

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
        let a = &config.agent;
        Self::with_tables(config, local, |v| vip_table(v, a.ring_size, a.hash_seed))
    }

    /// Like [`DesiredState::new`], with each VIP's table from `table` (a cache of tables
    /// already built, in the controller).
    pub fn with_tables(
        config: &Config,
        local: &BTreeSet<IpAddr>,
        mut table: impl FnMut(&crate::config::VipConfig) -> VipTable,
    ) -> Result<Self, ConfigError> {
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
                let table = table(v);
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
