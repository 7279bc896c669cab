//! The one checked doorway into packet memory: every read and write of packet bytes goes through
//! the helpers here, all built on the one bounds check in `ptr_at`.
//!
//! No pointer into the packet outlives `bpf_xdp_adjust_head`: the verifier invalidates every
//! packet pointer on that call (kernel/bpf/verifier.c, clear_all_pkt_pointers), so a program that
//! used one after it would be refused at load time rather than write to the wrong place.

use aya_ebpf::programs::XdpContext;

/// Pointer to a `T` at `off` bytes into the packet, after checking that all of it lies before
/// `data_end` (the check the verifier needs to see before any access).
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Are there `N` bytes of packet at `off`?
#[inline(always)]
pub fn has_bytes<const N: usize>(ctx: &XdpContext, off: usize) -> bool {
    ptr_at::<[u8; N]>(ctx, off).is_some()
}

/// Reads `N` bytes at `off`.
#[inline(always)]
pub fn bytes_at<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let p = ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at; [u8; N] has alignment 1.
    Some(unsafe { p.read() })
}

/// A 32-bit word of packet bytes, as a little-endian load sees it (the flow hash and the
/// checksum code work on such words; see anycast_common::hash).
#[inline(always)]
pub fn word_at(ctx: &XdpContext, off: usize) -> Option<u32> {
    let p = ptr_at::<u32>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at. Packet data is not 4-byte aligned in general, but the
    // verifier allows unaligned packet access on architectures with efficient unaligned access
    // (x86_64, arm64: kernel/bpf/verifier.c, check_pkt_ptr_alignment without strict alignment),
    // and the JIT emits a plain load. `read_unaligned` would make LLVM split it into four byte
    // loads, since the BPF backend may not assume unaligned access is legal.
    Some(unsafe { p.read() })
}

#[inline(always)]
pub fn u16_be_at(ctx: &XdpContext, off: usize) -> Option<u16> {
    bytes_at::<2>(ctx, off).map(u16::from_be_bytes)
}

#[inline(always)]
pub fn u8_at(ctx: &XdpContext, off: usize) -> Option<u8> {
    bytes_at::<1>(ctx, off).map(|b| b[0])
}

/// Writes `bytes` at `off`.
#[inline(always)]
pub fn write_at<const N: usize>(ctx: &XdpContext, off: usize, bytes: [u8; N]) -> Option<()> {
    let p = ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { p.write(bytes) };
    Some(())
}

/// Writes a 32-bit word (bytes in memory order) at `off`; same alignment argument as `word_at`.
#[inline(always)]
pub fn write_word(ctx: &XdpContext, off: usize, w: u32) -> Option<()> {
    let p = ptr_at::<u32>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at; see word_at for alignment.
    unsafe { p.write(w) };
    Some(())
}

/// Copies the `N` words at `from` to `to` (ranges that do not overlap); same alignment argument
/// as `word_at`.
#[inline(always)]
pub fn copy_words<const N: usize>(ctx: &XdpContext, from: usize, to: usize) -> Option<()> {
    let (Some(src), Some(dst)) = (ptr_at::<[u32; N]>(ctx, from), ptr_at::<[u32; N]>(ctx, to))
    else {
        return None;
    };
    // SAFETY: both ranges bounds checked by ptr_at; see word_at for alignment.
    unsafe { dst.write(src.read()) };
    Some(())
}

/// `N` bytes of packet memory behind one bounds check: a header written word by word costs one
/// check, not one per word, and a write past its end does not compile.
pub struct Window<const N: usize>(*mut u8);

/// The `N` bytes at `off`, for writing.
#[inline(always)]
pub fn window<const N: usize>(ctx: &XdpContext, off: usize) -> Option<Window<N>> {
    ptr_at::<[u8; N]>(ctx, off).map(|p| Window(p.cast::<u8>()))
}

impl<const N: usize> Window<N> {
    /// Writes a 32-bit word (bytes in memory order, as [`word_at`] reads them) at `OFF`: one
    /// store instead of four. Same alignment argument as `word_at`.
    #[inline(always)]
    pub fn put_word<const OFF: usize>(&mut self, w: u32) {
        const { assert!(OFF + 4 <= N, "write past the end of the window") };
        // SAFETY: OFF + 4 <= N bytes checked against data_end by ptr_at; see word_at.
        unsafe { self.0.add(OFF).cast::<u32>().write(w) };
    }

    /// The `i`-th 32-bit word of the window (bytes in memory order), `None` past its end: one
    /// bounds check against the window, which the verifier already knows, instead of one against
    /// the packet's end per word.
    #[inline(always)]
    pub fn word(&self, i: usize) -> Option<u32> {
        if i >= N / 4 {
            return None;
        }
        // SAFETY: i * 4 + 4 <= N bytes, checked against data_end by ptr_at; see word_at.
        Some(unsafe { self.0.add(i * 4).cast::<u32>().read() })
    }

    /// Writes the four words of an IPv6 address at `OFF`.
    #[inline(always)]
    pub fn put_addr<const OFF: usize>(&mut self, a: &[u32; 4]) {
        const { assert!(OFF + 16 <= N, "write past the end of the window") };
        let mut i = 0;
        while i < 4 {
            // SAFETY: OFF + 16 <= N bytes checked against data_end by ptr_at; see word_at.
            unsafe { self.0.add(OFF + i * 4).cast::<u32>().write(a[i]) };
            i += 1;
        }
    }

    /// Writes a 16-bit half word (bytes in memory order) at `OFF`.
    #[inline(always)]
    pub fn put_half<const OFF: usize>(&mut self, h: u16) {
        const { assert!(OFF + 2 <= N, "write past the end of the window") };
        // SAFETY: as in put_word.
        unsafe { self.0.add(OFF).cast::<u16>().write(h) };
    }
}

/// The word whose memory bytes are `b` (the inverse of a little-endian load of packet memory).
#[inline(always)]
pub const fn word(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

/// The word of a 4-byte address stored in a map value, at a 4-aligned offset of an `align(4)`
/// type (see `addr_words`).
#[inline(always)]
pub fn addr_word(a: &[u8; 4]) -> u32 {
    // SAFETY: in bounds (4 bytes); aligned because every caller passes a field of an `align(4)`
    // map type at a 4-aligned offset.
    unsafe { a.as_ptr().cast::<u32>().read() }
}

/// The words of an address stored in a map value (`anycast_common` address fields sit at
/// 4-aligned offsets of `align(4)` types). Reading through `*const u32` gives LLVM the alignment
/// it needs to emit four loads instead of sixteen.
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> [u32; 4] {
    let p = a.as_ptr().cast::<u32>();
    // SAFETY: in bounds (16 bytes); aligned because every caller passes a field of an
    // `align(4)` map type at a 4-aligned offset.
    unsafe { [p.read(), p.add(1).read(), p.add(2).read(), p.add(3).read()] }
}

/// Address bytes from words, as a key field expects them.
#[inline(always)]
pub fn addr_bytes(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size and every bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}
