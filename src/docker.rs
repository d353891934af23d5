//! The only module that talks to Docker (Engine API through bollard, never the CLI).

use crate::spec::Pull;
use crate::spec::{ContainerSpec, Gpus};
use bollard::models::{
    ContainerCreateBody, ContainerSummary, DeviceMapping, DeviceRequest, HostConfig, Mount,
    MountBindOptions, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::pin::Pin;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::AsyncWrite;

/// A Docker operation that failed.
#[derive(Debug, Error)]
pub enum DockerError {
    /// The engine cannot be reached.
    #[error("cannot reach the Docker engine: {0}. Fix: check that dockerd runs on this node and that you may use /var/run/docker.sock (group docker)")]
    Unreachable(String),
    /// The image is not on the node and cannot be pulled.
    #[error("image '{image}' is not available: {reason}. Fix: load it on every node (docker load) or push it to a registry the nodes can reach")]
    Image {
        /// Image name.
        image: String,
        /// What Docker said.
        reason: String,
    },
    /// Any other API call failed.
    #[error("docker {action} failed: {reason}")]
    Api {
        /// What was attempted.
        action: String,
        /// What Docker said.
        reason: String,
    },
}

fn api(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    let action = action.into();
    move |e| DockerError::Api {
        action,
        reason: reason(&e),
    }
}

fn reason(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Said of a pull error where the connection to Docker broke off, not the registry refused.
const BROKE_OFF: &str = " (the connection to Docker broke off)";

/// Why a pull ended early.
struct PullFailure {
    error: DockerError,
    /// The connection to Docker broke off mid-way (worth another try): its cause.
    broke_off: Option<String>,
}

/// The connection to Docker itself failed (as opposed to Docker or the registry answering
/// with an error).
fn broke_off(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        e,
        E::HyperResponseError { .. } | E::IOError { .. } | E::RequestTimeoutError
    )
}

fn is_status(e: &bollard::errors::Error, codes: &[u16]) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if codes.contains(status_code))
}

/// A connection to this node's Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
}

/// The open stdin of a running container: dropping it (or the launcher dying) ends the
/// container, because its PID 1 exits at end of input.
pub struct Lifeline {
    input: Pin<Box<dyn AsyncWrite + Send>>,
}

impl Lifeline {
    /// Sends PID 1 its files, then its go (the launcher's entrypoint writes the files and
    /// waits for the go before sshd starts). See `setup_records` for the format.
    pub async fn send_setup(&mut self, files: &[FileUpload]) -> Result<(), DockerError> {
        use tokio::io::AsyncWriteExt;
        let gone = |e: std::io::Error| DockerError::Api {
            action: "write to the container's stdin".into(),
            reason: e.to_string(),
        };
        let records = setup_records(files)?;
        self.input
            .write_all(records.as_bytes())
            .await
            .map_err(gone)?;
        self.input.flush().await.map_err(gone)
    }
}

/// Files as a POSIX shell reads them from a stream: for each, `mnd-file PATH LINES` and
/// its lines (each ending in a newline); then `go`. Paths are the launcher's own, never a
/// user's; one with a blank in it is refused rather than split.
pub fn setup_records(files: &[FileUpload]) -> Result<String, DockerError> {
    let mut out = String::new();
    for f in files {
        if f.path.chars().any(|c| c.is_whitespace()) || !f.path.starts_with('/') {
            return Err(DockerError::Api {
                action: "setup of the container's files".into(),
                reason: format!(
                    "the path {:?} is not an absolute path without blanks",
                    f.path
                ),
            });
        }
        let mut text = f.content.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let lines = text.matches('\n').count();
        out.push_str(&format!("mnd-file {} {lines}\n{text}", f.path));
    }
    out.push_str("go\n");
    Ok(out)
}

/// What the launcher needs to know of an image.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// Content-addressed id ("sha256:..."): the same id is the same content.
    pub id: String,
    /// The image's `ENV`.
    pub env: Vec<String>,
    /// This call pulled it.
    pub pulled: bool,
    /// The image's `VOLUME`s.
    pub volumes: Vec<String>,
    /// The image's `WORKDIR`, if it sets one.
    pub workdir: Option<String>,
    /// Whether other nodes can pull it too.
    pub origin: Origin,
    /// Known here by its id alone (loaded untagged from an image share, so that no name
    /// changed): containers are made from the id.
    pub by_id_only: bool,
    /// Its names here: `repo:tag` and `repo@digest`.
    pub names: Vec<String>,
    /// It carries a user's-copy label (`mnd.accounts` or `mnd.base`, not empty).
    pub copy_labelled: bool,
    /// Its overlay2 layers in Docker's storage, top first (none on other storage).
    pub layers: Vec<std::path::PathBuf>,
    /// Its size unpacked, in bytes, as Docker counts it.
    pub size: u64,
}

/// An image's overlay2 layer folders, top first, from its graph driver data.
fn overlay_layers(driver: Option<&bollard::models::DriverData>) -> Vec<std::path::PathBuf> {
    let Some(driver) = driver.filter(|d| d.name == "overlay2") else {
        return vec![];
    };
    let data = &driver.data;
    data.get("UpperDir")
        .into_iter()
        .chain(data.get("LowerDir"))
        .flat_map(|dirs| dirs.split(':'))
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .collect()
}

/// Where an image came from, as far as this node's Docker tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Pulled from a registry: Docker's own image store keeps the digest it was pulled by.
    Registry,
    /// Built, loaded or committed here: Docker's own image store has no digest for it.
    Local,
    /// Docker's containerd image store names every image by its digest, pulled or not;
    /// only the registry can tell ([`Engine::registry_digest`]).
    Unknown,
}

impl Origin {
    /// The origin of image `id` with these repo digests (`repo@sha256:...`): on the
    /// containerd image store the id is itself the digest of the image's manifest.
    fn of(id: &str, repo_digests: &[String]) -> Origin {
        if repo_digests.is_empty() {
            Origin::Local
        } else if repo_digests
            .iter()
            .any(|d| d.rsplit_once('@').is_some_and(|(_, digest)| digest == id))
        {
            Origin::Unknown
        } else {
            Origin::Registry
        }
    }
}

/// A folder to create in a container, owned by someone other than root (a place the
/// container's user writes), with empty files of theirs in it (replacing any there).
pub struct OwnedFolder {
    /// Absolute path in the container.
    pub path: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Names of the empty files (mode 0644) in it.
    pub empty_files: Vec<String>,
}

/// A file to put into a container before it starts.
pub struct FileUpload {
    /// Absolute path in the container.
    pub path: String,
    /// Content.
    pub content: String,
    /// Mode bits.
    pub mode: u32,
}

/// Longest any one Docker call may take (but a pull, which may take as long as it makes
/// progress, the script's run, and waiting for a container's end, which are the job).
pub const CALL_TIME: Duration = Duration::from_secs(30);

/// Runs one Docker call with the `CALL_TIME` bound.
async fn within<T>(
    action: &str,
    call: impl std::future::Future<Output = T>,
) -> Result<T, DockerError> {
    tokio::time::timeout(CALL_TIME, call)
        .await
        .map_err(|_| DockerError::Api {
            action: action.into(),
            reason: format!(
                "dockerd gave no answer within {} s (overloaded or hung; `docker info` on this node tells)",
                CALL_TIME.as_secs()
            ),
        })
}

/// How far an image pull has come: a count that grows with every progress message, and a
/// summary for people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Progress messages seen so far.
    pub events: u64,
    /// "12.0/40.5 MB, 2/5 layers".
    pub summary: String,
}

