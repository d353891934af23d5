//! Everything `mnd doctor` looks at, gathered from this node into plain values. Nothing here
//! decides whether a fact is good: that is `checks.rs`. Every outside call is bounded
//! (commands 15 s, Docker and MUNGE 10 s), and nothing is changed anywhere.

use super::elf::{self, Symbols};
use super::plugstack::{self, PluginLine, Stack};
use crate::config::{ConfigError, SiteConfig, DEFAULT_CONFIG_PATH};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where plugstack.conf is when Slurm names none and there is no slurm.conf to go by.
pub const DEFAULT_PLUGSTACK: &str = "/etc/slurm/plugstack.conf";
/// The plugin's `helper=` default (slurm/spank/src/options.rs).
pub const DEFAULT_HELPER: &str = "/opt/mnd-srun/bin/mnd";
/// The plugin's `runtime_dir=` default.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/mnd-spank";
/// munged's socket unless `AuthInfo=socket=` names another.
pub const DEFAULT_MUNGE_SOCKET: &str = "/run/munge/munge.socket.2";
/// Docker's socket unless `DOCKER_HOST` names another.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The files to check instead of the node's own (each `None`: the node's).
#[derive(Debug, Clone, Default)]
pub struct Paths {
    /// plugstack.conf (default: Slurm's `PlugStackConfig`, else beside slurm.conf).
    pub plugstack: Option<PathBuf>,
    /// The site config (default: plugstack's `config=`, and /etc/mnd-srun/config.toml).
    pub config: Option<PathBuf>,
    /// The Epilog (default: Slurm's `Epilog`).
    pub epilog: Option<PathBuf>,
    /// The home whose filesystem is checked (default: yours; as root, a user's).
    pub home: Option<PathBuf>,
}

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link.
    Link,
    /// Anything else.
    Other,
}

/// Owner and mode of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// What it is.
    pub kind: Kind,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Mode bits (`0o7777`).
    pub mode: u32,
}

impl Meta {
    fn of(m: &std::fs::Metadata) -> Meta {
        let t = m.file_type();
        Meta {
            kind: if t.is_symlink() {
                Kind::Link
            } else if t.is_dir() {
                Kind::Dir
            } else if t.is_file() {
                Kind::File
            } else {
                Kind::Other
            },
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        }
    }
}

/// Whether a path could be seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// It does not exist.
    Missing,
    /// It could not be looked at (the reason).
    Hidden(String),
    /// It is there.
    Found(Meta),
}

/// A path, what it resolves to, and every folder above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathFacts {
    /// The path.
    pub path: PathBuf,
    /// The path itself (a link is a link).
    pub own: Seen,
    /// What it resolves to (links followed).
    pub target: Option<Meta>,
    /// Each folder above it, nearest first, links followed (as the plugin looks at them).
    pub folders: Vec<(PathBuf, Option<Meta>)>,
}

fn seen(path: &Path) -> Seen {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Seen::Found(Meta::of(&m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Seen::Missing,
        Err(e) => Seen::Hidden(e.to_string()),
    }
}

fn path_facts(path: &Path) -> PathFacts {
    PathFacts {
        path: path.to_path_buf(),
        own: seen(path),
        target: std::fs::metadata(path).ok().map(|m| Meta::of(&m)),
        folders: path
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| {
                (
                    p.to_path_buf(),
                    std::fs::metadata(p).ok().map(|m| Meta::of(&m)),
                )
            })
            .collect(),
    }
}

/// Who runs the doctor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Real uid.
    pub uid: u32,
    /// Login name.
    pub name: String,
    /// This node's name.
    pub host: String,
    /// Home folder (from the user database).
    pub home: Option<PathBuf>,
    /// The groups this process has.
    pub session_groups: Vec<u32>,
    /// The groups the user database gives them (a new login gets these).
    pub member_of: Vec<u32>,
}

impl Caller {
    /// Root runs it.
    pub fn root(&self) -> bool {
        self.uid == 0
    }
}

fn caller() -> Caller {
    let uid = nix::unistd::getuid().as_raw();
    let who = crate::identity::Identity::of_uid(uid).ok();
    let mut session_groups: Vec<u32> = nix::unistd::getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    session_groups.push(nix::unistd::getegid().as_raw());
    Caller {
        uid,
        name: who
            .as_ref()
            .map_or_else(|| format!("uid {uid}"), |w| w.name.clone()),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        home: who.as_ref().map(|w| w.home.clone()),
        session_groups,
        member_of: who
            .map(|w| w.groups.iter().map(|g| g.gid).collect())
            .unwrap_or_default(),
    }
}

