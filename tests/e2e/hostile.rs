//! The root side against a hostile user (dave, outside the docker group): links planted
//! under Slurm's names, folders swapped for links while steps start, image volumes, a
//! decoy container under the step's name, site prefixes the user can move, an image that
//! asks for every GPU. Each test fails on the code before the fix (see the commit that
//! added it); each refusal names what was refused, the rule, and what to do.

use crate::cluster::*;
use std::path::Path;
use std::time::Duration;

/// Alice's file in a folder of her 0750 home, which dave cannot reach.
const SECRET: &str = "alice-secret-4711";

fn alices_secret() {
    cluster();
    let home = format!("{SHARED}/home/alice");
    std::fs::create_dir_all(format!("{home}/pub")).unwrap();
    std::fs::write(format!("{home}/pub/secret"), SECRET).unwrap();
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "chown -R 1001:1001 {home}/pub && chmod 0755 {home}/pub && chmod 0644 {home}/pub/secret && chmod 0750 {home}"
        ))
        .status()
        .unwrap();
    assert!(ok.success());
    let denied = dave(&format!("cat {home}/pub/secret"));
    assert_ne!(
        denied.code,
        0,
        "dave must not reach alice's file: {}",
        denied.all()
    );
}

#[test]
fn a_link_planted_under_the_pmix_client_folders_name_shows_nothing() {
    let _g = shared();
    alices_secret();
    // Step 0 plants the links on the allocated node; steps 1 and 2 are direct-mode steps
    // whose PMIx client folder Slurm would name so.
    let (r, job) = dave_job(
        1,
        "j=$SLURM_JOB_ID; \
         srun -n1 sh -c \"ln -sfn /shared/home/alice/pub /tmp/spmix_appdir_1004_$j.1 && ln -sfn /etc /tmp/spmix_appdir_1004_$j.2 && echo planted\"; \
         srun -n1 --mpi=none --mnd-image=mnd-vc-job:3 cat /tmp/spmix_appdir_1004_$j.1/secret; \
         srun -n1 --mpi=pmix --mnd-image=mnd-vc-job:3 sh -c \"cat /tmp/spmix_appdir_1004_$j.2/slurm/slurm.conf; echo step2-ran\"; \
         srun -n1 rm -f /tmp/spmix_appdir_1004_$j.1 /tmp/spmix_appdir_1004_$j.2",
    );
    assert!(
        !r.all().contains(SECRET),
        "alice's file leaked:\n{}",
        r.all()
    );
    assert!(
        !r.all().contains("SlurmctldHost"),
        "the node's /etc leaked:\n{}",
        r.all()
    );
    // The attack ran: the links were planted, and the first step ran in its container and
    // looked through its link (which is not mounted: nothing of /tmp is). Slurm's own PMIx
    // plugin refuses to launch the second step over a link at its folder's name.
    assert!(r.stdout.contains("planted"), "{}", r.all());
    assert!(
        r.stderr.contains(&format!(
            "/tmp/spmix_appdir_1004_{job}.1/secret: No such file or directory"
        )),
        "{}",
        r.all()
    );
    assert_nothing_left(&job);
}

#[test]
fn a_folder_swapped_for_a_link_while_steps_start_is_never_mounted() {
    let _g = shared();
    alices_secret();
    // x and l swap places (renameat2 RENAME_EXCHANGE, syscall 316 on x86_64: x is always
    // there) as fast as they can while 30 steps mount x: x is dave's own folder half of the
    // time and a link to alice's folder the other half.
    let (r, job) = dave_job(
        1,
        "mkdir -p ~/e2e-race && cd ~/e2e-race && rm -rf x l && mkdir x && echo dave-own > x/secret && \
         ln -s /shared/home/alice/pub l && \
         { perl -e 'my ($x, $l) = (\"x\", \"l\"); while (1) { syscall(316, -100, $x, -100, $l, 2) }' & flip=$!; }; \
         for i in $(seq 30); do srun -n1 --mnd-mounts=$HOME/e2e-race/x:/data --mnd-image=mnd-vc-job:3 cat /data/secret; echo; done; \
         kill $flip; wait $flip 2>/dev/null; cd ~ && rm -rf ~/e2e-race",
    );
    assert!(
        !r.all().contains(SECRET),
        "alice's file leaked:\n{}",
        r.all()
    );
    // The attack ran: every one of the 30 steps either mounted dave's own folder, or was
    // refused for the swap (caught at the mount, or the source found a link or resolving to
    // alice's folder, which dave may not reach), and some did mount it.
    let own = r.stdout.matches("dave-own").count();
    let swapped = r.stderr.matches("its source was replaced").count();
    let denied = r
        .stderr
        .matches("mount source /shared/home/dave/e2e-race/x cannot be used")
        .count();
    eprintln!("race: {own} steps mounted dave's folder, {swapped} caught a swap, {denied} found a link or alice's folder, of 30");
    assert!(own >= 1, "{}", r.all());
    assert_eq!(own + swapped + denied, 30, "{}", r.all());
    assert_nothing_left(&job);
}

