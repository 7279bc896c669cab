//! Second chance, through BPF_PROG_TEST_RUN: after a table change, an edge without state for a
//! mid-flow TCP packet names the previous owner in the GUE header; the receiving host delivers
//! the packet if one of its sockets holds the flow, else sends it on once, without a hint, to the
//! previous owner. Under IPIP (no hint), the receiving host computes the previous owner from its
//! own tables. Every second chance leaves with outer TTL 255, and a packet that arrives with more
//! than 64 is delivered, never sent on: one hop at most. Bare SYNs and UDP never take the extra
//! hop.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

use anycast_common::{
    AddrKey, ENCAP_GUE, ENCAP_IPIP, FAMILY_V4, GUE_HINT_MAGIC, PROTO_IPIP, PROTO_TCP, PROTO_UDP,
    counter as c,
};
use anycast_tests::fixture::{Dataplane, XDP_PASS, XDP_REDIRECT, fixture_netns, net, with_program};
use anycast_tests::one_vip::{
    self as one, A, B, CLIENT, LOCAL, SIZES, TCP_ACK, TCP_SYN, VIP, tcp_frame,
};
use anycast_tests::packet::{self as p, V4, outer_dst_v4 as ipv4_dst};

fn addr(id: u32) -> Ipv4Addr {
    one::backend_addr(id)
}

/// The three backends, `encap`, this host's address, and decapsulation from 198.19.0.0/16.
fn setup(dp: &mut Dataplane, encap: u8) {
    one::setup(dp, &one::config(encap, 30, 0));
    dp.add_local(AddrKey::v4(net::EDGE_V4.octets()));
    dp.allow_v4(Ipv4Addr::new(198, 19, 0, 0), 16);
}

/// `body` with the program loaded and set up for `encap`.
fn with_edge(test: &str, encap: u8, body: impl FnOnce(&mut Dataplane) + Send) {
    with_program(test, SIZES, |dp| {
        setup(dp, encap);
        body(dp)
    });
}

/// `body` as [`with_edge`], in a namespace whose sockets hold an established connection from
/// the client's port `sport` to the VIP (the receiving host's view of a flow it owns).
fn with_receiver(test: &str, sport: u16, encap: u8, body: impl FnOnce(&mut Dataplane) + Send) {
    if !anycast_tests::privileged(test) {
        return;
    }
    let ns = fixture_netns();
    ns.ip(&format!("addr add {VIP}/32 dev lo"));
    ns.ip(&format!("addr add {CLIENT}/32 dev lo"));
    ns.enter(|| {
        let (_listener, sock, _accepted) = established(sport);
        let mut dp = Dataplane::load(SIZES);
        setup(&mut dp, encap);
        body(&mut dp);
        drop(sock);
    });
}

/// The VIP's table moved from `old` to `new` (every slot): live table 1, previous table 0.
fn changed(dp: &mut Dataplane, proto: u8, old: u32, new: u32) {
    dp.set_table(0, &vec![old; one::RING as usize]);
    one::publish_change(dp, proto, 1, new, 0);
}

/// An IPIP packet from edge 198.19.5.1 to this host with outer TTL `ttl`, carrying `inner`.
fn ipip_from_edge(inner: &[u8], ttl: u8) -> Vec<u8> {
    let mut outer = V4::new(Ipv4Addr::new(198, 19, 5, 1), net::EDGE_V4);
    outer.ttl = ttl;
    p::frame(None, &outer.raw(PROTO_IPIP, inner))
}

/// A client connection inside the namespace (client 198.18.100.7:`sport` -> VIP:80), so that
/// the namespace holds an established socket for exactly that flow. Keep both ends alive.
fn established(sport: u16) -> (TcpListener, socket2::Socket, std::net::TcpStream) {
    let listener = TcpListener::bind(SocketAddrV4::new(VIP, 80)).expect("listen on the VIP");
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddrV4::new(CLIENT, sport).into())
        .expect("bind client port");
    sock.connect(&SocketAddrV4::new(VIP, 80).into())
        .expect("connect");
    let (mut accepted, _) = listener.accept().expect("accept");
    accepted.set_nonblocking(true).expect("nonblocking");
    let _ = accepted.read(&mut [0u8; 1]);
    (listener, sock, accepted)
}

fn tcp(src: Ipv4Addr, sport: u16, flags: u8) -> Vec<u8> {
    one::tcp_packet(src, sport, flags)
}

