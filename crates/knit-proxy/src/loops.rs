//! The proxy's own listeners, so that no target ever loops into them.
//!
//! A target reaches one of them when its port is one this proxy listens on (inbound, outbound,
//! admin, tap, port forwards) and its address is local in any spelling: the listener's own
//! address, the unspecified address (`0.0.0.0`, `::`, which connect to the local host), any
//! loopback address, any address of a local interface, or the IPv4-mapped IPv6 form of one of
//! those. Without this, one request with `Host: 0.0.0.0:4140` made the outbound proxy call
//! itself until it ran out of file descriptors, and a transport header naming the admin port
//! handed a remote peer the powers of a loopback client (`POST /shutdown`).

use std::net::{IpAddr, SocketAddr, UdpSocket};

#[derive(Clone, Debug, Default)]
pub struct OwnListeners {
    addrs: Vec<SocketAddr>,
    /// The inbound listener, which a meshed endpoint on this very workload names.
    inbound: Option<SocketAddr>,
}

impl OwnListeners {
    pub fn new(inbound: SocketAddr, others: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut addrs = vec![inbound];
        addrs.extend(others);
        Self { addrs, inbound: Some(inbound) }
    }

    pub fn contains(&self, target: SocketAddr) -> bool {
        let same_port: Vec<&SocketAddr> = self.addrs.iter().filter(|a| a.port() == target.port()).collect();
        !same_port.is_empty() && is_this_host(target.ip(), &same_port)
    }

    /// Whether `target` is this proxy's inbound listener: a meshed endpoint that is this very
    /// workload (a pod calling its own Service), reached directly rather than through itself.
    pub fn is_inbound(&self, target: SocketAddr) -> bool {
        self.inbound.is_some_and(|i| i.port() == target.port() && is_this_host(target.ip(), &[&i]))
    }
}

fn is_this_host(ip: IpAddr, listeners: &[&SocketAddr]) -> bool {
    let ip = canonical(ip);
    ip.is_unspecified() || ip.is_loopback() || listeners.iter().any(|a| canonical(a.ip()) == ip) || is_local(ip)
}

/// `::ffff:a.b.c.d` is `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` belongs to a local interface: only a local address can be bound. Asked only when
/// a target's port is one of the proxy's own, or an inbound connection's original destination is
/// not the address it arrived on, so the syscall is rare.
pub(crate) fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_local_spelling_of_an_own_port_is_a_loop() {
        let own = OwnListeners::new("0.0.0.0:4143".parse().unwrap(), ["127.0.0.1:4140".parse().unwrap()]);
        for t in ["127.0.0.1:4140", "0.0.0.0:4140", "[::]:4140", "[::1]:4140", "127.0.0.2:4140", "[::ffff:127.0.0.1]:4140", "[::ffff:0.0.0.0]:4143"] {
            assert!(own.contains(t.parse().unwrap()), "{t}");
        }
        // Any address of this host: the one a UDP socket connected outwards would use.
        if let Some(local) = UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect("192.0.2.1:9").map(|()| s)).ok().and_then(|s| s.local_addr().ok()) {
            assert!(own.contains(SocketAddr::new(local.ip(), 4143)), "{local}");
        }
    }

    #[test]
    fn other_ports_and_remote_hosts_are_not() {
        let own = OwnListeners::new("0.0.0.0:4143".parse().unwrap(), ["127.0.0.1:4140".parse().unwrap()]);
        assert!(!own.contains("127.0.0.1:8080".parse().unwrap()));
        assert!(own.is_inbound("127.0.0.1:4143".parse().unwrap()) && !own.is_inbound("127.0.0.1:4140".parse().unwrap()));
        assert!(!own.contains("192.0.2.7:4140".parse().unwrap()), "a remote host's 4140 is not ours");
    }
}
