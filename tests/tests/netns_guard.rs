//! The one doorway to network namespaces (`anycast_tests::netns`): a namespace lives exactly as
//! long as its guard, panics included; entering one moves only the calling thread, only for the
//! closure, and brings it back after a panic; commands run inside it.

use std::os::unix::fs::MetadataExt as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};

use anycast_tests::netns::{self, Netns};

/// `acnetns<pid>-<n>`: unique per test, and outside the labs' `ac<digits>-` pattern, so that
/// `cargo xtask clean-lab` never takes one for a lab's.
fn unique_name() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "acnetns{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The calling thread's network namespace (its inode).
fn this_threads_netns() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("the thread's network namespace")
        .ino()
}

#[test]
fn a_namespace_exists_while_its_guard_lives_and_is_deleted_on_drop_and_on_panic() {
    if !anycast_tests::privileged(&anycast_tests::test_name()) {
        return;
    }
    let name = unique_name();
    let ns = Netns::create(&name).expect("creating a namespace");
    assert_eq!(netns::with_prefix(&name), [name.as_str()]);
    assert!(
        Netns::create(&name).is_err(),
        "a second namespace of the same name"
    );
    drop(ns);
    assert!(
        netns::with_prefix(&name).is_empty(),
        "{name} left after drop"
    );

    let name = unique_name();
    let unwound = catch_unwind(|| {
        let _ns = Netns::create(&name).expect("creating a namespace");
        assert!(!netns::with_prefix(&name).is_empty());
        panic!("deliberate panic with a live namespace");
    });
    assert!(unwound.is_err());
    assert!(
        netns::with_prefix(&name).is_empty(),
        "{name} left after a panic"
    );
}

#[test]
fn entering_moves_only_the_calling_thread_for_the_closure_and_back_after_a_panic() {
    if !anycast_tests::privileged(&anycast_tests::test_name()) {
        return;
    }
    let ns = Netns::create(&unique_name()).expect("creating a namespace");
    let outside = this_threads_netns();
    let (inside, other_thread) = ns
        .enter(|| {
            let other = std::thread::scope(|s| s.spawn(this_threads_netns).join().unwrap());
            (this_threads_netns(), other)
        })
        .expect("entering");
    assert_ne!(inside, outside, "the closure ran in the caller's namespace");
    assert_eq!(
        other_thread, inside,
        "a thread spawned inside starts inside"
    );
    assert_eq!(
        this_threads_netns(),
        outside,
        "the thread did not come back"
    );

    let unwound = catch_unwind(AssertUnwindSafe(|| {
        ns.enter(|| panic!("deliberate panic inside the namespace"))
    }));
    assert!(unwound.is_err());
    assert_eq!(
        this_threads_netns(),
        outside,
        "the thread did not come back after a panic"
    );
    assert!(
        netns::enter("acnetns-that-does-not-exist", || ()).is_err(),
        "entering a namespace that does not exist"
    );
    assert_eq!(this_threads_netns(), outside);

    // Commands: `nsenter` runs the program inside, `ip -n` looks inside.
    let out = ns
        .command()
        .args(["stat", "-L", "-c", "%i", "/proc/self/ns/net"])
        .output()
        .expect("nsenter");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        inside.to_string(),
        "the command ran elsewhere: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ns.ip().args(["-o", "link"]).output().expect("ip -n");
    let links = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && links.lines().count() == 1 && links.contains(": lo:"),
        "a fresh namespace has only `lo`:\n{links}"
    );
}
