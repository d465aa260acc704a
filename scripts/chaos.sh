#!/usr/bin/env bash
# The long chaos run: `bash scripts/chaos.sh [KILLS] [SEED]` (default 500
# kills, seed from the clock) kills the daemon with SIGKILL that many times while workers
# create, start, stop and remove pods and containers, through the e2e harness, and fails on
# any lost or resurrected object, anything unknown, or a leak. Run scripts/test.sh once first
# (it installs the packages the harness needs). Prints the figures SPECIFICATION.md records:
# kills, pod cycles, operations, removals acknowledged and checked, lost, resurrected,
# unknown, leaks, seconds, seed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $(id -u) -eq 0 ]] || { echo "scripts/chaos.sh: run as root" >&2; exit 1; }
export BERTH_CHAOS_KILLS=${1:-500}
[[ -n ${2:-} ]] && export BERTH_CHAOS_SEED=$2
cargo build --workspace --bins
cargo test -p berth-e2e --test chaos --no-run
exec cargo run -q -p berth-e2e --bin harness -- --timeout 14400 \
  cargo test -p berth-e2e --offline --test chaos -- --nocapture
