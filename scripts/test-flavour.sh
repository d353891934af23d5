#!/usr/bin/env bash
# The core subset of the end-to-end suite on another Slurm: MND_VC_SLURM=24.11 or 26.05
# (scripts/test.sh runs everything on 22.05). The cluster is brought up (or switched) to
# that flavour; `scripts/vcluster up 3` switches it back. With MND_VC_INSTALL=deb mnd-srun
# is installed on the nodes by `dpkg -i` of its package, and at the end `dpkg -r` must
# leave none of the package's files.
#   direct mode with srun's PMIx and an 8 MiB allreduce, PMI-2's fd, the ssh mode's mpirun,
#   the site policy's refusals, scancel and a killed slurmstepd leaving nothing (the
#   Epilog), the hostile-user tests of PMIx links and swapped mounts, every pyxis option
#   (tests/e2e/pyxis), fabric profiles and GPUs by UUID through CDI where that Docker has
#   CDI (tests/e2e/fabric.rs), mnd doctor on a healthy and a broken install, and an image only the first node has reaching the others through
#   the image share (MUNGE of that Slurm's nodes vouching for it). With
#   MND_VC_DOCKER_STORE=containerd the nodes' Docker keeps images in containerd (Docker
#   29's default for new installs), and the tests of what that store changes run too.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${MND_VC_SLURM:-}
case "$flavour" in
  22.05|24.11|26.05) ;;
  *) echo "test-flavour.sh: set MND_VC_SLURM to 22.05, 24.11 or 26.05 (got '$flavour')" >&2; exit 2 ;;
esac
t0=$(date +%s)
cargo build --bins
scripts/vcluster up 3 --slurm "$flavour"
echo "== Slurm $flavour: cluster ready in $(( $(date +%s) - t0 )) s"
# Debian sid's Slurm 26.05.5 is built without mpi/pmix (no package ships mpi_pmix.so;
# `srun --mpi=list` names none, pmi2, cray_shasta): there direct mode's MPI wiring is
# tested through PMI-2 only.
# On Docker's containerd image store (MND_VC_DOCKER_STORE=containerd), also what that
# store does otherwise: ids, pull progress, a size limit it ignores, users' copies.
store_tests=()
[ "${MND_VC_DOCKER_STORE:-}" != containerd ] || store_tests=(
  images::a_slow_pull_outlasts_the_wait_timeout_and_a_stalled_one_fails_naming_the_node
  images::an_image_only_on_node1_reaches_the_other_nodes_through_the_share_once
  images::a_users_copy_of_the_image_is_made_once_and_goes_when_the_image_loses_its_name
  images::a_users_copy_of_a_pulled_image_goes_with_it_even_where_docker_stops_listing_it
  hostile::a_writable_layer_limit_the_storage_driver_cannot_keep_is_named
)
pmix=mpi::direct_mode_pmix_allreduce_of_8_mib_with_the_pmix_folder_mounted
later_pmix=direct::later_pmix_steps_on_a_named_container_run_too
if [ "$flavour" = 26.05 ]; then
  pmix=mpi::direct_mode_pmi2_hands_each_task_its_fd_and_ranks_exchange_keys
  later_pmix=$pmix
