//! Network namespaces, the one doorway for every test, lab and tool of this crate: [`Netns`]
//! creates a namespace and deletes it on drop (also when a test panics); [`enter`] runs a closure
//! inside a namespace on the calling thread and moves the thread back afterwards; [`command`] and
//! [`ip`] run programs in it; [`delete_with_prefix`] removes what a crashed run left behind.
//!
//! Namespaces are named ones (`ip netns`): a bind mount of the namespace at `/run/netns/NAME`,
//! so that commands and other processes can find it by name. Names carry a per-test prefix
//! (shared/notes/lab.md), which is what [`with_prefix`] and [`delete_with_prefix`] select on.

use std::fs::File;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`ip netns add {name}` failed ({status}): {stderr}")]
    Add {
        name: String,
        status: String,
        stderr: String,
    },
    #[error("{what} network namespace {name}")]
    Io {
        what: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A named network namespace that this process created; deleted on drop (also while a panic
/// unwinds). Processes still inside keep it alive until they exit, but it loses its name.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (`ip netns add`): an error if it exists.
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running `ip netns add` for", name))?;
        if !out.status.success() {
            return Err(NetnsError::Add {
                name: name.to_owned(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(Netns {
            name: name.to_owned(),
        })
    }

    /// Deletes a namespace `name` left by an earlier run, then creates it afresh.
    pub fn replace(name: &str) -> Result<Netns, NetnsError> {
        delete(name);
        Netns::create(name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`enter`] this namespace.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        enter(&self.name, f)
    }

    /// [`command`] in this namespace.
    pub fn command(&self) -> Command {
        command(&self.name)
    }

    /// [`ip`] in this namespace.
    pub fn ip(&self) -> Command {
        ip(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A process left inside (a daemon that outlived the one that started it, such as a BIRD
        // whose agent was killed) would keep the namespace alive, nameless, after `ip netns del`.
        for pid in pids(&self.name) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        delete(&self.name);
    }
}

/// The bind mount that names namespace `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Runs `f` on the calling thread inside namespace `name`, then moves the thread back to the
/// namespace it was in, also when `f` panics. setns(2) with `CLONE_NEWNET` moves only the
/// calling thread, so the process's other threads stay where they are; sockets `f` opens and
/// threads it spawns belong to `name`, and stay there after `f` returns.
pub fn enter<T>(name: &str, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    let _inside = Inside::enter(name)?;
    Ok(f())
}

/// While it lives, the calling thread is in another network namespace; dropping it moves the
/// thread back. Not `Send`: it must drop on the thread it moved.
struct Inside {
    back: File,
    _same_thread: PhantomData<*const ()>,
}

impl Inside {
    fn enter(name: &str) -> Result<Inside, NetnsError> {
        let target = File::open(path(name)).map_err(io_err("opening", name))?;
        // `thread-self`, not `self`: `self` is the main thread's, which may be elsewhere.
        let back = File::open("/proc/thread-self/ns/net").map_err(io_err(
            "opening the current thread's namespace to come back from",
            name,
        ))?;
        nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io_err("entering", name)(e.into()))?;
        Ok(Inside {
            back,
            _same_thread: PhantomData,
        })
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(&self.back, nix::sched::CloneFlags::CLONE_NEWNET) {
            // The thread would go on in a lab's namespace, believing itself back: nothing it
            // does after this can be trusted, and a panic here may be one during unwinding.
            eprintln!("returning to the previous network namespace failed: {e}");
            std::process::abort();
        }
    }
}

/// `nsenter --net=/run/netns/NAME --`: add the program and its arguments. Unlike
/// `ip netns exec`, it keeps the caller's mount namespace (so agents see a lab's bpffs mount);
/// nsenter execs the program, so the child is the program itself.
pub fn command(name: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", path(name).display())).arg("--");
    c
}

/// `ip -n NAME`: add the arguments.
pub fn ip(name: &str) -> Command {
    let mut c = Command::new("ip");
    c.arg("-n").arg(name);
    c
}

/// Deletes namespace `name` if it exists (`ip netns del`), quietly: for cleanup.
pub fn delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .output();
}

/// The named namespaces whose names start with `prefix`, sorted.
pub fn with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The processes inside namespace `name` (`ip netns pids`); none if it does not exist.
pub fn pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stdin(Stdio::null())
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes every namespace whose name starts with `prefix`, killing (SIGKILL) the processes in
/// it first: what a crashed run, or a process a lab's agents forked, left behind. The same logic
/// as `cargo xtask clean-lab`.
pub fn delete_with_prefix(prefix: &str) {
    for name in with_prefix(prefix) {
        for pid in pids(&name) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        delete(&name);
    }
}

fn io_err(what: &'static str, name: &str) -> impl FnOnce(std::io::Error) -> NetnsError {
    let name = name.to_owned();
    move |source| NetnsError::Io { what, name, source }
}
