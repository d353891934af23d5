//! Scale benchmark (not a test) of the coordinator's real path over the fan-out tree:
//! `fanout::ready_below` (control connections with the HMAC handshake to rank 0's children,
//! READY for every node coming up the tree, sshd banners), then `fanout::stop_all` and
//! `fanout::abort_all`, against N simulated workers on loopback, one address each
//! (127.1.x.y), run in child processes. Each simulated worker speaks the real worker side
//! (`control::Server`) and relays for its children with the same `fanout` functions the
//! launcher's worker uses; its container is stood in by an immediate READY, and it closes
//! its link only once every node below it closed, so "stop"/"abort" are measured until the
//! order reached every node. Each coordinator round runs in a process of its own, so its
//! descriptors and memory are rank 0's alone; `1024` rounds run it under that hard
//! open-file limit, as under `ulimit -n 1024`. Width N is the flat star of earlier versions
//! (rank 0 connects to every worker).
//!
//! Prints one line per round. `cargo bench --bench coordinator` (scripts/bench runs it).

use mnd::control::{JobKey, NodeReady, Order, Server, Status};
use mnd::launch::fanout::{self, Connected};
use mnd::plan::{self, NodeFacts, Role};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// The simulated workers' sshd port (control is the next one).
const SSHD_PORT: u16 = 47100;
/// The job label both sides prove they belong to.
const JOB: &str = "7.0";
/// Workers per child process (each needs about four descriptors per worker: its two
/// listeners, its parent's link and its link to a child).
const PER_CHILD: usize = 2_000;

fn key() -> JobKey {
    JobKey::new(b"bench-control-key", JOB)
}

