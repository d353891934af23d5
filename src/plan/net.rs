//! Which network MPI, NCCL and Gloo use between nodes, set for every job unless someone
//! already chose. Docker nodes all have `docker0` at 172.17.0.1: Open MPI's TCP transport
//! and NCCL take it for a path to the other nodes and hang ("received unexpected process
//! identifier"), so the job is told the interface that really reaches its other nodes.

use std::net::Ipv4Addr;

/// The interface a job's nodes reach each other on, and its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobNet {
    /// Interface name (`eth0`, `ib0`).
    pub interface: String,
    /// Its network in CIDR form (`10.1.0.0/16`), as Open MPI's `*_if_include` takes it.
    pub cidr: String,
}

impl JobNet {
    /// The network of `ip` under `mask` on `interface`.
    pub fn new(interface: &str, ip: Ipv4Addr, mask: Ipv4Addr) -> Self {
        let bits = u32::from(mask);
        let network = Ipv4Addr::from(u32::from(ip) & bits);
        JobNet {
            interface: interface.to_string(),
            cidr: format!("{network}/{}", bits.count_ones()),
        }
    }
}

/// Open MPI 4 and 5 (`btl`, `oob`) and PRRTE (Open MPI 5's `mpirun`) take networks.
const CIDR_VARS: [&str; 3] = [
    "OMPI_MCA_btl_tcp_if_include",
    "OMPI_MCA_oob_tcp_if_include",
    "PRTE_MCA_oob_tcp_if_include",
];

/// NCCL's and Gloo's bootstrap sockets take an interface name.
const INTERFACE_VARS: [&str; 2] = ["NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"];

/// Open MPI's shared-memory transport copies large messages between ranks of a node with
/// `process_vm_readv` (CMA), which Docker's default seccomp profile refuses without
/// CAP_SYS_PTRACE: measured in the launcher's containers, every 4 MiB message of an 8 MiB
/// allreduce printed "Read -1, expected 4194304, errno = 1". Told to copy through the
/// shared segment instead (`vader` in Open MPI 4, `sm` in 5), it is quiet. Direct mode's
/// tasks run under no seccomp profile and need nothing.
pub const SINGLE_COPY_OFF: [(&str, &str); 2] = [
    ("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
    ("OMPI_MCA_btl_sm_single_copy_mechanism", "none"),
];

/// Every variable the network defaults may set (the README and `--no-net-defaults` name
/// them).
pub fn variables() -> impl Iterator<Item = &'static str> {
    CIDR_VARS.into_iter().chain(INTERFACE_VARS)
}

/// The defaults for a job on `net`, leaving out every variable `taken` says someone (the
/// user, the image, the site, a flag) already set: their value always wins.
pub fn defaults(net: Option<&JobNet>, taken: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let Some(net) = net else {
        return vec![];
    };
    let cidr = CIDR_VARS.iter().map(|v| (*v, net.cidr.as_str()));
    let interface = INTERFACE_VARS.iter().map(|v| (*v, net.interface.as_str()));
    cidr.chain(interface)
        .filter(|(name, _)| !taken(name))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_is_the_interfaces_cidr() {
        let n = JobNet::new(
            "eth0",
            Ipv4Addr::new(10, 213, 77, 12),
            Ipv4Addr::new(255, 255, 255, 0),
        );
        assert_eq!(n.cidr, "10.213.77.0/24");
        let n = JobNet::new(
            "ib0",
            Ipv4Addr::new(172, 20, 3, 4),
            Ipv4Addr::new(255, 255, 0, 0),
        );
        assert_eq!(n.cidr, "172.20.0.0/16");
    }

    #[test]
    fn a_value_someone_set_is_never_replaced() {
        let net = JobNet {
            interface: "eth0".into(),
            cidr: "10.0.0.0/8".into(),
        };
        let all = defaults(Some(&net), |_| false);
        assert_eq!(all.len(), 5);
        assert!(all.contains(&("OMPI_MCA_btl_tcp_if_include".into(), "10.0.0.0/8".into())));
        assert!(all.contains(&("NCCL_SOCKET_IFNAME".into(), "eth0".into())));
        let some = defaults(Some(&net), |n| {
            n == "NCCL_SOCKET_IFNAME" || n == "OMPI_MCA_btl_tcp_if_include"
        });
        assert_eq!(some.len(), 3);
        assert!(!some.iter().any(|(k, _)| k == "NCCL_SOCKET_IFNAME"));
        assert!(defaults(None, |_| false).is_empty());
    }
}
