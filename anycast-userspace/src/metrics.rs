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
        "anycast_vip_table_changes_total",
        "Publications that changed the VIP's table (backends, weights, slots) since the agent started.",
    );
    for v in &status.vips {
        f.sample(&[("vip", &v.vip.to_string())], v.table_changes);
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
            // The health verdict above changed the table once.
            "anycast_vip_table_changes_total{vip=\"203.0.113.10:80/tcp\"} 1",
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

    /// The metric families `render` can produce (BGP and counters included), from its output.
    fn exported_families() -> BTreeSet<String> {
        let c = ConfigBuilder::reference()
            .without_agent("tunnel_source_v6")
            .without_agent("decap_allow")
            .build();
        let (ctl, _) =
            Controller::start(MemorySink::new(&c), "/x.toml".into(), c, BTreeSet::new()).unwrap();
        let mut status = ctl.status();
        status.bgp = Some(crate::proto::AnnounceStatus::default());
        let stats = Stats {
            counters: anycast_common::counter::NAMES
                .iter()
                .map(|n| ((*n).to_owned(), 0))
                .collect(),
            vips: vec![],
            backends: vec![],
        };
        render(&status, Some(&stats))
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect()
    }

    /// Every PromQL string of the dashboard (panel targets and template variables).
    fn dashboard_queries() -> Vec<String> {
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("expr" | "definition", serde_json::Value::String(q)) => {
                                out.push(q.clone());
                            }
                            _ => walk(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let text = include_str!("../../deploy/grafana/anycast.json");
        let dash: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
        let mut out = Vec::new();
        walk(&dash, &mut out);
        out
    }

    /// Identifiers in a PromQL expression that name one of the agent's metrics (they all start
    /// with `anycast_`; functions, labels and keywords do not).
    fn metric_names(q: &str) -> Vec<String> {
        let b = q.as_bytes();
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if ident(b[i]) && (i == 0 || !ident(b[i - 1])) {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &q[start..i];
                // Inside a string literal (a label value) a word is not a metric.
                let quotes = q[..start].matches('"').count();
                if word.starts_with("anycast_") && quotes.is_multiple_of(2) {
                    out.push(word.to_owned());
                }
            } else {
                i += 1;
            }
        }
        out
    }

    #[test]
    fn every_metric_the_dashboard_queries_is_exported() {
        let exported = exported_families();
        let queries = dashboard_queries();
        assert!(queries.len() >= 10, "{queries:?}");
        let mut queried = BTreeSet::new();
        for q in &queries {
            let names = metric_names(q);
            assert!(!names.is_empty(), "a query with no anycast metric: {q}");
            for n in names {
                assert!(
                    exported.contains(&n),
                    "the dashboard queries {n}, which the agent does not export (exported: {exported:?}): {q}"
                );
                queried.insert(n);
            }
        }
        for wanted in [
            "anycast_vip_packets_total",
            "anycast_backend_packets_total",
            "anycast_packets_total",
            "anycast_vip_announced",
            "anycast_vip_table_changes_total",
        ] {
            assert!(queried.contains(wanted), "no panel shows {wanted}");
        }
    }

    #[test]
    fn outcomes_the_dashboard_selects_are_counter_names() {
        for q in dashboard_queries() {
            const SEL: &str = "outcome=~\"";
            for (_, rest) in q.match_indices(SEL).map(|(i, _)| q.split_at(i + SEL.len())) {
                let list = &rest[..rest.find('"').unwrap()];
                for alt in list.split('|') {
                    let literal = alt.trim_end_matches(".*");
                    assert!(
                        anycast_common::counter::NAMES
                            .iter()
                            .any(|n| n.starts_with(literal)
                                && (alt.ends_with(".*") || *n == literal)),
                        "outcome {alt:?} is no counter: {q}"
                    );
                }
            }
        }
    }

    #[test]
    fn promql_metric_names_are_found_and_label_values_skipped() {
        assert_eq!(
            metric_names(r#"sum by (vip) (rate(anycast_vip_packets_total{vip=~"anycast_x"}[5m]))"#),
            ["anycast_vip_packets_total"]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
