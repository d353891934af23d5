//! Entering the container from a task child, as root and single-threaded: join the
//! container's mount namespace, make its root ours, and close every way to more privilege.

use mnd::spank::Reply;
use nix::sched::{setns, CloneFlags};
use std::fs::File;

/// The container's init runs as the user, who may end it; its pid may then be another
/// process's (the user's own, in a mount namespace of their making). Checked after the
/// namespace is open: the same start time as when the helper started it, and in the
/// container's cgroup.
fn still_the_container(reply: &Reply) -> Result<(), String> {
    let pid = reply.pid;
    let gone = || {
        format!(
            "the container {}'s init (pid {pid}) is gone (ended, and the pid is another process's); the step cannot join it. Fix: run the step again",
            reply.container
        )
    };
    if mnd::node::process_start_time(pid) != Some(reply.pid_start) {
        return Err(gone());
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if reply.container_id.is_empty() || !cgroup.contains(&reply.container_id) {
        return Err(gone());
    }
    Ok(())
}

/// The namespaces `--mnd-unshare` gives the container, as `/proc/PID/ns` names them.
fn own_namespace(name: &str) -> Option<CloneFlags> {
    match name {
        "net" => Some(CloneFlags::CLONE_NEWNET),
        "ipc" => Some(CloneFlags::CLONE_NEWIPC),
        "uts" => Some(CloneFlags::CLONE_NEWUTS),
        _ => None,
    }
}

/// Joins the mount namespace of the container's init and its root (and the namespaces of
/// its own it has: `--mnd-unshare`), makes its root read-only when asked
/// (`--mnd-readonly`; mounts keep their own mode), then sets `no_new_privs` and empties
/// the capability bounding set: no setuid program or file capability in the image can
/// raise the task above the job's user.
pub fn enter(reply: &Reply) -> Result<(), String> {
    let pid = reply.pid;
    // Opened before the switch: afterwards /proc is the container's.
    let ns = File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| format!("the container's mount namespace (pid {pid}): {e}"))?;
    let others = reply
        .namespaces
        .iter()
        .filter_map(|n| Some((n, own_namespace(n)?)))
        .map(|(n, flag)| {
            File::open(format!("/proc/{pid}/ns/{n}"))
                .map(|f| (f, flag))
                .map_err(|e| format!("the container's {n} namespace (pid {pid}): {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let root = File::open(format!("/proc/{pid}/root"))
        .map_err(|e| format!("the container's root (pid {pid}): {e}"))?;
    still_the_container(reply)?;
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
    for (f, flag) in &others {
        setns(f, *flag).map_err(|e| format!("joining the container's namespace: {e}"))?;
    }
    setns(&ns, CloneFlags::CLONE_NEWNS).map_err(|e| format!("joining the container: {e}"))?;
    nix::unistd::fchdir(&root).map_err(|e| format!("entering the container's root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("entering the container's root: {e}"))?;
    if reply.read_only {
        use nix::mount::{mount, MsFlags};
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .map_err(|e| format!("making the container's root read-only: {e}"))?;
    }
    // SAFETY: plain prctl calls on this process with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
        for cap in 0..=last_cap {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                return Err(format!(
                    "dropping capability {cap} from the bounding set: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    Ok(())
}

/// `--mnd-remap-root`, in the task as the job's user: a user namespace of its own where
/// root is the user and nothing else is mapped. Root there owns no namespace but this one,
/// so it gains nothing outside: files it writes are the user's, and the host's root is
/// nobody.
pub fn remap_root() -> Result<(), String> {
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    // After slurmstepd's switch to the user the task is not dumpable, so its /proc files
    // are root's and it cannot write its own maps. The exec that follows makes it dumpable
    // anyway (no set-id program runs): this only does it a moment earlier.
    // SAFETY: a plain prctl on this process with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "--mnd-remap-root: {}",
            std::io::Error::last_os_error()
        ));
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| {
        format!("--mnd-remap-root: a user namespace ({e}; the node must allow unprivileged user namespaces)")
    })?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| format!("--mnd-remap-root: /proc/self/{file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1"))?;
    write("gid_map", format!("0 {gid} 1"))
}

/// Ends the step's container at the step's end without waiting for Docker: its init, still
/// the one the helper started (same start time, in the container's cgroup), is killed, and
/// Docker removes the container by itself (it was made with auto-remove). Whatever is left
/// (Docker down, a killed slurmstepd) the Epilog removes. False when the init is not
/// provably the container's any more: then the helper removes it by name.
/// The init is held by a pidfd before it is checked, and the signal goes through that
/// pidfd: it reaches the process that was checked, never one that took its pid since.
pub fn end(reply: &Reply) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(held) = mnd::asuser::pidfd(reply.pid) else {
        return false;
    };
    if still_the_container(reply).is_err() {
        return false;
    }
    // SAFETY: pidfd_send_signal with no siginfo and no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            held.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    sent == 0
}
