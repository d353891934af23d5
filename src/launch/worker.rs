//! Worker: Listening + StartingContainer (pull progress reported, ABORT obeyed) ->
//! Reporting -> Serving (ports shared on request) -> TearingDown -> exit 0.

use super::container::{ssh_config_file, start_container};
use super::{job_key, node_err, port_is_free, tear_down, LaunchError, Running};
use crate::control::{self, ControlError, JobKey, Order, Status};
use crate::docker::PullReport;
use crate::plan::{Plan, PortPair};
use crate::signals::Signals;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub(super) async fn worker(plan: &Plan) -> Result<i32, LaunchError> {
    let mut signals =
        Signals::install().map_err(|e| node_err(plan)(format!("cannot handle signals: {e}")))?;
    // Checkpoint signals go to the script on the first node; here they end nothing.
    let _ignored =
        Signals::forwarded().map_err(|e| node_err(plan)(format!("cannot handle signals: {e}")))?;
    let key = job_key(plan)?;
    let (server, pair) = bind_port_pair(plan, key).await?;
    // The coordinator connects at once; we wait a little longer than it waits for us.
    let deadline = Instant::now() + plan.wait_timeout + Duration::from_secs(10);
    let (progress, mut pulled) = watch::channel(PullReport::default());
    let start = start_container(plan, pair.sshd, &progress);
    tokio::pin!(start);
    // Listening + StartingContainer: whichever ends first.
    let mut link = tokio::select! {
        link = server.accept(deadline) => match link {
            Ok(link) => link,
            Err(e) => {
                // Nobody came: let a start under way end, then remove what it made.
                tear_down(plan, None).await;
                return Err(e.into());
            }
        },
        started = &mut start => {
            let link = tokio::select! {
                link = server.accept(deadline) => link,
                sig = signals.recv() => {
                    tear_down(plan, None).await;
                    return Err(LaunchError::Signal(sig));
                }
            };
            return worker_report(plan, server, link, started, signals).await;
        }
        sig = signals.recv() => {
            tear_down(plan, None).await;
            return Err(LaunchError::Signal(sig));
        }
    };
    // StartingContainer with the coordinator connected: report pull progress (it keeps the
    // coordinator waiting), and obey ABORT at once.
    let mut last_report = Instant::now() - Duration::from_secs(1);
    let started = loop {
        tokio::select! {
            started = &mut start => break started,
            order = link.next_order() => {
                tear_down(plan, None).await;
                return after_order(plan, order);
            }
            Ok(()) = pulled.changed() => {
                if last_report.elapsed() >= Duration::from_secs(1) {
                    last_report = Instant::now();
                    let summary = pulled.borrow_and_update().summary.clone();
                    let _ = link.report(&Status::Pulling(summary)).await;
                }
            }
            sig = signals.recv() => {
                tear_down(plan, None).await;
                return Err(LaunchError::Signal(sig));
            }
        }
    };
    worker_report(plan, server, Ok(link), started, signals).await
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

/// Reporting -> Serving -> TearingDown: tells the coordinator how the start went, then
/// serves until STOP, ABORT, a lost coordinator, a signal or the container's end.
async fn worker_report(
    plan: &Plan,
    server: control::Server,
    link: Result<control::CoordinatorLink, ControlError>,
    started: Result<Running, String>,
    mut signals: Signals,
) -> Result<i32, LaunchError> {
    let (running, mut link) = match (started, link) {
        (Ok(r), Ok(link)) => (r, link),
        (Err(why), Ok(mut link)) => {
            let _ = link.report(&Status::Failed(why.clone())).await;
            return Err(node_err(plan)(why));
        }
        (running, Err(e)) => {
            if let Ok(r) = running {
                r.tear_down(plan).await;
            }
            return Err(e.into());
        }
    };
    let _ = link.report(&Status::Ready(running.image_id.clone())).await;
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
        };
        // Other nodes took other ports: rewrite the ssh config, then report again.
        let Some(Order::Ports(node_ports)) = order else {
            break Ok(order);
        };
        let status = match running
            .write(plan, &[ssh_config_file(plan, &node_ports)])
            .await
        {
            Ok(()) => Status::Ready(running.image_id.clone()),
            Err(e) => Status::Failed(e),
        };
        let _ = link.report(&status).await;
    };
    running.tear_down(plan).await;
    after_order(plan, outcome?)
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
            "the coordinator on {} went away; container removed",
            plan.nodes[0]
        )))),
    }
}
