#!/usr/bin/env bash
# Tests the packaging: the Helm chart (charts/berth) and the systemd unit, on Debian 12 as
# root. scripts/test.sh runs it; it also runs alone.
#   1. installs what it needs: Go with sprig, toml and yaml (Debian packages) for the
#      chart renderer, systemd for systemd-analyze, and kubernetes-validate (PyPI, in a
#      venv; its Kubernetes schemas ship inside the package, so validation is offline),
#   2. runs the renderer's Go tests: every values file in charts/berth/tests/values renders
#      what it must, config.toml equals charts/berth/tests/golden/ (which the cri test
#      operator_docs.rs parses with Berth's own config parser),
#   3. renders the chart with the default values and with each values file and validates
#      every manifest against the Kubernetes schemas (strict: unknown fields fail) of the
#      oldest Kubernetes the chart supports and of the newest the validator knows,
#      and checks that config.toml (which may hold registry credentials) is in a Secret,
#      in no ConfigMap, and mounted 0600 in the installer pods,
#   4. runs the installer script (charts/berth/files/node.sh) against a fake host (it
#      installs config.toml 0600 and tightens an older 0644 one),
#   5. verifies charts/berth/files/berth.service with `systemd-analyze verify` and checks
#      the settings systemd actually loaded from it,
#   6. checks the daemon keeps the unit's Type=notify contract: started as systemd starts
#      it (NOTIFY_SOCKET set; in a private network namespace, private root and state), it
#      sends READY=1 once its socket exists, and exits 0 on SIGTERM.
# Environment: BERTH_BIN, the berth binary the unit's ExecStart gets in the verify root
# (default: the debug build in the cargo target dir, built when missing);
# BERTH_CHART_VENV, the venv for kubernetes-validate (default /tmp/berth-chart-venv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BERTH_TOP=$PWD
export BERTH_TOP
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'scripts/test-chart.sh: %s\n' "$*" >&2; exit 1; }

KUBE_VALIDATE_VERSION=1.37.0
# The chart's kubeVersion floor (Chart.yaml) and the newest schemas of the validator.
KUBE_VERSIONS=(1.26.0 1.37.0)

