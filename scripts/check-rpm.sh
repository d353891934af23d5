#!/usr/bin/env bash
# Checks an RPM of mnd-srun that scripts/package.sh built (MND_PACKAGE_FORMAT=rpm):
#
#   scripts/check-rpm.sh target/rpm/mnd-srun-slurm-X.Y-VERSION-1.slXXYY.x86_64.rpm
#
# - its files and their modes are the .deb's (the assets of [package.metadata.deb] in
#   Cargo.toml);
# - its name, release and dependencies fit one Slurm: mnd-srun-slurm-X.Y, release 1.slXXYY,
#   Requires libslurm.so.NN()(64bit) (no slurmd package), Provides and Conflicts mnd-srun;
# - `rpm -i` into a scratch root (--nodeps: the root has no Slurm) puts every file where
#   it says, as the package says (rpm -V), and `rpm -e` takes every one away, and the
#   package's folders with them (its %postun), leaving the root as it was.
# Exits non-zero, saying what, on the first of these that fails. Needs root and rpm
# (Debian's `apt-get install rpm`); no RHEL machine is involved.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] && [ -f "$1" ] || { echo "usage: scripts/check-rpm.sh FILE.rpm" >&2; exit 2; }
rpmfile=$(realpath "$1")
command -v rpm >/dev/null || { echo "check-rpm.sh: rpm is missing (apt-get install rpm)" >&2; exit 2; }
fail() { echo "check-rpm.sh: $*" >&2; exit 1; }
# Debian's rpm warns on every install and erase unless told it is meant.
change=(rpm)
rpm --help 2>&1 | grep -- --force-debian >/dev/null && change+=(--force-debian)
q() { rpm -qp --nosignature "$@" "$rpmfile"; }

name=$(q --qf '%{NAME}')
release=$(q --qf '%{RELEASE}')
echo "== $name $(q --qf '%{VERSION}-%{RELEASE}.%{ARCH}')"

# Name, release and dependencies.
slurm=${name#mnd-srun-slurm-}
[[ $slurm =~ ^[0-9]{2}\.[0-9]{2}$ ]] || fail "name $name is not mnd-srun-slurm-X.Y"
[ "$release" = "1.sl${slurm/./}" ] || fail "release $release does not name Slurm $slurm (1.sl${slurm/./})"
requires=$(q -R)
echo "$requires" | sort -u | grep -v '(GLIBC_\|(GCC_' | sed 's/^/   Requires: /'
echo "   (and $(echo "$requires" | grep -c '(GLIBC_\|(GCC_') symbol versions of libc, libm and libgcc_s)"
libslurm=$(echo "$requires" | grep -cE '^libslurm\.so\.[0-9]+\(\)\(64bit\)$' || true)
[ "$libslurm" = 1 ] || fail "Requires names $libslurm libslurm.so sonames, not one"
! echo "$requires" | grep slurmd >/dev/null || fail "Requires names a slurmd package (sites name it differently)"
q --provides | grep -x 'mnd-srun' >/dev/null || fail "does not Provide mnd-srun"
q --conflicts | grep -x 'mnd-srun' >/dev/null || fail "does not Conflict with mnd-srun"

# Files and modes: those of the .deb's assets (DEST ending in / takes the source's name).
want=$(sed -n '/^\[package.metadata.deb\]/,/^\[/p' Cargo.toml |
  sed -n '/^assets = \[/,/^\]/s/^ *\["\([^"]*\)", "\([^"]*\)", "\([0-7]*\)"\],*$/\1 \2 \3/p' |
  while read -r src dest mode; do
    case "$dest" in */) dest=$dest$(basename "$src") ;; esac
    echo "/$dest $mode"
  done | sort)
[ -n "$want" ] || fail "no assets found in Cargo.toml's [package.metadata.deb]"
listing=$(q --qf '[%{FILEMODES:octal} %{FILENAMES}\n]')
files=$(echo "$listing" | sed -n 's/^100\([0-7]\{3\}\) \(.*\)$/\2 \1/p' | sort)
[ "$files" = "$want" ] || {
  diff <(echo "$want") <(echo "$files") | sed 's/^/   /' >&2
  fail "its files differ from the .deb's assets (< Cargo.toml's deb assets, > the RPM)"
}
echo "   $(echo "$files" | wc -l) files, as the .deb's assets, with their modes"

# Install into a scratch root and erase: every file arrives, every file and folder goes.
root=$(mktemp -d /tmp/rpmroot.XXXXXX)
trap 'rm -rf "$root"' EXIT
db=/var/lib/rpm
# What a system has before the package: the filesystem package's folders, and /bin/sh and
# rmdir for the %postun (rpm runs scriptlets chrooted into the root, from /var/tmp; a
# regular file stands for /dev/null, which needs no privilege to make).
mkdir -p "$root"/usr/{bin,lib,share/doc,share/man/man1,share/man/man8} "$root"/{dev,var/tmp}
: >"$root/dev/null"
for prog in /bin/sh /bin/rmdir; do
  real=$(readlink -f "$prog")
  install -D "$real" "$root$prog"
  for lib in $(ldd "$real" | grep -o '/[^ ]*'); do
    [ -e "$root$lib" ] || install -D "$lib" "$root$lib"
  done
done
rpm --root="$root" --dbpath="$db" --initdb
before=$(cd "$root" && find . -path "./${db#/}" -prune -o -print | sort)
"${change[@]}" --root="$root" --dbpath="$db" --nodeps -i "$rpmfile"
while read -r path mode; do
  [ -f "$root$path" ] || fail "after rpm -i, $path is missing"
  [ "$(stat -c %a "$root$path")" = "$mode" ] || fail "after rpm -i, $path has mode $(stat -c %a "$root$path"), not $mode"
done <<<"$files"
rpm --root="$root" --dbpath="$db" -q "$name" >/dev/null || fail "rpm -q $name finds nothing after rpm -i"
# Sizes, digests, modes and owners as the package says.
verify=$(rpm --root="$root" --dbpath="$db" -V --nodeps "$name" 2>&1) || true
[ -z "$verify" ] || { echo "$verify" | sed 's/^/   /' >&2; fail "rpm -V finds installed files that differ from the package"; }
echo "   rpm -i into $root: every file there, rpm -V clean"
"${change[@]}" --root="$root" --dbpath="$db" -e "$name"
after=$(cd "$root" && find . -path "./${db#/}" -prune -o -print | sort)
[ "$before" = "$after" ] || {
  diff <(echo "$before") <(echo "$after") | sed 's/^/   /' >&2
  fail "rpm -e left the scratch root different from before rpm -i (> left behind, < removed)"
}
! rpm --root="$root" --dbpath="$db" -q "$name" >/dev/null 2>&1 || fail "rpm -q $name still finds it after rpm -e"
echo "   rpm -e: nothing left"
echo "== $name: ok"
