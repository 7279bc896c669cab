//! Traffic through a lab: short flows (counted by the backend that answered), long-lived
//! connections, and single requests from inside a namespace.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::{ConnsOptions, ConnsReport, Lab, LongLived, Result};

/// One short flow's outcome: (source address, the name of the backend that answered), or what
/// failed (with the source address if the socket got one).
pub type FlowResult =
    std::result::Result<(SocketAddr, String), (Option<SocketAddr>, std::io::Error)>;

impl Lab {
    /// `count` short flows from `ns` to `target`, one after the other, until `budget` is spent:
    /// each a TCP request on its own connection or a UDP datagram from its own socket (so its
    /// own source port, so its own flow). Read them as a [`Flows::tally`] of who answered, or
    /// flow by flow ([`Flows::records`]).
    pub fn flows(
        &self,
        ns: &str,
        transport: Transport,
        target: SocketAddr,
        count: usize,
        budget: Duration,
    ) -> Result<Flows> {
        let results = self.in_netns(ns, || {
            let deadline = Instant::now() + budget;
            (0..count)
                .map_while(|i| {
                    (Instant::now() < deadline).then(|| match transport {
                        Transport::Tcp => tcp_request_from(target, Duration::from_secs(2)),
                        Transport::Udp => udp_request_from(
                            target,
                            format!("flow {i}").as_bytes(),
                            Duration::from_secs(1),
                        ),
                    })
                })
                .collect()
        })?;
        Ok(Flows {
            target,
            count,
            results,
        })
    }

    /// Starts `opts.conns` long-lived TCP connections from `ns` to `target` (an
    /// `anycast-lab-server`), streaming both ways; see [`conns`](super::conns). Returns at once: move routes,
    /// look at [`LongLived::snapshot`], then [`LongLived::stop`] or [`LongLived::wait`].
    pub fn start_long_lived(
        &self,
        ns: &str,
        target: SocketAddr,
        opts: ConnsOptions,
    ) -> Result<LongLived> {
        LongLived::start_in(&self.ns(ns), target, opts)
    }

    /// [`Lab::start_long_lived`] with `n` connections streaming for `duration`, waited for.
    pub fn long_lived(
        &self,
        ns: &str,
        target: SocketAddr,
        n: usize,
        duration: Duration,
    ) -> Result<ConnsReport> {
        let opts = ConnsOptions {
            conns: n,
            duration,
            ..ConnsOptions::default()
        };
        Ok(self.start_long_lived(ns, target, opts)?.wait())
    }
}

/// What a short flow of [`Lab::flows`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One HTTP-ish request on its own TCP connection.
    Tcp,
    /// One datagram from its own UDP socket, echoed back.
    Udp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        })
    }
}

/// The short flows of one [`Lab::flows`] call, in the order they were sent.
#[derive(Debug)]
pub struct Flows {
    target: SocketAddr,
    /// How many were asked for: those missing from `results` were not sent in time.
    count: usize,
    results: Vec<FlowResult>,
}

impl Flows {
    /// Which backend answered how many flows, and what went wrong with the others.
    pub fn tally(&self) -> FlowTally {
        let mut tally = FlowTally {
            not_sent: self.count.saturating_sub(self.results.len()),
            ..FlowTally::default()
        };
        for f in &self.results {
            match f {
                Ok((_, name)) => *tally.per_backend.entry(name.clone()).or_default() += 1,
                Err((_, e)) => {
                    *tally.failures.entry(format!("{:?}", e.kind())).or_default() += 1;
                }
            }
        }
        tally
    }

    /// Panics, with the tally, unless `backend` answered every flow asked for.
    pub fn assert_all_answered_by(&self, backend: &str, what: &str) {
        let tally = self.tally();
        assert_eq!(
            tally.per_backend.get(backend),
            Some(&self.count),
            "{what}:\n{tally}"
        );
    }

    /// Each flow: its source address and who answered.
    pub fn records(&self) -> Vec<FlowRecord> {
        self.results
            .iter()
            .map(|f| match f {
                Ok((local, name)) => FlowRecord {
                    local: Some(*local),
                    target: self.target,
                    answer: Ok(name.clone()),
                },
                Err((local, e)) => FlowRecord {
                    local: *local,
                    target: self.target,
                    answer: Err(e.to_string()),
                },
            })
            .collect()
    }
}

/// One short flow: from where, to where, and the name of the backend that answered (or why
/// nothing did).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub local: Option<SocketAddr>,
    pub target: SocketAddr,
    pub answer: std::result::Result<String, String>,
}

