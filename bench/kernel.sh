#!/usr/bin/env bash
# Kernel data-path benchmark: portald's kernel mode against the direct path, one hand-written
# DNAT rule for a VIP (the physical limit: NAT turns conntrack on), and portald's userspace
# mode, all in one run on the same namespaces; kernel mode with 1 service and with 10,000
# services installed, through both dialects:
#   - bulk TCP throughput (iperf3, one stream);
#   - new connections per second and latency p50/p99 (wrk -c CONNS, one request per
#     connection) against nginx `return 200`, with errors;
#   - nstat counters (SYN retransmits, listen drops/overflows, retransmits) per run.
#
#   bench/kernel.sh        # env: DURATION=10 CONNS=256 SERVICES=10000 KEEP=0
#
# Topology (namespaces this script creates and deletes; no other address is used):
#   client 10.244.1.3 ──┐
#                       br0 10.244.1.1 (node: portald; VIPs 10.11.0.0/16 routed here)
#   server 10.244.1.2 ──┘ (nginx, iperf3)
# Every path has its own backend port (no TIME_WAIT/PAWS clash between paths):
#   direct        10.244.1.2:{5201,8081}
#   hand-written  10.11.200.1:{5202,80} -> :{5202,8082}   (nft: one dnat + one masquerade)
#   kernel nft    10.11.250.1:{5203,80} -> :{5203,8083}   (1 service)
#   kernel nft    10.11.250.2:{5204,80} -> :{5204,8084}   (+ SERVICES others, 10 endpoints each)
#   kernel ipt    10.11.250.3:{5205,80} -> :{5205,8085}   (1 service)
#   kernel ipt    10.11.250.4:{5206,80} -> :{5206,8086}   (+ SERVICES others: after them in the chain)
#   userspace     10.11.250.5:{5207,80} -> :{5207,8087}   (nftables, `portald run`)
# The client shares the bridge with the server, so every VIP path masquerades (portald's
# rule for attached networks; the hand-written table has the same one).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10}
CONNS=${CONNS:-256}
SERVICES=${SERVICES:-10000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-bench}

[ "$(id -u)" = 0 ] || { echo "kernel.sh: needs root (network namespaces)" >&2; exit 1; }

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_tools iperf3:iperf3 wrk:wrk nginx:nginx-light nstat:iproute2 nft:nftables \
  iptables:iptables conntrack:conntrack curl:curl python3:python3

bench_build

N=pdkern$$
WORK=$(mktemp -d /tmp/portald-kernel.XXXXXX)
PIDS=()
bench_topology
# Room for every connection of a run in conntrack (NAT paths track each one).
in_ns node sysctl -qw net.netfilter.nf_conntrack_max=1048576 2>/dev/null || true

# --- servers ---------------------------------------------------------------------------------
for port in 5201 5202 5203 5204 5205 5206 5207; do
  ip netns exec "$N-server" iperf3 -s -p "$port" >/dev/null 2>&1 &
  PIDS+=($!)
done
mkdir -p "$WORK/nginx"
{
  echo "worker_processes 1; worker_rlimit_nofile 16384; daemon off; pid $WORK/nginx.pid;"
  echo "error_log $WORK/nginx/error.log warn; events { worker_connections 16384; }"
  echo "http { access_log off; client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;"
  echo "  fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;"
  echo "  server {"
  for port in 8081 8082 8083 8084 8085 8086 8087; do echo "    listen $port backlog=4096;"; done
  echo "    location / { return 200 \"ok\\n\"; } } }"
} >"$WORK/nginx.conf"
ip netns exec "$N-server" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log" &
PIDS+=($!)

# --- the hand-written rule ---------------------------------------------------------------------
in_ns node nft -f - <<'NFT'
table ip hand {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.11.200.1 tcp dport 5202 dnat to 10.244.1.2:5202
		ip daddr 10.11.200.1 tcp dport 80 dnat to 10.244.1.2:8082
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ip saddr 10.244.1.0/24 ct original ip daddr 10.11.200.1 masquerade
	}
}
NFT

