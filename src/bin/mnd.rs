//! `mnd`: user and admin tools of mnd-srun (hostlists, container listing, cleanup).

use clap::{Parser, Subcommand};
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

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
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
