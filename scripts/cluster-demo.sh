# shellcheck shell=bash
# The checks of `scripts/cluster.sh K8S_BIN_DIR demo`, sourced by cluster.sh (which defines
# k, log, die, wait_for, node_ip, ns_of, NODES, RUNTIME, D, K8S, IMAGE). Each check prints
# one "ok"/"FAIL" line; the summary goes to $D/logs/summary-$RUNTIME.txt.

DEPLOY=hello
PASSED=0
FAILED=0

result() { # ok|FAIL WHAT DETAIL
  local line
  line=$(printf '%-4s %-28s %s' "$1" "$2" "$3")
  echo "$line" | tee -a "$SUMMARY" >&2
  if [ "$1" = ok ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
}

deployment_yaml() {
  cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: $DEPLOY}
spec:
  replicas: 10
  selector: {matchLabels: {app: $DEPLOY}}
  template:
    metadata: {labels: {app: $DEPLOY}}
    spec:
      terminationGracePeriodSeconds: 2
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
         labelSelector: {matchLabels: {app: $DEPLOY}}}
      containers:
      - name: c
        image: $IMAGE
        imagePullPolicy: IfNotPresent
        ports: [{containerPort: 8080}]
        command: [sh, -c, 'mkdir -p /www/cgi-bin && hostname >/www/index.html && printf "#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho \\\$REMOTE_ADDR\\n" >/www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && httpd -p 8080 -h /www && i=0 && while true; do echo "tick \$i \$(hostname)"; i=\$((i+1)); sleep 1; done']
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
EOF
}

