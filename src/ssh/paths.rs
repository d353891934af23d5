//! Where a user's ssh material lives: plain paths, decided without touching a file, so the
//! planner can name them.

use std::path::{Path, PathBuf};

/// Paths of a user's ssh material (all on the shared home, same paths in the containers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The folder holding the files.
    pub dir: PathBuf,
    /// Client private key.
    pub client_key: PathBuf,
    /// Host private key.
    pub host_key: PathBuf,
    /// Keys sshd accepts.
    pub authorized_keys: PathBuf,
    /// Pinned host key.
    pub known_hosts: PathBuf,
    /// Secret of the launchers' control channel (random, 0600; not an ssh key).
    pub control_key: PathBuf,
    /// Name the host key is pinned under (`HostKeyAlias`).
    pub host_alias: String,
}

pub(super) const VERSION_DIR: &str = "v1";

impl Material {
    /// The paths under `root` (e.g. `~/.mnd/ssh`) for `user`.
    pub fn paths(root: &Path, user: &str) -> Self {
        let dir = root.join(VERSION_DIR);
        Material {
            client_key: dir.join("id_ed25519"),
            host_key: dir.join("host_ed25519"),
            authorized_keys: dir.join("authorized_keys"),
            known_hosts: dir.join("known_hosts"),
            control_key: dir.join("control_key"),
            dir,
            host_alias: format!("mnd-{user}"),
        }
    }
}
