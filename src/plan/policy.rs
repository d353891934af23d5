//! What a job may ask of Docker: the built-in rules no config can loosen (host system
//! folders are never mounted, mnd-srun's own files are never covered by a mount, GPUs are
//! the step's) and the site's policy from the root-owned config. Every option that reaches
//! Docker passes one of these checks; the plan calls them, nothing else does.
//!
//! While users can reach the Docker socket themselves, these rules bind mnd-srun only (they
//! are advisory for the user); behind the SPANK plugin's root side they are the boundary.

use crate::config::SiteConfig;
use crate::dockopts::DockOpts;
use crate::identity::Identity;
use crate::plan::{usage, PlanError};
use std::path::{Component, Path, PathBuf};

/// Host folders that are never bind-mounted, nor anything inside them or above them.
pub const SYSTEM_FOLDERS: &[&str] = &[
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/root",
];

/// Character devices that give nothing away (no host state, no hardware), so a user may
/// mount them as files, as pyxis users do with `/dev/null`.
pub const HARMLESS_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The container folder holding the files mnd-srun gives a container (sshd and ssh
/// configs, the ssh wrappers). It lies in the container's own layer: no mount may cover it.
pub const PRIVATE_DIR: &str = "/.mnd";

/// Container paths where the root helper declares files of its own (read-only mounts of
/// root's files) besides `PRIVATE_DIR`; no user mount may cover them either.
pub const WRITTEN_FILES: &[&str] = &["/etc/passwd", "/etc/group", INIT_TARGET];

/// Where a direct-mode container's init (a root-owned static program of the install's that
/// only waits) is mounted: never a program of the image's.
pub const INIT_TARGET: &str = "/.mnd-init";

/// Container folders no mount may go into (the kernel's and the image's own).
const NO_TARGETS_UNDER: &[&str] = &["/etc", "/proc", "/sys", "/dev", PRIVATE_DIR];

/// Where a mount comes from, for messages and for which rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountOrigin {
    /// The user's home.
    Home,
    /// The site config's `defaults.mounts` (the admin's own; not under the user rules).
    Site,
    /// `--mounts`/`--datamnts` or `--dockopts -v/--mount`.
    User,
    /// The working directory.
    Workdir,
    /// The script's folder.
    ScriptDir,
    /// The ssh material folder.
    SshDir,
}

impl MountOrigin {
    fn describe(self, source: &Path) -> String {
        let s = source.display();
        match self {
            MountOrigin::Home => format!("your home {s}"),
            MountOrigin::Site => format!("site mount {s}"),
            MountOrigin::User => format!("mount source {s}"),
            MountOrigin::Workdir => format!("the working directory {s}"),
            MountOrigin::ScriptDir => format!("the script's folder {s}"),
            MountOrigin::SshDir => format!("the ssh folder {s}"),
        }
    }

    fn fix(self) -> &'static str {
        match self {
            MountOrigin::Workdir => "cd to your home or a project folder and start again",
            MountOrigin::ScriptDir => "keep the script in your home or a project folder",
            MountOrigin::Home => "ask your admin: a home in a system folder cannot be mounted",
            MountOrigin::SshDir => "choose another folder with --ssh-dir",
            MountOrigin::User | MountOrigin::Site => "mount a folder of your own data instead",
        }
    }
}

fn refused(what: String, why: String, fix: &str) -> PlanError {
    PlanError::Refused {
        what,
        why,
        fix: fix.to_string(),
    }
}

fn policy(site: &SiteConfig, what: impl Into<String>, rule: &'static str) -> PlanError {
    PlanError::Policy {
        what: what.into(),
        rule,
        config: site.name(),
    }
}

/// The system folder `path` is, is inside of, or contains (for `/`, `/var`, ...).
fn system_folder_of(path: &Path) -> Option<&'static str> {
    if path == Path::new("/") {
        return Some("/");
    }
    SYSTEM_FOLDERS
        .iter()
        .find(|f| path.starts_with(f) || Path::new(f).starts_with(path))
        .copied()
}