/// Slurm on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmFacts {
    /// Its release (`22.05.8`), or why it is not known.
    pub version: Result<String, String>,
    /// Which command said it.
    pub version_from: String,
    /// Its settings (`Key`, `Value`), as `scontrol show config` (or slurm.conf) says.
    pub settings: Vec<(String, String)>,
    /// Where the settings came from, or why there are none.
    pub settings_from: Result<String, String>,
}

impl SlurmFacts {
    /// Every value of `key` (case-insensitive; `Epilog[0]`, `Epilog[1]` are `Epilog`),
    /// without Slurm's `(null)`.
    pub fn get(&self, key: &str) -> Vec<&str> {
        self.settings
            .iter()
            .filter(|(k, _)| {
                k.split('[')
                    .next()
                    .unwrap_or_default()
                    .eq_ignore_ascii_case(key)
            })
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty() && *v != "(null)")
            .collect()
    }

    /// The first value of `key`.
    pub fn first(&self, key: &str) -> Option<&str> {
        self.get(key).into_iter().next()
    }
}

/// `scontrol show config`'s `Key = Value` lines.
pub fn parse_show_config(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(k, _)| !k.is_empty() && !k.contains(char::is_whitespace))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// slurm.conf's `Key=Value` lines (the first pair of each line; `Include` not followed).
pub fn parse_slurm_conf(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// The release in `scontrol --version`'s answer (`slurm 22.05.8`, `slurm-wlm 24.11.5`).
pub fn parse_version(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_string)
}

/// Runs a command with a bound; its stdout, or why not.
async fn run(program: &str, args: &[&str], secs: u64) -> Result<String, String> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(secs), out).await {
        Err(_) => Err(format!("{cmd}: no answer within {secs} s")),
        Ok(Err(e)) => Err(format!("cannot run {program}: {e}")),
        Ok(Ok(o)) if !o.status.success() => {
            let said = String::from_utf8_lossy(&o.stderr);
            let said = said.lines().next().unwrap_or_default().trim().to_string();
            Err(format!("{cmd} failed ({}): {said}", o.status))
        }
        Ok(Ok(o)) => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
    }
}

async fn slurm() -> SlurmFacts {
    // scontrol, else sinfo or srun (a login node may lack scontrol); the first one's error.
    let mut version = Err(String::new());
    let mut version_from = String::new();
    for (program, flag) in [("scontrol", "--version"), ("sinfo", "-V"), ("srun", "-V")] {
        let from = format!("{program} {flag}");
        let got = run(program, &[flag], 15).await.and_then(|out| {
            parse_version(&out).ok_or_else(|| format!("{from} said '{}'", out.trim()))
        });
        if got.is_ok() || version_from.is_empty() {
            (version, version_from) = (got, from);
        }
        if version.is_ok() {
            break;
        }
    }
    let (settings, settings_from) = match run("scontrol", &["show", "config"], 15).await {
        Ok(out) => (
            parse_show_config(&out),
            Ok("scontrol show config".to_string()),
        ),
        Err(why) => {
            let conf =
                std::env::var("SLURM_CONF").unwrap_or_else(|_| "/etc/slurm/slurm.conf".into());
            match std::fs::read_to_string(&conf) {
                Ok(text) => (
                    parse_slurm_conf(&text),
                    Ok(format!(
                        "{conf} ({why}; its Include lines are not followed)"
                    )),
                ),
                Err(e) => (Vec::new(), Err(format!("{why}; and {conf}: {e}"))),
            }
        }
    };
    SlurmFacts {
        version,
        version_from,
        settings,
        settings_from,
    }
}

/// The node's file system, for the plugstack loader.
struct RealFs;

impl plugstack::Fs for RealFs {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }
    fn exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }
}

/// plugstack.conf and what it loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlugstackFacts {
    /// The file.
    pub path: PathBuf,
    /// How it was found.
    pub from: String,
    /// Every file and line it loads.
    pub stack: Stack,
    /// The drop-in folder beside it (`plugstack.conf.d`).
    pub dropin_dir: PathBuf,
    /// Files in that folder with a line loading mnd's plugin.
    pub dropins: Vec<PathBuf>,
}

