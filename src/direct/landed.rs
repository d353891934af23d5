//! After the container starts and before any task joins it: what landed where. Docker
//! resolves each mount's target inside the container when it mounts it, following links
//! it finds there (a link in the user's home to `/etc/passwd` moves a mount onto it), and
//! resolves each source again as root, after the helper checked it. So the helper reads
//! the container's own mount table (`/proc/PID/mountinfo`) and requires each mount at its
//! declared target (`policy::check_landed`), then that each target shows the file whose
//! identity was checked. Every read goes through one `/proc/PID` folder opened once and
//! proven to be the container's process (its cgroup names the container), so a pid that
//! died and was reused reads nothing. Only `O_PATH` opens inside the container: nothing
//! there is read, written or waited on.

use super::HelperError;
use crate::pathid::FileId;
use crate::plan::policy::check_landed;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Checks container `id` (main process `pid`): mounts at their targets (`declared`:
/// target and count), and each `mounted` target showing the file checked.
pub fn check(
    pid: i32,
    id: &str,
    declared: &[(PathBuf, usize)],
    mounted: &[(PathBuf, FileId)],
) -> Result<(), HelperError> {
    let proc_dir = container_process(pid, id)?;
    let table = read_at(&proc_dir, "mountinfo")?;
    check_landed(declared, &mount_points(&table))?;
    // `root` is the kernel's link to the process's root: the one link followed here.
    let root = nix::fcntl::openat(
        &proc_dir,
        "root",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| gone(Path::new("root"), e.into()))?;
    for (target, want) in mounted {
        let inside = target.strip_prefix("/").unwrap_or(target);
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_IN_ROOT
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let fd = openat2(&root, inside, how).map_err(|e| gone(target, e.into()))?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| gone(target, e.into()))?;
        if (FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }) != *want
        {
            return Err(HelperError::Swapped(target.clone()));
        }
    }
    Ok(())
}

/// `/proc/PID`, opened once, of the container's process: its cgroup must name the
/// container (read through the same folder, so a pid reused since reads nothing).
fn container_process(pid: i32, id: &str) -> Result<OwnedFd, HelperError> {
    let dir = openat2(
        AT_FDCWD,
        format!("/proc/{pid}").as_str(),
        OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC),
    )
    .map_err(|e| HelperError::NotRunning(format!("{id} (pid {pid}: {e})")))?;
    let cgroup = read_at(&dir, "cgroup")?;
    if !cgroup.contains(id) {
        return Err(HelperError::NotRunning(format!(
            "{id} (pid {pid} is no longer its process)"
        )));
    }
    Ok(dir)
}

fn open_at(dir: &OwnedFd, name: &str, flags: OFlag) -> Result<OwnedFd, HelperError> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
    openat2(dir, name, how).map_err(|e| gone(Path::new(name), e.into()))
}

/// A small file of `/proc/PID` (never more than 4 MiB).
fn read_at(dir: &OwnedFd, name: &str) -> Result<String, HelperError> {
    let fd = open_at(dir, name, OFlag::O_RDONLY)?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(4 << 20)
        .read_to_string(&mut text)
        .map_err(|e| gone(Path::new(name), e))?;
    Ok(text)
}

fn gone(what: &Path, e: std::io::Error) -> HelperError {
    HelperError::Resolve {
        uid: 0,
        reason: format!("the container's {}: {e}", what.display()),
    }
}

/// The mount points of a `mountinfo` table (field 5, its octal escapes undone).
pub fn mount_points(table: &str) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// Undoes the kernel's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_field_five_unescaped() {
        let table = "22 1 0:21 / / rw - overlay overlay rw\n\
                     23 22 8:1 /x /home/a\\040b rw - ext4 /dev/sda1 rw\n";
        assert_eq!(
            mount_points(table),
            vec![PathBuf::from("/"), PathBuf::from("/home/a b")]
        );
    }
}
