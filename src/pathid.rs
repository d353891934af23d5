//! Files by identity (device and inode), opened with no symbolic link anywhere in the
//! path. The root helper hands dockerd path strings, which dockerd resolves again, as root,
//! later: a user who swaps a folder for a link in between would get anything mounted. So
//! every mount source's identity is taken when it is checked, and after the container
//! starts what is mounted at each target must be that same file.

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use nix::sys::stat::{fstat, FileStat};
use std::os::fd::OwnedFd;
use std::path::Path;

/// A file's identity on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl FileId {
    fn of(st: &FileStat) -> Self {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// Opens `path` (absolute) for its identity only (`O_PATH`), refusing a symbolic link in
/// any part of it (`ELOOP`).
pub fn open_no_links(path: &Path) -> std::io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    Ok(openat2(AT_FDCWD, path, how)?)
}

/// The identity and status of `path`, opened with no symbolic link in it.
pub fn stat_no_links(path: &Path) -> std::io::Result<(FileId, FileStat)> {
    let fd = open_no_links(path)?;
    let st = fstat(&fd)?;
    Ok((FileId::of(&st), st))
}

/// Why a folder above a private file could let someone else swap it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeParent {
    /// The folder.
    pub path: std::path::PathBuf,
    /// Who owns it, when that is the problem.
    pub owner: Option<u32>,
    /// Its mode, when that is the problem.
    pub mode: u32,
}

/// Walks the existing folders above `path` (up to and including `stop`, else to `/`): each
/// must be `uid`'s or root's, and writable by nobody else unless it is root's and sticky
/// (`/tmp`, a site's `/scratch`: nobody can rename another's entry there). The one walk for
/// every private thing mnd-srun keeps (ssh material, the image share).
pub fn safe_parents(path: &Path, uid: u32, stop: Option<&Path>) -> Result<(), UnsafeParent> {
    use std::os::unix::fs::MetadataExt;
    let mut past_stop = false;
    for parent in path.ancestors().skip(1) {
        if past_stop || parent.as_os_str().is_empty() {
            break;
        }
        past_stop = stop == Some(parent);
        let Ok(meta) = std::fs::metadata(parent) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if meta.uid() != uid && meta.uid() != 0 {
            return Err(UnsafeParent {
                path: parent.to_path_buf(),
                owner: Some(meta.uid()),
                mode,
            });
        }
        let sticky_root = meta.uid() == 0 && mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !sticky_root {
            return Err(UnsafeParent {
                path: parent.to_path_buf(),
                owner: None,
                mode,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_anywhere_in_the_path_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir(real.join("data")).unwrap();
        std::os::unix::fs::symlink(real.join("data"), real.join("link")).unwrap();
        assert!(stat_no_links(&real.join("data")).is_ok());
        let e = stat_no_links(&real.join("link")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        std::fs::create_dir(real.join("data/sub")).unwrap();
        assert!(stat_no_links(&real.join("link/sub")).is_err());
    }

    #[test]
    fn parents_others_can_write_are_unsafe_but_a_sticky_root_folder_is_not() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(t.path()).unwrap();
        let me = nix::unistd::getuid().as_raw();
        std::fs::create_dir_all(real.join("a/b")).unwrap();
        assert!(safe_parents(&real.join("a/b/file"), me, Some(&real)).is_ok());
        std::fs::set_permissions(real.join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = safe_parents(&real.join("a/b/file"), me, Some(&real)).unwrap_err();
        assert_eq!((e.path, e.owner, e.mode), (real.join("a"), None, 0o777));
        // /tmp is root's and sticky.
        assert!(safe_parents(Path::new("/tmp/x/y"), me, None).is_ok());
    }
}
