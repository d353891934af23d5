//! This node's side of the fan-out tree (see `tree`): the control links to its children,
//! what comes up them (every node below READY, pull progress, a failure or a loss, each
//! naming its node) and the orders going down. The coordinator and every relaying worker
//! use it alike; a node with no children has nothing to do here.

use super::LaunchError;
use crate::control::{self, CoordinatorLink, JobKey, NodeReady, Order, Status, WorkerLink};
use crate::docker;
use crate::plan::Plan;
use crate::probe;
use futures_util::future::{join_all, BoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// Connections being opened at once (handshakes and sshd probes).
const OPENING_AT_ONCE: usize = 256;
/// How long an ABORT tries to reach a launcher not yet connected, per level.
const ABORT_REACH: Duration = Duration::from_secs(3);

/// A node that answered READY, as reported up the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyWorker {
    /// Its node.
    pub node: String,
    /// How it is reached, and the image it runs.
    pub ready: NodeReady,
}

/// The links to this node's children, recorded as soon as each exists, so that they can be
/// told to abort whatever happens.
pub type Connected = Mutex<Vec<Arc<WorkerLink>>>;

/// Where a relay sends the pull progress of nodes below it: (node, how far).
pub type PassUp = mpsc::UnboundedSender<(String, String)>;

/// Connects to each of this node's children and waits until every node below is READY
/// (each child's sshd banner checked from here), failing at the first failure, which names
/// its node. The coordinator's and every relay's path (public for the scale benchmark).
pub async fn ready_below(
    plan: &Plan,
    key: &JobKey,
    deadline: Instant,
    connected: &Connected,
    pass_up: Option<&PassUp>,
) -> Result<Vec<ReadyWorker>, LaunchError> {
    let opening = Semaphore::new(OPENING_AT_ONCE);
    let mut pending: FuturesUnordered<_> = plan
        .tree
        .children(plan.node_rank)
        .map(|child| ready_child(plan, child, key, deadline, connected, &opening, pass_up))
        .collect();
    let mut ready = Vec::new();
    while let Some(r) = pending.next().await {
        ready.extend(r?);
    }
    Ok(ready)
}

/// One child: connect, every node of its subtree READY, then its sshd banner from here.
async fn ready_child(
    plan: &Plan,
    child: usize,
    key: &JobKey,
    deadline: Instant,
    connected: &Connected,
    opening: &Semaphore,
    pass_up: Option<&PassUp>,
) -> Result<Vec<ReadyWorker>, LaunchError> {
    let node = &plan.nodes[child];
    let (link, _) = {
        let _slot = opening.acquire().await.expect("never closed");
        control::connect_any(node, &plan.ports.controls(), key, deadline).await?
    };
    let link = Arc::new(link);
    connected.lock().expect("not poisoned").push(link.clone());
    // The deadline moves while an image pull below makes progress.
    let mut deadline = deadline;
    let ready = subtree_ready(plan, &link, child, &mut deadline, pass_up).await?;
    let sshd_port = ready
        .iter()
        .find(|w| &w.node == node)
        .map_or(plan.ports.preferred().sshd, |w| w.ready.sshd_port);
    let banner_by = deadline.max(Instant::now() + plan.sshd_wait());
    let _slot = opening.acquire().await.expect("never closed");
    probe::wait_banner(node, sshd_port, banner_by)
        .await
        .map_err(|e| LaunchError::Node {
            node: node.clone(),
            reason: format!(
                "sshd on port {sshd_port} does not answer from {}: {e}",
                plan.this_node()
            ),
        })?;
    log::debug!("{node} and the {} node(s) below it ready", ready.len() - 1);
    Ok(ready)
}

