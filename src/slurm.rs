//! The Slurm step context, read from the task's environment variables.
//!
//! Which variables are trusted follows `slurm-facts.md`: the *step's* node list and counts
//! (never the job's, which `sbatch` leaks into steps), `SLURM_NODEID` for this node's index,
//! `SLURM_LOCALID` for the task on this node, and physical GPU ids from `SLURM_STEP_GPUS`.

use crate::hostlist;
use thiserror::Error;

/// What this task does in the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Node 0, first task: starts its container, waits for the workers, runs the script.
    Coordinator,
    /// First task on any other node: starts its container and serves sshd until told to stop.
    Worker,
    /// A further task on a node that already has a launcher (`SLURM_LOCALID > 0`): exits 0.
    ExtraLocalTask,
}

/// The step as Slurm describes it to this task, or a one-node context outside Slurm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepContext {
    /// Job id; `None` outside Slurm.
    pub job_id: Option<u64>,
    /// Step id; `None` outside Slurm.
    pub step_id: Option<u64>,
    /// The step's nodes, in Slurm's order.
    pub nodes: Vec<String>,
    /// Index of this node in `nodes` (`SLURM_NODEID`).
    pub node_index: usize,
    /// Task index on this node (`SLURM_LOCALID`).
    pub local_id: u32,
    /// Global task rank (`SLURM_PROCID`).
    pub proc_id: u32,
    /// Number of tasks in the step.
    pub num_tasks: u32,
    /// Tasks on each node, aligned with `nodes`.
    pub tasks_per_node: Vec<u32>,
    /// Physical GPU ids given to this step on this node (empty when none).
    pub gpus: Vec<u32>,
    /// Slurm's unique ids of those GPUs, one for one, where it gives them (see `gpu_uuids`).
    pub gpu_uuids: Vec<String>,
    /// GPU count on this node as Slurm reports it (`SLURM_GPUS_ON_NODE`).
    pub gpus_on_node: Option<u32>,
    /// This node's name as Slurm knows it.
    pub node_name: String,
    /// Ports Slurm reserved for this step on every node of it (`SLURM_STEP_RESV_PORTS`,
    /// when the site sets `MpiParams=ports=...`): no other step running at once has them.
    pub resv_ports: Vec<u16>,
    /// Slots per node from a hosts-mode hostfile, aligned with `nodes` (empty otherwise).
    pub node_slots: Vec<u32>,
    /// Started over ssh by the hosts-mode front door (`mnd-srun --hosts`): no Slurm.
    pub hosts_mode: bool,
}

/// A Slurm environment that is missing something or contradicts itself.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SlurmError {
    /// A variable has a value that cannot be read.
    #[error("Slurm variable {var}='{value}' is invalid: {reason}")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A variable the step needs is not set.
    #[error("Slurm variable {var} is not set; {hint}")]
    Missing {
        /// The variable's name.
        var: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// Two variables disagree.
    #[error("Slurm variables disagree: {0}")]
    Contradiction(String),
}

const STEP_HINT: &str = "mnd-srun must be started by srun, one task per node, \
     e.g. `srun -N3 -n3 mnd-srun --container=IMAGE --script=./job.sh`";

impl StepContext {
    /// A context for a machine with no Slurm: one node, this host, coordinator.
    pub fn local(hostname: &str) -> Self {
        StepContext {
            job_id: None,
            step_id: None,
            nodes: vec![hostname.to_string()],
            node_index: 0,
            local_id: 0,
            proc_id: 0,
            num_tasks: 1,
            tasks_per_node: vec![1],
            gpus: Vec::new(),
            gpu_uuids: Vec::new(),
            gpus_on_node: None,
            node_name: hostname.to_string(),
            resv_ports: Vec::new(),
            node_slots: Vec::new(),
            hosts_mode: false,
        }
    }

