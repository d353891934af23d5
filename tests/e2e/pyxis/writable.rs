//! `--mnd-writable` / `--mnd-readonly` (pyxis `writable.bats`).

use super::{ran, refused};
use crate::cluster::*;

#[test]
fn a_readonly_container_keeps_its_mounts_writable_and_both_flags_are_refused() {
    let _g = shared();
    let out = ran(&format!(
        "--mnd-image={IMAGE} --mnd-writable sh -c \"touch /tmp/x && echo root-writable\""
    ));
    assert!(out.contains("root-writable"), "{out}");
    let out = ran(&format!(
        "--mnd-image={IMAGE} --mnd-readonly sh -c \"touch /tmp/x 2>&1; touch ~/e2e-ro && echo home-writable\""
    ));
    assert!(
        out.contains("Read-only file system") && out.contains("home-writable"),
        "{out}"
    );
    refused(
        &format!("--mnd-image={IMAGE} --mnd-readonly --mnd-writable true"),
        "both --mnd-writable and --mnd-readonly were given",
    );
}
