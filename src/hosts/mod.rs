//! Hosts mode (no Slurm): the job's hosts from `--hosts` or `--hostfile`, the step context a
//! launcher started on a host reads from the variables the front door sets, and the ssh
//! command line that starts it there. Pure: no I/O.

pub mod door;
pub mod front;

use crate::hostlist;
use thiserror::Error;

/// The hosts, in order (rank 0 coordinates) (set by the front door on every host).
pub const LIST_VAR: &str = "MND_HOSTS_LIST";
/// This host's rank in the list.
pub const RANK_VAR: &str = "MND_HOSTS_RANK";
/// The job's id (ports and container names derive from it).
pub const JOB_VAR: &str = "MND_HOSTS_JOB";
/// Slots per host, aligned with the list (from a hostfile), when given.
pub const SLOTS_VAR: &str = "MND_HOSTS_SLOTS";

/// One host of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Name or address, as ssh reaches it.
    pub name: String,
    /// Slots (processes) on it, when the hostfile says.
    pub slots: Option<u32>,
}

/// A host list or hostfile that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HostsError {
    /// A line of a hostfile.
    #[error("hostfile {file} line {line}: {reason}")]
    Line {
        /// The file.
        file: String,
        /// Line number (from 1).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The list as a whole.
    #[error("{0}")]
    List(String),
}

/// Hosts from a hostlist expression (`node[1-3],gpu7`).
pub fn from_expr(expr: &str) -> Result<Vec<Host>, HostsError> {
    let names =
        hostlist::expand(expr).map_err(|e| HostsError::List(format!("--hosts '{expr}': {e}")))?;
    if let Some(bad) = names.iter().find(|n| !valid_host(n)) {
        return Err(HostsError::List(format!(
            "--hosts '{expr}': '{bad}' is not a host name or address"
        )));
    }
    let hosts: Vec<Host> = names
        .into_iter()
        .map(|name| Host { name, slots: None })
        .collect();
    check(hosts, &format!("--hosts '{expr}'"))
}

/// Hosts from a hostfile: one host (name or address) per line, `#` starts a comment,
/// optional slots as `HOST:SLOTS` or `HOST slots=N` (also `max_slots=` is ignored as
/// mpirun's hostfiles have it).
pub fn parse_hostfile(text: &str, file: &str) -> Result<Vec<Host>, HostsError> {
    let mut hosts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let fail = |reason: String| HostsError::Line {
            file: file.to_string(),
            line: i + 1,
            reason,
        };
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let (name, mut slots) = match first.rsplit_once(':') {
            // An IPv6 address has several colons: only HOST:N with a plain name splits.
            Some((h, n)) if !h.contains(':') => {
                let n = n
                    .parse::<u32>()
                    .map_err(|_| fail(format!("'{first}': slots after ':' must be a number")))?;
                (h.to_string(), Some(n))
            }
            _ => (first.to_string(), None),
        };
        for w in words {
            match w.split_once('=') {
                Some(("slots", n)) => {
                    slots = Some(
                        n.parse()
                            .map_err(|_| fail(format!("'{w}': slots= must be a number")))?,
                    );
                }
                Some(("max_slots", _)) => {}
                _ => {
                    return Err(fail(format!(
                        "'{w}' is not understood (use HOST, HOST:SLOTS or HOST slots=N)"
                    )))
                }
            }
        }
        if slots == Some(0) {
            return Err(fail("slots must be at least 1".into()));
        }
        if !valid_host(&name) {
            return Err(fail(format!("'{name}' is not a host name or address")));
        }
        hosts.push(Host { name, slots });
    }
    check(hosts, &format!("hostfile {file}"))
}

/// Letters, digits, `.-_:` (names, IPv4 and IPv6 addresses): nothing a shell or ssh would
/// read as an option or an operator.
fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
}

