#!/usr/bin/env bash
# A two-node Kubernetes cluster on one machine, for trying Berth (or containerd, for
# comparison) under a real control plane. Not run by CI: the Kubernetes binaries come from
# outside the project, and this script never builds them.
#
#   scripts/cluster.sh K8S_BIN_DIR up   [--runtime berth|containerd]
#   scripts/cluster.sh K8S_BIN_DIR demo
#   scripts/cluster.sh K8S_BIN_DIR down
#   scripts/cluster.sh K8S_BIN_DIR all  [--runtime berth|containerd]   # up, demo, down
#
# K8S_BIN_DIR holds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
# and kubectl (v1.32). Berth's binaries come from BERTH_BIN_DIR (default target/release).
# Everything lives under CLUSTER_DIR (default /var/tmp/lab/cluster): certificates, etcd's
# data, every log, each node's runtime root and kubelet root.
#
# Layout: a "control" netns (cluster-ctl) holds etcd, the API server, the controller
# manager (which allocates each node a /24 of 10.244.0.0/16), the scheduler and a loopback
# registry with two images built here from the host's busybox; it is the "LAN": a bridge
# lan0 (10.200.0.1/24) with one veth to each node netns (cluster-n1 = 10.200.0.11,
# cluster-n2 = 10.200.0.12). Each node runs its own runtime and kubelet; once the
# controller manager has given the nodes their pod CIDRs, each node gets a route to the
# other's pod CIDR through the other's LAN address.
#
# kubelet is kept off the host: each kubelet has a private root dir, pod log dir and
# cgroup root (/cluster-nN), no system/kubelet/runtime cgroups (so it moves no process),
# and runs in a private mount namespace where the six kernel sysctls it insists on setting
# (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops, ...) are files of its own, and
# /var/log/containers is its own directory. Its root dir is a shared bind mount, so the
# volumes it mounts there are seen by the runtime outside that namespace.
#
# `down` works from what is recorded under CLUSTER_DIR and what exists (pid files, the
# cgroups /cluster-nN, mounts under CLUSTER_DIR, the three netns), so it also cleans up
# after a failed `up` or `demo`. It stops only processes this script started: the recorded
# PIDs, then whatever is left in the nodes' own cgroups (their pods and shims).
set -euo pipefail

usage() {
  echo "usage: $0 K8S_BIN_DIR up|demo|down|all [--runtime berth|containerd]" >&2
  exit 2
}
[ $# -ge 2 ] || usage
K8S=$(cd "$1" && pwd)
CMD=$2
shift 2
RUNTIME=berth
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=${2:-}; shift 2 ;;
    *) usage ;;
  esac
done
case $RUNTIME in berth | containerd) ;; *) usage ;; esac
[ "$(id -u)" -eq 0 ] || { echo "run as root: netns, mounts, cgroups" >&2; exit 1; }

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH_BIN_DIR=${BERTH_BIN_DIR:-$TOP/target/release}
D=${CLUSTER_DIR:-/var/tmp/lab/cluster}
CTL=cluster-ctl
NODES=(n1 n2)
LAN_GW=10.200.0.1
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
REG=$LAN_GW:5000
IMAGE=registry.k8s.io/e2e-test-images/busybox:1.36.1-1
PAUSE=registry.k8s.io/pause:3.10
KUBECTL=("$K8S/kubectl" --kubeconfig "$D/pki/admin.kubeconfig")
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
node_ip() { echo "10.200.0.1${1#n}"; }
ns_of() { echo "cluster-$1"; }
in_ctl() { nsenter --net="/run/netns/$CTL" "$@"; }
k() { in_ctl "${KUBECTL[@]}" "$@"; }
# The v1 hierarchies (this host is cgroup v1 hybrid) or the v2 root.
cgroup_roots() {
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    echo /sys/fs/cgroup
  else
    for h in /sys/fs/cgroup/*; do
      [ "${h##*/}" != unified ] && [ -d "$h" ] && ! [ -L "$h" ] && echo "$h"
    done
  fi
}
pids_root() {
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo /sys/fs/cgroup; else echo /sys/fs/cgroup/pids; fi
}

# start NAME CGROUP-OR-EMPTY COMMAND...: runs COMMAND in the background with its output in
# $D/logs/NAME.log, its PID in $D/pids/NAME (exec all the way down, so it is the PID).
start() {
  local name=$1 cg=$2
  shift 2
  (
    [ -z "$cg" ] || echo "$BASHPID" >"$(pids_root)$cg/cgroup.procs"
    exec "$@" </dev/null >>"$D/logs/$name.log" 2>&1
  ) &
  echo $! >"$D/pids/$name"
  log "started $name (pid $!)"
}

