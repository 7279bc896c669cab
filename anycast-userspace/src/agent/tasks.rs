//! The agent's helpers beside the main loop: one health-check task per checked backend, the
//! next-hop cache, and the config file watch.

use super::*;

use std::sync::Arc;

use anycast_common::{CFG_F_HAS_SRC_V4, CFG_F_HAS_SRC_V6, NextHop};
use tokio::sync::watch;

use crate::dataplane::Publisher;
use crate::nexthop::{self, Target, Targets};
use crate::plan::maglev::key_addr;

/// The next-hop cache's task (see [`crate::nexthop`]), fed the remote backends after every
/// change. It owns the `NEXTHOPS` map, which the agent takes out of the loaded object (after
/// pinning it) because nothing else writes it. A restarted agent adopts the pinned map and
/// resolves every entry again in its first pass, within milliseconds.
pub(super) struct NextHops {
    targets: watch::Sender<Arc<Targets>>,
    task: AbortHandle,
}

impl NextHops {
    pub(super) fn start(ctl: &mut Controller<Dataplane>) -> Result<Self, String> {
        let mut take = |name: &str| {
            ctl.sink_mut()
                .ebpf_mut()
                .take_map(name)
                .ok_or_else(|| format!("map {name} is not in the eBPF object"))
        };
        let (entries, lease) = (take(map_names::NEXTHOPS)?, take(map_names::NEXTHOP_LEASE)?);
        let map = nexthop::NextHopMaps {
            entries: aya::maps::Array::<_, NextHop>::try_from(entries)
                .map_err(|e| e.to_string())?,
            lease: aya::maps::Array::<_, u64>::try_from(lease).map_err(|e| e.to_string())?,
        };
        let (targets, rx) = watch::channel(Arc::new(targets_of(ctl.sink().publisher())));
        let task = tokio::spawn(async move {
            if let Err(e) = nexthop::run(rx, map).await {
                error!(error = %error_chain(&e), "next-hop cache stopped; encapsulated packets use the kernel's FIB");
            }
        });
        Ok(Self {
            targets,
            task: task.abort_handle(),
        })
    }

    /// Hands the task the current remote backends, if they changed.
    pub(super) fn update(&self, ctl: &Controller<Dataplane>) {
        let t = targets_of(ctl.sink().publisher());
        self.targets.send_if_modified(|cur| {
            let changed = **cur != t;
            if changed {
                *cur = Arc::new(t);
            }
            changed
        });
    }
}

impl Drop for NextHops {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The remote backends the publisher wrote, and the tunnel sources of its `CONFIG`.
pub fn targets_of(p: &Publisher) -> Targets {
    let mut backends: Vec<Target> = p
        .remote_backends()
        .map(|(id, b)| Target {
            id,
            generation: b.generation,
            address: key_addr(b.family, b.addr_be),
        })
        .collect();
    backends.sort_by_key(|t| t.id);
    let cfg = p.dataplane_config();
    Targets {
        backends,
        source_v4: cfg
            .filter(|c| c.flags & CFG_F_HAS_SRC_V4 != 0)
            .map(|c| c.tunnel_src_v4_be.into()),
        source_v6: cfg
            .filter(|c| c.flags & CFG_F_HAS_SRC_V6 != 0)
            .map(|c| c.tunnel_src_v6_be.into()),
    }
}

/// One health-check task per checked (VIP, backend), kept in step with the config.
#[derive(Default)]
pub(super) struct HealthChecks {
    running: HashMap<(VipId, IpAddr), (HealthConfig, AbortHandle)>,
}

impl HealthChecks {
    pub(super) fn reconcile(
        &mut self,
        ctl: &Controller<Dataplane>,
        events: &mpsc::UnboundedSender<HealthEvent>,
    ) {
        let wanted = ctl.checks();
        self.running.retain(|key, (cfg, task)| {
            let keep = wanted.get(key) == Some(cfg);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, cfg) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let (vip, backend) = key;
            let task = tokio::spawn(health::run(
                vip,
                backend,
                cfg.clone(),
                ctl.health(vip, backend),
                events.clone(),
            ));
            self.running.insert(key, (cfg, task.abort_handle()));
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

/// Sends a notice whenever the config file may have changed. The directory is watched, not the
/// file: editors and config managers replace a file by renaming a new one over it, which a
/// watch on the old inode would miss.
pub(super) fn watch_config(
    path: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(ToOwned::to_owned);
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
            && ev.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    };
    match notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
            None
        }
    }
}
