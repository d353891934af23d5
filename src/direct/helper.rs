//! The root side of direct mode: `mnd direct up` and `mnd direct down`, which the SPANK
//! plugin runs as root. `up` takes a [`Request`] on stdin, resolves the user's paths *as the
//! user*, decides the container with [`super::plan`] under the site config the admin named,
//! starts it (or finds the job's `--mnd-name` container) and prints a [`Reply`] on stdout.
//! `down` removes a step's containers. Messages for the user go to stderr.

use super::{plan, task_env, Reply, Request, NAMED_STEP};
use crate::config::{ConfigError, SiteConfig};
use crate::docker::{DockerError, Engine, PullReport};
use crate::identity::{Identity, IdentityError};
use crate::launch::container::{account_files, read_image_accounts};
use crate::plan::{ContainerSpec, PlanError};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

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
    /// The container started but is not running.
    #[error("container {0} stopped right after it started; see `docker logs {0}` on this node")]
    NotRunning(String),
}

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
    /// The mnd tools' folder, when the container shows it.
    pub tools: Option<PathBuf>,
    /// The step's GPUs on this node (Slurm's indices).
    pub gpus: Vec<u32>,
}

/// `mnd direct up`, before any thread exists: looks up the user, resolves their paths as
/// them (in a child process that drops to their ids), and plans the container.
pub fn prepare(req: &Request, site: &SiteConfig) -> Result<Prepared, HelperError> {
    let user = Identity::of_uid(req.uid)?;
    let mut wanted: Vec<PathBuf> = vec![user.home.clone(), req.cwd.clone()];
    if let Ok(opts) = req.options.check() {
        wanted.extend(opts.mounts.iter().map(|m| m.source.clone()));
    }
    wanted.extend(site.policy.allowed_mount_prefixes.iter().map(PathBuf::from));
    let site_sources: Vec<PathBuf> = site
        .defaults
        .mounts
        .iter()
        .filter_map(|m| crate::plan::parse_mount(m).ok())
        .map(|m| m.source)
        .collect();
    let mut resolved = resolve_as(req.uid, req.gid, &req.gids, &wanted)?;
    // The admin's own mounts are resolved as root: the user need not be able to reach them.
    for p in site_sources {
        let r = crate::node::real_path(&p).map_err(|e| e.to_string());
        resolved.insert(p, r);
    }
    let resolve = |p: &Path| -> std::io::Result<PathBuf> {
        match resolved.get(p) {
            Some(Ok(r)) => Ok(r.clone()),
            Some(Err(e)) => Err(std::io::Error::other(e.clone())),
            None => Err(std::io::Error::other("not looked up")),
        }
    };
    let tools = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let facts = crate::node::gather().map_err(|e| HelperError::Resolve {
        uid: req.uid,
        reason: format!("this node's facts: {e}"),
    })?;
    let (spec, checked) = plan(&super::Inputs {
        req,
        site,
        user: &user,
        facts: &facts,
        tools: tools.as_deref(),
        resolve: &resolve,
    })?;
    let gpus = super::step_gpus(req.step_gpus.as_deref())?;
    let tools = tools.filter(|t| spec.mounts.iter().any(|m| &m.target == t));
    Ok(Prepared {
        spec,
        tools,
        gpus,
        user,
        envlist: checked.envlist,
        workdir: checked.workdir,
        reuse: checked.name.is_some(),
    })
}

