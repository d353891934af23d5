//! Direct mode's images from the user's image share (`~/.mnd/images`): an image that exists
//! only on the step's first node (built, loaded or committed there, never pushed) runs on
//! every node of the step.
//!
//! - The first node's root side, finding the image with no registry origin, vouches for
//!   it: a MUNGE credential (encoded by root, so no user can forge it) saying "for job J,
//!   step S, user U, image NAME is id X", left in the share. It saves the image there
//!   unless the share has it (once per image; nodes load while it is written).
//! - A node whose Docker lacks the image (and cannot pull it) reads that word, checks the
//!   credential is root's and names this step, user and image, then loads the archive
//!   checked to be image X and stripped of every tag ([`crate::imagearchive`]), and runs
//!   the container by id: no name in root's Docker changes, for anyone.
//!
//! Every file of the share is read and written by a process that became the user
//! (`mnd direct share`), so links and root-squashed homes are the user's own business, and
//! what it hands over is checked here, as root.

use crate::asuser::Watched;
use crate::docker::{DockerError, Engine, ImageFacts, Origin};
use crate::imagearchive::Vouched;
use crate::munge::{self, MungeError};
use crate::spank::Request;
use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use thiserror::Error;

mod user;
pub use user::{as_user_op, UserOp};

/// How long a credential stays valid (nodes read it within seconds of the step's start).
const WORD_TTL_SECS: u32 = 600;

/// How long a node waits for the first node's word, and for a growing archive to grow.
pub const WAIT: Duration = Duration::from_secs(60);

/// How long the first node asks an image's registry whether it has the image (Docker's
/// containerd image store cannot tell a pulled image from one made here); no answer by
/// then, and the image is shared.
const REGISTRY_ASK: Duration = Duration::from_secs(10);