fn plugstack_facts(given: Option<&Path>, slurm: &SlurmFacts) -> PlugstackFacts {
    let (path, from) = if let Some(p) = given {
        (p.to_path_buf(), "--plugstack".to_string())
    } else if let Some(p) = slurm.first("PlugStackConfig") {
        (PathBuf::from(p), "Slurm's PlugStackConfig".to_string())
    } else if let Some(conf) = slurm.first("SLURM_CONF") {
        let dir = Path::new(conf).parent().unwrap_or(Path::new("/etc/slurm"));
        (dir.join("plugstack.conf"), format!("beside {conf}"))
    } else {
        (PathBuf::from(DEFAULT_PLUGSTACK), "the default".to_string())
    };
    let plugin_dirs: Vec<PathBuf> = slurm
        .first("PluginDir")
        .map(|d| {
            d.split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    let stack = plugstack::load(&path, &plugin_dirs, &RealFs);
    let dropin_dir = path
        .parent()
        .unwrap_or(Path::new("/"))
        .join("plugstack.conf.d");
    let mut dropins: Vec<PathBuf> = std::fs::read_dir(&dropin_dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    dropins.retain(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() < 1 << 20)
            && std::fs::read_to_string(p).is_ok_and(|t| plugstack::names_mnd(&t))
    });
    dropins.sort();
    PlugstackFacts {
        path,
        from,
        stack,
        dropin_dir,
        dropins,
    }
}

/// A plugin's file and what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFile {
    /// Owner and mode of it and its folders.
    pub file: PathFacts,
    /// Its symbols, or why they could not be read.
    pub symbols: Result<Symbols, String>,
}

fn plugin_file(path: &Path) -> PluginFile {
    let file = path_facts(path);
    let symbols = match file.target {
        Some(Meta {
            kind: Kind::File, ..
        }) => std::fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|f| elf::spank_symbols(&f)),
        _ => Err("it is not a regular file".into()),
    };
    PluginFile { file, symbols }
}

/// The plugstack lines that load mnd's plugin (by file name, or by the name it exports).
pub fn mnd_lines<'a>(
    stack: &'a Stack,
    plugins: &BTreeMap<PathBuf, PluginFile>,
) -> Vec<&'a PluginLine> {
    stack
        .plugins()
        .filter(|p| {
            p.named_mnd()
                || plugins
                    .get(&p.path)
                    .and_then(|f| f.symbols.as_ref().ok())
                    .and_then(|s| s.name.as_deref())
                    == Some("mnd_spank")
        })
        .collect()
}

/// Slurm's Epilog scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpilogFacts {
    /// Where they were named (`--epilog`, or Slurm's `Epilog`).
    pub from: String,
    /// Each script.
    pub scripts: Vec<EpilogScript>,
}

/// One Epilog script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpilogScript {
    /// Owner and mode of it and its folders.
    pub file: PathFacts,
    /// Its text, or why it could not be read.
    pub text: Result<String, String>,
    /// Scripts it names by absolute path (an epilog.sh it runs), with their text.
    pub called: Vec<(PathBuf, String)>,
}

const MAX_SCRIPT: u64 = 256 << 10;

fn read_small(path: &Path) -> Result<String, String> {
    let m = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !m.is_file() {
        return Err("it is not a regular file".into());
    }
    if m.len() > MAX_SCRIPT {
        return Err(format!("it is larger than {MAX_SCRIPT} bytes"));
    }
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| e.to_string())
}