/// Outer IPv4 destination, GUE header length (words) and hinted previous owner of an
/// encapsulated frame.
fn outer(frame: &[u8]) -> (Ipv4Addr, u8, Option<Ipv4Addr>) {
    let dst = ipv4_dst(frame);
    assert_eq!(frame[23], PROTO_UDP, "GUE expected");
    let hlen = frame[42] & 0x1f;
    let hint = (hlen == 2).then(|| {
        assert_eq!(&frame[46..48], &GUE_HINT_MAGIC, "hint magic");
        assert_eq!(frame[48], FAMILY_V4, "hint family");
        Ipv4Addr::new(frame[50], frame[51], frame[52], frame[53])
    });
    (dst, hlen, hint)
}

#[test]
fn edge_names_the_previous_owner_for_unknown_mid_flow_packets() {
    let test = "edge_names_the_previous_owner_for_unknown_mid_flow_packets";
    with_edge(test, ENCAP_GUE, |dp| {
        changed(dp, PROTO_TCP, A, B);

        let before = dp.stats();
        let r = dp.run(&tcp_frame(40000, TCP_ACK), None).expect("run");
        assert_eq!(r.action, XDP_REDIRECT);
        assert_eq!(
            outer(&r.output),
            (addr(B), 2, Some(addr(A))),
            "to the new owner, hint = old owner"
        );
        let after = dp.stats();
        assert_eq!(one::delta(&before, &after, c::HINT_SENT), 1);
        assert_eq!(
            dp.conn_count(),
            0,
            "a hinted flow is not tracked (the hint must ride every packet)"
        );

        // A new connection belongs to the new table: no hint on its SYN.
        let r = dp.run(&tcp_frame(40001, TCP_SYN), None).expect("run");
        assert_eq!(outer(&r.output), (addr(B), 0, None));

        // Same owner in both tables: no hint, and the flow is tracked as usual.
        changed(dp, PROTO_TCP, B, B);
        let r = dp.run(&tcp_frame(40002, TCP_ACK), None).expect("run");
        assert_eq!(outer(&r.output), (addr(B), 0, None));
        assert_eq!(dp.conn_count(), 1);

        // IPIP cannot carry a hint: plain encapsulation with the ordinary TTL, and the flow is
        // tracked to the new owner (which computes the previous owner itself), so that the edge
        // keeps it there whatever the tables do next.
        dp.clear_conns();
        dp.set_config(&one::config(ENCAP_IPIP, 30, 0));
        changed(dp, PROTO_TCP, A, B);
        let ack = tcp_frame(40003, TCP_ACK);
        let r = dp.run(&ack, None).expect("run");
        assert_eq!(r.output[23], PROTO_IPIP);
        assert_eq!(ipv4_dst(&r.output), addr(B));
        assert_eq!(r.output[22], p::OUTER_TTL, "not a second chance: TTL 64");
        assert_eq!(dp.conn_count(), 1, "tracked under IPIP");
        // The next table gives the slot back to A: the tracked flow stays on B.
        changed(dp, PROTO_TCP, B, A);
        let before = dp.stats();
        let r = dp.run(&ack, None).expect("run");
        assert_eq!(ipv4_dst(&r.output), addr(B), "the tracked owner");
        assert_eq!(one::delta(&before, &dp.stats(), c::CONN_HIT), 1);
    });
}

