//! The XDP program's log lines (aya-log), re-emitted as the agent's `tracing` events.
//!
//! The program logs rare anomalies only (`anycast-ebpf/src/log.rs`: at most one line per second
//! per CPU per event class, each event also counted in `STATS`) into aya-log's ring buffer
//! `AYA_LOGS`. [`ProgramLog`] reads it with aya-log's `EbpfLogger` and [`TracingBridge`] turns
//! every record into a `tracing` event with target [`TARGET`], the record's level, a field
//! `event` (the class, e.g. `decap_refused`) and the record's text as the message. So the
//! agent's filter (`--log-level`, `RUST_LOG`: `anycast::program=off` silences them) and format
//! (`--log-format json`) apply to them like to any other line.
//!
//! The ring buffer is found through the program's id (`EbpfLogger::init_from_id`), not taken
//! from the loader: the same code reads the program this agent just loaded and swapped into the
//! pinned links, whose `AYA_LOGS` map may be the one adopted from a previous agent (pinned like
//! every other map). Records written while no agent ran wait there and are read at start.
//!
//! What the filter rejects for [`TARGET`] is also switched off in the kernel: [`program_level`]
//! gives the most verbose level it lets through, which the loader writes into the program's
//! read-only `AYA_LOG_LEVEL`, so the verifier drops the calls nobody would print.

use std::io;
use std::os::fd::AsRawFd;

use aya_log::EbpfLogger;

/// Target of the `tracing` events made from the program's records.
pub const TARGET: &str = "anycast::program";

/// aya-log's `AYA_LOG_LEVEL` value that keeps every level the program logs at.
pub const ALL_LEVELS: u8 = 0xff;

#[derive(Debug, thiserror::Error)]
pub enum ProgramLogError {
    #[error("opening the log ring buffer ({map}) of program {program_id}", map = anycast_common::map_names::AYA_LOGS)]
    Open {
        program_id: u32,
        #[source]
        source: aya_log::Error,
    },
    #[error("waiting for log records")]
    Wait(#[source] io::Error),
}

/// A `log::Log` that re-emits each record as a `tracing` event (module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingBridge;

impl log::Log for TracingBridge {
    /// The tracing filter decides, event by event.
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        emit(record);
    }

    fn flush(&self) {}
}

/// Emits one program record as a `tracing` event with target [`TARGET`].
pub fn emit(record: &log::Record<'_>) {
    let event = record.target();
    let text = record.args();
    match record.level() {
        log::Level::Error => tracing::error!(target: TARGET, event, "{text}"),
        log::Level::Warn => tracing::warn!(target: TARGET, event, "{text}"),
        log::Level::Info => tracing::info!(target: TARGET, event, "{text}"),
        log::Level::Debug => tracing::debug!(target: TARGET, event, "{text}"),
        log::Level::Trace => tracing::trace!(target: TARGET, event, "{text}"),
    }
}

/// The program's `AYA_LOG_LEVEL` for the current `tracing` filter: the most verbose level
/// enabled for [`TARGET`] (aya-log's numbering: 1 error .. 5 trace), 0 when none is.
pub fn program_level() -> u8 {
    use tracing::Level;
    if tracing::enabled!(target: TARGET, Level::TRACE) {
        aya_log::Level::Trace as u8
    } else if tracing::enabled!(target: TARGET, Level::DEBUG) {
        aya_log::Level::Debug as u8
    } else if tracing::enabled!(target: TARGET, Level::INFO) {
        aya_log::Level::Info as u8
    } else if tracing::enabled!(target: TARGET, Level::WARN) {
        aya_log::Level::Warn as u8
    } else if tracing::enabled!(target: TARGET, Level::ERROR) {
        aya_log::Level::Error as u8
    } else {
        0
    }
}

/// Reader of a loaded program's log records.
pub struct ProgramLog<L: log::Log = TracingBridge> {
    logger: EbpfLogger<L>,
}

impl ProgramLog<TracingBridge> {
    /// Reads the records of program `program_id` into `tracing` (module docs).
    pub fn open(program_id: u32) -> Result<Self, ProgramLogError> {
        Self::open_with(program_id, TracingBridge)
    }
}

