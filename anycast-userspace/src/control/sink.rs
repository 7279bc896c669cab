//! Where the controller's desired state goes: the kernel maps, or memory in tests.

use super::*;

/// Where the desired state goes: the kernel maps or, in tests, memory.
pub trait Sink {
    fn apply_state(&mut self, desired: &DesiredState) -> Result<ApplyReport, DataplaneError>;
    fn read_stats(&self) -> Result<Stats, DataplaneError>;
    fn id_map(&self) -> IdMap;
}

impl Sink for Dataplane {
    fn apply_state(&mut self, desired: &DesiredState) -> Result<ApplyReport, DataplaneError> {
        Dataplane::apply_state(self, desired)
    }
    fn read_stats(&self) -> Result<Stats, DataplaneError> {
        Dataplane::read_stats(self)
    }
    fn id_map(&self) -> IdMap {
        self.publisher().id_map()
    }
}

/// A [`Publisher`] over [`MemoryMaps`]; its stats are zero for every VIP and backend.
#[derive(Debug)]
pub struct MemorySink {
    pub publisher: Publisher,
    pub maps: MemoryMaps,
}

impl MemorySink {
    pub fn new(config: &Config) -> Self {
        Self {
            publisher: Publisher::new(crate::dataplane::Geometry::of(config)),
            maps: MemoryMaps::default(),
        }
    }
}

impl Sink for MemorySink {
    fn apply_state(&mut self, desired: &DesiredState) -> Result<ApplyReport, DataplaneError> {
        self.publisher.apply(&mut self.maps, desired)
    }
    fn read_stats(&self) -> Result<Stats, DataplaneError> {
        let ids = self.publisher.id_map();
        Ok(Stats {
            counters: anycast_common::counter::NAMES
                .iter()
                .map(|n| ((*n).to_string(), 0))
                .collect(),
            vips: ids
                .vips
                .iter()
                .map(|(id, vip)| VipTraffic {
                    id: *id,
                    vip: vip.clone(),
                    traffic: Traffic::default(),
                })
                .collect(),
            backends: ids
                .backends
                .iter()
                .map(|(id, a, local)| crate::dataplane::stats::BackendTraffic {
                    id: *id,
                    address: Some(*a),
                    local: *local,
                    traffic: Traffic::default(),
                })
                .collect(),
        })
    }
    fn id_map(&self) -> IdMap {
        self.publisher.id_map()
    }
}
