use super::*;
use crate::identity::test_user;
use crate::spank::container_gpu_ids;
use crate::spank::Options;

fn request(options: Options) -> Request {
    Request {
        job: 42,
        step: 3,
        node: "node2".into(),
        uid: 1001,
        gid: 1001,
        gids: vec![1001, 1500, 1500],
        cwd: "/shared/home/alice/proj".into(),
        options,
        slurm_dirs: vec!["/var/spool/slurmd/pmix.42.3".into()],
        step_gpus: None,
        step_nodes: None,
        step_cuda_devices: None,
        batch_script: None,
        global_scope: false,
    }
}

fn image(name: &str) -> Options {
    Options {
        image: name.into(),
        ..Options::default()
    }
}

/// Resolves every path to itself, but for a link `/home/alice/etc-link` to /etc.
fn resolve(p: &Path) -> std::io::Result<PathBuf> {
    if p.starts_with("/home/alice/etc-link") {
        return Ok(PathBuf::from("/etc"));
    }
    Ok(crate::plan::policy::lexical_clean(p))
}

fn planned(options: Options, site: &SiteConfig) -> Result<(ContainerSpec, Checked), PlanError> {
    planned_for(
        &request(options),
        site,
        &NodeFacts::default(),
        "/opt/mnd-srun/bin",
    )
}

fn planned_for(
    req: &Request,
    site: &SiteConfig,
    facts: &NodeFacts,
    tools: &str,
) -> Result<(ContainerSpec, Checked), PlanError> {
    plan(&Inputs {
        req,
        site,
        user: &test_user(),
        facts,
        tools: Some(Path::new(tools)),
        spools: &[PathBuf::from("/var/spool/slurmd")],
        resolve: &resolve,
    })
}

#[test]
fn a_step_container_runs_as_the_job_with_nothing_extra() {
    let (spec, _) = planned(image("ubuntu:24.04"), &SiteConfig::default()).unwrap();
    assert!(
        spec.name.starts_with("mnd-alice-42.3-node2-"),
        "{}",
        spec.name
    );
    assert_eq!(spec.user, "1001:1001");
    assert_eq!(spec.group_add, vec!["1500".to_string()]);
    assert_eq!(spec.cap_drop, vec!["ALL".to_string()]);
    assert_eq!(
        spec.security_opt,
        vec!["no-new-privileges=true".to_string()]
    );
    assert!(spec.host_namespaces && !spec.privileged && spec.devices.is_empty());
    assert_eq!(spec.labels["mnd.step"], "3");
    assert_eq!(spec.labels["mnd.role"], "direct");
    assert_eq!(spec.labels["mnd.image"], "ubuntu:24.04");
    let targets: Vec<_> = spec.mounts.iter().map(|m| m.target.clone()).collect();
    assert!(targets.contains(&PathBuf::from("/var/spool/slurmd/pmix.42.3")));
    assert!(spec
        .mounts
        .iter()
        .any(|m| m.target == Path::new("/shared/home/alice")));
    assert!(spec
        .mounts
        .iter()
        .any(|m| m.target == Path::new("/opt/mnd-srun/bin") && m.read_only));
    // The tools are never shown from a system folder (it would hide the image's).
    let (spec, _) = planned_for(
        &request(image("img")),
        &SiteConfig::default(),
        &NodeFacts::default(),
        "/usr/bin",
    )
    .unwrap();
    assert!(!spec
        .mounts
        .iter()
        .any(|m| m.target == Path::new("/usr/bin")));
}

#[test]
fn a_named_container_is_the_jobs_not_the_steps() {
    let opts = Options {
        name: Some("warm".into()),
        ..image("img")
    };
    let (spec, checked) = planned(opts, &SiteConfig::default()).unwrap();
    assert!(
        spec.name.starts_with("mnd-alice-42-warm-node2-"),
        "{}",
        spec.name
    );
    assert_eq!(spec.labels["mnd.step"], NAMED_STEP);
    assert_eq!(checked.name.as_deref(), Some("warm"));
}

/// Options on top of `ubuntu:24.04`.
fn with(f: &dyn Fn(&mut Options)) -> Options {
    let mut o = image("ubuntu:24.04");
    f(&mut o);
    o
}

