//! Direct mode (the SPANK plugin, `srun --mnd-image=IMAGE cmd`): every task of a step runs
//! inside its node's container, as an ordinary Slurm task (Slurm's PMI, signals, cgroup,
//! accounting and exit codes).
//!
//! The plugin runs in slurmstepd as root. The first task of a step on a node hands a
//! [`Request`] (the user's option values, untouched, and what Slurm says about the job) to
//! the root helper `mnd direct up`, which decides the container here ([`plan`], pure), under
//! the root-owned site policy, starts it and answers with a [`Reply`]: the pid whose mount
//! namespace every task joins and the environment the tasks get. Nothing the user sends is a
//! Docker option.

pub mod helper;

use crate::cli::GpuVendor;
use crate::config::SiteConfig;
use crate::identity::Identity;
use crate::plan::{self, usage, ContainerSpec, Mount, NodeFacts, PlanError};
use crate::policy::{self, GpuAsk, MountOrigin};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The user's options, as given (`--mnd-image` ... or the `MND_*` variables).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// `--mnd-image`: the image.
    pub image: String,
    /// `--mnd-mounts`: `SRC[:DST][:ro]`, comma separated.
    pub mounts: Option<String>,
    /// `--mnd-workdir`: where the tasks start, inside the container.
    pub workdir: Option<String>,
    /// `--mnd-name`: a container kept for the job's later steps on the node.
    pub name: Option<String>,
    /// `--mnd-envlist`: variables whose value from the job wins over the image's.
    pub envlist: Option<String>,
}

/// The options, checked for form (nothing here looks at the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The image.
    pub image: String,
    /// Mounts, sources not yet resolved.
    pub mounts: Vec<Mount>,
    /// Working directory in the container.
    pub workdir: Option<PathBuf>,
    /// Name of a job-lifetime container.
    pub name: Option<String>,
    /// Variables the job's value wins for.
    pub envlist: Vec<String>,
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
}

/// What the root helper answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// Variable set in every task, naming its container (`mnd-srun` sees it runs inside one).
pub const CONTAINER_VAR: &str = "MND_DIRECT_CONTAINER";

/// Variable set in every task: the id of the image its container runs.
pub const IMAGE_VAR: &str = "MND_DIRECT_IMAGE";

/// Label value of `mnd.step` for a `--mnd-name` container, which outlives its step.
pub const NAMED_STEP: &str = "named";

impl Options {
    /// Checks the options' form: an image name without spaces or control characters, mounts
    /// as `SRC[:DST][:ro]` with absolute paths, an absolute working directory, a name of
    /// letters, digits, `_.-`, and variable names.
    pub fn check(&self) -> Result<Checked, PlanError> {
        let image = self.image.trim();
        if image.is_empty() {
            return Err(usage(
                "--mnd-image is empty: give an image, e.g. --mnd-image=ubuntu:24.04",
            ));
        }
        if image.len() > 255 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(usage(format!(
                "--mnd-image '{}' is not an image name (no spaces or control characters, at most 255 characters)",
                image.escape_debug()
            )));
        }
        let mounts = self
            .mounts
            .iter()
            .flat_map(|m| m.split(','))
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| {
                if m.chars().any(char::is_control) {
                    return Err(usage(format!(
                        "--mnd-mounts '{}' holds a control character",
                        m.escape_debug()
                    )));
                }
                plan::parse_mount(m)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let workdir = match self.workdir.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(w) if w.starts_with('/') && !w.chars().any(char::is_control) => {
                Some(policy::lexical_clean(Path::new(w)))
            }
            Some(w) => {
                return Err(usage(format!(
                    "--mnd-workdir '{}' is not an absolute path",
                    w.escape_debug()
                )))
            }
        };
        let name = match self.name.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(n)
                if n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
            {
                Some(n.to_string())
            }
            Some(n) => {
                return Err(usage(format!(
                    "--mnd-name '{}' may hold only letters, digits, '_', '.' and '-' (at most 64)",
                    n.escape_debug()
                )))
            }
        };
        let envlist = self
            .envlist
            .iter()
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                if plan::is_variable_name(v) {
                    Ok(v.to_string())
                } else {
                    Err(usage(format!(
                        "--mnd-envlist: '{}' is not a variable name",
                        v.escape_debug()
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Checked {
            image: image.to_string(),
            mounts,
            workdir,
            name,
            envlist,
        })
    }
}

impl Request {
    /// The container's name on this node: per step, or per job and `--mnd-name`. User
    /// and container names may hold `-`, so the readable part alone could name two
    /// different containers (user `ml`, job 5, name `7.0` against user `ml-5`, job 7, step
    /// 0): a digest of the exact uid, job, step or name and node ends every name.
    pub fn container_name(&self, user: &str, name: Option<&str>) -> String {
        use sha2::{Digest, Sha256};
        let (readable, which) = match name {
            Some(n) => (
                format!("mnd-{user}-{}-{n}-{}", self.job, self.node),
                format!("name\0{n}"),
            ),
            None => (
                format!("mnd-{user}-{}.{}-{}", self.job, self.step, self.node),
                format!("step\0{}", self.step),
            ),
        };
        let digest = Sha256::digest(format!(
            "{}\0{}\0{which}\0{}",
            self.uid, self.job, self.node
        ));
        let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        plan::sanitize_name(&format!("{readable}-{short}"))
    }
}

/// What the container of a direct-mode step is decided from.
pub struct Inputs<'a> {
    /// The plugin's request.
    pub req: &'a Request,
    /// The site config.
    pub site: &'a SiteConfig,
    /// The job's user.
    pub user: &'a Identity,
    /// This node's GPUs.
    pub facts: &'a NodeFacts,
    /// The folder of the mnd tools.
    pub tools: Option<&'a Path>,
    /// Resolves a path as the user.
    pub resolve: &'a dyn Fn(&Path) -> std::io::Result<PathBuf>,
}