/// An image that declares `VOLUME /vol` (writable by anyone), on every node.
fn volume_image() -> &'static str {
    let img = "mnd-vc-vol:1";
    image_on_every_node(img, "mkdir /vol && chmod 1777 /vol", "VOLUME /vol");
    img
}

#[test]
fn an_image_volume_is_memory_of_the_step_not_roots_storage() {
    let _g = shared();
    let img = volume_image();
    let (r, job) = dave_job(
        1,
        &format!(
            "srun -n1 --mnd-image={img} sh -c 'echo vol-data-$SLURM_JOB_ID > /vol/f && echo $(hostname) $(findmnt -n -o FSTYPE /vol)'"
        ),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert_nothing_left(&job);
    let (node, fstype) = r.stdout.trim().split_once(' ').unwrap_or_default();
    assert_eq!(fstype, "tmpfs", "{}", r.all());
    wait_until(
        "no volume of the step on the node",
        Duration::from_secs(15),
        || {
            let left = root_on(
                node,
                &[
                    "sh",
                    "-c",
                    &format!("grep -rls vol-data-{job} /var/lib/docker/volumes || true"),
                ],
            );
            assert_eq!(left.code, 0, "{}", left.all());
            left.stdout.trim().is_empty()
        },
    );
}

#[test]
fn a_container_under_the_steps_name_that_is_not_its_own_is_neither_used_nor_removed() {
    let _g = shared();
    let home = format!("{SHARED}/home/dave");
    let (jobfile, go) = (
        format!("{home}/e2e-decoy.job"),
        format!("{home}/e2e-decoy.go"),
    );
    let _ = std::fs::remove_file(&jobfile);
    let _ = std::fs::remove_file(&go);
    let held = std::thread::spawn(|| {
        dave_job(
            1,
            "echo $SLURM_JOB_ID $SLURM_JOB_NODELIST > ~/e2e-decoy.tmp && mv ~/e2e-decoy.tmp ~/e2e-decoy.job; \
             while [ ! -e ~/e2e-decoy.go ]; do sleep 0.1; done; srun -n1 --mnd-image=mnd-vc-job:3 echo ran",
        )
    });
    wait_until("the held job", Duration::from_secs(60), || {
        Path::new(&jobfile).exists()
    });
    let text = std::fs::read_to_string(&jobfile).unwrap();
    let (job, node) = text.trim().split_once(' ').unwrap();
    let request = mnd::spank::Request {
        job: job.parse().unwrap(),
        step: 0,
        node: node.to_string(),
        uid: 1004,
        gid: 1004,
        gids: vec![],
        cwd: "/".into(),
        options: Default::default(),
        slurm_dirs: vec![],
        step_nodes: None,
        step_gpus: None,
        step_cuda_devices: None,
        batch_script: None,
        global_scope: false,
    };
    let name = request.container_name("dave", None);
    // Someone else's container (bob's labels) under exactly that name.
    let made = root_on(
        node,
        &[
            "docker",
            "create",
            "--name",
            &name,
            "--label",
            "mnd.uid=1002",
            IMAGE,
            "true",
        ],
    );
    assert_eq!(made.code, 0, "{}", made.all());
    std::fs::write(&go, "").unwrap();
    let (r, _) = held.join().unwrap();
    let still = containers(node, &name);
    root_on(node, &["docker", "rm", "-f", &name]);
    let _ = std::fs::remove_file(&go);
    assert!(!r.stdout.contains("ran"), "{}", r.all());
    assert!(
        r.stderr.contains(&format!(
            "a container named {name} exists but is not this step's ("
        )) && r
            .stderr
            .contains("does not match): it is neither used nor removed. Fix: ask your admin"),
        "{}",
        r.all()
    );
    assert_eq!(still, vec![name], "the decoy was removed");
    assert_nothing_left(job);
}

#[test]
fn a_site_prefix_the_user_can_move_is_refused() {
    // The policy file is the default one every job reads: no other test runs meanwhile.
    let _g = exclusive();
    let _policy = DefaultPolicy::install("[policy]\nallowed_mount_prefixes = [\"/tmp/e2e-prj\"]\n");
    // /tmp/e2e-prj does not exist: dave makes it a link to a folder of his own, which the
    // admin's rule never named.
    let (r, job) = dave_job(
        1,
        "mkdir -p ~/elsewhere && srun -n1 ln -sfn /shared/home/dave/elsewhere /tmp/e2e-prj; \
         srun -n1 --mnd-mounts=/shared/home/dave/elsewhere:/data --mnd-image=mnd-vc-job:3 echo mounted; \
         srun -n1 rm -f /tmp/e2e-prj",
    );
    assert!(!r.stdout.contains("mounted"), "{}", r.all());
    assert!(
        r.stderr
            .contains("policy.allowed_mount_prefixes entry /tmp/e2e-prj")
            && r.stderr.contains("belongs to uid 1004")
            && r.stderr
                .contains("Fix: name existing folders owned by root"),
        "{}",
        r.all()
    );
    assert_nothing_left(&job);
}

#[test]
fn a_step_without_gpus_gets_none_whatever_the_image_asks() {
    let _g = shared();
    let img = "mnd-vc-allgpus:1";
    image_on_every_node(img, "true", "ENV NVIDIA_VISIBLE_DEVICES=all");
    let home = format!("{SHARED}/home/dave");
    let (jobfile, go) = (
        format!("{home}/e2e-void.job"),
        format!("{home}/e2e-void.go"),
    );
    let _ = std::fs::remove_file(&jobfile);
    let _ = std::fs::remove_file(&go);
    let held = std::thread::spawn(move || {
        dave_job(
            1,
            &format!(
                "srun -n1 --mnd-image={img} --mnd-name=void true && echo $SLURM_JOB_ID $SLURM_JOB_NODELIST > ~/e2e-void.tmp && mv ~/e2e-void.tmp ~/e2e-void.job; \
                 while [ ! -e ~/e2e-void.go ]; do sleep 0.1; done"
            ),
        )
    });
    wait_until("the held job", Duration::from_secs(60), || {
        Path::new(&jobfile).exists()
    });
    let text = std::fs::read_to_string(&jobfile).unwrap();
    let (job, node) = text.trim().split_once(' ').unwrap();
    let env = root_on(
        node,
        &[
            "sh",
            "-c",
            &format!(
                "docker inspect -f '{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}' $(docker ps -q --filter label=mnd.job={job})"
            ),
        ],
    );
    std::fs::write(&go, "").unwrap();
    let (r, _) = held.join().unwrap();
    let _ = std::fs::remove_file(&go);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(env.code, 0, "{}", env.all());
    assert!(
        env.stdout
            .lines()
            .any(|l| l == "NVIDIA_VISIBLE_DEVICES=void")
            && !env.stdout.contains("NVIDIA_VISIBLE_DEVICES=all"),
        "{}",
        env.all()
    );
    assert_nothing_left(job);
}

#[test]
fn a_writable_layer_limit_the_storage_driver_cannot_keep_is_named() {
    // The policy file is the default one every job reads: no other test runs meanwhile.
    let _g = exclusive();
    let _policy = DefaultPolicy::install("[policy]\nwritable_layer_size = \"1G\"\n");
    let (r, job) = dave_job(1, "srun -n1 --mnd-image=mnd-vc-job:3 echo started");
    assert!(!r.stdout.contains("started"), "{}", r.all());
    assert!(
        r.stderr
            .contains("policy.writable_layer_size needs a storage driver that limits")
            && r.stderr.contains("overlay2 on xfs mounted with pquota"),
        "{}",
        r.all()
    );
    assert_nothing_left(&job);
}

#[test]
fn images_the_root_side_pulled_go_with_the_last_job_that_used_them() {
    let _g = shared();
    let tag = format!("rootpull-{}", std::process::id());
    let image = pushed_image(&tag, &format!("echo {tag} > /marker"));
    let here = |node: &str| root_on(node, &["docker", "image", "inspect", &image]).code == 0;
    for node in NODES {
        root_on(node, &["docker", "rmi", &image]);
        assert!(!here(node), "{image} is still on {node}");
    }
    let (r, job) = dave_job(3, &format!("srun -N3 -n3 --mnd-image={image} cat /marker"));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout.matches(&tag).count(), 3, "{}", r.all());
    assert_nothing_left(&job);
    // The Epilog of the job removes what root pulled for it; the node's own images stay.
    wait_until(
        "the Epilog to remove the pulled image everywhere",
        Duration::from_secs(30),
        || NODES.iter().all(|n| !here(n)),
    );
    for node in NODES {
        assert_eq!(
            root_on(node, &["docker", "image", "inspect", IMAGE]).code,
            0,
            "{IMAGE} went from {node}"
        );
    }
}

