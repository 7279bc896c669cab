//! Running commands and code inside a lab's namespaces (through [`crate::netns`]), and finding
//! the workspace's binaries.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::{Lab, LabError, Result, io_err};
use crate::netns;

impl Lab {
    /// A command to run in namespace `ns` (short name): add the program and its arguments. See
    /// [`netns::command`]: the lab's bpffs mount stays visible.
    pub fn command(&self, ns: &str) -> Command {
        netns::command(&self.ns(ns))
    }

    /// Runs a command inside namespace `ns` (short name) and returns its output, whatever its
    /// exit status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let mut c = self.command(ns);
        c.args(args).stdin(Stdio::null());
        c.output()
            .map_err(io_err(format!("running {args:?} in {ns}")))
    }

    /// Like [`Lab::exec`], but an error unless the command succeeds; returns its stdout.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> Result<String> {
        run_checked(self.command(ns).args(args))
    }

    /// `count` pings from `ns` to `target`, 0.2 s apart, within `count + 2` seconds: `Ok` when
    /// answered, else ping's output.
    pub fn ping(&self, ns: &str, target: &str, count: u32) -> Result<(), String> {
        let (count, within) = (count.to_string(), (count + 2).to_string());
        let out = self
            .exec(
                ns,
                &["ping", "-c", &count, "-i", "0.2", "-w", &within, target],
            )
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<String> {
        run_checked(netns::ip(&self.ns(ns)).args(args))
    }

    /// Adds or replaces a route (`ip route replace`); routes to IPv6 prefixes are recognised by a `:`.
    pub fn set_route(&self, ns: &str, dst: &str, via: &str) -> Result<()> {
        let family = if dst.contains(':') || via.contains(':') {
            "-6"
        } else {
            "-4"
        };
        self.ip(ns, &[family, "route", "replace", dst, "via", via])
            .map(drop)
    }

    /// Runs `f` inside namespace `ns` ([`netns::enter`]: on the calling thread, which returns
    /// to its own namespace afterwards): sockets it creates live there.
    pub fn in_netns<T>(&self, ns: &str, f: impl FnOnce() -> T) -> Result<T> {
        Ok(netns::enter(&self.ns(ns), f)?)
    }
}

/// Finds a workspace binary: `$env_var`, else next to the current executable or one directory
/// up (tests run from `target/<profile>/deps`).
pub fn find_binary(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LabError::Binary {
                what: name.to_owned(),
                hint: format!("{env_var}={} is not a file", path.display()),
            })
        };
    }
    let exe = std::env::current_exe().map_err(io_err("locating the current executable"))?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| LabError::Binary {
            what: name.to_owned(),
            hint: format!("looked at {candidates:?}; run `cargo build` first or set {env_var}"),
        })
}

/// Runs `cmd`; its stdout, or an error with its stderr unless it succeeds.
pub(super) fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running {cmd:?}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: format!("{cmd:?}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
