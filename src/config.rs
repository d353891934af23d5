//! Site configuration (`/etc/mnd-srun/config.toml`): defaults for every user and the admin's
//! policy. A missing file means the built-in defaults, which are the safe ones.
//!
//! The policy comes from root-owned files only: the config file and every folder above it
//! must be owned by root and writable by nobody else. `MND_CONFIG` may name another such
//! file in the same folder (an admin's alternative, or a test's); a file a user can write,
//! or one elsewhere, is refused with the reason, never silently used or skipped.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where the site config is read from when `MND_CONFIG` is not set.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mnd-srun/config.toml";

/// The whole site config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// Defaults users get without flags.
    pub defaults: Defaults,
    /// What users may and may not do.
    pub policy: Policy,
    /// Device profiles by name (`[fabrics.ib]`, `[fabrics.efa]`, ...).
    pub fabrics: BTreeMap<String, FabricProfile>,
    /// The file this came from (not a key in the file).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Defaults for every job on the site.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// First port of the range sshd and control ports are derived from.
    pub ssh_port_base: u16,
    /// Size of that range.
    pub ssh_port_span: u16,
    /// First MASTER_PORT; the job id picks one of the next 1000.
    pub master_port_base: u16,
    /// Mounts every container gets (`SRC[:DST][:ro]`), e.g. "/datasets:/datasets:ro".
    pub mounts: Vec<String>,
    /// Environment every script gets, `NAME=VALUE`.
    pub env: Vec<String>,
    /// /dev/shm size.
    pub shm_size: String,
    /// Seconds to wait for all workers.
    pub wait_timeout: u64,
    /// Tell MPI, NCCL and Gloo which interface reaches the other nodes (`plan::net`).
    pub net_defaults: bool,
    /// Direct mode: a node that lacks a step's image loads it from the user's image share,
    /// where the step's first node (which has it, from no registry) saved it.
    pub image_share: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            // Below the Linux ephemeral port range (32768-60999): outgoing connections (MPI,
            // ssh, the launchers) take ports from there and would clash with a listener.
            ssh_port_base: 18000,
            ssh_port_span: 10000,
            master_port_base: 29500,
            mounts: Vec::new(),
            env: Vec::new(),
            shm_size: "8g".into(),
            wait_timeout: 60,
            net_defaults: true,
            image_share: true,
        }
    }
}

/// The admin's rules; a flag that breaks one is refused before any container starts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Regexes; when not empty, the image must match one (whole name).
    pub allowed_images: Vec<String>,
    /// When not empty, every mount source must be under one of these folders.
    pub allowed_mount_prefixes: Vec<String>,
    /// Whether `--privileged` is allowed.
    pub allow_privileged: bool,
    /// Whether `--dockopts` is allowed at all (each option is still under its own rule).
    pub allow_dockopts: bool,
    /// Whether extra devices (`--dockopts --device`) are allowed; the step's GPUs and
    /// `--ibdevices` (InfiniBand) need no permission.
    pub allow_devices: bool,
    /// Whether `--dockopts --cap-add` is allowed.
    pub allow_cap_add: bool,
    /// Whether the launcher may be run by root (the container then runs as uid 0).
    pub allow_root: bool,
    /// `--dockopts --security-opt` values allowed, exactly as written (default none).
    pub allowed_security_opts: Vec<String>,
    /// Whether `--dockopts --group-add` may name groups the user is not in on the host.
    pub allow_any_group: bool,
    /// Whether `--dockopts --ipc=host` is allowed (private and shareable always are).
    pub allow_host_ipc: bool,
    /// Resource limits `--dockopts --ulimit` may set.
    pub allowed_ulimits: Vec<String>,
    /// Largest writable layer of a container (`"20G"`): Docker's `storage-opt size`, which
    /// only some storage drivers take (overlay2 on xfs with `pquota`, btrfs, zfs); where the
    /// driver does not, every container fails to start, saying so.
    pub writable_layer_size: Option<String>,
    /// Largest image a job may run (`"30G"`, unpacked, as Docker counts it): a larger one
    /// is refused, and removed again where the job's pull brought it.
    pub max_image_size: Option<String>,
    /// Direct mode: when a step's root file system is the user's own copy of the image
    /// (made once per user, image and node, as enroot unpacks images as the user):
    /// `remap-root` (default: `--mnd-remap-root` steps, so package managers work), `always`
    /// (every writable step) or `never`.
    pub user_rootfs: UserRootfs,
    /// With `container_scope=global`: how many named containers one user may keep on a
    /// node (a step that would make one more is refused, naming `mnd containers rm`).
    pub max_named_containers: Option<u32>,
}

