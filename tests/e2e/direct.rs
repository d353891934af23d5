//! Direct mode through the SPANK plugin (`srun --mnd-image=IMAGE cmd`), installed on the
//! cluster by `scripts/install.sh --plugin`. Jobs run as dave, who is not in the docker group
//! and cannot reach the Docker socket: only the plugin's root side starts containers.

use crate::cluster::*;
use std::time::Duration;

#[test]
fn every_task_runs_in_its_nodes_container_as_a_user_outside_the_docker_group() {
    let _g = shared();
    let denied = run_on("node1", "dave", &["docker", "ps"]);
    assert!(
        denied.code != 0 && denied.stderr.contains("permission denied"),
        "dave must not reach the Docker socket: {}",
        denied.all()
    );
    // mpirun is in the image only: the nodes have none.
    assert_ne!(root_on("node2", &["test", "-e", "/usr/bin/mpirun"]).code, 0);
    let (r, job) = dave_job(3, &format!(
        "srun -N3 --ntasks-per-node=2 -l --mnd-image={IMAGE} bash -c \
         'echo \"$(hostname) id=$(id -u):$(id -g) groups=$(id -G) image=$(test -x /usr/bin/mpirun && echo yes) \
          pwd=$PWD user=$(whoami) parent=$(cat /proc/$PPID/comm) \
          cgroup=$(grep -o \"memory:.*\" /proc/self/cgroup) $(grep -E \"^(NoNewPrivs|CapBnd|CapEff)\" /proc/self/status | tr -s \"\\t\" \" \" | tr \"\\n\" \" \")\"'"
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", r.all());
    for node in NODES {
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains(&format!(" {node} ")))
                .count(),
            2,
            "two tasks on {node}: {}",
            r.all()
        );
    }
    for l in &lines {
        for want in [
            "id=1004:1004",
            "groups=1004 1500",
            "image=yes",
            "pwd=/shared/home/dave",
            "user=dave",
            // A Slurm task (slurmstepd's child, in the step's memory cgroup), not a process
            // of Docker's.
            "parent=slurmstepd",
            "/slurm_node",
            "/step_0/task_",
            "NoNewPrivs: 1",
            "CapBnd: 0000000000000000",
            "CapEff: 0000000000000000",
        ] {
            assert!(l.contains(want), "'{want}' missing in: {l}");
        }
    }
    assert_nothing_left(&job);
}

#[test]
fn mpi4py_allreduce_runs_on_sruns_pmix_across_three_nodes() {
    let _g = shared();
    let (r, job) = dave_job(3, &format!(
        "srun -N3 --ntasks-per-node=2 --mpi=pmix --mnd-image={IMAGE} python3 -c \
         'from mpi4py import MPI; c = MPI.COMM_WORLD; print(\"sum\", c.allreduce(c.rank + 1), \"size\", c.size, \"rank\", c.rank)'"
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    let mut ranks: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("sum 21 size 6 rank "))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    ranks.sort();
    assert_eq!(ranks, ["0", "1", "2", "3", "4", "5"], "{}", r.all());
    assert_nothing_left(&job);
}

/// A job's later steps on a `--mnd-name` container run over srun's PMIx too, with PMIx's
/// default shared-memory store. A later step's PMIx folder is made after the container;
/// the container shows Slurm's spool it is in (root's), so the tasks find their server's
/// store there. Before, only the first step's folder was shown: rank 0 crashed in
/// `MPI_Init` (the store's file gone) unless the user set `PMIX_MCA_gds=hash`.
#[test]
fn later_pmix_steps_on_a_named_container_run_too() {
    let _g = shared();
    let step = format!(
        "srun -N3 --ntasks-per-node=2 --mpi=pmix --mnd-image={IMAGE} --mnd-name=pmixwarm python3 -c \
         'from mpi4py import MPI; c = MPI.COMM_WORLD; print(\"sum\", c.allreduce(c.rank + 1), \"size\", c.size)'"
    );
    let (r, job) = dave_job(3, &format!("{step} && {step}"));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout.matches("sum 21 size 6").count(),
        12,
        "6 ranks in each of 2 steps: {}",
        r.all()
    );
    assert!(!r.stderr.contains("PMIX ERROR"), "{}", r.all());
    assert_nothing_left(&job);
}

