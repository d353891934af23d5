//! `man 8 mnd_spank`: the plugin's page, generated from what the plugin itself uses, so the
//! page and `srun --help` cannot drift: the user options are `options::OPTIONS` (names,
//! values, variables, help), the plugstack.conf arguments are `PLUGSTACK` below, checked
//! against `PluginArgs::parse` and its defaults, and the site config keys are `SITE` below,
//! checked against the keys `mnd::config` accepts, with their defaults taken from it.
//!
//! The page is committed as `man/mnd_spank.8`; a test fails when it differs from the
//! generated text (regenerate with `UPDATE_SNAPSHOTS=1 cargo test -p mnd-spank manpage`).

use crate::options::{PluginArgs, OPTIONS};
use mnd::config::{FabricProfile, SiteConfig, DEFAULT_CONFIG_PATH};

/// One plugstack.conf argument, `KEY=VALUE` after the plugin's path.
struct PlugstackArg {
    key: &'static str,
    /// The value's form (`FILE`, `1|0`), or the one value taken (pyxis's settings).
    value: &'static str,
    /// Only `value` itself is accepted (any other value is refused).
    fixed: bool,
    /// The default, from `PluginArgs::default()`; `None` for the fixed ones.
    default: Option<fn(&PluginArgs) -> String>,
    help: &'static str,
}