/// Decides this node's container for a direct-mode step: the image under the site's image
/// rules, the user's home, the site's mounts, `--mnd-mounts` and the working directory under
/// the mount rules (sources resolved by `resolve` as the user), Slurm's folders, the job's
/// uid, gid and groups, exactly the step's GPUs on this node, no capabilities,
/// `no-new-privileges`, host namespaces but mount. `tools` is the folder of the mnd binaries, shown read-only at the same path so `srun
/// --mnd-image=IMAGE mnd-srun ...` finds mnd-srun (not when it is a system folder).
pub fn plan(i: &Inputs) -> Result<(ContainerSpec, Checked), PlanError> {
    let Inputs {
        req,
        site,
        user,
        facts,
        tools,
        resolve,
    } = *i;
    let opts = req.options.check()?;
    policy::check_request(
        site,
        user,
        &policy::Request {
            image: &opts.image,
            privileged: false,
            dockopts: false,
        },
    )?;
    let checked = |origin, m| plan::checked_mount(site, user, origin, m, resolve);
    let mut mounts = vec![checked(MountOrigin::Home, Mount::same(&user.home, false))?];
    for spec in &site.defaults.mounts {
        mounts.push(checked(MountOrigin::Site, plan::parse_mount(spec)?)?);
    }
    for m in &opts.mounts {
        mounts.push(checked(MountOrigin::User, m.clone())?);
    }
    if !plan::covered(&req.cwd, &mounts) {
        mounts.push(checked(MountOrigin::Workdir, Mount::same(&req.cwd, false))?);
    }
    for dir in &req.slurm_dirs {
        let dir = policy::lexical_clean(dir);
        policy::check_mount_target(&dir)?;
        if !plan::covered(&dir, &mounts) {
            mounts.push(Mount::same(&dir, false));
        }
    }
    if let Some(dir) = tools.filter(|d| {
        policy::check_mount_source(MountOrigin::User, d).is_ok()
            && policy::check_mount_target(d).is_ok()
            && !mounts
                .iter()
                .any(|m| m.target.starts_with(d) || d.starts_with(&m.target))
    }) {
        mounts.push(Mount::same(dir, true));
    }
    plan::distinct_targets(&mounts)?;
    let labels = BTreeMap::from([
        ("mnd.job".to_string(), req.job.to_string()),
        (
            "mnd.step".to_string(),
            match opts.name {
                Some(_) => NAMED_STEP.to_string(),
                None => req.step.to_string(),
            },
        ),
        ("mnd.user".to_string(), user.name.clone()),
        ("mnd.uid".to_string(), user.uid.to_string()),
        ("mnd.node".to_string(), req.node.clone()),
        ("mnd.role".to_string(), "direct".to_string()),
        (
            "mnd.name".to_string(),
            opts.name.clone().unwrap_or_default(),
        ),
    ]);
    let step_gpus = step_gpus(req.step_gpus.as_deref())?;
    refuse_unique_ids(&step_gpus, req.step_cuda_devices.as_deref())?;
    let want = if step_gpus.is_empty() {
        GpuAsk::None
    } else {
        GpuAsk::Ids(step_gpus)
    };
    let (gpus, devices, gpu_groups) = plan::gpu_devices(GpuVendor::Auto, want, facts);
    let mut group_add: Vec<String> = Vec::new();
    for g in req
        .gids
        .iter()
        .chain(&gpu_groups)
        .filter(|g| **g != req.gid)
    {
        if !group_add.contains(&g.to_string()) {
            group_add.push(g.to_string());
        }
    }
    let mut env = vec![
        format!("HOME={}", user.home.display()),
        format!("USER={}", user.name),
        format!("LOGNAME={}", user.name),
        format!("MND_JOB={}.{}", req.job, req.step),
    ];
    env.extend(
        plan::gpu_env(&gpus, &devices)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    let spec = ContainerSpec {
        name: req.container_name(&user.name, opts.name.as_deref()),
        image: opts.image.clone(),
        pull: crate::cli::Pull::Missing,
        user: format!("{}:{}", req.uid, req.gid),
        group_add,
        labels,
        mounts,
        env,
        workdir: req.cwd.clone(),
        network: "host".into(),
        // The node's /dev/shm, as the tasks would have without a container: Slurm's PMIx
        // server (outside the container) shares its segments with them there.
        ipc: Some("host".into()),
        shm_size: None,
        ulimits: vec![],
        devices,
        gpus,
        cap_add: vec![],
        cap_drop: vec!["ALL".into()],
        security_opt: vec!["no-new-privileges=true".into()],
        tmpfs: BTreeMap::new(),
        extra_hosts: vec![],
        privileged: false,
        host_namespaces: true,
        storage_size: site.policy.writable_layer_size.clone(),
    };
    Ok((spec, opts))
}

/// A step whose GPUs Slurm names by unique ids (MIG devices, with NVML autodetection) is
/// refused: asking Docker for their indices would hand whole GPUs, and the root side cannot
/// yet check unique ids against the step's devices (the launcher, as the user, can).
fn refuse_unique_ids(step: &[u32], cuda_visible: Option<&str>) -> Result<(), PlanError> {
    if crate::slurm::gpu_uuids(step, cuda_visible).is_empty() {
        return Ok(());
    }
    Err(usage(
        "this step's GPUs are MIG devices (Slurm names them by unique id): direct mode does not give them yet, and will not give whole GPUs instead. Fix: run the job through the launcher (srun mnd-srun --container=IMAGE ...), which asks Docker for exactly these devices",
    ))
}

/// The step's GPUs on this node from Slurm's `SLURM_STEP_GPUS` (indices, comma separated).
pub fn step_gpus(text: Option<&str>) -> Result<Vec<u32>, PlanError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(vec![]);
    };
    text.split(',')
        .map(|i| i.trim().parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            usage(format!(
                "SLURM_STEP_GPUS '{}' is not a list of GPU indices",
                text.escape_debug()
            ))
        })
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

