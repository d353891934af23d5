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

/// The site's `container_scope=global` on every node's plugin line, while it lives.
struct GlobalScope;

const PLUGIN_LINE: &str = "$(grep -l mnd_spank /etc/slurm/plugstack.conf /etc/slurm/plugstack.conf.d/*.conf 2>/dev/null | head -n1)";

impl GlobalScope {
    fn set() -> GlobalScope {
        for node in NODES {
            let r = root_on(
                node,
                &[
                    "sh",
                    "-c",
                    &format!("f={PLUGIN_LINE}; sed -i --follow-symlinks '/mnd_spank/ s/$/ container_scope=global/' \"$f\" && grep -c 'container_scope=global' \"$f\""),
                ],
            );
            assert_eq!(r.stdout.trim(), "1", "{node}: {}", r.all());
        }
        GlobalScope
    }
}

impl Drop for GlobalScope {
    fn drop(&mut self) {
        for node in NODES {
            root_on(
                node,
                &[
                    "sh",
                    "-c",
                    &format!("f={PLUGIN_LINE}; sed -i --follow-symlinks 's/ container_scope=global//g' \"$f\"; docker ps -aq --filter label=mnd.scope=global | xargs -r docker rm -f; docker images -q --filter label=mnd.scope=global | xargs -r docker rmi -f"),
                ],
            );
        }
    }
}

/// A one-node job on node1 as `user`; the run and the job's id.
fn job_on_node1(user: &str, cmdline: &str) -> (Run, String) {
    job_as(user, "-N1 -w node1", cmdline)
}

/// dave's global containers named `keep` on node1: `running` per container, and the
/// unnamed images saved from them.
fn keep_on_node1() -> (Vec<bool>, usize) {
    let states = root_on(
        "node1",
        &[
            "sh",
            "-c",
            "docker ps -aq --filter label=mnd.scope=global --filter label=mnd.uid=1004 --filter label=mnd.name=keep | xargs -r docker inspect -f '{{.State.Running}}'",
        ],
    );
    let images = root_on(
        "node1",
        &[
            "sh",
            "-c",
            "docker images -q --filter label=mnd.scope=global --filter label=mnd.uid=1004 --filter label=mnd.name=keep | sort -u | wc -l",
        ],
    );
    (
        states.stdout.lines().map(|l| l.trim() == "true").collect(),
        images.stdout.trim().parse().unwrap_or(99),
    )
}

/// pyxis's default `container_scope=global`: a named container is its user's on that node
/// across jobs. The Epilog stops it and keeps it; a later job goes on from its files (with
/// or without an image named), in a new container with that job's mounts; the image saved
/// for it goes when the next one replaces it; another user with the same name gets their own.
#[test]
fn a_global_named_container_outlives_its_job_for_its_user_alone() {
    let _g = exclusive();
    cluster();
    let _scope = GlobalScope::set();
    let img = IMAGE;
    let (r, first) = job_on_node1(
        "dave",
        &format!("srun -n1 --mnd-image={img} --mnd-name=keep --mnd-writable sh -c \"echo kept-by-$SLURM_JOB_ID > /tmp/kept\""),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    // The Epilog stopped it and kept it.
    wait_until("the Epilog to stop dave's global container", CLEAN, || {
        keep_on_node1().0 == vec![false]
    });
    {
        // The site bounds how many a user keeps on a node.
        let _policy = DefaultPolicy::install("[policy]\nmax_named_containers = 1\n");
        let (r, _) = job_on_node1(
            "dave",
            &format!("srun -n1 --mnd-image={img} --mnd-name=second true"),
        );
        assert_ne!(r.code, 0, "{}", r.all());
        assert!(
            r.stderr
                .contains("you keep 1 there, the site's policy.max_named_containers is 1"),
            "{}",
            r.all()
        );
    }
    let (r, second) = job_on_node1(
        "dave",
        "srun -n1 --mnd-name=keep cat /tmp/kept && srun -n1 --mnd-name=keep sh -c \"echo $SLURM_JOB_ID >> /tmp/kept\"",
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains(&format!("kept-by-{first}")),
        "{}",
        r.all()
    );
    wait_until("the Epilog to stop it again", CLEAN, || {
        keep_on_node1() == (vec![false], 1)
    });
    let (r, _third) = job_on_node1(
        "dave",
        &format!("srun -n1 --mnd-image={img} --mnd-name=keep sh -c \"cat /tmp/kept; id -un\""),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .contains(&format!("kept-by-{first}\n{second}\ndave")),
        "{}",
        r.all()
    );
    // One container and the one image saved from it remain: earlier saves went.
    wait_until("the Epilog to stop it a third time", CLEAN, || {
        keep_on_node1() == (vec![false], 1)
    });
    // alice's `keep` is her own.
    let (r, _) = job_on_node1(
        "alice",
        &format!(
            "srun -n1 --mnd-image={img} --mnd-name=keep sh -c \"cat /tmp/kept || echo fresh\""
        ),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("fresh") && !r.stdout.contains("kept-by"),
        "{}",
        r.all()
    );
    // dave, outside the docker group, lists and removes his own, through Slurm; alice's stays.
    let listed = dave("mnd containers ls -w node1");
    assert_eq!(listed.code, 0, "{}", listed.all());
    assert_eq!(listed.stdout.lines().count(), 1, "{}", listed.all());
    assert!(
        listed
            .stdout
            .contains("node1: keep scope=global state=exited")
            && listed.stdout.contains(&format!("image={img}")),
        "{}",
        listed.all()
    );
    let removed = dave("mnd containers rm -w node1 keep");
    assert_eq!(removed.code, 0, "{}", removed.all());
    assert!(
        removed.stdout.contains("node1: removed keep"),
        "{}",
        removed.all()
    );
    assert_eq!(
        keep_on_node1(),
        (vec![], 0),
        "dave's container and its saved image went"
    );
    let listed = dave("mnd containers ls -w node1");
    assert!(
        listed
            .stdout
            .contains("node1: no named containers of yours"),
        "{}",
        listed.all()
    );
    let alices = alice("mnd containers ls -w node1");
    assert!(
        alices.stdout.contains("node1: keep scope=global"),
        "{}",
        alices.all()
    );
    let removed = alice("mnd containers rm -w node1 all");
    assert!(
        removed.stdout.contains("node1: removed keep"),
        "{}",
        removed.all()
    );
    for job in [first, second] {
        assert_nothing_left(&job);
    }
}