fi
cargo test --test e2e -- --test-threads=3 \
  "$pmix" \
  "$later_pmix" \
  images::a_share_archive_that_unpacks_past_its_signed_size_is_cut_off_while_it_streams \
  mpi::direct_mode_pmi2_hands_each_task_its_fd_and_ranks_exchange_keys \
  mpi::ssh_mode_mpirun_allreduce_of_8_mib_over_three_docker_nodes \
  direct::the_root_side_enforces_the_site_policy_whatever_the_user_sends \
  direct::scancel_ends_the_step_and_leaves_nothing \
  direct::a_killed_slurmstepd_leaves_a_container_that_the_epilog_removes \
  direct::a_users_rust_log_changes_nothing_and_an_error_is_said_once \
  direct::an_image_whose_environment_outgrows_a_pipe_starts \
  hostile::a_link_planted_under_the_pmix_client_folders_name_shows_nothing \
  hostile::a_folder_swapped_for_a_link_while_steps_start_is_never_mounted \
  hostile::links_in_the_home_as_mount_targets_never_make_root_write_through_them \
  hostile::a_fifo_as_a_mount_source_is_refused_at_once_even_through_a_link_to_etc_passwd \
  hostile::the_containers_init_is_roots_program_never_the_images \
  hostile::a_stopped_save_writer_holds_nothing_of_roots \
  hostile::images_of_others_are_not_run_by_id_prefix_saved_name_or_forged_copy_label \
  pyxis:: \
  fabric:: \
  doctor:: \
  images::direct_mode_runs_an_image_only_node1_has_on_three_nodes_by_id_and_refuses_a_tampered_archive \
  images::a_node_still_pulling_when_srun_k_ends_the_step_stops_at_sigterm \
  teardown::every_process_of_the_job_is_gone_when_srun_returns \
  ${store_tests[@]+"${store_tests[@]}"}
echo "== Slurm $flavour: subset done in $(( $(date +%s) - t0 )) s"
# A plugin built for another Slurm (24.11's, on 26.05) is refused, and says for which
# Slurm it was built and which refused it.
if [ "$flavour" = 26.05 ]; then
  headers=/var/cache/mnd-vcluster/slurm-24.11/usr/include
  [ -f "$headers/slurm/slurm_version.h" ] ||
    { echo "test-flavour.sh: no Slurm 24.11 headers in $headers: run the 24.11 flavour first" >&2; exit 1; }
  MND_SLURM_INCLUDE=$headers BINDGEN_EXTRA_CLANG_ARGS="-I$headers" CARGO_TARGET_DIR=target/slurm-24.11 \
    cargo build -q -p mnd-spank --no-default-features --features slurm-23
  cp target/slurm-24.11/debug/libmnd_spank.so /var/lib/mnd-vcluster/shared/e2e-plugin-24.11.so
  said=$(docker exec -u alice -w /shared/home/alice node1 sh -c '
    rm -rf /tmp/e2e-sc && cp -r /etc/slurm /tmp/e2e-sc &&
    echo "required /shared/e2e-plugin-24.11.so" > /tmp/e2e-sc/plugstack.conf &&
    echo "PlugStackConfig=/tmp/e2e-sc/plugstack.conf" >> /tmp/e2e-sc/slurm.conf &&
    SLURM_CONF=/tmp/e2e-sc/slurm.conf srun -N1 true; rm -rf /tmp/e2e-sc' 2>&1 || true)
  rm -f /var/lib/mnd-vcluster/shared/e2e-plugin-24.11.so
  case "$said" in
    *"built for Slurm 24.11 and Slurm 26.05"*) echo "== a 24.11 plugin on 26.05 says: $(echo "$said" | grep -m1 'mnd_spank:')" ;;
    *) echo "test-flavour.sh: the 24.11 plugin loaded by Slurm 26.05 did not name both versions: $said" >&2; exit 1 ;;
  esac
fi
if [ "${MND_VC_INSTALL:-}" = deb ]; then
  for node in node1 node2 node3; do
    left=$(docker exec "$node" sh -c '
      pkg=$(dpkg-query -W -f="\${Package}" "mnd-srun-slurm-*") || { echo "no package installed"; exit 0; }
      files=$(dpkg -L "$pkg")
      dpkg -r "$pkg" >/dev/null
      rm -f /var/lib/mnd-vc-installed.deb /etc/slurm/plugstack.conf.d/mnd-srun.conf
      for f in $files; do [ -d "$f" ] || { [ -e "$f" ] && echo "$f"; }; done
      [ ! -e /usr/lib/mnd-srun ] || echo /usr/lib/mnd-srun')
    [ -z "$left" ] || { echo "test-flavour.sh: dpkg -r left on $node: $left" >&2; exit 1; }
    echo "== $node: dpkg -r left none of the package's files"
  done
fi
