//! The differential fuzzer in the suite (`anycast_tests::fuzz`, docs/dataplane.md "The
//! differential fuzzer"): 200,000 random and mutated frames with a fixed seed, then 100,000 with
//! each of two seeds drawn from the clock (printed, so a failure can be rerun with
//! `cargo xtask fuzz --seed S --packets N`), through the XDP program and through the host model;
//! every action, output byte and outcome counter must agree.

use anycast_tests::fuzz::{Options, run_in_fixture};

const FIXED_SEED: u64 = 20_261_204;

fn fuzz(seed: u64, packets: u64) {
    let o = Options {
        packets,
        seed,
        chunk: 10_000,
        ifindex: 0,
    };
    let report = run_in_fixture(&o);
    eprintln!("seed {seed}:\n{}", report.summary());
    assert_eq!(report.packets, packets, "every frame ran");
    assert_eq!(
        report.disagreements,
        0,
        "seed {seed}: the program and the model disagree:\n{}",
        report.summary()
    );
}

#[test]
fn program_agrees_with_the_model_on_fuzzed_frames() {
    if !anycast_tests::privileged("program_agrees_with_the_model_on_fuzzed_frames") {
        return;
    }
    fuzz(FIXED_SEED, 200_000);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    for seed in [clock, clock.rotate_left(29) ^ 0x9e37_79b9] {
        eprintln!("random seed {seed}");
        fuzz(seed, 100_000);
    }
}
