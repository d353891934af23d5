//! The launcher's two state machines, driven by a `Plan`.
//!
//! Worker:      Listening + StartingContainer -> Reporting -> Serving -> TearingDown -> exit 0
//! Coordinator: Preflight -> StartingAll (own container, every worker READY + sshd banner,
//!              fail fast) -> RunningScript -> Stopping (STOP to workers, own container
//!              removed) -> exit with the script's code.
//! Any signal, lost peer or dead container leads to TearingDown; every path removes this
//! node's container by name, and a launcher killed with SIGKILL leaves a container whose
//! stdin closes, so it ends and removes itself.

use crate::control::{self, ControlError, JobKey, Order, Status, WorkerLink};
use crate::docker::{self, DockerError, Engine, FileUpload, Lifeline, PullReport};
use crate::identity::Identity;
use crate::plan::{self, Plan, PortPair, Role};
use crate::probe;
use crate::signals::{self, Signals};
use crate::ssh;
use crate::terminal;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
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

/// PID 1 of every container: start sshd, exit when the launcher's stdin closes or sshd dies.
const ENTRYPOINT: &str = r#"sshd=$(command -v sshd 2>/dev/null || echo /usr/sbin/sshd)
if [ ! -x "$sshd" ]; then echo "mnd-srun: this image has no sshd ($sshd)" >&2; exit 127; fi
cfg=/.mnd/sshd_config
"$sshd" -t -f "$cfg" >/dev/null 2>&1 || cfg=/.mnd/sshd_config.compat
"$sshd" -D -e -f "$cfg" &
sshd_pid=$!
exec 3<&0
( while read -r _ <&3; do :; done; kill "$sshd_pid" 2>/dev/null ) &
wait "$sshd_pid"
"#;

/// Exit code the entrypoint uses when the image has no sshd.
const NO_SSHD: i64 = 127;

/// Runs this launcher's part of the job; returns the exit code for srun.
pub async fn run(plan: Plan) -> Result<i32, LaunchError> {
    let result = match plan.role {
        Role::Idle(why) => {
            log::info!("nothing to do on this task: {why}");
            return Ok(0);
        }
        Role::Coordinator => coordinator(&plan).await,
        Role::Worker => worker(&plan).await,
    };
    if timing_enabled() {
        let role = if plan.role == Role::Coordinator {
            "coordinator"
        } else {
            "worker"
        };
        eprintln!(
            "mnd-srun timing: {} {role} peak-rss-kb {}",
            plan.this_node(),
            peak_rss_kb().unwrap_or(0)
        );
    }
    result
}

fn timing_enabled() -> bool {
    std::env::var_os("MND_TIMING").is_some()
}

