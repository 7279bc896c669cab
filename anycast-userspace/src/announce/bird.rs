//! BIRD 2: its control socket (the `birdc` line protocol), the managed BIRD's config and child
//! process.

use super::*;
use crate::error::{IoError, io_at};

/// Prefix of the BIRD protocol names the agent drives.
pub const PROTOCOL_PREFIX: &str = "anycast_vip_";

/// The BIRD protocol that holds `address`'s prefix. BIRD symbols are letters, digits and `_`;
/// an IPv6 address is written as its eight groups in hex so every address has one name.
pub fn protocol_name(address: IpAddr) -> String {
    let body = match address {
        IpAddr::V4(a) => a
            .octets()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("_"),
        IpAddr::V6(a) => a
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("_"),
    };
    format!("{PROTOCOL_PREFIX}{body}")
}

pub(super) fn prefix_of(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// BIRD's config for managed mode: one disabled static protocol per VIP address, one BGP session
/// per neighbor exporting only those, BFD on the sessions when configured. No kernel protocol:
/// the edge learns nothing and the blackhole routes that carry the prefixes never reach its own
/// routing table. Every edge exports the same attributes (origin IGP, its AS, no MED), which is
/// what lets routers merge them into one ECMP route.
///
/// `enabled` are the prefixes BIRD announces right now: they are written without `disabled`, so
/// that a live `configure` with this config keeps them running (BIRD restarts a protocol whose
/// configured `disabled` differs from its state, which would withdraw it).
pub fn bird_config(
    m: &ManagedBird,
    addresses: &BTreeSet<IpAddr>,
    enabled: &BTreeSet<IpAddr>,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Written by the anycast agent from its [bgp] section; do not edit."
    );
    let _ = writeln!(s, "router id {};", m.router_id);
    let _ = writeln!(s, "log stderr all;");
    let _ = writeln!(s, "protocol device {{ scan time 10; }}");
    if m.bfd {
        let _ = writeln!(
            s,
            "protocol bfd anycast_bfd {{\n  interface \"*\" {{ min rx interval {i} ms; min tx interval {i} ms; multiplier {k}; }};\n}}",
            i = m.bfd_interval_ms,
            k = m.bfd_multiplier
        );
    }
    for a in addresses {
        let family = if a.is_ipv4() { "ipv4" } else { "ipv6" };
        let _ = writeln!(
            s,
            "protocol static {} {{\n{}  {family};\n  route {} blackhole;\n}}",
            protocol_name(*a),
            if enabled.contains(a) {
                ""
            } else {
                "  disabled;\n"
            },
            prefix_of(*a)
        );
    }
    for (i, n) in m.neighbors.iter().enumerate() {
        let family = if n.address.is_ipv4() { "ipv4" } else { "ipv6" };
        let _ = writeln!(s, "protocol bgp anycast_peer_{i} {{");
        let _ = writeln!(s, "  local as {};", m.local_as);
        let _ = writeln!(s, "  neighbor {} as {};", n.address, n.asn);
        let _ = writeln!(s, "  hold time {};", m.hold_time);
        let _ = writeln!(s, "  keepalive time {};", m.keepalive_time);
        // Defaults are 5 s before the first connect and 60 s after an error: an edge that comes
        // back should not stay out of the ECMP group for a minute.
        let _ = writeln!(s, "  connect delay time 1;");
        let _ = writeln!(s, "  connect retry time 5;");
        let _ = writeln!(s, "  error wait time 1, 30;");
        if m.bfd {
            let _ = writeln!(s, "  bfd on;");
        }
        let _ = writeln!(
            s,
            "  {family} {{ import none; export where proto ~ \"{PROTOCOL_PREFIX}*\"; next hop self; }};"
        );
        let _ = writeln!(s, "}}");
    }
    s
}

/// The BGP sessions in a `show protocols` reply: (configured, established).
pub fn bgp_sessions(reply: &[String]) -> (usize, usize) {
    let mut configured = 0;
    let mut established = 0;
    for line in reply {
        let mut words = line.split_whitespace();
        let (Some(_name), Some(proto)) = (words.next(), words.next()) else {
            continue;
        };
        if proto == "BGP" {
            configured += 1;
            if line.contains("Established") {
                established += 1;
            }
        }
    }
    (configured, established)
}

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("BIRD answered {command:?} with {reply:?}")]
    Refused { command: String, reply: String },
    #[error("BIRD closed the control connection")]
    Closed,
    #[error("BIRD did not answer {0:?} within 5 s")]
    Timeout(String),
}

/// A connection to BIRD's control socket (the protocol `birdc` speaks): one command per line;
/// a reply is lines `CODE-text` or ` text`, ending with a line `CODE text`. Codes 8xxx and 9xxx
/// are errors.
pub struct BirdClient {
    path: PathBuf,
    read: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl BirdClient {
    pub async fn connect(path: &Path) -> Result<Self, BirdError> {
        let s = UnixStream::connect(path).await.map_err(|source| {
            BirdError::Io(IoError {
                what: "connecting to BIRD's control socket",
                path: path.to_owned(),
                source,
            })
        })?;
        let (r, w) = s.into_split();
        let mut c = Self {
            path: path.to_owned(),
            read: BufReader::new(r),
            write: w,
        };
        c.reply("(greeting)").await?;
        Ok(c)
    }

    async fn reply(&mut self, command: &str) -> Result<Vec<String>, BirdError> {
        let mut lines = Vec::new();
        let read = async {
            loop {
                let mut l = String::new();
                let n = self.read.read_line(&mut l).await.map_err(|source| {
                    BirdError::Io(IoError {
                        what: "reading from BIRD's control socket",
                        path: self.path.clone(),
                        source,
                    })
                })?;
                if n == 0 {
                    return Err(BirdError::Closed);
                }
                let l = l.trim_end_matches('\n').to_owned();
                let b = l.as_bytes();
                let end = b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b' ';
                let code = (b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit)).then(|| b[0]);
                lines.push(l);
                if matches!(code, Some(b'8' | b'9')) && end {
                    return Err(BirdError::Refused {
                        command: command.to_owned(),
                        reply: lines.join(" | "),
                    });
                }
                if end {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .map_err(|_| BirdError::Timeout(command.to_owned()))??;
        Ok(lines)
    }

    /// Sends one command and returns its reply lines.
    pub async fn command(&mut self, command: &str) -> Result<Vec<String>, BirdError> {
        let mut line = command.to_owned();
        line.push('\n');
        self.write
            .write_all(line.as_bytes())
            .await
            .map_err(|source| {
                BirdError::Io(IoError {
                    what: "writing to BIRD's control socket",
                    path: self.path.clone(),
                    source,
                })
            })?;
        self.reply(command).await
    }
}

/// Writes a managed BIRD's config (temporary file + rename: BIRD never reads half a file).
pub(super) fn write_bird_config(
    m: &ManagedBird,
    addresses: &BTreeSet<IpAddr>,
    enabled: &BTreeSet<IpAddr>,
) -> Result<PathBuf, BirdError> {
    let conf = m.run_dir.join("bird.conf");
    let tmp = m.run_dir.join("bird.conf.tmp");
    std::fs::write(&tmp, bird_config(m, addresses, enabled)).map_err(io_at("writing", &tmp))?;
    std::fs::rename(&tmp, &conf).map_err(io_at("renaming into place", &conf))?;
    Ok(conf)
}
