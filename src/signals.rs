//! The signals a launcher reacts to: what Slurm sends on scancel, time limit and Ctrl-C
//! (SIGTERM, SIGINT), and a closed terminal (SIGHUP, SIGQUIT).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Subscribed termination signals.
pub struct Signals {
    streams: Vec<(i32, Signal)>,
}

impl Signals {
    /// Subscribes; from now on these signals no longer kill the process by default.
    pub fn install() -> std::io::Result<Self> {
        let kinds = [
            (libc_num::SIGTERM, SignalKind::terminate()),
            (libc_num::SIGINT, SignalKind::interrupt()),
            (libc_num::SIGHUP, SignalKind::hangup()),
            (libc_num::SIGQUIT, SignalKind::quit()),
        ];
        let streams = kinds
            .into_iter()
            .map(|(n, k)| signal(k).map(|s| (n, s)))
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

mod libc_num {
    use nix::sys::signal::Signal as S;
    pub const SIGTERM: i32 = S::SIGTERM as i32;
    pub const SIGINT: i32 = S::SIGINT as i32;
    pub const SIGHUP: i32 = S::SIGHUP as i32;
    pub const SIGQUIT: i32 = S::SIGQUIT as i32;
}
