//! Test support for anycast: packet builders, the BPF_PROG_TEST_RUN fixture runner and the
//! network-namespace lab harness.
//!
//! Tests that need root or a kernel feature call [`privileged`] first: outside CI they skip with a
//! printed reason; with `CI=true` a missing privilege fails the run.

/// True when this process can load BPF programs and create network namespaces. When it cannot:
/// with `CI=true` this panics (CI must run every test), otherwise it prints why the test is
/// skipped and returns false.
pub fn privileged(test: &str) -> bool {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return true;
    }
    let reason = format!("{test}: needs root (BPF, network namespaces); running as uid {euid}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}: CI=true requires every test to run");
    }
    eprintln!("SKIPPED {reason}");
    false
}

/// The running test's name (`module::test`), for messages: libtest runs every test on a thread
/// named after it. Outside a test, the thread's name (`main`) or `unnamed thread`.
pub fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed thread")
        .to_owned()
}

/// Network-namespace labs (reference topology, agents, backend servers).
pub mod lab;

/// The reference lab with BGP: BIRD in the router (ECMP, BFD), agents announcing the VIPs.
pub mod lab_bgp;

/// A real etcd for fleet labs (`[fleet]`, docs/fleet.md).
pub mod lab_fleet;

pub mod fixture;
/// The differential fuzzer: the program against a host model (`cargo xtask fuzz`).
pub mod fuzz;
pub mod mount;
pub mod netns;
pub mod one_vip;
pub mod packet;
