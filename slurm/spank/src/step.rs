//! One step on one node: what the helper is asked, the per-step lock that makes the first
//! task start the container while the others wait, and the removal at the step's end.

use crate::options::PluginArgs;
use mnd::spank::{Options, Reply, Request};
use slurm_spank::SpankHandle;
use std::error::Error;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A progress line of the helper's (`mnd-srun (NODE): pulling ...`, `... pulled ...`) as the
/// user sees it: `mnd: NODE: pulling ...`.
fn progress(line: &str) -> Option<String> {
    let (node, news) = line.strip_prefix("mnd-srun (")?.split_once("): ")?;
    (news.starts_with("pulling ") || news.starts_with("pulled "))
        .then(|| format!("mnd: {node}: {news}"))
}

/// Step ids Slurm uses for the batch script, the extern step and `salloc`'s interactive
/// step: they get no container.
const SPECIAL_STEPS: [u32; 2] = [0xffff_fffc, 0xffff_fffa];

/// Slurm's id of the batch step (`SLURM_BATCH_SCRIPT`): `sbatch --mnd-image` runs the
/// batch script in the container, as pyxis does.
const BATCH_STEP: u32 = 0xffff_fffb;

/// What the first task's environment says about the step on this node (Slurm set these
/// by the time `task_init_privileged` runs).
pub struct TaskFacts {
    /// `SLURM_STEP_GPUS`: Slurm's indices.
    pub gpu_indices: Option<String>,
    /// `CUDA_VISIBLE_DEVICES`: Slurm's unique ids of them, where it gives them.
    pub cuda_visible: Option<String>,
    /// `SLURM_STEP_NODELIST`: the step's nodes.
    pub step_nodes: Option<String>,
}

/// A step with `--mnd-image`, as slurmstepd knows it.
pub struct Step {
    request: Request,
}

impl Step {
    /// Reads the job from Slurm (remote `init_post_opt`, root); `None` for special steps.
    pub fn from_job(
        spank: &mut SpankHandle,
        mut options: Options,
        args: &PluginArgs,
    ) -> Result<Option<Self>, Box<dyn Error>> {
        let step = spank.job_stepid()?;
        if SPECIAL_STEPS.contains(&step) || (step == BATCH_STEP && !args.sbatch_support) {
            return Ok(None);
        }
        options.mount_home.get_or_insert(args.mount_home);
        let job = spank.job_id()?;
        let node = nix::unistd::gethostname()?
            .to_string_lossy()
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(Some(Step {
            request: Request {
                job,
                step,
                node,
                uid: spank.job_uid()?,
                gid: spank.job_gid()?,
                gids: spank.job_supplementary_gids()?,
                // Known once slurmstepd has moved into it (`container`).
                cwd: PathBuf::new(),
                options,
                // Known in the task (`container`), once Slurm's PMIx server is up.
                slurm_dirs: vec![],
                step_gpus: None,
                step_cuda_devices: None,
                step_nodes: None,
                global_scope: args.global_scope,
                batch_script: (step == BATCH_STEP)
                    .then(|| spank.job_argv().ok()?.first().map(PathBuf::from))
                    .flatten(),
            },
        }))
    }

    /// This node's name, for messages.
    pub fn node(&self) -> &str {
        &self.request.node
    }

    fn file(&self, args: &PluginArgs, ext: &str) -> PathBuf {
        args.runtime_dir
            .join(format!("{}.{}.{ext}", self.request.job, self.request.step))
    }

    /// The step's container on this node (in a task child, as root): the first task to
    /// take the lock asks the helper and records the reply (or the failure, so the other
    /// tasks fail at once with the same message); the others read it.
    pub fn container(&self, args: &PluginArgs, task: TaskFacts) -> Result<Reply, String> {
        private_dir(&args.runtime_dir)?;
        let _held = mnd::fsx::lock(&self.file(args, "lock"))
            .map_err(|e| format!("lock in {}: {e}", args.runtime_dir.display()))?;
        let (reply_file, error_file) = (self.file(args, "reply"), self.file(args, "error"));
        if let Ok(text) = std::fs::read_to_string(&error_file) {
            return Err(text);
        }
        if let Ok(text) = std::fs::read_to_string(&reply_file) {
            return serde_json::from_str(&text)
                .map_err(|e| format!("{}: {e}", reply_file.display()));
        }
        let answer = self.ask_helper(args, task);
        let (file, text) = match &answer {
            Ok(reply) => (reply_file, serde_json::to_string(reply).unwrap_or_default()),
            Err(e) => (error_file, e.clone()),
        };
        std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        answer
    }

