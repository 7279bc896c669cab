//! Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4).
//!
//! [`build`] is a pure function of the backend *set*, the table size and the seed, so every edge
//! computes the same table from the same configuration:
//!
//! * **Canonical order.** Backends are sorted by `(family, address bytes)` ([`canonical_order`]);
//!   the table holds, per slot, an index into that sorted list. The order in which backends are
//!   listed in the config therefore never matters.
//! * **Permutation.** Backend `i` prefers slots `(offset_i + j * skip_i) mod M` for `j = 0, 1, ...`
//!   with `offset = h1 mod M` and `skip = h2 mod (M - 1) + 1` (M prime, so every skip visits every
//!   slot). `h1`/`h2` are [`murmur3_words`] over the words `[family, address words...]` (an IPv4
//!   address is one little-endian word of its bytes, IPv6 four), with the seeds
//!   `murmur3_words(hash_seed, &[1])` and `murmur3_words(hash_seed, &[2])`: two independent
//!   functions, both determined by the configured `hash_seed`.
//! * **Weights** are plain ratios. The build proceeds in rounds; in round `r` (from 0) a backend
//!   of weight `w` claims `floor((r+1) w / wmax) - floor(r w / wmax)` slots, each time its next
//!   preferred free slot. So the heaviest backends claim one slot per round (which is exactly the
//!   paper's unweighted algorithm when all weights are equal), a backend of half the weight one
//!   every other round, and weight 0 claims nothing (drained).
//! * No backend with a non-zero weight => empty table (the VIP has no table, packets dropped).
//!
//! Balance: after R full rounds backend i holds `floor(R w_i / wmax)` slots, so its count is
//! within about one slot plus `N w_i / W` slots of its fair share `M w_i / W` (W = sum of
//! weights). See the tests for the criteria that are asserted.

use std::net::IpAddr;

use anycast_common::hash::{addr_word_v4, addr_words_v6, murmur3_words};
use anycast_common::{FAMILY_V4, FAMILY_V6};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevBackend {
    /// [`FAMILY_V4`] or [`FAMILY_V6`]; first in the canonical sort order.
    pub family: u8,
    /// Address bytes; IPv4 uses the first four, the rest are zero.
    pub addr: [u8; 16],
    pub weight: u32,
}

impl MaglevBackend {
    pub fn new(address: IpAddr, weight: u32) -> Self {
        let (family, addr) = addr_key(address);
        Self {
            family,
            addr,
            weight,
        }
    }

    pub fn address(&self) -> IpAddr {
        key_addr(self.family, self.addr)
    }

    fn words(&self) -> ([u32; 5], usize) {
        let mut w = [u32::from(self.family), 0, 0, 0, 0];
        if self.family == FAMILY_V4 {
            w[1] = addr_word_v4([self.addr[0], self.addr[1], self.addr[2], self.addr[3]]);
            (w, 2)
        } else {
            w[1..5].copy_from_slice(&addr_words_v6(self.addr));
            (w, 5)
        }
    }
}

/// `(family, 16 address bytes)` as the shared types store an address.
pub fn addr_key(address: IpAddr) -> (u8, [u8; 16]) {
    match address {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    }
}

pub fn key_addr(family: u8, addr: [u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(addr)
    }
}

/// The two permutation seeds derived from the configured hash seed.
pub fn permutation_seeds(hash_seed: u32) -> (u32, u32) {
    (
        murmur3_words(hash_seed, &[1]),
        murmur3_words(hash_seed, &[2]),
    )
}

/// `backends` sorted into the canonical order that [`build`]'s indexes refer to.
pub fn canonical_order(backends: &[MaglevBackend]) -> Vec<MaglevBackend> {
    let mut v = backends.to_vec();
    v.sort_by_key(|b| (b.family, b.addr));
    v
}

