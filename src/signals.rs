//! The signals a launcher reacts to: what Slurm sends on scancel, time limit and Ctrl-C
//! (SIGTERM, SIGINT), and a closed terminal (SIGHUP, SIGQUIT), which end the job; and the
//! ones training jobs use to checkpoint (`srun --signal=USR1@120`, SIGUSR1 and SIGUSR2),
//! which the coordinator passes on to the script's processes and which end nothing.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A set of subscribed signals.
pub struct Signals {
    streams: Vec<(i32, Signal)>,
}

impl Signals {
    /// Subscribes to the signals that end the job; from now on they no longer kill the
    /// process by default.
    pub fn install() -> std::io::Result<Self> {
        Self::subscribe(&[
            (libc_num::SIGTERM, SignalKind::terminate()),
            (libc_num::SIGINT, SignalKind::interrupt()),
            (libc_num::SIGHUP, SignalKind::hangup()),
            (libc_num::SIGQUIT, SignalKind::quit()),
        ])
    }

    /// Subscribes to the signals passed on to the script (SIGUSR1, SIGUSR2); from now on
    /// they no longer kill the process.
    pub fn forwarded() -> std::io::Result<Self> {
        Self::subscribe(&[
            (libc_num::SIGUSR1, SignalKind::user_defined1()),
            (libc_num::SIGUSR2, SignalKind::user_defined2()),
        ])
    }

    /// Subscribes to what Slurm sends to suspend and resume a job (`scontrol suspend`,
    /// gang scheduling): SIGTSTP, then SIGSTOP after a grace time (2 s by default), and
    /// SIGCONT on resume. The launcher pauses its container in the grace time.
    pub fn suspend_resume() -> std::io::Result<Self> {
        Self::subscribe(&[
            (libc_num::SIGTSTP, SignalKind::from_raw(libc_num::SIGTSTP)),
            (libc_num::SIGCONT, SignalKind::from_raw(libc_num::SIGCONT)),
        ])
    }

    /// Whether `sig` (from `suspend_resume`) asks to suspend.
    pub fn is_suspend(sig: i32) -> bool {
        sig == libc_num::SIGTSTP
    }

    fn subscribe(kinds: &[(i32, SignalKind)]) -> std::io::Result<Self> {
        let streams = kinds
            .iter()
            .map(|&(n, k)| signal(k).map(|s| (n, s)))
            .collect::<std::io::Result<_>>()?;
        Ok(Signals { streams })
    }

    /// Waits for the next signal; returns its number.
    pub async fn recv(&mut self) -> i32 {
        let futs = self.streams.iter_mut().map(|(n, s)| {
            let n = *n;
            Box::pin(async move {
                s.recv().await;
                n
            })
        });
        futures_util::future::select_all(futs).await.0
    }
}

/// Unblocks every signal this process was started with blocked. slurmstepd blocks
/// SIGTERM, SIGINT, SIGHUP and others, and its task children run the SPANK callbacks (and
/// so the root helper) before they unblock them; a blocked mask survives exec. Without
/// this, the step's SIGTERM (scancel, `srun -K`, the time limit) never reaches the helper,
/// which goes on starting a container until SIGKILL comes KillWait seconds later. Called
/// before any thread starts, so every thread answers too.
pub fn unblock_inherited() {
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
}

/// Sends `sig` to process `root` and every process below it (the script and what it
/// started), children first found from /proc. Processes that are gone are skipped.
pub fn signal_tree(root: i32, sig: i32) -> usize {
    use nix::sys::signal::{kill, Signal as S};
    use nix::unistd::Pid;
    let Ok(sig) = S::try_from(sig) else {
        return 0;
    };
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| {
                let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                let ppid = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((pid, ppid))
            })
            .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree.iter()
        .filter(|p| kill(Pid::from_raw(**p), sig).is_ok())
        .count()
}

mod libc_num {
    use nix::sys::signal::Signal as S;
    pub const SIGUSR1: i32 = S::SIGUSR1 as i32;
    pub const SIGTSTP: i32 = S::SIGTSTP as i32;
    pub const SIGCONT: i32 = S::SIGCONT as i32;
    pub const SIGUSR2: i32 = S::SIGUSR2 as i32;
    pub const SIGTERM: i32 = S::SIGTERM as i32;
    pub const SIGINT: i32 = S::SIGINT as i32;
    pub const SIGHUP: i32 = S::SIGHUP as i32;
    pub const SIGQUIT: i32 = S::SIGQUIT as i32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_reaches_a_process_and_its_children() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap 'exit 7' USR1; sleep 30 & wait; wait"])
            .spawn()
            .unwrap();
        // Once the shell has started its child (the trap is set before), signal both.
        let has_child = || {
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
                .is_ok_and(|c| !c.trim().is_empty())
        };
        let t = std::time::Instant::now();
        while !has_child() {
            assert!(
                t.elapsed().as_secs() < 10,
                "the shell never started its child"
            );
            std::thread::yield_now();
        }
        assert!(signal_tree(child.id() as i32, libc_num::SIGUSR1) >= 2);
        assert_eq!(child.wait().unwrap().code(), Some(7));
    }
}