/// Peak resident set size of this process (VmHWM), in KiB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A running container of this node.
struct Running {
    engine: Engine,
    _lifeline: Lifeline,
    /// The port its sshd listens on.
    sshd_port: u16,
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

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// `PATH` of the container and its ssh sessions: the ssh wrappers, then the image's.
fn container_path(image_env: &[String]) -> String {
    let image_path = image_env.iter().find_map(|e| e.strip_prefix("PATH="));
    ssh::path_with_wrappers(image_path)
}

/// Environment for ssh sessions: the image's (CUDA paths, ...), PATH with the wrappers,
/// then the job's. A value sshd's `SetEnv` cannot carry is refused, naming the variable.
fn session_env(plan: &Plan, image_env: &[String]) -> Result<Vec<(String, String)>, String> {
    let skip = [
        "HOME", "USER", "LOGNAME", "SHELL", "HOSTNAME", "TERM", "PATH",
    ];
    let mut env: Vec<(String, String)> = image_env
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| !skip.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &env {
        plan::check_env_value(k, v).map_err(|e| format!("the image's ENV: {e}"))?;
    }
    env.push(("PATH".into(), container_path(image_env)));
    env.extend(plan.job_env.iter().cloned());
    Ok(env)
}

/// The files this node's container gets: its accounts in /etc (the container's own layer:
/// no mount may cover /etc) and the rest in `/.mnd`.
/// Each node's sshd port as this node first assumes it: the preferred one, but its own.
fn assumed_ports(plan: &Plan, own: u16) -> Vec<(String, u16)> {
    let preferred = plan.ports.preferred().sshd;
    plan.nodes
        .iter()
        .map(|n| {
            (
                n.clone(),
                if n == plan.this_node() {
                    own
                } else {
                    preferred
                },
            )
        })
        .collect()
}

/// The container's ssh client config, for these sshd ports of the job's nodes.
fn ssh_config_file(plan: &Plan, node_ports: &[(String, u16)]) -> FileUpload {
    FileUpload {
        path: format!("{}/ssh_config", ssh::CONTAINER_DIR),
        content: ssh::client_config(&plan.ssh, &plan.user.name, node_ports),
        mode: 0o644,
    }
}

fn files(
    plan: &Plan,
    env: &[(String, String)],
    image: &ImageAccounts,
    port: u16,
) -> Vec<FileUpload> {
    let user: &Identity = &plan.user;
    let file = |path: String, content: String, mode: u32| FileUpload {
        path,
        content,
        mode,
    };
    let dir = ssh::CONTAINER_DIR;
    let shell = user.container_shell(&image.shells);
    let mut files = vec![
        file(
            "/etc/passwd".into(),
            user.merge_passwd(&image.passwd, &shell),
            0o644,
        ),
        file("/etc/group".into(), user.merge_group(&image.group), 0o644),
        ssh_config_file(plan, &assumed_ports(plan, port)),
        file(
            format!("{dir}/sshd_config"),
            ssh::sshd_config(&plan.ssh, &user.name, port, env),
            0o644,
        ),
        file(
            format!("{dir}/sshd_config.compat"),
            ssh::sshd_config(&plan.ssh, &user.name, port, &[]),
            0o644,
        ),
    ];
    files.extend(
        ssh::WRAPPED
            .iter()
            .map(|p| file(format!("{dir}/bin/{p}"), ssh::wrapper(p), 0o755)),
    );
    files
}

/// Creates, prepares and starts this node's container and waits until its sshd answers.
/// Its sshd listens on `port`. Pull progress (and waiting for another job's pull) is
/// reported through `progress`.
async fn start_container(
    plan: &Plan,
    port: u16,
    progress: &watch::Sender<PullReport>,
) -> Result<Running, String> {
    let spec = &plan.container;
    if !port_is_free(port) {
        return Err(format!(
            "port {port} is already in use on this node (another job's sshd or another program). Fix: pick another with --sshd-port"
        ));
    }
    let t0 = Instant::now();
    let mut phases = Phases::new(plan.this_node());
    let engine = Engine::connect().await.map_err(|e| e.to_string())?;
    phases.mark("connect");
    // One image check/pull at a time per user on this node: several jobs starting at once
    // then pull once (Docker alone re-downloads when two pulls overlap).
    let image = {
        // Waiting for another job's pull counts as progress: that pull has its own bound.
        let _lock = {
            let lock = pull_lock(plan);
            tokio::pin!(lock);
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    l = &mut lock => break l,
                    _ = beat.tick() => progress.send_modify(|r| {
                        r.events += 1;
                        r.summary = "waiting for another job's pull of the image".into();
                    }),
                }
            }
        };
        engine
            .ensure_image(
                &spec.image,
                spec.pull,
                plan.this_node(),
                plan.wait_timeout,
                progress,
            )
            .await
            .map_err(|e| e.to_string())?
    };
    phases.mark("image");
    let env = session_env(plan, &image.env)?;
    let mut spec = spec.clone();
    spec.env
        .push(format!("PATH={}", container_path(&image.env)));
    let spec = &spec;
    engine.remove(&spec.name).await.map_err(|e| e.to_string())?;
    phases.mark("remove-stale");
    let entry = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        ENTRYPOINT.to_string(),
        "mnd-entry".to_string(),
    ];
    engine
        .create(spec, entry)
        .await
        .map_err(|e| e.to_string())?;
    phases.mark("create");
    let prepared = async {
        let accounts = image_accounts(plan, &engine, &image.id).await?;
        phases.mark("read-passwd");
        engine
            .upload(&spec.name, &files(plan, &env, &accounts, port))
            .await?;
        phases.mark("upload");
        let lifeline = engine.attach_stdin(&spec.name).await?;
        phases.mark("attach");
        engine.start(&spec.name).await?;
        phases.mark("start");
        Ok::<_, DockerError>(lifeline)
    }
    .await;
    let lifeline = match prepared {
        Ok(l) => l,
        Err(e) => {
            let _ = engine.remove(&spec.name).await;
            return Err(e.to_string());
        }
    };
    log::debug!("container started after {:?}", t0.elapsed());
    // Readiness once the image is there is bounded by --wait-timeout (at most 30 s).
    let sshd_by = Instant::now() + plan.wait_timeout.min(Duration::from_secs(30));
    tokio::select! {
        r = probe::wait_banner("127.0.0.1", port, sshd_by) => {
            if let Err(e) = r {
                let _ = engine.remove(&spec.name).await;
                return Err(format!("sshd in the container did not answer on port {port}: {e}"));
            }
        }
        code = engine.wait_exit(&spec.name) => {
            let tail = engine.log_tail(&spec.name).await;
            let _ = engine.remove(&spec.name).await;
            return Err(if code == NO_SSHD {
                format!("image '{}' has no sshd. Fix: install openssh-server in the image (apt-get install openssh-server)", spec.image)
            } else {
                format!("the container exited with code {code} before sshd answered{}", if tail.is_empty() { String::new() } else { format!(": {tail}") })
            });
        }
    }
    phases.mark("sshd");
    log::info!(
        "{}: container {} up, sshd on port {port} after {:?}",
        plan.this_node(),
        spec.name,
        t0.elapsed()
    );
    Ok(Running {
        engine,
        _lifeline: lifeline,
        sshd_port: port,
    })
}

