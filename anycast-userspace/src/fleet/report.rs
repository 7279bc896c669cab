//! What an edge reports to the fleet, what `anycast fleet status` concludes from the reports,
//! and the fleet-wide health rule.
//!
//! **Health rule.** A backend is down for the fleet when a strict majority of the live edges
//! that check it report it down; otherwise (ties included) it is up. Every edge computes the
//! verdict from the same reports, so an edge that alone cannot reach a backend (a broken link on
//! its side) does not drop it from its table while the others keep it: the tables stay identical,
//! and flows that move between edges keep their backend. A backend that is really down is seen
//! down by every edge and leaves every table. Ties count as up because removing a backend moves
//! flows (on every edge at once); with two edges disagreeing, neither view is more likely right,
//! and the edge whose view is wrong about a dead backend loses only what it would have lost anyway.
//! An edge's own view is still reported (`health` in its report) and shown by `fleet status`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::VipId;

/// A verdict of one edge's own checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    pub vip: VipId,
    pub backend: IpAddr,
    pub healthy: bool,
}

/// A document this edge refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub revision: i64,
    pub error: String,
}

/// One edge's report, kept under its lease at `{prefix}/edges/{edge}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeReport {
    pub edge: String,
    pub pop: String,
    /// The fleet revision whose document this edge runs (0: none, it runs its file).
    pub applied_revision: i64,
    /// Per VIP label: the fingerprint of the Maglev table the dataplane runs (health applied).
    pub fingerprints: BTreeMap<String, Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refused>,
    /// What this edge's own checks see down (its vote, also at `{prefix}/health/{edge}`).
    #[serde(default)]
    pub health: Vec<HealthView>,
    /// The VIP prefixes this edge announces over BGP (empty without `[bgp]`).
    #[serde(default)]
    pub announced: Vec<String>,
    /// Times this edge lost etcd since it started.
    #[serde(default)]
    pub etcd_outages: u64,
}

/// One edge's vote, kept under its lease at `{prefix}/health/{edge}`: the checked backends its
/// own checks see down (healthy is the default, so the key stays small at any fleet size and
/// changes only when a verdict does). Every live edge writes one, empty or not: the number of
/// these keys is the number of voters. Every edge runs the same document, so every live edge
/// checks the same backends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub edge: String,
    pub down: Vec<(VipId, IpAddr)>,
}

/// The (VIP, backend) pairs that are down for the fleet: seen down by a strict majority of the
/// voters (module docs).
pub fn fleet_down(votes: &[HealthReport]) -> BTreeSet<(VipId, IpAddr)> {
    let mut count: BTreeMap<(VipId, IpAddr), usize> = BTreeMap::new();
    for v in votes {
        for k in v.down.iter().collect::<BTreeSet<_>>() {
            *count.entry(*k).or_default() += 1;
        }
    }
    count
        .into_iter()
        .filter(|(_, n)| n * 2 > votes.len())
        .map(|(k, _)| k)
        .collect()
}

/// What `fleet status` says about one edge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    pub edge: String,
    /// Behind the document's revision.
    pub lagging: bool,
    /// VIPs whose fingerprint differs from the most common one among the edges at the same
    /// revision.
    pub fingerprint_differs: Vec<String>,
}

impl Assessment {
    pub fn ok(&self) -> bool {
        !self.lagging && self.fingerprint_differs.is_empty()
    }
}

/// Flags edges behind `current` (the document's revision) and edges whose table for a VIP
/// differs from the others' at the same revision (the most common fingerprint wins; a tie
/// flags every side, since nothing says which is right).
pub fn assess(reports: &[EdgeReport], current: i64) -> Vec<Assessment> {
    let mut counts: BTreeMap<(i64, &str, Option<&str>), usize> = BTreeMap::new();
    for r in reports {
        for (vip, fp) in &r.fingerprints {
            *counts
                .entry((r.applied_revision, vip.as_str(), fp.as_deref()))
                .or_default() += 1;
        }
    }
    reports
        .iter()
        .map(|r| {
            let fingerprint_differs = r
                .fingerprints
                .iter()
                .filter(|(vip, fp)| {
                    let mine = counts[&(r.applied_revision, vip.as_str(), fp.as_deref())];
                    counts.iter().any(|(&(rev, v, f), &n)| {
                        rev == r.applied_revision
                            && v == vip.as_str()
                            && f != fp.as_deref()
                            && n >= mine
                    })
                })
                .map(|(vip, _)| vip.clone())
                .collect();
            Assessment {
                edge: r.edge.clone(),
                lagging: r.applied_revision < current,
                fingerprint_differs,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(name: &str, rev: i64, fp: &str) -> EdgeReport {
        EdgeReport {
            edge: name.into(),
            pop: "ams".into(),
            applied_revision: rev,
            fingerprints: [("203.0.113.10:80/tcp".to_string(), Some(fp.to_string()))].into(),
            ..Default::default()
        }
    }

    fn vip() -> VipId {
        "203.0.113.10:80/tcp".parse().unwrap()
    }

    #[test]
    fn an_edge_with_another_table_at_the_same_revision_is_flagged_and_a_late_one_lags() {
        let reports = [
            edge("a", 5, "aa"),
            edge("b", 5, "aa"),
            edge("c", 5, "cc"),
            edge("d", 4, "dd"),
        ];
        let a = assess(&reports, 5);
        assert!(a[0].ok() && a[1].ok(), "{a:?}");
        assert_eq!(
            a[2].fingerprint_differs,
            vec!["203.0.113.10:80/tcp".to_string()]
        );
        assert!(!a[2].lagging);
        assert!(a[3].lagging, "behind the document");
        assert!(a[3].fingerprint_differs.is_empty(), "alone at its revision");
        let tie = assess(&[edge("a", 5, "aa"), edge("b", 5, "bb")], 5);
        assert!(!tie[0].ok() && !tie[1].ok(), "a tie flags both: {tie:?}");
    }

    #[test]
    fn a_backend_is_down_for_the_fleet_only_when_a_majority_of_the_edges_see_it_down() {
        let b = |s: &str| -> (VipId, IpAddr) { (vip(), s.parse().unwrap()) };
        let vote = |edge: &str, down: &[&str]| HealthReport {
            edge: edge.into(),
            down: down.iter().map(|d| b(d)).collect(),
        };
        let three = [
            vote("a", &["198.18.10.2", "198.18.10.3"]),
            vote("b", &["198.18.10.3"]),
            vote("c", &[]),
        ];
        let down = fleet_down(&three);
        assert!(!down.contains(&b("198.18.10.2")), "1 of 3 down: up");
        assert!(down.contains(&b("198.18.10.3")), "2 of 3 down: down");
        assert!(
            fleet_down(&three[..2]).contains(&b("198.18.10.3")),
            "2 of 2"
        );
        assert!(
            !fleet_down(&three[..2]).contains(&b("198.18.10.2")),
            "a tie is up"
        );
        assert!(
            fleet_down(&three[..1]).contains(&b("198.18.10.2")),
            "a fleet of one"
        );
        let twice = [
            vote("a", &["198.18.10.2", "198.18.10.2"]),
            vote("b", &[]),
            vote("c", &[]),
        ];
        assert!(fleet_down(&twice).is_empty(), "one edge is one vote");
    }
}
