//! Log lines for rare, operator-relevant anomalies (aya-log), never for traffic.
//!
//! Each event is already counted in `STATS`; its line adds what a counter cannot carry (the
//! backend address, the FIB return code, the lengths and MTU, the refused tunnel source). The
//! record's target is the event class (`anycast_common::event::NAMES`); the text ends with
//! `cpu=N suppressed=N` (events of the class on that CPU that were not logged since its previous
//! line).
//!
//! Cost: every function here is a BPF subprogram of its own (`#[inline(never)]`), called only
//! from a branch that was already the anomaly's, so the fast paths (non-VIP pass, local VIP,
//! encapsulation, decapsulation) run none of it. Rate limit: at most one line per second per
//! CPU per class (`LOG_RATE`, per-CPU, no atomics), checked before anything is formatted, so a
//! flood of anomalous packets, some attacker-made (`decap_refused`), costs each packet a call, a
//! map lookup, a clock read and an increment (about 20-30 instructions) and yields one line per
//! second per CPU. aya-log writes the record straight into its ring buffer (`AYA_LOGS`, 128 KiB):
//! no buffer on the stack. Stack (frames rounded to 16 bytes, as the verifier does for JITed
//! programs): the deepest chain through one of these is anycast_steer + encapsulate + oversize,
//! 176 + 224 + 96 = 496 bytes of the 512 allowed; `pick`, on the other 496-byte chain, calls none
//! of them (see `track::PREV_INSERT_LIMITED`).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anycast_common::{Backend, FAMILY_V4, LOG_INTERVAL_NS, event};
use aya_ebpf::helpers::generated::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use aya_log_ebpf::{error, warn};

use crate::{encap, maps, packet::addr_bytes, parse::Ip};

/// Admits one line of `class` per [`LOG_INTERVAL_NS`] on this CPU. `Some(n)`: write it, `n`
/// events of the class were suppressed since the previous line; `None`: suppressed (counted).
#[inline(always)]
fn admit(class: u32) -> Option<u64> {
    let r = maps::LOG_RATE.get_ptr_mut(class)?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot, only this CPU's program instance writes it while we run. A slot
    // never written holds last_ns = 0, and the monotonic clock is past one second after boot.
    unsafe {
        if now.wrapping_sub((*r).last_ns) < LOG_INTERVAL_NS {
            (*r).suppressed += 1;
            return None;
        }
        let suppressed = (*r).suppressed;
        (*r).last_ns = now;
        (*r).suppressed = 0;
        Some(suppressed)
    }
}

#[inline(always)]
fn cpu() -> u32 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_smp_processor_id() }
}

#[inline(always)]
fn backend_addr(b: &Backend) -> IpAddr {
    if b.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(
            b.addr_be[0],
            b.addr_be[1],
            b.addr_be[2],
            b.addr_be[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(b.addr_be))
    }
}

#[inline(always)]
fn ip_addr(family: u8, words: [u32; 4]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_le_bytes()))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr_bytes(words)))
    }
}

/// The scratch of the encapsulation that failed in this run, and the address of the backend it
/// was sending to.
#[inline(always)]
fn failed_encap() -> Option<(&'static encap::Scratch, IpAddr)> {
    let sc = encap::scratch()?;
    let dst = backend_addr(&sc.tunnel.dst);
    Some((sc, dst))
}

/// One line of event class `$class` if [`admit`] lets it through, at `$level` (`error`, `warn`),
/// targeted at the class's name, with `cpu` and `suppressed` as its last two values: every
/// `$text` ends with `cpu={} suppressed={}` (without them aya-log drops the extra values, and
/// the unused `suppressed` fails the lint gate). The statements in the optional block compute the
/// line's values after admission only (a suppressed event costs no more than `admit`).
macro_rules! event_line {
    ($level:ident, $class:expr, $({ $($prep:stmt;)* })? $text:literal $(, $arg:expr)* $(,)?) => {{
        let Some(suppressed) = admit($class) else {
            return;
        };
        $($($prep)*)?
        $level!(
            &(),
            target: event::NAMES[$class as usize],
            $text,
            $($arg,)*
            cpu(),
            suppressed
        );
    }};
}