const fn on_off(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// What `PluginArgs::parse` takes (a test holds the two together).
const PLUGSTACK: [PlugstackArg; 7] = [
    PlugstackArg {
        key: "helper",
        value: "FILE",
        fixed: false,
        default: Some(|a| a.helper.display().to_string()),
        help: "The mnd binary that runs as root and talks to Docker (mnd direct up). It and every folder above it must be root's and writable by nobody else, or the plugin refuses to run it. The packages' line says helper=/usr/bin/mnd.",
    },
    PlugstackArg {
        key: "config",
        value: "FILE",
        fixed: false,
        default: Some(|a| match &a.config {
            Some(c) => c.display().to_string(),
            None => format!("{DEFAULT_CONFIG_PATH}, the built-in safe defaults when it does not exist"),
        }),
        help: "The site config the helper enforces (SITE CONFIG below). A file named here must exist and be root's alone, like every folder above it. Never taken from the user's environment.",
    },
    PlugstackArg {
        key: "runtime_dir",
        value: "DIR",
        fixed: false,
        default: Some(|a| a.runtime_dir.display().to_string()),
        help: "Root's folder for the per-step lock and the helper's reply. The Epilog removes what a killed slurmstepd left there (set MND_SPANK_RUNTIME_DIR in it for another folder).",
    },
    PlugstackArg {
        key: "sbatch_support",
        value: "1|0",
        fixed: false,
        default: Some(|a| on_off(a.sbatch_support).into()),
        help: "Whether sbatch --mnd-image runs the batch script itself in the container (pyxis's setting of that name).",
    },
    PlugstackArg {
        key: "mount_home",
        value: "1|0",
        fixed: false,
        default: Some(|a| on_off(a.mount_home).into()),
        help: "The site's default of --mnd-mount-home / --no-mnd-mount-home.",
    },
    PlugstackArg {
        key: "container_scope",
        value: "job|global",
        fixed: false,
        default: Some(|a| if a.global_scope { "global" } else { "job" }.into()),
        help: "pyxis's setting. global: a --mnd-name container outlives its job, for its user on that node: the Epilog stops it and keeps it, and a later job's step goes on from its file system in a new container with that step's mounts and devices. job (the default here, unlike pyxis, until users can list and remove their containers without Docker): the Epilog removes it.",
    },
    PlugstackArg {
        key: "execute_entrypoint",
        value: "0",
        fixed: true,
        default: None,
        help: "pyxis's setting, accepted as it is here: no entrypoint runs. Any other value is refused.",
    },
];

/// One key of the site config: its table, name, default (from `SiteConfig::default()`) and
/// meaning (the field's doc in `mnd::config`).
struct SiteKey {
    table: &'static str,
    key: &'static str,
    default: fn(&SiteConfig) -> String,
    help: &'static str,
}

const fn site(
    table: &'static str,
    key: &'static str,
    default: fn(&SiteConfig) -> String,
    help: &'static str,
) -> SiteKey {
    SiteKey {
        table,
        key,
        default,
        help,
    }
}

/// A TOML list of strings, as the admin writes it.
fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The keys of `[defaults]`, `[policy]` and `[fabrics.NAME]`, in the order of `mnd::config`
/// (a test holds the two together).
const SITE: [SiteKey; 29] = [
    site("defaults", "ssh_port_base", |c| c.defaults.ssh_port_base.to_string(), "First port of the range the ssh mode's sshd and control ports are derived from (keep it below the ephemeral range, /proc/sys/net/ipv4/ip_local_port_range)."),
    site("defaults", "ssh_port_span", |c| c.defaults.ssh_port_span.to_string(), "Size of that range."),
    site("defaults", "master_port_base", |c| c.defaults.master_port_base.to_string(), "First MASTER_PORT; the job id picks one of the next 1000."),
    site("defaults", "mounts", |c| list(&c.defaults.mounts), "Mounts every container gets, SRC[:DST][:ro], e.g. [\"/datasets:/datasets:ro\"] (the admin's own, not under the policy's mount rules)."),
    site("defaults", "env", |c| list(&c.defaults.env), "Environment every container gets, NAME=VALUE."),
    site("defaults", "shm_size", |c| format!("{:?}", c.defaults.shm_size), "/dev/shm size."),
    site("defaults", "wait_timeout", |c| c.defaults.wait_timeout.to_string(), "Seconds to wait for every worker."),
    site("defaults", "net_defaults", |c| c.defaults.net_defaults.to_string(), "Tell MPI, NCCL and Gloo which interface reaches the other nodes (where the task has no value of its own)."),
    site("defaults", "image_share", |c| c.defaults.image_share.to_string(), "Direct mode: a node that lacks a step's image loads it from the user's image share, where the step's first node (which has it, from no registry) saved it."),
    site("policy", "allowed_images", |c| list(&c.policy.allowed_images), "Regexes; when not empty, the image must match one (whole name). A site where root pulls images for users should name its registries."),
    site("policy", "allowed_mount_prefixes", |c| list(&c.policy.allowed_mount_prefixes), "When not empty, every mount source must be under one of these folders (empty: any folder that is not a host system folder)."),
    site("policy", "allow_privileged", |c| c.policy.allow_privileged.to_string(), "Whether the launcher's --privileged is allowed."),
    site("policy", "allow_dockopts", |c| c.policy.allow_dockopts.to_string(), "Whether the launcher's --dockopts is allowed at all (each option is still under its own rule; direct mode takes no Docker option)."),
    site("policy", "allow_devices", |c| c.policy.allow_devices.to_string(), "Whether extra devices (--dockopts --device) are allowed; the step's GPUs and --ibdevices (InfiniBand) need no permission."),
    site("policy", "allow_cap_add", |c| c.policy.allow_cap_add.to_string(), "Whether --dockopts --cap-add is allowed."),
    site("policy", "allow_root", |c| c.policy.allow_root.to_string(), "Whether the launcher may be run by root (the container then runs as uid 0)."),
    site("policy", "allowed_security_opts", |c| list(&c.policy.allowed_security_opts), "--dockopts --security-opt values allowed, exactly as written."),
    site("policy", "allow_any_group", |c| c.policy.allow_any_group.to_string(), "Whether --dockopts --group-add may name groups the user is not in on the host."),
    site("policy", "allow_host_ipc", |c| c.policy.allow_host_ipc.to_string(), "Whether --dockopts --ipc=host is allowed (private and shareable always are)."),
    site("policy", "allowed_ulimits", |c| list(&c.policy.allowed_ulimits), "Resource limits --dockopts --ulimit may set."),
    site("policy", "writable_layer_size", |c| c.policy.writable_layer_size.as_ref().map_or_else(|| "none (no limit)".into(), |s| format!("{s:?}")), "Largest writable layer of a container, e.g. \"20G\": Docker's storage-opt size, which only some storage drivers take (overlay2 on xfs with pquota, btrfs, zfs); where the driver does not, every container fails to start, saying so."),
    site("policy", "max_image_size", |c| c.policy.max_image_size.as_ref().map_or_else(|| "none (no limit)".into(), |s| format!("{s:?}")), "Largest image a job may run, e.g. \"30G\" (unpacked, as Docker counts it): a larger one is refused naming the rule, and removed again where the job's pull brought it."),
    site("policy", "user_rootfs", |c| rootfs_name(c.policy.user_rootfs).into(), "When a direct-mode step's root file system is the user's own copy of the image (made once per user, image and node; every file theirs, no set-id bit), as enroot unpacks images as the user: remap-root (steps with --mnd-remap-root, so package managers work), always (every writable step: files can be made anywhere the image's modes allow) or never. The copies go when their image leaves the node (the Epilog)."),
    site("policy", "max_named_containers", |c| c.policy.max_named_containers.map_or_else(|| "none (no limit)".into(), |n| n.to_string()), "With container_scope=global: how many named containers one user may keep on a node; a step that would make one more is refused, naming mnd containers rm."),
    site("fabrics.NAME", "devices", |_| list(&FabricProfile::default().devices), "Device nodes under /dev, or folders of them (/dev/infiniband: every device in it), given at the same path. No GPUs (they come from the step's Slurm allocation only), not /dev itself, /dev/shm, /dev/mqueue or /dev/pts."),
    site("fabrics.NAME", "cdi", |_| list(&FabricProfile::default().cdi), "CDI device names (vendor.com/class=name), for engines with CDI turned on."),
    site("fabrics.NAME", "mounts", |_| list(&FabricProfile::default().mounts), "Read-only mounts SRC[:DST] with absolute paths (a site NCCL net plugin, libfabric); a source (or a folder above it) that is not root's alone, or a link, is refused."),
    site("fabrics.NAME", "env", |_| list(&FabricProfile::default().env), "Variable defaults NAME=VALUE; the user's and the image's values win."),
    site("fabrics.NAME", "default", |_| FabricProfile::default().default.to_string(), "Given to every job on nodes that have all its devices (unless the job says --mnd-fabric=none)."),
];

/// `policy.user_rootfs` as the admin writes it.
fn rootfs_name(v: mnd::config::UserRootfs) -> &'static str {
    match v {
        mnd::config::UserRootfs::RemapRoot => "\"remap-root\"",
        mnd::config::UserRootfs::Always => "\"always\"",
        mnd::config::UserRootfs::Never => "\"never\"",
    }
}