#[test]
fn an_image_whose_account_files_are_links_out_of_it_is_refused_and_the_host_untouched() {
    let _g = shared();
    // The root side once wrote the user's accounts into the container's own /etc: a hostile
    // image makes /etc/passwd a link to a host path (as seen from outside the container).
    // Now the image's accounts are only read, as data, and such an image is refused.
    let img = "mnd-vc-linkedpw:1";
    let target = "/var/tmp/mnd-e2e-linked-passwd";
    image_on_every_node(
        img,
        &format!("rm -f /etc/passwd && ln -s /proc/1/root{target} /etc/passwd"),
        "LABEL hostile=1",
    );
    for node in NODES {
        root_on(node, &["sh", "-c", &format!("echo host-file > {target}")]);
    }
    let (r, job) = dave_job(1, &format!("srun -n1 --mnd-image={img} echo started"));
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(!r.stdout.contains("started"), "{}", r.all());
    assert!(
        r.stderr.contains(
            "/etc/passwd in the image is a link, not a regular file: such an image is refused"
        ),
        "{}",
        r.all()
    );
    for node in NODES {
        let host = root_on(node, &["cat", target]);
        assert_eq!(host.stdout.trim(), "host-file", "{node}: {}", host.all());
    }
    assert_nothing_left(&job);
}

