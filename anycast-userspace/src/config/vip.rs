//! The `[[vip]]` sections: VIPs, their backends and health checks.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVip {
    pub address: String,
    pub port: i64,
    pub protocol: String,
    #[serde(default)]
    pub backend: Vec<RawBackend>,
    pub health: Option<RawHealth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: String,
    pub port: Option<i64>,
    pub path: Option<String>,
    pub expect_status: Option<i64>,
    pub interval_ms: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: String,
    pub weight: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VipConfig {
    pub address: IpAddr,
    /// 0 = any port.
    pub port: u16,
    pub protocol: Protocol,
    pub backends: Vec<BackendConfig>,
    /// `[vip.health]`; `None` = backends are not checked (always healthy).
    pub health: Option<HealthConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connect to the backend's check port.
    Tcp,
    /// An HTTP/1.1 GET of `path`, expecting `expect_status`.
    Http,
}

impl fmt::Display for HealthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
        })
    }
}

/// A VIP's backend health check (`[vip.health]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HealthConfig {
    pub kind: HealthKind,
    /// The port checked on each backend's address (default: the VIP's port).
    pub port: u16,
    /// HTTP only.
    pub path: String,
    /// HTTP only.
    pub expect_status: u16,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Consecutive successes that make an unhealthy backend healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub fall: u32,
}

impl VipConfig {
    /// `203.0.113.10:80/tcp`, `[2001:db8::10]:any/udp`.
    pub fn label(&self) -> String {
        vip_label(self.address, self.port, self.protocol)
    }
}

pub fn vip_label(address: IpAddr, port: u16, protocol: Protocol) -> String {
    let port = if port == 0 {
        "any".to_string()
    } else {
        port.to_string()
    };
    match address {
        IpAddr::V4(a) => format!("{a}:{port}/{protocol}"),
        IpAddr::V6(a) => format!("[{a}]:{port}/{protocol}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// Plain ratio; 0 = drained (no new flows).
    pub weight: u32,
}

pub(super) fn validate_health(
    field: &str,
    raw: RawHealth,
    vip_port: u16,
) -> Result<HealthConfig, ConfigError> {
    let RawHealth {
        kind,
        port,
        path,
        expect_status,
        interval_ms,
        timeout_ms,
        rise,
        fall,
    } = raw;
    let kind = match kind.as_str() {
        "tcp" => HealthKind::Tcp,
        "http" => HealthKind::Http,
        other => {
            return Err(invalid(
                format!("{field}.kind"),
                format!("{other:?} is not \"tcp\" or \"http\""),
            ));
        }
    };
    let port: u16 = match port {
        Some(p) => int_in(&format!("{field}.port"), p, 1, 65535)?,
        None if vip_port == 0 => {
            return Err(invalid(
                format!("{field}.port"),
                "is required for a VIP on every port (port = 0)",
            ));
        }
        None => vip_port,
    };
    if kind == HealthKind::Tcp {
        for (name, set) in [
            ("path", path.is_some()),
            ("expect_status", expect_status.is_some()),
        ] {
            if set {
                return Err(invalid(
                    format!("{field}.{name}"),
                    "only applies to kind = \"http\"",
                ));
            }
        }
    }
    let path = path.unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') || path.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(invalid(
            format!("{field}.path"),
            format!("{path:?} is not an absolute HTTP path without spaces (e.g. \"/healthz\")"),
        ));
    }
    let expect_status: u16 = int_in(
        &format!("{field}.expect_status"),
        expect_status.unwrap_or(200),
        100,
        599,
    )?;
    let interval_ms: u32 = int_in(
        &format!("{field}.interval_ms"),
        interval_ms.unwrap_or(1000),
        10,
        3_600_000,
    )?;
    let timeout_ms: u32 = int_in(
        &format!("{field}.timeout_ms"),
        timeout_ms.unwrap_or(500),
        1,
        3_600_000,
    )?;
    if timeout_ms > interval_ms {
        return Err(invalid(
            format!("{field}.timeout_ms"),
            format!("{timeout_ms} is longer than interval_ms = {interval_ms}"),
        ));
    }
    let rise: u32 = int_in(&format!("{field}.rise"), rise.unwrap_or(2), 1, 100)?;
    let fall: u32 = int_in(&format!("{field}.fall"), fall.unwrap_or(3), 1, 100)?;
    Ok(HealthConfig {
        kind,
        port,
        path,
        expect_status,
        interval_ms,
        timeout_ms,
        rise,
        fall,
    })
}

/// A VIP as the operator names it: address, port (0 = any) and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipId {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl VipId {
    pub fn of(v: &VipConfig) -> Self {
        Self {
            address: v.address,
            port: v.port,
            protocol: v.protocol,
        }
    }
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&vip_label(self.address, self.port, self.protocol))
    }
}

impl std::str::FromStr for VipId {
    type Err = String;

    /// The label [`vip_label`] writes: `203.0.113.10:80/tcp`, `[2001:db8::10]:any/udp`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a VIP (ADDR:PORT/PROTO, e.g. 203.0.113.10:80/tcp)");
        let (rest, proto) = s.rsplit_once('/').ok_or_else(bad)?;
        let protocol = Protocol::parse(proto).ok_or_else(bad)?;
        let (addr, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let addr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let address: IpAddr = addr.parse().map_err(|_| bad())?;
        let port = if port == "any" {
            0
        } else {
            port.parse().map_err(|_| bad())?
        };
        Ok(Self {
            address,
            port,
            protocol,
        })
    }
}

impl<'de> Deserialize<'de> for VipId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for VipId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