/// The profiles a site has without writing any, as the admin would write them.
fn built_in_fabrics() -> String {
    let built_in: Vec<String> = SiteConfig::default()
        .fabric_profiles()
        .iter()
        .map(|(name, p)| {
            format!(
                "[fabrics.{name}] devices = {}, default = {}",
                list(&p.devices),
                p.default
            )
        })
        .collect();
    built_in.join("; ")
}

/// Text for roff: backslashes and hyphens escaped, no line taken for a request.
fn esc(text: &str) -> String {
    let body = text.replace('\\', "\\e").replace('-', "\\-");
    body.lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn bold(text: &str) -> String {
    format!("\\fB{}\\fR", esc(text))
}

fn italic(text: &str) -> String {
    format!("\\fI{}\\fR", esc(text))
}

/// Lines shown as they are (commands, files), in a no-fill block.
fn example(lines: &[&str]) -> String {
    let mut out = String::from(".PP\n.RS 4\n.nf\n");
    for l in lines {
        out.push_str(&esc(l));
        out.push('\n');
    }
    out.push_str(".fi\n.RE\n");
    out
}

const DESCRIPTION: &str = "\
mnd_spank.so is the SPANK plugin of mnd\\-srun(1): its \\fBdirect mode\\fR. With it in plugstack.conf, any user, in the docker group or not, runs a Slurm step's tasks inside Docker containers with \\fBsrun \\-\\-mnd\\-image=\\fIIMAGE\\fR. The options are pyxis's \\-\\-container\\-* options as \\-\\-mnd\\-*, with the same meaning, on srun, salloc and sbatch.
.PP
Per step and node, the first task (in slurm_spank_task_init_privileged, as root, under a lock in runtime_dir) runs the root helper (helper=, \\fBmnd direct up\\fR) with a clean environment. The helper checks the request against the site config (config=), resolves the user's paths as the user, and starts the node's container: the user's uid and groups, every capability dropped, no\\-new\\-privileges, the node's network, pid, IPC and uts namespaces, exactly the step's GPUs. Every task of the step then joins that container (its mount namespace and root) and stays slurmstepd's child: srun's PMI\\-2/PMIx wiring, signals, time limits, cgroups and per\\-task exit codes work as without a container. The container goes when the step ends; \\-\\-mnd\\-name containers stay for the job's later steps and go with the Epilog (FILES).
.PP
Put the plugin's line \\fBlast\\fR in plugstack.conf (a plugin after it would run its task_init_privileged inside the user's image), on every compute node and every node users run srun, sbatch or salloc on (the options come from it). slurmstepd loads the plugin only when it was built for its Slurm major.minor: rebuild or reinstall it on every Slurm upgrade of major.minor.
";

