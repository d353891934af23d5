//! `--mnd-mounts` (pyxis `mounts.bats`).

use super::{ran, refused};
use crate::cluster::*;

#[test]
fn mounts_take_every_form_pyxis_users_write() {
    let _g = shared();
    let home = format!("{SHARED}/home/dave");
    let data = format!("{home}/e2e-pyxis mount dir");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(format!("{data}/file.txt"), "in-the-folder\n").unwrap();
    std::fs::write(format!("{home}/e2e-pyxis-file.txt"), "a-file\n").unwrap();
    let h = "/shared/home/dave";
    let mounts = [
        "./:/test-mnt",                     // the working directory, relative
        "./e2e-pyxis-file.txt:/script.txt", // a regular file
        "/dev/null:/null",                  // a character device
        &format!("{h}/e2e-pyxis mount dir:/mnt/my mount:ro+rprivate"), // spaces, flags
        &format!("{h}/e2e-pyxis mount dir"), // short form: the same path
        "tmpfs:/mytmpfs:size=64m",          // a tmpfs with options
    ]
    .join(",");
    let out = ran(&format!(
        "--mnd-image={IMAGE} --mnd-mounts=\"{mounts}\" bash -c \"\
         findmnt -n -o TARGET /test-mnt; cat /script.txt; test -c /null && echo null-is-a-device; \
         cat \\\"/mnt/my mount/file.txt\\\"; touch \\\"/mnt/my mount/x\\\" 2>/dev/null || echo read-only; \
         findmnt -n -o PROPAGATION \\\"/mnt/my mount\\\"; \
         cat \\\"{h}/e2e-pyxis mount dir/file.txt\\\"; findmnt -n -o FSTYPE,OPTIONS /mytmpfs\""
    ));
    for want in [
        "/test-mnt",
        "a-file",
        "null-is-a-device",
        "in-the-folder\nread-only\nprivate\nin-the-folder",
        "tmpfs",
        "size=65536k",
    ] {
        assert!(out.contains(want), "wanted {want:?} in:\n{out}");
    }
}

#[test]
fn mounts_pyxis_refuses_or_docker_cannot_make_are_refused_by_name() {
    let _g = shared();
    for (mounts, want) in [
        (":", "empty source or target"),
        ("/tmp:", "empty source or target"),
        ("/tmp:mnt:ro", "the target must be an absolute path"),
        ("/home:../home", "the target must be an absolute path"),
        ("/tmp:/mnt:unbindable+ro", "flag 'unbindable'"),
        ("devpts:/mydevpts:ro", "'devpts' mounts are not supported"),
        ("/nonexistent/path/foo:/mnt", "/nonexistent/path/foo"),
        ("/etc/shadow:/shadow", "host system folder /etc"),
        ("/dev/ptmx:/ptmx", "host system folder /dev"),
    ] {
        refused(
            &format!("--mnd-image={IMAGE} --mnd-mounts={mounts} true"),
            want,
        );
    }
}
