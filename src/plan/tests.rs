use super::*;
use crate::cli;
use crate::config::SiteConfig;
use crate::plan::container::parse_size;
use crate::plan::env::is_variable_name;
use std::collections::BTreeMap;

fn alice() -> Identity {
    crate::identity::test_user()
}

fn step(node_index: usize, gpus: &[u32]) -> StepContext {
    StepContext {
        job_id: Some(42),
        step_id: Some(0),
        nodes: vec!["node1".into(), "node2".into(), "node3".into()],
        node_index,
        local_id: 0,
        proc_id: node_index as u32,
        num_tasks: 3,
        tasks_per_node: vec![1, 1, 1],
        gpus: gpus.to_vec(),
        gpu_uuids: Vec::new(),
        gpus_on_node: (!gpus.is_empty()).then_some(gpus.len() as u32),
        node_name: format!("node{}", node_index + 1),
        resv_ports: Vec::new(),
        node_slots: Vec::new(),
        hosts_mode: false,
    }
}

fn facts() -> NodeFacts {
    NodeFacts {
        cwd: "/shared/home/alice/proj".into(),
        env: BTreeMap::from([
            ("WANDB_KEY".into(), "k".into()),
            ("X".into(), "from-env".into()),
        ]),
        pid: 777,
        ..Default::default()
    }
}

fn args(extra: &[&str]) -> Args {
    let base = ["mnd-srun", "--container=img:1", "--script=./job.sh"];
    cli::parse(base.iter().chain(extra).map(|s| s.to_string())).unwrap()
}

fn plan_with(
    step: &StepContext,
    a: &Args,
    site: &SiteConfig,
    f: &NodeFacts,
) -> Result<Plan, PlanError> {
    build(&Inputs {
        step,
        args: a,
        site,
        user: &alice(),
        facts: f,
        resolve: &|p| Ok(p.to_path_buf()),
    })
}

fn plan(node: usize, extra: &[&str]) -> Plan {
    plan_with(
        &step(node, &[]),
        &args(extra),
        &SiteConfig::default(),
        &facts(),
    )
    .unwrap()
}

/// (target, read-only) of each mount, in order.
fn mount_targets(p: &Plan) -> Vec<(&str, bool)> {
    p.container
        .mounts
        .iter()
        .map(|m| (m.target.to_str().unwrap(), m.read_only))
        .collect()
}

fn env<'a>(p: &'a Plan, k: &str) -> Option<&'a str> {
    p.job_env
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
}

#[test]
fn worker_plan_snapshot() {
    let p = plan(
        1,
        &["--slots_per_node=2", "--envlist=WANDB_KEY", "--", "a b", ""],
    );
    let text = format!("{p:#?}\n");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/snapshots/plan-worker.txt"
    );
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let want =
        std::fs::read_to_string(path).expect("snapshot missing: run with UPDATE_SNAPSHOTS=1");
    assert_eq!(
        text, want,
        "plan changed; review and run with UPDATE_SNAPSHOTS=1"
    );
}

#[test]
fn roles_and_injected_variables() {
    let c = plan(0, &["--slots-per-node=2"]);
    assert_eq!(c.role, Role::Coordinator);
    assert_eq!(env(&c, "hostlist"), Some("node1:2,node2:2,node3:2"));
    assert_eq!(env(&c, "np"), Some("6"));
    assert_eq!(env(&c, "WORLD_SIZE"), Some("6"));
    assert_eq!(env(&c, "MASTER_ADDR"), Some("node1"));
    assert_eq!(env(&c, "MASTER_PORT"), Some("29920"));
    assert_eq!(env(&c, "NNODES"), Some("3"));
    assert_eq!(env(&c, "NODE_RANK"), Some("0"));
    assert_eq!(
        c.script.as_ref().unwrap().path,
        PathBuf::from("/shared/home/alice/proj/job.sh")
    );
    let w = plan(2, &[]);
    assert_eq!(w.role, Role::Worker);
    assert_eq!(env(&w, "NODE_RANK"), Some("2"));
    assert!(w.script.is_none());
}

