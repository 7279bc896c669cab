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

use std::collections::BTreeMap;
use std::fmt;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// One connection's story.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnReport {
    pub id: usize,
    /// The client's address (source port = the flow).
    pub local: Option<SocketAddr>,
    /// The name the server answered with; empty if the connection never got that far.
    pub backend: String,
    pub established: bool,
    pub sent: u64,
    pub received: u64,
    /// Bytes received that matched the stream (all of `received` unless `corrupt_at`).
    pub verified: u64,
    /// ECONNRESET / EPIPE / ECONNABORTED seen on the connection.
    pub resets: u32,
    /// Times the echo made no progress for longer than [`ConnsOptions::stall`].
    pub stalls: u32,
    /// Longest time without an echoed byte while bytes were outstanding.
    pub max_gap: Duration,
    /// Stream offset of the first byte that did not match.
    pub corrupt_at: Option<u64>,
    /// The server closed before the client did.
    pub closed_early: bool,
    /// Connect, name or other I/O error (not resets).
    pub error: Option<String>,
}

impl ConnReport {
    /// Bytes sent and never echoed back (only meaningful once the run is over).
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    pub fn is_clean(&self) -> bool {
        self.established
            && self.resets == 0
            && self.corrupt_at.is_none()
            && !self.closed_early
            && self.error.is_none()
            && self.lost() == 0
    }
}

/// Every connection of a run; while it runs, a snapshot.
#[derive(Clone, Debug, Default)]
pub struct ConnsReport {
    pub target: Option<SocketAddr>,
    pub conns: Vec<ConnReport>,
    /// Connections asked for.
    pub requested: usize,
    /// Since the first connect.
    pub elapsed: Duration,
    /// `connecting`, `streaming`, `draining` or `done`.
    pub phase: &'static str,
}

impl ConnsReport {
    pub fn established(&self) -> usize {
        self.conns.iter().filter(|c| c.established).count()
    }
    /// Established and neither reset, closed nor failed: still carrying data.
    pub fn live(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.established && c.resets == 0 && !c.closed_early && c.error.is_none())
            .count()
    }
    pub fn resets(&self) -> u64 {
        self.conns.iter().map(|c| u64::from(c.resets)).sum()
    }
    pub fn stalls(&self) -> u64 {
        self.conns.iter().map(|c| u64::from(c.stalls)).sum()
    }
    pub fn sent(&self) -> u64 {
        self.conns.iter().map(|c| c.sent).sum()
    }
    pub fn received(&self) -> u64 {
        self.conns.iter().map(|c| c.received).sum()
    }
    pub fn verified(&self) -> u64 {
        self.conns.iter().map(|c| c.verified).sum()
    }
    /// Sent but not echoed: in flight while running, lost once done.
    pub fn lost(&self) -> u64 {
        self.conns.iter().map(ConnReport::lost).sum()
    }
    pub fn corrupt(&self) -> usize {
        self.conns.iter().filter(|c| c.corrupt_at.is_some()).count()
    }
    pub fn failed(&self) -> usize {
        self.conns.iter().filter(|c| !c.is_clean()).count()
    }
    pub fn max_gap(&self) -> Duration {
        self.conns
            .iter()
            .map(|c| c.max_gap)
            .max()
            .unwrap_or_default()
    }
    /// Every requested connection established and clean: no reset, nothing lost or corrupt.
    pub fn is_clean(&self) -> bool {
        self.conns.len() == self.requested && self.conns.iter().all(ConnReport::is_clean)
    }
    /// Established connections per backend name.
    pub fn per_backend(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in self.conns.iter().filter(|c| c.established) {
            *m.entry(c.backend.clone()).or_default() += 1;
        }
        m
    }
}

