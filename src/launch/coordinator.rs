//! Coordinator: Preflight -> StartingSubtree (own container, every node READY + sshd banner,
//! fail fast; ports shared when some node moved) -> RunningScript -> Stopping (STOP to
//! workers, own container removed) -> exit with the script's code.

use super::fanout::{self, Connected, ReadyWorker};
use super::files::ssh_config_file;
use super::running::{port_is_free, tear_down, Running, Runtime};
use super::script::{self, ScriptExec};
use super::timing::eprintln_timing;
use super::{job_key, node_err, start_subtree, LaunchError, Report};
use crate::control::{JobKey, Order, WorkerLink};
use crate::docker::{self, PullReport};
use crate::plan::Plan;
use crate::signals::{self, Signals};
use crate::terminal;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;

/// Checks the script before anything starts.
fn check_script(plan: &Plan) -> Result<(), LaunchError> {
    let Some(script) = &plan.script else {
        return Ok(());
    };
    let p = &script.path;
    let meta = std::fs::metadata(p).map_err(|e| {
        LaunchError::Script(format!("script {} cannot be used: {e}. Fix: give the path of an existing script (relative paths start from the current directory)", p.display()))
    })?;
    if !meta.is_file() {
        return Err(LaunchError::Script(format!(
            "script {} is not a file",
            p.display()
        )));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(LaunchError::Script(format!(
            "script {} is not executable. Fix: chmod +x {}",
            p.display(),
            p.display()
        )));
    }
    Ok(())
}

/// Every node must run the image the first node runs: a tag can point to different images
/// on different nodes (built or pulled at other times), and a job of mixed images fails in
/// ways that are hard to trace. The nodes that differ are named.
fn check_one_image(
    plan: &Plan,
    running: &Running,
    workers: &[ReadyWorker],
) -> Result<(), LaunchError> {
    let short = |id: &str| {
        id.trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>()
    };
    let differ: Vec<&ReadyWorker> = workers
        .iter()
        .filter(|w| !w.ready.image_id.is_empty() && w.ready.image_id != running.image_id)
        .collect();
    let Some(first) = differ.first() else {
        return Ok(());
    };
    let names: Vec<&str> = differ.iter().map(|w| w.node.as_str()).collect();
    Err(LaunchError::Node {
        node: names.join(","),
        reason: format!(
            "image '{}' there is {} but on {} it is {}: the tag points to different images on different nodes. Fix: pull or load the same image on every node (--pull=always), or name it by digest (IMAGE@sha256:...)",
            plan.container.image,
            short(&first.ready.image_id),
            plan.this_node(),
            short(&running.image_id)
        ),
    })
}

/// When some node took another port pair than the preferred one, every container learns
/// each node's sshd port (workers rewrite their ssh config and answer READY again).
async fn share_ports(
    plan: &Plan,
    running: &Running,
    links: &[Arc<WorkerLink>],
    mut node_ports: Vec<(String, u16)>,
) -> Result<(), LaunchError> {
    node_ports.push((plan.this_node().to_string(), running.sshd_port));
    let preferred = plan.ports.preferred().sshd;
    if node_ports.iter().all(|(_, p)| *p == preferred) {
        return Ok(());
    }
    node_ports.sort_by_key(|(n, _)| plan.nodes.iter().position(|m| m == n));
    log::info!("nodes on other ports than {preferred}: {node_ports:?}");
    fanout::send_all(links, &Order::Ports(node_ports.clone())).await;
    fanout::ready_again(plan, links).await?;
    running
        .write(plan, &[ssh_config_file(plan, &node_ports)])
        .await
        .map_err(node_err(plan))
}

/// Every node runs the same image, and every node knows the others' sshd ports.
async fn agree(
    plan: &Plan,
    running: &Running,
    workers: Vec<ReadyWorker>,
    links: &[Arc<WorkerLink>],
) -> Result<(), LaunchError> {
    check_one_image(plan, running, &workers)?;
    let ports = workers
        .into_iter()
        .map(|w| (w.node, w.ready.sshd_port))
        .collect();
    share_ports(plan, running, links, ports).await
}

