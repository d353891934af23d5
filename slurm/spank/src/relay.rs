//! The helper's stderr, read line by line while the step's stop signals are passed on to it.
//!
//! slurmstepd ends a step (scancel, `srun -K`, the time limit) with SIGTERM to its task
//! children, then SIGKILL KillWait seconds later. A task child still in
//! `task_init_privileged` holds SIGTERM blocked (slurmstepd unblocks it just before the
//! exec), and proctrack/cgroup sends SIGTERM to the task children only, not to the helper
//! below them. So the task reads its blocked SIGTERM from a signalfd and passes it on: the
//! helper stops its pull or start, removes what it made and says so, at once.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use std::io::Read;
use std::os::fd::AsFd;
use std::process::ChildStderr;

/// The signals that end a step, as far as this task holds them blocked (a signal it does
/// not block ends the task by itself, and the helper then gets its parent-death SIGTERM).
fn blocked_stop_signals() -> SigSet {
    let mut mask = SigSet::empty();
    if let Ok(blocked) = SigSet::thread_get_mask() {
        for s in [Signal::SIGTERM, Signal::SIGINT] {
            if blocked.contains(s) {
                mask.add(s);
            }
        }
    }
    mask
}

/// Waits until `stderr` has something to read (or its end); a stop signal read from
/// `signals` meanwhile is sent on to the helper (pid `helper`) as SIGTERM. `Ok(false)`:
/// only a signal came.
fn wait_passing_stops(stderr: &ChildStderr, signals: &SignalFd, helper: u32) -> nix::Result<bool> {
    let mut fds = [
        PollFd::new(stderr.as_fd(), PollFlags::POLLIN),
        PollFd::new(signals.as_fd(), PollFlags::POLLIN),
    ];
    poll(&mut fds, PollTimeout::NONE)?;
    if fds[1]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLIN))
    {
        while let Ok(Some(_)) = signals.read_signal() {}
        let _ = kill(Pid::from_raw(helper as i32), Signal::SIGTERM);
    }
    Ok(fds[0].revents().is_some_and(|r| !r.is_empty()))
}

/// Reads the helper's stderr to its end, calling `line` for each line; a stop signal the
/// task receives meanwhile is sent on to the helper (pid `helper`) as SIGTERM.
pub fn read_lines_passing_stops(mut stderr: ChildStderr, helper: u32, mut line: impl FnMut(&str)) {
    let mut signals = SignalFd::with_flags(
        &blocked_stop_signals(),
        SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
    )
    .ok();
    let mut pending = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(s) = &signals {
            match wait_passing_stops(&stderr, s, helper) {
                Ok(true) => {}
                Ok(false) | Err(nix::errno::Errno::EINTR) => continue,
                // Reading on without the signals beats not reading: the helper would block.
                Err(_) => signals = None,
            }
        }
        let n = match stderr.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let text: Vec<u8> = pending.drain(..=end).collect();
            line(String::from_utf8_lossy(&text[..end]).as_ref());
        }
    }
    if !pending.is_empty() {
        line(String::from_utf8_lossy(&pending).as_ref());
    }
}
