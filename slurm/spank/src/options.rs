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
}

impl Default for PluginArgs {
    fn default() -> Self {
        PluginArgs {
            helper: "/opt/mnd-srun/bin/mnd".into(),
            config: None,
            runtime_dir: "/run/mnd-spank".into(),
        }
    }
}

impl PluginArgs {
    /// Parses `key=value` words; an unknown key or a relative path is an error (the plugin
    /// then does not load, and slurmstepd says why).
    pub fn parse(words: &[&str]) -> Result<Self, String> {
        let mut args = PluginArgs::default();
        for w in words {
            let (key, value) = w.split_once('=').unwrap_or((w, ""));
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
                        "mnd_spank: unknown plugstack.conf argument '{w}' (known: helper=, config=, runtime_dir=)"
                    ))
                }
            }
        }
        Ok(args)
    }
}

/// One user option: `--NAME=VALUE` on srun/sbatch/salloc, or the variable `ENV`.
pub struct UserOption {
    /// Option name without `--`.
    pub name: &'static str,
    /// What the value is, for `--help`.
    pub value: &'static str,
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

/// The options, as `srun --help` lists them.
pub const OPTIONS: [UserOption; 5] = [
    UserOption {
        name: "mnd-image",
        value: "IMAGE",
        env: "MND_IMAGE",
        help: "[mnd] run every task of the step inside IMAGE (a Docker image on the nodes or pullable)",
    },
    UserOption {
        name: "mnd-mounts",
        value: "SRC[:DST][:ro],...",
        env: "MND_MOUNTS",
        help: "[mnd] more folders in the container (home and working directory are always there)",
    },
    UserOption {
        name: "mnd-workdir",
        value: "DIR",
        env: "MND_WORKDIR",
        help: "[mnd] start the tasks in DIR inside the container (default: the working directory)",
    },
    UserOption {
        name: "mnd-name",
        value: "NAME",
        env: "MND_NAME",
        help: "[mnd] keep the container for the job's later steps with the same NAME",
    },
    UserOption {
        name: "mnd-envlist",
        value: "VAR,...",
        env: "MND_ENVLIST",
        help: "[mnd] variables whose value from the job wins over the image's",
    },
];

/// The user's options: from the command line, else from the environment (the job's, in
/// slurmstepd); `None` without an image.
pub fn given(spank: &mut SpankHandle) -> Result<Option<Options>, Box<dyn Error>> {
    let remote = spank.context()? == Context::Remote;
    let mut values = Vec::new();
    for o in &OPTIONS {
        let from_option = spank.get_option_value(o.name)?.map(|v| v.into_owned());
        let value = match from_option {
            Some(v) => Some(v),
            None if remote => spank.getenv(o.env)?,
            None => std::env::var(o.env).ok(),
        };
        values.push(value.filter(|v| !v.is_empty()));
    }
    let [image, mounts, workdir, name, envlist]: [Option<String>; 5] =
        values.try_into().map_err(|_| "mnd_spank: option table")?;
    Ok(image.map(|image| Options {
        image,
        mounts,
        workdir,
        name,
        envlist,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