/// Absolute paths a shell script names outside comments (where an Epilog calls mnd's).
pub fn named_paths(text: &str) -> Vec<String> {
    let mut found: Vec<String> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            l.split(|c: char| c.is_whitespace() || "\"'`;|&()=<>".contains(c))
                .filter(|w| w.starts_with('/') && w.len() > 1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    found.dedup();
    found
}

fn epilog_facts(given: Option<&Path>, slurm: &SlurmFacts) -> EpilogFacts {
    let (named, from): (Vec<String>, String) = match given {
        Some(p) => (vec![p.display().to_string()], "--epilog".into()),
        None => (
            slurm
                .get("Epilog")
                .iter()
                .flat_map(|v| v.split(','))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            match &slurm.settings_from {
                Ok(from) if from != "scontrol show config" => format!("Slurm's Epilog in {from}"),
                _ => "Slurm's Epilog".into(),
            },
        ),
    };
    let mut paths = Vec::new();
    for n in named {
        if n.contains(['*', '?', '[']) && n.starts_with('/') {
            paths.extend(plugstack::glob(&n, &RealFs));
        } else {
            paths.push(PathBuf::from(n));
        }
    }
    let scripts = paths
        .iter()
        .map(|p| {
            let text = read_small(p);
            let called = text
                .as_ref()
                .map(|t| {
                    named_paths(t)
                        .into_iter()
                        .map(PathBuf::from)
                        .filter(|c| c != p && c.to_string_lossy().contains("epilog"))
                        .take(8)
                        .filter_map(|c| read_small(&c).ok().map(|t| (c, t)))
                        .collect()
                })
                .unwrap_or_default();
            EpilogScript {
                file: path_facts(p),
                text,
                called,
            }
        })
        .collect();
    EpilogFacts { from, scripts }
}

/// Who reads a site config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Named with `--config`.
    Flag,
    /// Named by plugstack's `config=`: the root helper (direct mode) reads it, it must exist.
    Plugstack,
    /// The default file the launcher (and, without `config=`, the root helper) reads.
    Default,
}

/// What loading a site config gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The file does not exist.
    Missing,
    /// It loaded.
    Loaded(Box<SiteConfig>),
    /// It is not root's alone (the reason, with the path).
    Untrusted(String),
    /// Not valid (file, line, key).
    Invalid(String),
    /// It could not be read (the reason).
    Unreadable(String),
}

/// One site config.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFacts {
    /// The file.
    pub path: PathBuf,
    /// Who reads it.
    pub roles: Vec<Role>,
    /// How it loaded (with the crate's own loader).
    pub outcome: Outcome,
}

fn config_facts(path: &Path, roles: Vec<Role>) -> ConfigFacts {
    let named = roles.iter().any(|r| *r != Role::Default);
    let outcome = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Missing,
        _ => {
            let loaded = if named {
                SiteConfig::load_named(path)
            } else {
                SiteConfig::load_from(path, None, 0)
            };
            match loaded {
                Ok(c) => Outcome::Loaded(Box::new(c)),
                Err(ConfigError::Untrusted { reason, .. }) => Outcome::Untrusted(reason),
                Err(ConfigError::Read { source, .. }) => Outcome::Unreadable(source.to_string()),
                Err(e) => Outcome::Invalid(e.to_string()),
            }
        }
    };
    ConfigFacts {
        path: path.to_path_buf(),
        roles,
        outcome,
    }
}

/// A line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Which folder of its filesystem is shown there (`/` unless a bind mount of a folder).
    pub root: String,
    /// Filesystem type (`nfs4`, `ext4`, `fuse.sshfs`).
    pub fstype: String,
    /// Its source (`server:/export`, `/dev/sda1`).
    pub source: String,
    /// The filesystem's own options (`rw,prjquota`).
    pub super_options: String,
}

fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(o)) => {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// /proc/self/mountinfo, in its order (later mounts are on top of earlier ones).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            Some(Mount {
                root: unescape(left.get(3)?),
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                fstype: right.next()?.to_string(),
                source: unescape(right.next().unwrap_or_default()),
                super_options: right.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// The mount that holds `path` (an absolute path without links): the deepest mount point
/// above it, the latest of equals.
pub fn mount_of<'a>(path: &Path, mounts: &'a [Mount]) -> Option<&'a Mount> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m)
}

/// How this process reached Docker's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Something listens and let us in.
    Answers,
    /// Permission denied.
    Denied,
    /// No socket there.
    Missing,
    /// A socket nobody listens on (dockerd stopped).
    Refused,
    /// Another error.
    Other(String),
    /// `DOCKER_HOST` names no unix socket (its value).
    NotUnix(String),
}

/// What Docker says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineInfo {
    /// Server version.
    pub version: String,
    /// API version.
    pub api: String,
    /// Storage driver (`overlay2`, `overlayfs` on the containerd image store, `btrfs`).
    pub driver: String,
    /// The driver's status pairs (`Backing Filesystem`, `driver-type`).
    pub driver_status: Vec<(String, String)>,
    /// Docker's root folder.
    pub root_dir: PathBuf,
    /// cgroup version Docker sees (`1`, `2`).
    pub cgroup_version: Option<String>,
    /// cgroup driver (`cgroupfs`, `systemd`).
    pub cgroup_driver: Option<String>,
}