/// Built-in rule for a resolved (no `..`, no symbolic link) mount source: never a host
/// system folder, never the Docker socket, whatever the config says.
pub fn check_mount_source(origin: MountOrigin, resolved: &Path) -> Result<(), PlanError> {
    if origin == MountOrigin::Site {
        return Ok(());
    }
    // Devices that hold nothing of the host's (pyxis users mount /dev/null over files).
    let harmless = HARMLESS_DEVICES.iter().any(|d| Path::new(d) == resolved);
    if origin == MountOrigin::User && harmless {
        return Ok(());
    }
    if let Some(sys) = system_folder_of(resolved) {
        let why = if resolved == Path::new(sys) {
            format!("{sys} is a host system folder, and mnd-srun never mounts those")
        } else if resolved.starts_with(sys) {
            format!("it is inside the host system folder {sys}, and mnd-srun never mounts those")
        } else {
            format!("it contains the host system folder {sys}, and mnd-srun never mounts those")
        };
        return Err(refused(origin.describe(resolved), why, origin.fix()));
    }
    Ok(())
}

/// Built-in rule for a mount target: it may not cover the files mnd-srun writes into the
/// container (so they can never land on the host through a mount), nor go into the
/// container's own system folders.
pub fn check_mount_target(target: &Path) -> Result<(), PlanError> {
    let covers = |p: &str| Path::new(p).starts_with(target);
    let bad = if target == Path::new("/") {
        Some("it would cover the whole container".to_string())
    } else if let Some(f) = WRITTEN_FILES
        .iter()
        .chain(&[PRIVATE_DIR])
        .find(|f| covers(f))
    {
        Some(format!(
            "it would cover {f}, which mnd-srun writes into the container"
        ))
    } else {
        NO_TARGETS_UNDER
            .iter()
            .find(|f| target.starts_with(f))
            .map(|f| format!("mounts into the container's {f} are not allowed"))
    };
    match bad {
        Some(why) => Err(refused(
            format!("mount target {}", target.display()),
            why,
            "mount it somewhere else, e.g. under /data or /workspace",
        )),
        None => Ok(()),
    }
}

/// Built-in rule after a direct-mode container starts, before any task joins it: every
/// mount landed exactly where its text says. `declared` holds each declared target (the
/// user's, the site's, the helper's own files, tmpfs) with how many mounts it was given;
/// `mount_points` are the container's, from its `/proc/PID/mountinfo`. Docker resolves a
/// target through the links it finds in the container (a link in the user's home to
/// `/etc/passwd` moves a mount there), so a target with fewer or more mounts than declared,
/// or any mount at `/etc` itself, means a mount went somewhere else: refused, naming it.
pub fn check_landed(
    declared: &[(PathBuf, usize)],
    mount_points: &[PathBuf],
) -> Result<(), PlanError> {
    let at = |p: &Path| mount_points.iter().filter(|m| m.as_path() == p).count();
    let moved = declared
        .iter()
        .find(|(target, want)| at(target) != *want)
        .map(|(target, want)| (target.clone(), *want))
        .or_else(|| (at(Path::new("/etc")) != 0).then(|| (PathBuf::from("/etc"), 0)));
    match moved {
        None => Ok(()),
        Some((target, want)) => Err(refused(
            format!("mount target {}", target.display()),
            format!(
                "the container has {} mount(s) there, {want} declared: a link on the way (in the image, or in a folder mounted above it) moved a mount to another place; the container was removed",
                at(&target)
            ),
            "give targets with no symbolic link on the way (`readlink -f` shows where one leads), e.g. under /data or /workspace",
        )),
    }
}

/// The name prefix of `--mnd-save`'s commits (`mnd-saved-USER:JOB.STEP`).
pub const SAVED_PREFIX: &str = "mnd-saved-";

