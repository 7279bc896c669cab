//! Connection tracking in the kernel program, through BPF_PROG_TEST_RUN: a tracked flow keeps
//! its backend when the table changes; bare SYNs and RSTs create no state; an entry whose backend
//! left is ignored; UDP entries age out; the per-CPU limit on promotions into the established tier holds.

use std::time::Duration;

use anycast_common::{Backend, ENCAP_IPIP, PROTO_TCP, PROTO_UDP, counter as c};
use anycast_tests::fixture::{Dataplane, XDP_DROP, pin_to_cpu, with_program};
use anycast_tests::one_vip::{tcp_frame as tcp, *};
use anycast_tests::packet::{self as p, V4};

/// `body` with the program loaded, the three backends and IPIP with these conntrack settings.
fn with_conntrack(
    test: &str,
    udp_timeout_s: u32,
    insert_limit: u32,
    body: impl FnOnce(&mut Dataplane) + Send,
) {
    with_program(test, SIZES, |dp| {
        setup(dp, &config(ENCAP_IPIP, udp_timeout_s, insert_limit));
        body(dp)
    });
}

fn udp(sport: u16) -> Vec<u8> {
    p::frame(None, &V4::new(CLIENT, VIP).udp(sport, 53, b"q"))
}

#[test]
fn tracked_tcp_flow_keeps_its_backend_when_the_table_changes() {
    let test = "tracked_tcp_flow_keeps_its_backend_when_the_table_changes";
    with_conntrack(test, 30, 0, |dp| {
        publish(dp, PROTO_TCP, 0, A);

        // The handshake's SYN follows the table and leaves no state (SYN-flood resistance).
        assert_eq!(landed(dp, &tcp(40000, TCP_SYN)), A);
        assert_eq!(dp.conn_count(), 0, "a bare SYN must not create an entry");
        // The first ACK creates the entry, in the new-flow tier.
        let before = dp.stats();
        assert_eq!(landed(dp, &tcp(40000, TCP_ACK)), A);
        let after = dp.stats();
        assert_eq!(delta(&before, &after, c::CONN_MISS), 1);
        assert_eq!(delta(&before, &after, c::CONN_NEW), 1);
        assert_eq!(delta(&before, &after, c::CONN_INSERT), 0);
        assert_eq!((dp.conn_count(), dp.established_count()), (1, 0));
        // The second moves it to the established tier.
        let before = dp.stats();
        assert_eq!(landed(dp, &tcp(40000, TCP_ACK)), A);
        let after = dp.stats();
        assert_eq!(delta(&before, &after, c::CONN_HIT), 1);
        assert_eq!(delta(&before, &after, c::CONN_INSERT), 1);
        assert_eq!((dp.conn_count(), dp.established_count()), (1, 1));

        // The table moves every slot to B: the established flow stays on A, a new flow and a
        // new handshake go to B.
        publish(dp, PROTO_TCP, 1, B);
        let before = dp.stats();
        assert_eq!(
            landed(dp, &tcp(40000, TCP_ACK)),
            A,
            "established flow must keep its backend"
        );
        assert_eq!(delta(&before, &dp.stats(), c::CONN_HIT), 1);
        assert_eq!(landed(dp, &tcp(40001, TCP_ACK)), B);
        assert_eq!(landed(dp, &tcp(40002, TCP_SYN)), B);

        // A new connection reusing a tracked tuple (same ports, a SYN) follows the table, and its
        // ACKs follow it there: the old entry is gone.
        publish(dp, PROTO_TCP, 0, A);
        assert_eq!(landed(dp, &tcp(40010, TCP_ACK)), A);
        publish(dp, PROTO_TCP, 1, B);
        assert_eq!(landed(dp, &tcp(40010, TCP_ACK)), A, "tracked");
        assert_eq!(
            landed(dp, &tcp(40010, TCP_SYN)),
            B,
            "a SYN follows the table"
        );
        assert_eq!(
            landed(dp, &tcp(40010, TCP_ACK)),
            B,
            "reused tuple must not follow the old entry"
        );

        // Draining to "no table at all" keeps established flows too.
        dp.publish_vip(vip_key(PROTO_TCP), VIP_ID, 0, None, 1);
        assert_eq!(landed(dp, &tcp(40000, TCP_ACK)), A);
        let r = dp.run(&tcp(40003, TCP_SYN), None).expect("test_run");
        assert_eq!(
            r.action, XDP_DROP,
            "a new flow to a VIP without table is dropped"
        );
    });
}