#[test]
fn a_tasks_exit_code_comes_back_from_srun() {
    let _g = shared();
    let (r, job) = dave_job(
        3,
        &format!(
            "srun -N3 -n3 --mnd-image={IMAGE} bash -c 'exit $(( SLURM_PROCID == 2 ? 7 : 0 ))'"
        ),
    );
    assert_eq!(r.code, 7, "{}", r.all());
    assert!(
        r.stderr.contains("task 2: Exited with exit code 7"),
        "{}",
        r.all()
    );
    assert_nothing_left(&job);
}

/// Many users export `RUST_LOG` for their own tools (tokenizers, their Rust code): the
/// plugin must neither take it as its own log setting nor fail srun's exit over it.
#[test]
fn a_users_rust_log_changes_nothing_and_an_error_is_said_once() {
    let _g = shared();
    let (r, job) = dave_job(
        2,
        &format!("export RUST_LOG=trace; srun -N2 -n2 --mnd-image={IMAGE} true"),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        !r.stderr.contains("panic") && !r.stderr.contains("failed with rc"),
        "{}",
        r.all()
    );
    assert_nothing_left(&job);
    let bad = dave("RUST_LOG=trace srun -N1 --mnd-image='Bad Image' true");
    assert_ne!(bad.code, 0, "{}", bad.all());
    assert_eq!(
        bad.stderr.matches("is not an image name").count(),
        1,
        "said once: {}",
        bad.all()
    );
    assert!(!bad.stderr.contains("panic"), "{}", bad.all());
}

/// The helper's reply carries the image's environment: one bigger than a pipe holds (a
/// stock image with a long generated ENV) must not leave the helper and the task waiting on
/// each other.
#[test]
fn an_image_whose_environment_outgrows_a_pipe_starts() {
    let _g = shared();
    cluster();
    let tag = format!("mnd-vc-job:bigenv-{}", std::process::id());
    // Docker reads each --change as a Dockerfile line (64 KiB at most): four of 30,000.
    let part = "x".repeat(30_000);
    let changes: String = (1..=4)
        .map(|i| format!(" --change 'ENV BIG_ENV{i}={part}'"))
        .collect();
    for node in NODES {
        let made = root_on(
            node,
            &[
                "sh",
                "-c",
                &format!(
                    "docker rm -f mk-bigenv >/dev/null 2>&1; docker create --network=none --name mk-bigenv {IMAGE} true >/dev/null && docker commit{changes} mk-bigenv {tag} >/dev/null && docker rm mk-bigenv >/dev/null"
                ),
            ],
        );
        assert_eq!(made.code, 0, "{node}: {}", made.all());
    }
    let (r, job) = dave_job(
        2,
        &format!(
            "timeout 120 srun -N2 -n2 --mnd-image={tag} sh -c 'printf %s \"$BIG_ENV1$BIG_ENV2$BIG_ENV3$BIG_ENV4\" | wc -c'"
        ),
    );
    for node in NODES {
        root_on(node, &["docker", "rmi", &tag]);
    }
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout.lines().filter(|l| l.trim() == "120000").count(),
        2,
        "{}",
        r.all()
    );
    assert_nothing_left(&job);
}

#[test]
fn a_first_node_without_the_image_fails_the_step_naming_it() {
    let _g = shared();
    // The step's first node serves an image to the others (images::direct_mode_runs_...);
    // when it lacks the image, nobody can.
    let tag = "mnd-vc-job:direct-only-two";
    for node in ["node2", "node3"] {
        assert_eq!(root_on(node, &["docker", "tag", IMAGE, tag]).code, 0);
    }
    // The step's own time, not the allocation's wait for nodes other tests hold.
    let (r, job) = dave_job(
        3,
        &format!(
            "t0=$(date +%s); srun -N3 -n3 -l --mnd-image={tag} true; rc=$?; \
             echo step-took=$(( $(date +%s) - t0 )); exit $rc"
        ),
    );
    for node in ["node2", "node3"] {
        root_on(node, &["docker", "rmi", tag]);
    }
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr
            .contains(&format!("mnd: node1: image '{tag}' is not available")),
        "{}",
        r.all()
    );
    assert!(
        !r.stderr.contains("mnd: node2:") && !r.stderr.contains("mnd: node3:"),
        "only node1 lacks the image: {}",
        r.all()
    );
    // It fails at once, not after the image share's wait (60 s) for a word nobody writes.
    let took: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("step-took="))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no step time: {}", r.all()));
    assert!(took < 45, "the step took {took} s: {}", r.all());
    assert_nothing_left(&job);
}

