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

/// The identity of what a process's container shows at `target`: resolved inside its root
/// (`/proc/PID/root`), its own links staying inside it.
pub fn id_in_root_of(pid: i32, target: &Path) -> std::io::Result<FileId> {
    let root = openat2(
        AT_FDCWD,
        format!("/proc/{pid}/root").as_str(),
        OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC),
    )?;
    let inside = target.strip_prefix("/").unwrap_or(target);
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(&root, inside, how)?;
    Ok(FileId::of(&fstat(&fd)?))
}

/// A process's root (`/proc/PID/root`), to open paths inside it as the process sees them.
fn root_of(pid: i32) -> std::io::Result<OwnedFd> {
    Ok(openat2(
        AT_FDCWD,
        format!("/proc/{pid}/root").as_str(),
        OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC),
    )?)
}

/// Opens `path` inside a process's root with no symbolic link anywhere in it (a link the
/// image planted there is refused, never followed onto the host).
fn open_in_root(root: &OwnedFd, path: &Path, flags: OFlag, mode: u32) -> std::io::Result<OwnedFd> {
    let inside = match path.strip_prefix("/").unwrap_or(path) {
        p if p.as_os_str().is_empty() => Path::new("."),
        p => p,
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(nix::sys::stat::Mode::from_bits_truncate(mode))
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    Ok(openat2(root, inside, how)?)
}

/// Reads a small text file of a process's container (`None` when it does not exist).
pub fn read_in_root_of(pid: i32, path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let root = root_of(pid)?;
    match open_in_root(&root, path, OFlag::O_RDONLY, 0) {
        Ok(fd) => {
            let mut text = String::new();
            std::fs::File::from(fd)
                .take(1 << 20)
                .read_to_string(&mut text)?;
            Ok(Some(text))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces a file of a process's container with `content` (root's, `mode`), its folder
/// and the file reached with no link.
pub fn write_in_root_of(pid: i32, path: &Path, content: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let root = root_of(pid)?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC;
    let mut file = std::fs::File::from(open_in_root(&root, path, flags, mode)?);
    file.write_all(content.as_bytes())?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Makes the folder `path` of a process's container `uid`:`gid`'s, mode 0700, creating it
/// when missing; a link anywhere on the way, or a file there, is refused.
pub fn own_dir_in_root_of(pid: i32, path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = root_of(pid)?;
    let parent = open_in_root(
        &root,
        path.parent().unwrap_or(Path::new("/")),
        OFlag::O_PATH | OFlag::O_DIRECTORY,
        0,
    )?;
    let name = path.file_name().unwrap_or_default();
    match nix::sys::stat::mkdirat(
        &parent,
        name,
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    ) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = open_in_root(&root, path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
    nix::unistd::fchown(&dir, Some(uid.into()), Some(gid.into()))?;
    std::fs::File::from(dir).set_permissions(std::fs::Permissions::from_mode(0o700))
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

    #[test]
    fn a_folder_seen_through_a_process_root_has_its_identity() {
        let t = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(t.path()).unwrap();
        let me = std::process::id() as i32;
        let (id, _) = stat_no_links(&real).unwrap();
        assert_eq!(id_in_root_of(me, &real).unwrap(), id);
    }

    #[test]
    fn files_go_into_a_process_root_by_real_paths_only() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(t.path()).unwrap();
        let me = std::process::id() as i32;
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        std::fs::create_dir(real.join("etc")).unwrap();
        write_in_root_of(
            me,
            &real.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
            0o644,
        )
        .unwrap();
        let read = read_in_root_of(me, &real.join("etc/passwd")).unwrap();
        assert_eq!(read.as_deref(), Some("root:x:0:0::/root:/bin/sh\n"));
        assert_eq!(read_in_root_of(me, &real.join("etc/none")).unwrap(), None);
        // A link the image planted is refused, never followed.
        let outside = real.join("outside");
        std::fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, real.join("etc/group")).unwrap();
        assert!(write_in_root_of(me, &real.join("etc/group"), "x", 0o644).is_err());
        std::os::unix::fs::symlink(real.join("etc"), real.join("etc-link")).unwrap();
        assert!(write_in_root_of(me, &real.join("etc-link/passwd"), "x", 0o644).is_err());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        own_dir_in_root_of(me, &real.join("mnd"), uid, gid).unwrap();
        // Directly under the root, as the helper's /.mnd.
        let fake_root = real.join("root");
        std::fs::create_dir(&fake_root).unwrap();
        let root = root_of(me).unwrap();
        let inside =
            open_in_root(&root, &fake_root, OFlag::O_PATH | OFlag::O_DIRECTORY, 0).unwrap();
        let top = open_in_root(
            &inside,
            Path::new("/"),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            0,
        );
        assert!(top.is_ok(), "the root itself opens");
        let meta = std::fs::metadata(real.join("mnd")).unwrap();
        assert_eq!(
            (meta.uid(), meta.permissions().mode() & 0o777),
            (uid, 0o700)
        );
        std::os::unix::fs::symlink(&outside, real.join("mnd-link")).unwrap();
        assert!(own_dir_in_root_of(me, &real.join("mnd-link"), uid, gid).is_err());
    }
}
