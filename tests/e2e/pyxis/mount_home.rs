//! `--mnd-mount-home` / `--no-mnd-mount-home` (pyxis `mount_home.bats`).

use super::ran;
use crate::cluster::*;

#[test]
fn the_home_is_mounted_unless_the_user_says_no() {
    let _g = shared();
    let h = "/shared/home/dave";
    let out = ran(&format!(
        "--chdir=/tmp --mnd-image={IMAGE} --mnd-mount-home sh -c \"findmnt -n -o TARGET {h} && echo home-mounted\""
    ));
    assert!(out.contains("home-mounted"), "{out}");
    let out = ran(&format!(
        "--chdir=/tmp --mnd-image={IMAGE} --no-mnd-mount-home sh -c \"findmnt {h} || echo no-home\""
    ));
    assert!(out.contains("no-home"), "{out}");
    // Nor through the working directory when it lies inside the home.
    let out = ran(&format!(
        "--mnd-image={IMAGE} --no-mnd-mount-home sh -c \"findmnt {h} || echo no-home\""
    ));
    assert!(out.contains("no-home"), "{out}");
}
