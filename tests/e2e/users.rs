//! Real users end to end: the `~/.ssh/config` the seed's README told users to write, a zsh
//! login shell the image lacks with a home behind a symbolic link and chatty startup files,
//! checkpoint signals, a script reading srun's stdin, and an interactive shell under
//! `srun --pty` driven through a real terminal.

use crate::cluster::*;
use std::time::Duration;

/// The job script used by the ssh tests: mpirun, pdsh and plain ssh to every node, then ssh
/// to a host that is not part of the job (must keep the user's own settings).
/// Checks the first three lines `SSH_JOB` printed: mpirun, pdsh and ssh reached every node.
fn reached_every_node(r: &Run) {
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines.len() >= 3, "{}", r.all());
    assert_eq!(lines[0].trim(), "node1 node2 node3", "mpirun:\n{}", r.all());
    assert_eq!(
        lines[1].trim(),
        "node1: rank=0 node2: rank=1 node3: rank=2",
        "pdsh:\n{}",
        r.all()
    );
    assert_eq!(lines[2].trim(), "node1 node2 node3", "ssh:\n{}", r.all());
}

const SSH_JOB: &str = "#!/bin/bash\n\
mpirun -H \"$hostlist\" -np \"$np\" hostname | sort | tr '\\n' ' '; echo\n\
pdsh -w \"$(echo $hostlist | sed 's/:[0-9]*//g')\" 'echo rank=$NODE_RANK' 2>&1 | sort | tr '\\n' ' '; echo\n\
for n in $(echo $hostlist | tr ',' ' ' | sed 's/:[0-9]*//g'); do ssh $n hostname; done 2>&1 | sort | tr '\\n' ' '; echo\n\
ssh -G elsewhere.example | grep -E '^(port|stricthostkeychecking) ' | sort | tr '\\n' ' '; echo\n";