#[test]
fn ports_differ_between_jobs_and_steps_and_can_be_fixed() {
    let p = plan(0, &[]);
    // job 42, step 0: pair index 42 * 50 = 2100 of 5000.
    assert_eq!(p.ports.preferred().sshd, 18000 + 2 * 2100);
    // Below the Linux ephemeral range (32768-60999), so outgoing connections never hold it.
    assert!(p.ports.preferred().control < 32768);
    assert_eq!(p.ports.preferred().control, p.ports.preferred().sshd + 1);
    let mut s = step(0, &[]);
    s.step_id = Some(1);
    let p1 = plan_with(&s, &args(&[]), &SiteConfig::default(), &facts()).unwrap();
    s.job_id = Some(43);
    let p2 = plan_with(&s, &args(&[]), &SiteConfig::default(), &facts()).unwrap();
    assert!(
        p.ports.preferred().sshd != p1.ports.preferred().sshd
            && p1.ports.preferred().sshd != p2.ports.preferred().sshd
    );
    assert_eq!(plan(0, &["--sshdport=2222"]).ports.preferred().sshd, 2222);
    assert_eq!(plan(0, &["--sshdport=2222"]).ports.pairs.len(), 1);
    let e = plan_with(
        &step(0, &[]),
        &args(&["--sshd-port=22"]),
        &SiteConfig::default(),
        &facts(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("1024"), "{e}");
}

#[test]
fn concurrent_steps_and_neighbouring_jobs_get_their_own_ports() {
    let ports = |job: u64, step_id: u64| {
        let mut s = step(0, &[]);
        s.job_id = Some(job);
        s.step_id = Some(step_id);
        plan_with(&s, &args(&[]), &SiteConfig::default(), &facts())
            .unwrap()
            .ports
    };
    // Where the derived pair is taken, a node may move to one of four others.
    let p = ports(42, 0);
    assert_eq!(p.pairs.len(), 5);
    let mut sshd: Vec<u16> = p.pairs.iter().map(|q| q.sshd).collect();
    sshd.sort_unstable();
    sshd.dedup();
    assert_eq!(sshd.len(), 5);
    assert!(p
        .pairs
        .iter()
        .all(|q| q.control == q.sshd + 1 && (18000..28000).contains(&q.sshd)));
    // A sweep: ten steps of job 42 at once, and the next job's first steps.
    let mut all: Vec<Ports> = (0..10).map(|st| ports(42, st)).collect();
    all.extend((0..10).map(|st| ports(43, st)));
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            let (pa, pb) = (a.preferred(), b.preferred());
            assert!(
                pa.sshd != pb.sshd && pa.control != pb.control && a.master != b.master,
                "{a:?} {b:?}"
            );
        }
    }
    // Job J step 8 used to land on job J+1 step 0.
    assert_ne!(ports(42, 8).preferred(), ports(43, 0).preferred());
    // Ports Slurm reserved for the step win over the derivation.
    let mut s = step(0, &[]);
    s.resv_ports = vec![12000, 12001, 12002];
    let p = plan_with(&s, &args(&[]), &SiteConfig::default(), &facts()).unwrap();
    assert_eq!(
        (
            p.ports.preferred().sshd,
            p.ports.preferred().control,
            p.ports.master
        ),
        (12000, 12001, 12002)
    );
    s.resv_ports = vec![12000, 12001];
    let p = plan_with(&s, &args(&[]), &SiteConfig::default(), &facts()).unwrap();
    assert_eq!(
        (
            p.ports.preferred().sshd,
            p.ports.preferred().control,
            p.ports.master
        ),
        (12000, 12001, 29920)
    );
}

#[test]
fn names_and_labels_identify_job_step_user_node() {
    let p = plan(1, &[]);
    assert_eq!(p.container.name, "mnd-alice-42.0-node2");
    assert_eq!(p.container.labels["mnd.job"], "42");
    assert_eq!(p.container.labels["mnd.user"], "alice");
    assert_eq!(p.container.labels["mnd.node"], "node2");
    assert_eq!(
        plan(1, &["--dockname=exp"]).container.name,
        "exp-42.0-node2"
    );
}

