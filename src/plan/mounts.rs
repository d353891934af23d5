//! Mounts of both recipes: parsing `SRC[:DST][:ro]`, the mount rules after resolving, and
//! the base mounts (home, working directory, script, site, user).

use super::error::{usage, PlanError};
use super::facts::NodeFacts;
use super::policy::{self, MountOrigin};
use crate::cli::Args;
use crate::config::SiteConfig;
use crate::dockopts::DockOpts;
use crate::identity::Identity;
use crate::spec::Mount;
use std::path::{Path, PathBuf};

/// `p` as given when absolute, else relative to `cwd`; `.` and `..` resolved by name (a
/// mount's source, `--mnd-save`'s archive).
pub fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    // Lexical clean-up of "." and ".." so the same path works inside the container.
    policy::lexical_clean(&cwd.join(p))
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
        propagation: None,
    })
}

/// What the mounts are decided from.
pub(super) struct MountInputs<'a> {
    pub(super) user: &'a Identity,
    pub(super) facts: &'a NodeFacts,
    pub(super) site: &'a SiteConfig,
    pub(super) args: &'a Args,
    pub(super) opts: &'a DockOpts,
    pub(super) script: &'a Path,
    pub(super) ssh_root: &'a Path,
}

/// Every bind mount, with its source resolved (no `..`, no symbolic links) and checked:
/// home, site mounts, `--mounts`/`-v`, then the working directory, the ssh folder and the
/// script's folder when no mount already shows them at the same path.
pub(super) fn mounts(
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
            "mount source {} cannot be used: {e}. Fix: give an existing folder or file",
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
