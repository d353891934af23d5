//! The root side of direct mode: `mnd direct up` and `mnd direct down`, which the SPANK
//! plugin runs as root. `up` takes a [`Request`] on stdin, resolves the user's paths *as the
//! user*, decides the container with [`crate::plan::direct::plan`] under the site config the admin named,
//! starts it (or finds the job's `--mnd-name` container) and prints a [`Reply`] on stdout.
//! `down` removes a step's containers. Messages for the user go to stderr.

use crate::config::{ConfigError, SiteConfig};
use crate::directshare::{Offering, StepShare};
use crate::docker::{DockerError, Engine, ImageFacts, PullReport};
use crate::identity::{Identity, IdentityError};
use crate::pathid::{stat_no_links, FileId};
pub use crate::phases::Phases;
use crate::plan::direct::{
    check_global_free, declared_targets, for_image, made_with_namespaces, plan, renew_global,
    same_image, step_gpus, task_defaults, task_env, Inputs,
};
use crate::plan::fabric::{self, FabricFacts};
use crate::plan::options::NameMode;
use crate::plan::policy::{check_image_size, check_named_count, ImageBound};
use crate::plan::JobNet;
use crate::plan::PlanError;
use crate::spank::{Reply, Request, NAMED_STEP};
use crate::spec::{labels, ContainerSpec};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

mod containers;
mod gather;
mod landed;
mod rootfiles;

pub use containers::serve as serve_containers;
pub use rootfiles::sweep as sweep_root_files;

/// Why the helper did not start a container.
#[derive(Debug, Error)]
pub enum HelperError {
    /// Run by someone other than root.
    #[error("mnd direct is the root side of the SPANK plugin; slurmstepd runs it as root")]
    NotRoot,
    /// The request on stdin is not one the plugin writes.
    #[error("bad request from the plugin: {0}")]
    Request(String),
    /// The site config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The job's user.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A policy refusal or a bad option.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Docker.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// A node lacks the image and the image share could not give it.
    #[error("{missing}; and the image share {} could not give it from {first}: {reason}. Fix: push the image to a registry the nodes reach, or make sure {first} (the step's first node) has it", dir.display())]
    NotShared {
        /// Why this node has none (it names the image).
        missing: String,
        /// The step's first node.
        first: String,
        /// The share.
        dir: PathBuf,
        /// Why the share failed.
        reason: String,
    },
    /// Resolving the user's paths.
    #[error("resolving the job's paths as uid {uid}: {reason}")]
    Resolve {
        /// The user.
        uid: u32,
        /// What failed.
        reason: String,
    },
    /// A `--mnd-name` container of the job runs another image.
    #[error("the job's container {0} runs another image than {1}: use another --mnd-name, or the same image")]
    OtherImage(String, String),
    /// `--mnd-name=NAME:create` found the container.
    #[error("a container named {0} of this job already runs on {1} (--mnd-name={0}:create makes a new one only). Fix: pick another name, or drop :create to use it")]
    NameTaken(String, String),
    /// `--mnd-name` without an image, or with `:exec`, found no running container.
    #[error("no running container named {0} of this job on {1}. Fix: make it first with --mnd-image=IMAGE --mnd-name={0} (:exec and a name without an image only use one that runs)")]
    NotNamed(String, String),
    /// Root's own files for the container (accounts, init) could not be made.
    #[error("preparing the container's accounts: {0}")]
    Placing(String),
    /// The container started but is not running.
    #[error("container {0} stopped right after it started; see `docker logs {0}` on this node")]
    NotRunning(String),
    /// A container of the step's name belongs to someone or something else.
    #[error("a container named {name} exists but is not this step's ({label} does not match): it is neither used nor removed. Fix: ask your admin to remove it (docker rm -f {name})")]
    NotOurs {
        /// Its name.
        name: String,
        /// The first owner label that differs.
        label: String,
    },
    /// A mount source changed between its check and the mount.
    #[error("the mount at {} is not the folder that was checked: its source was replaced (by a link?) while the step started; the container was removed. Fix: do not change mounted folders while a step starts", .0.display())]
    Swapped(PathBuf),
}

