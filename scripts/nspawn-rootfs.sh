#!/usr/bin/env bash
# Builds the Debian 12 root that the systemd e2e test (e2e/tests/systemd.rs) boots with
# systemd-nspawn, unless it is cached already, and prints its path. Run as root (mmdebstrap
# makes device nodes and owns files as their packages say).
#
# The root is mmdebstrap's "essential" variant plus systemd (as init) and dbus: Berth's
# binaries are bound in read-only at test time and need only glibc, and the test's pods use
# the node's network, so no network tools are installed.
#
# Cache: ${BERTH_NSPAWN_CACHE:-${CARGO_TARGET_DIR:-target}/nspawn}/debian-<key>, where <key>
# hashes everything the root is made from (suite, variant, packages, mirror); a changed
# input makes a new directory, and older ones are removed. Environment:
# BERTH_NSPAWN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { printf 'scripts/nspawn-rootfs.sh: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"

suite=bookworm
variant=essential
packages=systemd,systemd-sysv,dbus
mirror=${BERTH_NSPAWN_MIRROR:-http://deb.debian.org/debian}
cache=${BERTH_NSPAWN_CACHE:-${CARGO_TARGET_DIR:-target}/nspawn}
key=$(printf '%s\n' "$suite" "$variant" "$packages" "$mirror" | sha256sum | cut -c1-16)
dir=$cache/debian-$key

if [[ ! -e $dir/.berth-complete ]]; then
  mkdir -p "$cache"
  # Roots made from other inputs, and a build that was interrupted.
  find "$cache" -mindepth 1 -maxdepth 1 -name 'debian-*' -exec rm -rf {} +
  started=$SECONDS
  mmdebstrap --quiet --variant="$variant" --include="$packages" "$suite" "$dir.tmp" "$mirror" >&2
  touch "$dir.tmp/.berth-complete"
  mv "$dir.tmp" "$dir"
  printf 'scripts/nspawn-rootfs.sh: built %s in %ss\n' "$dir" $((SECONDS - started)) >&2
fi
realpath "$dir"