/// `policy.user_rootfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserRootfs {
    /// Steps with `--mnd-remap-root`.
    #[default]
    RemapRoot,
    /// Every step whose root is writable.
    Always,
    /// None: the image's files stay root's.
    Never,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_images: Vec::new(),
            allowed_mount_prefixes: Vec::new(),
            allow_privileged: false,
            allow_dockopts: true,
            allow_devices: false,
            allow_cap_add: false,
            allow_root: false,
            allowed_security_opts: Vec::new(),
            allow_any_group: false,
            allow_host_ipc: false,
            allowed_ulimits: ["memlock", "stack", "nofile", "core"]
                .map(String::from)
                .to_vec(),
            writable_layer_size: None,
            max_image_size: None,
            user_rootfs: UserRootfs::default(),
            max_named_containers: None,
        }
    }
}

/// A site device profile (`[fabrics.NAME]`): what a job needs to reach one fabric
/// (InfiniBand, RoCE, EFA, Slingshot) or a device class (GPUDirect RDMA's `/dev/gdrdrv`).
/// Users name profiles (`--mnd-fabric`, `--fabric`); they never name devices.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FabricProfile {
    /// Device nodes under /dev, or folders of them (`/dev/infiniband`: every device in it),
    /// given at the same path.
    pub devices: Vec<String>,
    /// CDI device names (`vendor.com/class=name`), for engines with CDI turned on.
    pub cdi: Vec<String>,
    /// Read-only mounts `SRC[:DST]` (a site NCCL net plugin, libfabric).
    pub mounts: Vec<String>,
    /// Defaults `NAME=VALUE`; a user's or image's value wins.
    pub env: Vec<String>,
    /// Given to every job on nodes that have all its devices (unless the job says `none`).
    pub default: bool,
}

impl SiteConfig {
    /// The site's fabric profiles, with the built-in `ib` (`/dev/infiniband`, asked for by
    /// `--ib-devices` or by name, never by default) unless the site writes its own.
    pub fn fabric_profiles(&self) -> BTreeMap<String, FabricProfile> {
        let mut all = self.fabrics.clone();
        all.entry("ib".into()).or_insert_with(|| FabricProfile {
            devices: vec!["/dev/infiniband".into()],
            ..Default::default()
        });
        all
    }
}

/// A profile name as the site config and users write it.
pub fn valid_fabric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Folders of /dev that are no device: the node's shared memory, message queues, terminals.
const NOT_FABRIC_DEVICES: [&str; 4] = ["/dev/shm", "/dev/mqueue", "/dev/pts", "/dev/hugepages"];

/// GPU device nodes (NVIDIA, AMD's kfd and render nodes).
const GPU_DEVICES: [&str; 3] = ["/dev/nvidia", "/dev/dri", "/dev/kfd"];

/// CDI kinds of GPUs.
const GPU_CDI_KINDS: [&str; 2] = ["nvidia.com/gpu=", "amd.com/gpu="];