/// The page.
pub fn render() -> String {
    let mut page = String::new();
    page.push_str(&format!(
        ".TH MND_SPANK 8 \"mnd\\-srun {}\" \"mnd\\-srun\" \"System Administration\"\n",
        env!("CARGO_PKG_VERSION")
    ));
    page.push_str(".SH NAME\nmnd_spank \\- SPANK plugin of mnd\\-srun: srun \\-\\-mnd\\-image runs a step's tasks in Docker containers\n");

    page.push_str(".SH SYNOPSIS\nIn /etc/slurm/plugstack.conf (or a file it includes):\n");
    page.push_str(&example(&[
        "required /usr/lib/mnd-srun/mnd_spank.so helper=/usr/bin/mnd [KEY=VALUE ...]",
    ]));
    page.push_str(".PP\nUsers:\n");
    page.push_str(&example(&[
        "srun --mnd-image=IMAGE [--mnd-OPTION ...] COMMAND ...",
        "sbatch --mnd-image=IMAGE [--mnd-OPTION ...] SCRIPT",
        "salloc [--mnd-OPTION ...]",
    ]));

    page.push_str(".SH DESCRIPTION\n");
    page.push_str(DESCRIPTION);

    page.push_str(".SH OPTIONS\nOn srun, salloc and sbatch (and #SBATCH lines), as srun \\-\\-help lists them. An option on the command line wins over its variable. Booleans in variables are 1/true/yes/on or 0/false/no/off, as pyxis reads them. An empty value on the command line (\\-\\-mnd\\-image=) is refused, and so is any \\-\\-mnd\\-* option given without \\-\\-mnd\\-image or \\-\\-mnd\\-name (or their variables); the other variables alone are ignored, so a profile that exports them does not break plain steps.\n");
    for o in &OPTIONS {
        let name = format!("--{}", o.name);
        let head = match o.value {
            Some(v) => format!("{}={}", bold(&name), italic(v)),
            None => bold(&name),
        };
        let variable = match o.value {
            Some(_) => bold(o.env),
            None if o.name.starts_with("no-") => format!("{}=0", bold(o.env)),
            None => format!("{}=1", bold(o.env)),
        };
        let help = o.help.strip_prefix("[mnd] ").unwrap_or(o.help);
        page.push_str(&format!(
            ".TP\n{head}\n{}.\n.br\nVariable: {variable}\n",
            esc(help)
        ));
    }

    page.push_str(".SH \"PLUGSTACK ARGUMENTS\"\nWords after the plugin's path in plugstack.conf, all optional. An unknown argument, a relative path, or a value the plugin cannot honour stops the plugin from loading, and Slurm logs why. \"required\" fails a step when the plugin cannot load; \"optional\" lets jobs run without containers then.\n");
    let defaults = PluginArgs::default();
    for a in &PLUGSTACK {
        let head = if a.fixed {
            bold(&format!("{}={}", a.key, a.value))
        } else {
            format!("{}={}", bold(a.key), italic(a.value))
        };
        page.push_str(&format!(".TP\n{head}\n{}", esc(a.help)));
        if let Some(default) = a.default {
            page.push_str(&format!(" Default: {}.", esc(&default(&defaults))));
        }
        page.push('\n');
    }

    page.push_str(&format!(
        ".SH \"SITE CONFIG\"\nThe root helper reads the site's defaults, policy and device profiles from {} (or the file config= names). It is used only when it and every folder above it are owned by root and writable by nobody else; otherwise every step stops with the reason. Every key is optional; unknown keys and wrong types are refused with file, line and key. The same file serves the launcher, mnd\\-srun(1): keys about its \\-\\-dockopts do not concern direct mode, which takes no Docker option. A refusal names what was refused, the rule and the file, before any container starts.\n",
        esc(DEFAULT_CONFIG_PATH)
    ));
    let built_in = SiteConfig::default();
    let mut table = "";
    for k in &SITE {
        if k.table != table {
            table = k.table;
            page.push_str(&format!(".SS [{table}]\n"));
            if table.starts_with("fabrics.") {
                page.push_str(&format!(
                    "Device profiles: what a job needs to reach one fabric (InfiniBand, RoCE, EFA, Slingshot) or a device class (GPUDirect RDMA's /dev/gdrdrv). Users name profiles (\\-\\-mnd\\-fabric), never devices; a profile a user names must be whole on every node of the step, or the step is refused naming the node, the device and the profile. Built in unless the site writes its own (an empty one turns it off): {}.\n",
                    esc(&built_in_fabrics())
                ));
            }
        }
        page.push_str(&format!(
            ".TP\n{} = {}\n{}\n",
            bold(k.key),
            esc(&(k.default)(&built_in)),
            esc(k.help)
        ));
    }

    page.push_str(".SH FILES\n");
    for (file, what) in [
        ("/usr/lib/mnd-srun/mnd_spank.so", "the plugin, as the .deb and .rpm packages install it (scripts/install.sh --plugin: PREFIX/lib/mnd_spank.so)"),
        ("/usr/share/mnd-srun/plugstack.conf.d/mnd-srun.conf", "the packages' plugstack.conf line; link it into /etc/slurm/plugstack.conf.d/ and put \"include /etc/slurm/plugstack.conf.d/*.conf\" last in plugstack.conf"),
        ("/etc/mnd-srun/config.toml", "the site config (SITE CONFIG)"),
        ("/run/mnd-spank", "the default runtime_dir: per-step locks and replies, root's"),
        ("/run/mnd-srun", "root's per-container files (the user's accounts merged into the image's, the container's init), mounted read-only into the container"),
        ("/usr/lib/mnd-srun/epilog.sh", "the Slurm Epilog (slurm.conf: Epilog=): removes the job's containers, --mnd-name ones included, what a killed slurmstepd left, and the images root pulled for the job"),
        ("~/.mnd/images", "the user's image share: images only a step's first node has reach the other nodes through it"),
    ] {
        page.push_str(&format!(".TP\n{}\n{}\n", bold(file), esc(what)));
    }

    page.push_str(".SH EXAMPLES\nSix tasks in three containers, MPI wired by srun's PMIx:\n");
    page.push_str(&example(&[
        "srun -N3 --ntasks-per-node=2 --mpi=pmix \\",
        "     --mnd-image=nvcr.io/nvidia/pytorch:24.01-py3 python3 allreduce.py",
    ]));
    page.push_str(".PP\nA pyxis batch script with \\-\\-container\\- renamed to \\-\\-mnd\\- (the script runs outside, each step in the containers):\n");
    page.push_str(&example(&[
        "#!/bin/bash",
        "#SBATCH -N2 --ntasks-per-node=4",
        "srun --mnd-image=IMAGE --mnd-mounts=/scratch/$USER:/data,/datasets:/datasets:ro \\",
        "     --mnd-workdir=/data python3 train.py",
    ]));
    page.push_str(".PP\nThe batch script itself in the container (sbatch_support=1); srun inside it is then the image's:\n");
    page.push_str(&example(&[
        "#!/bin/bash",
        "#SBATCH -N1",
        "#SBATCH --mnd-image=IMAGE",
        "#SBATCH --mnd-mounts=/scratch/me:/data",
        "python3 prep.py /data",
    ]));
    page.push_str(".PP\nOne container per node for the whole job, kept between steps by name:\n");
    page.push_str(&example(&[
        "salloc -N4",
        "srun --mnd-image=IMAGE --mnd-name=env pip install --user -r req.txt",
        "srun --mnd-image=IMAGE --mnd-name=env python3 train.py",
    ]));
    page.push_str(".PP\nThe variables instead of options, as PYXIS_CONTAINER_* become MND_*:\n");
    page.push_str(&example(&[
        "export MND_IMAGE=IMAGE MND_MOUNTS=/datasets:/datasets:ro",
        "srun -N2 python3 eval.py",
    ]));
    page.push_str(
        ".PP\nThe ssh mode inside the plugin's containers, for users outside the docker group:\n",
    );
    page.push_str(&example(&[
        "srun -N3 -n3 --mnd-image=IMAGE mnd-srun --script=./train.sh",
    ]));

    page.push_str(".SH \"SEE ALSO\"\nmnd\\-srun(1), mnd(1), srun(1), sbatch(1), salloc(1), spank(8), slurm.conf(5)\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../man/mnd_spank.8");

    #[test]
    fn manpage_matches_the_committed_file() {
        let page = render();
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(PAGE, &page).expect("write man/mnd_spank.8");
        }
        let committed = std::fs::read_to_string(PAGE).unwrap_or_default();
        assert!(
            committed == page,
            "man/mnd_spank.8 is out of date with the plugin's options, plugstack arguments or site config: regenerate with `UPDATE_SNAPSHOTS=1 cargo test -p mnd-spank manpage` and commit"
        );
        for o in &OPTIONS {
            assert!(page.contains(&esc(o.name)), "no --{}", o.name);
            assert!(page.contains(&esc(o.env)), "no {}", o.env);
        }
    }

    /// The list above is what `PluginArgs::parse` takes: every key parses, the fixed ones
    /// refuse other values, and the keys its refusal of an unknown one names are these.
    #[test]
    fn manpage_plugstack_arguments_are_those_the_plugin_takes() {
        let defaults = PluginArgs::default();
        assert_eq!(PluginArgs::parse(&[]).unwrap(), defaults);
        for a in &PLUGSTACK {
            let sample = match a.value {
                "FILE" | "DIR" => "/x",
                "1|0" => "0",
                "job|global" => "global",
                fixed => fixed,
            };
            let word = format!("{}={sample}", a.key);
            assert!(PluginArgs::parse(&[&word]).is_ok(), "{word}");
            if a.fixed {
                let other = format!("{}=other", a.key);
                assert!(PluginArgs::parse(&[&other]).is_err(), "{other}");
            }
            assert_eq!(a.fixed, a.default.is_none(), "{}", a.key);
        }
        let refusal = PluginArgs::parse(&["not_an_argument=/x"]).unwrap_err();
        let known = refusal
            .split("(known: ")
            .nth(1)
            .and_then(|k| k.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no list of known arguments in: {refusal}"));
        let listed: Vec<String> = PLUGSTACK
            .iter()
            .map(|a| match a.fixed {
                true => format!("{}={}", a.key, a.value),
                false => format!("{}=", a.key),
            })
            .collect();
        assert_eq!(known.split(", ").collect::<Vec<_>>(), listed);
    }

    /// The tables, and the keys of each, are those `mnd::config` accepts, in its order (as
    /// the refusal of an unknown key names them).
    #[test]
    fn manpage_site_config_keys_are_those_the_helper_reads() {
        let accepted = |text: &str| -> Vec<String> {
            let refusal = SiteConfig::parse(text, Path::new("config.toml"))
                .expect_err(text)
                .to_string();
            // "unknown field `x`, expected one of `a`, `b`" (or "expected `a` or `b`").
            refusal
                .split('`')
                .skip(3)
                .step_by(2)
                .map(String::from)
                .collect()
        };
        let mut listed_tables: Vec<&str> = SITE
            .iter()
            .map(|k| k.table.split('.').next().unwrap_or_default())
            .collect();
        listed_tables.dedup();
        assert_eq!(
            accepted("not_a_table = 1\n"),
            listed_tables,
            "mnd::config's tables (left) and SITE's (right) in slurm/spank/src/manpage.rs differ"
        );
        for table in ["defaults", "policy", "fabrics.NAME"] {
            let header = table.replace("NAME", "x");
            let keys = accepted(&format!("[{header}]\nnot_a_key = 1\n"));
            let listed: Vec<&str> = SITE
                .iter()
                .filter(|k| k.table == table)
                .map(|k| k.key)
                .collect();
            assert_eq!(
                keys, listed,
                "[{table}]: mnd::config's keys (left) and SITE's (right) differ: describe each key in SITE in slurm/spank/src/manpage.rs, then regenerate man/mnd_spank.8 (UPDATE_SNAPSHOTS=1 cargo test -p mnd-spank manpage)"
            );
        }
    }

    #[test]
    fn manpage_escapes_roff() {
        assert_eq!(esc("--a\\b"), "\\-\\-a\\eb");
        assert_eq!(esc(".x\n'y"), "\\&.x\n\\&'y");
    }
}
