//! Fabrics and CDI on stand-in devices (no RDMA hardware or GPU here): every node has
//! `/dev/infiniband/{uverbs0,uverbs1,rdma_cm}`, nodes 1 and 2 also `/dev/gdrdrv` and
//! `/dev/cxi0` (node3 lacks them), all with /dev/null's numbers; `/etc/cdi` names the
//! stand-in GPUs by index and UUID, and the CXI device (`scripts/vcluster`). The site's
//! profiles come from the root-owned site config; users only name them.

use crate::cluster::*;
use crate::gpus::{asked_of_docker, hold_two_gpus_of_node2};
use std::collections::BTreeSet;

/// The site's profiles: `ib` by default where a node has it, `gdr` with a site folder
/// mounted read-only, `cxi` through CDI only.
const PROFILES: &str = r#"
[fabrics.ib]
devices = ["/dev/infiniband"]
env = ["NCCL_IB_HCA=mlx5", "UCX_NET_DEVICES=mlx5_0:1"]
default = true

[fabrics.gdr]
devices = ["/dev/gdrdrv"]
mounts = ["/opt/vc-site-nccl:/opt/site-nccl"]
env = ["NCCL_NET_GDR_LEVEL=PHB"]

[fabrics.cxi]
cdi = ["vc.example.com/cxi=cxi0"]
env = ["FI_PROVIDER=cxi"]
"#;

/// The site folder `gdr` mounts, with a file in it, on every node.
fn site_folder() {
    // The cluster first: bringing it up (or switching its flavour) makes new nodes.
    cluster();
    for node in NODES {
        let r = root_on(
            node,
            &[
                "sh",
                "-c",
                "mkdir -p /opt/vc-site-nccl && echo plugin > /opt/vc-site-nccl/libnccl-net.so",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.all());
    }
}

/// What a task sees: its fabric devices, whether it can open one, and the variables.
const PROBE: &str = "echo \"$(hostname) devs=$(ls /dev/infiniband 2>/dev/null | tr \"\\n\" +) \
    open=$( (exec 3<>/dev/infiniband/uverbs0) 2>/dev/null && echo yes || echo no) \
    gdr=$(test -c /dev/gdrdrv && echo yes || echo no) \
    hca=${NCCL_IB_HCA:-unset} gdrlevel=${NCCL_NET_GDR_LEVEL:-unset} \
    plugin=$(cat /opt/site-nccl/libnccl-net.so 2>/dev/null || echo none) \
    rw=$(touch /opt/site-nccl/x 2>/dev/null && echo yes || echo no) memlock=$(ulimit -l)\"";

/// Each line of a node's tasks in `out`.
fn lines_of<'a>(out: &'a str, node: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.starts_with(&format!("{node} devs=")))
        .collect()
}

