//! The hosts-mode front door as `mnd-srun` runs it: the hosts from `--hosts` or
//! `--hostfile`, the user's ssh material, a reachability check of every host (nothing starts
//! when one fails), then the launchers over ssh (`front`). And, on each host, the lifeline:
//! the front door's ssh connection, whose end ends the job there.

use super::front;
use crate::cli::Args;
use crate::error::Error;
use crate::identity::Identity;
use crate::ssh;

/// Hosts mode: the hosts, a reachability check of all of them (nothing starts when one
/// fails), then the launcher on each over ssh.
pub async fn front_door(args: &Args) -> Result<i32, Error> {
    use super as hosts;
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

/// On a host the front door started: when its ssh connection closes (Ctrl-C there, a lost
/// link), the job ends here as on SIGTERM.
pub fn watch_lifeline() {
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
