//! This node's running container, and the one place that picks who runs it: Docker, for
//! the launcher, or the SPANK plugin (direct mode), which the launcher then runs inside.

use super::script::ScriptExec;
use super::{container, inside};
use crate::docker::{Engine, FileUpload, Lifeline, PullReport};
use crate::pidfd::HeldProcess;
use crate::plan::Plan;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Starts this node's container (Docker's, or inside the plugin's only sshd) with its sshd
/// on `port`. Pull progress is reported through `progress`.
pub(super) async fn start(
    plan: &Plan,
    port: u16,
    progress: &watch::Sender<PullReport>,
) -> Result<Running, String> {
    if !port_is_free(port) {
        return Err(format!(
            "port {port} is already in use on this node (another job's sshd or another program). Fix: pick another with --sshd-port"
        ));
    }
    if let Some(i) = &plan.inside {
        return Ok(Running {
            sshd_port: port,
            image_id: i.image_id.clone(),
            runtime: Runtime::Inside(inside::start(plan, port).await?),
        });
    }
    let started = container::with_heartbeat(
        progress,
        "starting the container",
        container::Beat::AfterProgress,
        plan.progress_every(),
        container::start(plan, port, progress),
    )
    .await?;
    Ok(Running {
        sshd_port: port,
        image_id: started.image_id,
        runtime: Runtime::Docker {
            engine: started.engine,
            _lifeline: started.lifeline,
            script: started.script,
        },
    })
}

/// This node's running container.
pub(super) struct Running {
    /// The port its sshd listens on.
    pub sshd_port: u16,
    /// The id of the image it runs.
    pub image_id: String,
    /// Who runs it.
    pub runtime: Runtime,
}

/// Who runs this node's container.
pub(super) enum Runtime {
    /// Docker, for this launcher: removing it is ours to do. The coordinator's script
    /// may already be started behind its gate.
    Docker {
        engine: Engine,
        _lifeline: Lifeline,
        script: Option<ScriptExec>,
    },
    /// The SPANK plugin (direct mode): the launcher runs inside it, its sshd is a child.
    Inside(inside::Sshd),
}

impl Running {
    /// The script's exec started early behind its gate, if any (taken once).
    pub(super) fn take_script(&mut self) -> Option<ScriptExec> {
        match &mut self.runtime {
            Runtime::Docker { script, .. } => script.take(),
            Runtime::Inside(_) => None,
        }
    }

    /// Writes files (an updated ssh config) into the container.
    pub(super) async fn write(&self, plan: &Plan, files: &[FileUpload]) -> Result<(), String> {
        match &self.runtime {
            Runtime::Docker { engine, .. } => engine
                .upload(&plan.container.name, files)
                .await
                .map_err(|e| e.to_string()),
            Runtime::Inside(_) => inside::write(files),
        }
    }

    /// Follows a Slurm suspend (SIGTSTP) or resume (SIGCONT) of the step. A Docker
    /// container's processes are Docker's, not the step's, so Slurm's SIGSTOP never reaches
    /// them: the container is paused. Inside the plugin's container the processes are the
    /// step's own, and Slurm stops them itself.
    pub(super) async fn follow_suspend(&self, plan: &Plan, sig: i32) {
        let Runtime::Docker { engine, .. } = &self.runtime else {
            return;
        };
        let suspend = crate::signals::Signals::is_suspend(sig);
        match engine.freeze(&plan.container.name, suspend).await {
            Ok(()) => log::info!(
                "{}: container {}",
                plan.this_node(),
                if suspend { "paused" } else { "resumed" }
            ),
            Err(e) => log::warn!("{}: {e}", plan.this_node()),
        }
    }

    /// Ends when the container (or, inside, its sshd) ends by itself; its exit code.
    pub(super) async fn ended(&self, plan: &Plan) -> i64 {
        match &self.runtime {
            Runtime::Docker { engine, .. } => engine.wait_exit(&plan.container.name).await,
            Runtime::Inside(sshd) => sshd.ended().await,
        }
    }

    /// Removes the container (inside: stops the sshd; the plugin removes the container).
    pub(super) async fn tear_down(&self, plan: &Plan) {
        match &self.runtime {
            Runtime::Docker { engine, .. } => tear_down(plan, Some(engine)).await,
            Runtime::Inside(sshd) => sshd.stop().await,
        }
    }
}

pub(super) fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// Ends this node's container, whatever state it is in (inside the plugin's container
/// there is nothing of ours to end).
pub(super) async fn tear_down(plan: &Plan, engine: Option<&Engine>) {
    if plan.inside.is_some() {
        return;
    }
    let t0 = Instant::now();
    let connected;
    let engine = match engine {
        Some(e) => Ok(e),
        None => {
            connected = Engine::connect().await;
            connected.as_ref().map_err(|e| e.to_string())
        }
    };
    let result = match engine {
        Ok(e) if kill_directly(plan, e).await => Ok("killed through a pidfd"),
        Ok(e) => e
            .end(&plan.container.name)
            .await
            .map(|()| "killed by Docker")
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match result {
        Ok(how) => log::info!(
            "{}: container ended in {:?} ({how})",
            plan.this_node(),
            t0.elapsed()
        ),
        Err(e) => log::error!(
            "{}: could not remove container {}: {e}",
            plan.this_node(),
            plan.container.name
        ),
    }
}

/// How long a container's processes may take to go after their SIGKILL before Docker's own
/// kill is asked to end them.
const KILLED_WITHIN: Duration = Duration::from_secs(5);

/// Ends the container's processes without waiting for Docker: SIGKILL to its first process
/// through a pidfd ends every process of its pid namespace, and the pidfd tells when they
/// are gone. Docker's kill waits for its own bookkeeping on top (tens of milliseconds, the
/// larger part of a job's teardown); Docker then removes the container by itself (it was
/// made with auto-remove). `false` when Docker's kill must do it: a container sharing the
/// host's namespaces, a paused one (its processes are frozen), no pidfds, or a process
/// that is not the container's (checked by its cgroup, after holding it).
async fn kill_directly(plan: &Plan, engine: &Engine) -> bool {
    if plan.container.host_namespaces {
        return false;
    }
    let Ok(Some(found)) = engine.found(&plan.container.name).await else {
        return false;
    };
    let Some(pid) = found.pid.filter(|_| !found.paused) else {
        return false;
    };
    let Ok(held) = HeldProcess::open(pid) else {
        return false;
    };
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if found.id.len() < 12 || !cgroup.contains(&found.id) {
        log::debug!("pid {pid} is not container {}'s here", found.id);
        return false;
    }
    if let Err(e) = held.signal(libc::SIGKILL) {
        log::debug!("SIGKILL to the container's pid {pid}: {e}");
        return false;
    }
    tokio::time::timeout(KILLED_WITHIN, held.ended())
        .await
        .is_ok()
}