#[test]
fn runs_as_the_user_with_all_groups_and_mounts() {
    let p = plan(0, &["--datamnts=/data,/scratch:/s:ro"]);
    assert_eq!(p.container.user, "1001:1001");
    assert_eq!(p.container.group_add, ["998", "1500"]);
    let targets = mount_targets(&p);
    assert_eq!(
        targets,
        [
            ("/shared/home/alice", false),
            ("/data", false),
            ("/s", true)
        ]
    );
    assert_eq!(
        p.container.workdir,
        PathBuf::from("/shared/home/alice/proj")
    );
    assert_eq!(p.container.network, "host");
}

#[test]
fn cwd_and_script_outside_home_are_mounted() {
    let mut f = facts();
    f.cwd = "/scratch/run".into();
    let a = args(&["--script=/opt/scripts/train.sh"]);
    let p = plan_with(&step(0, &[]), &a, &SiteConfig::default(), &f).unwrap();
    let targets = mount_targets(&p);
    assert_eq!(
        targets,
        [
            ("/shared/home/alice", false),
            ("/scratch/run", false),
            ("/opt/scripts", true)
        ]
    );
}

#[test]
fn gpus_use_physical_ids_from_slurm() {
    let mut f = facts();
    f.nvidia = true;
    let p = plan_with(&step(0, &[2, 3]), &args(&[]), &SiteConfig::default(), &f).unwrap();
    assert_eq!(p.container.gpus, Gpus::Nvidia(vec![2, 3]));
    assert_eq!(p.slots, 2);
    // Inside, the step's GPUs are 0..n-1; NVIDIA_VISIBLE_DEVICES names the physical ones.
    assert_eq!(env(&p, "CUDA_VISIBLE_DEVICES"), Some("0,1"));
    assert_eq!(env(&p, "NVIDIA_VISIBLE_DEVICES"), Some("2,3"));
    assert_eq!(env(&p, "hostlist"), Some("node1:2,node2:2,node3:2"));
    // Under Slurm with no GPU for the step: none, even though the node has some.
    let p = plan_with(&step(0, &[]), &args(&[]), &SiteConfig::default(), &f).unwrap();
    assert_eq!(p.container.gpus, Gpus::None);
    // Under Slurm, all or ids outside the step are refused; a subset is fine.
    let refuse = |s: &StepContext, extra: &[&str], f: &NodeFacts| {
        plan_with(s, &args(extra), &SiteConfig::default(), f)
            .unwrap_err()
            .to_string()
    };
    let e = refuse(&step(0, &[]), &["--gpus=all"], &f);
    assert!(
        e.contains("--gpus=all is refused") && e.contains("no GPUs"),
        "{e}"
    );
    let e = refuse(&step(0, &[2, 3]), &["--gpus=1,2"], &f);
    assert!(
        e.contains("GPU 1 in --gpus") && e.contains("GPUs 2,3"),
        "{e}"
    );
    let p = plan_with(
        &step(0, &[2, 3]),
        &args(&["--gpus=3"]),
        &SiteConfig::default(),
        &f,
    )
    .unwrap();
    assert_eq!(p.container.gpus, Gpus::Nvidia(vec![3]));
    assert_eq!(p.slots, 1);
    // The seed's NV_GPU selects GPUs the same way, within the step's.
    let mut nv = f.clone();
    nv.env.insert("NV_GPU".into(), "2".into());
    let p = plan_with(&step(0, &[2, 3]), &args(&[]), &SiteConfig::default(), &nv).unwrap();
    assert_eq!(p.container.gpus, Gpus::Nvidia(vec![2]));
    assert_eq!(env(&p, "hostlist"), Some("node1:1,node2:1,node3:1"));
    nv.env.insert("NV_GPU".into(), "0,1".into());
    let e = refuse(&step(0, &[2, 3]), &[], &nv);
    assert!(e.contains("GPU 0 in NV_GPU"), "{e}");
    // No Slurm: all GPUs of the machine, or any of them.
    let local = StepContext::local("node1");
    let p = plan_with(&local, &args(&[]), &SiteConfig::default(), &f).unwrap();
    assert_eq!(p.container.gpus, Gpus::NvidiaAll);
    let p = plan_with(&local, &args(&["--gpus=5"]), &SiteConfig::default(), &f).unwrap();
    assert_eq!(p.container.gpus, Gpus::Nvidia(vec![5]));
}

