#!/usr/bin/env bash
# Endpoint health benchmark (prints figures; not a test), in private network namespaces:
#   - the daemon's CPU (share of one core) and RSS while it checks 1,000 and 10,000
#     endpoints every 10 s, with `tcp` and `http` health checks (Services annotated
#     `portald.io/health-check`, 10 endpoints each, on one nginx answering every address);
#   - per mode (userspace, kernel), the time from a pod's health endpoint starting to fail
#     (httpGet readiness probe, periodSeconds 1, failureThreshold 2) to the last request it
#     served, seen by a client sending requests back to back through the VIP.
#
#   bench/probes.sh        # env: SIZES="1000 10000" TYPES="none tcp http" WINDOW=30 FLOOR=10000 BACKEND=nftables KEEP=0
#
# `none` is the baseline: the same Services and Endpoints without the annotation (what the
# daemon costs anyway: its drift checks, its listeners); the checking cost is the difference.
#
# Topology (bench/lib.sh): node 10.244.1.1 (portald run), server 10.244.1.2 (nginx on :8080
# for every endpoint address 10.245.0.0/16 held on its loopback, two pods' HTTP servers on
# 10.245.255.1-2:80), client 10.244.1.3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZES=${SIZES:-1000 10000}
TYPES=${TYPES:-none tcp http}
WINDOW=${WINDOW:-30}
FLOOR=${FLOOR:-10000}
BACKEND=${BACKEND:-nftables}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-bench}

[ "$(id -u)" = 0 ] || { echo "probes.sh: needs root (network namespaces)" >&2; exit 1; }

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_tools nginx:nginx-light curl:curl python3:python3
bench_build

N=pbbench$$
WORK=$(mktemp -d /tmp/portald-probes.XXXXXX)
PIDS=()
bench_topology
ip -n "$N-node" route add 10.245.0.0/16 via 10.244.1.2
HZ=$(getconf CLK_TCK)

# Endpoint addresses on the server's loopback: 10.245.<i/250>.<i%250+1>.
addresses() { # count
  python3 -c "
import sys
for i in range(int(sys.argv[1])):
    print(f'10.245.{i // 250}.{i % 250 + 1}')" "$1"
}
addresses 10000 | sed 's|.*|addr add &/32 dev lo|' | in_ns server ip -batch -
in_ns server ip addr add 10.245.255.1/32 dev lo
in_ns server ip addr add 10.245.255.2/32 dev lo

cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 8080 reuseport backlog=4096; location / { return 200 "ok\n"; } }
}
EOF
ip netns exec "$N-server" nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

SOCK=$WORK/s.sock
start_daemon() { # mode
  rm -f "$WORK/state.json"
  ip netns exec "$N-node" "$P" run "$WORK/services" --backend "$BACKEND" --mode "$1" --control-socket "$SOCK" \
    --state-file "$WORK/state.json" --metrics-bind-address 0 --healthz-bind-address 0 \
    --resync-seconds 300 >"$WORK/daemon.log" 2>&1 &
  DAEMON=$!
  PIDS+=("$DAEMON")
  for _ in $(seq 200); do
    "$P" status --control-socket "$SOCK" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the daemon did not start:" >&2; tail -20 "$WORK/daemon.log" >&2; exit 1
}
stop_daemon() {
  kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
}
# Rows of `status --json` in each state: "healthy=N unhealthy=M unknown=K".
health_counts() {
  "$P" status --control-socket "$SOCK" --json | python3 -c "
import collections, json, sys
rows = json.load(sys.stdin)['endpoint_health']
c = collections.Counter(r['state'] for r in rows)
print(' '.join(f'{k}={c[k]}' for k in ('healthy', 'unhealthy', 'unknown')))"
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
sys_ticks() { awk '{ print $15 }' "/proc/$1/stat"; }
rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

echo "== checking cost: $BACKEND, kernel mode, every endpoint checked every 10 s, window ${WINDOW}s"
printf '%-8s %-5s %-10s %-10s %-10s %-9s %s\n' endpoints type "cpu(%core)" "of it sys" "rss(MiB)" "idle rss" states
for size in $SIZES; do
  for type in $TYPES; do
    rm -rf "$WORK/services"; mkdir -p "$WORK/services"
    case $type in
      none) check='' ;;
      tcp) check='{"tcpSocket":{},"periodSeconds":10}' ;;
      http) check='{"httpGet":{"path":"/healthz"},"periodSeconds":10}' ;;
    esac
    python3 - "$size" "$check" >"$WORK/services/checked.yaml" <<'EOF'
