//! Backend health as the checks report it, and the agent's status as the API shows it.

use super::*;
use crate::proto::{Health, VipState};

impl<S: Sink> Controller<S> {
    pub fn status(&self) -> Status {
        let bgp = self.announce.as_ref().map(crate::announce::Handle::status);
        let vips = self
            .base
            .vips
            .iter()
            .map(|v| {
                let id = VipId::of(v);
                let table = self.tables.get(&id);
                let facts = self.facts.get(&id);
                let effective: BTreeMap<IpAddr, u32> = self
                    .effective
                    .vips
                    .iter()
                    .find(|e| VipId::of(e) == id)
                    .map(|e| e.backends.iter().map(|b| (b.address, b.weight)).collect())
                    .unwrap_or_default();
                let all_down = !v.backends.is_empty()
                    && v.backends
                        .iter()
                        .all(|b| self.health.get(&(id, b.address)) == Some(&false));
                let backends: Vec<BackendStatus> = v
                    .backends
                    .iter()
                    .map(|b| {
                        let health = match self.health.get(&(id, b.address)) {
                            None if v.health.is_some() => Health::Pending,
                            None => Health::Unchecked,
                            Some(true) => Health::Healthy,
                            Some(false) => Health::Unhealthy,
                        };
                        let weight = effective.get(&b.address).copied().unwrap_or(0);
                        BackendStatus {
                            address: b.address,
                            local: self.local.contains(&b.address),
                            weight_config: b.weight,
                            weight_effective: if health == Health::Unhealthy && !all_down {
                                0
                            } else {
                                weight
                            },
                            drained: self.overrides.is_drained(id, b.address),
                            weight_override: self.overrides.weight(id, b.address),
                            health,
                            health_settled: v.health.is_none()
                                || (health != Health::Pending
                                    && self.settled.contains(&(id, b.address))),
                            slots: facts
                                .and_then(|f| f.slots.get(&b.address).copied())
                                .unwrap_or(0),
                        }
                    })
                    .collect();
                let state = if v.backends.is_empty() {
                    VipState::NoBackends
                } else if all_down {
                    VipState::AllBackendsDown
                } else if table.is_none_or(|t| t.slots.is_empty()) {
                    VipState::NoWeightedBackend
                } else {
                    VipState::Ok
                };
                VipStatus {
                    announcement: bgp
                        .as_ref()
                        .and_then(|b| b.prefixes.get(&id.address).cloned()),
                    vip: id,
                    state,
                    fingerprint: facts.and_then(|f| f.fingerprint.clone()),
                    health_check: v.health.as_ref().map(|h| {
                        format!(
                            "{} port {}{} every {} ms, timeout {} ms, rise {}, fall {}",
                            h.kind,
                            h.port,
                            if h.kind == crate::config::HealthKind::Http {
                                format!(" GET {} expect {}", h.path, h.expect_status)
                            } else {
                                String::new()
                            },
                            h.interval_ms,
                            h.timeout_ms,
                            h.rise,
                            h.fall
                        )
                    }),
                    backends,
                    table_changes: self.table_changes.get(&id).copied().unwrap_or(0),
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            config_path: self.config_path.clone(),
            last_reload: self.last_reload.clone(),
            reloads_ok: self.reloads_ok,
            reloads_error: self.reloads_error,
            program: {
                let mut p = self.program.clone();
                for i in &mut p.interfaces {
                    i.forwarding = crate::host::forwarding(&i.name);
                }
                p
            },
            hash_seed: self.base.agent.hash_seed,
            ring_size: self.base.agent.ring_size,
            overrides: self.overrides.list(),
            vips,
            bgp,
            fleet: self.fleet.clone(),
        }
    }

    /// What `anycast status` shows of the fleet link (the agent's loop owns it).
    pub fn set_fleet_view(&mut self, view: crate::proto::FleetView) {
        self.fleet = Some(view);
    }

    /// Backends to health-check: every configured backend of every VIP with `[vip.health]`,
    /// drained ones included (so their health is known before they are undrained).
    pub fn checks(&self) -> BTreeMap<(VipId, IpAddr), HealthConfig> {
        self.base
            .vips
            .iter()
            .filter_map(|v| v.health.as_ref().map(|h| (v, h)))
            .flat_map(|(v, h)| {
                v.backends
                    .iter()
                    .map(move |b| ((VipId::of(v), b.address), h.clone()))
            })
            .collect()
    }

    /// Whether `backend` of `vip` is health-checked (one entry of [`Controller::checks`],
    /// without building them all).
    fn is_checked(&self, vip: VipId, backend: IpAddr) -> bool {
        self.base.vips.iter().any(|v| {
            v.health.is_some()
                && VipId::of(v) == vip
                && v.backends.iter().any(|b| b.address == backend)
        })
    }

    /// Known health of a checked backend (`None` = not checked).
    pub fn health(&self, vip: VipId, backend: IpAddr) -> Option<bool> {
        self.health.get(&(vip, backend)).copied()
    }

    /// Records whether a checked backend's verdict is settled (confirmed by its running check,
    /// no rise or fall under way): what the announcement gate waits for before a VIP is
    /// announced anew (`announce`).
    pub fn set_health_settled(&mut self, vip: VipId, backend: IpAddr, settled: bool) {
        if !self.is_checked(vip, backend) {
            return;
        }
        let changed = if settled {
            self.settled.insert((vip, backend))
        } else {
            self.settled.remove(&(vip, backend))
        };
        if changed {
            self.sync_announce();
        }
    }

    /// Records a health transition of a checked backend and republishes its VIP.
    pub fn set_health(&mut self, vip: VipId, backend: IpAddr, healthy: bool, detail: &str) {
        self.set_health_verdicts([(vip, backend, healthy, detail)]);
    }

    /// Verdicts that arrived together, published in one write: a burst of verdicts (a switch
    /// failing takes many backends at once) builds each changed VIP's table once.
    /// Each verdict: the VIP, the backend, healthy or not, and what the check saw.
    pub fn set_health_verdicts<'a>(
        &mut self,
        verdicts: impl IntoIterator<Item = (VipId, IpAddr, bool, &'a str)>,
    ) {
        let mut changed = BTreeSet::new();
        let mut first = false;
        for (vip, backend, healthy, detail) in verdicts {
            if !self.is_checked(vip, backend) {
                continue; // a check of a backend a reload removed, reporting late
            }
            let old = self.health.insert((vip, backend), healthy);
            // Pending counts as healthy: a first "healthy" verdict changes no table.
            if old.unwrap_or(true) == healthy {
                if old.is_none() {
                    info!(vip = %vip, backend = %backend, "backend healthy (first check)");
                    first = true;
                }
                continue;
            }
            if healthy {
                info!(vip = %vip, backend = %backend, check = detail, "backend healthy: returns to the VIP's table");
            } else {
                warn!(vip = %vip, backend = %backend, check = detail, "backend unhealthy: leaves the VIP's table");
            }
            changed.insert(vip);
        }
        if changed.is_empty() {
            if first {
                // No table changes, but a pending backend does not count for announcement.
                self.sync_announce();
                self.write_state_file();
            }
            return;
        }
        if let Err(e) = self.publish("health") {
            error!(error = %error_chain(&e), "writing the maps after a health change");
        }
        for vip in changed {
            if let Some(v) = self.base.vips.iter().find(|v| VipId::of(v) == vip) {
                let down = v
                    .backends
                    .iter()
                    .filter(|b| self.health.get(&(vip, b.address)) == Some(&false))
                    .count();
                if !v.backends.is_empty() && down == v.backends.len() {
                    error!(vip = %vip, backends = down, "all backends down: failing open, the VIP keeps its table without health");
                }
            }
        }
    }
}
