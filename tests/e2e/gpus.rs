//! GPUs through Slurm's real allocation, on stand-in devices: every node has gres
//! `gpu:4` backed by /dev/nvidia0..3 (and /dev/kfd with /dev/dri/renderD128..131 for AMD),
//! and a stand-in NVIDIA runtime hook that records what Docker was asked for
//! (/var/log/nvidia-hook.log on each node).

use crate::cluster::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// Prints, from every node's ssh session: node, Slurm's GPUs for the step there, and what
/// the container says. The first line is the coordinator's hostlist.
const GPU_JOB: &str = "#!/bin/bash\necho hostlist=$hostlist\n\
pdsh -w \"$(echo $hostlist | sed 's/:[0-9]*//g')\" \
'echo slurm=$SLURM_STEP_GPUS nvidia=$NVIDIA_VISIBLE_DEVICES cuda=$CUDA_VISIBLE_DEVICES rocr=$ROCR_VISIBLE_DEVICES hip=$HIP_VISIBLE_DEVICES dri=$(ls /dev/dri 2>/dev/null | tr \"\\n\" ,) kfd=$(ls /dev/kfd 2>/dev/null) groups=$(id -G | tr \" \" ,)' | sort\n";

/// One node's line of `GPU_JOB`'s output, as key=value pairs.
fn node_line(out: &str, node: &str) -> std::collections::BTreeMap<String, String> {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{node}: ")))
        .unwrap_or_else(|| panic!("no line from {node} in:\n{out}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A job of alice's holding two of node2's GPUs (Slurm gives the first free ones: 0 and 1
/// on an idle cluster), running when this returns; its id, for `scancel`.
pub(crate) fn hold_two_gpus_of_node2() -> String {
    let holder = alice("sbatch --parsable -N1 -w node2 --gres=gpu:2 --wrap 'sleep 120'");
    assert_eq!(holder.code, 0, "{}", holder.all());
    let hid = holder.stdout.trim().to_string();
    wait_until("the holding job to run", Duration::from_secs(30), || {
        alice(&format!("squeue -h -j {hid} -o %T")).stdout.trim() == "RUNNING"
    });
    hid
}

/// The GPU ids Docker was asked for on `node` for the job step `label`, from the hook log.
/// dockerd calls the hook only for a GPU device request, and appends the request's ids to
/// the container's own `NVIDIA_VISIBLE_DEVICES` (mnd-srun's, for the script): both must
/// name the same GPUs.
pub(crate) fn asked_of_docker(node: &str, label: &str) -> BTreeSet<u32> {
    let log = root_on(node, &["cat", "/var/log/nvidia-hook.log"]).stdout;
    let line = log
        .lines()
        .find(|l| l.contains(&format!("MND_JOB={label} ")))
        .unwrap_or_else(|| panic!("Docker on {node} was asked for no GPU for {label}:\n{log}"));
    let asked: Vec<BTreeSet<u32>> = line
        .split_whitespace()
        .filter_map(|kv| kv.strip_prefix("NVIDIA_VISIBLE_DEVICES="))
        .map(ids)
        .collect();
    assert_eq!(asked.len(), 2, "{node}: {line}");
    assert_eq!(
        asked[0], asked[1],
        "{node}: Docker's request differs from the job's: {line}"
    );
    asked[0].clone()
}

/// Runs `GPU_JOB` on 3 nodes with these srun and mnd-srun options; checks that it succeeded
/// and that `hostlist` has `slots` per node.
fn gpu_job(name: &str, srun_opts: &str, mnd_opts: &str, slots: u32) -> Run {
    let s = script("alice", &format!("e2e-gpu-{name}.sh"), GPU_JOB);
    let r = alice(&format!(
        "srun -N3 {srun_opts} mnd-srun --container={IMAGE} --dockname={name} {mnd_opts} --script=./{s}"
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    let want = format!("hostlist=node1:{slots},node2:{slots},node3:{slots}");
    assert!(r.stdout.contains(&want), "{}", r.all());
    r
}

/// Checks a 3-node GPU job succeeded with 2 slots per node; its `label=` line (`MND_JOB`).
fn two_gpus_each_and_label(r: &Run) -> String {
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("hostlist=node1:2,node2:2,node3:2"),
        "{}",
        r.all()
    );
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix("label="))
        .unwrap_or_else(|| panic!("no label in {}", r.all()))
        .to_string()
}

fn ids(text: &str) -> BTreeSet<u32> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn two_jobs_sharing_nodes_each_get_exactly_their_steps_nvidia_gpus() {
    let _g = shared();
    let name = unique("gpus");
    let barrier = format!("e2e-{name}.started");
    let s = script(
        "alice",
        &format!("e2e-gpu-{name}.sh"),
        &format!("#!/bin/bash\necho label=$MND_JOB\necho $MND_JOB >> ~/{barrier}\n\
                  for i in $(seq 600); do [ $(wc -l < ~/{barrier}) -ge 2 ] && break; sleep 0.1; done\n\
                  {}", GPU_JOB.trim_start_matches("#!/bin/bash\n")),
    );
    let _ = alice(&format!("rm -f ~/{barrier}"));
    let run = |tag: &str| {
        let line = format!(
            "srun -N3 -n3 --gres=gpu:2 mnd-srun --container={IMAGE} --dockname={name}-{tag} --envlist=SLURM_STEP_GPUS --script=./{s}"
        );
        std::thread::spawn(move || alice(&line))
    };
    let (a, b) = (run("a"), run("b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let mut per_node: Vec<Vec<BTreeSet<u32>>> = vec![Vec::new(); 3];
    for r in [&a, &b] {
        let label = two_gpus_each_and_label(r);
        for (i, node) in NODES.iter().enumerate() {
            let line = node_line(&r.stdout, node);
            let slurm = ids(&line["slurm"]);
            assert_eq!(slurm.len(), 2, "{node}: {line:?}");
            // Docker was asked for exactly Slurm's GPUs; inside they are 0 and 1.
            assert_eq!(asked_of_docker(node, &label), slurm, "{node}");
            assert_eq!(ids(&line["nvidia"]), slurm, "{node}: {line:?}");
            assert_eq!(line["cuda"], "0,1", "{node}: {line:?}");
            per_node[i].push(slurm);
        }
    }
    for (node, sets) in NODES.iter().zip(&per_node) {
        assert!(
            sets[0].is_disjoint(&sets[1]),
            "{node}: both jobs got {sets:?}"
        );
    }
    let _ = alice(&format!("rm -f ~/{barrier}"));
    assert_clean(&name, CLEAN);
}

/// Where Slurm names the step's GPUs by unique id (NVML autodetection with MIG devices
/// sets `CUDA_VISIBLE_DEVICES=MIG-...` in the task, one per `SLURM_STEP_GPUS` index),
/// Docker is asked for those ids, not for indices that would be whole GPUs. Debian's
/// Slurm has no NVML plugin, so the task's value is set the way that plugin sets it, on
/// real gres from slurmd.
#[test]
fn mig_devices_named_by_slurm_are_asked_of_docker_by_unique_id() {
    let _g = shared();
    let name = unique("mig");
    let s = script(
        "alice",
        "e2e-gpu-mig.sh",
        "#!/bin/bash\necho label=$MND_JOB\necho hostlist=$hostlist\npdsh -w \"$(echo $hostlist | sed 's/:[0-9]*//g')\" 'echo nvidia=$NVIDIA_VISIBLE_DEVICES cuda=$CUDA_VISIBLE_DEVICES' | sort\n",
    );
    let r = alice(&format!(
        "srun -N3 -n3 --gres=gpu:2 bash -c 'CUDA_VISIBLE_DEVICES=$(echo $SLURM_STEP_GPUS | sed \"s/\\([0-9]\\)/MIG-$(hostname)-gpu\\1/g\") exec mnd-srun --container={IMAGE} --dockname={name} --script=./{s}'"
    ));
    let label = two_gpus_each_and_label(&r);
    for node in NODES {
        let line = node_line(&r.stdout, node);
        let mig: Vec<&str> = line["nvidia"].split(',').collect();
        assert_eq!(mig.len(), 2, "{node}: {line:?}");
        assert!(
            mig.iter()
                .all(|m| m.starts_with(&format!("MIG-{node}-gpu"))),
            "{node}: {line:?}"
        );
        assert_eq!(line["cuda"], "0,1", "{node}: {line:?}");
        let log = root_on(node, &["cat", "/var/log/nvidia-hook.log"]).stdout;
        let asked = log
            .lines()
            .find(|l| l.contains(&format!("MND_JOB={label} ")))
            .unwrap_or_else(|| panic!("Docker on {node} was asked for no GPU:\n{log}"));
        let want = format!("NVIDIA_VISIBLE_DEVICES={}", line["nvidia"]);
        assert_eq!(asked.matches(&want).count(), 2, "{node}: {asked}");
    }
    assert_clean(&name, CLEAN);
}

#[test]
fn amd_gets_kfd_the_steps_render_nodes_and_the_render_group() {
    let _g = shared();
    let name = unique("amd");
    let r = gpu_job(
        &name,
        "-n3 --gpus-per-node=2",
        "--gpu-vendor=amd --envlist=SLURM_STEP_GPUS",
        2,
    );
    let render = root_on("node1", &["getent", "group", "render"]).stdout;
    let render_gid = render.split(':').nth(2).unwrap().to_string();
    for node in NODES {
        let line = node_line(&r.stdout, node);
        let want: Vec<String> = ids(&line["slurm"])
            .iter()
            .map(|i| format!("renderD{}", 128 + i))
            .collect();
        assert_eq!(want.len(), 2, "{node}: {line:?}");
        assert_eq!(
            line["dri"],
            format!("{},", want.join(",")),
            "{node}: {line:?}"
        );
        assert_eq!(line["kfd"], "/dev/kfd", "{node}: {line:?}");
        assert!(
            line["groups"].split(',').any(|g| g == render_gid),
            "{node}: {line:?}"
        );
        assert_eq!(
            (line["rocr"].as_str(), line["hip"].as_str()),
            ("0,1", "0,1"),
            "{node}: {line:?}"
        );
    }
    assert_clean(&name, CLEAN);
}

#[test]
fn gpus_per_task_and_gpus_outside_the_step() {
    let _g = shared();
    let name = unique("pertask");
    let r = gpu_job(
        &name,
        "--ntasks-per-node=1 --gpus-per-task=1",
        "--envlist=SLURM_STEP_GPUS",
        1,
    );
    for node in NODES {
        let line = node_line(&r.stdout, node);
        assert_eq!(ids(&line["slurm"]).len(), 1, "{node}: {line:?}");
        assert_eq!(
            ids(&line["nvidia"]),
            ids(&line["slurm"]),
            "{node}: {line:?}"
        );
    }
    assert_clean(&name, CLEAN);
    // Under Slurm, all GPUs, or GPUs of other jobs, are refused before anything starts.
    for (tag, ask, shown) in [
        ("all", "--gpus=all", "--gpus=all is refused"),
        ("other", "--gpus=7", "GPU 7 in --gpus is refused"),
    ] {
        let name = unique(tag);
        let s = script("alice", "e2e-gpu-refused.sh", GPU_JOB);
        let r = alice(&format!(
            "srun -N3 -n3 --gres=gpu:1 mnd-srun --container={IMAGE} --dockname={name} {ask} --script=./{s}"
        ));
        assert_eq!(r.code, 2, "{tag}: {}", r.all());
        assert!(r.stderr.contains(shown), "{tag}: {}", r.all());
        assert_clean(&name, CLEAN);
    }
}

#[test]
fn a_step_given_no_gpu_in_a_job_with_gpus_gets_none() {
    let _g = shared();
    let s = script("alice", "e2e-gpu-none.sh", GPU_JOB);
    let name = unique("nogpu");
    let step = format!(
        "srun -N3 -n3 --gres=none mnd-srun --container={IMAGE} --dockname={name} --envlist=SLURM_JOB_GPUS --script=./{s}"
    );
    let r = alice(&format!(
        "sbatch -N3 --gres=gpu:2 --wait -o ~/e2e-{name}.out --wrap '{step}' >/dev/null; echo sbatch-exit=$?; cat ~/e2e-{name}.out; rm -f ~/e2e-{name}.out"
    ));
    assert!(r.stdout.contains("sbatch-exit=0"), "{}", r.all());
    assert!(
        r.stdout.contains("hostlist=node1:1,node2:1,node3:1"),
        "{}",
        r.all()
    );
    for node in NODES {
        let line = node_line(&r.stdout, node);
        // `void`: not even an image's own NVIDIA_VISIBLE_DEVICES=all hands a GPU.
        assert_eq!(
            line.get("nvidia").map(String::as_str),
            Some("void"),
            "{node}: {line:?}"
        );
        assert_eq!(
            line.get("cuda").map(String::as_str),
            Some(""),
            "{node}: {line:?}"
        );
    }
    assert_clean(&name, CLEAN);
}

#[test]
fn direct_mode_gives_the_container_the_steps_gpus_and_each_task_its_own_numbering() {
    // Alone on the cluster, so which GPUs Slurm hands out is known.
    let _g = exclusive();
    // alice holds node2's GPUs 0 and 1: dave's step gets 2 and 3.
    let hid = hold_two_gpus_of_node2();
    let r = dave(&format!(
        "srun -N1 -w node2 --gres=gpu:2 -n2 --gpus-per-task=1 -l --mnd-image={IMAGE} \
         bash -c 'echo job=$SLURM_JOB_ID slurm=$SLURM_STEP_GPUS cuda=$CUDA_VISIBLE_DEVICES'"
    ));
    root_on("node1", &["scancel", &hid]);
    assert_eq!(r.code, 0, "{}", r.all());
    let job = r
        .stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("job="))
        .expect("job id")
        .to_string();
    // Docker was asked for exactly the step's GPUs on node2.
    assert_eq!(
        asked_of_docker("node2", &format!("{job}.0")),
        BTreeSet::from([2, 3])
    );
    // Each task's Slurm GPU is the container's GPU at its place among the step's.
    for (slurm, cuda) in [("2", "0"), ("3", "1")] {
        assert!(
            r.stdout.contains(&format!("slurm={slurm} cuda={cuda}")),
            "task with GPU {slurm} sees it as {cuda}: {}",
            r.all()
        );
    }
    assert_clean(&format!("mnd-dave-{job}"), CLEAN);
}
