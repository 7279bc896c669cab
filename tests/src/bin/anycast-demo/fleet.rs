//! `--fleet`: the same lab with every agent under `[fleet]` against a real etcd in its own
//! namespace (`anycast_tests::lab_fleet`), the VIPs applied as a fleet document with
//! `anycast fleet apply`, and the fleet view (`anycast fleet status`) shown before the phases and
//! after them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anycast_tests::lab::{self, find_binary, reference};
use anycast_tests::lab_bgp::{BgpLab, HOSTS};
use anycast_tests::lab_fleet::{Etcd, fleet_section};

/// The `[fleet]` section of every agent; caches under `dir`.
pub fn sections(dir: &std::path::Path) -> BTreeMap<String, String> {
    HOSTS
        .iter()
        .map(|ns| ((*ns).to_owned(), fleet_section(dir, ns)))
        .collect()
}

/// `anycast fleet ARGS...` with edge1's config, inside edge1's namespace.
pub fn cli(bgp: &BgpLab, args: &[&str]) -> lab::Result<String> {
    let bin = find_binary("anycast", "ANYCAST_BIN")?;
    let config = bgp.lab.agent_config_path(reference::EDGE1);
    let (bin, config) = (bin.to_string_lossy(), config.to_string_lossy());
    let mut full = vec![bin.as_ref(), "fleet", "-c", config.as_ref()];
    full.extend_from_slice(args);
    let out = bgp.lab.exec(reference::EDGE1, &full)?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Starts etcd, waits for every agent to register, applies the agents' own VIPs as the first
/// fleet document and shows the fleet view.
pub fn start(bgp: &BgpLab) -> lab::Result<Etcd> {
    let mut etcd = Etcd::start(&bgp.lab, &HOSTS).map_err(lab::LabError::Setup)?;
    println!("== fleet: etcd up in its own namespace; the four agents register under their leases");
    let t = Instant::now();
    while etcd.edges().map_or(0, |e| e.len()) < HOSTS.len() {
        if t.elapsed() > Duration::from_secs(20) {
            return Err(lab::LabError::Setup(
                "agents did not register in etcd within 20 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The document is the shared part of edge1's file: its [[vip]] sections, seed and ring.
    let file = std::fs::read_to_string(bgp.lab.agent_config_path(reference::EDGE1))
        .map_err(|e| lab::LabError::Setup(e.to_string()))?;
    let start = file.find("[[vip]]").unwrap_or(file.len());
    let end = ["\n[bgp]", "\n[fleet]"]
        .iter()
        .filter_map(|s| file[start..].find(s).map(|i| start + i))
        .min()
        .unwrap_or(file.len());
    let doc = format!(
        "hash_seed = {}\nring_size = {}\n{}",
        reference::HASH_SEED,
        reference::RING_SIZE,
        &file[start..end]
    );
    let path = bgp.lab.dir().join("fleet.toml");
    std::fs::write(&path, doc).map_err(|e| lab::LabError::Setup(e.to_string()))?;
    let path = path.to_string_lossy();
    println!("   $ anycast fleet apply fleet.toml");
    print!("{}", indent(&cli(bgp, &["apply", &path])?));
    std::thread::sleep(Duration::from_millis(500));
    show(bgp)?;
    Ok(etcd)
}

pub fn show(bgp: &BgpLab) -> lab::Result<()> {
    println!("   $ anycast fleet status");
    print!("{}", indent(&cli(bgp, &["status"])?));
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("     {l}\n")).collect()
}
