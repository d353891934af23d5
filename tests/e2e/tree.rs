//! The fan-out tree on real nodes: with `--tree-width=1` the 3 nodes form a chain (node1
//! connects to node2 only, node2 relays for node3), so every report and order crosses a
//! relay. The job runs, failures and losses below a relay are named, and every path
//! leaves every node clean.

use crate::cluster::*;
use std::time::Duration;

const CHAIN: &str = "--tree-width=1";

#[test]
fn a_chain_runs_the_job_over_a_relay_and_stops_every_node() {
    let _g = shared();
    let name = unique("chain");
    let s = script(
        "alice",
        "e2e-tree-chain.sh",
        "#!/bin/bash\necho hostlist=$hostlist\npdsh -w \"$(echo $hostlist | sed 's/:[0-9]*//g')\" hostname | sort | tr '\\n' ' '\necho\nexit 7\n",
    );
    let r = alice(&format!(
        "{} --script=./{s}",
        srun_line(3, &name, &format!("{CHAIN} -vv"))
    ));
    assert_eq!(r.code, 7, "the script's exit code: {}", r.all());
    assert!(
        r.stdout.contains("hostlist=node1:1,node2:1,node3:1"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains("node1: node1 node2: node2 node3: node3"),
        "{}",
        r.all()
    );
    // node2 relayed for node3; node1 heard of node3 through node2 only.
    assert!(
        r.stderr.contains("node3 and the 0 node(s) below it ready"),
        "{}",
        r.all()
    );
    assert!(
        r.stderr.contains("node2 and the 1 node(s) below it ready"),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn a_node_missing_the_image_below_a_relay_is_named() {
    let _g = shared();
    let tag = "mnd-vc-job:tree-two";
    for n in ["node1", "node2"] {
        assert_eq!(root_on(n, &["docker", "tag", IMAGE, tag]).code, 0);
    }
    let _ = root_on("node3", &["docker", "rmi", tag]);
    let s = script("alice", "e2e-true.sh", "#!/bin/sh\ntrue\n");
    let name = unique("tree-noimg");
    let r = alice(&format!(
        "srun -N3 -n3 mnd-srun --container={tag} --dockname={name} {CHAIN} --image-share=off --script=./{s}"
    ));
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr
            .contains(&format!("node node3: image '{tag}' is not available")),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

/// Starts a chained job whose script runs long, SIGKILLs the launcher on `victim` once the
/// script runs, and checks the job fails naming `named` and leaves every node clean.
fn lose_a_launcher(tag: &str, victim: &str, named: &str) {
    let name = unique(tag);
    let marker = format!("e2e-{name}.started");
    let s = script(
        "alice",
        &format!("e2e-tree-{tag}.sh"),
        &format!("#!/bin/bash\ntouch ~/{marker}\nsleep 600\n"),
    );
    let cmd = format!("{} --script=./{s}", srun_line(3, &name, CHAIN));
    let job = std::thread::spawn(move || alice(&cmd));
    let m = format!("{SHARED}/home/alice/{marker}");
    wait_until("the script to start", Duration::from_secs(90), || {
        std::path::Path::new(&m).exists()
    });
    // Slurm runs the launcher by its full path (srun itself, on node1, by the bare name).
    let pattern = format!("/mnd-srun .*--dockname={name} ");
    assert_eq!(root_on(victim, &["pkill", "-KILL", "-f", &pattern]).code, 0);
    let r = job.join().unwrap();
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains(&format!(
            "node {named}: its launcher went away while the script ran"
        )),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
    for n in NODES {
        assert_eq!(stray_sshd(n, "alice"), 0, "stray sshd of alice on {n}");
    }
}

#[test]
fn a_leaf_lost_below_a_relay_is_named_and_the_job_ends() {
    let _g = shared();
    lose_a_launcher("tree-leaf", "node3", "node3");
}

#[test]
fn a_lost_relay_is_named_and_the_node_below_it_cleans_up() {
    let _g = shared();
    lose_a_launcher("tree-relay", "node2", "node2");
}

#[test]
fn hosts_mode_relays_over_a_chain_too() {
    let _g = shared();
    let name = unique("tree-hosts");
    let s = script(
        "bob",
        "e2e-tree-hosts.sh",
        "#!/bin/bash\nmpirun -H \"$hostlist\" -np \"$np\" hostname | sort | tr '\\n' ' '\necho\nexit 5\n",
    );
    let r = crate::hosts::bob_on(
        "node1",
        &format!(
            "mnd-srun --hosts 'node[1-3]' --container={IMAGE} --dockname={name} {CHAIN} -vv --script=./{s}"
        ),
    );
    assert_eq!(r.code, 5, "the script's exit code: {}", r.all());
    assert!(r.stdout.contains("node1 node2 node3"), "{}", r.all());
    assert!(
        r.stderr.contains("node2 and the 1 node(s) below it ready"),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
    for n in NODES {
        assert_eq!(stray_sshd(n, "bob"), 0, "stray sshd of bob on {n}");
    }
}
