//! Why the controller refuses a control API request: each error names the VIP, backend or
//! field it concerns. The API answers with its message (and its sources, joined).

use std::net::IpAddr;

use crate::config::{MAX_WEIGHT, VipId};
use crate::dataplane::DataplaneError;
use crate::plan::model::FlowParseError;

/// `a, b, c` for a message.
fn list<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `VIP 203.0.113.10:80/tcp`, or `every VIP` for an all-VIP override.
pub(super) fn scope(vip: Option<VipId>) -> String {
    vip.map_or_else(|| "every VIP".to_string(), |v| format!("VIP {v}"))
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("unknown VIP {name:?} (configured: {})", list(.configured))]
    UnknownVip {
        name: String,
        configured: Vec<VipId>,
    },
    #[error("{name:?} matches several VIPs ({}); name one as ADDR:PORT/PROTO", list(.matches))]
    AmbiguousVip { name: String, matches: Vec<VipId> },
    #[error("{backend:?} is not an IP address")]
    NotAnAddress { backend: String },
    #[error("{backend} is not a backend of VIP {vip} (its backends: {})", list(.backends))]
    NotABackend {
        vip: VipId,
        backend: IpAddr,
        backends: Vec<IpAddr>,
    },
    #[error("unknown backend {backend}: no VIP lists it")]
    UnknownBackend { backend: IpAddr },
    #[error("{backend} is not drained for {}", scope(*.vip))]
    NotDrained { vip: Option<VipId>, backend: IpAddr },
    #[error("{backend} has no weight override for {}", scope(*.vip))]
    NoWeightOverride { vip: Option<VipId>, backend: IpAddr },
    #[error("give either a weight or clear, not both")]
    WeightAndClear,
    #[error("give a weight (0..={MAX_WEIGHT}) or clear")]
    NoWeight,
    #[error("weight {weight} is out of range 0..={MAX_WEIGHT}")]
    WeightOutOfRange { weight: i64 },
    #[error("this agent announces nothing: its config has no [bgp] section")]
    NoBgp,
    #[error(transparent)]
    Flow(#[from] FlowParseError),
    #[error("writing the maps")]
    Publish(#[source] Box<DataplaneError>),
    #[error("reading the counters")]
    Counters(#[source] Box<DataplaneError>),
}