/// A command started in a container by `Engine::exec`.
pub struct Started {
    id: String,
    /// Carries its input and output; resolves when its output ends (it exited).
    pub io: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// One mnd container as listed by `mnd ps`.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Container id (what removal uses: a name may be reused by a new container).
    pub id: String,
    /// Container name.
    pub name: String,
    /// Image it was created from.
    pub image: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Created, seconds since the epoch.
    pub created: i64,
    /// Docker's state ("running", "exited", ...).
    pub state: String,
}

/// A container found by name.
#[derive(Debug, Clone)]
pub struct Found {
    /// Docker's id.
    pub id: String,
    /// Its main process on this node, when it runs.
    pub pid: Option<i32>,
    /// Paused (`docker pause`, a suspended job): its processes are frozen.
    pub paused: bool,
    /// The image id it runs.
    pub image: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// The longest any one request may take, streams included (a 100 GB load at 100 MB/s).
const STREAM_BOUND: Duration = Duration::from_secs(4 * 3600);

impl Engine {
    /// Connects to the local engine and agrees on an API version.
    pub async fn connect() -> Result<Self, DockerError> {
        // bollard's own bound (120 s by default) covers a whole request until Docker answers:
        // a load or import answers only once it has read all of a 10 GB archive. Every call
        // is bounded here instead (`within`), and every stream by its progress.
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| DockerError::Unreachable(reason(&e)))?
            .with_timeout(STREAM_BOUND);
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| DockerError::Unreachable("no answer within 10 s".into()))?
            .map_err(|e| DockerError::Unreachable(reason(&e)))?;
        Ok(Engine { docker })
    }

    /// Makes sure the image is on this node (pulling per `pull`); returns its id and `ENV`.
    /// A pull may take as long as it keeps making progress (reported through `progress`);
    /// one that makes none for `stall` fails.
    pub async fn ensure_image(
        &self,
        image: &str,
        pull: Pull,
        who: &str,
        stall: Duration,
        progress: &tokio::sync::watch::Sender<PullReport>,
    ) -> Result<ImageFacts, DockerError> {
        let have = within("image inspect", self.docker.inspect_image(image)).await?;
        let pulled = !matches!((&have, pull), (Ok(_), Pull::Missing | Pull::Never));
        let info = match (have, pull) {
            (Ok(info), Pull::Missing | Pull::Never) => info,
            (Err(e), Pull::Never) => {
                return Err(DockerError::Image {
                    image: image.into(),
                    reason: format!("{} (and --pull=never)", reason(&e)),
                })
            }
            (_, Pull::Missing | Pull::Always) => {
                self.pull_retrying(image, who, stall, progress).await?;
                within("image inspect", self.docker.inspect_image(image))
                    .await?
                    .map_err(|e| DockerError::Image {
                        image: image.into(),
                        reason: reason(&e),
                    })?
            }
        };
        let config = info.config.unwrap_or_default();
        let labelled = |k: &str| {
            config
                .labels
                .as_ref()
                .and_then(|l| l.get(k))
                .is_some_and(|v| !v.is_empty())
        };
        Ok(ImageFacts {
            origin: Origin::of(
                info.id.as_deref().unwrap_or_default(),
                info.repo_digests.as_deref().unwrap_or_default(),
            ),
            by_id_only: false,
            copy_labelled: labelled(crate::spec::labels::ACCOUNTS)
                || labelled(crate::spec::labels::BASE),
            layers: overlay_layers(info.graph_driver.as_ref()),
            size: info.size.map_or(0, |s| s.max(0) as u64),
            names: info
                .repo_tags
                .iter()
                .flatten()
                .chain(info.repo_digests.iter().flatten())
                .cloned()
                .collect(),
            id: info.id.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
            pulled,
            volumes: config.volumes.unwrap_or_default(),
            workdir: config.working_dir.filter(|w| !w.is_empty()),
        })
    }

    /// `pull`, tried again (twice at most) when the connection to Docker broke off
    /// mid-way (seen under load: "bytes remaining on stream"); Docker keeps the layers it
    /// already has, so a new try goes on where the last one stopped. A registry's refusal
    /// is not tried again.
    async fn pull_retrying(
        &self,
        image: &str,
        who: &str,
        stall: Duration,
        report: &tokio::sync::watch::Sender<PullReport>,
    ) -> Result<(), DockerError> {
        let mut tries = 1;
        loop {
            match self.pull(image, who, stall, report).await {
                Err(PullFailure {
                    broke_off: Some(cause),
                    ..
                }) if tries < 3 => {
                    tries += 1;
                    eprintln!(
                        "mnd-srun ({who}): the pull of {image} broke off ({cause}); trying again"
                    );
                }
                other => return other.map_err(|f| f.error),
            }
        }
    }

    async fn pull(
        &self,
        image: &str,
        who: &str,
        stall: Duration,
        report: &tokio::sync::watch::Sender<PullReport>,
    ) -> Result<(), PullFailure> {
        use std::io::IsTerminal;
        let opts = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut stream = self.docker.create_image(Some(opts), None, None);
        let started = Instant::now();
        let terminal = std::io::stderr().is_terminal();
        // In place on a terminal; a plain line now and then under srun (output goes to a file).
        let every = if terminal {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        let mut last_report = Instant::now();
        let mut progress = PullProgress::default();
        let mut moved_at = Instant::now();
        log::info!("{who}: pulling {image}");
        loop {
            let left = stall.saturating_sub(moved_at.elapsed());
            let item = match tokio::time::timeout(left, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    return Err(PullFailure {
                        error: DockerError::Image {
                            image: image.into(),
                            reason: format!(
                                "the pull made no progress for {} s (at {}); the registry or the network stalled",
                                stall.as_secs(),
                                progress.summary()
                            ),
                        },
                        broke_off: None,
                    })
                }
            };
            let info = item.map_err(|e| {
                let (cause, broke) = (reason(&e), broke_off(&e));
                let marked = if broke { BROKE_OFF } else { "" };
                PullFailure {
                    error: DockerError::Image {
                        image: image.into(),
                        reason: format!("pull failed: {cause}{marked}"),
                    },
                    broke_off: broke.then_some(cause),
                }
            })?;
            let moved = progress.update(
                info.id.as_deref(),
                info.status.as_deref(),
                info.progress_detail
                    .as_ref()
                    .and_then(|d| Some((d.current?, d.total?))),
            );
            if moved {
                moved_at = Instant::now();
                report.send_modify(|r| {
                    r.events += 1;
                    r.summary = progress.summary();
                });
            }
            if last_report.elapsed() >= every {
                last_report = Instant::now();
                let line = format!(
                    "mnd-srun ({who}): pulling {image}: {} ({:.0} s)",
                    progress.summary(),
                    started.elapsed().as_secs_f64()
                );
                if terminal {
                    eprint!("\r{line}\x1b[K");
                } else {
                    eprintln!("{line}");
                }
            }
        }
        if terminal {
            eprint!("\r\x1b[K");
        }
        eprintln!(
            "mnd-srun ({who}): pulled {image} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Creates the container (not started) with stdin open, so it ends with its launcher.
    pub async fn create(
        &self,
        spec: &ContainerSpec,
        entrypoint: Vec<String>,
    ) -> Result<(), DockerError> {
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            user: Some(spec.user.clone()),
            env: Some(spec.env.clone()),
            entrypoint: Some(entrypoint),
            cmd: Some(vec![]),
            working_dir: Some(spec.workdir.display().to_string()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            open_stdin: Some(true),
            stdin_once: Some(true),
            attach_stdin: Some(true),
            tty: Some(false),
            // An image's HEALTHCHECK would run its program in the container outside Slurm's
            // cgroups, as the user, on Docker's clock: never.
            healthcheck: Some(bollard::models::HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }),
            host_config: Some(host_config(spec)),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let limited = spec.storage_size.is_some();
        let unlimited = |r: String| {
            DockerError::Api {
            action: format!("create of container {}", spec.name),
            reason: format!("{r} (the site's policy.writable_layer_size needs a storage driver that limits a container's size: overlay2 on xfs mounted with pquota, btrfs or zfs; ask your admin)"),
        }
        };
        if limited && self.ignores_size_limits().await {
            return Err(unlimited(
                "Docker's containerd image store takes a writable-layer size and ignores it".into(),
            ));
        }
        within("create", self.docker.create_container(Some(opts), body))
            .await?
            .map_err(|e| match reason(&e) {
                r if limited && r.contains("storage-opt") => unlimited(r),
                r => DockerError::Api {
                    action: format!("create of container {}", spec.name),
                    reason: r,
                },
            })?;
        Ok(())
    }

    /// What the engine says of itself (`docker version` and `docker info`), read-only, for
    /// `mnd doctor`.
    pub async fn describe(&self) -> Result<EngineDescription, DockerError> {
        let version = within("version", self.docker.version())
            .await?
            .map_err(api("version".to_string()))?;
        let info = within("info", self.docker.info())
            .await?
            .map_err(api("info".to_string()))?;
        let text = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(EngineDescription {
            version: text(info.server_version)
                .or(version.version)
                .unwrap_or_default(),
            api: version.api_version.unwrap_or_default(),
            driver: info.driver.unwrap_or_default(),
            driver_status: info
                .driver_status
                .unwrap_or_default()
                .into_iter()
                .filter_map(|pair| Some((pair.first()?.clone(), pair.get(1)?.clone())))
                .collect(),
            root_dir: std::path::PathBuf::from(info.docker_root_dir.unwrap_or_default()),
            cgroup_version: text(info.cgroup_version.map(|v| v.to_string())),
            cgroup_driver: text(info.cgroup_driver.map(|v| v.to_string())),
        })
    }

    /// The folders this Docker reads CDI specs from (`docker info`): none when CDI is off,
    /// or on an older Docker that does not say.
    pub async fn cdi_dirs(&self) -> Result<Vec<String>, DockerError> {
        let info = within("info", self.docker.info())
            .await?
            .map_err(api("info".to_string()))?;
        Ok(info.cdi_spec_dirs.unwrap_or_default())
    }

    /// Whether this Docker stores images in containerd's snapshotter, which accepts
    /// `--storage-opt size` and limits nothing (so a size limit must be refused, not
    /// trusted). A Docker that cannot tell is taken at its word at create.
    async fn ignores_size_limits(&self) -> bool {
        let Ok(Ok(info)) = within("info", self.docker.info()).await else {
            return false;
        };
        info.driver_status
            .unwrap_or_default()
            .iter()
            .any(|pair| pair.iter().any(|v| v.contains("containerd.snapshotter")))
    }

    /// Unpacks a tar archive at the container's `/`. A folder the image made a link or file
    /// (a hostile image's /etc -> /home/...) is refused rather than followed or replaced.
    async fn unpack_at_root(
        &self,
        name: &str,
        tar: Vec<u8>,
        what: &str,
    ) -> Result<(), DockerError> {
        let opts = UploadToContainerOptionsBuilder::default()
            .path("/")
            .no_overwrite_dir_non_dir("true")
            .build();
        within(
            "upload",
            self.docker
                .upload_to_container(name, Some(opts), bollard::body_full(tar.into())),
        )
        .await?
        .map_err(api(format!("upload of {what} into {name}")))
    }

    /// Whether image `id` is on this node.
    pub async fn has_image(&self, id: &str) -> bool {
        matches!(
            within("image inspect", self.docker.inspect_image(id)).await,
            Ok(Ok(_))
        )
    }

    /// Reads a text file from a (created or running) container; `None` when it does not exist.
    pub async fn read_file(&self, name: &str, path: &str) -> Result<Option<String>, DockerError> {
        let opts = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        // At most 8 MiB of archive is taken in (the image decides how big the file is).
        let limit = 8 << 20;
        let chunks = within("file read", async {
            let mut stream = self.docker.download_from_container(name, Some(opts));
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk?);
                if bytes.len() > limit {
                    break;
                }
            }
            Ok::<_, bollard::errors::Error>(bytes)
        })
        .await?;
        let bytes = match chunks {
            Ok(b) if b.len() > limit => {
                return Err(DockerError::Api {
                    action: format!("read of {path}"),
                    reason: format!(
                        "{path} in the image is larger than {} MiB: such an image is refused",
                        limit >> 20
                    ),
                })
            }
            Ok(b) => b,
            Err(e) if is_status(&e, &[404]) => return Ok(None),
            Err(e) => return Err(api(format!("read of {path}"))(e)),
        };
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries = archive.entries().map_err(|e| DockerError::Api {
            action: format!("read of {path}"),
            reason: e.to_string(),
        })?;
        // Only a regular file's content, and at most 4 MiB of it: the image decides what is
        // at the path. A link, a FIFO or a device is refused: dockerd itself opens the
        // image's /etc/passwd and /etc/group at start (and would hang on a FIFO), and the
        // container's own file is mounted over it (a link would move that mount).
        for entry in entries.flatten() {
            let kind = match entry.header().entry_type() {
                tar::EntryType::Regular => None,
                tar::EntryType::Symlink | tar::EntryType::Link => Some("a link"),
                tar::EntryType::Fifo => Some("a FIFO"),
                tar::EntryType::Char | tar::EntryType::Block => Some("a device"),
                _ => continue,
            };
            if let Some(kind) = kind {
                return Err(DockerError::Api {
                    action: format!("read of {path}"),
                    reason: format!("{path} in the image is {kind}, not a regular file: such an image is refused. Fix: an image whose {path} is a regular file"),
                });
            }
            let mut text = String::new();
            if std::io::Read::read_to_string(&mut std::io::Read::take(entry, 4 << 20), &mut text)
                .is_ok()
            {
                return Ok(Some(text));
            }
        }
        Ok(None)
    }

    /// Puts files into a container (owned by root), creating parent folders.
    pub async fn upload(&self, name: &str, files: &[FileUpload]) -> Result<(), DockerError> {
        self.upload_with_folders(name, &[], files).await
    }

    /// `upload`, first creating `folders` (mode 0755) with their owners.
    pub async fn upload_with_folders(
        &self,
        name: &str,
        folders: &[OwnedFolder],
        files: &[FileUpload],
    ) -> Result<(), DockerError> {
        let tar = files_tar(folders, files)?;
        self.unpack_at_root(name, tar, "files").await
    }

    /// Creates a container of `image` that is never started: a source for reading its
    /// files and for `commit_as`. It carries `labels` (which a commit keeps).
    pub async fn create_idle(
        &self,
        name: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), DockerError> {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["/nonexistent".into()]),
            cmd: Some(vec![]),
            network_disabled: Some(true),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        within("create", self.docker.create_container(Some(opts), body))
            .await?
            .map_err(api(format!("create of container {name}")))?;
        Ok(())
    }

    /// The images on this node without a name that carry every label (`key=value` or
    /// `key`): their ids and labels.
    pub async fn unnamed_images(
        &self,
        labels: &[String],
    ) -> Result<Vec<(String, HashMap<String, String>)>, DockerError> {
        let filters = HashMap::from([("label".to_string(), labels.to_vec())]);
        let opts = ListImagesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let found = within("image list", self.docker.list_images(Some(opts)))
            .await?
            .map_err(api("list of images"))?;
        Ok(found
            .into_iter()
            .filter(|i| !has_name(i))
            .map(|i| (i.id, i.labels))
            .collect())
    }

    /// The ids of the images on this node that have a name (`repo:tag`).
    pub async fn named_images(&self) -> Result<std::collections::HashSet<String>, DockerError> {
        let found = within(
            "image list",
            self.docker
                .list_images(None::<bollard::query_parameters::ListImagesOptions>),
        )
        .await?
        .map_err(api("list of images"))?;
        Ok(found.into_iter().filter(has_name).map(|i| i.id).collect())
    }

    /// Attaches to the container's stdin; keep the returned lifeline while the job runs.
    pub async fn attach_stdin(&self, name: &str) -> Result<Lifeline, DockerError> {
        let opts = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stream(true)
            .build();
        let res = within("attach", self.docker.attach_container(name, Some(opts)))
            .await?
            .map_err(api(format!("attach to {name}")))?;
        // The output side is not needed; keep only the writer.
        drop(res.output);
        Ok(Lifeline { input: res.input })
    }

    /// Starts a created container.
    pub async fn start(&self, name: &str) -> Result<(), DockerError> {
        within("start", self.docker.start_container(name, None))
            .await?
            .map_err(api(format!("start of {name}")))
    }

    /// Waits until the container stops; returns its exit code.
    pub async fn wait_exit(&self, name: &str) -> i64 {
        let opts = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut s = self.docker.wait_container(name, Some(opts));
        match s.next().await {
            Some(Ok(r)) => r.status_code,
            // A non-zero exit arrives as an error value carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            _ => -1,
        }
    }

    /// The last lines the container printed (for error messages).
    pub async fn log_tail(&self, name: &str) -> String {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("5")
            .build();
        let lines: Vec<String> = within(
            "logs",
            self.docker
                .logs(name, Some(opts))
                .filter_map(|l| async move { l.ok().map(|l| l.to_string()) })
                .collect(),
        )
        .await
        .unwrap_or_default();
        lines.concat().trim().to_string()
    }

    /// Starts a command in the running container as `user`: its output goes to ours, and
    /// `stdin` (when given) feeds its input until that closes. Returns the started command;
    /// await `Started::io` for its end, then `exit_code`.
    pub async fn exec(
        &self,
        name: &str,
        user: &str,
        workdir: &str,
        cmd: Vec<String>,
        tty: bool,
        stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    ) -> Result<Started, DockerError> {
        let config = bollard::models::ExecConfig {
            attach_stdin: Some(stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty),
            user: Some(user.to_string()),
            working_dir: Some(workdir.to_string()),
            cmd: Some(cmd),
            ..Default::default()
        };
        let exec = within("exec create", self.docker.create_exec(name, config))
            .await?
            .map_err(api("exec create"))?;
        let started = within("exec start", self.docker.start_exec(&exec.id, None))
            .await?
            .map_err(api("exec start"))?;
        let io: Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match started {
            bollard::exec::StartExecResults::Attached { output, mut input } => {
                Box::pin(async move {
                    let feed = async {
                        if let Some(mut rx) = stdin {
                            use tokio::io::AsyncWriteExt;
                            while let Some(chunk) = rx.recv().await {
                                if input.write_all(&chunk).await.is_err() {
                                    return;
                                }
                                let _ = input.flush().await;
                            }
                            let _ = input.shutdown().await;
                        }
                        std::future::pending::<()>().await;
                    };
                    tokio::select! {
                        () = forward_output(output) => {}
                        () = feed => {}
                    }
                })
            }
            bollard::exec::StartExecResults::Detached => Box::pin(async {}),
        };
        Ok(Started { id: exec.id, io })
    }

    /// The process id on this node of a running command started with `exec` (for passing
    /// signals on); `None` when it is not running.
    pub async fn pid(&self, started: &Started) -> Option<i32> {
        let info = within("exec inspect", self.docker.inspect_exec(&started.id))
            .await
            .ok()?
            .ok()?;
        info.pid
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
    }

    /// The exit code of a finished command started with `exec`.
    pub async fn exit_code(&self, started: &Started) -> Result<i64, DockerError> {
        let info = within("exec inspect", self.docker.inspect_exec(&started.id))
            .await?
            .map_err(api("exec inspect"))?;
        Ok(info.exit_code.unwrap_or(-1))
    }

    /// Freezes (`pause`) or thaws a container's processes (`scontrol suspend` / `resume`).
    pub async fn freeze(&self, name: &str, frozen: bool) -> Result<(), DockerError> {
        let r = if frozen {
            within("pause", self.docker.pause_container(name)).await?
        } else {
            within("unpause", self.docker.unpause_container(name)).await?
        };
        r.map_err(api(format!(
            "{} of {name}",
            if frozen { "pause" } else { "unpause" }
        )))
    }

    /// Sets the terminal size of a command started with `tty`.
    pub async fn resize(&self, started: &Started, rows: u16, cols: u16) {
        let opts = bollard::query_parameters::ResizeExecOptionsBuilder::default()
            .h(i32::from(rows))
            .w(i32::from(cols))
            .build();
        match within("resize", self.docker.resize_exec(&started.id, opts)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::debug!("terminal resize: {}", reason(&e)),
            Err(e) => log::debug!("terminal resize: {e}"),
        }
    }

    /// A container's main process id on this node and its image id, when it is running.
    pub async fn running_pid(&self, name: &str) -> Result<Option<(i32, String)>, DockerError> {
        Ok(self
            .found(name)
            .await?
            .and_then(|f| Some((f.pid?, f.image))))
    }

    /// The container of this name (or id), running or not.
    pub async fn found(&self, name: &str) -> Result<Option<Found>, DockerError> {
        match within("inspect", self.docker.inspect_container(name, None)).await? {
            Ok(info) => {
                let paused = info.state.as_ref().and_then(|s| s.paused) == Some(true);
                let pid = info
                    .state
                    .filter(|s| s.running == Some(true))
                    .and_then(|s| s.pid)
                    .and_then(|p| i32::try_from(p).ok())
                    .filter(|p| *p > 0);
                Ok(Some(Found {
                    id: info.id.unwrap_or_default(),
                    pid,
                    paused,
                    image: info.image.unwrap_or_default(),
                    labels: info
                        .config
                        .and_then(|c| c.labels)
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                }))
            }
            Err(e) if is_status(&e, &[404]) => Ok(None),
            Err(e) => Err(api(format!("inspect of {name}"))(e)),
        }
    }

    /// Writes an image (by name, so its tag travels with it) as a `docker save` archive,
    /// chunk by chunk, to `out`; returns the bytes written.
    pub async fn save_image(
        &self,
        name: &str,
        out: &mut impl std::io::Write,
    ) -> Result<u64, DockerError> {
        let mut stream = self.docker.export_image(name);
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(api(format!("save of image {name}")))?;
            out.write_all(&chunk).map_err(|e| DockerError::Api {
                action: format!("save of image {name}"),
                reason: e.to_string(),
            })?;
            bytes += chunk.len() as u64;
        }
        Ok(bytes)
    }

    /// A new image of one layer: the file system of `image`, exported from a container that
    /// never starts, passed through `rewrite` (a tar stream in, one out, on a thread of its
    /// own), and imported with an empty config; its id. Nothing of the image runs.
    pub async fn import_rewritten(
        &self,
        image: &str,
        rewrite: impl FnOnce(&mut ChunkReader, &mut ChunkSender) -> std::io::Result<()> + Send + 'static,
    ) -> Result<String, DockerError> {
        let config = within("image inspect", self.docker.inspect_image(image))
            .await?
            .map_err(api(format!("inspect of image {image}")))?
            .config
            .unwrap_or_default();
        let source = format!(
            "mnd-export-{}-{}",
            std::process::id(),
            image
                .trim_start_matches("sha256:")
                .get(..12)
                .unwrap_or("image")
        );
        let role = BTreeMap::from([(crate::spec::labels::ROLE.to_string(), "export".to_string())]);
        self.create_idle(&source, image, &role).await?;
        let imported = self
            .export_through(&source, config_changes(&config), rewrite)
            .await;
        let _ = self.remove(&source).await;
        imported
    }

    /// `import_rewritten` once the container exists.
    async fn export_through(
        &self,
        container: &str,
        changes: Vec<String>,
        rewrite: impl FnOnce(&mut ChunkReader, &mut ChunkSender) -> std::io::Result<()> + Send + 'static,
    ) -> Result<String, DockerError> {
        let (export_tx, export_rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
        let (import_tx, mut import_rx) =
            tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let mut export = self.docker.export_container(container);
        let exporting = async move {
            while let Some(chunk) = export.next().await {
                let chunk = chunk.map_err(api(format!("export of {container}")))?;
                // The rewriting thread stopped reading: it failed, and says why itself.
                if export_tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok::<(), DockerError>(())
        };
        let rewriting = tokio::task::spawn_blocking(move || {
            let mut input = ChunkReader {
                rx: export_rx,
                chunk: bytes::Bytes::new(),
            };
            let mut out = ChunkSender {
                tx: import_tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let made = rewrite(&mut input, &mut out).and_then(|()| out.send_buffered());
            if let Err(e) = &made {
                let _ = import_tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
            made
        });
        let opts = CreateImageOptionsBuilder::default()
            .from_src("-")
            .changes(changes)
            .build();
        let chunks = futures_util::stream::poll_fn(move |cx| import_rx.poll_recv(cx));
        let importing = async {
            let mut stream =
                self.docker
                    .create_image(Some(opts), Some(bollard::body_try_stream(chunks)), None);
            let mut id = None;
            while let Some(item) = stream.next().await {
                let item = item.map_err(api("import of a file system"))?;
                id = item.status.filter(|s| s.starts_with("sha256:")).or(id);
            }
            id.ok_or_else(|| DockerError::Api {
                action: "import of a file system".into(),
                reason: "Docker named no image".into(),
            })
        };
        let (exported, id) = tokio::join!(exporting, importing);
        let rewritten = match rewriting.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let failed = match (exported, rewritten) {
            (Err(e), _) => Some(e),
            (Ok(()), Err(reason)) => Some(DockerError::Api {
                action: "rewrite of a file system".into(),
                reason,
            }),
            (Ok(()), Ok(())) => None,
        };
        match (failed, id) {
            (None, id) => id,
            // A cut-off export may still have made an image of what came: it goes.
            (Some(e), Ok(partial)) => {
                let _ = self.remove_unused_image(&partial).await;
                Err(e)
            }
            (Some(e), Err(_)) => Err(e),
        }
    }

    /// Loads a `docker save` archive read from `input`.
    pub async fn load_image(
        &self,
        mut input: impl std::io::Read + Send + 'static,
    ) -> Result<(), DockerError> {
        self.load_written(move |out| std::io::copy(&mut input, out).map(|_| ()))
            .await
    }

    /// Loads the `docker save` archive that `produce` writes, on a thread of its own (it may
    /// wait for a file still being written, or check what it passes on). When `produce`
    /// fails the load is cut off, so Docker keeps nothing of it, and its error is returned.
    pub async fn load_written(
        &self,
        produce: impl FnOnce(&mut ChunkSender) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), DockerError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let producer = tokio::task::spawn_blocking(move || {
            let mut out = ChunkSender {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let made = produce(&mut out).and_then(|()| out.send_buffered());
            if let Err(e) = &made {
                let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
            made
        });
        let chunks = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let loaded = self.load_stream(chunks).await;
        let produced = producer
            .await
            .map_err(|e| std::io::Error::other(e.to_string()));
        match (produced.and_then(|r| r), loaded) {
            (Err(e), _) => Err(DockerError::Api {
                action: "load of an image".into(),
                reason: e.to_string(),
            }),
            (Ok(()), loaded) => loaded,
        }
    }

    /// Loads a `docker save` archive from a stream of chunks; an error in the stream ends
    /// the load (Docker keeps nothing of it).
    async fn load_stream(
        &self,
        chunks: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    ) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::ImportImageOptionsBuilder::default()
            .quiet(true)
            .build();
        let mut stream = self.docker.import_image_stream(opts, chunks, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(api("load of an image"))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(DockerError::Api {
                    action: "load of an image".into(),
                    reason: e,
                });
            }
        }
        Ok(())
    }

    /// Removes an image no container uses (and the unnamed images below it that nothing
    /// else holds, as `docker rmi` does).
    pub async fn remove_unused_image(&self, image: &str) -> Result<Removal, DockerError> {
        match within(
            "image remove",
            self.docker.remove_image(
                image,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            ),
        )
        .await?
        {
            Ok(_) => Ok(Removal::Removed),
            Err(e) if is_status(&e, &[404]) => Ok(Removal::Gone),
            Err(e) if is_status(&e, &[409]) => Ok(Removal::InUse),
            Err(e) => Err(api(format!("remove of image {image}"))(e)),
        }
    }

    /// The digest the registry of `image` gives for it now (Docker asks with its own
    /// registry settings); `None` when the registry has no such image or cannot be asked
    /// within `limit`.
    pub async fn registry_digest(&self, image: &str, limit: Duration) -> Option<String> {
        let asked = tokio::time::timeout(limit, self.docker.inspect_registry_image(image, None));
        match asked.await {
            Ok(Ok(found)) => found.descriptor.digest,
            Ok(Err(e)) => {
                log::info!("the registry of {image} does not give it: {}", reason(&e));
                None
            }
            Err(_) => {
                log::info!("the registry of {image} gave no answer in {limit:?}");
                None
            }
        }
    }

    /// Removes the unnamed images that match `filters` (Docker's filter syntax: `label`,
    /// `label!`, `until`) and no container uses; the ids of those Docker reports it
    /// unnamed (the containerd image store's; the other store's were listed). Unlike the
    /// image list, this reaches images Docker's containerd image store no longer lists
    /// (those whose base image's layers were removed).
    pub async fn prune_unnamed(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<String>, DockerError> {
        let mut filters = filters;
        filters.insert("dangling".into(), vec!["true".into()]);
        let opts = bollard::query_parameters::PruneImagesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let pruned = within("image prune", self.docker.prune_images(Some(opts)))
            .await?
            .map_err(api("prune of images"))?;
        Ok(pruned
            .images_deleted
            .unwrap_or_default()
            .into_iter()
            .filter_map(|item| item.untagged)
            // The containerd image store's name for an image without one.
            .map(|name| name.trim_start_matches("moby-dangling@").to_string())
            .collect())
    }

    /// Points tag `image` (`repo[:tag]`) at the image with id `id`, when one exists here;
    /// `false` when no image has that id.
    pub async fn tag_id(&self, id: &str, image: &str) -> Result<bool, DockerError> {
        if let Err(e) = within("image inspect", self.docker.inspect_image(id)).await? {
            return match is_status(&e, &[404]) {
                true => Ok(false),
                false => Err(api(format!("inspect of image {id}"))(e)),
            };
        }
        let (repo, tag) = repo_and_tag(image);
        let opts = bollard::query_parameters::TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        within("tag", self.docker.tag_image(id, Some(opts)))
            .await?
            .map_err(api(format!("tag of {id} as {image}")))?;
        Ok(true)
    }

    /// Saves a container's filesystem as a new image `repo:tag` (`docker commit`); its id.
    pub async fn commit(&self, container: &str, image: &str) -> Result<String, DockerError> {
        let config = bollard::models::ContainerConfig::default();
        self.commit_with(container, Some(image), config).await
    }

    /// `commit` with the entrypoint, command, user, working directory and variables of the
    /// image `base` (the container's own are mnd's: mnd's init or idle program, as the job's
    /// user, with the job's variables). Without
    /// a name `image`, the new image is known by its id alone.
    pub async fn commit_as(
        &self,
        container: &str,
        image: Option<&str>,
        base: &str,
    ) -> Result<String, DockerError> {
        let info = within("image inspect", self.docker.inspect_image(base))
            .await?
            .map_err(api(format!("inspect of image {base}")))?;
        let base = info.config.unwrap_or_default();
        // An empty entrypoint must be sent as `[]` (not left out): Docker refills a missing
        // one from the container's own (mnd's).
        let config = bollard::models::ContainerConfig {
            entrypoint: Some(base.entrypoint.unwrap_or_default()),
            cmd: Some(base.cmd.unwrap_or_default()),
            user: Some(
                base.user
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "root".into()),
            ),
            working_dir: Some(
                base.working_dir
                    .filter(|w| !w.is_empty())
                    .unwrap_or_else(|| "/".into()),
            ),
            env: Some(base.env.unwrap_or_default()),
            ..Default::default()
        };
        self.commit_with(container, image, config).await
    }

    async fn commit_with(
        &self,
        container: &str,
        image: Option<&str>,
        config: bollard::models::ContainerConfig,
    ) -> Result<String, DockerError> {
        let mut opts = bollard::query_parameters::CommitContainerOptionsBuilder::default()
            .container(container)
            .pause(true);
        if let Some((repo, tag)) = image.map(repo_and_tag) {
            opts = opts.repo(repo).tag(tag);
        }
        let opts = opts.build();
        let made = within("commit", self.docker.commit_container(opts, config))
            .await?
            .map_err(api(format!("commit of {container}")))?;
        Ok(made.id)
    }

    /// Image `id` as it is on this node (never pulled), known by its id alone: containers
    /// are made from the id (an image loaded from a share, a user's copy, a save).
    pub async fn image_by_id(&self, id: &str) -> Result<ImageFacts, DockerError> {
        let silent = tokio::sync::watch::channel(Default::default()).0;
        let facts = self
            .ensure_image(id, Pull::Never, id, Duration::from_secs(30), &silent)
            .await?;
        Ok(ImageFacts {
            by_id_only: true,
            ..facts
        })
    }

    /// `verdict` on `image`: a refused image that was pulled for this call is removed again
    /// (the node's storage is not the user's to fill); the verdict passes through.
    pub async fn drop_if_refused<E>(
        &self,
        image: &ImageFacts,
        verdict: Result<(), E>,
    ) -> Result<(), E> {
        if verdict.is_err() && image.pulled {
            let _ = self.remove_unused_image(&image.id).await;
        }
        verdict
    }

    /// Kills a container's processes and keeps it (its file system stays); one already
    /// stopped or gone is fine.
    pub async fn stop(&self, id: &str) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::KillContainerOptionsBuilder::default()
            .signal("KILL")
            .build();
        match within("kill", self.docker.kill_container(id, Some(opts))).await? {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, &[404, 409]) => Ok(()),
            Err(e) => Err(api(format!("kill of {id}"))(e)),
        }
    }

    /// Kills and removes a container (by name or id) with its anonymous volumes (an image's
    /// `VOLUME` would otherwise outlive it in root's storage); a container already gone is
    /// fine.
    pub async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match within("remove", self.docker.remove_container(name, Some(opts))).await? {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, &[404, 409]) || reason(&e).contains("already in progress") => {
                Ok(())
            }
            Err(e) => Err(api(format!("remove of {name}"))(e)),
        }
    }

    /// Ends a container at once: SIGKILL, and its processes are gone when this returns;
    /// Docker then removes it by itself (it was made with auto-remove), without the job
    /// waiting for its layer to be deleted. One not running (never started, already ended,
    /// paused) is removed here.
    pub async fn end(&self, name: &str) -> Result<(), DockerError> {
        let kill = self.docker.kill_container(
            name,
            None::<bollard::query_parameters::KillContainerOptions>,
        );
        match within("kill", kill).await? {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, &[404]) => Ok(()),
            Err(_) => self.remove(name).await,
        }
    }

    /// CPU use (percent of one core, over the last second) and memory in bytes of a running
    /// container, for `mnd ps`.
    pub async fn usage(&self, id: &str) -> Option<(f64, u64)> {
        let opts = bollard::query_parameters::StatsOptionsBuilder::default()
            .stream(false)
            .build();
        let mut stats = self.docker.stats(id, Some(opts));
        let s = within("stats", stats.next()).await.ok()??.ok()?;
        let (cpu, pre) = (s.cpu_stats?, s.precpu_stats?);
        let used = cpu.cpu_usage.as_ref()?.total_usage? as f64
            - pre.cpu_usage.as_ref()?.total_usage? as f64;
        let span = cpu.system_cpu_usage? as f64 - pre.system_cpu_usage.unwrap_or(0) as f64;
        let cores = f64::from(cpu.online_cpus.unwrap_or(1).max(1));
        let percent = if span > 0.0 {
            used / span * cores * 100.0
        } else {
            0.0
        };
        let memory = s.memory_stats.and_then(|m| m.usage).unwrap_or(0);
        Some((percent.max(0.0), memory))
    }

    /// The user and working directory a container runs as (for `mnd exec`).
    pub async fn user_and_workdir(&self, id: &str) -> Result<(String, String), DockerError> {
        let info = within("inspect", self.docker.inspect_container(id, None))
            .await?
            .map_err(api(format!("inspect of {id}")))?;
        let config = info.config.unwrap_or_default();
        Ok((
            config.user.unwrap_or_default(),
            config.working_dir.unwrap_or_else(|| "/".into()),
        ))
    }

    /// Copies what a container printed to our output, following it with `follow`.
    pub async fn print_logs(&self, id: &str, follow: bool) {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .build();
        forward_output(Box::pin(self.docker.logs(id, Some(opts)))).await;
    }

    /// Containers carrying all these labels (`key=value` or `key`), running or not.
    pub async fn list(&self, labels: &[String]) -> Result<Vec<Listed>, DockerError> {
        let filters = HashMap::from([("label".to_string(), labels.to_vec())]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let found: Vec<ContainerSummary> = within("list", self.docker.list_containers(Some(opts)))
            .await?
            .map_err(api("list of containers"))?;
        Ok(found
            .into_iter()
            .map(|c| Listed {
                id: c.id.unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
                created: c.created.unwrap_or(0),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            })
            .collect())
    }
}

