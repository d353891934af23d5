//! MPI and PyTorch traffic between nodes as on a real site: every node's dockerd has its
//! `docker0` bridge at 172.17.0.1 and the job image carries no Open MPI settings, so only
//! what mnd-srun sets makes ranks on different nodes reach each other (without it Open MPI
//! takes `docker0` and hangs). Each MPI test moves an 8 MiB allreduce over 3 nodes x 2
//! ranks and checks the whole result on every rank. Every command runs under `timeout`: a
//! hang fails the test.

use crate::cluster::*;
use crate::hosts::bob_on;

/// 8 MiB of doubles per rank, summed over all ranks; each rank checks every element.
const ALLREDUCE: &str = r#"from array import array
from mpi4py import MPI
c = MPI.COMM_WORLD
n = 8 * 1024 * 1024 // 8
a = array("d", [float(c.rank + 1)]) * n
b = array("d", [0.0]) * n
c.Allreduce(a, b, op=MPI.SUM)
want = c.size * (c.size + 1) / 2
ok = b.count(want) == n
print("rank", c.rank, "of", c.size, "on", MPI.Get_processor_name(), "ok" if ok else "BAD", flush=True)
"#;

/// A PMI-1 client over Slurm's `PMI_FD` (the image's Open MPI has no PMI-2 support, as
/// Debian builds it): every rank puts a key, passes a barrier, and reads every rank's key.
const PMI1: &str = r#"import os, socket
fd, rank, size = (int(os.environ[v]) for v in ("PMI_FD", "PMI_RANK", "PMI_SIZE"))
f = socket.socket(fileno=fd).makefile("rw")
def cmd(line):
    f.write(line + "\n")
    f.flush()
    return dict(kv.split("=", 1) for kv in f.readline().split())
assert cmd("cmd=init pmi_version=1 pmi_subversion=1")["rc"] == "0"
kvs = cmd("cmd=get_my_kvsname")["kvsname"]
cmd(f"cmd=put kvsname={kvs} key=k{rank} value=v{rank}@{socket.gethostname()}")
cmd("cmd=barrier_in")
got = [cmd(f"cmd=get kvsname={kvs} key=k{r}")["value"] for r in range(size)]
print("pmi rank", rank, "of", size, "sees", ",".join(got), flush=True)
cmd("cmd=finalize")
"#;

/// The cluster looks like a real site: `docker0` at the same address on every node.
fn nodes_have_docker0() {
    for node in NODES {
        let r = root_on(node, &["ip", "-4", "-br", "addr", "show", "docker0"]);
        assert!(
            r.code == 0 && r.stdout.contains("172.17.0.1/16"),
            "{node} has no docker0 at 172.17.0.1: the test cluster hides the problem\n{}",
            r.all()
        );
    }
}

/// Every one of 6 ranks (2 per node) saw the right sum, and Open MPI complained of nothing.
fn every_rank_summed(r: &Run) {
    assert_eq!(r.code, 0, "{}", r.all());
    for (rank, node) in [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
        let want = format!("rank {rank} of 6 on node{node} ok");
        assert!(r.stdout.contains(&want), "no '{want}':\n{}", r.all());
    }
    for bad in [
        "BAD",
        "unexpected process identifier",
        "errno = 1",
        "PMIX ERROR",
    ] {
        assert!(
            !r.all().contains(bad),
            "'{bad}' in the output:\n{}",
            r.all()
        );
    }
}

