//! `anycast conns`: the tracked connections of the dataplane, from its pinned maps.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use ipnet::IpNet;

use crate::config::{DEFAULT_PIN_PATH, DEFAULT_STATE_FILE};
use crate::dataplane::conns::{ConnsReport, Filter, Tier, TrackedConn};
use crate::dataplane::stats::StateFile;

#[derive(Debug, Args)]
pub struct ConnsArgs {
    /// Only this VIP: ADDR, ADDR:PORT or ADDR:PORT/PROTO.
    #[arg(long)]
    pub vip: Option<String>,
    /// Only connections tracked to this backend.
    #[arg(long)]
    pub backend: Option<IpAddr>,
    /// Only clients in this prefix (an address alone is a /32 or /128).
    #[arg(long, value_name = "PREFIX", value_parser = parse_prefix)]
    pub client: Option<IpNet>,
    /// List at most N connections (the most recent first); the counts cover every match.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
    #[command(flatten)]
    pub pins: PinArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where the pinned maps are.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// The dataplane's pins (agent.pin_path); default: the state file's, else /sys/fs/bpf/anycast.
    #[arg(long, value_name = "DIR")]
    pub pin_path: Option<PathBuf>,
    /// The agent's state file (agent.state_file), which names its pin_path.
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
}

impl PinArgs {
    pub fn pin_path(&self) -> PathBuf {
        if let Some(p) = &self.pin_path {
            return p.clone();
        }
        let file = self
            .state_file
            .clone()
            .unwrap_or_else(|| DEFAULT_STATE_FILE.into());
        StateFile::read(&file)
            .ok()
            .map(|s| s.pin_path)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| DEFAULT_PIN_PATH.into())
    }
}

fn parse_prefix(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or prefix (e.g. 198.51.100.0/24)"))
}

impl ConnsArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            vip: self.vip.clone(),
            backend: self.backend,
            client: self.client,
        }
    }
}

fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::Established => "established",
        Tier::New => "new",
    }
}

fn backend_text(c: &TrackedConn) -> String {
    c.backend.map_or_else(
        || format!("id {} (stale: ignored)", c.backend_id),
        |b| b.to_string(),
    )
}

/// One tracked connection as a line.
pub fn render_conn(c: &TrackedConn) -> String {
    format!(
        "{} {} -> {} backend {} ({}, {}, since {} ms)",
        c.protocol,
        c.client,
        c.vip,
        backend_text(c),
        tier_name(c.tier),
        c.tier.map_name(),
        c.since_ms
    )
}

/// `anycast conns` for people.
pub fn render(r: &ConnsReport, limit: usize) -> String {
    let mut s = String::new();
    let n = |t| r.total.get(&t).copied().unwrap_or(0);
    let _ = writeln!(
        s,
        "tracked: {} established (CONNS), {} new (CONNS_NEW; {} more are promoted flows' old entries, shadowed by CONNS); {} match",
        n(Tier::Established),
        n(Tier::New),
        r.shadowed,
        r.matched
    );
    for (b, count) in &r.per_backend {
        let _ = writeln!(s, "  backend {b}: {count}");
    }
    if !r.conns.is_empty() {
        let _ = writeln!(
            s,
            "{:<5} {:<45} {:<45} {:<28} {:<11} {:>10}",
            "proto", "client", "vip", "backend", "tier", "since_ms"
        );
    }
    for c in &r.conns {
        let _ = writeln!(
            s,
            "{:<5} {:<45} {:<45} {:<28} {:<11} {:>10}",
            c.protocol,
            c.client.to_string(),
            c.vip.to_string(),
            backend_text(c),
            tier_name(c.tier),
            c.since_ms
        );
    }
    if r.matched > r.conns.len() as u64 {
        let _ = writeln!(
            s,
            "({} more not listed: --limit {limit})",
            r.matched - r.conns.len() as u64
        );
    }
    s
}
