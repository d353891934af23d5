#!/usr/bin/env bash
# Site-wide install of mnd-srun: binaries, man pages, completions, the Slurm Epilog, an
# example site config, and module files (Lmod and Environment Modules); with --plugin also
# the SPANK plugin (direct mode, users outside the docker group).
#
#   scripts/install.sh [--prefix DIR] [--plugin]   install (default /opt/mnd-srun); safe to re-run
#   scripts/install.sh [--prefix DIR] --uninstall  remove exactly what was installed
# --plugin builds lib/mnd_spank.so against this machine's Slurm headers (22.05 to 26.05;
# installs Debian's libslurm-dev and libclang-dev when missing) and prints the
# plugstack.conf line. MND_SLURM_INCLUDE=DIR builds it for the Slurm whose headers are in
# DIR/slurm instead (nodes that run another Slurm than this machine).
# DESTDIR=/stage puts the files under /stage/DIR while they refer to DIR (packaging, or a
# prefix that is mounted elsewhere on the nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/opt/mnd-srun
uninstall=0
plugin=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a folder" >&2; exit 2; }; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --uninstall) uninstall=1; shift ;;
    --plugin) plugin=1; shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (use --prefix DIR, --plugin, --uninstall)" >&2; exit 2 ;;
  esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be an absolute path, got '$prefix'" >&2; exit 2 ;; esac
dest=${DESTDIR:-}$prefix
manifest=$dest/share/mnd-srun/installed-files

if [ "$uninstall" = 1 ]; then
  [ -f "$manifest" ] || { echo "install.sh: nothing installed in $prefix (no $manifest)" >&2; exit 1; }
  dirs=$(while read -r f; do rm -f "$dest/$f"; d=$(dirname "$f"); while [ "$d" != . ]; do echo "$d"; d=$(dirname "$d"); done; done <"$manifest" | sort -ru)
  # Folders the install used, deepest first, only when nothing else is in them.
  for d in $dirs; do rmdir "$dest/$d" 2>/dev/null || true; done
  rmdir "$dest" 2>/dev/null || true
  echo "mnd-srun removed from $dest"
  exit 0
fi

# MND_INSTALL_FROM=DIR installs binaries already built there (tests); default: a release build.
bin_dir=${MND_INSTALL_FROM:-target/release}
if [ -z "${MND_INSTALL_FROM:-}" ]; then
  echo "== building (release)"
  cargo build --release --bins -q
fi
[ -x "$bin_dir/mnd-srun" ] && [ -x "$bin_dir/mnd" ] || { echo "install.sh: no mnd-srun/mnd in $bin_dir" >&2; exit 1; }
plugin_so=
if [ "$plugin" = 1 ]; then
  missing=
  for p in libslurm-dev libclang-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "== installing build dependencies of the plugin:$missing"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null ||
      { echo "install.sh: apt-get install$missing failed" >&2; exit 1; }
  fi
  # The plugin is built for one Slurm major.minor (slurmstepd refuses any other): the one
  # of the headers, which must be the one srun has where there is an srun (unless the
  # headers are another Slurm's, named by MND_SLURM_INCLUDE).
  include=${MND_SLURM_INCLUDE:-/usr/include}
  [ -f "$include/slurm/slurm_version.h" ] || { echo "install.sh: no Slurm headers in $include/slurm (install libslurm-dev, or set MND_SLURM_INCLUDE)" >&2; exit 1; }
  number=$(sed -n 's/^#define SLURM_VERSION_NUMBER 0x\([0-9a-fA-F]*\)/\1/p' "$include/slurm/slurm_version.h")
  headers=$([ -n "$number" ] && printf '%d.%02d.%d' "0x${number:0:2}" "0x${number:2:2}" "0x${number:4:2}")
  runs=$(srun -V 2>/dev/null | awk '{print $2}' || true)
  features=
  case "$headers" in
    22.05.*) ;;
    23.11.*|2[4-9].*) features="--no-default-features --features slurm-23" ;;
    *) echo "install.sh: --plugin builds for Slurm 22.05 to 26.05; the headers in $include are '$headers'" >&2; exit 1 ;;
  esac
  if [ -z "${MND_SLURM_INCLUDE:-}" ] && [ -n "$runs" ] && [ "${runs%.*}" != "${headers%.*}" ]; then
    echo "install.sh: srun here is Slurm $runs but the headers are $headers: install the libslurm-dev of the running Slurm (slurmstepd loads a plugin only of its own major.minor)" >&2
    exit 1
  fi
  export MND_SLURM_INCLUDE=$include
  [ "$include" = /usr/include ] || export BINDGEN_EXTRA_CLANG_ARGS="-I$include"
  # The plugin follows the binaries' profile: release, or the folder MND_INSTALL_FROM names.
  profile=release
  [ -n "${MND_INSTALL_FROM:-}" ] && [ "$(basename "$bin_dir")" = debug ] && profile=dev
  echo "== building the SPANK plugin for Slurm $headers ($profile)"
  # Another Slurm's headers build in a folder of their own (the bindings are generated
  # from the headers, and cargo would not know they changed).
  plugin_dir=$bin_dir
  if [ "$include" != /usr/include ]; then
    plugin_target=target/slurm-${headers%.*}
    plugin_dir=$plugin_target/$([ "$profile" = dev ] && echo debug || echo release)
    export CARGO_TARGET_DIR=$plugin_target
  fi
  # shellcheck disable=SC2086
  cargo build -q --profile "$profile" -p mnd-spank $features
  unset CARGO_TARGET_DIR
  plugin_so=$plugin_dir/libmnd_spank.so
  [ -f "$plugin_so" ] || { echo "install.sh: the plugin build left no $plugin_so" >&2; exit 1; }
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stage=$tmp/stage
mkdir -p "$stage"/{bin,share/man/man1,share/man/man8,share/bash-completion/completions,share/zsh/site-functions,share/fish/vendor_completions.d,slurm,etc,modulefiles/lmod/mnd-srun,modulefiles/tcl/mnd-srun,share/mnd-srun}
install -m 0755 "$bin_dir/mnd-srun" "$bin_dir/mnd" "$stage/bin/"
install -m 0644 man/mnd-srun.1 man/mnd.1 "$stage/share/man/man1/"
install -m 0644 man/mnd_spank.8 "$stage/share/man/man8/"
for cmd in mnd-srun mnd; do
  "$bin_dir/mnd" completions bash --command "$cmd" >"$stage/share/bash-completion/completions/$cmd"
  "$bin_dir/mnd" completions zsh --command "$cmd" >"$stage/share/zsh/site-functions/_$cmd"
  "$bin_dir/mnd" completions fish --command "$cmd" >"$stage/share/fish/vendor_completions.d/$cmd.fish"
