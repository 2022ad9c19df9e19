#!/usr/bin/env bash
# Data-plane benchmark of portald's userspace proxy, side by side with the direct path and
# with HAProxy (mode tcp) on the same node, in private network namespaces (10.244.1.0/24):
#   - bulk TCP throughput (iperf3, one stream, 10 s);
#   - new connections per second and request latency p50/p99 (wrk, -c 256, 10 s, one request
#     per connection: `Connection: close`) against nginx `return 200`, with errors;
#   - memory per idle proxied connection: portald's (and HAProxy's) RSS before and after
#     2,000 idle connections through it;
#   - nstat counters (SYN retransmits, listen drops/overflows, retransmitted segments) per run.
#
#   bench/dataplane.sh        # env: DURATION=10 CONNS=256 IDLE=2000 THREADS=$(nproc) KEEP=0 PERF=0
#                               TESTS="iperf wrk idle" PATHS="direct vip haproxy"
#
# Fairness: portald and HAProxy get the same number of data-plane threads (THREADS: portald's
# TCP workers and tokio runtime workers via TOKIO_WORKER_THREADS, HAProxy `nbthread`); both
# share the same cores with the clients and servers. HAProxy runs with its defaults otherwise (no splice). PERF=1 records a
# `perf record -g` profile of the proxy (portald, HAProxy) during each iperf3 and wrk run
# (perf-*.txt in the work directory; KEEP=1 keeps it).
#
# Topology (all in namespaces this script creates and deletes):
#   client 10.244.1.3 ──┐
#                       br0 10.244.1.1 (node: portald run, HAProxy; VIP 10.11.0.1 routed here)
#   server 10.244.1.2 ──┘ (nginx, iperf3)
# Each path has its own backend port (no TIME_WAIT/PAWS clash between paths):
#   direct: 10.244.1.2:{5201,8081}   VIP: 10.11.0.1:{5202,80} -> :{5202,8082}
#   HAProxy: 10.244.1.1:{5203,8083} -> :{5203,8083}
#   listener (diagnostic: portald's proxy port itself, without the VIP's NAT; ports of its own;
#            portald's proxy-port guard refuses it unless PORTAL-PROXY-GUARD is flushed by hand):
#            10.244.1.1:<proxy port> -> :{5204,8084}
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10}
CONNS=${CONNS:-256}
IDLE=${IDLE:-2000}
THREADS=${THREADS:-$(nproc)}
PERF=${PERF:-0}
# For quick experiments: a subset of the runs, e.g. TESTS=wrk PATHS="vip haproxy vip haproxy".
# For a conn/s comparison worth quoting, alternate in ABBA order so that drift in the machine's
# load falls on both: TESTS=wrk PATHS="vip haproxy haproxy vip vip haproxy haproxy vip"
# (the table then also lists every run and the means).
TESTS=${TESTS:-iperf wrk idle}
PATHS=${PATHS:-direct vip haproxy}
wants() { [[ " $TESTS " == *" $1 "* ]]; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-bench}

[ "$(id -u)" = 0 ] || { echo "dataplane.sh: needs root (network namespaces)" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_tools iperf3:iperf3 haproxy:haproxy wrk:wrk nginx:nginx-light nstat:iproute2 curl:curl python3:python3

bench_build

# Background processes are started with `ip netns exec ... &` (no wrapper shell), so that $!
# is the process itself and the cleanup trap ends exactly what this script started.
# --- topology (bench/lib.sh) ---------------------------------------------------------------
N=pdbench$$
WORK=$(mktemp -d /tmp/portald-dataplane.XXXXXX)
PIDS=()
bench_topology

# --- servers (server namespace) ------------------------------------------------------------
for port in 5201 5202 5203 5204; do
  ip netns exec "$N-server" iperf3 -s -p "$port" >/dev/null 2>&1 &
  PIDS+=($!)
done
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  client_header_timeout 120s;
  keepalive_timeout 120s;
  server {
    listen 8081 backlog=4096;
    listen 8082 backlog=4096;
    listen 8083 backlog=4096;
    listen 8084 backlog=4096;
    location / { return 200 "ok\n"; }
  }
}
EOF
ip netns exec "$N-server" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" &
PIDS+=($!)

