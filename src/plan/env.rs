//! The job environment: what the script and every ssh session get, the defaults given
//! where nobody set a value, and the one variable-name rule.

use super::error::{usage, PlanError};
use super::facts::NodeFacts;
use super::net;
use super::ports::Ports;
use crate::cli::Args;
use crate::config::SiteConfig;
use crate::dockopts::DockOpts;

/// Variables the job gets unless someone set them. A value the user exported for a
/// network variable goes to the job as it is (theirs always wins); the others get this
/// node's job network as defaults, unless `--no-net-defaults` or the site's
/// `net_defaults = false` turns them off. Open MPI's single-copy transfers are off where
/// Docker's seccomp profile forbids them (not in a privileged container). The fabric
/// profiles' variables (`fabric_env`) are defaults the same way.
pub(super) fn env_defaults(
    job_env: &mut Vec<(String, String)>,
    args: &Args,
    site: &SiteConfig,
    facts: &NodeFacts,
    privileged: bool,
    fabric_env: &[(String, String)],
) -> Vec<(String, String)> {
    let names: Vec<String> = net::variables()
        .map(str::to_string)
        .chain(fabric_env.iter().map(|(k, _)| k.clone()))
        .collect();
    for name in &names {
        if let Some(v) = facts.env.get(name) {
            if !job_env.iter().any(|(k, _)| k == name) {
                job_env.push((name.clone(), v.clone()));
            }
        }
    }
    let taken = |name: &str| job_env.iter().any(|(k, _)| k == name);
    let mut out = if args.no_net_defaults || !site.defaults.net_defaults {
        vec![]
    } else {
        net::defaults(facts.net.as_ref(), taken)
    };
    out.extend(
        fabric_env
            .iter()
            .filter(|(k, _)| !taken(k) && !out.iter().any(|(o, _)| o == k))
            .cloned()
            .collect::<Vec<_>>(),
    );
    if !privileged {
        out.extend(
            net::SINGLE_COPY_OFF
                .iter()
                .filter(|(k, _)| !taken(k))
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    out
}

#[allow(clippy::too_many_arguments)]
/// The job's shape, as the environment tells it.
pub struct JobShape<'a> {
    /// The job's nodes, leader first.
    pub nodes: &'a [String],
    /// This node's index.
    pub node_rank: usize,
    /// Slots per node.
    pub slots: u32,
    /// Each node's slots where they differ (hosts mode's hostfile).
    pub node_slots: &'a [u32],
    /// The step's ports.
    pub ports: &'a Ports,
    /// "JOB.STEP".
    pub job_label: &'a str,
}

pub(super) fn job_env(
    shape: &JobShape,
    args: &Args,
    site: &SiteConfig,
    facts: &NodeFacts,
    opts: &DockOpts,
) -> Result<Vec<(String, String)>, PlanError> {
    let JobShape {
        nodes,
        node_rank: rank,
        slots,
        node_slots,
        ports,
        job_label,
    } = *shape;
    // Every node's slots: the hostfile's (hosts mode), else the same on every node.
    let per_node: Vec<u32> = if node_slots.len() == nodes.len() {
        node_slots.to_vec()
    } else {
        vec![slots; nodes.len()]
    };
    let np: u32 = per_node.iter().sum();
    let mut env = vec![
        (
            "hostlist".to_string(),
            nodes
                .iter()
                .zip(&per_node)
                .map(|(n, s)| format!("{n}:{s}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("np".to_string(), np.to_string()),
        (
            "MASTER_ADDR".to_string(),
            args.master_addr.clone().unwrap_or_else(|| nodes[0].clone()),
        ),
        ("MASTER_PORT".to_string(), ports.master.to_string()),
        ("NNODES".to_string(), nodes.len().to_string()),
        ("NODE_RANK".to_string(), rank.to_string()),
        ("WORLD_SIZE".to_string(), np.to_string()),
        ("MND_JOB".to_string(), job_label.to_string()),
        ("PDSH_RCMD_TYPE".to_string(), "ssh".to_string()),
    ];
    for (name, value) in [
        ("NCCL_SOCKET_IFNAME", &args.nccl_socket_ifname),
        ("GLOO_SOCKET_IFNAME", &args.gloo_socket_ifname),
    ] {
        if let Some(v) = value {
            env.push((name.to_string(), v.clone()));
        }
    }
    let listed: Vec<&String> = args.envlist.iter().filter(|n| !n.is_empty()).collect();
    if !listed.is_empty() {
        env.push((
            "ENVLIST".into(),
            listed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ));
    }
    for name in listed {
        if !is_variable_name(name) {
            return Err(usage(format!(
                "--envlist: '{}' is not a variable name",
                name.escape_debug()
            )));
        }
        match facts.env.get(name) {
            Some(v) => env.push((name.clone(), v.clone())),
            None => log::warn!("--envlist: {name} is not set here; not passed"),
        }
    }
    for e in site.defaults.env.iter().chain(&opts.env) {
        match e.split_once('=') {
            Some((k, v)) => env.push((k.to_string(), v.to_string())),
            None => {
                if let Some(v) = facts.env.get(e) {
                    env.push((e.clone(), v.clone()));
                }
            }
        }
    }
    for (k, v) in &env {
        check_env_value(k, v)?;
    }
    Ok(env)
}

/// Every ssh session of the job gets these variables (sshd `SetEnv`), which cannot carry a
/// line break or other control character; the value itself is never printed.
pub fn check_env_value(name: &str, value: &str) -> Result<(), PlanError> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(usage(format!(
            "variable {name} has a line break or control character in its value, which ssh sessions cannot carry. Fix: pass it through a file instead, or drop it from --envlist/-e"
        )));
    }
    Ok(())
}

/// The one rule for a variable name a user lists (`--envlist`, `--mnd-envlist`): letters,
/// digits and `_`, not starting with a digit (a shell could not export it otherwise).
pub(crate) fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}