/// After the script: STOP down the tree when it finished, else report why and ABORT with the
/// reason; the launcher's exit code or error.
async fn finish(
    plan: &Plan,
    key: &JobKey,
    links: Vec<Arc<WorkerLink>>,
    outcome: Outcome,
    report: Report<'_>,
) -> Result<i32, LaunchError> {
    let (why, error) = match outcome {
        Outcome::Finished(code) => {
            fanout::stop_all(&links).await;
            return Ok(i32::try_from(code)
                .ok()
                .filter(|c| (0..=255).contains(c))
                .unwrap_or(1));
        }
        Outcome::Signal(sig) => (
            format!("coordinator got signal {sig}"),
            LaunchError::Signal(sig),
        ),
        Outcome::Lost(node) => (
            format!("the launcher on {node} went away while the script ran"),
            LaunchError::Node { node, reason: "its launcher went away while the script ran (killed, or the node failed); job stopped".into() },
        ),
        Outcome::Died(code) => (
            format!(
                "the container on {} ended by itself (code {code})",
                plan.this_node()
            ),
            node_err(plan)(format!(
                "the container ended by itself (code {code}) while the script ran"
            )),
        ),
        Outcome::Failed(e) => (e.clone(), LaunchError::Script(e)),
    };
    end_job(plan, key, links, &why, &error, report).await;
    Err(error)
}

/// Says why the job ends, at once (see [`Report`]), then stops every node below for `why`.
async fn end_job(
    plan: &Plan,
    key: &JobKey,
    links: Vec<Arc<WorkerLink>>,
    why: &str,
    error: &LaunchError,
    report: Report<'_>,
) {
    report(error);
    fanout::abort_all(plan, key, links, why).await;
}

/// How the script's run ended.
enum Outcome {
    /// The script exited with this code.
    Finished(i64),
    /// A signal that ends the job.
    Signal(i32),
    /// A worker's launcher went away.
    Lost(String),
    /// The coordinator's own container ended.
    Died(i64),
    /// The script could not be run (Docker failed, or it could not start).
    Failed(String),
}

/// Runs the script in this node's container; ends with the script, a terminating signal, a
/// lost worker or the container's end.
async fn run_script(
    plan: &Plan,
    running: &mut Running,
    links: &[Arc<WorkerLink>],
    signals: &mut Signals,
    forwarded: &mut Signals,
) -> Outcome {
    let gated = running.take_script();
    match &running.runtime {
        Runtime::Docker { engine, .. } => {
            run_script_by_docker(plan, running, engine, gated, links, signals, forwarded).await
        }
        Runtime::Inside(sshd) => run_script_here(plan, sshd, links, signals, forwarded).await,
    }
}

/// The script as a child of the launcher, inside the plugin's container: it has the task's
/// stdin and terminal; SIGUSR1/SIGUSR2 are passed on to it and its children (Slurm's
/// suspend and resume reach it directly).
async fn run_script_here(
    plan: &Plan,
    sshd: &super::inside::Sshd,
    links: &[Arc<WorkerLink>],
    signals: &mut Signals,
    forwarded: &mut Signals,
) -> Outcome {
    let mut child = match super::inside::spawn_script(plan) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot start the script: {e}")),
    };
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let lost = fanout::lost_below(links);
    tokio::pin!(lost);
    let outcome = loop {
        tokio::select! {
            status = child.wait() => break match status {
                Ok(s) => Outcome::Finished(s.code().map_or_else(
                    || 128 + i64::from(std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)),
                    i64::from,
                )),
                Err(e) => Outcome::Failed(e.to_string()),
            },
            sig = signals.recv() => break Outcome::Signal(sig),
            (node, _) = &mut lost => break Outcome::Lost(node),
            code = sshd.ended() => break Outcome::Died(code),
            sig = forwarded.recv() => {
                let reached = pid.map_or(0, |pid| signals::signal_tree(pid, sig));
                log::info!("signal {sig} passed on to {reached} process(es) of the script");
            }
        }
    };
    if !matches!(outcome, Outcome::Finished(_)) {
        if let Some(pid) = pid {
            signals::signal_tree(pid, libc::SIGKILL);
        }
    }
    outcome
}