/// Built-in rule for the image a direct-mode step asks for, before anything is pulled: not
/// a name of `--mnd-save`'s commits, which hold other steps' containers.
pub fn check_image_name(asked: &str) -> Result<(), PlanError> {
    let last = asked.rsplit('/').next().unwrap_or(asked);
    match last.starts_with(SAVED_PREFIX) {
        false => Ok(()),
        true => Err(refused(
            format!("image {asked}"),
            "names beginning mnd-saved- are --mnd-save's commits of steps' containers while they are written, which no step may run".into(),
            "load your archive (docker load -i FILE) and push it to a registry, or give it another name",
        )),
    }
}

/// Built-in rule for the image a direct-mode step found: one of its names is the name the
/// user gave (Docker also finds an image by its id or any unambiguous id prefix, which
/// would run another user's untagged images: a share's, a save's), and it carries no
/// user's-copy label (only the launcher makes those; one pulled from a registry would be
/// run by its victim's launcher as their own copy).
pub fn check_image_found(
    asked: &str,
    names: &[String],
    copy_labelled: bool,
) -> Result<(), PlanError> {
    let why = if copy_labelled {
        "it carries mnd-srun's copy labels (mnd.accounts, mnd.base), which only mnd-srun's launcher gives its copies"
    } else if !names.iter().any(|n| same_image_name(asked, n)) {
        "Docker found it by its id (or an id prefix), not by name: direct mode runs images by name only, so nobody runs another user's unnamed images"
    } else {
        return Ok(());
    };
    Err(refused(
        format!("image {asked}"),
        why.to_string(),
        "give the image's name (REPOSITORY:TAG or REPOSITORY@DIGEST) of an image with no mnd.* copy label",
    ))
}

/// The site's bound on an image's size (`policy.max_image_size`) and the file that set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageBound {
    /// The largest size, as the admin wrote it.
    pub max: Option<String>,
    /// The site config's name, for messages.
    pub config: String,
}

impl ImageBound {
    /// The bound `site` sets.
    pub fn of(site: &SiteConfig) -> Self {
        ImageBound {
            max: site.policy.max_image_size.clone(),
            config: site.name(),
        }
    }
}

/// An image of `size` bytes may run under `bound`, or is refused naming the rule (a value
/// that is no size is the config's error, said as such).
pub fn check_image_size(bound: &ImageBound, image: &str, size: u64) -> Result<(), PlanError> {
    let Some(text) = &bound.max else {
        return Ok(());
    };
    let Some(max) = super::container::parse_size(text).filter(|m| *m > 0) else {
        return Err(usage(format!(
            "site config {}: policy.max_image_size '{text}' is not a size like 30G. Fix (admin): correct it",
            bound.config
        )));
    };
    match size > max as u64 {
        true => Err(PlanError::Policy {
            what: format!(
                "image {image} ({:.1} GB unpacked, over max_image_size = \"{text}\")",
                size as f64 / 1e9
            ),
            rule: "policy.max_image_size",
            config: bound.config.clone(),
        }),
        false => Ok(()),
    }
}

/// Two image references name the same image (Docker Hub's `docker.io/` and `library/`
/// left out, `:latest` where no tag or digest is given).
fn same_image_name(a: &str, b: &str) -> bool {
    fn plain(r: &str) -> String {
        let r = r.strip_prefix("docker.io/").unwrap_or(r);
        let r = r.strip_prefix("library/").unwrap_or(r);
        let last = r.rsplit('/').next().unwrap_or(r);
        match last.contains(':') || last.contains('@') {
            true => r.to_string(),
            false => format!("{r}:latest"),
        }
    }
    plain(a) == plain(b)
}

/// Built-in rule: a user's mount of a folder or file they may not write is read-only,
/// whatever they asked. Docker writes as root where a read-write mount lets it: the
/// mount points of mounts nested in it (`--mnd-mounts=/var/lib/x:/S,$HOME/f:/S/y` would
/// make root create `/var/lib/x/y` on the node).
pub fn read_only_for_the_user(writable: bool) -> bool {
    !writable
}

