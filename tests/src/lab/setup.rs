//! Building a topology in its namespaces (namespaces, sysctls, veths, addresses, routes; no BPF,
//! no processes), and taking all of it down again when the [`Lab`] drops.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::exec::run_checked;
use super::{Lab, RUN_DIR, Result, Topology, prefix, tail};
use crate::mount::Mount;
use crate::netns::Netns;

impl Lab {
    /// Creates namespaces, sysctls, links, addresses and routes (no BPF, no processes).
    pub fn build(topology: &Topology) -> Result<Lab> {
        let prefix = prefix::claim()?;
        let dir = Path::new(RUN_DIR).join(&prefix);
        let mut lab = Lab {
            prefix,
            topology: topology.clone(),
            dir,
            bpffs: None,
            namespaces: Vec::new(),
            background: Vec::new(),
            pass_programs: Vec::new(),
        };
        lab.create()?;
        Ok(lab)
    }

    fn create(&mut self) -> Result<()> {
        self.bpffs = Some(Mount::bpffs_at(&self.bpffs())?);

        let t = self.topology.clone();
        for ns in &t.namespaces {
            self.namespaces.push(Netns::create(&self.ns(ns))?);
            self.ip(ns, &["link", "set", "lo", "up"])?;
        }
        for s in &t.sysctls {
            self.exec_ok(
                &s.ns,
                &["sysctl", "-q", "-w", &format!("{}={}", s.key, s.value)],
            )?;
        }
        for l in &t.links {
            let (a, b) = (self.ifname(&l.a.name)?, self.ifname(&l.b.name)?);
            let mtu = l.mtu.to_string();
            run_checked(Command::new("ip").args([
                "link",
                "add",
                &a,
                "netns",
                &self.ns(&l.a.ns),
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                &self.ns(&l.b.ns),
                "mtu",
                &mtu,
            ]))?;
            for (end, dev) in [(&l.a, &a), (&l.b, &b)] {
                for addr in &end.addrs {
                    let mut args = vec!["addr", "add", addr.as_str(), "dev", dev.as_str()];
                    if addr.contains(':') {
                        // No duplicate address detection: the address is usable at once.
                        args.push("nodad");
                    }
                    self.ip(&end.ns, &args)?;
                }
                if l.tx_checksum_off {
                    self.exec_ok(&end.ns, &["ethtool", "-K", dev, "tx", "off"])?;
                }
                self.ip(&end.ns, &["link", "set", dev, "up"])?;
            }
        }
        for a in &t.loopback {
            let mut args = vec!["addr", "add", a.addr.as_str(), "dev", "lo"];
            if a.addr.contains(':') {
                args.push("nodad");
            }
            self.ip(&a.ns, &args)?;
        }
        for r in &t.routes {
            self.set_route(&r.ns, &r.dst, &r.via)?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for b in &self.background {
                let log = std::fs::read_to_string(&b.log).unwrap_or_default();
                eprintln!(
                    "--- lab {}: {} log (tail) ---\n{}",
                    self.prefix,
                    b.name,
                    tail(&log, 40)
                );
            }
        }
        for b in &mut self.background {
            // SIGTERM first: an agent detaches and unpins on a clean exit.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(b.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for b in &mut self.background {
            while matches!(b.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = b.child.kill();
            let _ = b.child.wait();
        }
        self.pass_programs.clear();
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
        // Unmounting the bpffs removes every pin the agents left.
        self.bpffs = None;
        // Backstop: whatever else carries the prefix (processes the agents forked, a namespace
        // created but not yet recorded when `create` failed).
        prefix::release(&self.prefix);
    }
}
