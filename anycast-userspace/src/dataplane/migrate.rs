//! Carrying connection tracking into a new `CONNS` map when the pinned one cannot be reused
//! ([`crate::dataplane::pins::plan`] decides; README "Restarts, upgrades and detaching" has the policy
//! for every map).
//!
//! The case that happens without a code change is a changed `agent.conntrack_size`: the map's
//! capacity is fixed when it is created, so the new agent creates a new `CONNS`. The same copy
//! serves when the tables and backends are replaced (a changed `ring_size`, `max_vips` or
//! `max_backends`): the backend ids of the old entries are translated through the old
//! `BACKENDS` map (id -> address) and the new publisher (address -> id, generation). Entries
//! are copied after the new maps are filled and before the new program is swapped into the
//! links, so the program never sees a half-copied map; a connection that the old program
//! starts tracking in between is the only one lost (second chance covers it).
//!
//! `CONNS` keeps one LRU list per CPU (`BPF_F_NO_COMMON_LRU`): the kernel gives each possible
//! CPU `max_entries / CPUs` elements, and an insert only takes from the inserting CPU's share,
//! evicting from it when it is full (kernel/bpf/bpf_lru_list.c, `bpf_percpu_lru_pop_free`). So
//! the copy runs on a thread that moves from CPU to CPU and inserts a share on each, newest
//! entries first: a smaller map keeps the most recently seen connections.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anycast_common::{Backend, ConnKey, ConnValue, map_names};
use aya::maps::{Array, HashMap, Map, MapData, MapError};

use crate::dataplane::Dataplane;
use crate::dataplane::pins::ConnsMigration;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("reading pinned map {path}")]
    Pinned {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("the old BACKENDS map at {path} holds {value_size}-byte values, not Backend records")]
    BackendsLayout { path: PathBuf, value_size: u32 },
    #[error("the new CONNS map: {what}")]
    New {
        what: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the loaded object has no {0} map")]
    MissingMap(&'static str),
    #[error("listing the CPUs this process may run on")]
    Cpus(#[source] std::io::Error),
}

/// What a migration did, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Entries read from the old map.
    pub found: usize,
    pub copied: usize,
    /// Entries whose backend id was no longer live in the old map (freed, or reused: the
    /// generations differ); the program would have ignored them.
    pub stale: usize,
    /// Entries whose backend the new config no longer has.
    pub backend_gone: usize,
    /// Live entries beyond the new map's room (the oldest ones).
    pub no_room: usize,
}

/// Old backend id -> (address, generation), from a `BACKENDS` array (family 0 = free id).
pub fn live_backends(
    entries: impl IntoIterator<Item = (u32, Backend)>,
) -> BTreeMap<u32, (IpAddr, u16)> {
    entries
        .into_iter()
        .filter(|(_, b)| b.family != 0)
        .map(|(id, b)| {
            (
                id,
                (
                    crate::plan::maglev::key_addr(b.family, b.addr_be),
                    b.generation,
                ),
            )
        })
        .collect()
}

/// Decides which entries go into the new map and with which backend id: the pure half of the
/// migration. `new_id` gives the new (id, generation) of a backend address; `room` is how many
/// entries the new map takes. The result is newest first.
pub fn translate(
    entries: Vec<(ConnKey, ConnValue)>,
    old: &BTreeMap<u32, (IpAddr, u16)>,
    new_id: impl Fn(IpAddr) -> Option<(u32, u16)>,
    room: usize,
) -> (Vec<(ConnKey, ConnValue)>, MigrationReport) {
    let mut report = MigrationReport {
        found: entries.len(),
        ..MigrationReport::default()
    };
    let mut keep: Vec<(ConnKey, ConnValue)> = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Some(&(addr, generation)) = old.get(&v.backend_id) else {
            report.stale += 1;
            continue;
        };
        if generation != v.generation {
            report.stale += 1;
            continue;
        }
        let Some((id, generation)) = new_id(addr) else {
            report.backend_gone += 1;
            continue;
        };
        keep.push((
            k,
            ConnValue {
                backend_id: id,
                generation,
                ..v
            },
        ));
    }
    keep.sort_by_key(|e| std::cmp::Reverse(e.1.last_seen_ns));
    if keep.len() > room {
        report.no_room = keep.len() - room;
        keep.truncate(room);
    }
    report.copied = keep.len();
    (keep, report)
}

