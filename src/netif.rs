//! The network the job's nodes reach each other on. Every Docker node has a `docker0`
//! bridge at the same address (172.17.0.1); Open MPI, NCCL and Gloo pick it as a path to
//! the other nodes and hang. The right interface is the one a route to another node of the
//! job leaves from (hosts mode: the one the front door's ssh connection came in on).

use crate::plan::JobNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};

/// The interface and network a route to `peers` (the job's other nodes) leaves from, else
/// the one `this_node`'s own name resolves to; `None` when neither gives a non-loopback
/// IPv4 address of this machine.
pub fn find(peers: &[String], this_node: &str) -> Option<JobNet> {
    let via_peer = peers
        .iter()
        .filter(|p| p.as_str() != this_node)
        .take(3)
        .find_map(|p| source_address(p));
    let local = via_peer.or_else(|| resolve_v4(this_node).into_iter().find(usable))?;
    of_address(IpAddr::V4(local))
}

/// The interface that holds `addr` (e.g. the local end of the front door's ssh connection,
/// `SSH_CONNECTION`'s third field), with its network.
pub fn of_address(addr: IpAddr) -> Option<JobNet> {
    let IpAddr::V4(want) = addr else {
        return None;
    };
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        let ip = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
        let mask = ifa.netmask.as_ref()?.as_sockaddr_in()?.ip();
        (ip == want).then(|| JobNet::new(&ifa.interface_name, ip, mask))
    })
}

/// The local address the kernel would send from to reach `host` (a UDP "connect" sends
/// nothing).
fn source_address(host: &str) -> Option<Ipv4Addr> {
    let peer = resolve_v4(host).into_iter().find(usable)?;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(SocketAddr::from((peer, 9))).ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if usable(&ip) => Some(ip),
        _ => None,
    }
}

fn resolve_v4(host: &str) -> Vec<Ipv4Addr> {
    (host, 0)
        .to_socket_addrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| match a.ip() {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Loopback (Debian's `127.0.1.1 hostname` line) and unspecified addresses name no network.
fn usable(ip: &Ipv4Addr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_no_network() {
        assert!(of_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .is_none_or(|n| n.interface.starts_with("lo")));
        assert!(!usable(&Ipv4Addr::new(127, 0, 1, 1)));
        assert!(usable(&Ipv4Addr::new(10, 1, 2, 3)));
    }
}
