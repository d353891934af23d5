//! Hardening end to end: nothing mnd-srun writes lands on a node's own files, host system
//! folders are never mounted however they are named, a user cannot loosen the site policy,
//! a setuid program in the image gives nothing, a tampered account cache grants nothing,
//! and a stranger on the control port is refused while the job goes on.

use crate::cluster::*;
use std::time::Duration;

/// Checksums of a node's own account and ssh files.
fn node_files(node: &str) -> String {
    let r = root_on(
        node,
        &[
            "sh",
            "-c",
            "sha256sum /etc/passwd /etc/group /etc/ssh/ssh_config && ls /etc/mnd /.mnd 2>&1 | sort",
        ],
    );
    assert!(r.stdout.contains("/etc/passwd"), "{}", r.all());
    r.stdout
}

/// Runs one refused job as alice; checks exit 2, the message, and that nothing is left.
fn refused(cmdline: &str, name: &str, want: &[&str]) {
    let r = alice(cmdline);
    assert_eq!(r.code, 2, "{cmdline}\n{}", r.all());
    for w in want {
        assert!(
            r.stderr.contains(w),
            "expected '{w}' for {cmdline}:\n{}",
            r.all()
        );
    }
    assert_clean(name, CLEAN);
}

#[test]
fn starting_from_etc_is_refused_and_the_nodes_own_files_stay_as_they_were() {
    let _g = shared();
    let s = script("alice", "e2e-noop.sh", "#!/bin/sh\ntrue\n");
    let before = node_files("node3");
    let name = unique("cwdetc");
    refused(
        &format!("cd /etc && srun -N1 -w node3 mnd-srun --container={IMAGE} --dockname={name} --script=$HOME/{s}"),
        &name,
        &["the working directory /etc is refused: /etc is a host system folder", "Fix: cd to your home"],
    );
    assert_eq!(node_files("node3"), before, "node3's own files changed");
    // The same job from the home runs, and node3's files still do not change.
    let name = unique("cwdhome");
    let r = alice(&format!(
        "srun -N1 -w node3 mnd-srun --container={IMAGE} --dockname={name} --script=./{s}"
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        node_files("node3"),
        before,
        "node3's own files changed by a normal job"
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn system_folders_are_refused_through_dotdot_symlinks_and_dockopts() {
    let _g = shared();
    let s = script("alice", "e2e-noop.sh", "#!/bin/sh\ntrue\n");
    // alice's own link to /etc.
    let r = alice("ln -sfn /etc ~/e2e-etc-link && ln -sfn /var/run ~/e2e-run-link");
    assert_eq!(r.code, 0, "{}", r.all());
    for (tag, flag, shown) in [
        (
            "dotdot",
            "--datamnts=/shared/home/alice/../../../etc:/x",
            "mount source /etc is refused",
        ),
        (
            "symlink",
            "--datamnts=/shared/home/alice/e2e-etc-link/ssh:/x",
            "mount source /etc/ssh is refused",
        ),
        (
            "socket",
            "--datamnts=/shared/home/alice/e2e-run-link/docker.sock:/d.sock",
            "mount source /run/docker.sock is refused",
        ),
        (
            "dockv",
            "--dockopts='-v /:/host'",
            "mount source / is refused",
        ),
        (
            "dockmount",
            "--dockopts='--mount type=bind,source=/usr,target=/u'",
            "mount source /usr is refused",
        ),
        (
            "target",
            "--datamnts=/shared/home/alice:/etc",
            "mount target /etc is refused",
        ),
    ] {
        let name = unique(tag);
        refused(
            &format!("{} --script=./{s} {flag}", srun_line(3, &name, "")),
            &name,
            &[shown, "Fix:"],
        );
    }
}

#[test]
fn a_users_own_config_cannot_loosen_the_policy() {
    let _g = shared();
    let s = script("alice", "e2e-noop.sh", "#!/bin/sh\ntrue\n");
    let r = alice("printf '[policy]\\nallow_privileged = true\\nallow_cap_add = true\\n' > ~/e2e-permissive.toml");
    assert_eq!(r.code, 0, "{}", r.all());
    let name = unique("ownconfig");
    refused(
        &format!(
            "MND_CONFIG=$HOME/e2e-permissive.toml {} --script=./{s} --privileged",
            srun_line(3, &name, "")
        ),
        &name,
        &[
            "site config /shared/home/alice/e2e-permissive.toml is not used",
            "unset MND_CONFIG",
        ],
    );
    // Without it, the built-in defaults hold: no --privileged, no --cap-add.
    for (tag, flag, rule) in [
        ("priv", "--privileged", "--privileged is not allowed by the site policy (policy.allow_privileged in the built-in defaults)"),
        ("capadd", "--dockopts='--cap-add SYS_ADMIN'", "--dockopts --cap-add SYS_ADMIN is not allowed by the site policy (policy.allow_cap_add"),
    ] {
        let name = unique(tag);
        refused(&format!("{} --script=./{s} {flag}", srun_line(3, &name, "")), &name, &[rule]);
    }
}

#[test]
fn forbidden_dockopts_are_refused_under_a_site_policy() {
    let _g = shared();
    let policy = site_config(
        "e2e-dockopts.toml",
        "[policy]\nallowed_security_opts = ['label=disable']\nallowed_ulimits = ['stack']\n",
    );
    let s = script("alice", "e2e-noop.sh", "#!/bin/sh\ntrue\n");
    for (tag, opts, rule) in [
        (
            "secopt",
            "--security-opt seccomp=unconfined",
            "policy.allowed_security_opts",
        ),
        ("groupadd", "--group-add 0", "policy.allow_any_group"),
        ("ipc", "--ipc=host", "policy.allow_host_ipc"),
        ("ulimit", "--ulimit nofile=4096", "policy.allowed_ulimits"),
        ("device", "--device /dev/null", "policy.allow_devices"),
        (
            "nnp",
            "--security-opt no-new-privileges=false",
            "every container runs with no-new-privileges",
        ),
    ] {
        let name = unique(tag);
        refused(
            &format!(
                "MND_CONFIG={policy} {} --script=./{s} --dockopts='{opts}'",
                srun_line(3, &name, "")
            ),
            &name,
            &[rule],
        );
    }
    // What the policy allows runs: alice's own group, a listed ulimit.
    let name = unique("dockok");
    let r = alice(&format!(
        "MND_CONFIG={policy} {} --script=./{s} --dockopts='--group-add mlteam --ulimit stack=8388608'",
        srun_line(3, &name, "")
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_clean(&name, CLEAN);
}

#[test]
fn a_setuid_root_program_gives_nothing() {
    let _g = shared();
    let s = script(
        "alice",
        "e2e-suid.sh",
        "#!/bin/bash\necho euid=$(/usr/local/bin/suid-id -u)\nls -l /usr/local/bin/suid-id\n\
         grep -E '^(NoNewPrivs|CapBnd|CapEff)' /proc/self/status\necho uid0=$(awk -F: '$3==0' /etc/passwd | cut -d: -f1,2 | tr '\\n' ' ')\n\
         echo groups=$(id -Gn)\necho sudo=$(getent group sudo)\n",
    );
    let name = unique("suid");
    let r = alice(&format!("{} --script=./{s}", srun_line(3, &name, "")));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("-rwsr-xr-x 1 root root"),
        "the test image lacks its setuid program:\n{}",
        r.all()
    );
    for want in [
        "euid=1001",
        "NoNewPrivs:\t1",
        "CapBnd:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "uid0=root:x\n",
        "sudo=sudo:x:27:\n",
    ] {
        assert!(r.stdout.contains(want), "expected '{want}':\n{}", r.all());
    }
    assert!(
        !r.stdout.contains("toor") && r.stdout.contains("groups=alice docker mlteam"),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn a_stranger_on_the_control_port_is_refused_and_the_job_goes_on() {
    let _g = shared();
    let name = unique("ctl");
    let port = 26500;
    let held = HeldJob::start(&name, &format!("--sshd-port={port}"));
    // bob speaks the protocol to node2's worker: greeting for alice's job, forged proof.
    let talk = format!(
        "exec 3<>/dev/tcp/node2/{} && printf 'HELLO x 00\\n' >&3 && timeout 5 head -n1 <&3",
        port + 1
    );
    let r = run_on("node1", "bob", &["bash", "-c", &talk]);
    assert!(
        r.stdout.starts_with("FAILED") && r.stdout.contains("another mnd-srun job"),
        "{}",
        r.all()
    );
    let r = held.release();
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("held-job-released"), "{}", r.all());
    assert_clean(&name, CLEAN);
}

#[test]
fn a_squatter_on_a_workers_control_port_learns_nothing_and_is_named() {
    let _g = shared();
    let s = script("alice", "e2e-noop.sh", "#!/bin/sh\ntrue\n");
    let port = 26600;
    // bob holds node3's control port of alice's job before it starts, answers the greeting
    // with a made-up challenge, and records what the coordinator sent.
    let squat = format!(
        "perl -MIO::Socket::INET -e '$l = IO::Socket::INET->new(LocalPort => {}, Listen => 5, ReuseAddr => 1) or die; \
         open(F, \">\", \"/tmp/e2e-squat.log\"); F->autoflush(1); print F \"listening\\n\"; \
         while ($c = $l->accept) {{ $h = <$c>; print F $h; print $c \"CHALLENGE 00 00\\nREADY\\n\"; $c->flush; }}' \
         >/dev/null 2>&1 & echo $!",
        port + 1
    );
    let r = run_on("node3", "bob", &["bash", "-c", &squat]);
    assert_eq!(r.code, 0, "{}", r.all());
    let pid = r.stdout.trim().to_string();
    wait_until("bob's squatter to listen", Duration::from_secs(10), || {
        root_on("node3", &["cat", "/tmp/e2e-squat.log"])
            .stdout
            .contains("listening")
    });
    let name = unique("squat");
    let r = alice(&format!(
        "{} --sshd-port={port} --script=./{s}",
        srun_line(3, &name, "")
    ));
    let log = root_on("node3", &["cat", "/tmp/e2e-squat.log"]).stdout;
    root_on(
        "node3",
        &["sh", "-c", &format!("kill {pid}; rm -f /tmp/e2e-squat.log")],
    );
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("node3")
            && r.stderr
                .contains("could not prove it is this job's launcher"),
        "{}",
        r.all()
    );
    // All bob saw is the job's name and a fresh random number: nothing to replay.
    let hello = log
        .lines()
        .find(|l| l.starts_with("HELLO"))
        .unwrap_or_default();
    let words: Vec<&str> = hello.split(' ').collect();
    assert!(
        words.len() == 3 && words[2].len() == 32 && words[2].chars().all(|c| c.is_ascii_hexdigit()),
        "the coordinator's greeting should carry only the job and a nonce: {log}"
    );
    assert_clean(&name, CLEAN);
}
