//! Worker: Listening + StartingSubtree (own container and every node below it in the
//! fan-out tree; pull progress reported up, ABORT obeyed and passed down) -> Reporting
//! (READY for each node of the subtree, or the failed node) -> Serving (orders passed down,
//! ports shared on request, a loss below reported up) -> TearingDown -> exit 0.

use super::fanout::{self, Connected, ReadyWorker};
use super::files::ssh_config_file;
use super::running::{port_is_free, tear_down, Running};
use super::{job_key, node_err, start_subtree, LaunchError};
use crate::control::{self, ControlError, CoordinatorLink, JobKey, NodeReady, Order, Status};
use crate::docker::PullReport;
use crate::plan::{Plan, PortPair};
use crate::signals::Signals;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// This node's subtree once started: its container, and every node below it READY.
type Started = Result<(Running, Vec<ReadyWorker>), LaunchError>;

pub(super) async fn worker(plan: &Plan) -> Result<i32, LaunchError> {
    let mut signals =
        Signals::install().map_err(|e| node_err(plan)(format!("cannot handle signals: {e}")))?;
    // Checkpoint signals go to the script on the first node; here they end nothing.
    let _ignored =
        Signals::forwarded().map_err(|e| node_err(plan)(format!("cannot handle signals: {e}")))?;
    let key = job_key(plan)?;
    let (server, pair) = bind_port_pair(plan, key.clone()).await?;
    // The parent connects at once; we wait a little longer than anyone above waits.
    let deadline = Instant::now() + plan.tree.wait_for_parent(plan.wait_timeout);
    let (progress, mut pulled) = watch::channel(PullReport::default());
    let (pass_up, mut passed) = mpsc::unbounded_channel();
    let connected = Connected::default();
    let start = start_subtree(plan, &key, pair.sshd, &progress, &connected, Some(&pass_up));
    tokio::pin!(start);
    // One accept for both waits below: dropping it when the start ends first would drop a
    // handshake under way, and the parent would see this node's launcher go away.
    let mut accept = Box::pin(server.accept(deadline));
    // Listening + StartingSubtree: whichever ends first.
    let mut link = tokio::select! {
        link = &mut accept => match link {
            Ok(link) => link,
            Err(e) => {
                // Nobody came: let a start under way end, then remove what it made.
                give_up(plan, &key, &connected, "the launcher above never connected").await;
                return Err(e.into());
            }
        },
        started = &mut start => {
            let link = tokio::select! {
                link = &mut accept => link,
                sig = signals.recv() => {
                    give_up(plan, &key, &connected, &signalled(plan, sig)).await;
                    return Err(LaunchError::Signal(sig));
                }
            };
            drop(accept);
            let links = links_of(&connected);
            return worker_report(plan, &key, server, link, started, links, signals).await;
        }
        sig = signals.recv() => {
            give_up(plan, &key, &connected, &signalled(plan, sig)).await;
            return Err(LaunchError::Signal(sig));
        }
    };
    drop(accept);
    // StartingSubtree with the parent connected: report pull progress here and below (it
    // keeps everyone above waiting), and obey ABORT at once.
    // This node's own progress goes up at most once a period (`Plan::progress_every`),
    // the latest of it (a change in between waits for the next period, never dropped: a
    // pull's last steps keep the first node waiting too). Relayed progress from below
    // goes up as often.
    let every = plan.progress_every();
    let mut last_report = Instant::now() - every;
    let mut unreported = false;
    let mut last_passed = Instant::now() - every;
    let started = loop {
        tokio::select! {
            started = &mut start => break started,
            order = link.next_order() => {
                let why = order_why(plan, order.as_ref());
                give_up(plan, &key, &connected, &why).await;
                return after_order(plan, order);
            }
            Ok(()) = pulled.changed() => {
                pulled.borrow_and_update();
                unreported = true;
            }
            () = tokio::time::sleep_until(last_report + every), if unreported => {
                last_report = Instant::now();
                unreported = false;
                let summary = pulled.borrow().summary.clone();
                let _ = link.report(plan.this_node(), &Status::Pulling(summary)).await;
            }
            Some((node, how_far)) = passed.recv() => {
                // Progress below only keeps the parent waiting: a line now and then does,
                // and thousands of pulling nodes do not flood rank 0.
                if last_passed.elapsed() >= every {
                    last_passed = Instant::now();
                    let _ = link.report(&node, &Status::Pulling(how_far)).await;
                }
            }
            sig = signals.recv() => {
                give_up(plan, &key, &connected, &signalled(plan, sig)).await;
                return Err(LaunchError::Signal(sig));
            }
        }
    };
    let links = links_of(&connected);
    worker_report(plan, &key, server, Ok(link), started, links, signals).await
}

