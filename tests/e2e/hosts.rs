//! Hosts mode: the same jobs without Slurm, started by `mnd-srun --hosts`/`--hostfile` over
//! the user's own ssh (bob's key; every node runs a host sshd). The front door runs on node1
//! (one of the hosts) or on node3 (not one of them).

use crate::cluster::*;
use std::time::Duration;

/// Runs a shell command line on `node` as bob, with no Slurm variable in sight.
pub(crate) fn bob_on(node: &str, cmdline: &str) -> Run {
    run_on(
        node,
        "bob",
        &["env", "-u", "SLURM_JOB_ID", "bash", "-c", cmdline],
    )
}

/// A script that says where it runs and what it got, runs mpirun and mpi4py on every slot,
/// and exits 4.
fn mpi_script() -> String {
    script(
        "bob",
        "e2e-hosts-mpi.sh",
        "#!/bin/bash\necho \"hostlist=$hostlist np=$np NNODES=$NNODES MASTER_ADDR=$MASTER_ADDR nccl=$NCCL_SOCKET_IFNAME gloo=$GLOO_SOCKET_IFNAME slurm=$(env | grep -c ^SLURM_)\"\n\
         mpirun -H \"$hostlist\" -np \"$np\" hostname | sort | sed 's/^/rank-on /'\n\
         mpirun -H \"$hostlist\" -np \"$np\" python3 -c 'from mpi4py import MPI; c = MPI.COMM_WORLD; print(\"sum\", c.allreduce(c.rank + 1))' | sort -u\n\
         exit 4\n",
    )
}

fn no_stray_sshd() {
    for node in NODES {
        assert_eq!(stray_sshd(node, "bob"), 0, "sshd left on {node}");
    }
}

#[test]
fn mpirun_and_mpi4py_across_three_hosts_without_slurm() {
    let _g = shared();
    let name = unique("hosts3");
    let s = mpi_script();
    let r = bob_on(
        "node1",
        &format!(
            "mnd-srun --hosts 'node[1-3]' --container={IMAGE} --dockname={name} \
             --nccl-socket-ifname=eth0 --gloo-socket-ifname=eth0 --script=./{s}"
        ),
    );
    assert_eq!(r.code, 4, "the script's exit code: {}", r.all());
    assert!(
        r.stdout.contains(
            "node1: hostlist=node1:1,node2:1,node3:1 np=3 NNODES=3 MASTER_ADDR=node1 nccl=eth0 gloo=eth0 slurm=0"
        ),
        "{}",
        r.all()
    );
    for node in NODES {
        assert!(
            r.stdout.contains(&format!("node1: rank-on {node}")),
            "{}",
            r.all()
        );
    }
    assert!(r.stdout.contains("node1: sum 6"), "{}", r.all());
    // The per-host summary: every host, its exit.
    for (node, code) in [("node1", "4"), ("node2", "0"), ("node3", "0")] {
        assert!(
            r.stderr
                .lines()
                .any(|l| l.starts_with(&format!("mnd-srun: {node} "))
                    && l.split_whitespace().nth(2) == Some(code)),
            "summary line of {node}: {}",
            r.all()
        );
    }
    assert_clean(&name, CLEAN);
    no_stray_sshd();
}

