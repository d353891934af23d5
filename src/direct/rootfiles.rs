//! Root's own files for a direct-mode container, made where only root reaches and handed to
//! Docker as read-only mounts at create time: root never opens, writes or chowns a path
//! inside a container (where the user's image and mounts decide what a path is).
//!
//! - The accounts: the image's `/etc/passwd`, `/etc/group` and `/etc/shells` are read as
//!   data from its layers in Docker's storage (`imagefiles`: only a regular file is ever
//!   opened), or on other storage through Docker's archive API within a bound, once per
//!   image and node, cached by image id; the user's lines are merged in and the two files
//!   written under `/run/mnd-srun/containers/NAME/`.
//! - The init: a static program of the install's (`initprog`), written once per build under
//!   `/run/mnd-srun/init/`; the container's main process is never a program of the image's.

use super::HelperError;
use crate::accounts::{account_files, ImageAccounts};
use crate::docker::{Engine, ImageFacts};
use crate::identity::Identity;
use crate::plan::direct::Declared;
use crate::spec::{labels, ContainerSpec};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Root's folder of each container's files, by container name.
const CONTAINERS: &str = "/run/mnd-srun/containers";

/// Root's folder of the init program.
const INIT_DIR: &str = "/run/mnd-srun/init";

/// Root's cache of images' own account files, by image id.
const IMAGE_ACCOUNTS: &str = "/var/lib/mnd-srun/image-accounts";

/// Bumped when what is cached of an image, or the rules it was read under, change.
const CACHE_FORMAT: &str = "v1";

/// Makes root's files for container `name` of `user` on `image`.
pub async fn declare(
    engine: &Engine,
    spec: &ContainerSpec,
    user: &Identity,
    image: &ImageFacts,
) -> Result<Declared, HelperError> {
    let name = &spec.name;
    let accounts = image_accounts(engine, spec, image).await?;
    let files = account_files(user, &accounts);
    let name = name.to_string();
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<Declared> {
        let dir = fresh_dir(&Path::new(CONTAINERS).join(&name))?;
        let [passwd, group] = files;
        Ok(Declared {
            passwd: write_new(&dir.join("passwd"), passwd.content.as_bytes(), 0o644)?,
            group: write_new(&dir.join("group"), group.content.as_bytes(), 0o644)?,
            init: init_program()?,
        })
    })
    .await
    .map_err(|e| HelperError::Placing(e.to_string()))?;
    written.map_err(|e| HelperError::Placing(e.to_string()))
}

/// The image's account files: from root's cache, else read once and cached.
async fn image_accounts(
    engine: &Engine,
    spec: &ContainerSpec,
    image: &ImageFacts,
) -> Result<ImageAccounts, HelperError> {
    let key: String = image
        .id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let cached = Path::new(IMAGE_ACCOUNTS).join(format!("{key}.{CACHE_FORMAT}.json"));
    if let Some(found) = std::fs::read(&cached)
        .ok()
        .and_then(|b| serde_json::from_slice::<[String; 3]>(&b).ok())
    {
        let [passwd, group, shells] = found;
        return Ok(ImageAccounts {
            passwd,
            group,
            shells,
        });
    }
    let accounts = match image.layers.is_empty() {
        false => from_layers(image.layers.clone()).await?,
        true => through_docker(engine, spec, &key, image).await?,
    };
    let text = serde_json::to_vec(&[&accounts.passwd, &accounts.group, &accounts.shells])
        .unwrap_or_default();
    let stored = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(IMAGE_ACCOUNTS)
        .and_then(|()| replace_file(&cached, &text, 0o600));
    if let Err(e) = stored {
        log::warn!("caching the accounts of image {}: {e}", image.id);
    }
    Ok(accounts)
}

/// The account files from the image's overlay2 layers (`imagefiles`): nothing of Docker's
/// runs, nothing but a regular file is opened.
async fn from_layers(layers: Vec<PathBuf>) -> Result<ImageAccounts, HelperError> {
    let read = tokio::task::spawn_blocking(move || {
        let file = |p: &str| crate::imagefiles::read(&layers, p).map(Option::unwrap_or_default);
        // Where root's init and the user's folder go: nothing there may lead elsewhere
        // (a link would make runc mount, and run, another file).
        crate::imagefiles::expect_kind(&layers, crate::plan::policy::INIT_TARGET, libc::S_IFREG)?;
        crate::imagefiles::expect_kind(&layers, crate::plan::policy::PRIVATE_DIR, libc::S_IFDIR)?;
        Ok::<_, crate::imagefiles::ImageFileError>(ImageAccounts {
            passwd: file("/etc/passwd")?,
            group: file("/etc/group")?,
            shells: file("/etc/shells")?,
        })
    })
    .await
    .map_err(|e| HelperError::Placing(e.to_string()))?;
    read.map_err(|e| HelperError::Placing(e.to_string()))
}