/// Built-in rule for what a user's mount source is: a folder or a regular file, or one of
/// the harmless devices as a file (a FIFO or a socket would hang whoever opens it, another
/// device gives the host's hardware).
pub fn check_source_kind(source: &Path, mode: u32) -> Result<(), PlanError> {
    let kind = mode & libc::S_IFMT;
    let harmless = HARMLESS_DEVICES.iter().any(|d| Path::new(d) == source);
    if kind == libc::S_IFDIR || kind == libc::S_IFREG || (harmless && kind == libc::S_IFCHR) {
        return Ok(());
    }
    let what = match kind {
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR | libc::S_IFBLK => "a device",
        _ => "neither a folder nor a regular file",
    };
    Err(refused(
        format!("mount source {}", source.display()),
        format!(
            "it is {what}; only folders, regular files and {} are mounted",
            HARMLESS_DEVICES.join(", ")
        ),
        "mount the folder that holds it, or a regular file",
    ))
}

/// What the helper found at one of Slurm's folders for the step (opened with no link in
/// its path).
pub struct SlurmDirFacts {
    /// Owner of the folder.
    pub owner: u32,
    /// It is a folder.
    pub is_dir: bool,
    /// Owner of the folder it is in.
    pub parent_owner: u32,
    /// Mode of the folder it is in.
    pub parent_mode: u32,
}