/// Docker on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerFacts {
    /// Its socket (`None`: `DOCKER_HOST` names no unix socket).
    pub socket: Option<PathBuf>,
    /// The socket's owner and mode.
    pub socket_meta: Option<Meta>,
    /// The name of the socket's group.
    pub socket_group: Option<String>,
    /// Connecting to the socket.
    pub probe: Probe,
    /// What the engine says, or why it could not be asked (mnd's own connection).
    pub engine: Result<EngineInfo, String>,
    /// The mount holding Docker's root folder.
    pub root_mount: Option<Mount>,
}

async fn engine_info() -> Result<EngineInfo, String> {
    let no_fix = |e: String| e.split(". Fix:").next().unwrap_or_default().to_string();
    // Reachable the way every mnd tool reaches it; then what it says of itself.
    let engine = crate::docker::Engine::connect()
        .await
        .map_err(|e| no_fix(e.to_string()))?;
    let d = engine.describe().await.map_err(|e| e.to_string())?;
    Ok(EngineInfo {
        version: d.version,
        api: d.api,
        driver: d.driver,
        driver_status: d.driver_status,
        root_dir: d.root_dir,
        cgroup_version: d.cgroup_version,
        cgroup_driver: d.cgroup_driver,
    })
}

async fn docker_facts(mounts: &[Mount]) -> DockerFacts {
    let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
    let socket = match &host {
        None => Some(PathBuf::from(DEFAULT_DOCKER_SOCKET)),
        Some(h) => h.strip_prefix("unix://").map(PathBuf::from),
    };
    let probe = match (&socket, &host) {
        (None, h) => Probe::NotUnix(h.clone().unwrap_or_default()),
        (Some(s), _) => match std::os::unix::net::UnixStream::connect(s) {
            Ok(_) => Probe::Answers,
            Err(e) => match e.kind() {
                std::io::ErrorKind::PermissionDenied => Probe::Denied,
                std::io::ErrorKind::NotFound => Probe::Missing,
                std::io::ErrorKind::ConnectionRefused => Probe::Refused,
                _ => Probe::Other(e.to_string()),
            },
        },
    };
    let socket_meta = socket
        .as_ref()
        .and_then(|s| std::fs::metadata(s).ok())
        .map(|m| Meta::of(&m));
    let socket_group = socket_meta
        .and_then(|m| nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(m.gid)).ok())
        .flatten()
        .map(|g| g.name);
    let engine = engine_info().await;
    let root_mount = engine.as_ref().ok().and_then(|e| {
        let root = std::fs::canonicalize(&e.root_dir).unwrap_or_else(|_| e.root_dir.clone());
        mount_of(&root, mounts).cloned()
    });
    DockerFacts {
        socket,
        socket_meta,
        socket_group,
        probe,
        engine,
        root_mount,
    }
}

/// MUNGE on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MungeFacts {
    /// munged's socket.
    pub socket: PathBuf,
    /// Connecting to it.
    pub answers: Result<(), String>,
    /// `munge -n | unmunge`: the uid the credential came back with; `None` without the
    /// programs.
    pub round_trip: Option<Result<u32, String>>,
}

async fn munge_facts(slurm: &SlurmFacts) -> MungeFacts {
    let socket = slurm
        .get("AuthInfo")
        .iter()
        .flat_map(|v| v.split(','))
        .find_map(|kv| kv.trim().strip_prefix("socket="))
        .map_or_else(|| PathBuf::from(DEFAULT_MUNGE_SOCKET), PathBuf::from);
    let answers = std::os::unix::net::UnixStream::connect(&socket)
        .map(|_| ())
        .map_err(|e| e.to_string());
    let have = |p| which::which(p).is_ok();
    let round_trip = (have("munge") && have("unmunge")).then_some(());
    let round_trip = match round_trip {
        None => None,
        Some(()) => Some(
            match tokio::time::timeout(Duration::from_secs(10), async {
                let cred = crate::munge::encode("", 60)
                    .await
                    .map_err(|e| e.to_string())?;
                crate::munge::decode(&cred)
                    .await
                    .map(|d| d.uid)
                    .map_err(|e| e.to_string())
            })
            .await
            {
                Ok(r) => r,
                Err(_) => Err("munge -n | unmunge gave no answer within 10 s".into()),
            },
        ),
    };
    MungeFacts {
        socket,
        answers,
        round_trip,
    }
}

