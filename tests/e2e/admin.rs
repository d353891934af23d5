//! Admin side end to end: a site-wide install used through its module file, policy refusals
//! from a site config, and `mnd ps` / `mnd cleanup` on a live job.

use crate::cluster::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn site_install_works_for_alice_through_the_module_file() {
    let _g = shared();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_mnd-srun"))
        .parent()
        .unwrap();
    let install = |extra: &[&str]| {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
            .args(["--prefix", "/shared/opt/mnd-srun"])
            .args(extra)
            .env("DESTDIR", "/var/lib/mnd-vcluster")
            .env("MND_INSTALL_FROM", bin_dir)
            .output()
            .unwrap()
    };
    let out = install(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Re-running is safe.
    assert!(install(&[]).status.success());
    let s = script(
        "alice",
        "e2e-module.sh",
        "#!/bin/bash\necho module-job-ok $hostlist\n",
    );
    let name = unique("module");
    let r = alice(&format!(
        "source /etc/profile.d/lmod.sh && module use /shared/opt/mnd-srun/modulefiles/lmod && module load mnd-srun && \
         echo using=$(command -v mnd-srun) && man -w mnd-srun && \
         man -l /shared/opt/mnd-srun/share/man/man1/mnd-srun.1 2>/dev/null | grep -c 'INJECTED VARIABLES' && \
         srun -N3 -n3 mnd-srun --container={IMAGE} --dockname={name} --script=./{s}"
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("using=/shared/opt/mnd-srun/bin/mnd-srun"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout
            .contains("/shared/opt/mnd-srun/share/man/man1/mnd-srun.1"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains("module-job-ok node1:1,node2:1,node3:1"),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
    let out = install(&["--uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !std::path::Path::new("/var/lib/mnd-vcluster/shared/opt/mnd-srun").exists(),
        "uninstall left files"
    );
}

#[test]
fn policy_refusals_name_the_rule_and_the_config() {
    let _g = shared();
    let policy = site_config(
        "e2e-policy.toml",
        "[policy]\nallowed_images = ['mnd-vc-job:.*']\nallowed_mount_prefixes = ['/shared']\nallow_privileged = false\nallow_dockopts = false\n",
    );
    let s = script("alice", "e2e-true.sh", "#!/bin/sh\ntrue\n");
    let cases = [
        (
            "image",
            "--container=evil:latest",
            "image 'evil:latest' is not allowed by the site policy (policy.allowed_images",
        ),
        (
            "mount",
            "--datamnts=/var/tmp",
            "mount source /var/tmp is not allowed by the site policy (policy.allowed_mount_prefixes",
        ),
        (
            "privileged",
            "--privileged",
            "--privileged is not allowed by the site policy (policy.allow_privileged",
        ),
        (
            "dockopts",
            "--dockopts='-e X=1'",
            "--dockopts is not allowed by the site policy (policy.allow_dockopts",
        ),
    ];
    for (tag, flag, want) in cases {
        let name = unique(tag);
        let r = alice(&format!(
            "MND_CONFIG={policy} srun -N3 -n3 mnd-srun --container={IMAGE} {flag} --dockname={name} --script=./{s}"
        ));
        assert_eq!(r.code, 2, "{tag}: {}", r.all());
        assert!(
            r.stderr.contains(want),
            "{tag}: expected '{want}':\n{}",
            r.all()
        );
        assert!(
            r.stderr.contains("e2e-policy.toml"),
            "{tag}: the config file is not named:\n{}",
            r.all()
        );
        assert_clean(&name, CLEAN);
    }
    // Within the policy the same config lets the job run.
    let name = unique("allowed");
    let r = alice(&format!(
        "MND_CONFIG={policy} {} --script=./{s}",
        srun_line(3, &name, "")
    ));
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn mnd_ps_shows_a_running_job_and_cleanup_removes_it() {
    let _g = shared();
    let name = unique("ps");
    let marker = format!("{SHARED}/home/alice/e2e-{name}.started");
    let s = script(
        "alice",
        &format!("e2e-ps-{name}.sh"),
        &format!("#!/bin/bash\ntouch ~/e2e-{name}.started\nsleep 600\n"),
    );
    let cmd = format!("{} --script=./{s}", srun_line(3, &name, ""));
    let job = std::thread::spawn(move || alice(&cmd));
    wait_until("the script to start", Duration::from_secs(90), || {
        std::path::Path::new(&marker).exists()
    });
    let ps = run_on("node2", "alice", &["mnd", "ps"]);
    assert_eq!(ps.code, 0, "{}", ps.all());
    let line = ps
        .stdout
        .lines()
        .find(|l| l.starts_with("node2") && l.contains(&name))
        .unwrap_or_else(|| panic!("{}", ps.all()));
    assert!(
        line.contains("alice") && line.contains("node2") && line.contains("running"),
        "{line}"
    );
    // bob sees none of alice's containers by default, and may not remove them.
    let bob = run_on("node2", "bob", &["mnd", "ps"]);
    assert!(!bob.stdout.contains(&name), "{}", bob.all());
    let denied = run_on("node2", "bob", &["mnd", "cleanup", "--all-users"]);
    assert_ne!(denied.code, 0);
    // The admin (root, as the Epilog does) removes that job's container on node2 (only that
    // job: other tests run beside this one): the job fails fast, naming node2, and every node
    // is left clean.
    let job_id = line
        .split_whitespace()
        .nth(1)
        .expect("JOB column")
        .to_string();
    let root = root_on(
        "node2",
        &["mnd", "cleanup", "--job", &job_id, "--all-users"],
    );
    assert_eq!(root.code, 0, "{}", root.all());
    assert!(root.stderr.contains(&name), "{}", root.all());
    let r = job.join().unwrap();
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("node2"), "{}", r.all());
    assert_clean(&name, CLEAN);
}

#[test]
fn a_missing_image_is_pulled_once_per_node_even_by_two_jobs_at_once() {
    let _g = shared();
    // A new layer on top of the job image, so every node really downloads something.
    let tag = format!("pull{}", std::process::id());
    let log_path = "/var/log/mnd-vc-registry.log";
    let log_start = std::fs::metadata(log_path).map(|m| m.len()).unwrap_or(0);
    let image = pushed_image(&tag, &format!("echo {tag} > /pull-marker"));
    let s = script("alice", "e2e-pulled.sh", "#!/bin/sh\necho pulled-job-ok\n");
    let (a, b) = (unique("pull-a"), unique("pull-b"));
    let cmd = |name: &str| {
        format!("srun -N3 -n3 mnd-srun --container={image} --dockname={name} --script=./{s}")
    };
    let first = std::thread::spawn({
        let c = cmd(&a);
        move || alice(&c)
    });
    let second = alice(&cmd(&b));
    let first = first.join().unwrap();
    for r in [&first, &second] {
        assert_eq!(r.code, 0, "{}", r.all());
        assert!(r.stdout.contains("pulled-job-ok"), "{}", r.all());
    }
    let said = format!("{}{}", first.stderr, second.stderr);
    for n in NODES {
        assert!(
            said.contains(&format!("mnd-srun ({n}): pulled {image} in ")),
            "no pull report from {n}:\n{said}"
        );
    }
    // The registry's access log: two jobs at once, yet every node fetched the manifest and
    // every blob (the new layer, the config) exactly once.
    let log = std::fs::read(log_path).unwrap();
    let log = String::from_utf8_lossy(&log[log_start as usize..]);
    for (i, _) in NODES.iter().enumerate() {
        let addr = format!("10.213.77.{} ", 11 + i);
        let gets = |what: &str| -> Vec<String> {
            let prefix = format!("\"GET /v2/mnd-vc-job/{what}/");
            log.lines()
                .filter(|l| l.starts_with(&addr))
                .filter_map(|l| l.split(&prefix).nth(1)?.split(' ').next().map(String::from))
                .filter(|d| d.starts_with("sha256:"))
                .collect()
        };
        for (what, at_least) in [("manifests", 1), ("blobs", 2)] {
            let mut fetched = gets(what);
            let all = fetched.len();
            fetched.sort_unstable();
            fetched.dedup();
            assert!(
                fetched.len() >= at_least,
                "node{} fetched {all} {what}:\n{log}",
                i + 1
            );
            assert_eq!(
                all,
                fetched.len(),
                "node{} fetched {what} more than once: {all} requests",
                i + 1
            );
        }
    }
    for n in NODES {
        root_on(n, &["docker", "rmi", &image]);
    }
    let local = format!("mnd-vc-job:{tag}");
    let _ = Command::new("docker")
        .args(["rmi", &local, &format!("127.0.0.1:5000/{local}")])
        .output();
    assert_clean(&a, CLEAN);
    assert_clean(&b, CLEAN);
}
