//! Reading the dataplane's counters, from a loaded object or from a running agent's pins.
//!
//! `STATS` holds one per-CPU `u64` per outcome ([`counter::NAMES`]); `VIP_STATS` and
//! `BACKEND_STATS` hold per-CPU [`TrafficStats`] indexed by VIP id and backend id. The ids mean
//! nothing on their own, so the agent writes a [`StateFile`] (JSON, default
//! `/run/anycast/state.json`, `agent.state_file`; bpffs cannot hold regular files) mapping them
//! back to VIPs and backends. It also keeps what the next agent takes over from this one
//! ([`RuntimeState`]: runtime overrides, last health verdicts, the edge drain):
//!
//! ```json
//! {"pin_path":"/sys/fs/bpf/anycast","pid":1234,"ring_size":65537,
//!  "ids":{"vips":[[0,"203.0.113.10:80/tcp"]],"backends":[[0,"198.18.10.2",false]]},
//!  "attached":[["eth0","native"]],
//!  "runtime":{"overrides":[{"vip":"203.0.113.10:80/tcp","backend":"198.18.10.2","drained":true}],
//!             "health":[{"vip":"203.0.113.10:80/tcp","backend":"198.18.10.2","healthy":true}],
//!             "edge_drained":false}}
//! ```

use crate::error::IoError;
use std::borrow::Borrow;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anycast_common::{TrafficStats, counter, map_names};
use aya::maps::{Map, MapData, PerCpuArray};
use serde::{Deserialize, Serialize};

use crate::dataplane::{DataplaneError, IdMap};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub pin_path: PathBuf,
    pub pid: u32,
    pub ring_size: u32,
    pub ids: IdMap,
    /// `(interface, mode)` of each attachment, so an agent adopting the pinned links can report
    /// the mode they were made in.
    #[serde(default)]
    pub attached: Vec<(String, String)>,
    /// Runtime overrides, health verdicts and the edge drain, restored by the next agent.
    #[serde(default)]
    pub runtime: RuntimeState,
}

