//! The dataplane's pins in bpffs, and what a starting agent does with pins it finds.
//!
//! Layout under `agent.pin_path` (default `/sys/fs/bpf/anycast`):
//!
//! | path | object |
//! |---|---|
//! | `maps/<NAME>` | every map of the object (`VIPS`, `RINGS`, `BACKENDS`, `CONNS`, the counters, ...) |
//! | `links/<interface>` | the XDP `bpf_link` of each interface the program is attached to |
//! | `prog` | the program the links currently run (for `bpftool prog show pinned ...`) |
//!
//! The links are what keep the program attached: a `bpf_link` lives as long as a file
//! descriptor or a pin refers to it, so the dataplane keeps forwarding when the agent exits or
//! is killed. A starting agent adopts what it finds: maps whose layout matches the new object
//! are reused (tables, counters and connection tracking carry over), the new program is loaded
//! against them and swapped into each pinned link with one `BPF_LINK_UPDATE` (the kernel
//! replaces the program pointer atomically: every packet runs the old program or the new one).
//!
//! A map whose layout changed (type, key or value size, capacity, flags) cannot be reused. The
//! maps the publisher writes (tables, backends, VIPs, addresses, config) refer to one another by
//! backend id, so if any of them changed, the whole group is created afresh and republished
//! from the config (it is all derived from the config). The connection-tracking map is the one
//! state nothing rebuilds: when it is not reused (its capacity changed, or the group it takes
//! backend ids from was replaced) its entries are copied into the new one, ids translated by
//! address ([`crate::dataplane::migrate`]); only a changed entry layout loses them. Counters are replaced
//! one by one. The running program keeps the maps it has until its link is switched, so packets
//! never see a half-written replacement.

pub use super::bpffs::{Bpffs, ensure_bpffs};

use crate::error::IoError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anycast_common::map_names;
use aya::maps::MapData;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{Xdp, XdpMode};