/// Each case is refused, its message holding the words given.
fn all_refused(cases: Vec<(Options, &str)>) {
    for (opts, want) in cases {
        let err = planned(opts.clone(), &SiteConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{opts:?}: {err}");
    }
}

// pyxis's invalid_args.bats, option for option, and a few of ours.
#[test]
fn hostile_images_and_names_are_refused_with_the_option_named() {
    let long_image = "A".repeat(2048);
    let long_name = "a".repeat(300);
    all_refused(vec![
        (image(" "), "--mnd-image: argument required"),
        (image(&long_image), "--mnd-image"),
        (image("./"), "is a path"),
        (image("/dev/urandom"), "is a path"),
        (image("img --privileged"), "--mnd-image"),
        (image("img\nx"), "--mnd-image"),
        (
            Options {
                name: Some("args-test:bogus".into()),
                ..Options::default()
            },
            "mode 'bogus'",
        ),
        (with(&|o| o.name = Some("/tmp/foo".into())), "--mnd-name"),
        (with(&|o| o.name = Some(":exec".into())), "empty name"),
        (with(&|o| o.name = Some(long_name.clone())), "--mnd-name"),
        (with(&|o| o.name = Some("../../etc".into())), "--mnd-name"),
    ]);
}

#[test]
fn hostile_mounts_env_and_other_values_are_refused_with_the_option_named() {
    all_refused(vec![
        (
            with(&|o| o.mounts = Some(String::new())),
            "--mnd-mounts: argument required",
        ),
        (
            with(&|o| o.mounts = Some(":".into())),
            "empty source or target",
        ),
        (
            with(&|o| o.mounts = Some("/tmp:".into())),
            "empty source or target",
        ),
        (
            with(&|o| o.mounts = Some("/tmp:mnt:ro".into())),
            "absolute path in the container",
        ),
        (
            with(&|o| o.mounts = Some("/home:../home".into())),
            "absolute path in the container",
        ),
        (
            with(&|o| o.mounts = Some("relative:/x".into())),
            "the source must be a path",
        ),
        (
            with(&|o| o.mounts = Some("/tmp:/mnt:unbindable+ro".into())),
            "flag 'unbindable'",
        ),
        (
            with(&|o| o.mounts = Some("devpts:/mydevpts:ro".into())),
            "'devpts' mounts are not supported",
        ),
        (
            with(&|o| o.mounts = Some("/data\n:/x".into())),
            "control character",
        ),
        (
            with(&|o| o.workdir = Some(String::new())),
            "--mnd-workdir: argument required",
        ),
        (
            with(&|o| o.envlist = Some(String::new())),
            "--mnd-env: argument required",
        ),
        (
            with(&|o| o.envlist = Some("FOO,".into())),
            "not a variable name",
        ),
        (with(&|o| o.envlist = Some("PATH,A=B".into())), "--mnd-env"),
        (
            with(&|o| o.unshare = Some("pid".into())),
            "unknown namespace 'pid'",
        ),
        (
            with(&|o| o.unshare = Some(String::new())),
            "--mnd-unshare: argument required",
        ),
        (
            with(&|o| o.entrypoint = Some(true)),
            "--mnd-entrypoint is not supported",
        ),
        (
            with(&|o| o.save = Some("/tmp/".into())),
            "target is a directory",
        ),
        (
            with(&|o| o.save = Some("./".into())),
            "target is a directory",
        ),
    ]);
}

#[test]
fn pyxis_forms_are_taken_as_pyxis_takes_them() {
    let opts = Options {
        mounts: Some(
            "./:/test-mnt,/dev/null:/null,/data,/data:/ro:ro+rprivate,tmpfs:/scratch:size=1g+mode=1777,/data"
                .into(),
        ),
        workdir: Some("../".into()),
        name: Some("warm:no_exec".into()),
        envlist: Some("PATH,LD_LIBRARY_PATH".into()),
        mount_home: Some(false),
        writable: Some(false),
        unshare: Some("net,uts,net".into()),
        entrypoint: Some(false),
        ..image("img")
    };
    let (spec, checked) = planned(opts, &SiteConfig::default()).unwrap();
    let shown: Vec<(String, String, bool, Option<String>)> = spec
        .mounts
        .iter()
        .map(|m| {
            (
                m.source.display().to_string(),
                m.target.display().to_string(),
                m.read_only,
                m.propagation.clone(),
            )
        })
        .collect();
    let cwd = "/shared/home/alice/proj".to_string();
    assert!(
        shown.contains(&(cwd, "/test-mnt".into(), false, None)),
        "{shown:?}"
    );
    assert!(
        shown.contains(&("/dev/null".into(), "/null".into(), false, None)),
        "{shown:?}"
    );
    assert!(
        shown.contains(&("/data".into(), "/data".into(), false, None)),
        "{shown:?}"
    );
    assert!(
        shown.contains(&("/data".into(), "/ro".into(), true, Some("rprivate".into()))),
        "{shown:?}"
    );
    assert!(
        !shown.iter().any(|(s, _, _, _)| s == "/shared/home/alice"),
        "--no-mnd-mount-home: {shown:?}"
    );
    assert_eq!(
        spec.tmpfs.get("/scratch").map(String::as_str),
        Some("size=1g,mode=1777")
    );
    assert_eq!(checked.workdir.as_deref(), Some(Path::new("/")));
    assert_eq!(checked.name_mode, crate::plan::options::NameMode::NoExec);
    assert!(!checked.writable);
    assert_eq!(checked.unshare, ["net", "uts"]);
    assert_eq!(spec.network, "none");
    assert!(spec.own_uts);
    assert_eq!(spec.ipc.as_deref(), Some("host"));
    // A name alone names a container of the job; nothing else is enough.
    let (spec, checked) = planned(
        Options {
            name: Some("warm:exec".into()),
            ..Options::default()
        },
        &SiteConfig::default(),
    )
    .unwrap();
    assert_eq!(checked.image, None);
    for (enroot, docker) in [
        (
            "nvcr.io#nvidia/pytorch:24.01-py3",
            "nvcr.io/nvidia/pytorch:24.01-py3",
        ),
        ("me@registry:5000#team/img", "registry:5000/team/img"),
        ("ubuntu:24.04", "ubuntu:24.04"),
    ] {
        let checked = image(enroot).check().unwrap();
        assert_eq!(checked.image.as_deref(), Some(docker), "{enroot}");
    }
    assert!(spec.name.contains("warm"));
    assert!(planned(Options::default(), &SiteConfig::default())
        .unwrap_err()
        .to_string()
        .contains("--mnd-image is missing"));
}

#[test]
fn mounts_follow_the_mount_rules_after_resolving() {
    let refused = |mounts: &str| {
        planned(
            Options {
                mounts: Some(mounts.into()),
                ..image("img")
            },
            &SiteConfig::default(),
        )
        .unwrap_err()
        .to_string()
    };
    assert!(refused("/home/alice/etc-link:/data").contains("/etc"));
    assert!(refused("/var/run/docker.sock").contains("docker.sock"));
    assert!(refused("/home/alice/d:/etc").contains("/etc"));
    assert!(refused("/home/alice/a/../../../usr:/u").contains("/usr"));
    assert!(refused("/data,/other:/data").contains("two mounts target /data"));
    assert!(refused("/dev/sda:/disk").contains("/dev"));
}

#[test]
fn site_rules_apply_to_images_and_mount_prefixes() {
    let site = SiteConfig::parse(
        "[policy]\nallowed_images = [\"registry\\\\.site/.*\"]\nallowed_mount_prefixes = [\"/scratch\"]\n",
        Path::new("/etc/mnd-srun/config.toml"),
    )
    .unwrap();
    let err = planned(image("evil/img"), &site).unwrap_err().to_string();
    assert!(err.contains("allowed_images"), "{err}");
    let err = planned(
        Options {
            mounts: Some("/data".into()),
            ..image("registry.site/img")
        },
        &site,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("allowed_mount_prefixes"), "{err}");
    planned(
        Options {
            mounts: Some("/scratch/alice:/data:ro".into()),
            ..image("registry.site/img")
        },
        &site,
    )
    .unwrap();
}

#[test]
fn the_image_sets_path_but_never_what_slurm_owns() {
    let image_env = [
        "PATH=/opt/conda/bin:/usr/bin",
        "SLURM_PROCID=7",
        "PMIX_RANK=3",
        "CUDA_VISIBLE_DEVICES=0,1",
        "HOME=/root",
        "LANG=C.UTF-8",
        "NCCL_DEBUG=INFO",
    ]
    .map(String::from);
    let (set, unset) = task_env(
        &image_env,
        &["NCCL_DEBUG".into()],
        "c1",
        "sha256:ab",
        Some(Path::new("/opt/mnd-srun/bin")),
    );
    let names: Vec<&str> = set.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["PATH", "LANG", CONTAINER_VAR, IMAGE_VAR]);
    assert_eq!(unset, ["LANGUAGE", "LC_ALL"]);
    assert_eq!(
        set[0].1,
        "/opt/mnd-srun/conda/bin:/usr/bin:/opt/mnd-srun/bin"
            .replace("/opt/mnd-srun/conda", "/opt/conda")
    );
    let (_, unset) = task_env(&[], &["LC_ALL".into()], "c1", "sha256:ab", None);
    assert_eq!(unset, ["LANG", "LANGUAGE"]);
}

