//! Developer and CI entry points: `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! xtask orchestrates; it never builds the eBPF object itself. `cargo build` does that through
//! aya-build in `anycast-userspace/build.rs`, with the toolchain that [`setup`] installs.

mod cmd;
mod lab;
mod setup;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::cmd::{cargo, run};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "anycast developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing needs (apt packages, rust-src, bpf-linker); a no-op when
    /// everything is present.
    Setup,
    /// setup, `cargo build`, `cargo xtask lint`, then every test (the privileged lab tests
    /// included).
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- --test lab_smoke -- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check`, and clippy with `-D warnings` on every crate: the host crates, and the
    /// eBPF crate for its BPF target with the nightly toolchain.
    Lint,
    /// setup, then the benchmark binary (`anycast-bench` in the tests crate) in release mode.
    Bench {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// setup, then the differential fuzzer (`anycast-fuzz` in the tests crate) in release mode:
    /// random and mutated frames through the XDP program (BPF_PROG_TEST_RUN) and through the
    /// host model, compared on action, backend, output bytes and counters. Needs root. Exits
    /// non-zero on a disagreement, printing the seed, the packet index and both outputs.
    Fuzz {
        /// Frames to run.
        #[arg(long, default_value_t = 100_000)]
        packets: u64,
        /// Seed of the frames and of the world's changes (same seed, same run).
        #[arg(long, default_value_t = 20_261_204)]
        seed: u64,
        /// Frames per chunk: the world changes (weights, encapsulation) and tracking starts
        /// empty at every chunk.
        #[arg(long, default_value_t = 10_000)]
        chunk: u64,
    },
    /// setup, `cargo build --release`, then the lab demo (`anycast-demo`): the reference topology
    /// in network namespaces with BGP (the router's BIRD does ECMP and BFD, both edges' agents
    /// announce the VIP), long-lived and short TCP connections to the VIP in a live view while
    /// edge1 is drained, undrained, and edge2 fails hard. Needs root. Arguments after `--` go to
    /// the demo: `--seconds S`, `--conns N`, `--flows N`, `--encapsulation ipip|gue`,
    /// `--fail edge1|edge2`.
    Demo {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// setup, build the agent in release mode and run it with the given arguments. Needs root.
    Run {
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Delete lab network namespaces (and their processes and bpffs mounts) left by a crashed run,
    /// and fixture namespaces (`acfix<pid>_<n>`) whose process is gone.
    CleanLab {
        /// Namespace name prefix; default: every lab namespace (`ac` + 6 digits + `-`).
        prefix: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::setup(),
        Command::Test { args } => test(&args),
        Command::Lint => lint(),
        Command::Bench { args } => bench(&args),
        Command::Fuzz {
            packets,
            seed,
            chunk,
        } => fuzz(packets, seed, chunk),
        Command::Demo { args } => demo(&args),
        Command::Run { args } => run_agent(&args),
        Command::CleanLab { prefix } => lab::clean(prefix.as_deref()),
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The workspace's target directory as cargo sees it (honours CARGO_TARGET_DIR and config).
fn target_dir() -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .output()
        .context("cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The style gate: formatting, and clippy clean with warnings as errors on every crate.
fn lint() -> anyhow::Result<()> {
    let root = workspace_root();
    run(cargo().args(["fmt", "--all", "--check"]).current_dir(&root))?;
    run(cargo()
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "anycast-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(&root))?;
    // The eBPF crate builds only for the BPF target, with nightly's build-std (as aya-build
    // builds it); its own target directory keeps the host build's cache intact.
    let ebpf_target = target_dir()?.join("ebpf-clippy");
    let mut ebpf = std::process::Command::new("rustup");
    ebpf.args([
        "run",
        &setup::nightly(),
        "cargo",
        "clippy",
        "-p",
        "anycast-ebpf",
    ])
    .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
    .arg("--target-dir")
    .arg(&ebpf_target)
    .args(["--", "-D", "warnings"])
    .current_dir(&root)
    // The stable toolchain that runs xtask must not leak into the nightly cargo.
    .env_remove("CARGO")
    .env_remove("RUSTC")
    .env_remove("RUSTUP_TOOLCHAIN")
    .env_remove("CARGO_TARGET_DIR");
    run(&mut ebpf)
}

fn test(args: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    let root = workspace_root();
    run(cargo().arg("build").current_dir(&root))?;
    lint()?;

    let mut test = cargo();
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    test.args([
        "test",
        "--workspace",
        "--exclude",
        "anycast-ebpf",
        "--no-fail-fast",
    ])
    .args(args)
    .current_dir(&root);
    // Two cores: libtest defaults to one thread per core; say so explicitly so that a bigger
    // machine does not start a dozen labs (each with five agents) at once.
    if std::env::var_os("RUST_TEST_THREADS").is_none() {
        test.env("RUST_TEST_THREADS", "2");
    }
    if !is_root() {
        if which("sudo") {
            println!("xtask: not root; running test binaries through `sudo -E`");
            test.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
        } else {
            println!("xtask: not root and no sudo; privileged tests will print why they skip");
        }
    }
    run(&mut test)?;

    if args.is_empty() {
        // Alone, so that feature unification does not turn on `user`: the no_std build the
        // eBPF program sees is tested as such.
        run(cargo()
            .args(["test", "-p", "anycast-common"])
            .current_dir(&root))?;
    }
    Ok(())
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    let root = workspace_root();
    let declared = root.join("tests/src/bin/anycast-bench.rs").exists()
        || root.join("tests/src/bin/anycast-bench/main.rs").exists()
        || std::fs::read_to_string(root.join("tests/Cargo.toml"))
            .is_ok_and(|t| t.contains("\"anycast-bench\""));
    if !declared {
        bail!("the anycast-bench binary (tests/src/bin/anycast-bench.rs) does not exist yet");
    }
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            "anycast-tests",
            "--bin",
            "anycast-bench",
            "--",
        ])
        .args(args)
        .current_dir(&root))
}

fn fuzz(packets: u64, seed: u64, chunk: u64) -> anyhow::Result<()> {
    setup::setup()?;
    if !is_root() {
        bail!(
            "the fuzzer loads the XDP program and creates a network namespace: run it as root (sudo -E cargo xtask fuzz)"
        );
    }
    if chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    let (packets, seed, chunk) = (packets.to_string(), seed.to_string(), chunk.to_string());
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            "anycast-tests",
            "--bin",
            "anycast-fuzz",
            "--",
            "--packets",
            &packets,
            "--seed",
            &seed,
            "--chunk",
            &chunk,
        ])
        .current_dir(workspace_root()))
}

fn demo(args: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    let root = workspace_root();
    if !is_root() {
        bail!(
            "the demo creates network namespaces and loads XDP programs: run it as root (sudo -E cargo xtask demo)"
        );
    }
    run(cargo().args(["build", "--release"]).current_dir(&root))?;
    let bin = target_dir()?.join("release");
    let mut demo = std::process::Command::new(bin.join("anycast-demo"));
    demo.args(args)
        .env("ANYCAST_BIN", bin.join("anycast"))
        .env("ANYCAST_LAB_SERVER_BIN", bin.join("anycast-lab-server"));
    match run(&mut demo) {
        // 130: interrupted (Ctrl-C); the demo has deleted its lab and said so.
        Err(_) if demo_was_interrupted() => std::process::exit(130),
        other => other,
    }
}

/// Whether the last child ended with status 130 (set by [`cmd::run`]).
fn demo_was_interrupted() -> bool {
    cmd::LAST_EXIT_CODE.load(std::sync::atomic::Ordering::Relaxed) == 130
}

fn run_agent(args: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    if !is_root() {
        bail!(
            "the agent loads XDP programs and needs root: sudo -E cargo xtask run -- {}",
            args.join(" ")
        );
    }
    let root = workspace_root();
    run(cargo()
        .args(["build", "--release", "-p", "anycast-userspace"])
        .current_dir(&root))?;
    let bin = target_dir()?.join("release/anycast");
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("exec {}", bin.display()))
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
