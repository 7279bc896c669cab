//! `anycast conns` and `anycast lookup` against the live dataplane: while long-lived TCP
//! connections stream through edge1, the tracked-connection tables list each of them (client,
//! VIP, the backend its server answered from, established tier), the filters and counts agree,
//! and `lookup` says the flow is tracked and where.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anycast::dataplane::conns::{ConnsReport, Tier};
use anycast_tests::lab::reference::{self, *};

use super::ops::Ops;

fn address_of(backend_name: &str) -> &'static str {
    match backend_name {
        BACKEND1 => BACKEND1_V4,
        BACKEND2 => BACKEND2_V4,
        reference::EDGE1 => EDGE1_V4,
        other => panic!("unknown backend {other}"),
    }
}

fn conns(ops: &Ops, args: &[&str]) -> ConnsReport {
    let state = ops.lab.agent_state_path(super::EDGE);
    let out = Command::new(&ops.bin)
        .arg("conns")
        .args(args)
        .arg("--state-file")
        .arg(&state)
        .arg("--json")
        .output()
        .expect("running anycast conns");
    assert!(
        out.status.success(),
        "anycast conns {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("anycast conns --json")
}

#[test]
fn conns_lists_every_streaming_connection_with_its_backend_and_lookup_says_it_is_tracked() {
    const N: usize = 20;
    let Some(ops) = Ops::start() else {
        return;
    };
    let ll = ops.long_lived(N, Duration::from_secs(4));
    ops.wait_streaming(&ll, N);
    let snap = ll.snapshot();
    let vip = format!("{}/tcp", vip_v4_tcp());

    let all = conns(&ops, &["--vip", &vip, "--limit", "1000"]);
    assert!(
        all.total.get(&Tier::Established).copied().unwrap_or(0) >= N as u64,
        "{all:?}"
    );
    let mut want_per_backend: BTreeMap<String, u64> = BTreeMap::new();
    for c in &snap.conns {
        let local = c.local.expect("the client's address");
        let want = address_of(&c.backend);
        *want_per_backend.entry(want.to_owned()).or_default() += 1;
        let e = all
            .conns
            .iter()
            .find(|e| e.client == local)
            .unwrap_or_else(|| panic!("{local} is not listed: {all:?}"));
        assert_eq!(e.vip, vip_v4_tcp());
        assert_eq!(e.tier, Tier::Established, "{e:?}");
        assert_eq!(
            e.backend.map(|b| b.to_string()).as_deref(),
            Some(want),
            "{e:?}"
        );
    }
    assert_eq!(all.matched, N as u64, "{all:?}");
    // A promotion leaves the flow's probation entry: counted as shadowed, not listed twice.
    assert_eq!(all.shadowed, N as u64, "{all:?}");
    assert_eq!(all.per_backend, want_per_backend);
    println!("OPS conns: {N} streaming connections listed, per backend {want_per_backend:?}");

    // Filters: by backend, by client prefix, a limit, another VIP.
    for (b, n) in &want_per_backend {
        let r = conns(&ops, &["--backend", b, "--vip", &vip]);
        assert_eq!(r.matched, *n, "--backend {b}");
    }
    let r = conns(
        &ops,
        &["--client", &format!("{CLIENT_V4}/32"), "--limit", "3"],
    );
    assert_eq!((r.matched, r.conns.len()), (N as u64, 3));
    let r = conns(&ops, &["--vip", "203.0.113.99"]);
    assert_eq!(r.matched, 0);

    // lookup: tracked in CONNS, with the backend the connection's server answered from.
    let c = &snap.conns[0];
    let local = c.local.expect("address");
    let out = Command::new(&ops.bin)
        .args(["lookup", "--json", "--socket"])
        .arg(&ops.socket)
        .arg("--state-file")
        .arg(ops.lab.agent_state_path(super::EDGE))
        .arg(format!("tcp {local} {}", vip_v4_tcp()))
        .output()
        .expect("running anycast lookup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("lookup --json");
    assert_eq!(v["tracked"]["tier"], "established", "{v}");
    assert_eq!(v["tracked"]["backend"], address_of(&c.backend), "{v}");
    // An untracked flow: no entry, the table decides.
    let out = Command::new(&ops.bin)
        .args(["lookup", "--socket"])
        .arg(&ops.socket)
        .arg("--state-file")
        .arg(ops.lab.agent_state_path(super::EDGE))
        .arg(format!("tcp {CLIENT_V4}:1 {}", vip_v4_tcp()))
        .output()
        .expect("running anycast lookup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tracked: no"), "{text}");
    let r = ll.wait();
    assert!(r.conns.iter().all(|c| c.is_clean()));
}
