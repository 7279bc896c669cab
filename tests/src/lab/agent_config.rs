//! The agent's TOML config for a lab agent, from its [`AgentSpec`].

use super::*;

impl Lab {
    /// The agent's config file for `spec` (TOML, the contract of `anycast agent --config`).
    pub fn agent_config(&self, spec: &AgentSpec) -> Result<String> {
        let interfaces: Vec<String> = spec
            .interfaces
            .iter()
            .map(|i| self.ifname(i))
            .collect::<Result<_>>()?;
        let mut s = String::from("[agent]\n");
        let list = |v: &[String]| {
            v.iter()
                .map(|x| format!("{x:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "interfaces = [{}]", list(&interfaces));
        if let Some(src) = &spec.tunnel_source {
            let _ = writeln!(s, "tunnel_source = {src:?}");
        }
        if let Some(src) = &spec.tunnel_source_v6 {
            let _ = writeln!(s, "tunnel_source_v6 = {src:?}");
        }
        let _ = writeln!(s, "encapsulation = {:?}", spec.encapsulation);
        let _ = writeln!(s, "decap_allow = [{}]", list(&spec.decap_allow));
        let _ = writeln!(s, "ring_size = {}", spec.ring_size);
        let _ = writeln!(s, "hash_seed = {}", spec.hash_seed);
        // Each agent its own pins and state file: the defaults would be shared by every agent
        // of every lab on the machine.
        let _ = writeln!(
            s,
            "pin_path = {:?}",
            self.bpffs.join(&spec.ns).display().to_string()
        );
        let _ = writeln!(
            s,
            "state_file = {:?}",
            self.dir
                .join(format!("state-{}.json", spec.ns))
                .display()
                .to_string()
        );
        let _ = writeln!(
            s,
            "api_socket = {:?}",
            self.dir
                .join(format!("api-{}.sock", spec.ns))
                .display()
                .to_string()
        );
        // Small connection table: labs run several agents on one machine.
        let _ = writeln!(s, "conntrack_size = 16384");
        for vip in &spec.vips {
            let _ = writeln!(
                s,
                "\n[[vip]]\naddress = {:?}\nport = {}\nprotocol = {:?}",
                vip.address, vip.port, vip.protocol
            );
            for (address, weight) in &vip.backends {
                let _ = writeln!(
                    s,
                    "[[vip.backend]]\naddress = {address:?}\nweight = {weight}"
                );
            }
            if let Some(h) = spec.health {
                let _ = writeln!(
                    s,
                    "[vip.health]\nkind = \"tcp\"\nport = {}\ninterval_ms = {}\ntimeout_ms = 100\nrise = 2\nfall = 3",
                    h.port, h.interval_ms
                );
            }
        }
        Ok(s)
    }
}