fn links_of(connected: &Connected) -> Vec<Arc<control::WorkerLink>> {
    connected.lock().expect("not poisoned").clone()
}

fn signalled(plan: &Plan, sig: i32) -> String {
    format!("the launcher on {} got signal {sig}", plan.this_node())
}

/// Why the nodes below end with this node, after `order` from above (or its loss).
fn order_why(plan: &Plan, order: Option<&Order>) -> String {
    match order {
        Some(Order::Abort(why)) => why.clone(),
        _ => format!("the launcher above {} went away", plan.this_node()),
    }
}

/// Ends this node's part before it was ready: the nodes below are told to abort, and what
/// its start made is removed.
async fn give_up(plan: &Plan, key: &JobKey, connected: &Connected, why: &str) {
    tokio::join!(
        fanout::abort_all(plan, key, links_of(connected), why),
        tear_down(plan, None)
    );
}

/// The first of the step's port pairs whose ports are both free here, with its control
/// port bound. When none is, the first whose control port is free: the container's start
/// then fails naming the taken sshd port, and the coordinator hears why.
async fn bind_port_pair(
    plan: &Plan,
    key: JobKey,
) -> Result<(control::Server, PortPair), LaunchError> {
    let pairs = &plan.ports.pairs;
    let ordered = pairs
        .iter()
        .filter(|p| port_is_free(p.sshd))
        .chain(pairs.iter().filter(|p| !port_is_free(p.sshd)));
    let mut why = String::new();
    for pair in ordered {
        match control::Server::bind(pair.control, key.clone()).await {
            Ok(server) => {
                if *pair != plan.ports.preferred() {
                    log::info!(
                        "{}: ports {}/{} taken here; using {}/{}",
                        plan.this_node(),
                        plan.ports.preferred().sshd,
                        plan.ports.preferred().control,
                        pair.sshd,
                        pair.control
                    );
                }
                return Ok((server, *pair));
            }
            Err(e) => why = format!("control port {} is not free ({e})", pair.control),
        }
    }
    Err(node_err(plan)(format!(
        "{why}; another job may use it. Fix: pick another pair with --sshd-port"
    )))
}

