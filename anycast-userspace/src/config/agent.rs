//! The `[agent]` section: interfaces, tunnels, sizes, paths; and its validation.

use super::*;

/// Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
pub(super) const MAX_IFNAME: usize = 15;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub interfaces: Vec<String>,
    pub tunnel_source: Option<String>,
    pub tunnel_source_v6: Option<String>,
    pub encapsulation: Option<String>,
    #[serde(default)]
    pub decap_allow: Vec<String>,
    pub ring_size: Option<i64>,
    pub hash_seed: i64,
    pub gue_port: Option<i64>,
    pub xdp_mode: Option<String>,
    pub max_vips: Option<i64>,
    pub max_backends: Option<i64>,
    #[serde(default)]
    pub local_addresses: Vec<String>,
    pub pin_path: Option<String>,
    pub state_file: Option<String>,
    pub api_socket: Option<String>,
    pub metrics_listen: Option<String>,
    pub conntrack_size: Option<i64>,
    pub conntrack_udp_timeout_s: Option<i64>,
    pub conntrack_insert_limit: Option<i64>,
    pub enable_forwarding: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    pub interfaces: Vec<String>,
    pub tunnel_source: Option<Ipv4Addr>,
    pub tunnel_source_v6: Option<Ipv6Addr>,
    pub encapsulation: Encapsulation,
    /// Normalized (host bits cleared).
    pub decap_allow: Vec<IpNet>,
    pub ring_size: u32,
    pub hash_seed: u32,
    pub gue_port: u16,
    pub xdp_mode: XdpModeSetting,
    pub max_vips: u32,
    pub max_backends: u32,
    pub local_addresses: Vec<IpAddr>,
    pub pin_path: PathBuf,
    pub state_file: PathBuf,
    /// `None` when configured as "" (no control API).
    pub api_socket: Option<PathBuf>,
    /// `None` when configured as "" (no metrics endpoint).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Connection-tracking entries (the `CONNS` LRU map); fixed at load.
    pub conntrack_size: u32,
    /// Idle time after which a UDP flow is picked afresh from the table.
    pub conntrack_udp_timeout_s: u32,
    /// New tracking entries allowed per CPU per second (0 = unlimited).
    pub conntrack_insert_limit: u32,
    /// Turn IP forwarding on, on the attached interfaces, when remote backends need it (instead
    /// of refusing to start).
    pub enable_forwarding: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum XdpModeSetting {
    #[default]
    Native,
    Generic,
    /// Try native (driver) mode, fall back to generic with a warning.
    NativeOrGeneric,
}

impl XdpModeSetting {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "native" => Some(Self::Native),
            "generic" => Some(Self::Generic),
            "native-or-generic" => Some(Self::NativeOrGeneric),
            _ => None,
        }
    }
}

impl fmt::Display for XdpModeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::NativeOrGeneric => "native-or-generic",
        })
    }
}

