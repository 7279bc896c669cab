//! Filesystems a test mounts for itself (a bpffs for pins: the machine's /sys/fs/bpf may not be
//! mounted; a tmpfs to stand in for another filesystem), unmounted on drop, panics included.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{what} a {fstype} at {}", dir.display())]
pub struct MountError {
    what: &'static str,
    fstype: &'static str,
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

impl MountError {
    fn panic(self) -> Mount {
        panic!("{self}: {}", self.source)
    }
}

/// A mount made by the test; lazily unmounted (and its directory removed, when the test
/// created it) on drop.
pub struct Mount {
    path: PathBuf,
    remove_dir: bool,
}

impl Mount {
    /// A fresh bpffs at `$TMPDIR/anycast-<name>-<pid>`.
    ///
    /// # Panics
    /// If the directory cannot be made or the mount fails: the test cannot go on.
    pub fn bpffs(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("anycast-{name}-{}", std::process::id()));
        let mut m = Self::new("bpf", &dir, None).unwrap_or_else(MountError::panic);
        m.remove_dir = true;
        m
    }

    /// A bpffs at `dir` (created if missing; left in place on drop), or why not: for a harness
    /// that reports its errors (the lab) rather than panicking.
    pub fn bpffs_at(dir: &Path) -> Result<Self, MountError> {
        Self::new("bpf", dir, None)
    }

    /// A 1 MiB tmpfs at `dir` (created if missing; left in place on drop).
    ///
    /// # Panics
    /// As [`Mount::bpffs`].
    pub fn tmpfs(dir: &Path) -> Self {
        Self::new("tmpfs", dir, Some("size=1m")).unwrap_or_else(MountError::panic)
    }

    fn new(fstype: &'static str, dir: &Path, data: Option<&str>) -> Result<Self, MountError> {
        let err = |what, source| MountError {
            what,
            fstype,
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| err("creating the mount point for", e))?;
        nix::mount::mount(
            Some(fstype),
            dir,
            Some(fstype),
            nix::mount::MsFlags::empty(),
            data,
        )
        .map_err(|e| err("mounting", e.into()))?;
        Ok(Self {
            path: dir.to_owned(),
            remove_dir: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
