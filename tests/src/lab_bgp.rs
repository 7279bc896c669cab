//! The reference lab with BGP instead of hand-set routes: BIRD in the router namespace (ECMP
//! with `merge paths on`, BFD 200 ms x 5) peering with the two edges, whose agents run a managed
//! BIRD from their `[bgp]` section and announce the VIPs.
//!
//! ```text
//!                      AS 65000                      AS 65001 (both edges)
//!   client -- router (BIRD: ECMP, BFD) ==eBGP+BFD== edge1 (agent + its BIRD)
//!                                      ==eBGP+BFD== edge2 (agent + its BIRD)
//!                   -- backend1, backend2 (decapsulating agents, servers)
//! ```
//!
//! The router learns each VIP prefix from every edge that announces it and installs one
//! multipath route; it hashes on the L4 ports (`fib_multipath_hash_policy = 1`), so one client's
//! connections spread over the edges. Every BIRD started here dies with the lab: the router's
//! through [`Lab::spawn`], the edges' (started by their agents, which they outlive when killed:
//! [`BgpLab::kill_edge`]) with the lab's namespaces, whose processes the lab kills; configs,
//! sockets, pid files and logs live in the lab's run directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anycast::proto::Status;
use nix::sys::signal::Signal;

use crate::lab::reference::{self, *};
use crate::lab::{
    AgentSpec, Lab, LabError, LabHealth, Result, ServerSpec, Sysctl, Topology, VipSpec, find_binary,
};

mod restart;
mod serial;

pub use restart::{RouteSample, same_routes, watch_route};

pub const ROUTER_AS: u32 = 65000;
/// Both edges: identical attributes (AS path, origin, no MED) are what ECMP needs.
pub const EDGE_AS: u32 = 65001;
/// Port of the health-check servers on the backends' own addresses.
pub const HEALTH_PORT: u16 = 8081;
pub const EDGES: [&str; 2] = [EDGE1, EDGE2];

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Edge1 health-checks its backends (TCP to [`HEALTH_PORT`], every 100 ms, fall 3, rise 2);
    /// servers on that port run on every backend ([`BgpLab::stop_health_servers`]).
    pub edge1_health: bool,
    /// Every agent (both edges and both backends) health-checks the backends the same way, so
    /// that all of them keep the same tables through a health change.
    pub all_health: bool,
    /// The health checks' interval (default 100 ms).
    pub health_interval_ms: Option<u32>,
    /// Encapsulation and weights of the reference topology.
    pub reference: reference::Options,
    /// The VIPs of every agent (edges and backends), if not the reference ones
    /// ([`reference::vips_with`]).
    pub vips: Option<Vec<VipSpec>>,
    /// BFD between the router and the edges, `(interval_ms, multiplier)`, both sides (default
    /// [`DEFAULT_BFD`]).
    pub bfd: Option<(u32, u32)>,
    /// TOML appended to the config of the agent in a namespace (by short name), e.g. `[fleet]`.
    pub extra_config: BTreeMap<String, String>,
}

/// BFD in the lab unless [`Options::bfd`] says otherwise: 200 ms x 5, 1 s to detect.
pub const DEFAULT_BFD: (u32, u32) = (200, 5);

/// The agent spec of `ns` (an edge or a backend) for `opts`, with `vips` if given.
fn agent_spec(opts: &Options, ns: &str, vips: Option<&Vec<VipSpec>>) -> Result<AgentSpec> {
    let mut spec = reference::topology_with(&opts.reference)
        .agents
        .into_iter()
        .find(|a| a.ns == ns)
        .ok_or_else(|| LabError::Setup(format!("no agent spec for {ns}")))?;
    if let Some(v) = vips.or(opts.vips.as_ref()) {
        spec.vips = v.clone();
    }
    if let Some(extra) = opts.extra_config.get(ns) {
        spec.extra_config.clone_from(extra);
    }
    if opts.all_health || (ns == EDGE1 && opts.edge1_health) {
        spec.health = Some(LabHealth {
            port: HEALTH_PORT,
            interval_ms: opts.health_interval_ms.unwrap_or(100),
        });
    }
    Ok(spec)
}

