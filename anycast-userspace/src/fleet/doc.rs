//! The fleet document: the part of the config every edge must agree on (VIPs, backends, weights,
//! drains, hash seed, ring size), kept in etcd as one TOML text whose `mod_revision` is the unit
//! of change.
//!
//! ```toml
//! hash_seed = 42
//! ring_size = 65537
//! drain = ["198.18.10.3"]          # fleet-wide drains: weight 0 in every VIP
//!
//! [[vip]]                          # exactly the file's [[vip]] sections
//! address = "203.0.113.10"
//! port = 80
//! protocol = "tcp"
//! backend = [{ address = "198.18.10.2", weight = 1 }]
//! ```
//!
//! An edge validates it by putting it in place of its own file's `[[vip]]`, `agent.hash_seed`
//! and `agent.ring_size` and running the file's validation ([`Config::from_raw`]) on the result,
//! so a document is refused for exactly the reasons a file would be, with the same field names.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, RawConfig, RawVip, VipId};
use crate::plan::model::vip_table;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    hash_seed: i64,
    ring_size: Option<i64>,
    #[serde(default)]
    drain: Vec<String>,
    #[serde(default)]
    vip: Vec<RawVip>,
}

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("fleet document: invalid TOML")]
    Toml(#[source] toml::de::Error),
    #[error("fleet document")]
    Invalid(#[source] ConfigError),
    #[error("fleet document: drain[{index}]: {problem}")]
    Drain { index: usize, problem: String },
    #[error("the agent's config")]
    File(#[source] ConfigError),
}

/// The agent's file as serde reads it (before validation), to merge a document into.
pub fn read_file(path: &Path) -> Result<RawConfig, DocError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        DocError::File(ConfigError::Read {
            path: path.to_owned(),
            source,
        })
    })?;
    toml::from_str(&text).map_err(|source| {
        DocError::File(ConfigError::Toml {
            origin: path.display().to_string(),
            source,
        })
    })
}

/// The config an edge runs for `doc`: its file with the document's shared part in place.
/// Everything is validated as the file would be; drains must name a listed backend.
pub fn merge(mut file: RawConfig, doc: &str) -> Result<Config, DocError> {
    let RawDocument {
        hash_seed,
        ring_size,
        drain,
        vip,
    } = toml::from_str(doc).map_err(DocError::Toml)?;
    file.agent.hash_seed = hash_seed;
    file.agent.ring_size = ring_size;
    file.vip = vip;
    let mut config = Config::from_raw(file).map_err(DocError::Invalid)?;
    let mut seen = BTreeSet::new();
    for (index, d) in drain.iter().enumerate() {
        let addr: IpAddr = d.parse().map_err(|_| DocError::Drain {
            index,
            problem: format!("{d:?} is not an IP address"),
        })?;
        if !seen.insert(addr) {
            return Err(DocError::Drain {
                index,
                problem: format!("{addr} is listed twice"),
            });
        }
        let mut found = false;
        for b in config.vips.iter_mut().flat_map(|v| v.backends.iter_mut()) {
            if b.address == addr {
                b.weight = 0;
                found = true;
            }
        }
        if !found {
            return Err(DocError::Drain {
                index,
                problem: format!("{addr} is not a backend of any VIP"),
            });
        }
    }
    Ok(config)
}

