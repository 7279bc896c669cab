//! The frame of a BGP lab test: skipped without privilege, one lab at a time.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::{BgpLab, Options};

/// One BGP lab at a time per test process ([`BgpLab::start_serial`]): BFD at 200 ms x 5 and
/// timing assertions need CPU, and several labs (four agents, three BIRDs each) on a 2-core
/// machine make BFD flap.
static SERIAL: Mutex<()> = Mutex::new(());

impl BgpLab {
    /// [`BgpLab::start`] for the running test, once no other lab started this way in this
    /// process runs (the guard keeps the next one waiting); `None` where the test is skipped
    /// ([`crate::privileged`]). Panics if the lab does not come up.
    pub fn start_serial(opts: Options) -> Option<(MutexGuard<'static, ()>, BgpLab)> {
        let test = crate::test_name();
        if !crate::privileged(&test) {
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let t = Instant::now();
        let bgp =
            BgpLab::start(opts).unwrap_or_else(|e| panic!("{test}: starting the BGP lab: {e}"));
        eprintln!(
            "{test}: lab up, ECMP over both edges, in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        Some((serial, bgp))
    }
}
