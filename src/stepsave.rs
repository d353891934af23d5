//! `--mnd-save=PATH` (pyxis's `--container-save`): at the step's end the root helper
//! (`mnd direct save`) commits the step's container and writes it as a `docker save`
//! archive at PATH into a file **the job's user opened** (`asuser`: a process that dropped
//! to the user's ids opens a temporary name beside PATH, no link followed, hands root the
//! descriptor, and renames it into place when root says it is whole), so the archive goes
//! only where the user may write, and root waits on nothing of the user's without a bound.
//! The commit's name is one no step may run, and it is removed from root's storage once
//! written. `docker load -i
//! PATH` brings it back.

use crate::asuser::UserFile;
use crate::docker::{DockerError, Engine};
use crate::plan::policy::SAVED_PREFIX;
use crate::spec::labels;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Why a step's container could not be saved.
#[derive(Debug, Error)]
pub enum SaveError {
    /// Docker.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The container is not the job user's step container.
    #[error("container {0} is not this step's (its labels do not match): nothing saved")]
    NotTheSteps(String),
    /// Writing the archive as the user failed.
    #[error("--mnd-save {path}: {reason}")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What `mnd direct save` is asked.
pub struct SaveRequest {
    /// The step container's id (from the helper's reply).
    pub container: String,
    /// The job.
    pub job: u32,
    /// The step.
    pub step: u32,
    /// The job's user.
    pub uid: u32,
    /// Their primary group.
    pub gid: u32,
    /// Their groups.
    pub gids: Vec<u32>,
    /// The archive's path (absolute).
    pub to: PathBuf,
}

/// How long the process that became the user may take to open the archive, and to rename
/// it into place at the end; past that it is killed (the user may stop it).
const AS_USER_WAIT: Duration = Duration::from_secs(10);

/// Longest a whole save (commit and archive) may take: `task_exit` waits for it.
pub const SAVE_TIME: Duration = Duration::from_secs(30 * 60);

/// Opens the archive as the user (forks: call before any thread exists).
pub fn open_as_user(r: &SaveRequest) -> Result<UserFile, SaveError> {
    crate::asuser::open(r.uid, r.gid, &r.gids, &r.to).map_err(|e| SaveError::Write {
        path: r.to.clone(),
        reason: e.to_string(),
    })
}

/// Commits the step's container (checked to be the user's, this job's and step's, direct
/// mode's) under a name no step may run, writes it into the descriptor the user's process
/// opened, and removes the image; the archive is renamed into place only when whole.
/// Every wait is bounded: a stopped or killed process of the user's only loses the archive.
pub async fn save(r: &SaveRequest, mut file: UserFile) -> Result<(), SaveError> {
    let fail = |reason: String| SaveError::Write {
        path: r.to.clone(),
        reason,
    };
    let fd = match file.descriptor(AS_USER_WAIT) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = file.finish(false, AS_USER_WAIT);
            return Err(fail(e.to_string()));
        }
    };
    let written = tokio::time::timeout(SAVE_TIME, commit_and_write(r, fd)).await;
    let written = match written {
        Ok(w) => w,
        Err(_) => Err(fail(format!(
            "not done within {} min: nothing saved",
            SAVE_TIME.as_secs() / 60
        ))),
    };
    let kept = file.finish(written.is_ok(), AS_USER_WAIT);
    written?;
    kept.map_err(|e| fail(e.to_string()))
}

async fn commit_and_write(r: &SaveRequest, fd: OwnedFd) -> Result<(), SaveError> {
    let engine = Engine::connect().await?;
    let found = engine
        .found(&r.container)
        .await?
        .ok_or_else(|| SaveError::NotTheSteps(r.container.clone()))?;
    let want = [
        (labels::UID, r.uid.to_string()),
        (labels::JOB, r.job.to_string()),
        (labels::ROLE, "direct".to_string()),
    ];
    if want.iter().any(|(k, v)| found.labels.get(*k) != Some(v)) {
        return Err(SaveError::NotTheSteps(r.container.clone()));
    }
    let user = found.labels.get(labels::USER).cloned().unwrap_or_default();
    let tag = format!("{SAVED_PREFIX}{user}:{}.{}", r.job, r.step);
    // Recorded first: a save killed half-way leaves the image to the job's Epilog. The name
    // is in the archive (`docker load` brings it back); no step may run an image by a name
    // of this prefix (`policy::check_image_found`), and it is removed once written.
    if let Err(e) = crate::pulled::Pulled::open(std::path::Path::new(crate::pulled::DIR))
        .and_then(|p| p.used(&tag, r.job, true))
    {
        log::warn!("recording {tag} for the Epilog: {e}");
    }
    engine
        .commit_as(&found.id, Some(&tag), &found.image)
        .await?;
    let mut out = std::fs::File::from(fd);
    let written = engine.save_image(&tag, &mut out).await;
    drop(out);
    let _ = engine.remove_unused_image(&tag).await;
    match written? {
        0 => Err(SaveError::Write {
            path: r.to.clone(),
            reason: "nothing was saved".into(),
        }),
        _ => Ok(()),
    }
}

/// In srun, as the user: the folder of the archive (relative to this working directory)
/// exists and the user may write there, so a step never runs to find at its end that its
/// container cannot be saved (the root side's message then only reaches slurmd's log).
pub fn check_writable(to: &Path) -> Result<(), String> {
    let cwd = std::env::current_dir().map_err(|e| format!("the working directory: {e}"))?;
    let to = crate::plan::mounts::absolute(&cwd, to);
    let dir = to.parent().unwrap_or(Path::new("/"));
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).map_err(|e| {
        format!(
            "--mnd-save {}: you cannot write in {} ({e}). Fix: save into a folder of yours, e.g. --mnd-save=./step.tar",
            to.display(),
            dir.display()
        )
    })
}
