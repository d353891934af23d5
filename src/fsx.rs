//! Two file primitives every writer of the user's folders shares: a lock file that is never
//! a link, and a file replaced whole (readers see the old or the new, never half).

use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Opens (creating, mode 0600) `path` without following a link there and takes its
/// exclusive lock, waiting for it; released when the result is dropped. The file is open
/// for reading and writing, so a lock file can also be the record it guards.
pub fn lock(path: &Path) -> io::Result<Flock<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e.into())
}

/// Replaces `path` whole with `content` and `mode`: a temporary file beside it (named for
/// this process, so two writers never share one), then a rename.
pub fn write_whole(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let tmp = path.with_extension(format!("mnd-tmp-{}", std::process::id()));
    let written = fs::write(&tmp, content)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// The content of `path`, opened without following a link there.
pub fn read_no_follow(path: &Path) -> io::Result<Vec<u8>> {
    let mut content = Vec::new();
    io::Read::read_to_end(
        &mut OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?,
        &mut content,
    )?;
    Ok(content)
}

/// Makes (0700) a folder of root's records and checks it is root's and writable by nobody
/// else, whoever made it.
pub fn roots_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} must be a folder of root's that nobody else can write",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_never_locked_and_a_whole_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "theirs").unwrap();
        let link = dir.path().join("lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(lock(&link).is_err());
        let own = dir.path().join("own.lock");
        drop(lock(&own).unwrap());
        assert_eq!(
            fs::metadata(&own).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let f = dir.path().join("file");
        write_whole(&f, b"one", 0o644).unwrap();
        write_whole(&f, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 4);
    }
}
