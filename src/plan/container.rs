//! What both recipes give every container: the user's identity, their groups, the labels
//! the tools and the Epilog read, and the hardening (no capabilities, no new privileges).

use crate::identity::Identity;
use crate::spec::{labels, Device};
use std::collections::BTreeMap;

/// A `--device` value: `HOST[:CONTAINER[:PERMISSIONS]]`.
pub(super) fn parse_device(spec: &str) -> Device {
    let mut parts = spec.splitn(3, ':');
    let host = parts.next().unwrap_or_default().to_string();
    let container = parts
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(&host)
        .to_string();
    let permissions = parts.next().unwrap_or("rwm").to_string();
    Device {
        host,
        container,
        permissions,
    }
}

/// Parses "512m", "16g", "1073741824" into bytes.
pub fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1i64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(mult))
}

/// Who the container's processes are: the variables that name the user.
pub fn identity_env(user: &Identity) -> Vec<String> {
    vec![
        format!("HOME={}", user.home.display()),
        format!("USER={}", user.name),
        format!("LOGNAME={}", user.name),
    ]
}

/// The labels every mnd container carries (keys in `spec::labels`).
pub fn base_labels(
    job: String,
    step: String,
    user: &Identity,
    node: &str,
    role: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::JOB.to_string(), job),
        (labels::STEP.to_string(), step),
        (labels::USER.to_string(), user.name.clone()),
        (labels::UID.to_string(), user.uid.to_string()),
        (labels::NODE.to_string(), node.to_string()),
        (labels::ROLE.to_string(), role.to_string()),
    ])
}

/// Supplementary group ids as Docker wants them: each once, never the primary group.
pub fn group_ids(primary: u32, groups: impl IntoIterator<Item = String>) -> Vec<String> {
    let primary = primary.to_string();
    let mut out: Vec<String> = Vec::new();
    for g in groups {
        if g != primary && !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

/// Capabilities dropped: all of them (nothing in a job needs one: sshd runs as the user),
/// then the user's own, unless the container is privileged.
pub fn cap_drop(privileged: bool, extra: &[String]) -> Vec<String> {
    if privileged {
        return extra.to_vec();
    }
    std::iter::once("ALL".to_string())
        .chain(extra.iter().cloned())
        .collect()
}

/// Security options: always `no-new-privileges`, so a setuid or file-capability program in
/// the image gives nothing; then the user's own.
pub fn security_opt(extra: &[String]) -> Vec<String> {
    std::iter::once("no-new-privileges=true".to_string())
        .chain(extra.iter().cloned())
        .collect()
}