    /// The context of a launcher the hosts-mode front door started over ssh, from the
    /// variables it set (`MND_HOSTS_*`): one task per host, this host's rank, the job id the
    /// front door chose, and the hostfile's slots.
    fn from_hosts(get: &dyn Fn(&str) -> Option<String>, list: String) -> Result<Self, SlurmError> {
        use crate::hosts::{JOB_VAR, LIST_VAR, RANK_VAR, SLOTS_VAR};
        let nodes: Vec<String> = list.split(',').map(str::to_string).collect();
        let invalid = |var: &'static str, value: String, reason: &str| SlurmError::Invalid {
            var,
            value,
            reason: reason.into(),
        };
        if nodes.iter().any(String::is_empty) {
            return Err(invalid(LIST_VAR, list, "an empty host name"));
        }
        let rank_text = get(RANK_VAR).unwrap_or_default();
        let rank: usize = rank_text
            .parse()
            .ok()
            .filter(|r| *r < nodes.len())
            .ok_or_else(|| invalid(RANK_VAR, rank_text.clone(), "not a rank in the host list"))?;
        let job_text = get(JOB_VAR).unwrap_or_default();
        let job: u64 = job_text
            .parse()
            .map_err(|_| invalid(JOB_VAR, job_text.clone(), "not a number"))?;
        let node_slots = match get(SLOTS_VAR) {
            Some(text) => {
                let slots = parse_ids(SLOTS_VAR, &text)?;
                if slots.len() != nodes.len() || slots.contains(&0) {
                    return Err(invalid(SLOTS_VAR, text, "one count of at least 1 per host"));
                }
                slots
            }
            None => Vec::new(),
        };
        Ok(StepContext {
            job_id: Some(job),
            step_id: Some(0),
            node_index: rank,
            local_id: 0,
            proc_id: rank as u32,
            num_tasks: nodes.len() as u32,
            tasks_per_node: vec![1; nodes.len()],
            gpus: Vec::new(),
            gpu_uuids: Vec::new(),
            gpus_on_node: None,
            node_name: nodes[rank].clone(),
            resv_ports: Vec::new(),
            node_slots,
            hosts_mode: true,
            nodes,
        })
    }

    /// Reads the context through `var` (normally `std::env::var`); `hostname` is used only
    /// outside Slurm.
    pub fn from_env(
        var: impl Fn(&str) -> Option<String>,
        hostname: &str,
    ) -> Result<Self, SlurmError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        if get("SLURM_JOB_ID").is_none() && get("SLURM_JOBID").is_none() {
            return match get(crate::hosts::LIST_VAR) {
                Some(list) => Self::from_hosts(&get, list),
                None => Ok(Self::local(hostname)),
            };
        }
        let job_id = number(&get, "SLURM_JOB_ID")?
            .or(number(&get, "SLURM_JOBID")?)
            .expect("checked above");
        let step_id = number(&get, "SLURM_STEP_ID")?.or(number(&get, "SLURM_STEPID")?);
        let Some(step_id) = step_id else {
            return Err(SlurmError::Missing {
                var: "SLURM_STEP_ID",
                hint: "this runs inside an allocation but not in a job step. mnd-srun must be started by srun, one task per node, e.g. `srun -N3 -n3 mnd-srun --container=IMAGE --script=./job.sh`",
            });
        };
        let (list_var, list, nodes) = step_nodes(&get)?;
        let node_index = require(&get, "SLURM_NODEID")? as usize;
        if node_index >= nodes.len() {
            return Err(SlurmError::Contradiction(format!(
                "SLURM_NODEID={node_index} but {list_var} has only {} nodes",
                nodes.len()
            )));
        }
        if let Some(n) = number(&get, "SLURM_STEP_NUM_NODES")?.or(number(&get, "SLURM_NNODES")?) {
            if n as usize != nodes.len() {
                return Err(SlurmError::Contradiction(format!(
                    "the step has {n} nodes but {list_var}={list} names {}",
                    nodes.len()
                )));
            }
        }
        let local_id = require(&get, "SLURM_LOCALID")? as u32;
        let proc_id = number(&get, "SLURM_PROCID")?.unwrap_or(0) as u32;
        let tasks_per_node = tasks_per_node(&get, nodes.len())?;
        let num_tasks = number(&get, "SLURM_STEP_NUM_TASKS")?
            .or(number(&get, "SLURM_NTASKS")?)
            .map_or_else(|| tasks_per_node.iter().sum(), |n| n as u32);
        // The step's own GPUs only: SLURM_JOB_GPUS, inherited from a batch script, also
        // names GPUs of the job that this step was not given (`srun --gres=none`).
        let gpus = match first_of(&get, &["SLURM_STEP_GPUS"]) {
            Some((v, text)) => parse_ids(v, &text)?,
            None => Vec::new(),
        };
        let gpu_uuids = gpu_uuids(&gpus, get("CUDA_VISIBLE_DEVICES").as_deref());
        let gpus_on_node = number(&get, "SLURM_GPUS_ON_NODE")?.map(|n| n as u32);
        let resv_ports = match get("SLURM_STEP_RESV_PORTS") {
            Some(text) => parse_ports(&text).map_err(|reason| SlurmError::Invalid {
                var: "SLURM_STEP_RESV_PORTS",
                value: text.clone(),
                reason,
            })?,
            None => Vec::new(),
        };
        let node_name = get("SLURMD_NODENAME").unwrap_or_else(|| nodes[node_index].clone());
        if node_name != nodes[node_index] {
            return Err(SlurmError::Contradiction(format!(
                "SLURMD_NODENAME={node_name} but SLURM_NODEID={node_index} points at {} in {list_var}",
                nodes[node_index]
            )));
        }
        Ok(StepContext {
            job_id: Some(job_id),
            step_id: Some(step_id),
            nodes,
            node_index,
            local_id,
            proc_id,
            num_tasks,
            tasks_per_node,
            gpus,
            gpu_uuids,
            gpus_on_node,
            resv_ports,
            node_name,
            node_slots: Vec::new(),
            hosts_mode: false,
        })
    }

    /// True when this context came from Slurm.
    pub fn under_slurm(&self) -> bool {
        self.job_id.is_some() && !self.hosts_mode
    }

    /// This task's role: coordinator on node 0's first task, worker on other nodes' first
    /// task, and an extra task otherwise.
    pub fn role(&self) -> Role {
        match (self.local_id, self.node_index) {
            (0, 0) => Role::Coordinator,
            (0, _) => Role::Worker,
            _ => Role::ExtraLocalTask,
        }
    }
}

