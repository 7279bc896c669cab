//! Internet checksum arithmetic (RFC 1071) on words as little-endian loads see them.
//!
//! The ones' complement sum is byte-order independent (RFC 1071 section 2(B)), so packet bytes are
//! summed exactly as loaded, and a value `v` that sits big-endian on the wire enters the sum as
//! `v.swap_bytes()`. The folded, inverted result is stored with `to_le_bytes()`.

/// Adds a 32-bit word whole: since 2^16 = 1 (mod 0xffff), summing 32-bit words and folding at the
/// end equals summing their 16-bit halves.
#[inline(always)]
pub const fn add32(acc: u64, w: u32) -> u64 {
    acc + w as u64
}

#[inline(always)]
pub const fn add_addr(acc: u64, a: &[u32; 4]) -> u64 {
    add32(add32(add32(add32(acc, a[0]), a[1]), a[2]), a[3])
}

/// A big-endian 16-bit field with host value `v`.
#[inline(always)]
pub const fn be16(v: u16) -> u64 {
    v.swap_bytes() as u64
}

/// Two wire bytes `[hi, lo]`.
#[inline(always)]
pub const fn pair(hi: u8, lo: u8) -> u64 {
    u16::from_le_bytes([hi, lo]) as u64
}

#[inline(always)]
pub const fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum field value for a sum (in wire byte order, as little-endian bytes).
#[inline(always)]
pub const fn finish(s: u64) -> [u8; 2] {
    (!fold(s)).to_le_bytes()
}
