//! Runtime overrides (drain, weights) and health on top of the config file, and the runtime
//! state the next agent takes over.

use super::*;

/// Runtime overrides on top of the config file. They survive reloads and agent restarts (kept in
/// the state file, [`RuntimeState`]) until cleared, or until the config no longer lists their
/// backend. `None` as the VIP means every VIP the backend serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub(super) drained: BTreeSet<(Option<VipId>, IpAddr)>,
    pub(super) weights: BTreeMap<(Option<VipId>, IpAddr), u32>,
}

impl Overrides {
    pub fn is_drained(&self, vip: VipId, backend: IpAddr) -> bool {
        self.drained.contains(&(Some(vip), backend)) || self.drained.contains(&(None, backend))
    }

    pub fn weight(&self, vip: VipId, backend: IpAddr) -> Option<u32> {
        self.weights
            .get(&(Some(vip), backend))
            .or_else(|| self.weights.get(&(None, backend)))
            .copied()
    }

    /// Weight after overrides (health aside).
    pub fn effective_weight(&self, vip: VipId, b: &BackendConfig) -> u32 {
        if self.is_drained(vip, b.address) {
            0
        } else {
            self.weight(vip, b.address).unwrap_or(b.weight)
        }
    }

    pub fn list(&self) -> Vec<OverrideEntry> {
        let drains = self.drained.iter().map(|(vip, backend)| OverrideEntry {
            vip: *vip,
            backend: *backend,
            drained: true,
            weight: None,
        });
        let weights = self
            .weights
            .iter()
            .map(|((vip, backend), w)| OverrideEntry {
                vip: *vip,
                backend: *backend,
                drained: false,
                weight: Some(*w),
            });
        drains.chain(weights).collect()
    }
}

/// What [`Controller::start_restoring`] took over from a [`RuntimeState`], and what it dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub overrides: usize,
    pub verdicts: usize,
    pub edge_drained: bool,
    /// One line per entry the config no longer has a place for.
    pub dropped: Vec<String>,
}

/// Health of the checked backends: `(vip, backend) -> healthy`. Unchecked backends are absent.
pub type HealthMap = BTreeMap<(VipId, IpAddr), bool>;

/// The config the dataplane should run: the file with the overrides on top (module docs).
pub fn effective_config(base: &Config, overrides: &Overrides) -> Config {
    let mut c = base.clone();
    for v in &mut c.vips {
        let id = VipId::of(v);
        for b in &mut v.backends {
            b.weight = overrides.effective_weight(id, b);
        }
    }
    c
}

/// `full` (the table of `vip`, health ignored) with the slots of unhealthy backends given to
/// healthy ones, as the module docs describe. Unchanged when no backend is unhealthy, and when
/// no healthy backend could take the slots (fail open).
///
/// `build` makes the Maglev table of a VIP config (the healthy backends' table here).
pub fn with_health(
    full: VipTable,
    vip: &VipConfig,
    health: &HealthMap,
    build: impl FnOnce(&VipConfig) -> VipTable,
) -> VipTable {
    let id = VipId::of(vip);
    let down: BTreeSet<IpAddr> = vip
        .backends
        .iter()
        .filter(|b| health.get(&(id, b.address)) == Some(&false))
        .map(|b| b.address)
        .collect();
    if down.is_empty() || full.slots.is_empty() {
        return full;
    }
    let mut healthy = vip.clone();
    healthy.backends.retain(|b| !down.contains(&b.address));
    let fallback = build(&healthy);
    if fallback.slots.is_empty() {
        return full;
    }
    // Per backend index, not per slot: whether it is down (in `full`), and where each
    // fallback backend sits in `full`.
    let is_down: Vec<bool> = full
        .backends
        .iter()
        .map(|b| down.contains(&b.address()))
        .collect();
    let index: BTreeMap<IpAddr, u32> = full
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.address(), i as u32))
        .collect();
    let to_full: Vec<u32> = fallback
        .backends
        .iter()
        .map(|b| index[&b.address()])
        .collect();
    let slots = full
        .slots
        .iter()
        .zip(&fallback.slots)
        .map(|(&i, &alt)| {
            if is_down[i as usize] {
                to_full[alt as usize]
            } else {
                i
            }
        })
        .collect();
    VipTable {
        backends: full.backends,
        slots,
    }
}