#[test]
fn mig_devices_are_asked_of_docker_by_slurms_unique_ids() {
    let mut f = facts();
    f.nvidia = true;
    let mut s = step(0, &[2, 3]);
    s.gpu_uuids = vec!["MIG-aaaa".into(), "MIG-bbbb".into()];
    let p = plan_with(&s, &args(&[]), &SiteConfig::default(), &f).unwrap();
    assert_eq!(
        p.container.gpus,
        Gpus::NvidiaUuids(vec!["MIG-aaaa".into(), "MIG-bbbb".into()])
    );
    assert_eq!(env(&p, "CUDA_VISIBLE_DEVICES"), Some("0,1"));
    assert_eq!(env(&p, "NVIDIA_VISIBLE_DEVICES"), Some("MIG-aaaa,MIG-bbbb"));
    assert_eq!(p.slots, 2);
    // A subset by index (checked against the step's) is asked for by its unique id.
    let p = plan_with(&s, &args(&["--gpus=3"]), &SiteConfig::default(), &f).unwrap();
    assert_eq!(p.container.gpus, Gpus::NvidiaUuids(vec!["MIG-bbbb".into()]));
}

#[test]
fn amd_gpus_get_kfd_render_nodes_and_groups() {
    let mut f = facts();
    f.amd = Some(AmdFacts {
        render_nodes: vec![128, 129, 130, 131],
        device_gids: vec![44, 109],
    });
    let p = plan_with(&step(0, &[1, 3]), &args(&[]), &SiteConfig::default(), &f).unwrap();
    let devs: Vec<_> = p
        .container
        .devices
        .iter()
        .map(|d| d.host.as_str())
        .collect();
    assert_eq!(
        devs,
        ["/dev/kfd", "/dev/dri/renderD129", "/dev/dri/renderD131"]
    );
    assert_eq!(env(&p, "ROCR_VISIBLE_DEVICES"), Some("0,1"));
    assert_eq!(env(&p, "HIP_VISIBLE_DEVICES"), Some("0,1"));
    assert!(
        p.container.group_add.contains(&"44".to_string())
            && p.container.group_add.contains(&"109".to_string())
    );
    assert_eq!(p.container.gpus, Gpus::None);
}

#[test]
fn memlock_only_where_allowed() {
    assert!(plan(0, &[]).container.ulimits.is_empty());
    let mut f = facts();
    f.can_raise_memlock = true;
    let p = plan_with(&step(0, &[]), &args(&[]), &SiteConfig::default(), &f).unwrap();
    assert_eq!(p.container.ulimits, [("memlock".to_string(), -1, -1)]);
    let p = plan_with(
        &step(0, &[]),
        &args(&["--memlock=off"]),
        &SiteConfig::default(),
        &f,
    )
    .unwrap();
    assert!(p.container.ulimits.is_empty());
}

#[test]
fn dockopts_become_container_options() {
    let site = SiteConfig::parse(
        "[policy]\nallow_devices = true\nallow_host_ipc = true\n",
        Path::new("/etc/mnd-srun/config.toml"),
    )
    .unwrap();
    let a = args(&["--dockopts=--shm-size=1g -e X -e Y=2 --ulimit nofile=100:200 --device /dev/fuse --ipc=host"]);
    let p = plan_with(&step(0, &[]), &a, &site, &facts()).unwrap();
    assert_eq!(p.container.shm_size, Some(1 << 30));
    assert_eq!(env(&p, "X"), Some("from-env"));
    assert_eq!(env(&p, "Y"), Some("2"));
    assert_eq!(p.container.ulimits, [("nofile".to_string(), 100, 200)]);
    assert_eq!(p.container.devices[0].host, "/dev/fuse");
    assert_eq!(p.container.ipc.as_deref(), Some("host"));
    assert_eq!(plan(0, &[]).container.shm_size, Some(8 << 30));
}