/// Submits a 3-node batch job of dave whose step sleeps in direct mode; returns its id once
/// the step's containers run on every node.
fn sleeping_job(sbatch_flags: &str) -> String {
    let job = dave(&format!(
        "sbatch --parsable -N3 {sbatch_flags} --wrap 'srun -N3 --mnd-image={IMAGE} sleep 600'"
    ));
    assert_eq!(job.code, 0, "{}", job.all());
    let id = job.stdout.trim().to_string();
    wait_until(
        "the step's containers on 3 nodes",
        Duration::from_secs(60),
        || {
            NODES
                .iter()
                .all(|n| !containers(n, &format!("mnd-dave-{id}.")).is_empty())
        },
    );
    id
}

#[test]
fn scancel_ends_the_step_and_leaves_nothing() {
    let _g = shared();
    let id = sleeping_job("");
    assert_eq!(root_on("node1", &["scancel", &id]).code, 0);
    assert_nothing_left(&id);
}

#[test]
fn the_time_limit_ends_the_step_and_leaves_nothing() {
    let _g = shared();
    let id = sleeping_job("--time=1");
    wait_until(
        "Slurm to end the job at its time limit",
        Duration::from_secs(240),
        || job_gone(&id),
    );
    assert_nothing_left(&id);
}

#[test]
fn a_killed_slurmstepd_leaves_a_container_that_the_epilog_removes() {
    let _g = shared();
    let id = sleeping_job("");
    // SIGKILL: the plugin's step end never runs on node2.
    let pattern = format!("^slurmstepd: \\[{id}\\.0\\]");
    let killed = root_on("node2", &["pkill", "-9", "-f", &pattern]);
    assert_eq!(
        killed.code,
        0,
        "no slurmstepd of step {id}.0 on node2: {}",
        killed.all()
    );
    assert_eq!(root_on("node1", &["scancel", &id]).code, 0);
    wait_until("the job to end", Duration::from_secs(120), || job_gone(&id));
    // The container and the plugin's files of the step that never ended on node2.
    assert_nothing_left(&id);
}

#[test]
fn kill_on_bad_exit_ends_the_other_tasks_at_once() {
    let _g = shared();
    // Task 1 fails once every task runs: Slurm loses a step signal that reaches a node
    // before the step is launched there (slurmd: "signal for nonexistent StepId=..."), so a task
    // failing while another node is still launching tests Slurm's race, not the plugin.
    let (r, job) = dave_job(
        3,
        &format!(
            "srun -N3 -n3 -K --mnd-image={IMAGE} bash -c 'd=$HOME/.kbe.$SLURM_JOB_ID; mkdir -p $d; touch $d/$SLURM_PROCID; \
             if [ $SLURM_PROCID = 1 ]; then for i in $(seq 600); do [ $(ls $d | wc -l) = 3 ] && exit 5; sleep 0.1; done; exit 6; fi; sleep 300'"
        ),
    );
    run_on(
        "node1",
        "dave",
        &["sh", "-c", &format!("rm -rf $HOME/.kbe.{job}")],
    );
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("task 1: Exited with exit code 5"),
        "{}",
        r.all()
    );
    // The others were killed by Slurm, not left to sleep their 300 s.
    assert!(
        r.took < Duration::from_secs(60),
        "took {:?}: {}",
        r.took,
        r.all()
    );
    assert_nothing_left(&job);
}