    /// Runs `mnd direct up` with a clean environment, the request on stdin. The working
    /// directory is slurmstepd's: it moves into the step's before forking the tasks.
    fn ask_helper(&self, args: &PluginArgs, task: TaskFacts) -> Result<Reply, String> {
        let r = &self.request;
        let request = Request {
            cwd: std::env::current_dir()
                .map_err(|e| format!("the step's working directory: {e}"))?,
            slurm_dirs: pmix_dirs(),
            step_gpus: task.gpu_indices,
            step_cuda_devices: task.cuda_visible,
            step_nodes: task.step_nodes,
            ..r.clone()
        };
        // slurmstepd's own folder at the step's end is slurmd's: --mnd-save's relative path
        // is the step's, kept here.
        std::fs::write(
            self.file(args, "cwd"),
            request.cwd.as_os_str().as_encoded_bytes(),
        )
        .map_err(|e| format!("{}: {e}", self.file(args, "cwd").display()))?;
        root_only(&args.helper)?;
        // The reply goes to an unnamed file, not a pipe: stderr is read to its end first
        // (for the progress lines), and a reply bigger than a pipe holds would then leave
        // the helper and this task waiting on each other.
        let mut reply = unnamed_file(args)?;
        let reply_out = reply.try_clone().map_err(|e| format!("helper: {e}"))?;
        let mut cmd = helper(args);
        cmd.args(["direct", "up"]);
        if let Some(config) = &args.config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(reply_out)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run the helper {}: {e}", args.helper.display()))?;
        let request = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&request)
                .map_err(|e| format!("helper: {e}"))?;
        }
        // Pull progress reaches the user's terminal as it comes (a long pull is not a hang);
        // the rest of what the helper says is its complaint.
        let mut said = Vec::new();
        if let Some(stderr) = child.stderr.take() {
            crate::relay::read_lines_passing_stops(stderr, child.id(), |line| {
                match progress(line) {
                    Some(news) => slurm_spank::spank_log_user!("{news}"),
                    None => said.push(line.to_string()),
                }
            });
        }
        let status = child.wait().map_err(|e| format!("helper: {e}"))?;
        if !status.success() {
            let said = said.join("\n");
            let said = said.trim().trim_start_matches("mnd: ");
            return Err(if said.is_empty() {
                format!("the helper failed ({status})")
            } else {
                said.to_string()
            });
        }
        let mut text = Vec::new();
        reply
            .seek(std::io::SeekFrom::Start(0))
            .and_then(|_| reply.read_to_end(&mut text))
            .map_err(|e| format!("helper reply: {e}"))?;
        serde_json::from_slice(&text).map_err(|e| format!("helper reply: {e}"))
    }

    /// `--mnd-save`: the helper commits the container and writes it as the user, before
    /// the container ends; a failure is said, and the step's own result stands.
    pub fn save(&self, args: &PluginArgs) {
        let reply: Option<Reply> = std::fs::read_to_string(self.file(args, "reply"))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        let (Some(reply), Some(to)) = (reply, &self.request.options.save) else {
            return;
        };
        let cwd = std::fs::read_to_string(self.file(args, "cwd")).unwrap_or_default();
        let to = mnd::plan::mounts::absolute(Path::new(&cwd), Path::new(to));
        let r = &self.request;
        let gids: Vec<String> = r.gids.iter().map(u32::to_string).collect();
        let mut cmd = helper(args);
        cmd.args(["direct", "save", "--container", &reply.container_id])
            .args(["--job", &r.job.to_string(), "--step", &r.step.to_string()])
            .args(["--uid", &r.uid.to_string(), "--gid", &r.gid.to_string()])
            .arg(format!("--gids={}", gids.join(",")))
            .arg("--to")
            .arg(&to);
        // The helper bounds its own waits; this bound is slurmstepd's, past a helper's.
        let limit = mnd::stepsave::SAVE_TIME + Duration::from_secs(60);
        if let Err(e) = run_bounded(cmd, args, limit) {
            slurm_spank::spank_log_error!("mnd: {}: --mnd-save: {e}", self.node());
        }
    }

    /// At the step's end (slurmstepd, root): ends the step's container when one was made
    /// (`join::end`; else the helper removes it), and removes the step's files.
    pub fn finish(&self, args: &PluginArgs) {
        let reply: Option<Reply> = std::fs::read_to_string(self.file(args, "reply"))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        // A --mnd-name container outlives the step: the Epilog removes it with the job.
        let unnamed = self.request.options.name.is_none();
        let ended = unnamed && reply.as_ref().is_some_and(crate::join::end);
        if reply.is_some() && unnamed && !ended {
            let mut cmd = helper(args);
            cmd.args(["direct", "down", "--job"])
                .arg(self.request.job.to_string())
                .arg("--step")
                .arg(self.request.step.to_string());
            if let Err(e) = run_bounded(cmd, args, Duration::from_secs(90)) {
                slurm_spank::spank_log_error!(
                    "mnd: {}: removing the step's container failed ({e}); the Epilog removes it",
                    self.node()
                );
            }
        }
        for ext in ["reply", "error", "lock", "cwd"] {
            let _ = std::fs::remove_file(self.file(args, ext));
        }
    }
}