# wait_for SECONDS WHAT COMMAND...: retries COMMAND each second.
wait_for() {
  local n=$1 what=$2
  shift 2
  for ((i = 0; i < n; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "timed out after ${n}s waiting for $what"
  return 1
}

# ---- network ---------------------------------------------------------------------------
net_up() {
  for ns in $CTL "${NODES[@]/#/cluster-}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  ip -n $CTL link add lan0 type bridge
  ip -n $CTL addr add $LAN_GW/24 dev lan0
  ip -n $CTL link set lan0 up
  for n in "${NODES[@]}"; do
    ip link add "$n-lan" netns $CTL type veth peer name eth0 netns "$(ns_of "$n")"
    ip -n $CTL link set "$n-lan" master lan0 up
    ip -n "$(ns_of "$n")" addr add "$(node_ip "$n")/24" dev eth0
    ip -n "$(ns_of "$n")" link set eth0 up
    ip -n "$(ns_of "$n")" route add default via $LAN_GW
  done
}

# ---- images: a busybox image and a pause image, built from the host --------------------
blob_push() { # REPO FILE MEDIA: uploads FILE as a blob; prints its digest
  local repo=$1 file=$2 digest loc
  digest=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  if ! in_ctl curl -sf -I "http://$REG/v2/$repo/blobs/$digest" >/dev/null; then
    loc=$(in_ctl curl -sf -X POST -D - -o /dev/null "http://$REG/v2/$repo/blobs/uploads/" |
      tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
    case $loc in http*) ;; *) loc=http://$REG$loc ;; esac
    case $loc in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
    in_ctl curl -sf -X PUT -H 'Content-Type: application/octet-stream' \
      --data-binary "@$file" "$loc" >/dev/null
  fi
  echo "$digest"
}

image_push() { # REFERENCE ROOTFS-DIR CONFIG-JSON-FRAGMENT
  local ref=$1 root=$2 conf=$3 w repo tag layer diff cfg cdigest ldigest
  w=$(mktemp -d "$D/images/push.XXXX")
  repo=${ref#*/}
  tag=${repo##*:}
  repo=${repo%:*}
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$w/layer.tar" .
  diff=sha256:$(sha256sum "$w/layer.tar" | cut -d' ' -f1)
  gzip -n -c "$w/layer.tar" >"$w/layer.tar.gz"
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$conf" "$diff" >"$w/config.json"
  cdigest=$(blob_push "$repo" "$w/config.json")
  ldigest=$(blob_push "$repo" "$w/layer.tar.gz")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
    "$cdigest" "$(stat -c %s "$w/config.json")" "$ldigest" "$(stat -c %s "$w/layer.tar.gz")" >"$w/manifest.json"
  in_ctl curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$w/manifest.json" "http://$REG/v2/$repo/manifests/$tag" >/dev/null
  rm -rf "$w"
  log "pushed $ref"
}

images_up() {
  mkdir -p "$D/registry/data" "$D/images"
  cat >"$D/registry/config.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $D/registry/data
  delete:
    enabled: true
http:
  addr: $REG
EOF
  start registry "" nsenter --net=/run/netns/$CTL /usr/bin/docker-registry serve "$D/registry/config.yml"
  wait_for 20 "the registry" in_ctl curl -sf "http://$REG/v2/"
  # busybox: the host's (dynamic) busybox with its libraries and an applet link each.
  local r=$D/images/busybox lib
  rm -rf "$r"
  mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/www"
  cp /bin/busybox "$r/bin/busybox"
  for lib in $(ldd /bin/busybox | grep -o '/[^ ]*'); do
    mkdir -p "$r$(dirname "$lib")"
    cp -L "$lib" "$r$lib"
  done
  for a in $(/bin/busybox --list); do [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
  echo 'root:x:0:' >"$r/etc/group"
  chmod 1777 "$r/tmp"
  image_push "$IMAGE" "$r" '{"Env":["PATH=/bin"],"Cmd":["sh"]}'
  # pause: a static C program that sleeps until TERM and reaps children.
  local p=$D/images/pause
  rm -rf "$p"
  mkdir -p "$p"
  cat >"$D/images/pause.c" <<'C'
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static void down(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = down;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigaction(SIGCHLD, &sa, NULL);
  for (;;) pause();
}
C
  gcc -static -O2 -o "$p/pause" "$D/images/pause.c"
  image_push "$PAUSE" "$p" '{"Entrypoint":["/pause"]}'
}

# ---- control plane ---------------------------------------------------------------------
pki_up() {
  local p=$D/pki
  mkdir -p "$p"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=cluster-ca \
    -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
    -keyout "$p/apiserver.key" -out "$p/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:%s,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default.svc\n' \
    $LAN_GW >"$p/san.ext"
  openssl x509 -req -in "$p/apiserver.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
    -days 2 -extfile "$p/san.ext" -out "$p/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  local token
  token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,admin,admin,system:masters" >"$p/tokens.csv"
  cat >"$p/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "https://$LAN_GW:6443", certificate-authority: "$p/ca.crt"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: lab
  context: {cluster: lab, user: admin}
current-context: lab
EOF
}

control_up() {
  pki_up
  local p=$D/pki
  start etcd "" nsenter --net=/run/netns/$CTL "$K8S/etcd" --data-dir "$D/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --unsafe-no-fsync
  wait_for 30 etcd in_ctl curl -sf http://127.0.0.1:2379/health
  start kube-apiserver "" nsenter --net=/run/netns/$CTL "$K8S/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --advertise-address=$LAN_GW --bind-address=0.0.0.0 \
    --secure-port=6443 --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" --token-auth-file="$p/tokens.csv" --authorization-mode=AlwaysAllow \
    --service-cluster-ip-range=$SERVICE_CIDR --service-account-key-file="$p/sa.pub" \
    --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --kubelet-preferred-address-types=InternalIP --allow-privileged=true
  wait_for 90 "the API server" k get --raw /readyz
  start kube-controller-manager "" nsenter --net=/run/netns/$CTL "$K8S/kube-controller-manager" \
    --kubeconfig="$p/admin.kubeconfig" --leader-elect=false --bind-address=127.0.0.1 \
    --allocate-node-cidrs=true --cluster-cidr=$CLUSTER_CIDR --node-cidr-mask-size=24 \
    --service-cluster-ip-range=$SERVICE_CIDR --service-account-private-key-file="$p/sa.key" \
    --root-ca-file="$p/ca.crt" --configure-cloud-routes=false
  start kube-scheduler "" nsenter --net=/run/netns/$CTL "$K8S/kube-scheduler" \
    --kubeconfig="$p/admin.kubeconfig" --leader-elect=false --bind-address=127.0.0.1
}

# ---- nodes -----------------------------------------------------------------------------
runtime_sock() {
  case $RUNTIME in
    berth) echo "$D/$1/berth/state/berth.sock" ;;
    containerd) echo "$D/$1/containerd/state/containerd.sock" ;;
  esac
}

cgroups_up() { # NODE: /cluster-NODE (kubelet's cgroup root) and its runtime/kubelet children
  local h
  for h in $(cgroup_roots); do
    mkdir -p "$h/cluster-$1"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h/cluster-$1/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/cluster-$1/cpuset.mems"
    fi
  done
  mkdir -p "$(pids_root)/cluster-$1/runtime" "$(pids_root)/cluster-$1/kubelet"
}

runtime_up() { # NODE
  local n=$1 nd=$D/$1
  case $RUNTIME in
    berth)
      mkdir -p "$nd/berth/root" "$nd/berth/state"
      cat >"$nd/berth.toml" <<EOF
root = "$nd/berth/root"
state = "$nd/berth/state"

[grpc]
socket = "$nd/berth/state/berth.sock"

[network]
mode = "builtin"
non_masquerade_cidrs = ["$CLUSTER_CIDR"]
await_kubelet_pod_cidr = true

[registry.mirrors."registry.k8s.io"]
endpoints = ["http://$REG"]

[cgroup]
driver = "cgroupfs"
EOF
      start "berth-$n" "/cluster-$n/runtime" nsenter --net="/run/netns/$(ns_of "$n")" \
        "$BERTH_BIN_DIR/berth" --config "$nd/berth.toml"
      ;;
    containerd)
      mkdir -p "$nd/containerd/root" "$nd/containerd/state" "$nd/cni/net.d"
      cat >"$nd/containerd.toml" <<EOF
version = 2
root = "$nd/containerd/root"
state = "$nd/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$nd/containerd/state/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Where the process lacks CAP_SYS_RESOURCE (as on the machines this was written on),
  # runc cannot lower a sandbox's oom_score_adj below containerd's own (kubelet asks
  # -998 for it) and every sandbox fails; clamp it to containerd's, as Berth does.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$nd/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.k8s.io"]
    endpoint = ["http://$REG"]
EOF
      start "containerd-$n" "/cluster-$n/runtime" nsenter --net="/run/netns/$(ns_of "$n")" \
        /usr/bin/containerd --config "$nd/containerd.toml"
      ;;
  esac
  wait_for 30 "$RUNTIME on $n" test -S "$(runtime_sock "$n")"
}

