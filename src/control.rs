//! The control channel between launchers: each worker's launcher listens on the job's
//! control port; the coordinator connects, proves it belongs to the job (a token derived
//! from the user's private key and the job), learns whether the worker's container is ready
//! or why it failed, and later says STOP or ABORT. A closed connection means the other side
//! is gone, so a dead coordinator or worker is noticed at once.
//!
//! Lines: `HELLO <token>` (coordinator), `READY` / `FAILED <why>` (worker), `STOP` /
//! `ABORT <why>` (coordinator).

use sha2::{Digest, Sha256};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::{timeout_at, Instant};

/// A worker's state as reported to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Container up, sshd answering.
    Ready,
    /// The worker could not start; why.
    Failed(String),
}

/// What the coordinator tells a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// The script ended: remove the container and exit 0.
    Stop,
    /// The job failed elsewhere: remove the container and exit.
    Abort(String),
    /// The connection closed without an order: the coordinator is gone.
    Lost,
}

/// A control-channel failure.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    /// Nobody answered in time.
    #[error("{0}")]
    Timeout(String),
    /// The other side broke the protocol or closed the connection.
    #[error("{0}")]
    Broken(String),
}

/// The token proving a connection comes from the same user's job: SHA-256 of the user's
/// private key and the job label.
pub fn token(secret: &[u8], job_label: &str) -> String {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(b"\0mnd-control\0");
    h.update(job_label.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " / ")
}

/// Worker side: the listening control port.
pub struct Server {
    listener: TcpListener,
    token: String,
}

/// Worker side: the authenticated connection from the coordinator.
pub struct CoordinatorLink {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Server {
    /// Binds the control port on all addresses.
    pub async fn bind(port: u16, token: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("0.0.0.0", port)).await?;
        Ok(Server { listener, token })
    }

    /// Waits for the coordinator; a connection without this job's token is told so and closed.
    pub async fn accept(&self, deadline: Instant) -> Result<CoordinatorLink, ControlError> {
        loop {
            let (stream, peer) = timeout_at(deadline, self.listener.accept())
                .await
                .map_err(|_| ControlError::Timeout("the coordinator never connected".into()))?
                .map_err(|e| ControlError::Broken(format!("accept failed: {e}")))?;
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            let mut link = CoordinatorLink {
                reader: BufReader::new(r),
                writer: w,
            };
            let mut line = String::new();
            let hello_by = (Instant::now() + Duration::from_secs(5)).min(deadline);
            let ok = matches!(timeout_at(hello_by, link.reader.read_line(&mut line)).await, Ok(Ok(n)) if n > 0)
                && line.trim_end().strip_prefix("HELLO ") == Some(self.token.as_str());
            if ok {
                return Ok(link);
            }
            log::warn!("control port: refused a connection from {peer} without this job's token");
            let _ = link.report(&Status::Failed(FOREIGN.into())).await;
        }
    }

    /// After the coordinator is connected: answers every further connection (another job
    /// whose ports clash with ours) with a refusal at once, so it fails fast, not at its
    /// deadline.
    pub async fn refuse_others(self) {
        while let Ok((stream, _)) = self.listener.accept().await {
            let (r, w) = stream.into_split();
            let mut link = CoordinatorLink {
                reader: BufReader::new(r),
                writer: w,
            };
            let _ = link.report(&Status::Failed(FOREIGN.into())).await;
        }
    }
}

/// What a worker answers a coordinator of another job.
const FOREIGN: &str = "its control port is in use by another mnd-srun job (ports clash). Fix: choose another --sshd-port";

impl CoordinatorLink {
    /// Tells the coordinator how this node's start went.
    pub async fn report(&mut self, status: &Status) -> std::io::Result<()> {
        let line = match status {
            Status::Ready => "READY\n".to_string(),
            Status::Failed(why) => format!("FAILED {}\n", one_line(why)),
        };
        self.writer.write_all(line.as_bytes()).await
    }

    /// Waits for the coordinator's order (or its loss).
    pub async fn next_order(&mut self) -> Order {
        let mut line = String::new();
        match self.reader.read_line(&mut line).await {
            Ok(n) if n > 0 => match line.trim_end() {
                "STOP" => Order::Stop,
                l => Order::Abort(l.strip_prefix("ABORT ").unwrap_or(l).to_string()),
            },
            _ => Order::Lost,
        }
    }
}

/// Coordinator side: one worker's connection.
/// Methods take `&self`, so one link can be read (status, loss) and written (orders) at once.
pub struct WorkerLink {
    /// The worker's node name.
    pub node: String,
    reader: Mutex<BufReader<OwnedReadHalf>>,
    writer: Mutex<OwnedWriteHalf>,
}

