//! Per-user ssh material, created on first use, and the sshd/ssh configs the containers get.
//!
//! Layout (default `~/.mnd/ssh`, mode 0700): a subfolder `v1/` holding `id_ed25519` (client
//! key), `host_ed25519` (host key of every container of this user), `authorized_keys` (only
//! the client key) and `known_hosts` (pins the host key under the alias `mnd-USER`). `v1/` is
//! written in a temporary folder and renamed into place, so when every node of a job creates
//! it at the same moment on a shared home, one wins and all use the winner's.

pub mod paths;

use crate::identity::Identity;
pub use paths::Material;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Ssh key material that cannot be created or must not be used.
#[derive(Debug, Error)]
pub enum SshError {
    /// A file or folder others could change.
    #[error("refusing to use ssh material {path}: {reason}. Fix: `chmod go-w {path}` (and make sure you own it), or remove it so mnd-srun creates it anew")]
    Unsafe {
        /// The offending path.
        path: PathBuf,
        /// Owner or mode problem.
        reason: String,
    },
    /// I/O while creating or reading the material.
    #[error("cannot {action} {path}: {source}. Fix: make the folder writable by you, or choose another with --ssh-dir")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Key generation or parsing failed.
    #[error("ssh key {path}: {reason}. Fix: remove {path} so mnd-srun creates new material")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SshError + 'a {
    move |source| SshError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `path` is owned by `uid` and not writable by group or others (and, for
/// private keys, not readable by them either).
pub(crate) fn check_safe(path: &Path, uid: u32, private: bool) -> Result<(), SshError> {
    let meta = fs::symlink_metadata(path).map_err(io("inspect", path))?;
    let unsafe_ = |reason: String| SshError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_("it is a symbolic link".into()));
    }
    if meta.uid() != uid {
        return Err(unsafe_(format!(
            "it is owned by uid {}, not by you (uid {uid})",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    let forbidden = if private { 0o077 } else { 0o022 };
    if mode & forbidden != 0 {
        return Err(unsafe_(format!(
            "its mode is {mode:04o}, others can {}",
            if private {
                "read or write it"
            } else {
                "write it"
            }
        )));
    }
    Ok(())
}

/// Checks that no folder above `path`, up to the user's home (or `/` for a path outside
/// it), can be changed by anyone but `uid` or root: someone who could rename one could swap
/// the keys. These are the folders sshd's StrictModes checks too.
fn check_parents(path: &Path, uid: u32, home: &Path) -> Result<(), SshError> {
    // Folders that do not exist yet are created 0700 by `ensure`.
    crate::pathid::safe_parents(path, uid, Some(home)).map_err(|bad| SshError::Unsafe {
        reason: match bad.owner {
            Some(owner) => format!(
                "this folder above your ssh material is owned by uid {owner}, so its owner could swap your keys"
            ),
            None => format!(
                "this folder above your ssh material has mode {:04o}: others could swap your keys (and sshd refuses them)",
                bad.mode
            ),
        },
        path: bad.path,
    })
}

/// Creates `path` and its missing parents with mode 0700 (only the owner may enter).
pub(crate) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), SshError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(text.as_bytes()).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))
}

fn new_key(path: &Path, comment: &str) -> Result<(String, String), SshError> {
    use ssh_key::{rand_core::OsRng, Algorithm, LineEnding, PrivateKey};
    let key_err = |e: ssh_key::Error| SshError::Key {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(key_err)?;
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF).map_err(key_err)?.to_string();
    let public = key.public_key().to_openssh().map_err(key_err)?;
    Ok((private, public))
}