impl<L: log::Log> ProgramLog<L> {
    /// Reads the records of program `program_id` (its `AYA_LOGS` map, found through the
    /// kernel's list of the program's maps) into `logger`.
    pub fn open_with(program_id: u32, logger: L) -> Result<Self, ProgramLogError> {
        EbpfLogger::init_from_id_with_logger(program_id, logger)
            .map(|logger| Self { logger })
            .map_err(|source| ProgramLogError::Open { program_id, source })
    }

    /// Hands every record waiting in the ring buffer to the logger.
    pub fn drain(&mut self) {
        // aya-log panics on a record it cannot decode (one written by an incompatible aya-log,
        // e.g. a program of another version sharing the adopted ring buffer). The record is
        // consumed either way (the ring item is released while unwinding), so skip it and go on
        // rather than lose the reader.
        loop {
            let logger = &mut self.logger;
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush())) {
                Ok(()) => return,
                Err(_) => tracing::error!(
                    target: TARGET,
                    "a log record of the program could not be decoded and was skipped"
                ),
            }
        }
    }

    /// Forwards records as they arrive, until the task is dropped or the ring buffer fails.
    pub async fn forward(self) -> Result<(), ProgramLogError>
    where
        L: Send + Sync + 'static,
    {
        // SAFETY: the descriptor is the ring buffer map's, owned by `self.logger` (moved into the
        // AsyncFd with it): open and the same for as long as the AsyncFd lives.
        let mut fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(|e| ProgramLogError::Wait(e.into_parts().1))?;
        loop {
            let mut ready = fd.readable_mut().await.map_err(ProgramLogError::Wait)?;
            ready.get_inner_mut().drain();
            ready.clear_ready();
        }
    }
}

impl<L: log::Log> AsRawFd for ProgramLog<L> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.logger.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use log::Log as _;
    use tracing_subscriber::EnvFilter;

    use super::*;

    /// A writer the subscriber shares with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// Runs `f` under the agent's JSON log format with `filter`; returns the lines it printed.
    fn json_lines(filter: &str, f: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(filter))
            .with_writer(out.clone())
            .json()
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn record(level: log::Level, class: &str, text: &str) {
        TracingBridge.log(
            &log::Record::builder()
                .level(level)
                .target(class)
                .args(format_args!("{text}"))
                .build(),
        );
    }

    #[test]
    fn a_program_record_becomes_an_event_with_its_level_class_and_text() {
        let lines = json_lines("info", || {
            record(
                log::Level::Warn,
                "decap_refused",
                "tunnel packet dropped: src=198.18.6.1",
            );
            record(log::Level::Error, "table_inconsistent", "vip_id=0");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["target"], TARGET);
        assert_eq!(lines[0]["fields"]["event"], "decap_refused");
        assert_eq!(
            lines[0]["fields"]["message"],
            "tunnel packet dropped: src=198.18.6.1"
        );
        assert_eq!(lines[1]["level"], "ERROR");
        assert_eq!(lines[1]["fields"]["event"], "table_inconsistent");
    }

    #[test]
    fn the_agents_filter_applies_to_program_lines() {
        let lines = json_lines("info,anycast::program=error", || {
            record(log::Level::Warn, "fib_fail", "rc=1");
            record(log::Level::Error, "table_inconsistent", "vip_id=0");
        });
        let classes: Vec<_> = lines.iter().map(|l| &l["fields"]["event"]).collect();
        assert_eq!(classes, ["table_inconsistent"]);
        assert!(
            json_lines("info,anycast::program=off", || record(
                log::Level::Error,
                "table_inconsistent",
                "vip_id=0"
            ))
            .is_empty()
        );
    }

    #[test]
    fn the_kernel_level_is_the_most_verbose_the_filter_lets_through() {
        for (filter, want) in [
            ("info", 3),
            ("warn", 2),
            ("error", 1),
            ("off", 0),
            ("info,anycast::program=off", 0),
            ("info,anycast::program=warn", 2),
            ("warn,anycast=debug", 4),
            ("trace", 5),
        ] {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new(filter))
                .with_writer(io::sink)
                .finish();
            let got = tracing::subscriber::with_default(subscriber, program_level);
            assert_eq!(got, want, "filter {filter:?}");
        }
    }
}
