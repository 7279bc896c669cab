//! The connections' thread: opens them, streams the byte sequence at a paced rate on
//! non-blocking sockets under `poll(2)`, checks every echoed byte, and publishes a report every
//! ~100 ms.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{ConnReport, ConnsOptions, ConnsReport, Phase};

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
    phase: Phase,
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

pub(super) fn run(
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
            publish(shared, &conns, target, opts, started, Phase::Connecting);
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
                if draining {
                    Phase::Draining
                } else {
                    Phase::Streaming
                },
            );
            last_publish = Instant::now();
        }
    }
    for c in &mut conns {
        if let Some(s) = c.stream.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    publish(shared, &conns, target, opts, started, Phase::Done)
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
}