# --- services directories ------------------------------------------------------------------------
bench_service() { # $1 dir $2 vip $3 iperf port $4 http target port
  mkdir -p "$1"
  cat >"$1/bench.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: default}
spec:
  clusterIP: $2
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: $4}
  - {name: iperf, protocol: TCP, port: $3, targetPort: $3}
---
apiVersion: v1
kind: Endpoints
metadata: {name: bench, namespace: default}
subsets:
- addresses: [{ip: 10.244.1.2}]
  ports:
  - {name: http, port: $4, protocol: TCP}
  - {name: iperf, port: $3, protocol: TCP}
EOF
}
bench_service "$WORK/nft1" 10.11.250.1 5203 8083
bench_service "$WORK/nft10k" 10.11.250.2 5204 8084
bench_service "$WORK/ipt1" 10.11.250.3 5205 8085
bench_service "$WORK/ipt10k" 10.11.250.4 5206 8086
bench_service "$WORK/user" 10.11.250.5 5207 8087
python3 "$ROOT/bench/gen_services.py" "$WORK/nft10k/others" --services "$SERVICES" --endpoints 10 --files 100 >/dev/null
cp -r "$WORK/nft10k/others" "$WORK/ipt10k/others"

# --- measuring -------------------------------------------------------------------------------------
wait_http() {
  for _ in $(seq 100); do
    in_ns client curl -fs -m 1 "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "kernel.sh: $1 not answering" >&2
  exit 1
}
declare -A R
PATHS=()
measure() { # $1 name $2 host $3 iperf port $4 http url
  local name=$1 f
  PATHS+=("$name")
  wait_http "$4"
  sleep 2
  nstat_reset
  in_ns client timeout $((DURATION + 20)) iperf3 -c "$2" -p "$3" -t "$DURATION" -J >"$WORK/iperf-$name.json"
  R[tput-$name]=$(python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]; print("%.2f" % (e["sum_received"]["bits_per_second"] / 1e9))' "$WORK/iperf-$name.json")
  R[nstat-iperf-$name]=$(nstat_read)
  sleep 2
  nstat_reset
  in_ns client timeout $((DURATION + 30)) wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency \
    -H 'Connection: close' "$4" >"$WORK/wrk-$name.txt" 2>&1 || true
  f=$WORK/wrk-$name.txt
  R[rps-$name]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$f")
  R[rps-$name]=${R[rps-$name]:-0}
  R[p50-$name]=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
  R[p99-$name]=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
  R[err-$name]=$(awk -F'[ ,]+' '/Socket errors:/ {printf "c%s/r%s/w%s/t%s", $5, $7, $9, $11}' "$f")
  R[err-$name]=${R[err-$name]:-none}
  R[non2xx-$name]=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$f")
  R[non2xx-$name]=${R[non2xx-$name]:-0}
  R[nstat-wrk-$name]=$(nstat_read)
  # This run's connections out of conntrack, so every run starts from the same table.
  in_ns node conntrack -F >/dev/null 2>&1 || true
  echo "   $name: ${R[tput-$name]} Gbit/s, ${R[rps-$name]} conn/s, p50 ${R[p50-$name]} ms, p99 ${R[p99-$name]} ms, errors ${R[err-$name]}, non-2xx ${R[non2xx-$name]}"
}
apply() { # $1 dir $2 backend -> prints the one-shot apply's wall time in ms
  local t
  t=$(date +%s%N)
  in_ns node "$P" apply "$1" --mode kernel --backend "$2" --control-socket "$WORK/none.sock" --state-file "$WORK/state.json" >"$WORK/apply-$(basename "$1").txt"
  echo $(( ($(date +%s%N) - t) / 1000000 ))
}

echo "== direct and hand-written DNAT"
measure direct 10.244.1.2 5201 http://10.244.1.2:8081/
measure hand 10.11.200.1 5202 http://10.11.200.1:80/

