//! A lab's topology as data: namespaces, links, routes, agents, servers.

/// One end of a veth link.
#[derive(Clone, Debug)]
pub struct End {
    /// Short namespace name.
    pub ns: String,
    /// Short interface name (at most 15 bytes with the prefix: keep it to 6).
    pub name: String,
    /// Addresses in CIDR notation, IPv4 and IPv6.
    pub addrs: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Link {
    pub a: End,
    pub b: End,
    pub mtu: u32,
    /// `ethtool -K <dev> tx off` on both ends: packets a namespace's own stack sends leave with
    /// partial checksums, which are wrong once XDP_TX/redirect has moved them (lab.md).
    pub tx_checksum_off: bool,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub ns: String,
    /// `default` or a prefix.
    pub dst: String,
    pub via: String,
}

#[derive(Clone, Debug)]
pub struct Sysctl {
    pub ns: String,
    pub key: String,
    pub value: String,
}

/// An address on a namespace's `lo` (VIPs: no dummy devices on these kernels).
#[derive(Clone, Debug)]
pub struct LoopbackAddr {
    pub ns: String,
    pub addr: String,
}

/// An interface whose veth peer sends to it with XDP_TX/redirect: it needs a native XDP program
/// (`anycast_pass`, XDP_PASS) or those frames are dropped as `xdp_tx_errors` (lab.md).
#[derive(Clone, Debug)]
pub struct XdpPass {
    pub ns: String,
    pub interface: String,
}

#[derive(Clone, Debug)]
pub struct VipSpec {
    pub address: String,
    pub port: u16,
    pub protocol: String,
    /// (address, weight)
    pub backends: Vec<(String, u32)>,
}

/// An `anycast agent` in a namespace. `interfaces` are short names; the pin path is chosen by
/// the lab (one directory per agent in the lab's own bpffs).
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub ns: String,
    pub interfaces: Vec<String>,
    pub tunnel_source: Option<String>,
    pub tunnel_source_v6: Option<String>,
    pub encapsulation: String,
    pub decap_allow: Vec<String>,
    pub ring_size: u32,
    pub hash_seed: u32,
    /// Empty for decapsulate-only agents.
    pub vips: Vec<VipSpec>,
    /// Every VIP health-checks its backends ([`LabHealth`]).
    pub health: Option<LabHealth>,
    /// TOML appended to the generated config (a section such as `[fleet]`).
    pub extra_config: String,
}

/// Health checks of a lab agent's VIPs: TCP to `port` of each backend's address, every
/// `interval_ms`, down after 3 failures, up after 2 successes.
#[derive(Clone, Copy, Debug)]
pub struct LabHealth {
    pub port: u16,
    pub interval_ms: u32,
}

/// An `anycast-lab-server` answering with `name` on `addrs` (usually the VIPs on `lo`).
#[derive(Clone, Debug)]
pub struct ServerSpec {
    pub ns: String,
    pub name: String,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub addrs: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// Short namespace names, in creation order.
    pub namespaces: Vec<String>,
    pub sysctls: Vec<Sysctl>,
    pub links: Vec<Link>,
    pub loopback: Vec<LoopbackAddr>,
    pub routes: Vec<Route>,
    pub xdp_pass: Vec<XdpPass>,
    pub agents: Vec<AgentSpec>,
    pub servers: Vec<ServerSpec>,
}
