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
/// `ring_size` must be prime (validated in the config), at most 2^31, and backend addresses
/// distinct.
///
/// Each claim takes the first free slot on the claimer's permutation, searching on from its
/// previous claim (from `offset` for the first). How that slot is found changes as the table
/// fills, never which slot it is (the test `build_matches_the_reference_walk` compares with the
/// plain walk, one slot at a time): while under 30% of the slots are taken, walk two slots per
/// step; up to 80%, test four at a time without branching on which is free (a branch per slot
/// is mispredicted about every other claim there); then two per step again; and once fewer
/// than about `sqrt(ring_size)` slots are free, where a walk costs about `ring_size / free`
/// probes per claim, count the steps to each free slot instead (`Fill::scan`). Timings:
/// BENCHMARKS.md, "Maglev table build".
pub fn build(backends: &[MaglevBackend], ring_size: u32, seed: u32) -> Vec<u32> {
    assert!(ring_size >= 2, "ring_size {ring_size} is too small");
    // Slots are u32 and `slot + skip` (< 2 ring_size) must not wrap; see `Stride`.
    assert!(ring_size <= 1 << 31, "ring_size {ring_size} is too large");
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
    let cursors = sorted
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| {
            let (w, n) = b.words();
            let skip = murmur3_words(s2, &w[..n]) % (m - 1) + 1;
            Cursor {
                pos: murmur3_words(s1, &w[..n]) % m,
                skip,
                skip2: Stride::new(skip, m).from(skip),
                index: i as u32,
                weight: b.weight,
                carry: 0,
            }
        })
        .collect();
    let mut fill = Fill {
        m,
        wmax,
        cursors,
        next: 0,
        taken: vec![0; m.div_ceil(64) as usize],
        table: vec![EMPTY; m as usize],
        free: m,
    };
    // Free slots left after `tenths` tenths of the table are taken.
    let free_after = |tenths: u64| (u64::from(m) - u64::from(m) * tenths / 10) as u32;
    let scan_below = m.isqrt().min(m - 1);
    fill.walk::<false>(free_after(3).max(scan_below));
    fill.walk::<true>(free_after(8).max(scan_below));
    fill.walk::<false>(scan_below);
    fill.scan();
    fill.table
}

/// A slot no backend holds yet, while the table is being built.
const EMPTY: u32 = u32::MAX;

/// One weighted backend's place on its permutation `offset + j * skip mod M`.
struct Cursor {
    /// The slot it claimed last, or `offset` before its first claim; every slot before this one
    /// on the permutation is taken.
    pos: u32,
    skip: u32,
    /// `2 * skip mod M`, to test two slots per step.
    skip2: u32,
    /// Index into the canonical order.
    index: u32,
    weight: u32,
    /// `round * weight mod wmax`.
    carry: u32,
}

impl Cursor {
    /// Whether this backend claims a slot in the current round (and moves it to the next).
    /// `floor((r+1) w / wmax) - floor(r w / wmax)` is 0 or 1 as `w <= wmax`, and 1 exactly when
    /// `(r w mod wmax) + w >= wmax`; `carry < wmax - w` is that test without overflow.
    #[inline(always)]
    fn claims(&mut self, wmax: u32) -> bool {
        let gap = wmax - self.weight;
        if self.carry < gap {
            self.carry += self.weight;
            false
        } else {
            self.carry -= gap;
            true
        }
    }
}

/// A step of `s` slots around a ring of `m <= 2^31` slots, kept as `s` and `s - m` (wrapping):
/// from a slot `p < m` the next one is `min(p + s, p + s - m)`, since when `p + s < m` the
/// second sum wraps to at least 2^31. Two independent additions and a `min` compile to a
/// conditional move; `p + s` then `- m` when too big made each probe wait on a longer
/// dependency chain, or became a branch taken at random.
#[derive(Clone, Copy)]
struct Stride {
    s: u32,
    s_minus_m: u32,
}

impl Stride {
    #[inline(always)]
    fn new(s: u32, m: u32) -> Self {
        Self {
            s,
            s_minus_m: s.wrapping_sub(m),
        }
    }

    #[inline(always)]
    fn from(self, p: u32) -> u32 {
        p.wrapping_add(self.s).min(p.wrapping_add(self.s_minus_m))
    }
}

/// The table under construction.
struct Fill {
    m: u32,
    wmax: u32,
    cursors: Vec<Cursor>,
    /// The cursor whose turn is next in the current round.
    next: usize,
    /// One bit per slot, set when the slot is taken: 8 KiB at M = 65537, where the table itself
    /// (256 KiB) would not stay in the L1 cache.
    taken: Vec<u64>,
    table: Vec<u32>,
    free: u32,
}

