#!/usr/bin/env bash
# Startup benchmark: how long Berth takes from `berth apply` of a 3-replica
# hello service to 3 ready endpoints, side by side with the same image
# started on plain containerd with `ctr run`, in one run. `make
# bench-startup` builds bin/berth and the images and starts containerd first.
#
# Columns (milliseconds, wall clock on this machine):
#
#   berth    `berth apply -f benchhello.yaml --wait`, timed around the whole
#            command: CLI start, Apply RPC, etcd write, scheduling, the node
#            agent seeing the assignment, netns + CNI (bridge, portmap,
#            loopback) + containerd create/start of 3 containers, Berth's own
#            HTTP /healthz probes (every 100 ms until the first success, then
#            every 1s as the manifest says), status back to the control plane and the CLI's
#            100 ms poll of ListServices seeing 3/3 ready.
#   (cli)    the "all ready in X" the CLI prints: the same minus the CLI start
#            and the Apply RPC (it starts counting after Apply returned).
#   ctr      the peer: 3 pipelines in parallel, each `ip netns add`, CNI ADD
#            by hand with the same plugins and config Berth uses (bridge
#            isGateway/ipMasq/hairpin + host-local, portmap, loopback; a
#            private conflist, IPAM dir and bridge, plugins from
#            /usr/lib/cni), `ctr run -d --with-ns network:...` with the same
#            CPU quota (50m) and memory limit (32Mi) and a log file, then curl
#            GET http://IP:8080/healthz every 20 ms until 200; the column ends
#            when the last of the 3 answered 200.
#
# Why not `ctr run --cni`: ctr 1.6 reads CNI config only from /etc/cni/net.d
# and plugins only from /opt/cni/bin (gocni.WithDefaultConf, no flags), and
# with -d it never runs CNI DEL. Using it would mean writing into those
# system directories, so the script does ctr's CNI step itself.
#
# Untimed: image load/import (both sides load the same tarball beforehand),
# teardown between runs (`berth delete service --wait`; ctr task kill/rm,
# container rm, CNI DEL, netns del). The runs alternate berth, ctr, berth,
# ... so both see the same background load; berth dev stays up (idle)
# during the ctr runs.
#
# Network: only loopback, and container addresses in 10.213.128.0/24
# (Berth, --cluster-cidr 10.213.128.0/20) and 10.213.144.0/24 (this script).
#
# Environment: BENCH_RUNS (default 5), BENCH_KEEP_TMP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

RUNS=${BENCH_RUNS:-5}
REPLICAS=3
SVC=benchhello
IMAGE_TAR=images/hello-v1.tar
IMAGE_REF=berth.local/hello:v1

# berth dev: its own ports, namespace, bridge and pod network.
API=127.0.0.1:7410
GATEWAY=127.0.0.1:7480
XDS=127.0.0.1:7411
DNS=127.0.0.1:7453
BERTH_NS=berth-bench
BERTH_BRIDGE=berthbench0
BERTH_CIDR=10.213.128.0/20

# ctr peer: its own containerd namespace, netns prefix, bridge and subnet.
CTR_NS=berth-bench-ctr
CTR_NETNS_PREFIX=berth-bench-ctr-
CTR_BRIDGE=berthbctr0
CTR_NET=berth-bench-ctr
CTR_SUBNET=10.213.144.0/24
CTR_GW=10.213.144.1
CNI_BIN=/usr/lib/cni
CPU_QUOTA=5000 # 50m of a 100000 us period, as Berth sets for cpu: 50m
CPU_PERIOD=100000
MEM_LIMIT=33554432 # 32Mi
POLL_S=0.02
READY_TIMEOUT_S=60

BERTH="bin/berth --server $API" # with BERTH_CONFIG, set once $TMP is known
PIDFILE=/run/berth-bench-dev.pid # berth dev of a run that was killed
TMP=
BERTH_PID=

log() { printf '%s\n' "$*" >&2; }
die() {
  log "bench: $*"
  exit 1
}
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
ms() { awk -v us="$1" 'BEGIN { printf "%.0f", us / 1000 }'; }
# dur_ms: a Go duration as printed by the CLI (987ms, 1.234s, 1m2.5s) in ms.
dur_ms() {
  awk -v d="$1" 'BEGIN {
    t = 0
    while (match(d, /^[0-9.]+(ms|us|µs|ns|m|s|h)/)) {
      tok = substr(d, 1, RLENGTH); d = substr(d, RLENGTH + 1)
      n = tok + 0; u = tok; sub(/^[0-9.]+/, "", u)
      f = (u == "h") ? 3600000 : (u == "m") ? 60000 : (u == "s") ? 1000 : (u == "ms") ? 1 : (u == "ns") ? 1e-6 : 1e-3
      t += n * f
    }
    if (d != "") { print "?"; exit }
    printf "%.0f", t }'
}

