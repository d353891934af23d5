//! `mnd`: user and admin tools of mnd-srun (hostlists, container listing, cleanup).

use clap::{CommandFactory, Parser, Subcommand};
use mnd::cleanup::{self, Selection};
use mnd::docker::Engine;
use mnd::hostlist;
use mnd::jobtools;
use std::io::{BufWriter, Write};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "mnd", version, about = "User and admin tools of mnd-srun")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Expand or compress Slurm hostlist expressions, exactly as scontrol does.
    Hostlist {
        #[command(subcommand)]
        action: HostlistAction,
    },
    /// Print shell completions for mnd or mnd-srun.
    #[command(hide = true)]
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
        /// Which command.
        #[arg(long, default_value = "mnd")]
        command: String,
    },
    /// List the mnd-srun containers of your running jobs on every node of them (or of
    /// everyone's with --all-users, as root): job, step, user, image, age, state, CPU, memory.
    Ps {
        /// Only this Slurm job.
        #[arg(long, value_name = "ID")]
        job: Option<u64>,
        /// Every user's containers.
        #[arg(long)]
        all_users: bool,
        /// Hosts mode: these hosts (hostlist), reached over your ssh, instead of Slurm's.
        #[arg(long, value_name = "HOSTLIST")]
        hosts: Option<String>,
        /// This node only (what each node runs for the job-wide listing).
        #[arg(long, hide = true)]
        here: bool,
    },
    /// Run a command inside a running job's container, as the job's user: a shell, py-spy,
    /// nvidia-smi. Only the job's owner (or root).
    Exec(ExecArgs),
    /// Show what a job's containers printed (their sshd's log), per node.
    Logs {
        /// The Slurm job.
        #[arg(long, value_name = "ID")]
        job: u64,
        /// Only this node.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
        /// Hosts mode: the job's hosts (hostlist), reached over your ssh, instead of Slurm's.
        #[arg(long, value_name = "HOSTLIST")]
        hosts: Option<String>,
        /// This node only (what each node runs).
        #[arg(long, hide = true)]
        here: bool,
    },
    /// Save a running job's container as an image (`docker commit`) into your image share,
    /// so the next job on any node can start from it (`--container NAME`).
    Commit {
        /// The Slurm job.
        #[arg(long, value_name = "ID")]
        job: u64,
        /// The node whose container (default: the job's first node).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// The image share's folder; default ~/.mnd/images.
        #[arg(long, env = "MND_IMAGE_CACHE", value_name = "DIR")]
        image_cache: Option<std::path::PathBuf>,
        /// This node only (what the chosen node runs).
        #[arg(long, hide = true)]
        here: bool,
        /// The new image's name (REPO[:TAG]).
        name: String,
    },
    /// Your image share (the cache on the shared filesystem that `--image-share` uses).
    Image {
        #[command(subcommand)]
        action: ImageAction,
    },
    /// Root side of the SPANK plugin (run by slurmstepd).
    #[command(hide = true)]
    Direct {
        #[command(subcommand)]
        action: DirectAction,
    },
    /// Check this node's install and say, one line per check (ok, warn, FAIL, skip), what is
    /// wrong and the fix: plugstack.conf, the plugin and the Slurm it was built for, the
    /// helper, the Epilog, the site config, Docker and its image store, size limits, MUNGE,
    /// a shared home, cgroups, and (as a user) your ~/.mnd. Run it first, as root on a node
    /// or as a user. Exit 1 when a check fails (with --strict also when one warns), else 0.
    Doctor(DoctorArgs),
    /// Your `--mnd-name` containers (direct mode) on the nodes of your allocation, or on
    /// -w NODES: list them, or remove those you name. Works without Docker access: each
    /// node's root side answers for your containers only, through the Slurm plugin.
    Containers {
        #[command(subcommand)]
        action: ContainersAction,
    },
    /// Remove mnd-srun containers on this node, and the copies of images (ssh mode's, one per
    /// user and image) whose image has no name any more. Safe as the Slurm Epilog: exits 0
    /// when there is nothing to do or no Docker engine on the node.
    Cleanup {
        /// Only this Slurm job (the Epilog passes $SLURM_JOB_ID).
        #[arg(long, value_name = "ID", env = "SLURM_JOB_ID")]
        job: Option<u64>,
        /// Only containers older than this (90s, 30m, 2h, 1d).
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// Every user's containers (root only).
        #[arg(long)]
        all_users: bool,
    },
}