impl StateFile {
    /// Like [`StateFile::read`], but `None` when there is no file (no agent ran here yet, or
    /// `anycast detach` removed it).
    pub fn read_if_present(path: &Path) -> Result<Option<Self>, DataplaneError> {
        match Self::read(path) {
            Ok(s) => Ok(Some(s)),
            Err(DataplaneError::Io(IoError { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn read(path: &Path) -> Result<Self, DataplaneError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            DataplaneError::Io(IoError {
                what: "reading agent state file",
                path: path.into(),
                source,
            })
        })?;
        serde_json::from_str(&text).map_err(|e| {
            DataplaneError::Io(IoError {
                what: "parsing agent state file",
                path: path.into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
        })
    }

    /// Written to a temporary file then renamed, so a reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), DataplaneError> {
        let io = |what, source| {
            DataplaneError::Io(IoError {
                what,
                path: path.into(),
                source,
            })
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_string_pretty(self).expect("serializable");
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| io("creating the temporary file of", e))?;
        // No fsync: the file describes pinned BPF state, which lives in memory and does not
        // survive what an fsync protects against (an OS crash or power loss); an agent crash
        // loses nothing that reached the page cache, and the rename is atomic. An fsync here
        // could also hold the agent's single thread for seconds on a busy disk (seen: 30 s).
        f.write_all(text.as_bytes()).map_err(|e| io("writing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("renaming into", e))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipTraffic {
    pub id: u32,
    pub vip: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTraffic {
    pub id: u32,
    pub address: Option<IpAddr>,
    pub local: bool,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `(name, value)` for every counter, in [`counter::NAMES`] order; a JSON object.
    #[serde(serialize_with = "ordered_map", deserialize_with = "counters_in_order")]
    pub counters: Vec<(String, u64)>,
    pub vips: Vec<VipTraffic>,
    pub backends: Vec<BackendTraffic>,
}

impl Stats {
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::from("counters\n");
        for (n, v) in &self.counters {
            let _ = writeln!(s, "  {n:<20} {v}");
        }
        s.push_str("vips\n");
        for v in &self.vips {
            let _ = writeln!(
                s,
                "  {:<32} id {:<4} packets {:<12} bytes {}",
                v.vip, v.id, v.traffic.packets, v.traffic.bytes
            );
        }
        s.push_str("backends\n");
        for b in &self.backends {
            let addr = b.address.map_or_else(|| "?".to_string(), |a| a.to_string());
            let kind = if b.local { "local" } else { "remote" };
            let _ = writeln!(
                s,
                "  {addr:<32} id {:<4} {kind:<6} packets {:<12} bytes {}",
                b.id, b.traffic.packets, b.traffic.bytes
            );
        }
        s
    }
}

fn ordered_map<S: serde::Serializer>(v: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(k, v)| (k, v)))
}

/// The counters object back in [`counter::NAMES`] order; every counter must be there (an agent
/// of another version answers with another set).
fn counters_in_order<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, u64)>, D::Error> {
    let mut m = std::collections::BTreeMap::<String, u64>::deserialize(d)?;
    counter::NAMES
        .iter()
        .map(|n| {
            m.remove(*n)
                .map(|v| ((*n).to_owned(), v))
                .ok_or_else(|| serde::de::Error::custom(format!("no counter {n:?}")))
        })
        .collect()
}

fn sum_u64<T: Borrow<MapData>>(
    a: &PerCpuArray<T, u64>,
    i: u32,
) -> Result<u64, aya::maps::MapError> {
    Ok(a.get(&i, 0)?.iter().copied().fold(0u64, u64::wrapping_add))
}

fn sum_traffic<T: Borrow<MapData>>(
    a: &PerCpuArray<T, TrafficStats>,
    i: u32,
) -> Result<Traffic, aya::maps::MapError> {
    let v = a.get(&i, 0)?;
    Ok(v.iter().fold(Traffic::default(), |t, s| Traffic {
        packets: t.packets.wrapping_add(s.packets),
        bytes: t.bytes.wrapping_add(s.bytes),
    }))
}

fn map_err(name: &'static str, what: String) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, what, source }
}

/// Reads the three stats maps through `get` (a loaded object's maps, or pinned ones).
pub fn read<'m>(
    get: impl Fn(&'static str) -> Result<&'m Map, DataplaneError>,
    ids: &IdMap,
) -> Result<Stats, DataplaneError> {
    let name = map_names::STATS;
    let a: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(get(name)?).map_err(map_err(name, "opening".into()))?;
    let mut counters = Vec::with_capacity(counter::COUNT as usize);
    for (i, n) in counter::NAMES.iter().enumerate() {
        counters.push((
            (*n).to_string(),
            sum_u64(&a, i as u32).map_err(map_err(name, format!("reading {n}")))?,
        ));
    }
    let name = map_names::VIP_STATS;
    let a: PerCpuArray<&MapData, TrafficStats> =
        PerCpuArray::try_from(get(name)?).map_err(map_err(name, "opening".into()))?;
    let mut vips = Vec::new();
    for (id, label) in &ids.vips {
        let traffic =
            sum_traffic(&a, *id).map_err(map_err(name, format!("reading VIP id {id}")))?;
        vips.push(VipTraffic {
            id: *id,
            vip: label.clone(),
            traffic,
        });
    }
    let name = map_names::BACKEND_STATS;
    let a: PerCpuArray<&MapData, TrafficStats> =
        PerCpuArray::try_from(get(name)?).map_err(map_err(name, "opening".into()))?;
    let mut backends = Vec::new();
    for (id, address, local) in &ids.backends {
        let traffic =
            sum_traffic(&a, *id).map_err(map_err(name, format!("reading backend id {id}")))?;
        backends.push(BackendTraffic {
            id: *id,
            address: Some(*address),
            local: *local,
            traffic,
        });
    }
    Ok(Stats {
        counters,
        vips,
        backends,
    })
}

/// Reads the stats of a running agent from its pinned maps.
pub fn read_pinned(pin_path: &Path, ids: &IdMap) -> Result<Stats, DataplaneError> {
    let mut maps = Vec::new();
    for name in [
        map_names::STATS,
        map_names::VIP_STATS,
        map_names::BACKEND_STATS,
    ] {
        let path = crate::dataplane::pins::PinLayout::new(pin_path).map(name);
        let data = MapData::from_pin(&path)
            .map_err(map_err(name, format!("opening pin {}", path.display())))?;
        let map = Map::from_map_data(data).map_err(map_err(name, "reading map info".into()))?;
        maps.push((name, map));
    }
    read(
        |name| {
            maps.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, m)| m)
                .ok_or(DataplaneError::MissingMap(name))
        },
        ids,
    )
}

/// What the state file keeps of the controller, so that an agent that starts after another
/// (restart, upgrade, crash) continues from where it was (README "Runtime overrides"): the
/// runtime overrides, the last health verdicts (the starting point that the checks then confirm
/// or overturn) and whether the edge is drained from BGP. VIPs are named by their label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeState {
    #[serde(default)]
    pub overrides: Vec<SavedOverride>,
    #[serde(default)]
    pub health: Vec<SavedVerdict>,
    #[serde(default)]
    pub edge_drained: bool,
}

