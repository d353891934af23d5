//! Facts about this node that a plan depends on (gathered by `node::gather`).

use super::fabric::FabricFacts;
use super::net::JobNet;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Facts about this node that the plan depends on (gathered by `node::gather`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Working directory of the launcher.
    pub cwd: PathBuf,
    /// The launcher's environment (for `--envlist` and bare `-e NAME`).
    pub env: BTreeMap<String, String>,
    /// /dev/nvidia0 exists.
    pub nvidia: bool,
    /// AMD GPUs (/dev/kfd exists): render node numbers and the video/render group ids.
    pub amd: Option<AmdFacts>,
    /// This node lets containers raise RLIMIT_MEMLOCK (CAP_SYS_RESOURCE in the bounding set).
    pub can_raise_memlock: bool,
    /// Launcher's process id (names and ports outside Slurm).
    pub pid: u32,
    /// The interface the job's nodes reach each other on (`netif::find`), if known.
    pub net: Option<JobNet>,
    /// The site's fabric devices this node has, and its CDI specs (`node::fabric_facts`).
    pub fabric: FabricFacts,
}

/// AMD GPU devices of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmdFacts {
    /// Numbers N of /dev/dri/renderDN, in order (GPU i is the i-th).
    pub render_nodes: Vec<u32>,
    /// Group ids owning the devices (video, render).
    pub device_gids: Vec<u32>,
}