#[test]
fn receiver_without_a_socket_forwards_once_to_the_hinted_owner() {
    let test = "receiver_without_a_socket_forwards_once_to_the_hinted_owner";
    // A real connection inside the namespace: client 198.18.100.7:41000 -> VIP:80.
    with_receiver(test, 41000, ENCAP_GUE, |dp| {
        // A tunnelled packet from edge 198.19.5.1 to this host, naming A as previous owner.
        let tunnelled = |sport: u16, flags: u8| {
            let inner = tcp(CLIENT, sport, flags);
            let mut gue = vec![
                2,
                4,
                0,
                0,
                GUE_HINT_MAGIC[0],
                GUE_HINT_MAGIC[1],
                FAMILY_V4,
                0,
            ];
            gue.extend_from_slice(&addr(A).octets());
            gue.extend_from_slice(&inner);
            p::frame(
                None,
                &V4::new(Ipv4Addr::new(198, 19, 5, 1), net::EDGE_V4).udp(
                    50000,
                    anycast_common::GUE_DEFAULT_PORT,
                    &gue,
                ),
            )
        };

        // No socket holds 41001 (only the listener matches): sent on to A, without a hint.
        let before = dp.stats();
        let r = dp.run(&tunnelled(41001, TCP_ACK), None).expect("run");
        assert_eq!(r.action, XDP_REDIRECT);
        assert_eq!(
            outer(&r.output),
            (addr(A), 0, None),
            "second chance goes to the hinted owner, hint removed"
        );
        // The inner packet travels unchanged.
        assert_eq!(&r.output[46..], &tcp(CLIENT, 41001, TCP_ACK)[..]);
        assert_eq!(r.output[22], 255, "a second chance leaves with TTL 255");
        let after = dp.stats();
        assert_eq!(one::delta(&before, &after, c::SECOND_CHANCE), 1);
        assert_eq!(
            one::delta(&before, &after, c::SECOND_CHANCE_TABLE),
            0,
            "hinted, not computed"
        );

        // The established flow is delivered here.
        let r = dp.run(&tunnelled(41000, TCP_ACK), None).expect("run");
        assert_eq!(r.action, XDP_PASS);
        assert_eq!(
            &r.output[14..],
            &tcp(CLIENT, 41000, TCP_ACK)[..],
            "decapsulated"
        );

        // A SYN is a new connection for this host: delivered, never forwarded.
        let r = dp.run(&tunnelled(41002, TCP_SYN), None).expect("run");
        assert_eq!(r.action, XDP_PASS);

        // The forwarded packet carries no hint and TTL 255, so its receiver cannot send it on
        // again, not even from its own tables (here: a table change that names A as the
        // previous owner).
        changed(dp, PROTO_TCP, A, LOCAL);
        let mut outer = V4::new(Ipv4Addr::new(198, 19, 5, 1), net::EDGE_V4);
        outer.ttl = 255;
        let forwarded = p::frame(
            None,
            &outer.udp(
                50000,
                anycast_common::GUE_DEFAULT_PORT,
                &p::gue_v0(&tcp(CLIENT, 41001, TCP_ACK), 0),
            ),
        );
        let before = dp.stats();
        let r = dp.run(&forwarded, None).expect("run");
        assert_eq!(r.action, XDP_PASS);
        assert_eq!(
            one::delta(&before, &dp.stats(), c::SECOND_CHANCE_LAST_HOP),
            1
        );
    });
}

#[test]
fn edge_that_is_the_new_owner_without_the_socket_sends_to_the_previous_owner() {
    let test = "edge_that_is_the_new_owner_without_the_socket_sends_to_the_previous_owner";
    with_edge(test, ENCAP_IPIP, |dp| {
        changed(dp, PROTO_TCP, A, LOCAL);
        let frame = tcp_frame(42000, TCP_ACK);
        let before = dp.stats();
        let r = dp.run(&frame, None).expect("run");
        assert_eq!(
            r.action, XDP_REDIRECT,
            "no local socket: to the previous owner"
        );
        assert_eq!(ipv4_dst(&r.output), addr(A));
        assert_eq!(r.output[22], 255, "a second chance leaves with TTL 255");
        assert_eq!(one::delta(&before, &dp.stats(), c::SECOND_CHANCE), 1);
        assert_eq!(
            dp.conn_count(),
            0,
            "the edge checks its sockets on every packet"
        );
        // A SYN stays here.
        let r = dp.run(&tcp_frame(42001, TCP_SYN), None).expect("run");
        assert_eq!(
            (r.action, r.output.len()),
            (XDP_PASS, tcp_frame(42001, TCP_SYN).len())
        );
        // Without a table change there is no second chance.
        one::publish(dp, PROTO_TCP, 1, LOCAL);
        let r = dp.run(&frame, None).expect("run");
        assert_eq!(r.action, XDP_PASS);
    });
}