/// Why the profile `name` cannot be used, if it cannot (an empty one is fine: an empty
/// `[fabrics.ib]` turns the built-in `ib` off): its devices must be under /dev,
/// its CDI names fully qualified, its mounts absolute and its variables `NAME=VALUE`.
fn check_fabric(name: &str, p: &FabricProfile) -> Result<(), String> {
    let at = |what: &str| format!("fabrics.{name}: {what}");
    if !valid_fabric_name(name) {
        return Err(at("a profile name is letters, digits, '-' and '_'"));
    }
    // Every component named: no `//`, `.` or `..` (`/dev//` would be all of /dev).
    let clean = |path: &str| {
        path.starts_with('/')
            && path.len() > 1
            && !path[1..]
                .split('/')
                .any(|c| c.is_empty() || c == ".." || c == ".")
            && !path.contains(',')
    };
    if let Some(d) = p
        .devices
        .iter()
        .find(|d| !(clean(d) && d.starts_with("/dev/")) || NOT_FABRIC_DEVICES.contains(&d.as_str()))
    {
        return Err(at(&format!(
            "device '{d}' is not a device (or a folder of devices) under /dev"
        )));
    }
    // GPUs come from the step's Slurm allocation only, never from a profile.
    let gpu = |d: &str| GPU_DEVICES.iter().any(|g| d.starts_with(g));
    if let Some(d) = p.devices.iter().find(|d| gpu(d)) {
        return Err(at(&format!("device '{d}' is a GPU: GPUs come from the step's Slurm allocation, never from a profile")));
    }
    if let Some(c) = p
        .cdi
        .iter()
        .find(|c| GPU_CDI_KINDS.iter().any(|k| c.starts_with(k)))
    {
        return Err(at(&format!(
            "'{c}' is a GPU: GPUs come from the step's Slurm allocation, never from a profile"
        )));
    }
    let cdi =
        regex::Regex::new(r"^[a-z0-9][a-z0-9.-]*/[a-zA-Z0-9][a-zA-Z0-9_.-]*=[a-zA-Z0-9_.:-]+$")
            .expect("a valid regex");
    if let Some(c) = p.cdi.iter().find(|c| !cdi.is_match(c)) {
        return Err(at(&format!(
            "'{c}' is not a CDI name like vendor.com/class=name"
        )));
    }
    for m in &p.mounts {
        let (src, dst) = m.split_once(':').unwrap_or((m, m));
        if !clean(src) || !clean(dst) {
            return Err(at(&format!(
                "mount '{m}' is not SRC[:DST] with absolute paths (always read-only)"
            )));
        }
    }
    if let Some(e) = p.env.iter().find(|e| {
        e.split_once('=').is_none_or(|(k, v)| {
            k.is_empty()
                || k.starts_with(|c: char| c.is_ascii_digit())
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || v.contains('\n')
        })
    }) {
        return Err(at(&format!("'{e}' is not NAME=VALUE")));
    }
    Ok(())
}