/// Root's per-image pull locks.
const PULL_LOCKS: &str = "/run/mnd-srun/pull-locks";

/// Largest request accepted on stdin.
const MAX_REQUEST: u64 = 64 * 1024;

/// How long a pull may make no progress.
const PULL_STALL: Duration = Duration::from_secs(120);

/// Reads and checks the request (nothing else), as root only.
pub fn read_request(input: impl Read) -> Result<Request, HelperError> {
    use nix::unistd::{geteuid, getuid};
    if !getuid().is_root() || !geteuid().is_root() {
        return Err(HelperError::NotRoot);
    }
    let mut text = String::new();
    input
        .take(MAX_REQUEST)
        .read_to_string(&mut text)
        .map_err(|e| HelperError::Request(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| HelperError::Request(e.to_string()))
}

/// The site config: the file plugstack.conf names, else the default one (or the built-in
/// defaults when there is none). Never from the user's environment.
pub fn site_config(named: Option<&Path>) -> Result<SiteConfig, ConfigError> {
    match named {
        Some(path) => SiteConfig::load_named(path),
        None => SiteConfig::load(None),
    }
}

/// The container decided for a request, and what the reply needs besides.
#[derive(Clone)]
pub struct Prepared {
    /// The container.
    pub spec: ContainerSpec,
    /// The job's user.
    pub user: Identity,
    /// `--mnd-envlist`.
    pub envlist: Vec<String>,
    /// `--mnd-workdir`.
    pub workdir: Option<PathBuf>,
    /// A `--mnd-name` container: a running one of the job is used again.
    pub reuse: bool,
    /// What `--mnd-name`'s mode asks of the named container.
    pub name_mode: NameMode,
    /// An image was given (without one, only a running named container can serve).
    pub has_image: bool,
    /// `--mnd-readonly`.
    pub read_only: bool,
    /// `--mnd-remap-root`.
    pub remap_root: bool,
    /// `--mnd-unshare`: the container's namespaces the tasks join.
    pub namespaces: Vec<String>,
    /// The mnd tools' folder, when the container shows it.
    pub tools: Option<PathBuf>,
    /// The step's GPUs on this node (Slurm's indices).
    pub gpus: Vec<u32>,
    /// Each mount's target and the identity its source had when it was checked.
    pub mounted: Vec<(PathBuf, FileId)>,
    /// The network the step's nodes reach each other on (`None`: no defaults).
    pub net: Option<JobNet>,
    /// Labels a container of this name must carry to be reused or removed.
    pub owner: BTreeMap<String, String>,
    /// A step on more than one node: the user's image share, for an image only the first
    /// node has.
    pub share: Option<StepShare>,
    /// The fabric profiles' variables (task defaults).
    pub fabric_env: Vec<(String, String)>,
    /// The node's fabric and CDI facts, for the engine's pass (`fabric::for_engine`).
    pub fabric: FabricFacts,
    /// The site's bound on the image's size, checked once the image is known.
    pub image_bound: ImageBound,
    /// The container's root is the user's own copy of the image (`policy.user_rootfs`).
    pub owned_rootfs: bool,
    /// `policy.max_named_containers`, for a new global named container.
    pub max_named: Option<u32>,
}

/// `--mnd-containers`, when the request asks it (then no container is made for the step).
pub fn containers_asked(req: &Request) -> Option<crate::plan::options::ContainersOp> {
    use crate::plan::options::CheckOptions;
    req.options.check().ok().and_then(|c| c.containers)
}

/// `mnd direct up`, before any thread exists: gathers the facts (the user, their paths
/// resolved as them in a child process that drops to their ids, Slurm's folders, the
/// admin's), then decides the container with the planner, once.
pub fn prepare(req: &Request, site: &SiteConfig) -> Result<Prepared, HelperError> {
    let facts = gather::gather(req, site)?;
    let resolve = |p: &Path| facts.resolve(p);
    let (req, site, user) = (&facts.req, &facts.site, &facts.user);
    let (mut spec, checked) = plan(&Inputs {
        req,
        site,
        user,
        facts: &facts.node,
        tools: facts.tools.as_deref(),
        spools: &facts.spools,
        resolve: &resolve,
    })?;
    for look in facts.users_source_looks() {
        crate::plan::policy::check_source_kind(&look.real, look.mode)?;
        for m in spec.mounts.iter_mut().filter(|m| m.source == look.real) {
            m.read_only |= crate::plan::policy::read_only_for_the_user(look.writable);
        }
    }
    let mounted = spec
        .mounts
        .iter()
        .map(|m| {
            let id = match facts.ids.get(&m.source) {
                Some(id) => Ok(*id),
                None => stat_no_links(&m.source).map(|(id, _)| id),
            };
            id.map(|id| (m.target.clone(), id))
                .map_err(|e| HelperError::Resolve {
                    uid: req.uid,
                    reason: format!("{}: {e}", m.source.display()),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tools = facts
        .tools
        .clone()
        .filter(|t| spec.mounts.iter().any(|m| &m.target == t));
    let net = site
        .defaults
        .net_defaults
        .then(|| step_network(req))
        .flatten();
    let share = site
        .defaults
        .image_share
        .then(|| StepShare::of(req, &user.home))
        .flatten();
    let owner = crate::plan::direct::owner_labels(&spec.labels);
    Ok(Prepared {
        gpus: step_gpus(req.step_gpus.as_deref())?,
        spec,
        tools,
        user: facts.user.clone(),
        envlist: checked.envlist,
        fabric_env: checked.fabric_env,
        fabric: facts.node.fabric.clone(),
        image_bound: ImageBound::of(&facts.site),
        workdir: checked.workdir,
        reuse: checked.name.is_some(),
        name_mode: checked.name_mode,
        has_image: checked.image.is_some(),
        read_only: !checked.writable,
        remap_root: checked.remap_root,
        max_named: facts.site.policy.max_named_containers,
        owned_rootfs: crate::plan::direct::owned_rootfs(
            facts.site.policy.user_rootfs,
            checked.remap_root,
            checked.writable,
        ),
        namespaces: checked.unshare.iter().map(|n| n.to_string()).collect(),
        mounted,
        net,
        owner,
        share,
    })
}

/// The interface the step's nodes reach each other on, from this node.
fn step_network(req: &Request) -> Option<JobNet> {
    let nodes = req
        .step_nodes
        .as_deref()
        .and_then(|l| crate::hostlist::expand(l).ok())
        .unwrap_or_default();
    crate::netif::find(&nodes, &req.node)
}

/// `mnd direct up` once prepared: the job's running `--mnd-name` container, or a new one
/// (a leftover of the same name and owner, from a requeued job, is removed first): image
/// pulled when missing, root's files declared, created, started, its mounts checked
/// where they landed. A container that fails half-way is removed.
pub async fn up(p: &Prepared, phases: &mut Phases) -> Result<Reply, HelperError> {
    let engine = Engine::connect().await?;
    let node = p.spec.labels.get(labels::NODE).cloned().unwrap_or_default();
    // The name and the image are looked up at once (each a round trip to dockerd); the
    // image is pulled here when missing, while nothing else waits.
    let wanted = async {
        match p.has_image {
            true => Some(image_here(&engine, p, &node).await),
            false => None,
        }
    };
    // Root's folders of this node's earlier containers that are gone go meanwhile (a
    // step's end kills its init without waiting for Docker, and leaves its folder).
    let (found, image, _) = tokio::join!(
        engine.found(&p.spec.name),
        wanted,
        rootfiles::sweep_containers(&engine)
    );
    let (found, image) = (found?, image.transpose()?);
    let (image, offering) = match image {
        Some((image, offering)) => (Some(image), offering),
        None => (None, None),
    };
    phases.mark("look");
    let reply = up_with(&engine, p, phases, found, image, node).await;
    // The first node's word and archive for the others, made while the container started.
    if let (Some(offering), Some(share)) = (offering, &p.share) {
        offering.finish(share);
        phases.mark("share");
    }
    reply
}

/// `up` once the named container and the image were looked up.
async fn up_with(
    engine: &Engine,
    p: &Prepared,
    phases: &mut Phases,
    found: Option<crate::docker::Found>,
    image: Option<ImageFacts>,
    node: String,
) -> Result<Reply, HelperError> {
    let name = &p.spec.name;
    if let Some(found) = &found {
        if let Some((key, value)) = p
            .owner
            .iter()
            .find(|(k, v)| found.labels.get(*k) != Some(*v))
        {
            return Err(HelperError::NotOurs {
                name: name.clone(),
                label: format!("{key}={value}"),
            });
        }
    }
    let named = || p.spec.labels.get(labels::NAME).cloned().unwrap_or_default();
    if p.reuse && p.name_mode == NameMode::Create && found.is_some() {
        return Err(HelperError::NameTaken(named(), node.clone()));
    }
    if let Some(image) = &image {
        let fits = check_image_size(&p.image_bound, &p.spec.image, image.size);
        engine.drop_if_refused(image, fits).await?;
    }
    let job = p.spec.labels.get(labels::JOB).and_then(|j| j.parse().ok());
    if let Some(found) = &found {
        check_global_free(&found.labels, found.pid.is_some(), job.unwrap_or(0))?;
    }
    match (found, image) {
        (Some(found), _)
            if p.reuse && renew_global(&found.labels, found.pid.is_some(), job.unwrap_or(0)) =>
        {
            renew(engine, p, phases, &found).await
        }
        (Some(found), image) if p.reuse && found.pid.is_some() => {
            let pid = found.pid.unwrap_or_default();
            let image = match image {
                Some(image) => image,
                None => {
                    engine
                        .ensure_image(
                            &found.image,
                            crate::spec::Pull::Never,
                            name,
                            PULL_STALL,
                            &silent(),
                        )
                        .await?
                }
            };
            let asked = match p.has_image {
                true => p.spec.image.as_str(),
                false => found.labels.get(labels::IMAGE).map_or("", String::as_str),
            };
            if !same_image(&found.labels, &found.image, asked, &image.id) {
                return Err(HelperError::OtherImage(name.clone(), p.spec.image.clone()));
            }
            let namespaces = made_with_namespaces(&found.labels);
            reply(p, &found.id, pid, &image, namespaces)
        }
        (_, None) => Err(HelperError::NotNamed(named(), node)),
        _ if p.reuse && p.name_mode == NameMode::Exec => Err(HelperError::NotNamed(named(), node)),
        (Some(found), Some(image)) => {
            engine.remove(&found.id).await?;
            start_new(engine, p, &image, phases).await
        }
        (None, Some(image)) => {
            if p.spec.kept_when_stopped {
                let kept = engine
                    .list(&[
                        format!("{}={}", labels::UID, p.user.uid),
                        format!("{}=global", labels::SCOPE),
                        format!("{}=direct", labels::ROLE),
                    ])
                    .await?;
                check_named_count(kept.len(), p.max_named, &node)?;
            }
            start_new(engine, p, &image, phases).await
        }
    }
}

/// A global `--mnd-name` container of an earlier job (stopped by its Epilog) goes on in a
/// new one made for this step: its file system saved as an unnamed image (its base's
/// entrypoint, user and variables), the old container removed, the new one made from that
/// image by id with this step's mounts, devices and Slurm folders. Its previous saved
/// image goes once nothing uses it. Whatever image the step names, the container's own
/// files are kept (as pyxis does with an existing named container).
async fn renew(
    engine: &Engine,
    p: &Prepared,
    phases: &mut Phases,
    found: &crate::docker::Found,
) -> Result<Reply, HelperError> {
    let saved = engine.commit_as(&found.id, None, &found.image).await?;
    phases.mark("renew-commit");
    let image = engine.image_by_id(&saved).await?;
    engine.remove(&found.id).await?;
    rootfiles::remove(&p.spec.name);
    let mut spec = p.spec.clone();
    // The image it first came from, whatever this step names (its files are kept).
    if let Some(named) = found.labels.get(labels::IMAGE).filter(|n| !n.is_empty()) {
        spec.labels.insert(labels::IMAGE.into(), named.clone());
    }
    let renewed = Prepared { spec, ..p.clone() };
    let reply = start_new(engine, &renewed, &image, phases).await?;
    // The image the old container ran, when it was an earlier save of this container's
    // (no name): nothing needs it now.
    if found.image != saved && unnamed(engine, &found.image).await {
        let _ = engine.remove_unused_image(&found.image).await;
    }
    Ok(reply)
}

/// Docker knows image `id` by no name (a save of a global container's).
pub(super) async fn unnamed(engine: &Engine, id: &str) -> bool {
    matches!(engine.image_by_id(id).await, Ok(f) if f.names.is_empty())
}

/// The image for the step on this node: here already or pulled, else (a node of a
/// multi-node step) vouched for by the step's first node and loaded from the user's image
/// share. The first node vouches for an image that came from no registry.
async fn image_here(
    engine: &Engine,
    p: &Prepared,
    node: &str,
) -> Result<(ImageFacts, Option<Offering>), HelperError> {
    let here = image_once(engine, &p.spec, node).await;
    let Some(share) = &p.share else {
        return here.map(|facts| (facts, None));
    };
    match here {
        Ok(facts) if share.is_first => {
            let offering = Offering::start(share, &p.spec.image, &facts);
            Ok((facts, offering))
        }
        Err(HelperError::Docker(missing)) if !share.is_first => {
            let fetched = crate::directshare::fetch(share, engine, &p.spec.image).await;
            let facts = fetched.map_err(|e| HelperError::NotShared {
                missing: missing.to_string(),
                first: share.first_node.clone(),
                dir: share.dir.clone(),
                reason: e.to_string(),
            })?;
            Ok((facts, None))
        }
        other => other.map(|facts| (facts, None)),
    }
}

/// The image on this node, checked or pulled under a per-image lock of root's: steps and
/// jobs that start together pull it once (Docker alone downloads twice when two pulls
/// overlap); the others find it there when their turn comes.
async fn image_once(
    engine: &Engine,
    spec: &ContainerSpec,
    node: &str,
) -> Result<ImageFacts, HelperError> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(spec.image.as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let path = Path::new(PULL_LOCKS).join(format!("{name}.lock"));
    let lock = tokio::task::spawn_blocking(move || {
        crate::ssh::create_private_dir(Path::new(PULL_LOCKS))?;
        crate::fsx::lock(&path)
    })
    .await;
    let _held = match lock {
        Ok(Ok(held)) => Some(held),
        other => {
            log::warn!(
                "no pull lock for {} ({other:?}); pulling without it",
                spec.image
            );
            None
        }
    };
    let facts = engine
        .ensure_image(&spec.image, spec.pull, node, PULL_STALL, &silent())
        .await?;
    let found =
        crate::plan::policy::check_image_found(&spec.image, &facts.names, facts.copy_labelled);
    engine.drop_if_refused(&facts, found).await?;
    Ok(facts)
}

async fn start_new(
    engine: &Engine,
    p: &Prepared,
    image: &ImageFacts,
    phases: &mut Phases,
) -> Result<Reply, HelperError> {
    let started = start(engine, p, image, phases).await;
    if started.is_err() {
        let _ = engine.remove(&p.spec.name).await;
        rootfiles::remove(&p.spec.name);
    }
    started
}

async fn start(
    engine: &Engine,
    p: &Prepared,
    image: &ImageFacts,
    phases: &mut Phases,
) -> Result<Reply, HelperError> {
    let name = &p.spec.name;
    record_pull(p, image);
    let owned;
    let image = match p.owned_rootfs {
        true => {
            owned = crate::ownedroot::ensure(engine, image, p.user.uid, p.user.gid).await?;
            phases.mark("own-copy");
            &owned
        }
        false => image,
    };
    let declared = rootfiles::declare(engine, &p.spec, &p.user, image).await?;
    phases.mark("files");
    let by_id = image.by_id_only.then_some(image.id.as_str());
    let owner = (p.user.uid, p.user.gid);
    let mut spec = for_image(&p.spec, &image.volumes, by_id, &declared, owner);
    let cdi_dirs = match fabric::engine_cdi_matters(&spec, &p.fabric) {
        true => engine.cdi_dirs().await?,
        false => vec![],
    };
    fabric::for_engine(&mut spec, &cdi_dirs, &p.fabric)?;
    engine
        .create(&spec, vec![crate::plan::policy::INIT_TARGET.into()])
        .await?;
    phases.mark("create");
    engine.start(name).await?;
    phases.mark("start");
    let found = engine.found(name).await?;
    let Some((id, pid)) = found.and_then(|f| Some((f.id, f.pid?))) else {
        return Err(HelperError::NotRunning(name.clone()));
    };
    landed::check(pid, &id, &declared_targets(&spec), &p.mounted)?;
    phases.mark("check-mounts");
    reply(p, &id, pid, image, p.namespaces.clone())
}

/// Root's pulls are the site's storage: recorded, so the Epilog removes them with the last
/// job that used them (a failure to record costs disk space, never the step).
fn record_pull(p: &Prepared, image: &ImageFacts) {
    let Some(job) = p.spec.labels.get(labels::JOB).and_then(|j| j.parse().ok()) else {
        return;
    };
    let recorded = crate::pulled::Pulled::open(Path::new(crate::pulled::DIR)).and_then(|r| {
        match image.by_id_only {
            // Loaded from the share for this job: removed with its last job too.
            true => r.used(&image.id, job, image.pulled),
            false => r.used(&p.spec.image, job, image.pulled),
        }
    });
    if let Err(e) = recorded {
        log::warn!("recording the pull of {}: {e}", p.spec.image);
    }
}

/// Removes the container `up` was making (it was stopped half-way).
pub async fn remove(p: &Prepared) {
    if let Ok(engine) = Engine::connect().await {
        let _ = engine.remove(&p.spec.name).await;
    }
}

/// The reply for the tasks: the image's environment, and where they start: `--mnd-workdir`,
/// else the image's `WORKDIR` (as pyxis), else the step's working directory.
/// `namespaces`: the container's own, which the tasks join.
fn reply(
    p: &Prepared,
    id: &str,
    pid: i32,
    image: &ImageFacts,
    namespaces: Vec<String>,
) -> Result<Reply, HelperError> {
    let (image_env, image_id) = (&image.env, &image.id);
    let (set_env, unset_env) = task_env(
        image_env,
        &p.envlist,
        &p.spec.name,
        image_id,
        p.tools.as_deref(),
    );
    let pid_start = crate::node::process_start_time(pid)
        .ok_or_else(|| HelperError::NotRunning(p.spec.name.clone()))?;
    Ok(Reply {
        container: p.spec.name.clone(),
        pid,
        set_env,
        unset_env,
        workdir: p
            .workdir
            .clone()
            .or_else(|| image.workdir.as_ref().map(PathBuf::from)),
        gpus: p.gpus.clone(),
        defaults: task_defaults(image_env, p.net.as_ref(), &p.fabric_env),
        container_id: id.to_string(),
        pid_start,
        namespaces,
        read_only: p.read_only,
        remap_root: p.remap_root,
        no_exec: p.name_mode == NameMode::NoExec,
        said: vec![],
        phases: vec![],
    })
}

/// A pull progress channel nobody reads (the helper prints its own lines).
fn silent() -> tokio::sync::watch::Sender<PullReport> {
    tokio::sync::watch::channel(PullReport::default()).0
}

/// `mnd direct down`: removes this node's direct-mode containers of a step (`--mnd-name`
/// ones live until the job ends: the Epilog removes them).
pub async fn down(job: u32, step: &str) -> Result<usize, HelperError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(HelperError::NotRoot);
    }
    if step == NAMED_STEP {
        return Ok(0);
    }
    let engine = Engine::connect().await?;
    let found = engine
        .list(&[
            format!("{}={job}", labels::JOB),
            format!("{}={step}", labels::STEP),
            format!("{}=direct", labels::ROLE),
        ])
        .await?;
    for c in &found {
        engine.remove(&c.id).await?;
        rootfiles::remove(&c.name);
    }
    rootfiles::sweep(&engine).await;
    Ok(found.len())
}
