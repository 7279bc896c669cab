//! Connection tracking carried over when a starting agent cannot reuse the pinned `CONNS` map,
//! through the agent's own planning and copy code on real kernel maps pinned in a bpffs of the
//! test's own: a changed `conntrack_size` (entries copied, the other maps adopted and not
//! written), a smaller one (the newest entries kept, spread over the CPUs' LRU shares), and
//! replaced tables (backend ids translated by address). Also: an odd `conntrack_size` is adopted
//! as is on the next start (the kernel rounds a per-CPU LRU map's capacity to the CPU count).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use anycast::config::{Config, ConfigBuilder, VipBuilder};
use anycast::dataplane::Dataplane;
use anycast::dataplane::pins::{self, AdoptPlan, PinLayout};
use anycast_common::{Backend, ConnKey, ConnValue, map_names};
use anycast_tests::mount::Mount;
use aya::maps::{Array, HashMap, MapData};

/// One VIP on three backends, the CONNS map sized `conntrack_size` (1025: odd, so the
/// kernel's rounding to a multiple of the CPU count is exercised).
fn config(conntrack_size: u32) -> ConfigBuilder {
    ConfigBuilder::reference()
        .agent("interfaces", vec!["lo"])
        .without_agent("tunnel_source_v6")
        .agent("decap_allow", vec!["198.18.0.0/15"])
        .agent("max_vips", 4)
        .agent("max_backends", 16)
        .agent("conntrack_size", conntrack_size)
        .edit_vip(0, |v| v.backend("198.18.10.4", 1))
}

/// Tracked flows written into the first agent's map, a third per backend.
const FLOWS: u16 = 300;
/// Tracked flows in all once the map is bigger.
const MORE_FLOWS: u16 = 1300;

/// What a starting agent does up to the program swap: plan, load adopting, publish.
fn start(layout: &PinLayout, config: &ConfigBuilder) -> (Dataplane, AdoptPlan, Config) {
    let config = config.build();
    let geometry = anycast::dataplane::Geometry::of(&config);
    let plan = pins::plan(
        layout,
        &pins::object_layouts(anycast::EBPF_OBJECT, geometry).expect("object layouts"),
    )
    .expect("plan");
    let mut dp = Dataplane::load_object_adopting(
        anycast::EBPF_OBJECT,
        geometry,
        &plan.adopt,
        anycast::dataplane::program_log::ALL_LEVELS,
    )
    .expect("loading the object");
    if plan.adopts_state() {
        dp.adopt_maps().expect("adopting");
    }
    let local = BTreeSet::new();
    let report = dp.apply(&config, &local).expect("publishing");
    if plan.adopts_state() {
        assert_eq!(
            (report.backends_written, report.ring_entries_written),
            (0, 0),
            "an adopting agent with the same tables wrote them"
        );
    }
    (dp, plan, config)
}

fn key(port: u16) -> ConnKey {
    ConnKey::v4([198, 51, 100, 7], port, [203, 0, 113, 10], 80, 6)
}

fn backend_of(port: u16) -> IpAddr {
    format!("198.18.10.{}", 2 + port % 3).parse().unwrap()
}

/// (id, generation) of every backend address in `dp`'s maps.
fn ids(dp: &Dataplane) -> BTreeMap<IpAddr, (u32, u16)> {
    let backends: Array<_, Backend> =
        Array::try_from(dp.ebpf().map(map_names::BACKENDS).unwrap()).unwrap();
    dp.publisher()
        .id_map()
        .backends
        .into_iter()
        .map(|(id, a, _)| (a, (id, backends.get(&id, 0).unwrap().generation)))
        .collect()
}

fn conns(dp: &Dataplane) -> BTreeMap<u16, ConnValue> {
    let m: HashMap<_, ConnKey, ConnValue> =
        HashMap::try_from(dp.ebpf().map(map_names::CONNS).unwrap()).unwrap();
    m.iter()
        .map(|r| {
            let (k, v) = r.unwrap();
            (u16::from_be_bytes([k.ports_be[0], k.ports_be[1]]), v)
        })
        .collect()
}

fn pinned_capacity(path: &Path) -> u32 {
    MapData::from_pin(path)
        .unwrap()
        .info()
        .unwrap()
        .max_entries()
}

