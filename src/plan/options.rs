//! Direct mode's options (`--mnd-*`, pyxis's `--container-*` renamed), checked for form
//! once, with nothing of the node: pyxis's grammar and refusals, and the rules of this
//! project on top (an image name Docker takes, a container name Docker takes, absolute
//! targets). The plugin runs the same check in srun, so a bad value fails before the job.

use super::env;
use super::error::{usage, PlanError};
use super::fabric::{self, FabricAsk};
use super::policy;
use crate::spank::Options;
use crate::spec::Mount;
use std::path::{Path, PathBuf};

/// The options, checked for form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The image; `None` when only `--mnd-name` names an existing container.
    pub image: Option<String>,
    /// Bind mounts, sources as given (a relative one is relative to the step's working
    /// directory), not yet resolved.
    pub mounts: Vec<Mount>,
    /// `tmpfs:/DST[:OPTIONS]` mounts.
    pub tmpfs: Vec<Tmpfs>,
    /// Working directory in the container.
    pub workdir: Option<PathBuf>,
    /// Name of a job-lifetime container.
    pub name: Option<String>,
    /// What to do with the named container.
    pub name_mode: NameMode,
    /// Variables the job's value wins for.
    pub envlist: Vec<String>,
    /// The user's home is mounted (default: yes).
    pub mount_home: bool,
    /// Root inside a user namespace that maps to the user.
    pub remap_root: bool,
    /// The container's root filesystem is writable (default: yes).
    pub writable: bool,
    /// Namespaces of its own: `net`, `ipc`, `uts`.
    pub unshare: Vec<&'static str>,
    /// Where the container goes at the step's end (`docker save` archive), relative to the
    /// step's working directory when not absolute.
    pub save: Option<PathBuf>,
    /// `--mnd-fabric`: the site's device profiles asked for.
    pub fabric: FabricAsk,
    /// The chosen profiles' variables, given to tasks where neither they nor the image
    /// set one (filled in by `plan::direct::plan`, which chooses the profiles).
    pub fabric_env: Vec<(String, String)>,
    /// `--mnd-containers`: the user's named containers on the node, listed or removed,
    /// instead of a container for the step.
    pub containers: Option<ContainersOp>,
}

/// `--mnd-containers=ls|rm:NAME[,NAME...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainersOp {
    /// List them.
    List,
    /// Remove these (by `--mnd-name`; `all`: every one not running).
    Remove(Vec<String>),
}

/// A tmpfs mount: its target and its options.
pub type Tmpfs = (PathBuf, String);

/// `--mnd-name=NAME[:MODE]`, as pyxis has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameMode {
    /// Use the container when it runs, else make it.
    #[default]
    Auto,
    /// Make it; refuse when it exists.
    Create,
    /// Use it; refuse when it does not run.
    Exec,
    /// Make or find it, but run the tasks outside it.
    NoExec,
}

/// Namespaces `--mnd-unshare` takes.
const UNSHARE: [&str; 3] = ["net", "ipc", "uts"];

/// Direct mode's options, checked for form.
pub trait CheckOptions {
    /// Checks the options' form.
    fn check(&self) -> Result<Checked, PlanError>;
}