# ---------------------------------------------------------------- CNI (ctr)

bridge_conf() {
  cat <<EOF
{"cniVersion":"1.0.0","name":"$CTR_NET","type":"bridge","bridge":"$CTR_BRIDGE",
 "isGateway":true,"ipMasq":true,"hairpinMode":true,
 "ipam":{"type":"host-local","dataDir":"$TMP/ctr-ipam",
  "ranges":[[{"subnet":"$CTR_SUBNET","gateway":"$CTR_GW"}]],
  "routes":[{"dst":"0.0.0.0/0"}]}}
EOF
}
# portmap_conf PREVRESULT: chained after bridge, as in Berth's conflist (no
# host ports here, so it passes the result through).
portmap_conf() {
  cat <<EOF
{"cniVersion":"1.0.0","name":"$CTR_NET","type":"portmap",
 "capabilities":{"portMappings":true},"snat":true,
 "runtimeConfig":{"portMappings":[]},"prevResult":$1}
EOF
}
lo_conf() { echo '{"cniVersion":"1.0.0","name":"cni-loopback","type":"loopback"}'; }

# cni CMD PLUGIN CONTAINERID NETNS IFNAME CONF
cni() {
  CNI_COMMAND=$1 CNI_CONTAINERID=$3 CNI_NETNS=$4 CNI_IFNAME=$5 CNI_PATH=$CNI_BIN \
    "$CNI_BIN/$2" <<<"$6"
}

# ctr_start ID: netns, CNI, ctr run -d, then poll /healthz until 200.
ctr_start() {
  local id=$1 netns=/run/netns/$CTR_NETNS_PREFIX$1 res ip deadline code
  ip netns add "$CTR_NETNS_PREFIX$id"
  res=$(cni ADD bridge "$id" "$netns" eth0 "$(bridge_conf)")
  res=$(cni ADD portmap "$id" "$netns" eth0 "$(portmap_conf "$res")")
  ip=$(grep -o '"address": *"[0-9.]*/' <<<"$res" | head -n1 | grep -o '[0-9.]*/')
  ip=${ip%/}
  [[ $ip == 10.213.* ]] || die "ctr: no IPv4 address in the CNI result: $res"
  cni ADD loopback "$id" "$netns" lo "$(lo_conf)" >/dev/null
  ctr -n "$CTR_NS" run -d --log-uri "file://$TMP/ctr-logs/$id.log" \
    --with-ns "network:$netns" --cpu-quota "$CPU_QUOTA" --cpu-period "$CPU_PERIOD" \
    --memory-limit "$MEM_LIMIT" --env "BERTH_INSTANCE=$id" "$IMAGE_REF" "$id" >/dev/null
  deadline=$((SECONDS + READY_TIMEOUT_S))
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://$ip:8080/healthz" || true)
    [[ $code == 200 ]] && return 0
    ((SECONDS < deadline)) || {
      log "ctr: $id ($ip) not answering 200 after ${READY_TIMEOUT_S}s (last: $code)"
      return 1
    }
    sleep "$POLL_S"
  done
}

# ctr_stop ID: kill and remove the task and container, CNI DEL, netns del.
# Tolerates any part being gone already.
ctr_stop() {
  local id=$1 netns=/run/netns/$CTR_NETNS_PREFIX$1
  ctr -n "$CTR_NS" task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do
    ctr -n "$CTR_NS" task rm "$id" >/dev/null 2>&1 && break
    ctr -n "$CTR_NS" task ls -q 2>/dev/null | grep -qx "$id" || break
    sleep 0.1
  done
  ctr -n "$CTR_NS" task rm -f "$id" >/dev/null 2>&1 || true
  ctr -n "$CTR_NS" containers rm "$id" >/dev/null 2>&1 || true
  if [[ -e $netns ]]; then
    cni DEL loopback "$id" "$netns" lo "$(lo_conf)" >/dev/null 2>&1 || true
    cni DEL portmap "$id" "$netns" eth0 "$(portmap_conf '{"cniVersion":"1.0.0"}')" >/dev/null 2>&1 || true
    cni DEL bridge "$id" "$netns" eth0 "$(bridge_conf)" >/dev/null 2>&1 || true
    ip netns del "$CTR_NETNS_PREFIX$id" 2>/dev/null || true
  fi
}

