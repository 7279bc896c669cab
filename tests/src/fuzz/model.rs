//! The host model of the program: what it should do with a frame, from the world's config and
//! the tracking state, computed from first principles (docs/dataplane.md). It shares with the
//! program only the definitions that are contracts: the flow hash, the ring slot, the GUE source
//! port and flow label (`anycast_common::hash`), and the Maglev tables (the agent's plan code).

use std::net::IpAddr;

use anycast_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, counter};

use super::Expect;
use super::decap;
use super::emit::{self, Tunnel};
use super::parse::{Frag, Ip, Parsed, be16, parse};
use super::track::{Flow, State, Use};
use super::world::{VipDef, World};

pub fn steer(w: &World, st: &mut State, f: &[u8]) -> Expect {
    match parse(f) {
        Parsed::Pass(c) => Expect::pass(f, c),
        Parsed::Fragment(None) => Expect::pass(f, counter::FRAGMENT),
        Parsed::Fragment(Some(frag)) => fragment(w, st, f, &frag),
        Parsed::Ip(ip) => {
            if decap::is_tunnel(w, f, &ip) {
                decap::decapsulate(w, f, &ip)
            } else if ip.proto == PROTO_ICMP || ip.proto == PROTO_ICMPV6 {
                icmp_error(w, st, f, &ip)
            } else {
                vip(w, st, f, &ip)
            }
        }
    }
}

/// Where a packet of a flow (or about it) goes once its backend is known.
fn deliver(w: &World, f: &[u8], ip: &Ip, backend: u32, hint: Option<u32>, hash: u32) -> Expect {
    deliver_as(w, f, ip, backend, hint, hash, None)
}

/// [`deliver`], counted `detail` too (a packet about a flow, or a fragment of it).
fn deliver_as(
    w: &World,
    f: &[u8],
    ip: &Ip,
    backend: u32,
    hint: Option<u32>,
    hash: u32,
    detail: Option<u32>,
) -> Expect {
    let e = deliver_to(w, f, ip, backend, hint, hash);
    match detail {
        Some(d) => e.with(d),
        None => e,
    }
}

fn deliver_to(w: &World, f: &[u8], ip: &Ip, backend: u32, hint: Option<u32>, hash: u32) -> Expect {
    let b = w.backend(backend).expect("tables name known backends");
    let hint = hint.and_then(|h| w.backend(h));
    if b.local {
        // This host is the new owner but holds no socket of the flow (the fixture namespace
        // has none): the previous, remote owner gets it once.
        if let Some(h) = hint.filter(|h| !h.local) {
            let t = Tunnel {
                dst: h.addr,
                hint: None,
                hash,
                id: Some(h.id),
                outcome: counter::SECOND_CHANCE,
            };
            return emit::encapsulate(w, f, ip, &t);
        }
        let mut e = Expect::pass(f, counter::LOCAL);
        e.to = Some(b.addr);
        return e;
    }
    let t = Tunnel {
        dst: b.addr,
        hint: hint.map(|h| h.addr),
        hash,
        id: Some(b.id),
        outcome: counter::ENCAP,
    };
    emit::encapsulate(w, f, ip, &t)
}

fn vip(w: &World, st: &mut State, f: &[u8], ip: &Ip) -> Expect {
    let hdr = match ip.proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        _ => return Expect::pass(f, counter::PASS),
    };
    let Some(h) = ip.bytes(f, ip.l4(), hdr) else {
        return Expect::pass(f, counter::PARSE_ERROR);
    };
    let flow = Flow {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        ports: [h[0], h[1], h[2], h[3]],
    };
    let Some(vip) = w.vip_of(ip.dst, flow.dport(), ip.proto) else {
        return Expect::pass(f, counter::PASS);
    };
    let tcp_flags = if ip.proto == PROTO_TCP { h[13] } else { 0 };
    let p = st.pick(w, vip, &flow, Use::Of { tcp_flags });
    let Some(b) = p.backend else {
        return Expect::drop(counter::NO_BACKEND);
    };
    deliver(w, f, ip, b, p.prev, p.hash)
}