/// Loopback address of simulated worker i.
fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        1 + (i / 65536) as u8,
        ((i / 256) % 256) as u8,
        (i % 256) as u8 + 1,
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Child: workers `from..to` of a job of `n` with tree width `width` serve forever: accept
/// the parent, gather the nodes below, report READY for all, pass the order down, wait until
/// everyone below closed, close; again for the next round. Each has a banner listener
/// that answers the sshd probes of its node.
fn workers(n: usize, width: usize, from: usize, to: usize) {
    mnd::node::raise_open_files();
    let job = bench_plan(n, width);
    rt().block_on(async {
        for i in from..to {
            // Its own sshd stand-in, as every node has: one listener for all would overflow
            // its accept queue when thousands of relays probe at once.
            let sshd = tokio::net::TcpListener::bind((addr(i), SSHD_PORT))
                .await
                .expect("bind a simulated sshd");
            tokio::spawn(async move {
                loop {
                    match sshd.accept().await {
                        Ok((mut s, _)) => {
                            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2 simulated\r\n").await;
                        }
                        // Out of descriptors for a moment: the probe retries.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            });
            let at = SocketAddr::from((addr(i), SSHD_PORT + 1));
            let server = Server::bind_on(at, key())
                .await
                .expect("bind a simulated worker");
            let mut plan = job.clone();
            plan.node_rank = i + 1;
            plan.role = Role::Worker;
            tokio::spawn(async move {
                loop {
                    let far = tokio::time::Instant::now() + Duration::from_secs(3600);
                    let Ok(link) = server.accept(far).await else {
                        return;
                    };
                    relay(&plan, link).await;
                }
            });
        }
        println!("listening");
        std::future::pending::<()>().await;
    });
}

/// One simulated worker's round, as the launcher's worker does it without a container.
async fn relay(plan: &plan::Plan, mut link: mnd::control::CoordinatorLink) {
    let connected = Connected::default();
    let by = tokio::time::Instant::now() + Duration::from_secs(300);
    let own = NodeReady {
        sshd_port: SSHD_PORT,
        image_id: "sha256:simulated".into(),
    };
    match fanout::ready_below(plan, &key(), by, &connected, None).await {
        Ok(below) => fanout::report_ready(&mut link, plan.this_node(), own, &below).await,
        Err(e) => {
            let _ = link
                .report(plan.this_node(), &Status::Failed(e.to_string()))
                .await;
        }
    }
    let links = connected.into_inner().unwrap();
    match link.next_order().await {
        Some(Order::Stop) => fanout::stop_all(&links).await,
        Some(Order::Abort(why)) => fanout::abort_all(plan, &key(), links.clone(), &why).await,
        _ => fanout::abort_all(plan, &key(), links.clone(), "parent gone").await,
    }
    // Every child's link ends once the order reached every node below it.
    futures_util::future::join_all(links.iter().map(|l| l.lost())).await;
}

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// The plan rank 0 has for a job on the coordinator (127.0.0.1) and `n` simulated workers,
/// with tree width `width`.
fn bench_plan(n: usize, width: usize) -> plan::Plan {
    let mut nodes = vec!["127.0.0.1".to_string()];
    nodes.extend((0..n).map(|i| addr(i).to_string()));
    let step = mnd::slurm::StepContext {
        job_id: Some(7),
        step_id: Some(0),
        tasks_per_node: vec![1; nodes.len()],
        num_tasks: nodes.len() as u32,
        node_name: nodes[0].clone(),
        nodes,
        ..mnd::slurm::StepContext::local("127.0.0.1")
    };
    let args = mnd::cli::parse(
        [
            "mnd-srun",
            "--container=simulated",
            "--script=/tmp/job.sh",
            &format!("--sshd-port={SSHD_PORT}"),
            "--wait-timeout=300",
            &format!("--tree-width={width}"),
        ]
        .map(String::from),
    )
    .unwrap();
    // The benchmark may run as root; the policy check is not what it measures.
    let site = mnd::config::SiteConfig::parse(
        "[policy]\nallow_root = true\n",
        std::path::Path::new("bench"),
    )
    .unwrap();
    let mut user = mnd::identity::Identity::current().unwrap();
    user.home = "/tmp".into();
    let facts = NodeFacts {
        cwd: "/tmp".into(),
        pid: std::process::id(),
        ..Default::default()
    };
    plan::build(&plan::Inputs {
        step: &step,
        args: &args,
        site: &site,
        user: &user,
        facts: &facts,
        resolve: &|p| Ok(p.to_path_buf()),
    })
    .unwrap()
}

/// Child: one coordinator round against `n` workers: ready, stop, ready again, abort.
fn coordinator(n: usize, width: usize, nofile: Option<u64>) {
    use nix::sys::resource::{setrlimit, Resource};
    match nofile {
        Some(limit) => setrlimit(Resource::RLIMIT_NOFILE, limit, limit).unwrap(),
        None => {
            mnd::node::raise_open_files();
        }
    }
    let plan = bench_plan(n, width);
    rt().block_on(async {
        let mut figures = Vec::new();
        let mut peak_fds = 0;
        for order in ["stop", "abort"] {
            let connected = Connected::default();
            let t = Instant::now();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
            match fanout::ready_below(&plan, &key(), deadline, &connected, None).await {
                Ok(ready) => assert_eq!(ready.len(), n, "every worker READY"),
                Err(e) => {
                    let e = e.to_string();
                    println!("failed after {:.2} s: {}", t.elapsed().as_secs_f64(), &e[..e.len().min(160)]);
                    return;
                }
            }
            let ready = t.elapsed();
            peak_fds = peak_fds.max(count_fds());
            let links = connected.into_inner().unwrap();
            let t = Instant::now();
            if order == "stop" {
                fanout::stop_all(&links).await;
            } else {
                fanout::abort_all(&plan, &key(), links.clone(), "benchmark").await;
            }
            // Every child closes its link once the order reached every node below it.
            futures_util::future::join_all(links.iter().map(|l| l.lost())).await;
            figures.push((ready, t.elapsed()));
        }
        println!(
            "ready {:.0} ms, stop {:.0} ms, ready again {:.0} ms, abort {:.0} ms, peak descriptors {peak_fds}, peak RSS {:.1} MiB",
            figures[0].0.as_secs_f64() * 1e3,
            figures[0].1.as_secs_f64() * 1e3,
            figures[1].0.as_secs_f64() * 1e3,
            figures[1].1.as_secs_f64() * 1e3,
            peak_rss_kb() as f64 / 1024.0
        );
    });
}

/// Runs this benchmark binary in a child mode; returns its stdout lines as they come.
fn child(
    args: &[String],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(c.stdout.take().unwrap()).lines();
    (c, lines)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let num = |i: usize| -> usize { args[i].parse().unwrap() };
    if let Some(i) = args.iter().position(|a| a == "--workers") {
        return workers(num(i + 1), num(i + 2), num(i + 3), num(i + 4));
    }
    if let Some(i) = args.iter().position(|a| a == "--coordinator") {
        let nofile = args[i + 3].parse().ok();
        return coordinator(num(i + 1), num(i + 2), nofile);
    }
    for n in [100, 1_000, 10_000] {
        for width in [mnd::tree::DEFAULT_WIDTH, n] {
            // The workers come up first: "ready" is measured from the last one listening.
            let mut children = Vec::new();
            for from in (0..n).step_by(PER_CHILD) {
                let (c, mut lines) = child(&[
                    "--workers".into(),
                    n.to_string(),
                    width.to_string(),
                    from.to_string(),
                    (from + PER_CHILD).min(n).to_string(),
                ]);
                assert_eq!(lines.next().unwrap().unwrap(), "listening");
                children.push(c);
            }
            let shape = if width == n {
                "flat (rank 0 connects to every worker)".to_string()
            } else {
                format!("tree width {width}")
            };
            for nofile in ["raised", "1024"] {
                let (mut c, lines) = child(&[
                    "--coordinator".into(),
                    n.to_string(),
                    width.to_string(),
                    nofile.into(),
                ]);
                for line in lines {
                    let limit = if nofile == "raised" {
                        "open-file limit raised"
                    } else {
                        "under ulimit -n 1024"
                    };
                    println!(
                        "coordinator, {n} workers, {shape}, {limit}: {}",
                        line.unwrap()
                    );
                }
                c.wait().unwrap();
            }
            for mut c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