/// The home whose filesystem the image share lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeFacts {
    /// The folder (links resolved), if there is one to check.
    pub path: Option<PathBuf>,
    /// Whose it is and how it was chosen.
    pub whose: String,
    /// statfs's filesystem magic.
    pub magic: Option<i64>,
    /// The mount holding it.
    pub mount: Option<Mount>,
}

/// The home folder of the user account with the lowest uid from 1000 (a regular user's),
/// among those whose home exists.
fn a_users_home() -> Option<(String, PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    let mut best: Option<(u32, String, PathBuf)> = None;
    // SAFETY: the user database enumeration, in one thread; each entry is copied out
    // before the next call.
    unsafe {
        libc::setpwent();
        for _ in 0..100_000 {
            let p = libc::getpwent();
            if p.is_null() {
                break;
            }
            let uid = (*p).pw_uid;
            if !(1000..60000).contains(&uid) || best.as_ref().is_some_and(|b| b.0 <= uid) {
                continue;
            }
            let name = std::ffi::CStr::from_ptr((*p).pw_name)
                .to_string_lossy()
                .into_owned();
            let dir = PathBuf::from(std::ffi::OsStr::from_bytes(
                std::ffi::CStr::from_ptr((*p).pw_dir).to_bytes(),
            ));
            if dir.is_dir() {
                best = Some((uid, name, dir));
            }
        }
        libc::endpwent();
    }
    best.map(|(_, n, d)| (n, d))
}

