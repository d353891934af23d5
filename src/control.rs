//! The control channel between launchers: each worker's launcher listens on the job's
//! control port; the coordinator connects, and the two prove to each other that they hold
//! the user's control key (a 0600 file beside the ssh material, not the ssh identity),
//! learns whether the worker's container is ready or why it failed, and later says STOP or
//! ABORT. A closed connection means the other side is gone, so a dead coordinator or worker
//! is noticed at once.
//!
//! Handshake (mutual challenge-response; nothing secret or replayable ever crosses):
//!   coordinator: `HELLO <job> <nonce_c>`
//!   worker:      `CHALLENGE <nonce_w> <HMAC(key, "worker", job, nonce_c, nonce_w)>`
//!                (or `FAILED <why>` when `<job>` is another job: ports clash)
//!   coordinator: `PROVE <HMAC(key, "coordinator", job, nonce_c, nonce_w)>`
//! then, from the worker, one `READY <node> <sshd port> <image>` for each node of its
//! subtree in the fan-out tree (itself and the nodes it relays for; see `tree`), any number
//! of `PULLING <node> <how far>` while an image comes, or `FAILED <node> <why>` naming the
//! node that failed (also later, when a node below is lost); and from the coordinator (or
//! a relay, passing it on) `PORTS ...`, `STOP` or `ABORT <why>`. Every
//! line is at most `MAX_LINE` bytes; the worker serves connections concurrently, each with
//! `HANDSHAKE_TIME` to prove itself, so a silent or slow peer holds nobody up.

use futures_util::stream::{FuturesUnordered, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::{timeout_at, Instant};

/// Longest line either side accepts (a status line carries a short reason).
pub const MAX_LINE: u64 = 4096;
/// Read buffer of each link the coordinator holds.
const LINK_BUFFER: usize = 512;
/// Time a connecting peer has to complete the handshake.
pub const HANDSHAKE_TIME: Duration = Duration::from_secs(5);

/// A node's state as reported up the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Still pulling the image, and making progress (the summary says how far).
    Pulling(String),
    /// Container up, sshd answering.
    Ready(NodeReady),
    /// The node could not start, or was lost; why.
    Failed(String),
}

/// A node whose container is up and whose sshd answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReady {
    /// The port its sshd listens on.
    pub sshd_port: u16,
    /// The id of the image its container runs.
    pub image_id: String,
}

/// What the coordinator tells a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Some nodes took other ports than the preferred ones: each node's sshd port, for the
    /// container's ssh config; answer READY (or FAILED) again.
    Ports(Vec<(String, u16)>),
    /// The script ended: remove the container and exit 0.
    Stop,
    /// The job failed elsewhere: remove the container and exit.
    Abort(String),
}

/// A control-channel failure.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    /// Nobody answered in time.
    #[error("{0}")]
    Timeout(String),
    /// The other side broke the protocol, failed to prove itself, or closed the connection.
    #[error("{0}")]
    Broken(String),
}

/// What both ends of one job's control channel share: the user's control key and the job.
#[derive(Clone)]
pub struct JobKey {
    key: Vec<u8>,
    job: String,
}

impl JobKey {
    /// The key of `job` ("JOB.STEP") from the user's control key bytes.
    pub fn new(key: &[u8], job: &str) -> Self {
        JobKey {
            key: key.to_vec(),
            job: job.to_string(),
        }
    }

    fn mac(&self, role: &str, nonce_c: &str, nonce_w: &str) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        for part in ["mnd-control-v3", role, &self.job, nonce_c, nonce_w] {
            m.update(part.as_bytes());
            m.update(b"\0");
        }
        m
    }

    fn prove(&self, role: &str, nonce_c: &str, nonce_w: &str) -> String {
        hex(&self.mac(role, nonce_c, nonce_w).finalize().into_bytes())
    }

    /// Constant-time check of the other side's proof.
    fn verify(&self, role: &str, nonce_c: &str, nonce_w: &str, proof: &str) -> bool {
        unhex(proof).is_some_and(|p| self.mac(role, nonce_c, nonce_w).verify_slice(&p).is_ok())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A fresh random nonce (128 bits, hex).
fn nonce() -> String {
    use ssh_key::rand_core::{OsRng, RngCore};
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    hex(&b)
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " / ")
}

