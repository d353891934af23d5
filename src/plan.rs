//! The plan: everything one launcher will do, decided from the Slurm step, the command line,
//! the site config, the user and a few facts about this node, with no I/O. Every rule lives
//! here: roles, names, ports, mounts, environment, GPUs, limits and policy.

use crate::cli::{Args, GpuVendor, ImageShare, Memlock, Pull};
use crate::config::SiteConfig;
use crate::dockopts::{self, DockOpts};
use crate::hostlist;
use crate::identity::Identity;
use crate::policy::{self, GpuAsk, MountOrigin};
use crate::slurm::{Role as SlurmRole, StepContext};
use crate::ssh::Material;
use crate::tree::{self, Tree};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

pub mod net;
pub use net::JobNet;

/// What this launcher does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Starts its container, waits for workers, runs the script, tells everyone to stop.
    Coordinator,
    /// Starts its container and serves sshd until the coordinator says stop.
    Worker,
    /// Nothing: another task on this node does the work, or `--nodelist` left it out.
    Idle(&'static str),
}

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
}

/// AMD GPU devices of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmdFacts {
    /// Numbers N of /dev/dri/renderDN, in order (GPU i is the i-th).
    pub render_nodes: Vec<u32>,
    /// Group ids owning the devices (video, render).
    pub device_gids: Vec<u32>,
}

/// The two ports a node of a job step listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPair {
    /// sshd inside the container.
    pub sshd: u16,
    /// The launchers' control channel (worker listens, coordinator connects).
    pub control: u16,
}

/// Ports of one job step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    /// The pairs a node may take, in order: each node takes the first whose ports are free
    /// there (one pair when the user or Slurm chose it).
    pub pairs: Vec<PortPair>,
    /// MASTER_PORT for torch.distributed and friends.
    pub master: u16,
}

impl Ports {
    /// The pair every node takes when its ports are free.
    pub fn preferred(&self) -> PortPair {
        self.pairs[0]
    }

    /// The control ports of the pairs, in order (where a worker may listen).
    pub fn controls(&self) -> Vec<u16> {
        self.pairs.iter().map(|p| p.control).collect()
    }
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
}

impl Mount {
    /// A node folder shown at the same path in the container.
    pub fn same(path: &Path, read_only: bool) -> Self {
        Mount {
            source: path.to_path_buf(),
            target: path.to_path_buf(),
            read_only,
        }
    }
}

/// GPUs requested from Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    /// None.
    None,
    /// NVIDIA, all GPUs of the node.
    NvidiaAll,
    /// NVIDIA, these physical ids.
    Nvidia(Vec<u32>),
    /// NVIDIA, these devices by the unique ids Slurm gave for them (MIG devices, whose
    /// indices are not GPUs').
    NvidiaUuids(Vec<String>),
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Largest writable layer (the site's `writable_layer_size`), if limited.
    pub storage_size: Option<String>,
}

/// The script the coordinator runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSpec {
    /// Absolute path (same inside the container).
    pub path: PathBuf,
    /// Arguments, byte for byte.
    pub args: Vec<String>,
}

/// Everything one launcher will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What this launcher does.
    pub role: Role,
    /// "JOB.STEP", or "local-PID" outside Slurm.
    pub job_label: String,
    /// The job's nodes, leader first.
    pub nodes: Vec<String>,
    /// This node's index in `nodes`.
    pub node_rank: usize,
    /// Slots per node.
    pub slots: u32,
    /// Ports.
    pub ports: Ports,
    /// How long the coordinator waits for workers.
    pub wait_timeout: Duration,
    /// The fan-out tree the launchers talk over.
    pub tree: Tree,
    /// Ssh material root and paths.
    pub ssh_root: PathBuf,
    /// Ssh material paths.
    pub ssh: Material,
    /// The caller.
    pub user: Identity,
    /// This node's container.
    pub container: ContainerSpec,
    /// Variables injected into the script and into every ssh session on this node.
    pub job_env: Vec<(String, String)>,
    /// Defaults (the job network, Open MPI's single-copy fallback), given where neither
    /// `job_env` nor the image sets them.
    pub env_defaults: Vec<(String, String)>,
    /// The script (coordinator only).
    pub script: Option<ScriptSpec>,
    /// The plugin's container this launcher already runs in (direct mode), if any.
    pub inside: Option<Inside>,
    /// Started over ssh by the hosts-mode front door: stdin is the lifeline, not the
    /// script's.
    pub hosts_mode: bool,
    /// When images travel through the image share.
    pub image_share: ImageShare,
    /// The image share's folder.
    pub image_cache: PathBuf,
}

