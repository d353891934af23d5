//! `sbatch --mnd-image` and `#SBATCH --mnd-image` (pyxis `sbatch/sbatch.bats`): the batch
//! script itself runs in the container.

use crate::cluster::*;

#[test]
fn the_batch_script_runs_in_the_image_from_the_command_line_or_its_header() {
    let _g = shared();
    let home = format!("{SHARED}/home/dave");
    std::fs::write(
        format!("{home}/e2e-sbatch.sh"),
        format!(
            "#!/bin/bash\n#SBATCH --mnd-image={IMAGE}\n\
             echo in-image=$(test -x /usr/bin/mpirun && echo yes || echo no) user=$(id -un)\n"
        ),
    )
    .unwrap();
    for (args, out) in [
        ("e2e-sbatch.sh".to_string(), "e2e-sbatch-1.out"),
        (
            format!("--mnd-image={IMAGE} --wrap \"test -x /usr/bin/mpirun && echo in-image=yes user=\\$(id -un)\""),
            "e2e-sbatch-2.out",
        ),
    ] {
        let _ = std::fs::remove_file(format!("{home}/{out}"));
        let r = dave(&format!("timeout 300 sbatch --wait -o {out} {args}"));
        assert_eq!(r.code, 0, "{args}: {}", r.all());
        let job = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("Submitted batch job "))
            .unwrap_or_else(|| panic!("no job: {}", r.all()))
            .trim()
            .to_string();
        let text = std::fs::read_to_string(format!("{home}/{out}")).unwrap_or_default();
        assert!(text.contains("in-image=yes user=dave"), "{args}: {text}");
        assert_nothing_left(&job);
    }
}
