//! Command line of `mnd-srun`: modern kebab-case flags, each with an `MND_*` environment
//! twin, and the seed script's spellings (`--slots_per_node`, `--datamnts`, ...) as aliases.
//! Unknown `--name=value` arguments are passed on to the script, as the seed script did.

use clap::{CommandFactory, Parser, ValueEnum};
use std::path::PathBuf;

/// Which GPUs the container gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GpuVendor {
    /// NVIDIA when /dev/nvidia0 exists, AMD when /dev/kfd exists, else none.
    Auto,
    /// NVIDIA device requests (nvidia-container-toolkit).
    Nvidia,
    /// /dev/kfd, /dev/dri/renderD*, video and render groups.
    Amd,
    /// No GPU.
    None,
}

/// When to raise the locked-memory limit (RDMA, NCCL over InfiniBand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Memlock {
    /// Unlimited when this node allows raising it (CAP_SYS_RESOURCE), else leave it.
    Auto,
    /// Always unlimited (fails where the node forbids it).
    Unlimited,
    /// Leave the default limit.
    Off,
}

/// When images travel through the image share (a cache on the shared filesystem).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageShare {
    /// When a node lacks the image and cannot pull it.
    Auto,
    /// Always: the first node saves the image, the others load it when they lack it.
    Shared,
    /// Never.
    Off,
}

pub use crate::spec::Pull;

/// `--pull`'s values, with their help (the type is the container spec's, which knows no
/// command line).
impl ValueEnum for Pull {
    fn value_variants<'a>() -> &'a [Self] {
        &[Pull::Missing, Pull::Never, Pull::Always]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let (name, help) = match self {
            Pull::Missing => ("missing", "Pull only when the node does not have the image"),
            Pull::Never => ("never", "Never pull; a missing image is an error"),
            Pull::Always => ("always", "Pull every time"),
        };
        Some(clap::builder::PossibleValue::new(name).help(help))
    }
}