import sys
size, check = int(sys.argv[1]), sys.argv[2]
annotation = f"  annotations:\n    portald.io/health-check: '{check}'\n" if check else ""
docs = []
for s in range(size // 10):
    addrs = "".join(f"      - ip: 10.245.{i // 250}.{i % 250 + 1}\n" for i in range(s * 10, s * 10 + 10))
    docs.append(f"""apiVersion: v1
kind: Service
metadata:
  name: svc-{s}
{annotation}spec:
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: svc-{s}}}
subsets:
  - addresses:
{addrs}    ports: [{{port: 8080}}]
""")
print("---\n".join(docs))
EOF
    start_daemon kernel
    idle=$(rss_mib "$DAEMON")
    # Every endpoint judged (first verdicts within one period), then a quiet window.
    expected=$size
    [ "$type" = none ] && expected=0
    for _ in $(seq 60); do
      counts=$(health_counts)
      [[ $counts == "healthy=$expected "* ]] && break
      sleep 1
    done
    before=$(cpu_ticks "$DAEMON") sys_before=$(sys_ticks "$DAEMON")
    sleep "$WINDOW"
    after=$(cpu_ticks "$DAEMON") sys_after=$(sys_ticks "$DAEMON")
    share() { awk -v t="$1" -v hz="$HZ" -v w="$WINDOW" 'BEGIN { printf "%.2f", 100 * t / hz / w }'; }
    cpu=$(share $((after - before)))
    sys=$(share $((sys_after - sys_before)))
    printf '%-8s %-5s %-10s %-10s %-10s %-9s %s\n' "$size" "$type" "$cpu" "$sys" "$(rss_mib "$DAEMON")" "$idle" "$(health_counts)"
    stop_daemon
  done
done

echo
echo "== kernel floor: a bare loop (python3, zero linger) connecting to $FLOOR endpoints at the same rate (each every 10 s) for ${WINDOW}s, no daemon"
# What any prober pays in the kernel for real TCP handshakes through the veth and both
# namespaces' netfilter hooks (the peer's receive path runs in the sender's context).
in_ns node python3 - "$FLOOR" "$WINDOW" <<'PY'
import os, socket, struct, sys, time
n, window = int(sys.argv[1]), float(sys.argv[2])
addrs = [f"10.245.{i // 250}.{i % 250 + 1}" for i in range(n)]
linger = struct.pack("ii", 1, 0)
before = os.times()
start, done = time.monotonic(), 0
while time.monotonic() - start < window:
    due = int((time.monotonic() - start) * n / 10)
    while done < due:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        try:
            s.connect((addrs[done % n], 8080))
        except OSError:
            pass
        s.close()
        done += 1
    time.sleep(0.001)
after = os.times()
def share(t):
    return 100 * t / window
print(f"connects {done}  sys {share(after.system - before.system):.2f} % of a core  user {share(after.user - before.user):.2f} % (python's own)")
PY

echo
echo "== failover: a pod's health endpoint starts failing (httpGet, periodSeconds 1, failureThreshold 2)"
rm -rf "$WORK/services"; mkdir -p "$WORK/services"
for pod in 1 2; do
  echo ok >"$WORK/pod$pod.health"
  ip netns exec "$N-server" python3 "$ROOT/bin/tests/support/health_server.py" --name "pod$pod" --port 80 \
    --address "10.245.255.$pod" --state-file "$WORK/pod$pod.health" >"$WORK/pod$pod.log" 2>&1 &
  PIDS+=($!)
done
{
  echo "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.11.200.40
  selector: {app: web}
  ports: [{port: 80}]"
  for pod in 1 2; do
    echo "---
apiVersion: v1
kind: Pod
metadata: {name: pod$pod, labels: {app: web}}
spec:
  containers:
    - name: app
      readinessProbe: {httpGet: {path: /healthz, port: 80}, periodSeconds: 1, failureThreshold: 2}
status: {podIP: 10.245.255.$pod}"
  done
} >"$WORK/services/web.yaml"
printf '%-10s %-22s %-18s %s\n' mode "last served after (s)" "bound (s)" "requests after the flip (pod1/total)"
for mode in userspace kernel; do
  echo ok >"$WORK/pod1.health"
  start_daemon "$mode"
  for _ in $(seq 50); do
    [[ $(health_counts) == "healthy=2 "* ]] && break
    sleep 0.2
  done
  # Requests back to back for 8 s, each line "<unix time> <pod>"; pod1 fails at 2 s.
  ip netns exec "$N-client" python3 -c "
import time, urllib.request
end = time.time() + 8
while time.time() < end:
    try:
        name = urllib.request.urlopen('http://10.11.200.40/', timeout=2).read().decode().strip()
    except Exception as e:
        name = 'error'
    print(f'{time.time():.3f} {name}', flush=True)
" >"$WORK/requests.$mode" &
  client=$!
  sleep 2
  flip=$(date +%s.%N)
  echo fail >"$WORK/pod1.health"
  wait "$client"
  python3 - "$flip" "$WORK/requests.$mode" "$mode" <<'EOF'
import sys
flip = float(sys.argv[1])
rows = [l.split() for l in open(sys.argv[2]) if l.strip()]
after = [(float(t), n) for t, n in rows if float(t) >= flip]
last = max((t for t, n in after if n == "pod1"), default=flip)
print(f"{sys.argv[3]:<10} {last - flip:<22.2f} {'2 + reconcile':<18} {sum(n == 'pod1' for _, n in after)}/{len(after)}")
EOF
  stop_daemon
done
