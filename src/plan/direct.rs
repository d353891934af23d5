//! The direct-mode recipe: the container of a `srun --mnd-image` step, decided by the root
//! helper from the plugin's request under the site policy, and the tasks' environment.

use super::container;
use super::error::{usage, PlanError};
use super::facts::NodeFacts;
use super::options::{CheckOptions, Checked};
use super::policy::{self, GpuAsk, MountOrigin};
use super::{fabric, gpus, mounts, net};
use crate::cli::GpuVendor;
use crate::config::SiteConfig;
use crate::identity::Identity;
use crate::spank::{job_owned, Request, CONTAINER_VAR, IMAGE_VAR, NAMED_STEP};
use crate::spec::{labels, ContainerSpec, Mount};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[cfg(test)]
mod tests;

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
    /// Folders of Slurm's PMIx folders that a named container may show whole.
    pub spools: &'a [PathBuf],
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
        ..
    } = *i;
    let mut opts = req.options.check()?;
    if let Some(image) = &opts.image {
        policy::check_image_name(image)?;
        policy::check_request(
            site,
            user,
            &policy::Request {
                image,
                privileged: false,
                dockopts: false,
            },
        )?;
    }
    let mut mounts = step_mounts(i, &opts)?;
    let mut labels = step_labels(req, user, opts.name.as_deref());
    if let Some(image) = &opts.image {
        labels.insert(labels::IMAGE.into(), image.clone());
    }
    labels.insert(labels::UNSHARE.into(), opts.unshare.join(","));
    let step_gpus = step_gpus(req.step_gpus.as_deref())?;
    refuse_unique_ids(&step_gpus, req.step_cuda_devices.as_deref())?;
    let want = if step_gpus.is_empty() {
        GpuAsk::None
    } else {
        GpuAsk::Ids(step_gpus)
    };
    let (gpus, mut devices, gpu_groups) = gpus::gpu_devices(GpuVendor::Auto, want, facts);
    let fabric = fabric::choose(&opts.fabric, "--mnd-fabric", site, &facts.fabric, &req.node)?;
    devices.extend(fabric.devices);
    mounts.extend(fabric.mounts);
    opts.fabric_env = fabric.env;
    let group_add = container::group_ids(
        req.gid,
        req.gids.iter().chain(&gpu_groups).map(u32::to_string),
    );
    let mut env = container::identity_env(user);
    env.push(format!("MND_JOB={}.{}", req.job, req.step));
    env.extend(
        gpus::gpu_env(&gpus, &devices)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    let spec = ContainerSpec {
        name: req.container_name(&user.name, opts.name.as_deref()),
        image: opts.image.clone().unwrap_or_default(),
        pull: crate::spec::Pull::Missing,
        user: format!("{}:{}", req.uid, req.gid),
        group_add,
        labels,
        mounts,
        env,
        workdir: req.cwd.clone(),
        // The node's network and /dev/shm, as the tasks would have without a container
        // (Slurm's PMIx server, outside, shares its segments with them there), unless
        // --mnd-unshare gives the container its own.
        network: if opts.unshare.contains(&"net") {
            "none"
        } else {
            "host"
        }
        .into(),
        ipc: Some(
            if opts.unshare.contains(&"ipc") {
                "shareable"
            } else {
                "host"
            }
            .into(),
        ),
        shm_size: None,
        ulimits: vec![],
        devices,
        gpus,
        cdi_devices: fabric.cdi,
        cap_add: vec![],
        cap_drop: container::cap_drop(false, &[]),
        security_opt: container::security_opt(&[]),
        tmpfs: opts
            .tmpfs
            .iter()
            .map(|(t, o)| (t.display().to_string(), o.clone()))
            .collect(),
        extra_hosts: vec![],
        privileged: false,
        host_namespaces: true,
        own_uts: opts.unshare.contains(&"uts"),
        storage_size: site.policy.writable_layer_size.clone(),
        kept_when_stopped: opts.name.is_some() && req.global_scope,
    };
    Ok((spec, opts))
}

