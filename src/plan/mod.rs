//! The plan: everything one launcher will do, decided from the Slurm step, the command line,
//! the site config, the user and a few facts about this node, with no I/O. Every rule lives
//! here, one concern per file, shared by both recipes: the launcher's container (this file)
//! and direct mode's (`direct`); `mounts`, `ports`, `gpus`, `env`, `container` (identity,
//! groups, labels, hardening) and `policy` (what may reach Docker at all).

use crate::cli::{Args, ImageShare, Memlock};
use crate::config::SiteConfig;
use crate::dockopts::{self, DockOpts};
use crate::hostlist;
use crate::identity::Identity;
use crate::slurm::{Role as SlurmRole, StepContext};
use crate::spec::{self, ContainerSpec, Device, Gpus, Mount};
use crate::ssh::paths::Material;
use crate::tree::{self, Tree};
use policy::GpuAsk;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod container;
pub mod direct;
pub mod env;
pub mod error;
pub mod fabric;
pub mod facts;
pub mod gpus;
pub mod mounts;
pub mod net;
pub mod options;
pub mod policy;
pub mod ports;

pub(crate) use error::usage;
pub use error::PlanError;
pub use facts::{AmdFacts, NodeFacts};
pub use net::JobNet;
pub use ports::{PortPair, Ports};

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
    /// The node's CDI facts, for the pass once the engine is known (`fabric::for_engine`).
    pub fabric: fabric::FabricFacts,
    /// The site's bound on the image's size, checked once the image is known.
    pub image_bound: policy::ImageBound,
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

    /// How often a node says it is still working (pulling, or starting after a pull) and
    /// how often that goes up the tree: a sixth of `--wait-timeout`, at most 500 ms, so a
    /// heartbeat (up to two periods after the last event), its report and one relay's
    /// pass-up all fit inside the wait they hold open, even at `--wait-timeout=1`.
    pub fn progress_every(&self) -> Duration {
        (self.wait_timeout / 6).clamp(Duration::from_millis(50), Duration::from_millis(500))
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

/// Builds the plan. The order of the checks is the order of the messages a user meets:
/// image and script, the site's image rules, nodes, ports, GPUs, slots, `--dockopts`, mounts,
/// environment, then the container's own settings.
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
    let (image, script_arg) = image_and_script(inside.as_ref(), args)?;
    // Inside the plugin's container its root side has checked the image already.
    if inside.is_none() {
        check_image_rules(site, user, args, &image)?;
    }
    let (nodes, node_rank, role) = choose_nodes(step, args)?;
    let job_label = match (step.job_id, step.step_id) {
        (Some(j), Some(s)) => format!("{j}.{s}"),
        _ => format!("local-{}", facts.pid),
    };
    let ports = ports::ports(step, args, site, facts)?;
    let (gpu_ask, gpu_source) = gpus::gpu_ask(args, facts)?;
    policy::check_gpus(&gpu_ask, gpu_source, step.under_slurm(), &step.gpus)?;
    let slots = slots(args.slots_per_node, &gpu_ask, step)?;
    let opts = match &args.dockopts {
        Some(text) => dockopts::parse(text)?,
        None => DockOpts::default(),
    };
    policy::check_dockopts(site, user, &opts)?;
    let script_path = mounts::absolute(&facts.cwd, &script_arg);
    let ssh_root = user_dir(args.ssh_dir.as_deref(), user, facts, ".mnd/ssh");
    let mounts = mounts::mounts(
        &mounts::MountInputs {
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
    let (gpus, mut devices, gpu_groups) = gpus::gpus(step, args, facts, gpu_ask);
    let fabric = launcher_fabric(i, inside.is_some(), &nodes[node_rank])?;
    devices.extend(fabric.devices.iter().cloned());
    let mut mounts = mounts;
    mounts.extend(fabric.mounts.iter().cloned());
    let shape = env::JobShape {
        nodes: &nodes,
        node_rank,
        slots,
        node_slots: &step.node_slots,
        ports: &ports,
        job_label: &job_label,
    };
    let (job_env, env_defaults) = environment(i, &shape, &opts, &gpus, &devices, &fabric.env)?;
    let mut container = launcher_container(&Shaped {
        i,
        opts: &opts,
        image,
        node: &nodes[node_rank],
        coordinator: node_rank == 0,
        mounts,
        gpus,
        devices,
        gpu_groups,
        job_env: &job_env,
        job_label: &job_label,
    })?;
    container.cdi_devices = fabric.cdi;
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
        ssh: Material::paths(&ssh_root, &user.name),
        ssh_root,
        user: user.clone(),
        container,
        job_env,
        env_defaults,
        script,
        inside,
        hosts_mode: step.hosts_mode,
        image_share: args.image_share,
        image_cache: user_dir(args.image_cache.as_deref(), user, facts, ".mnd/images"),
        fabric: facts.fabric.clone(),
        image_bound: policy::ImageBound::of(site),
    })
}

