#!/usr/bin/env bash
# Runs the docker-compose cluster as local processes, for machines without Docker: a real
# 3-member etcd cluster, an S3 server (moto), 2 content stores, 2 bus nodes, 2 coordinators and
# the garbage collector (`aetherd gc`) of target/release/aetherd, all on 127.0.0.1, each server
# on its own port.
#
#   scripts/local-cluster.sh                 # start, print the endpoints, run until Ctrl-C
#   scripts/local-cluster.sh start -d        # start in the background and return
#   scripts/local-cluster.sh status          # what runs, and its health
#   scripts/local-cluster.sh stop            # stop a background cluster
#
# Options: --dir DIR (logs, pids, etcd data; default .cluster in the repository), --base-port N
# (default 7600).
# Ports, from N: coordinators N, N+1; stores N+10, N+11; buses N+20, N+21; etcd clients
# N+30..N+32 (peers N+40..N+42); S3 N+50; gc serves no port. DIR/env holds AETHER_* exports
# for the CLI. gc collects every AETHER_GC_INTERVAL_SECS (default 3600) objects unreachable
# for AETHER_GC_GRACE_SECS (default 3600); set them when starting to change that.
# Every start is a fresh cluster: moto keeps objects in memory only, so old etcd data would
# point at objects that are gone; DIR's etcd data and logs are replaced.
# Set AETHERD=/path/to/aetherd to run another build; without it target/release/aetherd is built
# when missing. Missing tools (etcd, moto, Python gRPC) come from scripts/install-deps.sh cluster.
# Stopping goes gc and coordinators, then buses and stores, then S3 and etcd: each aetherd gets SIGTERM
# and releases its leases while etcd is still up (SIGKILL after 20 s).
set -euo pipefail
caller=$PWD   # relative --dir and AETHERD are relative to where the script was started from
cd "$(dirname "$0")/.."
repo=$PWD
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2; }

action=start
detach=false
dir=$repo/.cluster
base=
while [ $# -gt 0 ]; do
  case "$1" in
    start | stop | status) action=$1 ;;
    -d | --detach) detach=true ;;
    --dir) dir=${2:?--dir needs a directory}; shift ;;
    --dir=*) dir=${1#--dir=} ;;
    --base-port) base=${2:?--base-port needs a number}; shift ;;
    --base-port=*) base=${1#--base-port=} ;;
    -h | --help) usage ;;
    *) echo "local-cluster: unknown argument $1" >&2; usage ;;
  esac
  shift
done
dir=$(absolute "$dir")
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# status and stop use the ports the cluster was started with.
if [ -z "$base" ] && [ "$action" != start ] && [ -f "$dir/base-port" ]; then base=$(cat "$dir/base-port"); fi
base=${base:-7600}
if ! [[ "$base" =~ ^[0-9]+$ ]] || [ "$base" -lt 1024 ] || [ "$base" -gt 65000 ]; then
  echo "local-cluster: --base-port must be a number in 1024..65000" >&2
  exit 2
fi
venv=$repo/.tools/venv
py=$venv/bin/python