/// Builds the table: for each of the `ring_size` slots, an index into
/// [`canonical_order`]`(backends)`. Empty when no backend has a non-zero weight.
///
/// `ring_size` must be prime (validated in the config) and backend addresses distinct.
pub fn build(backends: &[MaglevBackend], ring_size: u32, seed: u32) -> Vec<u32> {
    assert!(ring_size >= 2, "ring_size {ring_size} is too small");
    let sorted = canonical_order(backends);
    debug_assert!(
        sorted
            .windows(2)
            .all(|w| (w[0].family, w[0].addr) != (w[1].family, w[1].addr))
    );
    let wmax = sorted.iter().map(|b| b.weight).max().unwrap_or(0);
    if wmax == 0 {
        return Vec::new();
    }
    let m = ring_size;
    let (s1, s2) = permutation_seeds(seed);

    struct Cursor {
        index: u32,
        weight: u64,
        pos: u32,
        skip: u32,
    }
    let mut cursors: Vec<Cursor> = sorted
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| {
            let (w, n) = b.words();
            Cursor {
                index: i as u32,
                weight: u64::from(b.weight),
                pos: murmur3_words(s1, &w[..n]) % m,
                skip: murmur3_words(s2, &w[..n]) % (m - 1) + 1,
            }
        })
        .collect();

    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0u32;
    let wmax = u64::from(wmax);
    let mut round = 0u64;
    'rounds: loop {
        for c in &mut cursors {
            let claims = (round + 1) * c.weight / wmax - round * c.weight / wmax;
            for _ in 0..claims {
                // The permutation visits every slot, and a free one exists while filled < m.
                while table[c.pos as usize] != EMPTY {
                    c.pos += c.skip;
                    if c.pos >= m {
                        c.pos -= m;
                    }
                }
                table[c.pos as usize] = c.index;
                filled += 1;
                if filled == m {
                    break 'rounds;
                }
            }
        }
        round += 1;
    }
    table
}

