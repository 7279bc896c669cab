//! The bpffs mount the pins live on: found, or mounted when missing.

use crate::error::IoError;
use std::path::{Path, PathBuf};

use super::pins::PinError;

/// Where the pins' bpffs came from ([`ensure_bpffs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bpffs {
    /// `dir` was on a bpffs already.
    Present { dir: PathBuf },
    /// The agent mounted a bpffs at `dir`. `private_namespace`: the agent's mount namespace is
    /// not the host's (PID 1's), so the mount, and with it the pins, last only as long as that
    /// namespace.
    Mounted {
        dir: PathBuf,
        private_namespace: bool,
    },
}

/// Makes sure `pin_path` can hold pins, as Cilium does with /sys/fs/bpf: when neither it nor
/// its parent is on a bpffs, mounts one at the parent (created if missing; mode 0700, nosuid,
/// nodev, noexec, as systemd mounts /sys/fs/bpf). Never over something else: a parent that is
/// the mount point of another filesystem, or that holds files, is refused (a mount would hide
/// them).
pub fn ensure_bpffs(pin_path: &Path) -> Result<Bpffs, PinError> {
    if is_bpffs(pin_path) {
        return Ok(Bpffs::Present {
            dir: pin_path.to_owned(),
        });
    }
    let dir = match pin_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => {
            return Err(PinError::NoBpffs {
                dir: pin_path.to_owned(),
                why: "agent.pin_path has no parent directory to mount one at".into(),
            });
        }
    };
    std::fs::create_dir_all(&dir).map_err(|source| {
        PinError::Io(IoError {
            what: "creating the parent directory of agent.pin_path",
            path: dir.clone(),
            source,
        })
    })?;
    if is_bpffs(&dir) {
        return Ok(Bpffs::Present { dir });
    }
    let refuse = |why: String| PinError::NoBpffs {
        dir: dir.clone(),
        why,
    };
    let canonical = std::fs::canonicalize(&dir).map_err(|source| {
        PinError::Io(IoError {
            what: "resolving",
            path: dir.clone(),
            source,
        })
    })?;
    if let Some(fstype) = mount_at(&canonical) {
        return Err(refuse(format!(
            "it is the mount point of a {fstype} filesystem (a bpffs mounted over it would hide it)"
        )));
    }
    let occupied = std::fs::read_dir(&dir)
        .map_err(|source| {
            PinError::Io(IoError {
                what: "listing",
                path: dir.clone(),
                source,
            })
        })?
        .next()
        .is_some();
    if occupied {
        return Err(refuse(
            "it is not empty (a bpffs mounted over it would hide its files)".into(),
        ));
    }
    use nix::mount::{MsFlags, mount};
    mount(
        Some("bpffs"),
        &dir,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| PinError::Mount {
        dir: dir.clone(),
        source: e.into(),
    })?;
    if !is_bpffs(&dir) {
        return Err(refuse("mounting one there did not make it one".into()));
    }
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let private_namespace = ns("self").is_none() || ns("self") != ns("1");
    Ok(Bpffs::Mounted {
        dir,
        private_namespace,
    })
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// The filesystem type of the mount whose mount point is `dir` (canonical), if `dir` is one.
fn mount_at(dir: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_point_type(&table, dir)
}

/// [`mount_at`] over the text of a `/proc/PID/mountinfo` (proc(5): field 5 is the mount point,
/// with space, tab, newline and backslash as octal escapes; the type follows the ` - `
/// separator). The last mount on a path is the visible one.
pub(crate) fn mount_point_type(mountinfo: &str, dir: &Path) -> Option<String> {
    let unescape = |s: &str| -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let octal = b
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
            match (b[i], octal) {
                (b'\\', Some(d)) => {
                    out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                    i += 4;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        out
    };
    use std::os::unix::ffi::OsStrExt as _;
    let want = dir.as_os_str().as_bytes();
    mountinfo.lines().rev().find_map(|l| {
        let (mount, fs) = l.split_once(" - ")?;
        let point = mount.split(' ').nth(4)?;
        (unescape(point) == want).then(|| fs.split(' ').next().unwrap_or("?").to_owned())
    })
}