# ctr_clean_all: every container in the ctr namespace and every netns of
# ours, whatever run left them.
ctr_clean_all() {
  local id n
  for id in $(ctr -n "$CTR_NS" containers ls -q 2>/dev/null); do ctr_stop "$id"; done
  for id in $(ctr -n "$CTR_NS" task ls -q 2>/dev/null); do ctr_stop "$id"; done
  for n in /run/netns/"$CTR_NETNS_PREFIX"*; do
    [[ -e $n ]] || continue
    ctr_stop "${n#/run/netns/"$CTR_NETNS_PREFIX"}"
  done
}

# ------------------------------------------------------------- berth leftovers

# berth_ns_clean: containers, tasks and netns left in Berth's containerd
# namespace by an earlier berth dev that did not stop.
berth_ns_clean() {
  local id n
  for id in $(ctr -n "$BERTH_NS" task ls -q 2>/dev/null); do
    ctr -n "$BERTH_NS" task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    ctr -n "$BERTH_NS" task rm -f "$id" >/dev/null 2>&1 || true
  done
  for id in $(ctr -n "$BERTH_NS" containers ls -q 2>/dev/null); do
    ctr -n "$BERTH_NS" task rm -f "$id" >/dev/null 2>&1 || true
    ctr -n "$BERTH_NS" containers rm "$id" >/dev/null 2>&1 || true
  done
  for n in /run/netns/"$BERTH_NS"-*; do
    [[ -e $n && $n != /run/netns/"$CTR_NETNS_PREFIX"* ]] || continue
    ip netns del "${n#/run/netns/}" 2>/dev/null || true
  done
}

images_clean() {
  local ns ref
  for ns in "$CTR_NS" "$BERTH_NS"; do
    for ref in $(ctr -n "$ns" images ls -q 2>/dev/null); do
      ctr -n "$ns" images rm "$ref" >/dev/null 2>&1 || true
    done
  done
}

# ------------------------------------------------------------------ berth dev

stop_berth() {
  local i
  [[ -n $BERTH_PID ]] || return 0
  kill -INT "$BERTH_PID" 2>/dev/null || true
  for i in $(seq 1 600); do
    kill -0 "$BERTH_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$BERTH_PID" 2>/dev/null; then
    log "berth dev (pid $BERTH_PID) did not stop 60s after SIGINT; sending SIGKILL"
    kill -KILL "$BERTH_PID" 2>/dev/null || true
    wait "$BERTH_PID" 2>/dev/null || true
    BERTH_PID=
    rm -f "$PIDFILE"
    return 1
  fi
  local code=0
  wait "$BERTH_PID" 2>/dev/null || code=$?
  BERTH_PID=
  rm -f "$PIDFILE"
  if ss -Hltn "sport = :${API##*:}" | grep -q .; then
    log "berth dev exited ($code) but ${API} is still listening"
    return 1
  fi
  log "berth dev stopped (exit $code)"
}

cleanup() {
  local rc=$? ns
  trap - EXIT INT TERM
  set +e
  ctr_clean_all
  ip link del "$CTR_BRIDGE" 2>/dev/null
  if ! stop_berth; then
    [[ $rc -ne 0 ]] || rc=1
  fi
  if [[ -n $(ctr -n "$BERTH_NS" containers ls -q 2>/dev/null) ]]; then
    log "berth dev left containers in namespace $BERTH_NS; removing them"
  fi
  berth_ns_clean
  ip link del "$BERTH_BRIDGE" 2>/dev/null
  images_clean
  # Image removal is garbage-collected asynchronously: retry for a while.
  for ns in "$CTR_NS" "$BERTH_NS"; do
    for _ in $(seq 1 30); do
      ctr namespaces ls -q | grep -qx "$ns" || break
      ctr namespaces rm "$ns" >/dev/null 2>&1 && break
      sleep 0.2
    done
  done
  if [[ -n $TMP && -d $TMP ]]; then
    if [[ ${BENCH_KEEP_TMP:-} == 1 || $rc -ne 0 ]]; then
      [[ ${BENCH_KEEP_TMP:-} == 1 ]] || rm -rf "$TMP/data" # etcd's 64 MB WAL
      log "bench: temp dir kept: $TMP (berth dev log: $TMP/berth-dev.log)"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}

# ---------------------------------------------------------------- preflight

