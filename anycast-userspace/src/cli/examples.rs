//! The EXAMPLES section of each subcommand's `--help` (clap `after_help`). Every line that
//! starts with `  anycast ` is a command line that must parse (tests below); a `#` starts a
//! comment, and lines not starting with `  anycast ` explain.

pub const AGENT: &str = "\
EXAMPLES:
  anycast agent --config /etc/anycast/anycast.toml
      Run the agent in the foreground (systemd: deploy/systemd/anycast.service). SIGHUP or an
      edit of the file reloads; SIGTERM withdraws the VIPs from BGP and exits, leaving the
      pinned dataplane forwarding for the next agent.
  anycast agent --config /etc/anycast/anycast.toml --xdp-mode generic
      Attach in generic (skb) mode, for a driver without native XDP.
  anycast agent --config /etc/anycast/anycast.toml --detach
      Remove the pinned dataplane instead of running (same as `anycast detach`).";

pub const DETACH: &str = "\
EXAMPLES:
  anycast detach --config /etc/anycast/anycast.toml
      Stop steering for good: detach the program from every interface and remove the pins
      under agent.pin_path (default /sys/fs/bpf/anycast) and the state file.";

pub const LOOKUP: &str = "\
EXAMPLES:
  anycast lookup tcp 198.51.100.7:40000 203.0.113.10:80
      Ask the running agent (live tables: overrides and health applied).
  anycast lookup 'udp [2001:db8::7]:5353 [2001:db8:100::10]:53' --json
      One argument works too; --json prints the decision as JSON.
  anycast lookup --config /etc/anycast/anycast.toml tcp 198.51.100.7:40000 203.0.113.10:80
      Compute from a config file, as this host would (no agent needed).
  anycast lookup --config edge2.toml --local-address 198.18.10.3 tcp 198.51.100.7:40000 203.0.113.10:80
      As another host would: its addresses replace this host's.
Asking the agent, lookup also says whether the flow is tracked (CONNS or CONNS_NEW, which
backend), from the pinned maps (--pin-path, --state-file).";

pub const CONNS: &str = "\
EXAMPLES:
  anycast conns
      Counts per tier and backend, and the 50 most recent connections.
  anycast conns --vip 203.0.113.10:80/tcp --backend 198.18.10.2 --limit 10
  anycast conns --client 198.51.100.0/24 --json
  anycast conns --pin-path /sys/fs/bpf/anycast
      Read these pins (default: the state file's agent.pin_path).";

pub const STATS: &str = "\
EXAMPLES:
  anycast stats
      Counters from the running agent (summed over CPUs).
  anycast stats --json
  anycast stats --pin-path /sys/fs/bpf/anycast --state-file /run/anycast/state.json
      Read the pinned maps directly, while no agent runs (between restarts).";

pub const STATUS: &str = "\
EXAMPLES:
  anycast status
  anycast status --json
  anycast status --socket /run/anycast/anycast.sock
      Ask the agent whose agent.api_socket is this path.";

pub const DRAIN: &str = "\
EXAMPLES:
  anycast drain 198.18.10.2
      No new flows to the backend for any VIP it serves (tracked flows stay).
  anycast drain 198.18.10.2 --vip 203.0.113.10:80/tcp
      Only for one VIP.
  anycast drain 198.18.10.2 --fleet --config /etc/anycast/anycast.toml
      On every edge: a new fleet document with the backend in its `drain` list ([fleet]).";

pub const UNDRAIN: &str = "\
EXAMPLES:
  anycast undrain 198.18.10.2
  anycast undrain 198.18.10.2 --vip 203.0.113.10:80/tcp --json
  anycast undrain 198.18.10.2 --fleet";

pub const SET_WEIGHT: &str = "\
EXAMPLES:
  anycast set-weight 198.18.10.2 3
  anycast set-weight 198.18.10.2 0 --vip 203.0.113.10:80/tcp
  anycast set-weight 198.18.10.2 --clear
      Back to the config's weight.";

pub const DRAIN_EDGE: &str = "\
EXAMPLES:
  anycast drain-edge
      Withdraw every VIP of this edge, then wait until its VIP traffic stops (exit 2 on timeout).
  anycast drain-edge --timeout 120 --quiet-ms 5000 --json";

pub const UNDRAIN_EDGE: &str = "\
EXAMPLES:
  anycast undrain-edge";

pub const FLEET: &str = "\
EXAMPLES:
  anycast fleet diff fleet.toml
      Per VIP: backends added, removed, reweighted, and the share of slots that would move.
  anycast fleet apply fleet.toml
      Validate (as every edge will) and write a new revision; refused with a conflict if
      another writer applied since the document was read.
  anycast fleet status
      Every live edge: its revision and table fingerprints; flags laggards and differing tables.
  anycast fleet history --config /etc/anycast/anycast.toml
  anycast fleet show 42 --json
  anycast fleet rollback 42
      Write the document of revision 42 again, as a new revision.";

pub const CHECK: &str = "\
EXAMPLES:
  anycast check --config /etc/anycast/anycast.toml
      Validate and summarize; exit status 1 with the field named when invalid.";

/// The command lines of an EXAMPLES text, split like a POSIX shell splits them (single and
/// double quotes; no expansion).
pub fn command_lines(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter_map(|l| l.strip_prefix("  anycast "))
        .map(|l| {
            let l = l.split(" #").next().unwrap_or(l);
            let mut words = vec!["anycast".to_owned()];
            let mut cur: Option<String> = None;
            let mut quote: Option<char> = None;
            for c in l.chars() {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), c) => cur.get_or_insert_default().push(c),
                    (None, '\'' | '"') => {
                        quote = Some(c);
                        cur.get_or_insert_default();
                    }
                    (None, c) if c.is_whitespace() => words.extend(cur.take()),
                    (None, c) => cur.get_or_insert_default().push(c),
                }
            }
            words.extend(cur);
            words
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::command_lines;
    use crate::cli::Cli;

    #[test]
    fn every_subcommand_has_examples_that_parse_as_that_subcommand() {
        let root = Cli::command();
        let mut seen = 0;
        for sub in root.get_subcommands() {
            let name = sub.get_name();
            if name == "help" {
                continue;
            }
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("EXAMPLES:\n"),
                "`anycast {name} --help` has no EXAMPLES section (cli/examples.rs)"
            );
            let lines = command_lines(&help);
            assert!(!lines.is_empty(), "`anycast {name}`: no example command");
            for words in lines {
                assert_eq!(
                    words.get(1).map(String::as_str),
                    Some(name),
                    "an example of `{name}` runs another command: {words:?}"
                );
                match Cli::try_parse_from(&words) {
                    Err(e) => panic!("example {words:?} does not parse:\n{e}"),
                    Ok(Cli {
                        command: crate::cli::Command::Lookup(l),
                        ..
                    }) => {
                        if let Err(e) = l.flow_text().parse::<crate::plan::model::Flow>() {
                            panic!("example {words:?}: the flow does not parse: {e}");
                        }
                    }
                    Ok(_) => {}
                }
            }
            seen += 1;
        }
        assert!(seen >= 11, "{seen} subcommands");
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(
            command_lines("  anycast lookup 'tcp a:1 b:2' --json\nnot a command\n"),
            [["anycast", "lookup", "tcp a:1 b:2", "--json"]]
        );
    }

    #[test]
    fn a_broken_example_is_caught() {
        let words = &command_lines("  anycast drain --vip x")[0];
        assert!(Cli::try_parse_from(words).is_err());
    }
}
