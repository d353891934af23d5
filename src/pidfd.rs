//! A process held by a pidfd (Linux 5.3 and later): a signal sent through it reaches that
//! process and never a later one that reused its pid, and its end is awaited without
//! polling /proc.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// One process, held from `open` on.
pub struct HeldProcess {
    fd: AsyncFd<OwnedFd>,
}

impl HeldProcess {
    /// Holds process `pid`. Fails on kernels without pidfds (ENOSYS) and for a pid that
    /// is gone (ESRCH).
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
        // SAFETY: the kernel just gave us this descriptor and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd is moved in and stays open, the same descriptor, until the
        // AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)? };
        Ok(HeldProcess { fd })
    }

    /// Sends `sig` to the held process (0: only checks that it is still there).
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with no siginfo and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Ends when the held process has exited. For the first process of a pid namespace
    /// that is after every other process of the namespace was killed (the kernel ends
    /// them before the namespace's init finishes exiting).
    pub async fn ended(&self) {
        // A pidfd reads as ready once its process exited; errors mean the same.
        let _ = self.fd.readable().await.map(|mut g| g.retain_ready());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_signal_through_it_ends_the_process_and_its_end_is_seen() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let held = HeldProcess::open(child.id() as i32).unwrap();
        held.signal(0).unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), held.ended()).await;
        assert!(waiting.is_err(), "a running process has not ended");
        held.signal(libc::SIGKILL).unwrap();
        tokio::time::timeout(Duration::from_secs(5), held.ended())
            .await
            .expect("the end of a killed process is seen");
        child.wait().unwrap();
        let gone = held.signal(0).unwrap_err();
        assert_eq!(gone.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn a_pid_that_is_gone_cannot_be_held() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(HeldProcess::open(pid).is_err());
    }
}