/// A list names at least one host, each once (names were checked as they were read).
fn check(hosts: Vec<Host>, what: &str) -> Result<Vec<Host>, HostsError> {
    if hosts.is_empty() {
        return Err(HostsError::List(format!("{what} names no host")));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = hosts.iter().find(|h| !seen.insert(h.name.clone())) {
        return Err(HostsError::List(format!(
            "{what} names {} twice: give each host once (slots say how many processes)",
            dup.name
        )));
    }
    Ok(hosts)
}

/// The user's ssh to `host` in batch mode, as every mnd tool uses it: keys only (never a
/// password prompt), a bounded connect time, a lost link noticed within 15 s, and a
/// terminal only when `tty`.
pub fn ssh_args(host: &str, tty: bool) -> [&str; 10] {
    [
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
        if tty { "-t" } else { "-T" },
        host,
    ]
}

/// A word for a POSIX shell, quoted so it reaches the program byte for byte.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The command the front door runs on host `rank` over ssh: into the working directory,
/// then the launcher (same path) with the job's variables and the user's own arguments.
pub fn remote_command(
    exe: &str,
    cwd: &str,
    hosts: &[Host],
    rank: usize,
    job: u64,
    args: &[String],
) -> String {
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let mut words = vec![
        "cd".to_string(),
        quote(cwd),
        "&&".into(),
        "exec".into(),
        "env".into(),
        format!("{LIST_VAR}={}", quote(&names.join(","))),
        format!("{RANK_VAR}={rank}"),
        format!("{JOB_VAR}={job}"),
    ];
    if hosts.iter().any(|h| h.slots.is_some()) {
        let slots: Vec<String> = hosts
            .iter()
            .map(|h| h.slots.unwrap_or(1).to_string())
            .collect();
        words.push(format!("{SLOTS_VAR}={}", slots.join(",")));
    }
    words.push(quote(exe));
    words.extend(args.iter().map(|a| quote(a)));
    words.join(" ")
}

/// The user's arguments for the launchers on the hosts: everything but the front door's own
/// options (`--hosts`, `--hostfile`, `--time-limit`, in `--opt=V` or `--opt V` form).
pub fn launcher_args(argv: &[String]) -> Vec<String> {
    const FRONT: [&str; 3] = ["--hosts", "--hostfile", "--time-limit"];
    let mut out = Vec::new();
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a.clone());
            out.extend(it.cloned());
            break;
        }
        if FRONT.contains(&a.as_str()) {
            it.next();
            continue;
        }
        if FRONT.iter().any(|f| a.starts_with(&format!("{f}="))) {
            continue;
        }
        out.push(a.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfiles_with_comments_and_slots() {
        let text = "# our servers\nnode1 slots=4\n\nnode2:2   # the small one\n10.0.0.7 slots=8 max_slots=8\nfe80::1\n";
        let hosts = parse_hostfile(text, "nodes.txt").unwrap();
        let got: Vec<(&str, Option<u32>)> =
            hosts.iter().map(|h| (h.name.as_str(), h.slots)).collect();
        assert_eq!(
            got,
            [
                ("node1", Some(4)),
                ("node2", Some(2)),
                ("10.0.0.7", Some(8)),
                ("fe80::1", None)
            ]
        );
    }

    #[test]
    fn bad_hostfiles_name_the_line() {
        let err = |t: &str| parse_hostfile(t, "h.txt").unwrap_err().to_string();
        assert_eq!(
            err("a\nb:x\n"),
            "hostfile h.txt line 2: 'b:x': slots after ':' must be a number"
        );
        assert!(err("a slots=0").contains("line 1: slots must be at least 1"));
        assert!(err("-oProxyCommand=x").contains("not a host name"));
        assert!(err("a;rm").contains("not a host name"));
        assert!(err("a\na").contains("names a twice"));
        assert!(err("# nothing\n").contains("names no host"));
        assert!(err("a cpus=3").contains("'cpus=3' is not understood"));
    }

    #[test]
    fn host_expressions() {
        let hosts = from_expr("node[1-3]").unwrap();
        assert_eq!(hosts.len(), 3);
        assert!(from_expr("node[1-").is_err());
    }

    #[test]
    fn the_remote_command_quotes_everything() {
        let hosts = vec![
            Host {
                name: "n1".into(),
                slots: Some(2),
            },
            Host {
                name: "n2".into(),
                slots: None,
            },
        ];
        let cmd = remote_command(
            "/opt/mnd/bin/mnd-srun",
            "/home/a b",
            &hosts,
            1,
            77,
            &[
                "--script=./t.sh".into(),
                "--".into(),
                "it's".into(),
                "$HOME".into(),
            ],
        );
        assert_eq!(
            cmd,
            "cd '/home/a b' && exec env MND_HOSTS_LIST=n1,n2 MND_HOSTS_RANK=1 MND_HOSTS_JOB=77 MND_HOSTS_SLOTS=2,1 /opt/mnd/bin/mnd-srun --script=./t.sh -- 'it'\\''s' '$HOME'"
        );
    }

    #[test]
    fn the_front_doors_options_stay_at_the_front() {
        let argv: Vec<String> = [
            "mnd-srun",
            "--hosts",
            "node[1-3]",
            "--container=img",
            "--hostfile=f",
            "--time-limit",
            "60",
            "--script=./s",
            "--",
            "--hosts",
            "x",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            launcher_args(&argv),
            ["--container=img", "--script=./s", "--", "--hosts", "x"]
        );
    }
}