/// The document text with `backend` added to (or removed from) its fleet-wide drains, for
/// `anycast drain --fleet`. Comments and layout of the rest are kept.
pub fn with_drain(doc: &str, backend: IpAddr, drained: bool) -> Result<String, DocError> {
    let mut t: toml::Table = toml::from_str(doc).map_err(DocError::Toml)?;
    let mut list: Vec<String> = match t.get("drain") {
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let key = backend.to_string();
    list.retain(|s| s.parse::<IpAddr>().ok() != Some(backend));
    if drained {
        list.push(key);
    }
    t.insert(
        "drain".into(),
        toml::Value::Array(list.into_iter().map(toml::Value::String).collect()),
    );
    Ok(toml::to_string(&t).expect("a TOML table renders"))
}

/// Per VIP (by label), the fingerprint of the table this config builds (health ignored), or
/// `None` for a VIP without a weighted backend.
pub fn fingerprints(config: &Config) -> BTreeMap<String, Option<String>> {
    config
        .vips
        .iter()
        .map(|v| {
            let t = vip_table(v, config.agent.ring_size, config.agent.hash_seed);
            (VipId::of(v).to_string(), t.fingerprint())
        })
        .collect()
}

/// One VIP's change between two documents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipDiff {
    pub vip: String,
    /// `added`, `removed` or `changed`.
    pub change: String,
    pub backends_added: Vec<IpAddr>,
    pub backends_removed: Vec<IpAddr>,
    /// `(address, old weight, new weight)`.
    pub weights_changed: Vec<(IpAddr, u32, u32)>,
    pub slots_moved: usize,
    pub ring_size: u32,
}

impl VipDiff {
    /// The share of the VIP's slots that send packets elsewhere after the change.
    pub fn moved_share(&self) -> f64 {
        if self.ring_size == 0 {
            return 0.0;
        }
        self.slots_moved as f64 / f64::from(self.ring_size)
    }
}