#[test]
fn tracked_connections_are_carried_into_a_new_conns_map() {
    if !anycast_tests::privileged("tracked_connections_are_carried_into_a_new_conns_map") {
        return;
    }
    let fs = Mount::bpffs("conns");
    let layout = PinLayout::new(fs.path().join("anycast"));
    layout.create_dirs().unwrap();
    let cpus = aya::util::nr_cpus().unwrap();

    // The first agent: everything created, tracked flows in its CONNS, pinned.
    let (mut dp, plan, _) = start(&layout, &config(1025));
    assert_eq!(plan.migrate_conns, None);
    let first = ids(&dp);
    track(&mut dp, 0..FLOWS, &first);
    {
        let mut m: HashMap<_, ConnKey, ConnValue> =
            HashMap::try_from(dp.ebpf_mut().map_mut(map_names::CONNS).unwrap()).unwrap();
        // An entry of an id reused since (another generation): the program ignores it.
        let (id, generation) = first[&backend_of(0)];
        let stale = ConnValue {
            backend_id: id,
            generation: generation.wrapping_add(100),
            _pad: 0,
            last_seen_ns: 1_000_000,
        };
        m.insert(key(60_000), stale, 0).unwrap();
    }
    pins::pin_created_maps(dp.ebpf(), &layout, &plan).unwrap();
    let before = conns(&dp);
    assert_eq!(before.len(), usize::from(FLOWS) + 1);
    drop(dp);

    // The same config again: every map adopted, the odd capacity included.
    assert_eq!(
        pinned_capacity(&layout.map(map_names::CONNS)),
        pins::percpu_lru_entries(1025, cpus)
    );
    let (_, plan, _) = start(&layout, &config(1025));
    assert!(plan.create.is_empty(), "not adopted: {:?}", plan.replaced);

    // A larger conntrack_size: CONNS alone is new, every live entry copied as it was.
    let bigger = config(4096);
    let (mut dp, plan, _) = start(&layout, &bigger);
    assert_eq!(pins_created(&plan), [map_names::CONNS]);
    let m = plan.migrate_conns.clone().expect("a migration");
    let r = anycast::dataplane::migrate::migrate_into(&mut dp, &m).expect("migrating");
    println!("conntrack_size 1025 -> 4096: {r:?}");
    assert_eq!((r.found, r.copied, r.stale, r.no_room), (301, 300, 1, 0));
    let after = conns(&dp);
    let mut live = before.clone();
    live.remove(&60_000);
    assert_eq!(after, live, "entries changed on the way");
    track(&mut dp, FLOWS..MORE_FLOWS, &first);
    pins::pin_created_maps(dp.ebpf(), &layout, &plan).unwrap();
    assert_eq!(pinned_capacity(&layout.map(map_names::CONNS)), 4096);
    drop(dp);

    // A smaller one: the newest entries, as many as every CPU's share of the map holds; all of
    // them arrive (copied from one CPU, a per-CPU LRU map would keep only that CPU's share).
    let smaller = config(1024);
    let (mut dp, plan, _) = start(&layout, &smaller);
    let m = plan.migrate_conns.clone().expect("a migration");
    let r = anycast::dataplane::migrate::migrate_into(&mut dp, &m).expect("migrating");
    println!("conntrack_size 4096 -> 1024 on {cpus} CPUs: {r:?}");
    let room = 1024 / cpus * aya::util::online_cpus().unwrap().len();
    let total = usize::from(MORE_FLOWS);
    assert_eq!((r.found, r.copied, r.no_room), (total, room, total - room));
    let kept = conns(&dp);
    assert_eq!(kept.len(), room, "entries evicted while copying");
    let newest: BTreeSet<u16> = (MORE_FLOWS - room as u16..MORE_FLOWS).collect();
    assert_eq!(kept.keys().copied().collect::<BTreeSet<_>>(), newest);
    drop(dp);

    // Replaced tables (another ring_size) with new backend ids: .1 comes first now, .4 left.
    let replaced = bigger.agent("ring_size", 1013).edit_vip(0, |_| {
        VipBuilder::new("203.0.113.10", 80, "tcp").backends(&[
            ("198.18.10.2", 1),
            ("198.18.10.3", 1),
            ("198.18.10.1", 1),
        ])
    });
    let (mut dp, plan, _) = start(&layout, &replaced);
    assert!(!plan.adopts_state());
    let m = plan.migrate_conns.clone().expect("a migration");
    let r = anycast::dataplane::migrate::migrate_into(&mut dp, &m).expect("migrating");
    println!("ring_size 1009 -> 1013, 198.18.10.4 removed: {r:?}");
    let gone = (0..MORE_FLOWS).filter(|p| p % 3 == 2).count();
    let total = usize::from(MORE_FLOWS);
    assert_eq!(
        (r.found, r.backend_gone, r.copied),
        (total, gone, total - gone)
    );
    let now = ids(&dp);
    assert_ne!(
        now[&backend_of(0)],
        first[&backend_of(0)],
        "ids did not move"
    );
    let translated = conns(&dp);
    assert_eq!(translated.len(), total - gone);
    for (port, v) in &translated {
        let (id, generation) = now[&backend_of(*port)];
        assert_eq!(
            (v.backend_id, v.generation),
            (id, generation),
            "flow {port}"
        );
        assert_eq!(v.last_seen_ns, u64::from(*port));
    }
}

/// Inserts a tracked flow per source port, to the backend [`backend_of`] names, last seen at
/// `port` ns.
fn track(dp: &mut Dataplane, ports: std::ops::Range<u16>, ids: &BTreeMap<IpAddr, (u32, u16)>) {
    let mut m: HashMap<_, ConnKey, ConnValue> =
        HashMap::try_from(dp.ebpf_mut().map_mut(map_names::CONNS).unwrap()).unwrap();
    for port in ports {
        let (id, generation) = ids[&backend_of(port)];
        let v = ConnValue {
            backend_id: id,
            generation,
            _pad: 0,
            last_seen_ns: u64::from(port),
        };
        m.insert(key(port), v, 0).unwrap();
    }
}

fn pins_created(plan: &AdoptPlan) -> Vec<&str> {
    plan.create.iter().map(String::as_str).collect()
}