/// Variables as (name, value) pairs.
type Vars = Vec<(String, String)>;

/// The job's variables (with the GPUs' numbering) and the defaults given where neither
/// they nor the image set a value.
fn environment(
    i: &Inputs,
    shape: &env::JobShape,
    opts: &DockOpts,
    gpus: &Gpus,
    devices: &[Device],
    fabric_env: &[(String, String)],
) -> Result<(Vars, Vars), PlanError> {
    let mut job_env = env::job_env(shape, i.args, i.site, i.facts, opts)?;
    job_env.extend(gpus::gpu_env(gpus, devices));
    let privileged = i.args.privileged || opts.privileged;
    let defaults = env::env_defaults(
        &mut job_env,
        i.args,
        i.site,
        i.facts,
        privileged,
        fabric_env,
    );
    Ok((job_env, defaults))
}

/// The fabric profiles of `--fabric` (`--ib-devices` adds `ib`), or the site's default
/// ones this node has; none inside the plugin's container (the plugin made it).
fn launcher_fabric(i: &Inputs, inside: bool, node: &str) -> Result<fabric::Fabric, PlanError> {
    let text = match (i.args.fabric.as_deref(), i.args.ib_devices) {
        _ if inside => Some("none".to_string()),
        (Some(f), true) if f.trim() != "none" => Some(format!("{f},ib")),
        (None, true) => Some("ib".to_string()),
        (f, _) => f.map(str::to_string),
    };
    let ask = fabric::ask(text.as_deref(), "--fabric")?;
    fabric::choose(&ask, "--fabric", i.site, &i.facts.fabric, node)
}

/// The site's rules on images, `--privileged` and `--dockopts` at all.
fn check_image_rules(
    site: &SiteConfig,
    user: &Identity,
    args: &Args,
    image: &str,
) -> Result<(), PlanError> {
    policy::check_request(
        site,
        user,
        &policy::Request {
            image,
            privileged: args.privileged,
            dockopts: args
                .dockopts
                .as_deref()
                .is_some_and(|d| !d.trim().is_empty()),
        },
    )
}

/// A folder of the user's: as given (relative to the working directory), else `default`
/// under their home.
fn user_dir(given: Option<&Path>, user: &Identity, facts: &NodeFacts, default: &str) -> PathBuf {
    given.map_or_else(
        || user.home.join(default),
        |d| mounts::absolute(&facts.cwd, d),
    )
}

/// The image (the plugin's, inside its container) and the script; both are required.
fn image_and_script(inside: Option<&Inside>, args: &Args) -> Result<(String, PathBuf), PlanError> {
    let image = match inside {
        Some(i) => i.image_id.clone(),
        None => args
            .container
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| usage("no image given: add --container=IMAGE (or set MND_CONTAINER)"))?,
    };
    let script = args
        .script
        .clone()
        .ok_or_else(|| usage("no script given: add --script=./job.sh (the script runs inside the first node's container)"))?;
    Ok((image, script))
}

/// Slots per node: `--slots-per-node`, else one per GPU asked for or given by Slurm, else
/// Slurm's GPU count on the node, else 1.
fn slots(given: Option<u32>, gpu_ask: &GpuAsk, step: &StepContext) -> Result<u32, PlanError> {
    Ok(match (given, gpu_ask) {
        (Some(0), _) => return Err(usage("--slots-per-node must be at least 1")),
        (Some(n), _) => n,
        (None, GpuAsk::Ids(ids)) if !ids.is_empty() => ids.len() as u32,
        (None, _) if !step.gpus.is_empty() => step.gpus.len() as u32,
        (None, _) => step.gpus_on_node.filter(|&n| n > 0).unwrap_or(1),
    })
}

/// What the launcher's container is made of, once the rules above decided it.
struct Shaped<'a> {
    i: &'a Inputs<'a>,
    opts: &'a DockOpts,
    image: String,
    node: &'a str,
    coordinator: bool,
    mounts: Vec<Mount>,
    gpus: Gpus,
    devices: Vec<Device>,
    gpu_groups: Vec<u32>,
    job_env: &'a [(String, String)],
    job_label: &'a str,
}

