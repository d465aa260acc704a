#!/bin/sh
# Tests files/node.sh, the chart's installer, against a fake host: a temporary directory as
# the host's root and a stand-in for `nsenter ... systemctl` that records each call and
# plays systemd (restart makes the unit active and its socket appear). Runs under dash, the
# /bin/sh of Debian, as in the image. Usage: sh node_test.sh [path/to/node.sh]
set -eu

here=$(cd "$(dirname "$0")" && pwd)
NODE_SH=${1:-$here/../files/node.sh}
work=$(mktemp -d /tmp/berth-node-test.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

failures=0
checks=0
fail() { printf 'FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }
check() { # check DESCRIPTION COMMAND...
  what=$1
  shift
  checks=$((checks + 1))
  if ! "$@"; then fail "$what"; fi
}
calls() { cat "$work/calls" 2>/dev/null || true; }
called() { calls | grep -qxF -- "$1"; }
not_called() { ! called "$1"; }
count() { calls | grep -cxF -- "$1" || true; }
same() { cmp -s "$1" "$2"; }

# The fake host.
host=$work/host
src=$work/src
mkdir -p "$host/var/lib/kubelet" "$host/run" "$src/bin" "$src/files"
printf '#!/bin/sh\necho berth v1\n' >"$src/bin/berth"
printf '#!/bin/sh\necho monitor v1\n' >"$src/bin/berth-monitor"
chmod 755 "$src/bin/berth" "$src/bin/berth-monitor"
printf 'root = "/var/lib/berth"\n' >"$src/files/config.toml"
cp "$here/../files/berth.service" "$src/files/berth.service"
cat >"$host/var/lib/kubelet/config.yaml" <<'EOF'
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
clusterDNS:
  - 10.96.0.10
EOF
printf '%s' 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/containerd/containerd.sock --node-ip=10.0.0.5"' \
  >"$host/var/lib/kubelet/kubeadm-flags.env"
cp "$host/var/lib/kubelet/config.yaml" "$work/kubelet-config.orig"
cp "$host/var/lib/kubelet/kubeadm-flags.env" "$work/kubelet-flags.orig"
printf '/dev/sda1 / ext4 rw 0 0\n' >"$work/mounts"

cat >"$work/onhost" <<'EOF'
#!/bin/sh
# Stand-in for `nsenter -t 1 ... --`: records the command, plays systemctl and journalctl.
echo "$*" >>"$FAKE/calls"
case "$1" in
  systemctl)
    shift
    case "$1" in
      restart)
        if [ "$2" = berth.service ]; then
          : >"$FAKE/active"
          if [ ! -e "$FAKE/no-socket" ]; then
            mkdir -p "$FAKE/host/run/berth"
            rm -f "$FAKE/host/run/berth/berth.sock"
            python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$FAKE/host/run/berth/berth.sock"
          fi
        fi
        ;;
      is-active) [ -e "$FAKE/active" ] ;;
      disable) rm -f "$FAKE/active" ;;
    esac
    ;;
  journalctl) echo "journal of berth.service" ;;
esac
EOF
chmod 755 "$work/onhost"

export FAKE="$work" HOST_ROOT="$host" SRC_BIN="$src/bin" SRC_FILES="$src/files" \
  ON_HOST="$work/onhost" HOST_MOUNTS="$work/mounts" CGROUP_DRIVER=systemd READY_TIMEOUT=3

run() { # run COMMAND [VAR=VALUE...]: node.sh COMMAND with the variables; status in $rc
  cmd=$1
  shift
  : >"$work/calls"
  rc=0
  env "$@" sh "$NODE_SH" "$cmd" >"$work/out" 2>&1 || rc=$?
}

