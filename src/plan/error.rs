//! Why a plan cannot be made: one error type for both recipes and the policy.

use crate::dockopts;
use thiserror::Error;

/// A command line, config or environment that cannot be turned into a plan.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    /// Something required is missing or a value is wrong; the text says what to do.
    #[error("{0}")]
    Usage(String),
    /// The site's policy forbids it.
    #[error("{what} is not allowed by the site policy ({rule} in {config}); ask your admin or drop the option")]
    Policy {
        /// What was refused.
        what: String,
        /// The policy key.
        rule: &'static str,
        /// The config file.
        config: String,
    },
    /// A built-in rule (not a site setting) forbids it.
    #[error("{what} is refused: {why}. Fix: {fix}")]
    Refused {
        /// What was refused.
        what: String,
        /// The rule, in words.
        why: String,
        /// What to do instead.
        fix: String,
    },
    /// `--nodelist` is wrong.
    #[error("--nodelist: {0}")]
    Nodelist(String),
    /// `--dockopts` is wrong.
    #[error(transparent)]
    DockOpts(#[from] dockopts::DockOptsError),
}

/// A usage error with this text.
pub(crate) fn usage(msg: impl Into<String>) -> PlanError {
    PlanError::Usage(msg.into())
}