/// Download progress of an image pull, per layer.
#[derive(Debug, Default)]
pub struct PullProgress {
    layers: std::collections::BTreeMap<String, (i64, i64, bool)>,
}

impl PullProgress {
    /// Takes one status message of the pull stream; whether it shows the pull moving.
    /// Docker's containerd image store repeats a layer's "Downloading" or "Waiting" about
    /// every 100 ms whether bytes came or not: those count only when their bytes moved.
    pub fn update(
        &mut self,
        layer: Option<&str>,
        status: Option<&str>,
        bytes: Option<(i64, i64)>,
    ) -> bool {
        let Some(layer) = layer.filter(|l| l.len() == 12) else {
            return true;
        };
        let entry = self
            .layers
            .entry(layer.to_string())
            .or_insert((0, 0, false));
        let before = *entry;
        match status.unwrap_or_default() {
            "Downloading" => {
                if let Some((current, total)) = bytes {
                    entry.0 = current;
                    entry.1 = total;
                }
                *entry != before
            }
            "Waiting" => false,
            "Download complete" | "Pull complete" | "Already exists" => {
                entry.0 = entry.1;
                entry.2 = true;
                true
            }
            _ => true,
        }
    }

    /// "12.0/40.5 MB, 2/5 layers".
    pub fn summary(&self) -> String {
        let (cur, total) = self
            .layers
            .values()
            .fold((0, 0), |(c, t), l| (c + l.0, t + l.1));
        let done = self.layers.values().filter(|l| l.2).count();
        format!(
            "{:.1}/{:.1} MB, {done}/{} layers",
            cur as f64 / 1e6,
            total as f64 / 1e6,
            self.layers.len()
        )
    }
}