#[test]
fn the_seed_readmes_ssh_config_does_not_break_jobs() {
    let _g = shared();
    // What the seed's README told every user to write, for the cluster's node names.
    let r = alice(
        "mkdir -p ~/.ssh && chmod 700 ~/.ssh && cp -f ~/.ssh/config ~/.ssh/config.e2e-saved 2>/dev/null; \
         printf 'Host node* elsewhere.example\\n  Port 12345\\n  StrictHostKeyChecking no\\n  UserKnownHostsFile /dev/null\\n  IdentityFile ~/.ssh/id_rsa_mpi\\n' > ~/.ssh/config && chmod 600 ~/.ssh/config",
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let s = script("alice", "e2e-sshconf.sh", SSH_JOB);
    let name = unique("sshconf");
    let r = alice(&format!("{} --script=./{s}", srun_line(3, &name, "")));
    let _ =
        alice("rm -f ~/.ssh/config; mv -f ~/.ssh/config.e2e-saved ~/.ssh/config 2>/dev/null; true");
    assert_eq!(r.code, 0, "{}", r.all());
    reached_every_node(&r);
    // Any other host keeps the user's own settings.
    assert_eq!(
        r.stdout.lines().nth(3).unwrap_or_default().trim(),
        "port 12345 stricthostkeychecking false",
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn a_zsh_user_with_a_linked_home_and_chatty_startup_files_runs_jobs() {
    let _g = shared();
    let home = format!("{SHARED}/home/carol");
    for (file, text) in [
        (".zshenv", "echo hello from zshenv\n"),
        (
            ".bashrc",
            "echo welcome to the cluster\nmodule load cuda 2>/dev/null\n",
        ),
        (".profile", "echo profile says hi\n"),
    ] {
        std::fs::write(format!("{home}/{file}"), text).unwrap();
    }
    let r = root_on(
        "node1",
        &["chown", "-R", "carol:carol", "/shared/home/carol"],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let s = script(
        "carol",
        "e2e-carol.sh",
        &format!(
            "{SSH_JOB}echo shell=$(getent passwd carol | cut -d: -f7) home=$HOME pwd=$(pwd)\n"
        ),
    );
    let name = unique("carol");
    // carol starts from her home as she knows it: the link.
    let r = run_on(
        "node1",
        "carol",
        &["bash", "-c", &format!("cd /shared/home/carol-link && srun -N3 -n3 mnd-srun --container={IMAGE} --dockname={name} --script=./{s}")],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    // Her .bashrc talks on every ssh session; the job still reaches every node.
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("node1 node2 node3"),
        "mpirun:\n{}",
        r.all()
    );
    for want in ["node1: rank=0", "node2: rank=1", "node3: rank=2"] {
        assert!(lines[1].contains(want), "pdsh:\n{}", r.all());
    }
    assert!(
        lines[2].starts_with("node1 node2 node3"),
        "ssh:\n{}",
        r.all()
    );
    assert!(
        r.stdout
            .contains("shell=/bin/bash home=/shared/home/carol-link"),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn usr1_and_usr2_reach_the_script_and_the_job_ends_with_its_code() {
    let _g = shared();
    let home = format!("{SHARED}/home/alice");
    for sig in ["USR1", "USR2"] {
        let name = unique(&sig.to_lowercase());
        let (started, ckpt) = (
            format!("{home}/e2e-{name}.started"),
            format!("{home}/e2e-{name}.ckpt"),
        );
        let s = script(
            "alice",
            &format!("e2e-sig-{name}.sh"),
            &format!(
                "#!/bin/bash\ntrap 'echo step-1234 > ~/e2e-{name}.ckpt; echo checkpointed; exit 0' {sig}\n\
                 echo $MND_JOB > ~/e2e-{name}.started.tmp; mv ~/e2e-{name}.started.tmp ~/e2e-{name}.started\nwhile true; do sleep 0.2; done\n"
            ),
        );
        let job = {
            let name = name.clone();
            std::thread::spawn(move || {
                alice(&format!("{} --script=./{s}", srun_line(3, &name, "")))
            })
        };
        wait_until("the script to start", Duration::from_secs(60), || {
            std::path::Path::new(&started).exists()
        });
        // What `srun --signal=USR1@T` does at T: the signal to every task of the step.
        let step = std::fs::read_to_string(&started).unwrap();
        let r = alice(&format!("scancel --signal={sig} {}", step.trim()));
        assert_eq!(r.code, 0, "{sig}: {}", r.all());
        let r = job.join().unwrap();
        assert_eq!(r.code, 0, "{sig}: {}", r.all());
        assert!(r.stdout.contains("checkpointed"), "{sig}: {}", r.all());
        assert_eq!(
            std::fs::read_to_string(&ckpt).unwrap_or_default(),
            "step-1234\n",
            "{sig}"
        );
        assert_clean(&name, CLEAN);
    }
}

#[test]
fn the_script_reads_sruns_stdin() {
    let _g = shared();
    let s = script(
        "alice",
        "e2e-reads.sh",
        "#!/bin/bash\nwhile read -r l; do echo \"got:$l\"; done\necho eof\n",
    );
    let name = unique("stdin");
    let r = alice(&format!(
        "printf 'one\\ntwo words\\n' | {} --script=./{s}",
        srun_line(2, &name, "")
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout, "got:one\ngot:two words\neof\n", "{}", r.all());
    assert_clean(&name, CLEAN);
}

#[test]
fn an_interactive_shell_under_srun_pty_gets_a_terminal() {
    let _g = shared();
    let name = unique("pty");
    let marker = format!("e2e-{name}.sleeping");
    let s = script("alice", "e2e-shell.sh", "#!/bin/bash\nexec bash -i\n");
    // The keys a user types, each sent when the shell is ready for it; Ctrl-C interrupts
    // the foreground sleep inside the container.
    let keys = format!(
        "printf 'stty size; tty; echo answer=$((6*7))\\n'; \
         printf '(while ! pgrep -u alice -x sleep >/dev/null; do :; done; touch ~/{marker}) & sleep 300\\n'; \
         while [ ! -e ~/{marker} ]; do sleep 0.1; done; printf '\\003'; \
         printf 'echo after-interrupt; exit 3\\n'"
    );
    let session = format!(
        "rm -f ~/{marker}; ({keys}) | script -qefc 'stty rows 33 cols 111; srun -N2 -n2 --pty mnd-srun --container={IMAGE} --dockname={name} --script=./{s}' /dev/null"
    );
    let r = alice(&session);
    assert_eq!(r.code, 3, "{}", r.all());
    for want in ["33 111", "/dev/pts/", "answer=42", "after-interrupt"] {
        assert!(r.stdout.contains(want), "expected '{want}':\n{}", r.all());
    }
    assert!(
        !r.stdout.contains("cannot set terminal process group") && !r.stdout.contains("not a tty"),
        "{}",
        r.all()
    );
    assert!(
        r.took < Duration::from_secs(120),
        "Ctrl-C did not interrupt the sleep: {:?}",
        r.took
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn ten_concurrent_steps_of_a_job_and_a_second_job_get_distinct_ports() {
    let _g = shared();
    let name = unique("sweep");
    let dir = format!("e2e-{name}");
    // Every step waits until all eleven have started, so they provably run at once.
    let s = script(
        "alice",
        &format!("e2e-sweep-{name}.sh"),
        &format!(
            "#!/bin/bash\nport=$(awk '/Port/ {{print $2; exit}}' /.mnd/ssh_config)\n\
             echo \"$MND_JOB $port $MASTER_PORT\" > ~/{dir}/started.$MND_JOB\n\
             for i in $(seq 600); do [ $(ls ~/{dir} | wc -l) -ge 11 ] && break; sleep 0.1; done\n\
             [ $(ls ~/{dir} | wc -l) -ge 11 ] || {{ echo 'not all steps ran at once' >&2; exit 9; }}\n\
             mpirun -H \"$hostlist\" -np \"$np\" true && echo step-ok\n"
        ),
    );
    let r = alice(&format!("rm -rf ~/{dir}; mkdir ~/{dir}"));
    assert_eq!(r.code, 0, "{}", r.all());
    let batch = format!(
        "pids=; for i in $(seq 10); do srun --overlap -N3 -n3 mnd-srun --container={IMAGE} --dockname={name}-s$i --script=./{s} & pids=\"$pids $!\"; done; \
         f=0; for p in $pids; do wait $p || f=$((f+1)); done; exit $f"
    );
    let sweep = {
        let batch = batch.clone();
        std::thread::spawn(move || {
            alice(&format!("sbatch -N3 --wait -o ~/e2e-sweep.out --wrap '{batch}' >/dev/null; echo sbatch-exit=$?; cat ~/e2e-sweep.out"))
        })
    };
    let other = alice(&format!(
        "{} --script=./{s}",
        srun_line(3, &format!("{name}-other"), "")
    ));
    let sweep = sweep.join().unwrap();
    assert_eq!(other.code, 0, "{}", other.all());
    assert!(sweep.stdout.contains("sbatch-exit=0"), "{}", sweep.all());
    let started = alice(&format!("cat ~/{dir}/*"));
    let lines: Vec<&str> = started.stdout.lines().collect();
    assert_eq!(lines.len(), 11, "{}", started.all());
    for column in [1, 2] {
        let mut seen: Vec<&str> = lines
            .iter()
            .map(|l| l.split(' ').nth(column).unwrap())
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            11,
            "ports are not distinct (column {column}):\n{}",
            started.stdout
        );
    }
    let _ = alice(&format!("rm -rf ~/{dir}"));
    assert_clean(&name, CLEAN);
}

#[test]
fn a_node_whose_ports_are_taken_moves_to_a_free_pair() {
    let _g = shared();
    // Two pairs in all (27000/27001 and 27002/27003); bob holds 27000 on node2 and 27002 on
    // node3, so whatever pair the job prefers, one of them must move to the other.
    let policy = site_config(
        "e2e-twopairs.toml",
        "[defaults]\nssh_port_base = 27000\nssh_port_span = 4\n",
    );
    let mut holders = Vec::new();
    for (node, port) in [("node2", 27000), ("node3", 27002)] {
        let hold = format!(
            "perl -MIO::Socket::INET -e '$l = IO::Socket::INET->new(LocalPort => {port}, Listen => 5, ReuseAddr => 1) or die; sleep 600' >/dev/null 2>&1 & echo $!"
        );
        let r = run_on(node, "bob", &["bash", "-c", &hold]);
        assert_eq!(r.code, 0, "{}", r.all());
        holders.push((node, r.stdout.trim().to_string()));
        wait_until("bob's port holder", Duration::from_secs(10), || {
            root_on(
                node,
                &["sh", "-c", &format!("ss -ltn | grep -q ':{port} '")],
            )
            .code
                == 0
        });
    }
    let s = script("alice", "e2e-moved.sh", SSH_JOB);
    // As a star (node1 tells node2 and node3), and as a chain (node2 passes the ports on to
    // node3 and reports it ready again).
    let runs: Vec<(String, Run)> = ["", "--tree-width=1"]
        .iter()
        .map(|shape| {
            let name = unique("moved");
            let r = alice(&format!(
                "MND_CONFIG={policy} {} -v --script=./{s}",
                srun_line(3, &name, shape)
            ));
            (name, r)
        })
        .collect();
    for (node, pid) in &holders {
        root_on(node, &["kill", pid]);
    }
    for (name, r) in runs {
        assert_eq!(r.code, 0, "{}", r.all());
        reached_every_node(&r);
        assert!(
            r.stderr.contains("taken here; using") && r.stderr.contains("nodes on other ports"),
            "no node moved:\n{}",
            r.all()
        );
        assert_clean(&name, CLEAN);
    }
}

#[test]
fn the_readmes_torchrun_recipe_runs_one_ddp_step_over_gloo_on_three_nodes() {
    let _g = shared();
    let image = torch_image();
    let train = "import torch, torch.distributed as dist\n\
dist.init_process_group('gloo')\n\
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))\n\
model(torch.ones(8, 4)).sum().backward()\n\
grad = model.module.weight.grad.clone()\n\
dist.all_reduce(grad)\n\
print(f'rank {dist.get_rank()}/{dist.get_world_size()} grad-sum {grad.sum().item():.1f}')\n";
    std::fs::write(format!("{SHARED}/home/alice/e2e-ddp.py"), train).unwrap();
    // The README's recipe, as written there.
    let s = script(
        "alice",
        "e2e-torchrun.sh",
        "#!/bin/bash\npdsh -w \"$(echo $hostlist | sed 's/:[0-9]*//g')\" \\\n  \
         'cd '\"$PWD\"' && torchrun --nnodes=$NNODES --node_rank=$NODE_RANK --nproc_per_node=1 \\\n     \
         --master_addr=$MASTER_ADDR --master_port=$MASTER_PORT --redirects 1 --tee 1 e2e-ddp.py'\n",
    );
    let name = unique("torchrun");
    let r = alice(&format!(
        "{} --script=./{s}",
        srun_line(3, &name, "").replace(IMAGE, &image)
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    for rank in 0..3 {
        // Each rank's gradient (8 per weight, 4 weights) summed over 3 ranks.
        let want = format!("rank {rank}/3 grad-sum 96.0");
        assert!(r.stdout.contains(&want), "expected '{want}':\n{}", r.all());
    }
    assert_clean(&name, CLEAN);
}

#[test]
fn scontrol_suspend_pauses_every_container_and_resume_thaws_them() {
    let _g = shared();
    let name = unique("suspend");
    let held = HeldJob::start(&name, "");
    let id = held.id.clone();
    let r = root_on("node1", &["scontrol", "suspend", &id]);
    assert_eq!(r.code, 0, "{}", r.all());
    wait_until(
        "every node's container to be paused",
        Duration::from_secs(15),
        || every_container_is(&name, "paused"),
    );
    let r = root_on("node1", &["scontrol", "resume", &id]);
    assert_eq!(r.code, 0, "{}", r.all());
    wait_until(
        "every node's container to run again",
        Duration::from_secs(15),
        || every_container_is(&name, "running"),
    );
    let r = held.release();
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("held-job-released"), "{}", r.all());
    assert_clean(&name, CLEAN);
}
