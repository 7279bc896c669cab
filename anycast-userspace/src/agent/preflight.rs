//! What the agent checks before it touches the dataplane: that no other agent runs on the same
//! pins, and that IP forwarding is on where remote backends need it.

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use tracing::info;

use super::AgentError;
use crate::config::Config;
use crate::error::io_at;
use crate::host;

/// An exclusive lock on the `pin_path` directory, held for the agent's lifetime (the kernel
/// drops it when the process exits, however it exits).
pub struct PinLock {
    _lock: Flock<File>,
}

/// Takes the pin directory's lock (creating the directory, on the bpffs the caller ensured),
/// or names the agent that holds it.
pub fn lock_pins(pin_path: &Path) -> Result<PinLock, AgentError> {
    let io = |what, source| AgentError::Io(io_at(what, pin_path)(source));
    std::fs::create_dir_all(pin_path).map_err(|e| io("creating agent.pin_path", e))?;
    let dir = File::open(pin_path).map_err(|e| io("opening agent.pin_path", e))?;
    let meta = dir
        .metadata()
        .map_err(|e| io("reading agent.pin_path", e))?;
    match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(PinLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(AgentError::AlreadyRunning {
            pin_path: pin_path.to_owned(),
            pid: holder(meta.dev(), meta.ino()),
        }),
        Err((_, e)) => Err(io("locking agent.pin_path", e.into())),
    }
}

/// The process holding a `flock` on the inode (`/proc/locks`: `1: FLOCK ADVISORY WRITE PID
/// MAJ:MIN:INODE 0 EOF`, device numbers in hex).
fn holder(dev: u64, ino: u64) -> Option<u32> {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    std::fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
                .then(|| f.get(4)?.parse().ok())
                .flatten()
        })
}

/// The forwarding sysctl of `family` on `iface`.
pub fn forwarding_key(iface: &str, v4: bool) -> String {
    if v4 {
        format!("net/ipv4/conf/{iface}/forwarding")
    } else {
        format!("net/ipv6/conf/{iface}/forwarding")
    }
}

/// IP forwarding on the attached interfaces, for each family that has remote backends (the
/// kernel's FIB helper refuses every lookup on an interface that does not forward, and the
/// packets the program hands the kernel are forwarded by it). Off: refused, naming the sysctl,
/// or turned on when `agent.enable_forwarding` says so.
pub fn check_forwarding(
    config: &Config,
    local: &std::collections::BTreeSet<IpAddr>,
) -> Result<(), AgentError> {
    let remote = |v4: bool| {
        config.vips.iter().any(|v| {
            v.backends
                .iter()
                .any(|b| b.address.is_ipv4() == v4 && !local.contains(&b.address))
        })
    };
    for v4 in [true, false] {
        if !remote(v4) {
            continue;
        }
        for iface in &config.agent.interfaces {
            let key = forwarding_key(iface, v4);
            if host::read_sysctl(&key).as_deref() != Some("0") {
                continue;
            }
            if !config.agent.enable_forwarding {
                return Err(AgentError::ForwardingOff {
                    sysctl: key.replace('/', "."),
                    family: if v4 { "IPv4" } else { "IPv6" },
                });
            }
            host::write_sysctl(&key, "1")?;
            info!(sysctl = %key.replace('/', "."), "IP forwarding turned on (agent.enable_forwarding)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_pins_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("anycast-pinlock-{}", std::process::id()));
        let first = lock_pins(&dir).expect("the first lock");
        match lock_pins(&dir) {
            Err(AgentError::AlreadyRunning { pin_path, pid }) => {
                assert_eq!(pin_path, dir);
                assert_eq!(pid, Some(std::process::id()), "the holder from /proc/locks");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a second lock on the same pins was granted"),
        }
        drop(first);
        let again = lock_pins(&dir).expect("free again once the holder is gone");
        drop(again);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn the_refusal_names_the_running_agent() {
        let e = AgentError::AlreadyRunning {
            pin_path: "/sys/fs/bpf/anycast".into(),
            pid: Some(42),
        };
        assert!(
            e.to_string()
                .starts_with("another agent (pid 42) runs with agent.pin_path /sys/fs/bpf/anycast"),
            "{e}"
        );
    }
}
