//! Map memory per VIP, per backend and per tracked flow: the kernel's own accounting (`memlock`
//! in each map's fdinfo) of two loads of the object that differ in one capacity, divided by the
//! difference.

use anycast_common::map_names as m;
use anycast_tests::fixture::Dataplane;

/// The maps whose size follows each capacity.
const PER_VIP: [&str; 3] = [m::RINGS, m::VIPS, m::VIP_STATS];
const PER_BACKEND: [&str; 3] = [m::BACKENDS, m::BACKEND_STATS, m::NEXTHOPS];
/// Per unit of `conntrack_size`: `CONNS`, and the new-flow tier sized as a quarter of it.
const PER_FLOW: [&str; 2] = [m::CONNS, m::CONNS_NEW];

fn memory(field: &str, value: u32, maps: &[&str]) -> u64 {
    let config = super::xdp::config_with(field, value);
    let dp = Dataplane::from_config(&config);
    maps.iter().map(|name| dp.map_memory(name)).sum()
}

pub fn run() {
    println!("## Map memory (the kernel's accounting, `memlock` in fdinfo)\n");
    println!("| per | maps | capacity A -> B | bytes A -> B | bytes per unit |");
    println!("|---|---|---|---|---:|");
    for (what, field, (a, b), maps) in [
        ("VIP (M = 65537)", "max_vips", (16, 64), &PER_VIP[..]),
        ("backend", "max_backends", (1024, 4096), &PER_BACKEND[..]),
        (
            "tracked flow",
            "conntrack_size",
            (65_536, 262_144),
            &PER_FLOW[..],
        ),
    ] {
        let (ma, mb) = (memory(field, a, maps), memory(field, b, maps));
        let per = (mb - ma) as f64 / f64::from(b - a);
        println!(
            "| {what} | {} | {field} {a} -> {b} | {ma} -> {mb} | {per:.0} |",
            maps.join(", ")
        );
    }
    println!(
        "\n(per-CPU maps count once per possible CPU: {} here)\n",
        // Possible CPUs, as the kernel sizes per-CPU maps (not this thread's affinity: the
        // XDP section pins the bench to one CPU).
        aya::util::nr_cpus().map_or(0, |n| n)
    );
}