/// The live table of VIP `vip_id` (`table`) names `backend_id`, which `BACKENDS` does not hold:
/// the agent published a table and a backend array that disagree. The packet is dropped.
#[inline(never)]
pub fn table_inconsistent(vip_id: u32, table: u32, backend_id: u32) {
    event_line!(
        error,
        event::TABLE_INCONSISTENT,
        "VIP table names a backend id beyond BACKENDS, packet dropped: vip_id={} table={} backend_id={} cpu={} suppressed={}",
        vip_id,
        table,
        backend_id,
    );
}

/// `bpf_fib_lookup` found no usable route towards the backend in this CPU's scratch tunnel;
/// `rc` is its return code: BPF_FIB_LKUP_RET_* (include/uapi/linux/bpf.h: 1 blackhole, 2
/// unreachable, 3 prohibit, 4 not forwarded, 5 forwarding disabled, 6 unsupported lightweight
/// tunnel, 9 no source address) or a negative errno. Numeric only: a text for it would cost
/// this frame 40 bytes of stack, and it sits on the encapsulation's (176 + 224 bytes). The
/// packet is dropped.
#[inline(never)]
pub fn fib_fail(rc: i64) {
    event_line!(
        warn,
        event::FIB_FAIL,
        {
            let Some((_, dst)) = failed_encap() else {
                return;
            };
        }
        "no route to the backend, packet dropped: rc={} backend={:i} cpu={} suppressed={}",
        rc,
        dst,
    );
}

/// The encapsulated packet, `outer_len` bytes at the IP layer (`inner_len` before), is larger
/// than the route MTU towards the backend. The packet is dropped.
#[inline(never)]
pub fn oversize(inner_len: u32, outer_len: u32) {
    event_line!(
        warn,
        event::OVERSIZE,
        {
            let Some((sc, dst)) = failed_encap() else {
                return;
            };
            // SAFETY: on BPF_FIB_LKUP_RET_FRAG_NEEDED the kernel stores the route MTU in
            // `mtu_result` (net/core/filter.c, bpf_ipv4_fib_lookup / bpf_ipv6_fib_lookup);
            // every variant is a u16.
            let mtu = unsafe { sc.fib.__bindgen_anon_1.mtu_result };
        }
        "encapsulated packet exceeds the route MTU, packet dropped: length={} encapsulated={} mtu={} backend={:i} cpu={} suppressed={}",
        inner_len,
        outer_len,
        mtu,
        dst,
    );
}

/// A tunnel packet addressed to this host came from a source outside `decap_allow`; the outer
/// addresses are the packet's (attacker-controlled: hence the rate limit). The packet is dropped.
#[inline(never)]
pub fn decap_refused(outer: &Ip) {
    event_line!(
        warn,
        event::DECAP_REFUSED,
        "tunnel packet from a source outside decap_allow dropped: src={:i} dst={:i} proto={} cpu={} suppressed={}",
        ip_addr(outer.family, outer.src),
        ip_addr(outer.family, outer.dst),
        outer.proto,
    );
}

/// This CPU reached `agent.conntrack_insert_limit` new entries in the current second: new
/// flows follow the table without an entry until the window ends. `suppressed` counts the
/// flows left untracked.
#[inline(never)]
pub fn conn_insert_limited() {
    event_line!(
        warn,
        event::CONN_INSERT_LIMITED,
        {
            let limit = maps::CONFIG.get(0).map_or(0, |c| c.conn_insert_limit);
        }
        "connection-tracking promotion limit reached, new flows stay in the new-flow tier: limit_per_s={} cpu={} suppressed={}",
        limit,
    );
}
