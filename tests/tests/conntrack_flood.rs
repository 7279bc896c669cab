//! Flood-safe connection tracking, through BPF_PROG_TEST_RUN on every CPU: while 10,000
//! established flows (TCP and UDP) are tracked, a flood of 10^6 random-tuple TCP ACKs and 10^6
//! random-tuple UDP packets to the VIP leaves at least 99% of the established flows' entries in
//! place, and on their backend after a table change moves every slot to another backend.
//!
//! With a single tier the flood would need only `conntrack_size / CPUs` insertions on one CPU to
//! evict that CPU's whole share: the flood here sends four times that per CPU.

use std::time::{Duration, Instant};

use anycast_common::{ConnKey, ENCAP_IPIP, PROTO_TCP, PROTO_UDP, map_names};
use anycast_tests::fixture::{Dataplane, pin_to_cpu, with_program};
use anycast_tests::one_vip::{tcp_packet, *};
use anycast_tests::packet::{self as p, V4};
use std::net::Ipv4Addr;

/// Established flows: half TCP, half UDP, spread over the CPUs.
const ESTABLISHED: u32 = 10_000;
/// Flood packets of each kind (TCP ACK, UDP), spread over the CPUs.
const FLOOD: u32 = 1_000_000;
/// The table numbers: each protocol's VIP has its own tables (before and after the change).
const TCP_TABLES: (u32, u32) = (0, 2);
const UDP_TABLES: (u32, u32) = (1, 3);

/// An established flow: protocol and client address (its source port is derived from it).
#[derive(Clone, Copy)]
struct Flow {
    proto: u8,
    client: Ipv4Addr,
    sport: u16,
}

impl Flow {
    fn nth(i: u32) -> Self {
        let proto = if i.is_multiple_of(2) {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        // 198.18.0.0/15 less the fixture's own addresses: 198.19.x.y.
        let client = Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8);
        Self {
            proto,
            client,
            sport: 20_000 + (i % 1000) as u16,
        }
    }

    fn frame(&self, tcp_flags: u8) -> Vec<u8> {
        match self.proto {
            PROTO_TCP => p::frame(None, &tcp_packet(self.client, self.sport, tcp_flags)),
            _ => p::frame(None, &V4::new(self.client, VIP).udp(self.sport, 53, b"q")),
        }
    }

    fn key(&self) -> ConnKey {
        let dport = if self.proto == PROTO_TCP { 80 } else { 53 };
        ConnKey::v4(
            self.client.octets(),
            self.sport,
            VIP.octets(),
            dport,
            self.proto,
        )
    }
}

