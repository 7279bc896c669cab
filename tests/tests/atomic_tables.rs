//! Table changes under traffic: while the agent's publisher rewrites a VIP's table 1,500 times,
//! packets run through the kernel program on another thread. Every packet must land on a backend
//! of the table that was live just before or just after it ran: never dropped, never sent to a
//! backend of an older table or of a table not yet published.
//!
//! The write order that makes each switch atomic (the whole new table written into a free table
//! number, then the VIP's value replaced in one map update; the live and previous tables never
//! written) is pinned by the publisher's unit tests with the in-memory writer
//! (anycast-userspace/src/dataplane/mod.rs); this test shows the result in the kernel under load.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anycast::config::{Config, ConfigBuilder, VipBuilder};
use anycast_tests::fixture::{Dataplane, XDP_REDIRECT, fixture_netns, net};
use anycast_tests::packet::{self as p, V4};
use std::os::fd::{AsFd, AsRawFd, RawFd};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn backend(i: usize) -> Ipv4Addr {
    net::v4(net::BACKENDS_V4, 10 + i as u8)
}

/// Config `k`: the VIP's only backend is backend(k % 3), so consecutive tables differ in every
/// slot.
fn config(k: usize) -> Config {
    ConfigBuilder::reference()
        .agent("interfaces", vec!["lo"])
        .agent("tunnel_source", net::EDGE_V4.to_string())
        .without_agent("tunnel_source_v6")
        .agent("decap_allow", vec!["198.18.0.0/15"])
        .agent("ring_size", 251)
        .agent("hash_seed", 9)
        .agent("max_vips", 2)
        .agent("max_backends", 8)
        .agent("conntrack_size", 1024)
        .vips(
            [
                VipBuilder::new(&VIP.to_string(), 80, "tcp")
                    .backend(&backend(k % 3).to_string(), 1),
            ],
        )
        .build()
}

/// BPF_PROG_TEST_RUN on a raw program fd, so that a second thread can run packets through the
/// program while the first owns the loaded object and rewrites its maps. (aya's `TestRun` needs
/// the program object itself.) Layout: `union bpf_attr`, the `test` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

fn test_run(fd: RawFd, data: &[u8], out: &mut [u8]) -> u32 {
    let mut attr = TestAttr {
        prog_fd: fd as u32,
        data_size_in: data.len() as u32,
        data_size_out: out.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestAttr::default()
    };
    // SAFETY: attr points at a live, correctly laid out struct whose buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            size_of::<TestAttr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    attr.retval
}

fn syn(sport: u16) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&80u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    p::frame(
        None,
        &V4::new(Ipv4Addr::new(198, 18, 100, 7), VIP).raw(6, &t),
    )
}

#[test]
fn packets_see_the_old_or_the_new_table_while_tables_are_rewritten() {
    if !anycast_tests::privileged("packets_see_the_old_or_the_new_table_while_tables_are_rewritten")
    {
        return;
    }
    let local: BTreeSet<IpAddr> = [IpAddr::V4(net::EDGE_V4)].into();
    fixture_netns().enter(|| {
        let mut dp = Dataplane::from_config(&config(0));
        dp.apply(&config(0), &local);
        // A second handle on the same program for the traffic thread.
        let fd = dp
            .program_mut()
            .fd()
            .expect("program fd")
            .try_clone()
            .expect("dup program fd");
        let raw = fd.as_fd().as_raw_fd();
        let phase = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (checked, skipped, seen) = std::thread::scope(|s| {
            let traffic = s.spawn(|| {
                let (mut checked, mut skipped) = (0u64, 0u64);
                let mut seen: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut sport = 1024u16;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    sport = sport.wrapping_add(1).max(1024);
                    let frame = syn(sport);
                    let mut out = vec![0u8; frame.len() + 256];
                    let before = phase.load(Ordering::SeqCst);
                    let action = test_run(raw, &frame, &mut out);
                    let after = phase.load(Ordering::SeqCst);
                    assert_eq!(
                        action, XDP_REDIRECT,
                        "packet not encapsulated (phase {before}..{after})"
                    );
                    let dst = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
                    *seen.entry(dst).or_default() += 1;
                    if after - before >= 2 {
                        skipped += 1;
                        continue;
                    }
                    // Live during the run: the table of `before` (or of before - 1 while `before`
                    // is being published) up to the table of `after`.
                    let allowed: BTreeSet<Ipv4Addr> = (before.saturating_sub(1)..=after)
                        .map(|k| backend(k % 3))
                        .collect();
                    assert!(
                        allowed.contains(&dst),
                        "packet sent to {dst}, allowed {allowed:?} (phases {before}..{after})"
                    );
                    checked += 1;
                }
                (checked, skipped, seen)
            });
            // Republish a new table every millisecond or so, 1500 times.
            for k in 1..=1500usize {
                phase.store(k, Ordering::SeqCst);
                dp.apply(&config(k), &local);
                std::thread::sleep(Duration::from_micros(500));
            }
            stop.store(true, Ordering::SeqCst);
            traffic.join().expect("traffic thread")
        });
        eprintln!(
            "checked {checked} packets ({skipped} spanning two changes), backends seen {seen:?}"
        );
        assert!(
            checked > 1000,
            "too few packets ran during the changes: {checked}"
        );
        assert_eq!(
            seen.len(),
            3,
            "every table should have carried traffic: {seen:?}"
        );
    });
}
