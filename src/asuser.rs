//! A file opened *as the job's user* and handed to root as a descriptor (`SCM_RIGHTS`): root
//! writes into what the user may write, never into a path it resolved itself, and never
//! waits on the user's process without a bound. The child that became the user opens the
//! file under a temporary name (a new file, no link followed), sends the descriptor, and
//! waits for root's word to rename it into place or remove it; the user may stop or kill
//! that child, which then costs only their own archive: root gives up after a bound and
//! kills it.

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::{ForkResult, Pid};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The child that opened a file as the user.
pub struct UserFile {
    child: Pid,
    sock: UnixStream,
}

/// Forks a child (call before any thread exists) that becomes `uid`/`gid`/`gids`, opens
/// `to`'s temporary name beside it and sends the descriptor.
pub fn open(uid: u32, gid: u32, gids: &[u32], to: &Path) -> std::io::Result<UserFile> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: no thread exists yet, so the child may run ordinary code; it drops its ids,
    // opens, sends, waits for one byte, renames or removes, then `_exit`s.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            drop(ours);
            let code = i32::from(child(uid, gid, gids, to, theirs).is_err());
            // SAFETY: leaves the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            Ok(UserFile {
                child,
                sock: UnixStream::from(ours),
            })
        }
    }
}

/// The temporary name beside `to` (the child's pid in it, so two saves never share one).
fn temporary(to: &Path, pid: u32) -> PathBuf {
    to.with_extension(format!("mnd-tmp-{pid}"))
}

/// In the child, as the user.
fn child(uid: u32, gid: u32, gids: &[u32], to: &Path, sock: OwnedFd) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    crate::identity::become_user(uid, gid, gids)?;
    let tmp = temporary(to, std::process::id());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let fds = [file.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(b"f")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    drop(file);
    let mut word = [0u8; 1];
    let keep = matches!(UnixStream::from(sock).read(&mut word), Ok(1)) && word[0] == b'k';
    match keep {
        true => std::fs::rename(&tmp, to),
        false => {
            let _ = std::fs::remove_file(&tmp);
            Err(std::io::Error::other("not kept"))
        }
    }
}

impl UserFile {
    /// The descriptor the child opened, within `limit` (past it the child is killed).
    pub fn descriptor(&mut self, limit: Duration) -> std::io::Result<OwnedFd> {
        if !readable(self.sock.as_fd(), limit)? {
            self.kill();
            return Err(std::io::Error::other(format!(
                "no file opened as the user within {} s",
                limit.as_secs()
            )));
        }
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(fd) = fds.first() {
                    // SAFETY: the kernel installed this descriptor for us just now.
                    return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
            }
        }
        self.kill();
        Err(std::io::Error::other(
            "the file could not be opened as the user (see above)",
        ))
    }

    /// Tells the child to rename the file into place (`keep`) or remove it, and waits for
    /// its end within `limit` (past it the child is killed). Ok when the file was kept.
    pub fn finish(mut self, keep: bool, limit: Duration) -> std::io::Result<()> {
        // One byte into an empty socket buffer: never blocks.
        let _ = self.sock.write_all(if keep { b"k" } else { b"d" });
        match wait_bounded(self.child, limit)? {
            nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _) => {
                Err(std::io::Error::other(format!(
                    "the process renaming the file as the user did not end within {} s",
                    limit.as_secs()
                )))
            }
            nix::sys::wait::WaitStatus::Exited(_, 0) if keep => Ok(()),
            other if keep => Err(std::io::Error::other(format!(
                "renaming the file as the user failed ({other:?})"
            ))),
            _ => Ok(()),
        }
    }

    /// Ends the child (a stopped one too) and reaps it.
    fn kill(&mut self) {
        let _ = nix::sys::signal::kill(self.child, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.child, None);
    }
}

/// Everything a child of root's that became the user writes to `output` until it closes
/// it, and its exit status, within `limit`: past that the child (stopped by the user, say)
/// is killed and reaped, and the wait fails.
pub fn read_from_child(
    child: Pid,
    output: OwnedFd,
    limit: Duration,
) -> std::io::Result<(Vec<u8>, nix::sys::wait::WaitStatus)> {
    let deadline = std::time::Instant::now() + limit;
    let mut file = std::fs::File::from(output);
    let mut text = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || !readable(file.as_fd(), left)? {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            return Err(std::io::Error::other(format!(
                "the process working as the user did not finish within {} s (stopped?); it was killed",
                limit.as_secs()
            )));
        }
        match file.read(&mut chunk)? {
            0 => break,
            n => text.extend_from_slice(&chunk[..n]),
        }
    }
    // It closed its output: it is exiting (or the user stopped it just now).
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    Ok((text, wait_bounded(child, left)?))
}

/// Reaps `child` within `limit`, killing it past that (a killed child shows as such).
pub fn wait_bounded(child: Pid, limit: Duration) -> std::io::Result<nix::sys::wait::WaitStatus> {
    use nix::sys::wait::waitpid;
    if let Ok(held) = pidfd(child.as_raw()) {
        if !readable(held.as_fd(), limit)? {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        }
    }
    Ok(waitpid(child, None)?)
}

/// A pidfd of process `pid` (Linux 5.3 and later): what it reaches is that process, never
/// a later one that took its pid; it is readable once the process ended.
pub fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A pipe to or from a process of the user's, each read or write of which waits for the
/// pipe `stall` at most: past that the process (stopped by the user, say) is killed and the
/// call fails. A write is at most one page, which a writable pipe always takes whole.
pub struct Watched<T> {
    inner: T,
    child: Pid,
    stall: Duration,
}

impl<T: AsFd> Watched<T> {
    /// `inner`, a pipe of process `child`'s.
    pub fn new(inner: T, child: u32, stall: Duration) -> Self {
        Watched {
            inner,
            child: Pid::from_raw(child as i32),
            stall,
        }
    }

    fn ready(&self, events: nix::poll::PollFlags) -> std::io::Result<()> {
        if ready(self.inner.as_fd(), events, self.stall)? {
            return Ok(());
        }
        let _ = nix::sys::signal::kill(self.child, nix::sys::signal::Signal::SIGKILL);
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the process working as the user made no progress for {} s (stopped?); it was killed",
                self.stall.as_secs()
            ),
        ))
    }
}

impl<T: Read + AsFd> Read for Watched<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.ready(nix::poll::PollFlags::POLLIN)?;
        self.inner.read(buf)
    }
}

impl<T: Write + AsFd> Write for Watched<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.ready(nix::poll::PollFlags::POLLOUT)?;
        self.inner.write(&buf[..buf.len().min(4096)])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Waits until `fd` is readable, for `limit` at most; false when the time ran out.
fn readable(fd: std::os::fd::BorrowedFd, limit: Duration) -> std::io::Result<bool> {
    ready(fd, nix::poll::PollFlags::POLLIN, limit)
}

/// Waits until `fd` has one of `events`, for `limit` at most; false when the time ran out.
fn ready(
    fd: std::os::fd::BorrowedFd,
    events: nix::poll::PollFlags,
    limit: Duration,
) -> std::io::Result<bool> {
    use nix::poll::{poll, PollFd, PollTimeout};
    let ms = u16::try_from(limit.as_millis().min(60_000)).unwrap_or(u16::MAX);
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut fds = [PollFd::new(fd, events)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if std::time::Instant::now() >= deadline => return Ok(false),
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}