use crate::dataplane::Geometry;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("parsing the eBPF object's map definitions: {0}")]
    Object(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("reading pinned map {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "{dir} (agent.pin_path's parent) is not on a bpffs, and {why}, so the agent does not mount one there: set agent.pin_path under a bpffs (such as /sys/fs/bpf/anycast), or mount one for it yourself"
    )]
    NoBpffs { dir: PathBuf, why: String },
    #[error(
        "mounting bpffs at {dir} (agent.pin_path's parent, not on a bpffs) failed: mount it yourself (mount -t bpf bpf {dir}) or set agent.pin_path under a bpffs"
    )]
    Mount {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {interface}: {what}")]
    Link {
        interface: String,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Paths of the pins under one `agent.pin_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn link(&self, interface: &str) -> PathBuf {
        self.links_dir().join(interface)
    }
    pub fn prog(&self) -> PathBuf {
        self.root.join("prog")
    }

    /// Interfaces with a pinned link.
    pub fn pinned_links(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.links_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn create_dirs(&self) -> Result<(), PinError> {
        for dir in [self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| {
                PinError::Io(IoError {
                    what: "creating the pin directory",
                    path: dir,
                    source,
                })
            })?;
        }
        Ok(())
    }
}

/// What the kernel fixes about a map when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for MapLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// The maps the publisher writes, plus connection tracking, whose values are backend ids: they
/// are adopted or replaced together (module docs).
pub const STATE_MAPS: [&str; 8] = [
    map_names::VIPS,
    map_names::RINGS,
    map_names::BACKENDS,
    map_names::CONFIG,
    map_names::LOCAL_ADDRS,
    map_names::DECAP_ALLOW_V4,
    map_names::DECAP_ALLOW_V6,
    map_names::CONNS,
];

/// The layout each map of `object` will have when loaded with `geometry`. Sections (`.rodata`,
/// `.bss`, ...) are left out: they are per-program data, not state.
pub fn object_layouts(
    object: &[u8],
    geometry: Geometry,
) -> Result<BTreeMap<String, MapLayout>, PinError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
    let cpus = aya::util::nr_cpus().map_err(|(path, source)| {
        PinError::Io(IoError {
            what: "reading the number of possible CPUs from",
            path: path.into(),
            source,
        })
    })?;
    let sized = [
        (map_names::RINGS, geometry.ring_entries()),
        (map_names::VIPS, geometry.max_vips),
        (map_names::VIP_STATS, geometry.max_vips),
        (map_names::BACKENDS, geometry.max_backends),
        (map_names::BACKEND_STATS, geometry.max_backends),
        (map_names::NEXTHOPS, geometry.max_backends),
        (map_names::CONNS, geometry.conntrack_size),
        (map_names::CONNS_NEW, geometry.conntrack_new_size()),
    ];
    Ok(obj
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, m)| {
            let mut max_entries = sized
                .iter()
                .find(|(n, _)| n == name)
                .map_or(m.max_entries(), |(_, v)| *v);
            if m.map_type() == aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32
                && m.map_flags() & aya_obj::generated::BPF_F_NO_COMMON_LRU != 0
            {
                max_entries = percpu_lru_entries(max_entries, cpus);
            }
            (
                name.clone(),
                MapLayout {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries,
                    flags: m.map_flags(),
                },
            )
        })
        .collect())
}

/// The capacity the kernel gives an LRU hash map with per-CPU lists (`BPF_F_NO_COMMON_LRU`)
/// asked for `requested` entries: a multiple of the number of possible CPUs, so that every CPU
/// gets the same share (kernel/bpf/hashtab.c, `htab_map_alloc`: rounded up, or down when
/// rounding up would overflow). Map info reports that capacity, so a pinned map is compared
/// against it.
pub fn percpu_lru_entries(requested: u32, cpus: usize) -> u32 {
    let cpus = u32::try_from(cpus.max(1)).unwrap_or(u32::MAX);
    requested
        .checked_next_multiple_of(cpus)
        .unwrap_or(requested - requested % cpus)
}

fn pinned_layout(path: &Path) -> Result<MapLayout, PinError> {
    let err = |source| PinError::Map {
        path: path.to_owned(),
        source,
    };
    let info = MapData::from_pin(path)
        .and_then(|m| m.info())
        .map_err(err)?;
    Ok(MapLayout {
        map_type: info.map_type().map_err(err)? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// What a starting agent does with each map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptPlan {
    /// Pinned with the expected layout: reused.
    pub adopt: Vec<(String, PathBuf)>,
    /// Created by this load (no pin, or the pin was not reusable) and pinned once attached.
    pub create: Vec<String>,
    /// Pins not reused, and why.
    pub replaced: Vec<(String, String)>,
    /// A pinned `CONNS` that is not reused but whose entries fit the new one: they are copied
    /// into it before the new program is swapped in ([`crate::dataplane::migrate`]).
    pub migrate_conns: Option<ConnsMigration>,
}

/// Where the entries of a pinned `CONNS` come from, and the `BACKENDS` map their ids index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnsMigration {
    pub conns: PathBuf,
    pub backends: PathBuf,
    pub from: MapLayout,
    pub to: MapLayout,
}

impl AdoptPlan {
    pub fn adopted(&self, name: &str) -> bool {
        self.adopt.iter().any(|(n, _)| n == name)
    }

    /// True when the publisher's maps are reused, so their contents must be learnt.
    pub fn adopts_state(&self) -> bool {
        self.adopted(map_names::VIPS)
    }
}

/// Whether the entries of a `CONNS` map laid out as `have` can be copied into one laid out as
/// `want`: same map type, key, value and flags; only the capacity may differ (a changed
/// `agent.conntrack_size`). A changed key or value means a changed `ConnKey`/`ConnValue`, whose
/// old bytes this program cannot interpret.
pub fn conns_migratable(have: &MapLayout, want: &MapLayout) -> Result<(), String> {
    let mut diffs = Vec::new();
    if have.map_type != want.map_type {
        diffs.push("map type");
    }
    if have.key_size != want.key_size {
        diffs.push("key size");
    }
    if have.value_size != want.value_size {
        diffs.push("value size");
    }
    if have.flags != want.flags {
        diffs.push("flags");
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "its {} changed, so its entries cannot be carried over",
            diffs.join(", ")
        ))
    }
}

/// Decides, map by map, what to reuse (module docs for the grouping rule).
pub fn plan(
    layout: &PinLayout,
    expected: &BTreeMap<String, MapLayout>,
) -> Result<AdoptPlan, PinError> {
    let mut found: BTreeMap<&str, MapLayout> = BTreeMap::new();
    for name in expected.keys() {
        let path = layout.map(name);
        if path.exists() {
            found.insert(name, pinned_layout(&path)?);
        }
    }
    Ok(plan_from(layout, expected, &found))
}

/// [`plan`] over the layouts of the maps found pinned.
fn plan_from(
    layout: &PinLayout,
    expected: &BTreeMap<String, MapLayout>,
    found: &BTreeMap<&str, MapLayout>,
) -> AdoptPlan {
    let matches = |name: &str| -> Option<Result<(), String>> {
        let (have, want) = (found.get(name)?, expected.get(name)?);
        Some(if have == want {
            Ok(())
        } else {
            Err(format!("pinned {have}, this program needs {want}"))
        })
    };
    // The maps that hold backend ids and the tables. A new CONNS alone does not invalidate
    // them (its entries are carried over or lost, the ids stay); a new one of these does
    // invalidate the ids in CONNS, which are then translated through the old BACKENDS.
    let core = &STATE_MAPS[..STATE_MAPS.len() - 1];
    let state_reusable = core
        .iter()
        .all(|n| !expected.contains_key(*n) || matches(n) == Some(Ok(())));
    let mut plan = AdoptPlan::default();
    for name in expected.keys() {
        let in_core = core.contains(&name.as_str());
        match matches(name) {
            Some(Ok(()))
                if (name == map_names::CONNS || name == map_names::CONNS_NEW)
                    && !state_reusable =>
            {
                plan.replaced.push((
                    name.clone(),
                    "the tables and backends it refers to are replaced".into(),
                ));
                plan.create.push(name.clone());
            }
            Some(Ok(())) if !in_core || state_reusable => {
                plan.adopt.push((name.clone(), layout.map(name)));
            }
            Some(Ok(())) => {
                plan.replaced.push((
                    name.clone(),
                    "the maps holding the tables and backend ids are replaced together".into(),
                ));
                plan.create.push(name.clone());
            }
            Some(Err(why)) => {
                plan.replaced.push((name.clone(), why));
                plan.create.push(name.clone());
            }
            None => plan.create.push(name.clone()),
        }
    }
    if !plan.adopted(map_names::CONNS)
        && let (Some(have), Some(want)) =
            (found.get(map_names::CONNS), expected.get(map_names::CONNS))
    {
        match conns_migratable(have, want) {
            Ok(()) => {
                plan.migrate_conns = Some(ConnsMigration {
                    conns: layout.map(map_names::CONNS),
                    backends: layout.map(map_names::BACKENDS),
                    from: *have,
                    to: *want,
                });
            }
            Err(why) => {
                if let Some(r) = plan
                    .replaced
                    .iter_mut()
                    .find(|(n, _)| n == map_names::CONNS)
                {
                    r.1 = format!("{}; {why}", r.1);
                }
            }
        }
    }
    plan
}

/// Pins the maps `plan` created, replacing pins that were not reused. Called once the program
/// using them is attached, so a failed start never leaves pins the running program does not use.
pub fn pin_created_maps(
    ebpf: &aya::Ebpf,
    layout: &PinLayout,
    plan: &AdoptPlan,
) -> Result<(), PinError> {
    for name in &plan.create {
        let Some(map) = ebpf.map(name) else { continue };
        let path = layout.map(name);
        remove_pin(&path)?;
        map.pin(&path).map_err(|e| {
            PinError::Io(IoError {
                what: "pinning map at",
                path: path.clone(),
                source: std::io::Error::other(e),
            })
        })?;
    }
    Ok(())
}

fn remove_pin(path: &Path) -> Result<bool, PinError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(PinError::Io(IoError {
            what: "removing pin",
            path: path.to_owned(),
            source,
        })),
    }
}

/// How an interface got the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Its pinned link now runs the new program (one atomic `BPF_LINK_UPDATE`).
    Replaced,
    /// Newly attached, and the link pinned.
    New,
}

/// Puts `prog` on `interface`: into its pinned link if there is a live one, else by a new
/// attachment whose link is pinned. Either way the attachment outlives this process.
pub fn attach_pinned(
    prog: &mut Xdp,
    interface: &str,
    mode: XdpMode,
    path: &Path,
) -> Result<Attached, PinError> {
    let link_err = |what: &str, source: Box<dyn std::error::Error + Send + Sync>| PinError::Link {
        interface: interface.to_owned(),
        what: what.to_owned(),
        source,
    };
    if path.exists() {
        let replaced = PinnedLink::from_pin(path)
            .map_err(|e| link_err("opening its pinned link", e.into()))
            .and_then(|p| {
                XdpLink::try_from(FdLink::from(p))
                    .map_err(|e| link_err("the pinned link is not an XDP link", e.into()))
            })
            .and_then(|link| {
                prog.attach_to_link(link)
                    .map_err(|e| link_err("replacing the program of its pinned link", e.into()))
            });
        match replaced {
            Ok(id) => {
                // The pin keeps the link; this process's descriptor can go.
                let link = prog
                    .take_link(id)
                    .map_err(|e| link_err("taking the link", e.into()))?;
                drop(FdLink::try_from(link));
                return Ok(Attached::Replaced);
            }
            Err(e) => {
                // A link whose interface went away is defunct (ENOLINK on update): start over.
                tracing::warn!(interface, error = %crate::error::error_chain(&e), "pinned link not reusable; attaching afresh");
                remove_pin(path)?;
            }
        }
    }
    let id = prog
        .attach(interface, mode)
        .map_err(|e| link_err("attaching", e.into()))?;
    let link = prog
        .take_link(id)
        .map_err(|e| link_err("taking the link", e.into()))?;
    let fd = FdLink::try_from(link).map_err(|e| {
        link_err(
            "the kernel attached through netlink, not a bpf_link, which cannot be pinned (needs Linux 5.9+)",
            e.into(),
        )
    })?;
    fd.pin(path)
        .map_err(|e| link_err("pinning its link", e.into()))?;
    Ok(Attached::New)
}

/// Detaches a pinned link by removing its pin (the link goes when nothing refers to it).
pub fn remove_link(layout: &PinLayout, interface: &str) -> Result<bool, PinError> {
    remove_pin(&layout.link(interface))
}

/// Replaces the `prog` pin with `prog`.
pub fn pin_program(prog: &mut Xdp, layout: &PinLayout) -> Result<(), PinError> {
    let path = layout.prog();
    remove_pin(&path)?;
    prog.pin(&path).map_err(|e| {
        PinError::Io(IoError {
            what: "pinning the program at",
            path,
            source: std::io::Error::other(e),
        })
    })
}

/// Removes every pin under `layout`: links first (which detaches the program from every
/// interface), then the program and the maps, then the directories. Returns what was removed.
pub fn remove_all(layout: &PinLayout) -> Result<Vec<PathBuf>, PinError> {
    let mut removed = Vec::new();
    for dir in [layout.links_dir(), layout.maps_dir()] {
        let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for p in entries {
            if remove_pin(&p)? {
                removed.push(p);
            }
        }
        if dir == layout.links_dir() {
            let prog = layout.prog();
            if remove_pin(&prog)? {
                removed.push(prog);
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_dir(layout.root());
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::bpffs::mount_point_type;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
24 22 0:22 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,mode=755
25 22 0:23 / /srv/with\\040space rw shared:6 - tmpfs none rw
26 23 0:24 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:7 - bpf bpf rw,mode=700
27 26 0:25 / /sys/fs/bpf rw shared:8 - tmpfs none rw
";

    #[test]
    fn mount_points_are_found_in_mountinfo_with_their_type() {
        let at = |p: &str| mount_point_type(MOUNTINFO, Path::new(p));
        assert_eq!(at("/run").as_deref(), Some("tmpfs"));
        assert_eq!(at("/srv/with space").as_deref(), Some("tmpfs"));
        // The last mount on a path is the one in force.
        assert_eq!(at("/sys/fs/bpf").as_deref(), Some("tmpfs"));
        assert_eq!(at("/sys/fs"), None);
        assert_eq!(at("/run/anycast"), None);
        assert_eq!(at("/srv/with\\040space"), None);
    }

    fn layouts() -> BTreeMap<String, MapLayout> {
        let l = |map_type, key_size, value_size, max_entries, flags| MapLayout {
            map_type,
            key_size,
            value_size,
            max_entries,
            flags,
        };
        [
            (map_names::VIPS, l(1, 40, 16, 64, 0)),
            (map_names::RINGS, l(2, 4, 4, 3 * 64 * 1009, 0)),
            (map_names::BACKENDS, l(2, 4, 24, 4096, 0)),
            (map_names::CONFIG, l(2, 4, 40, 1, 0)),
            (map_names::LOCAL_ADDRS, l(1, 20, 1, 64, 0)),
            (map_names::DECAP_ALLOW_V4, l(11, 8, 1, 64, 1)),
            (map_names::DECAP_ALLOW_V6, l(11, 20, 1, 64, 1)),
            (map_names::CONNS, l(9, 40, 16, 262_144, 2)),
            (map_names::STATS, l(6, 4, 8, 32, 0)),
        ]
        .into_iter()
        .map(|(n, l)| (n.to_string(), l))
        .collect()
    }

    fn plan_with(change: impl Fn(&mut BTreeMap<String, MapLayout>)) -> AdoptPlan {
        let want = layouts();
        let mut have = want.clone();
        change(&mut have);
        let found: BTreeMap<&str, MapLayout> = have.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        plan_from(&PinLayout::new("/p"), &want, &found)
    }

    fn names(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_changed_conntrack_size_replaces_conns_alone_and_carries_its_entries_over() {
        assert_eq!(plan_with(|_| {}).create, Vec::<String>::new());
        assert_eq!(plan_with(|_| {}).migrate_conns, None);
        let p = plan_with(|h| h.get_mut(map_names::CONNS).unwrap().max_entries = 16_384);
        assert_eq!(names(&p.create), [map_names::CONNS]);
        assert!(p.adopts_state(), "{p:?}");
        let m = p.migrate_conns.expect("a migration");
        assert_eq!((m.from.max_entries, m.to.max_entries), (16_384, 262_144));
        assert_eq!(m.conns, Path::new("/p/maps/CONNS"));
        assert_eq!(m.backends, Path::new("/p/maps/BACKENDS"));
    }

    /// Why the plan replaces `map` (it must).
    fn why_replaced<'a>(p: &'a AdoptPlan, map: &str) -> &'a str {
        &p.replaced
            .iter()
            .find(|(n, _)| n == map)
            .unwrap_or_else(|| panic!("{map} not replaced: {p:?}"))
            .1
    }

    #[test]
    fn replaced_tables_replace_conns_whose_entries_are_translated_over() {
        let p = plan_with(|h| h.get_mut(map_names::RINGS).unwrap().max_entries = 3 * 64 * 1013);
        assert!(!p.adopts_state());
        let mut created = names(&p.create);
        created.sort_unstable();
        let mut core: Vec<&str> = STATE_MAPS.to_vec();
        core.sort_unstable();
        assert_eq!(created, core);
        assert!(p.adopted(map_names::STATS));
        let why = why_replaced(&p, map_names::CONNS);
        assert_eq!(why, "the tables and backends it refers to are replaced");
        assert!(p.migrate_conns.is_some());
    }

    #[test]
    fn a_changed_conntrack_entry_layout_is_not_carried_over_and_says_why() {
        let p = plan_with(|h| h.get_mut(map_names::CONNS).unwrap().value_size = 24);
        assert_eq!(p.migrate_conns, None);
        assert!(p.adopts_state(), "the tables stay: {p:?}");
        let why = why_replaced(&p, map_names::CONNS);
        assert!(
            why.ends_with("its value size changed, so its entries cannot be carried over"),
            "{why}"
        );
    }

    #[test]
    fn per_cpu_lru_capacity_is_a_multiple_of_the_cpu_count() {
        assert_eq!(percpu_lru_entries(1001, 2), 1002);
        assert_eq!(percpu_lru_entries(262_144, 2), 262_144);
        assert_eq!(percpu_lru_entries(262_144, 6), 262_146);
        assert_eq!(percpu_lru_entries(u32::MAX, 2), u32::MAX - 1);
        assert_eq!(percpu_lru_entries(5, 0), 5);
    }

    #[test]
    fn a_pin_path_without_a_parent_is_refused_with_its_reason() {
        let e = ensure_bpffs(Path::new("anycast")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "anycast (agent.pin_path's parent) is not on a bpffs, and agent.pin_path has no parent directory to mount one at, so the agent does not mount one there: set agent.pin_path under a bpffs (such as /sys/fs/bpf/anycast), or mount one for it yourself"
        );
    }
}