#[test]
fn requests_and_replies_survive_json() {
    let req = request(image("img"));
    let text = serde_json::to_string(&req).unwrap();
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
}

#[test]
fn the_container_gets_exactly_the_steps_gpus_on_the_node() {
    let nvidia = NodeFacts {
        nvidia: true,
        ..NodeFacts::default()
    };
    let req = Request {
        step_gpus: Some("1,3".into()),
        ..request(image("img"))
    };
    let (spec, _) =
        planned_for(&req, &SiteConfig::default(), &nvidia, "/opt/mnd-srun/bin").unwrap();
    assert_eq!(spec.gpus, crate::plan::Gpus::Nvidia(vec![1, 3]));
    assert!(spec.env.contains(&"NVIDIA_VISIBLE_DEVICES=1,3".to_string()));
    let amd = NodeFacts {
        amd: Some(crate::plan::AmdFacts {
            render_nodes: vec![128, 129, 130, 131],
            device_gids: vec![44, 109],
        }),
        ..NodeFacts::default()
    };
    let (spec, _) = planned_for(&req, &SiteConfig::default(), &amd, "/opt/mnd-srun/bin").unwrap();
    let devices: Vec<&str> = spec.devices.iter().map(|d| d.host.as_str()).collect();
    assert_eq!(
        devices,
        ["/dev/kfd", "/dev/dri/renderD129", "/dev/dri/renderD131"]
    );
    assert!(spec.group_add.contains(&"109".to_string()));
    // No GPU in the step: none in the container, whatever the node has.
    let (spec, _) = planned_for(
        &request(image("img")),
        &SiteConfig::default(),
        &nvidia,
        "/x",
    )
    .unwrap();
    assert_eq!(spec.gpus, crate::plan::Gpus::None);
    let bad = Request {
        step_gpus: Some("0,x".into()),
        ..request(image("img"))
    };
    let err = planned_for(&bad, &SiteConfig::default(), &nvidia, "/x").unwrap_err();
    assert!(err.to_string().contains("SLURM_STEP_GPUS"), "{err}");
    // MIG devices (Slurm names them by unique id): refused, never whole GPUs instead.
    let mig = Request {
        step_cuda_devices: Some("MIG-aaaa,MIG-bbbb".into()),
        ..req.clone()
    };
    let err = planned_for(&mig, &SiteConfig::default(), &nvidia, "/x").unwrap_err();
    assert!(
        err.to_string().contains("MIG devices") && err.to_string().contains("srun mnd-srun"),
        "{err}"
    );
    // Slurm's own numbering (ConstrainDevices) is no unique id: the step goes on.
    let constrained = Request {
        step_cuda_devices: Some("0,1".into()),
        ..req
    };
    assert!(planned_for(&constrained, &SiteConfig::default(), &nvidia, "/x").is_ok());
}

