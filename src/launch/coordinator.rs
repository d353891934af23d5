//! Coordinator: Preflight -> StartingAll (own container, every worker READY + sshd banner,
//! fail fast; ports shared when some node moved) -> RunningScript -> Stopping (STOP to
//! workers, own container removed) -> exit with the script's code.

use super::container::{log_saved, share, ssh_config_file, start_container};
use super::timing::eprintln_timing;
use super::{job_key, node_err, port_is_free, tear_down, LaunchError, Running, Runtime};
use crate::cli::ImageShare;
use crate::control::{self, JobKey, Order, WorkerLink};
use crate::docker::{self, PullReport};
use crate::plan::Plan;
use crate::probe;
use crate::signals::{self, Signals};
use crate::terminal;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
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

/// Connections being opened at once (handshakes and sshd probes): with thousands of
/// workers the coordinator would otherwise open two descriptors per worker at the same time.
const OPENING_AT_ONCE: usize = 256;

/// A worker that answered READY.
pub struct ReadyWorker {
    /// Its node.
    pub node: String,
    /// The port its sshd listens on.
    pub sshd_port: u16,
    /// The id of the image its container runs.
    pub image_id: String,
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
        .filter(|w| !w.image_id.is_empty() && w.image_id != running.image_id)
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
            short(&first.image_id),
            plan.this_node(),
            short(&running.image_id)
        ),
    })
}

/// Connects to a worker (recording the link in `connected` at once, so it can be told to
/// abort whatever happens), waits for READY, then for its sshd banner from here.
async fn ready_worker(
    plan: &Plan,
    node: String,
    key: &JobKey,
    deadline: Instant,
    connected: &std::sync::Mutex<Vec<Arc<WorkerLink>>>,
    opening: &Semaphore,
) -> Result<ReadyWorker, LaunchError> {
    let (link, pair) = {
        let _slot = opening.acquire().await.expect("never closed");
        control::connect_any(&node, &plan.ports.controls(), key, deadline).await?
    };
    let sshd_port = plan.ports.pairs[pair].sshd;
    let link = Arc::new(link);
    connected.lock().expect("not poisoned").push(link.clone());
    // The deadline moves while the worker's image pull makes progress.
    let mut deadline = deadline;
    let image_id = match link.status(&mut deadline, plan.wait_timeout).await? {
        Ok(id) => id,
        Err(reason) => return Err(LaunchError::Node { node, reason }),
    };
    let banner_by = deadline.max(Instant::now() + plan.sshd_wait());
    let _slot = opening.acquire().await.expect("never closed");
    probe::wait_banner(&node, sshd_port, banner_by)
        .await
        .map_err(|e| LaunchError::Node {
            node: node.clone(),
            reason: format!(
                "sshd on port {sshd_port} does not answer from {}: {e}",
                plan.nodes[0]
            ),
        })?;
    log::debug!("worker {node} ready (sshd port {sshd_port})");
    Ok(ReadyWorker {
        node,
        sshd_port,
        image_id,
    })
}

/// Waits for every worker, failing at the first one that fails; returns what each worker
/// reported (its sshd port and image). Links are recorded in `connected` as soon as they exist, so the caller can tell
/// those workers to abort (and later to stop). The coordinator's own path, public for the
/// scale benchmark.
pub async fn ready_workers(
    plan: &Plan,
    key: &JobKey,
    deadline: Instant,
    connected: &std::sync::Mutex<Vec<Arc<WorkerLink>>>,
) -> Result<Vec<ReadyWorker>, LaunchError> {
    let opening = Semaphore::new(OPENING_AT_ONCE);
    let mut pending: FuturesUnordered<_> = plan.nodes[1..]
        .iter()
        .map(|n| ready_worker(plan, n.clone(), key, deadline, connected, &opening))
        .collect();
    let mut ready = Vec::new();
    while let Some(r) = pending.next().await {
        ready.push(r?);
    }
    Ok(ready)
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
    let order = Order::Ports(node_ports.clone());
    let by = Instant::now() + docker::CALL_TIME;
    let answers = links.iter().map(|l| async {
        l.send(&order).await;
        let mut by = by;
        match l.status(&mut by, plan.wait_timeout).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(reason)) => Err(LaunchError::Node {
                node: l.node.clone(),
                reason,
            }),
            Err(e) => Err(e.into()),
        }
    });
    for answer in futures_util::future::join_all(answers).await {
        answer?;
    }
    running
        .write(plan, &[ssh_config_file(plan, &node_ports)])
        .await
        .map_err(node_err(plan))
}