/// Built-in rule for Slurm's PMIx folders, whose names sit in folders anyone may write
/// (`/tmp`) and whose base a user may choose (`SLURM_PMIX_TMPDIR`): a folder of root's or
/// the job user's, in a folder of root's, of the job user's or a sticky one (where nobody
/// else can rename the entry), reached with no symbolic link (the helper opened it so; the
/// user swapping their own entry later is caught by the check after the mount).
pub fn check_slurm_dir(dir: &Path, uid: u32, f: &SlurmDirFacts) -> Result<(), PlanError> {
    const STICKY: u32 = 0o1000;
    let why = if !f.is_dir {
        Some("it is not a folder".to_string())
    } else if f.owner != 0 && f.owner != uid {
        Some(format!(
            "it belongs to uid {}, not to root or the job's user",
            f.owner
        ))
    } else if f.parent_owner != 0 && f.parent_owner != uid && f.parent_mode & STICKY == 0 {
        Some(format!(
            "the folder it is in belongs to uid {} and is not sticky, so its entries can be swapped",
            f.parent_owner
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(refused(
            format!("Slurm's PMIx folder {}", dir.display()),
            why,
            "leave SLURM_PMIX_TMPDIR unset or point it at a folder of your own in a sticky or root-owned folder, and plant nothing under Slurm's names",
        )),
        None => Ok(()),
    }
}

/// Site rule `max_named_containers`: a user who keeps `kept` global named containers on
/// this node may make another only below the site's bound.
pub fn check_named_count(kept: usize, max: Option<u32>, node: &str) -> Result<(), PlanError> {
    match max {
        Some(max) if kept >= max as usize => Err(refused(
            format!("a new --mnd-name container on {node}"),
            format!("you keep {kept} there, the site's policy.max_named_containers is {max}"),
            &format!("remove some first: mnd containers ls -w {node}, then mnd containers rm -w {node} NAME"),
        )),
        _ => Ok(()),
    }
}

/// Built-in rule for showing Slurm's spool (the folder a step's PMIx folder is in) to a
/// named container, whose later steps' PMIx folders appear there after it was made (a
/// bind shows new entries of its folder, not new mounts): only a folder of root's that
/// nobody else may write, so what it shows is what the tasks would see without a
/// container, and nobody but root can add to it.
pub fn spool_shown_to_later_steps(parent_owner: u32, parent_mode: u32) -> bool {
    parent_owner == 0 && parent_mode & 0o022 == 0
}

/// Built-in rule: no other mount inside Slurm's spool shown to a named container (runc
/// would make its mount point there, as root, in root's folder).
pub fn check_not_in_spool(target: &Path, spool: &Path) -> Result<(), PlanError> {
    match target != spool && target.starts_with(spool) {
        true => Err(refused(
            format!("mount target {}", target.display()),
            format!(
                "it is inside Slurm's spool {}, which a named container shows whole (for its later steps' PMIx folders)",
                spool.display()
            ),
            "mount it somewhere else",
        )),
        false => Ok(()),
    }
}

/// Built-in rule for the batch step's script (`sbatch --mnd-image`), which the plugin names
/// from Slurm: a file of root's or the job user's, in a folder of root's or the job user's
/// that nobody else can write, reached with no symbolic link. `f.is_dir` is whether the
/// script itself is a folder.
pub fn check_batch_script(script: &Path, uid: u32, f: &SlurmDirFacts) -> Result<(), PlanError> {
    let why = if f.is_dir {
        Some("it is a folder".to_string())
    } else if f.owner != 0 && f.owner != uid {
        Some(format!(
            "it belongs to uid {}, not to root or the job's user",
            f.owner
        ))
    } else if (f.parent_owner != 0 && f.parent_owner != uid) || f.parent_mode & 0o022 != 0 {
        Some("the folder it is in is not root's or the job user's alone".to_string())
    } else {
        None
    };
    match why {
        Some(why) => Err(refused(
            format!("the batch script {}", script.display()),
            why,
            "check SlurmdSpoolDir: it must be root's and not writable by others",
        )),
        None => Ok(()),
    }
}

/// Site rule `allowed_mount_prefixes` for a resolved source. The user's own folders (home,
/// working directory, script) may also be under the home; `--mounts` must be under a prefix.
pub fn check_mount_prefix(
    site: &SiteConfig,
    origin: MountOrigin,
    resolved: &Path,
    home: &Path,
    resolve: &dyn Fn(&Path) -> std::io::Result<PathBuf>,
) -> Result<(), PlanError> {
    let allowed = &site.policy.allowed_mount_prefixes;
    if allowed.is_empty() || matches!(origin, MountOrigin::Home | MountOrigin::Site) {
        return Ok(());
    }
    let under = |prefix: &Path| {
        resolved.starts_with(prefix) || resolve(prefix).is_ok_and(|r| resolved.starts_with(r))
    };
    let own = matches!(
        origin,
        MountOrigin::Workdir | MountOrigin::ScriptDir | MountOrigin::SshDir
    ) && under(home);
    if own || allowed.iter().any(|p| under(Path::new(p))) {
        return Ok(());
    }
    Err(policy(
        site,
        origin.describe(resolved),
        "policy.allowed_mount_prefixes",
    ))
}

/// Removes `.` and `..` without touching the file system (for container paths).
pub fn lexical_clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// What the job asks for on the command line, as the policy sees it.
pub struct Request<'a> {
    /// The image.
    pub image: &'a str,
    /// `--privileged`.
    pub privileged: bool,
    /// `--dockopts` was given and is not empty.
    pub dockopts: bool,
}

/// Site rules on the image, `--privileged`, `--dockopts` and running as root.
pub fn check_request(site: &SiteConfig, user: &Identity, r: &Request) -> Result<(), PlanError> {
    let p = &site.policy;
    if !p.allowed_images.is_empty()
        && !p.allowed_images.iter().any(|re| {
            regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|rx| rx.is_match(r.image))
        })
    {
        return Err(policy(
            site,
            format!("image '{}'", r.image),
            "policy.allowed_images",
        ));
    }
    if r.privileged && !p.allow_privileged {
        return Err(policy(site, "--privileged", "policy.allow_privileged"));
    }
    if r.dockopts && !p.allow_dockopts {
        return Err(policy(site, "--dockopts", "policy.allow_dockopts"));
    }
    if user.uid == 0 && !p.allow_root {
        return Err(policy(
            site,
            "running the container as root",
            "policy.allow_root",
        ));
    }
    Ok(())
}

