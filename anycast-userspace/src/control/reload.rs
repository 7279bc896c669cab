//! Config reloads: what may change live, what needs a restart, and what changed.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{field}: changed from {old} to {new}; {why}, so the new config is not applied")]
    NeedsRestart {
        field: &'static str,
        old: String,
        new: String,
        why: &'static str,
    },
    #[error("writing the maps")]
    Apply(#[source] Box<DataplaneError>),
}

const SIZED: &str = "the maps are sized at load time";

/// An `[agent]` field only a restart applies: its name, how it shows, why.
type RestartOnly = (
    &'static str,
    fn(&crate::config::AgentConfig) -> String,
    &'static str,
);

/// A reason for a field to need a restart; checked on every reload.
pub(super) fn restart_only(old: &Config, new: &Config) -> Result<(), ReloadError> {
    let (a, b) = (&old.agent, &new.agent);
    let checks: [RestartOnly; 10] = [
        (
            "agent.interfaces",
            |c| format!("{:?}", c.interfaces),
            "attaching to other interfaces needs a restart of the agent",
        ),
        (
            "agent.xdp_mode",
            |c| c.xdp_mode.to_string(),
            "the attach mode is chosen at start",
        ),
        ("agent.ring_size", |c| c.ring_size.to_string(), SIZED),
        ("agent.max_vips", |c| c.max_vips.to_string(), SIZED),
        ("agent.max_backends", |c| c.max_backends.to_string(), SIZED),
        (
            "agent.conntrack_size",
            |c| c.conntrack_size.to_string(),
            SIZED,
        ),
        (
            "agent.pin_path",
            |c| c.pin_path.display().to_string(),
            "the maps are pinned at start",
        ),
        (
            "agent.state_file",
            |c| c.state_file.display().to_string(),
            "the state file is chosen at start",
        ),
        (
            "agent.api_socket",
            |c| format!("{:?}", c.api_socket),
            "the control socket is bound at start",
        ),
        (
            "agent.metrics_listen",
            |c| format!("{:?}", c.metrics_listen),
            "the metrics endpoint is bound at start",
        ),
    ];
    let checks = checks.map(|(field, show, why)| (field, show(a), show(b), why));
    for (field, old, new, why) in checks {
        if old != new {
            return Err(ReloadError::NeedsRestart {
                field,
                old,
                new,
                why,
            });
        }
    }
    // The announcer and its BIRD are started (or not) at start; what they say changes live
    // (crate::announce::live_change), the VIP address set included.
    match (&old.bgp, &new.bgp) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            if let Err((field, old, new, why)) = crate::announce::live_change(a, b) {
                return Err(ReloadError::NeedsRestart {
                    field,
                    old,
                    new,
                    why,
                });
            }
        }
        (a, b) => {
            return Err(ReloadError::NeedsRestart {
                field: "bgp",
                old: if a.is_some() { "present" } else { "absent" }.into(),
                new: if b.is_some() { "present" } else { "absent" }.into(),
                why: "the BGP announcer (and a managed BIRD) is started or not at start",
            });
        }
    }
    Ok(())
}

pub(super) fn tables_of(effective: &Config, desired: &DesiredState) -> BTreeMap<VipId, VipTable> {
    effective
        .vips
        .iter()
        .zip(&desired.vips)
        .map(|(v, d)| (VipId::of(v), d.table.clone()))
        .collect()
}