# --- portald (node namespace) --------------------------------------------------------------
mkdir -p "$WORK/services"
cat > "$WORK/services/bench.yaml" <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: default}
spec:
  clusterIP: 10.11.0.1
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8082}
  - {name: iperf, protocol: TCP, port: 5202, targetPort: 5202}
  - {name: http-listener, protocol: TCP, port: 81, targetPort: 8084}
  - {name: iperf-listener, protocol: TCP, port: 5204, targetPort: 5204}
---
apiVersion: v1
kind: Endpoints
metadata: {name: bench, namespace: default}
subsets:
- addresses: [{ip: 10.244.1.2}]
  ports:
  - {name: http, port: 8082, protocol: TCP}
  - {name: iperf, port: 5202, protocol: TCP}
  - {name: http-listener, port: 8084, protocol: TCP}
  - {name: iperf-listener, port: 5204, protocol: TCP}
EOF
TOKIO_WORKER_THREADS=$THREADS ip netns exec "$N-node" "$P" run "$WORK/services" --control-socket "$WORK/ctl.sock" --state-file "$WORK/state.json" >"$WORK/portald.log" 2>&1 &
PORTALD=$!
PIDS+=($PORTALD)

# --- HAProxy (node namespace) --------------------------------------------------------------
cat > "$WORK/haproxy.cfg" <<EOF
global
  maxconn 8000
  nbthread $THREADS
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend iperf
  bind 10.244.1.1:5203
  default_backend iperf
backend iperf
  server s1 10.244.1.2:5203
frontend http
  bind 10.244.1.1:8083 backlog 4096
  default_backend http
backend http
  server s1 10.244.1.2:8083
EOF
ip netns exec "$N-node" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HAPROXY=$!
PIDS+=($HAPROXY)

# --- readiness -----------------------------------------------------------------------------
wait_http() { # $1 url
  for _ in $(seq 100); do
    in_ns client curl -fs -m 1 "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "dataplane.sh: $1 not answering" >&2
  tail -n 20 "$WORK/portald.log" "$WORK/haproxy.log" "$WORK/nginx/error.log" >&2
  exit 1
}
wait_http http://10.244.1.2:8081/
wait_http http://10.11.0.1:80/
wait_http http://10.244.1.1:8083/
# The daemon opens its listeners before its rules redirect: VIP answering means ready.
echo "   portald: $(in_ns node "$P" status --control-socket "$WORK/ctl.sock" 2>/dev/null | head -1)"
# `ip netns exec` execs in place: $! is the process itself.
PORTALD_PID=$PORTALD
HAPROXY_PID=$HAPROXY
# portald's own proxy ports, for the `listener` path: the same proxy without the VIP's NAT.
proxy_port_of() { # $1 service port name
  in_ns node "$P" status --json --control-socket "$WORK/ctl.sock" |
    python3 -c 'import json,sys; print(next(l["port"] for l in json.load(sys.stdin)["listeners"] if l["name"].endswith(":" + sys.argv[1])))' "$1"
}
PROXY_HTTP=$(proxy_port_of http-listener)
PROXY_IPERF=$(proxy_port_of iperf-listener)

# --- nstat per namespace (each with its own history file) -----------------------------------

