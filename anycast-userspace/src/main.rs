use std::collections::BTreeSet;
use std::process::ExitCode;

use anycast::agent::{self, AgentOptions};
use anycast::cli::{Cli, Command, LogFormat, LookupArgs, render_lookup};
use anycast::config::Config;
use anycast::model::{self, Flow};
use anycast::stats::{self, StateFile};
use anyhow::{Context as _, anyhow};
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
        Command::Agent { config, xdp_mode } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(agent::run(AgentOptions { config, xdp_mode }))
                .map_err(|e| anyhow!(agent::error_chain(&e)))
        }
        Command::Lookup(args) => lookup(&args),
        Command::Stats {
            pin_path,
            state_file,
            json,
        } => {
            let state = StateFile::read(&state_file)
                .context("is the agent running? (anycast stats reads its state file)")?;
            let st =
                stats::read_pinned(&pin_path, &state.ids).context("reading the pinned maps")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", st.render_text());
            }
            Ok(())
        }
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

fn lookup(args: &LookupArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
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
