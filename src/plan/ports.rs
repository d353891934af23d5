//! Port pairs of a job step: what each node listens on, and their arithmetic.

use super::error::{usage, PlanError};
use super::facts::NodeFacts;
use crate::cli::Args;
use crate::config::SiteConfig;
use crate::slurm::StepContext;

/// The two ports a node of a job step listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPair {
    /// sshd inside the container.
    pub sshd: u16,
    /// The launchers' control channel (worker listens, coordinator connects).
    pub control: u16,
}

/// Ports of one job step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    /// The pairs a node may take, in order: each node takes the first whose ports are free
    /// there (one pair when the user or Slurm chose it).
    pub pairs: Vec<PortPair>,
    /// MASTER_PORT for torch.distributed and friends.
    pub master: u16,
}

impl Ports {
    /// The pair every node takes when its ports are free.
    pub fn preferred(&self) -> PortPair {
        self.pairs[0]
    }

    /// The control ports of the pairs, in order (where a worker may listen).
    pub fn controls(&self) -> Vec<u16> {
        self.pairs.iter().map(|p| p.control).collect()
    }
}

/// Steps of one job that get different ports when they run at once (a sweep's `srun ... &`).
const STEPS_APART: u64 = 50;

/// Jobs on one node whose ports differ (jobs whose ids differ by a multiple of this, on
/// the same nodes at the same time, get the same ports unless Slurm reserves them).
const JOBS_APART: u64 = 100;

/// Other pairs a node may move to when its derived pair is taken.
const ALTERNATIVE_PAIRS: u64 = 4;

/// Ports: `--sshd-port`, else the ports Slurm reserved for the step
/// (`SLURM_STEP_RESV_PORTS`, unique per node), else derived from job and step so that
/// concurrent steps of a job and concurrent jobs differ, with alternatives spread over the
/// range for a node where the derived pair is taken; MASTER_PORT likewise per step.
pub(super) fn ports(
    step: &StepContext,
    args: &Args,
    site: &SiteConfig,
    facts: &NodeFacts,
) -> Result<Ports, PlanError> {
    let d = &site.defaults;
    let pairs = u64::from(d.ssh_port_span / 2);
    let (job, step_id) = (step.job_id.unwrap_or(0), step.step_id.unwrap_or(0));
    let slot = match (step.job_id, step.step_id) {
        (Some(_), Some(_)) => (job % JOBS_APART) * STEPS_APART + step_id % STEPS_APART,
        _ => u64::from(facts.pid),
    };
    let reserved = (args.sshd_port.is_none() && step.resv_ports.len() >= 2)
        .then(|| (step.resv_ports[0], step.resv_ports[1]));
    let pair = |sshd: u16, control: u16| PortPair { sshd, control };
    let candidates = match (args.sshd_port, reserved) {
        (Some(p), _) if p < 1024 || p == u16::MAX => {
            return Err(usage(format!("--sshd-port {p}: use a port from 1024 to 65534 (the next port is the control port)")));
        }
        (Some(p), _) => vec![pair(p, p + 1)],
        (None, Some((s, c))) => vec![pair(s, c)],
        (None, None) => {
            let spread = (pairs / (ALTERNATIVE_PAIRS + 1)).max(1);
            let mut out: Vec<PortPair> = Vec::new();
            for k in 0..=ALTERNATIVE_PAIRS {
                let p = d.ssh_port_base + (2 * ((slot + k * spread) % pairs)) as u16;
                if !out.iter().any(|q| q.sshd == p) {
                    out.push(pair(p, p + 1));
                }
            }
            out
        }
    };
    let master = match (args.master_port, step.resv_ports.get(2)) {
        (Some(p), _) => p,
        (None, Some(&p)) if reserved.is_some() => p,
        _ => {
            let per_job = 10;
            let offset = (job % 100) * per_job + step_id % per_job;
            d.master_port_base.saturating_add((offset % 1000) as u16)
        }
    };
    Ok(Ports {
        pairs: candidates,
        master,
    })
}
