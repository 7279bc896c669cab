//! The flow hash: one seeded implementation for the BPF program and the host.
//!
//! Algorithm: MurmurHash3 x86_32 (Appleby, public domain) over a sequence of 32-bit words, the
//! word count folded in as the length. It needs only 32-bit multiplies, shifts and xors, which the
//! BPF JIT emits one-for-one, and it avalanches well enough that `hash % M` fills a Maglev table of
//! prime size evenly.
//!
//! The words are the flow's bytes exactly as they sit in the packet, read as little-endian `u32`
//! (that is what a plain 32-bit load does on the little-endian BPF target and on x86_64):
//!
//! | family | words |
//! |---|---|
//! | IPv4 | source address, destination address, ports, protocol |
//! | IPv6 | source address (4 words), destination address (4 words), ports, protocol |
//!
//! `ports` is the first four bytes of the TCP/UDP header (source port then destination port,
//! both big-endian on the wire) loaded as one word; `protocol` is the IP protocol number as a
//! word. Every edge must use the same seed (`hash_seed` in the agent config), or the same flow
//! lands on different backends through different edges.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(h: u32, words: u32) -> u32 {
    let mut h = h ^ (words * 4);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of an IPv4 flow. `src`/`dst` are the address bytes loaded as little-endian words.
#[inline(always)]
pub const fn flow_hash_v4(seed: u32, src: u32, dst: u32, ports: u32, proto: u8) -> u32 {
    let mut h = mix(seed, src);
    h = mix(h, dst);
    h = mix(h, ports);
    h = mix(h, proto as u32);
    finish(h, 4)
}

/// Hash of an IPv6 flow. Each address is four little-endian words of its bytes in order.
#[inline(always)]
pub const fn flow_hash_v6(seed: u32, src: &[u32; 4], dst: &[u32; 4], ports: u32, proto: u8) -> u32 {
    let mut h = mix(seed, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, ports);
    h = mix(h, proto as u32);
    finish(h, 10)
}

/// General MurmurHash3 x86_32 over whole words, for host-side uses (Maglev permutations) that
/// want the same primitive.
pub fn murmur3_words(seed: u32, words: &[u32]) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < words.len() {
        h = mix(h, words[i]);
        i += 1;
    }
    finish(h, words.len() as u32)
}

/// The `ports` word from host-order ports, as the program loads it from the packet.
#[inline(always)]
pub const fn ports_word(src_port: u16, dst_port: u16) -> u32 {
    let s = src_port.to_be_bytes();
    let d = dst_port.to_be_bytes();
    u32::from_le_bytes([s[0], s[1], d[0], d[1]])
}

/// Word view of an IPv4 address's bytes, as the program loads it from the packet.
#[inline(always)]
pub const fn addr_word_v4(octets: [u8; 4]) -> u32 {
    u32::from_le_bytes(octets)
}

