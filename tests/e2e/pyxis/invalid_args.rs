//! pyxis `invalid_args.bats`, case for case: each refused in srun or by the root side with
//! a message naming the option, a non-zero exit, and nothing left.

use super::refused;
use crate::cluster::*;

#[test]
fn every_invalid_argument_of_pyxis_is_refused_here_too() {
    let _g = shared();
    let long_image = "A".repeat(2048);
    let long_name = "a".repeat(300);
    let cases = [
        (
            "--mnd-image= true".to_string(),
            "--mnd-image: argument required",
        ),
        (
            format!("--mnd-image={long_image} true"),
            "is not an image name",
        ),
        ("--mnd-image=./ true".into(), "is a path"),
        ("--mnd-image=/dev/urandom true".into(), "is a path"),
        (
            "--mnd-name=args-test true".into(),
            "no running container named args-test",
        ),
        (
            format!("--mnd-name=/tmp/foo --mnd-image={IMAGE} true"),
            "--mnd-name '/tmp/foo'",
        ),
        (
            format!("--mnd-name=:attach --mnd-image={IMAGE} true"),
            "mode 'attach'",
        ),
        (
            format!("--mnd-name=:exec --mnd-image={IMAGE} true"),
            "empty name",
        ),
        (
            format!("--mnd-name={long_name} --mnd-image={IMAGE} true"),
            "--mnd-name",
        ),
        (
            format!("--mnd-mounts= --mnd-image={IMAGE} true"),
            "--mnd-mounts: argument required",
        ),
        (
            format!("--mnd-mounts=: --mnd-image={IMAGE} true"),
            "empty source or target",
        ),
        (
            format!("--mnd-mounts=/tmp: --mnd-image={IMAGE} true"),
            "empty source or target",
        ),
        (
            format!("--mnd-workdir= --mnd-image={IMAGE} true"),
            "--mnd-workdir: argument required",
        ),
        (
            format!("--mnd-readonly --mnd-writable --mnd-image={IMAGE} true"),
            "both --mnd-writable and --mnd-readonly",
        ),
        (
            format!("--mnd-env= --mnd-image={IMAGE} true"),
            "--mnd-env: argument required",
        ),
        (
            format!("--mnd-env FOO, --mnd-image={IMAGE} true"),
            "is not a variable name",
        ),
        (
            format!("--mnd-save=/tmp/ --mnd-image={IMAGE} true"),
            "--mnd-save",
        ),
        (
            "--mnd-mounts=/tmp:/x true".to_string(),
            "--mnd-mounts needs --mnd-image",
        ),
    ];
    for (args, want) in &cases {
        refused(args, want);
    }
}
