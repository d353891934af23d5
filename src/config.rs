//! Site configuration (`/etc/mnd-srun/config.toml`, or the file named by `MND_CONFIG`):
//! defaults for every user and the admin's policy. A missing file means built-in defaults.

use serde::Deserialize;
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
    /// Whether `--dockopts` is allowed.
    pub allow_dockopts: bool,
    /// Whether extra devices (`--device`, `--ibdevices`) are allowed.
    pub allow_devices: bool,
    /// Whether extra capabilities (`--cap-add`) are allowed.
    pub allow_cap_add: bool,
    /// Whether the container may run as root (uid 0).
    pub allow_root: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_images: Vec::new(),
            allowed_mount_prefixes: Vec::new(),
            allow_privileged: true,
            allow_dockopts: true,
            allow_devices: true,
            allow_cap_add: true,
            allow_root: false,
        }
    }
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

    /// Loads the config from `MND_CONFIG` or the default path; a missing file gives defaults.
    pub fn load(env_path: Option<String>) -> Result<Self, ConfigError> {
        let explicit = env_path.is_some();
        let path = PathBuf::from(env_path.unwrap_or_else(|| DEFAULT_CONFIG_PATH.into()));
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// How the config is named in policy messages.
    pub fn name(&self) -> String {
        self.source.as_ref().map_or_else(
            || "the built-in defaults".into(),
            |p| p.display().to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!c.policy.allow_privileged && c.policy.allow_devices);
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
    fn missing_default_file_gives_defaults_but_missing_explicit_file_is_an_error() {
        assert!(SiteConfig::load(Some("/nonexistent/mnd.toml".into())).is_err());
    }
}
