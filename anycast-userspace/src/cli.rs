//! Command-line interface definitions (the commands themselves run from `main.rs`).

pub mod fleet;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::config::{DEFAULT_API_SOCKET, XdpModeSetting};
use crate::plan::model::Decision;
use crate::proto::{Status, VipState};

pub mod conns;
pub mod examples;
#[cfg(test)]
mod unit_file;

#[derive(Debug, Parser)]
#[command(
    name = "anycast",
    version,
    about = "XDP packet steering for anycast edges"
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter (tracing EnvFilter syntax); RUST_LOG wins when set.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the XDP program, write its maps from the config, attach, and run until SIGINT/SIGTERM.
    /// Program, links and maps are pinned under agent.pin_path and stay when the agent exits; a
    /// new agent adopts them (hitless restart and upgrade).
    #[command(after_help = examples::AGENT)]
    Agent {
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides agent.xdp_mode.
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpModeSetting>,
        /// Do not run: remove the dataplane the agent left pinned (same as `anycast detach`).
        #[arg(long)]
        detach: bool,
    },
    /// Remove the dataplane of the config's agent.pin_path: detach the program from every
    /// interface (its pinned links), remove the program and map pins and the state file.
    /// Refused while the agent runs.
    #[command(after_help = examples::DETACH)]
    Detach {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show which backend a flow lands on: from a config file (--config), or from the running
    /// agent's live tables (overrides and health included) through its control socket.
    #[command(after_help = examples::LOOKUP)]
    Lookup(LookupArgs),
    /// List the dataplane's tracked connections (both tiers: CONNS_NEW, new flows on probation,
    /// and CONNS, established) from its pinned maps, with counts per backend: client, VIP,
    /// backend, tier, time since the entry's timestamp. Works while no agent runs.
    #[command(after_help = examples::CONNS)]
    Conns(conns::ConnsArgs),
    /// Print the counters of the running agent: through its control socket, or from its pinned
    /// maps with --pin-path / --state-file (also used when the socket does not answer).
    #[command(after_help = examples::STATS)]
    Stats {
        /// Read the pinned maps under DIR instead of asking the agent.
        #[arg(long, value_name = "DIR")]
        pin_path: Option<PathBuf>,
        /// The id map the agent writes (agent.state_file), for reading pinned maps.
        #[arg(long)]
        state_file: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The running agent's VIPs, backends (weights, health, slots), table fingerprints, program,
    /// attachments and last reload.
    #[command(after_help = examples::STATUS)]
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop sending new flows to BACKEND (weight 0), for one VIP or every VIP it serves. A
    /// runtime override: kept across reloads and agent restarts (state file) until `undrain`
    /// or until the config drops the backend.
    #[command(after_help = examples::DRAIN)]
    Drain {
        backend: String,
        /// ADDR:PORT/PROTO (or ADDR:PORT, ADDR when unambiguous); default: every VIP.
        #[arg(long)]
        vip: Option<String>,
        /// Drain on every edge: a new fleet document with BACKEND in its `drain` list (needs
        /// --config for the [fleet] section; every VIP).
        #[arg(long, conflicts_with = "vip")]
        fleet: bool,
        /// The agent's config, for --fleet.
        #[arg(long, short, default_value = fleet::DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Clear a drain (without --vip: every drain of BACKEND).
    #[command(after_help = examples::UNDRAIN)]
    Undrain {
        backend: String,
        #[arg(long)]
        vip: Option<String>,
        /// Lift a fleet-wide drain (see `drain --fleet`).
        #[arg(long, conflicts_with = "vip")]
        fleet: bool,
        #[arg(long, short, default_value = fleet::DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Override BACKEND's weight (0..=65535) at runtime, or --clear the override.
    #[command(after_help = examples::SET_WEIGHT)]
    SetWeight {
        backend: String,
        #[arg(required_unless_present = "clear")]
        weight: Option<i64>,
        #[arg(long)]
        vip: Option<String>,
        #[arg(long, conflicts_with = "weight")]
        clear: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Withdraw every VIP of this edge from BGP (`[bgp]`), wait until BIRD has withdrawn them
    /// and the VIP traffic has stopped (or --timeout), and report. Lasts until `undrain-edge`,
    /// across agent restarts.
    #[command(after_help = examples::DRAIN_EDGE)]
    DrainEdge {
        /// Give up waiting after this many seconds (the VIPs stay withdrawn).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Traffic has stopped when the VIP packet counters have not grown for this long.
        #[arg(long, default_value_t = 2000)]
        quiet_ms: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Announce the VIPs again (where the health policy allows) after `drain-edge`.
    #[command(after_help = examples::UNDRAIN_EDGE)]
    UndrainEdge {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The fleet document in etcd and the edges' reports (`[fleet]`, docs/fleet.md).
    #[command(after_help = examples::FLEET)]
    Fleet(fleet::FleetArgs),
    /// Validate a config and print a summary.
    #[command(after_help = examples::CHECK)]
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// How a command reaches the agent, and how it prints.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The agent's control socket (agent.api_socket).
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    pub socket: PathBuf,
    /// Print the agent's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LookupArgs {
    /// Compute from this config file; without it, ask the running agent.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The agent's control socket, when asking the agent.
    #[arg(long, default_value = DEFAULT_API_SOCKET, conflicts_with = "config")]
    pub socket: PathBuf,
    /// Treat ADDR as an address of this host (repeatable). When given, these plus
    /// agent.local_addresses replace detection, so the answer is that of another host.
    #[arg(long = "local-address", value_name = "ADDR")]
    pub local_addresses: Vec<IpAddr>,
    /// Print the decision as JSON.
    #[arg(long)]
    pub json: bool,
    /// When asking the agent: where its pinned maps are, to say whether the flow is tracked.
    #[command(flatten)]
    pub pins: conns::PinArgs,
    /// PROTO SRC:PORT DST:PORT, e.g. `tcp 198.51.100.7:40000 203.0.113.10:80` (one argument or three).
    #[arg(required = true, num_args = 1.., value_name = "FLOW")]
    pub flow: Vec<String>,
}

impl LookupArgs {
    pub fn flow_text(&self) -> String {
        self.flow.join(" ")
    }
}

pub fn render_lookup(d: &Decision, json: bool) -> String {
    if json {
        serde_json::to_string(d).expect("serializable")
    } else {
        d.to_string()
    }
}

/// `anycast status` for people.
pub fn render_status(v: &Status) -> String {
    use std::fmt::Write as _;
    let opt = |x: Option<String>| x.unwrap_or_else(|| "-".into());
    let mut s = String::new();
    let p = &v.program;
    let ifaces: Vec<String> = p
        .interfaces
        .iter()
        .map(|i| match i.forwarding {
            Some(f) => format!(
                "{} ({}, forwarding ipv4 {} ipv6 {})",
                i.name,
                i.mode,
                if f.ipv4 { "on" } else { "OFF" },
                if f.ipv6 { "on" } else { "OFF" }
            ),
            None => format!("{} ({})", i.name, i.mode),
        })
        .collect();
    let _ = writeln!(
        s,
        "agent {}  config {}  ring_size {}  hash_seed {}",
        v.version,
        v.config_path.display(),
        v.ring_size,
        v.hash_seed
    );
    let _ = writeln!(
        s,
        "program {} id {}  attached to {}",
        p.name,
        opt(p.id.map(|i| i.to_string())),
        if ifaces.is_empty() {
            "-".into()
        } else {
            ifaces.join(", ")
        }
    );
    match &v.last_reload {
        None => {
            let _ = writeln!(
                s,
                "last reload: none (ok {}, errors {})",
                v.reloads_ok, v.reloads_error
            );
        }
        Some(r) => {
            let _ = writeln!(
                s,
                "last reload: {} ({}, at {}): {}  (ok {}, errors {})",
                if r.ok { "ok" } else { "REJECTED" },
                r.trigger,
                r.at,
                r.message,
                v.reloads_ok,
                v.reloads_error
            );
        }
    }
    if !v.overrides.is_empty() {
        s.push_str("runtime overrides (kept across agent restarts, until cleared or the config drops their backend):\n");
        for e in &v.overrides {
            let scope = e
                .vip
                .map_or_else(|| "every VIP".to_string(), |x| x.to_string());
            let what = if e.drained {
                "drained".to_string()
            } else {
                format!("weight {}", opt(e.weight.map(|w| w.to_string())))
            };
            let _ = writeln!(s, "  {} {what} for {scope}", e.backend);
        }
    }
    if let Some(b) = &v.bgp {
        let _ = writeln!(
            s,
            "bgp {} via {}: BIRD {}{}, min_healthy_backends {}",
            b.mode,
            b.bird_socket.display(),
            b.bird,
            if b.edge_drained { ", EDGE DRAINED" } else { "" },
            b.min_healthy_backends
        );
    }
    if let Some(f) = &v.fleet {
        let _ = writeln!(s, "{}", fleet::render_view(f));
    }
    for vip in &v.vips {
        let state = vip.state.as_str();
        let _ = writeln!(
            s,
            "\nvip {}  {}  table {}",
            vip.vip,
            if vip.state == VipState::Ok {
                state.to_owned()
            } else {
                state.to_uppercase()
            },
            opt(vip.fingerprint.clone())
        );
        if let Some(a) = &vip.announcement {
            let _ = writeln!(
                s,
                "  bgp: {} {} ({})",
                a.prefix,
                if a.announced {
                    "announced"
                } else {
                    "WITHDRAWN"
                },
                a.reason
            );
        }
        if let Some(h) = &vip.health_check {
            let _ = writeln!(s, "  health check: {h}");
        }
        let _ = writeln!(
            s,
            "  {:<28} {:>6} {:>9}  {:<10} {:>7}  notes",
            "backend", "weight", "effective", "health", "slots"
        );
        for b in &vip.backends {
            let mut notes = Vec::new();
            if b.local {
                notes.push("local".to_string());
            }
            if b.drained {
                notes.push("drained".to_string());
            }
            if let Some(w) = b.weight_override {
                notes.push(format!("weight override {w}"));
            }
            let _ = writeln!(
                s,
                "  {:<28} {:>6} {:>9}  {:<10} {:>7}  {}",
                b.address.to_string(),
                b.weight_config,
                b.weight_effective,
                b.health.as_str(),
                b.slots,
                notes.join(", ")
            );
        }
    }
    s
}

/// What `anycast drain-edge` saw.
#[derive(Clone, Debug, Serialize)]
pub struct DrainReport {
    /// Until BIRD had withdrawn every prefix.
    pub withdrawn_ms: u64,
    pub prefixes_still_announced: Vec<String>,
    /// Until the VIP packet counters stopped growing for the quiet period.
    pub quiet_after_ms: Option<u64>,
    /// VIP packets counted after the drain was asked for.
    pub packets_after_drain: u64,
    pub timed_out: bool,
}

/// The CLI side of `anycast drain-edge`: asks the agent to withdraw every VIP, waits until BIRD
/// has done it, then until the VIP packet counters have not grown for `quiet` (traffic has moved
/// to other edges), all within `timeout`.
pub fn drain_edge_and_wait(
    socket: &Path,
    timeout: Duration,
    quiet: Duration,
) -> Result<DrainReport, crate::api::ClientError> {
    let client = crate::api::Client::new(socket);
    let vip_packets = || -> Result<u64, crate::api::ClientError> {
        Ok(client.stats()?.vips.iter().map(|v| v.traffic.packets).sum())
    };
    let start = std::time::Instant::now();
    let deadline = start + timeout;
    let before = vip_packets()?;
    client.drain_edge(true)?;
    let mut still;
    loop {
        still = client
            .status()?
            .vips
            .into_iter()
            .filter_map(|v| v.announcement)
            .filter(|a| a.announced)
            .map(|a| a.prefix)
            .collect::<BTreeSet<String>>();
        if still.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let withdrawn_ms = start.elapsed().as_millis() as u64;
    let mut last = vip_packets()?;
    let mut last_change = std::time::Instant::now();
    let mut quiet_after_ms = None;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now_packets = vip_packets()?;
        if now_packets != last {
            last = now_packets;
            last_change = std::time::Instant::now();
        } else if last_change.elapsed() >= quiet {
            quiet_after_ms = Some((last_change - start).as_millis() as u64);
            break;
        }
    }
    Ok(DrainReport {
        withdrawn_ms,
        timed_out: !still.is_empty() || quiet_after_ms.is_none(),
        prefixes_still_announced: still.into_iter().collect(),
        quiet_after_ms,
        packets_after_drain: last.saturating_sub(before),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_PIN_PATH, DEFAULT_STATE_FILE};
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("anycast").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The overrides' help says what the agent does with them (README, "Runtime overrides"):
    /// kept across restarts through the state file.
    #[test]
    fn override_help_matches_the_agent() {
        let mut cmd = Cli::command();
        let drain = cmd
            .find_subcommand_mut("drain")
            .expect("drain subcommand")
            .render_long_help()
            .to_string();
        assert!(drain.contains("agent restarts"), "{drain}");
        assert!(!drain.contains("forgotten"), "{drain}");
    }

    #[test]
    fn agent_args() {
        let c = parse(&[
            "agent",
            "--config",
            "/etc/anycast.toml",
            "--xdp-mode",
            "native-or-generic",
        ]);
        let Command::Agent {
            config, xdp_mode, ..
        } = c.command
        else {
            panic!()
        };
        assert_eq!(config, PathBuf::from("/etc/anycast.toml"));
        assert_eq!(xdp_mode, Some(XdpModeSetting::NativeOrGeneric));
        assert!(
            Cli::try_parse_from(["anycast", "agent", "--config", "x", "--xdp-mode", "turbo"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["anycast", "agent"]).is_err());
    }

    #[test]
    fn lookup_takes_one_or_three_flow_words() {
        let c = parse(&[
            "--log-format",
            "json",
            "lookup",
            "-c",
            "a.toml",
            "--local-address",
            "198.18.10.2",
            "--local-address",
            "fd00::2",
            "--json",
            "tcp 1.2.3.4:5 6.7.8.9:80",
        ]);
        assert_eq!(c.log_format, LogFormat::Json);
        let Command::Lookup(l) = c.command else {
            panic!()
        };
        assert_eq!(l.local_addresses.len(), 2);
        assert!(l.json);
        assert_eq!(l.flow_text(), "tcp 1.2.3.4:5 6.7.8.9:80");
        let c = parse(&[
            "lookup",
            "-c",
            "a.toml",
            "udp",
            "[2001:db8::1]:5353",
            "[2001:db8::10]:53",
        ]);
        let Command::Lookup(l) = c.command else {
            panic!()
        };
        assert_eq!(
            l.flow_text()
                .parse::<crate::plan::model::Flow>()
                .unwrap()
                .dst
                .port(),
            53
        );
        assert!(Cli::try_parse_from(["anycast", "lookup", "-c", "a.toml"]).is_err());
        assert!(
            Cli::try_parse_from([
                "anycast",
                "lookup",
                "-c",
                "a.toml",
                "--local-address",
                "nope",
                "tcp"
            ])
            .is_err()
        );
    }

    #[test]
    fn stats_defaults() {
        let Command::Stats {
            pin_path,
            state_file,
            api,
        } = parse(&["stats"]).command
        else {
            panic!()
        };
        assert_eq!((pin_path, state_file), (None, None));
        assert_eq!(api.socket, PathBuf::from(DEFAULT_API_SOCKET));
        assert!(!api.json);
        assert_eq!(DEFAULT_PIN_PATH, "/sys/fs/bpf/anycast");
        assert_eq!(DEFAULT_STATE_FILE, "/run/anycast/state.json");
        let c = parse(&[
            "stats",
            "--pin-path",
            "/sys/fs/bpf/x",
            "--json",
            "--log-level",
            "debug",
        ]);
        assert_eq!(c.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn control_commands() {
        let Command::Drain {
            backend, vip, api, ..
        } = parse(&[
            "drain",
            "198.18.10.2",
            "--vip",
            "203.0.113.10:80/tcp",
            "--json",
            "--socket",
            "/tmp/a.sock",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(backend, "198.18.10.2");
        assert_eq!(vip.as_deref(), Some("203.0.113.10:80/tcp"));
        assert!(api.json && api.socket == std::path::Path::new("/tmp/a.sock"));
        let Command::SetWeight { weight, clear, .. } =
            parse(&["set-weight", "198.18.10.2", "3"]).command
        else {
            panic!()
        };
        assert_eq!((weight, clear), (Some(3), false));
        let Command::SetWeight { weight, clear, .. } =
            parse(&["set-weight", "198.18.10.2", "--clear"]).command
        else {
            panic!()
        };
        assert_eq!((weight, clear), (None, true));
        assert!(Cli::try_parse_from(["anycast", "set-weight", "198.18.10.2"]).is_err());
        assert!(
            Cli::try_parse_from(["anycast", "set-weight", "198.18.10.2", "3", "--clear"]).is_err()
        );
        assert!(matches!(parse(&["status"]).command, Command::Status { .. }));
        let Command::Lookup(l) = parse(&["lookup", "tcp 1.2.3.4:5 6.7.8.9:80"]).command else {
            panic!()
        };
        assert!(l.config.is_none());
        assert!(
            Cli::try_parse_from([
                "anycast",
                "lookup",
                "-c",
                "a",
                "--socket",
                "/x",
                "tcp 1.2.3.4:5 6.7.8.9:80"
            ])
            .is_err()
        );
    }
}
