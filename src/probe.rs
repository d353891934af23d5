//! Readiness probes: a TCP connect to an sshd that answers with an `SSH-2.0-` banner,
//! retried with a short backoff until a deadline; and, for this node's own sshd, the
//! kernel's table of listening sockets (`listening`: no connection for sshd to answer).

use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// One attempt: connect and read the banner.
async fn banner(host: &str, port: u16, deadline: Instant) -> Result<(), String> {
    let attempt_end = (Instant::now() + Duration::from_secs(2)).min(deadline);
    let mut s = timeout_at(attempt_end, TcpStream::connect((host, port)))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 8 {
        let n = timeout_at(attempt_end, s.read(&mut buf[got..]))
            .await
            .map_err(|_| "no banner".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the banner".into());
        }
        got += n;
    }
    if buf.starts_with(b"SSH-2.0-") {
        Ok(())
    } else {
        Err(format!(
            "not an ssh server (got {:?})",
            String::from_utf8_lossy(&buf[..got])
        ))
    }
}

/// Retries `banner` until it succeeds or the deadline passes.
pub async fn wait_banner(host: &str, port: u16, deadline: Instant) -> Result<(), String> {
    // A just-started sshd answers within tens of milliseconds, and every one of them is the
    // job's start time: a refused connect costs microseconds, so the first seconds poll
    // every 5 ms (a doubling pause overshot the answer by up to half the wait), then every
    // 50 ms for an sshd that is slow to come.
    let fast_until = Instant::now() + Duration::from_secs(2);
    let mut reason: Option<String> = None;
    loop {
        let err = match banner(host, port, deadline).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let now = Instant::now();
        // An attempt the deadline cut short says less than the whole one before it.
        if now >= deadline {
            return Err(reason.unwrap_or(err));
        }
        let pause = Duration::from_millis(if now < fast_until { 5 } else { 50 });
        if now + pause >= deadline {
            return Err(err);
        }
        reason = Some(err);
        tokio::time::sleep(pause).await;
    }
}

/// Waits until a socket of user `uid` listens on TCP `port` in this network namespace, as
/// the kernel's socket table says (`listening`): this node's sshd is ready without a
/// connection it must answer (OpenSSH re-executes itself for each one). Where the table
/// does not show it within 3 s (a user namespace maps the container's uid, or netlink is
/// refused), until `wait_banner` answers.
pub async fn wait_listening(port: u16, uid: u32, deadline: Instant) -> Result<(), String> {
    let table_until = (Instant::now() + Duration::from_secs(3)).min(deadline);
    while Instant::now() < table_until {
        match crate::listening::listens(port, uid) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                log::debug!("no socket table ({e}); waiting for sshd's banner");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    wait_banner("127.0.0.1", port, deadline).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn fake_sshd(banner: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(banner).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn answers_when_the_banner_comes() {
        let port = fake_sshd(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        for host in ["127.0.0.1", "localhost"] {
            wait_banner(host, port, Instant::now() + Duration::from_secs(5))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn late_listener_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"SSH-2.0-x\r\n").await;
            }
        });
        wait_banner("127.0.0.1", port, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn wrong_or_dead_targets_fail_at_the_deadline_with_the_reason() {
        let http = fake_sshd(b"HTTP/1.1 400 Bad\r\n\r\n").await;
        let e = wait_banner(
            "127.0.0.1",
            http,
            Instant::now() + Duration::from_millis(400),
        )
        .await
        .unwrap_err();
        assert!(e.contains("not an ssh server"), "{e}");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = l.local_addr().unwrap().port();
        drop(l);
        let t = Instant::now();
        let e = wait_banner("127.0.0.1", closed, t + Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(e.contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn a_socket_of_this_process_is_seen_listening() {
        // On 127.0.0.2: never the port another test expects nobody on at 127.0.0.1.
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let uid = nix::unistd::getuid().as_raw();
        wait_listening(port, uid, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
    }
}