/// One drain or one weight override (`vip` absent: every VIP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    pub backend: IpAddr,
    #[serde(default)]
    pub drained: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVerdict {
    pub vip: String,
    pub backend: IpAddr,
    pub healthy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("anycast-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn sample() -> StateFile {
        StateFile {
            pin_path: "/sys/fs/bpf/anycast".into(),
            pid: 1,
            ring_size: 65537,
            ids: IdMap {
                vips: vec![(0, "203.0.113.10:80/tcp".into())],
                backends: vec![(3, "198.18.10.2".parse().unwrap(), true)],
            },
            attached: vec![("eth0".into(), "native".into())],
            runtime: RuntimeState {
                overrides: vec![
                    SavedOverride {
                        vip: Some("203.0.113.10:80/tcp".into()),
                        backend: "198.18.10.2".parse().unwrap(),
                        drained: true,
                        weight: None,
                    },
                    SavedOverride {
                        vip: None,
                        backend: "fd00:10::2".parse().unwrap(),
                        drained: false,
                        weight: Some(7),
                    },
                ],
                health: vec![SavedVerdict {
                    vip: "[2001:db8::10]:80/tcp".into(),
                    backend: "fd00:10::2".parse().unwrap(),
                    healthy: false,
                }],
                edge_drained: true,
            },
        }
    }

    #[test]
    fn state_file_round_trips_with_its_runtime_state_and_leaves_no_temporary_file() {
        let dir = temp_dir("state");
        let path = dir.join("state.json");
        let s = sample();
        s.write(&path).unwrap();
        assert_eq!(StateFile::read(&path).unwrap(), s);
        // Rewritten in place (rename over the old file).
        let mut t = s.clone();
        t.runtime.overrides.clear();
        t.write(&path).unwrap();
        assert_eq!(StateFile::read_if_present(&path).unwrap(), Some(t));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_state_file_without_runtime_state_reads_as_none_restored() {
        // The format of agents before runtime state was kept.
        let old = r#"{"pin_path":"/sys/fs/bpf/anycast","pid":1234,"ring_size":65537,
            "ids":{"vips":[[0,"203.0.113.10:80/tcp"]],"backends":[[0,"198.18.10.2",false]]}}"#;
        let s: StateFile = serde_json::from_str(old).unwrap();
        assert_eq!(s.runtime, RuntimeState::default());
        assert!(s.attached.is_empty());
    }

    #[test]
    fn a_missing_state_file_is_none_and_a_corrupt_one_an_error_naming_it() {
        let dir = temp_dir("state-bad");
        let path = dir.join("state.json");
        assert_eq!(StateFile::read_if_present(&path).unwrap(), None);
        std::fs::create_dir_all(&dir).unwrap();
        let full = serde_json::to_string(&sample()).unwrap();
        for (what, text) in [
            ("empty", String::new()),
            ("truncated", full[..full.len() / 2].to_string()),
            ("not JSON", "\0\u{1}garbage".to_string()),
            (
                "wrong type",
                full.replace("\"healthy\":false", "\"healthy\":\"no\""),
            ),
        ] {
            std::fs::write(&path, &text).unwrap();
            let e = StateFile::read_if_present(&path).unwrap_err();
            let msg = crate::error::error_chain(&e);
            assert!(
                msg.starts_with(&format!("parsing agent state file {}", path.display())),
                "{what}: {msg}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn text_output_lists_every_counter() {
        let st = Stats {
            counters: counter::NAMES
                .iter()
                .map(|n| ((*n).to_string(), 1))
                .collect(),
            vips: vec![VipTraffic {
                id: 0,
                vip: "203.0.113.10:80/tcp".into(),
                traffic: Traffic {
                    packets: 2,
                    bytes: 120,
                },
            }],
            backends: vec![BackendTraffic {
                id: 1,
                address: Some("198.18.10.2".parse().unwrap()),
                local: false,
                traffic: Traffic {
                    packets: 2,
                    bytes: 160,
                },
            }],
        };
        let t = st.render_text();
        for n in counter::NAMES {
            assert!(t.contains(n), "{n} missing");
        }
        assert!(t.contains("203.0.113.10:80/tcp"));
        assert!(t.contains("198.18.10.2"));
        let j = serde_json::to_value(&st).unwrap();
        assert_eq!(j["vips"][0]["packets"], 2);
        assert_eq!(j["counters"]["pass"], 1);
        assert_eq!(j["backends"][0]["address"], "198.18.10.2");
        let mut missing = j.clone();
        missing["counters"].as_object_mut().unwrap().remove("pass");
        let e = serde_json::from_value::<Stats>(missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no counter \"pass\""), "{e}");
        assert_eq!(serde_json::from_value::<Stats>(j).unwrap(), st);
    }
}