/// `mnd-srun`: run a Docker container on every node of a Slurm step, as the calling user,
/// with sshd inside, and run a script on the first node with the node list injected.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mnd-srun",
    version,
    args_override_self = true,
    about = "Run a Docker container on every node of a Slurm step, as you, with ssh between them, and run a script on the first node",
    after_help = "Example:\n  srun -N3 -n3 mnd-srun --container=IMAGE --script=./train.sh -- --epochs 3\n\n\
Injected into the script: hostlist (node1:S,node2:S,...), np, MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK, WORLD_SIZE, ENVLIST."
)]
pub struct Args {
    /// Docker image to run on every node.
    #[arg(
        long,
        short = 'c',
        env = "MND_CONTAINER",
        value_name = "IMAGE",
        alias = "image"
    )]
    pub container: Option<String>,

    /// Script to run inside the first node's container (path as seen on the host; must be
    /// executable and under your home, the working directory or a mount).
    #[arg(long, env = "MND_SCRIPT", value_name = "PATH")]
    pub script: Option<PathBuf>,

    /// Slots (processes) per node in `hostlist`/`np`; default: the GPUs Slurm gave this node, else 1.
    #[arg(
        long,
        env = "MND_SLOTS_PER_NODE",
        value_name = "N",
        visible_alias = "slots_per_node"
    )]
    pub slots_per_node: Option<u32>,

    /// Extra bind mounts, comma separated: `SRC[:DST][:ro]` (DST defaults to SRC).
    #[arg(
        long = "mounts",
        env = "MND_MOUNTS",
        value_name = "LIST",
        visible_alias = "datamnts",
        value_delimiter = ','
    )]
    pub mounts: Vec<String>,

    /// Environment variables to pass from here into the script, comma separated.
    #[arg(
        long,
        env = "MND_ENVLIST",
        value_name = "A,B",
        visible_alias = "envlist",
        value_delimiter = ','
    )]
    pub envlist: Vec<String>,

    /// Docker run options, e.g. "--shm-size=8g -e X=1 -v /a:/a"; only known options are
    /// accepted (volumes, env, shm, ulimits, devices, caps, ipc, security-opt, tmpfs, ...).
    #[arg(
        long,
        env = "MND_DOCKOPTS",
        value_name = "OPTS",
        visible_alias = "dockopts",
        allow_hyphen_values = true
    )]
    pub dockopts: Option<String>,

    /// Run the container privileged (if the site allows it).
    #[arg(long, env = "MND_PRIVILEGED")]
    pub privileged: bool,

    /// Pass InfiniBand devices (/dev/infiniband) and raise memlock where allowed: the same
    /// as --fabric=ib.
    #[arg(long, env = "MND_IB_DEVICES", visible_alias = "ibdevices")]
    pub ib_devices: bool,

    /// The site's device profiles for the fabric, e.g. "ib" or "ib,gdr" (their devices,
    /// read-only mounts and variables; memlock raised where allowed); "none": not even the
    /// site's default ones. Default: the site's default profiles this node has.
    #[arg(long, env = "MND_FABRIC", value_name = "NAME,...|none")]
    pub fabric: Option<String>,

    /// Use only these nodes of the step (hostlist expression); the first one leads. Nodes of
    /// the step not listed exit at once.
    #[arg(long, env = "MND_NODELIST", value_name = "HOSTLIST")]
    pub nodelist: Option<String>,

    /// sshd port inside the containers; default: derived from the job and step ids.
    #[arg(
        long,
        env = "MND_SSHD_PORT",
        value_name = "PORT",
        visible_alias = "sshdport"
    )]
    pub sshd_port: Option<u16>,

    /// Folder for your ssh key material; default ~/.mnd/ssh.
    #[arg(
        long,
        env = "MND_SSH_DIR",
        value_name = "DIR",
        visible_alias = "sshconfigdir"
    )]
    pub ssh_dir: Option<PathBuf>,

    /// Prefix of container names; default mnd-USER.
    #[arg(
        long,
        env = "MND_NAME",
        value_name = "NAME",
        visible_alias = "dockname"
    )]
    pub name: Option<String>,

    /// Run the script with --help in a container on this node only, then exit.
    #[arg(long, visible_alias = "script_help")]
    pub script_help: bool,

    /// Seconds the first node waits for every worker's sshd before giving up.
    #[arg(long, env = "MND_WAIT_TIMEOUT", value_name = "SECS")]
    pub wait_timeout: Option<u64>,

    /// Children per launcher in the fan-out tree the nodes talk over (like Slurm's
    /// TreeWidth): the first node connects to this many nodes, each of them to as many
    /// more, so no launcher holds more connections whatever the job's size. Default 32.
    #[arg(long, env = "MND_TREE_WIDTH", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub tree_width: Option<u16>,

    /// MASTER_PORT given to the script; default: Slurm's third reserved port for the step,
    /// else derived from the job and step ids.
    #[arg(long, env = "MND_MASTER_PORT", value_name = "PORT")]
    pub master_port: Option<u16>,

    /// Hosts mode (no Slurm): run the job on these hosts (hostlist expression), started over
    /// your ssh from here; the first host coordinates.
    #[arg(
        long,
        env = "MND_HOSTS",
        value_name = "HOSTLIST",
        conflicts_with = "hostfile"
    )]
    pub hosts: Option<String>,

    /// Hosts mode: the hosts from a file (one per line, `#` comments, `HOST:SLOTS` or
    /// `HOST slots=N`).
    #[arg(long, env = "MND_HOSTFILE", value_name = "FILE")]
    pub hostfile: Option<PathBuf>,

    /// Hosts mode: end the job everywhere after this many seconds.
    #[arg(long, env = "MND_TIME_LIMIT", value_name = "SECS")]
    pub time_limit: Option<u64>,

    /// MASTER_ADDR given to the script; default: the first node.
    #[arg(long, env = "MND_MASTER_ADDR", value_name = "ADDR")]
    pub master_addr: Option<String>,

    /// Set no network defaults: by default the containers get the interface that reaches
    /// the other nodes in OMPI_MCA_btl_tcp_if_include, OMPI_MCA_oob_tcp_if_include,
    /// PRTE_MCA_oob_tcp_if_include, NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME (never over
    /// a value the job, the image or the site set).
    #[arg(long, env = "MND_NO_NET_DEFAULTS")]
    pub no_net_defaults: bool,

    /// NCCL_SOCKET_IFNAME in the containers (the network interface NCCL uses).
    #[arg(long, env = "MND_NCCL_SOCKET_IFNAME", value_name = "IFACE")]
    pub nccl_socket_ifname: Option<String>,

    /// GLOO_SOCKET_IFNAME in the containers (the network interface Gloo uses).
    #[arg(long, env = "MND_GLOO_SOCKET_IFNAME", value_name = "IFACE")]
    pub gloo_socket_ifname: Option<String>,

    /// GPUs for the container: "all", "none" or physical ids "0,1"; default: what Slurm gave the step.
    #[arg(long, env = "MND_GPUS", value_name = "all|none|IDS")]
    pub gpus: Option<String>,

    /// GPU vendor.
    #[arg(long, env = "MND_GPU_VENDOR", value_enum, default_value_t = GpuVendor::Auto)]
    pub gpu_vendor: GpuVendor,

    /// Locked-memory limit of the container.
    #[arg(long, env = "MND_MEMLOCK", value_enum, default_value_t = Memlock::Auto)]
    pub memlock: Memlock,

    /// Shared memory size of the container (/dev/shm), e.g. 16g; default from the site config.
    #[arg(long, env = "MND_SHM_SIZE", value_name = "SIZE")]
    pub shm_size: Option<String>,

    /// When to pull the image.
    #[arg(long, env = "MND_PULL", value_enum, default_value_t = Pull::Missing)]
    pub pull: Pull,

    /// Images the nodes lack travel through a cache on the shared filesystem: auto (when a
    /// node lacks the image and cannot pull it), shared (always) or off.
    #[arg(long, env = "MND_IMAGE_SHARE", value_enum, default_value_t = ImageShare::Auto)]
    pub image_share: ImageShare,

    /// The image share's folder (on a filesystem every node sees); default ~/.mnd/images.
    #[arg(long, env = "MND_IMAGE_CACHE", value_name = "DIR")]
    pub image_cache: Option<PathBuf>,

    /// More logging (-v info, -vv debug, -vvv trace); MND_LOG=debug does the same.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Arguments for the script (after `--`), passed byte for byte.
    #[arg(last = true, value_name = "ARGS")]
    pub script_args: Vec<String>,

    /// Unknown `--name=value` arguments, passed on to the script before ARGS.
    #[arg(skip)]
    pub passthrough_args: Vec<String>,
}

