//! The model's connection tracking and fragment records (docs/dataplane.md, "Connection
//! tracking"): two tiers, a flow's first tracked packet creates its entry in the new-flow tier,
//! its second promotes it; a bare SYN forgets its tuple; RST and packets about a flow (ICMP
//! errors, fragments) only look up. The world never changes a backend's generation and no UDP
//! entry idles out, so every entry stays valid; the runner empties the kernel's maps whenever
//! it resets this state, and keeps the flows of a chunk far below the maps' sizes (no eviction).

use std::collections::HashMap;
use std::net::IpAddr;

use anycast_common::{ENCAP_GUE, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, hash::ring_slot};

use super::parse::{addr16, flow_hash};
use super::world::{VipDef, World};

/// A flow as its packets carry it: client -> VIP.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// The first transport word as it sits in the packet (source port, destination port).
    pub ports: [u8; 4],
}

impl Flow {
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes([self.ports[2], self.ports[3]])
    }

    fn key(&self) -> [u8; 38] {
        let mut k = [0u8; 38];
        k[..16].copy_from_slice(&addr16(self.src));
        k[16..32].copy_from_slice(&addr16(self.dst));
        k[32..36].copy_from_slice(&self.ports);
        k[36] = self.proto;
        k[37] = if self.src.is_ipv4() {
            FAMILY_V4
        } else {
            FAMILY_V6
        };
        k
    }

    pub fn hash(&self, seed: u32) -> u32 {
        flow_hash(seed, self.src, self.dst, self.ports, self.proto)
    }
}

/// How a packet takes part in tracking.
#[derive(Clone, Copy, Debug)]
pub enum Use {
    /// A packet of the flow (TCP flags for TCP).
    Of { tcp_flags: u8 },
    /// A packet about the flow: looked up, never creates nor removes anything.
    About,
}

#[derive(Default)]
pub struct State {
    established: HashMap<[u8; 38], u32>,
    young: HashMap<[u8; 38], u32>,
    /// (source, destination, protocol, id, family) -> (backend, hash).
    pub frags: HashMap<(IpAddr, IpAddr, u8, u32), (u32, u32)>,
}

/// What the tracking and the table chose.
pub struct Pick {
    pub backend: Option<u32>,
    pub hash: u32,
    /// The previous table's owner of the flow's slot, when a second chance may be needed.
    pub prev: Option<u32>,
}

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

impl State {
    pub fn pick(&mut self, w: &World, vip: &VipDef, flow: &Flow, u: Use) -> Pick {
        let hash = flow.hash(w.cfg.hash_seed);
        let key = flow.key();
        let tcp = flow.proto == PROTO_TCP;
        let (track, insert, mid) = match u {
            Use::About => (tcp || flow.proto == PROTO_UDP, false, tcp),
            Use::Of { tcp_flags } if tcp => {
                // Anything but a bare SYN (SYN without ACK) is part of a flow under way.
                let mid = tcp_flags & (SYN | ACK) != SYN;
                (mid, mid && tcp_flags & RST == 0, mid)
            }
            Use::Of { .. } => (true, true, false),
        };
        if tcp && !mid {
            self.established.remove(&key);
            self.young.remove(&key);
        }
        if track {
            if let Some(&b) = self.established.get(&key) {
                return Pick {
                    backend: Some(b),
                    hash,
                    prev: None,
                };
            }
            if let Some(&b) = self.young.get(&key) {
                if insert {
                    self.established.insert(key, b);
                }
                return Pick {
                    backend: Some(b),
                    hash,
                    prev: None,
                };
            }
        }
        let Some(table) = &vip.table else {
            return Pick {
                backend: None,
                hash,
                prev: None,
            };
        };
        let slot = ring_slot(hash, w.cfg.ring_size) as usize;
        let b = table[slot];
        let prev = match (&vip.prev, mid) {
            (Some(p), true) if p[slot] != b => Some(p[slot]),
            _ => None,
        };
        if insert {
            let local = w.backend(b).is_some_and(|d| d.local);
            // A flow whose hint rides on every packet (GUE), or whose new owner is this host
            // (which checks its sockets on every packet), is not tracked.
            let hinted = prev.is_some() && (w.cfg.encap == ENCAP_GUE || local);
            if !hinted {
                self.young.insert(key, b);
            }
        }
        Pick {
            backend: Some(b),
            hash,
            prev,
        }
    }
}
