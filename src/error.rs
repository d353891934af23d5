//! The launcher's top-level error and the one place that maps errors to exit codes.

use crate::config::ConfigError;
use crate::identity::IdentityError;
use crate::launch::LaunchError;
use crate::plan::PlanError;
use crate::slurm::SlurmError;
use crate::ssh::SshError;
use thiserror::Error;

/// Exit code for bad input: flags, config, policy, Slurm environment, script, ssh material.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when a node could not start or the job could not be run (Docker's own choice).
pub const EXIT_LAUNCH: i32 = 125;

/// Anything that stops `mnd-srun` before the script's own exit code is known.
#[derive(Debug, Error)]
pub enum Error {
    /// Slurm environment.
    #[error(transparent)]
    Slurm(#[from] SlurmError),
    /// Site config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// User database.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Flags and policy.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Ssh material.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// Starting or running the job.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// Reading facts of this node.
    #[error("cannot read this node's state: {0}")]
    Node(#[from] std::io::Error),
    /// Hosts mode: a host list, a hostfile, or hosts that cannot run the job.
    #[error("{0}")]
    Hosts(String),
}

impl Error {
    /// The exit code srun will report for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Launch(LaunchError::Signal(sig)) => 128 + sig,
            Error::Launch(LaunchError::Script(_) | LaunchError::Ssh(_)) => EXIT_USAGE,
            Error::Launch(_) | Error::Node(_) => EXIT_LAUNCH,
            _ => EXIT_USAGE,
        }
    }
}
