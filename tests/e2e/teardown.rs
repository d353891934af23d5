//! No container left behind on any path. Each test ends with no container of its job on
//! any node and no stray sshd, and prints how long the node took to be clean.

use crate::cluster::*;
use std::time::{Duration, Instant};

fn started_marker(name: &str) -> String {
    format!("{SHARED}/home/alice/e2e-{name}.started")
}

/// A script that says it started, then runs for a long time.
fn long_script(name: &str) -> String {
    let _ = std::fs::remove_file(started_marker(name));
    script(
        "alice",
        &format!("e2e-long-{name}.sh"),
        &format!("#!/bin/bash\ntouch ~/e2e-{name}.started\nsleep 600\n"),
    )
}

fn wait_started(name: &str) {
    let m = started_marker(name);
    wait_until("the script to start", Duration::from_secs(90), || {
        std::path::Path::new(&m).exists()
    });
}

/// Submits `srun_cmd` with sbatch and returns the job id.
fn sbatch(name: &str, extra: &str, srun_cmd: &str) -> String {
    let r = alice(&format!(
        "sbatch --parsable -N3 {extra} -o e2e-{name}.out --wrap \"{srun_cmd}\""
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    r.stdout.trim().to_string()
}

/// Submits a 3-node job whose script runs for a long time, and waits until it runs;
/// returns the container name prefix and the job id.
fn start_long_job(tag: &str, sbatch_flags: &str) -> (String, String) {
    let name = unique(tag);
    let s = long_script(&name);
    let id = sbatch(
        &name,
        sbatch_flags,
        &format!("{} --script=./{s}", srun_line(3, &name, "")),
    );
    wait_started(&name);
    (name, id)
}

/// Asserts every node is clean; prints and returns the time since `since`.
fn report_clean(path: &str, name: &str, since: Instant) -> Duration {
    assert_clean(name, CLEAN);
    for n in NODES {
        assert_eq!(
            stray_sshd(n, "alice"),
            0,
            "{path}: stray sshd of alice on {n}"
        );
    }
    let d = since.elapsed();
    println!(
        "teardown path '{path}': every node clean {:.2} s after the event",
        d.as_secs_f64()
    );
    d
}

#[test]
fn normal_end_and_non_zero_exit() {
    let _g = shared();
    for (code, tag) in [(0, "normal"), (3, "nonzero")] {
        let s = script(
            "alice",
            &format!("e2e-exit{code}.sh"),
            &format!("#!/bin/sh\nexit {code}\n"),
        );
        let name = unique(tag);
        let r = alice(&format!("{} --script=./{s}", srun_line(3, &name, "")));
        assert_eq!(r.code, code, "{}", r.all());
        report_clean(tag, &name, Instant::now());
    }
}

#[test]
fn every_process_of_the_job_is_gone_when_srun_returns() {
    let _g = shared();
    let name = unique("procs-gone");
    let seconds = 3000 + std::process::id() % 1000;
    // Every node's container is left with a detached sleeper, each started and seen
    // (its marker in the shared home) before the script ends.
    let s = script(
        "alice",
        &format!("e2e-{name}.sh"),
        &format!(
            "#!/bin/bash\nfor h in $(echo \"$hostlist\" | tr ',' ' '); do h=${{h%%:*}}\n\
             ssh \"$h\" 'nohup sh -c \"touch ~/e2e-{name}.\\$(hostname); exec sleep {seconds}\" >/dev/null 2>&1 </dev/null &'\n\
             done\nfor i in $(seq 300); do [ $(ls ~/e2e-{name}.node* 2>/dev/null | wc -l) = 3 ] && exit 0; sleep 0.1; done\nexit 9\n"
        ),
    );
    let r = alice(&format!("{} --script=./{s}", srun_line(3, &name, "")));
    // At once, no wait: the launcher returns only once its container's processes are gone.
    let left: Vec<String> = NODES
        .iter()
        .filter(|n| {
            root_on(
                n,
                &["pgrep", "-u", "alice", "-f", &format!("^sleep {seconds}$")],
            )
            .code
                == 0
        })
        .map(|n| n.to_string())
        .collect();
    let _ = alice(&format!("rm -f ~/e2e-{name}.node*"));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        left.is_empty(),
        "the job's sleepers outlived srun on {left:?}"
    );
    report_clean("processes gone at srun's return", &name, Instant::now());
}

#[test]
fn scancel_of_a_suspended_job() {
    let _g = shared();
    let (name, id) = start_long_job("susp-cancel", "");
    assert_eq!(root_on("node1", &["scontrol", "suspend", &id]).code, 0);
    wait_until(
        "every container to be paused",
        Duration::from_secs(15),
        || every_container_is(&name, "paused"),
    );
    let t = Instant::now();
    assert_eq!(alice(&format!("scancel {id}")).code, 0);
    report_clean("scancel of a suspended job", &name, t);
}

#[test]
fn scancel_before_all_workers_are_ready() {
    let _g = shared();
    let name = unique("early-cancel");
    let s = long_script(&name);
    // node3's launcher starts 60 s late, so node1 and node2 sit waiting for it.
    let id = sbatch(
        &name,
        "",
        &format!("srun -N3 -n3 bash -c 'if [ \\$SLURM_NODEID = 2 ]; then sleep 60; fi; exec mnd-srun --container={IMAGE} --dockname={name} --script=./{s}'"),
    );
    wait_until(
        "containers on node1 and node2",
        Duration::from_secs(60),
        || !containers("node1", &name).is_empty() && !containers("node2", &name).is_empty(),
    );
    let t = Instant::now();
    assert_eq!(alice(&format!("scancel {id}")).code, 0);
    report_clean("scancel before workers ready", &name, t);
}

#[test]
fn scancel_while_the_script_runs() {
    let _g = shared();
    let (name, id) = start_long_job("cancel", "");
    let t = Instant::now();
    assert_eq!(alice(&format!("scancel {id}")).code, 0);
    report_clean("scancel while the script runs", &name, t);
    wait_until(
        "the job to leave the queue",
        Duration::from_secs(60),
        || job_gone(&id),
    );
}

#[test]
fn time_limit() {
    let _g = shared();
    let (name, id) = start_long_job("timelimit", "--time=1");
    wait_until(
        "Slurm to end the job at its time limit",
        Duration::from_secs(240),
        || job_gone(&id),
    );
    let t = Instant::now();
    report_clean("time limit", &name, t);
}

/// Runs srun in the foreground (as a user at a terminal would) and signals it.
fn signal_srun(tag: &str, signals: &[&str]) {
    let name = unique(tag);
    let s = long_script(&name);
    let cmd = format!("{} --script=./{s}", srun_line(3, &name, ""));
    let job = std::thread::spawn(move || alice(&cmd));
    wait_started(&name);
    let t = Instant::now();
    for sig in signals {
        root_on(
            "node1",
            &[
                "pkill",
                &format!("-{sig}"),
                "-f",
                &format!("^srun .*--dockname={name} "),
            ],
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = job.join().unwrap();
    assert_ne!(r.code, 0, "{}", r.all());
    report_clean(tag, &name, t);
}

#[test]
fn ctrl_c_twice_on_srun() {
    let _g = shared();
    signal_srun("ctrl-c", &["INT", "INT"]);
}

#[test]
fn srun_itself_killed_with_sigterm() {
    let _g = shared();
    signal_srun("srun-term", &["TERM"]);
}

#[test]
fn every_launcher_sigkilled_then_the_job_cancelled() {
    let _g = shared();
    let (name, id) = start_long_job("sigkill", "");
    let t = Instant::now();
    for n in NODES {
        root_on(
            n,
            &[
                "pkill",
                "-KILL",
                "-f",
                &format!("^mnd-srun .*--dockname={name} "),
            ],
        );
    }
    assert_eq!(alice(&format!("scancel {id}")).code, 0);
    report_clean("every launcher SIGKILLed, then scancel", &name, t);
}

#[test]
fn a_nodes_dockerd_restarted_mid_job() {
    let _g = exclusive();
    let name = unique("dockerd");
    let s = long_script(&name);
    let cmd = format!("{} --script=./{s}", srun_line(3, &name, ""));
    let job = std::thread::spawn(move || alice(&cmd));
    wait_started(&name);
    let t = Instant::now();
    root_on("node2", &["pkill", "-TERM", "-x", "dockerd"]);
    wait_until("dockerd on node2 to stop", Duration::from_secs(30), || {
        root_on("node2", &["pgrep", "-x", "dockerd"]).code != 0
    });
    // Bring the node back the way the cluster script does (it restarts what is not running).
    vcluster(&["up", "3"], &[]);
    let r = job.join().unwrap();
    assert_ne!(
        r.code,
        0,
        "the job should fail when a node's engine goes away: {}",
        r.all()
    );
    assert!(
        r.stderr.contains("node2"),
        "the failure should name node2: {}",
        r.all()
    );
    report_clean("dockerd restarted on node2", &name, t);
}
