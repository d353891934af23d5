#!/usr/bin/env bash
# Demo: build mnd-srun, bring up a 3-node virtual Slurm + Docker cluster, and run a real
# multi-node MPI job through mnd-srun as the test user alice.
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
echo "== srun -N3 -n3 mnd-srun --container=mnd-vc-job:2 --script=./demo-job.sh   (as alice on node1)"
t1=$(date +%s.%N)
docker exec -u alice -w /shared/home/alice node1 srun -N3 -n3 mnd-srun --container=mnd-vc-job:2 --script=./demo-job.sh
t2=$(date +%s.%N)
left=0
for n in node1 node2 node3; do left=$((left + $(docker exec "$n" docker ps -aq --filter label=mnd.job | wc -l))); done
echo "== summary"
awk -v a="$t1" -v b="$t2" 'BEGIN { printf "job through mnd-srun on 3 nodes: %.2f s (srun start to srun exit)\n", b - a }'
echo "mnd containers left on the nodes: $left"
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "whole demo: %.0f s\n", b - a }'
echo "shell on a node: scripts/vcluster exec node1 runuser -u alice -- bash -l;  tear down: scripts/vcluster down"
