//! `cargo xtask clean-lab`: crash recovery for the network-namespace labs of `tests/src/lab.rs`.
//!
//! Mirrors `anycast_tests::lab::clean_prefix` (xtask cannot depend on the tests crate: that would
//! build the eBPF object before `setup` has installed bpf-linker). A lab is named
//! `ac<4 digits><2 digits>-`; its namespaces start with that prefix and its bpffs is mounted at
//! `/run/anycast-lab/<prefix>bpf`.

use anyhow::bail;

use crate::cmd::output;

pub const LAB_RUN_DIR: &str = "/run/anycast-lab";

fn is_lab_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 9 && name.starts_with("ac") && b[2..8].iter().all(u8::is_ascii_digit) && b[8] == b'-'
}

/// A BPF_PROG_TEST_RUN fixture's namespace (`acfix<pid>_<n>`, tests/src/fixture/netns.rs) whose
/// process is gone: killed before its guard could delete it (SIGKILL, a `timeout`).
fn is_orphan_fixture(name: &str) -> bool {
    name.strip_prefix("acfix")
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(pid, n)| Some((pid.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
        .is_some_and(|(pid, _)| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

pub fn clean(prefix: Option<&str>) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("deleting network namespaces needs root: sudo -E cargo xtask clean-lab");
    }
    let matches = |name: &str| match prefix {
        Some(p) => name.starts_with(p),
        None => is_lab_name(name) || is_orphan_fixture(name),
    };
    let list = output("ip", &["netns", "list"]).unwrap_or_default();
    let mut deleted = 0;
    for ns in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| matches(n))
    {
        for pid in output("ip", &["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        match output("ip", &["netns", "del", ns]) {
            Some(_) => {
                println!("clean-lab: deleted namespace {ns}");
                deleted += 1;
            }
            None => println!("clean-lab: could not delete namespace {ns}"),
        }
    }
    if let Ok(dir) = std::fs::read_dir(LAB_RUN_DIR) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if matches(&name) {
                let path = entry.path();
                let _ = nix::mount::umount2(&path.join("bpf"), nix::mount::MntFlags::MNT_DETACH);
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => println!("clean-lab: removed {}", path.display()),
                    Err(e) => println!("clean-lab: could not remove {}: {e}", path.display()),
                }
            }
        }
    }
    println!("clean-lab: {deleted} namespace(s) deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lab_names_are_recognised_by_their_shape() {
        assert!(super::is_lab_name("ac123401-edge1"));
        assert!(super::is_lab_name("ac123401-"));
        assert!(!super::is_lab_name("ac12-edge1"));
        assert!(!super::is_lab_name("production"));
    }
}