fn generate(tmp: &Path, m: &Material, user: &str) -> Result<(), SshError> {
    let name = |p: &Path| tmp.join(p.file_name().expect("file path"));
    let (client, client_pub) = new_key(&m.client_key, &format!("mnd-srun {user}"))?;
    let (host, host_pub) = new_key(&m.host_key, &format!("mnd-srun host key of {user}"))?;
    write_file(&name(&m.client_key), &client, 0o600)?;
    write_file(
        &tmp.join("id_ed25519.pub"),
        &format!("{client_pub}\n"),
        0o644,
    )?;
    write_file(&name(&m.host_key), &host, 0o600)?;
    write_file(
        &tmp.join("host_ed25519.pub"),
        &format!("{host_pub}\n"),
        0o644,
    )?;
    write_file(&name(&m.authorized_keys), &format!("{client_pub}\n"), 0o600)?;
    write_file(
        &name(&m.known_hosts),
        &format!("{} {host_pub}\n", m.host_alias),
        0o644,
    )?;
    write_file(&name(&m.control_key), &random_hex(32), 0o600)
}

fn random_hex(bytes: usize) -> String {
    use ssh_key::rand_core::{OsRng, RngCore};
    let mut b = vec![0u8; bytes];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect::<String>() + "\n"
}