echo "== kernel mode, nftables, 1 service"
R[apply-nft1]=$(apply "$WORK/nft1" nftables)
measure nft-1 10.11.250.1 5203 http://10.11.250.1:80/
echo "== kernel mode, nftables, $SERVICES services more"
R[apply-nft10k]=$(apply "$WORK/nft10k" nftables)
R[elements-nft10k]=$(in_ns node nft list map ip portald container_services | grep -o ' : goto ' | wc -l)
measure nft-10k 10.11.250.2 5204 http://10.11.250.2:80/
echo "== kernel mode, iptables, 1 service (the same apply retires the nft table)"
R[apply-ipt1]=$(apply "$WORK/ipt1" iptables)
measure ipt-1 10.11.250.3 5205 http://10.11.250.3:80/
echo "== kernel mode, iptables, $SERVICES services more"
R[apply-ipt10k]=$(apply "$WORK/ipt10k" iptables)
R[rules-ipt10k]=$(in_ns node iptables-save -t nat | grep -c '^-A PORTAL-' || true)
measure ipt-10k 10.11.250.4 5206 http://10.11.250.4:80/
echo "== userspace mode (nftables, the daemon)"
in_ns node "$P" cleanup --control-socket "$WORK/none.sock" >/dev/null
ip netns exec "$N-node" "$P" run "$WORK/user" --backend nftables --control-socket "$WORK/ctl.sock" --state-file "$WORK/state.json" >"$WORK/portald.log" 2>&1 &
PIDS+=($!)
measure userspace 10.11.250.5 5207 http://10.11.250.5:80/
echo "== hand-written DNAT again (drift check)"
measure hand-again 10.11.200.1 5202 http://10.11.200.1:80/

# --- table -------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
HAND_T=$(awk -v a="${R[tput-hand]}" -v b="${R[tput-hand-again]}" 'BEGIN {printf "%.2f", (a + b) / 2}')
HAND_C=$(awk -v a="${R[rps-hand]}" -v b="${R[rps-hand-again]}" 'BEGIN {printf "%.0f", (a + b) / 2}')
echo
echo "================ portald kernel data-path benchmark ================"
echo "commit $(git -C "$ROOT" rev-parse --short HEAD), $(nproc) CPUs, kernel $(uname -r), $(nft --version), $(iptables --version), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "kernel-mode one-shot apply: nft 1 service ${R[apply-nft1]} ms; nft +$SERVICES ${R[apply-nft10k]} ms (${R[elements-nft10k]} container elements);" \
  "iptables 1 service ${R[apply-ipt1]} ms; iptables +$SERVICES ${R[apply-ipt10k]} ms (${R[rules-ipt10k]} PORTAL rules)"
printf '%-12s %8s %9s %8s %8s %9s %9s %9s %9s  %s\n' path Gbit/s conn/s p50ms p99ms "T/direct" "C/direct" "T/hand" "C/hand" "wrk errors, non-2xx"
for p in "${PATHS[@]}"; do
  printf '%-12s %8s %9s %8s %8s %9s %9s %9s %9s  %s\n' "$p" "${R[tput-$p]}" "${R[rps-$p]}" "${R[p50-$p]}" "${R[p99-$p]}" \
    "$(ratio "${R[tput-$p]}" "${R[tput-direct]}")" "$(ratio "${R[rps-$p]}" "${R[rps-direct]}")" \
    "$(ratio "${R[tput-$p]}" "$HAND_T")" "$(ratio "${R[rps-$p]}" "$HAND_C")" "${R[err-$p]}, ${R[non2xx-$p]}"
done
echo "T = iperf3 throughput, C = new connections per second; 'hand' = mean of the two hand-written runs ($HAND_T Gbit/s, $HAND_C conn/s)"
echo "target: kernel mode >= 0.95 x hand-written in T and C, with 1 and with $SERVICES services"
echo
echo "nstat (non-zero counters per namespace):"
for p in "${PATHS[@]}"; do
  echo "  $p: iperf3 ${R[nstat-iperf-$p]}; wrk ${R[nstat-wrk-$p]}"
done