#[test]
fn from_a_machine_that_is_not_a_host_with_a_hostfile_of_comments_and_slots() {
    let _g = shared();
    let name = unique("hostfile");
    let s = mpi_script();
    let file = script(
        "bob",
        "e2e-nodes.txt",
        "# the two servers of this test\nnode1 slots=2\n\nnode2:1   # the small one\n",
    );
    let r = bob_on(
        "node3",
        &format!(
            "mnd-srun --hostfile={file} --container={IMAGE} --dockname={name} --master-addr=node2 --script=./{s}"
        ),
    );
    assert_eq!(r.code, 4, "{}", r.all());
    assert!(
        r.stdout
            .contains("node1: hostlist=node1:2,node2:1 np=3 NNODES=2 MASTER_ADDR=node2"),
        "{}",
        r.all()
    );
    assert_eq!(
        r.stdout.matches("node1: rank-on node1").count(),
        2,
        "{}",
        r.all()
    );
    assert_eq!(
        r.stdout.matches("node1: rank-on node2").count(),
        1,
        "{}",
        r.all()
    );
    assert!(
        !r.all().contains("node3:"),
        "node3 only started the job: {}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn an_unreachable_host_is_named_before_anything_starts() {
    let _g = shared();
    let name = unique("unreach");
    let s = mpi_script();
    let r = bob_on(
        "node1",
        &format!("mnd-srun --hosts node1,node2,node9 --container={IMAGE} --dockname={name} --script=./{s}"),
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("1 of 3 hosts cannot run the job; nothing was started")
            && r.stderr.contains("node9: ssh failed:"),
        "{}",
        r.all()
    );
    assert!(!r.stdout.contains("hostlist="), "nothing ran: {}", r.all());
    assert_clean(&name, CLEAN);
}

#[test]
fn a_host_whose_docker_lacks_the_image_is_named() {
    let _g = shared();
    let name = unique("hostimg");
    let tag = "mnd-vc-job:hosts-only-two";
    root_on("node3", &["docker", "rmi", tag]);
    for node in ["node1", "node2"] {
        assert_eq!(root_on(node, &["docker", "tag", IMAGE, tag]).code, 0);
    }
    let s = mpi_script();
    let r = bob_on(
        "node1",
        &format!("mnd-srun --hosts 'node[1-3]' --container={tag} --dockname={name} --pull=never --image-share=off --script=./{s}"),
    );
    for node in NODES {
        root_on(node, &["docker", "rmi", tag]);
    }
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("node3") && r.stderr.contains(tag),
        "{}",
        r.all()
    );
    assert!(
        !r.stdout.contains("hostlist="),
        "the script never ran: {}",
        r.all()
    );
    assert_clean(&name, CLEAN);
    no_stray_sshd();
}

/// A 3-host job of bob whose script holds; returns once the script runs, with the thread
/// that ends with the front door's result.
fn held_hosts_job(name: &str) -> std::thread::JoinHandle<Run> {
    let started = format!("{SHARED}/home/bob/e2e-{name}.started");
    let s = script(
        "bob",
        &format!("e2e-hosts-{name}.sh"),
        &format!("#!/bin/bash\ntouch ~/e2e-{name}.started\nsleep 300\n"),
    );
    let line = format!(
        "mnd-srun --hosts 'node[1-3]' --container={IMAGE} --dockname={name} --script=./{s}"
    );
    let job = std::thread::spawn(move || bob_on("node1", &line));
    wait_until("the script to start", Duration::from_secs(120), || {
        std::path::Path::new(&started).exists() || job.is_finished()
    });
    if job.is_finished() {
        let r = job.join().unwrap();
        panic!("the job ended before its script started: {}", r.all());
    }
    let _ = std::fs::remove_file(&started);
    job
}

#[test]
fn ctrl_c_twice_mid_run_ends_the_job_everywhere() {
    let _g = shared();
    let name = unique("hostsint");
    let job = held_hosts_job(&name);
    let pattern = format!("^mnd-srun --hosts .*--dockname={name} ");
    for _ in 0..2 {
        root_on("node1", &["pkill", "-INT", "-f", &pattern]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = job.join().unwrap();
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("interrupt"), "{}", r.all());
    assert_clean(&name, CLEAN);
    no_stray_sshd();
}

#[test]
fn each_hosts_output_keeps_its_order_and_a_time_limit_ends_the_job() {
    let _g = shared();
    let name = unique("hostsorder");
    let s = script(
        "bob",
        "e2e-hosts-order.sh",
        "#!/bin/bash\nfor i in $(seq 1 300); do echo line-$i; done\npdsh -w \"$(echo $hostlist | sed 's/:[0-9]*//g')\" 'echo from-$(hostname)' | sort\nsleep 300\n",
    );
    let r = bob_on(
        "node1",
        &format!("mnd-srun --hosts 'node[1-3]' --container={IMAGE} --dockname={name} --time-limit=8 --script=./{s}"),
    );
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("time limit of 8 s reached"),
        "{}",
        r.all()
    );
    let lines: Vec<u32> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("node1: line-"))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        lines,
        (1..=300).collect::<Vec<_>>(),
        "node1's lines in order"
    );
    for node in NODES {
        assert!(
            r.stdout.contains(&format!("node1: {node}: from-{node}")),
            "{}",
            r.all()
        );
    }
    assert_clean(&name, CLEAN);
    no_stray_sshd();
}

