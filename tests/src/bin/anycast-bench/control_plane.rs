//! The control plane's latency: from a health verdict, a burst of verdicts or a reload to the
//! new tables written in the kernel's maps (the agent's controller over a loaded, unattached
//! dataplane), with 10 VIPs of 1,000 backends each at M = 65537.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anycast::config::{ConfigBuilder, VipBuilder, VipId};
use anycast::control::Controller;
use anycast::dataplane::Dataplane;

use super::median;

const VIPS: usize = 10;
const BACKENDS: usize = 1000;
const RUNS: usize = 5;
/// Verdicts that arrive together (one check interval after a switch fails).
const BURST: usize = 20;

fn backend(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1 + (i / 250) as u8, (i % 250) as u8, 10))
}

/// The VIPs; the first backend of the first VIP has weight `weight_of_first`.
fn config(weight_of_first: u32) -> ConfigBuilder {
    let vips = (0..VIPS).map(|v| {
        let mut vip =
            VipBuilder::new(&format!("203.0.113.{}", 10 + v), 80, "tcp").health("kind = \"tcp\"");
        for i in 0..BACKENDS {
            let w = if v == 0 && i == 0 {
                weight_of_first
            } else {
                1 + (i % 3) as u32
            };
            vip = vip.backend(&backend(i).to_string(), w);
        }
        vip
    });
    ConfigBuilder::reference()
        .agent("interfaces", vec!["lo"])
        .agent("ring_size", 65537)
        .agent("max_vips", 16)
        .agent("max_backends", 1024)
        .agent("conntrack_size", 1024)
        .vips(vips)
}

pub fn run() {
    let c = config(1).build();
    let ids: Vec<VipId> = c.vips.iter().map(VipId::of).collect();
    let dp = Dataplane::load(&c).expect("loading the object");
    let t = Instant::now();
    let (mut ctl, _) =
        Controller::start(dp, "/dev/null".into(), c, BTreeSet::new()).expect("controller starts");
    let first = t.elapsed().as_secs_f64() * 1e3;

    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("one verdict: a backend of one VIP down", Vec::new()),
        ("one verdict: the backend back up", Vec::new()),
        ("burst: one backend down for all 10 VIPs", Vec::new()),
        ("burst: 20 backends of one VIP down", Vec::new()),
        ("burst: all of them back up", Vec::new()),
        ("reload: one weight changed", Vec::new()),
        ("reload: unchanged config", Vec::new()),
    ];
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for run in 0..RUNS {
        let b = backend(7 + run);
        let t = Instant::now();
        ctl.set_health_verdicts([(ids[0], b, false, "bench")]);
        rows[0].1.push(ms(t));
        let t = Instant::now();
        ctl.set_health_verdicts([(ids[0], b, true, "bench")]);
        rows[1].1.push(ms(t));

        let t = Instant::now();
        ctl.set_health_verdicts(ids.iter().map(|&v| (v, b, false, "bench")));
        rows[2].1.push(ms(t));
        ctl.set_health_verdicts(ids.iter().map(|&v| (v, b, true, "bench")));

        let burst: Vec<IpAddr> = (0..BURST).map(|i| backend(100 + 31 * i + run)).collect();
        let t = Instant::now();
        ctl.set_health_verdicts(burst.iter().map(|&b| (ids[1], b, false, "bench")));
        rows[3].1.push(ms(t));
        let t = Instant::now();
        ctl.set_health_verdicts(burst.iter().map(|&b| (ids[1], b, true, "bench")));
        rows[4].1.push(ms(t));

        let local = BTreeSet::new();
        let new = config(2 + run as u32 % 2).build();
        let t = Instant::now();
        let changed = ctl.reload("bench", Ok(new), local.clone());
        rows[5].1.push(ms(t));
        assert_eq!(changed.expect("reload").len(), 1, "one VIP changed");
        let same = ctl.config().clone();
        let t = Instant::now();
        let changed = ctl.reload("bench", Ok(same), local);
        rows[6].1.push(ms(t));
        assert!(changed.expect("reload").is_empty());
    }
    println!(
        "\n## Control plane: change to tables in the maps ({VIPS} VIPs x {BACKENDS} backends, M = 65537, median of {RUNS} runs)\n"
    );
    println!("| change | time (ms) |");
    println!("|---|---:|");
    println!("| agent start: every table built and written | {first:.1} |");
    for (name, samples) in rows {
        println!("| {name} | {:.1} |", median(samples));
    }
}
