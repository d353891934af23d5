//! `--mnd-unshare=net,ipc,uts` (pyxis `unshare*.bats`).

use super::refused;
use crate::cluster::*;

#[test]
fn unshared_namespaces_are_the_containers_own_and_the_rest_the_nodes() {
    let _g = shared();
    let show = "sh -c \"echo \\$(ls /sys/class/net) \\$(readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts)\"";
    let (r, job) = dave_job(
        1,
        &format!(
            "srun -n1 {show}; srun -n1 --mnd-image={IMAGE} --mnd-unshare=net,ipc,uts {show}; \
             srun -n1 --mnd-image={IMAGE} {show}"
        ),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert_nothing_left(&job);
    let lines: Vec<Vec<&str>> = r.stdout.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 3, "{}", r.all());
    let (node, own, shared) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(own[0], "lo", "only the loopback: {}", r.all());
    assert_eq!(own.len(), 4, "{}", r.all());
    for i in 1..4 {
        assert_ne!(
            own[i],
            node[node.len() - 4 + i],
            "the container's own: {}",
            r.all()
        );
        assert_eq!(
            shared[shared.len() - 4 + i],
            node[node.len() - 4 + i],
            "the node's: {}",
            r.all()
        );
    }
    refused(
        &format!("--mnd-image={IMAGE} --mnd-unshare=pid true"),
        "unknown namespace 'pid'",
    );
}

/// pyxis "joins existing ipcns/utsns container": a later step on a named container made
/// with its own namespaces joins them, though it does not say `--mnd-unshare` itself.
#[test]
fn a_later_step_on_a_named_container_joins_the_namespaces_it_was_made_with() {
    let _g = shared();
    let show = "sh -c \"readlink /proc/self/ns/ipc /proc/self/ns/uts /proc/self/ns/net | tr \\\"\\\\n\\\" \\\" \\\"; echo\"";
    let (r, job) = dave_job(
        1,
        &format!(
            "srun -n1 {show} | sed s/^/node:/; \
             srun -n1 --mnd-image={IMAGE} --mnd-name=joined --mnd-unshare=ipc,uts {show} | sed s/^/made:/; \
             srun -n1 --mnd-name=joined {show} | sed s/^/later:/"
        ),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert_nothing_left(&job);
    let of = |tag: &str| -> Vec<String> {
        let line = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag} line: {}", r.all()));
        line.split_whitespace().map(str::to_string).collect()
    };
    let (node, made, later) = (of("node:"), of("made:"), of("later:"));
    // Positive control: the container's ipc and uts are its own, its net the node's.
    assert_ne!(made[0], node[0], "{}", r.all());
    assert_ne!(made[1], node[1], "{}", r.all());
    assert_eq!(made[2], node[2], "{}", r.all());
    // The later step joined the container's, not the node's.
    assert_eq!(later, made, "{}", r.all());
}
