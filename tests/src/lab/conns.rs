//! Long-lived TCP connections with data flowing both ways, checked byte by byte: the tool behind
//! `anycast-lab-conns` and the route-move tests.
//!
//! Each connection sends `STREAM\n\n` to an `anycast-lab-server`, which answers with its name
//! line and then echoes every byte. The client then streams a byte sequence that is a function of
//! (connection, offset) at a paced rate, and checks every echoed byte in order against it. So a
//! connection that lands on another backend mid-stream (which resets it), loses data, or gets
//! bytes of another stream shows as resets, lost or corrupt bytes; a connection that goes quiet
//! shows as a stall.
//!
//! All connections are served by one thread with non-blocking sockets and `poll(2)`, so several
//! hundred of them cost one thread, not hundreds. Everything is bounded: the number of
//! connections, the streaming time, the time allowed for the last echoes to come back (drain) and
//! the bytes in flight per connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod report;
mod stream;

pub use report::{ConnReport, ConnsReport, Phase, human_bytes};

/// What to run.
#[derive(Clone, Debug)]
pub struct ConnsOptions {
    /// Connections to open (one after the other, before streaming starts).
    pub conns: usize,
    /// How long every connection streams once all are open.
    pub duration: Duration,
    /// Bytes per second each connection sends (and so receives back).
    pub rate: u64,
    /// No echoed byte for this long while bytes are outstanding counts as a stall.
    pub stall: Duration,
    pub connect_timeout: Duration,
    /// After streaming stops: how long to wait for the outstanding echoes.
    pub drain_timeout: Duration,
    /// At most this many bytes sent but not yet echoed, per connection.
    pub window: u64,
}

impl Default for ConnsOptions {
    fn default() -> Self {
        ConnsOptions {
            conns: 100,
            duration: Duration::from_secs(10),
            rate: 16 * 1024,
            stall: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
            window: 256 * 1024,
        }
    }
}

/// A running set of long-lived connections. [`LongLived::snapshot`] while it runs;
/// [`LongLived::stop`] ends the streaming early, [`LongLived::wait`] lets it run its course; both
/// drain and return the final report. Dropping it stops it.
pub struct LongLived {
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<ConnsReport>>,
    thread: Option<JoinHandle<ConnsReport>>,
}

impl LongLived {
    /// Starts the connections from the calling thread's current network namespace.
    pub fn start(target: SocketAddr, opts: ConnsOptions) -> LongLived {
        Self::spawn(None, target, opts).expect("no namespace to enter")
    }

    /// Starts the connections from a thread that has entered the named network namespace `ns`
    /// ([`crate::netns::enter`]); the caller's threads stay where they are.
    pub fn start_in(ns: &str, target: SocketAddr, opts: ConnsOptions) -> super::Result<LongLived> {
        Self::spawn(Some(ns.to_owned()), target, opts)
    }

    fn spawn(
        ns: Option<String>,
        target: SocketAddr,
        opts: ConnsOptions,
    ) -> super::Result<LongLived> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(ConnsReport {
            target: Some(target),
            requested: opts.conns,
            phase: Phase::Connecting,
            ..ConnsReport::default()
        }));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<super::Result<()>>();
        let (stop2, shared2) = (stop.clone(), shared.clone());
        let thread = std::thread::spawn(move || {
            let run = || {
                let _ = ready_tx.send(Ok(()));
                stream::run(target, &opts, &stop2, &shared2)
            };
            match ns {
                None => run(),
                Some(ns) => crate::netns::enter(&ns, run).unwrap_or_else(|e| {
                    let _ = ready_tx.send(Err(e.into()));
                    ConnsReport::default()
                }),
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(LongLived {
                stop,
                shared,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(super::LabError::Setup(
                "the connections' thread died before starting".to_owned(),
            )),
        }
    }

    /// The state as of at most ~100 ms ago.
    pub fn snapshot(&self) -> ConnsReport {
        self.shared.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits (polling every 50 ms) until every connection has been opened (or failed to):
    /// the report then, or the last one if `deadline` passes first.
    pub fn wait_connected(&self, deadline: Instant) -> Result<ConnsReport, ConnsReport> {
        loop {
            let s = self.snapshot();
            if s.phase != Phase::Connecting {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops streaming now (before the configured duration if need be), drains, returns the
    /// final report.
    pub fn stop(mut self) -> ConnsReport {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for the configured duration to pass, drains, returns the final report.
    pub fn wait(mut self) -> ConnsReport {
        self.join()
    }

    fn join(&mut self) -> ConnsReport {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => self.snapshot(),
        }
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