/// A site config that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read site config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid (syntax, unknown key, wrong type).
    #[error("site config {path}, line {line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What the TOML parser said (names the key).
        message: String,
    },
    /// The file could be changed by someone other than root, or lies outside the config
    /// folder: it cannot carry the site's policy.
    #[error("site config {path} is not used: {reason}. The policy is read only from files that root owns and only root can write, in {dir}. Fix: unset MND_CONFIG, or ask your admin to fix the file's owner and mode")]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// Why it is not trusted.
        reason: String,
        /// The folder config files must be in.
        dir: String,
    },
    /// A value is well-formed TOML but unusable.
    #[error("site config {path}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl SiteConfig {
    /// Parses config text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: SiteConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e.span().map_or(1, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            }),
            message: e.message().to_string(),
        })?;
        cfg.source = Some(path.to_path_buf());
        for re in &cfg.policy.allowed_images {
            regex::Regex::new(re).map_err(|e| ConfigError::Value {
                path: path.to_path_buf(),
                message: format!("policy.allowed_images: '{re}' is not a valid regex: {e}"),
            })?;
        }
        for (name, p) in &cfg.fabrics {
            check_fabric(name, p).map_err(|message| ConfigError::Value {
                path: path.to_path_buf(),
                message,
            })?;
        }
        if cfg.defaults.ssh_port_span < 4
            || u32::from(cfg.defaults.ssh_port_base) + u32::from(cfg.defaults.ssh_port_span) > 65536
        {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                message: "defaults.ssh_port_base + ssh_port_span must stay within 1..65535 and the span must be at least 4".into(),
            });
        }
        Ok(cfg)
    }

    /// Loads the site config: `/etc/mnd-srun/config.toml`, or the file `MND_CONFIG` names
    /// in that folder. A missing default file gives the built-in (safe) defaults; a file
    /// that is not root's alone is an error.
    pub fn load(env_path: Option<String>) -> Result<Self, ConfigError> {
        Self::load_from(Path::new(DEFAULT_CONFIG_PATH), env_path, 0)
    }

    /// `load` with the default file and the owner it must have as parameters (for tests).
    pub fn load_from(
        default: &Path,
        env_path: Option<String>,
        owner: u32,
    ) -> Result<Self, ConfigError> {
        let explicit = env_path.is_some();
        let path = env_path.map_or_else(|| default.to_path_buf(), PathBuf::from);
        let dir = default.parent().unwrap_or(Path::new("/"));
        if explicit && path.parent() != Some(dir) {
            return Err(ConfigError::Untrusted {
                reason: "it is not in the site config folder".into(),
                dir: dir.display().to_string(),
                path,
            });
        }
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
            Ok(_) => {}
        }
        if let Err(reason) = only_owner_can_change(&path, owner) {
            return Err(ConfigError::Untrusted {
                path,
                reason,
                dir: dir.display().to_string(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Loads the site config the admin named for the root side (plugstack.conf's
    /// `config=`): it must exist and be root's alone, like every folder above it.
    pub fn load_named(path: &Path) -> Result<Self, ConfigError> {
        let dir = path
            .parent()
            .unwrap_or(Path::new("/"))
            .display()
            .to_string();
        if let Err(reason) = only_owner_can_change(path, 0) {
            return Err(ConfigError::Untrusted {
                path: path.to_path_buf(),
                reason,
                dir,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// How the config is named in policy messages.
    pub fn name(&self) -> String {
        self.source.as_ref().map_or_else(
            || "the built-in defaults".into(),
            |p| p.display().to_string(),
        )
    }
}

/// Checks that `path` (a file, not a link) and every folder above it are owned by `owner`
/// and writable by nobody else (a sticky folder such as /tmp is fine).
fn only_owner_can_change(path: &Path, owner: u32) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("it is not a regular file".into());
    }
    owner_alone(path, owner)
}

/// Whether only `owner` can change what `path` names: every link on the way is `owner`'s,
/// and the real path and every folder above it are `owner`'s and writable by nobody else
/// (a sticky folder above it, such as /tmp, is fine). What a root-owned site file, folder
/// or CDI spec must be before root hands it to every job. Says why not.
pub fn owner_alone(path: &Path, owner: u32) -> Result<(), String> {
    let owned = |p: &Path, m: &std::fs::Metadata, what: &str| match m.uid() == owner {
        true => Ok(()),
        false => Err(format!(
            "{what} {} is owned by uid {}, not root",
            p.display(),
            m.uid()
        )),
    };
    for p in path.ancestors().filter(|p| !p.as_os_str().is_empty()) {
        let m = std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.file_type().is_symlink() {
            owned(p, &m, "the link")?;
        }
    }
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for p in real.ancestors() {
        let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let what = if p == real { "it" } else { "its folder" };
        owned(p, &m, what)?;
        let sticky_dir = p != real && m.is_dir() && m.mode() & 0o1000 != 0;
        if m.mode() & 0o022 != 0 && !sticky_dir {
            return Err(format!(
                "{what} {} has mode {:04o}: others can change it",
                p.display(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fabric_profiles_are_checked_when_the_config_is_read() {
        let ok = "[fabrics.efa]\ndevices = [\"/dev/infiniband/uverbs0\"]\ncdi = [\"amazon.com/efa=all\"]\nmounts = [\"/opt/aws-ofi-nccl:/opt/nccl-net\"]\nenv = [\"FI_PROVIDER=efa\"]\ndefault = true\n";
        let c = SiteConfig::parse(ok, Path::new("/etc/x.toml")).unwrap();
        assert!(c.fabric_profiles().contains_key("efa") && c.fabric_profiles().contains_key("ib"));
        // An empty [fabrics.ib] turns the built-in one off.
        let off = SiteConfig::parse("[fabrics.ib]\n", Path::new("/etc/x.toml")).unwrap();
        assert_eq!(off.fabric_profiles()["ib"], FabricProfile::default());
        for (bad, says) in [
            ("[fabrics.x]\ndevices = [\"/etc/shadow\"]", "not a device"),
            ("[fabrics.x]\ndevices = [\"/dev/../etc\"]", "not a device"),
            ("[fabrics.x]\ncdi = [\"gpu0\"]", "not a CDI name"),
            ("[fabrics.x]\nmounts = [\"relative:/x\"]", "absolute paths"),
            ("[fabrics.x]\nenv = [\"1A=b\"]", "NAME=VALUE"),
            ("[fabrics.x]\ndevices = [\"/dev//\"]", "not a device"),
            ("[fabrics.x]\ndevices = [\"/dev/shm\"]", "not a device"),
            (
                "[fabrics.x]\ndevices = [\"/dev/nvidia0\"]",
                "GPUs come from the step's Slurm allocation",
            ),
            (
                "[fabrics.x]\ndevices = [\"/dev/dri\"]",
                "GPUs come from the step's Slurm allocation",
            ),
            (
                "[fabrics.x]\ncdi = [\"nvidia.com/gpu=all\"]",
                "GPUs come from the step's Slurm allocation",
            ),
            ("[fabrics.\"a b\"]\nenv = [\"A=b\"]", "a profile name"),
        ] {
            let e = SiteConfig::parse(bad, Path::new("/etc/x.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && e.contains("/etc/x.toml"), "{bad}: {e}");
        }
    }

    #[test]
    fn full_config_parses() {
        let text = r#"
[defaults]
ssh_port_base = 50000
mounts = ["/datasets:/datasets:ro"]
env = ["NCCL_DEBUG=WARN"]
shm_size = "16g"
wait_timeout = 30

[policy]
allowed_images = ["registry\\.site/.*", "mnd-vc-job:.*"]
allowed_mount_prefixes = ["/datasets", "/scratch"]
allow_privileged = false
allow_dockopts = false
"#;
        let c = SiteConfig::parse(text, Path::new("/etc/x.toml")).unwrap();
        assert_eq!(c.defaults.ssh_port_base, 50000);
        assert_eq!(c.defaults.ssh_port_span, 10000);
        assert!(!c.policy.allow_privileged && !c.policy.allow_devices);
        assert_eq!(c.name(), "/etc/x.toml");
    }

    #[test]
    fn unknown_keys_and_types_name_file_line_and_key() {
        let e = SiteConfig::parse(
            "[defaults]\nshm_size = \"1g\"\nwait_timeot = 3\n",
            Path::new("/c.toml"),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("/c.toml") && s.contains("line 3") && s.contains("wait_timeot"),
            "{s}"
        );
        let e = SiteConfig::parse(
            "[policy]\nallow_privileged = \"no\"\n",
            Path::new("/c.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = SiteConfig::parse("[policy]\nallowed_images = [\"(\"]\n", Path::new("/c.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("allowed_images"), "{e}");
    }

    #[test]
    fn missing_default_file_gives_safe_defaults_but_missing_explicit_file_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let default = t.path().join("config.toml");
        let me = nix::unistd::getuid().as_raw();
        let c = SiteConfig::load_from(&default, None, me).unwrap();
        assert!(!c.policy.allow_privileged && !c.policy.allow_cap_add && !c.policy.allow_devices);
        let other = t.path().join("x.toml").display().to_string();
        assert!(SiteConfig::load_from(&default, Some(other), me).is_err());
    }

    #[test]
    fn a_config_someone_else_can_change_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        let dir = t.path().join("etc");
        std::fs::create_dir(&dir).unwrap();
        let default = dir.join("config.toml");
        std::fs::write(&default, "[policy]\nallow_privileged = true\n").unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(&default, 0o644).unwrap();
        mode(&dir, 0o755).unwrap();
        // Root-owned (here: owned by the test's own uid) and not writable by others: used.
        // (Its folders up to / are root's: true when the test runs as root, as CI does.)
        if nix::unistd::getuid().is_root() {
            assert!(
                SiteConfig::load_from(&default, None, me)
                    .unwrap()
                    .policy
                    .allow_privileged
            );
        }
        // Not owned by the required owner: refused with the reason.
        let e = SiteConfig::load_from(&default, None, me + 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is not used") && e.contains("owned by uid"),
            "{e}"
        );
        // Group-writable file, or a folder others can write: refused.
        mode(&default, 0o664).unwrap();
        let e = SiteConfig::load_from(&default, None, me)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode 0664"), "{e}");
        mode(&default, 0o644).unwrap();
        mode(&dir, 0o777).unwrap();
        let e = SiteConfig::load_from(&default, None, me)
            .unwrap_err()
            .to_string();
        assert!(e.contains("its folder") && e.contains("0777"), "{e}");
        mode(&dir, 0o755).unwrap();
        // MND_CONFIG outside the config folder (e.g. the user's home): refused.
        let home = t.path().join("mine.toml");
        std::fs::write(&home, "").unwrap();
        let e = SiteConfig::load_from(&default, Some(home.display().to_string()), me)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not in the site config folder") && e.contains("unset MND_CONFIG"),
            "{e}"
        );
        // A symbolic link in the folder pointing at a user's file: refused.
        let link = dir.join("link.toml");
        std::os::unix::fs::symlink(&home, &link).unwrap();
        let e = SiteConfig::load_from(&default, Some(link.display().to_string()), me)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
