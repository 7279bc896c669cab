//! The announcement policy: what to announce, given the agent's status (pure), and the gate a
//! withdrawn prefix passes to be announced anew.

use super::*;
use crate::proto::Health;

/// What the policy wants for one prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Want {
    pub announce: bool,
    pub reason: String,
    /// `Some(why)`: the prefix qualifies, but some of its backends' health is not settled yet
    /// (pending a first check, a restored verdict not yet confirmed, a rise or fall under way):
    /// a prefix that is withdrawn stays withdrawn until it settles ([`gate`]); one that is
    /// announced stays announced.
    pub settling: Option<String>,
}

/// What the policy wants for every VIP address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub prefixes: BTreeMap<IpAddr, Want>,
    /// The agent is stopping: withdraw everything, then stop.
    pub last: bool,
}

/// Why a VIP does or does not qualify for announcement (`Ok` = qualifies, with a reason too).
pub(super) fn vip_verdict(v: &VipStatus, attached: bool, min: u32) -> Result<String, String> {
    if !attached {
        return Err("program not attached".into());
    }
    if v.fingerprint.is_none() {
        return Err("no table written".into());
    }
    let in_table = |b: &&crate::proto::BackendStatus| b.weight_effective > 0 && b.slots > 0;
    let healthy = v
        .backends
        .iter()
        .filter(in_table)
        .filter(|b| matches!(b.health, Health::Healthy | Health::Unchecked))
        .count();
    let pending = v
        .backends
        .iter()
        .filter(in_table)
        .filter(|b| b.health == Health::Pending)
        .count();
    let pending = if pending > 0 {
        format!(" ({pending} pending a first check)")
    } else {
        String::new()
    };
    let n = v.backends.len();
    if (healthy as u64) < u64::from(min) {
        return Err(format!(
            "{healthy} of {n} backends healthy{pending}, fewer than bgp.min_healthy_backends = {min}"
        ));
    }
    Ok(format!("{healthy} of {n} backends healthy{pending}"))
}

/// Each VIP label on an address with its verdict (`Ok`: qualifies, with the reason too).
type Verdicts = Vec<(String, Result<String, String>)>;

/// The policy; see the module docs.
pub fn desired(status: &Status, min_healthy: u32, edge_drained: bool, stopping: bool) -> Desired {
    let attached = !status.program.interfaces.is_empty();
    let mut by_addr: BTreeMap<IpAddr, Verdicts> = BTreeMap::new();
    let mut unsettled: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for v in &status.vips {
        by_addr
            .entry(v.vip.address)
            .or_default()
            .push((v.vip.to_string(), vip_verdict(v, attached, min_healthy)));
        *unsettled.entry(v.vip.address).or_default() +=
            v.backends.iter().filter(|b| !b.health_settled).count();
    }
    let prefixes = by_addr
        .into_iter()
        .map(|(a, verdicts)| {
            let several = verdicts.len() > 1;
            let label = |vip: &str, r: &str| {
                if several {
                    format!("{vip}: {r}")
                } else {
                    r.to_owned()
                }
            };
            let no = |reason: String| Want {
                announce: false,
                reason,
                settling: None,
            };
            let want = if stopping {
                no("agent stopping".into())
            } else if edge_drained {
                no("edge drained (anycast drain-edge)".into())
            } else if let Some((vip, Err(r))) = verdicts.iter().find(|(_, r)| r.is_err()) {
                no(label(vip, r))
            } else {
                let n = unsettled.get(&a).copied().unwrap_or(0);
                Want {
                    announce: true,
                    reason: verdicts
                        .iter()
                        .map(|(vip, r)| label(vip, r.as_deref().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join("; "),
                    settling: (n > 0).then(|| {
                        format!(
                            "waiting for the health checks of {n} backend{} to settle",
                            if n == 1 { "" } else { "s" }
                        )
                    }),
                }
            };
            (a, want)
        })
        .collect();
    Desired {
        prefixes,
        last: stopping,
    }
}

/// The longest a prefix waits for its backends' health to settle ([`gate`]): a backend whose
/// checks keep flapping must not keep a VIP off the air.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Whether a prefix goes to BIRD as announced, and why: the policy's [`Want`] through the gate.
///
/// - No BGP session established (`sessions_up == false`): withdrawn, so that the prefix is
///   announced again through this gate when a session returns, not the instant BGP comes back
///   with whatever table the edge has then (after a link outage its health view is usually in
///   the middle of changing).
/// - A prefix not announced now (`on == false`) is announced only once its backends' health is
///   settled (`want.settling` is `None`), or after it has waited [`SETTLE_LIMIT`]
///   (`waited`): the table it is announced with is the one it will keep.
/// - An announced prefix stays announced while it qualifies, settled or not.
pub fn gate(want: &Want, on: bool, sessions_up: bool, waited: Duration) -> (bool, String) {
    if !want.announce {
        return (false, want.reason.clone());
    }
    if !sessions_up {
        return (false, "no BGP session established".into());
    }
    if !on
        && let Some(why) = &want.settling
        && waited < SETTLE_LIMIT
    {
        return (false, why.clone());
    }
    (true, want.reason.clone())
}
