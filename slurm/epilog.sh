#!/bin/sh
# Slurm Epilog for mnd-srun: removes the ending job's containers on this node.
# Slurm runs it as root on every node of the job, with SLURM_JOB_ID set and no PATH.
# It always exits 0: a non-zero Epilog would drain the node.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
[ -n "$SLURM_JOB_ID" ] || exit 0
for mnd in "$MND_BIN" /opt/mnd-srun/bin/mnd /opt/mnd/bin/mnd /usr/local/bin/mnd /usr/bin/mnd; do
  [ -n "$mnd" ] && [ -x "$mnd" ] && break
  mnd=
done
if [ -z "$mnd" ]; then
  echo "mnd-srun epilog: no mnd binary found (set MND_BIN in the epilog); nothing cleaned" >&2
  exit 0
fi
timeout 60 "$mnd" cleanup --job "$SLURM_JOB_ID" --all-users || \
  echo "mnd-srun epilog: cleanup of job $SLURM_JOB_ID failed or timed out" >&2
# Images direct mode's root side pulled for this job and no running job uses any more.
timeout 60 "$mnd" image prune --pulled --job "$SLURM_JOB_ID" || \
  echo "mnd-srun epilog: pruning the images pulled for job $SLURM_JOB_ID failed or timed out" >&2
# The SPANK plugin's step files of the job (left when a slurmstepd was killed; the plugin's
# runtime_dir, default /run/mnd-spank).
case "$SLURM_JOB_ID" in
  *[!0-9]*) ;;
  *) rm -f "${MND_SPANK_RUNTIME_DIR:-/run/mnd-spank}/$SLURM_JOB_ID".* ;;
esac
exit 0
