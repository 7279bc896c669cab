//! The agent's TOML config for a lab agent, from its [`AgentSpec`].

use super::*;
use anycast::config::{ConfigBuilder, VipBuilder};

impl Lab {
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
            .agent("pin_path", path(self.bpffs.join(&spec.ns)))
            .agent(
                "state_file",
                path(self.dir.join(format!("state-{}.json", spec.ns))),
            )
            .agent(
                "api_socket",
                path(self.dir.join(format!("api-{}.sock", spec.ns))),
            )
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
        Ok(c.toml())
    }
}