# 1. A fresh install: files in place, unit enabled and started, kubelet untouched.
run install
check "install exits 0 ($(cat "$work/out"))" [ "$rc" = 0 ]
check "berth installed" same "$src/bin/berth" "$host/usr/local/bin/berth"
check "berth-monitor installed beside it" same "$src/bin/berth-monitor" "$host/usr/local/bin/berth-monitor"
check "berth is executable" [ -x "$host/usr/local/bin/berth" ]
check "config installed" same "$src/files/config.toml" "$host/etc/berth/config.toml"
check "config is root's alone (0600: it may hold registry credentials)" \
  [ "$(stat -c %a "$host/etc/berth/config.toml")" = 600 ]
check "binaries are 0755" [ "$(stat -c %a "$host/usr/local/bin/berth")" = 755 ]
check "unit installed" same "$src/files/berth.service" "$host/etc/systemd/system/berth.service"
check "daemon-reload" called "systemctl daemon-reload"
check "enable" called "systemctl enable berth.service"
check "restart once" [ "$(count "systemctl restart berth.service")" = 1 ]
check "kubelet not restarted" not_called "systemctl restart kubelet.service"
check "kubelet config untouched" same "$work/kubelet-config.orig" "$host/var/lib/kubelet/config.yaml"
check "no temporaries left" [ -z "$(find "$host" -name '*.berth-new' -o -name '*.berth-edit')" ]
check "check passes" sh -c 'sh "$1" check' - "$NODE_SH"

# 2. The same install again (a restarted pod): nothing changes, berth is not restarted.
run install
check "reinstall exits 0" [ "$rc" = 0 ]
check "no restart when nothing changed" not_called "systemctl restart berth.service"
check "no daemon-reload when the unit is the same" not_called "systemctl daemon-reload"

# 2b. An older chart installed config.toml 0644: the same content is tightened to 0600
# without a restart.
chmod 644 "$host/etc/berth/config.toml"
run install
check "an old 0644 config is tightened" [ "$(stat -c %a "$host/etc/berth/config.toml")" = 600 ]
check "tightening needs no restart" not_called "systemctl restart berth.service"

# 3. A new config restarts berth; a stopped berth is started.
printf 'root = "/var/lib/berth"\n[log]\nlevel = "debug"\n' >"$src/files/config.toml"
run install
check "new config installed" same "$src/files/config.toml" "$host/etc/berth/config.toml"
check "new config is 0600" [ "$(stat -c %a "$host/etc/berth/config.toml")" = 600 ]
check "new config restarts berth" called "systemctl restart berth.service"
rm -f "$work/active"
run install
check "inactive berth is started" called "systemctl restart berth.service"

# 4. kubelet with another cgroup driver: refused, kubelet left as it was.
run install KUBELET_RECONFIGURE=true CGROUP_DRIVER=cgroupfs
check "mismatched cgroup driver fails" [ "$rc" != 0 ]
check "the error names both drivers" grep -q "cgroupDriver is systemd but Berth's \[cgroup\] driver is cgroupfs" "$work/out"
check "kubelet config untouched after refusal" same "$work/kubelet-config.orig" "$host/var/lib/kubelet/config.yaml"
check "kubelet not restarted after refusal" not_called "systemctl restart kubelet.service"

# 5. kubelet pointed at Berth: endpoint in the config and in kubeadm's flags, originals kept.
run install KUBELET_RECONFIGURE=true
check "reconfigure exits 0 ($(cat "$work/out"))" [ "$rc" = 0 ]
check "config names Berth's socket" grep -qx 'containerRuntimeEndpoint: unix:///run/berth/berth.sock' "$host/var/lib/kubelet/config.yaml"
check "one endpoint only" [ "$(grep -c '^containerRuntimeEndpoint:' "$host/var/lib/kubelet/config.yaml")" = 1 ]
check "other kubelet settings kept" grep -qx '  - 10.96.0.10' "$host/var/lib/kubelet/config.yaml"
check "flags name Berth's socket" grep -qF -- '--container-runtime-endpoint=unix:///run/berth/berth.sock --node-ip=10.0.0.5"' "$host/var/lib/kubelet/kubeadm-flags.env"
check "config backed up" same "$work/kubelet-config.orig" "$host/etc/berth/kubelet-backup/config.yaml"
check "flags backed up" same "$work/kubelet-flags.orig" "$host/etc/berth/kubelet-backup/kubeadm-flags.env"
check "kubelet restarted once" [ "$(count "systemctl restart kubelet.service")" = 1 ]
run install KUBELET_RECONFIGURE=true
check "second reconfigure does not restart kubelet" not_called "systemctl restart kubelet.service"
check "backup still the original" same "$work/kubelet-config.orig" "$host/etc/berth/kubelet-backup/config.yaml"

