//! `--mnd-entrypoint`, `--no-mnd-entrypoint`, `--mnd-entrypoint-log` (pyxis
//! `entrypoint.bats`): the tasks join a running container, so no entrypoint wraps them;
//! asking for one is refused rather than silently ignored.

use super::{ran, refused};
use crate::cluster::*;

#[test]
fn an_entrypoint_is_refused_by_name_and_no_entrypoint_runs_the_task() {
    let _g = shared();
    refused(
        &format!("--mnd-image={IMAGE} --mnd-entrypoint true"),
        "--mnd-entrypoint is not supported",
    );
    let out = ran(&format!(
        "--mnd-image={IMAGE} --no-mnd-entrypoint --mnd-entrypoint-log echo ran"
    ));
    assert_eq!(out.trim(), "ran");
}
