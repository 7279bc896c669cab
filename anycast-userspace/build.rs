use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Builds the XDP program (anycast-ebpf) for bpfel-unknown-none with the pinned nightly toolchain and
/// bpf-linker, into OUT_DIR, where `src/dataplane` embeds it. `cargo xtask setup` installs what this
/// needs. AYA_BUILD_SKIP=1 skips it (lint-only jobs).
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "anycast-ebpf")
        .ok_or_else(|| anyhow!("anycast-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        ..Default::default()
    };
    // The nightly pinned by date (`cargo xtask setup` makes it runnable).
    let nightly = format!(
        "anycast-{}",
        include_str!("../anycast-ebpf/nightly-toolchain").trim()
    );
    println!("cargo:rerun-if-changed=../anycast-ebpf/nightly-toolchain");
    let runnable = std::process::Command::new("rustup")
        .args(["run", &nightly, "rustc", "-V"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runnable {
        return Err(anyhow!(
            "the eBPF crate builds with {nightly} (anycast-ebpf/nightly-toolchain), which rustup cannot run: `cargo xtask setup` makes it available"
        ));
    }
    aya_build::build_ebpf([ebpf_package], Toolchain::Custom(&nightly))
}