/// What the container's accounts are made from: the image's own files.
struct ImageAccounts {
    passwd: String,
    group: String,
    shells: String,
}

/// The files of the image that `ImageAccounts` holds.
const ACCOUNT_FILES: [&str; 3] = ["passwd", "group", "shells"];

/// The image's `/etc/passwd`, `/etc/group` and `/etc/shells`: from
/// `~/.mnd/cache/v2/ID/` when there, else read from the created container and cached (image
/// ids are content addresses, so the cache is never stale). The user can write the cache,
/// so what is read from it is never trusted to grant anything (`Identity::merge_passwd`,
/// `merge_group`). A cache folder others could write is ignored.
async fn image_accounts(
    plan: &Plan,
    engine: &Engine,
    image_id: &str,
) -> Result<ImageAccounts, DockerError> {
    let root = plan.user.home.join(".mnd/cache/v2");
    let dir = root.join(image_id.replace(':', "-"));
    // The same rule as for ssh material: a folder of ours that nobody else can write.
    let ours = |p: &std::path::Path| p.is_dir() && ssh::check_safe(p, plan.user.uid, false).is_ok();
    if ours(&root) && ours(&dir) {
        let read = |f: &str| std::fs::read_to_string(dir.join(f));
        if let (Ok(passwd), Ok(group), Ok(shells)) = (read("passwd"), read("group"), read("shells"))
        {
            return Ok(ImageAccounts {
                passwd,
                group,
                shells,
            });
        }
    }
    let name = &plan.container.name;
    let (passwd, group, shells) = tokio::join!(
        engine.read_file(name, "/etc/passwd"),
        engine.read_file(name, "/etc/group"),
        engine.read_file(name, "/etc/shells")
    );
    let accounts = ImageAccounts {
        passwd: passwd?.unwrap_or_default(),
        group: group?.unwrap_or_default(),
        shells: shells?.unwrap_or_default(),
    };
    // Best effort: write into a temporary folder, then rename it into place.
    let stored = ssh::create_private_dir(&root).and_then(|()| {
        let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(&root)?;
        for (file, text) in
            ACCOUNT_FILES
                .iter()
                .zip([&accounts.passwd, &accounts.group, &accounts.shells])
        {
            std::fs::write(tmp.path().join(file), text)?;
        }
        let tmp = tmp.keep();
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Ok(())
    });
    if let Err(e) = stored {
        log::debug!("image account cache not written: {e}");
    }
    Ok(accounts)
}

/// Takes this user's image lock on this node (`~/.mnd/locks/pull-NODE.lock`); released when
/// dropped. Without a usable lock file the pull goes ahead unlocked (logged).
async fn pull_lock(plan: &Plan) -> Option<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = plan.user.home.join(".mnd/locks");
    let path = dir.join(format!("pull-{}.lock", plan.this_node()));
    let opened = ssh::create_private_dir(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
    });
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            log::warn!(
                "no image lock ({}: {e}); pulling without it",
                path.display()
            );
            return None;
        }
    };
    let locked = tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
    })
    .await;
    match locked {
        Ok(Ok(lock)) => Some(lock),
        _ => {
            log::warn!("could not lock {}; pulling without it", path.display());
            None
        }
    }
}