[[ $(id -u) == 0 ]] || die "needs root (containerd, netns, CNI)"
for f in bin/berth "$IMAGE_TAR" "$CNI_BIN/bridge" "$CNI_BIN/host-local" "$CNI_BIN/portmap" "$CNI_BIN/loopback"; do
  [[ -e $f ]] || die "missing $f (make build images; CNI plugins in $CNI_BIN)"
done
for c in ctr curl setsid ip ss awk; do
  command -v "$c" >/dev/null || die "missing command $c"
done
ctr version >/dev/null 2>&1 || die "containerd is not answering (bash scripts/start-containerd.sh)"
# A run killed with SIGKILL leaves its berth dev running: stop it (only if
# the pid recorded is still that berth dev).
if [[ -s $PIDFILE ]]; then
  old=$(<"$PIDFILE")
  cmdline=
  [[ $old =~ ^[0-9]+$ ]] && cmdline=$(tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null) || true
  if grep -q -- "dev .*--containerd-namespace $BERTH_NS " <<<"$cmdline"; then
    log "bench: stopping berth dev $old left by an earlier run"
    kill -INT "$old" 2>/dev/null || true
    for _ in $(seq 1 300); do
      kill -0 "$old" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$old" 2>/dev/null && die "berth dev $old (earlier run) did not stop after SIGINT"
    # and its temp dir (etcd's data), if it is one of ours.
    old_data=$(sed -n 's/.*--data-dir \(\/tmp\/berth-bench\.[A-Za-z0-9]*\)\/data .*/\1/p' <<<"$cmdline")
    [[ -n $old_data ]] && rm -rf "$old_data"
  fi
  rm -f "$PIDFILE"
fi
for a in "$API" "$GATEWAY" "$XDS" "$DNS"; do
  if ss -Hltn "sport = :${a##*:}" | grep -q . || ss -Hlun "sport = :${a##*:}" | grep -q .; then
    ss -Hltnup "sport = :${a##*:}" >&2 || true
    die "port ${a##*:} is in use (an earlier berth dev still running?)"
  fi
done
# The peer's subnet must not be routed anywhere but its own bridge.
if ip -4 route show to "$CTR_SUBNET" | grep -v "dev $CTR_BRIDGE" | grep -q .; then
  die "$CTR_SUBNET is already routed elsewhere: $(ip -4 route show to "$CTR_SUBNET")"
fi

trap cleanup EXIT
trap 'exit 130' INT TERM

TMP=$(mktemp -d /tmp/berth-bench.XXXXXX)
export BERTH_CONFIG=$TMP/data/admin.conf
mkdir -p "$TMP/ctr-ipam" "$TMP/ctr-logs"

log "bench: cleaning up leftovers of earlier runs"
ctr_clean_all
ip link del "$CTR_BRIDGE" 2>/dev/null || true
berth_ns_clean
images_clean

# ------------------------------------------------------------------- set up

log "bench: starting berth dev (data dir $TMP/data)"
# setsid: Ctrl-C reaches berth dev only through cleanup's SIGINT.
setsid bin/berth dev --data-dir "$TMP/data" --api-addr "$API" --gateway-addr "$GATEWAY" \
  --xds-addr "$XDS" --dns-addr "$DNS" --metrics-addr "" --ui-addr "" \
  --containerd-namespace "$BERTH_NS" --bridge "$BERTH_BRIDGE" --cluster-cidr "$BERTH_CIDR" \
  --dns-ttl 1s --dns-upstream 127.0.0.1:9 >"$TMP/berth-dev.log" 2>&1 &
BERTH_PID=$!
echo "$BERTH_PID" >"$PIDFILE"
for i in $(seq 1 300); do
  if ! kill -0 "$BERTH_PID" 2>/dev/null; then
    tail -n 20 "$TMP/berth-dev.log" >&2
    BERTH_PID=
    die "berth dev exited during start-up"
  fi
  if $BERTH get nodes 2>/dev/null | grep -q ' Ready '; then break; fi
  ((i < 300)) || die "berth dev: no Ready node after 60s"
  sleep 0.2
done

log "bench: loading $IMAGE_TAR into berth and into ctr namespace $CTR_NS (untimed)"
$BERTH image load "$IMAGE_TAR" >/dev/null
ctr -n "$CTR_NS" images import "$IMAGE_TAR" >/dev/null
ctr -n "$CTR_NS" images ls -q | grep -qx "$IMAGE_REF" || die "ctr import did not create $IMAGE_REF"