/// Whether a listed image has a name (`repo:tag`; Docker lists none as `<none>:<none>`).
fn has_name(i: &bollard::models::ImageSummary) -> bool {
    i.repo_tags.iter().any(|t| t != "<none>:<none>")
}

fn tar_err(e: std::io::Error) -> DockerError {
    DockerError::Api {
        action: "building an upload archive".into(),
        reason: e.to_string(),
    }
}

async fn forward_output(
    mut output: Pin<
        Box<
            dyn Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send,
        >,
    >,
) {
    use bollard::container::LogOutput;
    while let Some(Ok(chunk)) = output.next().await {
        match chunk {
            LogOutput::StdErr { message } => {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(&message);
                let _ = e.flush();
            }
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&message);
                let _ = o.flush();
            }
            LogOutput::StdIn { .. } => {}
        }
    }
}

/// Translates the plan's container options into Docker's host config.
fn host_config(spec: &ContainerSpec) -> HostConfig {
    let mut cdi = spec.cdi_devices.clone();
    let mut device_requests = match &spec.gpus {
        Gpus::None => vec![],
        Gpus::NvidiaAll => vec![gpu_request(None)],
        Gpus::Nvidia(ids) => vec![gpu_request(Some(ids.iter().map(u32::to_string).collect()))],
        Gpus::NvidiaUuids(uuids) => vec![gpu_request(Some(uuids.clone()))],
        Gpus::Cdi(names) => {
            cdi.splice(0..0, names.iter().cloned());
            vec![]
        }
    };
    if !cdi.is_empty() {
        // Docker's form of a CDI device (what `docker run --device vendor/class=name` sends).
        device_requests.push(DeviceRequest {
            driver: Some("cdi".into()),
            device_ids: Some(cdi),
            ..Default::default()
        });
    }
    let device_requests = (!device_requests.is_empty()).then_some(device_requests);
    HostConfig {
        network_mode: Some(spec.network.clone()),
        ipc_mode: spec.ipc.clone(),
        shm_size: spec.shm_size,
        auto_remove: Some(!spec.kept_when_stopped),
        privileged: Some(spec.privileged),
        group_add: Some(spec.group_add.clone()),
        cap_add: Some(spec.cap_add.clone()),
        cap_drop: Some(spec.cap_drop.clone()),
        security_opt: Some(spec.security_opt.clone()),
        extra_hosts: Some(spec.extra_hosts.clone()),
        tmpfs: Some(spec.tmpfs.clone().into_iter().collect()),
        ulimits: Some(
            spec.ulimits
                .iter()
                .map(|(name, soft, hard)| ResourcesUlimits {
                    name: Some(name.clone()),
                    soft: Some(*soft),
                    hard: Some(*hard),
                })
                .collect(),
        ),
        devices: Some(
            spec.devices
                .iter()
                .map(|d| DeviceMapping {
                    path_on_host: Some(d.host.clone()),
                    path_in_container: Some(d.container.clone()),
                    cgroup_permissions: Some(d.permissions.clone()),
                })
                .collect(),
        ),
        device_requests,
        pid_mode: spec.host_namespaces.then(|| "host".into()),
        uts_mode: (spec.host_namespaces && !spec.own_uts).then(|| "host".into()),
        userns_mode: spec.host_namespaces.then(|| "host".into()),
        cgroupns_mode: spec
            .host_namespaces
            .then_some(bollard::models::HostConfigCgroupnsModeEnum::HOST),
        init: Some(spec.host_namespaces),
        storage_opt: spec
            .storage_size
            .as_ref()
            .map(|size| HashMap::from([("size".to_string(), size.clone())])),
        mounts: Some(
            spec.mounts
                .iter()
                .map(|m| Mount {
                    target: Some(m.target.display().to_string()),
                    source: Some(m.source.display().to_string()),
                    typ: Some(MountType::BIND),
                    read_only: Some(m.read_only),
                    bind_options: m.propagation.as_deref().map(bind_propagation),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// A tar archive of `files`, with their parent folders (0755, root's).
fn files_tar(folders: &[OwnedFolder], files: &[FileUpload]) -> Result<Vec<u8>, DockerError> {
    let mut builder = tar::Builder::new(Vec::new());
    let folder = |builder: &mut tar::Builder<Vec<u8>>, path: &str, owner: (u32, u32)| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(owner.0.into());
        h.set_gid(owner.1.into());
        h.set_size(0);
        builder
            .append_data(&mut h, format!("{path}/"), std::io::empty())
            .map_err(tar_err)
    };
    let mut dirs = std::collections::BTreeSet::new();
    for f in folders {
        let rel = f.path.trim_start_matches('/');
        folder(&mut builder, rel, (f.uid, f.gid))?;
        dirs.insert(rel.to_string());
        for name in &f.empty_files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(f.uid.into());
            h.set_gid(f.gid.into());
            h.set_size(0);
            h.set_mtime(0);
            builder
                .append_data(&mut h, format!("{rel}/{name}"), std::io::empty())
                .map_err(tar_err)?;
        }
    }
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let parents: Vec<&str> = rel.split('/').collect();
        for i in 1..parents.len() {
            let dir = parents[..i].join("/");
            if dirs.insert(dir.clone()) {
                folder(&mut builder, &dir, (0, 0))?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(f.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(f.content.len() as u64);
        h.set_mtime(0);
        builder
            .append_data(&mut h, rel, f.content.as_bytes())
            .map_err(tar_err)?;
    }
    builder.into_inner().map_err(tar_err)
}

/// Docker's bind options for a propagation the planner accepted.
fn bind_propagation(p: &str) -> MountBindOptions {
    use bollard::models::MountBindOptionsPropagationEnum as P;
    let propagation = match p {
        "private" => P::PRIVATE,
        "shared" => P::SHARED,
        "rshared" => P::RSHARED,
        "slave" => P::SLAVE,
        "rslave" => P::RSLAVE,
        _ => P::RPRIVATE,
    };
    MountBindOptions {
        propagation: Some(propagation),
        ..Default::default()
    }
}

/// `registry:5000/team/img:1` -> (`registry:5000/team/img`, `1`); no tag is `latest`.
fn repo_and_tag(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (image, "latest"),
    }
}

fn gpu_request(ids: Option<Vec<String>>) -> DeviceRequest {
    DeviceRequest {
        driver: Some("nvidia".into()),
        count: ids.is_none().then_some(-1),
        device_ids: ids,
        capabilities: Some(vec![vec!["gpu".into()]]),
        ..Default::default()
    }
}

/// What an engine says of itself (`Engine::describe`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineDescription {
    /// Its version (`26.1.5`).
    pub version: String,
    /// Its API version.
    pub api: String,
    /// Its storage driver.
    pub driver: String,
    /// What the storage driver says (`Backing Filesystem`, `driver-type`, ...).
    pub driver_status: Vec<(String, String)>,
    /// Its root folder.
    pub root_dir: std::path::PathBuf,
    /// The cgroup version it sees (`1`, `2`).
    pub cgroup_version: Option<String>,
    /// Its cgroup driver (`cgroupfs`, `systemd`).
    pub cgroup_driver: Option<String>,
}

/// What became of an image to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removed now.
    Removed,
    /// A container uses it: kept.
    InUse,
    /// There was none.
    Gone,
}

/// The size of the pieces an archive goes to Docker in.
const CHUNK: usize = 1 << 20;

/// Where a loaded archive is written: 1 MiB pieces, sent on to Docker's load.
pub struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(bytes::Bytes::from(chunk)))
            .map_err(|_| std::io::Error::other("Docker stopped reading the image"))
    }
}

