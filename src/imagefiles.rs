//! An image's own small files (its `/etc/passwd`, `/etc/group`), read from its overlay2
//! layers in Docker's storage, without creating, starting or mounting anything. Docker's
//! archive API walks the image's `/etc` in a way that hangs on a FIFO there (seen with
//! Docker 20.10), and dockerd itself opens the image's account files when it starts a
//! container; so a hostile image must be found out before Docker touches it.
//!
//! Each layer is looked at from the top: a path component is opened for its identity only
//! (`O_PATH`, no link followed, never leaving the layer), an overlay whiteout (a 0:0
//! device) or an opaque folder ends the search, and only a regular file is ever opened for
//! reading (never a FIFO, a device or a link, whatever the image holds).

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use nix::sys::stat::{fstat, FileStat, SFlag};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Largest file read: an account file larger than this is refused (it would be copied
/// into root's folders for every step).
const LIMIT: u64 = 1 << 20;

/// Why an image's file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    /// What the image holds there is not a regular file.
    #[error("{path} in the image is {kind}, not a regular file: such an image is refused. Fix: an image whose {path} is a regular file")]
    NotAFile {
        /// The path in the image.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// Docker's storage could not be read.
    #[error("reading {path} of the image from Docker's storage: {source}")]
    Io {
        /// The path in the image.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The text of `path` (absolute, in the image) from `layers` (top first), `None` when the
/// image has no such file.
pub fn read(layers: &[PathBuf], path: &str) -> Result<Option<String>, ImageFileError> {
    let io = |source: std::io::Error| ImageFileError::Io {
        path: path.to_string(),
        source,
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for layer in layers {
        match in_layer(layer, &parts, path)? {
            Look::Here(fd) => return read_file(&fd).map(Some).map_err(io),
            Look::Gone => return Ok(None),
            Look::Below => {}
        }
    }
    Ok(None)
}

/// What is at `path` in the image must be absent or of `kind` (`S_IFREG`, `S_IFDIR`).
pub fn expect_kind(layers: &[PathBuf], path: &str, kind: u32) -> Result<(), ImageFileError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for layer in layers {
        match in_layer_any(layer, &parts, path)? {
            Some(Some(st)) if st.st_mode & libc::S_IFMT == kind => return Ok(()),
            Some(Some(st)) => {
                return Err(ImageFileError::NotAFile {
                    path: path.to_string(),
                    kind: describe(SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT)),
                })
            }
            Some(None) => return Ok(()),
            None => {}
        }
    }
    Ok(())
}

/// What one layer has at `parts`: `None` when it says nothing, `Some(None)` when it
/// removes the path, `Some(Some(stat))` when it has it.
fn in_layer_any(
    layer: &Path,
    parts: &[&str],
    path: &str,
) -> Result<Option<Option<FileStat>>, ImageFileError> {
    let io = |source: std::io::Error| ImageFileError::Io {
        path: path.to_string(),
        source,
    };
    let mut at = open_layer(layer).map_err(io)?;
    for part in parts {
        at = match open(&at, Path::new(part)) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // A component above that is no folder (a link): the path is not there.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
    }
    let st = fstat(&at).map_err(|e| io(e.into()))?;
    Ok(Some((!is_whiteout(&st)).then_some(st)))
}

/// A layer's own folder, Docker's (named by Docker's inspect), opened with no link.
fn open_layer(layer: &Path) -> std::io::Result<OwnedFd> {
    Ok(openat2(
        AT_FDCWD,
        layer,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS),
    )?)
}

/// What one layer says of a path.
enum Look {
    /// The file is in this layer.
    Here(OwnedFd),
    /// This layer removes it (a whiteout, or an opaque folder without it).
    Gone,
    /// This layer says nothing: look in the one below.
    Below,
}

fn in_layer(layer: &Path, parts: &[&str], path: &str) -> Result<Look, ImageFileError> {
    let io = |source: std::io::Error| ImageFileError::Io {
        path: path.to_string(),
        source,
    };
    let mut dir = open_layer(layer).map_err(io)?;
    let mut opaque = false;
    for (i, part) in parts.iter().enumerate() {
        let fd = match open(&dir, Path::new(part)) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(if opaque { Look::Gone } else { Look::Below })
            }
            Err(e) => return Err(io(e)),
        };
        let st = fstat(&fd).map_err(|e| io(e.into()))?;
        let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        if is_whiteout(&st) {
            return Ok(Look::Gone);
        }
        let last = i + 1 == parts.len();
        let shown = format!("/{}", parts[..=i].join("/"));
        match (last, kind) {
            (false, SFlag::S_IFDIR) => {
                opaque = opaque || is_opaque(&fd);
                dir = fd;
            }
            (true, SFlag::S_IFREG) => return Ok(Look::Here(fd)),
            (_, other) => {
                return Err(ImageFileError::NotAFile {
                    path: shown,
                    kind: describe(other),
                })
            }
        }
    }
    Ok(Look::Below)
}

