//! `cargo xtask setup`: installs what the build and the tests need, checking each piece first so
//! that a complete machine costs a few process spawns and no network.
//!
//! The recipe is the verified one from the project notes (toolchain.md): LLVM dev files of the
//! major version nightly rustc is built with, rust-src for `-Z build-std=core`, and bpf-linker
//! 0.13.0 built against that LLVM.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::cmd::{cargo, output, run};

/// Debian packages the build, the tests, the lab and the demo use (besides `llvm-<major>-dev`).
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "bpftool",
    "tcpdump",
    "bird2",
    "etcd-server",
    "etcd-client",
    // The `etcd-client` crate's build script compiles etcd's protobuf definitions with protoc.
    "protobuf-compiler",
    "libprotobuf-dev",
    "iperf3",
    "python3-scapy",
    "netcat-openbsd",
    "curl",
    // The lab harness: `ping` in the smoke tests, `sysctl` for namespace settings, `nsenter`.
    "iputils-ping",
    "procps",
    "util-linux",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The nightly toolchain the eBPF crate builds with, pinned by date in one file
/// (`anycast-ebpf/nightly-toolchain`, read by anycast-userspace's build script too), so that a
/// fresh machine builds the object CI built.
pub fn pinned() -> &'static str {
    include_str!("../../anycast-ebpf/nightly-toolchain").trim()
}

/// The rustup toolchain the eBPF crate is built with: the pinned nightly, linked by setup under
/// this name (rustup keeps official names like `nightly-2026-05-20` for its own downloads).
pub fn nightly() -> String {
    format!("anycast-{}", pinned())
}

pub fn setup() -> anyhow::Result<()> {
    pinned_nightly()?;
    let major = llvm_major()?;
    println!("setup: nightly rustc uses LLVM {major}");

    let mut wanted = vec![format!("llvm-{major}-dev")];
    wanted.extend(APT_PACKAGES.iter().map(|p| (*p).to_owned()));
    let missing: Vec<String> = wanted.into_iter().filter(|p| !dpkg_installed(p)).collect();
    let rust_src = rust_src_installed();
    let linker = bpf_linker_state(major);

    if missing.is_empty() {
        println!("setup: apt packages present");
    } else if crate::is_root() {
        println!("setup: installing {}", missing.join(" "));
        run(apt().arg("update"))?;
        run(apt().args(["install", "-y"]).args(&missing))?;
    } else {
        let mut todo = vec![format!(
            "sudo apt-get update && sudo apt-get install -y {}",
            missing.join(" ")
        )];
        if !rust_src {
            todo.push(rust_src_command());
        }
        if linker != LinkerState::Good {
            todo.push(bpf_linker_command(major));
        }
        bail!(
            "setup: not root and apt packages are missing ({}). Run:\n  {}\nthen `cargo xtask setup` again",
            missing.join(", "),
            todo.join("\n  ")
        );
    }

    if rust_src {
        println!("setup: rust-src (nightly) present");
    } else {
        println!("setup: adding rust-src to nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    // `cargo xtask lint`: rustfmt and clippy on the host toolchain, clippy on the pinned nightly.
    for (toolchain, component) in [
        ("stable", "rustfmt"),
        ("stable", "clippy"),
        ("nightly", "clippy"),
    ] {
        if !component_installed(toolchain, component) {
            println!("setup: adding {component} to {toolchain}");
            run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                toolchain,
            ]))?;
        }
    }

    match linker {
        LinkerState::Good => {
            println!("setup: bpf-linker {BPF_LINKER_VERSION} (llvm-{major}) present")
        }
        state => {
            println!(
                "setup: installing bpf-linker {BPF_LINKER_VERSION} for llvm-{major} ({state:?}; takes ~2 minutes)"
            );
            let config = format!("llvm-config-{major}");
            let prefix = output(&config, &["--prefix"])
                .with_context(|| format!("{config} --prefix (is llvm-{major}-dev installed?)"))?;
            // Without LLVM_PREFIX bpf-linker's build script looks in /usr and fails with
            // "unable to find library -lLLVM" (toolchain.md).
            run(cargo()
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--force",
                ])
                .args([
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{major}"),
                ])
                .env("LLVM_PREFIX", prefix.trim()))?;
        }
    }
    println!("setup: done");
    Ok(())
}

fn apt() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    c
}

/// Makes the pinned nightly runnable as [`nightly`]: a link to the machine's `nightly` when that
/// is the pinned build (its channel manifest carries the date), or to `nightly-<date>` installed
/// by rustup (needs the network).
fn pinned_nightly() -> anyhow::Result<()> {
    let (pinned, name) = (pinned(), nightly());
    let date = pinned.strip_prefix("nightly-").unwrap_or(pinned);
    if sysroot(&name).is_some_and(|root| channel_date(&root).as_deref() == Some(date)) {
        println!("setup: {pinned} present ({name})");
        return Ok(());
    }
    let base = if sysroot("nightly")
        .is_some_and(|root| channel_date(&root).as_deref() == Some(date))
    {
        "nightly"
    } else {
        println!("setup: installing {pinned} (the machine's nightly is another build)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            pinned,
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy",
        ]))
        .with_context(|| {
            format!(
                "the eBPF crate is pinned to {pinned} (anycast-ebpf/nightly-toolchain); install it, or change the pin deliberately"
            )
        })?;
        pinned
    };
    // Components go to the real toolchain: a linked one takes none, and shares its directory.
    for component in ["rust-src", "clippy"] {
        if !component_installed(base, component) {
            run(Command::new("rustup").args(["component", "add", component, "--toolchain", base]))?;
        }
    }
    let root = sysroot(base).context("the toolchain just checked has no sysroot")?;
    println!("setup: {base} is {pinned}: linking it as {name}");
    run(Command::new("rustup").args(["toolchain", "link", &name, &root]))
}

