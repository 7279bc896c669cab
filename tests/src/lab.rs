//! Network-namespace labs: topologies described as data, built in namespaces that a [`Lab`]
//! deletes again on drop (also when a test panics).
//!
//! Rules (shared/notes/lab.md): the root namespace is never part of a topology, so nothing a lab
//! sends can leave the machine; both ends of every veth are created directly inside their
//! namespaces (`ip link add ... netns A type veth peer ... netns B`) and never exist in the root
//! namespace; every namespace and interface name starts with the lab's unique prefix
//! (`ac<pid % 10000><counter>-`), so labs run in parallel and `cargo xtask clean-lab` can
//! remove what a crashed run left. Lab hosts use 198.18.0.0/15 and fd00::/8, VIPs
//! 203.0.113.0/24 and 2001:db8::/32.
//!
//! Namespaces are created, entered and deleted through [`crate::netns`]. Commands run inside a
//! namespace through `nsenter --net=/run/netns/NAME`, which (unlike `ip netns exec`) keeps the
//! caller's mount namespace, so agents see the lab's bpffs mount. Each lab mounts its own bpffs
//! instance at `/run/anycast-lab/<prefix>/bpf` ([`crate::mount::Mount`]): agents pin there, and
//! unmounting it on drop removes every pin at once.
//!
//! Binaries: the agent is found through `ANYCAST_BIN`, else as `anycast` next to the running
//! executable or one directory up (a test runs from `target/<profile>/deps/`, a binary from
//! `target/<profile>/`). The backend service likewise through `ANYCAST_LAB_SERVER_BIN` or as
//! `anycast-lab-server`. `cargo build` (which `cargo xtask test` runs first) builds both.

use std::path::{Path, PathBuf};

/// Where labs keep their files (agent configs, logs) and their bpffs mounts.
pub const RUN_DIR: &str = "/run/anycast-lab";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("XDP pass program on {ns}/{interface}: {message}")]
    Xdp {
        ns: String,
        interface: String,
        message: String,
    },
    #[error("{what} not found: {hint}")]
    Binary { what: String, hint: String },
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error(transparent)]
    Mount(#[from] crate::mount::MountError),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

mod agent_config;
/// Long-lived TCP connections with data both ways (`anycast-lab-conns`, route-move tests).
pub mod conns;
mod dataplane;
mod exec;
mod prefix;
mod process;
pub mod reference;
mod setup;
mod topology;
mod traffic;

pub use conns::{ConnReport, ConnsOptions, ConnsReport, LongLived};
pub use exec::find_binary;
pub use prefix::{clean_prefix, install_interrupt_cleanup};
pub use process::{ChildSignals, without_colours};
pub use topology::{
    AgentSpec, End, LabHealth, Link, LoopbackAddr, Route, ServerSpec, Sysctl, Topology, VipSpec,
    XdpPass,
};
pub use traffic::{
    FlowRecord, FlowResult, FlowTally, Flows, Transport, tcp_request, tcp_request_bound,
    tcp_request_from, udp_request, udp_request_from,
};

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// A topology built in network namespaces ([`Lab::build`]). Dropping it kills the processes it
/// started, detaches its XDP programs, deletes its namespaces (and so its veths) and its bpffs.
pub struct Lab {
    prefix: String,
    topology: Topology,
    dir: PathBuf,
    bpffs: Option<crate::mount::Mount>,
    namespaces: Vec<crate::netns::Netns>,
    background: Vec<process::Background>,
    pass_programs: Vec<dataplane::PassProgram>,
}

/// Linux interface names have at most 15 bytes (IFNAMSIZ - 1).
const IFNAMSIZ_MAX: usize = 15;

impl Lab {
    /// The lab's prefix, e.g. `ac123401-`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Full namespace name of a short one.
    pub fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// Full interface name of a short one.
    pub fn ifname(&self, short: &str) -> Result<String> {
        let name = format!("{}{short}", self.prefix);
        if name.len() > IFNAMSIZ_MAX {
            return Err(LabError::Setup(format!(
                "interface name {name} is longer than {IFNAMSIZ_MAX} bytes"
            )));
        }
        Ok(name)
    }

    /// Full names of the namespaces this lab created.
    pub fn namespaces(&self) -> Vec<&str> {
        self.namespaces
            .iter()
            .map(crate::netns::Netns::name)
            .collect()
    }

    /// Directory for this lab's files (agent configs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the lab's own bpffs is mounted (agents pin below it).
    fn bpffs(&self) -> PathBuf {
        self.dir.join("bpf")
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
