//! `--mnd-remap-root` (pyxis `remap_root.bats`): root inside, the user outside.

use super::ran;
use crate::cluster::*;

#[test]
fn remapped_root_is_root_inside_and_dave_everywhere_else() {
    let _g = shared();
    let file = format!("{SHARED}/home/dave/e2e-remap-root");
    let _ = std::fs::remove_file(&file);
    let out = ran(&format!(
        "--mnd-image={IMAGE} --mnd-remap-root sh -c \"id -u; id -un; touch ~/e2e-remap-root; \
         cat /etc/shadow >/dev/null 2>&1 || echo shadow-denied; \
         ls /root >/dev/null 2>&1 || echo root-home-denied\""
    ));
    assert!(out.starts_with("0\nroot\n"), "{out}");
    assert!(
        out.contains("shadow-denied") && out.contains("root-home-denied"),
        "{out}"
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (1004, 1004),
        "what root writes is dave's"
    );
    let out = ran(&format!("--mnd-image={IMAGE} --no-mnd-remap-root id -u"));
    assert_eq!(out.trim(), "1004");
}

/// pyxis's seccomp filter under remap-root (`Seccomp: 2`): a package manager's chown to
/// another user and its drop to that user succeed without doing anything (the file stays
/// dave's); without remap-root the same chown fails, as it would outside a container.
#[test]
fn remapped_roots_chown_and_setuid_succeed_doing_nothing() {
    let _g = shared();
    let file = format!("{SHARED}/home/dave/e2e-remap-chown");
    let _ = std::fs::remove_file(&file);
    let out = ran(&format!(
        "--mnd-image={IMAGE} --mnd-remap-root sh -c \"touch ~/e2e-remap-chown; \
         chown 42:42 ~/e2e-remap-chown && echo chown-ok; \
         setpriv --reuid=42 --regid=42 --clear-groups id -u; grep ^Seccomp: /proc/self/status\""
    ));
    assert!(out.contains("chown-ok"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // The "drop" to uid 42 changed nothing: still root here, dave outside.
    assert!(out.contains("\n0\n") || out.starts_with("0\n"), "{out}");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (1004, 1004),
        "the faked chown changed nothing"
    );
    let out = ran(&format!(
        "--mnd-image={IMAGE} sh -c \"chown 42:42 ~/e2e-remap-chown || echo chown-refused; grep ^Seccomp: /proc/self/status\""
    ));
    assert!(
        out.contains("chown-refused") && out.contains("Seccomp:\t0"),
        "{out}"
    );
    let _ = std::fs::remove_file(&file);
}
