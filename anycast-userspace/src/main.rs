use std::collections::BTreeSet;
use std::process::ExitCode;

use std::path::PathBuf;

use anycast::agent::{self, AgentOptions};
use anycast::api::{self, ClientError};
use anycast::cli::{ApiArgs, Cli, Command, LogFormat, LookupArgs, render_lookup, render_status};
use anycast::config::{Config, DEFAULT_PIN_PATH, DEFAULT_STATE_FILE};
use anycast::dataplane::stats::{self, StateFile, Stats};
use anycast::plan::model::{self, Flow};
use anycast::proto::Request;
use anyhow::{Context as _, anyhow};
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a terminal: not into journald, log files or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level.as_deref());
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Agent {
            config,
            detach: true,
            ..
        }
        | Command::Detach { config } => {
            let c = Config::load(&config)?;
            let report = agent::detach(&c).map_err(|e| anyhow!(agent::error_chain(&e)))?;
            if report.removed.is_empty() {
                println!("nothing pinned under {}", c.agent.pin_path.display());
            }
            for p in report.removed {
                println!("removed {}", p.display());
            }
            Ok(())
        }
        Command::Agent {
            config, xdp_mode, ..
        } => {
            // Before the runtime exists: every thread it starts inherits the mask.
            agent::reset_inherited_signal_state().context("resetting the signal state")?;
            // The controller (config, health verdicts, table builds, map writes) runs on this
            // thread, in `block_on`; the tasks it talks to (health checks, the control API,
            // metrics, the BIRD driver) run on two workers, so a table build never delays a
            // health probe or a BGP poll.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("anycast-worker")
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(agent::run(AgentOptions { config, xdp_mode }))
                .map_err(|e| anyhow!(agent::error_chain(&e)))
        }
        Command::Lookup(args) => lookup(&args),
        Command::Conns(args) => {
            let pin_path = args.pins.pin_path();
            let maps = anycast::dataplane::conns::PinnedConns::open(&pin_path)
                .map_err(|e| anyhow!(agent::error_chain(&e)))
                .context("reading the connection-tracking maps (is this the agent's pin_path?)")?;
            let report = maps.report(&args.filter(), args.limit);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", anycast::cli::conns::render(&report, args.limit));
            }
            Ok(())
        }
        Command::Stats {
            pin_path,
            state_file,
            api,
        } => {
            let st = if pin_path.is_none() && state_file.is_none() {
                match api::Client::new(&api.socket).stats() {
                    Ok(st) => st,
                    Err(e @ (ClientError::Refused(_) | ClientError::Unexpected { .. })) => {
                        return Err(anyhow!(agent::error_chain(&e)));
                    }
                    Err(ClientError::Api(e)) => {
                        eprintln!(
                            "note: {}; reading the pinned maps instead",
                            agent::error_chain(&e)
                        );
                        pinned_stats(None, None)?
                    }
                }
            } else {
                pinned_stats(pin_path, state_file)?
            };
            if api.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", st.render_text());
            }
            Ok(())
        }
        Command::Status { api } => {
            let client = api::Client::new(&api.socket);
            if api.json {
                let v = client
                    .request(&Request::Status)
                    .map_err(|e| anyhow!(agent::error_chain(&e)))?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let st = client
                    .status()
                    .map_err(|e| anyhow!(agent::error_chain(&e)))?;
                print!("{}", render_status(&st));
            }
            Ok(())
        }
        Command::DrainEdge {
            timeout,
            quiet_ms,
            api,
        } => {
            let r = anycast::cli::drain_edge_and_wait(
                &api.socket,
                std::time::Duration::from_secs(timeout),
                std::time::Duration::from_millis(quiet_ms),
            )
            .map_err(|e| anyhow!(agent::error_chain(&e)))?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "edge drained: every VIP withdrawn from BGP{} after {} ms",
                    if r.prefixes_still_announced.is_empty() {
                        String::new()
                    } else {
                        format!(" except {}", r.prefixes_still_announced.join(", "))
                    },
                    r.withdrawn_ms
                );
                match r.quiet_after_ms {
                    Some(ms) => println!(
                        "VIP traffic stopped {ms} ms after the drain ({} packets in between)",
                        r.packets_after_drain
                    ),
                    None => println!(
                        "VIP traffic still flowing after {timeout} s ({} packets since the drain)",
                        r.packets_after_drain
                    ),
                }
            }
            if r.timed_out {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::UndrainEdge { api } => {
            let r = api::Client::new(&api.socket)
                .drain_edge(false)
                .map_err(|e| anyhow!(agent::error_chain(&e)))?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{}", r.message);
            }
            Ok(())
        }
        Command::Drain {
            backend,
            fleet: true,
            config,
            ..
        } => anycast::cli::fleet::drain(&config, &backend, true),
        Command::Undrain {
            backend,
            fleet: true,
            config,
            ..
        } => anycast::cli::fleet::drain(&config, &backend, false),
        Command::Drain {
            backend, vip, api, ..
        } => change(&api, &Request::Drain { vip, backend }),
        Command::Undrain {
            backend, vip, api, ..
        } => change(&api, &Request::Undrain { vip, backend }),
        Command::Fleet(args) => anycast::cli::fleet::run(&args),
        Command::SetWeight {
            backend,
            weight,
            vip,
            clear,
            api,
        } => change(
            &api,
            &Request::SetWeight {
                vip,
                backend,
                weight,
                clear,
            },
        ),
        Command::Check { config } => {
            let c = Config::load(&config)?;
            println!(
                "{}: ok, {} VIPs, {} distinct backends, ring_size {}, hash_seed {}, {} encapsulation, interfaces {}",
                config.display(),
                c.vips.len(),
                c.vips
                    .iter()
                    .flat_map(|v| v.backends.iter().map(|b| b.address))
                    .collect::<BTreeSet<_>>()
                    .len(),
                c.agent.ring_size,
                c.agent.hash_seed,
                c.agent.encapsulation,
                c.agent.interfaces.join(",")
            );
            for v in &c.vips {
                let weighted = v.backends.iter().filter(|b| b.weight > 0).count();
                println!(
                    "  vip {}: {} backends ({} weighted)",
                    v.label(),
                    v.backends.len(),
                    weighted
                );
            }
            for w in c.warnings() {
                println!("warning: {w}");
            }
            Ok(())
        }
    }
}