#[inline(always)]
fn is_taken(taken: &[u64], p: u32) -> bool {
    taken[(p >> 6) as usize] & (1 << (p & 63)) != 0
}

impl Fill {
    /// Claims slots in round order by walking each claimer's permutation to its first free
    /// slot, until `until` slots are free. `FOUR`: four slots per step, see [`first_free4`].
    #[inline(always)]
    fn walk<const FOUR: bool>(&mut self, until: u32) {
        // Locals rather than fields, so that the hot loop keeps them in registers.
        let Fill {
            m,
            wmax,
            cursors,
            next,
            taken,
            table,
            free,
        } = self;
        let (m, wmax) = (*m, *wmax);
        let (taken, table) = (&mut taken[..], &mut table[..]);
        let mut left = *free;
        let mut start = *next;
        while left > until {
            for (i, c) in cursors[start..].iter_mut().enumerate() {
                if !c.claims(wmax) {
                    continue;
                }
                let p = if FOUR {
                    first_free4(taken, c, m)
                } else {
                    first_free2(taken, c, m)
                };
                taken[(p >> 6) as usize] |= 1 << (p & 63);
                table[p as usize] = c.index;
                c.pos = p;
                left -= 1;
                if left == until {
                    *free = left;
                    *next = start + i + 1;
                    return;
                }
            }
            start = 0;
        }
    }

    /// The last claims, once few slots are free. The first free slot on a permutation is the
    /// free slot `e` that is the fewest steps from the cursor, `(e - pos) * skip^-1 mod M`: one
    /// multiplication per free slot per claim instead of about `M / free` probes.
    fn scan(&mut self) {
        if self.free == 0 {
            return;
        }
        let m = self.m;
        let modulus = Modulus::new(m);
        let mut open_slots = Vec::with_capacity(self.free as usize);
        for (w, &bits) in self.taken.iter().enumerate() {
            let mut open = !bits;
            while open != 0 {
                let p = w as u32 * 64 + open.trailing_zeros();
                if p < m {
                    open_slots.push(p);
                }
                open &= open - 1;
            }
        }
        // Computed on a backend's first claim here; 0: not yet (no inverse is 0).
        let mut inverses = vec![0u32; self.cursors.len()];
        let mut i = self.next;
        loop {
            if i == self.cursors.len() {
                i = 0;
            }
            let c = &mut self.cursors[i];
            let inv = &mut inverses[i];
            i += 1;
            if !c.claims(self.wmax) {
                continue;
            }
            if *inv == 0 {
                *inv = inverse(c.skip, m).unwrap_or(0);
            }
            let k = if *inv != 0 {
                let (pos, inv) = (c.pos, *inv);
                // Steps to each free slot, and where the slot is in `open_slots`; the steps are
                // distinct (multiplying by `inv` is a bijection mod M), so the minimum is unique.
                let mut best = u64::MAX;
                for (k, &e) in open_slots.iter().enumerate() {
                    let steps = modulus.mul(e + (m - pos), inv);
                    best = best.min(u64::from(steps) << 32 | k as u64);
                }
                best as u32 as usize
            } else {
                // `skip` shares a factor with M, so M is not prime: walk.
                let (mut p, s) = (c.pos, Stride::new(c.skip, m));
                while is_taken(&self.taken, p) {
                    p = s.from(p);
                }
                open_slots
                    .iter()
                    .position(|&e| e == p)
                    .expect("a free slot")
            };
            let p = open_slots.swap_remove(k);
            self.taken[(p >> 6) as usize] |= 1 << (p & 63);
            self.table[p as usize] = c.index;
            c.pos = p;
            if open_slots.is_empty() {
                return;
            }
        }
    }
}

/// The first free slot on `c`'s permutation from `c.pos` on, two slots per step: the next
/// slot and the one after are both computed from the current one, so the chain of dependent
/// additions is half as long.
#[inline(always)]
fn first_free2(taken: &[u64], c: &Cursor, m: u32) -> u32 {
    let (s1, s2) = (Stride::new(c.skip, m), Stride::new(c.skip2, m));
    let mut p = c.pos;
    loop {
        if !is_taken(taken, p) {
            return p;
        }
        let p1 = s1.from(p);
        if !is_taken(taken, p1) {
            return p1;
        }
        p = s2.from(p);
    }
}

