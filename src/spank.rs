//! The wire between the SPANK plugin and the root helper: the user's option values as
//! given, what Slurm says about the step, the reply, and the variables a task carries. No
//! rule lives here; the planner (`plan::direct`) decides.

use crate::spec::sanitize_name;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The user's options, as given (`--mnd-image` ... or the `MND_*` variables): text as
/// typed, flags as given or not. Nothing here is checked; `plan::direct` checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// `--mnd-image`: the image (empty: none given, only `--mnd-name`).
    pub image: String,
    /// `--mnd-mounts`: `SRC[:DST[:FLAGS]]`, comma separated, flags joined with `+`.
    pub mounts: Option<String>,
    /// `--mnd-workdir`: where the tasks start, inside the container.
    pub workdir: Option<String>,
    /// `--mnd-name`: `NAME[:auto|create|exec|no_exec]`, a container kept for the job's
    /// later steps on the node.
    pub name: Option<String>,
    /// `--mnd-env` (or `--mnd-envlist`): variables whose value from the job wins over the
    /// image's.
    pub envlist: Option<String>,
    /// `--mnd-mount-home` (true) or `--no-mnd-mount-home` (false).
    #[serde(default)]
    pub mount_home: Option<bool>,
    /// `--mnd-remap-root` (true) or `--no-mnd-remap-root` (false).
    #[serde(default)]
    pub remap_root: Option<bool>,
    /// `--mnd-entrypoint` (true) or `--no-mnd-entrypoint` (false).
    #[serde(default)]
    pub entrypoint: Option<bool>,
    /// `--mnd-entrypoint-log`.
    #[serde(default)]
    pub entrypoint_log: bool,
    /// `--mnd-writable` (true) or `--mnd-readonly` (false).
    #[serde(default)]
    pub writable: Option<bool>,
    /// `--mnd-unshare`: `net`, `ipc`, `uts`, comma separated.
    #[serde(default)]
    pub unshare: Option<String>,
    /// `--mnd-save`: where the container goes at the end of the step.
    #[serde(default)]
    pub save: Option<String>,
    /// `--mnd-fabric`: the site's device profiles, comma separated, or `none`.
    #[serde(default)]
    pub fabric: Option<String>,
    /// `--mnd-containers`: `ls`, or `rm:NAME[,NAME...]`: the user's own `--mnd-name`
    /// containers on each node of the step, listed or removed (`mnd containers`).
    #[serde(default)]
    pub containers: Option<String>,
}

/// What the plugin hands the root helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Slurm job id.
    pub job: u32,
    /// Step id.
    pub step: u32,
    /// This node's name.
    pub node: String,
    /// The job's user.
    pub uid: u32,
    /// The job's primary group.
    pub gid: u32,
    /// The job's supplementary groups (from Slurm).
    pub gids: Vec<u32>,
    /// The step's working directory.
    pub cwd: PathBuf,
    /// The user's options.
    pub options: Options,
    /// Slurm's own folders the tasks need at the same path (PMIx server and client
    /// folders), as the plugin found them; the helper trusts none of them unchecked.
    pub slurm_dirs: Vec<PathBuf>,
    /// The step's nodes (`SLURM_STEP_NODELIST`), to find the network that reaches them.
    #[serde(default)]
    pub step_nodes: Option<String>,
    /// The step's GPUs on this node as Slurm gives them (`SLURM_STEP_GPUS`), if any.
    #[serde(default)]
    pub step_gpus: Option<String>,
    /// The step's `CUDA_VISIBLE_DEVICES` as Slurm set it, if any: Slurm's unique ids of its
    /// GPUs where it gives them (MIG devices).
    #[serde(default)]
    pub step_cuda_devices: Option<String>,
    /// The batch step's script in slurmd's spool (`sbatch --mnd-image`), shown read-only at
    /// its own path so the batch script runs in the container.
    #[serde(default)]
    pub batch_script: Option<PathBuf>,
    /// The site's `container_scope=global` (plugstack.conf): a `--mnd-name` container is the
    /// user's on this node across jobs, not the job's.
    #[serde(default)]
    pub global_scope: bool,
}