/// Owner, mode and content digest of each victim on every node: alice's home (a folder of
/// hers dave cannot enter), a root-owned file, the node's /dev/null.
fn victims() -> Vec<String> {
    NODES
        .iter()
        .map(|node| {
            let r = root_on(
                node,
                &[
                    "sh",
                    "-c",
                    "[ -e /var/tmp/e2e-decoy ] || { printf decoy-4711 > /var/tmp/e2e-decoy && chmod 0644 /var/tmp/e2e-decoy; }; \
                     stat -c '%U:%G %a %n' /shared/home/alice /var/tmp/e2e-decoy /dev/null && md5sum /var/tmp/e2e-decoy",
                ],
            );
            assert_eq!(r.code, 0, "{}", r.all());
            format!("{node}: {}", r.stdout)
        })
        .collect()
}

#[test]
fn links_in_the_home_as_mount_targets_never_make_root_write_through_them() {
    let _g = shared();
    alices_secret();
    let before = victims();
    assert!(
        before[0].contains("alice:alice 750 /shared/home/alice"),
        "{before:?}"
    );
    // Each target is a link in dave's own home, which Docker follows inside the container:
    // the mount lands on /.mnd, /etc/group or /etc/passwd, where the helper used to write.
    let (r, job) = dave_job(
        1,
        &format!(
            "ln -sfn /.mnd ~/e2e-to-mnd; ln -sfn /etc/group ~/e2e-to-grp; ln -sfn /etc/passwd ~/e2e-to-pw; \
             readlink ~/e2e-to-mnd ~/e2e-to-grp ~/e2e-to-pw; \
             srun -n1 --mnd-image={IMAGE} --mnd-mounts=/shared/home/alice:$HOME/e2e-to-mnd echo ran-mnd; \
             srun -n1 --mnd-image={IMAGE} --mnd-mounts=/var/tmp/e2e-decoy:$HOME/e2e-to-grp echo ran-grp; \
             srun -n1 --mnd-image={IMAGE} --mnd-mounts=/dev/null:$HOME/e2e-to-pw echo ran-pw; \
             rm -f ~/e2e-to-mnd ~/e2e-to-grp ~/e2e-to-pw"
        ),
    );
    // The attack ran: the three links were there and three steps asked for them.
    assert!(
        r.stdout.contains("/.mnd\n/etc/group\n/etc/passwd\n"),
        "the links were not made:\n{}",
        r.all()
    );
    let after = victims();
    assert_eq!(before, after, "root changed a victim:\n{}", r.all());
    assert_eq!(
        r.stderr
            .matches("moved a mount to another place; the container was removed")
            .count(),
        3,
        "each step must be refused, naming the moved mount:\n{}",
        r.all()
    );
    assert!(!r.stdout.contains("ran-"), "{}", r.all());
    assert_nothing_left(&job);
}

