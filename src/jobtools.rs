//! Job-wide tools (`mnd ps`, `mnd exec`, `mnd logs`): under Slurm they reach a job's other
//! nodes the Slurm way, `srun --jobid=ID --overlap`, which runs the same tool with `--here`
//! on each node; Slurm itself refuses other users' jobs, and each node answers only for the
//! caller's containers (root: everyone's). No daemon of mnd's own.

use std::path::Path;
use std::process::Command;
use thiserror::Error;

/// A job-wide tool that cannot run.
#[derive(Debug, Error)]
pub enum JobToolError {
    /// A Slurm command failed or is missing.
    #[error("{0}")]
    Slurm(String),
}

/// Where on a job a tool runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Every node of the job (`nodes` of them).
    All {
        /// Node count of the job.
        nodes: u32,
    },
    /// One node.
    Node(String),
}

/// The `srun` command line that runs `mnd ARGS --here` on `reach` of job `job`: one task per
/// node, inside the job's allocation without taking its resources, output labelled by
/// node when several nodes answer, and a terminal when `pty`.
pub fn fan_out(mnd: &Path, job: u64, reach: &Reach, pty: bool, args: &[String]) -> Vec<String> {
    let mut cmd = vec![
        "srun".to_string(),
        format!("--jobid={job}"),
        "--overlap".into(),
        "--quiet".into(),
        "--ntasks-per-node=1".into(),
    ];
    match reach {
        Reach::All { nodes } => {
            cmd.push(format!("--nodes={nodes}"));
            cmd.push("--label".into());
        }
        Reach::Node(node) => {
            cmd.push("--nodes=1".into());
            cmd.push(format!("--nodelist={node}"));
        }
    }
    if pty {
        cmd.push("--pty".into());
    }
    cmd.push(mnd.display().to_string());
    // `--here` right after the subcommand: what follows `--` belongs to the user's command.
    if let Some((sub, rest)) = args.split_first() {
        cmd.push(sub.clone());
        cmd.push("--here".into());
        cmd.extend(rest.iter().cloned());
    }
    cmd
}