/// With `--image-share=auto`, while the workers start: a worker that lacks the image and
/// cannot pull it asks in the share, and the first node saves it there (once; a later job
/// finds it saved). Runs until the wait ends.
async fn serve_share(plan: &Plan) -> std::convert::Infallible {
    let never = std::future::pending();
    if plan.image_share != ImageShare::Auto {
        return never.await;
    }
    let image = &plan.container.image;
    let cache = loop {
        if let Ok(cache) = share(plan) {
            break cache;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(id) = cache.id_for_job(image, &plan.job_label) else {
            continue;
        };
        if !cache.take_want(image) {
            continue;
        }
        let saved = match docker::Engine::connect().await {
            Ok(engine) => cache
                .save(&engine, image, &id)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match saved {
            Ok(now) => log_saved(plan, now),
            Err(e) => {
                log::error!("{}: could not share {image}: {e}", plan.this_node());
                return never.await;
            }
        }
    }
}

/// Tells every worker that the script ended (its container is removed, it exits 0).
pub async fn stop_all(links: &[Arc<WorkerLink>]) {
    futures_util::future::join_all(links.iter().map(|l| l.send(&Order::Stop))).await;
}

/// Tells every worker that could be reached to abort (best effort, a few seconds at most).
pub async fn abort_all(plan: &Plan, key: &JobKey, links: Vec<Arc<WorkerLink>>, why: &str) {
    let order = Order::Abort(why.to_string());
    let reached: Vec<String> = links.iter().map(|l| l.node.clone()).collect();
    let by = Instant::now() + Duration::from_secs(3);
    let controls = plan.ports.controls();
    let others = plan.nodes[1..]
        .iter()
        .filter(|n| !reached.contains(n))
        .map(|n| async {
            if let Ok((l, _)) = control::connect_any(n, &controls, key, by).await {
                l.send(&order).await;
            }
        });
    let known = links.iter().map(|l| l.send(&order));
    tokio::join!(
        futures_util::future::join_all(known),
        futures_util::future::join_all(others)
    );
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
    running: &Running,
    links: &[Arc<WorkerLink>],
    signals: &mut Signals,
    forwarded: &mut Signals,
) -> Outcome {
    match &running.runtime {
        Runtime::Docker { engine, .. } => {
            run_script_by_docker(plan, running, engine, links, signals, forwarded).await
        }
        Runtime::Inside(sshd) => run_script_here(plan, sshd, links, signals, forwarded).await,
    }
}

/// Ends when the first worker's launcher goes away; its node.
async fn lost_worker(links: &[Arc<WorkerLink>]) -> String {
    if links.is_empty() {
        return std::future::pending().await;
    }
    let watchers = links.iter().map(|l| {
        Box::pin(async move {
            l.closed().await;
            l.node.clone()
        })
    });
    futures_util::future::select_all(watchers).await.0
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
    let lost = lost_worker(links);
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
            node = &mut lost => break Outcome::Lost(node),
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
    links: &[Arc<WorkerLink>],
    signals: &mut Signals,
    forwarded: &mut Signals,
) -> Outcome {
    let script = plan.script.as_ref().expect("coordinator has a script");
    let mut cmd = vec![script.path.display().to_string()];
    cmd.extend(script.args.iter().cloned());
    let workdir = plan.container.workdir.display().to_string();
    // In hosts mode stdin is the front door's lifeline, not the script's.
    let tty = !plan.hosts_mode && terminal::stdin_is_terminal();
    let started = engine
        .exec(
            &plan.container.name,
            &plan.container.user,
            &workdir,
            cmd,
            tty,
            (!plan.hosts_mode).then(terminal::stdin_chunks),
        )
        .await;
    let mut started = match started {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let _raw = tty.then(terminal::RawMode::enter).flatten();
    let mut winch = tty
        .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok())
        .flatten();
    if let Some((rows, cols)) = tty.then(terminal::window_size).flatten() {
        engine.resize(&started, rows, cols).await;
    }
    let lost = lost_worker(links);
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
            node = &mut lost => return Outcome::Lost(node),
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

pub(super) async fn coordinator(plan: &Plan) -> Result<i32, LaunchError> {
    let t0 = Instant::now();
    let mut signals =
        Signals::install().map_err(|e| node_err(plan)(format!("cannot handle signals: {e}")))?;
    // From the start, so a checkpoint signal never ends the launcher.
    let mut forwarded =
        Signals::forwarded().map_err(|e| node_err(plan)(format!("cannot handle signals: {e}")))?;
    let key = job_key(plan)?;
    if let Err(e) = check_script(plan) {
        abort_all(plan, &key, Vec::new(), &e.to_string()).await;
        return Err(e);
    }
    let deadline = Instant::now() + plan.wait_timeout;
    let script = plan.script.as_ref().expect("coordinator has a script");
    // Own container and every worker at once. The first failure ends the wait: when this
    // node fails the workers are told at once; when a worker fails, our own start (bounded)
    // is let finish so its container can be removed.
    let connected = std::sync::Mutex::new(Vec::new());
    let started: Result<(Running, Vec<ReadyWorker>), LaunchError> = {
        let (progress, _) = watch::channel(PullReport::default());
        let pairs = &plan.ports.pairs;
        let own_port = pairs
            .iter()
            .find(|p| port_is_free(p.sshd))
            .unwrap_or(&pairs[0])
            .sshd;
        let own = start_container(plan, own_port, &progress);
        let workers = async {
            tokio::select! {
                w = ready_workers(plan, &key, deadline, &connected) => w,
                never = serve_share(plan) => match never {},
            }
        };
        tokio::pin!(own, workers);
        tokio::select! {
        r = &mut own => match r {
            Ok(running) => match workers.await {
                Ok(ports) => Ok((running, ports)),
                Err(e) => {
                    running.tear_down(plan).await;
                    Err(e)
                }
            },
            Err(why) => Err(node_err(plan)(why)),
        },
        w = &mut workers => match (w, own.await) {
            (Ok(ports), Ok(running)) => Ok((running, ports)),
            (Ok(_), Err(why)) => Err(node_err(plan)(why)),
            (Err(e), own) => {
                if let Ok(running) = own {
                    running.tear_down(plan).await;
                }
                Err(e)
            }
        },
        sig = signals.recv() => Err(LaunchError::Signal(sig)),
        }
    };
    let links = connected.into_inner().expect("not poisoned");
    let started = match started {
        Ok((running, workers)) => {
            let agreed = match check_one_image(plan, &running, &workers) {
                Ok(()) => {
                    let ports = workers.into_iter().map(|w| (w.node, w.sshd_port)).collect();
                    share_ports(plan, &running, &links, ports).await
                }
                Err(e) => Err(e),
            };
            match agreed {
                Ok(()) => Ok(running),
                Err(e) => {
                    running.tear_down(plan).await;
                    Err(e)
                }
            }
        }
        Err(e) => Err(e),
    };
    let running = match started {
        Ok(r) => r,
        Err(e) => {
            let why = match &e {
                LaunchError::Signal(sig) => format!("coordinator got signal {sig}"),
                other => other.to_string(),
            };
            abort_all(plan, &key, links, &why).await;
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
    let outcome = run_script(plan, &running, &links, &mut signals, &mut forwarded).await;
    let t_end = Instant::now();
    let result = match outcome {
        Outcome::Finished(code) => {
            stop_all(&links).await;
            Ok(i32::try_from(code)
                .ok()
                .filter(|c| (0..=255).contains(c))
                .unwrap_or(1))
        }
        Outcome::Signal(sig) => {
            abort_all(plan, &key, links, &format!("coordinator got signal {sig}")).await;
            Err(LaunchError::Signal(sig))
        }
        Outcome::Lost(node) => {
            let why = format!("the launcher on {node} went away while the script ran");
            abort_all(plan, &key, links, &why).await;
            Err(LaunchError::Node { node, reason: "its launcher went away while the script ran (killed, or the node failed); job stopped".into() })
        }
        Outcome::Died(code) => {
            let why = format!(
                "the container on {} ended by itself (code {code})",
                plan.this_node()
            );
            abort_all(plan, &key, links, &why).await;
            Err(node_err(plan)(format!(
                "the container ended by itself (code {code}) while the script ran"
            )))
        }
        Outcome::Failed(e) => {
            abort_all(plan, &key, links, &e).await;
            Err(LaunchError::Script(e))
        }
    };
    running.tear_down(plan).await;
    eprintln_timing("teardown", t_end);
    result
}