#[test]
fn a_fifo_as_a_mount_source_is_refused_at_once_even_through_a_link_to_etc_passwd() {
    let _g = shared();
    let (r, job) = dave_job(
        1,
        &format!(
            "rm -f ~/e2e-fifo && mkfifo ~/e2e-fifo && ln -sfn /etc/passwd ~/e2e-fifo-to-pw && test -p ~/e2e-fifo && echo fifo-made; \
             timeout 60 srun -n1 --mnd-image={IMAGE} --mnd-mounts=$HOME/e2e-fifo:$HOME/e2e-fifo-to-pw echo ran-1; echo rc1=$?; \
             timeout 60 srun -n1 --mnd-image={IMAGE} --mnd-mounts=$HOME/e2e-fifo:/data/f echo ran-2; echo rc2=$?; \
             rm -f ~/e2e-fifo ~/e2e-fifo-to-pw"
        ),
    );
    assert!(r.stdout.contains("fifo-made"), "{}", r.all());
    // timeout's 124 would be a hang; srun's own failure is 1.
    assert!(
        r.stdout.contains("rc1=1") && r.stdout.contains("rc2=1"),
        "{}",
        r.all()
    );
    assert_eq!(
        r.stderr
            .matches("e2e-fifo is refused: it is a FIFO; only folders, regular files and")
            .count(),
        2,
        "{}",
        r.all()
    );
    assert!(!r.stdout.contains("ran-"), "{}", r.all());
    assert_nothing_left(&job);
}

#[test]
fn shared_propagation_is_refused_by_name() {
    let _g = shared();
    for p in ["shared", "rshared", "slave", "rslave"] {
        let r = dave(&format!(
            "srun -N1 --mnd-image={IMAGE} --mnd-mounts=$HOME:/p:{p} echo ran"
        ));
        assert_ne!(r.code, 0, "{}", r.all());
        assert!(
            r.stderr.contains(&format!(
                "propagation '{p}' is refused: it would let mounts made in the container reach the node's own mount table"
            )),
            "{}",
            r.all()
        );
        assert!(!r.stdout.contains("ran"), "{}", r.all());
    }
}

/// The job image with a `sleep` that leaves a mark in the home of whoever runs it, and a
/// FIFO at /etc/group in a second image: a user's own image, as hostile as it likes.
fn hostile_images() -> (&'static str, &'static str) {
    let (sleeper, fifo) = ("mnd-vc-sleeper:1", "mnd-vc-fifo:1");
    image_on_every_node(
        sleeper,
        "mv /bin/sleep /bin/sleep.real && printf \"#!/bin/sh\\necho image-sleep-ran > \\$HOME/e2e-image-sleep-ran\\nexec /bin/sleep.real \\\"\\$@\\\"\\n\" > /bin/sleep && chmod 755 /bin/sleep",
        "LABEL e2e=sleeper",
    );
    image_on_every_node(fifo, "rm /etc/group && mkfifo /etc/group", "LABEL e2e=fifo");
    (sleeper, fifo)
}

#[test]
fn the_containers_init_is_roots_program_never_the_images() {
    let _g = shared();
    let (sleeper, _) = hostile_images();
    let mark = format!("{SHARED}/home/dave/e2e-image-sleep-ran");
    let _ = std::fs::remove_file(&mark);
    let (r, job) = dave_job(
        1,
        &format!(
            "srun -n1 --mnd-image={sleeper} sh -c 'ps -eo user:12,args | grep -E \"^dave +/.mnd-init$\"'; \
             test -e ~/e2e-image-sleep-ran && echo mark-after-step1; \
             srun -n1 --mnd-image={sleeper} sleep 0; test -e ~/e2e-image-sleep-ran && echo mark-after-step2"
        ),
    );
    // Positive control: the image's sleep does leave its mark when a task runs it.
    assert!(r.stdout.contains("mark-after-step2"), "{}", r.all());
    assert!(!r.stdout.contains("mark-after-step1"), "{}", r.all());
    assert!(r.stdout.contains("/.mnd-init"), "{}", r.all());
    let _ = std::fs::remove_file(&mark);
    assert_nothing_left(&job);
}

