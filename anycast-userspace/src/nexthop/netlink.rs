//! Asking the kernel (rtnetlink) how it would route to a backend, and hearing when that changes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_route::{
    link::LinkAttribute,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType, RouteVia},
};
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
use tokio::sync::mpsc;

use super::{Resolution, Route, Target, Targets};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink (rtnetlink) socket")]
    Socket(#[source] std::io::Error),
}

/// A netlink connection to the kernel's routing tables (of the network namespace the calling
/// thread is in when it is made).
#[derive(Clone)]
pub struct Resolver {
    handle: Handle,
}

/// The groups whose messages can change a next hop.
const GROUPS: [MulticastGroup; 4] = [
    MulticastGroup::Link,
    MulticastGroup::Neigh,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
];

/// Interfaces by index: MAC (none for links without one, e.g. loopback or L3 tunnels) and MTU.
type Links = HashMap<u32, (Option<[u8; 6]>, u32)>;
/// Neighbours by (interface, address): link-layer address, when the entry is usable.
type Neighbours = HashMap<(u32, IpAddr), Option<[u8; 6]>>;

impl Resolver {
    /// A resolver for one-off use (no events). Needs a tokio runtime.
    pub fn new() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A resolver, and a channel that receives `()` for each route, neighbour or link event.
    pub fn with_events() -> Result<(Self, mpsc::Receiver<()>), NetlinkError> {
        let (conn, handle, mut messages) =
            rtnetlink::new_multicast_connection(&GROUPS).map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while messages.next().await.is_some() {
                // A full channel already holds a wake-up: one pass serves every event.
                if tx.try_send(()).is_err() && tx.is_closed() {
                    return;
                }
            }
        });
        Ok((Self { handle }, rx))
    }

    /// Resolves every target (links and neighbours read once for the whole pass).
    pub async fn resolve_all(&self, targets: &Targets) -> Vec<(Target, Resolution)> {
        if targets.backends.is_empty() {
            return Vec::new();
        }
        let (links, neighbours) = match (self.links().await, self.neighbours().await) {
            (Ok(l), Ok(n)) => (l, n),
            (Err(e), _) | (_, Err(e)) => {
                let why = format!("reading links and neighbours: {e}");
                return targets
                    .backends
                    .iter()
                    .map(|t| (*t, Resolution::Unresolved(why.clone())))
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(targets.backends.len());
        for t in &targets.backends {
            let r = match targets.source_for(t.address) {
                None => Resolution::Unresolved("no tunnel source for its family".into()),
                Some(src) => self.resolve(t.address, src, &links, &neighbours).await,
            };
            out.push((*t, r));
        }
        out
    }

    async fn resolve(
        &self,
        dst: IpAddr,
        src: IpAddr,
        links: &Links,
        neighbours: &Neighbours,
    ) -> Resolution {
        let route = match self.route_get(dst, src).await {
            Ok(Some(r)) => r,
            Ok(None) => return Resolution::Unresolved("no route".into()),
            Err(e) => return Resolution::Unresolved(format!("no route: {e}")),
        };
        if route.header.kind != RouteType::Unicast {
            return Resolution::Unresolved(format!("route of type {:?}", route.header.kind));
        }
        let mut oif = None;
        let mut gateway = None;
        let mut route_mtu = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(g) => gateway = route_addr(g),
                RouteAttribute::Via(RouteVia::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
                RouteAttribute::Via(RouteVia::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        if let RouteMetric::Mtu(mtu) = m
                            && *mtu != 0
                        {
                            route_mtu = Some(*mtu);
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(ifindex) = oif else {
            return Resolution::Unresolved("route without an output interface".into());
        };
        let Some(&(Some(smac), link_mtu)) = links.get(&ifindex) else {
            return Resolution::Unresolved(format!("interface {ifindex} has no Ethernet address"));
        };
        let neighbour = gateway.unwrap_or(dst);
        let Some(dmac) = neighbours.get(&(ifindex, neighbour)).copied().flatten() else {
            return Resolution::Unresolved(format!(
                "neighbour {neighbour} on interface {ifindex} not resolved"
            ));
        };
        Resolution::Resolved(Route {
            ifindex,
            neighbour,
            dmac,
            smac,
            mtu: route_mtu.map_or(link_mtu, |m| m.min(link_mtu)),
        })
    }

    /// `ip route get <dst> from <src>`.
    async fn route_get(
        &self,
        dst: IpAddr,
        src: IpAddr,
    ) -> Result<Option<RouteMessage>, rtnetlink::Error> {
        let msg = match (dst, src) {
            (IpAddr::V4(d), IpAddr::V4(s)) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d, 32)
                .source_prefix(s, 32)
                .build(),
            (IpAddr::V6(d), IpAddr::V6(s)) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d, 128)
                .source_prefix(s, 128)
                .build(),
            _ => return Ok(None),
        };
        self.handle.route().get(msg).execute().try_next().await
    }

    async fn links(&self) -> Result<Links, rtnetlink::Error> {
        let mut out = HashMap::new();
        let mut s = self.handle.link().get().execute();
        while let Some(l) = s.try_next().await? {
            let mut mac = None;
            let mut mtu = 1500;
            for a in &l.attributes {
                match a {
                    LinkAttribute::Address(b) => mac = eth_addr(b),
                    LinkAttribute::Mtu(m) => mtu = *m,
                    _ => {}
                }
            }
            out.insert(l.header.index, (mac, mtu));
        }
        Ok(out)
    }

    async fn neighbours(&self) -> Result<Neighbours, rtnetlink::Error> {
        let mut out = HashMap::new();
        let mut s = self.handle.neighbours().get().execute();
        while let Some(n) = s.try_next().await? {
            let mut addr = None;
            let mut lladdr = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        addr = Some(IpAddr::V4(*a))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        addr = Some(IpAddr::V6(*a))
                    }
                    NeighbourAttribute::LinkLayerAddress(b) => lladdr = eth_addr(b),
                    _ => {}
                }
            }
            // The states the FIB helper accepts (the kernel's NUD_VALID).
            let valid = matches!(
                n.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            );
            if let Some(a) = addr {
                out.insert((n.header.ifindex, a), lladdr.filter(|_| valid));
            }
        }
        Ok(out)
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn eth_addr(b: &[u8]) -> Option<[u8; 6]> {
    let m: [u8; 6] = b.try_into().ok()?;
    (m != [0; 6]).then_some(m)
}
