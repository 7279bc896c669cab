//! Fragments of datagrams to a VIP, through BPF_PROG_TEST_RUN: the first fragment goes where the
//! datagram's flow goes and is remembered; the later ones follow it, even once the table has
//! changed, until a new datagram's first fragment decides again; a later fragment whose first was
//! never seen, and fragments that are not to a VIP, pass to the local stack untouched.

use anycast_common::{ENCAP_IPIP, PROTO_UDP, counter as c};
use anycast_tests::fixture::with_program;
use anycast_tests::one_vip::*;
use anycast_tests::packet::{self as p, V4};

/// A fragment of datagram `id` from the client's port 40700 to the VIP's port 53: the first
/// (offset 0, with the UDP header) or a later one at `offset` 8-byte units.
fn fragment(id: u16, offset: u16) -> Vec<u8> {
    let mut ip = V4::new(CLIENT, VIP).fragment(true, offset);
    ip.identification = id;
    let packet = if offset == 0 {
        // The UDP header of a 1000-byte datagram, and the first 64 bytes of its payload.
        let mut udp = Vec::new();
        udp.extend_from_slice(&40700u16.to_be_bytes());
        udp.extend_from_slice(&53u16.to_be_bytes());
        udp.extend_from_slice(&1008u16.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&[0x42; 64]);
        ip.raw(PROTO_UDP, &udp)
    } else {
        ip.raw(PROTO_UDP, &[0x43; 64])
    };
    p::frame(None, &packet)
}

#[test]
fn later_fragments_follow_their_first_across_a_table_change() {
    with_program(&anycast_tests::test_name(), SIZES, |dp| {
        setup(dp, &config(ENCAP_IPIP, 30, 0));
        publish(dp, PROTO_UDP, 0, A);
        let before = dp.stats();
        assert_eq!(
            landed(dp, &fragment(1, 0)),
            A,
            "the first fragment follows the table"
        );
        // The table now sends the flow to B: datagram 1's later fragments still go to A.
        publish(dp, PROTO_UDP, 1, B);
        assert_eq!(
            landed(dp, &fragment(1, 8)),
            A,
            "a later fragment follows its first"
        );
        assert_eq!(landed(dp, &fragment(1, 16)), A, "and the last");
        // A new datagram of the same flow: its first fragment decides anew.
        assert_eq!(landed(dp, &fragment(2, 0)), B);
        assert_eq!(landed(dp, &fragment(2, 8)), B);
        let after = dp.stats();
        assert_eq!(delta(&before, &after, c::FRAGMENT_STEERED), 5);
        assert_eq!(delta(&before, &after, c::ENCAP), 5);
        assert_eq!(dp.conn_count(), 0, "fragments create no tracking entry");

        // A later fragment whose first was never seen: untouched, counted `fragment`.
        let before = dp.stats();
        assert_eq!(landed(dp, &fragment(3, 8)), LOCAL);
        let after = dp.stats();
        assert_eq!(delta(&before, &after, c::FRAGMENT), 1);
        assert_eq!(delta(&before, &after, c::FRAGMENT_STEERED), 0);
    });
}

#[test]
fn fragments_not_to_a_vip_pass_untouched() {
    with_program(&anycast_tests::test_name(), SIZES, |dp| {
        setup(dp, &config(ENCAP_IPIP, 30, 0));
        publish(dp, PROTO_UDP, 0, A);
        let mut ip = V4::new(CLIENT, net_other()).fragment(true, 0);
        ip.identification = 9;
        let first = p::frame(None, &ip.raw(PROTO_UDP, &[0u8; 72]));
        let before = dp.stats();
        assert_eq!(landed(dp, &first), LOCAL);
        assert_eq!(delta(&before, &dp.stats(), c::FRAGMENT), 1);
    });
}

fn net_other() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(203, 0, 113, 99)
}
