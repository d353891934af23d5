//! MUNGE, the credential service every Slurm node runs: how one node's root side vouches
//! for a fact to another node's root side through a folder the user controls. A credential
//! encoded by root carries uid 0, and only munged (with the cluster's key) can make one, so
//! a user can copy it but never forge or alter it. The `munge` and `unmunge` programs are
//! used, as `scontrol` users would.

use std::process::Stdio;
use thiserror::Error;
use tokio::io::AsyncWriteExt;

/// MUNGE could not encode or decode.
#[derive(Debug, Error)]
pub enum MungeError {
    /// The program could not run.
    #[error("cannot run {0}: {1} (is the munge package installed and munged running?)")]
    Run(&'static str, String),
    /// It ran and refused.
    #[error("{0}: {1}")]
    Refused(&'static str, String),
    /// Its output was not understood.
    #[error("unmunge said something unexpected: {0}")]
    Output(String),
}

/// A credential decoded and found valid: who encoded it, and what it says.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The encoder's uid (0: root on some node of the cluster).
    pub uid: u32,
    /// The payload.
    pub payload: String,
}

async fn run(program: &'static str, args: &[&str], input: &[u8]) -> Result<String, MungeError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| MungeError::Run(program, e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .await
            .map_err(|e| MungeError::Run(program, e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| MungeError::Run(program, e.to_string()))?;
    if !out.status.success() {
        // unmunge says why on stdout (`STATUS: Replayed credential (17)`), munge on stderr.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let status = stdout
            .lines()
            .find_map(|l| l.strip_prefix("STATUS:"))
            .map(str::trim);
        let said = match status {
            Some(status) => status.to_string(),
            None => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        };
        return Err(MungeError::Refused(
            program,
            format!("{said} ({})", out.status),
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| MungeError::Output(e.to_string()))
}

/// A credential for `payload`, valid for `ttl_secs`, from this process's uid.
pub async fn encode(payload: &str, ttl_secs: u32) -> Result<String, MungeError> {
    let ttl = ttl_secs.to_string();
    run("munge", &["--ttl", &ttl], payload.as_bytes()).await
}

/// Decodes `credential` (munged refuses an expired, replayed or forged one).
pub async fn decode(credential: &str) -> Result<Decoded, MungeError> {
    let out = run("unmunge", &[], credential.as_bytes()).await?;
    parse_unmunge(&out)
}

/// `unmunge`'s output: `KEY: value` lines, a blank line, then the payload.
fn parse_unmunge(out: &str) -> Result<Decoded, MungeError> {
    let (meta, payload) = out
        .split_once("\n\n")
        .ok_or_else(|| MungeError::Output("no payload".into()))?;
    let field = |key: &str| {
        meta.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
    };
    if !field("STATUS").is_some_and(|s| s.starts_with("Success")) {
        return Err(MungeError::Output(format!(
            "status {}",
            field("STATUS").unwrap_or("missing")
        )));
    }
    // `UID: root (0)`: the number in brackets.
    let uid = field("UID")
        .and_then(|u| u.rsplit_once('(')?.1.strip_suffix(')')?.parse().ok())
        .ok_or_else(|| MungeError::Output("no UID".into()))?;
    Ok(Decoded {
        uid,
        payload: payload.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmunge_output_is_read_and_a_failure_is_not_success() {
        let out = "STATUS:          Success (0)\nENCODE_HOST:     node1 (10.0.0.1)\nUID:             root (0)\nGID:             root (0)\nLENGTH:          5\n\nhello";
        assert_eq!(
            parse_unmunge(out).unwrap(),
            Decoded {
                uid: 0,
                payload: "hello".into()
            }
        );
        let dave = out.replace("root (0)", "dave (1001)");
        assert_eq!(parse_unmunge(&dave).unwrap().uid, 1001);
        assert!(parse_unmunge(&out.replace("Success (0)", "Expired credential (15)")).is_err());
        assert!(parse_unmunge("STATUS: Success (0)\nUID: root (0)").is_err());
    }
}
