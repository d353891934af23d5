//! Entering the container from a task child, as root and single-threaded: join the
//! container's mount namespace, make its root ours, and close every way to more privilege.

use nix::sched::{setns, CloneFlags};
use std::fs::File;

/// Joins the mount namespace of `pid` (the container's init) and its root, then sets
/// `no_new_privs` and empties the capability bounding set: no setuid program or file
/// capability in the image can raise the task above the job's user.
pub fn enter(pid: i32) -> Result<(), String> {
    // Opened before the switch: afterwards /proc is the container's.
    let ns = File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| format!("the container's mount namespace (pid {pid}): {e}"))?;
    let root = File::open(format!("/proc/{pid}/root"))
        .map_err(|e| format!("the container's root (pid {pid}): {e}"))?;
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
    setns(&ns, CloneFlags::CLONE_NEWNS).map_err(|e| format!("joining the container: {e}"))?;
    nix::unistd::fchdir(&root).map_err(|e| format!("entering the container's root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("entering the container's root: {e}"))?;
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
