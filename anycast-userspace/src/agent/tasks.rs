//! The agent's helpers beside the main loop: one health-check task per checked backend, and
//! the config file watch.

use super::*;

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