/// Reads `link` until every node of `child`'s subtree reported READY; the first FAILED
/// ends it, naming its node. Pull progress goes to `pass_up`.
async fn subtree_ready(
    plan: &Plan,
    link: &WorkerLink,
    child: usize,
    deadline: &mut Instant,
    pass_up: Option<&PassUp>,
) -> Result<Vec<ReadyWorker>, LaunchError> {
    let want = plan.tree.subtree_size(child);
    let mut ready = Vec::with_capacity(want);
    let mut pass_on = |node: &str, how_far: &str| {
        if let Some(up) = pass_up {
            let _ = up.send((node.to_string(), how_far.to_string()));
        }
    };
    while ready.len() < want {
        match link
            .status(deadline, plan.wait_timeout, &mut pass_on)
            .await?
        {
            (node, Ok(r)) => ready.push(ReadyWorker { node, ready: r }),
            (node, Err(reason)) => return Err(LaunchError::Node { node, reason }),
        }
    }
    Ok(ready)
}

/// Tells the parent READY for this node (`node`, `own`) and for every node below it.
pub async fn report_ready(
    link: &mut CoordinatorLink,
    node: &str,
    own: NodeReady,
    below: &[ReadyWorker],
) {
    let _ = link.report(node, &Status::Ready(own)).await;
    for w in below {
        let _ = link.report(&w.node, &Status::Ready(w.ready.clone())).await;
    }
}

/// After a PORTS order went down: waits until every node below answered READY again.
pub async fn ready_again(
    plan: &Plan,
    links: &[Arc<WorkerLink>],
) -> Result<Vec<ReadyWorker>, LaunchError> {
    let by = Instant::now() + docker::CALL_TIME;
    let answers = links.iter().map(|l| async move {
        let child = plan.nodes.iter().position(|n| *n == l.node).unwrap_or(0);
        subtree_ready(plan, l, child, &mut by.clone(), None).await
    });
    let mut ready = Vec::new();
    for answer in join_all(answers).await {
        ready.extend(answer?);
    }
    Ok(ready)
}

/// Passes an order to every child (each passes it on below).
pub async fn send_all(links: &[Arc<WorkerLink>], order: &Order) {
    join_all(links.iter().map(|l| l.send(order))).await;
}

/// Tells every launcher below this node to stop: the script ended.
pub async fn stop_all(links: &[Arc<WorkerLink>]) {
    send_all(links, &Order::Stop).await;
}

/// Tells every launcher below this node to abort (best effort, a few seconds a level at
/// most): the connected children at once; a child not connected yet is reached now, and
/// when it cannot be, its own children are, so a lost relay leaves nobody waiting.
pub async fn abort_all(plan: &Plan, key: &JobKey, links: Vec<Arc<WorkerLink>>, why: &str) {
    let order = Order::Abort(why.to_string());
    let reached: HashSet<&str> = links.iter().map(|l| l.node.as_str()).collect();
    let opening = Semaphore::new(OPENING_AT_ONCE);
    let unreached = plan
        .tree
        .children(plan.node_rank)
        .filter(|&c| !reached.contains(plan.nodes[c].as_str()))
        .map(|c| abort_unreached(plan, key, c, &order, &opening));
    tokio::join!(send_all(&links, &order), join_all(unreached));
}

/// Reaches `rank`'s launcher with `order`, or else the launchers below it.
fn abort_unreached<'a>(
    plan: &'a Plan,
    key: &'a JobKey,
    rank: usize,
    order: &'a Order,
    opening: &'a Semaphore,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let reached = {
            let _slot = opening.acquire().await.expect("never closed");
            let by = Instant::now() + ABORT_REACH;
            control::connect_any(&plan.nodes[rank], &plan.ports.controls(), key, by).await
        };
        match reached {
            Ok((link, _)) => link.send(order).await,
            Err(_) => {
                let below = plan
                    .tree
                    .children(rank)
                    .map(|c| abort_unreached(plan, key, c, order, opening));
                join_all(below).await;
            }
        }
    })
}

/// Ends when a node below is lost (a child's launcher went away, or a relay reports a node
/// below it lost): the node and why. Never ends without children.
pub async fn lost_below(links: &[Arc<WorkerLink>]) -> (String, String) {
    if links.is_empty() {
        return std::future::pending().await;
    }
    let watchers = links.iter().map(|l| Box::pin(l.lost()));
    futures_util::future::select_all(watchers).await.0
}