#[test]
fn rst_creates_no_entry_and_stale_entries_are_ignored() {
    let test = "rst_creates_no_entry_and_stale_entries_are_ignored";
    with_conntrack(test, 30, 0, |dp| {
        publish(dp, PROTO_TCP, 0, A);

        assert_eq!(landed(dp, &tcp(41000, TCP_RST | TCP_ACK)), A);
        assert_eq!(dp.conn_count(), 0, "RST must not create an entry");

        assert_eq!(landed(dp, &tcp(41001, TCP_ACK)), A);
        publish(dp, PROTO_TCP, 1, B);
        // Backend id A is given to another backend (new generation): the entry is stale and
        // the flow follows the table instead of following the id to a stranger.
        set_backend(dp, A, 2);
        let before = dp.stats();
        assert_eq!(landed(dp, &tcp(41001, TCP_ACK)), B);
        assert_eq!(delta(&before, &dp.stats(), c::CONN_STALE), 1);
        // The miss re-created the entry, now pointing at B.
        publish(dp, PROTO_TCP, 2, A);
        assert_eq!(landed(dp, &tcp(41001, TCP_ACK)), B);

        // A freed id (family 0) is stale as well.
        dp.set_backend(
            B,
            Backend {
                addr_be: [0; 16],
                family: 0,
                flags: 0,
                generation: 0,
            },
        );
        assert_eq!(landed(dp, &tcp(41001, TCP_ACK)), A);
    });
}

#[test]
fn udp_entries_age_out_after_the_configured_idle_time() {
    let test = "udp_entries_age_out_after_the_configured_idle_time";
    with_conntrack(test, 1, 0, |dp| {
        publish(dp, PROTO_UDP, 0, A);
        assert_eq!(landed(dp, &udp(5000)), A);
        publish(dp, PROTO_UDP, 1, B);
        assert_eq!(
            landed(dp, &udp(5000)),
            A,
            "a live UDP flow keeps its backend"
        );
        std::thread::sleep(Duration::from_millis(1300));
        let before = dp.stats();
        assert_eq!(
            landed(dp, &udp(5000)),
            B,
            "an idle UDP flow is picked afresh"
        );
        assert_eq!(delta(&before, &dp.stats(), c::CONN_STALE), 1);
    });
}

#[test]
fn insertion_limit_caps_promotions_per_cpu_per_second() {
    let test = "insertion_limit_caps_promotions_per_cpu_per_second";
    with_conntrack(test, 30, 5, |dp| {
        publish(dp, PROTO_UDP, 0, LOCAL);
        // test_run executes on the calling CPU; pin the thread so all runs share one CPU's
        // budget, and send them well within one second.
        pin_to_cpu(0);
        let before = dp.stats();
        for port in 0..10 {
            assert_eq!(landed(dp, &udp(6000 + port)), LOCAL);
        }
        let after = dp.stats();
        // First packets only enter the new-flow tier, which the limit does not cap.
        assert_eq!(delta(&before, &after, c::CONN_NEW), 10);
        assert_eq!(delta(&before, &after, c::CONN_INSERT_LIMITED), 0);
        for port in 0..10 {
            assert_eq!(
                landed(dp, &udp(6000 + port)),
                LOCAL,
                "flows still follow their entry"
            );
        }
        let last = dp.stats();
        let inserted = delta(&after, &last, c::CONN_INSERT);
        let limited = delta(&after, &last, c::CONN_INSERT_LIMITED);
        // The window opens at the first promotion and the runs take microseconds.
        assert_eq!((inserted, limited), (5, 5), "promoted / limited");
        assert_eq!((dp.conn_count(), dp.established_count()), (10, 5));
    });
}

#[test]
fn a_tracked_hit_encapsulates_byte_for_byte_as_the_first_packet() {
    // A tracked hit skips the flow hash unless the tunnel uses it (GUE source port, IPv6 flow
    // label): under GUE it is computed then, and must be the table path's.
    let test = "a_tracked_hit_encapsulates_byte_for_byte_as_the_first_packet";
    with_program(test, SIZES, |dp| {
        for encap in [ENCAP_IPIP, anycast_common::ENCAP_GUE] {
            setup(dp, &config(encap, 30, 0));
            dp.clear_conns();
            publish(dp, PROTO_TCP, 0, A);
            let frame = tcp(43000, TCP_ACK);
            let outputs: Vec<Vec<u8>> = (0..3)
                .map(|_| dp.run(&frame, None).expect("test_run").output)
                .collect();
            assert_eq!(
                dp.established_count(),
                1,
                "miss, young hit, established hit"
            );
            assert_eq!(outputs[1], outputs[0], "encap {encap}: young hit");
            assert_eq!(outputs[2], outputs[0], "encap {encap}: established hit");
        }
    });
}