pub(super) fn validate_agent(raw: RawAgent) -> Result<AgentConfig, ConfigError> {
    let RawAgent {
        interfaces,
        tunnel_source,
        tunnel_source_v6,
        encapsulation,
        decap_allow,
        ring_size,
        hash_seed,
        gue_port,
        xdp_mode,
        max_vips,
        max_backends,
        local_addresses,
        pin_path,
        state_file,
        api_socket,
        metrics_listen,
        conntrack_size,
        conntrack_udp_timeout_s,
        conntrack_insert_limit,
        enable_forwarding,
    } = raw;
    let conntrack_size: u32 = int_in(
        "agent.conntrack_size",
        conntrack_size.unwrap_or(i64::from(anycast_common::DEFAULT_CONNTRACK_SIZE)),
        1024,
        1 << 26,
    )?;
    let conntrack_udp_timeout_s: u32 = int_in(
        "agent.conntrack_udp_timeout_s",
        conntrack_udp_timeout_s.unwrap_or(DEFAULT_CONNTRACK_UDP_TIMEOUT_S),
        1,
        86_400,
    )?;
    let conntrack_insert_limit: u32 = int_in(
        "agent.conntrack_insert_limit",
        conntrack_insert_limit.unwrap_or(DEFAULT_CONNTRACK_INSERT_LIMIT),
        0,
        i64::from(u32::MAX),
    )?;
    if interfaces.is_empty() {
        return Err(invalid(
            "agent.interfaces",
            "is empty; list at least one interface to attach to",
        ));
    }
    let mut seen = HashSet::new();
    for (i, name) in interfaces.iter().enumerate() {
        let field = format!("agent.interfaces[{i}]");
        if name.is_empty() || name.len() > MAX_IFNAME || name.contains(['/', ' ', '\0']) {
            return Err(invalid(
                field,
                format!("{name:?} is not a valid interface name"),
            ));
        }
        if !seen.insert(name) {
            return Err(invalid(field, format!("{name:?} is listed twice")));
        }
    }
    // Each tunnel source of its own family; the error says where the other one goes.
    let tunnel_source = tunnel_source
        .map(|s| match ip("agent.tunnel_source", &s)? {
            IpAddr::V4(a) => Ok(a),
            v6 => Err(wrong_family("agent.tunnel_source", &s, v6)),
        })
        .transpose()?;
    let tunnel_source_v6 = tunnel_source_v6
        .map(|s| match ip("agent.tunnel_source_v6", &s)? {
            IpAddr::V6(a) => Ok(a),
            v4 => Err(wrong_family("agent.tunnel_source_v6", &s, v4)),
        })
        .transpose()?;
    let encapsulation = match encapsulation.as_deref() {
        None | Some("ipip") => Encapsulation::Ipip,
        Some("gue") => Encapsulation::Gue,
        Some(other) => {
            return Err(invalid(
                "agent.encapsulation",
                format!("{other:?} is not \"ipip\" or \"gue\""),
            ));
        }
    };
    let mut decap = Vec::with_capacity(decap_allow.len());
    for (i, s) in decap_allow.iter().enumerate() {
        let net: IpNet = s.parse().map_err(|_| {
            invalid(
                format!("agent.decap_allow[{i}]"),
                format!(
                    "{s:?} is not an IP prefix (expected e.g. \"198.18.0.0/15\" or \"fd00::/8\")"
                ),
            )
        })?;
        decap.push(net.trunc());
    }
    if decap.len() as u64 > u64::from(anycast_common::MAX_DECAP_PREFIXES) {
        return Err(invalid(
            "agent.decap_allow",
            format!(
                "{} prefixes, more than the dataplane's {}",
                decap.len(),
                anycast_common::MAX_DECAP_PREFIXES
            ),
        ));
    }
    let ring_size: u32 = int_in(
        "agent.ring_size",
        ring_size.unwrap_or(i64::from(DEFAULT_RING_SIZE)),
        i64::from(MIN_RING_SIZE),
        i64::from(MAX_RING_SIZE),
    )?;
    if !is_prime(ring_size) {
        return Err(invalid(
            "agent.ring_size",
            format!("{ring_size} is not prime (Maglev needs a prime table size, e.g. 65537)"),
        ));
    }
    let hash_seed: u32 = int_in("agent.hash_seed", hash_seed, 0, i64::from(u32::MAX))?;
    let gue_port: u16 = int_in(
        "agent.gue_port",
        gue_port.unwrap_or(i64::from(GUE_DEFAULT_PORT)),
        1,
        65535,
    )?;
    let xdp_mode = match xdp_mode {
        None => XdpModeSetting::default(),
        Some(s) => XdpModeSetting::parse(&s).ok_or_else(|| {
            invalid(
                "agent.xdp_mode",
                format!("{s:?} is not \"native\", \"generic\" or \"native-or-generic\""),
            )
        })?,
    };
    let max_vips: u32 = int_in(
        "agent.max_vips",
        max_vips.unwrap_or(i64::from(DEFAULT_MAX_VIPS)),
        1,
        65_536,
    )?;
    let max_backends: u32 = int_in(
        "agent.max_backends",
        max_backends.unwrap_or(i64::from(DEFAULT_MAX_BACKENDS)),
        1,
        1 << 20,
    )?;
    let ring_entries =
        u64::from(max_vips) * u64::from(anycast_common::TABLES_PER_VIP) * u64::from(ring_size);
    if ring_entries > u64::from(u32::MAX) {
        return Err(invalid(
            "agent.max_vips",
            format!(
                "{max_vips} x {} tables x ring_size {ring_size} = {ring_entries} entries, more than a BPF array can index",
                anycast_common::TABLES_PER_VIP
            ),
        ));
    }
    let mut locals = Vec::with_capacity(local_addresses.len());
    for (i, s) in local_addresses.iter().enumerate() {
        locals.push(ip(&format!("agent.local_addresses[{i}]"), s)?);
    }
    let pin_path = absolute_path("agent.pin_path", pin_path, DEFAULT_PIN_PATH)?;
    let state_file = absolute_path("agent.state_file", state_file, DEFAULT_STATE_FILE)?;
    let api_socket = match api_socket.as_deref() {
        None => Some(PathBuf::from(DEFAULT_API_SOCKET)),
        Some("") => None,
        Some(p) if !Path::new(p).is_absolute() => {
            return Err(invalid(
                "agent.api_socket",
                format!("{p:?} is not an absolute path (\"\" disables the control API)"),
            ));
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    let metrics_listen = match metrics_listen.as_deref() {
        None => Some(DEFAULT_METRICS_LISTEN.parse().expect("valid default")),
        Some("") => None,
        Some(s) => Some(s.parse().map_err(|_| {
            invalid(
                "agent.metrics_listen",
                format!("{s:?} is not an address:port such as \"127.0.0.1:9742\" or \"[::1]:9742\" (\"\" disables metrics)"),
            )
        })?),
    };
    Ok(AgentConfig {
        interfaces,
        tunnel_source,
        tunnel_source_v6,
        encapsulation,
        decap_allow: decap,
        ring_size,
        hash_seed,
        gue_port,
        xdp_mode,
        max_vips,
        max_backends,
        local_addresses: locals,
        pin_path,
        state_file,
        api_socket,
        metrics_listen,
        conntrack_size,
        conntrack_udp_timeout_s,
        conntrack_insert_limit,
        enable_forwarding: enable_forwarding.unwrap_or(false),
    })
}

/// `"198.18.1.2" is not an IPv6 address (IPv4 goes in agent.tunnel_source)`: a tunnel source of
/// the other family, and the field it goes in.
fn wrong_family(field: &str, s: &str, got: IpAddr) -> ConfigError {
    let (want, got, other) = match got {
        IpAddr::V4(_) => ("IPv6", "IPv4", "agent.tunnel_source"),
        IpAddr::V6(_) => ("IPv4", "IPv6", "agent.tunnel_source_v6"),
    };
    invalid(
        field,
        format!("{s:?} is not an {want} address ({got} goes in {other})"),
    )
}

/// The configured path, or `default` when unset; either must be absolute.
fn absolute_path(
    field: &str,
    configured: Option<String>,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(configured.unwrap_or_else(|| default.to_owned()));
    if !path.is_absolute() {
        return Err(invalid(
            field,
            format!("{:?} is not an absolute path", path.display().to_string()),
        ));
    }
    Ok(path)
}
