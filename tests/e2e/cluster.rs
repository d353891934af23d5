//! The e2e suite's one support module. Helpers: bring the cluster up once, run commands on
//! nodes as a user, write scripts into the shared home, run dave's direct-mode jobs, install
//! the default site policy, and check that no container of a test is left on any node
//! (within the one [`CLEAN`] bound).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nodes of the test cluster.
pub const NODES: [&str; 3] = ["node1", "node2", "node3"];
/// The job image loaded on every node.
pub const IMAGE: &str = "mnd-vc-job:3";
/// The shared folder as seen from the host.
pub const SHARED: &str = "/var/lib/mnd-vcluster/shared";

/// How long a job's containers (and the plugin's step files) may take to be gone from every
/// node once it ended, on every path (normal end, failure, scancel, kill, time limit). An
/// upper bound of a condition wait (`assert_clean`, `wait_until`), not a sleep: a larger value
/// only costs time when something is left behind; generous for shared, noisy machines.
pub const CLEAN: Duration = Duration::from_secs(40);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Brings the cluster up (idempotent); panics with vcluster's output when it cannot.
pub fn cluster() {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let r = UP.get_or_init(|| {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_mnd-srun"))
            .parent()
            .unwrap()
            .to_path_buf();
        let out = Command::new(repo().join("scripts/vcluster"))
            .args(["up", "3"])
            .env("MND_VC_TARGET", bin_dir)
            .output()
            .expect("run scripts/vcluster");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = r {
        panic!("the virtual cluster could not be brought up:\n{e}");
    }
}

/// Runs `scripts/vcluster ARGS` with this build's binaries and `env`; panics with what it
/// said when it fails; returns what it printed.
pub fn vcluster(args: &[&str], env: &[(&str, &str)]) -> String {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_mnd-srun")).parent().unwrap();
    let out = Command::new(repo().join("scripts/vcluster"))
        .args(args)
        .env("MND_VC_TARGET", bin_dir)
        .envs(env.iter().copied())
        .output()
        .expect("run scripts/vcluster");
    assert!(
        out.status.success(),
        "vcluster {args:?} {env:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The job image plus Debian's PyTorch on every node (built once); its name.
pub fn torch_image() -> String {
    cluster();
    vcluster(&["torch-image"], &[])
}

/// Output of a command, as text.
pub struct Run {
    /// Exit code (-1 when killed).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub took: Duration,
}

impl Run {
    fn from(out: Output, took: Duration) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took,
        }
    }

    /// Both streams, for assertion messages.
    pub fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The `docker exec` command that runs `argv` on `node` as `user` in their home.
pub fn on_node(node: &str, user: &str, argv: &[&str]) -> Command {
    cluster();
    let mut c = Command::new("docker");
    c.args([
        "exec",
        "-u",
        user,
        "-w",
        &format!("/shared/home/{user}"),
        node,
        "timeout",
        "180",
    ]);
    c.args(argv);
    c
}

/// Runs `argv` on `node` as `user` and waits.
pub fn run_on(node: &str, user: &str, argv: &[&str]) -> Run {
    let t = Instant::now();
    let out = on_node(node, user, argv).output().expect("docker exec");
    Run::from(out, t.elapsed())
}

/// Runs a shell command line on node1 as dave, who is not in the docker group (direct mode).
pub fn dave(cmdline: &str) -> Run {
    run_on("node1", "dave", &["bash", "-c", cmdline])
}

/// Runs a shell command line on node1 as alice (for srun/sbatch invocations).
pub fn alice(cmdline: &str) -> Run {
    run_on("node1", "alice", &["bash", "-c", cmdline])
}

/// Writes an executable script into a user's shared home; returns its name.
pub fn script(user: &str, name: &str, body: &str) -> String {
    cluster();
    let uid = match user {
        "alice" => 1001,
        "bob" => 1002,
        "carol" => 1003,
        "dave" => 1004,
        _ => panic!("unknown test user {user}"),
    };
    let path = Path::new(SHARED).join("home").join(user).join(name);
    std::fs::write(&path, body).unwrap();
    let status = Command::new("chown")
        .arg(format!("{uid}:{uid}"))
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("chmod")
        .arg("0755")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    name.to_string()
}

/// Names of containers on `node` whose name starts with `prefix` (running or not).
pub fn containers(node: &str, prefix: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "exec",
            node,
            "docker",
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("name=^{prefix}"),
        ])
        .output()
        .expect("docker ps on node");
    // A failing `docker ps` must never read as "no containers left".
    assert!(
        out.status.success(),
        "docker ps on {node} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits up to `within` until no node has a container named `prefix*`; panics otherwise.
/// Returns how long it took.
pub fn assert_clean(prefix: &str, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let left: Vec<String> = NODES.iter().flat_map(|n| containers(n, prefix)).collect();
        if left.is_empty() {
            return t.elapsed();
        }
        if t.elapsed() > within {
            panic!("containers left behind after {within:?}: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether every node has exactly one container named `name*`, and it is in `status`
/// (`docker ps --filter status=`).
pub fn every_container_is(name: &str, status: &str) -> bool {
    NODES.iter().all(|n| {
        let r = root_on(
            n,
            &[
                "docker",
                "ps",
                "-q",
                "--filter",
                &format!("name=^{name}"),
                "--filter",
                &format!("status={status}"),
            ],
        );
        r.code == 0 && r.stdout.lines().count() == 1
    })
}

/// sshd processes of `user` on `node` that belong to no running container (containers of
/// other jobs still running are not strays). Processes are listed before containers, and a
/// stray must still be one a second later, so containers starting or being removed by
/// tests running alongside do not count.
pub fn stray_sshd(node: &str, user: &str) -> usize {
    let script = format!(
        "strays() {{ pids=$(pgrep -u {user} -f 'sshd -D -e -f /.mnd'); running=$(docker ps -q --no-trunc); \
         for p in $pids; do id=$(grep -o '[0-9a-f]\\{{64\\}}' /proc/$p/cgroup 2>/dev/null | head -n1); \
         [ -e /proc/$p ] || continue; case \"$running\" in *\"$id\"*) [ -n \"$id\" ] && continue ;; esac; echo $p; done; }}; \
         first=$(strays); sleep 1; second=$(strays); for p in $first; do case \" $(echo $second) \" in *\" $p \"*) echo stray $p ;; esac; done"
    );
    let out = Command::new("docker")
        .args(["exec", node, "sh", "-c", &script])
        .output()
        .expect("stray sshd check");
    assert!(
        out.status.success() && root_on(node, &["docker", "ps", "-q"]).code == 0,
        "the stray sshd check on {node} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("stray"))
        .count()
}

/// A unique container name prefix for one test (`--dockname`).
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}{}-{tag}",
        std::process::id() % 10000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The `srun ... mnd-srun` command line for alice's job with the given extra flags.
pub fn srun_line(nodes: u32, name: &str, flags: &str) -> String {
    format!("srun -N{nodes} -n{nodes} mnd-srun --container={IMAGE} --dockname={name} {flags}")
}

static CLUSTER_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by every test that only submits jobs: they may run side by side.
pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    CLUSTER_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// Held by a test that disturbs a node (restarts its dockerd): it runs alone.
pub fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    CLUSTER_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `cond` holds, up to `within`; panics with `what` otherwise.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command on a node as root (for signals and daemons).
pub fn root_on(node: &str, argv: &[&str]) -> Run {
    let t = Instant::now();
    let out = Command::new("docker")
        .arg("exec")
        .arg(node)
        .args(argv)
        .output()
        .expect("docker exec");
    Run::from(out, t.elapsed())
}

/// Installs a site config as root at `/etc/mnd-srun/NAME` on every node (where `MND_CONFIG`
/// may point); returns its path.
pub fn site_config(name: &str, text: &str) -> String {
    cluster();
    let path = format!("/etc/mnd-srun/{name}");
    for node in NODES {
        let mut child = Command::new("docker")
            .args(["exec", "-i", node, "sh", "-c"])
            .arg(format!("mkdir -p /etc/mnd-srun && cat > {path}.new && chmod 0644 {path}.new && mv {path}.new {path}"))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("docker exec");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "could not write {path} on {node}"
        );
    }
    path
}

/// The job image with one more layer (made by `layer_cmd`), tagged `mnd-vc-job:TAG`, pushed
/// to the registry on the cluster bridge; returns the name the nodes pull (`ADDR:5000/...`).
pub fn pushed_image(tag: &str, layer_cmd: &str) -> String {
    cluster();
    let local = format!("mnd-vc-job:{tag}");
    let maker = format!("mk-{tag}");
    let _ = Command::new("docker").args(["rm", "-f", &maker]).output();
    let made = Command::new("docker")
        .args(["run", "--name", &maker, IMAGE, "sh", "-c", layer_cmd])
        .status()
        .unwrap();
    assert!(made.success(), "could not make the layer of {local}");
    let committed = Command::new("docker")
        .args(["commit", &maker, &local])
        .output()
        .unwrap();
    assert!(committed.status.success(), "could not commit {local}");
    let _ = Command::new("docker").args(["rm", "-f", &maker]).output();
    let image = vcluster(&["registry", &local], &[]);
    assert!(image.ends_with(&local), "{image}");
    // The registry holds it now; the host keeps nothing of the test.
    let pushed = format!("127.0.0.1:5000/{local}");
    let _ = Command::new("docker")
        .args(["rmi", &local, &pushed])
        .output();
    image
}

/// A 3-node job of alice whose script says it started (with its `JOB.STEP`), then holds
/// until released, then prints `held-job-released`.
pub struct HeldJob {
    /// Slurm job id.
    pub id: String,
    release: String,
    job: std::thread::JoinHandle<Run>,
}

impl HeldJob {
    /// Starts the job as `name` (container prefix) with extra mnd-srun `flags`, and waits
    /// until its script runs.
    pub fn start(name: &str, flags: &str) -> HeldJob {
        let home = format!("{SHARED}/home/alice");
        let (started, release) = (
            format!("{home}/e2e-{name}.started"),
            format!("{home}/e2e-{name}.release"),
        );
        let _ = std::fs::remove_file(&started);
        let _ = std::fs::remove_file(&release);
        let s = script(
            "alice",
            &format!("e2e-held-{name}.sh"),
            &format!(
                "#!/bin/bash\necho $MND_JOB > ~/e2e-{name}.tmp && mv ~/e2e-{name}.tmp ~/e2e-{name}.started\n\
                 while [ ! -e ~/e2e-{name}.release ]; do sleep 0.1; done\necho held-job-released\n"
            ),
        );
        let line = format!("{} {flags} --script=./{s}", srun_line(3, name, ""));
        let job = std::thread::spawn(move || alice(&line));
        wait_until("the job's script to start", Duration::from_secs(60), || {
            Path::new(&started).exists()
        });
        let label = std::fs::read_to_string(&started).unwrap();
        let id = label.trim().split('.').next().unwrap().to_string();
        HeldJob { id, release, job }
    }

    /// Lets the script end; returns how the job ended.
    pub fn release(self) -> Run {
        std::fs::write(&self.release, "").unwrap();
        let r = self.job.join().unwrap();
        let _ = std::fs::remove_file(&self.release);
        r
    }
}

/// The job image made into `img` on every node (where it is missing) by running `cmd` in a
/// container of it and committing that with the Dockerfile line `change`.
pub fn image_on_every_node(img: &str, cmd: &str, change: &str) {
    cluster();
    for node in NODES {
        let r = root_on(
            node,
            &[
                "sh",
                "-c",
                &format!(
                    "docker image inspect {img} >/dev/null 2>&1 || {{ c=$(docker create --network=none {IMAGE} sh -c '{cmd}') && \
                     docker start -a $c && docker commit --change '{change}' $c {img} >/dev/null && docker rm $c >/dev/null; }}"
                ),
            ],
        );
        assert_eq!(r.code, 0, "{}", r.all());
    }
}

/// The job has left Slurm's queue: `squeue` answered and does not list it. A failed
/// `squeue` (slurmctld down, say) is never taken for "gone".
pub fn job_gone(id: &str) -> bool {
    let r = root_on("node1", &["squeue", "-h", "-j", id]);
    match r.code {
        0 => r.stdout.trim().is_empty(),
        _ => r.stderr.contains("Invalid job id"),
    }
}

/// No container and no plugin step file of dave's job `job` on any node.
pub fn assert_nothing_left(job: &str) {
    assert_clean(&format!("mnd-dave-{job}"), CLEAN);
    for node in NODES {
        wait_until(
            &format!("the plugin's files of job {job} on {node} to go"),
            CLEAN,
            || {
                let r = root_on(
                    node,
                    &[
                        "sh",
                        "-c",
                        &format!("ls /run/mnd-spank/ 2>/dev/null | grep -c '^{job}\\.' || true"),
                    ],
                );
                r.code == 0 && r.stdout.trim() == "0"
            },
        );
    }
}

/// Runs `cmdline` as dave inside a fresh allocation of `nodes` nodes; returns the run and the
/// job's id, so what is left is looked for by job whatever other tests run meanwhile.
pub fn dave_job(nodes: u32, cmdline: &str) -> (Run, String) {
    job_as("dave", &format!("-N{nodes} --ntasks-per-node=2"), cmdline)
}

/// Runs `cmdline` as `user` (on node1) inside a fresh allocation `salloc ALLOC`; the run
/// and the job's id.
pub fn job_as(user: &str, alloc: &str, cmdline: &str) -> (Run, String) {
    let quoted = format!("'{}'", cmdline.replace('\'', "'\\''"));
    // A hang (MPI picking the wrong network, say) fails the test instead of blocking it.
    let r = run_on(
        "node1",
        user,
        &[
            "bash",
            "-c",
            &format!("timeout 300 salloc {alloc} bash -c {quoted}"),
        ],
    );
    let job = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("salloc: Granted job allocation "))
        .unwrap_or_else(|| panic!("no allocation: {}", r.all()))
        .trim()
        .to_string();
    (r, job)
}

/// A site policy at the plugin's config path (plugstack.conf names none: the default file).
pub struct DefaultPolicy;

impl DefaultPolicy {
    pub fn install(text: &str) -> DefaultPolicy {
        site_config("config.toml", text);
        DefaultPolicy
    }
}

impl Drop for DefaultPolicy {
    fn drop(&mut self) {
        for node in NODES {
            root_on(node, &["rm", "-f", "/etc/mnd-srun/config.toml"]);
        }
    }
}