/// Longest Docker may take to hand over the account files of an image not on overlay2.
const READ_TIME: Duration = Duration::from_secs(10);

/// The account files through Docker's archive API, from a container of the image that never
/// starts (labelled with the job, so the Epilog removes it if the helper dies first), within
/// `READ_TIME`: on storage other than overlay2 (the containerd image store), where the
/// layers are not plain folders.
async fn through_docker(
    engine: &Engine,
    spec: &ContainerSpec,
    key: &str,
    image: &ImageFacts,
) -> Result<ImageAccounts, HelperError> {
    let reader = format!(
        "mnd-accounts-{}-{}",
        &key[key.len().saturating_sub(12)..],
        std::process::id()
    );
    let labels: BTreeMap<String, String> = spec
        .labels
        .iter()
        .filter(|(k, _)| [labels::JOB, labels::UID, labels::USER].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain([(labels::ROLE.to_string(), "accounts".to_string())])
        .collect();
    engine.create_idle(&reader, &image.id, &labels).await?;
    let read = tokio::time::timeout(
        READ_TIME,
        crate::accounts::read_image_accounts(engine, &reader),
    )
    .await;
    let _ = engine.remove(&reader).await;
    match read {
        Ok(accounts) => Ok(accounts?),
        Err(_) => Err(HelperError::Placing(format!(
            "Docker did not hand over the image's /etc/passwd and /etc/group within {} s (a FIFO there?); such an image is refused",
            READ_TIME.as_secs()
        ))),
    }
}

/// The init program, written once under root's folder (by content: a new build writes a
/// new file, a running container keeps the one it has).
fn init_program() -> std::io::Result<PathBuf> {
    let path = Path::new(INIT_DIR).join(crate::initprog::file_name());
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return Ok(path);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(INIT_DIR)?;
    // Execute-only: a process running a program it cannot read is not dumpable, so the
    // user cannot open /proc/PID/root of the container's init (and reach a mount there in
    // the moment between a start and the check that removes a container).
    replace_file(&path, crate::initprog::PROGRAM, 0o111)?;
    Ok(path)
}

/// An empty folder of root's at `dir` (a leftover of a container of the same name, from a
/// requeued job, is replaced); its parents made 0700.
fn fresh_dir(dir: &Path) -> std::io::Result<PathBuf> {
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new().mode(0o755).create(dir)?;
    Ok(dir.to_path_buf())
}

/// Writes a new file (`O_EXCL`, no link followed) with `mode`.
fn write_new(path: &Path, content: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(content)?;
    Ok(path.to_path_buf())
}

/// Writes `path` whole, with `mode`: a new file beside it, renamed over it.
fn replace_file(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, content, mode)?;
    std::fs::rename(&tmp, path)
}

/// Removes root's files of container `name` (its start failed, or it was removed).
pub fn remove(name: &str) {
    let _ = std::fs::remove_dir_all(Path::new(CONTAINERS).join(name));
}

/// A folder this young may belong to a container being made right now.
const YOUNG: Duration = Duration::from_secs(120);

/// Removes root's files of every container that no longer exists on this node (a step's
/// start and end, the Epilog: a step whose init was killed at its end leaves its folder
/// until then); returns how many.
pub async fn sweep_containers(engine: &Engine) -> usize {
    let old = |e: &std::fs::DirEntry| {
        e.metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > YOUNG)
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(CONTAINERS)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if old(&entry)
            && matches!(engine.found(&name).await, Ok(None))
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// [`sweep_containers`], and the cached accounts of images no longer on this node (the
/// Epilog, and a step's end when its container had to be removed by name).
pub async fn sweep(engine: &Engine) -> usize {
    let mut removed = sweep_containers(engine).await;
    for entry in std::fs::read_dir(IMAGE_ACCOUNTS)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(hex) = name
            .split('.')
            .next()
            .and_then(|k| k.strip_prefix("sha256"))
        else {
            continue;
        };
        if !engine.has_image(&format!("sha256:{hex}")).await
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}
