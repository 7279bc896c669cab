//! The agent's TOML configuration: parsing and validation.
//!
//! Parsing happens in two steps. Serde reads the file into a loosely typed mirror ([`RawConfig`],
//! addresses as strings, numbers as `i64`) so that a bad value is reported by *our* validation
//! with the field's full path and the problem (`vip[1].backend[0].address: "198.18.300.1" is not
//! an IP address`) rather than by a generic deserializer message. Unknown fields are still
//! rejected by serde (`deny_unknown_fields`), which names the field and its line.
//!
//! [`Config::parse`] checks everything that depends only on the file. Whether a backend is remote
//! (and so needs a tunnel source of its family) depends on this host's addresses, so that check
//! is [`Config::check_local`], run by the agent and by `anycast lookup` with the local address set.
//!
//! Ring size policy: `ring_size` must be prime and in [`MIN_RING_SIZE`, `MAX_RING_SIZE`]. A VIP
//! whose backend count N has `ring_size < 10 * N` is rejected (its backends' shares would be off
//! by 10% or more); `ring_size < 100 * N` is accepted with a warning ([`Config::warnings`]),
//! because Maglev's imbalance is only guaranteed under 1% when M > 100 N (NSDI 2016, 5.3).

mod agent;
pub mod bgp;
mod fleet;
mod reference;
mod vip;

use agent::validate_agent;
pub use agent::{AgentConfig, RawAgent, XdpModeSetting};
use fleet::validate_fleet;
pub use fleet::{
    DEFAULT_FLEET_CACHE_DIR, DEFAULT_FLEET_PREFIX, FleetAuth, FleetConfig, FleetTls, RawFleet,
};
pub use reference::{ConfigBuilder, VipBuilder};
use vip::validate_health;
pub use vip::{
    BackendConfig, HealthConfig, HealthKind, RawBackend, RawHealth, RawVip, VipConfig, VipId,
    vip_label,
};

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anycast_common::{DEFAULT_MAX_BACKENDS, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE, GUE_DEFAULT_PORT};
use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};

pub const MIN_RING_SIZE: u32 = 7;
/// Keeps one table under 4 MiB and `max_vips * 3 * ring_size` within a BPF array's `u32` index.
pub const MAX_RING_SIZE: u32 = 1_000_003;
/// Weights are plain ratios; the cap keeps the per-round arithmetic of Maglev far from overflow
/// and is more resolution than any operator needs.
pub const MAX_WEIGHT: u32 = 65_535;
/// UDP has no end-of-flow signal; 30 s matches the common NAT/conntrack default for
/// unreplied UDP (Linux nf_conntrack_udp_timeout).
pub const DEFAULT_CONNTRACK_UDP_TIMEOUT_S: i64 = 30;
/// Per CPU per second; well above what one CPU sees of real new connections at an edge, well
/// below what a flood of random tuples produces.
pub const DEFAULT_CONNTRACK_INSERT_LIMIT: i64 = 200_000;
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/anycast";
/// bpffs cannot hold regular files, so the id map for `anycast stats` lives under /run.
pub const DEFAULT_STATE_FILE: &str = "/run/anycast/state.json";
/// The control API's Unix socket (`agent.api_socket`).
pub const DEFAULT_API_SOCKET: &str = "/run/anycast/anycast.sock";
/// The Prometheus endpoint (`agent.metrics_listen`); loopback so nothing is reachable from the
/// network unless configured.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9742";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: invalid TOML")]
    Toml {
        origin: String,
        #[source]
        source: toml::de::Error,
    },
    /// A value that is well-formed TOML but not acceptable. `field` is the full path of the
    /// field (`vip[0].backend[2].weight`), `problem` says what is wrong with it.
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => anycast_common::PROTO_TCP,
            Self::Udp => anycast_common::PROTO_UDP,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encapsulation {
    Ipip,
    Gue,
}

impl fmt::Display for Encapsulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipip => "ipip",
            Self::Gue => "gue",
        })
    }
}

/// The file as serde sees it; see the module docs for why it is loosely typed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub agent: RawAgent,
    #[serde(default)]
    pub vip: Vec<RawVip>,
    /// BGP announcement of the VIPs (the `announce` module).
    pub bgp: Option<bgp::RawBgp>,
    /// Shared state in etcd (the `fleet` module).
    pub fleet: Option<RawFleet>,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    pub agent: AgentConfig,
    pub vips: Vec<VipConfig>,
    /// `None`: the agent announces nothing (routes to the VIPs are someone else's business).
    pub bgp: Option<bgp::BgpConfig>,
    /// `None`: the file is the only source of the VIPs.
    pub fleet: Option<FleetConfig>,
}