fn sysroot(toolchain: &str) -> Option<String> {
    output("rustup", &["run", toolchain, "rustc", "--print", "sysroot"])
        .map(|s| s.trim().to_owned())
}

/// The date of the rustup channel a toolchain's sysroot came from.
fn channel_date(sysroot: &str) -> Option<String> {
    let manifest =
        std::path::Path::new(sysroot).join("lib/rustlib/multirust-channel-manifest.toml");
    manifest_date(&std::fs::read_to_string(manifest).ok()?).map(str::to_owned)
}

/// `date = "2026-05-20"` of a rustup channel manifest.
fn manifest_date(manifest: &str) -> Option<&str> {
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("date = "))
        .map(|d| d.trim().trim_matches('"'))
}

fn component_installed(toolchain: &str, component: &str) -> bool {
    output(
        "rustup",
        &["component", "list", "--toolchain", toolchain, "--installed"],
    )
    .is_some_and(|s| {
        s.lines()
            .any(|l| l.trim() == component || l.starts_with(&format!("{component}-")))
    })
}

/// LLVM major version of the pinned nightly, from the `LLVM version: 22.1.4` line.
fn llvm_major() -> anyhow::Result<u32> {
    let name = nightly();
    let vv = output("rustup", &["run", &name, "rustc", "-vV"])
        .with_context(|| format!("`rustup run {name} rustc -vV` failed"))?;
    parse_llvm_major(&vv).with_context(|| format!("no `LLVM version:` line in:\n{vv}"))
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    let version = rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

fn dpkg_installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|s| s.trim() == "install ok installed")
}

/// rust-src in the pinned nightly's sysroot (a linked toolchain lists no components).
fn rust_src_installed() -> bool {
    sysroot(&nightly()).is_some_and(|root| {
        std::path::Path::new(&root)
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
    })
}

fn rust_src_command() -> String {
    "rustup component add rust-src --toolchain nightly".to_owned()
}

fn bpf_linker_command(major: u32) -> String {
    format!(
        "LLVM_PREFIX=\"$(llvm-config-{major} --prefix)\" cargo install bpf-linker --version {BPF_LINKER_VERSION} --force --no-default-features --features llvm-{major}"
    )
}

#[derive(Debug, PartialEq, Eq)]
enum LinkerState {
    Good,
    Missing,
    WrongVersion,
    OtherLlvm,
}

/// Whether the bpf-linker on PATH is the pinned version built for LLVM `major`. cargo install's
/// own record (`$CARGO_HOME/.crates2.json`) says which features it was built with; a bpf-linker
/// installed some other way is judged by the libLLVM it links.
fn bpf_linker_state(major: u32) -> LinkerState {
    let Some(version) = output("bpf-linker", &["--version"]) else {
        return LinkerState::Missing;
    };
    if version.split_whitespace().nth(1) != Some(BPF_LINKER_VERSION) {
        return LinkerState::WrongVersion;
    }
    let feature = format!("llvm-{major}");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")));
    if let Some(record) = cargo_home
        .and_then(|h| std::fs::read(h.join(".crates2.json")).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        && let Some(installs) = record["installs"].as_object()
        && let Some((_, entry)) = installs.iter().find(|(k, _)| k.starts_with("bpf-linker "))
    {
        let built_for = entry["features"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some(&feature)));
        return if built_for {
            LinkerState::Good
        } else {
            LinkerState::OtherLlvm
        };
    }
    let path = output("sh", &["-c", "command -v bpf-linker"]).unwrap_or_default();
    let libs = output("ldd", &[path.trim()]).unwrap_or_default();
    if libs.contains(&format!("libLLVM.so.{major}"))
        || libs.contains(&format!("libLLVM-{major}.so"))
    {
        LinkerState::Good
    } else {
        LinkerState::OtherLlvm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_comes_from_the_rustc_verbose_version() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn the_pin_is_a_dated_nightly_and_manifests_give_their_date() {
        let pinned = pinned();
        let date = pinned.strip_prefix("nightly-").expect("nightly-YYYY-MM-DD");
        assert_eq!(nightly(), format!("anycast-{pinned}"));
        assert_eq!(date.len(), 10, "{pinned}");
        let manifest = "manifest-version = \"2\"\ndate = \"2026-05-20\"\n[pkg.rustc]\n";
        assert_eq!(manifest_date(manifest), Some("2026-05-20"));
        assert_eq!(manifest_date("[pkg.rustc]\n"), None);
    }
}
