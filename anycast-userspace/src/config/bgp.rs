//! The `[bgp]` section: what the operator writes, and its validation (errors name the field).
//! The announcer (the `announce` module) runs what it describes.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

pub const DEFAULT_RUN_DIR: &str = "/run/anycast/bird";

/// The `[bgp]` section as serde sees it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBgp {
    pub bird_socket: Option<String>,
    pub local_as: Option<i64>,
    pub router_id: Option<String>,
    #[serde(default)]
    pub neighbors: Vec<RawNeighbor>,
    pub bfd: Option<bool>,
    pub bfd_interval_ms: Option<i64>,
    pub bfd_multiplier: Option<i64>,
    pub hold_time: Option<i64>,
    pub keepalive_time: Option<i64>,
    pub min_healthy_backends: Option<i64>,
    pub bird_binary: Option<String>,
    pub run_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNeighbor {
    pub address: String,
    #[serde(rename = "as")]
    pub asn: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BgpConfig {
    pub mode: BgpMode,
    pub min_healthy_backends: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum BgpMode {
    Managed(ManagedBird),
    External { bird_socket: PathBuf },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManagedBird {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub neighbors: Vec<Neighbor>,
    pub bfd: bool,
    pub bfd_interval_ms: u32,
    pub bfd_multiplier: u32,
    pub hold_time: u32,
    pub keepalive_time: u32,
    pub bird_binary: PathBuf,
    /// `bird.conf` and `bird.ctl` go here.
    pub run_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Neighbor {
    pub address: IpAddr,
    pub asn: u32,
}

impl BgpConfig {
    pub fn socket(&self) -> PathBuf {
        match &self.mode {
            BgpMode::Managed(m) => m.run_dir.join("bird.ctl"),
            BgpMode::External { bird_socket } => bird_socket.clone(),
        }
    }

    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            BgpMode::Managed(_) => "managed",
            BgpMode::External { .. } => "external",
        }
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

fn int_in(field: &str, v: i64, lo: i64, hi: i64) -> Result<u32, ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(field, format!("{v} is out of range {lo}..={hi}")));
    }
    Ok(u32::try_from(v).expect("range checked"))
}

/// Validates `[bgp]`. `tunnel_source` is the default router id.
pub fn validate(raw: RawBgp, tunnel_source: Option<Ipv4Addr>) -> Result<BgpConfig, ConfigError> {
    let RawBgp {
        bird_socket,
        local_as,
        router_id,
        neighbors,
        bfd,
        bfd_interval_ms,
        bfd_multiplier,
        hold_time,
        keepalive_time,
        min_healthy_backends,
        bird_binary,
        run_dir,
    } = raw;
    let min_healthy_backends = int_in(
        "bgp.min_healthy_backends",
        min_healthy_backends.unwrap_or(1),
        0,
        i64::from(u32::MAX),
    )?;
    if let Some(sock) = bird_socket {
        if sock.is_empty() {
            return Err(invalid("bgp.bird_socket", "empty path"));
        }
        // External BIRD: its config is the operator's, so managed-mode fields would be ignored.
        let managed_only = [
            ("local_as", local_as.is_some()),
            ("router_id", router_id.is_some()),
            ("neighbors", !neighbors.is_empty()),
            ("bfd", bfd.is_some()),
            ("bfd_interval_ms", bfd_interval_ms.is_some()),
            ("bfd_multiplier", bfd_multiplier.is_some()),
            ("hold_time", hold_time.is_some()),
            ("keepalive_time", keepalive_time.is_some()),
            ("bird_binary", bird_binary.is_some()),
            ("run_dir", run_dir.is_some()),
        ];
        if let Some((f, _)) = managed_only.iter().find(|(_, set)| *set) {
            return Err(invalid(
                format!("bgp.{f}"),
                "only for a BIRD the agent manages; with bgp.bird_socket (external BIRD) it belongs in BIRD's own config",
            ));
        }
        return Ok(BgpConfig {
            mode: BgpMode::External {
                bird_socket: PathBuf::from(sock),
            },
            min_healthy_backends,
        });
    }
    let local_as = int_in(
        "bgp.local_as",
        local_as.ok_or_else(|| {
            invalid(
                "bgp.local_as",
                "required (or set bgp.bird_socket to drive a BIRD you run yourself)",
            )
        })?,
        1,
        i64::from(u32::MAX),
    )?;
    let router_id = match router_id {
        Some(r) => r
            .parse()
            .map_err(|_| invalid("bgp.router_id", format!("{r:?} is not an IPv4 address")))?,
        None => tunnel_source.ok_or_else(|| {
            invalid(
                "bgp.router_id",
                "required when agent.tunnel_source is not set (BGP router ids are IPv4 addresses)",
            )
        })?,
    };
    if neighbors.is_empty() {
        return Err(invalid(
            "bgp.neighbors",
            "at least one neighbor ({ address = \"ADDR\", as = ASN }) is needed",
        ));
    }
    let mut seen = BTreeSet::new();
    let mut ns = Vec::new();
    for (i, n) in neighbors.into_iter().enumerate() {
        let f = format!("bgp.neighbors[{i}]");
        let address: IpAddr = n.address.parse().map_err(|_| {
            invalid(
                format!("{f}.address"),
                format!("{:?} is not an IP address", n.address),
            )
        })?;
        if !seen.insert(address) {
            return Err(invalid(
                format!("{f}.address"),
                format!("duplicate neighbor {address}"),
            ));
        }
        let asn = int_in(&format!("{f}.as"), n.asn, 1, i64::from(u32::MAX))?;
        ns.push(Neighbor { address, asn });
    }
    // BIRD's and most routers' default; BFD (on by default) detects a dead edge in well under a
    // second, so the hold timer is only the fallback.
    let hold = int_in("bgp.hold_time", hold_time.unwrap_or(90), 0, 65535)?;
    // RFC 4271 section 4.2: the hold time is zero or at least three seconds.
    if hold != 0 && hold < 3 {
        return Err(invalid(
            "bgp.hold_time",
            format!("{hold} s: must be 0 or at least 3 (RFC 4271, 4.2)"),
        ));
    }
    let keepalive = int_in(
        "bgp.keepalive_time",
        keepalive_time.unwrap_or(i64::from(hold / 3).max(1)),
        1,
        65535,
    )?;
    if hold != 0 && keepalive >= hold {
        return Err(invalid(
            "bgp.keepalive_time",
            format!("{keepalive} s is not below bgp.hold_time = {hold} s"),
        ));
    }
    let run_dir = PathBuf::from(run_dir.unwrap_or_else(|| DEFAULT_RUN_DIR.to_owned()));
    if run_dir.as_os_str().is_empty() {
        return Err(invalid("bgp.run_dir", "empty path"));
    }
    Ok(BgpConfig {
        mode: BgpMode::Managed(ManagedBird {
            local_as,
            router_id,
            neighbors: ns,
            bfd: bfd.unwrap_or(true),
            bfd_interval_ms: int_in(
                "bgp.bfd_interval_ms",
                bfd_interval_ms.unwrap_or(100),
                10,
                60_000,
            )?,
            bfd_multiplier: int_in("bgp.bfd_multiplier", bfd_multiplier.unwrap_or(3), 1, 255)?,
            hold_time: hold,
            keepalive_time: keepalive,
            bird_binary: PathBuf::from(bird_binary.unwrap_or_else(|| "bird".to_owned())),
            run_dir,
        }),
        min_healthy_backends,
    })
}