#[test]
fn ssh_mode_mpirun_allreduce_of_8_mib_over_three_docker_nodes() {
    let _g = shared();
    nodes_have_docker0();
    let p = script("alice", "e2e-allreduce.py", ALLREDUCE);
    let s = script(
        "alice",
        "e2e-allreduce.sh",
        &format!(
            "#!/bin/bash\necho \"btl=$OMPI_MCA_btl_tcp_if_include oob=$OMPI_MCA_oob_tcp_if_include nccl=$NCCL_SOCKET_IFNAME\"\n\
             mpirun -H \"$hostlist\" -np \"$np\" python3 {p}\n"
        ),
    );
    let name = unique("allreduce");
    let r = alice(&format!(
        "timeout 180 {} --script=./{s}",
        srun_line(3, &name, "--slots-per-node=2")
    ));
    every_rank_summed(&r);
    assert!(
        r.stdout
            .contains("btl=10.213.77.0/24 oob=10.213.77.0/24 nccl=eth0"),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn direct_mode_pmix_allreduce_of_8_mib_with_the_pmix_folder_mounted() {
    let _g = shared();
    nodes_have_docker0();
    let p = script("dave", "e2e-allreduce.py", ALLREDUCE);
    let (r, job) = dave_job(3, &format!(
        "srun --mpi=pmix --mnd-image={IMAGE} python3 {p}; \
         srun --mpi=pmix --ntasks-per-node=1 --mnd-image={IMAGE} sh -c \
         'echo \"$(hostname) server-dir=$(findmnt -n -o TARGET \"$PMIX_SERVER_TMPDIR\") psec=$PMIX_MCA_psec/$PMIX_SECURITY_MODE gds=$PMIX_MCA_gds/$PMIX_GDS_MODULE\"'"
    ));
    every_rank_summed(&r);
    for node in NODES {
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{node} server-dir=")))
            .unwrap_or_else(|| panic!("no line of {node}:\n{}", r.all()));
        assert!(
            line.contains(&format!("server-dir=/var/spool/slurmd/pmix.{job}.1")),
            "the PMIx server folder is not a mount point on {node}: {line}"
        );
        let (psec, gds) = (field(line, "psec="), field(line, "gds="));
        assert!(!psec.starts_with('/') && same_halves(psec), "{line}");
        assert!(!gds.starts_with('/') && same_halves(gds), "{line}");
    }
    assert_clean(&format!("mnd-dave-{job}"), CLEAN);
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_default()
}

fn same_halves(v: &str) -> bool {
    v.split_once('/').is_some_and(|(a, b)| a == b)
}

#[test]
fn direct_mode_pmi2_hands_each_task_its_fd_and_ranks_exchange_keys() {
    let _g = shared();
    let p = script("dave", "e2e-pmi1.py", PMI1);
    let (r, job) = dave_job(
        3,
        &format!("srun --mpi=pmi2 --mnd-image={IMAGE} python3 {p}"),
    );
    assert_eq!(r.code, 0, "{}", r.all());
    let all = "v0@node1,v1@node1,v2@node2,v3@node2,v4@node3,v5@node3";
    for rank in 0..6 {
        let want = format!("pmi rank {rank} of 6 sees {all}");
        assert!(r.stdout.contains(&want), "no '{want}':\n{}", r.all());
    }
    assert_clean(&format!("mnd-dave-{job}"), CLEAN);
}

/// Switches the cluster's Slurm to another spool and tmp layout while it lives, and back.
struct OtherLayout;

impl OtherLayout {
    fn switch(layout: &str) {
        vcluster(&["up", "3"], &[("MND_VC_LAYOUT", layout)]);
    }
}

impl Drop for OtherLayout {
    fn drop(&mut self) {
        OtherLayout::switch("default");
    }
}

#[test]
fn direct_mode_pmix_on_a_site_with_other_spool_and_tmp_folders() {
    let _g = exclusive();
    OtherLayout::switch("site2");
    let _back = OtherLayout;
    let conf = root_on(
        "node2",
        &[
            "grep",
            "-E",
            "^(SlurmdSpoolDir|TmpFS)=",
            "/etc/slurm/slurm.conf",
        ],
    );
    assert!(
        conf.stdout
            .contains("SlurmdSpoolDir=/var/lib/slurm/%n/spool")
            && conf.stdout.contains("TmpFS=/var/tmp/slurm-tmp"),
        "{}",
        conf.all()
    );
    let p = script("dave", "e2e-allreduce.py", ALLREDUCE);
    let (r, job) = dave_job(3, &format!(
        "srun --mpi=pmix --mnd-image={IMAGE} python3 {p}; \
         srun --mpi=pmix --ntasks-per-node=1 --mnd-image={IMAGE} sh -c \
         'echo \"$(hostname) server=$(findmnt -n -o TARGET \"$PMIX_SERVER_TMPDIR\") client=$(findmnt -n -o TARGET /var/tmp/slurm-tmp/spmix_appdir_$(id -u)_${{SLURM_JOB_ID}}.1)\"'"
    ));
    every_rank_summed(&r);
    // The server's folder (Slurm's spool, root's) is mounted where the site keeps it; the
    // clients' folder (in the site's tmp, where anyone may plant a name) is not: the
    // tasks make their own in the container, and MPI runs all the same.
    for node in NODES {
        let want = format!("{node} server=/var/lib/slurm/{node}/spool/pmix.{job}.1 client=\n");
        assert!(r.stdout.contains(&want), "no '{want}':\n{}", r.all());
    }
    assert_clean(&format!("mnd-dave-{job}"), CLEAN);
}

#[test]
fn hosts_mode_mpirun_allreduce_of_8_mib_over_three_docker_nodes() {
    let _g = shared();
    nodes_have_docker0();
    let p = script("bob", "e2e-allreduce.py", ALLREDUCE);
    let s = script(
        "bob",
        "e2e-hosts-allreduce.sh",
        &format!("#!/bin/bash\nmpirun -H \"$hostlist\" -np \"$np\" python3 {p}\n"),
    );
    let hostfile = script(
        "bob",
        "e2e-hosts-allreduce.hosts",
        "node1 slots=2\nnode2 slots=2\nnode3 slots=2\n",
    );
    let name = unique("hostsar");
    let r = bob_on(
        "node1",
        &format!(
            "timeout 180 mnd-srun --hostfile ./{hostfile} --container={IMAGE} --dockname={name} --script=./{s}"
        ),
    );
    every_rank_summed(&r);
    assert_clean(&name, CLEAN);
}

#[test]
fn a_users_own_network_values_are_never_overwritten() {
    let _g = shared();
    // Direct mode: the job's values win; MND_NO_NET_DEFAULTS turns ours off.
    let show = "echo \"$(hostname) btl=$OMPI_MCA_btl_tcp_if_include nccl=$NCCL_SOCKET_IFNAME gloo=$GLOO_SOCKET_IFNAME\"";
    let (r, job) = dave_job(3, &format!(
        "export OMPI_MCA_btl_tcp_if_include=eth0 NCCL_SOCKET_IFNAME=lo; \
         srun -N1 -n1 --mnd-image={IMAGE} sh -c '{show}'; \
         MND_NO_NET_DEFAULTS=1 srun -N1 -n1 --mnd-image={IMAGE} sh -c 'echo off: ${{GLOO_SOCKET_IFNAME:-unset}}'"
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("btl=eth0 nccl=lo gloo=eth0"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("off: unset"), "{}", r.all());
    assert_clean(&format!("mnd-dave-{job}"), CLEAN);
    // The launcher: an exported value reaches the job as it is.
    let s = script("alice", "e2e-own-net.sh", &format!("#!/bin/bash\n{show}\n"));
    let name = unique("ownnet");
    let r = alice(&format!(
        "export OMPI_MCA_btl_tcp_if_include=eth0 NCCL_SOCKET_IFNAME=lo; timeout 120 {} --script=./{s}",
        srun_line(1, &name, "")
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("btl=eth0 nccl=lo gloo=eth0"),
        "{}",
        r.all()
    );
    assert_clean(&name, CLEAN);
}

#[test]
fn pytorch_ddp_in_direct_mode_with_plain_srun_tasks() {
    let _g = shared();
    let image = torch_image();
    // As a pyxis user writes it: rank and size from Slurm, MASTER_ADDR from the job.
    let train = "import os, torch, torch.distributed as dist\n\
dist.init_process_group('gloo', rank=int(os.environ['SLURM_PROCID']), world_size=int(os.environ['SLURM_NTASKS']))\n\
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))\n\
model(torch.ones(8, 4)).sum().backward()\n\
grad = model.module.weight.grad.clone()\n\
dist.all_reduce(grad)\n\
print(f'rank {dist.get_rank()}/{dist.get_world_size()} grad-sum {grad.sum().item():.1f}', flush=True)\n";
    let p = script("dave", "e2e-ddp.py", train);
    let (r, job) = dave_job(3, &format!(
        "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1) MASTER_PORT=29517; \
         srun -n3 --ntasks-per-node=1 --mnd-image={image} python3 {p}"
    ));
    assert_eq!(r.code, 0, "{}", r.all());
    for rank in 0..3 {
        let want = format!("rank {rank}/3 grad-sum 96.0");
        assert!(r.stdout.contains(&want), "expected '{want}':\n{}", r.all());
    }
    assert_clean(&format!("mnd-dave-{job}"), CLEAN);
}