/// What changes per VIP from `old` to `new` (VIPs matched by address, port and protocol).
/// Slots are compared on the tables built with each side's ring size and seed; a different
/// ring size or seed moves (nearly) every slot, and is shown as such.
pub fn diff(old: &Config, new: &Config) -> Vec<VipDiff> {
    let by_id = |c: &Config| -> BTreeMap<VipId, usize> {
        c.vips
            .iter()
            .enumerate()
            .map(|(i, v)| (VipId::of(v), i))
            .collect()
    };
    let (a, b) = (by_id(old), by_id(new));
    let ids: BTreeSet<VipId> = a.keys().chain(b.keys()).copied().collect();
    let mut out = Vec::new();
    for id in ids {
        let ov = a.get(&id).map(|&i| &old.vips[i]);
        let nv = b.get(&id).map(|&i| &new.vips[i]);
        let table = |c: &Config, v: Option<&crate::config::VipConfig>| {
            v.map(|v| vip_table(v, c.agent.ring_size, c.agent.hash_seed))
        };
        let (ot, nt) = (table(old, ov), table(new, nv));
        let weights = |v: Option<&crate::config::VipConfig>| -> BTreeMap<IpAddr, u32> {
            v.map(|v| v.backends.iter().map(|b| (b.address, b.weight)).collect())
                .unwrap_or_default()
        };
        let (ow, nw) = (weights(ov), weights(nv));
        let added: Vec<IpAddr> = nw.keys().filter(|k| !ow.contains_key(k)).copied().collect();
        let removed: Vec<IpAddr> = ow.keys().filter(|k| !nw.contains_key(k)).copied().collect();
        let changed: Vec<(IpAddr, u32, u32)> = ow
            .iter()
            .filter_map(|(k, &w)| nw.get(k).filter(|&&n| n != w).map(|&n| (*k, w, n)))
            .collect();
        let (slots_moved, ring_size) = match (&ot, &nt) {
            (Some(o), Some(n)) if o.slots.len() == n.slots.len() => {
                (o.slots_moved(n), new.agent.ring_size)
            }
            (Some(o), Some(n)) => (n.slots.len().max(o.slots.len()), new.agent.ring_size),
            (Some(o), None) => (o.slots.len(), old.agent.ring_size),
            (None, Some(n)) => (n.slots.len(), new.agent.ring_size),
            (None, None) => (0, new.agent.ring_size),
        };
        let change = match (ov, nv) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            _ if added.is_empty()
                && removed.is_empty()
                && changed.is_empty()
                && slots_moved == 0 =>
            {
                continue;
            }
            _ => "changed",
        };
        let label = nv
            .or(ov)
            .map(crate::config::VipConfig::label)
            .unwrap_or_default();
        out.push(VipDiff {
            vip: label,
            change: change.to_owned(),
            backends_added: added,
            backends_removed: removed,
            weights_changed: changed,
            slots_moved,
            ring_size,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigBuilder;

    fn file() -> RawConfig {
        toml::from_str(&ConfigBuilder::reference().toml()).unwrap()
    }

    const DOC: &str = r#"
hash_seed = 7
ring_size = 65537
[[vip]]
address = "203.0.113.10"
port = 80
protocol = "tcp"
backend = [{ address = "198.18.10.2", weight = 1 }, { address = "198.18.10.3", weight = 1 }]
"#;

    #[test]
    fn a_document_replaces_the_files_vips_seed_and_ring() {
        let c = merge(file(), DOC).unwrap();
        assert_eq!(c.agent.hash_seed, 7);
        assert_eq!(c.vips.len(), 1);
        assert_eq!(c.vips[0].backends.len(), 2);
    }

    #[test]
    fn an_invalid_document_is_refused_with_the_files_field_names() {
        let bad = DOC.replace("weight = 1 }]", "weight = 70000 }]");
        assert_eq!(
            crate::error::error_chain(&merge(file(), &bad).unwrap_err()),
            "fleet document: vip[0].backend[1].weight: 70000 is out of range 0..=65535"
        );
        let e = merge(
            file(),
            &DOC.replace("ring_size = 65537", "ring_size = 65536"),
        )
        .unwrap_err();
        assert!(
            std::error::Error::source(&e)
                .unwrap()
                .to_string()
                .starts_with("agent.ring_size"),
            "{e:?}"
        );
        let e = merge(file(), &format!("drain = [\"198.18.99.1\"]\n{DOC}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "fleet document: drain[0]: 198.18.99.1 is not a backend of any VIP"
        );
        assert!(matches!(
            merge(file(), "hash_seed = \"x\"").unwrap_err(),
            DocError::Toml(_)
        ));
    }

    #[test]
    fn a_fleet_drain_zeroes_the_backend_everywhere_and_can_be_lifted() {
        let drained = with_drain(DOC, "198.18.10.3".parse().unwrap(), true).unwrap();
        let c = merge(file(), &drained).unwrap();
        assert_eq!(c.vips[0].backends[1].weight, 0);
        let lifted = with_drain(&drained, "198.18.10.3".parse().unwrap(), false).unwrap();
        assert_eq!(merge(file(), &lifted).unwrap(), merge(file(), DOC).unwrap());
    }

    #[test]
    fn the_diff_names_backends_and_the_share_of_slots_that_move() {
        let old = merge(file(), DOC).unwrap();
        let new = merge(
            file(),
            &DOC.replace(
                "weight = 1 }]",
                "weight = 1 }, { address = \"198.18.10.4\", weight = 1 }]",
            ),
        )
        .unwrap();
        let d = diff(&old, &new);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].change, "changed");
        assert_eq!(
            d[0].backends_added,
            vec!["198.18.10.4".parse::<IpAddr>().unwrap()]
        );
        // A third backend of equal weight takes about a third of the slots, all from the others.
        let share = d[0].moved_share();
        assert!((0.30..0.37).contains(&share), "{share}");
        assert!(diff(&old, &old).is_empty());
        assert_eq!(
            diff(&old, &merge(file(), "hash_seed = 7").unwrap())[0].change,
            "removed"
        );
    }

    #[test]
    fn fingerprints_are_those_of_the_built_tables() {
        let c = merge(file(), DOC).unwrap();
        let f = fingerprints(&c);
        let t = vip_table(&c.vips[0], 65537, 7);
        assert_eq!(
            f.get("203.0.113.10:80/tcp").cloned().flatten(),
            t.fingerprint()
        );
    }
}