/// The agents that run in every BGP lab, by namespace.
pub const HOSTS: [&str; 4] = [EDGE1, EDGE2, BACKEND1, BACKEND2];

/// The short names of an edge's interface and of the router's end of its link.
fn edge_devs(edge: &str) -> (&'static str, &'static str) {
    match edge {
        EDGE1 => ("e1-r", "r-e1"),
        EDGE2 => ("e2-r", "r-e2"),
        other => panic!("{other} is not an edge"),
    }
}

/// The router-facing addresses of an edge and of the router's end of its link.
pub fn edge_link(edge: &str) -> (&'static str, &'static str, &'static str, &'static str) {
    match edge {
        EDGE1 => (EDGE1_V4, EDGE1_V6, "198.18.2.1", "fd00:2::1"),
        EDGE2 => (EDGE2_V4, EDGE2_V6, "198.18.3.1", "fd00:3::1"),
        other => panic!("{other} is not an edge"),
    }
}

fn sysctl(ns: &str, key: &str, value: &str) -> Sysctl {
    Sysctl {
        ns: ns.to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// The reference topology without the router's hand-set VIP routes and without the edge agents
/// (started by [`BgpLab::start`] with a `[bgp]` section).
pub fn topology(opts: &Options) -> Result<Topology> {
    let mut t = reference::topology_with(&opts.reference);
    t.routes
        .retain(|r| !(r.ns == ROUTER && (r.dst.starts_with(VIP_V4) || r.dst.starts_with(VIP_V6))));
    t.agents.retain(|a| !EDGES.contains(&a.ns.as_str()));
    for a in &mut t.agents {
        *a = agent_spec(opts, &a.ns, None)?;
    }
    // L4 hashing: the default (L3) would put every connection of one client on one edge.
    t.sysctls
        .push(sysctl(ROUTER, "net.ipv4.fib_multipath_hash_policy", "1"));
    t.sysctls
        .push(sysctl(ROUTER, "net.ipv6.fib_multipath_hash_policy", "1"));
    if opts.edge1_health || opts.all_health {
        t.servers.extend(health_servers("0"));
    }
    Ok(t)
}

/// The hosts of the backends, where the health-check servers run.
pub const HEALTH_HOSTS: [&str; 3] = [BACKEND1, BACKEND2, EDGE1];

/// Health-check servers on the backends' own addresses, named `hc<generation>-<backend>`.
fn health_servers(generation: &str) -> Vec<ServerSpec> {
    [
        (BACKEND1, BACKEND1_V4, BACKEND1_V6),
        (BACKEND2, BACKEND2_V4, BACKEND2_V6),
        (EDGE1, EDGE1_V4, EDGE1_V6),
    ]
    .iter()
    .map(|(ns, v4, v6)| ServerSpec {
        ns: (*ns).to_owned(),
        name: format!("hc{generation}-{ns}"),
        tcp_port: HEALTH_PORT,
        udp_port: HEALTH_PORT,
        addrs: vec![(*v4).to_owned(), (*v6).to_owned()],
    })
    .collect()
}

/// The router's BIRD config: one eBGP session per edge and family, BFD on each, ECMP into the
/// kernel. Imports everything the edges send (they send only VIP prefixes), exports nothing.
pub fn router_bird_config(bfd: (u32, u32)) -> String {
    let (i, k) = bfd;
    let mut s = format!(
        "router id 198.18.1.1;\n\
         log stderr all;\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel k4 {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         protocol kernel k6 {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n\
         protocol bfd {{ interface \"*\" {{ min rx interval {i} ms; min tx interval {i} ms; multiplier {k}; }}; }}\n",
    );
    for edge in EDGES {
        let (v4, v6, _, _) = edge_link(edge);
        for (family, addr) in [("ipv4", v4), ("ipv6", v6)] {
            s.push_str(&format!(
                "protocol bgp {edge}_{family} {{\n  local as {ROUTER_AS};\n  neighbor {addr} as {EDGE_AS};\n  \
                 hold time 9; keepalive time 3; connect delay time 1; connect retry time 2; error wait time 1, 5;\n  \
                 bfd on;\n  {family} {{ import all; export none; }};\n}}\n"
            ));
        }
    }
    s
}

/// A BGP lab: the [`Lab`] plus what it takes to drive and watch the routing.
pub struct BgpLab {
    pub lab: Lab,
    pub opts: Options,
    bin: String,
    generation: u32,
    /// Generation of each host's health-check server (part of its name).
    health_generation: BTreeMap<String, u32>,
    /// The process name of each edge's running agent.
    agents: BTreeMap<String, String>,
    /// The VIPs each edge's config lists.
    vips: BTreeMap<String, Vec<VipSpec>>,
}

impl BgpLab {
    /// Builds the lab, starts the router's BIRD, backends, servers and both edge agents, and
    /// waits (bounded) until the router has an ECMP route over both edges for both VIPs.
    pub fn start(opts: Options) -> Result<BgpLab> {
        let lab = Lab::build(&topology(&opts)?)?;
        let bin = find_binary("anycast", "ANYCAST_BIN")?
            .to_string_lossy()
            .into_owned();
        let vips = opts
            .vips
            .clone()
            .unwrap_or_else(|| reference::vips_with(&opts.reference));
        let mut b = BgpLab {
            lab,
            opts,
            bin,
            generation: 0,
            health_generation: BTreeMap::new(),
            agents: BTreeMap::new(),
            vips: HOSTS
                .iter()
                .map(|e| ((*e).to_owned(), vips.clone()))
                .collect(),
        };
        b.lab.start_dataplane()?;
        let conf = b.lab.dir().join("bird-router.conf");
        std::fs::write(&conf, router_bird_config(b.opts.bfd.unwrap_or(DEFAULT_BFD)))
            .map_err(|e| LabError::Setup(format!("writing {}: {e}", conf.display())))?;
        let sock = b.router_socket();
        let (conf, sock_s) = (
            conf.to_string_lossy().into_owned(),
            sock.to_string_lossy().into_owned(),
        );
        b.lab.spawn(
            ROUTER,
            "bird-router",
            &["bird", "-f", "-c", &conf, "-s", &sock_s],
            &[],
        )?;
        for edge in EDGES {
            b.start_edge(edge)?;
        }
        let all = [EDGE1_V4, EDGE2_V4];
        b.wait_nexthops(VIP_V4, &all, Duration::from_secs(20))?;
        b.wait_nexthops(VIP_V6, &[EDGE1_V6, EDGE2_V6], Duration::from_secs(10))?;
        Ok(b)
    }

    pub fn router_socket(&self) -> PathBuf {
        self.lab.dir().join("bird-router.ctl")
    }

    /// The managed BIRD's directory of `edge`'s agent (config, control socket).
    pub fn edge_bird_dir(&self, edge: &str) -> PathBuf {
        self.lab.dir().join(format!("bird-{edge}"))
    }

    /// The agent config of `ns` (an edge or a backend): the lab's with the VIPs it was last
    /// given, `[vip.health]` when the options ask, and `[bgp]` on an edge.
    pub fn agent_config(&self, ns: &str) -> Result<String> {
        let spec = agent_spec(&self.opts, ns, self.vips.get(ns))?;
        let mut text = self.lab.agent_config(&spec)?;
        if EDGES.contains(&ns) {
            let (v4, _, r4, r6) = edge_link(ns);
            let (bfd_i, bfd_k) = self.opts.bfd.unwrap_or(DEFAULT_BFD);
            text.push_str(&format!(
                "\n[bgp]\nlocal_as = {EDGE_AS}\nrouter_id = \"{v4}\"\n\
                 neighbors = [{{ address = \"{r4}\", as = {ROUTER_AS} }}, {{ address = \"{r6}\", as = {ROUTER_AS} }}]\n\
                 bfd_interval_ms = {bfd_i}\nbfd_multiplier = {bfd_k}\nhold_time = 9\nkeepalive_time = 3\n\
                 run_dir = {:?}\n",
                self.edge_bird_dir(ns).display().to_string()
            ));
        }
        Ok(text)
    }

    /// `edge`'s agent config ([`BgpLab::agent_config`]).
    pub fn edge_config(&self, edge: &str) -> Result<String> {
        self.agent_config(edge)
    }

    /// Writes `edge`'s config and starts its agent (which starts its BIRD); waits until XDP is
    /// attached.
    pub fn start_edge(&mut self, edge: &str) -> Result<()> {
        let path = self.lab.agent_config_path(edge);
        std::fs::write(&path, self.edge_config(edge)?)
            .map_err(|e| LabError::Setup(format!("writing {}: {e}", path.display())))?;
        let path = path.to_string_lossy().into_owned();
        self.generation += 1;
        let name = format!("agent-{edge}-{}", self.generation);
        let bin = self.bin.clone();
        self.lab.spawn(
            edge,
            &name,
            &[&bin, "agent", "--config", &path],
            &[("RUST_LOG", "info")],
        )?;
        self.agents.insert(edge.to_owned(), name.clone());
        let dev = self.lab.ifname(edge_devs(edge).0)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.lab.check_alive()?;
            if self
                .lab
                .ip(edge, &["-d", "link", "show", "dev", &dev])?
                .contains("prog/xdp")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Setup(format!(
                    "agent in {edge} did not attach within 20 s:\n{}",
                    self.lab.log(&name)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops `edge`'s agent with SIGTERM (it withdraws every VIP before it exits; its BIRD dies
    /// with it; the pinned dataplane stays attached) and waits until it has exited.
    pub fn stop_edge(&mut self, edge: &str) -> Result<()> {
        let name = self
            .agents
            .remove(edge)
            .ok_or_else(|| LabError::Setup(format!("no agent running in {edge}")))?;
        let statuses = self
            .lab
            .stop(&name, Signal::SIGTERM, Duration::from_secs(10))?;
        if statuses.iter().all(std::process::ExitStatus::success) {
            Ok(())
        } else {
            Err(LabError::Setup(format!(
                "{name} exited with {statuses:?} on SIGTERM:\n{}",
                self.lab.log(&name)
            )))
        }
    }

    /// Gives the agent in `ns` (an edge or a backend) another list of VIPs: rewrites its config
    /// (a rename, so the agent's file watch never reads half a file) and sends it SIGHUP. The
    /// agent applies the difference; watch its tables (fingerprints) to know when.
    pub fn set_vips(&mut self, ns: &str, vips: Vec<VipSpec>) -> Result<()> {
        self.vips.insert(ns.to_owned(), vips);
        let path = self.lab.agent_config_path(ns);
        let tmp = path.with_extension("toml.new");
        std::fs::write(&tmp, self.agent_config(ns)?)
            .map_err(|e| LabError::Setup(format!("writing {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| LabError::Setup(format!("replacing {}: {e}", path.display())))?;
        let name = if EDGES.contains(&ns) {
            self.agents
                .get(ns)
                .cloned()
                .ok_or_else(|| LabError::Setup(format!("no agent running in {ns}")))?
        } else {
            format!("agent-{ns}")
        };
        match self.lab.signal(&name, Signal::SIGHUP) {
            1 => Ok(()),
            n => Err(LabError::Setup(format!("{n} processes named {name}"))),
        }
    }

    /// [`BgpLab::set_vips`] for an edge.
    pub fn set_edge_vips(&mut self, edge: &str, vips: Vec<VipSpec>) -> Result<()> {
        self.set_vips(edge, vips)
    }

    /// The log of `edge`'s running agent alone (not its predecessors').
    pub fn current_edge_log(&self, edge: &str) -> String {
        self.agents
            .get(edge)
            .map(|name| self.lab.log(name))
            .unwrap_or_default()
    }

    /// The log of `edge`'s current agent (its BIRD logs there too).
    pub fn edge_log(&self, edge: &str) -> String {
        (1..=self.generation)
            .map(|g| self.lab.log(&format!("agent-{edge}-{g}")))
            .collect::<Vec<_>>()
            .join("")
    }

    /// The next hops of the router's route to `vip` (empty: no route).
    pub fn nexthops(&self, vip: &str) -> Result<Vec<String>> {
        let family = if vip.contains(':') { "-6" } else { "-4" };
        let out = self.lab.ip(ROUTER, &[family, "route", "show", vip])?;
        let mut hops: Vec<String> = out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_owned())
            .collect();
        hops.sort();
        Ok(hops)
    }

    /// Waits until the router's route to `vip` goes exactly through `want` (any order); returns
    /// how long that took. Polls every 10 ms.
    pub fn wait_nexthops(&self, vip: &str, want: &[&str], timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        loop {
            let have = self.nexthops(vip)?;
            if have == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(LabError::Setup(format!(
                    "the router's route to {vip} goes via {have:?}, not {want:?}, after {timeout:?}\nrouter BIRD:\n{}",
                    self.birdc_router("show protocols all").unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A command to the router's BIRD.
    pub fn birdc_router(&self, cmd: &str) -> Result<String> {
        let sock = self.router_socket().to_string_lossy().into_owned();
        let mut args = vec!["birdc", "-s", sock.as_str()];
        args.extend(cmd.split_whitespace());
        self.lab.exec_ok(ROUTER, &args)
    }

    pub fn api_socket(&self, edge: &str) -> PathBuf {
        self.lab.agent_socket_path(edge)
    }

    /// Runs the `anycast` CLI against `edge`'s agent (`--socket` appended).
    pub fn anycast(&self, edge: &str, args: &[&str]) -> Result<std::process::Output> {
        std::process::Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(self.api_socket(edge))
            .output()
            .map_err(|e| LabError::Setup(format!("running anycast {args:?}: {e}")))
    }

    /// The control API of the agent in `ns` (an edge or a backend).
    pub fn client(&self, ns: &str) -> anycast::api::Client {
        self.lab.agent_client(ns)
    }

    /// The status of the agent in `ns` (through the control API).
    pub fn status(&self, ns: &str) -> Status {
        self.client(ns)
            .status()
            .unwrap_or_else(|e| panic!("{ns}: status: {e}"))
    }

    /// Announcement per VIP label of `edge`: (announced, reason).
    pub fn announcements(&self, edge: &str) -> Vec<(String, bool, String)> {
        self.status(edge)
            .vips
            .into_iter()
            .map(|v| {
                let (announced, reason) = v
                    .announcement
                    .map_or((false, String::new()), |a| (a.announced, a.reason));
                (v.vip.to_string(), announced, reason)
            })
            .collect()
    }

    /// Packets `edge`'s dataplane counted for every VIP.
    pub fn vip_packets(&self, edge: &str) -> u64 {
        self.client(edge)
            .stats()
            .unwrap_or_else(|e| panic!("{edge}: stats: {e}"))
            .vips
            .iter()
            .map(|v| v.traffic.packets)
            .sum()
    }

    /// Stops the health-check servers of the current generation (edge1's checks then fail), by
    /// the lab's process handles ([`Lab::stop`]); waits until each has exited. The test of
    /// health withdrawal proves the handle is the server: its checks fail only once the servers
    /// are gone.
    pub fn stop_health_servers(&mut self) -> Result<()> {
        self.stop_health_servers_of(&HEALTH_HOSTS)
    }

    /// [`BgpLab::stop_health_servers`] for the servers on `hosts` only (backends by namespace).
    pub fn stop_health_servers_of(&mut self, hosts: &[&str]) -> Result<()> {
        for s in self.health_servers_of(hosts) {
            let statuses = self.lab.stop(
                &format!("server-{}", s.name),
                Signal::SIGKILL,
                Duration::from_secs(5),
            )?;
            let statuses: Vec<String> = statuses.iter().map(ToString::to_string).collect();
            eprintln!("stopped health server {}: {}", s.name, statuses.join(", "));
        }
        Ok(())
    }

    /// Starts health-check servers again (a new generation, so logs stay apart).
    pub fn restart_health_servers(&mut self) -> Result<()> {
        self.restart_health_servers_of(&HEALTH_HOSTS)
    }

    /// [`BgpLab::restart_health_servers`] for the servers on `hosts` only.
    pub fn restart_health_servers_of(&mut self, hosts: &[&str]) -> Result<()> {
        for h in hosts {
            *self.health_generation.entry((*h).to_owned()).or_default() += 1;
        }
        let bin = find_binary("anycast-lab-server", "ANYCAST_LAB_SERVER_BIN")?
            .to_string_lossy()
            .into_owned();
        for s in self.health_servers_of(hosts) {
            let port = s.tcp_port.to_string();
            let mut args = vec![bin.as_str(), s.name.as_str(), port.as_str(), port.as_str()];
            args.extend(s.addrs.iter().map(String::as_str));
            self.lab
                .spawn(&s.ns, &format!("server-{}", s.name), &args, &[])?;
        }
        Ok(())
    }

    /// The current generation's health-check servers on `hosts`.
    fn health_servers_of(&self, hosts: &[&str]) -> Vec<ServerSpec> {
        hosts
            .iter()
            .flat_map(|h| {
                let g = self.health_generation.get(*h).copied().unwrap_or(0);
                health_servers(&g.to_string())
                    .into_iter()
                    .filter(move |s| s.ns == *h)
            })
            .collect()
    }

    /// The neighbour entries of `edge`'s link to the router, as (namespace, device, address of
    /// the other end): the router's of the edge's two addresses, the edge's of the router's.
    fn link_neighbours<'e>(&self, edge: &'e str) -> Result<Vec<(&'e str, String, &'static str)>> {
        let (e4, e6, r4, r6) = edge_link(edge);
        let (edev, rdev) = edge_devs(edge);
        let (edev, rdev) = (self.lab.ifname(edev)?, self.lab.ifname(rdev)?);
        Ok(vec![
            (ROUTER, rdev.clone(), e4),
            (ROUTER, rdev, e6),
            (edge, edev.clone(), r4),
            (edge, edev, r6),
        ])
    }

    /// Cuts `edge` off as a dead switch port would, without any link going down: both ends'
    /// neighbour entries point at a MAC nobody has, so nothing either side sends (BGP, BFD,
    /// VIP packets, the edge's encapsulated packets) is accepted by the other.
    pub fn black_hole(&self, edge: &str) -> Result<()> {
        const NOBODY: &str = "02:00:00:00:de:ad";
        for (ns, dev, a) in self.link_neighbours(edge)? {
            self.lab.ip(
                ns,
                &[
                    "neigh",
                    "replace",
                    a,
                    "lladdr",
                    NOBODY,
                    "dev",
                    &dev,
                    "nud",
                    "permanent",
                ],
            )?;
        }
        Ok(())
    }

    /// Undoes [`BgpLab::black_hole`]: the permanent neighbour entries go, and both ends resolve
    /// each other again.
    pub fn heal(&self, edge: &str) -> Result<()> {
        for (ns, dev, a) in self.link_neighbours(edge)? {
            self.lab.ip(ns, &["neigh", "del", a, "dev", &dev])?;
        }
        Ok(())
    }
}

/// The `anycast lookup` answer of the agent on `socket` for a flow: the backend's server name.
pub fn live_lookup(
    socket: &std::path::Path,
    protocol: &str,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
) -> String {
    let d = anycast::api::Client::new(socket)
        .lookup(&format!("{protocol} {src} {dst}"))
        .unwrap_or_else(|e| panic!("lookup: {e}"));
    let backend = d
        .outcome
        .backend()
        .unwrap_or_else(|| panic!("lookup {src} -> {dst}: no backend in {d:?}"));
    reference::backend_name(backend)
        .unwrap_or_else(|| panic!("unknown backend {backend}"))
        .to_owned()
}
