//! Man pages generated from the clap definitions (plus hand-written sections), and the
//! test that fails when the committed pages in `man/` drift from the CLI.

/// Extra sections of `mnd-srun(1)`, in roff.
pub const MND_SRUN_SECTIONS: &str = r#".SH "INJECTED VARIABLES"
Set in the script's environment and in every ssh session into the containers:
.TP
.B hostlist
node1:S,node2:S,... in Slurm's node order (S = slots per node).
.TP
.B np ", " WORLD_SIZE
S times the number of nodes.
.TP
.B MASTER_ADDR ", " MASTER_PORT
The first node; the third port Slurm reserved for the step, else a port derived from
the job and step ids (or \-\-master\-port).
.TP
.B CUDA_VISIBLE_DEVICES ", " NVIDIA_VISIBLE_DEVICES ", " ROCR_VISIBLE_DEVICES ", " HIP_VISIBLE_DEVICES
The step's GPUs as the container sees them (0..n\-1), and NVIDIA's physical ids.
.TP
.B NNODES ", " NODE_RANK
Number of nodes; this node's index (0 in the script, each node's own in ssh sessions).
.TP
.B ENVLIST
The names given with \-\-envlist (each also set).
.TP
.B MND_JOB ", " PDSH_RCMD_TYPE
JOB.STEP; ssh.
.SH "DIRECT MODE (SPANK PLUGIN)"
With mnd_spank.so in plugstack.conf, srun, salloc and sbatch take these options (each also
set by its variable); every task of the step then runs inside its node's container, as an
ordinary Slurm task, for users in the docker group or not.
.TP
.BI \-\-mnd\-image= IMAGE " " (MND_IMAGE)
Run every task of the step inside IMAGE (on the node, or pulled when missing). A multi-node
step whose image only the step's first node has gets it through your image share
(~/.mnd/images): the first node's root side vouches for it with a MUNGE credential and
saves it once; the other nodes load it checked to be that image id, untagged.
.TP
.BI \-\-mnd\-mounts= SRC[:DST[:FLAGS]],... " " (MND_MOUNTS)
More mounts (folders, files, tmpfs:DST[:OPTS]); FLAGS joined with +: ro, rw, private,
rprivate, shared, rshared, slave, rslave. Relative sources are taken from the working
directory.
.TP
.BI \-\-mnd\-workdir= DIR " " (MND_WORKDIR)
Where the tasks start (relative to /); default the image's WORKDIR, else the working
directory.
.TP
.BI \-\-mnd\-name= NAME[:MODE] " " (MND_NAME)
Keep the node's container for the job's later steps with the same NAME. MODE: auto,
create, exec, no_exec.
.TP
.BI \-\-mnd\-env= VAR,... " " (MND_ENV ", " MND_ENVLIST)
Variables whose value from the job wins over the image's (also \-\-mnd\-envlist).
.TP
.BR \-\-mnd\-mount\-home ", " \-\-no\-mnd\-mount\-home " " (MND_MOUNT_HOME)
Your home mounted (the default) or not.
.TP
.BR \-\-mnd\-remap\-root ", " \-\-no\-mnd\-remap\-root " " (MND_REMAP_ROOT)
Appear as root inside, in a user namespace where root is you.
.TP
.BR \-\-mnd\-writable ", " \-\-mnd\-readonly " " (MND_WRITABLE ", " MND_READONLY)
The container's own file system writable (the default) or read-only.
.TP
.BI \-\-mnd\-unshare= NS,... " " (MND_UNSHARE)
Namespaces of the container's own: net, ipc, uts.
.TP
.BI \-\-mnd\-save= PATH " " (MND_SAVE)
When the node's last task ended, the container is written to PATH as a docker save
archive, by a process running as you.
.TP
.BR \-\-no\-mnd\-entrypoint ", " \-\-mnd\-entrypoint\-log
Accepted for pyxis scripts; \-\-mnd\-entrypoint is refused (the tasks join a running
container: run the entrypoint yourself).
.PP
.B srun \-N3 \-n3 \-\-mnd\-image=IMAGE mnd\-srun \-\-script=./train.sh
runs this launcher inside the plugin's containers (no docker group needed); options that
shape a container (\-\-container, \-\-dockopts, \-\-mounts, \-\-gpus, \-\-privileged) are
refused there.
.SH "EXIT STATUS"
The script's exit code after a normal end. 2: bad input (flags, config, policy, Slurm
environment, script, ssh material). 125: a node could not start or the job could not run.
128+N: stopped by signal N. Workers exit 0 after an orderly end.
.SH ENVIRONMENT
Every flag has an MND_* twin, listed with the flag. Also:
.TP
.B MND_LOG
Log level (error, warn, info, debug, trace); quiet (warn) by default.
.TP
.B MND_CONFIG
Another site config in /etc/mnd\-srun/; used only when it and its folders are root's
alone (a file a user can change is refused).
.TP
.B NV_GPU
GPU ids, as with the seed script (like \-\-gpus; under Slurm a subset of the step's).
.TP
.B MND_TIMING
Print phase timings and peak memory (for benchmarks); with MND_TIMING=at, each with its wall-clock time, to line up the nodes on one timeline.
.TP
.B SLURM_STEP_NODELIST ", " SLURM_NODEID ", " SLURM_LOCALID ", " SLURM_STEP_GPUS ", " SLURM_STEP_RESV_PORTS
Read from srun: the step's nodes, this node's index, the task on this node, the physical GPU
ids, the ports Slurm reserved for the step.
.SH FILES
.TP
.I ~/.mnd/ssh/v1/
Per-user ssh material and the control-channel key, created on first use (0700; keys 0600;
no folder above it may be writable by others).
.TP
.I /.mnd/
Inside each container: sshd and ssh configs, and the ssh/scp/sftp wrappers first on PATH.
The container is made from your copy of the image on the node (your account in /etc/passwd
and /etc/group; unnamed, labelled mnd.accounts; docker image prune removes it and the next
job makes it again).
.TP
.I ~/.mnd/locks/
Per-node lock files: one image check or pull at a time per user and node.
.TP
.I /etc/mnd\-srun/config.toml
Site defaults and policy.
.TP
.I slurm/epilog.sh
Slurm Epilog that removes a job's containers (mnd cleanup).
.SH EXAMPLES
.nf
srun \-N4 \-n4 mnd\-srun \-\-container=IMAGE \-\-script=./train.sh \-\- \-\-epochs 3
sbatch \-N4 \-\-wrap "srun \-N4 \-n4 mnd\-srun \-\-container=IMAGE \-\-script=./train.sh"
mnd\-srun \-\-container=IMAGE \-\-script=./train.sh      # one machine, no Slurm
# inside train.sh:
mpirun \-H $hostlist \-np $np python train.py
pdsh \-w node[1\-4] 'torchrun \-\-nnodes=$NNODES \-\-node_rank=$NODE_RANK \\
    \-\-master_addr=$MASTER_ADDR \-\-master_port=$MASTER_PORT \-\-redirects 1 \-\-tee 1 train.py'
.fi
.SH "SEE ALSO"
.BR mnd (1),
.BR srun (1),
.BR sbatch (1)
"#;

/// Extra sections of `mnd(1)`, in roff.
pub const MND_SECTIONS: &str = r#".SH "EXIT STATUS"
0 on success, also when cleanup finds nothing or the node has no Docker engine; 1 on invalid
input (such as a bad hostlist) or a failed removal; 2 on usage errors.
.SH EXAMPLES
.nf
mnd hostlist expand 'node[01\-04],gpu[1\-2]'
mnd hostlist compress \-\-sorted node3 node1 node2
mnd ps \-\-all\-users
mnd cleanup \-\-job $SLURM_JOB_ID \-\-all\-users     # the Slurm Epilog
.fi
.SH "SEE ALSO"
.BR mnd\-srun (1)
"#;

/// Renders a man page: clap's sections, the flags' environment twins, then `extra`.
pub fn render(cmd: clap::Command, extra: &str) -> String {
    let twins: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|a| {
            Some((
                a.get_env()?.to_string_lossy().into_owned(),
                a.get_long()?.to_string(),
            ))
        })
        .collect();
    let aliases: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            Some(
                a.get_visible_aliases()?
                    .into_iter()
                    .map(move |al| (al.to_string(), long.clone())),
            )
        })
        .flatten()
        .collect();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .expect("render to memory");
    let mut page = String::from_utf8(buf).expect("roff is UTF-8");
    if !twins.is_empty() {
        page.push_str(".SH \"FLAG ENVIRONMENT\"\nEach flag can also be set through its environment twin (the flag wins):\n");
        for (env, long) in twins {
            page.push_str(&format!(
                ".TP\n.B {}\nas \\-\\-{}\n",
                env,
                long.replace('-', "\\-")
            ));
        }
    }
    if !aliases.is_empty() {
        page.push_str(".SH \"SEED-SCRIPT SPELLINGS\"\nThe flags of srun_docker.sh/run_dock_asuser.sh are accepted as aliases; unknown \\-\\-name=value arguments are passed on to the script.\n");
        for (alias, long) in aliases {
            page.push_str(&format!(
                ".TP\n.B \\-\\-{alias}\nas \\-\\-{}\n",
                long.replace('-', "\\-")
            ));
        }
    }
    page.push_str(extra);
    page
}

/// Compares a rendered page with the committed one (rewrites it with `UPDATE_SNAPSHOTS=1`).
pub fn check_committed(name: &str, page: &str) {
    let path = format!("{}/man/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, page).expect("write man page");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == page,
        "{path} is out of date with the CLI: regenerate with `UPDATE_SNAPSHOTS=1 cargo test man_page` and commit"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn man_page_of_mnd_srun_matches_the_cli() {
        let page = render(crate::cli::Args::command(), MND_SRUN_SECTIONS);
        check_committed("mnd-srun.1", &page);
        for want in [
            "MND_CONTAINER",
            "slots_per_node",
            "INJECTED VARIABLES",
            "EXIT STATUS",
            "EXAMPLES",
            "FILES",
        ] {
            assert!(page.contains(want), "man page lacks {want}");
        }
    }
}