#[test]
fn a_tasks_gpu_ids_follow_the_containers_numbering() {
    // Slurm's indices (no ConstrainDevices) become positions among the step's GPUs.
    assert_eq!(container_gpu_ids(&[2, 3], "3").as_deref(), Some("1"));
    assert_eq!(container_gpu_ids(&[2, 3], "2,3").as_deref(), Some("0,1"));
    assert_eq!(container_gpu_ids(&[0, 1], "0,1").as_deref(), Some("0,1"));
    // Numbers from 0 under ConstrainDevices stay; so does anything that is not a list.
    assert_eq!(container_gpu_ids(&[2, 3], "0"), None);
    assert_eq!(container_gpu_ids(&[2, 3], "GPU-1234"), None);
    assert_eq!(container_gpu_ids(&[0, 2], "0").as_deref(), Some("0"));
}

#[test]
fn names_that_read_alike_are_different_containers() {
    // User `ml`, job 5, container name `7.0` and user `ml-5`, job 7, step 0 read the same.
    let ml = Request {
        uid: 2001,
        job: 5,
        ..request(image("img"))
    };
    let ml5 = Request {
        uid: 2002,
        job: 7,
        step: 0,
        ..request(image("img"))
    };
    let a = ml.container_name("ml", Some("7.0"));
    let b = ml5.container_name("ml-5", None);
    assert_eq!(a.rsplit_once('-').unwrap().0, "mnd-ml-5-7.0-node2");
    assert_eq!(b.rsplit_once('-').unwrap().0, "mnd-ml-5-7.0-node2");
    assert_ne!(a, b);
    assert_eq!(a, ml.container_name("ml", Some("7.0")));
}