/// A container of the SPANK plugin's direct mode that the launcher runs in (`srun
/// --mnd-image=IMAGE mnd-srun ...`): the plugin made it, the launcher only runs sshd and the
/// script in it, as the user, with no Docker access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inside {
    /// The container's name.
    pub container: String,
    /// The id of its image.
    pub image_id: String,
}

impl Plan {
    /// The defaults an image with `image_env` (`NAME=VALUE`) gets: those it does not set
    /// itself.
    pub fn env_defaults_for(&self, image_env: &[String]) -> Vec<(String, String)> {
        let sets = |name: &str| {
            image_env
                .iter()
                .any(|e| e.split_once('=').is_some_and(|(k, _)| k == name))
        };
        self.env_defaults
            .iter()
            .filter(|(k, _)| !sets(k))
            .cloned()
            .collect()
    }

    /// This node's name.
    pub fn this_node(&self) -> &str {
        &self.nodes[self.node_rank]
    }

    /// How long an sshd may take to answer once its container started: `--wait-timeout`,
    /// at most 30 s (the image pull is not part of it).
    pub fn sshd_wait(&self) -> Duration {
        self.wait_timeout.min(Duration::from_secs(30))
    }

    /// The plan with every environment value hidden (values of `--envlist` and `-e` may be
    /// secrets), for logs.
    pub fn redacted(&self) -> Plan {
        let mut p = self.clone();
        for (_, v) in &mut p.job_env {
            *v = "<hidden>".into();
        }
        for e in &mut p.container.env {
            if let Some((k, _)) = e.split_once('=') {
                *e = format!("{k}=<hidden>");
            }
        }
        p
    }
}

/// A command line, config or environment that cannot be turned into a plan.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    /// Something required is missing or a value is wrong; the text says what to do.
    #[error("{0}")]
    Usage(String),
    /// The site's policy forbids it.
    #[error("{what} is not allowed by the site policy ({rule} in {config}); ask your admin or drop the option")]
    Policy {
        /// What was refused.
        what: String,
        /// The policy key.
        rule: &'static str,
        /// The config file.
        config: String,
    },
    /// A built-in rule (not a site setting) forbids it.
    #[error("{what} is refused: {why}. Fix: {fix}")]
    Refused {
        /// What was refused.
        what: String,
        /// The rule, in words.
        why: String,
        /// What to do instead.
        fix: String,
    },
    /// `--nodelist` is wrong.
    #[error("--nodelist: {0}")]
    Nodelist(String),
    /// `--dockopts` is wrong.
    #[error(transparent)]
    DockOpts(#[from] dockopts::DockOptsError),
}

pub(crate) fn usage(msg: impl Into<String>) -> PlanError {
    PlanError::Usage(msg.into())
}

/// Inputs of the plan.
pub struct Inputs<'a> {
    /// Slurm step.
    pub step: &'a StepContext,
    /// Command line.
    pub args: &'a Args,
    /// Site config.
    pub site: &'a SiteConfig,
    /// Caller.
    pub user: &'a Identity,
    /// Node facts.
    pub facts: &'a NodeFacts,
    /// Resolves a host path to its real path (no `..`, no symbolic links); mount rules
    /// apply to what this returns.
    pub resolve: &'a dyn Fn(&Path) -> std::io::Result<PathBuf>,
}

