//! Command-line interface definitions (the commands themselves run from `main.rs`).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{DEFAULT_PIN_PATH, DEFAULT_STATE_FILE, XdpModeSetting};
use crate::model::Decision;

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
    Agent {
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides agent.xdp_mode.
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpModeSetting>,
    },
    /// Show which backend a flow lands on (same hash and tables as the dataplane).
    Lookup(LookupArgs),
    /// Print the counters of a running agent (from its pinned maps).
    Stats {
        #[arg(long, default_value = DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
        /// The id map the agent writes (agent.state_file).
        #[arg(long, default_value = DEFAULT_STATE_FILE)]
        state_file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Validate a config and print a summary.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct LookupArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// Treat ADDR as an address of this host (repeatable). When given, these plus
    /// agent.local_addresses replace detection, so the answer is that of another host.
    #[arg(long = "local-address", value_name = "ADDR")]
    pub local_addresses: Vec<IpAddr>,
    #[arg(long)]
    pub json: bool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("anycast").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
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
        let Command::Agent { config, xdp_mode } = c.command else {
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
                .parse::<crate::model::Flow>()
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
            json,
        } = parse(&["stats"]).command
        else {
            panic!()
        };
        assert_eq!(pin_path, PathBuf::from(DEFAULT_PIN_PATH));
        assert_eq!(state_file, PathBuf::from(DEFAULT_STATE_FILE));
        assert!(!json);
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
}
