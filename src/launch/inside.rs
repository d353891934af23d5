//! The launcher inside the SPANK plugin's container (direct mode: `srun --mnd-image=IMAGE
//! mnd-srun ...`), for users without Docker access. The plugin made the container and put
//! this task in it; here this node's sshd is a child process of the launcher, its files go
//! to `/.mnd` (the plugin's helper gave that folder to the user), and the coordinator runs
//! the script as a child process. The control channel, the wait for every node and the
//! script's environment are the launcher's own.

use super::files::{session_env, ssh_files};
use crate::docker::FileUpload;
use crate::plan::Plan;
use crate::probe;
use crate::ssh;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// This node's sshd, a child of the launcher.
pub(super) struct Sshd {
    pid: Pid,
    exited: watch::Receiver<Option<i64>>,
}

impl Sshd {
    /// Ends when sshd exits; its exit code (-1 when killed).
    pub(super) async fn ended(&self) -> i64 {
        let mut exited = self.exited.clone();
        loop {
            if let Some(code) = *exited.borrow_and_update() {
                return code;
            }
            if exited.changed().await.is_err() {
                return -1;
            }
        }
    }

    /// Stops sshd: SIGTERM, then SIGKILL after 2 s.
    pub(super) async fn stop(&self) {
        let _ = kill(self.pid, Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(2), self.ended())
            .await
            .is_err()
        {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }
}

/// Writes files in the container as the user (each replaced whole: write, then rename).
pub(super) fn write(files: &[FileUpload]) -> Result<(), String> {
    for f in files {
        let path = std::path::Path::new(&f.path);
        let fail = |e: std::io::Error| format!("writing {}: {e}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        crate::fsx::write_whole(path, f.content.as_bytes(), f.mode).map_err(fail)?;
    }
    Ok(())
}

/// The environment the container has (the plugin merged the image's into the task's),
/// without what Slurm and the plugin set per task, as `NAME=VALUE`.
fn container_env() -> Vec<String> {
    std::env::vars()
        .filter(|(k, _)| !crate::spank::job_owned(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// Writes this node's sshd and ssh files, starts sshd on `port` and waits until it answers.
pub(super) async fn start(plan: &Plan, port: u16) -> Result<Sshd, String> {
    let inside = plan.inside.as_ref().expect("inside the plugin's container");
    let env = session_env(plan, &container_env())?;
    write(&ssh_files(plan, &env, port))?;
    let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or_else(|| {
            "this image has no sshd. Fix: install openssh-server in the image".to_string()
        })?;
    let dir = ssh::CONTAINER_DIR;
    let tested = tokio::process::Command::new(sshd)
        .args(["-t", "-f", &format!("{dir}/sshd_config")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    let config = if tested {
        format!("{dir}/sshd_config")
    } else {
        format!("{dir}/sshd_config.compat")
    };
    let log = std::fs::File::create(format!("{dir}/sshd.log"))
        .map_err(|e| format!("{dir}/sshd.log: {e}"))?;
    let mut child = tokio::process::Command::new(sshd)
        .args(["-D", "-e", "-f", &config])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {sshd}: {e}"))?;
    let pid = Pid::from_raw(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0));
    let (tx, exited) = watch::channel(None);
    tokio::spawn(async move {
        let code = child
            .wait()
            .await
            .ok()
            .and_then(|s| s.code())
            .map_or(-1, i64::from);
        let _ = tx.send(Some(code));
    });
    let sshd = Sshd { pid, exited };
    let by = Instant::now() + plan.sshd_wait();
    tokio::select! {
        r = probe::wait_banner("127.0.0.1", port, by) => if let Err(e) = r {
            sshd.stop().await;
            return Err(format!("sshd did not answer on port {port}: {e} (see {dir}/sshd.log in the container)"));
        },
        code = sshd.ended() => {
            let said = std::fs::read_to_string(format!("{dir}/sshd.log")).unwrap_or_default();
            return Err(format!("sshd exited with code {code} before it answered: {}", said.trim()));
        }
    }
    log::info!(
        "{}: sshd on port {port} in container {}",
        plan.this_node(),
        inside.container
    );
    Ok(sshd)
}

/// Starts the script as a child of the launcher, with the environment a script started by
/// `docker exec` has: the container's, the user's names, the job's variables and the ssh
/// wrappers first on PATH, but none of the task's Slurm variables (mpirun would take the
/// job for its own and call srun). The terminal and stdin are the task's own.
pub(super) fn spawn_script(plan: &Plan) -> std::io::Result<tokio::process::Child> {
    let script = plan.script.as_ref().expect("coordinator has a script");
    let path = ssh::path_with_wrappers(std::env::var("PATH").ok().as_deref());
    let user = &plan.user;
    let own = [
        ("HOME", user.home.display().to_string()),
        ("USER", user.name.clone()),
        ("LOGNAME", user.name.clone()),
    ];
    let term = std::env::var("TERM").ok().map(|t| ("TERM".to_string(), t));
    tokio::process::Command::new(&script.path)
        .args(&script.args)
        .current_dir(&plan.container.workdir)
        .env_clear()
        .envs(container_env().iter().filter_map(|e| e.split_once('=')))
        .envs(own)
        .envs(term)
        .envs(plan.job_env.iter().cloned())
        .envs(plan.env_defaults_for(&container_env()))
        .env("PATH", path)
        .kill_on_drop(true)
        .spawn()
}
