//! The launcher's own standard input as the script's: bytes read on a thread of their own
//! (a blocked read never holds the launcher's exit), and, under `srun --pty`, the terminal
//! put in raw mode so keys (Ctrl-C, Ctrl-Z, arrows) reach the program inside the container,
//! with the window size following the user's.

use nix::sys::termios::{self, SetArg, Termios};
use std::io::Read;
use std::os::fd::AsFd;
use tokio::sync::mpsc;

/// Whether the launcher's standard input is a terminal (`srun --pty`).
pub fn stdin_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

/// Reads standard input on a thread; the channel closes at end of input.
pub fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// The terminal in raw mode while this lives; restored when dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on standard input in raw mode; `None` when it is not a terminal.
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The terminal's size (rows, columns), when standard input is a terminal.
pub fn window_size() -> Option<(u16, u16)> {
    nix::ioctl_read_bad!(get_winsize, nix::libc::TIOCGWINSZ, nix::libc::winsize);
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize struct it is given, on fd 0.
    unsafe { get_winsize(0, &mut ws) }.ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}