/// Why the share could not serve the image.
#[derive(Debug, Error)]
pub enum ShareError {
    /// MUNGE.
    #[error("vouching for the image through MUNGE: {0}")]
    Munge(#[from] MungeError),
    /// The word in the share is not root's word for this step.
    #[error("the image share's record for this step is not valid ({0}): it was not written by the first node's root side")]
    NotVouched(String),
    /// The process acting as the user failed.
    #[error("{0}")]
    AsUser(String),
    /// Docker.
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// One multi-node step's view of the share, on one node.
#[derive(Debug, Clone)]
pub struct StepShare {
    /// The share's folder (`~/.mnd/images`).
    pub dir: PathBuf,
    /// The step's first node, which vouches and saves.
    pub first_node: String,
    /// This node is it.
    pub is_first: bool,
    job: u32,
    step: u32,
    uid: u32,
    gid: u32,
    gids: Vec<u32>,
}

impl StepShare {
    /// The share of step `req` of a user whose home is `home`; `None` for a step on one
    /// node, or when the step's nodes are not known.
    pub fn of(req: &Request, home: &Path) -> Option<StepShare> {
        let nodes = crate::hostlist::expand(req.step_nodes.as_deref()?).ok()?;
        let first_node = nodes.first()?.clone();
        (nodes.len() > 1).then(|| StepShare {
            dir: home.join(".mnd/images"),
            is_first: first_node == req.node,
            first_node,
            job: req.job,
            step: req.step,
            uid: req.uid,
            gid: req.gid,
            gids: req.gids.clone(),
        })
    }

    /// What root on the first node vouches for: the image's id and size (which bounds its
    /// archive while it streams in, see [`crate::imagearchive::most_bytes`]).
    fn word(&self, image: &str, vouched: &Vouched) -> String {
        format!(
            "mnd-image-share/2 job={} step={} uid={} image={image} id={} size={}",
            self.job, self.step, self.uid, vouched.id, vouched.size
        )
    }

    /// The word's file name in the share.
    fn word_file(&self) -> String {
        format!("{}.{}", self.job, self.step)
    }

    /// `mnd direct share OP ARGS...` as the user: their ids, no other environment, and it
    /// dies with this process.
    fn as_user(&self, op: &[&str]) -> Command {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("mnd"));
        let mut cmd = Command::new(exe);
        cmd.args(["direct", "share", "--dir"])
            .arg(&self.dir)
            .args(op)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir("/");
        let (uid, gid, gids) = (self.uid, self.gid, self.gids.clone());
        // SAFETY: between fork and exec the closure makes raw system calls only.
        unsafe {
            cmd.pre_exec(move || {
                crate::identity::become_user(uid, gid, &gids)?;
                match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
        cmd
    }

    /// `as_user(op)` started, its stdin, stdout and stderr ours.
    fn spawn_as_user(&self, op: &[&str]) -> Result<std::process::Child, ShareError> {
        self.as_user(op)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ShareError::AsUser(format!("cannot run the share's process: {e}")))
    }

    /// Runs an as-user operation with `input` on its stdin; what it printed (at most 64 KiB).
    fn run_as_user(&self, op: &[&str], input: &[u8]) -> Result<String, ShareError> {
        let mut child = self.spawn_as_user(op)?;
        if let Some(stdin) = child.stdin.take() {
            let _ = watched(stdin, &child).write_all(input);
        }
        let mut out = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = watched(stdout, &child)
                .take(64 << 10)
                .read_to_string(&mut out);
        }
        finished(child)?;
        Ok(out)
    }
}

/// Longest an as-user process may leave its pipe idle: it may wait [`WAIT`] for an archive
/// to grow; past this it is stopped or hung, and is killed (root waits on nothing of the
/// user's without a bound).
const STALL: Duration = Duration::from_secs(WAIT.as_secs() + 30);

/// A pipe of an as-user process, each read or write bounded by [`STALL`].
fn watched<T: std::os::fd::AsFd>(pipe: T, child: &std::process::Child) -> Watched<T> {
    Watched::new(pipe, child.id(), STALL)
}

/// Waits for an as-user process (within [`STALL`], killed past it); its complaint (its
/// stderr) as the error.
fn finished(mut child: std::process::Child) -> Result<(), ShareError> {
    drop(child.stdin.take());
    let mut said = String::new();
    if let Some(stderr) = child.stderr.take() {
        let _ = watched(stderr, &child)
            .take(64 << 10)
            .read_to_string(&mut said);
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status =
        crate::asuser::wait_bounded(pid, STALL).map_err(|e| ShareError::AsUser(e.to_string()))?;
    match status {
        nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
        nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _) => {
            Err(ShareError::AsUser(format!(
                "the share's process (running as you) made no progress for {} s (stopped?); it was killed",
                STALL.as_secs()
            )))
        }
        other => Err(ShareError::AsUser(match said.trim() {
            "" => format!("the share's process ended with {other:?}"),
            text => text.trim_start_matches("mnd: ").to_string(),
        })),
    }
}

/// The first node: vouches for `image` (image `id`) and saves it into the share unless it
/// is there already.
async fn offer(
    share: &StepShare,
    engine: &Engine,
    image: &str,
    vouched: &Vouched,
) -> Result<(), ShareError> {
    let credential = munge::encode(&share.word(image, vouched), WORD_TTL_SECS).await?;
    let id = vouched.id.as_str();
    // One process as the user leaves the word, then saves the image unless it is saved.
    let mut saver = share.spawn_as_user(&["save", id, "--word", &share.word_file()])?;
    let mut input = saver.stdin.take().map(|stdin| watched(stdin, &saver));
    if let Some(stdin) = input.as_mut() {
        let _ = writeln!(stdin, "{}", credential.trim());
    }
    let mut said = String::new();
    if let Some(stdout) = saver.stdout.take() {
        let _ = std::io::BufReader::new(watched(stdout, &saver)).read_line(&mut said);
    }
    if said.trim() == "ready" {
        if let Some(stdin) = input.as_mut() {
            // A failure here shows as the saver's own (it got less than a whole archive).
            let _ = engine.save_image(id, stdin).await;
        }
    }
    drop(input);
    finished(saver)
}

/// The first node's offer, made on a thread of its own (with its own connection to Docker)
/// while the step's container starts.
pub struct Offering(std::thread::JoinHandle<Result<(), ShareError>>);

impl Offering {
    /// Starts offering `image` (`facts`) when it came from no registry; `None` otherwise.
    pub fn start(share: &StepShare, image: &str, facts: &ImageFacts) -> Option<Offering> {
        if facts.origin == Origin::Registry {
            return None;
        }
        let (share, image) = (share.clone(), image.to_string());
        let vouched = Vouched {
            id: facts.id.clone(),
            size: facts.size,
        };
        let ask_registry = facts.origin == Origin::Unknown;
        Some(Offering(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ShareError::AsUser(e.to_string()))?;
            runtime.block_on(async {
                let engine = Engine::connect().await?;
                if ask_registry
                    && engine
                        .registry_digest(&image, REGISTRY_ASK)
                        .await
                        .as_deref()
                        == Some(vouched.id.as_str())
                {
                    let id = &vouched.id;
                    log::info!("{image} is in its registry as {id}: the other nodes pull it");
                    return Ok(());
                }
                offer(&share, &engine, &image, &vouched).await
            })
        })))
    }

    /// Waits for the offer; a failure is logged and told to the nodes that need the image
    /// (this node and the others go on).
    pub fn finish(self, share: &StepShare) {
        let done = self
            .0
            .join()
            .unwrap_or_else(|_| Err(ShareError::AsUser("the offer's thread died".into())));
        if let Err(e) = done {
            log::warn!("sharing the image: {e}");
            say_failed(share, &e);
        }
    }
}

