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