# CPU time (user + system, in seconds) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
proxy_pid() { case $1 in vip | listener) echo "$PORTALD_PID" ;; haproxy) echo "$HAPROXY_PID" ;; *) echo "" ;; esac; }
cpu_start() { local pid; pid=$(proxy_pid "$1"); CPU0=${pid:+$(cpu_s "$pid")}; }
cpu_used() { local pid; pid=$(proxy_pid "$1"); [ -n "$pid" ] && awk -v a="$(cpu_s "$pid")" -v b="$CPU0" 'BEGIN {printf "%.1f", a - b}' || echo -; }
PERF_PID=
perf_start() { # $1 run name, $2 path: profiles the proxy of the path, if any
  local pid; pid=$(proxy_pid "$2")
  [ "$PERF" = 1 ] && [ -n "$pid" ] || return 0
  perf record -q -g -p "$pid" -o "$WORK/perf-$1.data" >/dev/null 2>&1 &
  PERF_PID=$!
  PIDS+=($PERF_PID)
}
perf_stop() {
  [ -n "$PERF_PID" ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=
  perf report -i "$WORK/perf-$1.data" --no-children --percent-limit 0.5 --stdio >"$WORK/perf-$1.txt" 2>/dev/null || true
  echo "   perf profile: $WORK/perf-$1.txt"
}

declare -A R
wants iperf && echo "== throughput: iperf3, 1 stream, ${DURATION}s"
wants iperf && for path in $PATHS; do
  case $path in
    direct) host=10.244.1.2 port=5201 ;;
    vip) host=10.11.0.1 port=5202 ;;
    listener) host=10.244.1.1 port=$PROXY_IPERF ;;
    haproxy) host=10.244.1.1 port=5203 ;;
  esac
  nstat_reset
  cpu_start "$path"
  perf_start "iperf-$path" "$path"
  in_ns client timeout $((DURATION + 20)) iperf3 -c "$host" -p "$port" -t "$DURATION" -J >"$WORK/iperf-$path.json"
  R[tput-$path]=$(python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]; print("%.2f" % (e["sum_received"]["bits_per_second"] / 1e9))' "$WORK/iperf-$path.json")
  R[tput-retr-$path]=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_sent"].get("retransmits", 0))' "$WORK/iperf-$path.json")
  R[cpu-iperf-$path]=$(cpu_used "$path")
  perf_stop "iperf-$path"
  R[nstat-iperf-$path]=$(nstat_read)
  echo "   $path: ${R[tput-$path]} Gbit/s (iperf3 retransmits ${R[tput-retr-$path]}), proxy CPU ${R[cpu-iperf-$path]} s; nstat: ${R[nstat-iperf-$path]}"
done

wants wrk && echo "== new connections: wrk -t2 -c$CONNS -d${DURATION}s, Connection: close, nginx return 200"
wants wrk && for path in $PATHS; do
  case $path in
    direct) url=http://10.244.1.2:8081/ ;;
    vip) url=http://10.11.0.1:80/ ;;
    listener) url=http://10.244.1.1:$PROXY_HTTP/ ;;
    haproxy) url=http://10.244.1.1:8083/ ;;
  esac
  sleep 2 # let the previous run's closes settle
  nstat_reset
  cpu_start "$path"
  perf_start "wrk-$path" "$path"
  in_ns client timeout $((DURATION + 30)) wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency \
    -H 'Connection: close' "$url" >"$WORK/wrk-$path.txt" 2>&1 || true
  R[cpu-wrk-$path]=$(cpu_used "$path")
  perf_stop "wrk-$path"
  f=$WORK/wrk-$path.txt
  R[rps-$path]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$f")
  R[runs-$path]="${R[runs-$path]:-} ${R[rps-$path]:-0}"
  R[p50-$path]=$(awk '$1 == "50%" {print $2}' "$f")
  R[p99-$path]=$(awk '$1 == "99%" {print $2}' "$f")
  R[sockerr-$path]=$(awk -F'[ ,]+' '/Socket errors:/ {printf "c%s r%s w%s t%s", $5, $7, $9, $11}' "$f")
  R[sockerr-$path]=${R[sockerr-$path]:-none}
  R[non2xx-$path]=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$f")
  R[non2xx-$path]=${R[non2xx-$path]:-0}
  R[reqs-$path]=$(awk '/requests in/ {print $1}' "$f")
  R[nstat-wrk-$path]=$(nstat_read)
  if [ -z "${R[rps-$path]}" ]; then
    echo "   $path: wrk gave no result:"; sed 's/^/     /' "$f"
    R[rps-$path]=0 R[p50-$path]=- R[p99-$path]=-
  fi
  echo "   $path: ${R[rps-$path]} conn/s (${R[reqs-$path]} requests), p50 ${R[p50-$path]}, p99 ${R[p99-$path]}," \
    "non-2xx ${R[non2xx-$path]}, socket errors ${R[sockerr-$path]}, proxy CPU ${R[cpu-wrk-$path]} s; nstat: ${R[nstat-wrk-$path]}"
