#!/usr/bin/env bash
# The benchmark: Berth and containerd side by side on this machine, over their
# CRI sockets, inside the e2e harness's node namespace and loopback registry.
#   bash scripts/bench.sh [--iterations N] [--pods N] [--density N,N] [--restart-pods N] [--json PATH] [--svg PATH]
#                                                       # full run: Markdown report, JSON, SVG
#   bash scripts/bench.sh --smoke                       # Berth only, once (CI)
# Installs containerd and runc (Debian packages) for the comparison; Berth never uses them.
# Release builds. Run scripts/test.sh once first on a fresh machine (test packages).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $(id -u) -eq 0 ]] || { echo "scripts/bench.sh: run as root" >&2; exit 1; }
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [[ " $* " != *" --smoke "* ]] && ! command -v containerd >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    containerd runc containernetworking-plugins
fi
profile=${BERTH_BENCH_PROFILE:-release}
flag=(--release); [[ $profile == debug ]] && flag=()
cargo build "${flag[@]}" -p berth-cri -p berth-runtime -p berth-e2e --bins
exec "target/$profile/harness" --timeout 3600 -- "target/$profile/bench" "$@"