/// xorshift64*: a reproducible stream for the flood's tuples.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One flood packet: a TCP ACK or a UDP datagram from a random address and port in
/// 100.64.0.0/10 (never an established flow's).
fn flood_frame(rng: &mut Rng, proto: u8) -> Vec<u8> {
    let r = rng.next();
    let client = Ipv4Addr::from(0x6440_0000 | (r as u32 & 0x003f_ffff));
    let sport = (r >> 32) as u16 | 1024;
    match proto {
        PROTO_TCP => p::frame(None, &tcp_packet(client, sport, TCP_ACK)),
        _ => p::frame(None, &V4::new(client, VIP).udp(sport, 53, b"x")),
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn a_random_tuple_flood_leaves_established_flows_tracked_and_on_their_backend() {
    let test = "a_random_tuple_flood_leaves_established_flows_tracked_and_on_their_backend";
    with_program(test, SIZES, |dp| {
        setup(dp, &config(ENCAP_IPIP, 30, 0));
        publish(dp, PROTO_TCP, TCP_TABLES.0, A);
        publish(dp, PROTO_UDP, UDP_TABLES.0, A);
        let cpus = cpus();
        let flows: Vec<Flow> = (0..ESTABLISHED).map(Flow::nth).collect();

        // Establish: TCP SYN, ACK, data; UDP two datagrams. Each flow on one CPU, round robin.
        for cpu in 0..cpus {
            pin_to_cpu(cpu);
            for f in flows.iter().skip(cpu).step_by(cpus) {
                let packets = match f.proto {
                    PROTO_TCP => vec![f.frame(TCP_SYN), f.frame(TCP_ACK), f.frame(TCP_ACK)],
                    _ => vec![f.frame(0), f.frame(0)],
                };
                for frame in &packets {
                    assert_eq!(landed(dp, frame), A, "establishing");
                }
            }
        }
        let established = dp.conns_in(map_names::CONNS);
        let in_conns = flows
            .iter()
            .filter(|f| established.contains_key(&f.key()))
            .count();
        assert_eq!(
            in_conns, ESTABLISHED as usize,
            "every established flow is in the established tier before the flood"
        );

        let seed = 0x5eed_0000_0000_0001 ^ u64::from(std::process::id());
        println!(
            "flood seed {seed:#x}: {FLOOD} TCP ACKs and {FLOOD} UDP datagrams over {cpus} CPUs"
        );
        let mut rng = Rng(seed);
        let mut kernel = Duration::ZERO;
        let started = Instant::now();
        for cpu in 0..cpus {
            pin_to_cpu(cpu);
            for i in 0..(2 * FLOOD as usize) / cpus {
                let proto = if i.is_multiple_of(2) {
                    PROTO_TCP
                } else {
                    PROTO_UDP
                };
                let r = dp
                    .run(&flood_frame(&mut rng, proto), None)
                    .expect("test_run");
                assert_eq!(
                    r.action,
                    anycast_tests::fixture::XDP_REDIRECT,
                    "flood packet"
                );
                kernel += r.duration;
            }
        }
        println!(
            "flood: {:.1} s wall, {:.0} ns/packet in the program (BPF_PROG_TEST_RUN duration)",
            started.elapsed().as_secs_f64(),
            kernel.as_secs_f64() * 1e9 / f64::from(2 * FLOOD)
        );
        let young = dp.conns_in(map_names::CONNS_NEW).len();
        println!("after the flood: {young} entries in CONNS_NEW");

        // Every slot of both tables moves to B.
        publish(dp, PROTO_TCP, TCP_TABLES.1, B);
        publish(dp, PROTO_UDP, UDP_TABLES.1, B);
        let established = dp.conns_in(map_names::CONNS);
        let kept = flows
            .iter()
            .filter(|f| established.get(&f.key()).is_some_and(|v| v.backend_id == A))
            .count();
        let mut on_backend = 0;
        for cpu in 0..cpus {
            pin_to_cpu(cpu);
            for f in flows.iter().skip(cpu).step_by(cpus) {
                let flags = if f.proto == PROTO_TCP { TCP_ACK } else { 0 };
                if landed(dp, &f.frame(flags)) == A {
                    on_backend += 1;
                }
            }
        }
        println!(
            "established flows: {kept} of {ESTABLISHED} entries kept, {on_backend} on their backend after the table change"
        );
        let floor = ESTABLISHED as usize * 99 / 100;
        assert!(kept >= floor, "entries kept: {kept} < {floor}");
        assert!(
            on_backend >= floor,
            "flows on their backend after the table change: {on_backend} < {floor}"
        );
        // New flows follow the new table, and the flood's tuples are young at most.
        assert_eq!(landed(dp, &Flow::nth(ESTABLISHED + 1).frame(TCP_ACK)), B);
    });
}

/// The tier a one-packet flow lands in, and what its second packet does: promoted, and then
/// kept across a table change; a young flow keeps its backend across a change too.
#[test]
fn a_flow_enters_the_new_tier_and_its_second_packet_promotes_it() {
    let test = "a_flow_enters_the_new_tier_and_its_second_packet_promotes_it";
    with_program(test, SIZES, |dp: &mut Dataplane| {
        setup(dp, &config(ENCAP_IPIP, 30, 0));
        publish(dp, PROTO_UDP, UDP_TABLES.0, A);
        let f = Flow::nth(1);
        assert_eq!(landed(dp, &f.frame(0)), A);
        assert!(dp.conns_in(map_names::CONNS_NEW).contains_key(&f.key()));
        assert!(!dp.conns_in(map_names::CONNS).contains_key(&f.key()));
        // A young flow keeps its backend through a table change.
        publish(dp, PROTO_UDP, UDP_TABLES.1, B);
        assert_eq!(landed(dp, &f.frame(0)), A, "young flow keeps its backend");
        assert_eq!(
            dp.conns_in(map_names::CONNS)
                .get(&f.key())
                .map(|v| v.backend_id),
            Some(A),
            "promoted on its second packet, with its backend"
        );
        publish(dp, PROTO_UDP, UDP_TABLES.0, B);
        assert_eq!(landed(dp, &f.frame(0)), A);
    });
}