done

wants idle && echo "== memory per idle connection: $IDLE idle connections"
cat > "$WORK/hold.py" <<'EOF'
# Opens N TCP connections to HOST:PORT, sends nothing, holds them until stdin closes.
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.create_connection((host, port), timeout=5)
    socks.append(s)
print("open", len(socks), flush=True)
sys.stdin.read()
EOF
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
idle_run() { # $1 name $2 pid $3 host $4 port -> sets R[idle-*]
  local before after fifo=$WORK/hold-$1.in estab
  sleep 2
  before=$(rss_kb "$2")
  mkfifo "$fifo"
  ip netns exec "$N-client" python3 "$WORK/hold.py" "$3" "$4" "$IDLE" <"$fifo" >"$WORK/hold-$1.out" 2>&1 &
  local holder=$!
  PIDS+=($holder)
  exec 9>"$fifo"
  for _ in $(seq 300); do grep -q '^open' "$WORK/hold-$1.out" 2>/dev/null && break; sleep 0.1; done
  sleep 2 # let the proxy dial every backend
  estab=$(in_ns node ss -Htn state established '( dport = :8082 or dport = :8083 )' | wc -l)
  after=$(rss_kb "$2")
  exec 9>&-
  wait "$holder" 2>/dev/null || true
  R[idle-before-$1]=$before R[idle-after-$1]=$after R[idle-estab-$1]=$estab
  R[idle-per-$1]=$(awk -v a="$after" -v b="$before" -v n="$IDLE" 'BEGIN {printf "%.1f", (a - b) * 1024 / n / 1024}')
  echo "   $1: RSS ${before} KiB -> ${after} KiB with $(cat "$WORK/hold-$1.out" | head -1) ($estab upstream conns established): ${R[idle-per-$1]} KiB/conn"
}
if wants idle; then
  idle_run portald "$PORTALD_PID" 10.11.0.1 80
  idle_run haproxy "$HAPROXY_PID" 10.244.1.1 8083
fi

# --- table ---------------------------------------------------------------------------------
set +u # a subset run (TESTS, PATHS) leaves cells empty
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
for p in direct vip haproxy; do
  [ -n "${R[p50-$p]:-}" ] || continue
  R[p50ms-$p]=$(to_ms "${R[p50-$p]}")
  R[p99ms-$p]=$(to_ms "${R[p99-$p]}")