/// Whether `--name` is a long option `mnd-srun` knows (by name or alias).
fn is_known_long(name: &str) -> bool {
    let cmd = Args::command();
    name == "help"
        || name == "version"
        || cmd.get_arguments().any(|a| {
            a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|al| al.contains(&name))
        })
}

/// Parses the command line; unknown `--name=value` arguments before `--` go to the script.
pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Args, clap::Error> {
    let mut known = Vec::new();
    let mut passthrough = Vec::new();
    let mut after_dashes = false;
    for (i, arg) in argv.into_iter().enumerate() {
        if i > 0 && !after_dashes {
            if arg == "--" {
                after_dashes = true;
            } else if let Some((name, _)) = arg.strip_prefix("--").and_then(|a| a.split_once('=')) {
                if !is_known_long(name) {
                    passthrough.push(arg);
                    continue;
                }
            }
        }
        known.push(arg);
    }
    let mut args = Args::try_parse_from(known)?;
    args.passthrough_args = passthrough;
    Ok(args)
}

impl Args {
    /// All arguments for the script: pass-through `--name=value` ones, then those after `--`.
    pub fn all_script_args(&self) -> Vec<String> {
        let mut v = self.passthrough_args.clone();
        v.extend(self.script_args.iter().cloned());
        if self.script_help {
            v.push("--help".into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Args {
        parse(
            std::iter::once("mnd-srun")
                .chain(args.iter().copied())
                .map(String::from),
        )
        .unwrap()
    }

    #[test]
    fn seed_spellings_are_aliases() {
        let a = p(&[
            "--container=img",
            "--script=./j.sh",
            "--slots_per_node=2",
            "--datamnts=/data,/scratch:/s:ro",
            "--envlist=A,B",
            "--dockopts=--shm-size=8g -e X=1",
            "--privileged",
            "--ibdevices",
            "--nodelist=node[2-3]",
            "--sshdport=2222",
            "--sshconfigdir=/tmp/k",
            "--dockname=mine",
            "--script_help",
        ]);
        assert_eq!(a.slots_per_node, Some(2));
        assert_eq!(a.mounts, ["/data", "/scratch:/s:ro"]);
        assert_eq!(a.envlist, ["A", "B"]);
        assert_eq!(a.dockopts.as_deref(), Some("--shm-size=8g -e X=1"));
        assert!(a.privileged && a.ib_devices && a.script_help);
        assert_eq!(a.nodelist.as_deref(), Some("node[2-3]"));
        assert_eq!(a.sshd_port, Some(2222));
        assert_eq!(a.ssh_dir, Some(PathBuf::from("/tmp/k")));
        assert_eq!(a.name.as_deref(), Some("mine"));
    }

    #[test]
    fn unknown_name_value_args_go_to_the_script_in_order() {
        let a = p(&[
            "--container=i",
            "--epochs=3",
            "--lr=0.1",
            "--",
            "a b",
            "",
            "--x=1",
            "c:d",
        ]);
        assert_eq!(
            a.all_script_args(),
            ["--epochs=3", "--lr=0.1", "a b", "", "--x=1", "c:d"]
        );
    }

    #[test]
    fn unknown_plain_flags_are_errors() {
        let e = parse(["mnd-srun", "--bogus"].map(String::from)).unwrap_err();
        assert!(e.to_string().contains("--bogus"));
    }

    #[test]
    fn every_flag_has_an_env_twin_and_help() {
        for a in Args::command().get_arguments() {
            let id = a.get_id().as_str();
            if ["verbose", "script_args", "script_help", "help", "version"].contains(&id) {
                continue;
            }
            let env = a.get_env().map(|e| e.to_string_lossy().to_string());
            assert!(
                env.as_deref().is_some_and(|e| e.starts_with("MND_")),
                "--{id} has no MND_ env twin"
            );
            assert!(a.get_help().is_some(), "--{id} has no help");
        }
    }
}