/// Runs a Slurm query command; its standard output.
fn query(argv: &[&str]) -> Result<String, JobToolError> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| {
            JobToolError::Slurm(format!(
                "cannot run {}: {e} (is Slurm installed here?)",
                argv[0]
            ))
        })?;
    if !out.status.success() {
        return Err(JobToolError::Slurm(format!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Node count of a running job; an error names a job that is not running (or not the
/// caller's to see).
pub fn job_nodes(job: u64) -> Result<u32, JobToolError> {
    running_job_field(job, "%D", |text| text.parse().ok())
}

/// The first node of a running job (its batch host, where its first step's rank 0 runs).
pub fn first_node(job: u64) -> Result<String, JobToolError> {
    running_job_field(job, "%N", |text| {
        crate::hostlist::expand(text)
            .ok()
            .and_then(|nodes| nodes.into_iter().next())
    })
}

/// One `squeue -o FORMAT` field of a running job, read by `parse`; an error names a job that
/// is not running (or not the caller's to see).
fn running_job_field<T>(
    job: u64,
    format: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, JobToolError> {
    let job_id = job.to_string();
    let text = query(&["squeue", "-h", "-t", "R", "-j", &job_id, "-o", format])?;
    parse(text.trim()).ok_or_else(|| {
        JobToolError::Slurm(format!(
            "job {job} is not running (squeue shows no running job {job})"
        ))
    })
}

/// The running jobs to look at, with their node counts: the caller's, or everyone's.
pub fn running_jobs(everyone: bool) -> Result<Vec<(u64, u32)>, JobToolError> {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    let mut argv = vec!["squeue", "-h", "-t", "R", "-o", "%i %D"];
    if !everyone {
        argv.extend(["-u", &user]);
    }
    Ok(query(&argv)?
        .lines()
        .filter_map(|l| {
            let (job, nodes) = l.trim().split_once(' ')?;
            Some((job.parse().ok()?, nodes.trim().parse().ok()?))
        })
        .collect())
}

/// Whether Slurm commands are here (else the tools answer for this node only).
pub fn under_slurm() -> bool {
    which::which("squeue").is_ok() && which::which("srun").is_ok()
}

/// Runs `mnd ARGS --here` on `reach` of job `job` through srun: output captured (for `ps`)
/// or passed through; srun's failure (another user's job, a job not running) is an error.
pub fn on_job(
    job: u64,
    reach: &Reach,
    pty: bool,
    args: &[String],
    capture: bool,
) -> Result<String, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find mnd itself: {e}"))?;
    let argv = fan_out(&me, job, reach, pty, args);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    if capture {
        let out = cmd.output().map_err(|e| format!("cannot run srun: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "job {job}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let status = cmd.status().map_err(|e| format!("cannot run srun: {e}"))?;
    match status.code() {
        Some(0) => Ok(String::new()),
        Some(code) => std::process::exit(code),
        None => Err(format!("srun for job {job} ended by a signal")),
    }
}

/// The ssh command that runs `mnd ARGS --here` on `host` (hosts mode): this mnd's path,
/// batch mode (keys only), a terminal when `pty`.
fn over_ssh(host: &str, pty: bool, args: &[String]) -> Result<std::process::Command, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find mnd itself: {e}"))?;
    let mut words = vec![crate::hosts::quote(&me.to_string_lossy())];
    if let Some((sub, rest)) = args.split_first() {
        words.push(sub.clone());
        words.push("--here".into());
        words.extend(rest.iter().map(|a| crate::hosts::quote(a)));
    }
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(crate::hosts::ssh_args(host, pty));
    cmd.arg(words.join(" "));
    Ok(cmd)
}

/// `mnd ARGS --here` on every host at once, each host's output captured.
pub fn on_hosts(hosts: &[String], args: &[String]) -> Result<Vec<(String, String)>, String> {
    let runs: Vec<_> = hosts
        .iter()
        .map(|h| {
            let cmd = over_ssh(h, false, args);
            let h = h.clone();
            std::thread::spawn(move || {
                let out = cmd?
                    .output()
                    .map_err(|e| format!("{h}: cannot run ssh: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "{h}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Ok((h, String::from_utf8_lossy(&out.stdout).into_owned()))
            })
        })
        .collect();
    runs.into_iter()
        .map(|r| {
            r.join()
                .map_err(|_| "a host's ssh thread failed".to_string())?
        })
        .collect()
}

/// A job tool in hosts mode: on one host (`node`, passed through, terminal and exit code
/// included), or on every host with its output labelled by host (`all`).
pub fn hosts_tool(
    hosts: &str,
    node: Option<&str>,
    all: bool,
    pty: bool,
    args: &[String],
) -> Result<(), String> {
    let hosts = crate::hostlist::expand(hosts).map_err(|e| e.to_string())?;
    match (node, all) {
        (Some(n), _) => {
            if !hosts.iter().any(|h| h == n) {
                return Err(format!("--node {n} is not one of --hosts"));
            }
            let status = over_ssh(n, pty, args)?
                .status()
                .map_err(|e| format!("cannot run ssh: {e}"))?;
            match status.code() {
                Some(0) => Ok(()),
                Some(code) => std::process::exit(code),
                None => Err(format!("ssh to {n} ended by a signal")),
            }
        }
        (None, true) => {
            for (h, out) in on_hosts(&hosts, args)? {
                for line in out.lines() {
                    println!("{h}: {line}");
                }
            }
            Ok(())
        }
        (None, false) => {
            Err("say where: --node NODE (see `mnd ps --hosts ...`), or --all for every host".into())
        }
    }
}

/// `mnd containers ls|rm`: the srun arguments that ask each node's root helper, through
/// the plugin (`--mnd-containers=OP`), for the caller's named containers there: one task
/// per node, on `nodes` (a hostlist), else on every node of the allocation the caller is
/// in (`allocation`: its `SLURM_JOB_NODELIST`, the step overlapping the running ones).
pub fn containers_srun(
    op: &str,
    nodes: Option<&str>,
    allocation: Option<&str>,
) -> Result<Vec<String>, JobToolError> {
    let Some(list) = nodes.or(allocation) else {
        return Err(JobToolError::Slurm(
            "which nodes? Give -w NODES (a hostlist), or run it inside an allocation (salloc, sbatch)"
                .into(),
        ));
    };
    let count = crate::hostlist::expand(list)
        .map_err(|e| JobToolError::Slurm(format!("-w {list}: {e}")))?
        .len();
    let mut args = vec![];
    if allocation.is_some() {
        args.push("--overlap".to_string());
    }
    args.extend([
        format!("--nodes={count}"),
        format!("--ntasks={count}"),
        "--ntasks-per-node=1".to_string(),
        format!("--nodelist={list}"),
        format!("--mnd-containers={op}"),
        "true".to_string(),
    ]);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_runs_the_same_tool_here_on_the_jobs_nodes() {
        let mnd = Path::new("/opt/mnd/bin/mnd");
        let args = [
            "exec".to_string(),
            "--job".into(),
            "42".into(),
            "--".into(),
            "py-spy".into(),
            "dump".into(),
        ];
        let all = fan_out(mnd, 42, &Reach::All { nodes: 3 }, false, &args);
        assert_eq!(
            all.join(" "),
            "srun --jobid=42 --overlap --quiet --ntasks-per-node=1 --nodes=3 --label /opt/mnd/bin/mnd exec --here --job 42 -- py-spy dump"
        );
        let one = fan_out(mnd, 42, &Reach::Node("node2".into()), true, &args[..3]);
        assert_eq!(
            one.join(" "),
            "srun --jobid=42 --overlap --quiet --ntasks-per-node=1 --nodes=1 --nodelist=node2 --pty /opt/mnd/bin/mnd exec --here --job 42"
        );
    }

    #[test]
    fn containers_asks_one_task_per_node_of_the_allocation_or_of_the_nodes_named() {
        let args = containers_srun("ls", None, Some("node[1-3]")).unwrap();
        assert_eq!(
            args,
            [
                "--overlap",
                "--nodes=3",
                "--ntasks=3",
                "--ntasks-per-node=1",
                "--nodelist=node[1-3]",
                "--mnd-containers=ls",
                "true"
            ]
        );
        let args = containers_srun("rm:keep", Some("node2"), None).unwrap();
        assert!(!args.contains(&"--overlap".to_string()));
        assert!(
            args.contains(&"--nodelist=node2".to_string())
                && args.contains(&"--nodes=1".to_string())
        );
        let err = containers_srun("ls", None, None).unwrap_err().to_string();
        assert!(err.contains("-w NODES"), "{err}");
    }
}
