//! Backend health checks: one tokio task per (VIP, backend) of every VIP with `[vip.health]`.
//!
//! # What is checked, and from where
//!
//! A check connects from the edge to **the backend's own address** at the check port (TCP
//! connect, or an HTTP/1.1 GET with `Host:` set to the VIP), over the ordinary routed network.
//! It does not go through the encapsulation. Checking "through the path traffic takes" would
//! mean sending a tunnelled packet whose inner destination is the VIP: the edge's own sockets
//! cannot do that (XDP sees only received packets, so a local connect to the VIP never passes
//! the program; and the edge announces the VIP itself, so the kernel would route it locally).
//! Doing it properly needs the Katran approach: mark the check's packets (`SO_MARK`) and
//! encapsulate them in a tc egress program. Until then the check proves the backend host is up
//! and its service accepts connections on the check port; it does not prove the tunnel and the
//! backend's decapsulation work. The service on the backend must therefore also listen on the
//! backend's address (a wildcard bind does), or `[vip.health].port` must name a port that does.
//!
//! # Verdicts
//!
//! A backend starts *pending* (treated as healthy, so a start or reload never empties a
//! table): its first successful check makes it healthy, `fall` consecutive failures unhealthy.
//! A healthy backend becomes unhealthy after `fall` consecutive failures, an unhealthy one
//! healthy after `rise` consecutive successes. Only verdict changes are reported (and logged);
//! an unhealthy backend leaves its VIP's Maglev input (the controller, `control`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

use crate::config::VipId;
use crate::config::{HealthConfig, HealthKind};

/// The rise/fall state machine of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `None` = pending (no verdict yet).
    pub healthy: Option<bool>,
    /// Consecutive results contradicting the current verdict.
    streak: u32,
}

impl Verdict {
    pub fn new(healthy: Option<bool>) -> Self {
        Self { healthy, streak: 0 }
    }

    /// A verdict, and the last result agreed with it.
    pub fn settled(&self) -> bool {
        self.healthy.is_some() && self.streak == 0
    }

    /// Feeds one check result; returns the new verdict when it changed.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let needed = match (self.healthy, ok) {
            (None, true) => 1,
            (None | Some(true), false) => fall,
            (Some(false), true) => rise,
            (Some(true), true) | (Some(false), false) => {
                self.streak = 0;
                return None;
            }
        };
        self.streak += 1;
        if self.streak >= needed {
            self.streak = 0;
            self.healthy = Some(ok);
            Some(ok)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0} ms")]
    Timeout(u32),
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("HTTP exchange: {0}")]
    Io(#[source] std::io::Error),
    #[error("HTTP status {got}, expected {expected}")]
    Status { got: u16, expected: u16 },
    #[error("not an HTTP response: {0:?}")]
    Garbled(String),
}

/// One check of `target`.
pub async fn probe(cfg: &HealthConfig, target: SocketAddr, host: &str) -> Result<(), ProbeError> {
    let timeout = Duration::from_millis(u64::from(cfg.timeout_ms));
    tokio::time::timeout(timeout, probe_inner(cfg, target, host))
        .await
        .map_err(|_| ProbeError::Timeout(cfg.timeout_ms))?
}

async fn probe_inner(cfg: &HealthConfig, target: SocketAddr, host: &str) -> Result<(), ProbeError> {
    let mut s = TcpStream::connect(target)
        .await
        .map_err(ProbeError::Connect)?;
    match cfg.kind {
        HealthKind::Tcp => Ok(()),
        HealthKind::Http => {
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: anycast-health/{}\r\nConnection: close\r\n\r\n",
                cfg.path,
                env!("CARGO_PKG_VERSION")
            );
            s.write_all(req.as_bytes()).await.map_err(ProbeError::Io)?;
            // The status line is all we need (RFC 9112 section 4); read until its end.
            let mut buf = Vec::with_capacity(256);
            let mut chunk = [0u8; 256];
            while !buf.contains(&b'\n') && buf.len() < 1024 {
                let n = s.read(&mut chunk).await.map_err(ProbeError::Io)?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.lines().next().unwrap_or("");
            let mut parts = line.split(' ');
            let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
                return Err(ProbeError::Garbled(line.to_owned()));
            };
            let got: u16 = match (version.starts_with("HTTP/1."), code.parse()) {
                (true, Ok(c)) => c,
                _ => return Err(ProbeError::Garbled(line.to_owned())),
            };
            if got == cfg.expect_status {
                Ok(())
            } else {
                Err(ProbeError::Status {
                    got,
                    expected: cfg.expect_status,
                })
            }
        }
    }
}

/// A change of a backend's verdict or of its settledness, sent to the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub vip: VipId,
    pub backend: IpAddr,
    pub healthy: bool,
    /// The verdict is confirmed by this check task's own last result: it has checked at least
    /// once since it started (a verdict restored from the state file, or kept across a reload,
    /// is not settled until then) and the last result agrees with the verdict (no rise or fall
    /// under way). What the announcement gate waits for (`announce`).
    pub settled: bool,
    /// The last check's result (`ok` or the error).
    pub detail: String,
}

