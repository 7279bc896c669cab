//! Path MTU end to end: the reference topology with 1500 bytes on every link, so a full-size
//! client packet no longer fits the link from the edge to a backend once encapsulated. The edge
//! answers it with ICMP "fragmentation needed" / ICMPv6 "packet too big"; the client's TCP lowers
//! its segment size, and uploads of several MB to a remote backend complete, over IPIP and GUE,
//! IPv4 and IPv6.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anycast::plan::model::Outcome;
use anycast_tests::lab::{Lab, reference};
use socket2::{Domain, Socket, Type};

/// Bytes uploaded per flow.
const UPLOAD: usize = 4 << 20;
/// Every link, the edges' and backends' included.
const MTU: u32 = 1500;

fn lab(encapsulation: &str) -> Lab {
    let lab = reference::start_with(&reference::Options {
        encapsulation: encapsulation.to_owned(),
        fabric_mtu: MTU,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("starting the lab: {e}"));
    reference::route_vips_to(&lab, reference::EDGE1).expect("routing the VIPs to edge1");
    lab
}

/// Uploads [`UPLOAD`] bytes from the client to `vip`:80 on a flow that edge1 sends to a remote
/// backend; returns that backend's name and the byte count it reports.
fn upload(lab: &Lab, client: IpAddr, vip: IpAddr) -> (String, u64) {
    let agent = lab.agent_client(reference::EDGE1);
    let target = SocketAddr::new(vip, reference::TCP_PORT);
    // A client port whose flow is encapsulated (edge1 is a backend too: skip its own flows).
    let (port, backend) = (46000u16..46100)
        .find_map(|port| {
            let flow = format!("tcp {} {target}", SocketAddr::new(client, port));
            match agent.lookup(&flow).expect("lookup").outcome {
                Outcome::Encap { backend, .. } => Some((port, backend)),
                _ => None,
            }
        })
        .expect("a client port whose flow goes to a remote backend");
    lab.in_netns(reference::CLIENT, || -> std::io::Result<(String, u64)> {
        let domain = if client.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let s = Socket::new(domain, Type::STREAM, None)?;
        s.bind(&SocketAddr::new(client, port).into())?;
        s.connect_timeout(&target.into(), Duration::from_secs(5))?;
        let mut stream: std::net::TcpStream = s.into();
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_write_timeout(Some(Duration::from_secs(60)))?;
        stream.write_all(format!("UPLOAD {UPLOAD}\n").as_bytes())?;
        let chunk = vec![0x5au8; 64 * 1024];
        for _ in 0..UPLOAD / chunk.len() {
            stream.write_all(&chunk)?;
        }
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        let mut f = line.split_whitespace();
        let name = f.next().unwrap_or_default().to_owned();
        let count = f.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((name, count))
    })
    .expect("client namespace")
    .unwrap_or_else(|e| panic!("upload to {target} from port {port} (backend {backend}): {e}"))
}

#[test]
fn uploads_of_several_mb_through_a_1500_byte_fabric_complete_over_ipip_and_gue() {
    if !anycast_tests::privileged(&anycast_tests::test_name()) {
        return;
    }
    for encapsulation in ["ipip", "gue"] {
        let lab = lab(encapsulation);
        let agent = lab.agent_client(reference::EDGE1);
        for (client, vip) in [
            (reference::CLIENT_V4, reference::VIP_V4),
            (reference::CLIENT_V6, reference::VIP_V6),
        ] {
            let (client, vip): (IpAddr, IpAddr) = (client.parse().unwrap(), vip.parse().unwrap());
            let before = agent.stats().expect("stats").counter("icmp_too_big");
            let (name, count) = upload(&lab, client, vip);
            let after = agent.stats().expect("stats").counter("icmp_too_big");
            println!(
                "{encapsulation} {client} -> {vip}: {count} bytes reached {name}; the edge answered {} packets too big",
                after.unwrap_or(0) - before.unwrap_or(0)
            );
            assert_eq!(
                count, UPLOAD as u64,
                "{encapsulation} {vip}: the upload to {name}"
            );
            assert!(
                after > before,
                "{encapsulation} {vip}: the edge never answered a packet too big, so the test did not test it"
            );
        }
    }
}
