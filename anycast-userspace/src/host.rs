//! What the agent needs to know about, or set on, this host.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("listing this host's addresses (getifaddrs)")]
    Ifaddrs(#[source] nix::Error),
    #[error("writing {path}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Every address configured on an interface of this host (this network namespace).
pub fn local_addresses() -> Result<BTreeSet<IpAddr>, HostError> {
    let mut set = BTreeSet::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(HostError::Ifaddrs)? {
        let Some(addr) = ifa.address else { continue };
        if let Some(a) = addr.as_sockaddr_in() {
            set.insert(IpAddr::V4(a.ip()));
        } else if let Some(a) = addr.as_sockaddr_in6() {
            set.insert(IpAddr::V6(a.ip()));
        }
    }
    Ok(set)
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key)
}

pub fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(key))
        .ok()
        .map(|s| s.trim().to_owned())
}

pub fn write_sysctl(key: &str, value: &str) -> Result<(), HostError> {
    let path = sysctl_path(key);
    std::fs::write(&path, value).map_err(|source| HostError::Sysctl { path, source })
}

/// IP forwarding on `iface` (`net.ipv4.conf.IFACE.forwarding`, `net.ipv6.conf.IFACE.forwarding`),
/// or `None` when the interface has no such sysctls (not in this namespace).
pub fn forwarding(iface: &str) -> Option<crate::proto::Forwarding> {
    let on = |key: String| read_sysctl(&key).map(|v| v != "0");
    Some(crate::proto::Forwarding {
        ipv4: on(format!("net/ipv4/conf/{iface}/forwarding"))?,
        ipv6: on(format!("net/ipv6/conf/{iface}/forwarding"))?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_loopback() {
        let a = super::local_addresses().unwrap();
        assert!(a.contains(&"127.0.0.1".parse().unwrap()), "{a:?}");
    }
}
