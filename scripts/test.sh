#!/usr/bin/env bash
# Runs every Berth test on a Debian 12 machine, as root:
#   1. installs what the build and the tests need (apt-get),
#   2. checks the pinned Rust toolchain (rust-toolchain.toml) without downloading one,
#   3. checks formatting and lints (rustfmt, clippy with the workspace lints as errors),
#      and runs the unit tests of every crate,
#   4. builds the binaries and runs the end-to-end tests through the e2e harness, which
#      gives them a private node network namespace, a loopback registry with the test
#      images, and fails the run if anything is left behind.
# Exits non-zero on any failure. CI runs it through .ci/run.
#
# Environment: BERTH_E2E_TEST_THREADS (default 2) sets cargo test's --test-threads for
# the e2e tests; BERTH_E2E_TIMEOUT (seconds, default 3600) bounds the e2e run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'scripts/test.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root: the end-to-end tests need network namespaces, mounts and cgroups"

# ---- packages ---------------------------------------------------------------------------
PACKAGES=(
  protobuf-compiler build-essential pkg-config   # build (k8s-cri needs protoc)
  docker-registry                                # the loopback registry of the e2e harness
  busybox                                        # the test images' userland (dynamic, not busybox-static)
  iproute2 nftables iptables util-linux procps ca-certificates
  apparmor                                       # apparmor_parser compiles the default AppArmor profile in a unit test
  containernetworking-plugins                    # CNI mode is tested with Debian's plugins
  runc crun                                      # RuntimeClass handlers are tested with Debian's runtimes
  golang-go golang-github-masterminds-sprig-dev golang-github-burntsushi-toml-dev golang-k8s-sigs-yaml-dev systemd python3-venv  # the Helm chart and unit (scripts/test-chart.sh)
  systemd-container mmdebstrap                   # the systemd driver is tested in a systemd-nspawn node (e2e/tests/systemd.rs)
)
missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  # The harness runs its own registry inside its netns; the docker-registry package's
  # service is not needed, so keep package scripts from starting services during the
  # install (the standard policy-rc.d mechanism), unless the machine already has a policy.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
    trap 'if [[ $own_policy == 1 ]]; then rm -f "$policy"; fi' EXIT
  fi
  apt-get update -q </dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
  if [[ $own_policy == 1 ]]; then
    rm -f "$policy"
    own_policy=0
  fi
fi
[[ -x /usr/bin/docker-registry ]] || die "/usr/bin/docker-registry is missing after installing docker-registry"

# ---- Rust toolchain ---------------------------------------------------------------------
BERTH_TOP=$PWD
export BERTH_TOP
# shellcheck source=scripts/deps.sh
source scripts/deps.sh
ensure_toolchain || die "the Rust toolchain named in rust-toolchain.toml is not available"
step "toolchain: $(rustc --version)"

# ---- conventions ------------------------------------------------------------------------
# The workspace lints (Cargo.toml's [workspace.lints]: SAFETY comments, docs, no unsafe
# operation outside an unsafe block) and every clippy warning are errors; the code is
# formatted as rustfmt formats it. A failure here is reported at the end.
step "conventions: cargo fmt --all --check; cargo clippy --workspace --all-targets -- -D warnings"
set +e
cargo fmt --all --check
fmt_rc=$?
cargo clippy --workspace --all-targets -- -D warnings
clippy_rc=$?
set -e

# ---- unit tests -------------------------------------------------------------------------
# A failure here is reported at the end; the end-to-end tests still run.
started=$SECONDS
step "unit tests: cargo test --workspace --exclude berth-e2e"
set +e
cargo test --workspace --exclude berth-e2e --no-fail-fast
unit_rc=$?
set -e
unit_time=$((SECONDS - started))

# ---- end-to-end tests -------------------------------------------------------------------
step "building binaries and e2e tests"
started=$SECONDS
cargo build --workspace --bins
cargo test -p berth-e2e --no-run
build_time=$((SECONDS - started))

# The Debian 12 root the systemd driver's test boots with systemd-nspawn: built once from the
# Debian mirror (outside the harness's netns, which has no route out) and cached under the
# target dir, keyed on what it is made from.
step "Debian root for the systemd test: scripts/nspawn-rootfs.sh"
started=$SECONDS
BERTH_E2E_NSPAWN_ROOTFS=$(bash scripts/nspawn-rootfs.sh)
export BERTH_E2E_NSPAWN_ROOTFS
rootfs_time=$((SECONDS - started))

threads=${BERTH_E2E_TEST_THREADS:-2}
timeout=${BERTH_E2E_TIMEOUT:-3600}
step "e2e tests through the harness: cargo test -p berth-e2e -- --test-threads=$threads"
started=$SECONDS
# The harness runs in the background so that a SIGTERM or SIGINT sent to this script is
# passed on to it (by its PID); it then stops the tests and cleans up before exiting.
cargo run -q -p berth-e2e --bin harness -- --timeout "$timeout" \
  cargo test -p berth-e2e --offline --no-fail-fast -- --test-threads="$threads" &
harness=$!
trap 'kill -TERM "$harness" 2>/dev/null || true' TERM INT HUP
set +e
while :; do
  wait "$harness"
  rc=$?
  kill -0 "$harness" 2>/dev/null || break
done
set -e
trap - TERM INT HUP
e2e_time=$((SECONDS - started))

# ---- benchmark smoke run -----------------------------------------------------------------
# Every step of the benchmark, once, Berth alone; no figure is checked (shared CI machines
# are too noisy to gate on timings). The full side-by-side run is scripts/bench.sh.
step "benchmark smoke run: scripts/bench.sh --smoke"
set +e
BERTH_BENCH_PROFILE=debug bash scripts/bench.sh --smoke
bench_rc=$?
set -e

# ---- packaging ---------------------------------------------------------------------------
# The Helm chart rendered and schema-checked, its installer script, the systemd unit.
step "Helm chart and systemd unit: scripts/test-chart.sh"
set +e
bash scripts/test-chart.sh
chart_rc=$?
set -e

step "unit tests ${unit_time}s, build ${build_time}s, nspawn root ${rootfs_time}s, e2e ${e2e_time}s"
failed=()
((bench_rc == 0)) || failed+=("benchmark smoke run (exit $bench_rc)")
((chart_rc == 0)) || failed+=("Helm chart and systemd unit (exit $chart_rc)")
((fmt_rc == 0)) || failed+=("formatting (cargo fmt --check exit $fmt_rc)")
((clippy_rc == 0)) || failed+=("clippy (exit $clippy_rc)")
((unit_rc == 0)) || failed+=("unit tests (cargo exit $unit_rc)")
((rc == 0)) || failed+=("end-to-end tests (harness exit $rc)")
if ((${#failed[@]})); then
  die "FAILED: ${failed[*]}"
fi
step "all tests passed"