/// The script by `docker exec` in this node's container: the launcher's stdin is its stdin
/// (a terminal under `srun --pty`, following the window size), SIGUSR1/SIGUSR2 are passed on
/// to it and its children.
async fn run_script_by_docker(
    plan: &Plan,
    running: &Running,
    engine: &docker::Engine,
    gated: Option<ScriptExec>,
    links: &[Arc<WorkerLink>],
    signals: &mut Signals,
    forwarded: &mut Signals,
) -> Outcome {
    let exec = match gated {
        Some(exec) => Ok(exec),
        None => script::start_now(plan, engine).await,
    };
    let mut exec = match exec {
        Ok(e) => e,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    exec.open(plan);
    let tty = exec.tty;
    let mut started = exec.started;
    let _raw = tty.then(terminal::RawMode::enter).flatten();
    let mut winch = tty
        .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok())
        .flatten();
    if let Some((rows, cols)) = tty.then(terminal::window_size).flatten() {
        engine.resize(&started, rows, cols).await;
    }
    let lost = fanout::lost_below(links);
    let died = engine.wait_exit(&plan.container.name);
    tokio::pin!(lost, died);
    let mut suspend = Signals::suspend_resume().ok();
    loop {
        tokio::select! {
            Some(sig) = async { Some(suspend.as_mut()?.recv().await) }, if suspend.is_some() => {
                running.follow_suspend(plan, sig).await;
            }
            () = &mut started.io => {
                return match engine.exit_code(&started).await {
                    Ok(code) => Outcome::Finished(code),
                    Err(e) => Outcome::Failed(e.to_string()),
                };
            }
            sig = signals.recv() => return Outcome::Signal(sig),
            (node, _) = &mut lost => return Outcome::Lost(node),
            code = &mut died => return Outcome::Died(code),
            sig = forwarded.recv() => {
                let pid = engine.pid(&started).await;
                let reached = pid.map_or(0, |pid| signals::signal_tree(pid, sig));
                log::info!("signal {sig} passed on to {reached} process(es) of the script");
            }
            Some(()) = async { winch.as_mut()?.recv().await }, if winch.is_some() => {
                if let Some((rows, cols)) = terminal::window_size() {
                    engine.resize(&started, rows, cols).await;
                }
            }
        }
    }
}

pub(super) async fn coordinator(plan: &Plan, report: Report<'_>) -> Result<i32, LaunchError> {
    let t0 = Instant::now();
    let mut signals =
        Signals::install().map_err(|e| node_err(plan)(format!("cannot handle signals: {e}")))?;
    // From the start, so a checkpoint signal never ends the launcher.
    let mut forwarded =
        Signals::forwarded().map_err(|e| node_err(plan)(format!("cannot handle signals: {e}")))?;
    let key = job_key(plan)?;
    if let Err(e) = check_script(plan) {
        end_job(plan, &key, Vec::new(), &e.to_string(), &e, report).await;
        return Err(e);
    }
    let script = plan.script.as_ref().expect("coordinator has a script");
    // Own container and every node below at once; the first failure ends the wait.
    let connected = Connected::default();
    let started = {
        let (progress, _) = watch::channel(PullReport::default());
        let pairs = &plan.ports.pairs;
        let own_port = pairs
            .iter()
            .find(|p| port_is_free(p.sshd))
            .unwrap_or(&pairs[0])
            .sshd;
        tokio::select! {
            r = start_subtree(plan, &key, own_port, &progress, &connected, None) => r,
            sig = signals.recv() => Err(LaunchError::Signal(sig)),
        }
    };
    let links = connected.into_inner().expect("not poisoned");
    let started = match started {
        Ok((running, workers)) => match agree(plan, &running, workers, &links).await {
            Ok(()) => Ok(running),
            Err(e) => {
                running.tear_down(plan).await;
                Err(e)
            }
        },
        Err(e) => Err(e),
    };
    let mut running = match started {
        Ok(r) => r,
        Err(e) => {
            let why = match &e {
                LaunchError::Signal(sig) => format!("coordinator got signal {sig}"),
                other => other.to_string(),
            };
            end_job(plan, &key, links, &why, &e, report).await;
            if matches!(e, LaunchError::Signal(_)) {
                tear_down(plan, None).await;
            }
            return Err(e);
        }
    };
    log::info!(
        "all {} nodes ready after {:?}; running {}",
        plan.nodes.len(),
        t0.elapsed(),
        script.path.display()
    );
    eprintln_timing("ready", t0);
    let outcome = run_script(plan, &mut running, &links, &mut signals, &mut forwarded).await;
    let t_end = Instant::now();
    let result = finish(plan, &key, links, outcome, report).await;
    running.tear_down(plan).await;
    eprintln_timing("teardown", t_end);
    result
}