/// Builds the plan.
pub fn build(i: &Inputs) -> Result<Plan, PlanError> {
    let Inputs {
        step,
        args,
        site,
        user,
        facts,
        resolve,
    } = *i;
    let inside = inside(facts, args)?;
    let image = match &inside {
        Some(i) => i.image_id.clone(),
        None => args
            .container
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| usage("no image given: add --container=IMAGE (or set MND_CONTAINER)"))?,
    };
    let script_arg = args
        .script
        .clone()
        .ok_or_else(|| usage("no script given: add --script=./job.sh (the script runs inside the first node's container)"))?;
    // Inside the plugin's container its root side has checked the image already.
    if inside.is_none() {
        policy::check_request(
            site,
            user,
            &policy::Request {
                image: &image,
                privileged: args.privileged,
                dockopts: args
                    .dockopts
                    .as_deref()
                    .is_some_and(|d| !d.trim().is_empty()),
            },
        )?;
    }
    let (nodes, node_rank, role) = choose_nodes(step, args)?;
    let job_label = match (step.job_id, step.step_id) {
        (Some(j), Some(s)) => format!("{j}.{s}"),
        _ => format!("local-{}", facts.pid),
    };
    let ports = ports(step, args, site, facts)?;
    let (gpu_ask, gpu_source) = gpu_ask(args, facts)?;
    policy::check_gpus(&gpu_ask, gpu_source, step.under_slurm(), &step.gpus)?;
    let slots = match (args.slots_per_node, &gpu_ask) {
        (Some(0), _) => return Err(usage("--slots-per-node must be at least 1")),
        (Some(n), _) => n,
        (None, GpuAsk::Ids(ids)) if !ids.is_empty() => ids.len() as u32,
        (None, _) if !step.gpus.is_empty() => step.gpus.len() as u32,
        (None, _) => step.gpus_on_node.filter(|&n| n > 0).unwrap_or(1),
    };
    let opts = match &args.dockopts {
        Some(text) => dockopts::parse(text)?,
        None => DockOpts::default(),
    };
    policy::check_dockopts(site, user, &opts)?;
    let script_path = absolute(&facts.cwd, &script_arg);
    let ssh_root = args
        .ssh_dir
        .as_ref()
        .map_or_else(|| user.home.join(".mnd/ssh"), |d| absolute(&facts.cwd, d));
    let ssh = Material::paths(&ssh_root, &user.name);
    let mounts = mounts(
        &MountInputs {
            user,
            facts,
            site,
            args,
            opts: &opts,
            script: &script_path,
            ssh_root: &ssh_root,
        },
        resolve,
    )?;
    let (gpus, mut devices, gpu_groups) = gpus(step, args, facts, gpu_ask);
    let mut job_env = job_env(
        &nodes,
        node_rank,
        slots,
        &step.node_slots,
        &ports,
        args,
        site,
        facts,
        &opts,
        &job_label,
    )?;
    job_env.extend(gpu_env(&gpus, &devices));
    let env_defaults = env_defaults(
        &mut job_env,
        args,
        site,
        facts,
        args.privileged || opts.privileged,
    );
    let mut env: Vec<String> = vec![
        format!("HOME={}", user.home.display()),
        format!("USER={}", user.name),
        format!("LOGNAME={}", user.name),
    ];
    env.extend(job_env.iter().map(|(k, v)| format!("{k}={v}")));
    if args.ib_devices {
        devices.push(Device {
            host: "/dev/infiniband".into(),
            container: "/dev/infiniband".into(),
            permissions: "rwm".into(),
        });
    }
    devices.extend(opts.devices.iter().map(|d| parse_device(d)));
    let mut ulimits = Vec::new();
    let raise = match args.memlock {
        Memlock::Unlimited => true,
        Memlock::Off => false,
        Memlock::Auto => facts.can_raise_memlock,
    };
    if raise {
        ulimits.push(("memlock".to_string(), -1, -1));
    }
    for u in &opts.ulimits {
        ulimits.retain(|(n, _, _)| n != &u.0);
        ulimits.push(u.clone());
    }
    let shm_text = opts
        .shm_size
        .clone()
        .or_else(|| args.shm_size.clone())
        .unwrap_or_else(|| site.defaults.shm_size.clone());
    let shm_size = Some(parse_size(&shm_text).ok_or_else(|| {
        usage(format!(
            "shm size '{shm_text}' is not a size like 512m or 16g"
        ))
    })?);
    if let Some(net) = &opts.network {
        if net != "host" {
            return Err(usage(format!("--dockopts --network={net}: containers must use the host network so nodes reach each other's sshd")));
        }
    }
    let mut group_add: Vec<String> = user
        .groups
        .iter()
        .filter(|g| g.gid != user.gid)
        .map(|g| g.gid.to_string())
        .collect();
    group_add.extend(gpu_groups.iter().map(u32::to_string));
    // Group names are the host's: Docker would look them up in the image instead.
    group_add.extend(opts.group_add.iter().map(|g| {
        user.groups
            .iter()
            .find(|mine| mine.name == *g)
            .map_or_else(|| g.clone(), |mine| mine.gid.to_string())
    }));
    let mut seen = std::collections::BTreeSet::new();
    group_add.retain(|g| seen.insert(g.clone()));
    let this = nodes[node_rank].clone();
    let prefix = args
        .name
        .clone()
        .unwrap_or_else(|| format!("mnd-{}", user.name));
    let name = sanitize_name(&format!("{prefix}-{job_label}-{this}"));
    let mut labels = BTreeMap::from([
        (
            "mnd.job".to_string(),
            step.job_id
                .map_or_else(|| "local".into(), |j| j.to_string()),
        ),
        (
            "mnd.step".to_string(),
            step.step_id
                .map_or_else(|| "local".into(), |s| s.to_string()),
        ),
        ("mnd.user".to_string(), user.name.clone()),
        ("mnd.uid".to_string(), user.uid.to_string()),
        ("mnd.node".to_string(), this.clone()),
        (
            "mnd.role".to_string(),
            if node_rank == 0 {
                "coordinator"
            } else {
                "worker"
            }
            .to_string(),
        ),
        ("mnd.launcher-pid".to_string(), facts.pid.to_string()),
    ]);
    for l in &opts.labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        if !k.starts_with("mnd.") {
            labels.insert(k.to_string(), v.to_string());
        }
    }
    let privileged = args.privileged || opts.privileged;
    let container = ContainerSpec {
        name,
        image,
        pull: args.pull,
        user: format!("{}:{}", user.uid, user.gid),
        group_add,
        labels,
        mounts,
        env,
        workdir: facts.cwd.clone(),
        network: "host".into(),
        ipc: opts.ipc.clone(),
        shm_size,
        ulimits,
        devices,
        gpus,
        cap_add: opts.cap_add.clone(),
        // Nothing in a job needs a capability (sshd runs as the user); with
        // no-new-privileges a setuid or file-capability program in the image gives nothing.
        cap_drop: if privileged {
            opts.cap_drop.clone()
        } else {
            std::iter::once("ALL".to_string())
                .chain(opts.cap_drop.iter().cloned())
                .collect()
        },
        security_opt: std::iter::once("no-new-privileges=true".to_string())
            .chain(opts.security_opt.iter().cloned())
            .collect(),
        tmpfs: opts
            .tmpfs
            .iter()
            .map(|t| {
                let (p, o) = t.split_once(':').unwrap_or((t, ""));
                (p.to_string(), o.to_string())
            })
            .collect(),
        extra_hosts: opts.add_hosts.clone(),
        privileged,
        host_namespaces: false,
        storage_size: site.policy.writable_layer_size.clone(),
    };
    let script = (role == Role::Coordinator).then(|| ScriptSpec {
        path: script_path,
        args: args.all_script_args(),
    });
    let tree = Tree::new(
        nodes.len(),
        args.tree_width.map_or(tree::DEFAULT_WIDTH, usize::from),
    );
    Ok(Plan {
        role,
        job_label,
        nodes,
        node_rank,
        slots,
        ports,
        wait_timeout: Duration::from_secs(
            args.wait_timeout
                .unwrap_or(site.defaults.wait_timeout)
                .max(1),
        ),
        tree,
        ssh_root,
        ssh,
        user: user.clone(),
        container,
        job_env,
        env_defaults,
        script,
        inside,
        hosts_mode: step.hosts_mode,
        image_share: args.image_share,
        image_cache: args.image_cache.as_ref().map_or_else(
            || user.home.join(".mnd/images"),
            |d| absolute(&facts.cwd, d),
        ),
    })
}

