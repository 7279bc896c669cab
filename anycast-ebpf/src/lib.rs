#![no_std]
// Library target so the host can list this crate as a build-dependency (cache invalidation);
// the program itself is the `anycast` binary, built for bpfel-unknown-none by aya-build.