#[test]
fn receiver_computes_the_previous_owner_of_an_ipip_flow_from_its_own_tables() {
    let test = "receiver_computes_the_previous_owner_of_an_ipip_flow_from_its_own_tables";
    with_receiver(test, 43000, ENCAP_IPIP, |dp| {
        // This host is the new owner; A owned every slot before.
        changed(dp, PROTO_TCP, A, LOCAL);

        // No socket for 43001: sent on to A, from this host's own tables.
        let inner = tcp(CLIENT, 43001, TCP_ACK);
        let before = dp.stats();
        let r = dp.run(&ipip_from_edge(&inner, 63), None).expect("run");
        assert_eq!(r.action, XDP_REDIRECT, "to the previous owner");
        assert_eq!(r.output[23], PROTO_IPIP);
        assert_eq!(ipv4_dst(&r.output), addr(A));
        assert_eq!(r.output[22], 255, "a second chance leaves with TTL 255");
        assert_eq!(
            &r.output[34..],
            &inner[..],
            "the inner packet travels unchanged"
        );
        let after = dp.stats();
        assert_eq!(one::delta(&before, &after, c::SECOND_CHANCE), 1);
        assert_eq!(one::delta(&before, &after, c::SECOND_CHANCE_TABLE), 1);
        assert_eq!(one::delta(&before, &after, c::DECAP), 0);

        // The established flow is delivered here.
        let r = dp
            .run(&ipip_from_edge(&tcp(CLIENT, 43000, TCP_ACK), 63), None)
            .expect("run");
        assert_eq!(r.action, XDP_PASS);
        assert_eq!(&r.output[14..], &tcp(CLIENT, 43000, TCP_ACK)[..]);

        // A SYN is a new connection for this host.
        let r = dp
            .run(&ipip_from_edge(&tcp(CLIENT, 43002, TCP_SYN), 63), None)
            .expect("run");
        assert_eq!(r.action, XDP_PASS);

        // Already a second chance (outer TTL above 64): delivered, counted, never sent on.
        let before = dp.stats();
        let r = dp.run(&ipip_from_edge(&inner, 254), None).expect("run");
        assert_eq!(r.action, XDP_PASS);
        assert_eq!(&r.output[14..], &inner[..], "decapsulated");
        let after = dp.stats();
        assert_eq!(one::delta(&before, &after, c::SECOND_CHANCE_LAST_HOP), 1);
        assert_eq!(one::delta(&before, &after, c::DECAP), 1);
        assert_eq!(one::delta(&before, &after, c::SECOND_CHANCE), 0);

        // This host owned the slot before, and B owns it now: an edge that tracked the flow to
        // this host under the previous table still sends it here. It goes on to B.
        changed(dp, PROTO_TCP, LOCAL, B);
        let r = dp.run(&ipip_from_edge(&inner, 63), None).expect("run");
        assert_eq!(r.action, XDP_REDIRECT);
        assert_eq!(ipv4_dst(&r.output), addr(B), "to the live table's owner");
        assert_eq!(r.output[22], 255);

        // Both tables agree on A, and no previous table names A: to A.
        changed(dp, PROTO_TCP, A, A);
        let r = dp.run(&ipip_from_edge(&inner, 63), None).expect("run");
        assert_eq!(ipv4_dst(&r.output), addr(A));

        // This host owns the slot, in both tables or with no previous table: delivered here
        // (its stack answers as it would).
        changed(dp, PROTO_TCP, LOCAL, LOCAL);
        let before = dp.stats();
        let r = dp.run(&ipip_from_edge(&inner, 63), None).expect("run");
        assert_eq!(r.action, XDP_PASS);
        one::publish(dp, PROTO_TCP, 1, LOCAL);
        let r = dp.run(&ipip_from_edge(&inner, 63), None).expect("run");
        assert_eq!(r.action, XDP_PASS);
        // No previous table, another owner: the tables never changed, so nothing moved; the
        // packet is this host's to deliver (as a decapsulating host always did).
        one::publish(dp, PROTO_TCP, 1, A);
        let r = dp.run(&ipip_from_edge(&inner, 63), None).expect("run");
        assert_eq!(r.action, XDP_PASS);
        assert_eq!(one::delta(&before, &dp.stats(), c::DECAP), 3);

        // Not a VIP of this host: decapsulated and delivered as before.
        changed(dp, PROTO_TCP, A, LOCAL);
        let other = V4::new(CLIENT, Ipv4Addr::new(203, 0, 113, 99))
            .raw(PROTO_TCP, &one::tcp_segment(43001, TCP_ACK));
        let r = dp.run(&ipip_from_edge(&other, 63), None).expect("run");
        assert_eq!(r.action, XDP_PASS);
        assert_eq!(&r.output[14..], &other[..]);
    });
}
