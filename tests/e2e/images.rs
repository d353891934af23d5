//! Big images: a pull that takes longer than `--wait-timeout` succeeds while it makes
//! progress, a stalled pull fails naming the node and leaves nothing, and ABORT reaches
//! workers that are still pulling. The registry on the cluster bridge is reached through
//! `slow_registry.py`, a proxy that makes its answers trickle or stop.

use crate::cluster::*;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The proxy process; killed when dropped.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the proxy on `port` in front of the registry (127.0.0.1:5000), once it listens.
fn proxy(port: u16, mode: &str, amount: u64) -> Proxy {
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/slow_registry.py"
        ))
        .args([
            &port.to_string(),
            "127.0.0.1",
            "5000",
            mode,
            &amount.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening");
    Proxy(child)
}

/// The job image with a 40 MB layer on top, pushed to the registry under a tag of `test`'s
/// own; its registry host and its name there (`10.213.77.1`, `mnd-vc-job:bigTESTN`).
fn big_image(test: &str) -> (String, String) {
    let tag = format!("big{test}{}", std::process::id());
    let name = pushed_image(&tag, "head -c 40000000 /dev/urandom > /big-layer");
    let (host, rest) = name.split_once(":5000/").expect("ADDR:5000/NAME");
    (host.to_string(), rest.to_string())
}

/// `repo` of the registry on `host` reached through a proxy on `port` (`mode` and `amount`
/// as for `proxy`), and gone from every node so the next job pulls it that way: its name
/// there, and the proxy.
fn through_proxy(host: &str, repo: &str, port: u16, mode: &str, amount: u64) -> (String, Proxy) {
    let name = format!("{host}:{port}/{repo}");
    let p = proxy(port, mode, amount);
    forget(&name);
    (name, p)
}

/// Removes the image from every node, so the next job pulls it: `docker rmi`, then what
/// the Epilog does (users' copies of images that lost their name go, and their images).
fn forget(image: &str) {
    for n in NODES {
        let r = root_on(n, &["sh", "-c", &format!("id=$(docker image inspect -f '{{{{.Id}}}}' {image} 2>/dev/null); docker rmi -f {image} >/dev/null 2>&1; {EPILOG_CLEANUP}; ! docker image inspect {image} ${{id:+$id}} >/dev/null 2>&1")]);
        assert_eq!(r.code, 0, "{n} still has {image}: {}", r.all());
    }
}

/// The Epilog's cleanup for no job: only users' copies of images that lost their name.
const EPILOG_CLEANUP: &str = "mnd cleanup --job 0 --all-users >/dev/null";

#[test]
fn a_slow_pull_outlasts_the_wait_timeout_and_a_stalled_one_fails_naming_the_node() {
    let _g = exclusive();
    cluster();
    let s = script("alice", "e2e-big.sh", "#!/bin/sh\necho big-image-job-ok\n");

    // 1. About 4 MB/s per node: the 40 MB layer takes about 10 s, five times --wait-timeout.
    // As a star, and as a chain (node3's progress reaches node1 through node2). An image
    // of each its own: Docker's containerd image store keeps a removed image's layers.
    let p = proxy(5101, "slow", 4_000_000);
    for (shape, test) in [("", "slowstar"), ("--tree-width=1", "slowchain")] {
        let (host, repo) = big_image(test);
        let slow = format!("{host}:5101/{repo}");
        forget(&slow);
        let name = unique("slowpull");
        let r = alice(&format!(
            "{} --wait-timeout=2 --script=./{s}",
            srun_line(3, &name, shape).replace(IMAGE, &slow)
        ));
        assert_eq!(r.code, 0, "{shape}: {}", r.all());
        assert!(r.stdout.contains("big-image-job-ok"), "{}", r.all());
        assert!(
            r.took > Duration::from_secs(6),
            "the pull was not slow ({:?}); the test proves nothing",
            r.took
        );
        assert_clean(&name, CLEAN);
        forget(&slow);
    }
    drop(p);

    // 2. The registry stops answering after 5 MB: every node's pull stalls.
    let (host, repo) = big_image("stall");
    let (stalled, p) = through_proxy(&host, &repo, 5102, "stall", 5_000_000);
    let name = unique("stallpull");
    let r = alice(&format!(
        "{} --wait-timeout=3 --script=./{s}",
        srun_line(3, &name, "").replace(IMAGE, &stalled)
    ));
    assert_eq!(r.code, 125, "{}", r.all());
    assert!(
        r.stderr.contains("made no progress for 3 s") && r.stderr.contains("node"),
        "{}",
        r.all()
    );
    assert!(r.took < Duration::from_secs(40), "{:?}", r.took);
    assert_clean(&name, CLEAN);

    // 3. The coordinator fails at once while the workers are pulling (stalled): they are
    // told and end, long before their 60 s.
    let bad = script("alice", "e2e-not-executable.sh", "#!/bin/sh\ntrue\n");
    let r = root_on(
        "node1",
        &["chmod", "0644", &format!("/shared/home/alice/{bad}")],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let name = unique("abortpull");
    let r = alice(&format!(
        "{} --wait-timeout=60 --script=./{bad}",
        srun_line(3, &name, "").replace(IMAGE, &stalled)
    ));
    drop(p);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("is not executable"), "{}", r.all());
    assert!(
        r.took < Duration::from_secs(20),
        "workers did not obey ABORT while pulling: {:?}",
        r.took
    );
    assert_clean(&name, CLEAN);
    for n in NODES {
        assert_eq!(stray_sshd(n, "alice"), 0, "stray sshd of alice on {n}");
    }
    forget(&stalled);
}

/// Removes `tag` from these nodes, then what the Epilog does (the image itself may stay
/// under other tags).
fn untag(tag: &str, nodes: &[&str]) {
    for n in nodes {
        root_on(
            n,
            &["sh", "-c", &format!("docker rmi {tag}; {EPILOG_CLEANUP}")],
        );
    }
}

#[test]
fn an_image_only_on_node1_reaches_the_other_nodes_through_the_share_once() {
    let _g = shared();
    let tag = format!("mnd-vc-job:only1-{}", std::process::id());
    image_only_on("node1", &tag, &format!("only1-{}", std::process::id()));
    let dir = format!("/shared/home/alice/.mnd/images-{}", std::process::id());
    let s = script(
        "alice",
        "e2e-share.sh",
        "#!/bin/bash\npdsh -w \"$(echo $hostlist | sed 's/:[0-9]*//g')\" 'echo image-ok' | sort\n",
    );
    let job = |name: &str| {
        alice(&format!(
            "{} --image-cache={dir} --script=./{s}",
            srun_line(3, name, "").replace(IMAGE, &tag)
        ))
    };
    // 1. node2 and node3 lack the tag and cannot pull it: node1 saves it once, they load it.
    let name = unique("share1");
    let r = job(&name);
    assert_eq!(r.code, 0, "{}", r.all());
    for node in NODES {
        assert!(
            r.stdout.contains(&format!("{node}: image-ok")),
            "{}",
            r.all()
        );
    }
    assert!(
        r.stderr.contains(&format!(
            "mnd-srun (node1): saved {tag} into the image share {dir}"
        )),
        "{}",
        r.all()
    );
    for node in ["node2", "node3"] {
        assert!(
            r.stderr.contains(&format!(
                "mnd-srun ({node}): loaded {tag} from the image share"
            )),
            "{}",
            r.all()
        );
    }
    assert_clean(&name, CLEAN);
    // 2. A later job on nodes that lack it again loads it from the share: nothing is saved.
    untag(&tag, &["node2", "node3"]);
    let name = unique("share2");
    let r = job(&name);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("saved"), "saved again: {}", r.all());
    assert_eq!(
        r.stderr.matches("from the image share").count(),
        2,
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
    // 3. A node that has the image by id (under another name) but lacks the job's name
    // names it: nothing is loaded or saved. (Kept by alice's copy alone, it would go with
    // the next Epilog on node2, any job's: a copy of an unnamed image is removed.)
    let keep = format!("e2e-keep:{}", std::process::id());
    root_on("node2", &["docker", "tag", &tag, &keep]);
    root_on("node2", &["docker", "rmi", &tag]);
    let name = unique("share3");
    let r = job(&name);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        !r.stderr.contains("saved") && !r.stderr.contains("loaded"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("node2: image-ok"), "{}", r.all());
    assert_clean(&name, CLEAN);
    root_on("node2", &["docker", "rmi", &keep]);
    // 4. The share is alice's alone, listed and pruned by mnd image.
    let mode = root_on("node1", &["stat", "-c", "%a %U", &dir]);
    assert_eq!(mode.stdout.trim(), "700 alice", "{}", mode.all());
    let ls = alice(&format!("mnd image ls --image-cache={dir}"));
    assert!(ls.code == 0 && ls.stdout.contains(&tag), "{}", ls.all());
    let prune = alice(&format!("mnd image prune --image-cache={dir}"));
    assert!(
        prune.code == 0 && prune.stderr.contains("removed"),
        "{}",
        prune.all()
    );
    let ls = alice(&format!("mnd image ls --image-cache={dir}"));
    assert!(!ls.stdout.contains(&tag), "{}", ls.all());
    // 5. Without the share the node that lacks the image is named.
    untag(&tag, &["node2", "node3"]);
    let name = unique("shareoff");
    let r = alice(&format!(
        "{} --image-share=off --script=./{s}",
        srun_line(3, &name, "").replace(IMAGE, &tag)
    ));
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("is not available"), "{}", r.all());
    assert_clean(&name, CLEAN);
    untag(&tag, &NODES);
    root_on("node1", &["rm", "-rf", &dir]);
}