/// `1.5 MiB`-style sizes for tables.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for ConnsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:>6} {:>11} {:>11} {:>11} {:>6} {:>6} {:>9} {:>7}",
            "backend",
            "conns",
            "sent",
            "received",
            "verified",
            "resets",
            "stalls",
            "lost",
            "corrupt"
        )?;
        let mut rows: BTreeMap<&str, Vec<&ConnReport>> = BTreeMap::new();
        for c in &self.conns {
            let key = if c.established {
                c.backend.as_str()
            } else {
                "(failed)"
            };
            rows.entry(key).or_default().push(c);
        }
        let row = |f: &mut fmt::Formatter<'_>, name: &str, cs: &[&ConnReport]| {
            writeln!(
                f,
                "{name:<10} {:>6} {:>11} {:>11} {:>11} {:>6} {:>6} {:>9} {:>7}",
                cs.len(),
                human_bytes(cs.iter().map(|c| c.sent).sum()),
                human_bytes(cs.iter().map(|c| c.received).sum()),
                human_bytes(cs.iter().map(|c| c.verified).sum()),
                cs.iter().map(|c| u64::from(c.resets)).sum::<u64>(),
                cs.iter().map(|c| u64::from(c.stalls)).sum::<u64>(),
                cs.iter().map(|c| c.lost()).sum::<u64>(),
                cs.iter().filter(|c| c.corrupt_at.is_some()).count(),
            )
        };
        for (name, cs) in &rows {
            row(f, name, cs)?;
        }
        let all: Vec<&ConnReport> = self.conns.iter().collect();
        row(f, "total", &all)?;
        writeln!(
            f,
            "{} of {} connections established, {} live, phase {}, {:.1} s, longest echo gap {} ms{}",
            self.established(),
            self.requested,
            self.live(),
            self.phase,
            self.elapsed.as_secs_f64(),
            self.max_gap().as_millis(),
            if self.phase == "done" {
                ""
            } else {
                " (lost = in flight until done)"
            }
        )?;
        let problems: Vec<&ConnReport> = self.conns.iter().filter(|c| !c.is_clean()).collect();
        if self.phase == "done" && !problems.is_empty() {
            writeln!(f, "connections with problems ({}):", problems.len())?;
            for c in problems.iter().take(10) {
                writeln!(
                    f,
                    "  #{} {} -> {:<9} sent {} received {} resets {} lost {} corrupt_at {:?} closed_early {} error {}",
                    c.id,
                    c.local.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    if c.backend.is_empty() {
                        "-"
                    } else {
                        &c.backend
                    },
                    c.sent,
                    c.received,
                    c.resets,
                    c.lost(),
                    c.corrupt_at,
                    c.closed_early,
                    c.error.as_deref().unwrap_or("-")
                )?;
            }
        }
        Ok(())
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
    /// Starts the connections from the calling process's current network namespace.
    pub fn start(target: SocketAddr, opts: ConnsOptions) -> LongLived {
        Self::spawn(None, target, opts).expect("no namespace to enter")
    }

    /// Starts the connections from a thread that has entered the namespace at `netns_path`
    /// (`/run/netns/NAME`); the caller's threads stay where they are.
    pub fn start_in(
        netns_path: &str,
        target: SocketAddr,
        opts: ConnsOptions,
    ) -> super::Result<LongLived> {
        let file = std::fs::File::open(netns_path)
            .map_err(super::io_err(format!("opening {netns_path}")))?;
        Self::spawn(Some((netns_path.to_owned(), file)), target, opts)
    }

    fn spawn(
        netns: Option<(String, std::fs::File)>,
        target: SocketAddr,
        opts: ConnsOptions,
    ) -> super::Result<LongLived> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(ConnsReport {
            target: Some(target),
            requested: opts.conns,
            phase: "connecting",
            ..ConnsReport::default()
        }));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<super::Result<()>>();
        let (stop2, shared2) = (stop.clone(), shared.clone());
        let thread = std::thread::spawn(move || {
            // setns(CLONE_NEWNET) moves only this thread: the caller's threads stay put.
            if let Some((path, file)) = netns
                && let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            {
                let _ = ready_tx.send(Err(super::LabError::Io {
                    what: format!("entering {path}"),
                    source: e.into(),
                }));
                return ConnsReport::default();
            }
            let _ = ready_tx.send(Ok(()));
            run(target, &opts, &stop2, &shared2)
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

/// Byte `offset` of connection `id`'s stream: SplitMix64 of (id, offset / 8), so a byte from
/// another connection or another position does not match (except by a 1-in-256 chance per byte,
/// and never for a run of them).
fn fill(id: usize, offset: u64, out: &mut [u8]) {
    let mut word_index = offset / 8;
    let mut word = stream_word(id, word_index);
    for (i, b) in out.iter_mut().enumerate() {
        let o = offset + i as u64;
        if o / 8 != word_index {
            word_index = o / 8;
            word = stream_word(id, word_index);
        }
        *b = word.to_le_bytes()[(o % 8) as usize];
    }
}

fn stream_word(id: usize, index: u64) -> u64 {
    let mut z = (id as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index)
        .wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Conn {
    report: ConnReport,
    stream: Option<TcpStream>,
    /// Last time an echoed byte arrived, or bytes became outstanding.
    last_progress: Instant,
    in_stall: bool,
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

/// Connect, ask for stream mode, read the name line.
fn open(id: usize, target: SocketAddr, opts: &ConnsOptions) -> Conn {
    let mut report = ConnReport {
        id,
        ..ConnReport::default()
    };
    let result = (|| -> std::io::Result<TcpStream> {
        let mut s = TcpStream::connect_timeout(&target, opts.connect_timeout)?;
        report.local = s.local_addr().ok();
        s.set_read_timeout(Some(opts.connect_timeout))?;
        s.set_nodelay(true)?;
        s.write_all(b"STREAM\n\n")?;
        let mut name = Vec::new();
        let mut byte = [0u8; 1];
        while name.len() < 64 {
            let n = loop {
                match s.read(&mut byte) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            if n == 0 {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed before sending its name",
                ));
            }
            if byte[0] == b'\n' {
                break;
            }
            name.push(byte[0]);
        }
        report.backend = String::from_utf8_lossy(&name).into_owned();
        s.set_nonblocking(true)?;
        Ok(s)
    })();
    let stream = match result {
        Ok(s) => {
            report.established = true;
            Some(s)
        }
        Err(e) => {
            if is_reset(&e) {
                report.resets += 1;
            }
            report.error = Some(format!("opening: {e}"));
            None
        }
    };
    Conn {
        report,
        stream,
        last_progress: Instant::now(),
        in_stall: false,
    }
}

fn publish(
    shared: &Mutex<ConnsReport>,
    conns: &[Conn],
    target: SocketAddr,
    opts: &ConnsOptions,
    started: Instant,
    phase: &'static str,
) -> ConnsReport {
    let report = ConnsReport {
        target: Some(target),
        conns: conns.iter().map(|c| c.report.clone()).collect(),
        requested: opts.conns,
        elapsed: started.elapsed(),
        phase,
    };
    if let Ok(mut r) = shared.lock() {
        *r = report.clone();
    }
    report
}

fn run(
    target: SocketAddr,
    opts: &ConnsOptions,
    stop: &AtomicBool,
    shared: &Mutex<ConnsReport>,
) -> ConnsReport {
    let started = Instant::now();
    let mut conns: Vec<Conn> = Vec::with_capacity(opts.conns);
    let mut last_publish = Instant::now();
    for id in 0..opts.conns {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        conns.push(open(id, target, opts));
        if last_publish.elapsed() > Duration::from_millis(100) {
            publish(shared, &conns, target, opts, started, "connecting");
            last_publish = Instant::now();
        }
    }

    let stream_start = Instant::now();
    let stream_end = stream_start + opts.duration;
    let mut drain_end: Option<Instant> = None;
    let mut out = vec![0u8; 16 * 1024];
    let mut inp = vec![0u8; 64 * 1024];
    let mut expect = vec![0u8; 64 * 1024];
    let tick = Duration::from_millis(20);
    for c in &mut conns {
        c.last_progress = Instant::now();
    }
    loop {
        let now = Instant::now();
        if drain_end.is_none() && (now >= stream_end || stop.load(Ordering::Relaxed)) {
            drain_end = Some(now + opts.drain_timeout);
        }
        let draining = drain_end.is_some();
        let all_echoed = conns
            .iter()
            .all(|c| c.stream.is_none() || c.report.received >= c.report.sent);
        if drain_end.is_some_and(|d| now >= d || all_echoed) {
            break;
        }

        // Writes, paced: what this connection should have sent by now, within its window.
        let due = (now.duration_since(stream_start).as_secs_f64() * opts.rate as f64) as u64;
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
        let mut index: Vec<usize> = Vec::with_capacity(conns.len());
        for (i, c) in conns.iter_mut().enumerate() {
            let Some(s) = c.stream.as_mut() else { continue };
            let r = &mut c.report;
            let outstanding = r.sent - r.received;
            let budget = due
                .saturating_sub(r.sent)
                .min(opts.window.saturating_sub(outstanding))
                .min(out.len() as u64) as usize;
            let mut want_out = false;
            if !draining && budget > 0 {
                fill(r.id, r.sent, &mut out[..budget]);
                match s.write(&out[..budget]) {
                    Ok(n) => {
                        if outstanding == 0 && n > 0 {
                            c.last_progress = now;
                        }
                        r.sent += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => want_out = true,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        if is_reset(&e) {
                            r.resets += 1;
                        } else {
                            r.error = Some(format!("write: {e}"));
                        }
                        c.stream = None;
                        continue;
                    }
                }
            }
            fds.push(libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN | if want_out { libc::POLLOUT } else { 0 },
                revents: 0,
            });
            index.push(i);
        }

        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                tick.as_millis() as libc::c_int,
            )
        };
        let now = Instant::now();
        if n > 0 {
            for (fd, &i) in fds.iter().zip(&index) {
                if fd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) == 0 {
                    continue;
                }
                let c = &mut conns[i];
                read_echo(c, &mut inp, &mut expect, now);
            }
        }

        for c in &mut conns {
            if c.stream.is_none() {
                continue;
            }
            let outstanding = c.report.sent > c.report.received;
            if outstanding && !c.in_stall && now.duration_since(c.last_progress) > opts.stall {
                c.in_stall = true;
                c.report.stalls += 1;
            }
            if outstanding {
                let gap = now.duration_since(c.last_progress);
                c.report.max_gap = c.report.max_gap.max(gap);
            }
        }

        if last_publish.elapsed() > Duration::from_millis(100) {
            publish(
                shared,
                &conns,
                target,
                opts,
                started,
                if draining { "draining" } else { "streaming" },
            );
            last_publish = Instant::now();
        }
    }
    for c in &mut conns {
        if let Some(s) = c.stream.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    publish(shared, &conns, target, opts, started, "done")
}