/// The step's nodes (`SLURM_STEP_NODELIST`, else `SLURM_NODELIST`): the variable it came
/// from, its text and the names, at least one.
fn step_nodes(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(&'static str, String, Vec<String>), SlurmError> {
    let (list_var, list) =
        first_of(get, &["SLURM_STEP_NODELIST", "SLURM_NODELIST"]).ok_or(SlurmError::Missing {
            var: "SLURM_STEP_NODELIST",
            hint: STEP_HINT,
        })?;
    let nodes = hostlist::expand(&list).map_err(|e| SlurmError::Invalid {
        var: list_var,
        value: list.clone(),
        reason: e.to_string(),
    })?;
    if nodes.is_empty() {
        return Err(SlurmError::Invalid {
            var: list_var,
            value: list,
            reason: "names no node".into(),
        });
    }
    Ok((list_var, list, nodes))
}

/// Tasks on each of the step's `nodes` nodes (1 each when Slurm does not say).
fn tasks_per_node(
    get: &impl Fn(&str) -> Option<String>,
    nodes: usize,
) -> Result<Vec<u32>, SlurmError> {
    let tasks_per_node = match first_of(get, &["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"])
    {
        Some((v, text)) => {
            hostlist::expand_tasks_per_node(&text).map_err(|e| SlurmError::Invalid {
                var: v,
                value: text.clone(),
                reason: e.to_string(),
            })?
        }
        None => vec![1; nodes],
    };
    if tasks_per_node.len() != nodes {
        return Err(SlurmError::Contradiction(format!(
            "tasks per node '{}' lists {} nodes, the step has {}",
            hostlist::compress_tasks_per_node(&tasks_per_node),
            tasks_per_node.len(),
            nodes
        )));
    }
    Ok(tasks_per_node)
}

fn first_of(
    get: &impl Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Option<(&'static str, String)> {
    names.iter().find_map(|&n| get(n).map(|v| (n, v)))
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<u64>, SlurmError> {
    get(name)
        .map(|v| {
            v.trim().parse().map_err(|_| SlurmError::Invalid {
                var: name,
                value: v.clone(),
                reason: "expected a whole number".into(),
            })
        })
        .transpose()
}

fn require(get: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<u64, SlurmError> {
    number(get, name)?.ok_or(SlurmError::Missing {
        var: name,
        hint: STEP_HINT,
    })
}

/// Slurm's unique ids of the step's GPUs `step_gpus`, where it gives them: with NVML
/// autodetection a GPU may carry a unique id (a MIG device's `MIG-...`, a GPU's `GPU-...`),
/// and when devices are not constrained Slurm names the task's GPUs by it in
/// `CUDA_VISIBLE_DEVICES`, in the order of `SLURM_STEP_GPUS`. Docker must then be asked
/// for those ids: the index of a MIG device is not a GPU's. Empty unless every entry is
/// such an id and there is one per step GPU.
pub fn gpu_uuids(step_gpus: &[u32], cuda_visible: Option<&str>) -> Vec<String> {
    let Some(text) = cuda_visible else {
        return Vec::new();
    };
    let ids: Vec<&str> = text.split(',').map(str::trim).collect();
    let is_uuid = |id: &&str| {
        (id.starts_with("GPU-") || id.starts_with("MIG-"))
            && id.len() <= 96
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '/')
    };
    if step_gpus.is_empty() || ids.len() != step_gpus.len() || !ids.iter().all(is_uuid) {
        return Vec::new();
    }
    ids.into_iter().map(String::from).collect()
}

/// A `Key=Value` setting of a Slurm config file's text (keys are case-insensitive, `#`
/// starts a comment, the last one wins).
pub fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .next_back()
}

fn parse_ids(var: &'static str, text: &str) -> Result<Vec<u32>, SlurmError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim().parse().map_err(|_| SlurmError::Invalid {
                var,
                value: text.to_string(),
                reason: format!("'{s}' is not a GPU index"),
            })
        })
        .collect()
}