#[test]
fn a_tampered_archive_in_the_share_is_refused_naming_the_id() {
    let _g = shared();
    let pid = std::process::id();
    let tag = format!("mnd-vc-job:tamper-{pid}");
    let id = image_only_on("node1", &tag, &format!("tamper-{pid}"));
    let dir = format!("/shared/home/alice/.mnd/images-tamper-{pid}");
    let s = script("alice", "e2e-tamper.sh", "#!/bin/bash\ntrue\n");
    let job = |name: &str| {
        alice(&format!(
            "{} --image-cache={dir} --script=./{s}",
            srun_line(3, name, "").replace(IMAGE, &tag)
        ))
    };
    let name = unique("tamper1");
    let r = job(&name);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_clean(&name, CLEAN);
    // The archive saved for the image's id now holds another image under the same tag
    // (made on node3, which then forgets it).
    let archive = format!("{dir}/{}.tar.zst", id.replace(':', "-"));
    image_only_on("node3", &tag, &format!("evil-{pid}"));
    plant_archive("node3", &tag, &archive, "alice");
    untag(&tag, &["node2", "node3"]);
    let name = unique("tamper2");
    let r = job(&name);
    untag(&tag, &["node1", "node2", "node3"]);
    root_on("node1", &["rm", "-rf", &dir]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains(&format!(
            "the image share's archive {archive} held another image than {id}"
        )),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn two_direct_mode_steps_starting_together_pull_their_image_once_per_node() {
    let _g = shared();
    let tag = format!("twopulls-{}", std::process::id());
    let image = pushed_image(&tag, &format!("echo {tag} > /marker"));
    for node in NODES {
        root_on(node, &["docker", "rmi", &image]);
        let there = root_on(node, &["docker", "image", "inspect", &image]);
        assert_ne!(there.code, 0, "{node} still has {image}");
    }
    let since = root_on("node1", &["date", "+%s"]).stdout.trim().to_string();
    let (r, job) = dave_job(
        3,
        &format!(
            "srun --overlap -N3 -n3 --mnd-image={image} cat /marker & srun --overlap -N3 -n3 --mnd-image={image} cat /marker & wait"
        ),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout.matches(tag.as_str()).count(), 6, "{}", r.all());
    for node in NODES {
        let events = root_on(
            node,
            &[
                "sh",
                "-c",
                &format!(
                    "docker events --since {since} --until $(( $(date +%s) + 2 )) --filter event=pull --format '{{{{.ID}}}}' | grep -c ."
                ),
            ],
        );
        assert_eq!(
            events.stdout.trim(),
            "1",
            "{node} pulled {} times",
            events.stdout.trim()
        );
    }
    assert_nothing_left(&job);
}

/// An image of its own, with `/marker` saying `mark`, on `node` only; returns its id.
fn image_only_on(node: &str, tag: &str, mark: &str) -> String {
    cluster();
    let r = root_on(
        node,
        &[
            "sh",
            "-c",
            &format!(
                "docker rm -f mk-{mark} >/dev/null 2>&1; docker run --network=none --name mk-{mark} {IMAGE} sh -c 'echo {mark} > /marker' && docker commit mk-{mark} {tag} && docker rm mk-{mark} >/dev/null"
            ),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    r.stdout.trim().to_string()
}

/// Puts `docker save TAG` of `node` into a share as `archive` (a path under /shared, in
/// the share's own compression), owned by `owner`: what that user could write there.
fn plant_archive(node: &str, tag: &str, archive: &str, owner: &str) {
    let saved = Command::new("docker")
        .args(["exec", node, "docker", "save", tag])
        .output()
        .expect("docker exec");
    assert!(saved.status.success(), "docker save {tag} on {node} failed");
    let on_host = format!(
        "{SHARED}{}",
        archive.strip_prefix("/shared").expect("under /shared")
    );
    let packed = zstd::encode_all(&saved.stdout[..], 1).expect("compress");
    std::fs::write(format!("{on_host}.new"), packed).expect("write the archive");
    place_as(node, archive, owner);
}

/// Moves `ARCHIVE.new` (written from the host) into place as `archive`, owned by `owner`.
fn place_as(node: &str, archive: &str, owner: &str) {
    let placed = root_on(
        node,
        &[
            "sh",
            "-c",
            &format!("chown {owner}: {archive}.new && mv {archive}.new {archive}"),
        ],
    );
    assert_eq!(placed.code, 0, "{}", placed.all());
}

#[test]
fn direct_mode_runs_an_image_only_node1_has_on_three_nodes_by_id_and_refuses_a_tampered_archive() {
    let _g = shared();
    let pid = std::process::id();
    let tag = format!("mnd-vc-job:direct-only1-{pid}");
    let mark = format!("direct-only1-{pid}");
    let id = image_only_on("node1", &tag, &mark);
    let archive = format!(
        "/shared/home/dave/.mnd/images/{}.tar.zst",
        id.replace(':', "-")
    );
    root_on("node1", &["rm", "-f", &archive]);
    let step =
        format!("srun -N3 -n3 --mnd-image={tag} bash -c 'echo $SLURMD_NODENAME: $(cat /marker)'");
    // 1. dave (outside the docker group) runs it on all three nodes: node1 saves it into
    // his share, node2 and node3 load it by id (a load, no tag), and the Epilog removes it
    // with the job.
    let since = root_on("node1", &["date", "+%s"]).stdout.trim().to_string();
    let (r, job) = dave_job(3, &step);
    assert_eq!(r.code, 0, "{}", r.all());
    for node in NODES {
        assert!(
            r.stdout.contains(&format!("{node}: {mark}")),
            "{node}: {}",
            r.all()
        );
    }
    assert_nothing_left(&job);
    for node in ["node2", "node3"] {
        // Other tests load and tag images meanwhile: only this image's events count.
        let events = root_on(
            node,
            &[
                "sh",
                "-c",
                &format!(
                    "docker events --since {since} --until $(( $(date +%s) + 2 )) --filter type=image --format '{{{{.Action}}}} {{{{.ID}}}} {{{{.Actor.Attributes.name}}}}'"
                ),
            ],
        )
        .stdout;
        let loads = events
            .lines()
            .filter(|l| l.starts_with(&format!("load {id}")))
            .count();
        assert_eq!(loads, 1, "{node}: loads of {id}: {events}");
        assert!(
            !events
                .lines()
                .any(|l| l.starts_with("tag ") && (l.contains(&id) || l.contains(&tag))),
            "{node}: a name was given to {id}: {events}"
        );
        assert_ne!(
            root_on(node, &["docker", "image", "inspect", &tag]).code,
            0,
            "{node} has the name {tag}"
        );
        // The Epilog removes it, once the job ended on that node.
        wait_until(
            &format!("the Epilog to remove {id} from {node}"),
            Duration::from_secs(30),
            || root_on(node, &["docker", "image", "inspect", &id]).code != 0,
        );
    }
    let owner = root_on("node1", &["stat", "-c", "%U %a", &archive]);
    assert_eq!(owner.stdout.trim(), "dave 600", "{}", owner.all());
    assert_nothing_left(&job);
    // 2. dave swaps the archive for one of another image under the same name: the nodes
    // that need it refuse it, naming both ids, and load nothing.
    let evil = format!("mnd-vc-job:evil-{pid}");
    image_only_on("node3", &evil, &format!("direct-evil-{pid}"));
    assert_eq!(root_on("node3", &["docker", "tag", &evil, &tag]).code, 0);
    plant_archive("node3", &tag, &archive, "dave");
    root_on("node3", &["docker", "rmi", &evil, &tag]);
    let (r, job) = dave_job(3, &step);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("the archive holds image sha256:")
            && r.stderr.contains(&format!("not {id}")),
        "{}",
        r.all()
    );
    for node in ["node2", "node3"] {
        for image in [id.as_str(), tag.as_str()] {
            let there = root_on(node, &["docker", "image", "inspect", image]);
            assert_ne!(
                there.code, 0,
                "{node} loaded {image} from a tampered archive"
            );
        }
    }
    assert_nothing_left(&job);
    untag(&tag, &["node1"]);
    root_on("node1", &["rm", "-f", &archive]);
}

/// A zstd archive in the share as `archive`, owned by `owner`, that unpacks to a tar
/// stream of one `abc/layer.tar` of `bytes` zeros: a decompression bomb of a few KiB.
fn plant_bomb(node: &str, archive: &str, bytes: u64, owner: &str) {
    let on_host = format!(
        "{SHARED}{}",
        archive.strip_prefix("/shared").expect("under /shared")
    );
    let file = std::fs::File::create(format!("{on_host}.new")).expect("create the bomb");
    let mut packed = zstd::Encoder::new(file, 3).expect("zstd");
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_path("abc/layer.tar").expect("path");
    header.set_cksum();
    std::io::Write::write_all(&mut packed, header.as_bytes()).expect("write");
    std::io::copy(
        &mut std::io::Read::take(std::io::repeat(0), bytes),
        &mut packed,
    )
    .expect("write");
    packed.finish().expect("finish");
    place_as(node, archive, owner);
}

/// S5: dave plants, under the name of his node1-only image's archive, a few KiB that unpack
/// past what an image of its size can take (twice its size plus 256 MiB, the bound the
/// first node signs into its word). node2 and node3 cut it off while it streams into root's
/// Docker, naming the bound, and load nothing; before, the whole stream went into Docker and
/// only a check at its end refused it.
#[test]
fn a_share_archive_that_unpacks_past_its_signed_size_is_cut_off_while_it_streams() {
    let _g = shared();
    let pid = std::process::id();
    let tag = format!("mnd-vc-job:bomb-{pid}");
    let id = image_only_on("node1", &tag, &format!("bomb-{pid}"));
    let size: u64 = root_on(
        "node1",
        &["docker", "image", "inspect", "-f", "{{.Size}}", &id],
    )
    .stdout
    .trim()
    .parse()
    .expect("the image's size");
    let limit = size * 2 + (256 << 20);
    let archive = format!(
        "/shared/home/dave/.mnd/images/{}.tar.zst",
        id.replace(':', "-")
    );
    root_on("node1", &["mkdir", "-p", "/shared/home/dave/.mnd/images"]);
    root_on(
        "node1",
        &["chown", "dave:", "/shared/home/dave/.mnd/images"],
    );
    plant_bomb("node1", &archive, limit + (64 << 20), "dave");
    // Positive control: the bomb is in place and unpacks past the bound.
    let planted = std::fs::metadata(format!(
        "{SHARED}{}",
        archive.strip_prefix("/shared").unwrap()
    ))
    .expect("the planted archive");
    assert!(planted.len() < (1 << 20), "{} bytes packed", planted.len());
    let (r, job) = dave_job(3, &format!("srun -N3 -n3 --mnd-image={tag} true"));
    assert_ne!(r.code, 0, "{}", r.all());
    for node in ["node2", "node3"] {
        assert!(
            r.stderr.contains(node) && r.stderr.contains(&format!(
                "the archive unpacks to more than {limit} bytes, the most a saved image of {size} bytes"
            )),
            "{node}: {}",
            r.all()
        );
        assert_ne!(
            root_on(node, &["docker", "image", "inspect", &id]).code,
            0,
            "{node} loaded {id} from the bomb"
        );
    }
    assert_nothing_left(&job);
    untag(&tag, &["node1"]);
    root_on("node1", &["rm", "-f", &archive]);
}

#[test]
fn a_slow_pull_in_direct_mode_shows_its_progress_on_the_users_terminal() {
    let _g = shared();
    cluster();
    let (host, repo) = big_image("progress");
    // About 4 MB/s per node: the 40 MB layer takes about 10 s, two progress lines or more.
    let (slow, p) = through_proxy(&host, &repo, 5103, "slow", 4_000_000);
    let (r, job) = dave_job(3, &format!("srun -N3 -n3 --mnd-image={slow} true"));
    drop(p);
    forget(&slow);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.took > Duration::from_secs(6),
        "the pull was not slow ({:?}); the test proves nothing",
        r.took
    );
    for node in NODES {
        assert!(
            r.stderr.contains(&format!("mnd: {node}: pulling {slow}: ")),
            "no progress from {node}: {}",
            r.all()
        );
        assert!(
            r.stderr
                .contains(&format!("mnd: {node}: pulled {slow} in ")),
            "{}",
            r.all()
        );
    }
    assert_nothing_left(&job);
}

/// `srun -K` ends the step while node1 is still pulling (its pull stalls; node2 and node3
/// have the image). slurmstepd starts the root helper with SIGTERM blocked; the helper
/// unblocks it, so the step's SIGTERM stops the pull at once and says so, instead of the
/// SIGKILL KillWait seconds later ("the helper failed (signal: 9)").
#[test]
fn a_node_still_pulling_when_srun_k_ends_the_step_stops_at_sigterm() {
    let _g = shared();
    cluster();
    let (host, repo) = big_image("sigterm");
    let (stalled, p) = through_proxy(&host, &repo, 5104, "stall", 1_000_000);
    for n in ["node2", "node3"] {
        let r = root_on(
            n,
            &[
                "sh",
                "-c",
                &format!(
                    "docker pull -q {host}:5000/{repo} && docker tag {host}:5000/{repo} {stalled}"
                ),
            ],
        );
        assert_eq!(r.code, 0, "{n}: {}", r.all());
    }
    let (r, job) = dave_job(
        3,
        &format!("srun -N3 -n3 -K --mnd-image={stalled} bash -c 'if [ $SLURM_PROCID = 1 ]; then exit 5; fi; sleep 300'"),
    );
    drop(p);
    forget(&stalled);
    for n in ["node2", "node3"] {
        root_on(n, &["docker", "rmi", "-f", &format!("{host}:5000/{repo}")]);
    }
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("task 1: Exited with exit code 5"),
        "{}",
        r.all()
    );
    // Before its runtime starts the helper dies of SIGTERM; after, it stops the pull. srun,
    // ending the step itself, may exit before node1's line reaches it: slurmd's log has it.
    let log = root_on(
        "node1",
        &[
            "grep",
            "-F",
            &format!("[{job}.0] error: mnd: node1: "),
            "/var/log/slurm/slurmd.log",
        ],
    );
    let said = format!("{}{}", r.stderr, log.stdout);
    let stopped = said.contains("mnd: node1: stopped (SIGTERM) while starting the container")
        || said.contains("mnd: node1: the helper failed (signal: 15");
    assert!(
        stopped,
        "node1's helper did not answer SIGTERM: {}\nslurmd: {}",
        r.all(),
        log.all()
    );
    assert_nothing_left(&job);
}

/// alice's copies (label `mnd.accounts`) of image `base` (label `mnd.base`) on node1.
fn copies_of(base: &str) -> Vec<String> {
    let r = root_on(
        "node1",
        &[
            "sh",
            "-c",
            "for i in $(docker images -q --no-trunc --filter label=mnd.accounts --filter label=mnd.uid=1001); do echo $i $(docker image inspect -f '{{index .Config.Labels \"mnd.base\"}}' $i); done",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    r.stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, parent)| *parent == base)
        .map(|(id, _)| id.to_string())
        .collect()
}

#[test]
fn a_users_copy_of_the_image_is_made_once_and_goes_when_the_image_loses_its_name() {
    let _g = shared();
    let tag = "e2e-copy:1";
    let first = image_only_on("node1", tag, "copy-one");
    let s = script(
        "alice",
        "e2e-copy.sh",
        "#!/bin/sh\necho marker=$(cat /marker) user=$(id -un) mnd=$(stat -c %U /.mnd) \
         passwd=$(stat -c %U /etc/passwd) home=$(getent passwd alice | cut -d: -f6)\n",
    );
    let run = |want: &str| {
        let name = unique("copy");
        let r = alice(&format!(
            "srun -N1 -n1 -w node1 mnd-srun --container={tag} --dockname={name} --script=./{s}"
        ));
        assert_eq!(r.code, 0, "{}", r.all());
        assert!(
            r.stdout.contains(&format!(
                "marker={want} user=alice mnd=alice passwd=root home=/shared/home/alice"
            )),
            "{}",
            r.all()
        );
        assert_clean(&name, CLEAN);
    };
    run("copy-one");
    let made = copies_of(&first);
    assert_eq!(made.len(), 1, "one copy of {first}: {made:?}");
    run("copy-one");
    assert_eq!(copies_of(&first), made, "the second job made no new copy");
    // The tag moves to a new image: the first loses its name, and the next copy made
    // takes the old copy with it, and the old image, which nothing else holds.
    let second = image_only_on("node1", tag, "copy-two");
    run("copy-two");
    assert_eq!(copies_of(&second).len(), 1);
    for gone in [&made[0], &first] {
        let r = root_on("node1", &["docker", "image", "inspect", gone]);
        assert_ne!(r.code, 0, "{gone} is still there");
    }
    // `docker rmi` of the image: the Epilog's cleanup gives its space back.
    let r = root_on(
        "node1",
        &["sh", "-c", &format!("docker rmi {tag} && {EPILOG_CLEANUP}")],
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let r = root_on("node1", &["docker", "image", "inspect", &second]);
    assert_ne!(r.code, 0, "the removed image is held by its copy");
    assert!(copies_of(&second).is_empty());
}

/// A one-node job of alice on node1 running `image`, whose script prints `say` then holds
/// until released.
struct HeldOnNode1 {
    name: String,
    go: String,
    job: std::thread::JoinHandle<Run>,
}

impl HeldOnNode1 {
    fn start(image: &str, tag: &str, say: &str) -> HeldOnNode1 {
        let go = format!("/shared/home/alice/e2e-{tag}-go-{}", std::process::id());
        let s = script(
            "alice",
            &format!("e2e-{tag}.sh"),
            &format!("#!/bin/sh\n{say}\nwhile [ ! -e {go} ]; do sleep 0.1; done\necho released\n"),
        );
        let name = unique(tag);
        let line = format!(
            "srun -N1 -n1 -w node1 mnd-srun --container={image} --dockname={name} --script=./{s}"
        );
        let job = std::thread::spawn(move || alice(&line));
        HeldOnNode1 { name, go, job }
    }

    /// The id of the job's container, once Docker lists it.
    fn container(&self) -> String {
        let mut id = String::new();
        let filter = format!("name={}", self.name);
        wait_until("the job's container", Duration::from_secs(90), || {
            let ps = root_on("node1", &["docker", "ps", "-q", "--filter", &filter]);
            id = ps.stdout.trim().to_string();
            !id.is_empty()
        });
        id
    }

    /// Lets the script end; the job's run, once nothing of it is left.
    fn release(self) -> Run {
        root_on("node1", &["touch", &self.go]);
        let r = self.job.join().unwrap();
        root_on("node1", &["rm", "-f", &self.go]);
        assert!(r.code == 0 && r.stdout.contains("released"), "{}", r.all());
        assert_clean(&self.name, CLEAN);
        r
    }
}

#[test]
fn a_users_copy_of_a_pulled_image_goes_with_it_even_where_docker_stops_listing_it() {
    // On Docker's containerd image store a pulled image, and a copy of it, can drop out of
    // Docker's image list (their blobs go; they stay on disk): the Epilog's cleanup must
    // still find the copy once the image is removed. The copy is found through the job's
    // container, which Docker lists whatever its image. A copy younger than a minute is
    // kept (a job may be starting on it).
    let _g = shared();
    let tag = format!("copypull-{}", std::process::id());
    let image = pushed_image(&tag, &format!("echo {tag} > /marker"));
    let held = HeldOnNode1::start(&image, "copypull", "cat /marker");
    let container = held.container();
    let copy = root_on(
        "node1",
        &["docker", "inspect", "-f", "{{.Image}}", &container],
    )
    .stdout
    .trim()
    .to_string();
    let r = held.release();
    assert!(r.stdout.contains(&tag), "{}", r.all());
    let role = root_on(
        "node1",
        &[
            "docker",
            "image",
            "inspect",
            "-f",
            "{{index .Config.Labels \"mnd.role\"}}",
            &copy,
        ],
    );
    assert_eq!(
        role.stdout.trim(),
        "accounts",
        "{copy} is no copy: {}",
        role.all()
    );
    let r = root_on("node1", &["docker", "rmi", &image]);
    assert_eq!(r.code, 0, "{}", r.all());
    // The cleanup runs at most once a second (each one asks Docker to prune).
    let mut last: Option<std::time::Instant> = None;
    wait_until(
        "the Epilog's cleanup to remove the copy",
        Duration::from_secs(150),
        || {
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return false;
            }
            last = Some(std::time::Instant::now());
            root_on("node1", &["sh", "-c", EPILOG_CLEANUP]);
            root_on("node1", &["docker", "image", "inspect", &copy]).code != 0
        },
    );
}

#[test]
fn an_image_committed_from_a_jobs_container_is_never_taken_for_a_copy() {
    let _g = shared();
    let held = HeldOnNode1::start(IMAGE, "commitcopy", "true");
    // What a user's `docker commit` of the running job makes: an unnamed image.
    let committed = root_on("node1", &["docker", "commit", &held.container()]);
    held.release();
    assert_eq!(committed.code, 0, "{}", committed.all());
    let committed = committed.stdout.trim().to_string();
    let labels = root_on(
        "node1",
        &[
            "docker",
            "image",
            "inspect",
            "-f",
            "{{index .Config.Labels \"mnd.accounts\"}}|{{index .Config.Labels \"mnd.base\"}}",
            &committed,
        ],
    );
    assert_eq!(
        labels.stdout.trim(),
        "|",
        "a copy's labels: {}",
        labels.all()
    );
    // The Epilog's cleanup leaves it, though it is unnamed and made from a copy.
    let r = root_on("node1", &["sh", "-c", EPILOG_CLEANUP]);
    assert_eq!(r.code, 0, "{}", r.all());
    let kept = root_on("node1", &["docker", "image", "inspect", &committed]);
    root_on("node1", &["docker", "rmi", &committed]);
    assert_eq!(kept.code, 0, "the committed image was removed as a copy");
}

#[test]
fn a_share_process_the_user_stops_is_killed_and_only_their_step_fails() {
    let _g = shared();
    let pid = std::process::id();
    let tag = format!("mnd-vc-job:direct-stopped-{pid}");
    let id = image_only_on("node1", &tag, &format!("direct-stopped-{pid}"));
    let archive = format!(
        "/shared/home/dave/.mnd/images/{}.tar.zst",
        id.replace(':', "-")
    );
    root_on("node1", &["rm", "-f", &archive]);
    // dave's overlapping step on node2 stops every process of his named mnd there (the ones
    // the root side runs as him: the lookup, the share's reader) as soon as one appears.
    let (r, job) = dave_job(
        3,
        &format!(
            "srun --overlap -N1 -n1 -w node2 sh -c 'for i in $(seq 2400); do pkill -STOP -u $(id -u) -x mnd && {{ echo process-stopped; exit 0; }}; sleep 0.05; done; echo never-stopped' & w=$!; \
             timeout 280 srun -N3 -n3 --mnd-image={tag} true; echo srun-rc=$?; wait $w; pkill -CONT -u $(id -u) -x mnd"
        ),
    );
    // The attack ran: a process of dave's that root waits on was stopped on node2.
    assert!(r.stdout.contains("process-stopped"), "{}", r.all());
    // The step ended on its own (timeout's 124 would be root waiting for good), node2 saying
    // why: the stopped process was killed after its bound.
    assert!(
        r.stdout.contains("srun-rc=") && !r.stdout.contains("srun-rc=124"),
        "{}",
        r.all()
    );
    assert!(
        r.stderr.contains("node2") && r.stderr.contains("it was killed"),
        "{}",
        r.all()
    );
    assert_nothing_left(&job);
    for node in NODES {
        root_on(
            node,
            &[
                "sh",
                "-c",
                &format!("docker rmi {tag} >/dev/null 2>&1; true"),
            ],
        );
    }
    root_on("node1", &["rm", "-f", &archive]);
}