/// What the root helper answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The container's name.
    pub container: String,
    /// The container's init on this node; tasks join its mount namespace.
    pub pid: i32,
    /// Variables to set in every task (the image's, where the job's value does not win).
    pub set_env: Vec<(String, String)>,
    /// Variables to remove from every task.
    pub unset_env: Vec<String>,
    /// Where the tasks start, when `--mnd-workdir` was given.
    pub workdir: Option<PathBuf>,
    /// The step's GPUs on this node (Slurm's indices), in the container's order.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// Variables set only where the task has no value of its own (the network defaults,
    /// or the image's value of one of them).
    #[serde(default)]
    pub defaults: Vec<(String, String)>,
    /// Docker's id of the container: the joined pid must be in its cgroup.
    #[serde(default)]
    pub container_id: String,
    /// Start time of `pid` (clock ticks since boot, `/proc/PID/stat`): a pid that died and
    /// was reused has another.
    #[serde(default)]
    pub pid_start: u64,
    /// The container's own namespaces (`net`, `ipc`, `uts`) the tasks join besides its mount
    /// namespace (`--mnd-unshare`).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The container's root is read-only for the tasks (`--mnd-readonly`).
    #[serde(default)]
    pub read_only: bool,
    /// The tasks appear as root in a user namespace that maps root to the user
    /// (`--mnd-remap-root`).
    #[serde(default)]
    pub remap_root: bool,
    /// The tasks run outside the container (`--mnd-name=NAME:no_exec`): it was only made or
    /// found.
    #[serde(default)]
    pub no_exec: bool,
    /// `--mnd-containers`: what the node says (one line each), printed by the node's first
    /// task; there is no container, and the tasks run outside.
    #[serde(default)]
    pub said: Vec<String>,
    /// How long each phase of the helper's start took (name, milliseconds), for
    /// `MND_TIMING=1`.
    #[serde(default)]
    pub phases: Vec<(String, u32)>,
}

/// Variable set in every task, naming its container (`mnd-srun` sees it runs inside one).
pub const CONTAINER_VAR: &str = "MND_DIRECT_CONTAINER";

/// Variable set in every task: the id of the image its container runs.
pub const IMAGE_VAR: &str = "MND_DIRECT_IMAGE";

/// Label value of `mnd.step` for a `--mnd-name` container, which outlives its step.
pub const NAMED_STEP: &str = "named";

impl Request {
    /// The container's name on this node: per step, per job and `--mnd-name`, or (global
    /// scope) per user and `--mnd-name`. User
    /// and container names may hold `-`, so the readable part alone could name two
    /// different containers (user `ml`, job 5, name `7.0` against user `ml-5`, job 7, step
    /// 0): a digest of the exact uid, job, step or name and node ends every name.
    pub fn container_name(&self, user: &str, name: Option<&str>) -> String {
        use sha2::{Digest, Sha256};
        let (readable, which, job) = match name {
            Some(n) if self.global_scope => (
                format!("mnd-{user}-{n}-{}", self.node),
                format!("global\0{n}"),
                String::new(),
            ),
            Some(n) => (
                format!("mnd-{user}-{}-{n}-{}", self.job, self.node),
                format!("name\0{n}"),
                self.job.to_string(),
            ),
            None => (
                format!("mnd-{user}-{}.{}-{}", self.job, self.step, self.node),
                format!("step\0{}", self.step),
                self.job.to_string(),
            ),
        };
        let digest = Sha256::digest(format!("{}\0{job}\0{which}\0{}", self.uid, self.node));
        let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        sanitize_name(&format!("{readable}-{short}"))
    }
}

/// A task's GPU variable (`CUDA_VISIBLE_DEVICES`, ...) as the container numbers its GPUs.
/// The container has the step's GPUs `step` (Slurm's indices) as 0..n-1: a value naming
/// Slurm's indices, all among the step's, becomes their positions; anything else (Slurm
/// already numbers from 0 under `ConstrainDevices`, or names no GPU) stays as it is.
pub fn container_gpu_ids(step: &[u32], value: &str) -> Option<String> {
    let ids: Vec<u32> = value
        .split(',')
        .map(|i| i.trim().parse().ok())
        .collect::<Option<Vec<u32>>>()?;
    let positions: Vec<String> = ids
        .iter()
        .map(|id| step.iter().position(|s| s == id).map(|p| p.to_string()))
        .collect::<Option<Vec<_>>>()?;
    Some(positions.join(","))
}

/// Variables the image never sets in a task: who the task is, and what Slurm, PMI and the
/// GPU plugins set per task.
pub fn job_owned(name: &str) -> bool {
    const EXACT: [&str; 9] = [
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "HOSTNAME",
        "TERM",
        "TMPDIR",
        "GPU_DEVICE_ORDINAL",
        CONTAINER_VAR,
    ];
    const PREFIXES: [&str; 4] = ["SLURM_", "PMI", "OMPI_", "MND_"];
    EXACT.contains(&name)
        || PREFIXES.iter().any(|p| name.starts_with(p))
        || name.ends_with("_VISIBLE_DEVICES")
}
