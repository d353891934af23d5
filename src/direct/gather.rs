//! Gather: every fact the direct-mode recipe is decided from, collected before any thread
//! exists (one lookup forks): the user, their paths resolved *as them*, the admin's mount
//! sources and prefixes resolved as root, Slurm's folders and the batch script as found
//! with no link on the way, the node's facts. Nothing here decides; the rules these facts
//! meet are in `plan::policy` and `plan::direct`.

use super::HelperError;
use crate::config::{ConfigError, SiteConfig};
use crate::identity::Identity;
use crate::pathid::{stat_no_links, FileId};
use crate::plan::direct::user_mounts;
use crate::plan::facts::NodeFacts;
use crate::plan::options::CheckOptions;
use crate::plan::PlanError;
use crate::spank::Request;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What one request's container is decided from.
pub struct Facts {
    /// The job's user.
    pub user: Identity,
    /// The site config, its mount prefixes resolved as root.
    pub site: SiteConfig,
    /// The request, with only the Slurm folders found and checked.
    pub req: Request,
    /// Paths resolved as the user (home, working directory, `--mnd-mounts` sources) and the
    /// admin's mount sources resolved as root.
    pub looked: Looked,
    /// What the user's mounts may show, resolved as them: the home, the working directory,
    /// `--mnd-mounts` sources (their kind and the user's right to write them are checked).
    pub users_sources: Vec<PathBuf>,
    /// Identities of Slurm's folders and the batch script, taken where they were checked.
    pub ids: BTreeMap<PathBuf, FileId>,
    /// The folders Slurm's PMIx folders are in, where a named container may show them
    /// whole (`policy::spool_shown_to_later_steps`).
    pub spools: Vec<PathBuf>,
    /// The folder of the mnd tools (this binary's).
    pub tools: Option<PathBuf>,
    /// The node's GPUs and capabilities.
    pub node: NodeFacts,
}

/// Gathers the facts for `req` under `site`.
pub fn gather(req: &Request, site: &SiteConfig) -> Result<Facts, HelperError> {
    let user = Identity::of_uid(req.uid)?;
    let site = with_root_prefixes(site)?;
    let mut users_sources: Vec<PathBuf> = vec![user.home.clone(), req.cwd.clone()];
    if let Ok(opts) = req.options.check() {
        users_sources.extend(user_mounts(&opts, &req.cwd).into_iter().map(|m| m.source));
    }
    let mut looked = resolve_as(req.uid, req.gid, &req.gids, &users_sources)?;
    // The admin's own mounts are resolved as root: the user need not be able to reach them.
    for m in &site.defaults.mounts {
        if let Ok(m) = crate::plan::mounts::parse_mount(m) {
            looked.insert(m.source.clone(), look(&m.source));
        }
    }
    let mut ids: BTreeMap<PathBuf, FileId> = looked
        .values()
        .filter_map(|r| r.as_ref().ok().map(|l| (l.real.clone(), l.id)))
        .collect();
    let mut spools = Vec::new();
    let slurm_dirs = slurm_dirs(req, &mut ids, &mut spools)?;
    if let Some(script) = &req.batch_script {
        ids.insert(script.clone(), batch_script(req, script)?);
    }
    let tools = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let mut node = crate::node::gather().map_err(|e| HelperError::Resolve {
        uid: req.uid,
        reason: format!("this node's facts: {e}"),
    })?;
    node.fabric = crate::node::fabric_facts(&site);
    Ok(Facts {
        user,
        site,
        req: Request {
            slurm_dirs,
            ..req.clone()
        },
        looked,
        users_sources,
        ids,
        spools,
        tools,
        node,
    })
}

impl Facts {
    /// Resolves a path as it was looked up (for the planner).
    pub fn resolve(&self, p: &Path) -> std::io::Result<PathBuf> {
        match self.looked.get(p) {
            Some(Ok(l)) => Ok(l.real.clone()),
            Some(Err(e)) => Err(std::io::Error::other(e.clone())),
            None => Err(std::io::Error::other("not looked up")),
        }
    }

    /// Each source the user named, as looked up as them.
    pub fn users_source_looks(&self) -> Vec<&Looked1> {
        self.users_sources
            .iter()
            .filter_map(|s| self.looked.get(s)?.as_ref().ok())
            .collect()
    }
}

/// A path's real path and the identity of what it named when it was resolved, or why not.
type Lookup = Result<Looked1, String>;

/// One path resolved: its real path, its identity and its mode (file type and bits).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Looked1 {
    /// The real path.
    pub real: PathBuf,
    /// Its identity.
    pub id: FileId,
    /// Its `st_mode`.
    pub mode: u32,
    /// Whoever looked it up may write in it.
    pub writable: bool,
}

/// Paths resolved as someone.
pub type Looked = BTreeMap<PathBuf, Lookup>;

/// The site config with each `allowed_mount_prefixes` entry resolved as root: the
/// admin's folders, which must exist and be root's (a prefix the user could replace, or
/// resolve through their own links, would move the rule).
fn with_root_prefixes(site: &SiteConfig) -> Result<SiteConfig, HelperError> {
    use std::os::unix::fs::MetadataExt;
    let config_path = PathBuf::from(site.name());
    let mut site = site.clone();
    for prefix in &mut site.policy.allowed_mount_prefixes {
        let bad = |why: String| {
            HelperError::Config(ConfigError::Value {
                path: config_path.clone(),
                message: format!("policy.allowed_mount_prefixes entry {prefix}: {why}. Fix: name existing folders owned by root"),
            })
        };
        let real = std::fs::canonicalize(&*prefix).map_err(|e| bad(e.to_string()))?;
        let meta = std::fs::metadata(&real).map_err(|e| bad(e.to_string()))?;
        if meta.uid() != 0 {
            return Err(bad(format!(
                "{} belongs to uid {}",
                real.display(),
                meta.uid()
            )));
        }
        *prefix = real.display().to_string();
    }
    Ok(site)
}