MANIFEST=$TMP/$SVC.yaml
cat >"$MANIFEST" <<EOF
# examples/hello.yaml under another name, without a route.
apiVersion: berth.dev/v1
kind: Service
metadata:
  name: $SVC
  namespace: default
spec:
  image: $IMAGE_REF
  replicas: $REPLICAS
  ports:
    - name: http
      port: 8080
      protocol: http
  resources:
    cpu: 50m
    memory: 32Mi
  health:
    http:
      path: /healthz
      port: 8080
    interval: 1s
    timeout: 1s
EOF

# ---------------------------------------------------------------------- runs

berth_run() { # prints: wall_us cli_reported
  local t0 t1 out rep ips ip n=0
  t0=$(now_us)
  out=$($BERTH apply -f "$MANIFEST" --wait --timeout 2m) || {
    log "$out"
    $BERTH get instances >&2 || true
    die "berth apply --wait failed"
  }
  t1=$(now_us)
  rep=$(sed -n 's/^all ready in //p' <<<"$out")
  # Sanity check, untimed: the 3 endpoints Berth reports ready answer 200.
  ips=$($BERTH get instances -n default | awk -v s="$SVC" '$3==s && $7=="true" {print $8}')
  for ip in $ips; do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$ip:8080/healthz") == 200 ]] ||
      die "berth: $ip reported ready but /healthz is not 200"
    n=$((n + 1))
  done
  ((n == REPLICAS)) || die "berth: $n ready instances listed, want $REPLICAS"
  $BERTH delete service "$SVC" --wait >/dev/null
  echo "$((t1 - t0)) $(dur_ms "${rep:-?}")"
}

ctr_run() { # RUN; prints: wall_us
  local run=$1 t0 t1 k pids=() fail=0
  t0=$(now_us)
  for k in $(seq 1 "$REPLICAS"); do
    ctr_start "r$run-$k" &
    pids+=($!)
  done
  for k in "${pids[@]}"; do wait "$k" || fail=1; done
  t1=$(now_us)
  ((fail == 0)) || die "ctr run $run failed"
  for k in $(seq 1 "$REPLICAS"); do ctr_stop "r$run-$k"; done
  echo "$((t1 - t0))"
}

berth_ms=()
berth_cli=()
ctr_ms=()
for run in $(seq 1 "$RUNS"); do
  log "bench: run $run/$RUNS: berth"
  out=$(berth_run)
  read -r w rep <<<"$out"
  berth_ms+=("$(ms "$w")")
  berth_cli+=("$rep")
  log "bench: run $run/$RUNS: ctr"
  c=$(ctr_run "$run")
  ctr_ms+=("$(ms "$c")")
done

# -------------------------------------------------------------------- report

stats() { # values... -> "median min max"
  printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {
    m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2
    printf "%g %g %g\n", m, v[1], v[NR] }'
}

read -r bmed bmin bmax < <(stats "${berth_ms[@]}")
read -r cmed cmin cmax < <(stats "${ctr_ms[@]}")

echo
echo "Startup of $REPLICAS replicas of $IMAGE_REF to ready, $RUNS runs (ms, wall clock)"
echo "  berth : berth apply --wait (CLI start -> 3/3 ready seen by the CLI); Berth's"
echo "          own /healthz probes (every 100ms until the first success, then 1s)"
echo "  (cli) : the 'all ready in' the CLI prints (counts from after Apply returned)"
echo "  ctr   : ctr run -d x3 in parallel, each with its own netns and CNI bridge"
echo "          (same plugins/config as Berth, run by this script), same 50m CPU /"
echo "          32Mi limits; until each answers 200 on :8080/healthz, polled every 20 ms"
echo
printf '%-8s %10s %10s %10s\n' run berth "(cli)" ctr
for i in "${!berth_ms[@]}"; do
  printf '%-8s %10s %10s %10s\n' "$((i + 1))" "${berth_ms[$i]}" "${berth_cli[$i]}" "${ctr_ms[$i]}"
done
printf '%-8s %10s %10s %10s\n' median "$bmed" "" "$cmed"
printf '%-8s %10s %10s %10s\n' min "$bmin" "" "$cmin"
printf '%-8s %10s %10s %10s\n' max "$bmax" "" "$cmax"
echo
awk -v b="$bmed" -v c="$cmed" 'BEGIN { printf "ratio berth median / ctr median = %.2f\n", b / c }'
echo "Caveats: 2 shared cores, other jobs may run: compare only within one run."
echo "Berth's figure also includes scheduling, the status report and the CLI's"
echo "100 ms readiness poll; the ctr figure polls every 20 ms."
