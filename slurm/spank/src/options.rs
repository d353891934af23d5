//! The plugin's arguments in plugstack.conf (the admin's) and the user's options.

use mnd::spank::Options;
use slurm_spank::{Context, SpankHandle};
use std::error::Error;
use std::path::PathBuf;

/// What the admin wrote after the plugin's path in plugstack.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginArgs {
    /// `helper=`: the `mnd` binary that runs as root.
    pub helper: PathBuf,
    /// `config=`: the site config the helper enforces.
    pub config: Option<PathBuf>,
    /// `runtime_dir=`: root's folder for the per-step lock and reply.
    pub runtime_dir: PathBuf,
    /// `sbatch_support=`: `sbatch --mnd-image` runs the batch script in the container
    /// (pyxis's setting of that name; default on).
    pub sbatch_support: bool,
    /// `mount_home=`: the site's default for `--[no-]mnd-mount-home` (default on).
    pub mount_home: bool,
    /// `container_scope=global`: a `--mnd-name` container outlives its job, for its user on
    /// that node (pyxis's setting; default `job` here until users can list and remove
    /// theirs without Docker).
    pub global_scope: bool,
}

impl Default for PluginArgs {
    fn default() -> Self {
        PluginArgs {
            helper: "/opt/mnd-srun/bin/mnd".into(),
            config: None,
            runtime_dir: "/run/mnd-spank".into(),
            sbatch_support: true,
            mount_home: true,
            global_scope: false,
        }
    }
}

impl PluginArgs {
    /// Parses `key=value` words; an unknown key, a relative path or a setting the plugin
    /// cannot honour is an error (the plugin then does not load, and slurmstepd says why).
    /// pyxis's own settings are taken where they mean something here.
    pub fn parse(words: &[&str]) -> Result<Self, String> {
        let mut args = PluginArgs::default();
        for w in words {
            let (key, value) = w.split_once('=').unwrap_or((w, ""));
            let switch = || {
                boolean(value)
                    .ok_or_else(|| format!("mnd_spank: plugstack.conf argument '{w}' needs 1 or 0"))
            };
            match (key, value) {
                ("sbatch_support", _) => {
                    args.sbatch_support = switch()?;
                    continue;
                }
                ("mount_home", _) => {
                    args.mount_home = switch()?;
                    continue;
                }
                ("container_scope", "job" | "global") => {
                    args.global_scope = value == "global";
                    continue;
                }
                ("container_scope", _) => {
                    return Err(format!(
                        "mnd_spank: plugstack.conf argument '{w}' needs job or global"
                    ))
                }
                ("execute_entrypoint", "0") => continue,
                ("execute_entrypoint", _) => {
                    return Err(format!(
                        "mnd_spank: plugstack.conf argument '{w}' cannot be honoured: no entrypoint runs (drop it, or use execute_entrypoint=0)"
                    ))
                }
                _ => {}
            }
            let path = PathBuf::from(value);
            if !path.is_absolute() {
                return Err(format!(
                    "mnd_spank: plugstack.conf argument '{w}' needs an absolute path (helper=, config=, runtime_dir=)"
                ));
            }
            match key {
                "helper" => args.helper = path,
                "config" => args.config = Some(path),
                "runtime_dir" => args.runtime_dir = path,
                _ => {
                    return Err(format!(
                        "mnd_spank: unknown plugstack.conf argument '{w}' (known: helper=, config=, runtime_dir=, sbatch_support=, mount_home=, container_scope=, execute_entrypoint=0)"
                    ))
                }
            }
        }
        Ok(args)
    }
}

/// One user option: `--NAME[=VALUE]` on srun/sbatch/salloc, or the variable `ENV`.
pub struct UserOption {
    /// Option name without `--`.
    pub name: &'static str,
    /// What the value is, for `--help`; `None` for a flag.
    pub value: Option<&'static str>,
    /// The environment variable that sets it when the option is not given.
    pub env: &'static str,
    /// What it does.
    pub help: &'static str,
}

impl UserOption {
    /// The `srun --help` text.
    pub fn usage(&self) -> String {
        format!("{} (or ${})", self.help, self.env)
    }
}

const fn value(
    name: &'static str,
    value: &'static str,
    env: &'static str,
    help: &'static str,
) -> UserOption {
    UserOption {
        name,
        value: Some(value),
        env,
        help,
    }
}

const fn flag(name: &'static str, env: &'static str, help: &'static str) -> UserOption {
    UserOption {
        name,
        value: None,
        env,
        help,
    }
}