# ---- ports and names ------------------------------------------------------------------------
coordinators=(coordinator-1 coordinator-2)
stores=(store-1 store-2)
buses=(bus-1 bus-2)
etcds=(etcd-1 etcd-2 etcd-3)
port_of() { # name -> port
  local n=${1##*-}
  case "$1" in
    coordinator-*) echo $((base + n - 1)) ;;
    store-*) echo $((base + 10 + n - 1)) ;;
    bus-*) echo $((base + 20 + n - 1)) ;;
    etcd-*) echo $((base + 30 + n - 1)) ;;
    s3) echo $((base + 50)) ;;
  esac
}
peer_port() { echo $((base + 40 + ${1##*-} - 1)); }
etcd_endpoints=$(for e in "${etcds[@]}"; do printf 'http://127.0.0.1:%s,' "$(port_of "$e")"; done)
etcd_endpoints=${etcd_endpoints%,}
s3_endpoint=http://127.0.0.1:$(port_of s3)
stop_order=(gc "${coordinators[@]}" "${buses[@]}" "${stores[@]}" s3 "${etcds[@]}")

# ---- processes: pid files hold "PID STARTTIME" so a reused pid is never signalled ----------
starttime() { # of a live process; nothing for an exited one (zombies included)
  awk '$3 != "Z" {print $22}' "/proc/$1/stat" 2>/dev/null
}
pid_of() { # name -> pid, if that process still runs
  local file=$dir/pids/$1.pid pid start
  [ -f "$file" ] || return 1
  read -r pid start <"$file" || return 1
  [ -n "$pid" ] && [ -n "$start" ] && [ "$(starttime "$pid")" = "$start" ] && echo "$pid"
}
launch() { # name command... : start in its own session (Ctrl-C reaches only this script)
  local name=$1; shift
  # A local, loopback-only cluster for trying things out: anyone may connect as "anonymous"
  # (cluster services refuse to start without an auth source unless told so).
  (cd "$dir" && AETHER_ALLOW_ANONYMOUS=${AETHER_ALLOW_ANONYMOUS:-true} exec setsid "$@" </dev/null >"$dir/logs/$name.log" 2>&1) &
  local pid=$!
  echo "$pid $(starttime "$pid")" >"$dir/pids/$name.pid"   # no start time: exited already
  disown "$pid" 2>/dev/null || true   # no "Killed" notices from bash: this script reports exits
}

stop_all() {
  local name pid group deadline
  # A tier at a time: gc and the coordinators (they release sessions in etcd and publish to
  # the bus), buses and stores, then S3 and the etcd members one by one (faster than all at once).
  for group in "gc ${coordinators[*]}" "${buses[*]} ${stores[*]}" "s3 ${etcds[0]}" "${etcds[@]:1:1}" "${etcds[@]:2:1}"; do
    local pids=()
    for name in $group; do
      if pid=$(pid_of "$name"); then kill -TERM "$pid" 2>/dev/null && pids+=("$pid"); fi
    done
    [ ${#pids[@]} -gt 0 ] || continue
    deadline=$((SECONDS + 20))
    while [ $SECONDS -lt $deadline ]; do
      local alive=0
      for pid in "${pids[@]}"; do [ -n "$(starttime "$pid")" ] && alive=1; done
      [ $alive -eq 0 ] && break
      sleep 0.2
    done
    for name in $group; do
      if pid=$(pid_of "$name"); then
        echo "local-cluster: $name did not stop within 20 s: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
  done
  rm -f "$dir"/pids/*.pid
}

http_get() { "$py" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=1).read().decode())' "$1"; }
etcd_healthy() { http_get "http://127.0.0.1:$(port_of "$1")/health" | grep -q '"health":"true"'; }

status() {
  local name pid running=0 health
  for name in "${stop_order[@]}"; do
    if pid=$(pid_of "$name"); then
      running=$((running + 1))
      health=""
      case "$name" in
        coordinator-* | store-* | bus-*)
          health=$("$py" "$repo/scripts/grpc-health.py" "127.0.0.1:$(port_of "$name")" 2>&1 | awk '{print $NF}') || true ;;
        etcd-*) if etcd_healthy "$name"; then health=healthy; else health=unhealthy; fi ;;
        s3) if http_get "$s3_endpoint/" >/dev/null 2>&1; then health=answers; else health="not answering"; fi ;;
        gc) health="running (no port; collections in $dir/logs/gc.log)" ;;
      esac
      if [ "$name" = gc ]; then
        printf '%-14s pid %-8s %-16s %s\n' "$name" "$pid" "" "$health"
      else
        printf '%-14s pid %-8s 127.0.0.1:%-6s %s\n' "$name" "$pid" "$(port_of "$name")" "$health"
      fi
    else
      printf '%-14s stopped\n' "$name"
    fi
  done
  [ $running -gt 0 ]
}

case "$action" in
  stop)
    stop_all
    echo "local-cluster: stopped (logs in $dir/logs)"
    exit 0 ;;
  status)
    status
    exit ;;
esac

# ---- start -----------------------------------------------------------------------------------
for name in "${stop_order[@]}"; do
  if pid_of "$name" >/dev/null; then
    echo "local-cluster: a cluster already runs from $dir ($name); run: $0 stop --dir $dir" >&2
    exit 1
  fi
done

if ! command -v etcd >/dev/null 2>&1 || [ ! -x "$venv/bin/moto_server" ] \
   || ! "$py" -c 'import grpc_health.v1, boto3' >/dev/null 2>&1; then
  scripts/install-deps.sh cluster
fi
aetherd=$(absolute "${AETHERD:-$repo/target/release/aetherd}")
if [ ! -x "$aetherd" ]; then
  [ -z "${AETHERD:-}" ] || { echo "local-cluster: AETHERD=$aetherd is not executable" >&2; exit 1; }
  command -v protoc >/dev/null 2>&1 || scripts/install-deps.sh cluster
  echo "local-cluster: building $aetherd (cargo build --release -p aether-server; takes minutes once)"
  cargo build --release --locked -p aether-server
fi

busy=()
for name in "${stop_order[@]}"; do
  for port in $(port_of "$name") $([[ $name == etcd-* ]] && peer_port "$name"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then busy+=("$port ($name)"); fi
  done
done
if [ ${#busy[@]} -gt 0 ]; then
  echo "local-cluster: ports in use: ${busy[*]}; pick others with --base-port N" >&2
  exit 1
fi

rm -rf "$dir/logs" "$dir/pids" "$dir"/etcd-* "$dir/env"
mkdir -p "$dir/logs" "$dir/pids"
echo "$base" >"$dir/base-port"
started=false
cleanup() {
  if [ "$started" != true ] || [ "$detach" != true ]; then
    echo
    echo "local-cluster: stopping"
    stop_all
    echo "local-cluster: stopped (logs in $dir/logs)"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { # name message
  echo "local-cluster: $1: $2; last lines of $dir/logs/$1.log:" >&2
  tail -n 20 "$dir/logs/$1.log" >&2 || true
  exit 1
}

wait_for() { # name seconds check-command...
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    pid_of "$name" >/dev/null || die "$name" "exited during startup"
    [ $SECONDS -lt $deadline ] || die "$name" "not ready after ${secs}s"
    sleep 0.2
  done
}

# etcd: a real 3-member cluster on loopback.
initial_cluster=$(for e in "${etcds[@]}"; do printf '%s=http://127.0.0.1:%s,' "$e" "$(peer_port "$e")"; done)
initial_cluster=${initial_cluster%,}
for e in "${etcds[@]}"; do
  client=http://127.0.0.1:$(port_of "$e")
  peer=http://127.0.0.1:$(peer_port "$e")
  launch "$e" etcd --name "$e" --data-dir "$dir/$e" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$initial_cluster" --initial-cluster-token aetherfs-local \
    --initial-cluster-state new --logger zap --log-outputs stderr \
    --auto-compaction-mode periodic --auto-compaction-retention 5m \
    --quota-backend-bytes $((2 * 1024 * 1024 * 1024))
done

# S3: moto, in memory; the bucket is created once it answers.
launch s3 "$venv/bin/moto_server" -H 127.0.0.1 -p "$(port_of s3)"

for e in "${etcds[@]}"; do wait_for "$e" 30 etcd_healthy "$e"; done
wait_for s3 30 http_get "$s3_endpoint/"
AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local-secret AWS_DEFAULT_REGION=us-east-1 \
  "$py" - "$s3_endpoint" <<'EOF'
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1]).create_bucket(Bucket="aetherfs")
EOF
echo "local-cluster: etcd (3 members) and S3 ready"

s3_flags=(--store-backend s3 --s3-endpoint "$s3_endpoint" --s3-bucket aetherfs --s3-region us-east-1
  --s3-access-key local --s3-secret-key local-secret --s3-allow-http)
ready() { # name grpc-service: the "listening on" line, then grpc.health.v1 says SERVING
  grep -q "aetherd ${1%-*} listening on" "$dir/logs/$1.log" \
    && "$py" "$repo/scripts/grpc-health.py" "127.0.0.1:$(port_of "$1")" "$2"
}
for s in "${stores[@]}"; do
  launch "$s" "$aetherd" store --listen "127.0.0.1:$(port_of "$s")" "${s3_flags[@]}"
done
for b in "${buses[@]}"; do
  launch "$b" "$aetherd" bus --listen "127.0.0.1:$(port_of "$b")" "${s3_flags[@]}" \
    --etcd-endpoints "$etcd_endpoints" --advertise-addr "http://127.0.0.1:$(port_of "$b")"
done
for s in "${stores[@]}"; do wait_for "$s" 60 ready "$s" aetherfs.v1.ContentService; done
for b in "${buses[@]}"; do wait_for "$b" 60 ready "$b" aetherfs.v1.BusService; done
# Coordinator i uses store i and bus i: any store serves any content (they share the bucket)
# and any bus node forwards to a stream's holder.
for c in "${coordinators[@]}"; do
  i=${c##*-}
  launch "$c" "$aetherd" coordinator --listen "127.0.0.1:$(port_of "$c")" \
    --etcd-endpoints "$etcd_endpoints" \
    --store-endpoint "http://127.0.0.1:$(port_of "store-$i")" \
    --bus-endpoint "http://127.0.0.1:$(port_of "bus-$i")" \
    --advertise-addr "http://127.0.0.1:$(port_of "$c")"
done
for c in "${coordinators[@]}"; do wait_for "$c" 60 ready "$c" aetherfs.v1.SessionService; done
# Garbage collection: one collector for the cluster, reaching etcd and S3 directly. It serves
# no port: it is ready once it has registered with etcd and reached the bucket.
launch gc "$aetherd" gc --etcd-endpoints "$etcd_endpoints" "${s3_flags[@]}"
wait_for gc 60 grep -q "garbage collector ready" "$dir/logs/gc.log"

cat >"$dir/env" <<EOF
# source this file to point the aether CLI (and the SDK's defaults) at the local cluster
export AETHER_ENDPOINT=http://127.0.0.1:$(port_of coordinator-1)
export AETHER_STORE_ENDPOINT=http://127.0.0.1:$(port_of store-1)
export AETHER_BUS_ENDPOINT=http://127.0.0.1:$(port_of bus-1)
export AETHER_ETCD_ENDPOINTS=$etcd_endpoints
export AETHER_S3_ENDPOINT=$s3_endpoint
EOF
started=true

cat <<EOF
local-cluster: ready ($dir)
  coordinators  http://127.0.0.1:$(port_of coordinator-1)  http://127.0.0.1:$(port_of coordinator-2)
  stores        http://127.0.0.1:$(port_of store-1)  http://127.0.0.1:$(port_of store-2)
  buses         http://127.0.0.1:$(port_of bus-1)  http://127.0.0.1:$(port_of bus-2)
  etcd          $etcd_endpoints
  S3 (moto)     $s3_endpoint  bucket aetherfs (in memory)
  gc            every ${AETHER_GC_INTERVAL_SECS:-3600} s, grace ${AETHER_GC_GRACE_SECS:-3600} s (log: $dir/logs/gc.log)
  logs          $dir/logs/
  CLI           source $dir/env && aether session create
EOF

if [ "$detach" = true ]; then
  echo "local-cluster: running in the background; stop with: $0 stop --dir $dir"
  exit 0
fi
echo "local-cluster: Ctrl-C stops everything"
declare -A reported=()
while true; do
  for name in "${stop_order[@]}"; do
    if [ -z "${reported[$name]:-}" ] && ! pid_of "$name" >/dev/null; then
      echo "local-cluster: $name exited; see $dir/logs/$name.log" >&2
      reported[$name]=1
    fi
  done
  sleep 1 &
  wait $! || true
done