// statfs's f_type is i64 here and narrower on other targets.
#[allow(clippy::useless_conversion)]
fn home_facts(given: Option<&Path>, caller: &Caller, mounts: &[Mount]) -> HomeFacts {
    let chosen = match given {
        Some(p) => Some((p.to_path_buf(), "the folder given with --home".to_string())),
        None if !caller.root() => caller
            .home
            .clone()
            .map(|h| (h, format!("{}'s home", caller.name))),
        None => std::env::var("SUDO_USER")
            .ok()
            .filter(|u| !u.is_empty() && u != "root")
            .and_then(|u| nix::unistd::User::from_name(&u).ok().flatten())
            .map(|u| (u.dir, format!("{}'s home (SUDO_USER)", u.name)))
            .or_else(|| {
                a_users_home().map(|(n, d)| {
                    (d, format!("{n}'s home: the user with the lowest uid from 1000; --home DIR for another"))
                })
            }),
    };
    let Some((path, whose)) = chosen else {
        return HomeFacts {
            path: None,
            whose: "no user with a home folder here".into(),
            magic: None,
            mount: None,
        };
    };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    HomeFacts {
        magic: nix::sys::statfs::statfs(&path)
            .ok()
            .map(|s| i64::from(s.filesystem_type().0)),
        mount: mount_of(&path, mounts).cloned(),
        path: Some(path),
        whose,
    }
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupFacts {
    /// Controllers of the cgroup v1 hierarchies (`cpu`, `memory`, ...).
    pub v1: Vec<String>,
    /// Each cgroup v2 mount and its `cgroup.controllers`.
    pub v2: Vec<(PathBuf, String)>,
}

fn cgroup_facts(mounts: &[Mount]) -> CgroupFacts {
    let under = |m: &&Mount| m.mount_point.starts_with("/sys/fs/cgroup");
    let mut v1: Vec<String> = mounts
        .iter()
        .filter(under)
        .filter(|m| m.fstype == "cgroup")
        .flat_map(|m| {
            m.super_options
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    v1.sort();
    v1.dedup();
    let v2 = mounts
        .iter()
        .filter(under)
        .filter(|m| m.fstype == "cgroup2")
        .map(|m| {
            let controllers = std::fs::read_to_string(m.mount_point.join("cgroup.controllers"))
                .unwrap_or_default();
            (m.mount_point.clone(), controllers.trim().to_string())
        })
        .collect();
    CgroupFacts { v1, v2 }
}

/// A user's `~/.mnd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotMndFacts {
    /// Their home and its owner and mode.
    pub home: PathBuf,
    /// Its owner and mode.
    pub home_meta: Option<Meta>,
    /// `~/.mnd`.
    pub dir: PathBuf,
    /// `~/.mnd` itself.
    pub own: Seen,
    /// What is inside (up to three levels), relative to it.
    pub entries: Vec<(PathBuf, Meta)>,
    /// There was more than was listed.
    pub truncated: bool,
}

const MAX_ENTRIES: usize = 2000;

fn dot_mnd_facts(caller: &Caller) -> Option<DotMndFacts> {
    if caller.root() {
        return None;
    }
    let home = caller.home.clone()?;
    let dir = home.join(".mnd");
    let own = seen(&dir);
    let mut entries = Vec::new();
    let mut truncated = false;
    if matches!(
        own,
        Seen::Found(Meta {
            kind: Kind::Dir,
            ..
        })
    ) {
        let mut todo = vec![(PathBuf::new(), 0usize)];
        while let Some((rel, depth)) = todo.pop() {
            let Ok(list) = std::fs::read_dir(dir.join(&rel)) else {
                continue;
            };
            for e in list.flatten() {
                if entries.len() >= MAX_ENTRIES {
                    truncated = true;
                    break;
                }
                let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                    continue;
                };
                let r = rel.join(e.file_name());
                let m = Meta::of(&m);
                if m.kind == Kind::Dir && depth < 2 {
                    todo.push((r.clone(), depth + 1));
                }
                entries.push((r, m));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Some(DotMndFacts {
        home_meta: std::fs::metadata(&home).ok().map(|m| Meta::of(&m)),
        home,
        dir,
        own,
        entries,
        truncated,
    })
}

/// Everything the checks look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Who runs it, where.
    pub caller: Caller,
    /// Slurm.
    pub slurm: SlurmFacts,
    /// plugstack.conf.
    pub plugstack: PlugstackFacts,
    /// Every plugin file plugstack.conf loads.
    pub plugins: BTreeMap<PathBuf, PluginFile>,
    /// The root helper (mnd's plugin's `helper=`), when the plugin is loaded.
    pub helper: Option<PathFacts>,
    /// The plugin's `runtime_dir=`, when the plugin is loaded.
    pub runtime_dir: Option<PathFacts>,
    /// The Epilog.
    pub epilog: EpilogFacts,
    /// The site configs.
    pub configs: Vec<ConfigFacts>,
    /// Docker.
    pub docker: DockerFacts,
    /// MUNGE.
    pub munge: MungeFacts,
    /// The home of the image share.
    pub home: HomeFacts,
    /// cgroups.
    pub cgroup: CgroupFacts,
    /// The caller's `~/.mnd` (not as root).
    pub dot_mnd: Option<DotMndFacts>,
}

impl Facts {
    /// The plugstack lines loading mnd's plugin.
    pub fn mnd_lines(&self) -> Vec<&PluginLine> {
        mnd_lines(&self.plugstack.stack, &self.plugins)
    }
}

/// Gathers the facts (reads files, asks Slurm, Docker and MUNGE; changes nothing).
pub async fn gather(paths: &Paths) -> Facts {
    let caller = caller();
    let slurm = slurm().await;
    let mounts =
        parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let plugstack = plugstack_facts(paths.plugstack.as_deref(), &slurm);
    let plugins: BTreeMap<PathBuf, PluginFile> = plugstack
        .stack
        .plugins()
        .map(|p| (p.path.clone(), plugin_file(&p.path)))
        .collect();
    let args = mnd_lines(&plugstack.stack, &plugins)
        .first()
        .map(|l| plugstack::mnd_args(&l.args).0);
    let helper = args
        .as_ref()
        .map(|a| path_facts(a.helper.as_deref().unwrap_or(Path::new(DEFAULT_HELPER))));
    let runtime_dir = args.as_ref().map(|a| {
        path_facts(
            a.runtime_dir
                .as_deref()
                .unwrap_or(Path::new(DEFAULT_RUNTIME_DIR)),
        )
    });
    let mut configs = Vec::new();
    match &paths.config {
        Some(p) => configs.push(config_facts(p, vec![Role::Flag])),
        None => {
            let default = Path::new(DEFAULT_CONFIG_PATH);
            match args.as_ref().and_then(|a| a.config.clone()) {
                Some(c) if c == default => {
                    configs.push(config_facts(&c, vec![Role::Plugstack, Role::Default]))
                }
                Some(c) => {
                    configs.push(config_facts(&c, vec![Role::Plugstack]));
                    configs.push(config_facts(default, vec![Role::Default]));
                }
                None => configs.push(config_facts(default, vec![Role::Default])),
            }
        }
    }
    let epilog = epilog_facts(paths.epilog.as_deref(), &slurm);
    let docker = docker_facts(&mounts).await;
    let munge = munge_facts(&slurm).await;
    let home = home_facts(paths.home.as_deref(), &caller, &mounts);
    let cgroup = cgroup_facts(&mounts);
    let dot_mnd = dot_mnd_facts(&caller);
    Facts {
        caller,
        slurm,
        plugstack,
        plugins,
        helper,
        runtime_dir,
        epilog,
        configs,
        docker,
        munge,
        home,
        cgroup,
        dot_mnd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_config_values_are_read_with_indexed_keys_and_null() {
        let s = SlurmFacts {
            version: Ok("24.11.5".into()),
            version_from: "scontrol --version".into(),
            settings: parse_show_config(
                "Configuration data as of 2026-12-07T12:36:46\nAuthInfo                = socket=/run/m.sock,ttl=60\nEpilog[0]               = /opt/a.sh\nEpilog[1]               = /opt/b.sh\nPlugStackConfig         = (null)\nCgroup Support Configuration:\n",
            ),
            settings_from: Ok("scontrol show config".into()),
        };
        assert_eq!(s.get("epilog"), ["/opt/a.sh", "/opt/b.sh"]);
        assert_eq!(s.first("PlugStackConfig"), None);
        assert_eq!(s.first("AuthInfo"), Some("socket=/run/m.sock,ttl=60"));
        let conf = parse_slurm_conf("# x\nEpilog=/opt/e.sh # the epilog\nNodeName=n1 CPUs=2\n");
        assert_eq!(conf[0], ("Epilog".into(), "/opt/e.sh".into()));
    }

    #[test]
    fn site_configs_are_loaded_with_the_crates_own_rules() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("config.toml");
        let named = |roles| config_facts(&file, roles).outcome;
        assert_eq!(named(vec![Role::Flag]), Outcome::Missing);
        std::fs::write(&file, "[policy]\nallow_privileged = false\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
        // Group-writable (or, run as a user, not root's): not used, with the reason.
        match named(vec![Role::Flag]) {
            Outcome::Untrusted(reason) => {
                assert!(
                    reason.contains("0664") || reason.contains("not root"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn versions_are_read_from_each_packaging() {
        assert_eq!(parse_version("slurm 22.05.8\n").as_deref(), Some("22.05.8"));
        assert_eq!(
            parse_version("slurm-wlm 24.11.5\n").as_deref(),
            Some("24.11.5")
        );
        assert_eq!(parse_version("no version"), None);
    }

    #[test]
    fn the_mount_of_a_path_is_the_deepest_and_latest() {
        let mounts = parse_mountinfo(
            "76 51 0:40 / / rw - overlay overlay rw\n\
             84 76 254:0 /var/lib/vc/shared /shared rw,relatime - ext4 /dev/vda rw,discard\n\
             85 76 0:50 / /shared/home rw shared:5 - nfs4 srv:/home\\040x rw,vers=4.2\n",
        );
        assert_eq!(mounts.len(), 3);
        let m = mount_of(Path::new("/shared/home/alice"), &mounts).unwrap();
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("nfs4", "srv:/home x")
        );
        let m = mount_of(Path::new("/shared/other"), &mounts).unwrap();
        assert_eq!(
            (m.fstype.as_str(), m.root.as_str()),
            ("ext4", "/var/lib/vc/shared")
        );
        assert_eq!(
            mount_of(Path::new("/etc"), &mounts).unwrap().fstype,
            "overlay"
        );
    }

    #[test]
    fn an_epilog_names_the_scripts_it_runs() {
        let text = "#!/bin/sh\n# /not/this\nexec /opt/mnd-srun/slurm/epilog.sh \"$@\"\nX=/etc/site/epi.sh; /usr/bin/logger done\n";
        assert_eq!(
            named_paths(text),
            [
                "/opt/mnd-srun/slurm/epilog.sh",
                "/etc/site/epi.sh",
                "/usr/bin/logger"
            ]
        );
    }
}