#[test]
fn nodelist_selects_nodes_and_leader() {
    let p = plan(1, &["--nodelist=node[2-3]"]);
    assert_eq!(p.role, Role::Coordinator);
    assert_eq!(p.nodes, ["node2", "node3"]);
    assert!(matches!(
        plan(0, &["--nodelist=node[2-3]"]).role,
        Role::Idle(_)
    ));
    let e = plan_with(
        &step(0, &[]),
        &args(&["--nodelist=node[3-1]"]),
        &SiteConfig::default(),
        &facts(),
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("--nodelist: invalid hostlist"),
        "{e}"
    );
    let e = plan_with(
        &step(0, &[]),
        &args(&["--nodelist=node9"]),
        &SiteConfig::default(),
        &facts(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("node9") && e.to_string().contains("srun -w"),
        "{e}"
    );
}

#[test]
fn extra_local_tasks_are_idle() {
    let mut s = step(1, &[]);
    s.local_id = 1;
    let p = plan_with(&s, &args(&[]), &SiteConfig::default(), &facts()).unwrap();
    assert!(matches!(p.role, Role::Idle(_)));
}

#[test]
fn bad_inputs_say_what_to_do() {
    let site = SiteConfig::default();
    let no_container = cli::parse(["mnd-srun", "--script=x"].map(String::from)).unwrap();
    let e = plan_with(&step(0, &[]), &no_container, &site, &facts()).unwrap_err();
    assert!(e.to_string().contains("--container=IMAGE"), "{e}");
    let no_script = cli::parse(["mnd-srun", "--container=x"].map(String::from)).unwrap();
    let e = plan_with(&step(0, &[]), &no_script, &site, &facts()).unwrap_err();
    assert!(e.to_string().contains("--script"), "{e}");
    let e = plan_with(
        &step(0, &[]),
        &args(&["--dockopts=--cpus 2"]),
        &site,
        &facts(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("'--cpus'"), "{e}");
    let e = plan_with(
        &step(0, &[]),
        &args(&["--datamnts=relative/dir"]),
        &site,
        &facts(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
    let e = plan_with(&step(0, &[]), &args(&["--shm-size=lots"]), &site, &facts()).unwrap_err();
    assert!(e.to_string().contains("lots"), "{e}");
    let e = plan_with(
        &step(0, &[]),
        &args(&["--dockopts=--network=bridge"]),
        &site,
        &facts(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("host network"), "{e}");
}

#[test]
fn policy_refusals_name_rule_and_config() {
    let text = "[policy]\nallowed_images = ['registry\\.site/.*']\nallowed_mount_prefixes = ['/data']\nallow_privileged = false\nallow_dockopts = false\n";
    let site = SiteConfig::parse(text, Path::new("/etc/mnd-srun/config.toml")).unwrap();
    let e = plan_with(&step(0, &[]), &args(&[]), &site, &facts()).unwrap_err();
    assert!(
        e.to_string().contains("image 'img:1'")
            && e.to_string()
                .contains("policy.allowed_images in /etc/mnd-srun/config.toml"),
        "{e}"
    );
    let ok = |extra: &[&str]| {
        let a = cli::parse(
            ["mnd-srun", "--container=registry.site/pt:2", "--script=j"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string()),
        )
        .unwrap();
        plan_with(&step(0, &[]), &a, &site, &facts())
    };
    assert!(ok(&[]).is_ok());
    assert!(ok(&["--privileged"])
        .unwrap_err()
        .to_string()
        .contains("policy.allow_privileged"));
    assert!(ok(&["--dockopts=-e X=1"])
        .unwrap_err()
        .to_string()
        .contains("policy.allow_dockopts"));
    assert!(ok(&["--datamnts=/scratch"])
        .unwrap_err()
        .to_string()
        .contains("policy.allowed_mount_prefixes"));
    assert!(ok(&["--datamnts=/data/x"]).is_ok());
}

#[test]
fn containers_never_gain_privileges() {
    let p = plan(0, &[]);
    assert_eq!(p.container.cap_drop, ["ALL"]);
    assert_eq!(p.container.security_opt, ["no-new-privileges=true"]);
    assert!(!p.container.privileged);
}

/// A resolver standing for a node where /shared/home/alice/etc-link -> /etc and
/// /shared/home/alice/data -> /gpfs/alice.
fn node_paths(p: &Path) -> std::io::Result<PathBuf> {
    let links = [
        ("/shared/home/alice/etc-link", "/etc"),
        ("/shared/home/alice/data", "/gpfs/alice"),
    ];
    for (link, real) in links {
        if let Ok(rest) = p.strip_prefix(link) {
            return Ok(policy::lexical_clean(&Path::new(real).join(rest)));
        }
    }
    if p.starts_with("/missing") {
        return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
    }
    Ok(policy::lexical_clean(p))
}

fn plan_on_node(f: &NodeFacts, extra: &[&str], site: &SiteConfig) -> Result<Plan, PlanError> {
    build(&Inputs {
        step: &step(0, &[]),
        args: &args(extra),
        site,
        user: &alice(),
        facts: f,
        resolve: &node_paths,
    })
}

#[test]
fn host_system_folders_are_never_mounted_however_named() {
    let d = SiteConfig::default();
    let refused =
        |f: &NodeFacts, extra: &[&str]| plan_on_node(f, extra, &d).unwrap_err().to_string();
    // The working directory /etc (the node's own passwd would be overwritten).
    let mut f = facts();
    f.cwd = "/etc".into();
    let e = refused(&f, &["--script=/shared/home/alice/job.sh"]);
    assert!(
        e.starts_with("the working directory /etc is refused") && e.contains("cd to your home"),
        "{e}"
    );
    for (flag, shown) in [
        (
            "--datamnts=/shared/home/alice/../../../etc:/x",
            "mount source /etc",
        ),
        (
            "--datamnts=/shared/home/alice/etc-link:/x",
            "mount source /etc",
        ),
        (
            "--datamnts=/var/run/docker.sock:/d.sock",
            "mount source /var/run/docker.sock",
        ),
        ("--datamnts=/:/host", "mount source /"),
        ("--dockopts=-v /usr:/u", "mount source /usr"),
        (
            "--dockopts=--mount type=bind,source=/shared/home/alice/etc-link/ssh,target=/x",
            "mount source /etc/ssh",
        ),
        ("--script=/etc/init.d/x", "the script's folder /etc/init.d"),
    ] {
        let e = refused(&facts(), &[flag]);
        assert!(
            e.starts_with(&format!("{shown} is refused")) && e.contains("system folder"),
            "{flag}: {e}"
        );
    }
    // Targets that would cover what mnd-srun writes.
    for flag in [
        "--datamnts=/data:/etc",
        "--datamnts=/data:/",
        "--datamnts=/data:/.mnd",
    ] {
        let e = refused(&facts(), &[flag]);
        assert!(
            e.contains("mount target") && e.contains("refused"),
            "{flag}: {e}"
        );
    }
    let e = refused(&facts(), &["--datamnts=/missing/x"]);
    assert!(e.contains("/missing/x cannot be used"), "{e}");
    // The resolved path is what gets mounted, and what the prefix rule sees.
    let p = plan_on_node(&facts(), &["--datamnts=/shared/home/alice/data:/data"], &d).unwrap();
    assert!(p
        .container
        .mounts
        .iter()
        .any(|m| m.source == Path::new("/gpfs/alice") && m.target == Path::new("/data")));
    let site = SiteConfig::parse(
        "[policy]\nallowed_mount_prefixes = ['/shared']\n",
        Path::new("/etc/mnd-srun/config.toml"),
    )
    .unwrap();
    let e = plan_on_node(&facts(), &["--datamnts=/shared/home/alice/data"], &site)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mount source /gpfs/alice") && e.contains("allowed_mount_prefixes"),
        "{e}"
    );
}

#[test]
fn env_values_with_line_breaks_are_refused_and_never_logged() {
    let mut f = facts();
    f.env
        .insert("TOKEN".into(), "s3cret\nAuthorizedKeysFile /tmp/k".into());
    let e = plan_with(
        &step(0, &[]),
        &args(&["--envlist=TOKEN"]),
        &SiteConfig::default(),
        &f,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("variable TOKEN") && e.contains("line break") && !e.contains("s3cret"),
        "{e}"
    );
    let p = plan(0, &["--envlist=WANDB_KEY", "--dockopts=-e PASS=hunter2"]);
    let shown = format!("{:#?}", p.redacted());
    assert!(
        !shown.contains("hunter2") && shown.contains("PASS=<hidden>"),
        "{shown}"
    );
    assert!(!shown.contains("\"k\""), "{shown}");
}

#[test]
fn sizes() {
    assert_eq!(parse_size("512m"), Some(512 << 20));
    assert_eq!(parse_size("16G"), Some(16 << 30));
    assert_eq!(parse_size("100"), Some(100));
    assert_eq!(parse_size("x"), None);
    assert_eq!(parse_size("-1g"), None);
}

#[test]
fn network_defaults_never_cover_a_users_value_and_can_be_turned_off() {
    let net = NodeFacts {
        net: Some(JobNet {
            interface: "eth0".into(),
            cidr: "10.213.77.0/24".into(),
        }),
        ..facts()
    };
    let on = |p: &Plan, k: &str| {
        p.env_defaults
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let p = plan_with(&step(1, &[]), &args(&[]), &SiteConfig::default(), &net).unwrap();
    assert_eq!(
        on(&p, "OMPI_MCA_btl_tcp_if_include").as_deref(),
        Some("10.213.77.0/24")
    );
    assert_eq!(on(&p, "NCCL_SOCKET_IFNAME").as_deref(), Some("eth0"));
    assert_eq!(
        on(&p, "OMPI_MCA_btl_vader_single_copy_mechanism").as_deref(),
        Some("none")
    );
    // A flag, or a value exported in the user's shell, wins and is passed as it is.
    let mut own = net.clone();
    own.env
        .insert("OMPI_MCA_btl_tcp_if_include".into(), "ib0".into());
    let p = plan_with(
        &step(1, &[]),
        &args(&["--nccl-socket-ifname=ib0"]),
        &SiteConfig::default(),
        &own,
    )
    .unwrap();
    assert_eq!(env(&p, "OMPI_MCA_btl_tcp_if_include"), Some("ib0"));
    assert_eq!(env(&p, "NCCL_SOCKET_IFNAME"), Some("ib0"));
    assert_eq!(on(&p, "OMPI_MCA_btl_tcp_if_include"), None);
    assert_eq!(on(&p, "NCCL_SOCKET_IFNAME"), None);
    // The image's ENV wins over a default too.
    let image_env = vec!["GLOO_SOCKET_IFNAME=ib1".to_string()];
    assert!(!p
        .env_defaults_for(&image_env)
        .iter()
        .any(|(k, _)| k == "GLOO_SOCKET_IFNAME"));
    // Off: by flag, or by the site.
    let p = plan_with(
        &step(1, &[]),
        &args(&["--no-net-defaults"]),
        &SiteConfig::default(),
        &net,
    )
    .unwrap();
    assert_eq!(on(&p, "NCCL_SOCKET_IFNAME"), None);
    let mut site = SiteConfig::default();
    site.defaults.net_defaults = false;
    let p = plan_with(&step(1, &[]), &args(&[]), &site, &net).unwrap();
    assert_eq!(on(&p, "OMPI_MCA_oob_tcp_if_include"), None);
    // A privileged container may use single-copy.
    let p = plan_with(
        &step(1, &[]),
        &args(&["--privileged"]),
        &site_allowing_privileged(),
        &net,
    )
    .unwrap();
    assert_eq!(on(&p, "OMPI_MCA_btl_vader_single_copy_mechanism"), None);
}

fn site_allowing_privileged() -> SiteConfig {
    let mut site = SiteConfig::default();
    site.policy.allow_privileged = true;
    site
}

#[test]
fn one_variable_name_rule_for_both_envlists() {
    let e = plan_with(
        &step(1, &[]),
        &args(&["--envlist=1BAD"]),
        &SiteConfig::default(),
        &facts(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("'1BAD' is not a variable name"), "{e}");
    for ok in ["WANDB_KEY", "_x", "A1"] {
        assert!(is_variable_name(ok), "{ok}");
    }
    for bad in ["", "1A", "A-B", "A B"] {
        assert!(!is_variable_name(bad), "{bad}");
    }
}

#[test]
fn progress_goes_up_well_inside_the_wait_it_holds_open() {
    for (wait, every_ms) in [("1", 166), ("2", 333), ("3", 500), ("60", 500)] {
        let p = plan(0, &["--wait-timeout", wait]);
        let every = p.progress_every();
        assert_eq!(every.as_millis(), every_ms, "--wait-timeout={wait}");
        // A heartbeat two periods after the last event, its report one period later and
        // one relay's pass-up: all inside the wait.
        assert!(every * 4 < p.wait_timeout, "--wait-timeout={wait}");
    }
}