/// Copies the entries of the pinned `CONNS` of `m` into `new` (the new, empty `CONNS` of the
/// loaded object), their backend ids translated with `new_id`.
pub fn migrate(
    m: &ConnsMigration,
    new: &mut Map,
    new_id: impl Fn(IpAddr) -> Option<(u32, u16)>,
) -> Result<MigrationReport, MigrateError> {
    let pinned = |path: &PathBuf| {
        MapData::from_pin(path)
            .and_then(Map::from_map_data)
            .map_err(|source| MigrateError::Pinned {
                path: path.clone(),
                source,
            })
    };
    let backends_map = pinned(&m.backends)?;
    let value_size = backends_map_value_size(&backends_map, &m.backends)?;
    if value_size as usize != size_of::<Backend>() {
        return Err(MigrateError::BackendsLayout {
            path: m.backends.clone(),
            value_size,
        });
    }
    let backends: Array<_, Backend> =
        Array::try_from(&backends_map).map_err(|source| MigrateError::Pinned {
            path: m.backends.clone(),
            source,
        })?;
    let old = live_backends(
        (0..backends.len()).filter_map(|id| backends.get(&id, 0).ok().map(|b| (id, b))),
    );

    let conns_map = pinned(&m.conns)?;
    let conns: HashMap<_, ConnKey, ConnValue> =
        HashMap::try_from(&conns_map).map_err(|source| MigrateError::Pinned {
            path: m.conns.clone(),
            source,
        })?;
    // The old program keeps inserting and evicting while we read: a key that vanishes under
    // the iteration restarts it from the first key (BPF_MAP_GET_NEXT_KEY), so collect into a
    // map and bound the reads.
    let mut entries: std::collections::HashMap<ConnKey, ConnValue> =
        std::collections::HashMap::new();
    let limit = 2 * m.from.max_entries as usize + 1024;
    for (k, v) in conns.iter().take(limit).flatten() {
        entries.insert(k, v);
    }

    let cpus = insert_cpus(m.to.flags)?;
    let room = match &cpus {
        Some(c) => m.to.max_entries as usize / possible_cpus()? * c.len(),
        None => m.to.max_entries as usize,
    };
    let (keep, report) = translate(entries.into_iter().collect(), &old, new_id, room);

    let mut target: HashMap<&mut MapData, ConnKey, ConnValue> =
        HashMap::try_from(new).map_err(|source| MigrateError::New {
            what: "opening",
            source,
        })?;
    match cpus {
        None => {
            for (k, v) in &keep {
                target.insert(k, v, 0).map_err(|source| MigrateError::New {
                    what: "inserting",
                    source,
                })?;
            }
        }
        Some(cpus) => insert_per_cpu(&mut target, &keep, &cpus)?,
    }
    Ok(report)
}

/// [`migrate`] into the `CONNS` of `dp`, whose maps the publisher has filled: backend ids and
/// generations are taken from `dp`.
pub fn migrate_into(
    dp: &mut Dataplane,
    m: &ConnsMigration,
) -> Result<MigrationReport, MigrateError> {
    let ids: std::collections::HashMap<IpAddr, u32> = dp
        .publisher()
        .id_map()
        .backends
        .into_iter()
        .map(|(id, addr, _)| (addr, id))
        .collect();
    let backends: Array<_, Backend> = Array::try_from(
        dp.ebpf()
            .map(map_names::BACKENDS)
            .ok_or(MigrateError::MissingMap(map_names::BACKENDS))?,
    )
    .map_err(|source| MigrateError::New {
        what: "opening BACKENDS",
        source,
    })?;
    let generations: std::collections::HashMap<u32, u16> = ids
        .values()
        .filter_map(|&id| Some((id, backends.get(&id, 0).ok()?.generation)))
        .collect();
    let new = dp
        .ebpf_mut()
        .map_mut(map_names::CONNS)
        .ok_or(MigrateError::MissingMap(map_names::CONNS))?;
    migrate(m, new, |a| {
        let id = *ids.get(&a)?;
        Some((id, *generations.get(&id)?))
    })
}

