//! The Prometheus endpoint (`agent.metrics_listen`, `GET /metrics`, text format 0.0.4).
//!
//! Every value is read when scraped: the counters from the per-CPU maps (summed over CPUs, as
//! `anycast stats` does), the rest from the agent's state. The dataplane pays nothing for it.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use tokio::sync::{mpsc, oneshot};

use crate::api::Call;
use crate::dataplane::stats::{Stats, Traffic};
use crate::proto::{BackendStatus, Health, Status};

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: its `# HELP` and `# TYPE` lines, then its samples under the same name.
struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl<'a> Family<'a> {
    fn counter(out: &'a mut String, name: &'a str, help: &str) -> Self {
        Self::new(out, name, "counter", help)
    }

    fn gauge(out: &'a mut String, name: &'a str, help: &str) -> Self {
        Self::new(out, name, "gauge", help)
    }

    fn new(out: &'a mut String, name: &'a str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// The exposition text. `stats` is `None` when the maps could not be read (the counters are
/// then left out rather than reported as zero).
pub fn render(status: &Status, stats: Option<&Stats>) -> String {
    let mut out = String::new();
    if let Some(st) = stats {
        let mut f = Family::counter(
            &mut out,
            "anycast_packets_total",
            "Packets by outcome of the XDP program (one outcome per packet; tx, redirect, fib_no_neigh, encap_gue, encap_cross_family detail encap).",
        );
        for (name, v) in &st.counters {
            f.sample(&[("outcome", name)], *v);
        }
        for (n, help, pick) in [
            (
                "anycast_vip_packets_total",
                "Packets steered per VIP.",
                (|t: &Traffic| t.packets) as fn(&Traffic) -> u64,
            ),
            ("anycast_vip_bytes_total", "Bytes steered per VIP.", |t| {
                t.bytes
            }),
        ] {
            let mut f = Family::counter(&mut out, n, help);
            for v in &st.vips {
                f.sample(&[("vip", &v.vip)], pick(&v.traffic));
            }
        }
        for (n, help, pick) in [
            (
                "anycast_backend_packets_total",
                "Packets sent to each backend.",
                (|t: &Traffic| t.packets) as fn(&Traffic) -> u64,
            ),
            (
                "anycast_backend_bytes_total",
                "Bytes sent to each backend.",
                |t| t.bytes,
            ),
        ] {
            let mut f = Family::counter(&mut out, n, help);
            for b in &st.backends {
                let addr = b
                    .address
                    .map_or_else(|| format!("id{}", b.id), |a| a.to_string());
                f.sample(&[("backend", &addr)], pick(&b.traffic));
            }
        }
    }
    for (n, help, value) in [
        (
            "anycast_backend_healthy",
            "1 if the backend is healthy, pending or unchecked; 0 if its health check failed.",
            (|b: &BackendStatus| u64::from(b.health != Health::Unhealthy))
                as fn(&BackendStatus) -> u64,
        ),
        (
            "anycast_backend_weight",
            "Effective Maglev weight (config, runtime overrides and health applied).",
            |b| u64::from(b.weight_effective),
        ),
    ] {
        let mut f = Family::gauge(&mut out, n, help);
        for v in &status.vips {
            let vip = v.vip.to_string();
            for b in &v.backends {
                let addr = b.address.to_string();
                f.sample(&[("vip", &vip), ("backend", &addr)], value(b));
            }
        }
    }
    let mut f = Family::gauge(
        &mut out,
        "anycast_vip_table_fingerprint_info",
        "The fingerprint of each VIP's live Maglev table; equal on edges that agree.",
    );
    for v in &status.vips {
        if let Some(fp) = &v.fingerprint {
            f.sample(&[("vip", &v.vip.to_string()), ("fingerprint", fp)], 1);
        }
    }
    if status.bgp.is_some() {
        let mut f = Family::gauge(
            &mut out,
            "anycast_vip_announced",
            "1 while BIRD announces the VIP's prefix over BGP, else 0 (see anycast status for why).",
        );
        for v in &status.vips {
            let on = v.announcement.as_ref().is_some_and(|a| a.announced);
            f.sample(&[("vip", &v.vip.to_string())], u64::from(on));
        }
    }
    let mut f = Family::counter(
        &mut out,
        "anycast_config_reloads_total",
        "Config reloads by result.",
    );
    f.sample(&[("result", "ok")], status.reloads_ok);
    f.sample(&[("result", "error")], status.reloads_error);
    let mut f = Family::gauge(&mut out, "anycast_build_info", "The agent's version.");
    f.sample(&[("version", status.version.as_str())], 1);
    out
}

async fn metrics(State(calls): State<mpsc::Sender<Call>>) -> impl IntoResponse {
    let (tx, rx) = oneshot::channel();
    let text = match calls.send(Call::Metrics(tx)).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    match text {
        Some(t) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            t,
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "agent shutting down\n").into_response(),
    }
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    calls: mpsc::Sender<Call>,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(calls);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigBuilder, VipBuilder};
    use crate::control::{Controller, MemorySink};
    use std::collections::BTreeSet;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn scrape_over_http() {
        let c = ConfigBuilder::reference()
            .without_agent("tunnel_source_v6")
            .without_agent("decap_allow")
            .vips([VipBuilder::new("203.0.113.10", 80, "tcp")
                .backends(&[("198.18.10.2", 3), ("198.18.10.3", 1)])
                .health("kind = \"tcp\"")])
            .build();
        let (mut ctl, _) =
            Controller::start(MemorySink::new(&c), "/x.toml".into(), c, BTreeSet::new()).unwrap();
        let v = ctl.status().vips[0].vip;
        ctl.set_health(v, "198.18.10.3".parse().unwrap(), false, "test");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let server = tokio::spawn(serve(listener, tx));
        let actor = tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                match call {
                    Call::Metrics(reply) => {
                        let _ = reply.send(ctl.metrics());
                    }
                    Call::Api(req, reply) => {
                        let _ = reply.send(ctl.handle(req));
                    }
                }
            }
        });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(
            body.contains("content-type: text/plain; version=0.0.4"),
            "{body}"
        );
        for n in anycast_common::counter::NAMES {
            assert!(
                body.contains(&format!("anycast_packets_total{{outcome=\"{n}\"}} 0\n")),
                "{n} missing"
            );
        }
        for line in [
            "# TYPE anycast_packets_total counter",
            "anycast_vip_packets_total{vip=\"203.0.113.10:80/tcp\"} 0",
            "anycast_vip_bytes_total{vip=\"203.0.113.10:80/tcp\"} 0",
            "anycast_backend_packets_total{backend=\"198.18.10.2\"} 0",
            "anycast_backend_bytes_total{backend=\"198.18.10.3\"} 0",
            "anycast_backend_healthy{vip=\"203.0.113.10:80/tcp\",backend=\"198.18.10.2\"} 1",
            "anycast_backend_healthy{vip=\"203.0.113.10:80/tcp\",backend=\"198.18.10.3\"} 0",
            "anycast_backend_weight{vip=\"203.0.113.10:80/tcp\",backend=\"198.18.10.2\"} 3",
            "anycast_backend_weight{vip=\"203.0.113.10:80/tcp\",backend=\"198.18.10.3\"} 0",
            "anycast_vip_table_fingerprint_info{vip=\"203.0.113.10:80/tcp\",fingerprint=\"",
            "anycast_config_reloads_total{result=\"ok\"} 0",
            "anycast_config_reloads_total{result=\"error\"} 0",
            &format!(
                "anycast_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(body.contains(line), "missing {line:?} in\n{body}");
        }
        server.abort();
        actor.abort();
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