#[test]
fn network_variables_go_where_the_task_has_none_and_the_images_value_wins_over_ours() {
    let net = crate::plan::JobNet {
        interface: "eth0".into(),
        cidr: "10.1.0.0/16".into(),
    };
    let image_env = vec![
        "PATH=/usr/bin".to_string(),
        "NCCL_SOCKET_IFNAME=ib0".to_string(),
        "OMPI_MCA_btl_tcp_if_include=ib0".to_string(),
    ];
    let fabric = [
        ("NCCL_IB_HCA".to_string(), "mlx5".to_string()),
        ("NCCL_SOCKET_IFNAME".to_string(), "fabric".to_string()),
    ];
    let d = task_defaults(&image_env, Some(&net), &fabric);
    let get = |k: &str| d.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("NCCL_SOCKET_IFNAME"), Some("ib0"));
    assert_eq!(get("OMPI_MCA_btl_tcp_if_include"), Some("ib0"));
    assert_eq!(get("OMPI_MCA_oob_tcp_if_include"), Some("10.1.0.0/16"));
    assert_eq!(get("GLOO_SOCKET_IFNAME"), Some("eth0"));
    // A fabric profile's variable is a default too, under the image's value.
    assert_eq!(get("NCCL_IB_HCA"), Some("mlx5"));
    assert_eq!(
        d.iter().filter(|(k, _)| k == "NCCL_SOCKET_IFNAME").count(),
        1
    );
    // The image's value is a default, never set over the task's own.
    let (set, _) = task_env(&image_env, &[], "c", "sha256:x", None);
    assert!(!set.iter().any(|(k, _)| k == "NCCL_SOCKET_IFNAME"));
    assert!(task_defaults(&[], None, &[]).is_empty());
}

