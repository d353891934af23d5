//! pyxis's options as `--mnd-*`, family by family as NVIDIA/pyxis keeps its `tests/*.bats`
//! (`mounts.bats`, `name.bats`, `workdir.bats`, ...): a pyxis user's command lines with
//! `--container-` renamed `--mnd-`, each run as dave, who is not in the docker group.

mod entrypoint;
mod env;
mod env_vars;
mod invalid_args;
mod mount_home;
mod mounts;
mod name;
mod remap_root;
mod save;
mod sbatch;
mod unshare;
mod workdir;
mod writable;

use crate::cluster::{assert_nothing_left, dave_job, Run};

/// `srun -n1 ARGS` in a fresh one-node allocation as dave; the run and the job's id.
pub(crate) fn step(args: &str) -> (Run, String) {
    dave_job(1, &format!("srun -n1 {args}"))
}

/// `srun -n1 ARGS` must fail, say `want`, and leave nothing behind.
pub(crate) fn refused(args: &str, want: &str) {
    let (r, job) = step(args);
    assert_ne!(r.code, 0, "{args}: {}", r.all());
    assert!(
        r.stderr.contains(want),
        "{args}: wanted '{want}': {}",
        r.all()
    );
    assert_nothing_left(&job);
}

/// `srun -n1 ARGS` must succeed; its output, with nothing left behind.
pub(crate) fn ran(args: &str) -> String {
    let (r, job) = step(args);
    assert_eq!(r.code, 0, "{args}: {}", r.all());
    assert_nothing_left(&job);
    r.stdout
}
