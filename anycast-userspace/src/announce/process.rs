//! The managed BIRD's process: started by the agent, outliving it, and re-adopted by the next
//! agent, so that an agent restart (crash, SIGKILL, upgrade) does not touch the BGP sessions.
//!
//! The agent starts `bird -f -c RUN_DIR/bird.conf -s RUN_DIR/bird.ctl -P RUN_DIR/bird.pid` in a
//! session of its own and without a parent-death signal. A starting agent reads `bird.pid` and
//! adopts the BIRD it names if that process is this config's BIRD: its command line names this
//! run directory's config and socket, its executable is `bgp.bird_binary`, and it answers on the
//! socket. The announcer then reads which prefixes BIRD announces, rewrites `bird.conf` so that
//! a `configure` keeps them, and has BIRD load it. A process that names this run directory but
//! fails a check (another binary, a socket that does not answer) is stopped and a new BIRD
//! started. An orderly stop (SIGTERM) withdraws first and then stops BIRD, adopted or not.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::*;
use crate::error::io_at;

/// A managed BIRD, ours to stop.
#[derive(Debug)]
pub(super) enum BirdProcess {
    /// Started by this agent (reaped by it while it runs).
    Child(tokio::process::Child),
    /// Started by an earlier agent, found through its pid file.
    Adopted(Pid),
}

impl BirdProcess {
    fn pid(&self) -> Option<Pid> {
        match self {
            Self::Child(c) => c.id().map(|p| Pid::from_raw(p as i32)),
            Self::Adopted(p) => Some(*p),
        }
    }

    /// How it ended, once it has.
    pub(super) fn exited(&mut self) -> Option<String> {
        match self {
            Self::Child(c) => match c.try_wait() {
                Ok(Some(st)) => Some(st.to_string()),
                _ => None,
            },
            Self::Adopted(p) => {
                (kill(*p, None) == Err(nix::errno::Errno::ESRCH)).then(|| "gone".to_owned())
            }
        }
    }

    /// SIGTERM, then SIGKILL after a second.
    pub(super) async fn stop(mut self) {
        let Some(pid) = self.pid() else { return };
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.exited().is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.exited().is_none() {
            let _ = kill(pid, Signal::SIGKILL);
            if let Self::Child(c) = &mut self {
                let _ = c.wait().await;
            }
        }
    }
}

pub(super) fn pid_file(m: &ManagedBird) -> PathBuf {
    m.run_dir.join("bird.pid")
}

/// What the pid file leads to.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// This config's BIRD, answering: adopt it.
    Adopt(Pid),
    /// A process on this run directory that is not the BIRD to adopt: stop it first.
    Replace(Pid, String),
    /// Nothing to adopt (why, for the log).
    Nothing(String),
}

/// The executable `bgp.bird_binary` names: a path, or a name looked up in `PATH`.
fn resolve_binary(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return std::fs::canonicalize(binary).ok();
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::canonicalize(p).ok())
    })
}

/// Whether `args` (a command line) runs BIRD on this run directory's config and socket.
fn names_run_dir(args: &[String], m: &ManagedBird) -> bool {
    let has = |flag: &str, value: &Path| {
        args.windows(2)
            .any(|w| w[0] == flag && Path::new(&w[1]) == value)
    };
    has("-c", &m.run_dir.join("bird.conf")) && has("-s", &m.run_dir.join("bird.ctl"))
}

fn find_running(m: &ManagedBird) -> Found {
    let path = pid_file(m);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return Found::Nothing(format!("no pid file {}: {e}", path.display())),
    };
    let Ok(raw) = text.trim().parse::<i32>() else {
        return Found::Nothing(format!(
            "{} holds no pid: {:?}",
            path.display(),
            text.trim()
        ));
    };
    let pid = Pid::from_raw(raw);
    let proc_dir = PathBuf::from(format!("/proc/{raw}"));
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return Found::Nothing(format!("BIRD {raw} of {} is gone", path.display()));
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !names_run_dir(&args, m) {
        return Found::Nothing(format!(
            "process {raw} of {} is not a BIRD on this run directory (pid reused)",
            path.display()
        ));
    }
    let exe = std::fs::read_link(proc_dir.join("exe")).ok();
    let want = resolve_binary(&m.bird_binary);
    if exe.is_none() || exe != want {
        return Found::Replace(
            pid,
            format!(
                "it runs {}, not bgp.bird_binary {} ({})",
                exe.map_or_else(|| "?".into(), |e| e.display().to_string()),
                m.bird_binary.display(),
                want.map_or_else(|| "not found".into(), |w| w.display().to_string())
            ),
        );
    }
    let sock = m.run_dir.join("bird.ctl");
    if let Err(e) = std::os::unix::net::UnixStream::connect(&sock) {
        return Found::Replace(
            pid,
            format!("it does not answer on {}: {e}", sock.display()),
        );
    }
    Found::Adopt(pid)
}