/// The labels of a step's container: the job's, the step's (`named` for a `--mnd-name`
/// one, which outlives its step) and the name.
fn step_labels(req: &Request, user: &Identity, name: Option<&str>) -> BTreeMap<String, String> {
    let step = match name {
        Some(_) => NAMED_STEP.to_string(),
        None => req.step.to_string(),
    };
    let mut out = container::base_labels(req.job.to_string(), step, user, &req.node, "direct");
    out.insert(
        labels::NAME.to_string(),
        name.unwrap_or_default().to_string(),
    );
    let scope = match name.is_some() && req.global_scope {
        true => "global",
        false => "job",
    };
    out.insert(labels::SCOPE.to_string(), scope.to_string());
    out
}

/// Labels that say whose container it is: a container found by name is reused or removed
/// only when all of them match (a name alone proves nothing). A global one is the user's
/// across jobs: its job is only the one that made it.
pub fn owner_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let global = labels.get(labels::SCOPE).map(String::as_str) == Some("global");
    labels
        .iter()
        .filter(|(k, _)| {
            [
                labels::UID,
                labels::STEP,
                labels::ROLE,
                labels::NAME,
                labels::SCOPE,
            ]
            .contains(&k.as_str())
                || (k.as_str() == labels::JOB && !global)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether the step's root file system is the user's own copy of the image (the site's
/// `user_rootfs`): under `remap-root` for steps that appear as root (package managers need
/// the files to be theirs), under `always` for every writable step.
pub fn owned_rootfs(site: crate::config::UserRootfs, remap_root: bool, writable: bool) -> bool {
    use crate::config::UserRootfs;
    match site {
        UserRootfs::Never => false,
        UserRootfs::RemapRoot => remap_root,
        UserRootfs::Always => writable || remap_root,
    }
}

/// `--mnd-containers=rm:NAMES`: whether the user's named container `name` goes (`None`:
/// not asked for). One that runs serves a job's steps now and is left, saying so; `all`
/// asks for every one that does not run.
pub fn removal(asked: &[String], name: &str, running: bool) -> Option<Result<(), String>> {
    let all = asked.iter().any(|a| a == "all");
    match (asked.iter().any(|a| a == name), all, running) {
        (false, false, _) | (false, true, true) => None,
        (true, _, true) => Some(Err(format!(
            "{name} runs for a job now: it goes with that job's end (scope job), or remove it once the job ended"
        ))),
        _ => Some(Ok(())),
    }
}

/// A found global container made by another job than `job`, or no longer running: a step
/// goes on from its file system in a new container (this step's mounts, devices and
/// Slurm folders), never joins it as it is.
pub fn renew_global(found: &BTreeMap<String, String>, running: bool, job: u32) -> bool {
    found.get(labels::SCOPE).map(String::as_str) == Some("global")
        && (!running || found.get(labels::JOB) != Some(&job.to_string()))
}

/// A global container that runs for another job of the user's now is theirs to finish
/// first: renewing it would remove it under that job's tasks.
pub fn check_global_free(
    found: &BTreeMap<String, String>,
    running: bool,
    job: u32,
) -> Result<(), PlanError> {
    let global = found.get(labels::SCOPE).map(String::as_str) == Some("global");
    let other = found.get(labels::JOB).filter(|j| **j != job.to_string());
    match (global && running, other) {
        (true, Some(other)) => Err(PlanError::Refused {
            what: format!(
                "--mnd-name={}",
                found.get(labels::NAME).cloned().unwrap_or_default()
            ),
            why: format!("that container runs for your job {other} on this node now"),
            fix: "give this job another name, or run it once that job ended".into(),
        }),
        _ => Ok(()),
    }
}

/// Whether a found named container runs the image a step names: by the name it was made
/// with (its file system may be a copy or a later save of that image, with another id),
/// else, for a container without that label, by id.
pub fn same_image(
    found: &BTreeMap<String, String>,
    found_id: &str,
    asked: &str,
    asked_id: &str,
) -> bool {
    match found.get(labels::IMAGE).filter(|n| !n.is_empty()) {
        Some(name) => name == asked,
        None => found_id == asked_id,
    }
}

/// The namespaces of its own a found container was made with (`--mnd-unshare` of the step
/// that made it, in its label): a later step joins them whatever it says itself, as
/// pyxis's steps join a named container's.
pub fn made_with_namespaces(found: &BTreeMap<String, String>) -> Vec<String> {
    found
        .get(labels::UNSHARE)
        .map(|v| {
            v.split(',')
                .filter(|n| ["net", "ipc", "uts"].contains(n))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The step's mounts: the user's home, the site's mounts, `--mnd-mounts` and the working
/// directory under the mount rules (sources resolved as the user); Slurm's folders at
/// their own path; the mnd tools' folder read-only where nothing else shows it.
fn step_mounts(i: &Inputs, opts: &Checked) -> Result<Vec<Mount>, PlanError> {
    let Inputs {
        req,
        site,
        user,
        tools,
        spools,
        resolve,
        ..
    } = *i;
    let checked = |origin, m| mounts::checked_mount(site, user, origin, m, resolve);
    let mut mounts = Vec::new();
    if opts.mount_home {
        mounts.push(checked(MountOrigin::Home, Mount::same(&user.home, false))?);
    }
    for spec in &site.defaults.mounts {
        mounts.push(checked(MountOrigin::Site, mounts::parse_mount(spec)?)?);
    }
    for m in user_mounts(opts, &req.cwd) {
        mounts.push(checked(MountOrigin::User, m)?);
    }
    // Without the home, a working directory inside it is not shown either (as pyxis).
    let hidden = !opts.mount_home && req.cwd.starts_with(&user.home);
    if !hidden && !mounts::covered(&req.cwd, &mounts) {
        mounts.push(checked(MountOrigin::Workdir, Mount::same(&req.cwd, false))?);
    }
    for dir in &req.slurm_dirs {
        let dir = shown_slurm_dir(&policy::lexical_clean(dir), opts.name.is_some(), spools);
        policy::check_mount_target(&dir)?;
        if spools.contains(&dir) {
            for m in &mounts {
                policy::check_not_in_spool(&m.target, &dir)?;
            }
        }
        if !mounts::covered(&dir, &mounts) {
            mounts.push(Mount::same(&dir, false));
        }
    }
    if let Some(script) = &req.batch_script {
        policy::check_mount_target(script)?;
        mounts.push(Mount::same(script, true));
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
    mounts::distinct_targets(&mounts)?;
    let shown_spools: Vec<&Path> = mounts
        .iter()
        .map(|m| m.target.as_path())
        .filter(|t| spools.iter().any(|s| s == t))
        .collect();
    for (target, _) in &opts.tmpfs {
        policy::check_mount_target(target)?;
        for spool in &shown_spools {
            policy::check_not_in_spool(target, spool)?;
        }
        if mounts.iter().any(|m| &m.target == target) {
            return Err(usage(format!(
                "--mnd-mounts: {} is the target of two mounts",
                target.display()
            )));
        }
    }
    Ok(mounts)
}

/// What shows Slurm's PMIx folder `dir` in the container: the folder itself, or for a named
/// container (whose later steps' PMIx folders are made beside it after the container) the
/// spool it is in, when that may be shown whole. Without it, a later step's tasks would miss
/// their server's shared-memory store (Open MPI's rank 0 then crashed in `MPI_Init`).
fn shown_slurm_dir(dir: &Path, named: bool, spools: &[PathBuf]) -> PathBuf {
    spools
        .iter()
        .find(|spool| named && dir.parent() == Some(spool.as_path()))
        .cloned()
        .unwrap_or_else(|| dir.to_path_buf())
}

/// `--mnd-mounts` binds with each relative source made absolute from the step's working
/// directory (then resolved as the user, like any other).
pub fn user_mounts(opts: &Checked, cwd: &Path) -> Vec<Mount> {
    opts.mounts
        .iter()
        .map(|m| Mount {
            source: mounts::absolute(cwd, &m.source),
            ..m.clone()
        })
        .collect()
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
        .filter(|(k, _)| !job_owned(k) && !keep(k) && !net::variables().any(|n| n == *k))
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
/// off or the network is unknown); then the fabric profiles' variables (`fabric_env`) the
/// image does not set.
pub fn task_defaults(
    image_env: &[String],
    net: Option<&net::JobNet>,
    fabric_env: &[(String, String)],
) -> Vec<(String, String)> {
    let image_value = |name: &str| {
        image_env
            .iter()
            .filter_map(|e| e.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(k, v)| (k.to_string(), v.to_string()))
    };
    let from_image: Vec<(String, String)> = net::variables().filter_map(image_value).collect();
    let mut out = net::defaults(net, |n| from_image.iter().any(|(k, _)| k == n));
    out.extend(from_image);
    let image_sets = |k: &str| {
        image_env
            .iter()
            .any(|e| e.split_once('=').is_some_and(|(n, _)| n == k))
    };
    out.extend(
        fabric_env
            .iter()
            .filter(|(k, _)| !image_sets(k) && !out.iter().any(|(o, _)| o == k))
            .cloned()
            .collect::<Vec<_>>(),
    );
    out
}

/// Root's own files for one container, in a folder only root reaches: the merged accounts
/// and the init program. The helper writes them before the container is created; Docker
/// mounts them read-only, so root never opens a path inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The container's `/etc/passwd`: the image's accounts with the user's merged in.
    pub passwd: PathBuf,
    /// The container's `/etc/group`.
    pub group: PathBuf,
    /// The container's init: a static program that only waits.
    pub init: PathBuf,
}

/// Pass 2 of the direct-mode recipe, once the image is known: the image's `VOLUME`s that
/// no mount covers become tmpfs (Docker would make an anonymous volume in root's storage,
/// which no limit of the job's holds); an image known by its id alone (loaded from a
/// share) is used by id; root's declared files are mounted read-only; `/.mnd` is a tmpfs
/// of the user's (mnd-srun run inside writes its sshd and ssh files there).
pub fn for_image(
    spec: &ContainerSpec,
    volumes: &[String],
    by_id: Option<&str>,
    declared: &Declared,
    owner: (u32, u32),
) -> ContainerSpec {
    let mut spec = spec.clone();
    // A VOLUME at or inside a folder shown from the host stays the host's: a tmpfs inside
    // it would need its mount point made there, as root (in a user's home, or Slurm's spool).
    for v in volumes {
        if !spec
            .mounts
            .iter()
            .any(|m| Path::new(v).starts_with(&m.target))
        {
            spec.tmpfs.insert(v.clone(), "rw,nosuid,nodev".to_string());
        }
    }
    if let Some(id) = by_id {
        spec.image = id.to_string();
    }
    let own = |source: &Path, target: &str| Mount {
        source: source.to_path_buf(),
        target: PathBuf::from(target),
        read_only: true,
        propagation: None,
    };
    spec.mounts.push(own(&declared.passwd, "/etc/passwd"));
    spec.mounts.push(own(&declared.group, "/etc/group"));
    spec.mounts.push(own(&declared.init, policy::INIT_TARGET));
    spec.tmpfs.insert(
        policy::PRIVATE_DIR.to_string(),
        format!(
            "rw,exec,nosuid,nodev,size=64m,mode=0700,uid={},gid={}",
            owner.0, owner.1
        ),
    );
    spec
}

/// What must be mounted where once the container runs (for `policy::check_landed`): each
/// bind and tmpfs target of the container, with how many mounts it was given.
pub fn declared_targets(spec: &ContainerSpec) -> Vec<(PathBuf, usize)> {
    let mut out: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let targets = spec
        .mounts
        .iter()
        .map(|m| m.target.clone())
        .chain(spec.tmpfs.keys().map(PathBuf::from));
    for t in targets {
        *out.entry(t).or_default() += 1;
    }
    out.into_iter().collect()
}
