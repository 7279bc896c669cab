//! The agent's API protocol: the requests the control socket takes, their responses, and the
//! status the agent reports (`anycast status --json`, the metrics, the announcement policy).
//! Types only: the layers above (control, api, cli, announce) share them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::VipId;

/// The result of the last reload, for `anycast status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// What triggered it: `SIGHUP`, `file change`.
    pub trigger: String,
    pub ok: bool,
    /// `N VIPs changed` or the error, field named.
    pub message: String,
}

/// The loaded program and where it is attached, for `anycast status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramInfo {
    pub name: String,
    /// Kernel program id (`bpftool prog show id N`).
    pub id: Option<u32>,
    pub interfaces: Vec<AttachedInterface>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedInterface {
    pub name: String,
    /// `native`, `generic`.
    pub mode: String,
    /// IP forwarding on the interface as the status was taken (`None`: unknown). The kernel's FIB
    /// helper refuses lookups on an interface that does not forward.
    #[serde(default)]
    pub forwarding: Option<Forwarding>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarding {
    pub ipv4: bool,
    pub ipv6: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideEntry {
    /// `null` = every VIP.
    pub vip: Option<VipId>,
    pub backend: IpAddr,
    pub drained: bool,
    pub weight: Option<u32>,
}

/// A control API request: one JSON object per line (README, "Control API").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Stats,
    Lookup {
        flow: String,
    },
    /// Withdraw every VIP from BGP (`[bgp]` only).
    DrainEdge,
    UndrainEdge,
    Drain {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vip: Option<String>,
        backend: String,
    },
    Undrain {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vip: Option<String>,
        backend: String,
    },
    SetWeight {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vip: Option<String>,
        backend: String,
        /// Signed so a negative value gets a range error rather than a parse error.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<i64>,
        #[serde(default)]
        clear: bool,
    },
}

/// The tag key of a [`Request`].
const REQUEST_TAG: &str = "request";

impl Request {
    /// Parses one request line. Unknown fields are refused with their name, on every variant:
    /// `deny_unknown_fields` covers the struct variants, but serde's internally tagged enums
    /// ignore extra keys on a unit variant (the tag is read from a buffered map and the rest is
    /// skipped), so a unit variant's object is checked here to hold the tag alone.
    pub fn from_json(line: &str) -> Result<Request, String> {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let serde_json::Value::Object(map) = &value else {
            return Err(format!(
                "a request is a JSON object with a \"{REQUEST_TAG}\" key, not {}",
                json_kind(&value)
            ));
        };
        let req: Request = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        let tag = map
            .get(REQUEST_TAG)
            .cloned()
            .expect("a parsed request has its tag");
        let extra = map.keys().find(|k| k.as_str() != REQUEST_TAG);
        if let Some(extra) = extra {
            // A variant that takes a made-up key takes any key: it is a unit variant.
            let probe = serde_json::json!({ REQUEST_TAG: tag, "\u{0}probe": 0 });
            if serde_json::from_value::<Request>(probe).is_ok() {
                return Err(format!(
                    "unknown field `{extra}`: the {} request takes no fields",
                    tag.as_str().unwrap_or("?")
                ));
            }
        }
        Ok(req)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Ok { result: serde_json::Value },
    Error { error: String },
}

impl Response {
    pub fn into_result(self) -> Result<serde_json::Value, String> {
        match self {
            Self::Ok { result } => Ok(result),
            Self::Error { error } => Err(error),
        }
    }
}

/// One VIP's change in one publication, for the log and the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipChange {
    pub vip: VipId,
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
    /// `(backend, old weight, new weight)`, effective weights.
    pub reweighted: Vec<(IpAddr, u32, u32)>,
    /// Slots whose backend changed (a table appearing or disappearing moves them all).
    pub slots_moved: usize,
    pub fingerprint: Option<String>,
    pub vip_added: bool,
    pub vip_removed: bool,
}

/// The answer to `drain`, `undrain` and `set-weight`: what was done and what it changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub message: String,
    pub changes: Vec<VipChange>,
}

/// The answer to `drain_edge` / `undrain_edge`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeDrained {
    pub message: String,
    pub edge_drained: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub local: bool,
    pub weight_config: u32,
    /// What the dataplane uses: overrides applied, 0 when unhealthy (then not in the table).
    pub weight_effective: u32,
    pub drained: bool,
    pub weight_override: Option<u32>,
    /// `healthy`, `unhealthy`, `pending` (checked, no verdict yet: treated as healthy),
    /// `unchecked` (the VIP has no `[vip.health]`).
    pub health: Health,
    /// The verdict is confirmed by the running health check (no rise or fall under way, not a
    /// restored verdict still unchecked); true when unchecked. A VIP is announced anew only when
    /// every one of its backends is settled (announce, "the health gate").
    pub health_settled: bool,
    /// Slots of the live table that send to this backend.
    pub slots: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStatus {
    pub vip: VipId,
    /// `ok`, `all backends down`, `no weighted backend`, `no backends`.
    pub state: VipState,
    pub fingerprint: Option<String>,
    pub health_check: Option<String>,
    pub backends: Vec<BackendStatus>,
    /// Publications that changed this VIP's table (backends, weights, slots, the VIP appearing
    /// or going) since the agent started: `anycast_vip_table_changes_total`.
    #[serde(default)]
    pub table_changes: u64,
    /// BGP state of the VIP's prefix, with `[bgp]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announcement: Option<PrefixState>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub config_path: PathBuf,
    pub last_reload: Option<ReloadOutcome>,
    pub reloads_ok: u64,
    pub reloads_error: u64,
    pub program: ProgramInfo,
    pub hash_seed: u32,
    pub ring_size: u32,
    pub overrides: Vec<OverrideEntry>,
    pub vips: Vec<VipStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp: Option<AnnounceStatus>,
    /// This edge's link to its fleet, with `[fleet]` (docs/fleet.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetView>,
}