/// ICMP errors that quote a VIP flow's packet from the VIP (reversed: client -> VIP) go to the
/// flow's backend; everything else passes.
fn icmp_error(w: &World, st: &mut State, f: &[u8], ip: &Ip) -> Expect {
    let pass = || Expect::pass(f, counter::PASS);
    // An ICMP of the other family is nobody's error; a frame with bytes after the IP packet
    // (padding: a real error is longer than the smallest frame) is not trusted as one.
    if ip.v4 != (ip.proto == PROTO_ICMP) || f.len() > ip.end() {
        return pass();
    }
    let Some(t) = ip.bytes(f, ip.l4(), 1) else {
        return pass();
    };
    let error = if ip.v4 {
        matches!(t[0], 3 | 11)
    } else {
        matches!(t[0], 1..=3)
    };
    if !error {
        return pass();
    }
    let q = ip.l4() + 8;
    let Some(quoted) = quote(f, ip, q) else {
        return pass();
    };
    let (qsrc, qdst, proto, ql4) = quoted;
    if (proto != PROTO_TCP && proto != PROTO_UDP) || qsrc != ip.dst {
        return pass();
    }
    let Some(qp) = ip.bytes(f, ql4, 4) else {
        return pass();
    };
    let flow = Flow {
        src: qdst,
        dst: qsrc,
        proto,
        ports: [qp[2], qp[3], qp[0], qp[1]],
    };
    let Some(vip) = w.vip_of(flow.dst, flow.dport(), proto) else {
        return pass();
    };
    let p = st.pick(w, vip, &flow, Use::About);
    let Some(b) = p.backend else {
        return Expect::drop(counter::NO_BACKEND);
    };
    deliver_as(w, f, ip, b, None, p.hash, Some(counter::ICMP_STEERED))
}

/// The quoted header at `q`: (source, destination, protocol, offset of its transport header),
/// `None` if it is not one whose ports follow (a later fragment, a bad header).
fn quote(f: &[u8], ip: &Ip, q: usize) -> Option<(IpAddr, IpAddr, u8, usize)> {
    if ip.v4 {
        let h = ip.bytes(f, q, 20)?;
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || ihl < 20 || be16(h, 6) & 0x1fff != 0 {
            return None;
        }
        let a = |o: usize| IpAddr::from([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        return Some((a(12), a(16), h[9], q + ihl));
    }
    let h = ip.bytes(f, q, 40)?;
    let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&h[o..o + 16]).expect("16 bytes"));
    if h[6] != 44 {
        return Some((a(8), a(24), h[6], q + 40));
    }
    let fh = ip.bytes(f, q + 40, 4)?;
    if be16(fh, 2) >> 3 != 0 {
        return None;
    }
    Some((a(8), a(24), fh[0], q + 48))
}

/// Fragments of a VIP datagram follow its first fragment, which picks like the flow's packets
/// (looked up, never tracked); a later one without a record passes.
fn fragment(w: &World, st: &mut State, f: &[u8], frag: &Frag) -> Expect {
    let ip = &frag.ip;
    let pass = || Expect::pass(f, counter::FRAGMENT);
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return pass();
    }
    let key = (ip.src, ip.dst, ip.proto, frag.id);
    let (backend, hash) = if frag.first {
        let Some(h) = ip.bytes(f, ip.l4(), 4) else {
            return pass();
        };
        let flow = Flow {
            src: ip.src,
            dst: ip.dst,
            proto: ip.proto,
            ports: [h[0], h[1], h[2], h[3]],
        };
        let Some(vip): Option<&VipDef> = w.vip_of(ip.dst, flow.dport(), ip.proto) else {
            return pass();
        };
        let p = st.pick(w, vip, &flow, Use::About);
        let Some(b) = p.backend else {
            return Expect::drop(counter::NO_BACKEND);
        };
        st.frags.insert(key, (b, p.hash));
        (b, p.hash)
    } else {
        match st.frags.get(&key) {
            Some(&v) => v,
            None => return pass(),
        }
    };
    deliver_as(
        w,
        f,
        ip,
        backend,
        None,
        hash,
        Some(counter::FRAGMENT_STEERED),
    )
}