/// Checks `backend` every `interval_ms` until the task is aborted, sending every change of the
/// verdict or of its settledness ([`HealthEvent`]). A task that starts from a verdict (restored,
/// or kept across a reload) first reports it unsettled.
pub async fn run(
    vip: VipId,
    backend: IpAddr,
    cfg: HealthConfig,
    initial: Option<bool>,
    events: mpsc::UnboundedSender<HealthEvent>,
) {
    let target = SocketAddr::new(backend, cfg.port);
    let host = match vip.address {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let mut verdict = Verdict::new(initial);
    let send = |healthy: bool, settled: bool, detail: String| {
        events
            .send(HealthEvent {
                vip,
                backend,
                healthy,
                settled,
                detail,
            })
            .is_ok()
    };
    // What the agent was last told: (verdict, settled).
    let mut told = initial.map(|h| (h, false));
    if let Some(h) = initial
        && !send(h, false, "not checked yet".into())
    {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(cfg.interval_ms)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe(&cfg, target, &host).await;
        if let Err(e) = &result {
            debug!(vip = %vip, backend = %backend, error = %e, "health check failed");
        }
        verdict.observe(result.is_ok(), cfg.rise, cfg.fall);
        let Some(healthy) = verdict.healthy else {
            continue; // pending: no verdict to report yet
        };
        let now = (healthy, verdict.settled());
        if told == Some(now) {
            continue;
        }
        told = Some(now);
        let detail = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        if !send(healthy, now.1, detail) {
            return; // the agent is shutting down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    #[test]
    fn rise_and_fall() {
        let mut v = Verdict::new(None);
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(
            v.observe(true, 2, 3),
            Some(true),
            "pending: one success decides"
        );
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(
            v.observe(true, 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(false, 2, 3), Some(false));
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(true, 2, 3), None);
        assert_eq!(v.observe(true, 2, 3), Some(true));
        let mut p = Verdict::new(None);
        for _ in 0..2 {
            assert_eq!(p.observe(false, 2, 3), None);
        }
        assert_eq!(
            p.observe(false, 2, 3),
            Some(false),
            "pending: fall failures decide"
        );
    }

    fn cfg(kind: HealthKind, port: u16) -> HealthConfig {
        HealthConfig {
            kind,
            port,
            path: "/healthz".into(),
            expect_status: 200,
            interval_ms: 20,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
        }
    }

    fn vip() -> VipId {
        VipId {
            address: "203.0.113.10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<HealthEvent>) -> HealthEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no verdict within 5 s")
            .expect("checker alive")
    }

    #[tokio::test]
    async fn tcp_listener_up_is_healthy_after_rise_and_closed_is_unhealthy_after_fall() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                drop(s);
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let backend: IpAddr = "127.0.0.1".parse().unwrap();
        let start = std::time::Instant::now();
        let task = tokio::spawn(run(
            vip(),
            backend,
            cfg(HealthKind::Tcp, port),
            Some(false),
            tx,
        ));
        // A verdict the task did not reach itself (restored) is reported unsettled at once.
        let e = next(&mut rx).await;
        assert!(!e.healthy && !e.settled, "{e:?}");
        let e = next(&mut rx).await;
        assert!(e.healthy && e.settled && e.detail == "ok", "{e:?}");
        // rise = 2 at a 20 ms interval: the first tick is immediate, the second 20 ms later.
        assert!(start.elapsed() >= Duration::from_millis(20));
        accept.abort();
        let _ = accept.await;
        // The first failure unsettles the verdict; fall = 3 failures change it.
        let e = next(&mut rx).await;
        assert!(e.healthy && !e.settled, "{e:?}");
        assert!(e.detail.starts_with("connecting"), "{e:?}");
        let e = next(&mut rx).await;
        assert!(!e.healthy && e.settled, "{e:?}");
        assert!(e.detail.starts_with("connecting"), "{e:?}");
        task.abort();
    }

    #[tokio::test]
    async fn a_pending_backend_reports_its_first_verdict_settled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _accept = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            vip(),
            "127.0.0.1".parse().unwrap(),
            cfg(HealthKind::Tcp, port),
            None,
            tx,
        ));
        let e = next(&mut rx).await;
        assert!(e.healthy && e.settled && e.detail == "ok", "{e:?}");
        task.abort();
    }

    #[tokio::test]
    async fn http_checks_the_status_line() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
        let st = status.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let code = st.load(std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    assert!(
                        req.starts_with("GET /healthz HTTP/1.1\r\nHost: 203.0.113.10\r\n"),
                        "{req}"
                    );
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let target: SocketAddr = ([127, 0, 0, 1], port).into();
        let c = cfg(HealthKind::Http, port);
        probe(&c, target, "203.0.113.10").await.unwrap();
        status.store(503, std::sync::atomic::Ordering::Relaxed);
        let e = probe(&c, target, "203.0.113.10").await.unwrap_err();
        assert_eq!(e.to_string(), "HTTP status 503, expected 200");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut c = cfg(HealthKind::Http, port);
        c.timeout_ms = 100;
        let e = probe(&c, ([127, 0, 0, 1], port).into(), "x")
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "no answer within 100 ms");
    }
}