#[test]
fn a_lost_connection_to_one_host_ends_the_job_everywhere() {
    let _g = shared();
    let name = unique("hostslost");
    let job = held_hosts_job(&name);
    // The front door's ssh connection to node2 dies (as when the network or node2 fails).
    let pattern = format!("^ssh .* node2 cd .*--dockname={name} ");
    let killed = root_on("node1", &["pkill", "-KILL", "-f", &pattern]);
    assert_eq!(killed.code, 0, "no ssh to node2: {}", killed.all());
    let r = job.join().unwrap();
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("node2"),
        "the lost host is named: {}",
        r.all()
    );
    assert_clean(&name, CLEAN);
    no_stray_sshd();
}

#[test]
fn ps_exec_and_logs_reach_a_hosts_mode_job_over_ssh() {
    let _g = shared();
    let name = unique("hoststools");
    let job = held_hosts_job(&name);
    let hosts = "--hosts 'node[1-3]'";
    let ps = bob_on("node3", &format!("mnd ps {hosts}"));
    assert_eq!(ps.code, 0, "{}", ps.all());
    let rows: Vec<&str> = ps.stdout.lines().filter(|l| l.contains(&name)).collect();
    assert_eq!(rows.len(), 3, "one container per host: {}", ps.all());
    let id = rows[0]
        .split_whitespace()
        .nth(1)
        .expect("job column")
        .to_string();
    for node in NODES {
        assert!(
            rows.iter().any(|r| r.starts_with(node)),
            "{node}: {}",
            ps.all()
        );
    }
    let one = bob_on(
        "node3",
        &format!("mnd exec {hosts} --job {id} --node node2 -- sh -c 'hostname; id -un'"),
    );
    assert_eq!(one.code, 0, "{}", one.all());
    assert_eq!(
        one.stdout.split_whitespace().collect::<Vec<_>>(),
        ["node2", "bob"],
        "{}",
        one.all()
    );
    let all = bob_on(
        "node3",
        &format!("mnd exec {hosts} --job {id} --all -- hostname"),
    );
    assert_eq!(all.code, 0, "{}", all.all());
    for node in NODES {
        assert!(
            all.stdout.contains(&format!("{node}: {node}")),
            "{}",
            all.all()
        );
    }
    let logs = bob_on(
        "node3",
        &format!("mnd logs {hosts} --job {id} --node node2"),
    );
    assert_eq!(logs.code, 0, "{}", logs.all());
    let pattern = format!("^mnd-srun --hosts .*--dockname={name} ");
    for _ in 0..2 {
        root_on("node1", &["pkill", "-INT", "-f", &pattern]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = job.join().unwrap();
    assert!(
        r.stderr.contains(&format!("mnd-srun: job {id} on 3 hosts")),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn sigterm_to_the_front_door_ends_the_job_everywhere() {
    let _g = shared();
    let name = unique("hoststerm");
    let job = held_hosts_job(&name);
    let pattern = format!("^mnd-srun --hosts .*--dockname={name} ");
    root_on("node1", &["pkill", "-TERM", "-f", &pattern]);
    let r = job.join().unwrap();
    assert_ne!(r.code, 0, "{}", r.all());
    for node in NODES {
        assert!(
            r.stderr
                .lines()
                .any(|l| l.starts_with(&format!("mnd-srun: {node} "))),
            "summary line of {node}: {}",
            r.all()
        );
    }
    assert_clean(&name, CLEAN);
    no_stray_sshd();
}