impl CheckOptions for Options {
    fn check(&self) -> Result<Checked, PlanError> {
        let image = image(&self.image)?;
        let (name, name_mode) = match &self.name {
            Some(n) => {
                let (n, mode) = name(n)?;
                (Some(n), mode)
            }
            None => (None, NameMode::Auto),
        };
        let containers = self.containers.as_deref().map(containers).transpose()?;
        if containers.is_some() && (image.is_some() || name.is_some()) {
            return Err(usage(
                "--mnd-containers lists or removes your named containers: give it alone, without --mnd-image or --mnd-name",
            ));
        }
        if image.is_none() && name.is_none() && containers.is_none() {
            return Err(usage(
                "--mnd-image is missing: give an image, e.g. --mnd-image=ubuntu:24.04 (or --mnd-name=NAME of a container of this job)",
            ));
        }
        if self.entrypoint == Some(true) {
            return Err(usage(
                "--mnd-entrypoint is not supported: the tasks join a container that is already running, so the image's entrypoint never wraps them. Fix: run it yourself in front of your command (srun --mnd-image=IMAGE /path/to/entrypoint.sh CMD), or drop the option",
            ));
        }
        let (mounts, tmpfs) = match &self.mounts {
            Some(text) => mount_list(text)?,
            None => (vec![], vec![]),
        };
        Ok(Checked {
            image,
            mounts,
            tmpfs,
            workdir: self.workdir.as_deref().map(workdir).transpose()?,
            name,
            name_mode,
            envlist: self
                .envlist
                .as_deref()
                .map(envlist)
                .transpose()?
                .unwrap_or_default(),
            mount_home: self.mount_home.unwrap_or(true),
            remap_root: self.remap_root.unwrap_or(false),
            writable: self.writable.unwrap_or(true),
            unshare: self
                .unshare
                .as_deref()
                .map(unshare)
                .transpose()?
                .unwrap_or_default(),
            save: self.save.as_deref().map(save).transpose()?,
            fabric: fabric::ask(self.fabric.as_deref(), "--mnd-fabric")?,
            fabric_env: vec![],
            containers,
        })
    }
}

/// An image name Docker takes: no spaces or control characters, at most 255 characters;
/// not a path (pyxis's squashfs files have no Docker counterpart).
fn image(text: &str) -> Result<Option<String>, PlanError> {
    if text.is_empty() {
        return Ok(None);
    }
    let image = text.trim();
    if image.is_empty() {
        return Err(usage(
            "--mnd-image: argument required, e.g. --mnd-image=ubuntu:24.04",
        ));
    }
    if image.len() > 255 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(usage(format!(
            "--mnd-image '{}' is not an image name (no spaces or control characters, at most 255 characters)",
            shorten(image)
        )));
    }
    if image.starts_with('/') || image.starts_with('.') {
        return Err(usage(format!(
            "--mnd-image '{}' is a path: direct mode runs Docker images, not squashfs files. Fix: give an image name (docker load it first, or put it in your image share)",
            image.escape_debug()
        )));
    }
    Ok(Some(docker_name(image)))
}

/// An image as enroot names it (`[USER@][REGISTRY#]IMAGE`, as pyxis users write it) in
/// Docker's words: `REGISTRY/IMAGE` (the credentials user is Docker's login's business).
fn docker_name(image: &str) -> String {
    match image.split_once('#') {
        Some((registry, rest)) => {
            let registry = registry.rsplit_once('@').map_or(registry, |(_, r)| r);
            format!("{registry}/{rest}")
        }
        None => image.to_string(),
    }
}

/// At most 60 characters of a value, for a message.
fn shorten(text: &str) -> String {
    let short: String = text.chars().take(60).collect();
    let more = if short.len() < text.len() { "..." } else { "" };
    format!("{}{more}", short.escape_debug())
}

/// `NAME[:auto|create|exec|no_exec]`: a name of letters, digits, `_.-`, at most 64.
fn name(text: &str) -> Result<(String, NameMode), PlanError> {
    let (name, mode) = text.split_once(':').unwrap_or((text, ""));
    let mode = match mode {
        "" | "auto" => NameMode::Auto,
        "create" => NameMode::Create,
        "exec" => NameMode::Exec,
        "no_exec" => NameMode::NoExec,
        other => {
            return Err(usage(format!(
                "--mnd-name: mode '{}' is not one of auto, create, exec, no_exec",
                other.escape_debug()
            )))
        }
    };
    if name.is_empty() {
        return Err(usage("--mnd-name: empty name. Fix: --mnd-name=NAME[:MODE]"));
    }
    let fine = name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !fine {
        return Err(usage(format!(
            "--mnd-name '{}' may hold only letters, digits, '_', '.' and '-' (at most 64)",
            shorten(name)
        )));
    }
    Ok((name.to_string(), mode))
}