/// The tasks' environment changes: the image's variables (`PATH`, `LD_LIBRARY_PATH`, ...)
/// except the job-owned ones and those named in `--mnd-envlist`; the host's locale removed
/// unless the image sets it or the list keeps it; the container's name and image id; the
/// mnd tools' folder (`tools`) at the end of `PATH`.
pub fn task_env(
    image_env: &[String],
    envlist: &[String],
    container: &str,
    image_id: &str,
    tools: Option<&Path>,
) -> (Vec<(String, String)>, Vec<String>) {
    let keep = |k: &str| envlist.iter().any(|e| e == k);
    let mut set: Vec<(String, String)> = image_env
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| !job_owned(k) && !keep(k) && !plan::net::variables().any(|n| n == *k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let unset = ["LANG", "LANGUAGE", "LC_ALL"]
        .iter()
        .filter(|k| !keep(k) && !set.iter().any(|(s, _)| s == *k))
        .map(|k| k.to_string())
        .collect();
    if let Some(tools) = tools {
        match set.iter_mut().find(|(k, _)| k == "PATH") {
            Some((_, path)) => *path = format!("{path}:{}", tools.display()),
            None if !keep("PATH") => set.push((
                "PATH".into(),
                format!("/usr/local/bin:/usr/bin:/bin:{}", tools.display()),
            )),
            None => {}
        }
    }
    set.push((CONTAINER_VAR.to_string(), container.to_string()));
    set.push((IMAGE_VAR.to_string(), image_id.to_string()));
    (set, unset)
}

/// What a task gets for each network variable where it has no value of its own: the
/// image's value, else the job network's (`net`, `None` when the site turned the defaults
/// off or the network is unknown).
pub fn task_defaults(image_env: &[String], net: Option<&plan::JobNet>) -> Vec<(String, String)> {
    let image_value = |name: &str| {
        image_env
            .iter()
            .filter_map(|e| e.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(k, v)| (k.to_string(), v.to_string()))
    };
    let from_image: Vec<(String, String)> =
        plan::net::variables().filter_map(image_value).collect();
    let mut out = plan::net::defaults(net, |n| from_image.iter().any(|(k, _)| k == n));
    out.extend(from_image);
    out
}

#[cfg(test)]
mod tests;