/// What to do with your named containers.
#[derive(Subcommand)]
enum ContainersAction {
    /// One line per container: node, name, scope, state, the job that made or last ran it,
    /// the image it came from, its age.
    Ls {
        /// These nodes (hostlist); default: every node of your allocation.
        #[arg(short = 'w', long = "nodelist", value_name = "NODES")]
        nodes: Option<String>,
    },
    /// Remove the containers of these names (`all`: every one not running now).
    Rm {
        /// These nodes (hostlist); default: every node of your allocation.
        #[arg(short = 'w', long = "nodelist", value_name = "NODES")]
        nodes: Option<String>,
        /// The names given to --mnd-name.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// What to do with the image share.
#[derive(Subcommand)]
enum ImageAction {
    /// List the saved images: id, tags, compressed size, age.
    Ls {
        /// The image share's folder; default ~/.mnd/images.
        #[arg(long, env = "MND_IMAGE_CACHE", value_name = "DIR")]
        image_cache: Option<std::path::PathBuf>,
    },
    /// Remove saved images (all, or those older than AGE: 90s, 30m, 2h, 7d); as root with
    /// --pulled --job J (the Epilog): the images direct mode's root side pulled whose last
    /// job was J, unless a container still uses them.
    Prune {
        /// Only images saved longer ago than this.
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// The images the root side pulled for direct mode (root only), not the share.
        #[arg(long, requires = "job", conflicts_with_all = ["older_than", "image_cache"])]
        pulled: bool,
        /// With --pulled: the job that just ended.
        #[arg(long, requires = "pulled", value_name = "JOB")]
        job: Option<u32>,
        /// The image share's folder; default ~/.mnd/images.
        #[arg(long, env = "MND_IMAGE_CACHE", value_name = "DIR")]
        image_cache: Option<std::path::PathBuf>,
    },
}

/// The root side of the SPANK plugin (direct mode); slurmstepd runs these as root.
#[derive(Subcommand)]
enum DirectAction {
    /// Start (or find) this node's container for a step: a request on stdin, a reply on stdout.
    Up {
        /// The site config the admin named in plugstack.conf (`config=`).
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
    },
    /// Save a step's container as a `docker save` archive, written as the job's user
    /// (`--mnd-save`).
    Save {
        /// The container's id.
        #[arg(long, value_name = "ID")]
        container: String,
        /// The Slurm job.
        #[arg(long, value_name = "ID")]
        job: u32,
        /// The step.
        #[arg(long, value_name = "ID")]
        step: u32,
        /// The job's user.
        #[arg(long, value_name = "UID")]
        uid: u32,
        /// Their primary group.
        #[arg(long, value_name = "GID")]
        gid: u32,
        /// Their groups, comma separated.
        #[arg(long, value_name = "GIDS", value_delimiter = ',')]
        gids: Vec<u32>,
        /// The archive (absolute).
        #[arg(long, value_name = "PATH")]
        to: std::path::PathBuf,
    },
    /// One operation on the job user's image share, as that user (the root helper runs it
    /// to give direct mode's nodes an image only the step's first node has).
    #[command(hide = true)]
    Share {
        /// The share's folder.
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
        /// put-word NAME | get-word NAME | save ID | get-archive ID
        #[arg(value_parser = ["put-word", "get-word", "save", "get-archive"])]
        op: String,
        /// The word's name or the image's id.
        name: String,
        /// How long to wait for it (get-word, get-archive).
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        wait: u64,
        /// save: stdin's first line is this word, left first.
        #[arg(long, value_name = "NAME")]
        word: Option<String>,
    },
    /// Remove this node's containers of a step.
    Down {
        /// The Slurm job.
        #[arg(long, value_name = "ID")]
        job: u32,
        /// The step.
        #[arg(long, value_name = "ID")]
        step: String,
    },
}

#[derive(Subcommand)]
enum HostlistAction {
    /// Print one host per line, like `scontrol show hostnames`.
    Expand {
        /// Hostlist expressions such as `node[1-3],gpu[01-04]`.
        #[arg(required = true)]
        exprs: Vec<String>,
    },
    /// Print the compressed form, like `scontrol show hostlist`.
    Compress {
        /// Sort first, like `scontrol show hostlistsorted`.
        #[arg(long)]
        sorted: bool,
        /// Hosts, as comma/space separated lists or expressions.
        #[arg(required = true)]
        hosts: Vec<String>,
    },
}

/// `mnd doctor`'s options: the files to check instead of the node's own (a broken copy, a
/// file Slurm does not use yet).
#[derive(clap::Args, Debug)]
struct DoctorArgs {
    /// JSON instead of text: every check's id, status (ok, warn, fail, skip), detail, fix.
    #[arg(long)]
    json: bool,
    /// Exit 1 on a warning too.
    #[arg(long)]
    strict: bool,
    /// plugstack.conf (default: Slurm's PlugStackConfig, else the one beside slurm.conf).
    #[arg(long, value_name = "FILE")]
    plugstack: Option<std::path::PathBuf>,
    /// The site config (default: plugstack's config=, and /etc/mnd-srun/config.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// The Epilog script (default: Slurm's Epilog).
    #[arg(long, value_name = "FILE")]
    epilog: Option<std::path::PathBuf>,
    /// The home whose filesystem must be shared for the image share (default: yours; as
    /// root, SUDO_USER's or the user with the lowest uid from 1000).
    #[arg(long, value_name = "DIR")]
    home: Option<std::path::PathBuf>,
}

/// `mnd exec`'s options.
#[derive(clap::Args, Debug)]
struct ExecArgs {
    /// The Slurm job.
    #[arg(long, value_name = "ID")]
    job: u64,
    /// The node whose container (see `mnd ps`).
    #[arg(long, value_name = "NODE", conflicts_with = "all")]
    node: Option<String>,
    /// Every node of the job, output labelled by node.
    #[arg(long)]
    all: bool,
    /// Keep standard input open.
    #[arg(short, long)]
    interactive: bool,
    /// A terminal (for a shell: -it).
    #[arg(short, long)]
    tty: bool,
    /// Hosts mode: the job's hosts (hostlist), reached over your ssh, instead of Slurm's.
    #[arg(long, value_name = "HOSTLIST")]
    hosts: Option<String>,
    /// This node only (what each node runs).
    #[arg(long, hide = true)]
    here: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

fn expand_all(exprs: &[String]) -> Result<Vec<String>, hostlist::HostlistError> {
    let mut hosts = Vec::new();
    for e in exprs {
        hosts.extend(hostlist::expand(e)?);
    }
    Ok(hosts)
}

/// Which uid a listing or cleanup is limited to: the caller's, or nobody's with --all-users.
fn owner_filter(all_users: bool, needs_root: bool) -> Result<Option<u32>, String> {
    let uid = nix::unistd::getuid().as_raw();
    match (all_users, uid) {
        (false, _) => Ok(Some(uid)),
        (true, 0) => Ok(None),
        (true, _) if needs_root => {
            Err("--all-users needs root (it removes other users' containers)".into())
        }
        (true, _) => Ok(None),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Runs `work` with this node's Docker; a node with no engine has nothing to do (said on
/// stderr), which is no failure (the tools fan out over nodes that may have none).
fn with_this_nodes_engine<F, Fut>(work: F) -> Result<(), String>
where
    F: FnOnce(Engine) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    runtime()?.block_on(async {
        match Engine::connect().await {
            Ok(engine) => work(engine).await,
            Err(e) => {
                eprintln!("mnd: {e}; nothing to do on this node");
                Ok(())
            }
        }
    })
}

/// `mnd containers ls|rm`: one srun task per node, whose plugin asks the node's root side
/// (`--mnd-containers`); srun's own exit says whether every node answered.
fn containers_cmd(action: ContainersAction) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let (op, nodes) = match action {
        ContainersAction::Ls { nodes } => ("ls".to_string(), nodes),
        ContainersAction::Rm { nodes, names } => (format!("rm:{}", names.join(",")), nodes),
    };
    let allocation = std::env::var("SLURM_JOB_NODELIST").ok();
    let args = jobtools::containers_srun(&op, nodes.as_deref(), allocation.as_deref())
        .map_err(|e| e.to_string())?;
    let err = std::process::Command::new("srun").args(&args).exec();
    Err(format!("cannot run srun: {err}"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Completions { shell, command } => completions_cmd(shell, command),
        Command::Ps {
            job,
            all_users,
            hosts,
            here,
        } => ps_cmd(job, all_users, hosts, here),
        Command::Exec(args) => exec_cmd(args),
        Command::Logs {
            job,
            node,
            follow,
            hosts,
            here,
        } => logs_cmd(job, node, follow, hosts, here),
        Command::Cleanup {
            job,
            older_than,
            all_users,
        } => cleanup_cmd(job, older_than, all_users),
        Command::Doctor(args) => doctor_cmd(args),
        Command::Containers { action } => containers_cmd(action),
        Command::Direct { action } => direct(action),
        Command::Image { action } => image(action),
        Command::Commit {
            job,
            node,
            image_cache,
            here,
            name,
        } => commit_cmd(job, node, image_cache, here, name),
        Command::Hostlist { action } => {
            let out = std::io::stdout().lock();
            let mut out = BufWriter::with_capacity(1 << 16, out);
            let result = match action {
                HostlistAction::Expand { exprs } => expand_all(&exprs).map(|hosts| {
                    for h in hosts {
                        let _ = writeln!(out, "{h}");
                    }
                }),
                HostlistAction::Compress { sorted, hosts } => expand_all(&hosts).map(|hosts| {
                    let text = if sorted {
                        hostlist::compress_sorted(&hosts)
                    } else {
                        hostlist::compress(&hosts)
                    };
                    let _ = writeln!(out, "{text}");
                }),
            };
            result.map_err(|e| e.to_string())?;
            out.flush().map_err(|e| format!("cannot write output: {e}"))
        }
    }
}

/// `mnd completions`.
fn completions_cmd(shell: clap_complete::Shell, command: String) -> Result<(), String> {
    let mut cmd = match command.as_str() {
        "mnd" => Cli::command(),
        "mnd-srun" => mnd::cli::Args::command(),
        other => {
            return Err(format!(
                "no completions for '{other}' (use mnd or mnd-srun)"
            ))
        }
    };
    clap_complete::generate(shell, &mut cmd, command, &mut std::io::stdout());
    Ok(())
}

/// `mnd doctor`: gathers this node's facts, checks them, prints the report; exits 1 when a
/// check failed (or, with --strict, warned).
fn doctor_cmd(args: DoctorArgs) -> Result<(), String> {
    use mnd::doctor;
    let paths = doctor::Paths {
        plugstack: args.plugstack,
        config: args.config,
        epilog: args.epilog,
        home: args.home,
    };
    let facts = runtime()?.block_on(doctor::gather(&paths));
    let findings = doctor::check(&facts);
    let report = if args.json {
        doctor::render_json(&facts, &findings, args.strict) + "\n"
    } else {
        doctor::render_text(&findings, args.strict)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(report.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write output: {e}"))?;
    match doctor::exit_code(&findings, args.strict) {
        0 => Ok(()),
        code => std::process::exit(i32::from(code)),
    }
}

/// `mnd ps`.
fn ps_cmd(
    job: Option<u64>,
    all_users: bool,
    hosts: Option<String>,
    here: bool,
) -> Result<(), String> {
    if here || (hosts.is_none() && !jobtools::under_slurm()) {
        if !here {
            print!("{}", cleanup::table_header());
        }
        return ps_here(job, all_users);
    }
    let ps_args = |j: Option<u64>| {
        let mut args = vec!["ps".to_string()];
        if let Some(j) = j {
            args.extend(["--job".into(), j.to_string()]);
        }
        if all_users {
            args.push("--all-users".into());
        }
        args
    };
    print!("{}", cleanup::table_header());
    let mut rows: Vec<String> = Vec::new();
    if let Some(hosts) = &hosts {
        let hosts = expand_all(std::slice::from_ref(hosts)).map_err(|e| e.to_string())?;
        for (_, out) in jobtools::on_hosts(&hosts, &ps_args(job))? {
            rows.extend(out.lines().map(str::to_string));
        }
    } else {
        let jobs = match job {
            Some(j) => vec![(j, jobtools::job_nodes(j).map_err(|e| e.to_string())?)],
            None => jobtools::running_jobs(all_users && is_root()).map_err(|e| e.to_string())?,
        };
        for (j, nodes) in jobs {
            let reach = jobtools::Reach::All { nodes };
            let out = match jobtools::on_job(j, &reach, false, &ps_args(Some(j)), true) {
                Ok(out) => out,
                // A job that ended since squeue listed it has nothing left to show.
                Err(_) if job.is_none() => continue,
                Err(e) => return Err(e),
            };
            // srun --label prefixes "N: "; the rows carry their node already.
            rows.extend(
                out.lines()
                    .map(|l| l.split_once(": ").map_or(l, |(_, r)| r).to_string()),
            );
        }
    }
    rows.sort();
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

/// `mnd exec`.
fn exec_cmd(args: ExecArgs) -> Result<(), String> {
    let ExecArgs {
        job,
        node,
        all,
        interactive,
        tty,
        hosts,
        here,
        cmd,
    } = args;
    if here || (hosts.is_none() && !jobtools::under_slurm()) {
        return exec_here(job, interactive, tty, cmd);
    }
    let mut args = vec!["exec".to_string(), "--job".into(), job.to_string()];
    if interactive {
        args.push("--interactive".into());
    }
    if tty {
        args.push("--tty".into());
    }
    args.push("--".into());
    args.extend(cmd);
    if let Some(hosts) = &hosts {
        return jobtools::hosts_tool(hosts, node.as_deref(), all, tty, &args);
    }
    let reach = match (node, all) {
        (Some(n), _) => jobtools::Reach::Node(n),
        (None, true) => jobtools::Reach::All {
            nodes: jobtools::job_nodes(job).map_err(|e| e.to_string())?,
        },
        (None, false) => {
            return Err("say where: --node NODE (see `mnd ps`), or --all for every node".into())
        }
    };
    jobtools::on_job(job, &reach, tty, &args, false).map(|_| ())
}

/// `mnd logs`.
fn logs_cmd(
    job: u64,
    node: Option<String>,
    follow: bool,
    hosts: Option<String>,
    here: bool,
) -> Result<(), String> {
    if here || (hosts.is_none() && !jobtools::under_slurm()) {
        return logs_here(job, follow);
    }
    let mut args = vec!["logs".to_string(), "--job".into(), job.to_string()];
    if follow {
        args.push("--follow".into());
    }
    if let Some(hosts) = &hosts {
        return jobtools::hosts_tool(hosts, node.as_deref(), node.is_none(), false, &args);
    }
    let reach = match node {
        Some(n) => jobtools::Reach::Node(n),
        None => jobtools::Reach::All {
            nodes: jobtools::job_nodes(job).map_err(|e| e.to_string())?,
        },
    };
    jobtools::on_job(job, &reach, false, &args, false).map(|_| ())
}

/// `mnd cleanup`.
fn cleanup_cmd(
    job: Option<u64>,
    older_than: Option<String>,
    all_users: bool,
) -> Result<(), String> {
    let older_than = older_than
        .map(|t| cleanup::parse_duration(&t))
        .transpose()
        .map_err(|e| e.to_string())?;
    let sel = Selection {
        job,
        uid: owner_filter(all_users, true)?,
        older_than,
    };
    with_this_nodes_engine(|engine| async move {
        let removed = cleanup::remove(&engine, &sel)
            .await
            .map_err(|e| e.to_string())?;
        for name in &removed {
            eprintln!("mnd: removed {name}");
        }
        let copies = cleanup::sweep_stale_copies(&engine, sel.uid)
            .await
            .map_err(|e| e.to_string())?;
        for id in &copies {
            eprintln!("mnd: removed {id}, a user's copy of an image that has no name any more");
        }
        if is_root() {
            mnd::direct::sweep_root_files(&engine).await;
        }
        Ok(())
    })
}

/// `mnd commit`.
fn commit_cmd(
    job: u64,
    node: Option<String>,
    image_cache: Option<std::path::PathBuf>,
    here: bool,
    name: String,
) -> Result<(), String> {
    if here || !jobtools::under_slurm() {
        return commit_here(job, image_cache, &name);
    }
    let node = match node {
        Some(n) => n,
        None => jobtools::first_node(job).map_err(|e| e.to_string())?,
    };
    let mut args = vec!["commit".to_string(), "--job".into(), job.to_string()];
    if let Some(dir) = image_cache {
        args.push("--image-cache".into());
        args.push(dir.display().to_string());
    }
    args.push(name);
    jobtools::on_job(job, &jobtools::Reach::Node(node), false, &args, false).map(|_| ())
}

fn is_root() -> bool {
    nix::unistd::getuid().is_root()
}

/// `mnd ps` on this node: rows with CPU and memory of each running container.
fn ps_here(job: Option<u64>, all_users: bool) -> Result<(), String> {
    let sel = Selection {
        job,
        uid: owner_filter(all_users, false)?,
        older_than: None,
    };
    with_this_nodes_engine(|engine| async move {
        let found = cleanup::list(&engine, &sel)
            .await
            .map_err(|e| e.to_string())?;
        let usage = futures_util::future::join_all(found.iter().map(|c| async {
            if c.state == "running" {
                engine.usage(&c.id).await
            } else {
                None
            }
        }))
        .await;
        print!("{}", cleanup::table(&found, &usage));
        Ok(())
    })
}

/// The caller's running container of `job` on this node (root: anyone's); the newest step's.
async fn job_container(engine: &Engine, job: u64) -> Result<mnd::docker::Listed, String> {
    let sel = Selection {
        job: Some(job),
        uid: owner_filter(is_root(), false)?,
        older_than: None,
    };
    let mut found: Vec<_> = cleanup::list(engine, &sel)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| c.state == "running")
        .collect();
    found.sort_by_key(|c| {
        c.labels
            .get(mnd::spec::labels::STEP)
            .and_then(|s| s.parse::<u64>().ok())
    });
    let node = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    found.pop().ok_or_else(|| {
        format!("no running container of job {job} of yours on {node} (see `mnd ps --job {job}`)")
    })
}

/// `mnd exec` on this node: the command in the job's container, as its user.
fn exec_here(job: u64, interactive: bool, tty: bool, cmd: Vec<String>) -> Result<(), String> {
    let code = runtime()?.block_on(async {
        let engine = Engine::connect().await.map_err(|e| e.to_string())?;
        let c = job_container(&engine, job).await?;
        let (user, workdir) = engine
            .user_and_workdir(&c.id)
            .await
            .map_err(|e| e.to_string())?;
        let tty = tty && mnd::terminal::stdin_is_terminal();
        let stdin = (interactive || tty).then(mnd::terminal::stdin_chunks);
        let mut started = engine
            .exec(&c.id, &user, &workdir, cmd, tty, stdin)
            .await
            .map_err(|e| e.to_string())?;
        let _raw = tty.then(mnd::terminal::RawMode::enter).flatten();
        if let Some((rows, cols)) = tty.then(mnd::terminal::window_size).flatten() {
            engine.resize(&started, rows, cols).await;
        }
        (&mut started.io).await;
        engine.exit_code(&started).await.map_err(|e| e.to_string())
    })?;
    match code {
        0 => Ok(()),
        c => std::process::exit(i32::try_from(c).unwrap_or(1)),
    }
}

/// The caller's image share.
fn image_share(dir: Option<std::path::PathBuf>) -> Result<mnd::imagecache::Cache, String> {
    let user = mnd::identity::Identity::current().map_err(|e| e.to_string())?;
    let dir = dir.unwrap_or_else(|| user.home.join(".mnd/images"));
    mnd::imagecache::Cache::open(&dir, user.uid).map_err(|e| e.to_string())
}

/// `mnd image ls|prune`.
fn image(action: ImageAction) -> Result<(), String> {
    let size = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let age = |t: std::time::SystemTime| {
        let secs = t.elapsed().unwrap_or_default().as_secs();
        match secs {
            0..=119 => format!("{secs}s"),
            120..=7199 => format!("{}m", secs / 60),
            7200..=172_799 => format!("{}h", secs / 3600),
            _ => format!("{}d", secs / 86400),
        }
    };
    match action {
        ImageAction::Ls { image_cache } => {
            let cache = image_share(image_cache)?;
            println!("{:<20} {:>10} {:>6}  TAGS", "IMAGE", "SIZE", "AGE");
            for e in cache.list().map_err(|e| e.to_string())? {
                let short: String =
                    e.id.trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect();
                println!(
                    "{short:<20} {:>10} {:>6}  {}",
                    size(e.size),
                    age(e.saved),
                    e.tags.join(",")
                );
            }
            Ok(())
        }
        ImageAction::Prune {
            pulled: true, job, ..
        } => prune_pulled(job.unwrap_or_default()),
        ImageAction::Prune {
            older_than,
            image_cache,
            ..
        } => {
            let older_than = older_than
                .map(|t| cleanup::parse_duration(&t))
                .transpose()
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            let cache = image_share(image_cache)?;
            for e in cache.prune(older_than).map_err(|e| e.to_string())? {
                eprintln!(
                    "mnd: removed {} ({}, {})",
                    e.id,
                    e.tags.join(","),
                    size(e.size)
                );
            }
            Ok(())
        }
    }
}

/// `mnd image prune --pulled --job J` (root, the Epilog): removes the images the root side
/// pulled whose last job was J and that no container uses.
fn prune_pulled(job: u32) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "mnd image prune --pulled removes images root pulled: run it as root (the Epilog does)"
                .into(),
        );
    }
    let records = mnd::pulled::Pulled::open(std::path::Path::new(mnd::pulled::DIR))
        .map_err(|e| format!("{}: {e}", mnd::pulled::DIR))?;
    let unused = records
        .job_ended(job)
        .map_err(|e| format!("{}: {e}", mnd::pulled::DIR))?;
    runtime()?.block_on(async {
        let engine = Engine::connect().await.map_err(|e| e.to_string())?;
        for image in unused {
            use mnd::docker::Removal;
            match engine.remove_unused_image(&image).await {
                Ok(Removal::Removed) => eprintln!("mnd: removed image {image} (root's for direct mode; job {job} was the last to use it)"),
                Ok(Removal::InUse) => {
                    eprintln!("mnd: kept image {image}: a container still uses it; a later Epilog removes it");
                    let _ = records.keep(&image);
                }
                Ok(Removal::Gone) => {}
                Err(e) => {
                    eprintln!("mnd: image {image}: {e}; a later Epilog tries again");
                    let _ = records.keep(&image);
                }
            }
        }
        // The users' own copies of images that are gone now go too.
        let copies = mnd::ownedroot::sweep(&engine).await;
        if copies > 0 {
            eprintln!("mnd: removed {copies} user's copies of images no longer on this node");
        }
        Ok(())
    })
}

/// `mnd commit` on this node: the job's container as image `name`, saved into the share.
fn commit_here(
    job: u64,
    image_cache: Option<std::path::PathBuf>,
    name: &str,
) -> Result<(), String> {
    let cache = image_share(image_cache)?;
    runtime()?.block_on(async {
        let engine = Engine::connect().await.map_err(|e| e.to_string())?;
        let c = job_container(&engine, job).await?;
        let id = engine.commit(&c.id, name).await.map_err(|e| e.to_string())?;
        cache
            .record_tag(name, &id, "commit")
            .map_err(|e| e.to_string())?;
        cache.save(&engine, name, &id).await.map_err(|e| e.to_string())?;
        println!("{name} {id}");
        eprintln!(
            "mnd: saved {name} into the image share: jobs start from it with --container={name} (nodes without it load it from the share)"
        );
        Ok(())
    })
}

/// `mnd logs` on this node.
fn logs_here(job: u64, follow: bool) -> Result<(), String> {
    runtime()?.block_on(async {
        let engine = Engine::connect().await.map_err(|e| e.to_string())?;
        let c = job_container(&engine, job).await?;
        engine.print_logs(&c.id, follow).await;
        Ok(())
    })
}

/// `mnd direct up|down`. `up` does its user lookups and path checks before any thread
/// exists (one of them forks), then starts the runtime; SIGTERM (the task was killed)
/// removes the container it was making. Every action answers the signals slurmstepd's
/// task children start with blocked.
fn direct(action: DirectAction) -> Result<(), String> {
    use mnd::direct as helper;
    mnd::signals::unblock_inherited();
    match action {
        DirectAction::Up { config } => {
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
            let mut phases = helper::Phases::start();
            let req = helper::read_request(std::io::stdin().lock()).map_err(|e| e.to_string())?;
            if let Some(op) = helper::containers_asked(&req) {
                let said = runtime()?
                    .block_on(helper::serve_containers(&req, &op))
                    .map_err(|e| e.to_string())?;
                let reply = mnd::spank::Reply {
                    no_exec: true,
                    said,
                    ..Default::default()
                };
                println!(
                    "{}",
                    serde_json::to_string(&reply).map_err(|e| e.to_string())?
                );
                return Ok(());
            }
            let site = helper::site_config(config.as_deref()).map_err(|e| e.to_string())?;
            let prepared = helper::prepare(&req, &site).map_err(|e| e.to_string())?;
            phases.mark("prepare");
            runtime()?.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .map_err(|e| e.to_string())?;
                tokio::select! {
                    reply = helper::up(&prepared, &mut phases) => {
                        let mut reply = reply.map_err(|e| e.to_string())?;
                        reply.phases = std::mem::replace(&mut phases, helper::Phases::start()).done();
                        let text = serde_json::to_string(&reply).map_err(|e| e.to_string())?;
                        println!("{text}");
                        Ok(())
                    }
                    _ = term.recv() => {
                        helper::remove(&prepared).await;
                        Err("stopped (SIGTERM) while starting the container; removed it".into())
                    }
                }
            })
        }
        DirectAction::Save {
            container,
            job,
            step,
            uid,
            gid,
            gids,
            to,
        } => {
            if !is_root() {
                return Err(
                    "mnd direct save is the root side of --mnd-save; slurmstepd runs it as root"
                        .into(),
                );
            }
            let r = mnd::stepsave::SaveRequest {
                container,
                job,
                step,
                uid,
                gid,
                gids,
                to,
            };
            let file = mnd::stepsave::open_as_user(&r).map_err(|e| e.to_string())?;
            runtime()?
                .block_on(mnd::stepsave::save(&r, file))
                .map_err(|e| e.to_string())
        }
        DirectAction::Share {
            dir,
            op,
            name,
            wait,
            word,
        } => {
            use mnd::directshare::UserOp;
            let wait = std::time::Duration::from_secs(wait);
            let op = match op.as_str() {
                "put-word" => UserOp::PutWord(name),
                "get-word" => UserOp::GetWord(name, wait),
                "save" => UserOp::Save(name, word),
                _ => UserOp::GetArchive(name, wait),
            };
            mnd::directshare::as_user_op(&dir, op)
        }
        DirectAction::Down { job, step } => runtime()?.block_on(async {
            helper::down(job, &step)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("mnd: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_of_mnd_matches_the_cli() {
        let page = mnd::manpage::render(Cli::command(), mnd::manpage::MND_SECTIONS);
        assert!(page.contains("hostlist") && page.contains("cleanup"));
        mnd::manpage::check_committed("mnd.1", &page);
    }
}