/// Per-VIP differences between two publications.
pub fn diff(
    old: &Config,
    old_tables: &BTreeMap<VipId, VipTable>,
    new: &Config,
    new_tables: &BTreeMap<VipId, VipTable>,
) -> Vec<VipChange> {
    let weights = |c: &Config| -> BTreeMap<VipId, BTreeMap<IpAddr, u32>> {
        c.vips
            .iter()
            .map(|v| {
                (
                    VipId::of(v),
                    v.backends.iter().map(|b| (b.address, b.weight)).collect(),
                )
            })
            .collect()
    };
    let (ow, nw) = (weights(old), weights(new));
    let empty_w = BTreeMap::new();
    let empty_t = VipTable {
        backends: Vec::new(),
        slots: Vec::new(),
    };
    let ids: BTreeSet<VipId> = ow.keys().chain(nw.keys()).copied().collect();
    let mut out = Vec::new();
    for id in ids {
        let (o, n) = (
            ow.get(&id).unwrap_or(&empty_w),
            nw.get(&id).unwrap_or(&empty_w),
        );
        let (ot, nt) = (
            old_tables.get(&id).unwrap_or(&empty_t),
            new_tables.get(&id).unwrap_or(&empty_t),
        );
        let added: Vec<IpAddr> = n.keys().filter(|a| !o.contains_key(a)).copied().collect();
        let removed: Vec<IpAddr> = o.keys().filter(|a| !n.contains_key(a)).copied().collect();
        let reweighted: Vec<(IpAddr, u32, u32)> = n
            .iter()
            .filter_map(|(a, w)| o.get(a).filter(|ow| *ow != w).map(|ow| (*a, *ow, *w)))
            .collect();
        let slots_moved = ot.slots_moved(nt);
        let vip_added = !ow.contains_key(&id);
        let vip_removed = !nw.contains_key(&id);
        if added.is_empty()
            && removed.is_empty()
            && reweighted.is_empty()
            && slots_moved == 0
            && !vip_added
            && !vip_removed
        {
            continue;
        }
        out.push(VipChange {
            vip: id,
            added,
            removed,
            reweighted,
            slots_moved,
            fingerprint: nt.fingerprint(),
            vip_added,
            vip_removed,
        });
    }
    out
}

impl<S: Sink> Controller<S> {
    /// Replaces the config with `new` (the result of reading and parsing the file) if it is
    /// valid and only changes what can change live. On error nothing is written and the
    /// dataplane keeps its last good state.
    pub fn reload(
        &mut self,
        trigger: &str,
        new: Result<Config, ConfigError>,
        local: BTreeSet<IpAddr>,
    ) -> Result<Vec<VipChange>, ReloadError> {
        let result = self.try_reload(trigger, new, local);
        let (ok, message) = match &result {
            Ok(changes) => {
                self.reloads_ok += 1;
                let message = if changes.is_empty() {
                    "no VIP table changed".to_string()
                } else {
                    format!(
                        "{} VIP(s) changed: {}",
                        changes.len(),
                        changes
                            .iter()
                            .map(|c| c.vip.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                info!(trigger, "config reloaded: {message}");
                (true, message)
            }
            Err(e) => {
                self.reloads_error += 1;
                let message = error_chain(e);
                error!(
                    trigger,
                    "config rejected, the dataplane keeps its last good state: {message}"
                );
                (false, message)
            }
        };
        self.last_reload = Some(ReloadOutcome {
            at: now(),
            trigger: trigger.to_owned(),
            ok,
            message,
        });
        result
    }

    pub(super) fn try_reload(
        &mut self,
        trigger: &str,
        new: Result<Config, ConfigError>,
        local: BTreeSet<IpAddr>,
    ) -> Result<Vec<VipChange>, ReloadError> {
        let new = new?;
        restart_only(&self.base, &new)?;
        new.check_local(&local)?;
        for w in new.warnings() {
            warn!("{w}");
        }
        if new == self.base && local == self.local {
            return Ok(Vec::new());
        }
        let (old_base, old_local) = (
            std::mem::replace(&mut self.base, new),
            std::mem::replace(&mut self.local, local),
        );
        let known = self.checks();
        self.health.retain(|k, _| known.contains_key(k));
        // Before publishing: a new prefix's BIRD protocol must exist when the policy, fed by
        // the publication, wants it announced.
        self.reconfigure_announcer(&old_base);
        let old_overrides = self.overrides.clone();
        let dropped = self.prune_overrides();
        match self.publish(trigger) {
            Ok(changes) => {
                for d in dropped {
                    warn!(trigger, "runtime override dropped: {d}");
                }
                Ok(changes)
            }
            Err(e) => {
                // Converge back to what was running; the publisher writes a VIP only after
                // its table, so whatever was half-written is not live.
                let failed = std::mem::replace(&mut self.base, old_base);
                self.local = old_local;
                self.reconfigure_announcer(&failed);
                self.overrides = old_overrides;
                if let Err(e2) = self.publish("rollback") {
                    error!(error = %error_chain(&e2), "restoring the previous state");
                }
                Err(ReloadError::Apply(Box::new(e)))
            }
        }
    }
}