/// Adds the control key to material made before it existed: written aside, then linked
/// into place (a link never replaces, so when several nodes do it at once all use one).
fn add_control_key(m: &Material) -> Result<(), SshError> {
    if m.control_key.exists() {
        return Ok(());
    }
    let tmp = m.dir.join(format!(".control_key.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_file(&tmp, &random_hex(32), 0o600)?;
    let linked = fs::hard_link(&tmp, &m.control_key);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(_) if m.control_key.exists() => Ok(()),
        Err(e) => Err(io("create", &m.control_key)(e)),
    }
}

/// Makes sure the material exists under `root` and is safe to use; creates it on first use.
pub fn ensure(root: &Path, who: &Identity) -> Result<Material, SshError> {
    let m = Material::paths(root, &who.name);
    check_parents(root, who.uid, &who.home)?;
    if !root.exists() {
        create_private_dir(root).map_err(io("create", root))?;
    }
    check_safe(root, who.uid, false)?;
    if !m.dir.exists() {
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(root)
            .map_err(io("create a folder in", root))?
            .keep();
        let made = generate(&tmp, &m, &who.name);
        let placed = made.and_then(|()| match fs::rename(&tmp, &m.dir) {
            Ok(()) => {
                log::info!("created ssh material in {}", m.dir.display());
                Ok(())
            }
            // Another node of the job won the race: use its material.
            Err(_) if m.dir.is_dir() => Ok(()),
            Err(e) => Err(io("rename into", &m.dir)(e)),
        });
        let _ = fs::remove_dir_all(&tmp);
        placed?;
    }
    check_safe(&m.dir, who.uid, false)?;
    add_control_key(&m)?;
    for (p, private) in [
        (&m.control_key, true),
        (&m.client_key, true),
        (&m.host_key, true),
        (&m.authorized_keys, false),
        (&m.known_hosts, false),
    ] {
        check_safe(p, who.uid, private)?;
    }
    Ok(m)
}

/// Folder, inside every container, of the files below (see `policy::PRIVATE_DIR`).
pub const CONTAINER_DIR: &str = "/.mnd";

/// sshd configuration for a container: only `user`, only the client key, no passwords, no
/// forwarding, strict modes. `set_env` is given to every session (`SetEnv`, OpenSSH 8.7+);
/// without it the config also works with older sshd.
pub fn sshd_config(m: &Material, user: &str, port: u16, set_env: &[(String, String)]) -> String {
    let mut s = format!(
        "# written by mnd-srun\nPort {port}\nListenAddress 0.0.0.0\nHostKey {}\nAuthorizedKeysFile {}\n\
PidFile none\nUsePAM no\nStrictModes yes\nPermitRootLogin no\nAllowUsers {user}\nPubkeyAuthentication yes\n\
PasswordAuthentication no\nKbdInteractiveAuthentication no\nChallengeResponseAuthentication no\nHostbasedAuthentication no\n\
PermitUserEnvironment no\nDisableForwarding yes\nX11Forwarding no\nPrintMotd no\nLogLevel ERROR\nSubsystem sftp internal-sftp\n",
        m.host_key.display(),
        m.authorized_keys.display()
    );
    if !set_env.is_empty() {
        let vars: Vec<String> = set_env.iter().map(|(k, v)| quote_env(k, v)).collect();
        s.push_str(&format!("SetEnv {}\n", vars.join(" ")));
    }
    s
}

/// One `SetEnv` item; values never hold control characters (`plan::check_env_value`).
fn quote_env(k: &str, v: &str) -> String {
    if v.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '#' || c == '\'')
    {
        format!("\"{k}={}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        format!("{k}={v}")
    }
}

/// ssh client configuration for a container (`/.mnd/ssh_config`, used through the ssh
/// wrappers): for the job's nodes the job's port (each node's own, when some took another),
/// key and pinned host key, whatever the user's `~/.ssh/config` says (ssh keeps the first
/// value it reads, and these blocks come first); every other host gets the user's own
/// settings, then the image's.
pub fn client_config(m: &Material, user: &str, node_ports: &[(String, u16)]) -> String {
    let mut ports: Vec<u16> = node_ports.iter().map(|(_, p)| *p).collect();
    ports.sort_unstable();
    ports.dedup();
    let mut s =
        "# written by mnd-srun: the job's nodes use the job's sshd; other hosts keep your settings\n"
            .to_string();
    for port in ports {
        let hosts: Vec<&str> = node_ports
            .iter()
            .filter(|(_, p)| *p == port)
            .map(|(n, _)| n.as_str())
            .collect();
        s.push_str(&format!(
            "Host {}\n  HostName %h\n  Port {port}\n  User {user}\n  IdentityFile {}\n  IdentitiesOnly yes\n\
  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  HostKeyAlias {}\n  StrictHostKeyChecking yes\n\
  CheckHostIP no\n  ProxyCommand none\n  ControlMaster no\n  ControlPath none\n  CanonicalizeHostname no\n\
  PasswordAuthentication no\n  KbdInteractiveAuthentication no\n  BatchMode yes\n  LogLevel ERROR\n",
            hosts.join(" "),
            m.client_key.display(),
            m.known_hosts.display(),
            m.host_alias
        ));
    }
    s.push_str("Match all\n  Include ~/.ssh/config\n  Include /etc/ssh/ssh_config\n");
    s
}

/// The programs wrapped in `/.mnd/bin` (first on PATH in the container and its ssh
/// sessions) so that mpirun, pdsh, rsync and the user's own commands read the job's config.
pub const WRAPPED: &[&str] = &["ssh", "scp", "sftp"];

/// The wrapper script for `program` (one of `WRAPPED`).
pub fn wrapper(program: &str) -> String {
    format!(
        "#!/bin/sh\n# written by mnd-srun: {program} with the job's settings for the job's nodes\n\
for p in /usr/bin/{program} /bin/{program} /usr/local/bin/{program}; do\n\
  [ -x \"$p\" ] && exec \"$p\" -F {CONTAINER_DIR}/ssh_config \"$@\"\n\
done\necho \"{program}: not found in this image\" >&2\nexit 127\n"
    )
}

/// `PATH` for the container and its ssh sessions: the wrappers first, then the image's.
pub fn path_with_wrappers(image_path: Option<&str>) -> String {
    format!(
        "{CONTAINER_DIR}/bin:{}",
        image_path.unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity::current().unwrap()
    }

    /// The test's user with `home` as home (the material lives below it, as in real use).
    fn me_at(home: &Path) -> Identity {
        Identity {
            home: home.to_path_buf(),
            ..me()
        }
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn creates_material_once_with_safe_modes() {
        let t = tempdir();
        let root = t.path().join(".mnd/ssh");
        let m = ensure(&root, &me_at(t.path())).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&m.dir), 0o700);
        assert_eq!(mode(&m.client_key), 0o600);
        assert_eq!(mode(&m.host_key), 0o600);
        let key = fs::read_to_string(&m.client_key).unwrap();
        assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let auth = fs::read_to_string(&m.authorized_keys).unwrap();
        assert!(auth.starts_with("ssh-ed25519 "));
        let known = fs::read_to_string(&m.known_hosts).unwrap();
        assert!(known.starts_with(&format!("mnd-{} ssh-ed25519 ", me().name)));
        // Second call reuses it.
        let again = ensure(&root, &me_at(t.path())).unwrap();
        assert_eq!(fs::read_to_string(&again.client_key).unwrap(), key);
    }

    #[test]
    fn concurrent_creation_agrees_on_one_key() {
        let t = tempdir();
        let root = t.path().join("ssh");
        let keys: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        fs::read_to_string(ensure(&root, &me_at(t.path())).unwrap().client_key)
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
        let leftovers: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [paths::VERSION_DIR]);
    }

    #[test]
    fn refuses_writable_or_readable_material() {
        let t = tempdir();
        let root = t.path().join("ssh");
        let m = ensure(&root, &me_at(t.path())).unwrap();
        fs::set_permissions(&m.host_key, fs::Permissions::from_mode(0o640)).unwrap();
        let e = ensure(&root, &me_at(t.path())).unwrap_err().to_string();
        assert!(e.contains("host_ed25519") && e.contains("0640"), "{e}");
        fs::set_permissions(&m.host_key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure(&root, &me_at(t.path())).unwrap_err().to_string();
        assert!(e.contains("0777") && e.contains("chmod go-w"), "{e}");
    }

    #[test]
    fn configs_pin_the_host_key_and_allow_only_the_user() {
        let m = Material::paths(Path::new("/h/alice/.mnd/ssh"), "alice");
        let env = [
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("X".to_string(), "a b".to_string()),
        ];
        let d = sshd_config(&m, "alice", 40123, &env);
        for want in [
            "Port 40123",
            "AllowUsers alice",
            "PasswordAuthentication no",
            "AuthorizedKeysFile /h/alice/.mnd/ssh/v1/authorized_keys",
            "SetEnv PATH=/usr/bin \"X=a b\"",
        ] {
            assert!(d.contains(want), "sshd_config lacks {want}:\n{d}");
        }
        assert!(
            d.contains("StrictModes yes") && d.contains("DisableForwarding yes"),
            "{d}"
        );
        let nodes = [("node1".to_string(), 40123), ("node2".to_string(), 40123)];
        let c = client_config(&m, "alice", &nodes);
        assert!(c.contains("\nHost node1 node2\n"), "{c}");
        let moved = [("node1".to_string(), 40123), ("node2".to_string(), 40201)];
        let c2 = client_config(&m, "alice", &moved);
        assert!(
            c2.contains("Host node1\n  HostName %h\n  Port 40123\n")
                && c2.contains("Host node2\n  HostName %h\n  Port 40201\n"),
            "{c2}"
        );
        let user_config = c.find("Include ~/.ssh/config").unwrap();
        assert!(
            c.find("Port 40123").unwrap() < user_config,
            "the job's block must come first:\n{c}"
        );
        assert!(
            !c.contains("Host *"),
            "other hosts must keep the user's settings:\n{c}"
        );
        for want in [
            "Port 40123",
            "StrictHostKeyChecking yes",
            "HostKeyAlias mnd-alice",
            "IdentityFile /h/alice/.mnd/ssh/v1/id_ed25519",
        ] {
            assert!(c.contains(want), "ssh_config lacks {want}:\n{c}");
        }
        assert!(!c.contains("StrictHostKeyChecking no"));
        let w = wrapper("ssh");
        assert!(w.contains("exec \"$p\" -F /.mnd/ssh_config \"$@\""), "{w}");
        assert_eq!(
            path_with_wrappers(Some("/usr/bin:/bin")),
            "/.mnd/bin:/usr/bin:/bin"
        );
    }

    #[test]
    fn refuses_material_below_a_folder_others_can_write() {
        let t = tempdir();
        let shared = t.path().join("group-home");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o775)).unwrap();
        let e = ensure(&shared.join(".mnd/ssh"), &me_at(t.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("group-home") && e.contains("0775") && e.contains("swap"),
            "{e}"
        );
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(ensure(&shared.join(".mnd/ssh"), &me_at(t.path())).is_ok());
    }
}
