//! `--mnd-save=PATH` (pyxis `--container-save`): the step's container, at its end, as a
//! `docker save` archive written as the user.

use super::refused;
use crate::cluster::*;

#[test]
fn the_container_is_saved_where_the_user_may_write_and_nowhere_else() {
    let _g = shared();
    let home = format!("{SHARED}/home/dave");
    let (archive, link) = (
        format!("{home}/e2e-saved.tar"),
        format!("{home}/e2e-saved-link.tar"),
    );
    let _ = std::fs::remove_file(&archive);
    let _ = std::fs::remove_file(&link);
    // A link planted at the target is replaced, never followed.
    std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
    let (r, job) = dave_job(
        1,
        &format!(
            "srun -n1 --mnd-image={IMAGE} --mnd-save=./e2e-saved.tar sh -c \"echo saved-state > /tmp/state\"; \
             srun -n1 --mnd-image={IMAGE} --mnd-save=e2e-saved-link.tar true"
        ),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert_nothing_left(&job);
    // Where dave cannot write, srun refuses before the step runs.
    refused(
        &format!("--mnd-image={IMAGE} --mnd-save=/etc/e2e-saved.tar true"),
        "--mnd-save /etc/e2e-saved.tar: you cannot write in /etc",
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&archive).unwrap();
    assert_eq!(meta.uid(), 1004, "written as dave");
    assert!(meta.len() > 1_000_000, "{} bytes", meta.len());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_file());
    for node in NODES {
        let etc = root_on(node, &["sh", "-c", "test -e /etc/e2e-saved.tar && echo there; cat /etc/hostname; docker images -q 'mnd-saved-dave' | grep -c ."]);
        assert!(!etc.stdout.contains("there"), "{node}: {}", etc.all());
        assert!(
            etc.stdout.starts_with(node),
            "{node}'s /etc/hostname untouched: {}",
            etc.all()
        );
        assert!(
            etc.stdout.trim_end().ends_with('0'),
            "no committed image left on {node}: {}",
            etc.all()
        );
    }
    // The archive is the container: it loads and has the step's change.
    let loaded = root_on(
        "node1",
        &[
            "sh",
            "-c",
            &format!(
                "docker load -i /shared/home/dave/e2e-saved.tar >/dev/null && docker run --network=none --rm mnd-saved-dave:{job}.0 cat /tmp/state; docker rmi mnd-saved-dave:{job}.0 >/dev/null"
            ),
        ],
    );
    assert_eq!(loaded.stdout.trim(), "saved-state", "{}", loaded.all());
    refused(
        &format!("--mnd-image={IMAGE} --mnd-save=/tmp/ true"),
        "target is a directory",
    );
}