/// The managed BIRD for `m`: the running one if it can be adopted (`true`), else a new one.
pub(super) fn start_or_adopt(
    m: &ManagedBird,
    addresses: &BTreeSet<IpAddr>,
) -> Result<(BirdProcess, bool), BirdError> {
    match find_running(m) {
        Found::Adopt(pid) => {
            info!(pid = pid.as_raw(), socket = %m.run_dir.join("bird.ctl").display(), "re-adopting the running BIRD: its BGP sessions and announcements stay; its config is reloaded");
            return Ok((BirdProcess::Adopted(pid), true));
        }
        Found::Replace(pid, why) => {
            warn!(
                pid = pid.as_raw(),
                why,
                "stopping the BIRD left on the run directory, which cannot be adopted; its sessions close"
            );
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while kill(pid, None).is_ok() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
        Found::Nothing(why) => info!(why, "no running BIRD to adopt; starting one"),
    }
    Ok((BirdProcess::Child(spawn_bird(m, addresses)?), false))
}

fn spawn_bird(
    m: &ManagedBird,
    addresses: &BTreeSet<IpAddr>,
) -> Result<tokio::process::Child, BirdError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&m.run_dir)
        .map_err(io_at("creating", &m.run_dir))?;
    let conf = m.run_dir.join("bird.conf");
    let sock = m.run_dir.join("bird.ctl");
    let pid = pid_file(m);
    write_bird_config(m, addresses, &BTreeSet::new())?;
    // A socket left by a BIRD that was killed: BIRD refuses to start over a live one only.
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&pid);
    let mut cmd = tokio::process::Command::new(&m.bird_binary);
    cmd.arg("-f")
        .arg("-c")
        .arg(&conf)
        .arg("-s")
        .arg(&sock)
        .arg("-P")
        .arg(&pid)
        .stdin(std::process::Stdio::null());
    // SAFETY: only an async-signal-safe call (setsid) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // A session of its own: a Ctrl-C or hangup at the agent's terminal reaches the agent
            // only (which withdraws first and then stops BIRD); nothing ties BIRD's life to the
            // agent's, so an agent that dies leaves BIRD, its sessions and routes, for the next.
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io_at("starting BIRD", &m.bird_binary))?;
    info!(
        pid = child.id().unwrap_or(0),
        config = %conf.display(),
        socket = %sock.display(),
        neighbors = m.neighbors.len(),
        bfd = m.bfd,
        "BIRD started (managed; outlives an agent that dies, re-adopted by the next)"
    );
    Ok(child)
}

/// The VIP prefixes BIRD announces, from a `show protocols` reply: each of `addresses` with
/// whether its static protocol is up.
pub(super) fn announced_in(
    reply: &[String],
    addresses: &BTreeSet<IpAddr>,
) -> BTreeMap<IpAddr, bool> {
    let up: BTreeMap<String, bool> = reply
        .iter()
        .filter_map(|l| {
            let l = l
                .get(5..)
                .filter(|_| l.as_bytes().first() != Some(&b' '))
                .unwrap_or(l);
            let mut w = l.split_whitespace();
            let (name, _proto, _table, state) = (w.next()?, w.next()?, w.next()?, w.next()?);
            Some((name.to_owned(), state == "up"))
        })
        .collect();
    addresses
        .iter()
        .map(|a| (*a, up.get(&protocol_name(*a)).copied().unwrap_or(false)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed(dir: &Path) -> ManagedBird {
        let text = format!(
            "local_as = 65001\nrouter_id = \"198.18.2.2\"\nneighbors = [{{ address = \"198.18.2.1\", as = 65000 }}]\nrun_dir = {:?}\nbird_binary = \"/bin/sh\"",
            dir.display().to_string()
        );
        let raw: crate::config::bgp::RawBgp = toml::from_str(&text).unwrap();
        match crate::config::bgp::validate(raw, None).unwrap().mode {
            BgpMode::Managed(m) => m,
            BgpMode::External { .. } => unreachable!(),
        }
    }

    #[test]
    fn announced_prefixes_are_read_from_show_protocols() {
        let reply: Vec<String> = [
            "2002-Name       Proto      Table      State  Since         Info",
            "1002-device1    Device     ---        up     10:00:00.000  ",
            " anycast_vip_203_0_113_10 Static     master4    up     10:00:01.000  ",
            " anycast_vip_2001_db8_0_0_0_0_0_10 Static     master6    down   10:00:01.000  ",
            " router_ipv4 BGP        ---        up     10:00:02.000  Established   ",
            "0000 ",
        ]
        .iter()
        .map(|l| (*l).to_owned())
        .collect();
        let a: IpAddr = "203.0.113.10".parse().unwrap();
        let b: IpAddr = "2001:db8::10".parse().unwrap();
        let c: IpAddr = "203.0.113.11".parse().unwrap();
        let got = announced_in(&reply, &[a, b, c].into());
        assert_eq!(got, [(a, true), (b, false), (c, false)].into());
    }

    #[test]
    fn only_this_run_directorys_bird_is_adopted() {
        let dir = std::env::temp_dir().join(format!("anycast-adopt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let m = managed(&dir);
        assert!(matches!(find_running(&m), Found::Nothing(w) if w.contains("no pid file")));
        // A pid file naming a process that is no BIRD on this directory (this test): stale.
        std::fs::write(pid_file(&m), format!("{}\n", std::process::id())).unwrap();
        assert!(matches!(find_running(&m), Found::Nothing(w) if w.contains("pid reused")));
        // A process whose command line names this directory, run by the configured binary but
        // not answering on the socket: replaced.
        let conf = dir.join("bird.conf");
        let sock = dir.join("bird.ctl");
        // `sh -c 'read x' -c CONF -s SOCK`: a shell that waits on its stdin, with this run
        // directory's flags on its command line.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read x"])
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&sock)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::fs::write(pid_file(&m), format!("{}\n", child.id())).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let found = loop {
            let f = find_running(&m);
            if !matches!(f, Found::Nothing(_)) || std::time::Instant::now() > deadline {
                break f;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = child.kill();
        let _ = child.wait();
        match found {
            Found::Replace(pid, why) => {
                assert_eq!(pid.as_raw(), child.id() as i32);
                assert!(why.contains("does not answer"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