fn backends_map_value_size(map: &Map, path: &Path) -> Result<u32, MigrateError> {
    let data: &MapData = match map {
        Map::Array(d) => d,
        _ => {
            return Err(MigrateError::BackendsLayout {
                path: path.to_owned(),
                value_size: 0,
            });
        }
    };
    data.info()
        .map(|i| i.value_size())
        .map_err(|source| MigrateError::Pinned {
            path: path.to_owned(),
            source,
        })
}

fn possible_cpus() -> Result<usize, MigrateError> {
    aya::util::nr_cpus().map_err(|(_, e)| MigrateError::Cpus(e))
}

/// The CPUs to insert from when the map has per-CPU LRU lists (`None`: any CPU will do).
fn insert_cpus(flags: u32) -> Result<Option<Vec<usize>>, MigrateError> {
    if flags & aya_obj::generated::BPF_F_NO_COMMON_LRU == 0 {
        return Ok(None);
    }
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(|e| MigrateError::Cpus(e.into()))?;
    let online = aya::util::online_cpus().map_err(|(_, e)| MigrateError::Cpus(e))?;
    Ok(Some(
        online
            .into_iter()
            .map(|c| c as usize)
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .collect(),
    ))
}

/// Inserts `entries` round-robin from each of `cpus`, on a thread pinned to one CPU at a time
/// (the caller's own affinity is left alone).
fn insert_per_cpu(
    target: &mut HashMap<&mut MapData, ConnKey, ConnValue>,
    entries: &[(ConnKey, ConnValue)],
    cpus: &[usize],
) -> Result<(), MigrateError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            for (i, &cpu) in cpus.iter().enumerate() {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).map_err(|e| MigrateError::Cpus(e.into()))?;
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .map_err(|e| MigrateError::Cpus(e.into()))?;
                for (k, v) in entries.iter().skip(i).step_by(cpus.len()) {
                    target.insert(k, v, 0).map_err(|source| MigrateError::New {
                        what: "inserting",
                        source,
                    })?;
                }
            }
            Ok(())
        })
        .join()
        .expect("the copying thread does not panic")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ConnKey {
        ConnKey::v4([198, 51, 100, 7], port, [203, 0, 113, 10], 80, 6)
    }

    fn value(backend_id: u32, generation: u16, last_seen_ns: u64) -> ConnValue {
        ConnValue {
            backend_id,
            generation,
            _pad: 0,
            last_seen_ns,
        }
    }

    fn backend(last: u8, generation: u16) -> Backend {
        let mut addr_be = [0u8; 16];
        addr_be[..4].copy_from_slice(&[198, 18, 10, last]);
        Backend {
            addr_be,
            family: 4,
            flags: 0,
            generation,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ids_are_translated_stale_and_gone_entries_dropped_and_the_newest_kept() {
        let free = Backend {
            addr_be: [0; 16],
            family: 0,
            flags: 0,
            generation: 0,
        };
        let old = live_backends([
            (0, backend(2, 1)),
            (1, backend(3, 4)),
            (2, free),
            (3, backend(9, 5)),
        ]);
        assert_eq!(old.len(), 3);
        // In the new maps .2 has id 5, .3 id 0; .9 is gone.
        let new_id = |a: IpAddr| match a.to_string().as_str() {
            "198.18.10.2" => Some((5, 7)),
            "198.18.10.3" => Some((0, 8)),
            _ => None,
        };
        let entries = vec![
            (key(1), value(0, 1, 100)),
            (key(2), value(1, 4, 300)),
            (key(3), value(1, 3, 400)), // id 1 reused since: stale
            (key(4), value(2, 1, 500)), // id 2 freed: stale
            (key(5), value(3, 5, 600)), // backend gone from the config
            (key(6), value(0, 1, 200)),
        ];
        let (keep, r) = translate(entries.clone(), &old, new_id, 10);
        assert_eq!(
            r,
            MigrationReport {
                found: 6,
                copied: 3,
                stale: 2,
                backend_gone: 1,
                no_room: 0,
            }
        );
        assert_eq!(
            keep,
            vec![
                (key(2), value(0, 8, 300)),
                (key(6), value(5, 7, 200)),
                (key(1), value(5, 7, 100)),
            ]
        );
        // Room for two: the two most recently seen stay.
        let (keep, r) = translate(entries, &old, new_id, 2);
        assert_eq!((r.copied, r.no_room), (2, 1));
        assert_eq!(
            keep.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [key(2), key(6)]
        );
        assert_eq!(ip("198.18.10.3"), old[&1].0);
    }
}
