//! `--mnd-workdir` (pyxis `workdir.bats`).

use super::{ran, refused};
use crate::cluster::*;

#[test]
fn the_workdir_is_absolute_relative_to_root_missing_named_or_the_images() {
    let _g = shared();
    let out = ran(&format!(
        "--mnd-image={IMAGE} --mnd-workdir=/usr/local/bin /bin/pwd"
    ));
    assert_eq!(out.trim(), "/usr/local/bin");
    let out = ran(&format!("--mnd-image={IMAGE} --mnd-workdir=../ /bin/pwd"));
    assert_eq!(out.trim(), "/", "no escape above the container's root");
    refused(
        &format!("--mnd-image={IMAGE} --mnd-workdir=/pyxis true"),
        "/pyxis: No such file or directory",
    );
    refused(
        &format!("--mnd-image={IMAGE} --mnd-workdir= true"),
        "--mnd-workdir: argument required",
    );
    // An image with a WORKDIR starts its tasks there, as under pyxis.
    let img = "mnd-vc-workdir:1";
    image_on_every_node(img, "mkdir -p /workspace", "WORKDIR /workspace");
    let out = ran(&format!("--mnd-image={img} /bin/pwd"));
    assert_eq!(out.trim(), "/workspace");
}