/// Slots held by each backend (indexed like [`canonical_order`]).
pub fn slot_counts(table: &[u32], backends: usize) -> Vec<u32> {
    let mut counts = vec![0u32; backends];
    for &i in table {
        counts[i as usize] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const M: u32 = 65537;

    fn v4(i: u32, weight: u32) -> MaglevBackend {
        MaglevBackend::new(IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)), weight)
    }

    fn v6(i: u32, weight: u32) -> MaglevBackend {
        MaglevBackend::new(
            IpAddr::V6(Ipv6Addr::from(
                0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
            )),
            weight,
        )
    }

    /// Largest `|slots - expected| / expected` over backends, and largest absolute error in slots.
    fn imbalance(backends: &[MaglevBackend], table: &[u32]) -> (f64, f64) {
        let sorted = canonical_order(backends);
        let counts = slot_counts(table, sorted.len());
        let total: f64 = sorted.iter().map(|b| f64::from(b.weight)).sum();
        let mut rel: f64 = 0.0;
        let mut abs: f64 = 0.0;
        for (b, &c) in sorted.iter().zip(&counts) {
            let expected = f64::from(table.len() as u32) * f64::from(b.weight) / total;
            if b.weight == 0 {
                assert_eq!(c, 0, "a weight-0 backend holds slots");
                continue;
            }
            let err = (f64::from(c) - expected).abs();
            rel = rel.max(err / expected);
            abs = abs.max(err);
        }
        (rel, abs)
    }

    fn mixed(n: u32) -> Vec<MaglevBackend> {
        // Weights 1..=4, v4 and v6 interleaved.
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    v4(i, 1 + i % 4)
                } else {
                    v6(i, 1 + i % 4)
                }
            })
            .collect()
    }

    #[test]
    fn every_slot_is_filled_with_a_valid_index() {
        let b = mixed(37);
        let t = build(&b, M, 42);
        assert_eq!(t.len(), M as usize);
        assert!(t.iter().all(|&i| (i as usize) < b.len()));
    }

    #[test]
    fn no_weighted_backend_means_no_table() {
        assert!(build(&[], M, 1).is_empty());
        assert!(build(&[v4(1, 0), v6(2, 0)], M, 1).is_empty());
    }

    #[test]
    fn drained_backends_get_nothing_and_others_share() {
        let b = vec![v4(1, 1), v4(2, 0), v4(3, 1)];
        let t = build(&b, 101, 9);
        let counts = slot_counts(&t, 3);
        // canonical order equals listing order here
        assert_eq!(counts[1], 0);
        assert_eq!(counts[0] + counts[2], 101);
        assert!(counts[0].abs_diff(counts[2]) <= 1);
    }

    /// The paper's regime, M >= 100 N: every backend's slot count is within 1% of its weight
    /// share, |slots - M w / W| <= 0.01 * M w / W.
    #[test]
    fn shares_within_one_percent_when_ring_is_100x_backends() {
        for n in [1u32, 2, 10, 100, 500] {
            for (label, b) in [
                ("equal", (0..n).map(|i| v4(i, 7)).collect::<Vec<_>>()),
                ("mixed", mixed(n)),
            ] {
                let t = build(&b, M, 42);
                let (rel, _) = imbalance(&b, &t);
                assert!(rel <= 0.01, "N={n} {label}: imbalance {rel:.4} > 1%");
            }
        }
    }

    /// Up to N = 1000 (M = 65537 < 100 N, outside the paper's guarantee): a backend at N=1000
    /// holds ~65 slots, where one slot alone is 1.5%, so the honest criterion is the 1% share
    /// error plus one slot of integer rounding: |slots - E| <= 0.01 E + 1. With equal weights the
    /// counts differ by at most one slot, which keeps it within 1% of E itself.
    #[test]
    fn shares_within_one_percent_plus_one_slot_up_to_1000_backends() {
        for n in [1u32, 2, 10, 100, 1000] {
            let b = mixed(n);
            let t = build(&b, M, 7);
            let sorted = canonical_order(&b);
            let counts = slot_counts(&t, sorted.len());
            let total: f64 = sorted.iter().map(|b| f64::from(b.weight)).sum();
            for (bk, &c) in sorted.iter().zip(&counts) {
                let e = f64::from(M) * f64::from(bk.weight) / total;
                assert!(
                    (f64::from(c) - e).abs() <= 0.01 * e + 1.0,
                    "N={n}: {c} slots, expected {e:.1}"
                );
            }
            let eq: Vec<_> = (0..n).map(|i| v6(i, 1)).collect();
            let counts = slot_counts(&build(&eq, M, 7), n as usize);
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "N={n} equal weights: counts {lo}..{hi}");
            let e = f64::from(M) / f64::from(n);
            assert!(
                (f64::from(*lo) - e).abs() <= 0.01 * e && (f64::from(*hi) - e).abs() <= 0.01 * e
            );
        }
    }

    fn moved(a: &[MaglevBackend], ta: &[u32], b: &[MaglevBackend], tb: &[u32]) -> f64 {
        let (sa, sb) = (canonical_order(a), canonical_order(b));
        let changed = ta
            .iter()
            .zip(tb)
            .filter(|&(&x, &y)| sa[x as usize].addr != sb[y as usize].addr)
            .count();
        changed as f64 / ta.len() as f64
    }

    /// Removing one of N backends must move its own 1/N of the slots and little else. The
    /// "collateral" beyond 1/N is inherent to Maglev and peaks around N = 100..300 at about 1% of
    /// the table (measured: up to 1.09% at N = 100), so the bound is 1/N + 1.5% there; at
    /// N = 1000 it is 1/N + 1% (the reference figure for M = 65537, N = 1000 is 0.67% moved).
    #[test]
    fn removing_one_backend_moves_about_one_nth() {
        for n in [10u32, 100, 1000] {
            let all: Vec<_> = (0..n).map(|i| v4(i, 1)).collect();
            let t_all = build(&all, M, 42);
            let fewer: Vec<_> = all
                .iter()
                .copied()
                .filter(|b| *b != all[(n / 2) as usize])
                .collect();
            let t_fewer = build(&fewer, M, 42);
            let frac = moved(&all, &t_all, &fewer, &t_fewer);
            let bound = 1.0 / f64::from(n) + if n >= 1000 { 0.01 } else { 0.015 };
            assert!(
                frac >= 1.0 / f64::from(n) * 0.95,
                "N={n}: only {frac:.4} moved"
            );
            assert!(
                frac <= bound,
                "N={n}: {frac:.4} of slots moved, bound {bound:.4}"
            );
        }
    }

    #[test]
    fn seed_changes_the_table() {
        let b = mixed(10);
        assert_ne!(build(&b, 1009, 1), build(&b, 1009, 2));
    }

    #[test]
    fn builds_65537_x_1000_fast() {
        let b = mixed(1000);
        let start = std::time::Instant::now();
        let t = build(&b, M, 42);
        let took = start.elapsed();
        assert_eq!(t.len(), M as usize);
        // Generous so a debug build on a loaded CI machine passes; release takes a few ms.
        assert!(
            took.as_secs_f64() < if cfg!(debug_assertions) { 2.0 } else { 0.05 },
            "took {took:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn table_ignores_listing_order(
            ws in proptest::collection::vec(0u32..5, 1..40),
            seed in any::<u32>(),
            shuffle in any::<proptest::sample::Index>(),
            rot in any::<usize>(),
        ) {
            let b: Vec<_> = ws.iter().enumerate().map(|(i, &w)| if i % 3 == 0 { v6(i as u32, w) } else { v4(i as u32 * 17, w) }).collect();
            let mut shuffled = b.clone();
            shuffled.reverse();
            let k = rot % shuffled.len();
            shuffled.rotate_left(k);
            let j = shuffle.index(shuffled.len());
            shuffled.swap(0, j);
            prop_assert_eq!(build(&b, 1009, seed), build(&shuffled, 1009, seed));
        }

        #[test]
        fn weighted_shares_are_close(ws in proptest::collection::vec(1u32..10, 1..20), seed in any::<u32>()) {
            let b: Vec<_> = ws.iter().enumerate().map(|(i, &w)| v4(i as u32, w)).collect();
            let t = build(&b, M, seed);
            let (rel, _) = imbalance(&b, &t);
            prop_assert!(rel <= 0.01, "imbalance {}", rel);
        }
    }
}
