//! The reference config and a builder over it: every test (unit tests here, the tests crate,
//! the benches) starts from [`ConfigBuilder::reference`] and states only the fields it changes,
//! instead of pasting TOML.
//!
//! It renders TOML and parses it with [`Config::parse`], so a test exercises the same path as
//! an operator's file.

use toml::{Table, Value};

use super::Config;

/// A config under construction: `[agent]`, the VIPs, and any other top-level section.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    agent: Table,
    vips: Vec<VipBuilder>,
    sections: Table,
}

/// One `[[vip]]` with its backends.
#[derive(Clone, Debug)]
pub struct VipBuilder {
    fields: Table,
    backends: Vec<Table>,
}

impl ConfigBuilder {
    /// `[agent]` on `eth0` with IPv4 and IPv6 tunnel sources (198.18.1.2, fd00::1:2), decap
    /// allowed from 198.18.0.0/15 and fd00::/8, ring 1009, seed 42; one VIP,
    /// 203.0.113.10:80/tcp, on backends 198.18.10.2 and 198.18.10.3 (weight 1 each).
    pub fn reference() -> Self {
        Self::bare()
            .agent("interfaces", vec!["eth0"])
            .agent("tunnel_source", "198.18.1.2")
            .agent("tunnel_source_v6", "fd00::1:2")
            .agent("decap_allow", vec!["198.18.0.0/15", "fd00::/8"])
            .agent("ring_size", 1009)
            .agent("hash_seed", 42)
            .vip(
                VipBuilder::new("203.0.113.10", 80, "tcp")
                    .backends(&[("198.18.10.2", 1), ("198.18.10.3", 1)]),
            )
    }

    /// Nothing at all: for the tests of what a config must have.
    pub fn bare() -> Self {
        Self {
            agent: Table::new(),
            vips: Vec::new(),
            sections: Table::new(),
        }
    }

    /// Sets (or replaces) an `[agent]` field.
    pub fn agent(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.agent.insert(key.to_owned(), value.into());
        self
    }

    /// Removes an `[agent]` field.
    pub fn without_agent(mut self, key: &str) -> Self {
        self.agent.remove(key);
        self
    }

    /// Adds a VIP after the others.
    pub fn vip(mut self, vip: VipBuilder) -> Self {
        self.vips.push(vip);
        self
    }

    /// Replaces every VIP.
    pub fn vips(mut self, vips: impl IntoIterator<Item = VipBuilder>) -> Self {
        self.vips = vips.into_iter().collect();
        self
    }

    /// Changes VIP `i` in place.
    pub fn edit_vip(mut self, i: usize, f: impl FnOnce(VipBuilder) -> VipBuilder) -> Self {
        let v = self.vips.remove(i);
        self.vips.insert(i, f(v));
        self
    }

    /// Sets a whole top-level section (`[bgp]`...) from TOML text.
    ///
    /// # Panics
    /// If `toml` is not a TOML table: a test's mistake.
    pub fn section(mut self, name: &str, toml: &str) -> Self {
        let t: Table = toml
            .parse()
            .unwrap_or_else(|e| panic!("section [{name}] is not TOML: {e}"));
        self.sections.insert(name.to_owned(), Value::Table(t));
        self
    }

    /// The TOML text an operator would write.
    pub fn toml(&self) -> String {
        let mut root = Table::new();
        if !self.agent.is_empty() {
            root.insert("agent".into(), Value::Table(self.agent.clone()));
        }
        if !self.vips.is_empty() {
            let vips = self.vips.iter().map(VipBuilder::table).collect();
            root.insert("vip".into(), Value::Array(vips));
        }
        for (k, v) in &self.sections {
            root.insert(k.clone(), v.clone());
        }
        toml::to_string(&root).expect("a TOML table renders")
    }

    /// The parsed config.
    ///
    /// # Panics
    /// If the config is invalid, with the parser's message and the text.
    pub fn build(&self) -> Config {
        let text = self.toml();
        Config::parse(&text).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"))
    }
}

impl VipBuilder {
    pub fn new(address: &str, port: u16, protocol: &str) -> Self {
        let mut fields = Table::new();
        fields.insert("address".into(), address.into());
        fields.insert("port".into(), i64::from(port).into());
        fields.insert("protocol".into(), protocol.into());
        Self {
            fields,
            backends: Vec::new(),
        }
    }

    /// Adds a backend.
    pub fn backend(mut self, address: &str, weight: u32) -> Self {
        let mut b = Table::new();
        b.insert("address".into(), address.into());
        b.insert("weight".into(), i64::from(weight).into());
        self.backends.push(b);
        self
    }

    /// Adds backends, `(address, weight)`.
    pub fn backends(self, backends: &[(&str, u32)]) -> Self {
        backends
            .iter()
            .fold(self, |v, (address, weight)| v.backend(address, *weight))
    }

    /// Sets (or replaces) a field of the VIP (`sticky`, ...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.to_owned(), value.into());
        self
    }

    /// Sets `[vip.health]` from TOML text (`kind = "tcp"`...).
    ///
    /// # Panics
    /// If `toml` is not a TOML table: a test's mistake.
    pub fn health(mut self, toml: &str) -> Self {
        let t: Table = toml
            .parse()
            .unwrap_or_else(|e| panic!("[vip.health] is not TOML: {e}"));
        self.fields.insert("health".into(), Value::Table(t));
        self
    }

    fn table(&self) -> Value {
        let mut t = self.fields.clone();
        if !self.backends.is_empty() {
            let b = self.backends.iter().cloned().map(Value::Table).collect();
            t.insert("backend".into(), Value::Array(b));
        }
        Value::Table(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_config_is_valid_and_says_what_its_doc_says() {
        let c = ConfigBuilder::reference().build();
        assert_eq!(c.agent.interfaces, ["eth0"]);
        assert_eq!(c.agent.ring_size, 1009);
        assert_eq!(c.agent.hash_seed, 42);
        assert_eq!(c.vips.len(), 1);
        assert_eq!(c.vips[0].label(), "203.0.113.10:80/tcp");
        assert_eq!(c.vips[0].backends.len(), 2);
    }

    #[test]
    fn fields_a_test_changes_reach_the_parsed_config() {
        let c = ConfigBuilder::reference()
            .agent("ring_size", 251)
            .agent("encapsulation", "gue")
            .without_agent("tunnel_source_v6")
            .edit_vip(0, |v| v.backend("198.18.10.4", 3).health("kind = \"tcp\""))
            .vip(VipBuilder::new("2001:db8::10", 0, "udp").backend("fd00::10:2", 1))
            .build();
        assert_eq!(c.agent.ring_size, 251);
        assert_eq!(c.agent.tunnel_source_v6, None);
        assert_eq!(c.vips[0].backends[2].weight, 3);
        assert!(c.vips[0].health.is_some());
        assert_eq!(c.vips[1].label(), "[2001:db8::10]:any/udp");
    }
}
