//! This node's running container, and the one place that picks who runs it: Docker, for
//! the launcher, or the SPANK plugin (direct mode), which the launcher then runs inside.

use super::{container, inside};
use crate::docker::{Engine, FileUpload, Lifeline, PullReport};
use crate::plan::Plan;
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
    let started = container::start(plan, port, progress).await?;
    Ok(Running {
        sshd_port: port,
        image_id: started.image_id,
        runtime: Runtime::Docker {
            engine: started.engine,
            _lifeline: started.lifeline,
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
    /// Docker, for this launcher: removing it is ours to do.
    Docker { engine: Engine, _lifeline: Lifeline },
    /// The SPANK plugin (direct mode): the launcher runs inside it, its sshd is a child.
    Inside(inside::Sshd),
}

impl Running {
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
    let result = match engine {
        Some(e) => e.end(&plan.container.name).await,
        None => match Engine::connect().await {
            Ok(e) => e.end(&plan.container.name).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => log::info!(
            "{}: container ended in {:?}",
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
