//! The hosts-mode front door (`mnd-srun --hosts ...` or `--hostfile`, no Slurm): checks that
//! every host answers over the user's ssh, then starts the launcher on each (rank by rank,
//! the first coordinates), streams every host's output line by line with the host in front,
//! ends the job everywhere on Ctrl-C, SIGTERM, `--time-limit` or when the first host ends,
//! and prints a per-host summary. The launchers do the rest, as under Slurm.

use super::{remote_command, Host};
use futures_util::future::join_all;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

/// Longest the reachability check of all hosts may take.
const CHECK_TIME: Duration = Duration::from_secs(20);

/// How long the hosts get to tear down after the job is told to end, before their ssh is
/// killed.
const GRACE: Duration = Duration::from_secs(15);

/// ssh in batch mode: keys only, never a password prompt, bounded connect time.
fn ssh(host: &str) -> Command {
    let mut c = Command::new("ssh");
    c.args(super::ssh_args(host, false));
    c
}

/// What the front door needs to start the job.
pub struct Job<'a> {
    /// The hosts, in rank order.
    pub hosts: &'a [Host],
    /// The launcher's path (the same on every host).
    pub exe: &'a str,
    /// The working directory (the same on every host).
    pub cwd: &'a str,
    /// The job's id.
    pub id: u64,
    /// The launcher's arguments.
    pub args: &'a [String],
    /// The control key's path and digest here: every host must hold the same.
    pub control_key: (&'a str, String),
    /// `--time-limit`.
    pub time_limit: Option<Duration>,
}

/// Checks every host at once: ssh answers in batch mode, the launcher is at the same path,
/// the working directory exists and the control key is the same. Returns the reason of each
/// host that fails.
pub async fn check(job: &Job<'_>) -> Vec<(String, String)> {
    let (key_path, key_digest) = &job.control_key;
    let probe = format!(
        "test -x {exe} || {{ echo 'mnd-srun is not at {exe} here' >&2; exit 3; }}; \
         cd {cwd} 2>/dev/null || {{ echo 'no folder {cwd} here' >&2; exit 3; }}; \
         sha256sum {key} 2>/dev/null | cut -d' ' -f1",
        exe = super::quote(job.exe),
        cwd = super::quote(job.cwd),
        key = super::quote(key_path),
    );
    let checks = job.hosts.iter().map(|h| {
        let probe = probe.clone();
        async move {
            let out = ssh(&h.name)
                .arg(probe)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output();
            let why = match tokio::time::timeout(CHECK_TIME, out).await {
                Err(_) => Some(format!("no answer within {} s", CHECK_TIME.as_secs())),
                Ok(Err(e)) => Some(format!("cannot run ssh: {e}")),
                Ok(Ok(o)) => {
                    let said = String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .rfind(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    let digest = String::from_utf8_lossy(&o.stdout).trim().to_string();
                    match o.status.code() {
                        Some(0) if digest == *key_digest => None,
                        Some(0) => Some(format!(
                            "its {key_path} differs from this machine's (homes not shared): copy it once with `scp -pr ~/.mnd {}:`",
                            h.name
                        )),
                        Some(255) => Some(format!("ssh failed: {said}")),
                        _ => Some(said),
                    }
                }
            };
            why.map(|w| (h.name.clone(), w))
        }
    });
    join_all(checks).await.into_iter().flatten().collect()
}

/// How one host's launcher ended.
struct Ended {
    code: Option<i32>,
    took: Duration,
}

/// Copies a host's output to ours, line by line, with the host in front.
async fn pump(host: Arc<str>, from: impl AsyncRead + Unpin, to_stderr: bool) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if to_stderr {
            eprintln!("{host}: {line}");
        } else {
            println!("{host}: {line}");
        }
    }
}

/// Ends the job on every host: each launcher's lifeline (its ssh stdin) closes, and the
/// end is timed from the first call.
fn end_everywhere(
    lifelines: &mut [Option<tokio::process::ChildStdin>],
    ending: &mut Option<Instant>,
) {
    ending.get_or_insert_with(Instant::now);
    lifelines.iter_mut().for_each(|l| drop(l.take()));
}