/// The first node could not vouch or save: the other nodes hear why.
fn say_failed(share: &StepShare, e: &ShareError) {
    let word = format!("{FAILED}{e}");
    let _ = share.run_as_user(&["put-word", &share.word_file()], word.as_bytes());
}

/// How a word that reports the first node's failure starts.
const FAILED: &str = "mnd-failed: ";

/// A node without `image`: the first node's word for it, checked, then the image by id
/// (loaded from the share, checked, when this node lacks it).
pub async fn fetch(
    share: &StepShare,
    engine: &Engine,
    image: &str,
) -> Result<ImageFacts, ShareError> {
    let wait = WAIT.as_secs().to_string();
    let vouched = vouched_word(share, image).await?;
    let id = vouched.id.clone();
    if let Ok(facts) = engine.image_by_id(&id).await {
        return Ok(facts);
    }
    let mut reader = share.spawn_as_user(&["get-archive", &id, "--wait", &wait])?;
    drop(reader.stdin.take());
    let stdout = reader.stdout.take().map(|out| watched(out, &reader));
    let loaded = engine
        .load_written(move |out| {
            let stdout = stdout.ok_or_else(|| std::io::Error::other("no archive"))?;
            crate::imagearchive::pass_checked(crate::imagecache::unpacked(stdout)?, &vouched, out)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await;
    // The reader's complaint (no archive, a stalled saver) explains a failed load best.
    finished(reader)?;
    loaded?;
    let facts = engine.image_by_id(&id).await?;
    // Loaded for this job: recorded as root's pulls are, so the Epilog removes it.
    Ok(ImageFacts {
        pulled: true,
        ..facts
    })
}

/// The image the first node vouched for, for this step. A word left by an earlier step
/// of the same number (job ids start again when Slurm's state is reset) is expired,
/// replayed or about something else: the next word is awaited, until [`WAIT`] passes.
async fn vouched_word(share: &StepShare, image: &str) -> Result<Vouched, ShareError> {
    let by = std::time::Instant::now() + WAIT;
    let mut stale: Option<(String, ShareError)> = None;
    loop {
        let left = by.saturating_duration_since(std::time::Instant::now());
        let unlike = stale
            .as_ref()
            .map(|(word, _)| word.as_bytes())
            .unwrap_or_default();
        let asked = share.run_as_user(
            &[
                "get-word",
                &share.word_file(),
                "--wait",
                &left.as_secs().max(1).to_string(),
            ],
            unlike,
        );
        let word = match (asked, stale) {
            (Ok(word), _) => word,
            (Err(_), Some((_, why))) => return Err(why),
            (Err(e), None) => return Err(e),
        };
        if let Some(why) = word.strip_prefix(FAILED) {
            return Err(ShareError::AsUser(format!(
                "{} could not share it: {why}",
                share.first_node
            )));
        }
        let checked = match munge::decode(&word).await {
            Ok(decoded) => vouched_id(share, image, decoded.uid, &decoded.payload),
            Err(e) => Err(e.into()),
        };
        match checked {
            Ok(id) => return Ok(id),
            Err(why) if std::time::Instant::now() < by => {
                log::info!("a stale word in the image share ({why}); waiting for the next");
                stale = Some((word, why));
            }
            Err(why) => return Err(why),
        }
    }
}

/// The image in a decoded word, when root wrote it for this very step, user and image.
fn vouched_id(
    share: &StepShare,
    image: &str,
    uid: u32,
    payload: &str,
) -> Result<Vouched, ShareError> {
    if uid != 0 {
        return Err(ShareError::NotVouched(format!(
            "encoded by uid {uid}, not root"
        )));
    }
    let (rest, size) = payload
        .trim()
        .rsplit_once(" size=")
        .and_then(|(rest, size)| Some((rest, size.parse().ok()?)))
        .ok_or_else(|| ShareError::NotVouched("no image size".into()))?;
    let id = rest
        .rsplit_once(" id=")
        .map(|(_, id)| id.to_string())
        .filter(|id| id.starts_with("sha256:") && id.len() == 71)
        .ok_or_else(|| ShareError::NotVouched("no image id".into()))?;
    let vouched = Vouched { id, size };
    if payload.trim() != share.word(image, &vouched) {
        return Err(ShareError::NotVouched(format!(
            "it is for another job, step, user or image: {:?}",
            payload.trim()
        )));
    }
    Ok(vouched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> StepShare {
        let req = Request {
            job: 7,
            step: 0,
            node: "node2".into(),
            uid: 1001,
            gid: 1001,
            gids: vec![1001],
            cwd: PathBuf::from("/"),
            options: Default::default(),
            slurm_dirs: vec![],
            step_nodes: Some("node[1-3]".into()),
            step_gpus: None,
            step_cuda_devices: None,
            batch_script: None,
            global_scope: false,
        };
        StepShare::of(&req, Path::new("/home/dave")).unwrap()
    }

    #[test]
    fn only_roots_word_for_this_step_user_and_image_counts() {
        let s = share();
        assert!(!s.is_first && s.first_node == "node1");
        assert_eq!(s.dir, Path::new("/home/dave/.mnd/images"));
        let id = format!("sha256:{}", "a".repeat(64));
        let vouched = Vouched { id, size: 123 };
        let word = s.word("img:1", &vouched);
        assert_eq!(vouched_id(&s, "img:1", 0, &word).unwrap(), vouched);
        let err = vouched_id(&s, "img:1", 1001, &word).unwrap_err();
        assert!(err.to_string().contains("uid 1001, not root"), "{err}");
        for other in [
            word.replace("step=0", "step=1"),
            word.replace("uid=1001", "uid=1002"),
        ] {
            let err = vouched_id(&s, "img:1", 0, &other).unwrap_err();
            assert!(
                err.to_string().contains("another job, step, user or image"),
                "{err}"
            );
        }
        assert!(vouched_id(&s, "other:1", 0, &word).is_err());
        let id = &vouched.id;
        assert!(vouched_id(&s, "img:1", 0, &word.replace(id, "sha256:short")).is_err());
        assert!(vouched_id(&s, "img:1", 0, &word.replace(" size=123", "")).is_err());
        // A word of the first version (no size) is not taken.
        let old = word.replace("/2 ", "/1 ");
        assert!(vouched_id(&s, "img:1", 0, &old).is_err());
    }
}