/// Removes this node's container, whatever state it is in.
async fn tear_down(plan: &Plan, engine: Option<&Engine>) {
    let t0 = Instant::now();
    let result = match engine {
        Some(e) => e.remove(&plan.container.name).await,
        None => match Engine::connect().await {
            Ok(e) => e.remove(&plan.container.name).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => log::info!(
            "{}: container removed in {:?}",
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

async fn worker(plan: &Plan) -> Result<i32, LaunchError> {
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
                tear_down(plan, Some(&r.engine)).await;
            }
            return Err(e.into());
        }
    };
    let _ = link.report(&Status::Ready).await;
    tokio::spawn(server.refuse_others());
    let outcome = loop {
        let order = tokio::select! {
            order = link.next_order() => order,
            sig = signals.recv() => break Err(LaunchError::Signal(sig)),
            code = running.engine.wait_exit(&plan.container.name) => break Err(node_err(plan)(format!("the container ended by itself (code {code}) while the job ran"))),
        };
        // Other nodes took other ports: rewrite the ssh config, then report again.
        let Some(Order::Ports(node_ports)) = order else {
            break Ok(order);
        };
        let status = match running
            .engine
            .upload(&plan.container.name, &[ssh_config_file(plan, &node_ports)])
            .await
        {
            Ok(()) => Status::Ready,
            Err(e) => Status::Failed(e.to_string()),
        };
        let _ = link.report(&status).await;
    };
    tear_down(plan, Some(&running.engine)).await;
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

/// Connects to a worker (recording the link in `connected` at once, so it can be told to
/// abort whatever happens), waits for READY, then for its sshd banner from here.
async fn ready_worker(
    plan: &Plan,
    node: String,
    key: &JobKey,
    deadline: Instant,
    connected: &std::sync::Mutex<Vec<Arc<WorkerLink>>>,
) -> Result<(String, u16), LaunchError> {
    let controls: Vec<u16> = plan.ports.pairs.iter().map(|p| p.control).collect();
    let (link, pair) = control::connect_any(&node, &controls, key, deadline).await?;
    let sshd_port = plan.ports.pairs[pair].sshd;
    let link = Arc::new(link);
    connected.lock().expect("not poisoned").push(link.clone());
    // The deadline moves while the worker's image pull makes progress.
    let mut deadline = deadline;
    if let Err(reason) = link.status(&mut deadline, plan.wait_timeout).await? {
        return Err(LaunchError::Node { node, reason });
    }
    let banner_by = deadline.max(Instant::now() + plan.wait_timeout.min(Duration::from_secs(30)));
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
    Ok((node, sshd_port))
}

/// Waits for every worker, failing at the first one that fails. Links are recorded in
/// `connected` as soon as they exist, so the caller can tell those workers to abort.
async fn ready_workers(
    plan: &Plan,
    key: &JobKey,
    deadline: Instant,
    connected: &std::sync::Mutex<Vec<Arc<WorkerLink>>>,
) -> Result<Vec<(String, u16)>, LaunchError> {
    let mut pending: FuturesUnordered<_> = plan.nodes[1..]
        .iter()
        .map(|n| ready_worker(plan, n.clone(), key, deadline, connected))
        .collect();
    let mut ports = Vec::new();
    while let Some(r) = pending.next().await {
        ports.push(r?);
    }
    Ok(ports)
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
            Ok(Ok(())) => Ok(()),
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
        .engine
        .upload(&plan.container.name, &[ssh_config_file(plan, &node_ports)])
        .await?;
    Ok(())
}

/// Tells every worker that could be reached to abort (best effort, a few seconds at most).
async fn abort_all(plan: &Plan, key: &JobKey, links: Vec<Arc<WorkerLink>>, why: &str) {
    let order = Order::Abort(why.to_string());
    let reached: Vec<String> = links.iter().map(|l| l.node.clone()).collect();
    let by = Instant::now() + Duration::from_secs(3);
    let others = plan.nodes[1..]
        .iter()
        .filter(|n| !reached.contains(n))
        .map(|n| async {
            let controls: Vec<u16> = plan.ports.pairs.iter().map(|p| p.control).collect();
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
    /// Docker failed to run the script.
    Failed(DockerError),
}

/// Runs the script in this node's container: the launcher's stdin is its stdin (a terminal
/// under `srun --pty`, following the window size), SIGUSR1/SIGUSR2 are passed on to it and
/// its children; ends with the script, a terminating signal, a lost worker or the
/// container's end.
async fn run_script(
    plan: &Plan,
    running: &Running,
    links: &[Arc<WorkerLink>],
    signals: &mut Signals,
    forwarded: &mut Signals,
) -> Outcome {
    let script = plan.script.as_ref().expect("coordinator has a script");
    let mut cmd = vec![script.path.display().to_string()];
    cmd.extend(script.args.iter().cloned());
    let workdir = plan.container.workdir.display().to_string();
    let engine = &running.engine;
    let tty = terminal::stdin_is_terminal();
    let started = engine
        .exec(
            &plan.container.name,
            &plan.container.user,
            &workdir,
            cmd,
            tty,
            Some(terminal::stdin_chunks()),
        )
        .await;
    let mut started = match started {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    let _raw = tty.then(terminal::RawMode::enter).flatten();
    let mut winch = tty
        .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok())
        .flatten();
    if let Some((rows, cols)) = tty.then(terminal::window_size).flatten() {
        engine.resize(&started, rows, cols).await;
    }
    let lost = async {
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
    };
    let died = engine.wait_exit(&plan.container.name);
    tokio::pin!(lost, died);
    loop {
        tokio::select! {
            () = &mut started.io => {
                return match engine.exit_code(&started).await {
                    Ok(code) => Outcome::Finished(code),
                    Err(e) => Outcome::Failed(e),
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

async fn coordinator(plan: &Plan) -> Result<i32, LaunchError> {
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
    let started: Result<(Running, Vec<(String, u16)>), LaunchError> = {
        let (progress, _) = watch::channel(PullReport::default());
        let pairs = &plan.ports.pairs;
        let own_port = pairs
            .iter()
            .find(|p| port_is_free(p.sshd))
            .unwrap_or(&pairs[0])
            .sshd;
        let own = start_container(plan, own_port, &progress);
        let workers = ready_workers(plan, &key, deadline, &connected);
        tokio::pin!(own, workers);
        tokio::select! {
        r = &mut own => match r {
            Ok(running) => match workers.await {
                Ok(ports) => Ok((running, ports)),
                Err(e) => {
                    tear_down(plan, Some(&running.engine)).await;
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
                    tear_down(plan, Some(&running.engine)).await;
                }
                Err(e)
            }
        },
        sig = signals.recv() => Err(LaunchError::Signal(sig)),
        }
    };
    let links = connected.into_inner().expect("not poisoned");
    let started = match started {
        Ok((running, ports)) => match share_ports(plan, &running, &links, ports).await {
            Ok(()) => Ok(running),
            Err(e) => {
                tear_down(plan, Some(&running.engine)).await;
                Err(e)
            }
        },
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
            let stops = links.iter().map(|l| l.send(&Order::Stop));
            futures_util::future::join_all(stops).await;
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
            abort_all(plan, &key, links, &e.to_string()).await;
            Err(e.into())
        }
    };
    tear_down(plan, Some(&running.engine)).await;
    eprintln_timing("teardown", t_end);
    result
}

/// With `MND_TIMING=1`, prints how long each step of a container start took.
struct Phases<'a> {
    node: &'a str,
    last: Instant,
}

impl<'a> Phases<'a> {
    fn new(node: &'a str) -> Self {
        Phases {
            node,
            last: Instant::now(),
        }
    }

    fn mark(&mut self, phase: &str) {
        if timing_enabled() {
            eprintln!(
                "mnd-srun timing: {} phase {phase} {:.3} s",
                self.node,
                self.last.elapsed().as_secs_f64()
            );
        }
        self.last = Instant::now();
    }
}

/// With `MND_TIMING=1`, prints a phase's duration (for benchmarks; quiet otherwise).
fn eprintln_timing(phase: &str, since: Instant) {
    if timing_enabled() {
        eprintln!(
            "mnd-srun timing: {phase} {:.3} s",
            since.elapsed().as_secs_f64()
        );
    }
}