/// Opens `name` under `dir` for its identity only: no link followed (a link is itself
/// opened), never above `dir`, never onto another file system.
fn open<Fd: std::os::fd::AsFd>(dir: Fd, name: &Path) -> std::io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    Ok(openat2(dir, name, how)?)
}

/// Overlay's mark of a removed file: a character device 0:0.
fn is_whiteout(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Overlay's mark of a folder that hides the layers below.
fn is_opaque(fd: &OwnedFd) -> bool {
    let path = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
    ["trusted.overlay.opaque\0", "user.overlay.opaque\0"]
        .iter()
        .any(|name| {
            let mut value = [0u8; 1];
            // SAFETY: NUL-terminated strings and a buffer of the length given.
            let n = unsafe {
                libc::getxattr(
                    path.as_ptr().cast(),
                    name.as_ptr().cast(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            n == 1 && value[0] == b'y'
        })
}

fn describe(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFLNK => "a link",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFCHR | SFlag::S_IFBLK => "a device",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFDIR => "a folder",
        _ => "not a file",
    }
}

/// Reads the regular file `fd` holds (by identity), at most `LIMIT` bytes. Reopened with
/// `O_NONBLOCK | O_NOCTTY`: it was checked to be a regular file, and these keep it harmless
/// should it not be.
fn read_file(fd: &OwnedFd) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let mut text = String::new();
    file.take(LIMIT + 1).read_to_string(&mut text)?;
    if text.len() as u64 > LIMIT {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB: such an image is refused",
            LIMIT >> 10
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(root: &Path, name: &str) -> PathBuf {
        let l = root.join(name);
        std::fs::create_dir_all(l.join("etc")).unwrap();
        l
    }

    #[test]
    fn the_top_layer_that_has_the_file_wins_and_a_whiteout_removes_it() {
        let t = tempfile::tempdir().unwrap();
        let (top, low) = (layer(t.path(), "top"), layer(t.path(), "low"));
        std::fs::write(low.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(low.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(top.join("etc/group"), "root:x:0:\nsshd:x:101:\n").unwrap();
        let layers = vec![top.clone(), low];
        assert_eq!(
            read(&layers, "/etc/passwd").unwrap().as_deref(),
            Some("root:x:0:0::/root:/bin/sh\n")
        );
        assert!(read(&layers, "/etc/group")
            .unwrap()
            .unwrap()
            .contains("sshd"));
        assert_eq!(read(&layers, "/etc/shells").unwrap(), None);
        nix::sys::stat::mknod(
            &top.join("etc/passwd"),
            SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        assert_eq!(read(&layers, "/etc/passwd").unwrap(), None);
    }

    #[test]
    fn fifos_devices_and_links_are_refused_unopened() {
        let t = tempfile::tempdir().unwrap();
        let top = layer(t.path(), "top");
        nix::unistd::mkfifo(
            &top.join("etc/group"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/shadow", top.join("etc/passwd")).unwrap();
        let layers = vec![top];
        let e = read(&layers, "/etc/group").unwrap_err().to_string();
        assert!(e.contains("/etc/group in the image is a FIFO"), "{e}");
        let e = read(&layers, "/etc/passwd").unwrap_err().to_string();
        assert!(e.contains("/etc/passwd in the image is a link"), "{e}");
        let linked = layer(t.path(), "linked-etc");
        std::fs::remove_dir(linked.join("etc")).unwrap();
        std::os::unix::fs::symlink("/", linked.join("etc")).unwrap();
        let e = read(&[linked], "/etc/passwd").unwrap_err().to_string();
        assert!(e.contains("/etc in the image is a link"), "{e}");
    }

    #[test]
    fn where_roots_files_go_the_image_may_have_only_a_file_or_a_folder() {
        let t = tempfile::tempdir().unwrap();
        let top = layer(t.path(), "top");
        assert!(expect_kind(std::slice::from_ref(&top), "/.mnd-init", libc::S_IFREG).is_ok());
        std::fs::create_dir(top.join(".mnd")).unwrap();
        assert!(expect_kind(std::slice::from_ref(&top), "/.mnd", libc::S_IFDIR).is_ok());
        std::os::unix::fs::symlink("/home/dave/x", top.join(".mnd-init")).unwrap();
        let e = expect_kind(&[top], "/.mnd-init", libc::S_IFREG)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/.mnd-init in the image is a link"), "{e}");
    }
}