#[test]
fn slurm_folders_must_be_root_or_the_users_in_a_folder_nobody_can_swap() {
    use crate::plan::policy::{check_slurm_dir, SlurmDirFacts};
    let dir = Path::new("/tmp/spmix_appdir_1001_42.3");
    let ok = SlurmDirFacts {
        owner: 1001,
        is_dir: true,
        parent_owner: 0,
        parent_mode: 0o41777,
    };
    assert!(check_slurm_dir(dir, 1001, &ok).is_ok());
    let other = SlurmDirFacts { owner: 1002, ..ok };
    let e = check_slurm_dir(dir, 1001, &other).unwrap_err().to_string();
    assert!(e.contains("belongs to uid 1002"), "{e}");
    let users_parent = SlurmDirFacts {
        parent_owner: 1001,
        parent_mode: 0o40755,
        ..ok
    };
    assert!(check_slurm_dir(dir, 1001, &users_parent).is_ok());
    let others_parent = SlurmDirFacts {
        parent_owner: 1002,
        ..users_parent
    };
    let e = check_slurm_dir(dir, 1001, &others_parent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not sticky"), "{e}");
    let file = SlurmDirFacts {
        is_dir: false,
        ..ok
    };
    assert!(check_slurm_dir(dir, 1001, &file).is_err());
}

#[test]
fn pass_two_declares_roots_files_read_only_and_a_private_folder_of_the_users() {
    let (spec, _) = planned(image("ubuntu"), &SiteConfig::default()).unwrap();
    let declared = Declared {
        passwd: "/run/mnd-srun/containers/c/passwd".into(),
        group: "/run/mnd-srun/containers/c/group".into(),
        init: "/run/mnd-srun/init/mnd-init-x".into(),
    };
    // A VOLUME inside a folder shown from the host (the home, Slurm's spool) stays the host's.
    let vols = vec![
        "/vol".to_string(),
        "/shared/home/alice/cache".to_string(),
        "/var/spool/slurmd/pmix.42.3/x".to_string(),
    ];
    let done = for_image(&spec, &vols, Some("sha256:abc"), &declared, (1001, 1001));
    assert!(!done.tmpfs.contains_key("/shared/home/alice/cache"));
    assert!(!done.tmpfs.contains_key("/var/spool/slurmd/pmix.42.3/x"));
    assert_eq!(done.image, "sha256:abc");
    for (source, target) in [
        ("/run/mnd-srun/containers/c/passwd", "/etc/passwd"),
        ("/run/mnd-srun/containers/c/group", "/etc/group"),
        ("/run/mnd-srun/init/mnd-init-x", "/.mnd-init"),
    ] {
        assert!(
            done.mounts.iter().any(|m| m.source == Path::new(source)
                && m.target == Path::new(target)
                && m.read_only),
            "{target}: {:?}",
            done.mounts
        );
    }
    let private = done.tmpfs.get("/.mnd").unwrap();
    assert!(
        private.contains("uid=1001,gid=1001") && private.contains("mode=0700"),
        "{private}"
    );
    assert_eq!(
        done.tmpfs.get("/vol").map(String::as_str),
        Some("rw,nosuid,nodev")
    );
    let targets = declared_targets(&done);
    assert!(targets.contains(&(PathBuf::from("/etc/passwd"), 1)));
    assert!(targets.contains(&(PathBuf::from("/.mnd"), 1)));
    assert!(targets.contains(&(PathBuf::from("/vol"), 1)));
}

#[test]
fn a_mount_that_did_not_land_at_its_target_is_refused_naming_it() {
    use crate::plan::policy::check_landed;
    let declared = vec![
        (PathBuf::from("/.mnd"), 1),
        (PathBuf::from("/etc/passwd"), 1),
        (PathBuf::from("/home/dave/to-mnd"), 1),
    ];
    let fine: Vec<PathBuf> = [
        "/",
        "/proc",
        "/.mnd",
        "/etc/passwd",
        "/home/dave/to-mnd",
        "/etc/hosts",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert!(check_landed(&declared, &fine).is_ok());
    // A link in the home sent the user's mount onto /.mnd.
    let moved: Vec<PathBuf> = ["/", "/.mnd", "/.mnd", "/etc/passwd"]
        .iter()
        .map(PathBuf::from)
        .collect();
    let e = check_landed(&declared, &moved).unwrap_err().to_string();
    assert!(
        e.contains("mount target /.mnd") && e.contains("2 mount(s) there, 1 declared"),
        "{e}"
    );
    // Anything mounted at /etc itself.
    let mut over_etc = fine.clone();
    over_etc.push(PathBuf::from("/etc"));
    let e = check_landed(&declared, &over_etc).unwrap_err().to_string();
    assert!(e.contains("mount target /etc"), "{e}");
}

#[test]
fn only_folders_files_and_harmless_devices_are_mount_sources() {
    use crate::plan::policy::check_source_kind;
    assert!(check_source_kind(Path::new("/data"), libc::S_IFDIR | 0o755).is_ok());
    assert!(check_source_kind(Path::new("/data/f"), libc::S_IFREG | 0o644).is_ok());
    assert!(check_source_kind(Path::new("/dev/null"), libc::S_IFCHR | 0o666).is_ok());
    for (path, mode, kind) in [
        ("/home/d/fifo", libc::S_IFIFO, "a FIFO"),
        ("/home/d/sock", libc::S_IFSOCK, "a socket"),
        ("/dev/kmsg", libc::S_IFCHR, "a device"),
        ("/dev/sda", libc::S_IFBLK, "a device"),
    ] {
        let e = check_source_kind(Path::new(path), mode | 0o600)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{path} is refused: it is {kind}")),
            "{e}"
        );
    }
}

#[test]
fn an_image_found_by_id_or_carrying_copy_labels_is_refused() {
    use crate::plan::policy::check_image_found;
    let names = vec![
        "ubuntu:24.04".to_string(),
        "docker.io/library/ubuntu@sha256:aa".to_string(),
    ];
    assert!(check_image_found("ubuntu:24.04", &names, false).is_ok());
    assert!(check_image_found("docker.io/library/ubuntu:24.04", &names, false).is_ok());
    assert!(check_image_found("ubuntu@sha256:aa", &names, false).is_ok());
    assert!(check_image_found(
        "reg:5000/team/img",
        &["reg:5000/team/img:latest".into()],
        false
    )
    .is_ok());
    let e = check_image_found("3f2a", &names, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Docker found it by its id (or an id prefix), not by name"),
        "{e}"
    );
    assert!(check_image_found("sha256:3f2a", &[], false).is_err());
    let e = check_image_found("ubuntu:24.04", &names, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("copy labels"), "{e}");
}

#[test]
fn a_reused_container_is_joined_in_the_namespaces_it_was_made_with() {
    let mut o = image("ubuntu:24.04");
    o.unshare = Some("uts,ipc".into());
    let (spec, _) = planned(o, &SiteConfig::default()).unwrap();
    let made = made_with_namespaces(&spec.labels);
    assert_eq!(made, ["uts", "ipc"]);
    let (plain, _) = planned(image("ubuntu:24.04"), &SiteConfig::default()).unwrap();
    assert!(made_with_namespaces(&plain.labels).is_empty());
    // A label naming anything else is ignored.
    let forged = BTreeMap::from([(labels::UNSHARE.to_string(), "pid,mnt,ipc".to_string())]);
    assert_eq!(made_with_namespaces(&forged), ["ipc"]);
}

#[test]
fn a_named_container_shows_slurms_spool_whole_for_its_later_steps_pmix_folders() {
    let named = Options {
        name: Some("warm".into()),
        ..image("img")
    };
    let targets = |spec: &ContainerSpec| -> Vec<PathBuf> {
        spec.mounts.iter().map(|m| m.target.clone()).collect()
    };
    let (spec, _) = planned(named.clone(), &SiteConfig::default()).unwrap();
    let spool = PathBuf::from("/var/spool/slurmd");
    assert!(targets(&spec).contains(&spool), "{:?}", targets(&spec));
    assert!(!targets(&spec).contains(&spool.join("pmix.42.3")));
    // A step's own container shows its step's folder alone.
    let (spec, _) = planned(image("img"), &SiteConfig::default()).unwrap();
    assert!(!targets(&spec).contains(&spool));
    // Where the spool may not be shown whole (not root's alone), the step's folder is.
    let (spec, _) = plan(&Inputs {
        req: &request(named.clone()),
        site: &SiteConfig::default(),
        user: &test_user(),
        facts: &NodeFacts::default(),
        tools: None,
        spools: &[],
        resolve: &resolve,
    })
    .unwrap();
    assert!(targets(&spec).contains(&spool.join("pmix.42.3")));
    // Nothing of the user's is mounted inside it (runc would make the mount point, as root).
    let inside = Options {
        mounts: Some("/shared/home/alice/proj:/var/spool/slurmd/mine".into()),
        ..named
    };
    let err = planned(inside, &SiteConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/var/spool/slurmd/mine") && err.contains("inside Slurm's spool"),
        "{err}"
    );
    // Nor a tmpfs of the user's.
    let tmpfs_inside = Options {
        name: Some("warm".into()),
        mounts: Some("tmpfs:/var/spool/slurmd/job99".into()),
        ..image("img")
    };
    let err = planned(tmpfs_inside, &SiteConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("inside Slurm's spool"), "{err}");
    assert!(policy::spool_shown_to_later_steps(0, 0o40755));
    assert!(!policy::spool_shown_to_later_steps(0, 0o41777));
    assert!(!policy::spool_shown_to_later_steps(1001, 0o40700));
}

#[test]
fn a_global_named_container_is_the_users_across_jobs_and_renewed_in_a_later_job() {
    let named = Options {
        name: Some("warm".into()),
        ..image("img")
    };
    let mut req = request(named.clone());
    req.global_scope = true;
    let (spec, _) = planned_for(
        &req,
        &SiteConfig::default(),
        &NodeFacts::default(),
        "/opt/mnd-srun/bin",
    )
    .unwrap();
    assert_eq!(spec.labels[labels::SCOPE], "global");
    assert!(
        spec.kept_when_stopped,
        "Docker must not remove it when the Epilog stops it"
    );
    assert!(
        spec.name.starts_with("mnd-alice-warm-node2-"),
        "{}",
        spec.name
    );
    // Another job of the same user finds the same container; the job is not an owner label.
    let later = Request {
        job: 43,
        ..req.clone()
    };
    assert_eq!(later.container_name("alice", Some("warm")), spec.name);
    let owner = owner_labels(&spec.labels);
    assert!(!owner.contains_key(labels::JOB) && owner[labels::UID] == "1001");
    assert_eq!(owner[labels::SCOPE], "global");
    // Renewed when made by another job or stopped; joined while this job runs it.
    assert!(!renew_global(&spec.labels, true, 42));
    assert!(renew_global(&spec.labels, true, 43));
    assert!(renew_global(&spec.labels, false, 42));
    // A job-scoped one keeps its job in its name and owner labels, and is never renewed.
    let (spec, _) = planned(named, &SiteConfig::default()).unwrap();
    assert_eq!(spec.labels[labels::SCOPE], "job");
    assert!(!spec.kept_when_stopped);
    assert!(
        spec.name.starts_with("mnd-alice-42-warm-node2-"),
        "{}",
        spec.name
    );
    assert_eq!(owner_labels(&spec.labels)[labels::JOB], "42");
    assert!(!renew_global(&spec.labels, false, 43));
    // A step's own container is never global.
    let mut req = request(image("img"));
    req.global_scope = true;
    let (spec, _) = planned_for(
        &req,
        &SiteConfig::default(),
        &NodeFacts::default(),
        "/opt/mnd-srun/bin",
    )
    .unwrap();
    assert_eq!(spec.labels[labels::SCOPE], "job");
}

#[test]
fn the_users_own_root_file_system_follows_the_sites_user_rootfs() {
    use crate::config::UserRootfs;
    assert!(owned_rootfs(UserRootfs::RemapRoot, true, true));
    assert!(!owned_rootfs(UserRootfs::RemapRoot, false, true));
    assert!(owned_rootfs(UserRootfs::Always, false, true));
    assert!(
        !owned_rootfs(UserRootfs::Always, false, false),
        "read-only: nothing to own"
    );
    assert!(!owned_rootfs(UserRootfs::Never, true, true));
}

#[test]
fn a_user_keeps_no_more_global_containers_than_the_site_allows() {
    assert!(policy::check_named_count(3, None, "node1").is_ok());
    assert!(policy::check_named_count(1, Some(2), "node1").is_ok());
    let err = policy::check_named_count(2, Some(2), "node1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_named_containers is 2") && err.contains("mnd containers rm -w node1"),
        "{err}"
    );
}

