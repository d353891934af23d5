//! `mnd`: user and admin tools of mnd-srun (hostlists, container listing, cleanup).

use clap::{CommandFactory, Parser, Subcommand};
use mnd::cleanup::{self, Selection};
use mnd::docker::Engine;
use mnd::hostlist;
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
    /// List the mnd-srun containers on this node (yours, or everyone's with --all-users).
    Ps {
        /// Only this Slurm job.
        #[arg(long, value_name = "ID")]
        job: Option<u64>,
        /// Every user's containers.
        #[arg(long)]
        all_users: bool,
    },
    /// Remove mnd-srun containers on this node. Safe as the Slurm Epilog: exits 0 when there
    /// is nothing to do or no Docker engine on the node.
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

/// Connects to Docker; `None` (after saying why on stderr) when this node has no engine.
async fn engine_or_nothing() -> Option<Engine> {
    match Engine::connect().await {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!("mnd: {e}; nothing to do on this node");
            None
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Completions { shell, command } => {
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
        Command::Ps { job, all_users } => {
            let sel = Selection {
                job,
                uid: owner_filter(all_users, false)?,
                older_than: None,
            };
            runtime()?.block_on(async {
                let Some(engine) = engine_or_nothing().await else {
                    return Ok(());
                };
                let found = cleanup::list(&engine, &sel)
                    .await
                    .map_err(|e| e.to_string())?;
                print!("{}", cleanup::table(&found));
                Ok(())
            })
        }
        Command::Cleanup {
            job,
            older_than,
            all_users,
        } => {
            let older_than = older_than
                .map(|t| cleanup::parse_duration(&t))
                .transpose()
                .map_err(|e| e.to_string())?;
            let sel = Selection {
                job,
                uid: owner_filter(all_users, true)?,
                older_than,
            };
            runtime()?.block_on(async {
                let Some(engine) = engine_or_nothing().await else {
                    return Ok(());
                };
                let removed = cleanup::remove(&engine, &sel)
                    .await
                    .map_err(|e| e.to_string())?;
                for name in &removed {
                    eprintln!("mnd: removed {name}");
                }
                Ok(())
            })
        }
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
