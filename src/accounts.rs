//! The container's accounts: the image's own `/etc/passwd`, `/etc/group` and `/etc/shells`
//! with the user merged in. Shared by the launcher and the root helper.

use crate::docker::{DockerError, Engine, FileUpload};
use crate::identity::Identity;
use std::path::Path;

/// The container's `/etc/passwd` and `/etc/group` (its own layer: no mount may cover /etc):
/// the image's accounts with the user's merged in.
pub fn account_files(user: &Identity, image: &ImageAccounts) -> [FileUpload; 2] {
    let shell = user.container_shell(&image.shells);
    [
        FileUpload {
            path: "/etc/passwd".into(),
            content: user.merge_passwd(&image.passwd, &shell),
            mode: 0o644,
        },
        FileUpload {
            path: "/etc/group".into(),
            content: user.merge_group(&image.group),
            mode: 0o644,
        },
    ]
}

/// What the container's accounts are made from: the image's own files.
pub struct ImageAccounts {
    pub passwd: String,
    pub group: String,
    pub shells: String,
}

/// The files of the image that `ImageAccounts` holds.
pub const ACCOUNT_FILES: [&str; 3] = ["passwd", "group", "shells"];

/// The image's account files, read from a created container.
pub async fn read_image_accounts(
    engine: &Engine,
    name: &str,
) -> Result<ImageAccounts, DockerError> {
    let (passwd, group, shells) = tokio::join!(
        engine.read_file(name, "/etc/passwd"),
        engine.read_file(name, "/etc/group"),
        engine.read_file(name, "/etc/shells")
    );
    Ok(ImageAccounts {
        passwd: passwd?.unwrap_or_default(),
        group: group?.unwrap_or_default(),
        shells: shells?.unwrap_or_default(),
    })
}

/// The cache of image accounts under `root` (content-addressed by image id, so never stale):
/// what `owner` may trust. Nothing read from it grants anything (`Identity::merge_passwd`,
/// `merge_group`), and a cache folder anyone but `owner` (or root) could write is ignored.
pub struct AccountCache<'a> {
    /// The cache's folder.
    pub root: &'a Path,
    /// Whose it is.
    pub owner: u32,
}

impl AccountCache<'_> {
    /// The accounts of image `image_id`: from the cache when there, else read from the
    /// created container `name` and cached (best effort: a cache that cannot be written
    /// costs a read next time, never the start).
    pub async fn accounts(
        &self,
        engine: &Engine,
        name: &str,
        image_id: &str,
    ) -> Result<ImageAccounts, DockerError> {
        let dir = self.root.join(image_id.replace(':', "-"));
        let ours = |p: &Path| p.is_dir() && crate::ssh::check_safe(p, self.owner, false).is_ok();
        if ours(self.root) && ours(&dir) {
            let read = |f: &str| std::fs::read_to_string(dir.join(f));
            if let (Ok(passwd), Ok(group), Ok(shells)) =
                (read("passwd"), read("group"), read("shells"))
            {
                return Ok(ImageAccounts {
                    passwd,
                    group,
                    shells,
                });
            }
        }
        let accounts = read_image_accounts(engine, name).await?;
        if let Err(e) = self.store(&accounts, &dir) {
            log::debug!("image account cache not written: {e}");
        }
        Ok(accounts)
    }

    /// Writes a temporary folder, then renames it into place.
    fn store(&self, accounts: &ImageAccounts, dir: &Path) -> std::io::Result<()> {
        crate::ssh::create_private_dir(self.root)?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(self.root)?;
        for (file, text) in
            ACCOUNT_FILES
                .iter()
                .zip([&accounts.passwd, &accounts.group, &accounts.shells])
        {
            std::fs::write(tmp.path().join(file), text)?;
        }
        let tmp = tmp.keep();
        if std::fs::rename(&tmp, dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Ok(())
    }
}