pods_on() { # NODE: the names of the Deployment's pods on NODE
  k get pods -l app=$DEPLOY --field-selector "spec.nodeName=cluster-$1" -o name | sed 's#^pod/##'
}
pod_ip() { k get pod "$1" -o jsonpath='{.status.podIP}'; }
# NAME CONTAINER-ID RESTARTS of each of the node's pods
pod_states() {
  k get pods -l app=$DEPLOY --field-selector "spec.nodeName=cluster-$1" -o \
    jsonpath='{range .items[*]}{.metadata.name} {.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}{"\n"}{end}' | sort
}
available_is() { [ "$(k get deploy $DEPLOY -o jsonpath='{.status.availableReplicas}')" = "$1" ]; }
no_pods() { [ -z "$(k get pods -l app=$DEPLOY -o name)" ]; }
in_cidr() { # IP CIDR (a /24)
  [ "${1%.*}" = "$(echo "${2%/*}" | cut -d. -f1-3)" ]
}

# Nothing of the Deployment left on NODE: no process in the pods' cgroups, and no sandbox
# or container in the runtime (kubelet removes the stopped sandboxes of deleted pods at its
# next garbage collection, once a minute): for Berth, `berth debug leaks` finds no leak and
# accounts for 0 pods; for containerd, `ctr` lists no container or task.
node_empty() {
  local n=$1 procs
  procs=$(find "$(pids_root)/cluster-$n/kubepods" -name cgroup.procs -exec cat {} + 2>/dev/null | wc -l)
  [ "$procs" -eq 0 ] || return 1
  case $RUNTIME in
    berth)
      "$BERTH_BIN_DIR/berth" --config "$D/$n/berth.toml" debug leaks >"$D/logs/leaks-$n.txt" 2>&1 &&
        grep -q "no leaks: 0 pods, 0 containers" "$D/logs/leaks-$n.txt"
      ;;
    containerd)
      [ -z "$(ctr --address "$(runtime_sock "$n")" -n k8s.io containers ls -q)" ] &&
        [ -z "$(ctr --address "$(runtime_sock "$n")" -n k8s.io tasks ls -q)" ]
      ;;
  esac
}

demo() {
  SUMMARY=$D/logs/summary-$RUNTIME.txt
  : >"$SUMMARY"
  local t0 a b
  echo "runtime: $RUNTIME; $(k version 2>/dev/null | tr '\n' ' ')" | tee -a "$SUMMARY" >&2
  for n in "${NODES[@]}"; do
    echo "node cluster-$n: LAN $(node_ip "$n"), pod CIDR $(cat "$D/$n/pod-cidr")" | tee -a "$SUMMARY" >&2
  done

  # 1. A 10-replica Deployment over both nodes.
  t0=$(date +%s)
  deployment_yaml | k apply -f - >/dev/null
  if wait_for 240 "10 available replicas" available_is 10; then
    result ok deployment "10/10 available after $(($(date +%s) - t0)) s"
  else
    result FAIL deployment "$(k get deploy $DEPLOY -o jsonpath='{.status.availableReplicas}') available; last pod event: $(k get events --field-selector involvedObject.kind=Pod -o jsonpath='{.items[-1:].message}' | cut -c1-300)"
  fi
  k get pods -l app=$DEPLOY -o wide >>"$SUMMARY"
  for n in "${NODES[@]}"; do
    local count bad=0 cidr
    count=$(pods_on "$n" | wc -l)
    cidr=$(cat "$D/$n/pod-cidr")
    for p in $(pods_on "$n"); do in_cidr "$(pod_ip "$p")" "$cidr" || bad=$((bad + 1)); done
    if [ "$count" -gt 0 ] && [ "$bad" -eq 0 ]; then
      result ok "spread+cidr cluster-$n" "$count pods, every pod IP in $cidr"
    else
      result FAIL "spread+cidr cluster-$n" "$count pods, $bad outside $cidr"
    fi
  done
  a=$(pods_on n1 | head -1)
  b=$(pods_on n2 | head -1)
  if available_is 10; then
    streaming_and_network "$a" "$b"
    runtime_restart "$a"
  fi

  scale_to_zero
  host_untouched
  echo "summary: $PASSED passed, $FAILED failed" | tee -a "$SUMMARY" >&2
  [ "$FAILED" -eq 0 ]
}

streaming_and_network() { # POD-ON-N1 POD-ON-N2
  local a=$1 b=$2 out pf port src pair
  # 2. Streaming: API server -> kubelet -> the runtime's streaming server.
  out=$(in_ctl timeout 5 "${KUBECTL[@]}" logs -f --tail=1 "$a" 2>&1 || true)
  if [ "$(echo "$out" | grep -c "^tick .* $a\$")" -ge 3 ]; then
    result ok "logs -f" "$(echo "$out" | grep -c '^tick') lines in 5 s, last: $(echo "$out" | tail -1)"
  else
    result FAIL "logs -f" "$(echo "$out" | tail -2 | tr '\n' ' ')"
  fi
  out=$(in_ctl script -qec "${KUBECTL[*]} exec -it $b -- sh -c 'tty; echo exec-ok \$(hostname)'" /dev/null 2>&1 | tr -d '\r\0' || true)
  # (A "^@" before the output comes and goes with either runtime: script's echo of a NUL.)
  if echo "$out" | grep -q '/dev/pts/' && echo "$out" | grep -q "exec-ok $b\$"; then
    result ok "exec -it" "$(echo "$out" | tr '\n' ' ')"
  else
    result FAIL "exec -it" "$(echo "$out" | tr '\n' ' ')"
  fi
  out=$(in_ctl timeout 5 "${KUBECTL[@]}" attach "$b" -c c 2>&1 || true)
  if [ "$(echo "$out" | grep -c "^tick .* $b\$")" -ge 2 ]; then
    result ok attach "$(echo "$out" | grep -c '^tick') lines in 5 s, last: $(echo "$out" | grep '^tick' | tail -1)"
  else
    result FAIL attach "$(echo "$out" | tail -2 | tr '\n' ' ')"
  fi
  port=18080
  in_ctl "${KUBECTL[@]}" port-forward "pod/$a" "$port:8080" >"$D/logs/port-forward.log" 2>&1 &
  pf=$!
  out=""
  for ((i = 0; i < 20; i++)); do
    out=$(in_ctl curl -sf "http://127.0.0.1:$port/" 2>/dev/null) && break
    sleep 0.5
  done
  kill "$pf" 2>/dev/null || true
  wait "$pf" 2>/dev/null || true
  if [ "$out" = "$a" ]; then
    result ok port-forward "GET 127.0.0.1:$port -> $a:8080 answered '$out'"
  else
    result FAIL port-forward "answer '$out'"
  fi

  # 3. Pod to pod across the nodes, both ways.
  for pair in "$a $b" "$b $a"; do
    set -- $pair
    out=$(k exec "$1" -- timeout 5 wget -qO- "http://$(pod_ip "$2"):8080/" 2>&1 || true)
    if [ "$out" = "$2" ]; then
      result ok "pod-to-pod" "$1 ($(pod_ip "$1")) -> $2 ($(pod_ip "$2")):8080 answered '$out'"
      # Kubernetes' network model: pods reach each other without NAT.
      src=$(k exec "$1" -- timeout 5 wget -qO- "http://$(pod_ip "$2"):8080/cgi-bin/ip" 2>&1 || true)
      src=${src#[::ffff:}
      src=${src%]}
      if [ "$src" = "$(pod_ip "$1")" ]; then
        result ok "pod-to-pod without NAT" "$2 saw its client as $src, $1's own address"
      else
        result FAIL "pod-to-pod without NAT" "$2 saw its client as $src, not $1's $(pod_ip "$1")"
      fi
    else
      result FAIL "pod-to-pod" "$1 -> $2 ($(pod_ip "$2")): '$out'"
    fi
  done

}

runtime_restart() { # POD-ON-N1
  local a=$1 out
  # 4. The runtime of cluster-n1 killed and restarted: its pods keep running.
  local before after rt=berth-n1 pid
  [ "$RUNTIME" = berth ] || rt=containerd-n1
  before=$(pod_states n1)
  pid=$(cat "$D/pids/$rt")
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  log "killed $rt (pid $pid) with SIGKILL"
  sleep 3
  runtime_up n1
  sleep 25 # two of kubelet's relist and status periods
  after=$(pod_states n1)
  out=$(k exec "$a" -- sh -c 'echo alive' 2>&1 || true)
  if [ "$before" = "$after" ] && [ "$out" = alive ]; then
    result ok "runtime restart" "SIGKILL + restart of $rt: $(echo "$after" | wc -l) pods, container IDs and restartCount unchanged, exec works"
  else
    result FAIL "runtime restart" "before: $(echo "$before" | tr '\n' ';') after: $(echo "$after" | tr '\n' ';') exec: $out"
  fi

}

scale_to_zero() {
  local t0
  # 5. Scaled to 0: nothing left on either node.
  t0=$(date +%s)
  k scale deploy $DEPLOY --replicas=0 >/dev/null
  wait_for 120 "the pods to go" no_pods || true
  for n in "${NODES[@]}"; do
    if wait_for 180 "cluster-$n to be empty" node_empty "$n"; then
      result ok "scale to 0 cluster-$n" "nothing left after $(($(date +%s) - t0)) s$([ "$RUNTIME" = berth ] && echo ": $(tail -1 "$D/logs/leaks-$n.txt")")"
    fi
  done
  k delete deploy $DEPLOY >/dev/null
}

host_untouched() {
  if diff -q "$D/pid1.cgroup" /proc/1/cgroup >/dev/null; then
    result ok "host untouched" "PID 1's cgroups unchanged; kubelet's sysctl writes went to its own files: $(cd "$D/n1/sysctl" && for f in *; do printf '%s=%s ' "$f" "$(cat "$f")"; done)"
  else
    result FAIL "host untouched" "PID 1's cgroups changed"
  fi
}