fn pinned_stats(pin_path: Option<PathBuf>, state_file: Option<PathBuf>) -> anyhow::Result<Stats> {
    let state_file = state_file.unwrap_or_else(|| DEFAULT_STATE_FILE.into());
    let state = StateFile::read(&state_file)
        .context("is the agent running? (anycast stats --pin-path reads its state file)")?;
    let pin_path = pin_path.unwrap_or_else(|| {
        if state.pin_path.as_os_str().is_empty() {
            DEFAULT_PIN_PATH.into()
        } else {
            state.pin_path.clone()
        }
    });
    stats::read_pinned(&pin_path, &state.ids).context("reading the pinned maps")
}

/// drain / undrain / set-weight: prints what changed.
fn change(api: &ApiArgs, req: &Request) -> anyhow::Result<()> {
    let r = api::Client::new(&api.socket)
        .change(req)
        .map_err(|e| anyhow!(agent::error_chain(&e)))?;
    if api.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("{}", r.message);
    for c in &r.changes {
        println!(
            "  vip {}: {} slots moved, table {}",
            c.vip,
            c.slots_moved,
            c.fingerprint.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

fn lookup(args: &LookupArgs) -> anyhow::Result<()> {
    let Some(config_path) = &args.config else {
        let d = api::Client::new(&args.socket)
            .lookup(&args.flow_text())
            .map_err(|e| anyhow!(agent::error_chain(&e)))?;
        // Whether the flow is tracked, from the pinned maps (the program's own answer for a
        // packet of the flow): a tracked entry wins over the table.
        let flow: Flow = args.flow_text().parse()?;
        let pin_path = args.pins.pin_path();
        let tracked = anycast::dataplane::conns::PinnedConns::open(&pin_path)
            .map(|m| m.lookup(&flow))
            .map_err(|e| agent::error_chain(&e));
        if args.json {
            let mut v = serde_json::to_value(&d)?;
            v["tracked"] = match &tracked {
                Ok(t) => serde_json::to_value(t)?,
                Err(e) => serde_json::json!({ "error": e }),
            };
            println!("{v}");
        } else {
            println!("{}", render_lookup(&d, false));
            match tracked {
                Ok(Some(c)) => println!(
                    "tracked: {} (a packet of this flow follows the tracked backend{})",
                    anycast::cli::conns::render_conn(&c),
                    if c.backend.is_none() {
                        " unless stale: this entry is, so the table decides"
                    } else {
                        ", not the table"
                    }
                ),
                Ok(None) => println!(
                    "tracked: no (neither CONNS nor CONNS_NEW holds it: the table above decides)"
                ),
                Err(e) => println!("tracked: unknown ({e})"),
            }
        }
        return Ok(());
    };
    let config = Config::load(config_path)?;
    let flow: Flow = args.flow_text().parse()?;
    let local = if args.local_addresses.is_empty() {
        agent::detect_local(&config)?
    } else {
        config.local_set(args.local_addresses.iter().copied())
    };
    let d = model::decide(&config, &local, &flow);
    println!("{}", render_lookup(&d, args.json));
    Ok(())
}