#[test]
fn a_named_container_serves_the_jobs_later_steps_and_goes_with_the_job() {
    let _g = shared();
    let r = dave(&format!(
        "salloc -N2 bash -c 'echo job=$SLURM_JOB_ID; \
         srun -l --mnd-image={IMAGE} --mnd-name=warm sh -c \"echo step\\$SLURM_STEP_ID > /tmp/warm\"; \
         srun -l --mnd-image={IMAGE} --mnd-name=warm cat /tmp/warm; \
         srun -l --mnd-image={IMAGE} sh -c \"cat /tmp/warm 2>/dev/null || echo fresh\"'"
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    let job = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("job="))
        .expect("job id")
        .to_string();
    // The second step found what the first wrote in the container; a step without the
    // name got a container of its own.
    assert_eq!(r.stdout.matches(": step0").count(), 2, "{}", r.all());
    assert_eq!(r.stdout.matches(": fresh").count(), 2, "{}", r.all());
    // The Epilog removes the named containers when the job ends.
    assert_nothing_left(&job);
}

#[test]
fn the_root_side_enforces_the_site_policy_whatever_the_user_sends() {
    // The policy file is the default one every job reads: no other test runs meanwhile.
    let _g = exclusive();
    let _policy = DefaultPolicy::install(
        "[policy]\nallowed_images = [\"mnd-vc-job:.*\"]\nallowed_mount_prefixes = [\"/shared\"]\n",
    );
    // A permissive file the user points at is never read by the root side.
    site_config(
        "permissive.toml",
        "[policy]\nallowed_images = [\".*\"]\nallowed_mount_prefixes = [\"/\"]\n",
    );
    let refused = |cmdline: &str, want: &str| {
        let (r, job) = dave_job(1, cmdline);
        assert_ne!(r.code, 0, "{cmdline}\n{}", r.all());
        assert!(
            r.stderr.contains(want),
            "expected '{want}' for {cmdline}:\n{}",
            r.all()
        );
        assert_nothing_left(&job);
    };
    refused(
        "MND_CONFIG=/etc/mnd-srun/permissive.toml srun -N1 --mnd-image=debian:bookworm true",
        "image 'debian:bookworm' is not allowed by the site policy (policy.allowed_images in /etc/mnd-srun/config.toml)",
    );
    refused(
        &format!("srun -N1 --mnd-image={IMAGE} --mnd-mounts=/var/run/docker.sock true"),
        "inside the host system folder /run",
    );
    refused(
        &format!("srun -N1 --mnd-image={IMAGE} --mnd-mounts=/shared/../etc:/x true"),
        "/etc is a host system folder",
    );
    refused(
        &format!("MND_MOUNTS=/tmp:/data srun -N1 --mnd-image={IMAGE} true"),
        "policy.allowed_mount_prefixes",
    );
    refused(
        &format!(
            "srun -N1 --mnd-image={IMAGE} --mnd-mounts='/shared/home/dave,/shared/home/dave' true"
        ),
        "two mounts target /shared/home/dave",
    );
    // A folder dave cannot reach on the node is not reached for him.
    root_on(
        "node1",
        &[
            "sh",
            "-c",
            "mkdir -p /shared/home/alice/pub && chmod 0755 /shared/home/alice/pub",
        ],
    );
    refused(
        &format!(
            "srun -N1 -w node1 --mnd-image={IMAGE} --mnd-mounts=/shared/home/alice/pub:/pub true"
        ),
        "Permission denied",
    );
    // Odd characters never become options: a space, a comma split, a newline.
    refused(
        &format!("srun -N1 --mnd-image='{IMAGE} --privileged' true"),
        "is not an image name",
    );
    refused(
        &format!("srun -N1 --mnd-image=$'{IMAGE}\\n--privileged' true"),
        "is not an image name",
    );
    refused(
        &format!("srun -N1 --mnd-image={IMAGE} --mnd-mounts='/shared/home/dave:/d:ro:rw' true"),
        "flag 'ro:rw' is not one Docker can give a bind mount",
    );
    refused(
        &format!("srun -N1 --mnd-image={IMAGE} --mnd-name='../x' true"),
        "--mnd-name",
    );
    // Within the policy the same user runs.
    let (r, job) = dave_job(
        1,
        &format!("srun -N1 --mnd-image={IMAGE} --mnd-mounts=/shared/home/dave:/data:ro sh -c 'test -d /data && echo ok'"),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("ok"), "{}", r.all());
    assert_nothing_left(&job);
}

#[test]
fn the_ssh_mode_runs_inside_the_plugins_containers_for_a_user_outside_the_docker_group() {
    let _g = shared();
    let s = script(
        "dave",
        "e2e-direct-mpi.sh",
        "#!/bin/bash\necho \"hostlist=$hostlist np=$np NNODES=$NNODES MASTER_ADDR=$MASTER_ADDR slurm_vars=$(env | grep -c ^SLURM_)\"\n\
         mpirun -H \"$hostlist\" -np \"$np\" hostname | sed 's/^/rank-on /'\nexit 3\n",
    );
    // Three jobs start at once on the two cores here: the workers wait longer than the
    // default 60 s for a coordinator whose node is slow to start its container.
    let (r, job) = dave_job(
        3,
        &format!("srun -N3 -n3 --mnd-image={IMAGE} mnd-srun --wait-timeout=180 --script=./{s}"),
    );
    assert_eq!(r.code, 3, "the script's exit code comes back: {}", r.all());
    assert!(
        r.stdout.contains(
            "hostlist=node1:1,node2:1,node3:1 np=3 NNODES=3 MASTER_ADDR=node1 slurm_vars=0"
        ),
        "{}",
        r.all()
    );
    for node in NODES {
        assert!(
            r.stdout.contains(&format!("rank-on {node}")),
            "mpirun reached {node} over ssh: {}",
            r.all()
        );
    }
    assert_nothing_left(&job);
    for node in NODES {
        assert_eq!(stray_sshd(node, "dave"), 0, "sshd left on {node}");
    }
}

#[test]
fn the_steps_memory_limit_applies_to_the_task_in_the_container() {
    let _g = shared();
    // The cluster runs Slurm's task/cgroup (ConstrainRAMSpace): 300 MB do not fit in 100 MB.
    let grab = "python3 -c 'b = bytearray(300 * 1024 * 1024); print(\"allocated\", len(b))'";
    let (r, job) = dave_job(
        1,
        &format!("srun -N1 -n1 --mem=100M --mnd-image={IMAGE} {grab}"),
    );
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("oom-kill event"), "{}", r.all());
    assert!(!r.stdout.contains("allocated"), "{}", r.all());
    assert_nothing_left(&job);
    let (r, job) = dave_job(
        1,
        &format!("srun -N1 -n1 --mem=600M --mnd-image={IMAGE} {grab}"),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("allocated 314572800"), "{}", r.all());
    assert_nothing_left(&job);
}

/// The site's `max_image_size` holds in both modes: a larger image is refused naming the
/// rule, before any container starts, and nothing is left.
#[test]
fn an_image_over_the_sites_max_image_size_is_refused_in_both_modes() {
    let _g = exclusive();
    // Positive control: the job image is larger than the bound set below.
    let size = root_on(
        "node1",
        &["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE],
    );
    assert!(
        size.stdout.trim().parse::<u64>().unwrap_or(0) > 1_000_000,
        "{}",
        size.all()
    );
    let _policy = DefaultPolicy::install("[policy]\nmax_image_size = \"1M\"\n");
    let (r, job) = dave_job(1, &format!("srun -n1 --mnd-image={IMAGE} true"));
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains(&format!("image {IMAGE} ("))
            && r.stderr
                .contains("policy.max_image_size in /etc/mnd-srun/config.toml"),
        "{}",
        r.all()
    );
    assert_nothing_left(&job);
    let s = script("alice", "e2e-max-size.sh", "#!/bin/sh\necho ran\n");
    let name = unique("maxsize");
    let r = alice(&format!("{} --script=./{s}", srun_line(1, &name, "")));
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        !r.stdout.contains("ran") && r.stderr.contains("policy.max_image_size"),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}
