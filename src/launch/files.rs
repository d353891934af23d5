//! The files the launcher puts in a container: the session environment, the ssh material
//! and config, the accounts. The same for a Docker container and the plugin's.

use crate::accounts::{account_files, ImageAccounts};
use crate::docker::FileUpload;
use crate::identity::Identity;
use crate::plan::{self, Plan};
use crate::ssh;

/// `PATH` of the container and its ssh sessions: the ssh wrappers, then the image's.
pub(super) fn container_path(image_env: &[String]) -> String {
    let image_path = image_env.iter().find_map(|e| e.strip_prefix("PATH="));
    ssh::path_with_wrappers(image_path)
}

/// Environment for ssh sessions: the image's (CUDA paths, ...), PATH with the wrappers,
/// then the job's. A value sshd's `SetEnv` cannot carry is refused, naming the variable.
pub(super) fn session_env(
    plan: &Plan,
    image_env: &[String],
) -> Result<Vec<(String, String)>, String> {
    let skip = [
        "HOME", "USER", "LOGNAME", "SHELL", "HOSTNAME", "TERM", "PATH",
    ];
    let mut env: Vec<(String, String)> = image_env
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| !skip.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &env {
        plan::env::check_env_value(k, v).map_err(|e| format!("the image's ENV: {e}"))?;
    }
    env.push(("PATH".into(), container_path(image_env)));
    env.extend(plan.job_env.iter().cloned());
    env.extend(plan.env_defaults_for(image_env));
    Ok(env)
}

/// Each node's sshd port as this node first assumes it: the preferred one, but its own.
fn assumed_ports(plan: &Plan, own: u16) -> Vec<(String, u16)> {
    let preferred = plan.ports.preferred().sshd;
    plan.nodes
        .iter()
        .map(|n| {
            (
                n.clone(),
                if n == plan.this_node() {
                    own
                } else {
                    preferred
                },
            )
        })
        .collect()
}

/// The container's ssh client config, for these sshd ports of the job's nodes.
pub(super) fn ssh_config_file(plan: &Plan, node_ports: &[(String, u16)]) -> FileUpload {
    FileUpload {
        path: format!("{}/ssh_config", ssh::CONTAINER_DIR),
        content: ssh::client_config(&plan.ssh, &plan.user.name, node_ports),
        mode: 0o644,
    }
}

/// The files every container of this user and image holds, whatever the job: their
/// accounts in /etc (the container's own layer: no mount may cover /etc) and the ssh
/// wrappers in `/.mnd/bin`. They go into the user's copy of the image (`derived`).
pub(super) fn image_files(plan: &Plan, image: &ImageAccounts) -> Vec<FileUpload> {
    let mut files = Vec::from(account_files(&plan.user, image));
    files.extend(wrapper_files());
    files
}

/// The ssh wrappers: `ssh`, `scp` and `sftp` with the container's ssh config.
pub(super) fn wrapper_files() -> Vec<FileUpload> {
    ssh::WRAPPED
        .iter()
        .map(|p| FileUpload {
            path: format!("{}/bin/{p}", ssh::CONTAINER_DIR),
            content: ssh::wrapper(p),
            mode: 0o755,
        })
        .collect()
}

/// The sshd configs (with the session environment `env`) and the ssh config of this job:
/// the files its container's PID 1 gets over stdin.
pub(super) fn job_files(plan: &Plan, env: &[(String, String)], port: u16) -> Vec<FileUpload> {
    let user: &Identity = &plan.user;
    let file = |path: String, content: String| FileUpload {
        path,
        content,
        mode: 0o644,
    };
    let dir = ssh::CONTAINER_DIR;
    vec![
        ssh_config_file(plan, &assumed_ports(plan, port)),
        file(
            format!("{dir}/sshd_config"),
            ssh::sshd_config(&plan.ssh, &user.name, port, env),
        ),
        file(
            format!("{dir}/sshd_config.compat"),
            ssh::sshd_config(&plan.ssh, &user.name, port, &[]),
        ),
    ]
}

/// Every ssh file (the plugin's container, which has no copy of the image).
pub(super) fn ssh_files(plan: &Plan, env: &[(String, String)], port: u16) -> Vec<FileUpload> {
    let mut files = job_files(plan, env, port);
    files.extend(wrapper_files());
    files
}