chart=charts/berth
work=$(mktemp -d /tmp/berth-chart-test.XXXXXX)
netns=
daemon=
cleanup() {
  if [[ -n $daemon ]]; then
    kill -KILL "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
  fi
  if [[ -n $netns ]]; then ip netns del "$netns" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step "chart test dependencies"
apt_install golang-go golang-github-masterminds-sprig-dev golang-github-burntsushi-toml-dev \
  golang-k8s-sigs-yaml-dev systemd python3-venv
venv=${BERTH_CHART_VENV:-/tmp/berth-chart-venv}
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qF "$KUBE_VALIDATE_VERSION"; then
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$KUBE_VALIDATE_VERSION"
fi

# The renderer builds in GOPATH mode against Debian's Go packages: no module download.
export GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOCACHE=$work/gocache

step "chart renderer tests (go test in $chart/tests/render)"
(cd "$chart/tests/render" && go vet . && go test -count=1 .)
go build -o "$work/render" "./$chart/tests/render"

step "rendering and validating against Kubernetes ${KUBE_VERSIONS[*]}"
sets=(default)
for f in "$chart"/tests/values/*.yaml; do
  sets+=("$f")
done
for set in "${sets[@]}"; do
  out=$work/out/$(basename "$set" .yaml)
  args=()
  [[ $set == default ]] || args=(-f "$set")
  "$work/render" "${args[@]}" -out "$out" "$chart"
  "$work/render" "${args[@]}" -notes "$chart" >"$out.notes"
  [[ -s $out.notes ]] || die "$set: NOTES.txt rendered empty"
  manifests=("$out"/*)
  ((${#manifests[@]} > 0)) || die "$set: nothing rendered"
  for v in "${KUBE_VERSIONS[@]}"; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}" ||
      die "$set: a manifest does not validate against Kubernetes $v"
  done
  printf '%s: %d manifest files valid\n' "$set" "${#manifests[@]}" >&2
  # config.toml may hold registry credentials: a Secret carries it (no ConfigMap does)
  # and the installer pods see it 0600.
  "$venv/bin/python" - "${manifests[@]}" <<'PY' || die "$set: config.toml is not kept secret"
import base64, sys, yaml
docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
def named(kind, name):
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
bad = [d["metadata"]["name"] for d in docs
       if d["kind"] == "ConfigMap" and "config.toml" in d.get("data", {})]
assert not bad, f"ConfigMap {bad} carries config.toml"
(secret,) = named("Secret", "berth")
text = base64.b64decode(secret["data"]["config.toml"]).decode()
assert text.startswith("# Written by the berth Helm chart"), text
(ds,) = named("DaemonSet", "berth")
(vol,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "chart-files"]
items = [i for s in vol["projected"]["sources"] if "secret" in s for i in s["secret"]["items"]]
assert items == [{"key": "config.toml", "path": "config.toml", "mode": 0o600}], items
print(f"config.toml: in Secret/berth ({len(text)} bytes), mounted 0600", file=sys.stderr)
PY
done

step "installer script against a fake host"
sh "$chart/tests/node_test.sh" "$chart/files/node.sh"

step "systemd-analyze verify $chart/files/berth.service"
bin=${BERTH_BIN:-${CARGO_TARGET_DIR:-$BERTH_TOP/target}/debug/berth}
if [[ ! -x $bin ]]; then
  ensure_toolchain
  cargo build -q -p berth-cri --bin berth
fi
[[ -x $bin ]] || die "no berth binary at $bin"
# A root holding the unit, the binary at its ExecStart path and the system's own units
# (the targets the unit orders itself against).
root=$work/root
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/tmp"
cp -a /lib/systemd/system "$root/usr/lib/systemd/"
cp "$bin" "$root/usr/local/bin/berth"
cp "$chart/files/berth.service" "$root/etc/systemd/system/berth.service"
# Any message is a finding: systemd only warns about a setting it ignores.
if ! systemd-analyze verify --root="$root" /etc/systemd/system/berth.service >"$work/verify" 2>&1 ||
  [[ -s $work/verify ]]; then
  cat "$work/verify" >&2
  die "systemd-analyze verify failed"
fi
# What systemd made of the unit (its debug dump of the loaded unit).
SYSTEMD_LOG_LEVEL=debug systemd-analyze verify --root="$root" /etc/systemd/system/berth.service >"$work/dump" 2>&1
sed -n '/-> Unit berth.service:/,$p' "$work/dump" >"$work/unit"
for want in 'Type: notify' 'KillMode: process' 'Delegate: yes' 'Restart: always' \
  'LimitNOFILE: 1048576' 'TasksMax: 18446744073709551615' 'OOMScoreAdjust: -999'; do
  grep -qxF "$want" <(sed 's/^[[:space:]]*//' "$work/unit") || die "berth.service: systemd did not load '$want'"
done
grep -qF "/usr/local/bin/berth --config /etc/berth/config.toml" "$work/unit" ||
  die "berth.service: ExecStart is not /usr/local/bin/berth --config /etc/berth/config.toml"

step "the daemon under the unit's contract: READY=1 once serving, exit 0 on SIGTERM"
d=$work/daemon
mkdir -p "$d"
printf 'root = "%s/root"\nstate = "%s/state"\n[grpc]\nsocket = "%s/state/berth.sock"\n' \
  "$d" "$d" "$d" >"$d/config.toml"
netns=berthtest-chart-$$
ip netns add "$netns"
ip -n "$netns" link set lo up
# systemd's side of sd_notify, a datagram socket: on READY=1, is the CRI socket there?
python3 -c '
import os, socket, stat, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(30)
for _ in range(10):
    msg = s.recv(4096).decode()
    if "READY=1" in msg.split("\n"):
        ok = os.path.exists(sys.argv[2]) and stat.S_ISSOCK(os.stat(sys.argv[2]).st_mode)
        print("READY=1", "serving" if ok else "NOT-SERVING")
        break
' "$d/notify" "$d/state/berth.sock" >"$d/notified" 2>&1 &
receiver=$!
for _ in $(seq 50); do
  [[ -S $d/notify ]] && break
  sleep 0.1
done
NOTIFY_SOCKET=$d/notify nsenter --net="/run/netns/$netns" "$bin" --config "$d/config.toml" >"$d/log" 2>&1 &
daemon=$!
wait "$receiver" || true
if ! grep -qx 'READY=1 serving' "$d/notified"; then
  cat "$d/notified" "$d/log" >&2
  die "berth did not send READY=1 with its socket serving"
fi
kill -TERM "$daemon"
rc=0
wait "$daemon" || rc=$?
daemon=
if ((rc != 0)); then
  cat "$d/log" >&2
  die "berth exited $rc on SIGTERM"
fi
ip netns del "$netns"
netns=
step "chart and unit: all checks passed"
