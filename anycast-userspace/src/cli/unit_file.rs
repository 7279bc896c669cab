//! The systemd unit in deploy/systemd/ must start the agent this CLI knows, at the paths the
//! agent uses by default.

use std::path::Path;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::config::bgp::DEFAULT_RUN_DIR;
use crate::config::{DEFAULT_API_SOCKET, DEFAULT_PIN_PATH, DEFAULT_STATE_FILE};

const UNIT: &str = include_str!("../../../deploy/systemd/anycast.service");

/// `Key=value` lines of the `[Service]` section.
fn service(key: &str) -> Vec<&'static str> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in UNIT.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix('='))
        {
            out.push(v);
        }
    }
    out
}

/// A command line of the unit as the CLI sees it (the binary's path replaced by its name).
fn argv(line: &str) -> Vec<String> {
    let mut words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    assert_eq!(
        Path::new(&words[0]).file_name().and_then(|n| n.to_str()),
        Some("anycast"),
        "{line}"
    );
    words[0] = "anycast".into();
    words
}

#[test]
fn exec_start_is_an_agent_command_line_and_check_checks_the_same_config() {
    let start = service("ExecStart");
    assert_eq!(start.len(), 1, "one ExecStart");
    let config = match Cli::try_parse_from(argv(start[0])).map(|c| c.command) {
        Ok(Command::Agent {
            config,
            detach: false,
            ..
        }) => config,
        other => panic!("ExecStart is not `anycast agent`: {other:?}"),
    };
    match Cli::try_parse_from(argv(service("ExecStartPre")[0])).map(|c| c.command) {
        Ok(Command::Check { config: checked }) => assert_eq!(checked, config),
        other => panic!("ExecStartPre is not `anycast check`: {other:?}"),
    }
}

#[test]
fn the_unit_restarts_a_failed_agent_and_signals_only_the_agent() {
    assert_eq!(service("Restart"), ["on-failure"]);
    // A BIRD child must survive an agent that dies, to be re-adopted (README, "Restarts").
    assert_eq!(service("KillMode"), ["process"]);
    assert_eq!(service("KillSignal"), ["SIGTERM"]);
    assert_eq!(service("Type"), ["exec"]);
    assert_eq!(service("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    let caps = service("CapabilityBoundingSet").join(" ");
    for cap in [
        "CAP_BPF",
        "CAP_NET_ADMIN",
        "CAP_SYS_ADMIN",
        "CAP_NET_BIND_SERVICE",
    ] {
        assert!(caps.split(' ').any(|c| c == cap), "{cap} missing: {caps}");
    }
}

#[test]
fn the_unit_keeps_the_agents_default_paths() {
    let runtime = service("RuntimeDirectory");
    assert_eq!(runtime.len(), 1);
    let run = Path::new("/run").join(runtime[0]);
    for default in [DEFAULT_STATE_FILE, DEFAULT_API_SOCKET, DEFAULT_RUN_DIR] {
        assert!(
            Path::new(default).starts_with(&run),
            "{default} is outside RuntimeDirectory {}",
            run.display()
        );
        assert!(
            UNIT.contains(default),
            "the unit does not document {default}"
        );
    }
    assert_eq!(service("RuntimeDirectoryPreserve"), ["yes"]);
    assert!(UNIT.contains(DEFAULT_PIN_PATH));
    let writable = service("ReadWritePaths").join(" ");
    assert!(
        writable
            .split(' ')
            .any(|p| Path::new(DEFAULT_PIN_PATH).starts_with(p)),
        "{DEFAULT_PIN_PATH} is not writable: {writable}"
    );
}