/// A node name or image id as one word of a line.
fn one_word(s: &str) -> String {
    s.replace(|c: char| c.is_whitespace(), "_")
}

/// Reads a status line's `<node> <rest>`, `None` for anything else.
fn status_line(line: &str) -> Option<(&str, String, Status)> {
    let (kind, rest) = line.split_once(' ')?;
    let (node, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = match kind {
        "PULLING" => Status::Pulling(rest.to_string()),
        "FAILED" => Status::Failed(rest.to_string()),
        "READY" => {
            let (port, image) = rest.split_once(' ').unwrap_or((rest, ""));
            Status::Ready(NodeReady {
                sshd_port: port.parse().ok()?,
                image_id: image.to_string(),
            })
        }
        _ => return None,
    };
    Some((kind, node.to_string(), status))
}

/// A connection's incoming lines, each at most `MAX_LINE` bytes. Cancel-safe: the part of a
/// line read when a `select!` went another way stays here, and the next call completes it
/// (the worker and the coordinator wait for a line and for other things at once).
struct Lines<R> {
    reader: BufReader<R>,
    partial: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> Lines<R> {
    fn new(reader: BufReader<R>) -> Self {
        Lines {
            reader,
            partial: Vec::new(),
        }
    }

    /// The next line, without its line end; `None` at end of input or when the line is
    /// too long.
    async fn next(&mut self) -> Option<String> {
        loop {
            let room = MAX_LINE.saturating_sub(self.partial.len() as u64);
            if room == 0 {
                return None;
            }
            let n = (&mut self.reader)
                .take(room)
                .read_until(b'\n', &mut self.partial)
                .await
                .ok()?;
            if self.partial.last() == Some(&b'\n') {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                self.partial.clear();
                return Some(line);
            }
            if n == 0 {
                return None;
            }
        }
    }
}

/// Reads `node1=18000 node2=18004`.
fn parse_ports(map: &str) -> Option<Vec<(String, u16)>> {
    map.split(' ')
        .map(|item| {
            let (node, port) = item.split_once('=')?;
            Some((node.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// Worker side: the listening control port.
pub struct Server {
    listener: TcpListener,
    key: JobKey,
}

/// Worker side: the authenticated connection from the coordinator.
pub struct CoordinatorLink {
    reader: Lines<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Server {
    /// Binds the control port on all addresses.
    pub async fn bind(port: u16, key: JobKey) -> std::io::Result<Self> {
        Self::bind_on(std::net::SocketAddr::from(([0, 0, 0, 0], port)), key).await
    }

    /// Binds the control port on one address (the scale benchmark's simulated workers,
    /// one loopback address each).
    pub async fn bind_on(addr: std::net::SocketAddr, key: JobKey) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Server { listener, key })
    }

    /// Waits for the coordinator: connections are served concurrently, and the first that
    /// proves it holds this job's key wins; the rest are refused and logged.
    pub async fn accept(&self, deadline: Instant) -> Result<CoordinatorLink, ControlError> {
        let mut pending = FuturesUnordered::new();
        loop {
            tokio::select! {
                accepted = timeout_at(deadline, self.listener.accept()) => {
                    let (stream, peer) = accepted
                        .map_err(|_| ControlError::Timeout("the coordinator never connected".into()))?
                        .map_err(|e| ControlError::Broken(format!("accept failed: {e}")))?;
                    pending.push(async move {
                        let by = (Instant::now() + HANDSHAKE_TIME).min(deadline);
                        let r = timeout_at(by, self.handshake(stream)).await;
                        (peer, r.unwrap_or_else(|_| Err("no handshake in time".into())))
                    });
                }
                Some((peer, r)) = pending.next(), if !pending.is_empty() => match r {
                    Ok(link) => return Ok(link),
                    Err(why) => log::warn!("control port: refused a connection from {peer}: {why}"),
                },
            }
        }
    }

    /// The worker's half of the handshake on one connection.
    async fn handshake(&self, stream: TcpStream) -> Result<CoordinatorLink, String> {
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut link = CoordinatorLink {
            reader: Lines::new(BufReader::new(r)),
            writer: w,
        };
        let hello = link
            .reader
            .next()
            .await
            .ok_or("closed or sent an over-long line")?;
        let mut words = hello.split(' ');
        let (Some("HELLO"), Some(job), Some(nonce_c), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err("not a coordinator's greeting".into());
        };
        if job != self.key.job {
            link.refuse().await;
            return Err(format!("a coordinator of another job ({})", one_line(job)));
        }
        let nonce_w = nonce();
        let proof = self.key.prove("worker", nonce_c, &nonce_w);
        link.writer
            .write_all(format!("CHALLENGE {nonce_w} {proof}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let answer = link
            .reader
            .next()
            .await
            .ok_or("closed or sent an over-long line")?;
        match answer.strip_prefix("PROVE ") {
            Some(p) if self.key.verify("coordinator", nonce_c, &nonce_w, p) => Ok(link),
            _ => Err("it could not prove it holds this job's key".into()),
        }
    }

    /// After the coordinator is connected: answers every further connection (another job
    /// whose ports clash with ours, or a stranger) with a refusal at once.
    pub async fn refuse_others(self) {
        while let Ok((stream, _)) = self.listener.accept().await {
            let (r, w) = stream.into_split();
            let mut link = CoordinatorLink {
                reader: Lines::new(BufReader::new(r)),
                writer: w,
            };
            link.refuse().await;
        }
    }
}

/// What a worker answers a coordinator of another job.
const FOREIGN: &str = "its control port is in use by another mnd-srun job (ports clash). Fix: choose another --sshd-port";

impl CoordinatorLink {
    /// Tells the parent how `node`'s start went (this node's, or one it relays for).
    pub async fn report(&mut self, node: &str, status: &Status) -> std::io::Result<()> {
        let node = one_word(node);
        let line = match status {
            Status::Pulling(how_far) => format!("PULLING {node} {}\n", one_line(how_far)),
            Status::Ready(r) => format!("READY {node} {} {}\n", r.sshd_port, one_word(&r.image_id)),
            Status::Failed(why) => format!("FAILED {node} {}\n", one_line(why)),
        };
        self.writer.write_all(line.as_bytes()).await
    }

    /// Refuses a coordinator of another job, before any handshake.
    async fn refuse(&mut self) {
        let _ = self
            .writer
            .write_all(format!("FAILED {FOREIGN}\n").as_bytes())
            .await;
    }

    /// Waits for the coordinator's order; `None` when the connection closed without one
    /// (the coordinator is gone).
    pub async fn next_order(&mut self) -> Option<Order> {
        let line = self.reader.next().await?;
        Some(match line.split_once(' ').unwrap_or((&line, "")) {
            ("STOP", _) => Order::Stop,
            ("PORTS", map) => match parse_ports(map) {
                Some(ports) => Order::Ports(ports),
                None => Order::Abort(format!("a PORTS order that cannot be read: {map}")),
            },
            _ => Order::Abort(line.strip_prefix("ABORT ").unwrap_or(&line).to_string()),
        })
    }
}

/// Coordinator side: one worker's connection.
/// Methods take `&self`, so one link can be read (status, loss) and written (orders) at once.
pub struct WorkerLink {
    /// The worker's node name.
    pub node: String,
    reader: Mutex<Lines<OwnedReadHalf>>,
    writer: Mutex<OwnedWriteHalf>,
}

/// Connects to a worker's control port, retrying until its launcher listens or the deadline,
/// and runs the coordinator's half of the handshake.
pub async fn connect(
    node: &str,
    port: u16,
    key: &JobKey,
    deadline: Instant,
) -> Result<WorkerLink, ControlError> {
    connect_any(node, &[port], key, deadline)
        .await
        .map(|(link, _)| link)
}

/// Like `connect`, for a worker that listens on one of `ports` (the first it found free):
/// tries each in turn until one answers as this job's launcher; returns the link and the
/// index of its port.
pub async fn connect_any(
    node: &str,
    ports: &[u16],
    key: &JobKey,
    deadline: Instant,
) -> Result<(WorkerLink, usize), ControlError> {
    let mut pause = Duration::from_millis(10);
    let mut refused_only = true;
    let mut last = String::new();
    // A port where something else answered is not tried again: it is not our worker's.
    let mut others = vec![false; ports.len()];
    loop {
        for (i, &port) in ports.iter().enumerate() {
            if others[i] {
                continue;
            }
            let stream = match timeout_at(deadline, TcpStream::connect((node, port))).await {
                Ok(Ok(s)) => s,
                // Out of descriptors: waiting would not help, say so at once.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EMFILE) => {
                    return Err(ControlError::Broken(format!(
                        "this launcher ran out of open files connecting to {node} ({e}): it holds one connection per child in the fan-out tree. Fix: a smaller --tree-width, or raise the limit (ulimit -n; the hard limit for Slurm jobs comes from slurmd's LimitNOFILE / PropagateResourceLimits)"
                    )));
                }
                Ok(Err(e)) => {
                    log::trace!("{node}:{port}: {e}; retrying");
                    if refused_only {
                        last = format!("the launcher on {node} never answered on control port {port} ({e}); is mnd-srun running there (srun -N with one task per node)?");
                    }
                    continue;
                }
                Err(_) => break,
            };
            match handshake(node, port, stream, key, deadline).await {
                Ok(link) => return Ok((link, i)),
                Err(why) => {
                    log::debug!("{node}:{port}: {why}");
                    refused_only = false;
                    others[i] = true;
                    last = why.to_string();
                }
            }
        }
        if others.iter().all(|o| *o) {
            return Err(ControlError::Broken(last));
        }
        if Instant::now() + pause >= deadline {
            return Err(if last.is_empty() {
                ControlError::Timeout(format!(
                    "the launcher on {node} never answered on control port {}",
                    ports[0]
                ))
            } else if refused_only {
                ControlError::Timeout(last)
            } else {
                ControlError::Broken(last)
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The coordinator's half of the handshake on a fresh connection.
async fn handshake(
    node: &str,
    port: u16,
    stream: TcpStream,
    key: &JobKey,
    deadline: Instant,
) -> Result<WorkerLink, ControlError> {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    // Rank 0 holds one of these per worker for the whole job: a small buffer (lines are
    // short; a long one is read across refills).
    let mut reader = Lines::new(BufReader::with_capacity(LINK_BUFFER, r));
    let broken = |why: String| ControlError::Broken(format!("{node}: {why}"));
    let nonce_c = nonce();
    w.write_all(format!("HELLO {} {nonce_c}\n", key.job).as_bytes())
        .await
        .map_err(|e| broken(e.to_string()))?;
    let by = (Instant::now() + HANDSHAKE_TIME).min(deadline);
    let challenge = timeout_at(by, reader.next())
        .await
        .ok()
        .flatten()
        .ok_or_else(|| broken(format!("the program on control port {port} did not answer the handshake; it is not this job's launcher")))?;
    if let Some(why) = challenge.strip_prefix("FAILED ") {
        return Err(broken(why.to_string()));
    }
    let mut words = challenge.split(' ');
    let proven = match (words.next(), words.next(), words.next(), words.next()) {
        (Some("CHALLENGE"), Some(nonce_w), Some(proof), None)
            if key.verify("worker", &nonce_c, nonce_w, proof) =>
        {
            Some(key.prove("coordinator", &nonce_c, nonce_w))
        }
        _ => None,
    };
    let Some(proof) = proven else {
        return Err(broken(format!("the program on control port {port} could not prove it is this job's launcher (another program, or another user, holds the port). Fix: choose another --sshd-port, or ask your admin to look at that port")));
    };
    w.write_all(format!("PROVE {proof}\n").as_bytes())
        .await
        .map_err(|e| broken(e.to_string()))?;
    Ok(WorkerLink {
        node: node.to_string(),
        reader: Mutex::new(reader),
        writer: Mutex::new(w),
    })
}

impl WorkerLink {
    /// Waits for the next READY or FAILED report from this child's subtree: the node it
    /// names and `Ok` with how it is reached, or `Err(why)`. Every PULLING line on the way
    /// goes to `pulling` (node, how far) and moves `deadline` to at least `grace` from then:
    /// a pull that makes progress keeps the job waiting, one that stalls for `grace` does not.
    pub async fn status(
        &self,
        deadline: &mut Instant,
        grace: Duration,
        pulling: &mut (dyn FnMut(&str, &str) + Send),
    ) -> Result<(String, Result<NodeReady, String>), ControlError> {
        let mut reader = self.reader.lock().await;
        let mut how_far = String::new();
        loop {
            let line = match timeout_at(*deadline, reader.next()).await {
                Err(_) if how_far.is_empty() => {
                    return Err(ControlError::Timeout(format!(
                        "{} did not get its container ready in time",
                        self.node
                    )))
                }
                Err(_) => {
                    return Err(ControlError::Timeout(format!(
                        "{}: the image pull made no progress for {} s (at {how_far})",
                        self.node,
                        grace.as_secs()
                    )))
                }
                Ok(Some(line)) => line,
                Ok(None) => return Err(self.gone()),
            };
            match status_line(&line) {
                Some((_, node, Status::Pulling(text))) => {
                    how_far = format!("{node}: {text}");
                    *deadline = (*deadline).max(Instant::now() + grace);
                    pulling(&node, &text);
                }
                Some((_, node, Status::Ready(r))) => return Ok((node, Ok(r))),
                Some((_, node, Status::Failed(why))) => return Ok((node, Err(why))),
                None => return Ok((self.node.clone(), Err(line))),
            }
        }
    }

    fn gone(&self) -> ControlError {
        ControlError::Broken(format!("the launcher on {} went away", self.node))
    }

    /// Sends an order; a worker already gone is not an error.
    pub async fn send(&self, order: &Order) {
        let line = match order {
            Order::Ports(ports) => {
                let map: Vec<String> = ports.iter().map(|(n, p)| format!("{n}={p}")).collect();
                format!("PORTS {}\n", map.join(" "))
            }
            Order::Stop => "STOP\n".to_string(),
            Order::Abort(why) => format!("ABORT {}\n", one_line(why)),
        };
        let _ = self.writer.lock().await.write_all(line.as_bytes()).await;
    }

    /// Resolves when a node of this child's subtree is lost: the child's launcher closed
    /// the connection (it died or left), or it reports a node below it failed. The node,
    /// and why.
    pub async fn lost(&self) -> (String, String) {
        let mut reader = self.reader.lock().await;
        while let Some(line) = reader.next().await {
            if let Some((_, node, Status::Failed(why))) = status_line(&line) {
                return (node, why);
            }
        }
        (self.node.clone(), "its launcher went away".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8], job: &str) -> JobKey {
        JobKey::new(secret, job)
    }

    async fn server(k: JobKey) -> (Server, u16) {
        let server = Server::bind(0, k).await.unwrap();
        let port = server.listener.local_addr().unwrap().port();
        (server, port)
    }

    fn ready(image: &str) -> Status {
        Status::Ready(NodeReady {
            sshd_port: 22,
            image_id: image.into(),
        })
    }

    /// The next READY or FAILED from `w`, pulls ignored.
    async fn next_status(w: &WorkerLink, deadline: Instant) -> (String, Result<NodeReady, String>) {
        w.status(
            &mut deadline.clone(),
            Duration::from_secs(1),
            &mut |_, _| {},
        )
        .await
        .unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn handshake_status_and_orders() {
        let (server, port) = server(key(b"k", "1.0")).await;
        let deadline = soon();
        let worker = tokio::spawn(async move {
            let mut link = server.accept(deadline).await.unwrap();
            link.report("n2", &Status::Failed("image x\nmissing".into()))
                .await
                .unwrap();
            link.next_order().await
        });
        let w = connect("127.0.0.1", port, &key(b"k", "1.0"), deadline)
            .await
            .unwrap();
        assert_eq!(
            next_status(&w, deadline).await,
            ("n2".into(), Err("image x / missing".into()))
        );
        w.send(&Order::Abort("node2 failed".into())).await;
        assert_eq!(
            worker.await.unwrap(),
            Some(Order::Abort("node2 failed".into()))
        );
    }

    #[tokio::test]
    async fn another_job_is_told_and_a_wrong_key_is_refused_and_loss_is_seen() {
        let (server, port) = server(key(b"k", "1.0")).await;
        let deadline = soon();
        let worker = tokio::spawn(async move {
            let mut link = server.accept(deadline).await.unwrap();
            link.report("n2", &ready("sha256:1")).await.unwrap();
            link.next_order().await
        });
        let e = connect("127.0.0.1", port, &key(b"k", "2.0"), deadline)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("another mnd-srun job"), "{e}");
        // Same job, another user's key: the worker's proof does not verify.
        let e = connect("127.0.0.1", port, &key(b"other", "1.0"), deadline)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("could not prove"), "{e}");
        let w = connect("127.0.0.1", port, &key(b"k", "1.0"), deadline)
            .await
            .unwrap();
        assert_eq!(
            next_status(&w, deadline).await,
            (
                "n2".into(),
                Ok(NodeReady {
                    sshd_port: 22,
                    image_id: "sha256:1".into()
                })
            )
        );
        drop(w);
        assert_eq!(worker.await.unwrap(), None);
    }

    /// A raw peer speaking the protocol by hand: returns the lines it got.
    async fn raw(port: u16, lines: &[String]) -> Vec<String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = Lines::new(BufReader::new(r));
        let mut got = Vec::new();
        for l in lines {
            if w.write_all(format!("{l}\n").as_bytes()).await.is_err() {
                break;
            }
            match timeout_at(soon(), r.next()).await {
                Ok(Some(line)) => got.push(line),
                _ => break,
            }
        }
        got
    }

    #[tokio::test]
    async fn a_line_cut_by_a_select_is_completed_by_the_next_read() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut lines = Lines::new(BufReader::new(ours));
        theirs.write_all(b"ABORT half").await.unwrap();
        tokio::select! {
            line = lines.next() => panic!("no whole line yet: {line:?}"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        theirs.write_all(b" and the rest\nSTOP\n").await.unwrap();
        assert_eq!(
            lines.next().await.as_deref(),
            Some("ABORT half and the rest")
        );
        assert_eq!(lines.next().await.as_deref(), Some("STOP"));
        drop(theirs);
        assert_eq!(lines.next().await, None);
    }

    #[tokio::test]
    async fn a_forged_or_replayed_proof_is_refused() {
        let k = key(b"k", "1.0");
        let (server, port) = server(k.clone()).await;
        let accepted = tokio::spawn(async move { server.accept(soon()).await.is_ok() });
        // A stranger learns a challenge but cannot answer it.
        let got = raw(port, &["HELLO 1.0 aa".into(), "PROVE 00ff".into()]).await;
        assert!(got[0].starts_with("CHALLENGE "), "{got:?}");
        assert_eq!(got.len(), 1, "a forged proof must get no answer: {got:?}");
        // A proof recorded from one session is useless in the next (fresh worker nonce).
        let nonce_w = got[0].split(' ').nth(1).unwrap();
        let recorded = k.prove("coordinator", "aa", nonce_w);
        let got = raw(port, &["HELLO 1.0 aa".into(), format!("PROVE {recorded}")]).await;
        assert_ne!(got[0].split(' ').nth(1).unwrap(), nonce_w);
        assert_eq!(got.len(), 1, "a replayed proof must be refused: {got:?}");
        // The real coordinator still gets in.
        connect("127.0.0.1", port, &k, soon()).await.unwrap();
        assert!(accepted.await.unwrap());
    }

    #[tokio::test]
    async fn pull_progress_moves_the_deadline_and_a_stall_ends_it() {
        let k = key(b"k", "1.0");
        let (server, port) = server(k.clone()).await;
        let worker = tokio::spawn(async move {
            let mut link = server.accept(soon()).await.unwrap();
            // Progress for longer than the grace, then ready.
            for i in 0..6 {
                link.report("n2", &Status::Pulling(format!("{i}/6 MB")))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            link.report("n2", &ready("sha256:1")).await.unwrap();
            // Then progress that stops: the coordinator gives up after the grace.
            link.report("n3", &Status::Pulling("7/9 MB".into()))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let w = connect("127.0.0.1", port, &k, soon()).await.unwrap();
        let grace = Duration::from_millis(300);
        let t = Instant::now();
        let mut deadline = Instant::now() + grace;
        let mut passed = Vec::new();
        let (node, r) = w
            .status(&mut deadline, grace, &mut |n, how| {
                passed.push(format!("{n} {how}"))
            })
            .await
            .unwrap();
        assert_eq!(
            (node.as_str(), r.unwrap().image_id.as_str()),
            ("n2", "sha256:1")
        );
        assert_eq!(
            passed.len(),
            6,
            "every PULLING line is passed on: {passed:?}"
        );
        assert!(
            t.elapsed() > grace * 2,
            "the wait should have outlasted the grace"
        );
        let mut deadline = Instant::now() + grace;
        let e = w
            .status(&mut deadline, grace, &mut |_, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("made no progress") && e.contains("n3: 7/9 MB"),
            "{e}"
        );
        worker.abort();
    }

    #[tokio::test]
    async fn silent_peers_and_long_lines_hold_nobody_up() {
        let k = key(b"k", "1.0");
        let (server, port) = server(k.clone()).await;
        let accepted = tokio::spawn(async move { server.accept(soon()).await.is_ok() });
        // Ten connections that never speak, and one that streams a line without end.
        let mut silent = Vec::new();
        for _ in 0..10 {
            silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        let mut flood = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = flood.write_all(&vec![b'x'; 2 * MAX_LINE as usize]).await;
        let t = Instant::now();
        connect("127.0.0.1", port, &k, soon()).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(accepted.await.unwrap());
    }

    #[tokio::test]
    async fn a_port_squatter_is_named_as_not_this_jobs_launcher() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let _ = Lines::new(BufReader::new(r)).next().await;
            let _ = w.write_all(b"CHALLENGE 00 00\nREADY\n").await;
            std::future::pending::<()>().await;
        });
        let e = connect("127.0.0.1", port, &key(b"k", "1.0"), soon())
            .await
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("could not prove it is this job's launcher"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn after_the_coordinator_other_jobs_are_refused_at_once() {
        let (server, port) = server(key(b"k", "1.0")).await;
        let deadline = soon();
        let k = key(b"k", "1.0");
        let (ours, link) = tokio::join!(
            connect("127.0.0.1", port, &k, deadline),
            server.accept(deadline)
        );
        tokio::spawn(server.refuse_others());
        let t = Instant::now();
        let other = connect("127.0.0.1", port, &key(b"k", "2.0"), deadline).await;
        assert!(other.is_err());
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
            &key(b"k", "1.0"),
            Instant::now() + Duration::from_millis(300),
        )
        .await
        .err()
        .unwrap();
        assert!(e.to_string().contains("127.0.0.1 never answered"), "{e}");
    }
}