/// `--mnd-containers=ls` or `rm:NAME[,NAME...]` (names as `--mnd-name` takes them, or
/// `all`).
fn containers(text: &str) -> Result<ContainersOp, PlanError> {
    let fix = "Fix: --mnd-containers=ls, or --mnd-containers=rm:NAME[,NAME...] (or rm:all)";
    match text.split_once(':') {
        None if text == "ls" => Ok(ContainersOp::List),
        Some(("rm", names)) if !names.is_empty() => {
            let names = names
                .split(',')
                .map(|n| match n {
                    "all" => Ok(n.to_string()),
                    n => name(n).map(|(n, _)| n),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ContainersOp::Remove(names))
        }
        _ => Err(usage(format!(
            "--mnd-containers '{}' is not ls or rm:NAME. {fix}",
            shorten(text)
        ))),
    }
}

/// `--mnd-workdir`: an absolute path, or a relative one (relative to `/`, as pyxis: `../`
/// is `/`).
fn workdir(text: &str) -> Result<PathBuf, PlanError> {
    if text.is_empty() {
        return Err(usage(
            "--mnd-workdir: argument required, e.g. --mnd-workdir=/workspace",
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(usage(format!(
            "--mnd-workdir '{}' holds a control character",
            text.escape_debug()
        )));
    }
    Ok(policy::lexical_clean(&Path::new("/").join(text)))
}

/// `--mnd-save`: a file to write (not a folder: pyxis refuses `/tmp/`, `/` and `./`).
fn save(text: &str) -> Result<PathBuf, PlanError> {
    if text.is_empty() {
        return Err(usage(
            "--mnd-save: argument required, e.g. --mnd-save=./step.tar",
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(usage(format!(
            "--mnd-save '{}' holds a control character",
            text.escape_debug()
        )));
    }
    let last = Path::new(text)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    if text.ends_with('/') || matches!(last.as_deref(), None | Some(".") | Some("..")) {
        return Err(usage(format!(
            "--mnd-save={}: target is a directory. Fix: name a file, e.g. --mnd-save=./step.tar",
            text.escape_debug()
        )));
    }
    Ok(PathBuf::from(text))
}

/// `--mnd-env`: variable names, comma separated, none empty.
fn envlist(text: &str) -> Result<Vec<String>, PlanError> {
    if text.is_empty() {
        return Err(usage(
            "--mnd-env: argument required, e.g. --mnd-env=PATH,LD_LIBRARY_PATH",
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for v in text.split(',').map(str::trim) {
        if !env::is_variable_name(v) {
            return Err(usage(format!(
                "--mnd-env '{}': '{}' is not a variable name (letters, digits and '_', not first a digit; no empty entries)",
                text.escape_debug(),
                v.escape_debug()
            )));
        }
        if !names.iter().any(|n| n == v) {
            names.push(v.to_string());
        }
    }
    Ok(names)
}

/// `--mnd-unshare`: `net`, `ipc`, `uts`, comma separated.
fn unshare(text: &str) -> Result<Vec<&'static str>, PlanError> {
    if text.is_empty() {
        return Err(usage(
            "--mnd-unshare: argument required, e.g. --mnd-unshare=net,ipc",
        ));
    }
    let mut out = Vec::new();
    for ns in text.split(',') {
        let Some(known) = UNSHARE.iter().find(|k| **k == ns) else {
            return Err(usage(format!(
                "--mnd-unshare: unknown namespace '{}' (net, ipc and uts are supported)",
                ns.escape_debug()
            )));
        };
        if !out.contains(known) {
            out.push(*known);
        }
    }
    Ok(out)
}

/// `--mnd-mounts`: entries separated by `,`, each `SRC[:DST[:FLAGS]]` (flags joined with
/// `+`) or `tmpfs:DST[:OPTIONS]`; an entry given twice counts once.
fn mount_list(text: &str) -> Result<(Vec<Mount>, Vec<Tmpfs>), PlanError> {
    if text.is_empty() {
        return Err(usage(
            "--mnd-mounts: argument required, e.g. --mnd-mounts=/data:/data:ro",
        ));
    }
    let (mut binds, mut tmpfs) = (Vec::new(), Vec::new());
    for entry in text.split(',') {
        if entry.chars().any(char::is_control) {
            return Err(usage(format!(
                "--mnd-mounts '{}' holds a control character",
                entry.escape_debug()
            )));
        }
        match mount_entry(entry)? {
            Entry::Bind(m) if !binds.contains(&m) => binds.push(m),
            Entry::Tmpfs(t) if !tmpfs.contains(&t) => tmpfs.push(t),
            _ => {}
        }
    }
    Ok((binds, tmpfs))
}

/// One `--mnd-mounts` entry.
enum Entry {
    Bind(Mount),
    Tmpfs(Tmpfs),
}

/// Bind propagations a user may ask for. `shared`, `rshared`, `slave` and `rslave` are
/// refused: with a shared bind, mounts made in the container (its tmpfs, nested binds)
/// would appear in the node's own mount table and stay after the job.
const PROPAGATION: [&str; 2] = ["private", "rprivate"];

/// Propagations Docker knows that a user may not ask for (see `PROPAGATION`).
const SHARING: [&str; 4] = ["shared", "rshared", "slave", "rslave"];

fn mount_entry(entry: &str) -> Result<Entry, PlanError> {
    let bad = |why: &str| {
        usage(format!(
            "--mnd-mounts '{}': {why}. Fix: SRC[:DST[:FLAGS]] with FLAGS joined by '+' (ro, rw, rprivate, ...), or tmpfs:DST[:OPTIONS]",
            entry.escape_debug()
        ))
    };
    let mut parts = entry.splitn(3, ':');
    let src = parts.next().unwrap_or_default();
    let dst = parts.next();
    let flags = parts.next().unwrap_or_default();
    if src.is_empty() || dst == Some("") {
        return Err(bad("empty source or target"));
    }
    let dst = dst.unwrap_or(src);
    if !dst.starts_with('/') {
        return Err(bad("the target must be an absolute path in the container"));
    }
    let target = policy::lexical_clean(Path::new(dst));
    if src == "tmpfs" {
        return Ok(Entry::Tmpfs((target, flags.replace('+', ","))));
    }
    if ["umount", "devpts", "proc", "sysfs"].contains(&src) {
        return Err(bad(&format!(
            "'{src}' mounts are not supported (Docker builds the container's own /dev, /proc and /sys)"
        )));
    }
    if !src.starts_with('/') && !src.starts_with('.') {
        return Err(bad(
            "the source must be a path (absolute, or relative as ./DIR) or tmpfs",
        ));
    }
    let mut mount = Mount::same(Path::new(src), false);
    mount.target = target;
    for flag in flags.split('+').filter(|f| !f.is_empty()) {
        match flag {
            "ro" => mount.read_only = true,
            "rw" => mount.read_only = false,
            p if PROPAGATION.contains(&p) => mount.propagation = Some(p.to_string()),
            p if SHARING.contains(&p) => {
                return Err(bad(&format!(
                    "propagation '{p}' is refused: it would let mounts made in the container reach the node's own mount table. Use private or rprivate (the default)"
                )))
            }
            other => {
                return Err(bad(&format!(
                    "flag '{}' is not one Docker can give a bind mount (ro, rw, private, rprivate)",
                    other.escape_debug()
                )))
            }
        }
    }
    Ok(Entry::Bind(mount))
}