/// Site rules on each `--dockopts` option that reaches Docker.
pub fn check_dockopts(site: &SiteConfig, user: &Identity, o: &DockOpts) -> Result<(), PlanError> {
    let p = &site.policy;
    let opt = |s: String| format!("--dockopts {s}");
    if o.privileged && !p.allow_privileged {
        return Err(policy(
            site,
            opt("--privileged".into()),
            "policy.allow_privileged",
        ));
    }
    if let Some(d) = o.devices.first().filter(|_| !p.allow_devices) {
        return Err(policy(
            site,
            opt(format!("--device {d}")),
            "policy.allow_devices",
        ));
    }
    if let Some(c) = o.cap_add.first().filter(|_| !p.allow_cap_add) {
        return Err(policy(
            site,
            opt(format!("--cap-add {c}")),
            "policy.allow_cap_add",
        ));
    }
    for s in &o.security_opt {
        let compact = s.replace([' ', ':'], "=").to_ascii_lowercase();
        if compact.starts_with("no-new-privileges") && compact != "no-new-privileges=true" {
            return Err(refused(
                opt(format!("--security-opt {s}")),
                "every container runs with no-new-privileges".into(),
                "drop the option",
            ));
        }
        if !p.allowed_security_opts.iter().any(|a| a == s) {
            return Err(policy(
                site,
                opt(format!("--security-opt {s}")),
                "policy.allowed_security_opts",
            ));
        }
    }
    for g in &o.group_add {
        let own = user
            .groups
            .iter()
            .any(|mine| mine.name == *g || mine.gid.to_string() == *g);
        if !own && !p.allow_any_group {
            return Err(policy(
                site,
                opt(format!(
                    "--group-add {g} (a group you are not in on this node)"
                )),
                "policy.allow_any_group",
            ));
        }
    }
    match o.ipc.as_deref() {
        None | Some("private" | "shareable" | "none") => {}
        Some("host") if p.allow_host_ipc => {}
        Some("host") => return Err(policy(site, opt("--ipc=host".into()), "policy.allow_host_ipc")),
        Some(other) => {
            return Err(refused(
                opt(format!("--ipc={other}")),
                "a container may only have its own IPC namespace (or the host's, where the site allows it)".into(),
                "drop the option; /dev/shm is sized with --shm-size",
            ))
        }
    }
    for (name, _, _) in &o.ulimits {
        if !p.allowed_ulimits.iter().any(|a| a == name) {
            return Err(policy(
                site,
                opt(format!("--ulimit {name}")),
                "policy.allowed_ulimits",
            ));
        }
    }
    for t in &o.tmpfs {
        let target = t.split_once(':').map_or(t.as_str(), |(p, _)| p);
        if !target.starts_with('/') {
            return Err(refused(
                opt(format!("--tmpfs {t}")),
                "the path must be absolute".into(),
                "write --tmpfs /PATH[:OPTIONS]",
            ));
        }
        check_mount_target(&lexical_clean(Path::new(target)))?;
    }
    Ok(())
}

/// Which GPUs a job asked for, and where the ask came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuAsk {
    /// Nothing asked: the step's GPUs under Slurm, all of the machine's without Slurm.
    Default,
    /// `none`.
    None,
    /// `all`.
    All,
    /// Physical ids.
    Ids(Vec<u32>),
}