/// Variables the job gets unless someone set them. A value the user exported for a
/// network variable goes to the job as it is (theirs always wins); the others get this
/// node's job network as defaults, unless `--no-net-defaults` or the site's
/// `net_defaults = false` turns them off. Open MPI's single-copy transfers are off where
/// Docker's seccomp profile forbids them (not in a privileged container).
fn env_defaults(
    job_env: &mut Vec<(String, String)>,
    args: &Args,
    site: &SiteConfig,
    facts: &NodeFacts,
    privileged: bool,
) -> Vec<(String, String)> {
    for name in net::variables() {
        if let Some(v) = facts.env.get(name) {
            if !job_env.iter().any(|(k, _)| k == name) {
                job_env.push((name.to_string(), v.clone()));
            }
        }
    }
    let taken = |name: &str| job_env.iter().any(|(k, _)| k == name);
    let mut out = if args.no_net_defaults || !site.defaults.net_defaults {
        vec![]
    } else {
        net::defaults(facts.net.as_ref(), taken)
    };
    if !privileged {
        out.extend(
            net::SINGLE_COPY_OFF
                .iter()
                .filter(|(k, _)| !taken(k))
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    out
}

/// The direct-mode container this launcher runs in (`MND_DIRECT_CONTAINER`, set by the SPANK
/// plugin). Options that shape a container are refused there: the plugin made it.
fn inside(facts: &NodeFacts, args: &Args) -> Result<Option<Inside>, PlanError> {
    let Some(container) = facts.env.get(crate::direct::CONTAINER_VAR) else {
        return Ok(None);
    };
    let shaping = [
        ("--container", args.container.is_some()),
        (
            "--dockopts",
            args.dockopts
                .as_deref()
                .is_some_and(|d| !d.trim().is_empty()),
        ),
        ("--privileged", args.privileged),
        ("--mounts", args.mounts.iter().any(|m| !m.is_empty())),
        ("--gpus", args.gpus.is_some()),
    ];
    if let Some((flag, _)) = shaping.iter().find(|(_, given)| *given) {
        return Err(usage(format!(
            "{flag} does not apply here: mnd-srun runs inside the container of srun --mnd-image (direct mode), which the plugin made. Fix: drop {flag}; give folders with srun --mnd-mounts"
        )));
    }
    Ok(Some(Inside {
        container: container.clone(),
        image_id: facts
            .env
            .get(crate::direct::IMAGE_VAR)
            .cloned()
            .unwrap_or_default(),
    }))
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    // Lexical clean-up of "." and ".." so the same path works inside the container.
    policy::lexical_clean(&cwd.join(p))
}

/// Which nodes take part, this node's rank among them, and this launcher's role.
fn choose_nodes(step: &StepContext, args: &Args) -> Result<(Vec<String>, usize, Role), PlanError> {
    let slurm_role = step.role();
    let mut nodes = step.nodes.clone();
    if let Some(expr) = &args.nodelist {
        let wanted = hostlist::expand(expr).map_err(|e| PlanError::Nodelist(e.to_string()))?;
        if wanted.is_empty() {
            return Err(PlanError::Nodelist(format!("'{expr}' names no node")));
        }
        if let Some(stranger) = wanted.iter().find(|n| !step.nodes.contains(n)) {
            let hint = if step.under_slurm() {
                format!(
                    "the step runs on {}; use srun -w to choose nodes",
                    hostlist::compress(&step.nodes)
                )
            } else {
                format!("without Slurm mnd-srun runs on this machine only ({}); start it under srun to use several nodes", step.node_name)
            };
            return Err(PlanError::Nodelist(format!(
                "node '{stranger}' is not part of this step: {hint}"
            )));
        }
        nodes = wanted;
    }
    if args.script_help {
        nodes.truncate(1);
    }
    let rank = nodes.iter().position(|n| *n == step.node_name);
    let role = match (slurm_role, rank) {
        (SlurmRole::ExtraLocalTask, _) => {
            Role::Idle("another task of this step already runs the launcher on this node")
        }
        (_, None) => Role::Idle(
            "this node is not in --nodelist (or --script-help runs on the first node only)",
        ),
        (_, Some(0)) => Role::Coordinator,
        (_, Some(_)) => Role::Worker,
    };
    Ok((nodes, rank.unwrap_or(0), role))
}

/// Steps of one job that get different ports when they run at once (a sweep's `srun ... &`).
const STEPS_APART: u64 = 50;
/// Jobs on one node whose ports differ (jobs whose ids differ by a multiple of this, on
/// the same nodes at the same time, get the same ports unless Slurm reserves them).
const JOBS_APART: u64 = 100;

/// Other pairs a node may move to when its derived pair is taken.
const ALTERNATIVE_PAIRS: u64 = 4;

/// Ports: `--sshd-port`, else the ports Slurm reserved for the step
/// (`SLURM_STEP_RESV_PORTS`, unique per node), else derived from job and step so that
/// concurrent steps of a job and concurrent jobs differ, with alternatives spread over the
/// range for a node where the derived pair is taken; MASTER_PORT likewise per step.
fn ports(
    step: &StepContext,
    args: &Args,
    site: &SiteConfig,
    facts: &NodeFacts,
) -> Result<Ports, PlanError> {
    let d = &site.defaults;
    let pairs = u64::from(d.ssh_port_span / 2);
    let (job, step_id) = (step.job_id.unwrap_or(0), step.step_id.unwrap_or(0));
    let slot = match (step.job_id, step.step_id) {
        (Some(_), Some(_)) => (job % JOBS_APART) * STEPS_APART + step_id % STEPS_APART,
        _ => u64::from(facts.pid),
    };
    let reserved = (args.sshd_port.is_none() && step.resv_ports.len() >= 2)
        .then(|| (step.resv_ports[0], step.resv_ports[1]));
    let pair = |sshd: u16, control: u16| PortPair { sshd, control };
    let candidates = match (args.sshd_port, reserved) {
        (Some(p), _) if p < 1024 || p == u16::MAX => {
            return Err(usage(format!("--sshd-port {p}: use a port from 1024 to 65534 (the next port is the control port)")));
        }
        (Some(p), _) => vec![pair(p, p + 1)],
        (None, Some((s, c))) => vec![pair(s, c)],
        (None, None) => {
            let spread = (pairs / (ALTERNATIVE_PAIRS + 1)).max(1);
            let mut out: Vec<PortPair> = Vec::new();
            for k in 0..=ALTERNATIVE_PAIRS {
                let p = d.ssh_port_base + (2 * ((slot + k * spread) % pairs)) as u16;
                if !out.iter().any(|q| q.sshd == p) {
                    out.push(pair(p, p + 1));
                }
            }
            out
        }
    };
    let master = match (args.master_port, step.resv_ports.get(2)) {
        (Some(p), _) => p,
        (None, Some(&p)) if reserved.is_some() => p,
        _ => {
            let per_job = 10;
            let offset = (job % 100) * per_job + step_id % per_job;
            d.master_port_base.saturating_add((offset % 1000) as u16)
        }
    };
    Ok(Ports {
        pairs: candidates,
        master,
    })
}

pub(crate) fn parse_mount(spec: &str) -> Result<Mount, PlanError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [s] => (*s, *s, false),
        [s, "ro"] => (*s, *s, true),
        [s, "rw"] => (*s, *s, false),
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => return Err(usage(format!("mount '{spec}' is not SRC[:DST][:ro]"))),
    };
    if !src.starts_with('/') || !dst.starts_with('/') {
        return Err(usage(format!(
            "mount '{spec}': source and target must be absolute paths"
        )));
    }
    Ok(Mount {
        source: src.into(),
        target: policy::lexical_clean(Path::new(dst)),
        read_only: ro,
    })
}