impl<S: Sink> Controller<S> {
    /// Takes over what `saved` holds that the config still has a place for.
    pub(super) fn restore(&mut self, saved: &RuntimeState) -> Restored {
        let mut r = Restored {
            edge_drained: saved.edge_drained,
            ..Restored::default()
        };
        self.edge_drained = saved.edge_drained;
        for o in &saved.overrides {
            let what = match (o.drained, o.weight) {
                (true, None) => "drain".to_string(),
                (false, Some(w)) => format!("weight {w}"),
                _ => {
                    r.dropped.push(format!(
                        "override of {} (neither a drain nor a weight)",
                        o.backend
                    ));
                    continue;
                }
            };
            let target = self.target(o.vip.as_deref(), &o.backend.to_string());
            match (target, o.weight) {
                (Err(why), _) => r.dropped.push(format!("{what} of {}: {why}", o.backend)),
                (Ok(_), Some(w)) if w > MAX_WEIGHT => r.dropped.push(format!(
                    "{what} of {}: out of range 0..={MAX_WEIGHT}",
                    o.backend
                )),
                (Ok(key), Some(w)) => {
                    self.overrides.weights.insert(key, w);
                    r.overrides += 1;
                }
                (Ok(key), None) => {
                    self.overrides.drained.insert(key);
                    r.overrides += 1;
                }
            }
        }
        let checks = self.checks();
        for v in &saved.health {
            let key = self
                .resolve_vip(&v.vip)
                .ok()
                .map(|vip| (vip, v.backend))
                .filter(|k| checks.contains_key(k));
            match key {
                Some(k) => {
                    self.health.insert(k, v.healthy);
                    r.verdicts += 1;
                }
                None => r.dropped.push(format!(
                    "health verdict of {} for VIP {}: no longer checked",
                    v.backend, v.vip
                )),
            }
        }
        r
    }

    /// What the state file keeps ([`RuntimeState`]).
    pub fn runtime_state(&self) -> RuntimeState {
        let vip = |v: Option<VipId>| v.map(|v| v.to_string());
        let mut overrides: Vec<SavedOverride> = self
            .overrides
            .drained
            .iter()
            .map(|(v, b)| SavedOverride {
                vip: vip(*v),
                backend: *b,
                drained: true,
                weight: None,
            })
            .collect();
        overrides.extend(
            self.overrides
                .weights
                .iter()
                .map(|((v, b), w)| SavedOverride {
                    vip: vip(*v),
                    backend: *b,
                    drained: false,
                    weight: Some(*w),
                }),
        );
        RuntimeState {
            overrides,
            health: self
                .health
                .iter()
                .map(|((v, b), healthy)| SavedVerdict {
                    vip: v.to_string(),
                    backend: *b,
                    healthy: *healthy,
                })
                .collect(),
            edge_drained: self
                .announce
                .as_ref()
                .map_or(self.edge_drained, crate::announce::Handle::edge_drained),
        }
    }

    /// Drops the overrides whose backend the config no longer lists (for their VIP, or at all);
    /// returns one line per dropped override.
    pub(super) fn prune_overrides(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        let keys: Vec<(Option<VipId>, IpAddr, Option<u32>)> = self
            .overrides
            .drained
            .iter()
            .map(|(v, b)| (*v, *b, None))
            .chain(
                self.overrides
                    .weights
                    .iter()
                    .map(|((v, b), w)| (*v, *b, Some(*w))),
            )
            .collect();
        for (vip, backend, weight) in keys {
            let name = vip.map(|v| v.to_string());
            if let Err(why) = self.target(name.as_deref(), &backend.to_string()) {
                let what = match weight {
                    Some(w) => {
                        self.overrides.weights.remove(&(vip, backend));
                        format!("weight {w}")
                    }
                    None => {
                        self.overrides.drained.remove(&(vip, backend));
                        "drain".to_string()
                    }
                };
                dropped.push(format!("{what} of {backend} for {}: {why}", scope(vip)));
            }
        }
        dropped
    }
}
