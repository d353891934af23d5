//! `--mnd-remap-root` (pyxis `remap_root.bats`): root inside, the user outside.

use super::ran;
use crate::cluster::*;

#[test]
fn remapped_root_is_root_inside_and_dave_everywhere_else() {
    let _g = exclusive();
    let file = format!("{SHARED}/home/dave/e2e-remap-root");
    let _ = std::fs::remove_file(&file);
    let out = ran(&format!(
        "--mnd-image={IMAGE} --mnd-remap-root sh -c \"id -u; id -un; touch ~/e2e-remap-root; \
         stat -c %u:%g /etc/shadow /root\""
    ));
    // The image's own files are root's inside: its root file system is dave's copy.
    assert_eq!(out, "0\nroot\n0:0\n0:0\n", "{out}");
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
    let _g = exclusive();
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

/// Drops the users' copies of images on every node (root's records and the images).
fn drop_copies() {
    for node in NODES {
        root_on(
            node,
            &[
                "sh",
                "-c",
                "for r in /var/lib/mnd-srun/owned/*-*; do case $r in *.lock) continue;; esac; \
                 [ -f \"$r\" ] && docker rmi -f $(cat $r) >/dev/null 2>&1; rm -f $r $r.lock; done; true",
            ],
        );
    }
}

/// A package installed by dpkg in the container, as pyxis users install theirs under
/// enroot: a .deb made there, then `dpkg -i` and `dpkg -s`.
const DPKG_INSTALL: &str = "mkdir -p /tmp/p/DEBIAN /tmp/p/usr/share/mndtest && \
    printf \\\"Package: mndtest\\nVersion: 1\\nArchitecture: all\\nMaintainer: t <t@x>\\nDescription: t\\n\\\" > /tmp/p/DEBIAN/control && \
    echo hi > /tmp/p/usr/share/mndtest/hi && dpkg-deb --build /tmp/p /tmp/p.deb >/dev/null && \
    dpkg -i /tmp/p.deb >/dev/null 2>/tmp/err && dpkg -s mndtest | grep -c 'Status: install ok installed' || tail -n2 /tmp/err";

/// pyxis's remap-root as users need it: under the site's default `user_rootfs =
/// "remap-root"` the root file system is dave's own copy, so as root in the container he
/// owns the image's files and dpkg installs a package (its chowns faked by the filter);
/// with `never` the same install fails on root's files (the positive control). With
/// `always` every writable step has its own copy: dave creates files in `/usr` and `/etc` without
/// remap-root, alice's copy is hers, and no set-uid file is left in either. (`/` itself is
/// Docker's: it makes the root of every container's writable layer, as root.)
#[test]
fn a_remapped_root_owns_the_image_and_installs_a_package() {
    let _g = exclusive();
    drop_copies();
    let out = ran(&format!(
        "--mnd-image={IMAGE} --mnd-remap-root sh -c \"stat -c %u /usr/bin/env; {DPKG_INSTALL}\""
    ));
    assert!(
        out.starts_with("0\n"),
        "the image's files are root's inside: {out}"
    );
    assert!(out.trim_end().ends_with("\n1"), "dpkg installed it: {out}");
    {
        let _policy = DefaultPolicy::install("[policy]\nuser_rootfs = \"never\"\n");
        let out = ran(&format!(
            "--mnd-image={IMAGE} --mnd-remap-root sh -c \"{DPKG_INSTALL}\""
        ));
        // The image's files are root's of the node, nobody's in the task's namespace.
        assert!(
            out.contains("dpkg: error: required read/write access to the dpkg database"),
            "{out}"
        );
    }
    let _policy = DefaultPolicy::install("[policy]\nuser_rootfs = \"always\"\n");
    let out = ran(&format!(
        "--mnd-image={IMAGE} sh -c \"stat -c %u /usr/bin/env; touch /usr/newfile /etc/newfile && echo made; \
         find / -xdev -perm /6000 -type f | wc -l\""
    ));
    assert_eq!(out, "1004\nmade\n0\n", "{out}");
    let (r, _) = {
        let quoted = format!("srun -n1 --mnd-image={IMAGE} stat -c %u /usr/bin/env");
        let r = alice(&format!("timeout 300 salloc -N1 bash -c '{quoted}'"));
        (r, ())
    };
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout.trim(), "1001", "{}", r.all());
    drop_copies();
}
