//! `mnd-srun`: one launcher per node of a Slurm step (see the crate docs and `man mnd-srun`).

use mnd::error::Error;
use mnd::{
    cli, config::SiteConfig, identity::Identity, launch, node, plan, slurm::StepContext, ssh,
};
use std::process::ExitCode;

async fn run(args: cli::Args, hostname: &str) -> Result<i32, Error> {
    let step = StepContext::from_env(|k| std::env::var(k).ok(), hostname)?;
    if (args.hosts.is_some() || args.hostfile.is_some()) && !step.hosts_mode {
        if step.under_slurm() {
            return Err(Error::Hosts(
                "--hosts/--hostfile start the job over ssh without Slurm; inside a Slurm job use srun instead".into(),
            ));
        }
        return front_door(&args).await;
    }
    if step.hosts_mode {
        // The front door's ssh connection: when it closes (Ctrl-C there, a lost link), the
        // job ends here as on SIGTERM.
        std::thread::spawn(|| {
            use std::io::Read;
            let mut buf = [0u8; 256];
            while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
            // The connection may be gone with it: what the teardown says goes nowhere rather
            // than failing on a closed pipe half-way.
            if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                use std::os::fd::AsRawFd;
                // SAFETY: dup2 onto this process's own stdout and stderr descriptors.
                unsafe {
                    libc::dup2(null.as_raw_fd(), 1);
                    libc::dup2(null.as_raw_fd(), 2);
                }
            }
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM);
        });
    }
    let site = SiteConfig::load(std::env::var("MND_CONFIG").ok())?;
    let user = Identity::current()?;
    let mut facts = node::gather()?;
    facts.net = job_network(&step);
    let plan = plan::build(&plan::Inputs {
        step: &step,
        args: &args,
        site: &site,
        user: &user,
        facts: &facts,
        resolve: &node::real_path,
    })?;
    log::debug!("plan: {:#?}", plan.redacted());
    if plan.role == plan::Role::Coordinator {
        let limit = node::raise_open_files();
        if (limit as usize) < plan.nodes.len() + 300 {
            log::warn!("open-file limit {limit} is below what {} workers need (one connection each); raise it (ulimit -n) for jobs this large", plan.nodes.len() - 1);
        }
    }
    if !matches!(plan.role, plan::Role::Idle(_)) {
        ssh::ensure(&plan.ssh_root, &user)?;
    }
    Ok(launch::run(plan).await?)
}

/// The interface the job's nodes reach each other on: in hosts mode the one the front
/// door's ssh connection came in on, else the one a route to another node leaves from.
fn job_network(step: &StepContext) -> Option<plan::JobNet> {
    let ssh_local = std::env::var("SSH_CONNECTION")
        .ok()
        .filter(|_| step.hosts_mode)
        .and_then(|c| c.split_whitespace().nth(2)?.parse().ok());
    ssh_local
        .and_then(mnd::netif::of_address)
        .or_else(|| mnd::netif::find(&step.nodes, &step.node_name))
}

/// Hosts mode: the hosts, a reachability check of all of them (nothing starts when one
/// fails), then the launcher on each over ssh.
async fn front_door(args: &cli::Args) -> Result<i32, Error> {
    use mnd::hosts::{self, front};
    let hosts = match (&args.hosts, &args.hostfile) {
        (Some(expr), _) => hosts::from_expr(expr),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::Hosts(format!("hostfile {}: {e}", file.display())))?;
            hosts::parse_hostfile(&text, &file.display().to_string())
        }
        (None, None) => unreachable!("hosts mode needs --hosts or --hostfile"),
    }
    .map_err(|e| Error::Hosts(e.to_string()))?;
    let user = Identity::current()?;
    let ssh_root = args
        .ssh_dir
        .clone()
        .unwrap_or_else(|| user.home.join(".mnd/ssh"));
    let material = ssh::ensure(&ssh_root, &user)?;
    let key = std::fs::read(&material.control_key)
        .map_err(|e| Error::Hosts(format!("{}: {e}", material.control_key.display())))?;
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&key)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let exe = std::env::current_exe().map_err(|e| Error::Hosts(format!("own path: {e}")))?;
    let cwd =
        std::env::current_dir().map_err(|e| Error::Hosts(format!("working directory: {e}")))?;
    let id = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_micros() as u64 ^ u64::from(std::process::id())) % 1_000_000_000
    };
    let argv: Vec<String> = std::env::args().collect();
    let launcher_args = hosts::launcher_args(&argv);
    let job = front::Job {
        hosts: &hosts,
        exe: &exe.to_string_lossy(),
        cwd: &cwd.to_string_lossy(),
        id,
        args: &launcher_args,
        control_key: (&material.control_key.to_string_lossy(), digest),
        time_limit: args.time_limit.map(std::time::Duration::from_secs),
    };
    let unreachable = front::check(&job).await;
    if !unreachable.is_empty() {
        let list: Vec<String> = unreachable
            .iter()
            .map(|(h, why)| format!("  {h}: {why}"))
            .collect();
        return Err(Error::Hosts(format!(
            "{} of {} hosts cannot run the job; nothing was started:\n{}\nFix: ssh to each without a password (keys: see the README), mnd-srun at the same path everywhere",
            unreachable.len(),
            hosts.len(),
            list.join("\n")
        )));
    }
    front::run(&job)
        .await
        .map_err(|e| Error::Hosts(format!("cannot start ssh: {e}")))
}

/// Logging: quiet by default (warnings and errors), `-v`/`-vv`/`-vvv` or `MND_LOG` for more.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("MND_LOG", default))
        .format_timestamp_millis()
        .init();
}

fn main() -> ExitCode {
    let args = cli::parse(std::env::args()).unwrap_or_else(|e| e.exit());
    init_logging(args.verbose);
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let node = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| hostname.clone());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mnd-srun ({node}): cannot start: {e}");
            return ExitCode::from(mnd::error::EXIT_LAUNCH as u8);
        }
    };
    match runtime.block_on(run(args, &hostname)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("mnd-srun ({node}): error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