/// The options, as `srun --help` lists them: pyxis's `--container-*` as `--mnd-*`, with the
/// same meaning (README: "Coming from pyxis").
pub const OPTIONS: [UserOption; 19] = [
    value("mnd-image", "IMAGE", "MND_IMAGE", "[mnd] run every task of the step inside IMAGE (a Docker image on the nodes or pullable)"),
    value("mnd-mounts", "SRC[:DST[:FLAGS]],...", "MND_MOUNTS", "[mnd] bind mount[s] in the container; FLAGS joined with '+' (ro, rw, rprivate, rslave, ...); tmpfs:DST[:OPTS] for a tmpfs"),
    value("mnd-workdir", "DIR", "MND_WORKDIR", "[mnd] start the tasks in DIR inside the container (default: the working directory)"),
    value("mnd-name", "NAME[:MODE]", "MND_NAME", "[mnd] keep the container for the job's later steps with the same NAME; MODE: auto (default), create, exec, no_exec"),
    value("mnd-env", "VAR,...", "MND_ENV", "[mnd] variables whose value from the job wins over the image's"),
    value("mnd-envlist", "VAR,...", "MND_ENVLIST", "[mnd] the same as --mnd-env"),
    value("mnd-save", "PATH", "MND_SAVE", "[mnd] save the container at the step's end as a docker save archive at PATH"),
    flag("mnd-mount-home", "MND_MOUNT_HOME", "[mnd] bind mount your home (the default)"),
    flag("no-mnd-mount-home", "MND_MOUNT_HOME", "[mnd] do not bind mount your home"),
    flag("mnd-remap-root", "MND_REMAP_ROOT", "[mnd] appear as root inside (a user namespace mapping root to you: no privilege outside)"),
    flag("no-mnd-remap-root", "MND_REMAP_ROOT", "[mnd] stay yourself inside (the default)"),
    flag("mnd-entrypoint", "MND_ENTRYPOINT", "[mnd] not supported (refused): the image's entrypoint does not run"),
    flag("no-mnd-entrypoint", "MND_ENTRYPOINT", "[mnd] do not run the image's entrypoint (the default)"),
    flag("mnd-entrypoint-log", "MND_ENTRYPOINT_LOG", "[mnd] accepted for pyxis scripts; no entrypoint runs, so nothing to log"),
    flag("mnd-writable", "MND_WRITABLE", "[mnd] the container's filesystem is writable (the default)"),
    flag("mnd-readonly", "MND_READONLY", "[mnd] the container's filesystem is read-only (mounts keep their own mode)"),
    value("mnd-unshare", "NS,...", "MND_UNSHARE", "[mnd] namespaces of the container's own: net, ipc, uts"),
    value("mnd-fabric", "NAME,...|none", "MND_FABRIC", "[mnd] the site's device profiles for the fabric (e.g. ib, efa, gdr): their devices, read-only mounts and variables; none: not even the site's defaults (default: the site's default profiles this node has)"),
    value("mnd-containers", "ls|rm:NAME,...", "MND_CONTAINERS", "[mnd] list (ls) or remove (rm:NAME,... or rm:all) your --mnd-name containers on the step's nodes, one line per container, instead of running in one (mnd containers ls|rm does this for you)"),
];
/// Where the plugin reads what the user gave.
struct Source<'a, 'b> {
    spank: &'a mut SpankHandle<'b>,
    remote: bool,
    /// Options given on the command line (not from the environment).
    given: Vec<&'static str>,
}

impl Source<'_, '_> {
    /// `--NAME=VALUE`, else the variable `ENV` (empty: unset). An empty value on the
    /// command line is refused, as pyxis does.
    fn text(&mut self, name: &'static str) -> Result<Option<String>, Box<dyn Error>> {
        if let Some(v) = self.spank.get_option_value(name)?.map(|v| v.into_owned()) {
            if v.is_empty() {
                return Err(format!("mnd: --{name}: argument required").into());
            }
            self.given.push(name);
            return Ok(Some(v));
        }
        self.env(env_of(name))
    }

    /// A variable of the job (in slurmstepd) or of srun; empty is unset.
    fn env(&mut self, name: &str) -> Result<Option<String>, Box<dyn Error>> {
        let value = if self.remote {
            self.spank.getenv(name)?
        } else {
            std::env::var(name).ok()
        };
        Ok(value.filter(|v| !v.is_empty()))
    }

    /// `--ON` (true) or `--OFF` (false), both refused; else the variable of `ON` as a
    /// boolean (1/0, true/false, yes/no, on/off; anything else is unset, as pyxis).
    fn switch(
        &mut self,
        on: &'static str,
        off: &'static str,
    ) -> Result<Option<bool>, Box<dyn Error>> {
        match (self.spank.is_option_set(on), self.spank.is_option_set(off)) {
            (true, true) => Err(format!("mnd: both --{on} and --{off} were given").into()),
            (true, false) => {
                self.given.push(on);
                Ok(Some(true))
            }
            (false, true) => {
                self.given.push(off);
                Ok(Some(false))
            }
            (false, false) => Ok(self.env(env_of(on))?.and_then(|v| boolean(&v))),
        }
    }

