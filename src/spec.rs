//! What Docker is asked to create: plain data shared by the planner, the Docker module and
//! the root helper, with the label keys the tools and the Epilog read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// When to pull the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pull {
    /// Pull only when the node does not have the image.
    #[default]
    Missing,
    /// Never pull; a missing image is an error.
    Never,
    /// Pull every time.
    Always,
}

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path on the node.
    pub source: PathBuf,
    /// Path in the container.
    pub target: PathBuf,
    /// Read-only.
    pub read_only: bool,
    /// Bind propagation (`rprivate`, `rslave`, ...), when not Docker's default.
    pub propagation: Option<String>,
}

impl Mount {
    /// A node folder shown at the same path in the container.
    pub fn same(path: &Path, read_only: bool) -> Self {
        Mount {
            source: path.to_path_buf(),
            target: path.to_path_buf(),
            read_only,
            propagation: None,
        }
    }
}

/// GPUs requested from Docker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Gpus {
    /// None.
    #[default]
    None,
    /// NVIDIA, all GPUs of the node.
    NvidiaAll,
    /// NVIDIA, these physical ids.
    Nvidia(Vec<u32>),
    /// NVIDIA, these devices by the unique ids Slurm gave for them (MIG devices, whose
    /// indices are not GPUs').
    NvidiaUuids(Vec<String>),
    /// Through CDI, by the names the node's CDI specs give them (`nvidia.com/gpu=GPU-...`,
    /// by UUID), asked of an engine with CDI turned on.
    Cdi(Vec<String>),
}

/// A device passed into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Path on the node.
    pub host: String,
    /// Path in the container.
    pub container: String,
    /// Cgroup permissions, e.g. "rwm".
    pub permissions: String,
}

/// The container of this node, as Docker will be asked to create it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Unique per job, step and node.
    pub name: String,
    /// Image.
    pub image: String,
    /// When to pull it.
    pub pull: Pull,
    /// "uid:gid".
    pub user: String,
    /// Supplementary group ids.
    pub group_add: Vec<String>,
    /// Labels (job, step, user, node, ...), used by `mnd ps` and `mnd cleanup`.
    pub labels: BTreeMap<String, String>,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// Environment of the container (and so of the script's exec).
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: PathBuf,
    /// Network mode (always "host": nodes reach each other's sshd).
    pub network: String,
    /// IPC mode, when not private.
    pub ipc: Option<String>,
    /// /dev/shm size in bytes.
    pub shm_size: Option<i64>,
    /// Resource limits (name, soft, hard).
    pub ulimits: Vec<(String, i64, i64)>,
    /// Devices.
    pub devices: Vec<Device>,
    /// GPUs.
    pub gpus: Gpus,
    /// CDI devices (a fabric profile's), fully named: `vendor.com/class=name`.
    pub cdi_devices: Vec<String>,
    /// Capabilities to add.
    pub cap_add: Vec<String>,
    /// Capabilities to drop.
    pub cap_drop: Vec<String>,
    /// Security options.
    pub security_opt: Vec<String>,
    /// tmpfs mounts (path -> options).
    pub tmpfs: BTreeMap<String, String>,
    /// Extra /etc/hosts lines ("name:addr").
    pub extra_hosts: Vec<String>,
    /// Privileged.
    pub privileged: bool,
    /// Direct mode: host pid, uts, cgroup and user namespaces, an init, and a program that
    /// only keeps the container up; the step's tasks join its mount namespace.
    pub host_namespaces: bool,
    /// With `host_namespaces`: a UTS namespace of its own all the same (`--mnd-unshare=uts`).
    pub own_uts: bool,
    /// Largest writable layer (the site's `writable_layer_size`), if limited.
    pub storage_size: Option<String>,
    /// Kept when its processes end (a global `--mnd-name` container, which the Epilog stops
    /// and a later job goes on from); every other container is removed by Docker then.
    pub kept_when_stopped: bool,
}

pub(crate) fn sanitize_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The label keys of every mnd container. `mnd ps`, `mnd cleanup`, the Epilog and the root
/// helper's owner check read them; their text never changes.
pub mod labels {
    /// Slurm job id, or `local`.
    pub const JOB: &str = "mnd.job";
    /// Step id, `local`, or `named` for a `--mnd-name` container.
    pub const STEP: &str = "mnd.step";
    /// The user's name.
    pub const USER: &str = "mnd.user";
    /// The user's uid.
    pub const UID: &str = "mnd.uid";
    /// The node the container runs on.
    pub const NODE: &str = "mnd.node";
    /// `coordinator`, `worker` or `direct`.
    pub const ROLE: &str = "mnd.role";
    /// A direct-mode container's `--mnd-name` (empty for a step's own).
    pub const NAME: &str = "mnd.name";
    /// The image the user named (an ssh-mode container is made from their copy of it).
    pub const IMAGE: &str = "mnd.image";
    /// On a user's copy of an image (ssh mode): the digest of what it was made from.
    pub const ACCOUNTS: &str = "mnd.accounts";
    /// On a user's copy of an image: the id of the image it was made from.
    pub const BASE: &str = "mnd.base";
    /// A direct-mode container's own namespaces (`--mnd-unshare` when it was made: `ipc,uts`),
    /// which every later step on it joins.
    pub const UNSHARE: &str = "mnd.unshare";
    /// A direct-mode `--mnd-name` container's scope: `global` (the user's on this node
    /// across jobs; the Epilog stops it and keeps it) or `job`.
    pub const SCOPE: &str = "mnd.scope";
    /// The launcher's process id.
    pub const LAUNCHER_PID: &str = "mnd.launcher-pid";
    /// The prefix no user label may take.
    pub const PREFIX: &str = "mnd.";
}
