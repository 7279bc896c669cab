//! The processes a lab starts in its namespaces (agents, servers, BIRD, clients): spawned with
//! their logs in the run directory, signalled and stopped by name, all killed with the lab.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Lab, LabError, Result, io_err, tail};

/// The signal state a background process starts with ([`ChildSignals::apply`]). Both parts
/// survive exec (nsenter passes them on to the command it runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildSignals {
    /// An empty mask; SIGINT, SIGTERM and SIGHUP at their default disposition.
    Default,
    /// SIGINT, SIGTERM and SIGHUP blocked and ignored: the worst a parent can pass on (a shell's
    /// background job has SIGINT ignored; a build tool or supervisor may block them while it
    /// waits). For tests that a daemon takes its signals back.
    BlockedAndIgnored,
}

impl ChildSignals {
    /// Makes `c`'s child start with this signal state, whatever this process has.
    pub fn apply(self, c: &mut Command) {
        use std::os::unix::process::CommandExt as _;
        let hostile = self == ChildSignals::BlockedAndIgnored;
        // SAFETY: only async-signal-safe calls (sigemptyset, sigaddset, pthread_sigmask,
        // signal) between fork and exec, on values owned by the closure.
        unsafe {
            c.pre_exec(move || {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                    if hostile {
                        libc::sigaddset(&mut set, sig);
                    }
                    let handler = if hostile {
                        libc::SIG_IGN
                    } else {
                        libc::SIG_DFL
                    };
                    if libc::signal(sig, handler) == libc::SIG_ERR {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                match libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) {
                    0 => Ok(()),
                    e => Err(std::io::Error::from_raw_os_error(e)),
                }
            });
        }
    }
}

pub(super) struct Background {
    pub(super) name: String,
    pub(super) child: Child,
    pub(super) log: PathBuf,
}

impl Lab {
    /// Starts a background process in `ns`; its stdout and stderr go to `<dir>/<name>.log`. It
    /// is killed when the lab drops. It starts with an empty signal mask and the default
    /// dispositions of SIGINT, SIGTERM and SIGHUP, whatever this process has (std's `Command`
    /// passes the parent's mask on; the demo blocks SIGINT/SIGTERM for its cleanup thread), so the
    /// SIGTERM the lab stops it with arrives.
    pub fn spawn(
        &mut self,
        ns: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        let mut c = self.command(ns);
        c.args(args).envs(env.iter().copied());
        ChildSignals::Default.apply(&mut c);
        self.spawn_command(name, c)
    }

    /// Starts `cmd` as a background process under `name`, like [`Lab::spawn`] but with the
    /// command (usually a [`Lab::command`]) and its signal state ([`ChildSignals::apply`]) set
    /// up by the caller.
    pub fn spawn_command(&mut self, name: &str, mut cmd: Command) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(io_err("cloning log file"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {name}: {cmd:?}")))?;
        self.background.push(Background {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(())
    }

    /// Sends `signal` to the background processes started with [`Lab::spawn`] under `name`;
    /// returns how many there were.
    pub fn signal(&self, name: &str, signal: nix::sys::signal::Signal) -> usize {
        let mut n = 0;
        for b in self.background.iter().filter(|b| b.name == name) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(b.child.id() as i32), signal);
            n += 1;
        }
        n
    }

    /// Sends `signal` to the background processes started under `name` and waits (at most
    /// `timeout`) until each has exited; they are then forgotten, so [`Lab::check_alive`] does not
    /// report them and the name can be spawned again. Returns their exit statuses. The handle is
    /// the process itself: [`Lab::spawn`] runs `nsenter --net=... -- CMD`, which enters the
    /// namespace and execs CMD in the same process.
    pub fn stop(
        &mut self,
        name: &str,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Result<Vec<std::process::ExitStatus>> {
        let (mut stopping, keep): (Vec<Background>, Vec<Background>) =
            std::mem::take(&mut self.background)
                .into_iter()
                .partition(|b| b.name == name);
        self.background = keep;
        if stopping.is_empty() {
            return Err(LabError::Setup(format!(
                "no background process named {name}"
            )));
        }
        let deadline = Instant::now() + timeout;
        let mut statuses = Vec::new();
        for b in &mut stopping {
            let pid = nix::unistd::Pid::from_raw(b.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
            loop {
                match b.child.try_wait() {
                    Ok(Some(status)) => {
                        statuses.push(status);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(None) => {
                        let _ = b.child.kill();
                        let _ = b.child.wait();
                        return Err(LabError::Setup(format!(
                            "{name} (pid {pid}) did not exit within {timeout:?} of {signal}"
                        )));
                    }
                    Err(e) => return Err(io_err(format!("waiting for {name}"))(e)),
                }
            }
        }
        Ok(statuses)
    }

    /// The log of a background process started with [`Lab::spawn`].
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Errors if a background process has exited, with the tail of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        for b in &mut self.background {
            if let Ok(Some(status)) = b.child.try_wait() {
                let log = std::fs::read_to_string(&b.log).unwrap_or_default();
                return Err(LabError::Setup(format!(
                    "{} exited ({status}); log:\n{}",
                    b.name,
                    tail(&log, 30)
                )));
            }
        }
        Ok(())
    }
}

/// A log without the terminal colour sequences (`ESC [ ... m`) tracing's text format puts around
/// levels and field names, so that `field=value` can be searched for.
pub fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(i) = rest.find("\x1b[") {
        out.push_str(&rest[..i]);
        rest = &rest[i + 2..];
        let end = rest
            .find(|c: char| c.is_ascii_alphabetic())
            .map_or(rest.len(), |e| e + 1);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_colours_removes_sgr_sequences_and_keeps_the_text() {
        assert_eq!(
            without_colours(
                "\x1b[2mT\x1b[0m \x1b[33m WARN\x1b[0m \x1b[3mrc\x1b[0m\x1b[2m=\x1b[0m1"
            ),
            "T  WARN rc=1"
        );
        assert_eq!(without_colours("plain"), "plain");
    }
}