    /// `--NAME`, else its variable as a boolean.
    fn flag(&mut self, name: &'static str) -> Result<bool, Box<dyn Error>> {
        if self.spank.is_option_set(name) {
            self.given.push(name);
            return Ok(true);
        }
        Ok(self.env(env_of(name))?.and_then(|v| boolean(&v)) == Some(true))
    }
}

/// The variable of an option.
fn env_of(name: &str) -> &'static str {
    OPTIONS
        .iter()
        .find(|o| o.name == name)
        .map_or("", |o| o.env)
}

/// pyxis's booleans.
fn boolean(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// The user's options: from the command line, else from the environment (the job's, in
/// slurmstepd); `None` without an image or a name. Options given without either are
/// refused (the same variables in the environment alone are ignored, so a profile that
/// exports them does not break plain steps).
pub fn given(spank: &mut SpankHandle) -> Result<Option<Options>, Box<dyn Error>> {
    let remote = spank.context()? == Context::Remote;
    let mut src = Source {
        spank,
        remote,
        given: Vec::new(),
    };
    let envlist = match src.text("mnd-env")? {
        Some(v) => Some(v),
        None => src.text("mnd-envlist")?,
    };
    let writable = match src.switch("mnd-writable", "mnd-readonly")? {
        Some(w) => Some(w),
        None => src
            .env("MND_READONLY")?
            .and_then(|v| boolean(&v))
            .map(|ro| !ro),
    };
    let options = Options {
        image: src.text("mnd-image")?.unwrap_or_default(),
        mounts: src.text("mnd-mounts")?,
        workdir: src.text("mnd-workdir")?,
        name: src.text("mnd-name")?,
        envlist,
        mount_home: src.switch("mnd-mount-home", "no-mnd-mount-home")?,
        remap_root: src.switch("mnd-remap-root", "no-mnd-remap-root")?,
        entrypoint: src.switch("mnd-entrypoint", "no-mnd-entrypoint")?,
        entrypoint_log: src.flag("mnd-entrypoint-log")?,
        writable,
        unshare: src.text("mnd-unshare")?,
        fabric: src.text("mnd-fabric")?,
        save: src.text("mnd-save")?,
        containers: src.text("mnd-containers")?,
    };
    if !options.image.is_empty() || options.name.is_some() || options.containers.is_some() {
        return Ok(Some(options));
    }
    match src.given.first() {
        Some(name) => Err(format!(
            "mnd: --{name} needs --mnd-image=IMAGE (or --mnd-name=NAME of a container of this job)"
        )
        .into()),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_has_its_variable_and_booleans_read_as_pyxis_reads_them() {
        for o in &OPTIONS {
            assert!(
                o.env.starts_with("MND_") && !o.help.is_empty(),
                "{}",
                o.name
            );
        }
        assert_eq!(env_of("no-mnd-mount-home"), "MND_MOUNT_HOME");
        assert_eq!(boolean("Yes"), Some(true));
        assert_eq!(boolean("0"), Some(false));
        assert_eq!(boolean("maybe"), None);
    }

    #[test]
    fn plugstack_arguments() {
        let a = PluginArgs::parse(&["helper=/usr/bin/mnd", "config=/etc/mnd-srun/direct.toml"])
            .unwrap();
        assert_eq!(a.helper, PathBuf::from("/usr/bin/mnd"));
        assert_eq!(a.config, Some(PathBuf::from("/etc/mnd-srun/direct.toml")));
        assert!(PluginArgs::parse(&["helper=mnd"])
            .unwrap_err()
            .contains("absolute"));
        assert!(PluginArgs::parse(&["nope=/x"])
            .unwrap_err()
            .contains("unknown"));
        let a = PluginArgs::parse(&["sbatch_support=0", "mount_home=no", "container_scope=job"])
            .unwrap();
        assert!(!a.sbatch_support && !a.mount_home && !a.global_scope);
        assert!(
            PluginArgs::parse(&["container_scope=global"])
                .unwrap()
                .global_scope
        );
        assert!(PluginArgs::parse(&["container_scope=node"])
            .unwrap_err()
            .contains("job or global"));
        assert!(PluginArgs::parse(&["execute_entrypoint=1"])
            .unwrap_err()
            .contains("cannot be honoured"));
        assert!(PluginArgs::parse(&["sbatch_support=maybe"])
            .unwrap_err()
            .contains("1 or 0"));
    }
}