#[test]
fn an_image_whose_etc_group_is_a_fifo_is_refused_without_a_hang() {
    let _g = shared();
    let (_, fifo) = hostile_images();
    let r = dave(&format!(
        "timeout 90 srun -N1 --mnd-image={fifo} echo ran; echo rc=$?"
    ));
    assert!(r.stdout.contains("rc=1"), "{}", r.all());
    assert!(
        r.stderr.contains(
            "/etc/group in the image is a FIFO, not a regular file: such an image is refused"
        ),
        "{}",
        r.all()
    );
}

#[test]
fn a_stopped_save_writer_holds_nothing_of_roots() {
    let _g = shared();
    // An overlapping step of dave's stops every process of his running `mnd direct save`
    // (the one that opens the archive as him) as soon as it appears.
    let (r, job) = dave_job(
        1,
        &format!(
            "rm -f ~/e2e-s3.tar ~/e2e-s3.tar.mnd-tmp-*; \
             srun --overlap -n1 sh -c 'for i in $(seq 1200); do pkill -STOP -u $(id -u) -x mnd && {{ echo writer-stopped; exit 0; }}; sleep 0.05; done; echo never-stopped' & w=$!; \
             timeout 150 srun -n1 --mnd-image={IMAGE} --mnd-save=$HOME/e2e-s3.tar sh -c 'head -c 20M /dev/urandom > /var/tmp/fill'; echo srun-rc=$?; \
             wait $w; pkill -CONT -u $(id -u) -x mnd; rm -f ~/e2e-s3.tar ~/e2e-s3.tar.mnd-tmp-*"
        ),
    );
    // The attack ran: the writer was stopped.
    assert!(r.stdout.contains("writer-stopped"), "{}", r.all());
    // The step ended on its own (timeout's 124 would be the hang), saying why nothing was saved.
    assert!(
        r.stdout.contains("srun-rc=") && !r.stdout.contains("srun-rc=124"),
        "{}",
        r.all()
    );
    assert!(r.all().contains("--mnd-save"), "{}", r.all());
    assert_nothing_left(&job);
    for node in NODES {
        wait_until(
            &format!("no image of dave's save and no stopped process of his on {node}"),
            Duration::from_secs(30),
            || {
                let left = root_on(
                    node,
                    &["sh", "-c", "docker images -q 'mnd-saved-dave' | grep -c .; pgrep -u 1004 -x mnd | grep -c ."],
                );
                left.stdout.split_whitespace().collect::<Vec<_>>() == ["0", "0"]
            },
        );
    }
}

#[test]
fn images_of_others_are_not_run_by_id_prefix_saved_name_or_forged_copy_label() {
    let _g = shared();
    // On node1, as root: an unnamed image (as one loaded from a user's share), a name of
    // --mnd-save's, and an image carrying a user's-copy label.
    let made = root_on(
        "node1",
        &[
            "sh",
            "-c",
            &format!(
                "c=$(docker create {IMAGE} true) && id=$(docker commit $c) && docker rm $c >/dev/null && \
                 docker tag {IMAGE} mnd-saved-alice:1.0 && \
                 echo 'FROM {IMAGE}' | docker build -q --label mnd.accounts=forged --label mnd.base=x -t mnd-vc-forged:1 - >/dev/null && \
                 echo $id"
            ),
        ],
    );
    assert_eq!(made.code, 0, "{}", made.all());
    let id = made.stdout.trim().to_string();
    let prefix = &id["sha256:".len().."sha256:".len() + 12];
    // Positive control: Docker itself finds each of them so.
    let found = root_on("node1", &["docker", "image", "inspect", "-f", "ok", prefix]);
    assert_eq!(found.stdout.trim(), "ok", "{}", found.all());
    for (image, why) in [
        (
            prefix,
            "Docker found it by its id (or an id prefix), not by name",
        ),
        (
            id.as_str(),
            "Docker found it by its id (or an id prefix), not by name",
        ),
        (
            "mnd-saved-alice:1.0",
            "names beginning mnd-saved- are --mnd-save's commits",
        ),
        ("mnd-vc-forged:1", "it carries mnd-srun's copy labels"),
    ] {
        let r = dave(&format!("srun -N1 -w node1 --mnd-image={image} echo ran"));
        assert!(!r.stdout.contains("ran"), "{image}: {}", r.all());
        assert!(r.stderr.contains(why), "{image}: {}", r.all());
    }
    root_on(
        "node1",
        &[
            "sh",
            "-c",
            &format!("docker rmi mnd-saved-alice:1.0 mnd-vc-forged:1 {id} >/dev/null"),
        ],
    );
}
