//! Facts about this node that the plan needs: working directory, environment, GPUs, and
//! whether containers may raise the locked-memory limit.

use crate::config::SiteConfig;
use crate::plan::fabric::FabricFacts;
use crate::plan::{AmdFacts, NodeFacts};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// CAP_SYS_RESOURCE's bit in /proc/self/status `CapBnd`.
const CAP_SYS_RESOURCE: u32 = 24;

/// Reads the facts of this node.
pub fn gather() -> std::io::Result<NodeFacts> {
    Ok(NodeFacts {
        cwd: std::env::current_dir()?,
        env: std::env::vars().collect(),
        nvidia: Path::new("/dev/nvidia0").exists(),
        amd: amd_facts(),
        can_raise_memlock: bounding_caps().is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0),
        pid: std::process::id(),
        net: None,
        fabric: Default::default(),
    })
}

/// Which devices of the site's fabric profiles this node has (a character device, or a
/// folder of them such as `/dev/infiniband`; never through a link), and what its CDI specs
/// name.
pub fn fabric_facts(site: &SiteConfig) -> FabricFacts {
    let mut facts = FabricFacts::default();
    let profiles = site.fabric_profiles();
    for device in profiles.values().flat_map(|p| p.devices.iter()) {
        let is_device = std::fs::symlink_metadata(device).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_char_device() || m.is_dir()
        });
        if is_device {
            facts.present.insert(device.clone());
        }
    }
    for m in profiles.values().flat_map(|p| p.mounts.iter()) {
        let src = crate::plan::fabric::source_of(m);
        if let Err(why) = crate::config::owner_alone(Path::new(src), 0) {
            facts.unsafe_sources.insert(src.to_string(), why);
        }
    }
    crate::cdi::read(&crate::cdi::SPEC_DIRS, &mut facts);
    facts
}

fn bounding_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn amd_facts() -> Option<AmdFacts> {
    let kfd = std::fs::metadata("/dev/kfd").ok()?;
    let mut render_nodes: Vec<u32> = std::fs::read_dir("/dev/dri")
        .ok()?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("renderD")?
                .parse()
                .ok()
        })
        .collect();
    render_nodes.sort_unstable();
    let mut device_gids = vec![kfd.gid()];
    if let Some(first) = render_nodes.first() {
        if let Ok(m) = std::fs::metadata(format!("/dev/dri/renderD{first}")) {
            device_gids.push(m.gid());
        }
    }
    device_gids.dedup();
    Some(AmdFacts {
        render_nodes,
        device_gids,
    })
}

/// Raises this process's open-file limit to its hard limit: the coordinator holds one
/// connection per worker for the whole job, and the usual soft limit (1024) would end a
/// job of a thousand nodes. Returns the limit now in force.
pub fn raise_open_files() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// When process `pid` started (clock ticks since boot, field 22 of `/proc/PID/stat`): a
/// pid that ended and was given to another process has another start time.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The real path of `path`: no `.`, `..` or symbolic link. A part that does not exist yet
/// (a folder mnd-srun will create) is kept as written after the real path of what exists.
pub fn real_path(path: &Path) -> std::io::Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(e);
            };
            if name == ".." {
                return Err(e);
            }
            Ok(real_path(parent)?.join(name))
        }
        other => other,
    }
}

/// The interface the job's nodes reach each other on: in hosts mode the one the front
/// door's ssh connection came in on, else the one a route to another node leaves from.
pub fn job_network(step: &crate::slurm::StepContext) -> Option<crate::plan::JobNet> {
    let ssh_local = std::env::var("SSH_CONNECTION")
        .ok()
        .filter(|_| step.hosts_mode)
        .and_then(|c| c.split_whitespace().nth(2)?.parse().ok());
    ssh_local
        .and_then(crate::netif::of_address)
        .or_else(|| crate::netif::find(&step.nodes, &step.node_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_has_one_start_time() {
        let me = std::process::id() as i32;
        let t = process_start_time(me).expect("own start time");
        assert_eq!(process_start_time(me), Some(t));
        assert!(process_start_time(i32::MAX).is_none());
    }

    #[test]
    fn real_paths_follow_links_and_keep_missing_tails() {
        let t = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir(real.join("data")).unwrap();
        std::os::unix::fs::symlink("/etc", real.join("etc-link")).unwrap();
        assert_eq!(
            real_path(&real.join("etc-link/ssh")).unwrap(),
            Path::new("/etc/ssh")
        );
        assert_eq!(
            real_path(&real.join("data/../etc-link")).unwrap(),
            Path::new("/etc")
        );
        assert_eq!(
            real_path(&real.join("data/new/deeper")).unwrap(),
            real.join("data/new/deeper")
        );
    }
}