/// The launcher's container: the user's identity and groups, the mounts, devices, limits,
/// the labels and the hardening, with `--dockopts` on top where the rules allow it.
fn launcher_container(s: &Shaped) -> Result<ContainerSpec, PlanError> {
    let Inputs {
        step,
        args,
        site,
        user,
        facts,
        ..
    } = *s.i;
    let opts = s.opts;
    if let Some(net) = &opts.network {
        if net != "host" {
            return Err(usage(format!("--dockopts --network={net}: containers must use the host network so nodes reach each other's sshd")));
        }
    }
    let mut env = container::identity_env(user);
    env.extend(s.job_env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut devices = s.devices.clone();
    devices.extend(opts.devices.iter().map(|d| container::parse_device(d)));
    let shm_text = opts
        .shm_size
        .clone()
        .or_else(|| args.shm_size.clone())
        .unwrap_or_else(|| site.defaults.shm_size.clone());
    let shm_size = Some(container::parse_size(&shm_text).ok_or_else(|| {
        usage(format!(
            "shm size '{shm_text}' is not a size like 512m or 16g"
        ))
    })?);
    let prefix = args
        .name
        .clone()
        .unwrap_or_else(|| format!("mnd-{}", user.name));
    let local = |id: Option<u64>| id.map_or_else(|| "local".into(), |v| v.to_string());
    let mut labels = container::base_labels(
        local(step.job_id),
        local(step.step_id),
        user,
        s.node,
        if s.coordinator {
            "coordinator"
        } else {
            "worker"
        },
    );
    labels.insert(spec::labels::LAUNCHER_PID.into(), facts.pid.to_string());
    for l in &opts.labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        if !k.starts_with(spec::labels::PREFIX) {
            labels.insert(k.to_string(), v.to_string());
        }
    }
    let privileged = args.privileged || opts.privileged;
    Ok(ContainerSpec {
        name: spec::sanitize_name(&format!("{prefix}-{}-{}", s.job_label, s.node)),
        image: s.image.clone(),
        pull: args.pull,
        user: format!("{}:{}", user.uid, user.gid),
        group_add: launcher_groups(user, &s.gpu_groups, &opts.group_add),
        labels,
        mounts: s.mounts.clone(),
        env,
        workdir: facts.cwd.clone(),
        network: "host".into(),
        ipc: opts.ipc.clone(),
        shm_size,
        ulimits: ulimits(args.memlock, facts.can_raise_memlock, &opts.ulimits),
        devices,
        gpus: s.gpus.clone(),
        cdi_devices: vec![],
        cap_add: opts.cap_add.clone(),
        cap_drop: container::cap_drop(privileged, &opts.cap_drop),
        security_opt: container::security_opt(&opts.security_opt),
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
        own_uts: false,
        storage_size: site.policy.writable_layer_size.clone(),
        kept_when_stopped: false,
    })
}

/// The user's groups, the GPUs' device groups, then `--dockopts --group-add` (names are the
/// host's: Docker would look them up in the image instead).
fn launcher_groups(user: &Identity, gpu_groups: &[u32], asked: &[String]) -> Vec<String> {
    let named = asked.iter().map(|g| {
        user.groups
            .iter()
            .find(|mine| mine.name == *g)
            .map_or_else(|| g.clone(), |mine| mine.gid.to_string())
    });
    container::group_ids(
        user.gid,
        user.groups
            .iter()
            .map(|g| g.gid.to_string())
            .chain(gpu_groups.iter().map(u32::to_string))
            .chain(named),
    )
}

/// Resource limits: memlock unlimited where asked (or, by default, where the node allows
/// it), then `--dockopts --ulimit`, which wins.
fn ulimits(
    memlock: Memlock,
    can_raise: bool,
    asked: &[(String, i64, i64)],
) -> Vec<(String, i64, i64)> {
    let raise = match memlock {
        Memlock::Unlimited => true,
        Memlock::Off => false,
        Memlock::Auto => can_raise,
    };
    let mut out = Vec::new();
    if raise {
        out.push(("memlock".to_string(), -1, -1));
    }
    for u in asked {
        out.retain(|(n, _, _)| n != &u.0);
        out.push(u.clone());
    }
    out
}

/// The direct-mode container this launcher runs in (`MND_DIRECT_CONTAINER`, set by the SPANK
/// plugin). Options that shape a container are refused there: the plugin made it.
fn inside(facts: &NodeFacts, args: &Args) -> Result<Option<Inside>, PlanError> {
    let Some(container) = facts.env.get(crate::spank::CONTAINER_VAR) else {
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
            .get(crate::spank::IMAGE_VAR)
            .cloned()
            .unwrap_or_default(),
    }))
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

#[cfg(test)]
mod tests;
