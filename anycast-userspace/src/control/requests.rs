//! The control API's requests, applied to the controller.

use super::*;

impl<S: Sink> Controller<S> {
    /// Resolves an operator's VIP name: a label (`203.0.113.10:80/tcp`), or `ADDR:PORT` /
    /// `ADDR` when that matches exactly one VIP.
    pub fn resolve_vip(&self, name: &str) -> Result<VipId, RequestError> {
        let ids: Vec<VipId> = self.base.vips.iter().map(VipId::of).collect();
        if let Some(id) = ids.iter().find(|id| id.to_string() == name) {
            return Ok(*id);
        }
        let matches: Vec<VipId> = ids
            .iter()
            .filter(|id| {
                let l = id.to_string();
                l.rsplit_once('/').is_some_and(|(ap, _)| ap == name)
                    || id.address.to_string() == name
            })
            .copied()
            .collect();
        match matches[..] {
            [one] => Ok(one),
            [] => Err(RequestError::UnknownVip {
                name: name.to_owned(),
                configured: ids,
            }),
            _ => Err(RequestError::AmbiguousVip {
                name: name.to_owned(),
                matches,
            }),
        }
    }

    /// The VIP (or `None` = every VIP) and backend a drain/weight request is about, checked
    /// against the config.
    pub(super) fn target(
        &self,
        vip: Option<&str>,
        backend: &str,
    ) -> Result<(Option<VipId>, IpAddr), RequestError> {
        let backend: IpAddr = backend.parse().map_err(|_| RequestError::NotAnAddress {
            backend: backend.to_owned(),
        })?;
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
                    return Err(RequestError::NotABackend {
                        vip: id,
                        backend,
                        backends: v.backends.iter().map(|b| b.address).collect(),
                    });
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
                    return Err(RequestError::UnknownBackend { backend });
                }
                Ok((None, backend))
            }
        }
    }

    pub(super) fn after_override(&mut self, what: String) -> Result<Changed, RequestError> {
        info!("runtime override: {what}");
        let changes = self
            .publish("runtime override")
            .map_err(|e| RequestError::Publish(Box::new(e)))?;
        Ok(Changed {
            message: what,
            changes,
        })
    }

    /// Answers one control API request.
    pub fn handle(&mut self, req: Request) -> Response {
        match self.answer(req) {
            Ok(result) => Response::Ok { result },
            Err(e) => Response::Error {
                error: error_chain(&e),
            },
        }
    }

    fn answer(&mut self, req: Request) -> Result<serde_json::Value, RequestError> {
        fn json(v: impl Serialize) -> serde_json::Value {
            serde_json::to_value(v).expect("the API's types serialize")
        }
        Ok(match req {
            Request::Status => json(self.status()),
            Request::Stats => json(
                self.sink
                    .read_stats()
                    .map_err(|e| RequestError::Counters(Box::new(e)))?,
            ),
            Request::Lookup { flow } => json(self.lookup(&flow)?),
            Request::DrainEdge => json(self.drain_edge(true)?),
            Request::UndrainEdge => json(self.drain_edge(false)?),
            Request::Drain { vip, backend } => {
                let (vip, backend) = self.target(vip.as_deref(), &backend)?;
                self.overrides.drained.insert((vip, backend));
                json(self.after_override(format!("drained {backend} for {}", scope(vip)))?)
            }
            Request::Undrain { vip, backend } => json(
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
                            return Err(RequestError::NotDrained { vip, backend });
                        }
                        let mut msg = format!("undrained {backend} for {}", scope(vip));
                        if vip.is_some() && self.overrides.drained.contains(&(None, backend)) {
                            msg.push_str(
                            " (still drained for every VIP: undrain without a VIP to clear that)",
                        );
                        }
                        self.after_override(msg)
                    })?,
            ),
            Request::SetWeight {
                vip,
                backend,
                weight,
                clear,
            } => json(
                self.target(vip.as_deref(), &backend)
                    .and_then(|(vip, backend)| match (weight, clear) {
                        (Some(_), true) => Err(RequestError::WeightAndClear),
                        (None, false) => Err(RequestError::NoWeight),
                        (None, true) => {
                            if self.overrides.weights.remove(&(vip, backend)).is_none() {
                                return Err(RequestError::NoWeightOverride { vip, backend });
                            }
                            self.after_override(format!(
                                "cleared the weight override of {backend} for {}",
                                scope(vip)
                            ))
                        }
                        (Some(w), false) => {
                            let w = u32::try_from(w)
                                .ok()
                                .filter(|w| *w <= MAX_WEIGHT)
                                .ok_or(RequestError::WeightOutOfRange { weight: w })?;
                            self.overrides.weights.insert((vip, backend), w);
                            self.after_override(format!(
                                "set the weight of {backend} for {} to {w}",
                                scope(vip)
                            ))
                        }
                    })?,
            ),
        })
    }

    /// `anycast drain-edge` / `undrain-edge`: withdraw every VIP (or let the policy announce
    /// them again). The CLI waits for the traffic to go.
    pub(super) fn drain_edge(&mut self, drained: bool) -> Result<EdgeDrained, RequestError> {
        let Some(a) = self.announce.as_mut() else {
            return Err(RequestError::NoBgp);
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
        Ok(EdgeDrained {
            message: msg.to_owned(),
            edge_drained: drained,
        })
    }

    pub fn lookup(&self, flow: &str) -> Result<Decision, RequestError> {
        let flow: Flow = flow.parse()?;
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
