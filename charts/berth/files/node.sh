#!/bin/sh
# Installs Berth on the host of this pod, removes it, or checks it; run by the berth chart's
# pods (privileged, hostPID, the host's / mounted at $HOST_ROOT).
#
#   node.sh install    binaries, config and unit onto the host; enable and (re)start
#                      berth.service when anything changed; wait for the CRI socket; then
#                      point kubelet at Berth when KUBELET_RECONFIGURE=true, or give kubelet
#                      back its own files when it is false and an earlier install changed them
#   node.sh uninstall  kubelet's files back, berth.service stopped and disabled, the files
#                      removed; the state directories too when PURGE_STATE=true and nothing
#                      is mounted below them
#   node.sh check      exits 0 when berth.service is active and its socket exists
#   node.sh sleep      waits until SIGTERM (the pod's main container)
#
# Every step is idempotent: a pod restarted half-way runs the whole command again.
set -eu

HOST_ROOT=${HOST_ROOT:-/host}
SRC_BIN=${SRC_BIN:-/opt/berth/bin}
SRC_FILES=${SRC_FILES:-/etc/berth-chart}
BIN_DIR=${BIN_DIR:-/usr/local/bin}
CONFIG_DIR=${CONFIG_DIR:-/etc/berth}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
SOCKET=${SOCKET:-/run/berth/berth.sock}
BERTH_ROOT=${BERTH_ROOT:-/var/lib/berth}
BERTH_STATE=${BERTH_STATE:-/run/berth}
READY_TIMEOUT=${READY_TIMEOUT:-60}
CGROUP_DRIVER=${CGROUP_DRIVER:-cgroupfs}
KUBELET_RECONFIGURE=${KUBELET_RECONFIGURE:-false}
KUBELET_CONFIG=${KUBELET_CONFIG:-/var/lib/kubelet/config.yaml}
KUBELET_FLAGS=${KUBELET_FLAGS:-/var/lib/kubelet/kubeadm-flags.env}
KUBELET_SERVICE=${KUBELET_SERVICE:-kubelet.service}
PURGE_STATE=${PURGE_STATE:-false}
# How to run a command in the host's namespaces (systemctl, journalctl).
ON_HOST=${ON_HOST:-nsenter -t 1 -m -u -i -n -p --}
# The host's mount table, to tell whether pods still hold mounts under the state.
HOST_MOUNTS=${HOST_MOUNTS:-/proc/1/mounts}

UNIT=berth.service
BACKUP=$HOST_ROOT$CONFIG_DIR/kubelet-backup

log() { printf 'berth-node: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# install_file SRC DST MODE: DST becomes a copy of SRC with MODE, replaced by rename so a
# running binary is never written in place; prints "changed" when its content was
# different. The copy is made under umask 077, so a private file (config.toml, which may
# hold registry credentials) is never readable by others, not even for a moment; an
# unchanged file still gets MODE (an older chart installed config.toml 0644).
install_file() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then
    chmod "$3" "$2"
    return 0
  fi
  mkdir -p "$(dirname "$2")"
  (umask 077 && cp "$1" "$2.berth-new")
  chmod "$3" "$2.berth-new"
  mv -f "$2.berth-new" "$2"
  log "installed $2"
  echo changed
}

# replace_file DST NEWCONTENT_FILE: like install_file for kubelet's files, keeping the
# original once under $BACKUP (restored by restore_kubelet).
replace_file() {
  if cmp -s "$2" "$1"; then
    rm -f "$2"
    return 0
  fi
  mkdir -p "$BACKUP"
  name=$(basename "$1")
  if [ ! -e "$BACKUP/$name" ]; then
    cp -p "$1" "$BACKUP/$name"
  fi
  cat "$2" >"$1.berth-new"
  chmod --reference="$1" "$1.berth-new" 2>/dev/null || true
  mv -f "$1.berth-new" "$1"
  rm -f "$2"
  log "pointed kubelet at Berth in $1 (original in $BACKUP/$name)"
  echo changed
}

endpoint() { printf 'unix://%s' "$SOCKET"; }

reconfigure_kubelet() {
  config=$HOST_ROOT$KUBELET_CONFIG
  [ -f "$config" ] || die "kubelet config $KUBELET_CONFIG does not exist (set kubelet.configFile)"
  # kubelet's default cgroup driver is cgroupfs; Berth and kubelet must agree.
  driver=$(sed -n 's/^cgroupDriver:[[:space:]]*["'\'']\{0,1\}\([a-z]*\).*/\1/p' "$config" | tail -n 1)
  driver=${driver:-cgroupfs}
  if [ "$driver" != "$CGROUP_DRIVER" ]; then
    die "kubelet's cgroupDriver is $driver but Berth's [cgroup] driver is $CGROUP_DRIVER: set config.cgroup.driver to $driver; kubelet was left unchanged"
  fi
  changed=
  new=$config.berth-edit
  sed '/^containerRuntimeEndpoint:/d' "$config" >"$new"
  if [ -s "$new" ] && [ "$(tail -c 1 "$new" | od -An -c | tr -d ' ')" != '\n' ]; then
    echo >>"$new"
  fi
  printf 'containerRuntimeEndpoint: %s\n' "$(endpoint)" >>"$new"
  changed=$changed$(replace_file "$config" "$new")
  flags=$HOST_ROOT$KUBELET_FLAGS
  if [ -f "$flags" ] && grep -q -- '--container-runtime-endpoint=' "$flags"; then
    new=$flags.berth-edit
    sed "s|--container-runtime-endpoint=[^ \"']*|--container-runtime-endpoint=$(endpoint)|g" "$flags" >"$new"
    changed=$changed$(replace_file "$flags" "$new")
  fi
  if [ -n "$changed" ]; then
    log "restarting $KUBELET_SERVICE"
    $ON_HOST systemctl restart "$KUBELET_SERVICE"
  fi
}

