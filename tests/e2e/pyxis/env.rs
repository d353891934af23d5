//! `--mnd-env` (pyxis `env.bats`): the job's value wins for the names given.

use super::{ran, refused};
use crate::cluster::*;

#[test]
fn the_images_value_wins_unless_the_variable_is_named() {
    let _g = shared();
    let img = "mnd-vc-env:1";
    image_on_every_node(img, "true", "ENV FOO=from-image BAR=from-image");
    let show = "sh -c \"echo FOO=\\$FOO BAR=\\$BAR\"";
    let out = ran(&format!(
        "--export=ALL,FOO=from-job,BAR=from-job --mnd-image={img} {show}"
    ));
    assert!(out.contains("FOO=from-image BAR=from-image"), "{out}");
    let out = ran(&format!(
        "--export=ALL,FOO=from-job,BAR=from-job --mnd-image={img} --mnd-env=FOO {show}"
    ));
    assert!(out.contains("FOO=from-job BAR=from-image"), "{out}");
    // The launcher's name for it still works.
    let out = ran(&format!(
        "--export=ALL,FOO=from-job,BAR=from-job --mnd-image={img} --mnd-envlist=FOO,BAR {show}"
    ));
    assert!(out.contains("FOO=from-job BAR=from-job"), "{out}");
    refused(
        &format!("--mnd-image={img} --mnd-env= true"),
        "--mnd-env: argument required",
    );
    refused(
        &format!("--mnd-image={img} --mnd-env=FOO, true"),
        "is not a variable name",
    );
}