done
sed "s|^for mnd in \"\$MND_BIN\" |for mnd in \"\$MND_BIN\" $prefix/bin/mnd |" slurm/epilog.sh >"$stage/slurm/epilog.sh"
chmod 0755 "$stage/slurm/epilog.sh"
install -m 0644 slurm/slurm.conf.snippet "$stage/slurm/"
sed -i "s|/opt/mnd-srun/slurm/epilog.sh|$prefix/slurm/epilog.sh|" "$stage/slurm/slurm.conf.snippet"
install -m 0644 slurm/config.toml.example "$stage/etc/config.toml.example"
plugstack_line="required $prefix/lib/mnd_spank.so helper=$prefix/bin/mnd"
if [ -n "$plugin_so" ]; then
  mkdir -p "$stage/lib"
  install -m 0755 "$plugin_so" "$stage/lib/mnd_spank.so"
  sed "s|/opt/mnd-srun/|$prefix/|g" slurm/plugstack.conf.example >"$stage/slurm/plugstack.conf.example"
fi
version=$("$bin_dir/mnd-srun" --version | awk '{print $2}')
cat >"$stage/modulefiles/lmod/mnd-srun/$version.lua" <<LUA
-- Lmod module for mnd-srun $version
whatis("mnd-srun: run Docker containers across the nodes of a Slurm step")
prepend_path("PATH", "$prefix/bin")
prepend_path("MANPATH", "$prefix/share/man")
LUA
cat >"$stage/modulefiles/tcl/mnd-srun/$version" <<TCL
#%Module1.0
## Environment Modules (Tcl) module for mnd-srun $version
module-whatis "mnd-srun: run Docker containers across the nodes of a Slurm step"
prepend-path PATH $prefix/bin
prepend-path MANPATH $prefix/share/man
TCL
(cd "$stage" && find . -type f | sed 's|^\./||' | sort) >"$stage/share/mnd-srun/installed-files"
echo "share/mnd-srun/installed-files" >>"$stage/share/mnd-srun/installed-files"
mkdir -p "$dest"
# Copy file by file: re-running replaces what is there, nothing else in the prefix is touched.
(cd "$stage" && find . -type f) | while read -r f; do
  mkdir -p "$dest/$(dirname "$f")"
  install -m "$(stat -c %a "$stage/$f")" "$stage/$f" "$dest/$f"
done
chmod -R go-w "$dest"
echo "mnd-srun $version installed in $dest"
echo "  users:  module use $prefix/modulefiles/lmod && module load mnd-srun   (Lmod)"
echo "          module use $prefix/modulefiles/tcl && module load mnd-srun    (Environment Modules)"
echo "  admins: add to slurm.conf: Epilog=$prefix/slurm/epilog.sh (see $prefix/slurm/slurm.conf.snippet)"
echo "          site config: cp $prefix/etc/config.toml.example /etc/mnd-srun/config.toml"
if [ -n "$plugin_so" ]; then
  echo "  plugin: add this line to /etc/slurm/plugstack.conf on every node and login node"
  echo "          (see $prefix/slurm/plugstack.conf.example for config= and runtime_dir=):"
  echo "$plugstack_line"
fi
