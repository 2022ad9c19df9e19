# Shared by the data-path benchmarks (sourced, not run): tools, the namespace topology and
# its cleanup, nstat counters, wrk latency units.
#
# Topology (namespaces named "$N-node", "$N-server", "$N-client", deleted on exit):
#   client 10.244.1.3 ──┐
#                       br0 10.244.1.1 (node; the portal range 10.11.0.0/16 routed to br0)
#   server 10.244.1.2 ──┘
# The caller sets N, WORK and PIDS=() before `bench_topology`, and appends to PIDS every
# background process it starts (with `ip netns exec ... &`, so that $! is the process).

# Installs what is missing of the given commands (command:package pairs).
bench_tools() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair##*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get install -y "${need[@]}" >/dev/null 2>&1 ||
      { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
  fi
}

# Builds the release binary (no debug info; `--profile profiling` keeps line tables for perf) into $CARGO_TARGET_DIR and sets P to it.
bench_build() {
  echo "== build (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$ROOT" && cargo build --release -q -p portald --bin portald)
  P=$CARGO_TARGET_DIR/release/portald
}

bench_cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  for ns in client server node; do ip netns del "$N-$ns" 2>/dev/null; done
  [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"
}

in_ns() { local ns=$1; shift; ip netns exec "$N-$ns" "$@"; }

bench_topology() {
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  local ns i=2
  for ns in node server client; do
    ip netns add "$N-$ns"
    ip -n "$N-$ns" link set lo up
  done
  ip -n "$N-node" link add br0 type bridge
  ip -n "$N-node" addr add 10.244.1.1/24 dev br0
  ip -n "$N-node" link set br0 up
  for ns in server client; do
    ip -n "$N-node" link add "v$ns" type veth peer name eth0 netns "$N-$ns"
    ip -n "$N-node" link set "v$ns" master br0 up
    ip -n "$N-$ns" addr add "10.244.1.$i/24" dev eth0
    ip -n "$N-$ns" link set eth0 up
    ip -n "$N-$ns" route add default via 10.244.1.1
    i=$((i + 1))
  done
  ip -n "$N-node" route add 10.11.0.0/16 dev br0
  # Namespace-local sysctls: the same for every path, so that none runs out of ports.
  for ns in node server client; do
    in_ns "$ns" sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.ipv4.tcp_tw_reuse=1 \
      net.core.somaxconn=4096 net.ipv4.tcp_max_syn_backlog=4096
  done
  in_ns node sysctl -qw net.ipv4.ip_forward=1
  ulimit -n "$(ulimit -Hn)" # as many descriptors as allowed (2 per proxied connection)
}

# nstat per namespace, each with its own history file.
NSTAT_COUNTERS="TcpExtTCPSynRetrans TcpExtListenDrops TcpExtListenOverflows TcpRetransSegs TcpExtTCPTimeouts TcpAttemptFails"
nstat_reset() { for ns in node server client; do NSTAT_HISTORY=$WORK/nstat.$ns in_ns "$ns" nstat -n; done; }
nstat_read() { # prints "ns:counter=value ..." for non-zero counters
  local out="" ns name value
  for ns in node server client; do
    # shellcheck disable=SC2086
    while read -r name value _; do
      [ -n "$name" ] && [ "$value" != 0 ] && out+="$ns:${name#TcpExt}=$value "
    done < <(NSTAT_HISTORY=$WORK/nstat.$ns in_ns "$ns" nstat $NSTAT_COUNTERS 2>/dev/null | grep -v '^#')
  done
  echo "${out:-none}"
}

# wrk latency like 1.23ms / 456.00us / 1.20s -> ms
to_ms() {
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 } else print "-" }'
}
