//! The control API's requests, applied to the controller.

use super::*;

impl<S: Sink> Controller<S> {
    /// Resolves an operator's VIP name: a label (`203.0.113.10:80/tcp`), or `ADDR:PORT` /
    /// `ADDR` when that matches exactly one VIP.
    pub fn resolve_vip(&self, name: &str) -> Result<VipId, String> {
        let ids: Vec<VipId> = self.base.vips.iter().map(VipId::of).collect();
        if let Some(id) = ids.iter().find(|id| id.to_string() == name) {
            return Ok(*id);
        }
        let matches: Vec<&VipId> = ids
            .iter()
            .filter(|id| {
                let l = id.to_string();
                l.rsplit_once('/').is_some_and(|(ap, _)| ap == name)
                    || id.address.to_string() == name
            })
            .collect();
        match matches[..] {
            [one] => Ok(*one),
            [] => Err(format!(
                "unknown VIP {name:?} (configured: {})",
                ids.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Err(format!(
                "{name:?} matches several VIPs ({}); name one as ADDR:PORT/PROTO",
                matches
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The VIP (or `None` = every VIP) and backend a drain/weight request is about, checked
    /// against the config.
    pub(super) fn target(
        &self,
        vip: Option<&str>,
        backend: &str,
    ) -> Result<(Option<VipId>, IpAddr), String> {
        let backend: IpAddr = backend
            .parse()
            .map_err(|_| format!("{backend:?} is not an IP address"))?;
        match vip {
            Some(name) => {
                let id = self.resolve_vip(name)?;
                let v = self
                    .base
                    .vips
                    .iter()
                    .find(|v| VipId::of(v) == id)
                    .expect("resolved from the config");
                if !v.backends.iter().any(|b| b.address == backend) {
                    return Err(format!(
                        "{backend} is not a backend of VIP {id} (its backends: {})",
                        v.backends
                            .iter()
                            .map(|b| b.address.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                Ok((Some(id), backend))
            }
            None => {
                if !self
                    .base
                    .vips
                    .iter()
                    .any(|v| v.backends.iter().any(|b| b.address == backend))
                {
                    return Err(format!("unknown backend {backend}: no VIP lists it"));
                }
                Ok((None, backend))
            }
        }
    }

    pub(super) fn after_override(&mut self, what: &str) -> Result<serde_json::Value, String> {
        info!("runtime override: {what}");
        let changes = self
            .publish("runtime override")
            .map_err(|e| format!("writing the maps: {}", error_chain(&e)))?;
        Ok(serde_json::json!({ "message": what, "changes": changes }))
    }

    /// Answers one control API request.
    pub fn handle(&mut self, req: Request) -> Response {
        let r = match req {
            Request::Status => Ok(serde_json::to_value(self.status()).expect("serializable")),
            Request::Stats => self
                .sink
                .read_stats()
                .map(|s| serde_json::to_value(s).expect("serializable"))
                .map_err(|e| format!("reading the counters: {}", error_chain(&e))),
            Request::Lookup { flow } => self
                .lookup(&flow)
                .map(|d| serde_json::to_value(d).expect("serializable")),
            Request::DrainEdge => self.drain_edge(true),
            Request::UndrainEdge => self.drain_edge(false),
            Request::Drain { vip, backend } => {
                self.target(vip.as_deref(), &backend)
                    .and_then(|(vip, backend)| {
                        self.overrides.drained.insert((vip, backend));
                        self.after_override(&format!("drained {backend} for {}", scope(vip)))
                    })
            }
            Request::Undrain { vip, backend } => {
                self.target(vip.as_deref(), &backend)
                    .and_then(|(vip, backend)| {
                        let removed = match vip {
                            // Every drain of the backend, whatever its scope.
                            None => {
                                let before = self.overrides.drained.len();
                                self.overrides.drained.retain(|(_, b)| *b != backend);
                                before - self.overrides.drained.len()
                            }
                            Some(_) => usize::from(self.overrides.drained.remove(&(vip, backend))),
                        };
                        if removed == 0 {
                            return Err(format!("{backend} is not drained for {}", scope(vip)));
                        }
                        let mut msg = format!("undrained {backend} for {}", scope(vip));
                        if vip.is_some() && self.overrides.drained.contains(&(None, backend)) {
                            msg.push_str(
                            " (still drained for every VIP: undrain without a VIP to clear that)",
                        );
                        }
                        self.after_override(&msg)
                    })
            }
            Request::SetWeight {
                vip,
                backend,
                weight,
                clear,
            } => self
                .target(vip.as_deref(), &backend)
                .and_then(|(vip, backend)| match (weight, clear) {
                    (Some(_), true) => Err("give either a weight or clear, not both".into()),
                    (None, false) => Err("give a weight (0..=65535) or clear".into()),
                    (None, true) => {
                        if self.overrides.weights.remove(&(vip, backend)).is_none() {
                            return Err(format!(
                                "{backend} has no weight override for {}",
                                scope(vip)
                            ));
                        }
                        self.after_override(&format!(
                            "cleared the weight override of {backend} for {}",
                            scope(vip)
                        ))
                    }
                    (Some(w), false) => {
                        let w = u32::try_from(w)
                            .ok()
                            .filter(|w| *w <= MAX_WEIGHT)
                            .ok_or_else(|| {
                                format!("weight {w} is out of range 0..={MAX_WEIGHT}")
                            })?;
                        self.overrides.weights.insert((vip, backend), w);
                        self.after_override(&format!(
                            "set the weight of {backend} for {} to {w}",
                            scope(vip)
                        ))
                    }
                }),
        };
        match r {
            Ok(result) => Response::Ok { result },
            Err(error) => Response::Error { error },
        }
    }

    /// `anycast drain-edge` / `undrain-edge`: withdraw every VIP (or let the policy announce
    /// them again). The CLI waits for the traffic to go.
    pub(super) fn drain_edge(&mut self, drained: bool) -> Result<serde_json::Value, String> {
        let Some(a) = self.announce.as_mut() else {
            return Err("this agent announces nothing: its config has no [bgp] section".into());
        };
        let was = a.edge_drained();
        a.set_edge_drained(drained);
        let msg = match (was, drained) {
            (false, true) => "edge drained: withdrawing every VIP",
            (true, true) => "edge already drained",
            (true, false) => "edge undrained: VIPs are announced again where the policy allows",
            (false, false) => "edge was not drained",
        };
        if was != drained {
            info!("{msg}");
        }
        self.edge_drained = drained;
        self.sync_announce();
        self.write_state_file();
        Ok(serde_json::json!({ "message": msg, "edge_drained": drained }))
    }

    pub fn lookup(&self, flow: &str) -> Result<Decision, String> {
        let flow: Flow = flow.parse().map_err(|e| format!("{e}"))?;
        let c = &self.effective;
        Ok(match model::match_vip(c, &flow) {
            Some(i) => match self.tables.get(&VipId::of(&c.vips[i])) {
                Some(t) => model::decide_with_table(c, &self.local, &flow, i, t),
                None => model::decide(c, &self.local, &flow),
            },
            None => model::decide(c, &self.local, &flow),
        })
    }
}