done
echo
echo "================ portald data-plane benchmark ================"
echo "commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet -- engine planners bin || echo ' (+ uncommitted changes)'), $(nproc) CPUs, kernel $(uname -r), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(nginx -v 2>&1 | cut -d' ' -f3), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "threads: portald $THREADS TCP data-plane workers (TOKIO_WORKER_THREADS; its control runtime idles during the runs), HAProxy nbthread $THREADS; clients, servers and proxies share the same $(nproc) CPUs"
printf '%-34s %10s %10s %10s %10s %10s %12s\n' "metric" "direct" "VIP" "HAProxy" "VIP/dir" "HAP/dir" "portald/HAP"
row() { # name direct vip haproxy [lower-is-better]
  printf '%-34s %10s %10s %10s %10s %10s %12s\n' "$1" "$2" "$3" "$4" "$(ratio "$3" "$2")" "$(ratio "$4" "$2")" "$(ratio "$3" "$4")"
}
row "iperf3 throughput (Gbit/s)" "${R[tput-direct]}" "${R[tput-vip]}" "${R[tput-haproxy]}"
row "new connections (req/s, c=$CONNS)" "${R[rps-direct]}" "${R[rps-vip]}" "${R[rps-haproxy]}"
row "latency p50 (ms)" "${R[p50ms-direct]}" "${R[p50ms-vip]}" "${R[p50ms-haproxy]}"
row "latency p99 (ms)" "${R[p99ms-direct]}" "${R[p99ms-vip]}" "${R[p99ms-haproxy]}"
printf '%-34s %10s %10s %10s\n' "proxy CPU during iperf3 (s)" - "${R[cpu-iperf-vip]}" "${R[cpu-iperf-haproxy]}"
printf '%-34s %10s %10s %10s\n' "proxy CPU during wrk (s)" - "${R[cpu-wrk-vip]}" "${R[cpu-wrk-haproxy]}"
printf '%-34s %10s %10s %10s\n' "non-2xx responses" "${R[non2xx-direct]}" "${R[non2xx-vip]}" "${R[non2xx-haproxy]}"
printf '%-34s %10s %10s %10s\n' "socket errors (conn/read/wr/tmo)" "${R[sockerr-direct]// /}" "${R[sockerr-vip]// /}" "${R[sockerr-haproxy]// /}"
printf '%-34s %10s %10s %10s %10s %10s %12s\n' "idle conn memory (KiB/conn)" "-" "${R[idle-per-portald]}" "${R[idle-per-haproxy]}" "-" "-" "$(ratio "${R[idle-per-portald]}" "${R[idle-per-haproxy]}")"
echo "proxy RSS before -> with $IDLE idle conns: portald ${R[idle-before-portald]} -> ${R[idle-after-portald]} KiB," \
  "HAProxy ${R[idle-before-haproxy]} -> ${R[idle-after-haproxy]} KiB"
if [ -n "${R[tput-listener]}${R[rps-listener]}" ]; then
  echo "portald without the VIP's NAT (client -> proxy port directly): ${R[tput-listener]:--} Gbit/s," \
    "${R[rps-listener]:--} conn/s, p50 ${R[p50-listener]:--}, p99 ${R[p99-listener]:--}"
fi
echo "ratios are column / column: for throughput and conn/s higher is better; for latency and memory lower is better"
echo
# A path run more than once (PATHS="vip haproxy haproxy vip ..."): every run and the means,
# since one pair of 10 s runs on a shared 2-core machine differs by several percent.
if [ "$(wc -w <<<"${R[runs-vip]:-}")" -gt 1 ] || [ "$(wc -w <<<"${R[runs-haproxy]:-}")" -gt 1 ]; then
  mean() { awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.0f", s / NF }' <<<"$1"; }
  echo "new connections per run (conn/s): VIP${R[runs-vip]:- -}; HAProxy${R[runs-haproxy]:- -}"
  if [ -n "${R[runs-vip]:-}" ] && [ -n "${R[runs-haproxy]:-}" ]; then
    echo "means: VIP $(mean "${R[runs-vip]}"), HAProxy $(mean "${R[runs-haproxy]}"), portald/HAProxy $(ratio "$(mean "${R[runs-vip]}")" "$(mean "${R[runs-haproxy]}")")"
  fi
  echo
fi
echo "nstat (non-zero counters, per namespace, per run):"
for p in direct vip haproxy; do
  echo "  iperf3 $p: ${R[nstat-iperf-$p]}"
done
for p in direct vip haproxy; do
  echo "  wrk    $p: ${R[nstat-wrk-$p]}"
done
