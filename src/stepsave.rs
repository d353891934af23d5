//! `--mnd-save=PATH` (pyxis's `--container-save`): at the step's end the root helper
//! (`mnd direct save`) commits the step's container and writes it as a `docker save`
//! archive at PATH, **as the job's user**: a process that dropped to the user's ids before
//! any thread started opens the file (a temporary name beside it, no link followed, then a
//! rename), so the archive goes only where the user may write. The committed image is
//! removed from root's storage once written. `docker load -i PATH` brings it back.

use crate::docker::{DockerError, Engine};
use crate::spec::labels;
use nix::unistd::{ForkResult, Pid};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
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

/// The writer: a child that became the user and copies what comes down the pipe into the
/// file. Made before any thread exists (tokio starts later).
pub struct Writer {
    child: Pid,
    /// Where the archive goes.
    pub input: OwnedFd,
    to: PathBuf,
}

/// Forks the writer for `r.to`, as the user.
pub fn writer(r: &SaveRequest) -> Result<Writer, SaveError> {
    let fail = |reason: String| SaveError::Write {
        path: r.to.clone(),
        reason,
    };
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| fail(e.to_string()))?;
    // SAFETY: no thread exists yet (tokio starts after this), so the child may run ordinary
    // code; it only drops its ids, copies and renames, then `_exit`s.
    match unsafe { nix::unistd::fork() }.map_err(|e| fail(e.to_string()))? {
        ForkResult::Child => {
            drop(write_end);
            let code = match write_as_user(r, read_end) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("mnd: --mnd-save {}: {e}", r.to.display());
                    1
                }
            };
            // SAFETY: leaves the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok(Writer {
            child,
            input: write_end,
            to: r.to.clone(),
        }),
    }
}

/// In the writer: the user's ids, then the archive into a temporary file beside `r.to`
/// (never following a link), renamed into place when complete.
fn write_as_user(r: &SaveRequest, input: OwnedFd) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    crate::identity::become_user(r.uid, r.gid, &r.gids)?;
    let tmp =
        r.to.with_extension(format!("mnd-tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let copied = std::io::copy(&mut std::fs::File::from(input), &mut file);
    match copied.and_then(|n| {
        if n == 0 {
            Err(std::io::Error::other("nothing was saved"))
        } else {
            Ok(())
        }
    }) {
        Ok(()) => std::fs::rename(&tmp, &r.to),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Commits the step's container (checked to be the user's, this job's and step's, direct
/// mode's), writes it through `w`, and removes the committed image; waits for the writer.
pub async fn save(r: &SaveRequest, w: Writer) -> Result<(), SaveError> {
    let Writer { child, input, to } = w;
    let saved = commit_and_write(r, input).await;
    // The writer's own failure (it said why on stderr) explains the broken pipe here.
    match nix::sys::wait::waitpid(child, None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(saved?),
        other => Err(SaveError::Write {
            path: to,
            reason: format!("nothing saved (the writer ended with {other:?})"),
        }),
    }
}

async fn commit_and_write(r: &SaveRequest, input: OwnedFd) -> Result<(), SaveError> {
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
    let tag = format!("mnd-saved-{user}:{}.{}", r.job, r.step);
    // Recorded first: a save killed half-way leaves the image to the job's Epilog.
    if let Err(e) = crate::pulled::Pulled::open(std::path::Path::new(crate::pulled::DIR))
        .and_then(|p| p.used(&tag, r.job, true))
    {
        log::warn!("recording {tag} for the Epilog: {e}");
    }
    engine
        .commit_as(&found.id, Some(&tag), &found.image)
        .await?;
    let mut out = std::fs::File::from(input);
    let written = engine.save_image(&tag, &mut out).await;
    drop(out);
    let _ = engine.remove_unused_image(&tag).await;
    written?;
    Ok(())
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