/// Starts the launcher on every host and waits for the job to end; returns the exit code:
/// the first host's (the script's), or the first failure's when that host's ssh itself
/// failed.
pub async fn run(job: &Job<'_>) -> std::io::Result<i32> {
    let t0 = Instant::now();
    let names: Vec<String> = job.hosts.iter().map(|h| h.name.clone()).collect();
    eprintln!(
        "mnd-srun: job {} on {} hosts; see it with: mnd ps --hosts '{}' --job {}",
        job.id,
        names.len(),
        crate::hostlist::compress(&names),
        job.id
    );
    let (mut children, pumps) = spawn_all(job)?;
    let mut lifelines: Vec<_> = children.iter_mut().map(|c| c.stdin.take()).collect();
    let pids: Vec<Option<u32>> = children.iter().map(Child::id).collect();
    let (done, mut ended) = tokio::sync::mpsc::unbounded_channel();
    for (i, mut child) in children.into_iter().enumerate() {
        let done = done.clone();
        tokio::spawn(async move {
            let code = child.wait().await.ok().and_then(|s| s.code());
            let _ = done.send((i, code));
        });
    }
    drop(done);
    // Closing every connection: ssh ends, the host's launcher sees its stdin close.
    let close_all = || {
        for pid in pids.iter().flatten() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    };
    let mut ends: Vec<Option<Ended>> = (0..pids.len()).map(|_| None).collect();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let limit = async {
        match job.time_limit {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(limit);
    let mut ending: Option<Instant> = None;
    let mut closed = false;
    while ends.iter().any(Option::is_none) {
        let grace_over = async {
            match ending {
                Some(at) if !closed => tokio::time::sleep_until(at + GRACE).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            next = ended.recv() => {
                let Some((i, code)) = next else { break };
                ends[i] = Some(Ended { code, took: t0.elapsed() });
                // The first host ended (the script, or the job failed): the others end too.
                if i == 0 {
                    end_everywhere(&mut lifelines, &mut ending);
                }
            }
            _ = int.recv() => {
                if ending.is_some() {
                    eprintln!("mnd-srun: second interrupt: closing every host's connection");
                    closed = true;
                    close_all();
                } else {
                    eprintln!("mnd-srun: interrupt: ending the job on every host (again to force)");
                    end_everywhere(&mut lifelines, &mut ending);
                }
            }
            _ = term.recv() => {
                end_everywhere(&mut lifelines, &mut ending);
            }
            () = &mut limit, if ending.is_none() => {
                eprintln!(
                    "mnd-srun: time limit of {} s reached: ending the job on every host",
                    job.time_limit.unwrap_or_default().as_secs()
                );
                end_everywhere(&mut lifelines, &mut ending);
            }
            () = grace_over => {
                eprintln!(
                    "mnd-srun: hosts still running {} s after the end: closing their connections",
                    GRACE.as_secs()
                );
                closed = true;
                close_all();
            }
        }
    }
    join_all(pumps).await;
    Ok(summary(job, &ends))
}

/// The launcher on every host over ssh, rank by rank, each host's output streamed with the
/// host in front.
fn spawn_all(job: &Job<'_>) -> std::io::Result<(Vec<Child>, Vec<tokio::task::JoinHandle<()>>)> {
    let mut children: Vec<Child> = Vec::new();
    let mut pumps = Vec::new();
    for (rank, h) in job.hosts.iter().enumerate() {
        let cmd = remote_command(job.exe, job.cwd, job.hosts, rank, job.id, job.args);
        let mut child = ssh(&h.name)
            .arg(cmd)
            // Its stdin is the launcher's lifeline: closed, the job ends there.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let name: Arc<str> = Arc::from(h.name.as_str());
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(name.clone(), out, false)));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(name, err, true)));
        }
        children.push(child);
    }
    Ok((children, pumps))
}

/// Prints a line per host (exit code, time) and returns the job's exit code: the first
/// host's (the script's), unless ssh itself failed there (255); then the first failure.
fn summary(job: &Job<'_>, ends: &[Option<Ended>]) -> i32 {
    eprintln!("mnd-srun: {:<24} {:>5} {:>9}", "host", "exit", "time");
    for (h, e) in job.hosts.iter().zip(ends) {
        let (code, took) = e
            .as_ref()
            .map_or((None, Duration::ZERO), |e| (e.code, e.took));
        let code = code.map_or_else(|| "killed".to_string(), |c| c.to_string());
        eprintln!(
            "mnd-srun: {:<24} {:>5} {:>8.1}s",
            h.name,
            code,
            took.as_secs_f64()
        );
    }
    let codes: Vec<Option<i32>> = ends
        .iter()
        .map(|e| e.as_ref().and_then(|e| e.code))
        .collect();
    match codes.first().copied().flatten() {
        Some(c) if c != 255 => c,
        _ => codes
            .iter()
            .flatten()
            .copied()
            .find(|c| *c != 0)
            .unwrap_or(1),
    }
}
