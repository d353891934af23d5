#!/usr/bin/env bash
# Builds the packages of mnd-srun for one Slurm major.minor (the plugin is built for one):
# target/debian/mnd-srun-slurm-X.Y_VERSION_amd64.deb and/or
# target/rpm/mnd-srun-slurm-X.Y-VERSION-1.slXXYY.x86_64.rpm, of the same files.
#
#   scripts/package.sh                         for this machine's Slurm headers
#   MND_SLURM_INCLUDE=DIR scripts/package.sh   for the Slurm whose headers are in DIR/slurm
#   MND_PACKAGE_FORMAT=rpm scripts/package.sh  the RPM (deb: the .deb, the default; both)
#
# MND_PACKAGE_PROFILE=dev packages debug binaries (the virtual cluster's tests). Needs
# cargo-deb and/or cargo-generate-rpm (installed with `cargo install` when missing) and the
# plugin's build dependencies (libslurm-dev for this machine's Slurm, libclang-dev). The
# variants per Slurm (package name, dependencies, RPM release) are in Cargo.toml;
# scripts/check-rpm.sh checks an RPM.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${MND_PACKAGE_PROFILE:-release}
format=${MND_PACKAGE_FORMAT:-deb}
case "$format" in
  deb) formats="deb" ;;
  rpm) formats="generate-rpm" ;;
  both) formats="deb generate-rpm" ;;
  *) echo "package.sh: MND_PACKAGE_FORMAT=$format: use deb, rpm or both" >&2; exit 1 ;;
esac
for tool in $formats; do
  command -v "cargo-$tool" >/dev/null 2>&1 || {
    echo "== installing cargo-$tool"
    cargo install -q --locked "cargo-$tool"
  }
done
include=${MND_SLURM_INCLUDE:-/usr/include}
version_h=$include/slurm/slurm_version.h
[ -f "$version_h" ] || { echo "package.sh: no Slurm headers in $include/slurm (install libslurm-dev, or set MND_SLURM_INCLUDE)" >&2; exit 1; }
number=$(sed -n 's/^#define SLURM_VERSION_NUMBER 0x\([0-9a-fA-F]*\)/\1/p' "$version_h")
slurm=$(printf '%d.%02d' "0x${number:0:2}" "0x${number:2:2}")
features=
case "$slurm" in
  22.05) ;;
  23.11|2[4-9].*) features="--no-default-features --features slurm-23" ;;
  *) echo "package.sh: Slurm $slurm is not supported (22.05 to 26.05)" >&2; exit 1 ;;
esac
variant=slurm-${slurm/./-}
for tool in $formats; do
  grep -q "^\[package.metadata.$tool.variants.$variant\]" Cargo.toml ||
    { echo "package.sh: no package variant for Slurm $slurm in Cargo.toml ([package.metadata.$tool.variants.$variant])" >&2; exit 1; }
done
dir=$([ "$profile" = dev ] && echo debug || echo release)
echo "== building mnd-srun and mnd ($profile)"
cargo build -q --profile "$profile" --bins
echo "== building the SPANK plugin for Slurm $slurm ($profile)"
plugin_target=target
if [ "$include" != /usr/include ]; then
  plugin_target=target/slurm-$slurm
  export BINDGEN_EXTRA_CLANG_ARGS="-I$include"
fi
# shellcheck disable=SC2086
MND_SLURM_INCLUDE=$include CARGO_TARGET_DIR=$plugin_target cargo build -q --profile "$profile" -p mnd-spank $features
mkdir -p target/package
install -m 0644 "$plugin_target/$dir/libmnd_spank.so" target/package/mnd_spank.so
for tool in $formats; do
  case "$tool" in
    deb)
      cargo deb -q --no-build --no-strip --profile "$profile" --variant "$variant" -o target/debian/ >/dev/null
      ls -1 target/debian/mnd-srun-slurm-"$slurm"_*.deb ;;
    generate-rpm)
      # zstd (level 19) for the packages sites install; a dev package, for tests only, goes
      # uncompressed (zstd takes minutes over its ~380 MB of debug binaries).
      payload=$([ "$profile" = dev ] && echo none || echo zstd)
      mkdir -p target/rpm
      cargo generate-rpm --profile "$profile" --variant "$variant" --payload-compress "$payload" -o target/rpm/
      ls -1 target/rpm/mnd-srun-slurm-"$slurm"-*.rpm ;;
  esac
done
