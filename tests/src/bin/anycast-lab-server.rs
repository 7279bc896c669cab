//! The lab's backend service: run inside a backend's network namespace, it answers every TCP
//! connection and every UDP datagram with its own name, so a client can tell which backend a
//! flow landed on.
//!
//! Usage: `anycast-lab-server NAME TCP_PORT UDP_PORT ADDR...`
//!
//! TCP: reads the request (up to a blank line, 4 KiB or 2 s) and answers
//! `HTTP/1.0 200 OK` with body `NAME\n`, then closes. A request whose first line is `STREAM`
//! switches the connection to stream mode instead (used by `anycast-lab-conns`, see
//! `anycast_tests::lab::conns`): the server answers `NAME\n` and then echoes every byte it
//! receives until the client closes, so data flows both ways for as long as the client likes.
//! A request whose first line is `UPLOAD N` (the path MTU lab) makes the server read N bytes
//! more (those sent after the line included) and answer `NAME N\n`, the count it received.
//! UDP: answers each datagram with `NAME <payload>`. It binds each ADDR (the VIPs on `lo`) rather than the wildcard, so UDP
//! replies leave from the VIP the client sent to.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, tcp_port, udp_port, addrs @ ..] = args.as_slice() else {
        eprintln!("usage: anycast-lab-server NAME TCP_PORT UDP_PORT ADDR...");
        std::process::exit(2);
    };
    let tcp_port: u16 = tcp_port.parse().expect("TCP_PORT: a port number");
    let udp_port: u16 = udp_port.parse().expect("UDP_PORT: a port number");
    let mut threads = Vec::new();
    for addr in addrs {
        let ip: IpAddr = addr.parse().unwrap_or_else(|e| panic!("ADDR {addr}: {e}"));
        let tcp = TcpListener::bind(SocketAddr::new(ip, tcp_port))
            .unwrap_or_else(|e| panic!("binding TCP {ip} port {tcp_port}: {e}"));
        let udp = UdpSocket::bind(SocketAddr::new(ip, udp_port))
            .unwrap_or_else(|e| panic!("binding UDP {ip} port {udp_port}: {e}"));
        let n = name.clone();
        threads.push(std::thread::spawn(move || serve_tcp(&tcp, &n)));
        let n = name.clone();
        threads.push(std::thread::spawn(move || serve_udp(&udp, &n)));
    }
    eprintln!("anycast-lab-server {name}: listening on {addrs:?} tcp/{tcp_port} udp/{udp_port}");
    for t in threads {
        let _ = t.join();
    }
}

fn serve_tcp(listener: &TcpListener, name: &str) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let name = name.to_owned();
                std::thread::spawn(move || {
                    if let Err(e) = answer(stream, &name) {
                        eprintln!("tcp: {e}");
                    }
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

fn answer(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    let mut end = None;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        end = request_end(&buf[..len]);
        if end.is_some() {
            break;
        }
    }
    if let Some(n) = upload_size(&buf[..len]) {
        let line_end = buf[..len]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(len, |i| i + 1);
        return upload(stream, name, n, len - line_end);
    }
    if buf[..len].starts_with(b"STREAM\r\n") || buf[..len].starts_with(b"STREAM\n") {
        // Bytes after the request belong to the stream (a client may send them at once).
        let early = buf[end.unwrap_or(len)..len].to_vec();
        return echo(stream, name, &early);
    }
    let body = format!("{name}\n");
    write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// `N` of a first line `UPLOAD N`.
fn upload_size(buf: &[u8]) -> Option<u64> {
    let line = buf.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .trim()
        .strip_prefix("UPLOAD ")?
        .parse()
        .ok()
}

/// Upload mode: reads until `n` bytes after the request line have arrived (`early` of them
/// already did), then answers with the name and the count.
fn upload(mut stream: TcpStream, name: &str, n: u64, early: usize) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut got = early as u64;
    let mut buf = vec![0u8; 64 * 1024];
    while got < n {
        let r = stream.read(&mut buf)?;
        if r == 0 {
            break;
        }
        got += r as u64;
    }
    stream.write_all(format!("{name} {got}\n").as_bytes())?;
    stream.flush()
}

/// Where the request's blank line ends, if it has one yet.
fn request_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Stream mode: the name line, then an echo of everything until EOF. No timeout: the client
/// bounds the connection's life.
fn echo(mut stream: TcpStream, name: &str, early: &[u8]) -> std::io::Result<()> {
    stream.set_read_timeout(None)?;
    stream.set_nodelay(true)?;
    stream.write_all(format!("{name}\n").as_bytes())?;
    stream.write_all(early)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return stream.shutdown(std::net::Shutdown::Write);
        }
        stream.write_all(&buf[..n])?;
    }
}

fn serve_udp(socket: &UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let mut reply = Vec::with_capacity(name.len() + 1 + n);
                reply.extend_from_slice(name.as_bytes());
                reply.push(b' ');
                reply.extend_from_slice(&buf[..n]);
                if let Err(e) = socket.send_to(&reply, peer) {
                    eprintln!("udp send to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("udp recv: {e}"),
        }
    }
}