/// The root helper, the one way the plugin starts it (as pyxis's `enroot_exec`): a clean
/// environment and no input unless the caller gives one.
fn helper(args: &PluginArgs) -> Command {
    let mut cmd = Command::new(&args.helper);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null());
    cmd
}

/// Runs the helper and waits for it `limit` at most (killed past it): what it says goes to
/// a file, not a pipe, so nothing it leaves behind can hold this wait open.
fn run_bounded(mut cmd: Command, args: &PluginArgs, limit: Duration) -> Result<(), String> {
    let mut said = unnamed_file(args)?;
    let err = said.try_clone().map_err(|e| e.to_string())?;
    let child = cmd
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run the helper {}: {e}", args.helper.display()))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status = mnd::asuser::wait_bounded(pid, limit).map_err(|e| format!("helper: {e}"))?;
    if matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)) {
        return Ok(());
    }
    let mut text = String::new();
    let _ = said
        .seek(std::io::SeekFrom::Start(0))
        .and_then(|_| said.read_to_string(&mut text));
    let text = text.trim().trim_start_matches("mnd: ").to_string();
    Err(match (text.is_empty(), status) {
        (_, nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)) => {
            format!(
                "the helper did not end within {} s; stopped it",
                limit.as_secs()
            )
        }
        (true, status) => format!("the helper failed ({status:?})"),
        (false, _) => text,
    })
}

/// An unnamed file of root's in the plugin's folder, for what the helper writes: a pipe
/// could fill, or be held open by what the helper leaves behind.
fn unnamed_file(args: &PluginArgs) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(&args.runtime_dir)
        .map_err(|e| format!("a file in {}: {e}", args.runtime_dir.display()))
}

/// The helper runs as root: it and every folder above it must be root's and writable by
/// nobody else.
fn root_only(helper: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for p in helper.ancestors().filter(|p| !p.as_os_str().is_empty()) {
        let meta = std::fs::metadata(p).map_err(|e| format!("the helper {}: {e}", p.display()))?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "the helper {} is not run: {} must be root's and writable by nobody else (plugstack.conf helper=)",
                helper.display(),
                p.display()
            ));
        }
    }
    Ok(())
}

/// Root's folder for the step files: created 0700, refused if anyone else could write it.
fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} must be a folder of root's that nobody else can write",
            dir.display()
        ));
    }
    Ok(())
}

/// The step's PMIx folder, which the tasks need at the same path: the server's, from
/// slurmstepd's own `PMIX_SERVER_TMPDIR` (its PMIx server sets it before the tasks start,
/// from `SlurmdSpoolDir`, root's; a step without PMIx has none). As enroot does, the
/// clients' `spmix_appdir_UID_JOB.STEP` (in `/tmp`, where anyone may plant a name) is
/// never mounted: the tasks make their own in the container. The helper trusts no folder:
/// it opens it with no link in its path and checks its owner.
fn pmix_dirs() -> Vec<PathBuf> {
    std::env::var_os("PMIX_SERVER_TMPDIR")
        .map(PathBuf::from)
        .into_iter()
        .collect()
}