fn int_in<T: TryFrom<i64>>(field: &str, v: i64, lo: i64, hi: i64) -> Result<T, ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(field, format!("{v} is out of range {lo}..={hi}")));
    }
    T::try_from(v).map_err(|_| invalid(field, format!("{v} is out of range {lo}..={hi}")))
}

/// `vip: 2 VIPs configured, more than agent.max_vips = 1`.
fn at_most(
    field: &str,
    count: usize,
    what: &str,
    limit_field: &str,
    limit: u32,
) -> Result<(), ConfigError> {
    if count as u64 > u64::from(limit) {
        return Err(invalid(
            field,
            format!("{count} {what} configured, more than {limit_field} = {limit}"),
        ));
    }
    Ok(())
}

fn ip(field: &str, s: &str) -> Result<IpAddr, ConfigError> {
    s.parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IP address")))
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_named(&text, &path.display().to_string())
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_named(text, "config")
    }

    fn parse_named(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Toml {
            origin: origin.to_owned(),
            source,
        })?;
        Self::from_raw(raw)
    }

    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let RawConfig {
            agent,
            vip,
            bgp,
            fleet,
        } = raw;
        let agent = validate_agent(agent)?;
        let fleet = fleet.map(validate_fleet).transpose()?;
        let bgp = bgp
            .map(|b| bgp::validate(b, agent.tunnel_source))
            .transpose()?;
        let mut vips = Vec::with_capacity(vip.len());
        let mut seen_vips = HashSet::new();
        for (i, v) in vip.into_iter().enumerate() {
            let RawVip {
                address,
                port,
                protocol,
                backend,
                health,
            } = v;
            let address = ip(&format!("vip[{i}].address"), &address)?;
            let vip_addr = address;
            let port: u16 = int_in(&format!("vip[{i}].port"), port, 0, 65535)?;
            let protocol = Protocol::parse(&protocol).ok_or_else(|| {
                invalid(
                    format!("vip[{i}].protocol"),
                    format!("{protocol:?} is not \"tcp\" or \"udp\""),
                )
            })?;
            if !seen_vips.insert((address, port, protocol)) {
                return Err(invalid(
                    format!("vip[{i}]"),
                    format!(
                        "duplicate VIP {} (same address, port and protocol as an earlier [[vip]])",
                        vip_label(address, port, protocol)
                    ),
                ));
            }
            let mut backends = Vec::with_capacity(backend.len());
            let mut seen = HashSet::new();
            for (j, b) in backend.into_iter().enumerate() {
                let field = format!("vip[{i}].backend[{j}]");
                let RawBackend { address, weight } = b;
                let address = ip(&format!("{field}.address"), &address)?;
                let weight = int_in(&format!("{field}.weight"), weight, 0, i64::from(MAX_WEIGHT))?;
                if !seen.insert(address) {
                    return Err(invalid(
                        format!("{field}.address"),
                        format!(
                            "duplicate backend {address} (already listed for VIP {})",
                            vip_label(vip_addr, port, protocol)
                        ),
                    ));
                }
                backends.push(BackendConfig { address, weight });
            }
            let n = backends.len() as u64;
            let m = u64::from(agent.ring_size);
            if n > 0 && m < 10 * n {
                return Err(invalid(
                    "agent.ring_size",
                    format!(
                        "{} is less than 10 x the {} backends of vip[{i}] ({}); use a prime >= {}",
                        agent.ring_size,
                        n,
                        vip_label(address, port, protocol),
                        10 * n
                    ),
                ));
            }
            let health = health
                .map(|h| validate_health(&format!("vip[{i}].health"), h, port))
                .transpose()?;
            vips.push(VipConfig {
                address,
                port,
                protocol,
                backends,
                health,
            });
        }
        at_most("vip", vips.len(), "VIPs", "agent.max_vips", agent.max_vips)?;
        let unique: BTreeSet<IpAddr> = vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.address))
            .collect();
        at_most(
            "vip.backend",
            unique.len(),
            "distinct backend addresses",
            "agent.max_backends",
            agent.max_backends,
        )?;
        Ok(Self {
            agent,
            vips,
            bgp,
            fleet,
        })
    }

    /// Checks what depends on this host: every remote backend (one whose address is not in
    /// `local`) needs a tunnel source of its own family, because the outer header takes the
    /// backend's family (an IPv6 VIP with an IPv4 backend is IPv6-in-IPv4).
    pub fn check_local(&self, local: &BTreeSet<IpAddr>) -> Result<(), ConfigError> {
        for (i, vip) in self.vips.iter().enumerate() {
            for (j, b) in vip.backends.iter().enumerate() {
                if local.contains(&b.address) {
                    continue;
                }
                let missing = match b.address {
                    IpAddr::V4(_) if self.agent.tunnel_source.is_none() => {
                        Some(("IPv4", "agent.tunnel_source"))
                    }
                    IpAddr::V6(_) if self.agent.tunnel_source_v6.is_none() => {
                        Some(("IPv6", "agent.tunnel_source_v6"))
                    }
                    _ => None,
                };
                if let Some((family, field)) = missing {
                    return Err(invalid(
                        format!("vip[{i}].backend[{j}].address"),
                        format!(
                            "{} is a remote {family} backend (not an address of this host), which needs {field} to be set",
                            b.address
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The addresses of this host as the dataplane sees them: the detected ones plus the
    /// configured `local_addresses`.
    pub fn local_set(&self, detected: impl IntoIterator<Item = IpAddr>) -> BTreeSet<IpAddr> {
        detected
            .into_iter()
            .chain(self.agent.local_addresses.iter().copied())
            .collect()
    }

    /// Accepted but questionable settings, for the agent to log and `check` to print.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let m = u64::from(self.agent.ring_size);
        for (i, vip) in self.vips.iter().enumerate() {
            let n = vip.backends.len() as u64;
            if n > 0 && m < 100 * n {
                w.push(format!(
                    "agent.ring_size: {m} is less than 100 x the {n} backends of vip[{i}] ({}); backend shares may be off by more than 1%",
                    vip.label()
                ));
            }
            if !vip.backends.is_empty() && vip.backends.iter().all(|b| b.weight == 0) {
                w.push(format!(
                    "vip[{i}] ({}): every backend has weight 0; its packets are dropped",
                    vip.label()
                ));
            } else if vip.backends.is_empty() {
                w.push(format!(
                    "vip[{i}] ({}): no backends; its packets are dropped",
                    vip.label()
                ));
            }
        }
        w
    }

    /// The bpffs pin path of one map.
    pub fn map_pin(&self, map: &str) -> PathBuf {
        self.agent.pin_path.join(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference config with IPIP, the default ring, a second VIP whose only backend has
    /// weight 0, as an operator's text.
    fn good() -> String {
        ConfigBuilder::reference()
            .agent("encapsulation", "ipip")
            .agent("ring_size", 65537)
            .vips([
                VipBuilder::new("203.0.113.10", 80, "tcp")
                    .backends(&[("198.18.10.2", 1), ("198.18.10.3", 2)]),
                VipBuilder::new("2001:db8::10", 0, "udp").backend("198.18.10.2", 0),
            ])
            .toml()
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    /// Replaces the first occurrence of `from` in the good config.
    fn with(from: &str, to: &str) -> String {
        let good = good();
        assert!(good.contains(from), "{from} not in\n{good}");
        good.replacen(from, to, 1)
    }

    /// Each `(from, to, error)`: the good config with `from` replaced by `to` is refused with
    /// exactly `error`.
    fn assert_refused(cases: &[(&str, &str, &str)]) {
        for &(from, to, want) in cases {
            assert_eq!(err(&with(from, to)), want, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn accepts_the_documented_example_with_defaults() {
        let c = Config::parse(&good()).unwrap();
        assert_eq!(c.agent.interfaces, vec!["eth0".to_string()]);
        assert_eq!(c.agent.tunnel_source, Some("198.18.1.2".parse().unwrap()));
        assert_eq!(c.agent.gue_port, 6080);
        assert_eq!(c.agent.xdp_mode, XdpModeSetting::Native);
        assert_eq!(c.agent.max_vips, DEFAULT_MAX_VIPS);
        assert_eq!(c.agent.max_backends, DEFAULT_MAX_BACKENDS);
        assert_eq!(c.agent.pin_path, PathBuf::from("/sys/fs/bpf/anycast"));
        assert_eq!(c.vips.len(), 2);
        assert_eq!(c.vips[1].port, 0);
        assert_eq!(c.vips[0].backends[1].weight, 2);
        assert!(
            c.warnings()
                .iter()
                .any(|w| w.contains("every backend has weight 0"))
        );
    }

    #[test]
    fn optional_fields() {
        let c = Config::parse(&with(
            "hash_seed = 42",
            "hash_seed = 42\ngue_port = 7000\nxdp_mode = \"native-or-generic\"\nmax_vips = 8\nmax_backends = 16\nlocal_addresses = [\"198.18.10.2\"]\npin_path = \"/sys/fs/bpf/x\"",
        ))
        .unwrap();
        assert_eq!(c.agent.gue_port, 7000);
        assert_eq!(c.agent.xdp_mode, XdpModeSetting::NativeOrGeneric);
        assert_eq!(
            c.agent.local_addresses,
            vec!["198.18.10.2".parse::<IpAddr>().unwrap()]
        );
        let c = Config::parse(&with("ring_size = 65537\n", "")).unwrap();
        assert_eq!(c.agent.ring_size, 65537);
        assert_eq!(
            Config::parse(&with("\"198.18.0.0/15\"", "\"198.18.7.1/15\""))
                .unwrap()
                .agent
                .decap_allow[0]
                .to_string(),
            "198.18.0.0/15"
        );
    }

    #[test]
    fn rejects_bad_addresses_naming_the_field() {
        assert_refused(&[
            (
                "198.18.10.2",
                "198.18.300.1",
                "vip[0].backend[0].address: \"198.18.300.1\" is not an IP address",
            ),
            (
                "\"2001:db8::10\"",
                "\"2001:db8::zz\"",
                "vip[1].address: \"2001:db8::zz\" is not an IP address",
            ),
            (
                "tunnel_source = \"198.18.1.2\"",
                "tunnel_source = \"fd00::1\"",
                "agent.tunnel_source: \"fd00::1\" is not an IPv4 address (IPv6 goes in agent.tunnel_source_v6)",
            ),
            (
                "tunnel_source_v6 = \"fd00::1:2\"",
                "tunnel_source_v6 = \"198.18.1.2\"",
                "agent.tunnel_source_v6: \"198.18.1.2\" is not an IPv6 address (IPv4 goes in agent.tunnel_source)",
            ),
            (
                "\"fd00::/8\"",
                "\"fd00::/200\"",
                "agent.decap_allow[1]: \"fd00::/200\" is not an IP prefix (expected e.g. \"198.18.0.0/15\" or \"fd00::/8\")",
            ),
            (
                "\"198.18.0.0/15\"",
                "\"198.18.0.0\"",
                "agent.decap_allow[0]: \"198.18.0.0\" is not an IP prefix (expected e.g. \"198.18.0.0/15\" or \"fd00::/8\")",
            ),
            (
                "hash_seed = 42",
                "hash_seed = 42\nlocal_addresses = [\"x\"]",
                "agent.local_addresses[0]: \"x\" is not an IP address",
            ),
        ]);
    }

    #[test]
    fn rejects_bad_ring_sizes() {
        assert_refused(&[
            (
                "ring_size = 65537",
                "ring_size = 65536",
                "agent.ring_size: 65536 is not prime (Maglev needs a prime table size, e.g. 65537)",
            ),
            (
                "ring_size = 65537",
                "ring_size = 5",
                "agent.ring_size: 5 is out of range 7..=1000003",
            ),
            (
                "ring_size = 65537",
                "ring_size = 1000033",
                "agent.ring_size: 1000033 is out of range 7..=1000003",
            ),
            // 2 backends need at least 20 slots; 13 is prime but too small.
            (
                "ring_size = 65537",
                "ring_size = 13",
                "agent.ring_size: 13 is less than 10 x the 2 backends of vip[0] (203.0.113.10:80/tcp); use a prime >= 20",
            ),
        ]);
        // Under 100 x: accepted with a warning.
        let c = Config::parse(&with("ring_size = 65537", "ring_size = 101")).unwrap();
        assert!(c.warnings().iter().any(|w| {
            w.starts_with("agent.ring_size: 101 is less than 100 x the 2 backends of vip[0]")
        }));
    }

    #[test]
    fn rejects_duplicates() {
        let dup_vip = format!(
            "{}[[vip]]\naddress = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n",
            good()
        );
        assert_eq!(
            err(&dup_vip),
            "vip[2]: duplicate VIP 203.0.113.10:80/tcp (same address, port and protocol as an earlier [[vip]])"
        );
        // Same address and port, other protocol: fine.
        Config::parse(&format!(
            "{}[[vip]]\naddress = \"203.0.113.10\"\nport = 80\nprotocol = \"udp\"\n",
            good()
        ))
        .unwrap();
        assert_refused(&[
            (
                "198.18.10.3",
                "198.18.10.2",
                "vip[0].backend[1].address: duplicate backend 198.18.10.2 (already listed for VIP 203.0.113.10:80/tcp)",
            ),
            (
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\", \"eth0\"]",
                "agent.interfaces[1]: \"eth0\" is listed twice",
            ),
        ]);
    }

    #[test]
    fn rejects_bad_scalars() {
        assert_refused(&[
            (
                "weight = 2",
                "weight = 70000",
                "vip[0].backend[1].weight: 70000 is out of range 0..=65535",
            ),
            (
                "weight = 2",
                "weight = -1",
                "vip[0].backend[1].weight: -1 is out of range 0..=65535",
            ),
            (
                "port = 80",
                "port = 65536",
                "vip[0].port: 65536 is out of range 0..=65535",
            ),
            (
                "protocol = \"tcp\"",
                "protocol = \"sctp\"",
                "vip[0].protocol: \"sctp\" is not \"tcp\" or \"udp\"",
            ),
            (
                "encapsulation = \"ipip\"",
                "encapsulation = \"gre\"",
                "agent.encapsulation: \"gre\" is not \"ipip\" or \"gue\"",
            ),
            (
                "hash_seed = 42",
                "hash_seed = 4294967296",
                "agent.hash_seed: 4294967296 is out of range 0..=4294967295",
            ),
            (
                "hash_seed = 42",
                "hash_seed = 42\ngue_port = 0",
                "agent.gue_port: 0 is out of range 1..=65535",
            ),
            (
                "hash_seed = 42",
                "hash_seed = 42\nxdp_mode = \"fast\"",
                "agent.xdp_mode: \"fast\" is not \"native\", \"generic\" or \"native-or-generic\"",
            ),
            (
                "hash_seed = 42",
                "hash_seed = 42\npin_path = \"bpf\"",
                "agent.pin_path: \"bpf\" is not an absolute path",
            ),
            (
                "hash_seed = 42",
                "hash_seed = 42\nstate_file = \"state.json\"",
                "agent.state_file: \"state.json\" is not an absolute path",
            ),
            (
                "interfaces = [\"eth0\"]",
                "interfaces = []",
                "agent.interfaces: is empty; list at least one interface to attach to",
            ),
            (
                "interfaces = [\"eth0\"]",
                "interfaces = [\"a-very-long-interface\"]",
                "agent.interfaces[0]: \"a-very-long-interface\" is not a valid interface name",
            ),
        ]);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_toml() {
        for (from, to, want) in [
            (
                "hash_seed = 42",
                "hash_seed = 42\nbogus = 1",
                "unknown field `bogus`",
            ),
            ("weight = 2", "weigth = 2", "unknown field `weigth`"),
            ("hash_seed = 42\n", "", "missing field `hash_seed`"),
        ] {
            let e = Config::parse(&with(from, to)).unwrap_err();
            let full = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            assert!(full.contains(want), "{full}");
        }
    }

    #[test]
    fn enforces_capacities() {
        assert_refused(&[
            (
                "hash_seed = 42",
                "hash_seed = 42\nmax_vips = 1",
                "vip: 2 VIPs configured, more than agent.max_vips = 1",
            ),
            (
                "hash_seed = 42",
                "hash_seed = 42\nmax_backends = 1",
                "vip.backend: 2 distinct backend addresses configured, more than agent.max_backends = 1",
            ),
            (
                "ring_size = 65537",
                "max_vips = 65536\nring_size = 1000003",
                "agent.max_vips: 65536 x 3 tables x ring_size 1000003 = 196608589824 entries, more than a BPF array can index",
            ),
        ]);
    }

    #[test]
    fn remote_backends_need_a_tunnel_source_of_their_family() {
        let no_v4 = Config::parse(&with("tunnel_source = \"198.18.1.2\"\n", "")).unwrap();
        let e = no_v4.check_local(&BTreeSet::new()).unwrap_err().to_string();
        assert_eq!(
            e,
            "vip[0].backend[0].address: 198.18.10.2 is a remote IPv4 backend (not an address of this host), which needs agent.tunnel_source to be set"
        );
        // All IPv4 backends local: no IPv4 tunnel source needed.
        let local: BTreeSet<IpAddr> = [
            "198.18.10.2".parse().unwrap(),
            "198.18.10.3".parse().unwrap(),
        ]
        .into();
        no_v4.check_local(&local).unwrap();
        // An IPv6 VIP with a remote IPv6 backend needs tunnel_source_v6; IPv4 backends of an IPv6 VIP need tunnel_source.
        let v6 = format!(
            "{}[[vip.backend]]\naddress = \"fd00::10:2\"\nweight = 1\n",
            good().replace("tunnel_source_v6 = \"fd00::1:2\"\n", "")
        );
        let c = Config::parse(&v6).unwrap();
        let e = c.check_local(&BTreeSet::new()).unwrap_err().to_string();
        assert!(
            e.starts_with("vip[1].backend[1].address: fd00::10:2 is a remote IPv6 backend"),
            "{e}"
        );
        assert!(e.ends_with("needs agent.tunnel_source_v6 to be set"), "{e}");
        Config::parse(&good())
            .unwrap()
            .check_local(&BTreeSet::new())
            .unwrap();
    }

    #[test]
    fn local_set_merges_configured_addresses() {
        let c = Config::parse(&with(
            "hash_seed = 42",
            "hash_seed = 42\nlocal_addresses = [\"198.18.10.3\"]",
        ))
        .unwrap();
        let s = c.local_set(["127.0.0.1".parse().unwrap()]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn health_defaults_and_errors() {
        let c = Config::parse(&with(
            "weight = 2\n",
            "weight = 2\n[vip.health]\nkind = \"http\"\npath = \"/healthz\"\n",
        ))
        .unwrap();
        let h = c.vips[0].health.clone().unwrap();
        assert_eq!(
            (h.kind, h.port, h.path.as_str(), h.expect_status),
            (HealthKind::Http, 80, "/healthz", 200)
        );
        assert_eq!(
            (h.interval_ms, h.timeout_ms, h.rise, h.fall),
            (1000, 500, 2, 3)
        );
        assert!(c.vips[1].health.is_none());
        // The port-0 VIP needs an explicit check port.
        let port0 = format!("{}[vip.health]\nkind = \"tcp\"\n", good());
        assert_eq!(
            err(&port0),
            "vip[1].health.port: is required for a VIP on every port (port = 0)"
        );
        Config::parse(&format!("{port0}port = 53\n")).unwrap();
        let bad = |extra: &str| {
            err(&with(
                "weight = 2\n",
                &format!("weight = 2\n[vip.health]\n{extra}\n"),
            ))
        };
        assert_eq!(
            bad("kind = \"icmp\""),
            "vip[0].health.kind: \"icmp\" is not \"tcp\" or \"http\""
        );
        assert_eq!(
            bad("kind = \"tcp\"\npath = \"/\""),
            "vip[0].health.path: only applies to kind = \"http\""
        );
        assert_eq!(
            bad("kind = \"http\"\nrise = 0"),
            "vip[0].health.rise: 0 is out of range 1..=100"
        );
        assert_eq!(
            bad("kind = \"http\"\ntimeout_ms = 2000"),
            "vip[0].health.timeout_ms: 2000 is longer than interval_ms = 1000"
        );
        assert!(bad("kind = \"http\"\npath = \"healthz\"").starts_with("vip[0].health.path:"));
    }

    #[test]
    fn api_socket_and_metrics_listen() {
        let c = Config::parse(&good()).unwrap();
        assert_eq!(c.agent.api_socket, Some(PathBuf::from(DEFAULT_API_SOCKET)));
        assert_eq!(
            c.agent.metrics_listen,
            Some("127.0.0.1:9742".parse().unwrap())
        );
        let c = Config::parse(&with(
            "hash_seed = 42",
            "hash_seed = 42\napi_socket = \"\"\nmetrics_listen = \"\"",
        ))
        .unwrap();
        assert_eq!((c.agent.api_socket, c.agent.metrics_listen), (None, None));
        assert!(
            err(&with(
                "hash_seed = 42",
                "hash_seed = 42\nmetrics_listen = \"localhost\""
            ))
            .starts_with("agent.metrics_listen: \"localhost\" is not an address:port")
        );
        assert!(
            err(&with(
                "hash_seed = 42",
                "hash_seed = 42\napi_socket = \"a.sock\""
            ))
            .starts_with("agent.api_socket: \"a.sock\" is not an absolute path")
        );
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537) && is_prime(1_000_003) && !is_prime(65535) && !is_prime(1_000_001));
    }
}
