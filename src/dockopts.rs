//! `--dockopts`: the seed script's free-form Docker options, parsed into known options.
//! Anything that cannot be represented is refused with the option named; nothing is ever
//! handed to a shell.

use thiserror::Error;

/// Docker options understood from `--dockopts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockOpts {
    /// `-v SRC:DST[:ro]` / `--volume`, `--mount type=bind,...`.
    pub mounts: Vec<String>,
    /// `-e NAME=VALUE` / `--env` (a bare NAME takes the value from here).
    pub env: Vec<String>,
    /// `--shm-size`.
    pub shm_size: Option<String>,
    /// `--ulimit NAME=SOFT[:HARD]`.
    pub ulimits: Vec<(String, i64, i64)>,
    /// `--device HOST[:CONTAINER[:PERMS]]`.
    pub devices: Vec<String>,
    /// `--cap-add`.
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--ipc`.
    pub ipc: Option<String>,
    /// `--security-opt`.
    pub security_opt: Vec<String>,
    /// `--tmpfs PATH[:OPTS]`.
    pub tmpfs: Vec<String>,
    /// `--add-host NAME:ADDR`.
    pub add_hosts: Vec<String>,
    /// `--group-add`.
    pub group_add: Vec<String>,
    /// `--label`.
    pub labels: Vec<String>,
    /// `--network` / `--net`.
    pub network: Option<String>,
    /// `--privileged`.
    pub privileged: bool,
}

/// A `--dockopts` string that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DockOptsError {
    /// Quotes do not match.
    #[error("--dockopts has unbalanced quotes: {0}")]
    Quoting(String),
    /// An option mnd-srun does not represent.
    #[error("--dockopts: option '{0}' is not supported; {1}")]
    Unsupported(String, String),
    /// An option without its value.
    #[error("--dockopts: option '{0}' needs a value")]
    MissingValue(String),
    /// A value that cannot be read.
    #[error("--dockopts: invalid value '{1}' for '{0}': {2}")]
    BadValue(String, String, String),
}

/// Splits like a POSIX shell would (quotes and backslashes), without expanding anything.
fn split_words(text: &str) -> Result<Vec<String>, DockOptsError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(DockOptsError::Quoting(text.into())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x) => cur.push(x),
                            None => return Err(DockOptsError::Quoting(text.into())),
                        },
                        Some(x) => cur.push(x),
                        None => return Err(DockOptsError::Quoting(text.into())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn parse_limit(opt: &str, v: &str) -> Result<(String, i64, i64), DockOptsError> {
    let bad = |why: &str| DockOptsError::BadValue(opt.into(), v.into(), why.into());
    let (name, limits) = v
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=SOFT[:HARD]"))?;
    let num = |s: &str| -> Result<i64, DockOptsError> {
        if s == "unlimited" || s == "-1" {
            Ok(-1)
        } else {
            s.parse().map_err(|_| bad("limits are whole numbers or -1"))
        }
    };
    let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
    Ok((name.to_string(), num(soft)?, num(hard)?))
}

/// Turns `--mount type=bind,source=A,target=B,readonly` into `A:B:ro`.
fn mount_to_volume(opt: &str, v: &str) -> Result<String, DockOptsError> {
    let (mut src, mut dst, mut ro, mut kind) = (None, None, false, "volume");
    for kv in v.split(',') {
        let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "type" => kind = if val == "bind" { "bind" } else { "other" },
            "source" | "src" => src = Some(val),
            "target" | "destination" | "dst" => dst = Some(val),
            "readonly" | "ro" => ro = val.is_empty() || val == "true" || val == "1",
            _ => {
                return Err(DockOptsError::BadValue(
                    opt.into(),
                    v.into(),
                    format!("key '{k}' is not supported"),
                ));
            }
        }
    }
    match (kind, src, dst) {
        ("bind", Some(s), Some(d)) => Ok(format!("{s}:{d}{}", if ro { ":ro" } else { "" })),
        _ => Err(DockOptsError::BadValue(
            opt.into(),
            v.into(),
            "only type=bind with source and target is supported".into(),
        )),
    }
}

const REFUSED: &[(&str, &str)] = &[
    ("--user", "the container always runs as you"),
    ("-u", "the container always runs as you"),
    ("--name", "use --dockname/--name"),
    ("--entrypoint", "the launcher's own entrypoint runs sshd"),
    ("-w", "the working directory is the one you start from"),
    (
        "--workdir",
        "the working directory is the one you start from",
    ),
    ("-d", "the launcher manages the container's life"),
    ("--detach", "the launcher manages the container's life"),
    ("--env-file", "use -e NAME=VALUE or --envlist"),
    ("--gpus", "use mnd-srun --gpus"),
    ("--pid", "not supported"),
    ("--userns", "not supported"),
];

/// Parses a `--dockopts` string.
pub fn parse(text: &str) -> Result<DockOpts, DockOptsError> {
    let words = split_words(text)?;
    let mut o = DockOpts::default();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        i += 1;
        let (opt, inline) = match word.split_once('=') {
            Some((a, b)) if a.starts_with("--") => (a.to_string(), Some(b.to_string())),
            _ => (word.clone(), None),
        };
        if let Some((_, why)) = REFUSED.iter().find(|(r, _)| *r == opt) {
            return Err(DockOptsError::Unsupported(opt, (*why).into()));
        }
        match opt.as_str() {
            "--rm" | "-i" | "-t" | "-it" | "--interactive" | "--tty" | "--init" => continue,
            "--privileged" => {
                o.privileged = true;
                continue;
            }
            _ => {}
        }
        let takes_value = [
            "-v",
            "--volume",
            "--mount",
            "-e",
            "--env",
            "--shm-size",
            "--ulimit",
            "--device",
            "--cap-add",
            "--cap-drop",
            "--ipc",
            "--security-opt",
            "--tmpfs",
            "--add-host",
            "--group-add",
            "--label",
            "-l",
            "--network",
            "--net",
        ];
        if !takes_value.contains(&opt.as_str()) {
            return Err(DockOptsError::Unsupported(
                opt,
                "supported: -v/--volume, --mount type=bind, -e/--env, --shm-size, --ulimit, --device, --cap-add, --cap-drop, --ipc, --security-opt, --tmpfs, --add-host, --group-add, --label, --network, --privileged".into(),
            ));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = words
                    .get(i)
                    .cloned()
                    .ok_or_else(|| DockOptsError::MissingValue(opt.clone()))?;
                i += 1;
                v
            }
        };
        match opt.as_str() {
            "-v" | "--volume" => o.mounts.push(value),
            "--mount" => o.mounts.push(mount_to_volume(&opt, &value)?),
            "-e" | "--env" => o.env.push(value),
            "--shm-size" => o.shm_size = Some(value),
            "--ulimit" => o.ulimits.push(parse_limit(&opt, &value)?),
            "--device" => o.devices.push(value),
            "--cap-add" => o.cap_add.push(value),
            "--cap-drop" => o.cap_drop.push(value),
            "--ipc" => o.ipc = Some(value),
            "--security-opt" => o.security_opt.push(value),
            "--tmpfs" => o.tmpfs.push(value),
            "--add-host" => o.add_hosts.push(value),
            "--group-add" => o.group_add.push(value),
            "--label" | "-l" => o.labels.push(value),
            _ => o.network = Some(value),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_options_in_both_forms() {
        let o = parse("--shm-size=8g -e X=1 --env 'Y=a b' -v /a:/b:ro --ulimit memlock=-1 --ulimit nofile=1024:2048 --device /dev/fuse --cap-add SYS_PTRACE --ipc=host --rm --mount type=bind,source=/s,target=/t,readonly").unwrap();
        assert_eq!(o.shm_size.as_deref(), Some("8g"));
        assert_eq!(o.env, ["X=1", "Y=a b"]);
        assert_eq!(o.mounts, ["/a:/b:ro", "/s:/t:ro"]);
        assert_eq!(
            o.ulimits,
            [("memlock".into(), -1, -1), ("nofile".into(), 1024, 2048)]
        );
        assert_eq!(o.devices, ["/dev/fuse"]);
        assert_eq!(o.cap_add, ["SYS_PTRACE"]);
        assert_eq!(o.ipc.as_deref(), Some("host"));
    }

    #[test]
    fn unknown_or_refused_options_are_named() {
        let e = parse("--shm-size=1g --cpus 4").unwrap_err();
        assert!(e.to_string().contains("'--cpus'"), "{e}");
        let e = parse("--user root").unwrap_err();
        assert!(
            e.to_string().contains("'--user'") && e.to_string().contains("runs as you"),
            "{e}"
        );
        assert_eq!(
            parse("-e").unwrap_err(),
            DockOptsError::MissingValue("-e".into())
        );
        assert!(matches!(
            parse("-e 'X=1").unwrap_err(),
            DockOptsError::Quoting(_)
        ));
        assert!(parse("--ulimit memlock").is_err());
        assert!(parse("--mount type=volume,source=x,target=/y").is_err());
    }

    #[test]
    fn shell_metacharacters_are_plain_text() {
        let o = parse("-e 'X=$(rm -rf /); echo'").unwrap();
        assert_eq!(o.env, ["X=$(rm -rf /); echo"]);
    }
}