/// Resolves paths (no `..`, no symbolic links) in a child process running as the user, so a
/// path the user could not reach is not reached for them.
fn resolve_as(
    uid: u32,
    gid: u32,
    gids: &[u32],
    paths: &[PathBuf],
) -> Result<BTreeMap<PathBuf, Result<PathBuf, String>>, HelperError> {
    use nix::unistd::{fork, setgid, setgroups, setuid, ForkResult, Gid, Uid};
    let fail = |reason: String| HelperError::Resolve { uid, reason };
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| fail(e.to_string()))?;
    // SAFETY: the helper has started no thread yet (tokio starts later), so the child may
    // run ordinary code; it only drops its ids, resolves and writes, then `_exit`s.
    match unsafe { fork() }.map_err(|e| fail(e.to_string()))? {
        ForkResult::Child => {
            drop(read_end);
            let groups: Vec<Gid> = gids.iter().map(|g| Gid::from_raw(*g)).collect();
            let dropped = setgroups(&groups)
                .and_then(|()| setgid(Gid::from_raw(gid)))
                .and_then(|()| setuid(Uid::from_raw(uid)));
            let answer: Vec<(PathBuf, Result<PathBuf, String>)> = match dropped {
                Ok(()) => paths
                    .iter()
                    .map(|p| {
                        (
                            p.clone(),
                            crate::node::real_path(p).map_err(|e| e.to_string()),
                        )
                    })
                    .collect(),
                Err(e) => paths
                    .iter()
                    .map(|p| (p.clone(), Err(format!("cannot become uid {uid}: {e}"))))
                    .collect(),
            };
            let text = serde_json::to_vec(&answer).unwrap_or_default();
            let mut file = std::fs::File::from(write_end);
            let code = i32::from(std::io::Write::write_all(&mut file, &text).is_err());
            // SAFETY: leaves the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut text = Vec::new();
            let read = std::fs::File::from(read_end).read_to_end(&mut text);
            let status = nix::sys::wait::waitpid(child, None);
            read.map_err(|e| fail(e.to_string()))?;
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => {}
                other => return Err(fail(format!("the lookup process ended with {other:?}"))),
            }
            let answer: Vec<(PathBuf, Result<PathBuf, String>)> =
                serde_json::from_slice(&text).map_err(|e| fail(e.to_string()))?;
            Ok(answer.into_iter().collect())
        }
    }
}

/// `mnd direct up` once prepared: the job's running `--mnd-name` container, or a new one
/// (a leftover of the same name, from a requeued job, is removed first): image pulled when
/// missing, created, accounts written, started. A container that fails half-way is removed.
pub async fn up(p: &Prepared) -> Result<Reply, HelperError> {
    let engine = Engine::connect().await?;
    let name = &p.spec.name;
    if let Some((pid, running)) = engine.running_pid(name).await? {
        if p.reuse {
            let image = engine
                .ensure_image(
                    &p.spec.image,
                    crate::cli::Pull::Never,
                    name,
                    PULL_STALL,
                    &silent(),
                )
                .await?;
            if image.id != running {
                return Err(HelperError::OtherImage(name.clone(), p.spec.image.clone()));
            }
            return Ok(reply(p, pid, &image.env, &image.id));
        }
    }
    engine.remove(name).await?;
    let started = start(&engine, p).await;
    if started.is_err() {
        let _ = engine.remove(name).await;
    }
    started
}

async fn start(engine: &Engine, p: &Prepared) -> Result<Reply, HelperError> {
    let name = &p.spec.name;
    let node = p.spec.labels.get("mnd.node").cloned().unwrap_or_default();
    let image = engine
        .ensure_image(&p.spec.image, p.spec.pull, &node, PULL_STALL, &silent())
        .await?;
    engine
        .create(&p.spec, vec!["sleep".into(), "infinity".into()])
        .await?;
    let accounts = read_image_accounts(engine, name).await?;
    engine
        .upload(name, &account_files(&p.user, &accounts))
        .await?;
    // mnd-srun run inside the container (ssh mode through the plugin) writes its sshd and
    // ssh files there, as the user.
    engine
        .own_dir(name, crate::ssh::CONTAINER_DIR, p.user.uid, p.user.gid)
        .await?;
    engine.start(name).await?;
    match engine.running_pid(name).await? {
        Some((pid, _)) => Ok(reply(p, pid, &image.env, &image.id)),
        None => Err(HelperError::NotRunning(name.clone())),
    }
}

/// Removes the container `up` was making (it was stopped half-way).
pub async fn remove(p: &Prepared) {
    if let Ok(engine) = Engine::connect().await {
        let _ = engine.remove(&p.spec.name).await;
    }
}

fn reply(p: &Prepared, pid: i32, image_env: &[String], image_id: &str) -> Reply {
    let (set_env, unset_env) = task_env(
        image_env,
        &p.envlist,
        &p.spec.name,
        image_id,
        p.tools.as_deref(),
    );
    Reply {
        container: p.spec.name.clone(),
        pid,
        set_env,
        unset_env,
        workdir: p.workdir.clone(),
        gpus: p.gpus.clone(),
    }
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
            format!("mnd.job={job}"),
            format!("mnd.step={step}"),
            "mnd.role=direct".into(),
        ])
        .await?;
    for c in &found {
        engine.remove(&c.id).await?;
    }
    Ok(found.len())
}