/// This edge's view of its fleet in `anycast status`: whether etcd answers, what document it
/// runs and what it refused. `anycast fleet status` shows every edge's report from etcd; this is
/// what the edge itself knows, also while etcd is unreachable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    pub edge: String,
    pub pop: String,
    /// etcd answers and this edge's session (lease, watches) is up.
    pub connected: bool,
    /// Times etcd became unreachable since start.
    pub outages: u64,
    /// Why etcd is unreachable, while it is.
    pub last_error: Option<String>,
    /// The fleet revision the dataplane runs (`None`: none applied yet, the file's VIPs).
    pub applied_revision: Option<i64>,
    /// The last document refused (invalid), with the reason; cleared by the next one applied.
    pub refused_revision: Option<i64>,
    pub refused_error: Option<String>,
    pub documents_applied: u64,
    /// Edges with a live health vote in etcd, this one included.
    pub live_edges: usize,
}

/// One prefix as BIRD has it, for `anycast status` and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixState {
    pub prefix: String,
    pub protocol: String,
    /// What BIRD was last told successfully (false until then).
    pub announced: bool,
    /// What the policy wants.
    pub wanted: bool,
    pub reason: String,
    /// Unix time of the last change of `announced`.
    pub since: u64,
}

/// The announcer's state, shared with the controller for `anycast status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    pub mode: String,
    pub bird_socket: PathBuf,
    /// `connected`, `connecting` (with the last error) or `stopped`.
    pub bird: String,
    pub edge_drained: bool,
    pub min_healthy_backends: u32,
    /// Per VIP in `anycast status` (`vips[].announcement`).
    #[serde(skip)]
    pub prefixes: BTreeMap<IpAddr, PrefixState>,
}

/// A backend's health as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
    /// Checked, no verdict yet: treated as healthy (in the table), not counted for announcement.
    Pending,
    /// The VIP has no `[vip.health]`.
    Unchecked,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Pending => "pending",
            Health::Unchecked => "unchecked",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VIP's state in `anycast status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VipState {
    #[serde(rename = "ok")]
    Ok,
    /// Every checked backend fails its check: the VIP keeps its table without health.
    #[serde(rename = "all backends down")]
    AllBackendsDown,
    #[serde(rename = "no weighted backend")]
    NoWeightedBackend,
    #[serde(rename = "no backends")]
    NoBackends,
}

impl VipState {
    pub fn as_str(self) -> &'static str {
        match self {
            VipState::Ok => "ok",
            VipState::AllBackendsDown => "all backends down",
            VipState::NoWeightedBackend => "no weighted backend",
            VipState::NoBackends => "no backends",
        }
    }
}

impl std::fmt::Display for VipState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per request variant, each valid as written.
    const EVERY_REQUEST: &[&str] = &[
        r#"{"request":"status"}"#,
        r#"{"request":"stats"}"#,
        r#"{"request":"lookup","flow":"tcp 198.51.100.7:40000 203.0.113.10:80"}"#,
        r#"{"request":"drain_edge"}"#,
        r#"{"request":"undrain_edge"}"#,
        r#"{"request":"drain","backend":"198.18.10.2","vip":"203.0.113.10:80/tcp"}"#,
        r#"{"request":"undrain","backend":"198.18.10.2","vip":null}"#,
        r#"{"request":"set_weight","backend":"198.18.10.2","weight":3}"#,
        r#"{"request":"set_weight","backend":"198.18.10.2","clear":true}"#,
    ];

    #[test]
    fn every_request_refuses_an_unknown_field_by_name() {
        for line in EVERY_REQUEST {
            Request::from_json(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["bogus_key"] = serde_json::json!({"x": 1});
            let e = Request::from_json(&v.to_string()).unwrap_err();
            assert!(e.contains("unknown field `bogus_key`"), "{line}: {e}");
        }
    }

    #[test]
    fn unit_requests_take_the_tag_alone() {
        let e = Request::from_json(r#"{"request":"status","x":1}"#).unwrap_err();
        assert_eq!(e, "unknown field `x`: the status request takes no fields");
        let e = Request::from_json(r#"{"request":"drain_edge","vip":null}"#).unwrap_err();
        assert!(e.starts_with("unknown field `vip`"), "{e}");
        assert_eq!(
            Request::from_json(r#"{"request":"stats"}"#).unwrap(),
            Request::Stats
        );
    }

    #[test]
    fn shapes_that_are_not_a_request_are_named() {
        let e = Request::from_json(r#"{"status":{"x":1}}"#).unwrap_err();
        assert!(e.contains("missing field `request`"), "{e}");
        let e = Request::from_json(r#"["status"]"#).unwrap_err();
        assert!(e.contains("not an array"), "{e}");
        let e = Request::from_json(r#"{"request":"reboot"}"#).unwrap_err();
        assert!(e.contains("unknown variant `reboot`"), "{e}");
        let e = Request::from_json(r#"{"request":"lookup"}"#).unwrap_err();
        assert!(e.contains("missing field `flow`"), "{e}");
    }

    #[test]
    fn what_the_client_sends_parses_back() {
        for line in EVERY_REQUEST {
            let r = Request::from_json(line).unwrap();
            let again = Request::from_json(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_eq!(r, again);
        }
    }
}