#[test]
fn direct_mode_gives_a_profiles_devices_to_every_task_and_refuses_what_a_node_lacks() {
    // The default site config is every job's: no other test runs meanwhile.
    let _g = exclusive();
    site_folder();
    let _policy = DefaultPolicy::install(PROFILES);
    // Positive control: the stand-ins are on the nodes, and dave (no docker group) has them
    // outside any container too, so only the container decides what a task sees.
    for node in NODES {
        let r = run_on(
            node,
            "dave",
            &["sh", "-c", "test -c /dev/infiniband/uverbs0 && echo here"],
        );
        assert!(r.stdout.contains("here"), "{node}: {}", r.all());
    }
    assert_ne!(root_on("node3", &["test", "-e", "/dev/gdrdrv"]).code, 0);

    // 1. The default profile (ib) on three nodes, 2 tasks each; a user's own value wins over
    // the profile's; without any profile (none, through the variable twin MND_FABRIC)
    // nothing of it; memlock as Slurm gives it.
    let (r, job) = dave_job(
        3,
        &format!(
            "srun -N3 --ntasks-per-node=2 --mnd-image={IMAGE} sh -c '{PROBE}'; \
             NCCL_IB_HCA=mine srun -N1 -n1 --mnd-image={IMAGE} sh -c '{PROBE}' | sed s/^/own:/; \
             MND_FABRIC=none srun -N3 --ntasks-per-node=1 --mnd-image={IMAGE} sh -c '{PROBE}' | sed s/^/none:/; \
             ulimit -S -l 2048; srun -N1 -n1 --mnd-image={IMAGE} sh -c 'echo slurm-memlock=$(ulimit -l)'; \
             srun -N1 -n1 sh -c 'echo host-memlock=$(ulimit -l)'"
        ),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    for node in NODES {
        let tasks = lines_of(&r.stdout, node);
        assert_eq!(tasks.len(), 2, "{node}:\n{}", r.all());
        for t in tasks {
            assert!(
                t.contains("devs=rdma_cm+uverbs0+uverbs1+ open=yes gdr=no hca=mlx5 gdrlevel=unset"),
                "{t}\n{}",
                r.all()
            );
        }
    }
    assert!(
        r.stdout
            .contains("own:node1 devs=rdma_cm+uverbs0+uverbs1+ open=yes gdr=no hca=mine"),
        "{}",
        r.all()
    );
    for node in NODES {
        let none = format!("none:{node} devs= open=no gdr=no hca=unset");
        assert!(r.stdout.contains(&none), "no '{none}':\n{}", r.all());
    }
    // Tasks are slurmstepd's children: their locked-memory limit is the one Slurm gives
    // (srun's, with PropagateResourceLimits), in the container as outside it.
    assert!(
        r.stdout.contains("slurm-memlock=2048") && r.stdout.contains("host-memlock=2048"),
        "{}",
        r.all()
    );
    assert_nothing_left(&job);

    // 2. gdr where the nodes have it: the device, the site's folder read-only, its variable.
    let (r, job) = dave_job(
        3,
        &format!(
            "srun -N2 -n2 -w node[1-2] --mnd-fabric=ib,gdr --mnd-image={IMAGE} sh -c '{PROBE}'"
        ),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    for node in ["node1", "node2"] {
        let t = lines_of(&r.stdout, node);
        assert!(
            t.len() == 1 && t[0].contains("gdr=yes hca=mlx5 gdrlevel=PHB plugin=plugin rw=no"),
            "{node}: {t:?}\n{}",
            r.all()
        );
    }
    assert_nothing_left(&job);

    // 3. Refusals, each naming the profile, the rule and the fix, leaving nothing: a node
    // without the device, a profile the site does not have, a path instead of a name.
    for (flag, want) in [
        (
            "--mnd-fabric=gdr",
            "node3 does not have /dev/gdrdrv, which fabric profile 'gdr' needs",
        ),
        (
            "--mnd-fabric=efa",
            "the site has no fabric profile 'efa' (profiles: cxi, gdr, ib",
        ),
        ("--mnd-fabric=/dev/sda", "is not a profile name"),
    ] {
        let (r, job) = dave_job(
            3,
            &format!("srun -N3 --ntasks-per-node=1 {flag} --mnd-image={IMAGE} true"),
        );
        assert_ne!(r.code, 0, "{flag}: {}", r.all());
        assert!(
            r.stderr.contains(want) && r.stderr.contains("Fix"),
            "{flag}: want '{want}':\n{}",
            r.all()
        );
        assert_nothing_left(&job);
    }
}

#[test]
fn the_launcher_takes_the_same_profiles_and_ib_devices_is_the_ib_profile() {
    let _g = shared();
    site_folder();
    let policy = site_config("fabric.toml", PROFILES);
    let s = script("alice", "e2e-fabric.sh", &format!("#!/bin/sh\n{PROBE}\n"));
    // The site's default (ib), --ib-devices on a site without profiles, gdr by name.
    for (env, flags, want) in [
        (
            format!("MND_CONFIG={policy}"),
            "",
            "devs=rdma_cm+uverbs0+uverbs1+ open=yes gdr=no hca=mlx5",
        ),
        (
            String::new(),
            "--ib-devices",
            "devs=rdma_cm+uverbs0+uverbs1+ open=yes gdr=no hca=unset",
        ),
        (String::new(), "", "devs= open=no gdr=no hca=unset"),
        // The variable twin of --fabric (the flag itself is refused below).
        (
            format!("MND_CONFIG={policy} MND_FABRIC=gdr"),
            "",
            "devs= open=no gdr=yes hca=unset gdrlevel=PHB plugin=plugin rw=no",
        ),
    ] {
        let name = unique("fabric");
        let r = alice(&format!(
            "{env} srun -N2 -n2 -w node[1-2] mnd-srun --container={IMAGE} --dockname={name} {flags} --script=./{s}"
        ));
        assert_eq!(r.code, 0, "{env} {flags}: {}", r.all());
        assert!(
            r.stdout.contains(&format!("node1 {want}")),
            "{env} {flags}: want '{want}':\n{}",
            r.all()
        );
        assert_clean(&name, CLEAN);
    }
    // A node without the profile's device refuses the job, naming it.
    let name = unique("fabric");
    let r = alice(&format!(
        "MND_CONFIG={policy} srun -N3 -n3 mnd-srun --container={IMAGE} --dockname={name} --fabric=gdr --script=./{s}"
    ));
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("node3 does not have /dev/gdrdrv"),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

/// Whether the nodes' Docker has CDI turned on (Docker 26 of the 24.11 flavour does;
/// Docker 20.10 of 22.05 has no CDI).
fn docker_has_cdi() -> bool {
    cluster();
    // Docker 20.10's info has no CDISpecDirs field at all: read the whole of it.
    let r = root_on("node1", &["docker", "info", "-f", "{{json .}}"]);
    assert_eq!(r.code, 0, "docker info: {}", r.all());
    r.stdout.contains("\"CDISpecDirs\":[\"/etc/cdi\"")
}

#[test]
fn gpus_go_by_uuid_through_cdi_where_docker_has_it_and_by_the_nvidia_request_elsewhere() {
    // Alone on the cluster, so which GPUs Slurm hands out is known.
    let _g = exclusive();
    let cdi = docker_has_cdi();
    // alice holds two of node2's GPUs: dave's step gets the other two.
    let hid = hold_two_gpus_of_node2();
    let r = dave(&format!(
        "srun -N1 -w node2 --gres=gpu:2 -n1 --mnd-image={IMAGE} sh -c \
         'echo job=$SLURM_JOB_ID gpus=$SLURM_STEP_GPUS devs=$(ls /dev | grep -E \"^nvidia[0-9]\" | tr \"\\n\" +) cuda=$CUDA_VISIBLE_DEVICES'"
    ));
    // The launcher's container on the same node, the same way (pass 2 of its plan).
    let s = script(
        "alice",
        "e2e-cdi-gpus.sh",
        "#!/bin/sh\necho launcher job=$SLURM_JOB_ID gpus=$SLURM_STEP_GPUS devs=$(ls /dev | grep -E '^nvidia[0-9]' | tr '\\n' +) cuda=$CUDA_VISIBLE_DEVICES\n",
    );
    let name = unique("cdigpu");
    let launched = alice(&format!(
        "srun -N1 -n1 -w node2 --gres=gpu:1 mnd-srun --container={IMAGE} --dockname={name} --envlist=SLURM_JOB_ID,SLURM_STEP_GPUS --script=./{s}"
    ));
    root_on("node1", &["scancel", &hid]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(launched.code, 0, "{}", launched.all());
    assert_clean(&name, CLEAN);
    let launched_word = |key: &str| {
        launched
            .stdout
            .split_whitespace()
            .skip_while(|w| *w != "launcher")
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {}", launched.all()))
            .to_string()
    };
    let launched_gpu: u32 = launched_word("gpus=").parse().expect("one GPU");
    let word = |key: &str| {
        r.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {}", r.all()))
            .to_string()
    };
    let (job, gpus) = (word("job="), word("gpus="));
    let ids: BTreeSet<u32> = gpus.split(',').map(|g| g.parse().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{}", r.all());
    if cdi {
        // Through CDI by UUID: exactly the step's device nodes, and NVIDIA's runtime hook
        // (the stand-in records every request it gets) was never asked.
        let devs: String = ids.iter().map(|i| format!("nvidia{i}+")).collect();
        assert_eq!(word("devs="), devs, "{}", r.all());
        assert_eq!(word("cuda="), "0,1", "{}", r.all());
        let log = root_on("node2", &["cat", "/var/log/nvidia-hook.log"]).stdout;
        assert!(
            !log.contains(&format!("MND_JOB={job}.")),
            "the nvidia request was used on a CDI node: {log}"
        );
        assert_eq!(launched_word("devs="), format!("nvidia{launched_gpu}+"));
        assert_eq!(launched_word("cuda="), "0");
        let launcher_job = launched_word("job=");
        assert!(!log.contains(&format!("MND_JOB={launcher_job}.")), "{log}");
    } else {
        // No CDI in this Docker: the nvidia request, for exactly the step's GPUs.
        assert_eq!(asked_of_docker("node2", &format!("{job}.0")), ids);
        let launcher_job = launched_word("job=");
        assert_eq!(
            asked_of_docker("node2", &format!("{launcher_job}.0")),
            BTreeSet::from([launched_gpu])
        );
    }
    assert_nothing_left(&job);
}

#[test]
fn a_profiles_cdi_device_arrives_where_docker_has_cdi_and_is_refused_where_it_has_not() {
    let _g = exclusive();
    let cdi = docker_has_cdi();
    let _policy = DefaultPolicy::install(PROFILES);
    let (r, job) = dave_job(
        3,
        &format!(
            "srun -N2 -n2 -w node[1-2] --mnd-fabric=cxi --mnd-image={IMAGE} sh -c \
             'echo $(hostname) cxi=$(test -c /dev/cxi0 && echo yes || echo no) fi=$FI_PROVIDER'"
        ),
    );
    if cdi {
        assert_eq!(r.code, 0, "{}", r.all());
        for node in ["node1", "node2"] {
            assert!(
                r.stdout.contains(&format!("{node} cxi=yes fi=cxi")),
                "{}",
                r.all()
            );
        }
    } else {
        assert_ne!(r.code, 0, "{}", r.all());
        assert!(
            r.stderr.contains("CDI turned off") && r.stderr.contains("daemon.json"),
            "{}",
            r.all()
        );
    }
    assert_nothing_left(&job);
}

/// An admin's misstep the root side must not pass on to every job: a CDI spec others can
/// change (Docker would read it all the same), and a profile mounting a folder a user owns.
#[test]
fn specs_and_profile_folders_that_others_can_change_are_not_used() {
    let _g = exclusive();
    let _policy = DefaultPolicy::install(&format!(
        "{PROFILES}\n[fabrics.theirs]\nmounts = [\"/opt/vc-theirs:/opt/theirs\"]\n"
    ));
    // The attack's stage: a spec anyone may rewrite, a site folder dave owns.
    for node in ["node1", "node2"] {
        let r = root_on(
            node,
            &["sh", "-c", "chmod 0666 /etc/cdi/vc-cxi.yaml && mkdir -p /opt/vc-theirs && chown dave /opt/vc-theirs && stat -c %a /etc/cdi/vc-cxi.yaml"],
        );
        assert!(r.stdout.contains("666"), "{node}: {}", r.all());
    }
    let (r, job) = dave_job(
        3,
        &format!(
            "srun -N2 -n2 -w node[1-2] --mnd-fabric=cxi --mnd-image={IMAGE} true; echo cxi-exit=$?; \
             srun -N2 -n2 -w node[1-2] --mnd-fabric=theirs --mnd-image={IMAGE} true; echo theirs-exit=$?"
        ),
    );
    for node in ["node1", "node2"] {
        root_on(
            node,
            &[
                "sh",
                "-c",
                "chmod 0644 /etc/cdi/vc-cxi.yaml; rm -rf /opt/vc-theirs",
            ],
        );
    }
    assert!(
        r.stdout.contains("cxi-exit=") && !r.stdout.contains("cxi-exit=0"),
        "{}",
        r.all()
    );
    // The spec is skipped, and the node says why the profile cannot be given.
    let cdi_refusal =
        "cannot be trusted: /etc/cdi/vc-cxi.yaml: not a regular file that only root can change";
    assert!(
        r.stderr.contains(cdi_refusal),
        "want '{cdi_refusal}':\n{}",
        r.all()
    );
    assert!(!r.stdout.contains("theirs-exit=0"), "{}", r.all());
    assert!(
        r.stderr.contains("fabric profile 'theirs' mounts /opt/vc-theirs, which is not root's alone (it /opt/vc-theirs is owned by uid 1004"),
        "{}",
        r.all()
    );
    assert_nothing_left(&job);
}