/// Reads what is there and checks it against the stream.
fn read_echo(c: &mut Conn, inp: &mut [u8], expect: &mut [u8], now: Instant) {
    let Some(s) = c.stream.as_mut() else { return };
    loop {
        match s.read(inp) {
            Ok(0) => {
                c.report.closed_early = true;
                c.stream = None;
                return;
            }
            Ok(n) => {
                let r = &mut c.report;
                if r.corrupt_at.is_none() {
                    fill(r.id, r.received, &mut expect[..n]);
                    match inp[..n].iter().zip(&expect[..n]).position(|(a, b)| a != b) {
                        Some(p) => {
                            r.corrupt_at = Some(r.received + p as u64);
                            r.verified += p as u64;
                        }
                        None => r.verified += n as u64,
                    }
                }
                r.received += n as u64;
                let gap = now.duration_since(c.last_progress);
                r.max_gap = r.max_gap.max(gap);
                c.last_progress = now;
                c.in_stall = false;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                if is_reset(&e) {
                    c.report.resets += 1;
                } else {
                    c.report.error = Some(format!("read: {e}"));
                }
                c.stream = None;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_bytes_depend_on_connection_and_offset_and_fill_is_chunking_independent() {
        let mut whole = vec![0u8; 100];
        fill(3, 5, &mut whole);
        let mut parts = vec![0u8; 100];
        fill(3, 5, &mut parts[..13]);
        fill(3, 18, &mut parts[13..]);
        assert_eq!(whole, parts);
        let mut other = vec![0u8; 100];
        fill(4, 5, &mut other);
        assert_ne!(whole, other);
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
