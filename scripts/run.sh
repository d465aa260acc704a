#!/usr/bin/env bash
# Builds Berth (installing its build dependencies) and runs the daemon with the default
# configuration, or with /etc/berth/config.toml when it exists. Extra arguments go to berth.
set -euo pipefail
BERTH_TOP=$(cd "$(dirname "$0")/.." && pwd)
export BERTH_TOP
# shellcheck source=scripts/deps.sh
. "$BERTH_TOP/scripts/deps.sh"

[ "$(id -u)" -eq 0 ] || { echo "berth runs pods: run this as root" >&2; exit 1; }
install_build_deps
cd "$BERTH_TOP"
cargo build --release --locked --bin berth --bin berth-monitor
exec "$BERTH_TOP/target/release/berth" "$@"
