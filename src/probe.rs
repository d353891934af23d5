//! Readiness probes: a TCP connect to an sshd that answers with an `SSH-2.0-` banner,
//! retried with a short backoff until one deadline; many targets probed at once.

use futures_util::stream::{FuturesUnordered, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};

/// Connection attempts in flight at once (keeps well under the open-file limit).
const MAX_IN_FLIGHT: usize = 256;

/// Targets that did not answer in time.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{} did not answer with an ssh banner on port {port} within {secs} s{}", names(.missing), describe_last(.last_error))]
pub struct NotReady {
    /// Names of the targets that never answered.
    pub missing: Vec<String>,
    /// The port probed.
    pub port: u16,
    /// The deadline, in seconds.
    pub secs: u64,
    /// What the last attempt on the first missing target saw.
    pub last_error: Option<String>,
}

fn names(v: &[String]) -> String {
    match v.len() {
        0 => "no node".into(),
        1..=5 => v.join(", "),
        n => format!("{} and {} more", v[..5].join(", "), n - 5),
    }
}

fn describe_last(e: &Option<String>) -> String {
    e.as_ref()
        .map(|e| format!(" (last attempt: {e})"))
        .unwrap_or_default()
}

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
    let mut pause = Duration::from_millis(10);
    loop {
        let err = match banner(host, port, deadline).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() + pause >= deadline {
            return Err(err);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Probes every host at once; returns when all answered, or at the deadline with the names
/// of those that did not.
pub async fn wait_all(hosts: &[String], port: u16, deadline: Instant) -> Result<(), NotReady> {
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut pending: FuturesUnordered<_> = hosts
        .iter()
        .map(|h| {
            let slots = slots.clone();
            async move {
                let mut pause = Duration::from_millis(10);
                loop {
                    let result = {
                        let _slot = slots.acquire().await.expect("semaphore open");
                        banner(h, port, deadline).await
                    };
                    match result {
                        Ok(()) => return (h, Ok(())),
                        Err(e) if Instant::now() + pause >= deadline => return (h, Err(e)),
                        Err(_) => tokio::time::sleep(pause).await,
                    }
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
            }
        })
        .collect();
    let mut missing = Vec::new();
    let mut first_error = None;
    while let Some((host, result)) = pending.next().await {
        if let Err(e) = result {
            missing.push(host.clone());
            first_error.get_or_insert(e);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort_by_key(|m| hosts.iter().position(|h| h == m));
    Err(NotReady {
        missing,
        port,
        secs: (deadline - started).as_secs_f64().round() as u64,
        last_error: first_error,
    })
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
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        wait_all(&hosts, port, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
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
    async fn dead_or_wrong_targets_are_named_at_the_deadline() {
        let http = fake_sshd(b"HTTP/1.1 400 Bad\r\n\r\n").await;
        let e = wait_all(
            &["127.0.0.1".into()],
            http,
            Instant::now() + Duration::from_millis(400),
        )
        .await
        .unwrap_err();
        assert_eq!(e.missing, ["127.0.0.1"]);
        assert!(e.to_string().contains("not an ssh server"), "{e}");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = l.local_addr().unwrap().port();
        drop(l);
        let t = Instant::now();
        let e = wait_all(
            &["127.0.0.1".into()],
            closed,
            t + Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(e.to_string().starts_with("127.0.0.1 did not answer"), "{e}");
    }
}