/// An image's config as the Dockerfile lines an import takes: its variables, working
/// directory, user, entrypoint, command and volumes (values quoted, `$` kept literal).
fn config_changes(config: &bollard::models::ImageConfig) -> Vec<String> {
    let quoted = |v: &str| {
        let escaped = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('$', "\\$");
        format!("\"{escaped}\"")
    };
    let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
    // Docker joins the lines and parses them as a Dockerfile: a value that could end a line
    // or continue it (a control character, a backslash) would add instructions. Such a
    // value is left out (the copy then lacks it), never passed.
    let plain = |v: &str| !v.chars().any(|c| c.is_control() || c == '\\');
    let name = |k: &str| {
        !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut out: Vec<String> = config
        .env
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, v)| name(k) && !v.chars().any(char::is_control))
        .map(|(k, v)| format!("ENV {k}={}", quoted(v)))
        .collect();
    let word = |v: &str| !v.is_empty() && plain(v) && !v.contains(char::is_whitespace);
    if let Some(dir) = config
        .working_dir
        .as_deref()
        .filter(|d| word(d) && d.starts_with('/'))
    {
        out.push(format!("WORKDIR {dir}"));
    }
    if let Some(user) = config.user.as_deref().filter(|u| word(u)) {
        out.push(format!("USER {user}"));
    }
    if let Some(e) = config.entrypoint.as_ref().filter(|e| !e.is_empty()) {
        out.push(format!("ENTRYPOINT {}", json(e)));
    }
    if let Some(c) = config.cmd.as_ref().filter(|c| !c.is_empty()) {
        out.push(format!("CMD {}", json(c)));
    }
    let volumes: Vec<String> = config.volumes.iter().flatten().cloned().collect();
    if !volumes.is_empty() {
        out.push(format!("VOLUME {}", json(&volumes)));
    }
    out
}