# Gives kubelet back the files an earlier install changed; restarts it when it did.
restore_kubelet() {
  [ -d "$BACKUP" ] || return 0
  restored=
  for saved in "$BACKUP"/*; do
    [ -e "$saved" ] || continue
    name=$(basename "$saved")
    if [ "$name" = "$(basename "$KUBELET_CONFIG")" ]; then
      target=$HOST_ROOT$KUBELET_CONFIG
    elif [ "$name" = "$(basename "$KUBELET_FLAGS")" ]; then
      target=$HOST_ROOT$KUBELET_FLAGS
    else
      log "leaving unknown backup $saved"
      continue
    fi
    cp -p "$saved" "$target.berth-new"
    mv -f "$target.berth-new" "$target"
    rm -f "$saved"
    restored=yes
    log "restored $target"
  done
  rmdir "$BACKUP" 2>/dev/null || true
  if [ -n "$restored" ]; then
    log "restarting $KUBELET_SERVICE"
    $ON_HOST systemctl restart "$KUBELET_SERVICE"
  fi
}

berth_ready() {
  [ -S "$HOST_ROOT$SOCKET" ] && $ON_HOST systemctl is-active --quiet "$UNIT"
}

install() {
  for f in berth berth-monitor; do
    [ -x "$SRC_BIN/$f" ] || die "$SRC_BIN/$f is missing from the image"
  done
  [ -f "$SRC_FILES/config.toml" ] || die "$SRC_FILES/config.toml is missing"
  [ -f "$SRC_FILES/berth.service" ] || die "$SRC_FILES/berth.service is missing"
  # The monitor first: a daemon restarted by systemd meanwhile finds the matching one.
  changed=$(install_file "$SRC_BIN/berth-monitor" "$HOST_ROOT$BIN_DIR/berth-monitor" 755)
  changed=$changed$(install_file "$SRC_BIN/berth" "$HOST_ROOT$BIN_DIR/berth" 755)
  changed=$changed$(install_file "$SRC_FILES/config.toml" "$HOST_ROOT$CONFIG_DIR/config.toml" 600)
  unit_changed=$(install_file "$SRC_FILES/berth.service" "$HOST_ROOT$UNIT_DIR/$UNIT" 644)
  if [ -n "$unit_changed" ]; then
    $ON_HOST systemctl daemon-reload
  fi
  $ON_HOST systemctl enable "$UNIT"
  if [ -n "$changed$unit_changed" ] || ! berth_ready; then
    # Pods keep running across a restart (KillMode=process); the daemon re-adopts them.
    log "restarting $UNIT"
    $ON_HOST systemctl restart "$UNIT"
  fi
  waited=0
  until berth_ready; do
    if [ "$waited" -ge "$READY_TIMEOUT" ]; then
      $ON_HOST journalctl -u "$UNIT" -n 50 --no-pager >&2 || true
      die "$UNIT did not serve $SOCKET within ${READY_TIMEOUT}s"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "$UNIT is active and serves $SOCKET"
  if [ "$KUBELET_RECONFIGURE" = true ]; then
    reconfigure_kubelet
  else
    restore_kubelet
  fi
}

uninstall() {
  restore_kubelet
  if [ -f "$HOST_ROOT$UNIT_DIR/$UNIT" ]; then
    # Stops the daemon only (KillMode=process): pods still running keep running.
    $ON_HOST systemctl disable --now "$UNIT" || log "could not stop $UNIT"
    rm -f "$HOST_ROOT$UNIT_DIR/$UNIT"
    $ON_HOST systemctl daemon-reload
    log "removed $UNIT"
  fi
  rm -f "$HOST_ROOT$BIN_DIR/berth" "$HOST_ROOT$BIN_DIR/berth-monitor" "$HOST_ROOT$CONFIG_DIR/config.toml"
  rmdir "$HOST_ROOT$CONFIG_DIR" 2>/dev/null || true
  if [ "$PURGE_STATE" = true ]; then
    for dir in "$BERTH_ROOT" "$BERTH_STATE"; do
      case $dir in
        /*/*) ;;
        *)
          log "kept $dir: too close to / to delete blindly"
          continue
          ;;
      esac
      if awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' "$HOST_MOUNTS"; then
        log "kept $dir: something is still mounted below it (pods still running?)"
      else
        rm -rf "${HOST_ROOT:?}$dir"
        log "removed $dir"
      fi
    done
  fi
  log "Berth is uninstalled"
}

case ${1:-} in
  install) install ;;
  uninstall) uninstall ;;
  check) berth_ready ;;
  sleep)
    trap 'exit 0' TERM INT
    while :; do
      sleep 3600 &
      wait $! || true
    done
    ;;
  *)
    echo "usage: node.sh install|uninstall|check|sleep" >&2
    exit 2
    ;;
esac
