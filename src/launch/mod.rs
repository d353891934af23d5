//! The launcher's two state machines, driven by a `Plan`: `worker` and `coordinator`, each a
//! module of its own. `running` picks who runs this node's container (Docker: `container`,
//! made from the user's copy of the image, `derived`; the SPANK plugin: `inside`); `files`
//! are what goes into it; `script` is the coordinator's
//! `docker exec` of the script (started behind a gate); `share` obtains the image and
//! serves the image share; `fanout` talks to this node's children in the fan-out tree;
//! `timing` prints phase timings for the benchmarks.
//!
//! Worker:      Listening + StartingSubtree (own container, every node below READY) ->
//!              Reporting -> Serving (orders passed down, losses below passed up) ->
//!              TearingDown -> exit 0
//! Coordinator: Preflight -> StartingSubtree (own container, every node READY + sshd
//!              banner, fail fast) -> RunningScript -> Stopping (STOP down the tree, own
//!              container removed) -> exit with the script's code.
//! Any signal, lost peer or dead container leads to TearingDown; every path removes this
//! node's container by name, and a launcher killed with SIGKILL leaves a container whose
//! stdin closes, so it ends and removes itself.

mod container;
mod coordinator;
mod derived;
pub mod fanout;
mod files;
mod inside;
mod running;
mod script;
mod share;
mod timing;
mod worker;

use crate::control::{ControlError, JobKey};
use crate::docker::{DockerError, PullReport};
use crate::plan::{Plan, Role};
use crate::ssh;
use running::Running;
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a launch failed.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// A node could not start its container or sshd.
    #[error("node {node}: {reason}")]
    Node {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The job ended because of a signal.
    #[error("stopped by signal {0}; containers removed")]
    Signal(i32),
    /// The script cannot be run.
    #[error("{0}")]
    Script(String),
    /// Ssh material problem.
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    /// The local Docker engine.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// Control channel problem (a peer never came or went away).
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Told the error that ends the job as soon as it is known, before the other nodes are
/// stopped: when another node's launcher was killed by a signal, srun stops reading output
/// once every task has ended, so a reason printed only at exit can be lost.
pub type Report<'a> = &'a dyn Fn(&LaunchError);

/// Runs this launcher's part of the job; returns the exit code for srun.
pub async fn run(plan: Plan, report: Report<'_>) -> Result<i32, LaunchError> {
    let result = match plan.role {
        Role::Idle(why) => {
            log::info!("nothing to do on this task: {why}");
            return Ok(0);
        }
        Role::Coordinator => coordinator::coordinator(&plan, report).await,
        Role::Worker => worker::worker(&plan).await,
    };
    if timing::timing_enabled() {
        let role = if plan.role == Role::Coordinator {
            "coordinator"
        } else {
            "worker"
        };
        eprintln!(
            "mnd-srun timing: {} {role} peak-rss-kb {}{}",
            plan.this_node(),
            timing::peak_rss_kb().unwrap_or(0),
            crate::phases::wall_clock()
        );
    }
    result
}

/// This node's container and every node below it in the fan-out tree, started together:
/// both ready, or the first failure (a failing subtree lets this node's own start end, so
/// its container is removed). On the first node, also serves the image share meanwhile.
async fn start_subtree(
    plan: &Plan,
    key: &JobKey,
    own_port: u16,
    progress: &watch::Sender<PullReport>,
    connected: &fanout::Connected,
    pass_up: Option<&fanout::PassUp>,
) -> Result<(Running, Vec<fanout::ReadyWorker>), LaunchError> {
    let deadline = Instant::now() + plan.tree.wait_below(plan.node_rank, plan.wait_timeout);
    let own = running::start(plan, own_port, progress);
    let below = async {
        tokio::select! {
            w = fanout::ready_below(plan, key, deadline, connected, pass_up) => w,
            never = share::serve_share(plan) => match never {},
        }
    };
    tokio::pin!(own, below);
    tokio::select! {
        r = &mut own => match r {
            Ok(running) => match below.await {
                Ok(ready) => Ok((running, ready)),
                Err(e) => {
                    running.tear_down(plan).await;
                    Err(e)
                }
            },
            Err(why) => Err(node_err(plan)(why)),
        },
        b = &mut below => match (b, own.await) {
            (Ok(ready), Ok(running)) => Ok((running, ready)),
            (Ok(_), Err(why)) => Err(node_err(plan)(why)),
            (Err(e), own) => {
                if let Ok(running) = own {
                    running.tear_down(plan).await;
                }
                Err(e)
            }
        },
    }
}

fn node_err(plan: &Plan) -> impl Fn(String) -> LaunchError + '_ {
    move |reason| LaunchError::Node {
        node: plan.this_node().to_string(),
        reason,
    }
}

/// What both sides of the control channel prove they hold: the user's control key, for
/// this job.
fn job_key(plan: &Plan) -> Result<JobKey, LaunchError> {
    let key = std::fs::read(&plan.ssh.control_key).map_err(|e| {
        LaunchError::Ssh(ssh::SshError::Io {
            action: "read",
            path: plan.ssh.control_key.clone(),
            source: e,
        })
    })?;
    Ok(JobKey::new(&key, &plan.job_label))
}
