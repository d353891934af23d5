//! `--mnd-name=NAME[:auto|create|exec|no_exec]` (pyxis `name.bats`).

use crate::cluster::*;

#[test]
fn a_named_container_lives_for_the_job_and_its_modes_do_what_pyxis_does() {
    let _g = shared();
    let img = IMAGE;
    let (r, job) = dave_job(
        1,
        &format!(
            "srun -n1 --mnd-name=warm true; echo no-image-first=$?; \
             srun -n1 --mnd-image={img} --mnd-name=warm sh -c \"echo made > /tmp/made\"; \
             srun -n1 --mnd-image={img} --mnd-name=warm cat /tmp/made; \
             srun -n1 --mnd-name=warm cat /tmp/made; \
             srun -n1 --mnd-name=warm:exec cat /tmp/made; \
             srun -n1 --mnd-image={img} --mnd-name=warm:create true; echo create=$?; \
             srun -n1 --mnd-name=warm:no_exec sh -c \"test -e /tmp/made && echo inside || echo outside\"; \
             srun -n1 --mnd-image={img} --mnd-name=cold:exec true; echo exec-missing=$?; \
             srun -n1 --mnd-image={img} sh -c \"test -e /tmp/made && echo shared || echo fresh\"; \
             srun -n1 --mnd-image={img} --mnd-name=other true"
        ),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let out = &r.stdout;
    assert!(out.contains("no-image-first=1"), "{}", r.all());
    assert!(
        r.stderr
            .contains("no running container named warm of this job"),
        "{}",
        r.all()
    );
    assert_eq!(out.matches("made\n").count(), 3, "{}", r.all());
    assert!(out.contains("create=1"), "{}", r.all());
    assert!(
        r.stderr
            .contains("a container named warm of this job already runs"),
        "{}",
        r.all()
    );
    assert!(out.contains("outside"), "no_exec runs outside: {}", r.all());
    assert!(out.contains("exec-missing=1"), "{}", r.all());
    assert!(
        out.contains("fresh"),
        "an unnamed step has its own: {}",
        r.all()
    );
    // The Epilog removes the named containers with the job.
    assert_nothing_left(&job);
}