kubelet_up() { # NODE
  local n=$1 nd=$D/$1 kr=$D/$1/kubelet s
  mkdir -p "$kr" "$nd/pod-logs" "$nd/container-logs" "$nd/sysctl"
  # kubelet's root dir: a shared mount, so what kubelet mounts there from its private
  # mount namespace (secrets, projected tokens) propagates to the runtime's.
  mountpoint -q "$kr" || mount --bind "$kr" "$kr"
  mount --make-shared "$kr"
  if [ ! -d /var/log/containers ]; then
    mkdir -p /var/log/containers
    touch "$D/created-var-log-containers"
  fi
  for s in "${SYSCTLS[@]}"; do cat "/proc/sys/$s" >"$nd/sysctl/${s//\//.}"; done
  sed "s/^    //" >"$nd/kubelet.yaml" <<EOF
    apiVersion: kubelet.config.k8s.io/v1beta1
    kind: KubeletConfiguration
    containerRuntimeEndpoint: unix://$(runtime_sock "$n")
    cgroupDriver: cgroupfs
    cgroupRoot: /cluster-$n
    cgroupsPerQOS: true
    systemCgroups: ""
    kubeletCgroups: ""
    failSwapOn: false
    failCgroupV1: false
    podLogsDir: $nd/pod-logs
    address: $(node_ip "$n")
    healthzBindAddress: 127.0.0.1
    readOnlyPort: 0
    authentication:
      anonymous: {enabled: true}
      webhook: {enabled: false}
    authorization: {mode: AlwaysAllow}
    evictionHard: {memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
    imageGCHighThresholdPercent: 100
    imageGCLowThresholdPercent: 99
    serializeImagePulls: false
    clusterDomain: cluster.local
    resolvConf: /etc/resolv.conf
EOF
  sed -e "s#certificate-authority: .*}#certificate-authority: \"$D/pki/ca.crt\"}#" \
    "$D/pki/admin.kubeconfig" >"$nd/kubelet.kubeconfig"
  local binds=""
  for s in "${SYSCTLS[@]}"; do binds+="mount --bind $nd/sysctl/${s//\//.} /proc/sys/$s && "; done
  start "kubelet-$n" "/cluster-$n/kubelet" nsenter --net="/run/netns/$(ns_of "$n")" \
    unshare -m --propagation unchanged sh -c \
    "mount --make-rprivate /proc && ${binds}mount --bind $nd/container-logs /var/log/containers && \
     exec $K8S/kubelet --config $nd/kubelet.yaml --kubeconfig $nd/kubelet.kubeconfig \
       --root-dir $kr --hostname-override cluster-$n --node-ip $(node_ip "$n") --v=2"
}

pod_cidr_of() { k get node "cluster-$1" -o jsonpath='{.spec.podCIDR}' 2>/dev/null; }
has_pod_cidr() { [ -n "$(pod_cidr_of "$1")" ]; }
node_ready() {
  [ "$(k get node "cluster-$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

nodes_up() {
  for n in "${NODES[@]}"; do
    mkdir -p "$D/$n"
    cgroups_up "$n"
    runtime_up "$n"
    kubelet_up "$n"
  done
  for n in "${NODES[@]}"; do
    wait_for 120 "node cluster-$n's pod CIDR" has_pod_cidr "$n"
    log "cluster-$n: pod CIDR $(pod_cidr_of "$n")"
    echo "$(pod_cidr_of "$n")" >"$D/$n/pod-cidr"
  done
  local a b
  for a in "${NODES[@]}"; do
    for b in "${NODES[@]}"; do
      [ "$a" = "$b" ] || ip -n "$(ns_of "$a")" route replace "$(cat "$D/$b/pod-cidr")" via "$(node_ip "$b")"
    done
    if [ "$RUNTIME" = containerd ]; then
      cat >"$D/$a/cni/net.d/10-cluster.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "cluster", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "dataDir": "$D/$a/cni/ipam",
            "ranges": [[{"subnet": "$(cat "$D/$a/pod-cidr")"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
    fi
  done
  for n in "${NODES[@]}"; do
    wait_for 120 "node cluster-$n Ready" node_ready "$n"
  done
  log "both nodes Ready"
}

up() {
  [ ! -e "$D/runtime" ] || die "$D/runtime exists: run '$0 $K8S down' first"
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
    [ -x "$K8S/$b" ] || die "$K8S/$b is missing"
  done
  [ "$RUNTIME" != berth ] || [ -x "$BERTH_BIN_DIR/berth" ] || die "$BERTH_BIN_DIR/berth is missing (BERTH_BIN_DIR)"
  mkdir -p "$D/logs" "$D/pids"
  echo "$RUNTIME" >"$D/runtime"
  cat /proc/1/cgroup >"$D/pid1.cgroup"
  net_up
  images_up
  control_up
  nodes_up
}

# shellcheck source=scripts/cluster-demo.sh
. "$TOP/scripts/cluster-demo.sh"

# ---- teardown --------------------------------------------------------------------------
stop_pid() { # NAME: SIGTERM, then SIGKILL after 10 s, the process recorded as NAME
  local f=$D/pids/$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

cgroup_procs() { # NODE: every PID in the node's cgroups, in any hierarchy
  local h
  for h in $(cgroup_roots) /sys/fs/cgroup/unified; do
    [ -d "$h/cluster-$1" ] && find "$h/cluster-$1" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}

down() {
  [ -d "$D" ] || { log "nothing to tear down"; return 0; }
  local n pid h m
  for n in "${NODES[@]}"; do stop_pid "kubelet-$n"; done
  for n in "${NODES[@]}"; do stop_pid "berth-$n"; stop_pid "containerd-$n"; done
  # What is left in the nodes' cgroups: their pods, monitors and shims.
  for n in "${NODES[@]}"; do
    for ((i = 0; i < 50; i++)); do
      pid=$(cgroup_procs "$n")
      [ -n "$pid" ] || break
      # shellcheck disable=SC2086
      kill -9 $pid 2>/dev/null || true
      sleep 0.2
    done
  done
  for p in kube-scheduler kube-controller-manager kube-apiserver etcd registry; do stop_pid "$p"; done
  # Mounts under the cluster dir (kubelet volumes, rootfs overlays, pod namespaces), deepest first.
  for ((i = 0; i < 5; i++)); do
    m=$(awk -v d="$D/" 'index($5, d) == 1 || $5 == substr(d, 1, length(d) - 1) {print $5}' /proc/self/mountinfo | sort -r)
    [ -n "$m" ] || break
    for x in $m; do umount -l "$x" 2>/dev/null || true; done
  done
  for n in "${NODES[@]}"; do
    # kubelet also creates its tree in the v2 hierarchy a hybrid host mounts at unified.
    for h in $(cgroup_roots) /sys/fs/cgroup/unified; do
      [ -d "$h/cluster-$n" ] && find "$h/cluster-$n" -depth -type d -exec rmdir {} + 2>/dev/null
      [ ! -d "$h/cluster-$n" ] || log "cgroup $h/cluster-$n remains"
    done
  done
  for ns in "${NODES[@]/#/cluster-}" $CTL; do
    ip netns list | awk '{print $1}' | grep -qx "$ns" && ip netns del "$ns"
  done
  if [ -f "$D/created-var-log-containers" ]; then
    rmdir /var/log/containers 2>/dev/null || true
    rm -f "$D/created-var-log-containers"
  fi
  if [ -f "$D/pid1.cgroup" ] && ! diff -q "$D/pid1.cgroup" /proc/1/cgroup >/dev/null; then
    log "WARNING: PID 1's cgroup changed since up"
  fi
  # Keep the logs; drop the state.
  for n in "${NODES[@]}"; do rm -rf "$D/$n/berth" "$D/$n/containerd" "$D/$n/kubelet" "$D/$n/cni"; done
  rm -rf "$D/etcd" "$D/registry" "$D/images" "$D/pki" "$D/pids" "$D/runtime"
  log "down: done"
}

case $CMD in
  up) up ;;
  demo)
    RUNTIME=$(cat "$D/runtime")
    demo
    ;;
  down) down ;;
  all)
    trap 'down' EXIT
    up
    demo
    ;;
  *) usage ;;
esac
