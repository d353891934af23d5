//! The `MND_*` variables (pyxis `env_vars.bats`): every option from the environment when
//! it is not on the command line, booleans as pyxis reads them.

use super::ran;
use crate::cluster::*;

#[test]
fn every_option_comes_from_its_variable_too() {
    let _g = shared();
    let out = ran(&format!(
        "--export=ALL,MND_IMAGE={IMAGE},MND_MOUNTS=/dev/null:/null,MND_WORKDIR=/usr,MND_REMAP_ROOT=yes,MND_READONLY=1,MND_UNSHARE=net \
         sh -c \"echo image=\\$(test -x /usr/bin/mpirun && echo yes) pwd=\\$(/bin/pwd) uid=\\$(id -u) \
         null=\\$(test -c /null && echo yes) net=\\$(ls /sys/class/net | tr -d \\\"\\n\\\"); touch /x 2>/dev/null || echo read-only\""
    ));
    assert!(
        out.contains("image=yes pwd=/usr uid=0 null=yes net=lo") && out.contains("read-only"),
        "{out}"
    );
    // Variables alone never turn a plain step into a container step without an image: a
    // profile that exports MND_MOUNTS does not break plain srun.
    let (r, job) = dave_job(
        1,
        "MND_MOUNTS=/dev/null:/null srun -n1 sh -c \"test -x /usr/bin/mpirun && echo in || echo plain\"",
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("plain"), "{}", r.all());
    assert_nothing_left(&job);
}