# 6. reconfigure turned off again: kubelet gets its own files back.
run install KUBELET_RECONFIGURE=false
check "restore exits 0" [ "$rc" = 0 ]
check "kubelet config restored" same "$work/kubelet-config.orig" "$host/var/lib/kubelet/config.yaml"
check "kubelet flags restored" same "$work/kubelet-flags.orig" "$host/var/lib/kubelet/kubeadm-flags.env"
check "backup removed" [ ! -e "$host/etc/berth/kubelet-backup" ]
check "kubelet restarted after restore" called "systemctl restart kubelet.service"

# 7. A daemon that never serves: the install fails with the journal, within the timeout.
rm -f "$work/active" "$host/run/berth/berth.sock"
: >"$work/no-socket"
run install READY_TIMEOUT=1
check "no socket fails" [ "$rc" != 0 ]
check "failure shows the journal" grep -q "journal of berth.service" "$work/out"
check "failure names the socket" grep -q "did not serve /run/berth/berth.sock within 1s" "$work/out"
check "check fails without a socket" sh -c '! sh "$1" check' - "$NODE_SH"
rm -f "$work/no-socket"
run install KUBELET_RECONFIGURE=true
check "reinstall with kubelet exits 0 ($(cat "$work/out"))" [ "$rc" = 0 ]

# 8. Uninstall: kubelet restored, unit stopped and removed, files gone; with PURGE_STATE the
#    state goes unless something is mounted below it.
mkdir -p "$host/var/lib/berth/snapshots" "$host/run/berth/pods"
printf 'overlay /var/lib/berth/snapshots/x/fs overlay rw 0 0\n' >>"$work/mounts"
run uninstall PURGE_STATE=true
check "uninstall exits 0 ($(cat "$work/out"))" [ "$rc" = 0 ]
check "kubelet config restored on uninstall" same "$work/kubelet-config.orig" "$host/var/lib/kubelet/config.yaml"
check "kubelet restarted on uninstall" called "systemctl restart kubelet.service"
check "berth stopped and disabled" called "systemctl disable --now berth.service"
check "unit removed" [ ! -e "$host/etc/systemd/system/berth.service" ]
check "binaries removed" [ ! -e "$host/usr/local/bin/berth" ] && [ ! -e "$host/usr/local/bin/berth-monitor" ]
check "config dir removed" [ ! -e "$host/etc/berth" ]
check "root kept while mounted" [ -d "$host/var/lib/berth/snapshots" ]
check "state purged" [ ! -e "$host/run/berth" ]
run uninstall PURGE_STATE=true
check "second uninstall exits 0" [ "$rc" = 0 ]
check "second uninstall leaves kubelet alone" not_called "systemctl restart kubelet.service"
printf '/dev/sda1 / ext4 rw 0 0\n' >"$work/mounts"
run uninstall PURGE_STATE=true
check "root purged once unmounted" [ ! -e "$host/var/lib/berth" ]
run uninstall PURGE_STATE=true BERTH_ROOT=/var
check "a root too close to / is kept" [ -d "$host/var/lib/kubelet" ]

run bogus
check "unknown command exits 2" [ "$rc" = 2 ]

if [ "$failures" -ne 0 ]; then
  printf 'node.sh: %d of %d checks failed\n' "$failures" "$checks" >&2
  exit 1
fi
printf 'node.sh: %d checks passed\n' "$checks"
