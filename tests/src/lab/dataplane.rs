//! What makes a topology carry VIP traffic: `anycast_pass` on the interfaces that need it, the
//! agents (waited for until their programs are attached) and the backend servers.

use std::time::{Duration, Instant};

use super::{Lab, LabError, Result, find_binary, io_err, tail};

/// How long [`Lab::start_agents`] waits for every agent to attach its program.
const AGENT_ATTACH_TIMEOUT: Duration = Duration::from_secs(90);

/// Keeps an `anycast_pass` XDP program attached: dropping the `Ebpf` detaches it.
pub(super) struct PassProgram {
    _ebpf: aya::Ebpf,
}

impl Lab {
    /// Attaches the `anycast_pass` program (XDP_PASS) natively to `interface` in `ns`.
    pub fn attach_pass(&mut self, ns: &str, interface: &str) -> Result<()> {
        let dev = self.ifname(interface)?;
        let xdp_err = |message: String| LabError::Xdp {
            ns: self.ns(ns),
            interface: dev.clone(),
            message,
        };
        let ebpf = self
            .in_netns(ns, || -> Result<aya::Ebpf, String> {
                use aya::programs::{Xdp, xdp::XdpMode};
                let mut ebpf = aya::Ebpf::load(anycast::EBPF_OBJECT)
                    .map_err(|e| format!("loading the object: {e}"))?;
                let prog: &mut Xdp = ebpf
                    .program_mut("anycast_pass")
                    .ok_or("the object has no program `anycast_pass`")?
                    .try_into()
                    .map_err(|e| format!("anycast_pass is not XDP: {e}"))?;
                prog.load().map_err(|e| format!("load: {e}"))?;
                // Native: generic mode would hide the very behaviour this program exists for.
                prog.attach(&dev, XdpMode::Driver)
                    .map_err(|e| format!("attach (driver mode): {e}"))?;
                Ok(ebpf)
            })?
            .map_err(xdp_err)?;
        self.pass_programs.push(PassProgram { _ebpf: ebpf });
        Ok(())
    }

    /// Everything that makes the topology carry VIP traffic: pass programs, agents (waiting until
    /// each has attached its XDP program) and backend servers.
    pub fn start_dataplane(&mut self) -> Result<()> {
        for x in self.topology.xdp_pass.clone() {
            self.attach_pass(&x.ns, &x.interface)?;
        }
        self.start_agents()?;
        self.start_servers()
    }

    pub fn start_agents(&mut self) -> Result<()> {
        let bin = find_binary("anycast", "ANYCAST_BIN")?;
        let bin = bin.to_string_lossy().into_owned();
        for spec in self.topology.agents.clone() {
            let config = self.agent_config_path(&spec.ns);
            std::fs::write(&config, self.agent_config(&spec)?)
                .map_err(io_err(format!("writing {}", config.display())))?;
            let config = config.to_string_lossy().into_owned();
            self.spawn(
                &spec.ns,
                &format!("agent-{}", spec.ns),
                &[&bin, "agent", "--config", &config],
                &[("RUST_LOG", "info")],
            )?;
        }
        // The verifier takes seconds per program, and a 2-core CI machine runs two labs (eight
        // agents) at once.
        let deadline = Instant::now() + AGENT_ATTACH_TIMEOUT;
        for spec in self.topology.agents.clone() {
            for interface in &spec.interfaces {
                let dev = self.ifname(interface)?;
                loop {
                    self.check_alive()?;
                    let link = self.ip(&spec.ns, &["-d", "link", "show", "dev", &dev])?;
                    if link.contains("prog/xdp") {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(LabError::Setup(format!(
                            "agent in {} did not attach XDP to {dev} within {} s; log:\n{}",
                            spec.ns,
                            AGENT_ATTACH_TIMEOUT.as_secs(),
                            tail(&self.log(&format!("agent-{}", spec.ns)), 30)
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }

    pub fn start_servers(&mut self) -> Result<()> {
        let bin = find_binary("anycast-lab-server", "ANYCAST_LAB_SERVER_BIN")?;
        let bin = bin.to_string_lossy().into_owned();
        for s in self.topology.servers.clone() {
            let (tcp, udp) = (s.tcp_port.to_string(), s.udp_port.to_string());
            let mut args = vec![bin.as_str(), s.name.as_str(), tcp.as_str(), udp.as_str()];
            args.extend(s.addrs.iter().map(String::as_str));
            self.spawn(&s.ns, &format!("server-{}", s.name), &args, &[])?;
        }
        // Listening is quick; wait for every server to say so, or to die.
        let deadline = Instant::now() + Duration::from_secs(5);
        for s in self.topology.servers.clone() {
            while !self
                .log(&format!("server-{}", s.name))
                .contains("listening")
            {
                self.check_alive()?;
                if Instant::now() > deadline {
                    return Err(LabError::Setup(format!("server {} did not start", s.name)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}