/// As [`first_free2`], testing four slots per step and picking the first free one of them
/// without a branch: when about half the slots are taken, a branch per slot is mispredicted
/// about once per claim, and four tests cost less than that.
#[inline(always)]
fn first_free4(taken: &[u64], c: &Cursor, m: u32) -> u32 {
    let (s1, s2) = (c.skip, c.skip2);
    let s3 = Stride::new(s2, m).from(s1);
    let s4 = Stride::new(s2, m).from(s2);
    let [s1, s2, s3, s4] = [s1, s2, s3, s4].map(|s| Stride::new(s, m));
    let mut p = c.pos;
    loop {
        let (p1, p2, p3) = (s1.from(p), s2.from(p), s3.from(p));
        let four = u32::from(is_taken(taken, p))
            | u32::from(is_taken(taken, p1)) << 1
            | u32::from(is_taken(taken, p2)) << 2
            | u32::from(is_taken(taken, p3)) << 3;
        if four == 0b1111 {
            p = s4.from(p);
            continue;
        }
        let k = (!four).trailing_zeros();
        let (even, odd) = if k & 1 == 0 { (p, p2) } else { (p1, p3) };
        return if k & 2 == 0 { even } else { odd };
    }
}

/// `a * b mod m` by Barrett reduction with `mu = floor((2^64 - 1) / m)`, for `a * b < 2^63`:
/// the estimated quotient is then at most one too small.
#[derive(Clone, Copy)]
struct Modulus {
    m: u64,
    mu: u64,
}

impl Modulus {
    fn new(m: u32) -> Self {
        Self {
            m: u64::from(m),
            mu: u64::MAX / u64::from(m),
        }
    }

    #[inline(always)]
    fn mul(self, a: u32, b: u32) -> u32 {
        let x = u64::from(a) * u64::from(b);
        let q = ((u128::from(x) * u128::from(self.mu)) >> 64) as u64;
        let r = x - q * self.m;
        r.min(r.wrapping_sub(self.m)) as u32
    }
}

/// `a^-1 mod m` (extended Euclid), if `gcd(a, m) == 1`.
fn inverse(a: u32, m: u32) -> Option<u32> {
    let (mut r0, mut r1) = (m, a);
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - i64::from(q) * t1);
    }
    (r0 == 1).then(|| t0.rem_euclid(i64::from(m)) as u32)
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
        // Generous so a debug build on a loaded CI machine passes; release takes about 1 ms.
        assert!(
            took.as_secs_f64() < if cfg!(debug_assertions) { 2.0 } else { 0.05 },
            "took {took:?}"
        );
    }

    /// The build as first written, kept as the definition [`build`] must match: claims per
    /// round from the floors of the weights, and each claim walks its permutation one slot at a
    /// time, with the table itself recording which slots are taken.
    fn reference_build(backends: &[MaglevBackend], ring_size: u32, seed: u32) -> Vec<u32> {
        let sorted = canonical_order(backends);
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
        let mut table = vec![EMPTY; m as usize];
        let mut filled = 0u32;
        let wmax = u64::from(wmax);
        let mut round = 0u64;
        'rounds: loop {
            for c in &mut cursors {
                let claims = (round + 1) * c.weight / wmax - round * c.weight / wmax;
                for _ in 0..claims {
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

    /// Weights for 1..=2000 backends: all equal, small, up to the config's maximum, or any u32
    /// (zeros included, so some backends are drained).
    fn weight_lists() -> impl Strategy<Value = Vec<u32>> {
        let n = 1usize..=2000;
        prop_oneof![
            n.clone().prop_map(|n| vec![1; n]),
            proptest::collection::vec(0u32..5, n.clone()),
            proptest::collection::vec(0u32..=65_535, n.clone()),
            proptest::collection::vec(any::<u32>(), n),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Every phase of [`build`] (walks two and four slots per step, the scan of the last
        /// free slots) takes the slot the one-slot walk takes, for any ring size from 2 up,
        /// backend count, weights and families.
        #[test]
        fn build_matches_the_reference_walk(
            ring_size in proptest::sample::select(vec![2u32, 3, 7, 13, 251, 257, 1009, 4099, 65521, 65537]),
            seed in any::<u32>(),
            weights in weight_lists(),
            families in any::<u64>(),
            base4 in any::<u32>(),
            base6 in any::<u128>(),
        ) {
            let backends: Vec<_> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let address = if families >> (i % 64) & 1 == 0 {
                        IpAddr::V4(Ipv4Addr::from(base4.wrapping_add((i as u32).wrapping_mul(0x9e37_79b1))))
                    } else {
                        IpAddr::V6(Ipv6Addr::from(base6.wrapping_add(i as u128)))
                    };
                    MaglevBackend::new(address, w)
                })
                .collect();
            prop_assert_eq!(build(&backends, ring_size, seed), reference_build(&backends, ring_size, seed));
        }
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