/// Reads a port list like `12000-12003` or `12000,12005-12006`.
fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for item in text.split(',').map(str::trim) {
        let bad = || format!("'{item}' is not a port or a range of ports like 12000-12003");
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a == 0 || b < a {
            return Err(bad());
        }
        ports.extend(a..=b);
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ctx(vars: &[(&str, &str)]) -> Result<StepContext, SlurmError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        StepContext::from_env(|k| map.get(k).cloned(), "laptop")
    }

    const STEP: &[(&str, &str)] = &[
        ("SLURM_JOB_ID", "42"),
        ("SLURM_STEP_ID", "1"),
        ("SLURM_STEP_NODELIST", "node[1-3]"),
        ("SLURM_STEP_NUM_NODES", "3"),
        ("SLURM_STEP_NUM_TASKS", "3"),
        ("SLURM_STEP_TASKS_PER_NODE", "1(x3)"),
        ("SLURM_NODEID", "1"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_PROCID", "1"),
        ("SLURMD_NODENAME", "node2"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = STEP
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .copied()
            .collect();
        v.extend(extra.iter().filter(|(_, val)| !val.is_empty()));
        v
    }

    #[test]
    fn no_slurm_is_one_local_node() {
        let c = ctx(&[]).unwrap();
        assert_eq!(c.nodes, ["laptop"]);
        assert_eq!(c.role(), Role::Coordinator);
        assert!(!c.under_slurm());
    }

    #[test]
    fn worker_in_a_three_node_step() {
        let c = ctx(STEP).unwrap();
        assert_eq!(c.nodes, ["node1", "node2", "node3"]);
        assert_eq!((c.job_id, c.step_id, c.node_index), (Some(42), Some(1), 1));
        assert_eq!(c.role(), Role::Worker);
        assert_eq!(c.tasks_per_node, [1, 1, 1]);
    }

    #[test]
    fn step_nodelist_wins_over_the_jobs() {
        // sbatch -N3 then srun -N2: the job's list has 3 nodes, the step's 2.
        let c = ctx(&with(&[
            ("SLURM_JOB_NODELIST", "node[1-3]"),
            ("SLURM_NODELIST", "node[1-3]"),
            ("SLURM_JOB_NUM_NODES", "3"),
            ("SLURM_NNODES", "3"),
            ("SLURM_STEP_NODELIST", "node[2-3]"),
            ("SLURM_STEP_NUM_NODES", "2"),
            ("SLURM_STEP_TASKS_PER_NODE", "1(x2)"),
            ("SLURM_NODEID", "0"),
            ("SLURM_PROCID", "0"),
            ("SLURMD_NODENAME", "node2"),
        ]))
        .unwrap();
        assert_eq!(c.nodes, ["node2", "node3"]);
        assert_eq!(c.role(), Role::Coordinator);
    }

    #[test]
    fn inherited_ntasks_gives_extra_local_tasks() {
        // srun -N3 --ntasks-per-node=1 inside sbatch --ntasks-per-node=2 starts 6 tasks.
        let c = ctx(&with(&[
            ("SLURM_NTASKS", "6"),
            ("SLURM_STEP_NUM_TASKS", "6"),
            ("SLURM_STEP_TASKS_PER_NODE", "2(x3)"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_PROCID", "3"),
        ]))
        .unwrap();
        assert_eq!(c.role(), Role::ExtraLocalTask);
        assert_eq!(c.num_tasks, 6);
        assert_eq!(c.tasks_per_node, [2, 2, 2]);
    }

    #[test]
    fn gpus_are_physical_ids_from_the_step() {
        let c = ctx(&with(&[
            ("SLURM_STEP_GPUS", "2,3"),
            ("SLURM_JOB_GPUS", "0,1,2,3"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("SLURM_GPUS_ON_NODE", "2"),
        ]))
        .unwrap();
        assert_eq!(c.gpus, [2, 3]);
        assert_eq!(c.gpus_on_node, Some(2));
        assert_eq!(
            parse_ports("12000-12002,12010"),
            Ok(vec![12000, 12001, 12002, 12010])
        );
        assert!(parse_ports("12003-12000").is_err() && parse_ports("x").is_err());
        // A step given no GPU in a job that has some: none (Slurm 22.05 sets
        // SLURM_STEP_GPUS for every step that has GPUs; SLURM_JOB_GPUS is the job's).
        let c = ctx(&with(&[("SLURM_JOB_GPUS", "5")])).unwrap();
        assert!(c.gpus.is_empty());
    }

    #[test]
    fn mig_and_gpu_uuids_where_slurm_gives_them() {
        let c = ctx(&with(&[
            ("SLURM_STEP_GPUS", "2,3"),
            (
                "CUDA_VISIBLE_DEVICES",
                "MIG-4f1c5e2a-0b1d-5c8e-9f3a-1a2b3c4d5e6f,MIG-77aa",
            ),
        ]))
        .unwrap();
        assert_eq!(c.gpus, [2, 3]);
        assert_eq!(
            c.gpu_uuids,
            ["MIG-4f1c5e2a-0b1d-5c8e-9f3a-1a2b3c4d5e6f", "MIG-77aa"]
        );
        // Indices (ConstrainDevices), a count that differs, or anything else: none.
        for cuda in [
            "0,1",
            "GPU-a",
            "GPU-a,GPU-b,GPU-c",
            "GPU-a,1",
            "GPU-a,GPU-b;x",
        ] {
            assert!(gpu_uuids(&[2, 3], Some(cuda)).is_empty(), "{cuda}");
        }
        assert!(gpu_uuids(&[], Some("GPU-a")).is_empty());
        assert_eq!(gpu_uuids(&[0], Some("GPU-a")), ["GPU-a"]);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = ctx(&[("SLURM_JOB_ID", "7")]).unwrap_err();
        assert!(
            e.to_string().contains("SLURM_STEP_ID") && e.to_string().contains("srun"),
            "{e}"
        );
        let e = ctx(&with(&[("SLURM_NODEID", "5")])).unwrap_err();
        assert!(e.to_string().contains("SLURM_NODEID=5"), "{e}");
        let e = ctx(&with(&[("SLURM_STEP_NODELIST", "node[3-1]")])).unwrap_err();
        assert!(e.to_string().contains("SLURM_STEP_NODELIST"), "{e}");
        let e = ctx(&with(&[("SLURM_LOCALID", "x")])).unwrap_err();
        assert!(e.to_string().contains("SLURM_LOCALID='x'"), "{e}");
        let e = ctx(&with(&[("SLURMD_NODENAME", "node9")])).unwrap_err();
        assert!(e.to_string().contains("SLURMD_NODENAME=node9"), "{e}");
        let e = ctx(&with(&[("SLURM_STEP_NUM_NODES", "4")])).unwrap_err();
        assert!(e.to_string().contains("4 nodes"), "{e}");
        let e = ctx(&with(&[("SLURM_STEP_GPUS", "0,x")])).unwrap_err();
        assert!(e.to_string().contains("SLURM_STEP_GPUS"), "{e}");
    }
}