/// The batch step's script, checked where Slurm keeps it: its identity for the check after
/// the mount.
fn batch_script(req: &Request, script: &Path) -> Result<FileId, HelperError> {
    let script = crate::plan::policy::lexical_clean(script);
    let parent = script.parent().unwrap_or(Path::new("/"));
    let stat = |p: &Path| {
        stat_no_links(p).map_err(|e| HelperError::Resolve {
            uid: req.uid,
            reason: format!("the batch script {}: {e}", p.display()),
        })
    };
    let ((id, st), (_, pst)) = (stat(&script)?, stat(parent)?);
    crate::plan::policy::check_batch_script(
        &script,
        req.uid,
        &crate::plan::policy::SlurmDirFacts {
            owner: st.st_uid,
            is_dir: st.st_mode & libc::S_IFMT != libc::S_IFREG,
            parent_owner: pst.st_uid,
            parent_mode: pst.st_mode,
        },
    )?;
    Ok(id)
}

/// Slurm's PMIx folders of the step, each checked (`policy::check_slurm_dir`) after opening
/// it with no symbolic link in its path; a folder that does not exist is left out (the step
/// does not use it), anything else that fails the rule fails the step. The folders they are
/// in go to `spools` when a named container may show them.
fn slurm_dirs(
    req: &Request,
    ids: &mut BTreeMap<PathBuf, FileId>,
    spools: &mut Vec<PathBuf>,
) -> Result<Vec<PathBuf>, HelperError> {
    let mut out = Vec::new();
    for dir in &req.slurm_dirs {
        let dir = crate::plan::policy::lexical_clean(dir);
        if !dir.is_absolute() || dir.parent().is_none() {
            continue;
        }
        let (id, st) = match stat_no_links(&dir) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PlanError::Refused {
                what: format!("Slurm's PMIx folder {}", dir.display()),
                why: format!("it cannot be opened without following a link ({e})"),
                fix: "remove the link you put under Slurm's name, or leave SLURM_PMIX_TMPDIR unset"
                    .into(),
            }
            .into()),
        };
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let (pid, pst) = stat_no_links(parent).map_err(|e| HelperError::Resolve {
            uid: req.uid,
            reason: format!("{}: {e}", parent.display()),
        })?;
        crate::plan::policy::check_slurm_dir(
            &dir,
            req.uid,
            &crate::plan::policy::SlurmDirFacts {
                owner: st.st_uid,
                is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                parent_owner: pst.st_uid,
                parent_mode: pst.st_mode,
            },
        )?;
        if crate::plan::policy::spool_shown_to_later_steps(pst.st_uid, pst.st_mode) {
            ids.insert(parent.to_path_buf(), pid);
            spools.push(parent.to_path_buf());
        }
        ids.insert(dir.clone(), id);
        out.push(dir);
    }
    Ok(out)
}

/// A path's real path and the identity of what it names, as the calling process sees it;
/// a path that does not exist is an error (dockerd would otherwise make it, as root).
fn look(p: &Path) -> Lookup {
    let real = crate::node::real_path(p).map_err(|e| e.to_string())?;
    let (id, st) = stat_no_links(&real).map_err(|e| e.to_string())?;
    let writable = nix::unistd::access(&real, nix::unistd::AccessFlags::W_OK).is_ok();
    Ok(Looked1 {
        real,
        id,
        mode: st.st_mode,
        writable,
    })
}

/// Longest the lookup as the user may take (a path on a hung file system, or the user
/// stopping the process: root waits no longer, and the step fails).
const LOOKUP_TIME: std::time::Duration = std::time::Duration::from_secs(20);

/// Resolves paths (no `..`, no symbolic links) in a child process running as the user, so a
/// path the user could not reach is not reached for them, and takes each one's identity.
fn resolve_as(uid: u32, gid: u32, gids: &[u32], paths: &[PathBuf]) -> Result<Looked, HelperError> {
    use nix::unistd::{fork, ForkResult};
    let fail = |reason: String| HelperError::Resolve { uid, reason };
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| fail(e.to_string()))?;
    // SAFETY: the helper has started no thread yet (tokio starts later), so the child may
    // run ordinary code; it only drops its ids, resolves and writes, then `_exit`s.
    match unsafe { fork() }.map_err(|e| fail(e.to_string()))? {
        ForkResult::Child => {
            drop(read_end);
            let dropped = crate::identity::become_user(uid, gid, gids);
            let answer: Vec<(PathBuf, Lookup)> = paths
                .iter()
                .map(|p| match &dropped {
                    Ok(()) => (p.clone(), look(p)),
                    Err(e) => (p.clone(), Err(format!("cannot become uid {uid}: {e}"))),
                })
                .collect();
            let text = serde_json::to_vec(&answer).unwrap_or_default();
            let mut file = std::fs::File::from(write_end);
            let code = i32::from(std::io::Write::write_all(&mut file, &text).is_err());
            // SAFETY: leaves the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let (text, status) = crate::asuser::read_from_child(child, read_end, LOOKUP_TIME)
                .map_err(|e| fail(e.to_string()))?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => {}
                other => return Err(fail(format!("the lookup process ended with {other:?}"))),
            }
            let answer: Vec<(PathBuf, Lookup)> =
                serde_json::from_slice(&text).map_err(|e| fail(e.to_string()))?;
            Ok(answer.into_iter().collect())
        }
    }
}