/// The chunks of a stream Docker sends, read on a thread that may block.
pub struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The image's config as Dockerfile lines: a value that could end or continue a line is
    /// left out, never passed (review of the user's-copy change, T4).
    #[test]
    fn config_changes_never_let_an_image_add_an_instruction() {
        let config = bollard::models::ImageConfig {
            env: Some(vec![
                "A=1".into(),
                "B=x\nRUN evil".into(),
                "C D=1".into(),
                "P=$HOME:/x\\".into(),
            ]),
            working_dir: Some("/w\nVOLUME /x".into()),
            user: Some("u\\".into()),
            cmd: Some(vec!["sh".into(), "-c".into(), "echo \"hi\"\nexit".into()]),
            ..Default::default()
        };
        let out = config_changes(&config);
        assert_eq!(
            out,
            [
                "ENV A=\"1\"",
                "ENV P=\"\\$HOME:/x\\\\\"",
                "CMD [\"sh\",\"-c\",\"echo \\\"hi\\\"\\nexit\"]",
            ]
        );
        assert!(out.iter().all(|l| !l.contains('\n')));
    }

    #[test]
    fn an_images_origin_is_told_by_its_repo_digests() {
        let id = "sha256:aaa";
        assert_eq!(Origin::of(id, &[]), Origin::Local);
        let pulled = ["reg:5000/img@sha256:bbb".to_string()];
        assert_eq!(Origin::of(id, &pulled), Origin::Registry);
        // The containerd image store: every image is named by its own digest.
        let named = ["img@sha256:aaa".to_string()];
        assert_eq!(Origin::of(id, &named), Origin::Unknown);
    }

    #[test]
    fn an_owned_folder_and_its_empty_files_are_the_users() {
        let folder = OwnedFolder {
            path: "/.mnd".into(),
            uid: 1001,
            gid: 1002,
            empty_files: vec!["sshd_config".into()],
        };
        let wrapper = FileUpload {
            path: "/.mnd/bin/ssh".into(),
            content: "#!/bin/sh\n".into(),
            mode: 0o755,
        };
        let tar = files_tar(&[folder], &[wrapper]).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let got: Vec<(String, u64, u64, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mode().unwrap(),
                    h.size().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (".mnd/".to_string(), 1001, 1002, 0o755, 0),
                (".mnd/sshd_config".to_string(), 1001, 1002, 0o644, 0),
                (".mnd/bin/".to_string(), 0, 0, 0o755, 0),
                (".mnd/bin/ssh".to_string(), 0, 0, 0o755, 10),
            ]
        );
    }

    #[test]
    fn setup_records_count_lines_and_refuse_a_path_with_blanks() {
        let f = |path: &str, content: &str| FileUpload {
            path: path.into(),
            content: content.into(),
            mode: 0o644,
        };
        assert_eq!(
            setup_records(&[f("/.mnd/a", "x\ny"), f("/.mnd/b", "")]).unwrap(),
            "mnd-file /.mnd/a 2\nx\ny\nmnd-file /.mnd/b 0\ngo\n"
        );
        assert!(setup_records(&[f("/.mnd/a b", "x")]).is_err());
        assert!(setup_records(&[f("rel", "x")]).is_err());
    }

    use super::*;

    #[test]
    fn pull_progress_sums_layers() {
        let mut p = PullProgress::default();
        p.update(Some("aaaaaaaaaaaa"), Some("Pulling fs layer"), None);
        p.update(
            Some("bbbbbbbbbbbb"),
            Some("Downloading"),
            Some((2_000_000, 10_000_000)),
        );
        p.update(
            Some("aaaaaaaaaaaa"),
            Some("Downloading"),
            Some((1_000_000, 4_000_000)),
        );
        assert_eq!(p.summary(), "3.0/14.0 MB, 0/2 layers");
        p.update(Some("aaaaaaaaaaaa"), Some("Pull complete"), None);
        assert_eq!(p.summary(), "6.0/14.0 MB, 1/2 layers");
        p.update(Some("latest"), Some("Pulling from x"), None);
        assert_eq!(p.summary(), "6.0/14.0 MB, 1/2 layers");
    }

    #[test]
    fn a_repeated_download_message_without_new_bytes_is_no_progress() {
        let mut p = PullProgress::default();
        let at = |mb: i64| Some((mb * 1_000_000, 40_000_000));
        assert!(p.update(Some("aaaaaaaaaaaa"), Some("Downloading"), at(4)));
        // The containerd image store's steady beat while the registry sends nothing.
        assert!(!p.update(Some("aaaaaaaaaaaa"), Some("Downloading"), at(4)));
        assert!(!p.update(Some("bbbbbbbbbbbb"), Some("Waiting"), None));
        assert!(p.update(Some("aaaaaaaaaaaa"), Some("Downloading"), at(5)));
        assert!(p.update(Some("aaaaaaaaaaaa"), Some("Extracting"), None));
        assert!(p.update(Some("aaaaaaaaaaaa"), Some("Pull complete"), None));
    }
}