/// Built-in rule: under Slurm a container gets only GPUs Slurm gave the step; without Slurm
/// anything the node has.
pub fn check_gpus(
    ask: &GpuAsk,
    source: &str,
    under_slurm: bool,
    step_gpus: &[u32],
) -> Result<(), PlanError> {
    if !under_slurm {
        return Ok(());
    }
    let given = if step_gpus.is_empty() {
        "no GPUs".to_string()
    } else {
        format!(
            "GPUs {}",
            step_gpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let fix = "drop it to get the step's GPUs, ask Slurm for more (--gres=gpu:N or --gpus-per-node=N), or name a subset of the step's GPUs";
    match ask {
        GpuAsk::All => Err(refused(
            format!("{source}=all"),
            format!("under Slurm a job gets only the GPUs Slurm gave its step ({given})"),
            fix,
        )),
        GpuAsk::Ids(ids) => match ids.iter().find(|i| !step_gpus.contains(i)) {
            Some(outside) => Err(refused(
                format!("GPU {outside} in {source}"),
                format!("Slurm gave this step {given}; other GPUs belong to other jobs"),
                fix,
            )),
            None => Ok(()),
        },
        GpuAsk::Default | GpuAsk::None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockopts;

    fn site(text: &str) -> SiteConfig {
        SiteConfig::parse(text, Path::new("/etc/mnd-srun/config.toml")).unwrap()
    }

    #[test]
    fn system_folders_their_insides_and_their_parents_are_never_sources() {
        for p in [
            "/",
            "/etc",
            "/etc/ssh",
            "/usr/lib",
            "/var",
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/dev/sda",
            "/proc/1",
            "/var/lib/docker/volumes",
        ] {
            let e = check_mount_source(MountOrigin::User, Path::new(p)).unwrap_err();
            assert!(e.to_string().contains("system folder"), "{p}: {e}");
        }
        for p in [
            "/shared/home/alice",
            "/data",
            "/scratch/x",
            "/var/tmp/x",
            "/opt/data",
            "/etcetera",
        ] {
            assert!(
                check_mount_source(MountOrigin::User, Path::new(p)).is_ok(),
                "{p}"
            );
        }
        let e = check_mount_source(MountOrigin::Workdir, Path::new("/etc")).unwrap_err();
        assert_eq!(e.to_string(), "the working directory /etc is refused: /etc is a host system folder, and mnd-srun never mounts those. Fix: cd to your home or a project folder and start again");
        // The admin's own site mounts are not under the user rules.
        assert!(check_mount_source(MountOrigin::Site, Path::new("/etc/slurm")).is_ok());
    }

    #[test]
    fn targets_never_cover_what_mnd_srun_writes() {
        for t in [
            "/",
            "/etc",
            "/etc/passwd",
            "/etc/ssh",
            "/.mnd",
            "/.mnd/x",
            "/proc/x",
            "/dev/shm",
        ] {
            assert!(check_mount_target(Path::new(t)).is_err(), "{t}");
        }
        for t in [
            "/data",
            "/workspace",
            "/usr/local/data",
            "/opt/x",
            "/shared/home/alice",
        ] {
            assert!(check_mount_target(Path::new(t)).is_ok(), "{t}");
        }
    }

    #[test]
    fn prefixes_apply_to_resolved_paths_and_the_users_own_folders_may_be_home() {
        let s = site("[policy]\nallowed_mount_prefixes = ['/data']\n");
        let home = Path::new("/shared/home/alice");
        let real = |p: &Path| Ok(p.to_path_buf());
        let check = |o, p: &str| check_mount_prefix(&s, o, Path::new(p), home, &real);
        assert!(check(MountOrigin::User, "/data/x").is_ok());
        assert!(check(MountOrigin::User, "/database").is_err());
        assert!(check(MountOrigin::User, "/shared/home/alice/x").is_err());
        assert!(check(MountOrigin::Workdir, "/shared/home/alice/proj").is_ok());
        let e = check(MountOrigin::Workdir, "/scratch/run").unwrap_err();
        assert!(
            e.to_string().contains("policy.allowed_mount_prefixes"),
            "{e}"
        );
        // A prefix that is itself a symbolic link (/data -> /gpfs/data) matches its target.
        let linked = |p: &Path| {
            Ok(if p == Path::new("/data") {
                PathBuf::from("/gpfs/data")
            } else {
                p.to_path_buf()
            })
        };
        assert!(check_mount_prefix(
            &s,
            MountOrigin::User,
            Path::new("/gpfs/data/x"),
            home,
            &linked
        )
        .is_ok());
    }

    #[test]
    fn every_docker_option_is_under_a_rule_and_defaults_are_safe() {
        let d = SiteConfig::default();
        let alice = crate::identity::test_user();
        let check = |s: &SiteConfig, text: &str| {
            check_dockopts(s, &alice, &dockopts::parse(text).unwrap()).map_err(|e| e.to_string())
        };
        for (opts, rule) in [
            ("--privileged", "policy.allow_privileged"),
            ("--device /dev/sda", "policy.allow_devices"),
            ("--cap-add SYS_ADMIN", "policy.allow_cap_add"),
            (
                "--security-opt seccomp=unconfined",
                "policy.allowed_security_opts",
            ),
            (
                "--security-opt apparmor=unconfined",
                "policy.allowed_security_opts",
            ),
            ("--group-add 6", "policy.allow_any_group"),
            ("--group-add disk", "policy.allow_any_group"),
            ("--ipc=host", "policy.allow_host_ipc"),
            ("--ulimit rtprio=99", "policy.allowed_ulimits"),
        ] {
            let e = check(&d, opts).unwrap_err();
            assert!(
                e.contains(rule) && e.contains("the built-in defaults"),
                "{opts}: {e}"
            );
        }
        for never in [
            "--security-opt no-new-privileges=false",
            "--security-opt no-new-privileges:false",
            "--ipc=container:other",
            "--tmpfs /etc",
            "--tmpfs /.mnd",
        ] {
            let e = check(&d, never).unwrap_err();
            assert!(e.contains("refused"), "{never}: {e}");
        }
        for fine in [
            "--group-add mlteam",
            "--group-add 1500",
            "--ipc=private",
            "--ulimit memlock=-1",
            "--ulimit nofile=1024:4096",
            "--shm-size 1g -e X=1",
            "--tmpfs /scratch:size=1g",
            "--cap-drop NET_RAW",
        ] {
            assert!(check(&d, fine).is_ok(), "{fine}");
        }
        let open = site("[policy]\nallow_privileged = true\nallow_devices = true\nallow_cap_add = true\nallowed_security_opts = ['seccomp=unconfined']\nallow_any_group = true\nallow_host_ipc = true\nallowed_ulimits = ['rtprio']\n");
        for opts in [
            "--privileged",
            "--device /dev/fuse",
            "--cap-add SYS_PTRACE",
            "--security-opt seccomp=unconfined",
            "--group-add 6",
            "--ipc=host",
            "--ulimit rtprio=10",
        ] {
            assert!(check(&open, opts).is_ok(), "{opts}");
        }
        assert!(check(&open, "--security-opt no-new-privileges=false").is_err());
    }

    #[test]
    fn images_over_the_sites_size_are_refused_naming_the_rule() {
        let bound = ImageBound::of(&site("[policy]\nmax_image_size = \"2G\"\n"));
        assert!(check_image_size(&bound, "small:1", 1_900_000_000).is_ok());
        let e = check_image_size(&bound, "big:1", 3_000_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("image big:1 (3.0 GB unpacked") && e.contains("policy.max_image_size"),
            "{e}"
        );
        assert!(check_image_size(&ImageBound::default(), "any", u64::MAX).is_ok());
        let bad = ImageBound::of(&site("[policy]\nmax_image_size = \"lots\"\n"));
        let e = check_image_size(&bad, "x", 1).unwrap_err().to_string();
        assert!(e.contains("'lots' is not a size"), "{e}");
    }

    #[test]
    fn gpus_are_the_steps_under_slurm_and_anything_without() {
        let e = check_gpus(&GpuAsk::All, "--gpus", true, &[2, 3])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--gpus=all") && e.contains("GPUs 2,3"), "{e}");
        let e = check_gpus(&GpuAsk::Ids(vec![1]), "NV_GPU", true, &[2, 3])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GPU 1 in NV_GPU") && e.contains("other jobs"),
            "{e}"
        );
        let e = check_gpus(&GpuAsk::Ids(vec![0]), "--gpus", true, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no GPUs"), "{e}");
        assert!(check_gpus(&GpuAsk::Ids(vec![3]), "--gpus", true, &[2, 3]).is_ok());
        assert!(check_gpus(&GpuAsk::All, "--gpus", false, &[]).is_ok());
        assert!(check_gpus(&GpuAsk::Ids(vec![7]), "--gpus", false, &[]).is_ok());
    }
}