#[test]
fn a_found_container_is_the_same_image_by_the_name_it_was_made_with() {
    let labels = |image: &str| -> BTreeMap<String, String> {
        [(labels::IMAGE.to_string(), image.to_string())].into()
    };
    // A user's copy or a later save of img:1 has another id: the name decides.
    assert!(same_image(
        &labels("img:1"),
        "sha256:copy",
        "img:1",
        "sha256:base"
    ));
    assert!(!same_image(
        &labels("img:1"),
        "sha256:copy",
        "img:2",
        "sha256:copy"
    ));
    // Made before the label: by id.
    assert!(same_image(
        &BTreeMap::new(),
        "sha256:a",
        "img:1",
        "sha256:a"
    ));
    assert!(!same_image(
        &BTreeMap::new(),
        "sha256:a",
        "img:1",
        "sha256:b"
    ));
}

#[test]
fn a_global_container_running_for_another_job_is_not_taken_from_it() {
    let found: BTreeMap<String, String> = [
        (labels::SCOPE.to_string(), "global".to_string()),
        (labels::JOB.to_string(), "41".to_string()),
        (labels::NAME.to_string(), "keep".to_string()),
    ]
    .into();
    let err = check_global_free(&found, true, 42).unwrap_err().to_string();
    assert!(err.contains("runs for your job 41"), "{err}");
    assert!(
        check_global_free(&found, false, 42).is_ok(),
        "stopped: renewed"
    );
    assert!(
        check_global_free(&found, true, 41).is_ok(),
        "this job's: joined"
    );
}