/// Reporting -> Serving -> TearingDown: tells the parent how the subtree's start went
/// (READY for each node, or the node that failed), then serves until STOP, ABORT, a lost
/// parent or node below, a signal or the container's end; orders go down before this
/// node's container is removed.
async fn worker_report(
    plan: &Plan,
    key: &JobKey,
    server: control::Server,
    link: Result<CoordinatorLink, ControlError>,
    started: Started,
    links: Vec<Arc<control::WorkerLink>>,
    mut signals: Signals,
) -> Result<i32, LaunchError> {
    let ((running, below), mut link) = match (started, link) {
        (Ok(r), Ok(link)) => (r, link),
        (Err(e), Ok(mut link)) => {
            let (node, why) = match &e {
                LaunchError::Node { node, reason } => (node.clone(), reason.clone()),
                other => (plan.this_node().to_string(), other.to_string()),
            };
            let _ = link.report(&node, &Status::Failed(why.clone())).await;
            fanout::abort_all(plan, key, links, &why).await;
            return Err(e);
        }
        (started, Err(e)) => {
            if let Ok((r, _)) = started {
                r.tear_down(plan).await;
            }
            fanout::abort_all(plan, key, links, "the launcher above never connected").await;
            return Err(e.into());
        }
    };
    report_ready(plan, &mut link, &running, &below).await;
    tokio::spawn(server.refuse_others());
    let mut suspend = Signals::suspend_resume()
        .map_err(|e| node_err(plan)(format!("cannot handle signals: {e}")))?;
    let outcome = loop {
        let order = tokio::select! {
            sig = suspend.recv() => {
                running.follow_suspend(plan, sig).await;
                continue;
            }
            order = link.next_order() => order,
            sig = signals.recv() => break Err(LaunchError::Signal(sig)),
            code = running.ended(plan) => break Err(node_err(plan)(format!("the container ended by itself (code {code}) while the job ran"))),
            (node, why) = fanout::lost_below(&links) => {
                let _ = link.report(&node, &Status::Failed(why.clone())).await;
                break Err(LaunchError::Node { node, reason: why });
            }
        };
        // Other nodes took other ports: pass it down, rewrite the ssh config, then report
        // this subtree again.
        let Some(Order::Ports(node_ports)) = order else {
            break Ok(order);
        };
        fanout::send_all(&links, &Order::Ports(node_ports.clone())).await;
        let written = running
            .write(plan, &[ssh_config_file(plan, &node_ports)])
            .await;
        let again = fanout::ready_again(plan, &links).await;
        match (written, again) {
            (Ok(()), Ok(below)) => report_ready(plan, &mut link, &running, &below).await,
            (Err(why), _) => {
                let _ = link.report(plan.this_node(), &Status::Failed(why)).await;
            }
            (_, Err(e)) => {
                let why = e.to_string();
                let _ = link.report(plan.this_node(), &Status::Failed(why)).await;
            }
        }
    };
    // Orders go down first, so the nodes below tear down while this one does.
    let down = async {
        match &outcome {
            Ok(Some(Order::Stop)) => fanout::stop_all(&links).await,
            Ok(order) => {
                fanout::abort_all(plan, key, links.clone(), &order_why(plan, order.as_ref())).await
            }
            Err(LaunchError::Signal(sig)) => {
                fanout::abort_all(plan, key, links.clone(), &signalled(plan, *sig)).await
            }
            Err(e) => fanout::abort_all(plan, key, links.clone(), &e.to_string()).await,
        }
    };
    tokio::join!(down, running.tear_down(plan));
    after_order(plan, outcome?)
}

/// READY for this node and for every node below it.
async fn report_ready(
    plan: &Plan,
    link: &mut CoordinatorLink,
    running: &Running,
    below: &[ReadyWorker],
) {
    let own = NodeReady {
        sshd_port: running.sshd_port,
        image_id: running.image_id.clone(),
    };
    fanout::report_ready(link, plan.this_node(), own, below).await;
}

/// A worker's exit after the coordinator's order (or its loss).
fn after_order(plan: &Plan, order: Option<Order>) -> Result<i32, LaunchError> {
    match order {
        Some(Order::Stop) => Ok(0),
        Some(Order::Ports(_)) => Err(node_err(plan)(
            "the coordinator sent ports before this node was ready".into(),
        )),
        Some(Order::Abort(why)) => {
            log::info!(
                "{}: job aborted by the coordinator: {why}",
                plan.this_node()
            );
            Ok(0)
        }
        None => Err(LaunchError::Control(ControlError::Broken(format!(
            "the launcher on {} (the one above this node) went away; container removed",
            plan.tree
                .parent(plan.node_rank)
                .map_or(plan.nodes[0].as_str(), |p| plan.nodes[p].as_str())
        )))),
    }
}