/// What the mounts are decided from.
struct MountInputs<'a> {
    user: &'a Identity,
    facts: &'a NodeFacts,
    site: &'a SiteConfig,
    args: &'a Args,
    opts: &'a DockOpts,
    script: &'a Path,
    ssh_root: &'a Path,
}

/// Every bind mount, with its source resolved (no `..`, no symbolic links) and checked:
/// home, site mounts, `--mounts`/`-v`, then the working directory, the ssh folder and the
/// script's folder when no mount already shows them at the same path.
fn mounts(
    i: &MountInputs,
    resolve: &dyn Fn(&Path) -> std::io::Result<PathBuf>,
) -> Result<Vec<Mount>, PlanError> {
    let checked = |origin: MountOrigin, m: Mount| checked_mount(i.site, i.user, origin, m, resolve);
    let mut out = vec![checked(
        MountOrigin::Home,
        Mount::same(&i.user.home, false),
    )?];
    for spec in &i.site.defaults.mounts {
        out.push(checked(MountOrigin::Site, parse_mount(spec)?)?);
    }
    for spec in i
        .args
        .mounts
        .iter()
        .chain(&i.opts.mounts)
        .filter(|s| !s.is_empty())
    {
        out.push(checked(MountOrigin::User, parse_mount(spec)?)?);
    }
    if !covered(&i.facts.cwd, &out) {
        let m = checked(MountOrigin::Workdir, Mount::same(&i.facts.cwd, false))?;
        out.push(m);
    }
    if !covered(i.ssh_root, &out) {
        let m = checked(MountOrigin::SshDir, Mount::same(i.ssh_root, true))?;
        out.push(m);
    }
    if let Some(dir) = i.script.parent() {
        if !covered(i.script, &out) {
            let m = checked(MountOrigin::ScriptDir, Mount::same(dir, true))?;
            out.push(m);
        }
    }
    distinct_targets(&out)?;
    Ok(out)
}

