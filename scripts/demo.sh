#!/usr/bin/env bash
# Demo: build mnd-srun, bring up a 3-node virtual Slurm + Docker cluster (with the SPANK
# plugin installed), run a real multi-node MPI job through mnd-srun as the test user alice,
# then the same kind of work in direct mode as dave, who is not in the docker group.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s.%N)
echo "== building mnd-srun"
cargo build --bins -q
echo "== bringing up 3 nodes (first run builds the images: about 2 minutes)"
scripts/vcluster up 3
home=/var/lib/mnd-vcluster/shared/home/alice
cat >"$home/demo-job.sh" <<'JOB'
#!/bin/bash
echo "script runs on $(hostname) as $(id -un); hostlist=$hostlist np=$np MASTER_ADDR=$MASTER_ADDR"
echo "-- mpirun -H \$hostlist -np \$np hostname"
mpirun -H "$hostlist" -np "$np" hostname | sort
echo "-- mpi4py allreduce of rank+1 over $np ranks"
mpirun -H "$hostlist" -np "$np" python3 -c 'from mpi4py import MPI; c = MPI.COMM_WORLD; s = c.allreduce(c.rank + 1); print(f"rank {c.rank} on {MPI.Get_processor_name()}: sum = {s}")' | sort
echo "-- pdsh -w node[1-3]"
pdsh -w 'node[1-3]' 'echo NODE_RANK=$NODE_RANK' | sort
JOB
chmod 0755 "$home/demo-job.sh"
chown 1001:1001 "$home/demo-job.sh"
echo "== srun -N3 -n3 mnd-srun --container=mnd-vc-job:3 --script=./demo-job.sh   (as alice on node1)"
t1=$(date +%s.%N)
docker exec -u alice -w /shared/home/alice node1 srun -N3 -n3 mnd-srun --container=mnd-vc-job:3 --script=./demo-job.sh
t2=$(date +%s.%N)
echo "== srun -N3 --ntasks-per-node=2 --mpi=pmix --mnd-image=mnd-vc-job:3 python3 ...   (direct mode, as dave: not in group docker)"
t3=$(date +%s.%N)
docker exec -u dave -w /shared/home/dave -e PMIX_MCA_gds=hash node1 srun -N3 --ntasks-per-node=2 --mpi=pmix -l \
  --mnd-image=mnd-vc-job:3 python3 -c 'from mpi4py import MPI; import os; c = MPI.COMM_WORLD; print(f"rank {c.rank} of {c.size} on {MPI.Get_processor_name()} uid {os.getuid()}: sum = {c.allreduce(c.rank + 1)}")' | sort
t4=$(date +%s.%N)
# The plugin removes a step's containers as its slurmstepd ends, just after srun returns.
for _ in $(seq 50); do
  left=0
  for n in node1 node2 node3; do left=$((left + $(docker exec "$n" docker ps -aq --filter label=mnd.job | wc -l))); done
  [ "$left" = 0 ] && break
  sleep 0.1
done
echo "== summary"
awk -v a="$t1" -v b="$t2" 'BEGIN { printf "job through mnd-srun on 3 nodes: %.2f s (srun start to srun exit)\n", b - a }'
awk -v a="$t3" -v b="$t4" 'BEGIN { printf "direct-mode step of 6 tasks on 3 nodes: %.2f s (srun start to srun exit)\n", b - a }'
echo "mnd containers left on the nodes: $left"
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "whole demo: %.0f s\n", b - a }'
echo "shell on a node: scripts/vcluster exec node1 runuser -u alice -- bash -l;  tear down: scripts/vcluster down"