/// Word view of an IPv6 address's bytes, as the program loads it from the packet.
#[inline(always)]
pub const fn addr_words_v6(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_le_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_le_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_le_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_le_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// Slot of a flow in a Maglev table of `ring_size` entries (`ring_size > 0`): the one rule for
/// the XDP program (`track::pick`, `decap::table_chance`) and the host's model of it
/// (`plan::model`).
#[inline(always)]
pub const fn ring_slot(hash: u32, ring_size: u32) -> u32 {
    hash % ring_size
}

/// UDP source port of a GUE packet: from the flow hash, in the dynamic range 49152..=65535, so
/// that receivers spreading by UDP ports (RSS) spread flows while one flow stays on one queue.
#[inline(always)]
pub const fn gue_source_port(hash: u32) -> u16 {
    0xc000 | ((hash ^ (hash >> 16)) as u16 & 0x3fff)
}

/// IPv6 flow label of an outer IPv6 header (RFC 6437: derived from the inner flow, never 0 so the
/// flow is labelled).
#[inline(always)]
pub const fn flow_label(hash: u32) -> u32 {
    let l = hash & 0x000f_ffff;
    if l == 0 { 1 } else { l }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values of MurmurHash3_x86_32 on byte strings (from the reference C++
    /// implementation, SMHasher), for inputs whose length is a multiple of four.
    #[test]
    fn murmur3_matches_reference_vectors() {
        assert_eq!(murmur3_words(0, &[]), 0);
        assert_eq!(murmur3_words(1, &[]), 0x514e_28b7);
        assert_eq!(murmur3_words(0xffff_ffff, &[]), 0x81f1_6f39);
        // "test" = 74 65 73 74
        assert_eq!(
            murmur3_words(0, &[u32::from_le_bytes(*b"test")]),
            0xba6b_d213
        );
        // "aaaa", seed 0x9747b28c
        assert_eq!(
            murmur3_words(0x9747_b28c, &[u32::from_le_bytes(*b"aaaa")]),
            0x5a97_808a
        );
        // "Hello, world!!!!" is not in the classic list; use "abcd" seed 0x9747b28c.
        assert_eq!(
            murmur3_words(0x9747_b28c, &[u32::from_le_bytes(*b"abcd")]),
            0xf0478627
        );
    }

    #[test]
    fn flow_hash_is_the_word_hash_of_the_documented_layout() {
        let src = addr_word_v4([198, 51, 100, 7]);
        let dst = addr_word_v4([203, 0, 113, 10]);
        let ports = ports_word(40000, 80);
        assert_eq!(
            flow_hash_v4(42, src, dst, ports, 6),
            murmur3_words(42, &[src, dst, ports, 6])
        );
        let s6 = addr_words_v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let d6 = addr_words_v6([
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]);
        let mut w = [0u32; 10];
        w[..4].copy_from_slice(&s6);
        w[4..8].copy_from_slice(&d6);
        w[8] = ports;
        w[9] = 17;
        assert_eq!(flow_hash_v6(7, &s6, &d6, ports, 17), murmur3_words(7, &w));
    }

    #[test]
    fn ports_word_is_the_wire_bytes() {
        // 40000 = 0x9c40, 80 = 0x0050: wire bytes 9c 40 00 50.
        assert_eq!(
            ports_word(40000, 80),
            u32::from_le_bytes([0x9c, 0x40, 0x00, 0x50])
        );
    }

    #[test]
    fn seed_changes_the_hash() {
        let h1 = flow_hash_v4(1, 1, 2, 3, 6);
        let h2 = flow_hash_v4(2, 1, 2, 3, 6);
        assert_ne!(h1, h2);
    }

    #[test]
    fn ring_slot_is_the_hash_modulo_the_ring_size() {
        assert_eq!(ring_slot(0, 65537), 0);
        assert_eq!(ring_slot(65536, 65537), 65536);
        assert_eq!(ring_slot(65537, 65537), 0);
        // 65537 * 65535 = 2^32 - 1: the largest hash wraps to slot 0 of the default ring.
        assert_eq!(ring_slot(u32::MAX, 65537), 0);
        assert_eq!(ring_slot(u32::MAX, 1009), 382);
        assert_eq!(ring_slot(0x1234_abcd, 1009), 288);
        assert_eq!(ring_slot(7, 1), 0);
    }

    #[test]
    fn gue_ports_stay_in_the_dynamic_range() {
        for h in [0u32, 1, 0xffff_ffff, 0x1234_5678, 0xc000_0000] {
            assert!(gue_source_port(h) >= 49152);
        }
        assert_eq!(flow_label(0x0010_0000), 1);
        assert_eq!(flow_label(0xabc1_2345), 0x1_2345);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn ring_slot_is_in_range(h in any::<u32>(), m in 1u32..1_000_000) {
                prop_assert!(ring_slot(h, m) < m);
            }

            #[test]
            fn flow_hash_spreads_sources(seed in any::<u32>(), a in any::<u32>(), b in any::<u32>()) {
                prop_assume!(a != b);
                // A single differing word must (almost surely) change the hash; a collision on
                // every sampled case would mean a broken mix.
                let ha = flow_hash_v4(seed, a, 1, 2, 6);
                let hb = flow_hash_v4(seed, b, 1, 2, 6);
                prop_assert!(ha != hb || a == b);
            }
        }
    }
}
