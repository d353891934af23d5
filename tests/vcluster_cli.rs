//! Bad input to scripts/vcluster: one clear line and a non-zero exit, nothing started.

use std::process::Command;

fn vcluster(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/vcluster"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run scripts/vcluster");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_node_counts_and_subcommands_are_refused_with_one_line() {
    for (args, want) in [
        (&["up", "0"][..], "node count must be from 1 to 8, got 0"),
        (&["up", "9"][..], "node count must be from 1 to 8, got 9"),
        (
            &["up", "three"][..],
            "node count must be a number from 1 to 8, got 'three'",
        ),
        (&["frobnicate"][..], "unknown subcommand 'frobnicate'"),
        (
            &["load-image", "no-such-image:0"][..],
            "no image 'no-such-image:0' on the host",
        ),
    ] {
        let (code, err) = vcluster(args, &[]);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn an_unreachable_debootstrap_mirror_is_one_clear_line() {
    let (code, err) = vcluster(
        &["build-images"],
        &[
            ("MND_VC_MIRROR", "http://127.0.0.1:9/debian"),
            ("MND_VC_NODE_IMAGE", "mnd-vc-test-mirror:0"),
            ("MND_VC_JOB_IMAGE", "mnd-vc-test-mirror:1"),
        ],
    );
    assert_ne!(code, 0);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("debootstrap of mnd-vc-test-mirror") && last.contains("MND_VC_MIRROR"),
        "{err}"
    );
}