/// [`tcp_request`] that also tells the connection's source address.
pub fn tcp_request_from(target: SocketAddr, timeout: Duration) -> FlowResult {
    let s = TcpStream::connect_timeout(&target, timeout).map_err(|e| (None, e))?;
    let local = s.local_addr().map_err(|e| (None, e))?;
    http_name(s, timeout)
        .map(|name| (local, name))
        .map_err(|e| (Some(local), e))
}

/// [`tcp_request_from`] from a socket bound to `source` before it connects (port 0: a free
/// port), so that the source address is known even when the connection fails. A fixed port is
/// bound with SO_REUSEADDR: an earlier connection from it may still be in TIME_WAIT.
pub fn tcp_request_bound(source: SocketAddr, target: SocketAddr, timeout: Duration) -> FlowResult {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(|e| (None, e))?;
    if source.port() != 0 {
        socket.set_reuse_address(true).map_err(|e| (None, e))?;
    }
    socket.bind(&source.into()).map_err(|e| (None, e))?;
    let local = socket
        .local_addr()
        .map_err(|e| (None, e))?
        .as_socket()
        .ok_or_else(|| {
            let e = std::io::Error::other("the bound socket has no IP address");
            (None, e)
        })?;
    socket
        .connect_timeout(&target.into(), timeout)
        .map_err(|e| (Some(local), e))?;
    http_name(socket.into(), timeout)
        .map(|name| (local, name))
        .map_err(|e| (Some(local), e))
}

/// One HTTP-ish request on a connected stream; the name in the body of the answer.
fn http_name(mut s: TcpStream, timeout: Duration) -> std::io::Result<String> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    s.take(4096).read_to_string(&mut reply)?;
    reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP reply: {reply:?}"),
            )
        })
}

/// Repeats `f` while it fails with EINTR (a signal for another thread of a test process can
/// interrupt a blocking socket call; std's `read_to_string` retries, a bare `recv` does not).
fn retry_eintr<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// [`udp_request`] that also tells the socket's source address.
pub fn udp_request_from(target: SocketAddr, payload: &[u8], timeout: Duration) -> FlowResult {
    let bind: SocketAddr = match target.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let s = UdpSocket::bind(bind).map_err(|e| (None, e))?;
    s.connect(target).map_err(|e| (None, e))?;
    let local = s.local_addr().map_err(|e| (None, e))?;
    let result = (|| {
        s.set_read_timeout(Some(timeout))?;
        retry_eintr(|| s.send(payload))?;
        let mut buf = [0u8; 2048];
        let n = retry_eintr(|| s.recv(&mut buf))?;
        let reply = &buf[..n];
        let name_end = reply.iter().position(|b| *b == b' ').unwrap_or(n);
        if &reply[(name_end + 1).min(n)..] != payload {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "echo does not match the payload",
            ));
        }
        Ok(String::from_utf8_lossy(&reply[..name_end]).into_owned())
    })();
    result
        .map(|name| (local, name))
        .map_err(|e| (Some(local), e))
}

/// Which backend answered how many flows, and what went wrong with the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowTally {
    pub per_backend: BTreeMap<String, usize>,
    pub failures: BTreeMap<String, usize>,
    /// Flows not attempted because the time budget ran out.
    pub not_sent: usize,
}

impl FlowTally {
    pub fn answered(&self) -> usize {
        self.per_backend.values().sum()
    }

    pub fn failed(&self) -> usize {
        self.failures.values().sum::<usize>() + self.not_sent
    }
}

impl std::fmt::Display for FlowTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.answered() + self.failed();
        writeln!(f, "{:<12} {:>6} {:>7}", "backend", "flows", "share")?;
        for (name, n) in &self.per_backend {
            writeln!(
                f,
                "{name:<12} {n:>6} {:>6.1}%",
                100.0 * *n as f64 / total.max(1) as f64
            )?;
        }
        for (kind, n) in &self.failures {
            writeln!(
                f,
                "{:<12} {n:>6} {:>6.1}%",
                format!("({kind})"),
                100.0 * *n as f64 / total.max(1) as f64
            )?;
        }
        if self.not_sent > 0 {
            writeln!(f, "{:<12} {:>6}", "(not sent)", self.not_sent)?;
        }
        Ok(())
    }
}

/// One HTTP-ish request to an `anycast-lab-server`; returns the backend's name.
pub fn tcp_request(target: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    tcp_request_from(target, timeout)
        .map(|(_, name)| name)
        .map_err(|(_, e)| e)
}

/// One datagram to an `anycast-lab-server`; returns the backend's name (it echoes the payload
/// after its name).
pub fn udp_request(
    target: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> std::io::Result<String> {
    udp_request_from(target, payload, timeout)
        .map(|(_, name)| name)
        .map_err(|(_, e)| e)
}