/// Connects to a worker's control port, retrying until its launcher listens or the deadline.
pub async fn connect(
    node: &str,
    port: u16,
    token: &str,
    deadline: Instant,
) -> Result<WorkerLink, ControlError> {
    let mut pause = Duration::from_millis(10);
    let stream = loop {
        let attempt = timeout_at(deadline, TcpStream::connect((node, port))).await;
        match attempt {
            Ok(Ok(s)) => break s,
            Ok(Err(e)) if Instant::now() + pause < deadline => {
                log::trace!("{node}:{port}: {e}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Ok(Err(e)) => return Err(ControlError::Timeout(format!("the launcher on {node} never answered on control port {port} ({e}); is mnd-srun running there (srun -N with one task per node)?"))),
            Err(_) => return Err(ControlError::Timeout(format!("the launcher on {node} never answered on control port {port}"))),
        }
    };
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    w.write_all(format!("HELLO {token}\n").as_bytes())
        .await
        .map_err(|e| ControlError::Broken(format!("{node}: {e}")))?;
    Ok(WorkerLink {
        node: node.to_string(),
        reader: Mutex::new(BufReader::new(r)),
        writer: Mutex::new(w),
    })
}

impl WorkerLink {
    /// Waits for the worker's status line.
    pub async fn status(&self, deadline: Instant) -> Result<Status, ControlError> {
        let mut line = String::new();
        let mut reader = self.reader.lock().await;
        match timeout_at(deadline, reader.read_line(&mut line)).await {
            Err(_) => Err(ControlError::Timeout(format!(
                "{} did not get its container ready in time",
                self.node
            ))),
            Ok(Ok(n)) if n > 0 => match line.trim_end() {
                "READY" => Ok(Status::Ready),
                l => Ok(Status::Failed(
                    l.strip_prefix("FAILED ").unwrap_or(l).to_string(),
                )),
            },
            _ => Err(ControlError::Broken(format!(
                "the launcher on {} went away (or refused this job's token)",
                self.node
            ))),
        }
    }

    /// Sends an order; a worker already gone is not an error.
    pub async fn send(&self, order: &Order) {
        let line = match order {
            Order::Stop => "STOP\n".to_string(),
            Order::Abort(why) => format!("ABORT {}\n", one_line(why)),
            Order::Lost => return,
        };
        let _ = self.writer.lock().await.write_all(line.as_bytes()).await;
    }

    /// Resolves when the worker's launcher closes the connection (it died or left).
    pub async fn closed(&self) {
        let mut line = String::new();
        let mut reader = self.reader.lock().await;
        while matches!(reader.read_line(&mut line).await, Ok(n) if n > 0) {
            line.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_status_and_orders() {
        let server = Server::bind(0, token(b"k", "1.0")).await.unwrap();
        let port = server.listener.local_addr().unwrap().port();
        let deadline = Instant::now() + Duration::from_secs(5);
        let worker = tokio::spawn(async move {
            let mut link = server.accept(deadline).await.unwrap();
            link.report(&Status::Failed("image x\nmissing".into()))
                .await
                .unwrap();
            link.next_order().await
        });
        let w = connect("127.0.0.1", port, &token(b"k", "1.0"), deadline)
            .await
            .unwrap();
        assert_eq!(
            w.status(deadline).await.unwrap(),
            Status::Failed("image x / missing".into())
        );
        w.send(&Order::Abort("node2 failed".into())).await;
        assert_eq!(worker.await.unwrap(), Order::Abort("node2 failed".into()));
    }

    #[tokio::test]
    async fn wrong_token_is_refused_and_loss_is_seen() {
        let server = Server::bind(0, token(b"k", "1.0")).await.unwrap();
        let port = server.listener.local_addr().unwrap().port();
        let deadline = Instant::now() + Duration::from_secs(5);
        let stranger = connect("127.0.0.1", port, &token(b"other", "1.0"), deadline)
            .await
            .unwrap();
        let worker = tokio::spawn(async move {
            let mut link = server.accept(deadline).await.unwrap();
            link.report(&Status::Ready).await.unwrap();
            link.next_order().await
        });
        match stranger.status(deadline).await {
            Ok(Status::Failed(why)) => assert!(why.contains("another mnd-srun job"), "{why}"),
            other => panic!("a foreign coordinator must be refused, got {other:?}"),
        }
        let w = connect("127.0.0.1", port, &token(b"k", "1.0"), deadline)
            .await
            .unwrap();
        assert_eq!(w.status(deadline).await.unwrap(), Status::Ready);
        drop(w);
        assert_eq!(worker.await.unwrap(), Order::Lost);
    }

    #[tokio::test]
    async fn after_the_coordinator_other_jobs_are_refused_at_once() {
        let server = Server::bind(0, token(b"k", "1.0")).await.unwrap();
        let port = server.listener.local_addr().unwrap().port();
        let deadline = Instant::now() + Duration::from_secs(5);
        let ours = connect("127.0.0.1", port, &token(b"k", "1.0"), deadline)
            .await
            .unwrap();
        let link = server.accept(deadline).await.unwrap();
        tokio::spawn(server.refuse_others());
        let t = Instant::now();
        let other = connect("127.0.0.1", port, &token(b"k", "2.0"), deadline)
            .await
            .unwrap();
        assert!(matches!(
            other.status(deadline).await,
            Ok(Status::Failed(_))
        ));
        assert!(t.elapsed() < Duration::from_secs(2));
        drop((ours, link));
    }

    #[tokio::test]
    async fn nobody_listening_times_out_with_the_node_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = connect(
            "127.0.0.1",
            port,
            "t",
            Instant::now() + Duration::from_millis(300),
        )
        .await
        .err()
        .unwrap();
        assert!(e.to_string().contains("127.0.0.1 never answered"), "{e}");
    }
}
