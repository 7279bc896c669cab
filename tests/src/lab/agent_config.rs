//! A lab agent's files: its TOML config (from its [`AgentSpec`]), control socket and state file,
//! all in the lab's run directory and named after its namespace.

use std::path::PathBuf;

use anycast::config::{ConfigBuilder, VipBuilder};
use anycast::dataplane::stats::StateFile;

use super::{AgentSpec, Lab, LabError, Result};

impl Lab {
    /// The config file [`Lab::start_agents`] writes for the agent in `ns`.
    pub fn agent_config_path(&self, ns: &str) -> PathBuf {
        self.dir.join(format!("agent-{ns}.toml"))
    }

    /// The control socket of the agent in `ns` (`anycast status --socket PATH`).
    pub fn agent_socket_path(&self, ns: &str) -> PathBuf {
        self.dir.join(format!("api-{ns}.sock"))
    }

    /// The state file of the agent in `ns` (`agent.state_file`).
    pub fn agent_state_path(&self, ns: &str) -> PathBuf {
        self.dir.join(format!("state-{ns}.json"))
    }

    /// The control API of the agent in `ns`.
    pub fn agent_client(&self, ns: &str) -> anycast::api::Client {
        anycast::api::Client::new(self.agent_socket_path(ns))
    }

    /// The state file the agent in `ns` last wrote.
    pub fn agent_state(&self, ns: &str) -> Result<StateFile> {
        StateFile::read(&self.agent_state_path(ns)).map_err(|e| LabError::Setup(e.to_string()))
    }

    /// The pid of the agent in `ns`, from its state file (the process itself, not the `nsenter`
    /// of [`Lab::spawn`]: they are the same process, nsenter execs the command).
    pub fn agent_pid(&self, ns: &str) -> Result<nix::unistd::Pid> {
        let pid = self.agent_state(ns)?.pid;
        i32::try_from(pid)
            .map(nix::unistd::Pid::from_raw)
            .map_err(|_| LabError::Setup(format!("pid {pid} in the state file of {ns}")))
    }

    /// The agent's config file for `spec` (TOML, the contract of `anycast agent --config`).
    pub fn agent_config(&self, spec: &AgentSpec) -> Result<String> {
        let interfaces: Vec<String> = spec
            .interfaces
            .iter()
            .map(|i| self.ifname(i))
            .collect::<Result<_>>()?;
        let path = |p: PathBuf| p.display().to_string();
        let mut c = ConfigBuilder::bare()
            .agent("interfaces", interfaces)
            .agent("encapsulation", spec.encapsulation.as_str())
            .agent("decap_allow", spec.decap_allow.clone())
            .agent("ring_size", spec.ring_size)
            .agent("hash_seed", spec.hash_seed)
            // Each agent its own pins and state file: the defaults would be shared by every
            // agent of every lab on the machine.
            .agent("pin_path", path(self.bpffs().join(&spec.ns)))
            .agent("state_file", path(self.agent_state_path(&spec.ns)))
            .agent("api_socket", path(self.agent_socket_path(&spec.ns)))
            // Small connection table: labs run several agents on one machine.
            .agent("conntrack_size", 16384);
        if let Some(src) = &spec.tunnel_source {
            c = c.agent("tunnel_source", src.as_str());
        }
        if let Some(src) = &spec.tunnel_source_v6 {
            c = c.agent("tunnel_source_v6", src.as_str());
        }
        for vip in &spec.vips {
            let mut v = VipBuilder::new(&vip.address, vip.port, &vip.protocol);
            for (address, weight) in &vip.backends {
                v = v.backend(address, *weight);
            }
            if let Some(h) = spec.health {
                v = v.health(&format!(
                    "kind = \"tcp\"\nport = {}\ninterval_ms = {}\ntimeout_ms = 100\nrise = 2\nfall = 3",
                    h.port, h.interval_ms
                ));
            }
            c = c.vip(v);
        }
        let mut text = c.toml();
        if !spec.extra_config.is_empty() {
            text.push('\n');
            text.push_str(&spec.extra_config);
        }
        Ok(text)
    }
}