/// A mount with its source resolved (no `..`, no symbolic links) and checked against the
/// mount rules for where it comes from.
pub(crate) fn checked_mount(
    site: &SiteConfig,
    user: &Identity,
    origin: MountOrigin,
    m: Mount,
    resolve: &dyn Fn(&Path) -> std::io::Result<PathBuf>,
) -> Result<Mount, PlanError> {
    let source = resolve(&m.source).map_err(|e| {
        usage(format!(
            "mount source {} cannot be used: {e}. Fix: give an existing folder",
            m.source.display()
        ))
    })?;
    policy::check_mount_source(origin, &source)?;
    policy::check_mount_prefix(site, origin, &source, &user.home, resolve)?;
    policy::check_mount_target(&m.target)?;
    Ok(Mount { source, ..m })
}

/// A path shows inside the container at the same place when a mount of it (or of a folder
/// above it) has the same source and target.
pub(crate) fn covered(p: &Path, mounts: &[Mount]) -> bool {
    mounts
        .iter()
        .any(|m| p.starts_with(&m.target) && m.source == m.target)
}

/// Refuses two mounts on one target.
pub(crate) fn distinct_targets(mounts: &[Mount]) -> Result<(), PlanError> {
    let mut seen = std::collections::BTreeSet::new();
    match mounts.iter().find(|m| !seen.insert(m.target.clone())) {
        Some(m) => Err(usage(format!(
            "two mounts target {}: drop one of them",
            m.target.display()
        ))),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn job_env(
    nodes: &[String],
    rank: usize,
    slots: u32,
    node_slots: &[u32],
    ports: &Ports,
    args: &Args,
    site: &SiteConfig,
    facts: &NodeFacts,
    opts: &DockOpts,
    job_label: &str,
) -> Result<Vec<(String, String)>, PlanError> {
    // Every node's slots: the hostfile's (hosts mode), else the same on every node.
    let per_node: Vec<u32> = if node_slots.len() == nodes.len() {
        node_slots.to_vec()
    } else {
        vec![slots; nodes.len()]
    };
    let np: u32 = per_node.iter().sum();
    let mut env = vec![
        (
            "hostlist".to_string(),
            nodes
                .iter()
                .zip(&per_node)
                .map(|(n, s)| format!("{n}:{s}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("np".to_string(), np.to_string()),
        (
            "MASTER_ADDR".to_string(),
            args.master_addr.clone().unwrap_or_else(|| nodes[0].clone()),
        ),
        ("MASTER_PORT".to_string(), ports.master.to_string()),
        ("NNODES".to_string(), nodes.len().to_string()),
        ("NODE_RANK".to_string(), rank.to_string()),
        ("WORLD_SIZE".to_string(), np.to_string()),
        ("MND_JOB".to_string(), job_label.to_string()),
        ("PDSH_RCMD_TYPE".to_string(), "ssh".to_string()),
    ];
    for (name, value) in [
        ("NCCL_SOCKET_IFNAME", &args.nccl_socket_ifname),
        ("GLOO_SOCKET_IFNAME", &args.gloo_socket_ifname),
    ] {
        if let Some(v) = value {
            env.push((name.to_string(), v.clone()));
        }
    }
    let listed: Vec<&String> = args.envlist.iter().filter(|n| !n.is_empty()).collect();
    if !listed.is_empty() {
        env.push((
            "ENVLIST".into(),
            listed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ));
    }
    for name in listed {
        if !is_variable_name(name) {
            return Err(usage(format!(
                "--envlist: '{}' is not a variable name",
                name.escape_debug()
            )));
        }
        match facts.env.get(name) {
            Some(v) => env.push((name.clone(), v.clone())),
            None => log::warn!("--envlist: {name} is not set here; not passed"),
        }
    }
    for e in site.defaults.env.iter().chain(&opts.env) {
        match e.split_once('=') {
            Some((k, v)) => env.push((k.to_string(), v.to_string())),
            None => {
                if let Some(v) = facts.env.get(e) {
                    env.push((e.clone(), v.clone()));
                }
            }
        }
    }
    for (k, v) in &env {
        check_env_value(k, v)?;
    }
    Ok(env)
}

/// Every ssh session of the job gets these variables (sshd `SetEnv`), which cannot carry a
/// line break or other control character; the value itself is never printed.
pub fn check_env_value(name: &str, value: &str) -> Result<(), PlanError> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(usage(format!(
            "variable {name} has a line break or control character in its value, which ssh sessions cannot carry. Fix: pass it through a file instead, or drop it from --envlist/-e"
        )));
    }
    Ok(())
}

/// The GPUs asked for: `--gpus` (or `MND_GPUS`), else the seed's `NV_GPU`; and which of
/// the two it was, for messages.
fn gpu_ask(args: &Args, facts: &NodeFacts) -> Result<(GpuAsk, &'static str), PlanError> {
    let (text, source) = match (&args.gpus, facts.env.get("NV_GPU")) {
        (Some(g), _) => (g.as_str(), "--gpus"),
        (None, Some(nv)) => (nv.as_str(), "NV_GPU"),
        (None, None) => return Ok((GpuAsk::Default, "--gpus")),
    };
    let ask = match text.trim() {
        "none" | "" => GpuAsk::None,
        "all" => GpuAsk::All,
        list => GpuAsk::Ids(
            list.split(',')
                .map(|s| {
                    s.trim().parse().map_err(|_| {
                        usage(format!(
                            "{source} '{list}': use all, none or physical GPU ids like 0,1"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok((ask, source))
}

/// GPU request, devices and groups, from what Slurm gave the step (physical ids) or what
/// was asked (already checked against the step by the policy).
fn gpus(
    step: &StepContext,
    args: &Args,
    facts: &NodeFacts,
    ask: GpuAsk,
) -> (Gpus, Vec<Device>, Vec<u32>) {
    let want = match ask {
        GpuAsk::Default if !step.gpus.is_empty() => GpuAsk::Ids(step.gpus.clone()),
        GpuAsk::Default if step.under_slurm() => GpuAsk::None,
        GpuAsk::Default => GpuAsk::All,
        other => other,
    };
    match gpu_devices(args.gpu_vendor, want, facts) {
        (Gpus::Nvidia(ids), devices, groups) => (by_uuid(ids, step), devices, groups),
        other => other,
    }
}

/// The GPUs `ids` (the step's, checked by the policy) by Slurm's unique ids, where Slurm
/// gave them for every one.
fn by_uuid(ids: Vec<u32>, step: &StepContext) -> Gpus {
    let uuids: Option<Vec<String>> = ids
        .iter()
        .map(|id| {
            let at = step.gpus.iter().position(|g| g == id)?;
            step.gpu_uuids.get(at).cloned()
        })
        .collect();
    match uuids {
        Some(uuids) if !uuids.is_empty() => Gpus::NvidiaUuids(uuids),
        _ => Gpus::Nvidia(ids),
    }
}

/// What Docker is asked for to give a container the GPUs `want` of `vendor` (`Auto`: NVIDIA
/// when the node has /dev/nvidia0, else AMD when it has /dev/kfd): NVIDIA's device request,
/// or AMD's device nodes and the groups that own them.
pub(crate) fn gpu_devices(
    vendor: GpuVendor,
    want: GpuAsk,
    facts: &NodeFacts,
) -> (Gpus, Vec<Device>, Vec<u32>) {
    let vendor = match vendor {
        GpuVendor::Auto if facts.nvidia => GpuVendor::Nvidia,
        GpuVendor::Auto if facts.amd.is_some() => GpuVendor::Amd,
        GpuVendor::Auto => GpuVendor::None,
        v => v,
    };
    match (vendor, want) {
        (_, GpuAsk::None | GpuAsk::Default) | (GpuVendor::None | GpuVendor::Auto, _) => {
            (Gpus::None, vec![], vec![])
        }
        (GpuVendor::Nvidia, GpuAsk::All) => (Gpus::NvidiaAll, vec![], vec![]),
        (GpuVendor::Nvidia, GpuAsk::Ids(ids)) => (Gpus::Nvidia(ids), vec![], vec![]),
        (GpuVendor::Amd, want) => {
            let amd = facts.amd.clone().unwrap_or_default();
            let nodes: Vec<u32> = match want {
                GpuAsk::Ids(ids) => ids
                    .iter()
                    .map(|&i| amd.render_nodes.get(i as usize).copied().unwrap_or(128 + i))
                    .collect(),
                _ => amd.render_nodes.clone(),
            };
            let dev = |p: String| Device {
                host: p.clone(),
                container: p,
                permissions: "rwm".into(),
            };
            let mut devices = vec![dev("/dev/kfd".into())];
            devices.extend(nodes.iter().map(|n| dev(format!("/dev/dri/renderD{n}"))));
            (Gpus::None, devices, amd.device_gids)
        }
    }
}

/// What programs in the container are told about their GPUs, consistent with what they
/// see: the GPUs given appear as 0..n-1 (NVIDIA's runtime and AMD's render nodes alike),
/// and `NVIDIA_VISIBLE_DEVICES` names the node's physical ones.
pub(crate) fn gpu_env(gpus: &Gpus, devices: &[Device]) -> Vec<(String, String)> {
    let first_n = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    match gpus {
        Gpus::Nvidia(ids) => vec![
            ("CUDA_VISIBLE_DEVICES".into(), first_n(ids.len())),
            (
                "NVIDIA_VISIBLE_DEVICES".into(),
                ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            ),
        ],
        Gpus::NvidiaUuids(uuids) => vec![
            ("CUDA_VISIBLE_DEVICES".into(), first_n(uuids.len())),
            ("NVIDIA_VISIBLE_DEVICES".into(), uuids.join(",")),
        ],
        Gpus::NvidiaAll => vec![("NVIDIA_VISIBLE_DEVICES".into(), "all".into())],
        // An image's own NVIDIA_VISIBLE_DEVICES=all (CUDA images have it) would hand every
        // GPU of a node whose default runtime is nvidia: a step without NVIDIA GPUs gets none.
        Gpus::None => {
            let mut env = vec![("NVIDIA_VISIBLE_DEVICES".to_string(), "void".to_string())];
            let render = devices
                .iter()
                .filter(|d| d.host.starts_with("/dev/dri/renderD"))
                .count();
            if render > 0 {
                env.push(("ROCR_VISIBLE_DEVICES".into(), first_n(render)));
                env.push(("HIP_VISIBLE_DEVICES".into(), first_n(render)));
            }
            env
        }
    }
}

fn parse_device(spec: &str) -> Device {
    let mut parts = spec.splitn(3, ':');
    let host = parts.next().unwrap_or_default().to_string();
    let container = parts
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(&host)
        .to_string();
    let permissions = parts.next().unwrap_or("rwm").to_string();
    Device {
        host,
        container,
        permissions,
    }
}

/// Parses "512m", "16g", "1073741824" into bytes.
pub fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1i64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(mult))
}

/// The one rule for a variable name a user lists (`--envlist`, `--mnd-envlist`): letters,
/// digits and `_`, not starting with a digit (a shell could not export it otherwise).
pub(crate) fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
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

#[cfg(test)]
mod tests;
