//! Job-wide tools end to end: `mnd ps`, `mnd exec` and `mnd logs` across a running job's
//! nodes (through `srun --jobid --overlap`), for the job's owner only.

use crate::cluster::*;

#[test]
fn ps_exec_and_logs_reach_every_node_of_a_running_job_for_its_owner_only() {
    let _g = shared();
    let name = unique("tools");
    let held = HeldJob::start(&name, "");
    let id = held.id.clone();
    let ps = alice(&format!("mnd ps --job {id}"));
    let exec2 = alice(&format!("mnd exec --job {id} --node node2 -- sh -c 'echo on=$(hostname) as=$(id -un) mpi=$(command -v mpirun)'"));
    let exec_all = alice(&format!("mnd exec --job {id} --all -- hostname"));
    let code = alice(&format!(
        "mnd exec --job {id} --node node3 -- sh -c 'exit 7'"
    ));
    let logs = alice(&format!("mnd logs --job {id} --node node2"));
    let bob = run_on(
        "node1",
        "bob",
        &[
            "bash",
            "-c",
            &format!("mnd exec --job {id} --node node2 -- id"),
        ],
    );
    let mine = alice("mnd ps");
    let r = held.release();
    assert_eq!(r.code, 0, "{}", r.all());

    assert_eq!(ps.code, 0, "{}", ps.all());
    assert!(ps.stdout.starts_with("NODE "), "{}", ps.all());
    for node in NODES {
        let row = ps
            .stdout
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("no row for {node}:\n{}", ps.stdout));
        assert!(
            row.contains(&id)
                && row.contains("alice")
                && row.contains(IMAGE)
                && row.contains("running"),
            "{row}"
        );
    }
    assert_eq!(exec2.code, 0, "{}", exec2.all());
    assert!(
        exec2
            .stdout
            .contains("on=node2 as=alice mpi=/usr/bin/mpirun"),
        "{}",
        exec2.all()
    );
    let mut hosts: Vec<&str> = exec_all.stdout.lines().collect();
    hosts.sort();
    assert_eq!(
        hosts,
        ["0: node1", "1: node2", "2: node3"],
        "{}",
        exec_all.all()
    );
    assert_eq!(code.code, 7, "the command's exit code: {}", code.all());
    assert_eq!(logs.code, 0, "{}", logs.all());
    assert_ne!(bob.code, 0, "bob reached alice's container: {}", bob.all());
    assert!(!bob.stdout.contains("uid="), "{}", bob.all());
    assert!(
        mine.stdout.lines().filter(|l| l.contains(&name)).count() == 3,
        "{}",
        mine.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn a_node_whose_tag_points_to_another_image_is_named_and_nothing_runs() {
    let _g = shared();
    // node1 and node2 have mnd-vc-job:drift as the job image; node3 has another image under
    // the same tag (built there later, say).
    let tag = format!("mnd-vc-job:drift{}", std::process::id());
    for node in ["node1", "node2"] {
        let r = root_on(node, &["docker", "tag", IMAGE, &tag]);
        assert_eq!(r.code, 0, "{}", r.all());
    }
    let other = format!(
        "docker rm -f mk-drift >/dev/null 2>&1; docker run --network=none --name mk-drift {IMAGE} touch /rebuilt >/dev/null && \
         docker commit mk-drift {tag} >/dev/null && docker rm mk-drift >/dev/null"
    );
    let r = root_on("node3", &["sh", "-c", &other]);
    assert_eq!(r.code, 0, "{}", r.all());
    let s = script("alice", "e2e-drift.sh", "#!/bin/sh\necho ran-anyway\n");
    let name = unique("drift");
    let r = alice(&format!(
        "{} --pull=never --script=./{s}",
        srun_line(3, &name, "").replace(IMAGE, &tag)
    ));
    for node in NODES {
        root_on(node, &["docker", "rmi", &tag]);
    }
    assert_eq!(r.code, 125, "{}", r.all());
    assert!(!r.stdout.contains("ran-anyway"), "{}", r.all());
    assert!(
        r.stderr.contains("node3")
            && r.stderr
                .contains("points to different images on different nodes"),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn mnd_commit_saves_a_running_jobs_container_for_the_next_job_on_any_node() {
    let _g = shared();
    let name = unique("commit");
    let dir = format!("/shared/home/alice/.mnd/images-{name}");
    let image = format!("mnd-vc-job:committed-{}", std::process::id());
    let held = HeldJob::start(&name, "");
    let id = held.id.clone();
    let marked = alice(&format!(
        "mnd exec --job {id} --node node2 -- sh -c 'echo from-the-commit > /tmp/committed-marker'"
    ));
    assert_eq!(marked.code, 0, "{}", marked.all());
    // bob cannot commit alice's job.
    let refused = run_on(
        "node1",
        "bob",
        &[
            "mnd",
            "commit",
            "--job",
            &id,
            "--node",
            "node2",
            "mnd-vc-job:stolen",
        ],
    );
    assert_ne!(refused.code, 0, "{}", refused.all());
    let made = alice(&format!(
        "mnd commit --job {id} --node node2 --image-cache={dir} {image}"
    ));
    assert_eq!(made.code, 0, "{}", made.all());
    assert!(
        made.stdout.starts_with(&format!("{image} sha256:")),
        "{}",
        made.all()
    );
    assert_eq!(held.release().code, 0);
    // The next job starts from it on all three nodes: node1 and node3 load it from the share.
    let s = script(
        "alice",
        "e2e-from-commit.sh",
        "#!/bin/bash\npdsh -w \"$(echo $hostlist | sed 's/:[0-9]*//g')\" 'cat /tmp/committed-marker' | sort\n",
    );
    let next = unique("fromcommit");
    let r = alice(&format!(
        "{} --image-cache={dir} --script=./{s}",
        srun_line(3, &next, "").replace(IMAGE, &image)
    ));
    for n in NODES {
        root_on(n, &["docker", "rmi", &image]);
    }
    root_on("node1", &["rm", "-rf", &dir]);
    assert_eq!(r.code, 0, "{}", r.all());
    for n in NODES {
        assert!(
            r.stdout.contains(&format!("{n}: from-the-commit")),
            "{}",
            r.all()
        );
    }
    assert_clean(&next, CLEAN);
}
