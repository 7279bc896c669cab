//! Loads the real XDP object and writes its maps through the agent's public API. Needs root
//! (see `anycast_tests::privileged`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use anycast::config::{ConfigBuilder, VipBuilder};
use anycast::dataplane::{Dataplane, vip_key};
use anycast::plan::model::vip_table;
use anycast_common::{Backend, VipKey, VipValue, map_names};
use anycast_tests::mount::Mount;
use aya::maps::{Array, HashMap};

#[test]
fn load_apply_pin_and_read_stats() {
    if !anycast_tests::privileged("load_apply_pin_and_read_stats") {
        return;
    }
    let config = ConfigBuilder::reference()
        .agent("interfaces", vec!["lo"])
        .agent("max_vips", 4)
        .agent("max_backends", 16)
        .vip(VipBuilder::new("2001:db8::10", 0, "udp").backend("fd00::10:2", 1))
        .build();
    let local: BTreeSet<IpAddr> = ["198.18.10.2".parse().unwrap()].into();
    let mut dp = Dataplane::load(&config).expect("loading the object");
    dp.apply(&config, &local).expect("writing the maps");
    dp.program_mut().expect("program");

    let rings: Array<_, u32> = Array::try_from(dp.ebpf().map(map_names::RINGS).unwrap()).unwrap();
    assert_eq!(rings.len(), 4 * 3 * 1009);
    let vips: HashMap<_, VipKey, VipValue> =
        HashMap::try_from(dp.ebpf().map(map_names::VIPS).unwrap()).unwrap();
    let backends: Array<_, Backend> =
        Array::try_from(dp.ebpf().map(map_names::BACKENDS).unwrap()).unwrap();
    let v = vips
        .get(&vip_key("203.0.113.10".parse().unwrap(), 80, 6), 0)
        .unwrap();
    let t = vip_table(&config.vips[0], 1009, 42);
    for s in [0u32, 1, 500, 1008] {
        let id = rings.get(&(v.table * 1009 + s), 0).unwrap();
        let b = backends.get(&id, 0).unwrap();
        let want = t.backends[t.slots[s as usize] as usize];
        assert_eq!((b.family, b.addr_be), (want.family, want.addr));
    }

    // Every slot of every VIP's table (written in one batch), element by element; then the
    // same tables read back in one batch each, as an agent adopting pinned maps does.
    let mut written = std::collections::BTreeMap::new();
    for (i, vip) in config.vips.iter().enumerate() {
        let key = vip_key(vip.address, vip.port, vip.protocol.number());
        let v = vips.get(&key, 0).unwrap();
        let t = vip_table(&config.vips[i], 1009, 42);
        let ids: Vec<u32> = (0..1009u32)
            .map(|s| rings.get(&(v.table * 1009 + s), 0).unwrap())
            .collect();
        for (s, id) in ids.iter().enumerate() {
            let b = backends.get(id, 0).unwrap();
            let want = t.backends[t.slots[s] as usize];
            assert_eq!(
                (b.family, b.addr_be),
                (want.family, want.addr),
                "VIP {i} slot {s}"
            );
        }
        written.insert(v.table, ids);
    }
    assert!(
        written.keys().any(|&t| t > 0),
        "a table away from index 0 is read back too"
    );
    let _ = (rings, vips, backends);
    let snap = dp.adopt_maps().expect("reading the maps back");
    for (t, ids) in &written {
        assert_eq!(snap.tables.get(t), Some(ids), "table {t} read back");
    }

    let stats = dp.read_stats().unwrap();
    assert_eq!(
        stats.counters.len(),
        anycast_common::counter::COUNT as usize
    );
    assert_eq!(stats.vips.len(), 2);

    // A bpffs of the test's own: the machine's /sys/fs/bpf may not be mounted.
    let mnt = Mount::bpffs("load-test");
    let dir = mnt.path().join("pins");
    dp.pin_maps(&dir).expect("pinning");
    let pinned = anycast::dataplane::stats::read_pinned(&dir, &dp.publisher().id_map()).unwrap();
    assert_eq!(pinned, stats);
    anycast::dataplane::unpin_maps(&dir).unwrap();
}
