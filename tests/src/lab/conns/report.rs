//! What a run of long-lived connections reports: per connection, in total and per backend, as
//! numbers and as a table.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

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

    /// The client's address, `-` without one (for tables).
    pub fn local_label(&self) -> String {
        self.local.map_or_else(|| "-".to_owned(), |a| a.to_string())
    }

    /// The backend's name, `-` before it answered (for tables).
    pub fn backend_label(&self) -> &str {
        if self.backend.is_empty() {
            "-"
        } else {
            &self.backend
        }
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

/// Where a run is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Opening the connections, one after the other.
    #[default]
    Connecting,
    Streaming,
    /// Streaming over: waiting for the outstanding echoes.
    Draining,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Streaming => "streaming",
            Phase::Draining => "draining",
            Phase::Done => "done",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
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
    pub phase: Phase,
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

    /// One line of where a run is (what `anycast-lab-conns --progress` prints).
    pub fn progress(&self) -> String {
        format!(
            "{:>6.1}s {:<10} established {:>4}/{} live {:>4} sent {:>10} received {:>10} resets {} stalls {}",
            self.elapsed.as_secs_f64(),
            self.phase,
            self.established(),
            self.requested,
            self.live(),
            human_bytes(self.sent()),
            human_bytes(self.received()),
            self.resets(),
            self.stalls()
        )
    }

    /// A table with a line per connection (what `anycast-lab-conns --per-conn` prints).
    pub fn per_conn(&self) -> PerConn<'_> {
        PerConn(self)
    }
}

/// [`ConnsReport::per_conn`].
pub struct PerConn<'a>(&'a ConnsReport);

impl fmt::Display for PerConn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, cells: [&dyn fmt::Display; 8]| {
            let [id, local, backend, sent, received, resets, stalls, gap] = cells;
            writeln!(
                f,
                "{id:>5} {local:<42} {backend:<10} {sent:>10} {received:>10} {resets:>6} {stalls:>6} {gap:>7}"
            )
        };
        let header = [
            "id", "local", "backend", "sent", "received", "resets", "stalls", "gap_ms",
        ];
        row(f, header.each_ref().map(|h| h as &dyn fmt::Display))?;
        for c in &self.0.conns {
            let gap_ms = c.max_gap.as_millis();
            let cells: [&dyn fmt::Display; 8] = [
                &c.id,
                &c.local_label(),
                &c.backend_label(),
                &c.sent,
                &c.received,
                &c.resets,
                &c.stalls,
                &gap_ms,
            ];
            row(f, cells)?;
        }
        Ok(())
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
            if self.phase == Phase::Done {
                ""
            } else {
                " (lost = in flight until done)"
            }
        )?;
        let problems: Vec<&ConnReport> = self.conns.iter().filter(|c| !c.is_clean()).collect();
        if self.phase == Phase::Done && !problems.is_empty() {
            writeln!(f, "connections with problems ({}):", problems.len())?;
            for c in problems.iter().take(10) {
                writeln!(
                    f,
                    "  #{} {} -> {:<9} sent {} received {} resets {} lost {} corrupt_at {:?} closed_early {} error {}",
                    c.id,
                    c.local_label(),
                    c.backend_label(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
