#!/usr/bin/env bash
# The benchmark: Berth (built-in network and CNI mode) and containerd side by side on this
# machine, over their CRI sockets, inside the e2e harness's node namespace and loopback
# registry.
#   bash scripts/bench.sh [--iterations N] [--pods N] [--density N,N] [--restart-pods N]
#                         [--node N] [--phases cold,pods,...] [--json PATH] [--svg PATH]
#                                                       # full run: Markdown report, JSON, SVG
#   bash scripts/bench.sh --runs 3 [...]                # three whole runs, each figure's
#                                                       # median and spread (bench merge)
#   bash scripts/bench.sh --smoke                       # Berth only, once (CI)
#   bash scripts/bench.sh --containerd /opt/ctrd-2.1/bin/containerd [...]
#                                   # compare with that containerd (its shim beside it)
#   bash scripts/bench.sh --berth-only --phases node --node 500
#                                                       # Berth only, no comparison: to
#                                                       # iterate on one of its figures
# Installs containerd and runc (Debian packages) for the comparison; Berth never uses them.
# --containerd PATH (or BERTH_BENCH_CONTAINERD=PATH) compares with another containerd, e.g.
# 2.1 built from source, whose containerd-shim-runc-v2 is in the same directory; runc and
# the CNI plugins stay Debian's.
# Release builds. Run scripts/test.sh once first on a fresh machine (test packages).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $(id -u) -eq 0 ]] || { echo "scripts/bench.sh: run as root" >&2; exit 1; }
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
# --runs N is ours; --json and --svg name the merged outputs then; the rest goes to bench.
runs=1 json=target/bench/results.json svg=target/bench/latency.svg args=()
while (($#)); do
  case $1 in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --json) json=${2:?--json needs a value}; shift 2 ;;
    --svg) svg=${2:?--svg needs a value}; shift 2 ;;
    --containerd) export BERTH_BENCH_CONTAINERD=${2:?--containerd needs a value}; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "scripts/bench.sh: --runs: not a positive number: $runs" >&2; exit 2; }
if [[ -n ${BERTH_BENCH_CONTAINERD:-} ]]; then
  [[ -x $BERTH_BENCH_CONTAINERD && -x $(dirname "$BERTH_BENCH_CONTAINERD")/containerd-shim-runc-v2 ]] || {
    echo "scripts/bench.sh: --containerd: $BERTH_BENCH_CONTAINERD must be an executable with containerd-shim-runc-v2 beside it" >&2
    exit 2
  }
  # An absolute path: the benchmark runs from the harness, in another directory.
  BERTH_BENCH_CONTAINERD=$(realpath "$BERTH_BENCH_CONTAINERD")
fi
need=()
if [[ " ${args[*]} " != *" --smoke "* ]]; then
  command -v runc >/dev/null || need+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
  [[ -n ${BERTH_BENCH_CONTAINERD:-} ]] || command -v containerd >/dev/null || need+=(containerd)
fi
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
profile=${BERTH_BENCH_PROFILE:-release}
flag=(--release); [[ $profile == debug ]] && flag=()
cargo build "${flag[@]}" -p berth-cri -p berth-runtime -p berth-e2e --bins
harness=("target/$profile/harness" --timeout 7200 -- "target/$profile/bench")
if ((runs == 1)); then
  exec "${harness[@]}" "${args[@]}" --json "$json" --svg "$svg"
fi
# Each run in its own harness (fresh node namespace and registry, leak check); every run's
# report, JSON and SVG kept beside the merged ones.
outs=()
mkdir -p "$(dirname "$json")"
for ((k = 1; k <= runs; k++)); do
  base=${json%.json}.run$k
  echo "scripts/bench.sh: run $k of $runs" >&2
  "${harness[@]}" "${args[@]}" --json "$base.json" --svg "$base.svg" | tee "$base.md"
  outs+=("$base.json")
done
"target/$profile/bench" merge --json "$json" --svg "$svg" "${outs[@]}" | tee "${json%.json}.md"
