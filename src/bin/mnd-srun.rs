//! `mnd-srun`: one launcher per node of a Slurm step (see the crate docs and `man mnd-srun`).

use mnd::error::Error;
use mnd::{
    cli, config::SiteConfig, hosts, identity::Identity, launch, node, plan, slurm::StepContext, ssh,
};
use std::process::ExitCode;

async fn run(args: cli::Args, hostname: &str, report: launch::Report<'_>) -> Result<i32, Error> {
    let step = StepContext::from_env(|k| std::env::var(k).ok(), hostname)?;
    if (args.hosts.is_some() || args.hostfile.is_some()) && !step.hosts_mode {
        if step.under_slurm() {
            return Err(Error::Hosts(
                "--hosts/--hostfile start the job over ssh without Slurm; inside a Slurm job use srun instead".into(),
            ));
        }
        return hosts::door::front_door(&args).await;
    }
    if step.hosts_mode {
        hosts::door::watch_lifeline();
    }
    let site = SiteConfig::load(std::env::var("MND_CONFIG").ok())?;
    let user = Identity::current()?;
    let mut facts = node::gather()?;
    facts.net = node::job_network(&step);
    facts.fabric = node::fabric_facts(&site);
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
    let mut phases = mnd::phases::Phases::printing(plan.this_node());
    if !matches!(plan.role, plan::Role::Idle(_)) {
        ssh::ensure(&plan.ssh_root, &user)?;
    }
    phases.mark("ssh-material");
    Ok(launch::run(plan, report).await?)
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

/// The one form of the launcher's error message.
fn say_error(node: &str, e: &dyn std::fmt::Display) {
    eprintln!("mnd-srun ({node}): error: {e}");
}

fn main() -> ExitCode {
    let args = cli::parse(std::env::args()).unwrap_or_else(|e| e.exit());
    init_logging(args.verbose);
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let node = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| hostname.clone());
    // The launcher's own start on the timeline (`MND_TIMING=at`).
    mnd::phases::Phases::printing(&node).mark("exec");
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
    // The reason a job ends is printed once: early by the coordinator, or here.
    let reported = std::cell::Cell::new(false);
    let report = |e: &mnd::launch::LaunchError| {
        say_error(&node, e);
        reported.set(true);
    };
    match runtime.block_on(run(args, &hostname, &report)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            if !reported.get() {
                say_error(&node, &e);
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
