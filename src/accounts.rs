//! The container's accounts: the image's own `/etc/passwd`, `/etc/group` and `/etc/shells`
//! with the user merged in. Shared by the launcher and the root helper.

use crate::docker::{DockerError, Engine, FileUpload};
use crate::identity::Identity;

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
