#!/usr/bin/env bash
# Scale benchmark of the control plane: how long `portald plan` takes, and how much memory it
# needs, on 10,000 services x 10 endpoints (v1 Service + v1 Endpoints, 100 files), against a
# matching live dump (20,000 rules: load, compile, observe-parse, diff, order) and against an
# empty live state (full plan), for the iptables and the nftables backends; plus the kernel
# apply time of the full batch and of a one-service change, each in a fresh `unshare -n`
# network namespace (the host's own rules are never touched).
#
#   bench/scale.sh            # env: SERVICES=10000 ENDPOINTS=10 FILES=100 RUNS=3 KEEP=0
#   MODE=kernel bench/scale.sh   # the same in kernel mode (DNAT to the endpoints: a chain
#                                # per portal, 10 endpoints each, in both dialects)
#
# Target: plan under 1 s and under 200 MiB on a 2-core machine. Prints one table at the end.
# Per-stage timings come from `engine/examples/stages.rs` (same pipeline, timed stage by stage).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVICES=${SERVICES:-10000}
ENDPOINTS=${ENDPOINTS:-10}
FILES=${FILES:-100}
RUNS=${RUNS:-3}
# 10,000 services need 10,000 proxy ports: widen the default 20000-29999 range so that the
# one-service change (an added service) has a port to take.
PORTS=${PORTS:-20000-39999}
MODE=${MODE:-userspace}
# Every planning command below runs in this mode (word-split on purpose).
M="--mode $MODE"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-bench}

[ "$(id -u)" = 0 ] || { echo "scale.sh: needs root (unshare -n, iptables, nft)" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------
need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
[ -x /usr/bin/time ] || need+=(time)
command -v iptables-restore >/dev/null || need+=(iptables)
command -v nft >/dev/null || need+=(nftables)
command -v unshare >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
fi

echo "== build (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd "$ROOT" && cargo build --release -q -p portald --bin portald &&
  cargo build --release -q -p engine --example stages)
P=$CARGO_TARGET_DIR/release/portald
STAGES=$CARGO_TARGET_DIR/release/examples/stages

WORK=$(mktemp -d /tmp/portald-scale.XXXXXX)
cleanup() { [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT
DIR=$WORK/services

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
# Median and minimum of numbers on stdin.
stats() { sort -n | awk '{a[NR]=$1} END {printf "min %s, median %s (n=%d)", a[1], a[int((NR+1)/2)], NR}'; }
batch_of() { python3 -c 'import json,sys; sys.stdout.write(json.load(open(sys.argv[1]))["batch"])' "$1"; }
size_of() { printf '%s lines, %s bytes' "$(wc -l < "$1")" "$(wc -c < "$1")"; }

echo "== generate $SERVICES services x $ENDPOINTS endpoints in $FILES files"
python3 "$ROOT/bench/gen_services.py" "$DIR" --services "$SERVICES" --endpoints "$ENDPOINTS" --files "$FILES"
echo "   $(find "$DIR" -name '*.yaml' | wc -l) files, $(du -sh "$DIR" | cut -f1)"

echo "== portald lock (first allocation)"
t=$(date +%s%N)
/usr/bin/time -f "%M" -o "$WORK/lock.rss" "$P" lock "$DIR" --no-live --proxy-port-range "$PORTS" $M
LOCK_MS=$(ms "$t"); LOCK_RSS=$(( $(cat "$WORK/lock.rss") / 1024 ))

echo "== full plans and live dumps (fresh unshare -n namespaces)"
"$P" plan "$DIR" --no-live --proxy-port-range "$PORTS" $M --out "$WORK/full-ipt.json" >/dev/null
"$P" plan "$DIR" --no-live --proxy-port-range "$PORTS" $M --backend nftables --out "$WORK/full-nft.json" >/dev/null
batch_of "$WORK/full-ipt.json" > "$WORK/full-ipt.batch"
batch_of "$WORK/full-nft.json" > "$WORK/full-nft.batch"
unshare -n bash -c "iptables-restore --noflush < '$WORK/full-ipt.batch' && iptables-save" > "$WORK/live-ipt.txt"
unshare -n bash -c "nft -f '$WORK/full-nft.batch' && nft -j list ruleset" > "$WORK/live-nft.json"
echo "   live iptables dump: $(grep -c '^-A PORTAL-' "$WORK/live-ipt.txt") PORTAL rules, $(wc -c < "$WORK/live-ipt.txt") bytes"
echo "   live nft dump: $(wc -c < "$WORK/live-nft.json") bytes"

# Sanity: against its own live dump the kernel part of the plan is empty.
for b in ipt nft; do
  [ $b = ipt ] && { L=$WORK/live-ipt.txt; B=iptables; } || { L=$WORK/live-nft.json; B=nftables; }
  "$P" plan "$DIR" --live "$L" --backend $B --proxy-port-range "$PORTS" $M --out "$WORK/steady-$b.json" >/dev/null
  n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["batch"]))' "$WORK/steady-$b.json")
  [ "$n" = 0 ] || { echo "scale.sh: $B plan against its own live dump is not empty ($n bytes)" >&2; exit 1; }
done

echo "== plan wall time (hyperfine, $RUNS runs + 1 warmup; load average: $(cut -d' ' -f1-3 /proc/loadavg))"
declare -A CMD=(
  [ipt-live]="$P plan $DIR --live $WORK/live-ipt.txt --json --proxy-port-range $PORTS $M"
  [ipt-nolive]="$P plan $DIR --no-live --json --proxy-port-range $PORTS $M"
  [nft-live]="$P plan $DIR --live $WORK/live-nft.json --backend nftables --json --proxy-port-range $PORTS $M"
  [nft-nolive]="$P plan $DIR --no-live --backend nftables --json --proxy-port-range $PORTS $M"
)
CASES=(ipt-live ipt-nolive nft-live nft-nolive)
args=()
for c in "${CASES[@]}"; do args+=(-n "$c" "${CMD[$c]} > /dev/null"); done
hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$WORK/hyperfine.json" "${args[@]}"

declare -A MIN MED RSS
for c in "${CASES[@]}"; do
  read -r MIN[$c] MED[$c] < <(python3 - "$WORK/hyperfine.json" "$c" <<'EOF'
import json, statistics, sys
r = next(r for r in json.load(open(sys.argv[1]))["results"] if r["command"] == sys.argv[2])
print(f'{min(r["times"])*1000:.0f} {statistics.median(r["times"])*1000:.0f}')
EOF
  )
  peak=0
  for _ in $(seq "$RUNS"); do
    # shellcheck disable=SC2086
    /usr/bin/time -f "%M" -o "$WORK/rss" sh -c "${CMD[$c]} > /dev/null"
    r=$(cat "$WORK/rss"); [ "$r" -gt "$peak" ] && peak=$r
  done
  RSS[$c]=$(( peak / 1024 ))
done

if [ "$MODE" = userspace ]; then # the stages example plans in userspace mode
echo "== where the time goes (engine/examples/stages.rs, one run each)"
echo "-- iptables, against the live dump"
"$STAGES" "$DIR" "$WORK/live-ipt.txt" --ports "$PORTS" | tee "$WORK/stages-ipt-live.txt"
echo "-- iptables, empty live (full plan)"
"$STAGES" "$DIR" --ports "$PORTS" | tee "$WORK/stages-ipt-nolive.txt"
echo "-- nftables, against the live dump"
"$STAGES" "$DIR" "$WORK/live-nft.json" --nftables --ports "$PORTS" | tee "$WORK/stages-nft-live.txt"
fi

echo "== kernel apply: full batch, fresh namespace each run"
apply_full() { # $1 ipt|nft
  for _ in $(seq "$RUNS"); do
    if [ "$1" = ipt ]; then
      unshare -n bash -c "t=\$(date +%s%N); iptables-restore --noflush < '$WORK/full-ipt.batch'; echo \$(( (\$(date +%s%N) - t) / 1000000 ))"
    else
      unshare -n bash -c "t=\$(date +%s%N); nft -f '$WORK/full-nft.batch'; echo \$(( (\$(date +%s%N) - t) / 1000000 ))"
    fi
  done | stats
}
APPLY_FULL_IPT=$(apply_full ipt); echo "   iptables-restore --noflush: $APPLY_FULL_IPT ms"
APPLY_FULL_NFT=$(apply_full nft); echo "   nft -f: $APPLY_FULL_NFT ms"

echo "== one-service change at $SERVICES services (an added service, planned against the live dump)"
CHG=$WORK/changed
cp -a "$DIR" "$CHG"
cat >> "$(find "$CHG" -name '*.yaml' | sort | head -1)" <<'EOF'
---
apiVersion: v1
kind: Service
metadata:
  name: svc-added
  namespace: team-00
spec:
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Endpoints
metadata:
  name: svc-added
  namespace: team-00
subsets:
- addresses: [{ip: 10.244.250.1}, {ip: 10.244.250.2}]
  ports: [{name: http, port: 8080, protocol: TCP}]
EOF
"$P" plan "$CHG" --live "$WORK/live-ipt.txt" --proxy-port-range "$PORTS" $M --out "$WORK/chg-ipt.json" >/dev/null
"$P" plan "$CHG" --live "$WORK/live-nft.json" --backend nftables --proxy-port-range "$PORTS" $M --out "$WORK/chg-nft.json" >/dev/null
batch_of "$WORK/chg-ipt.json" > "$WORK/chg-ipt.batch"
batch_of "$WORK/chg-nft.json" > "$WORK/chg-nft.batch"
echo "-- iptables change batch ($(size_of "$WORK/chg-ipt.batch")):"; sed 's/^/   /' "$WORK/chg-ipt.batch"
echo "-- nft change batch ($(size_of "$WORK/chg-nft.batch")):"; sed 's/^/   /' "$WORK/chg-nft.batch"
apply_change() { # $1 ipt|nft: full batch first (untimed), then the change, timed
  for _ in $(seq "$RUNS"); do
    if [ "$1" = ipt ]; then
      unshare -n bash -c "iptables-restore --noflush < '$WORK/full-ipt.batch'; t=\$(date +%s%N); iptables-restore --noflush < '$WORK/chg-ipt.batch'; echo \$(( (\$(date +%s%N) - t) / 1000000 )); iptables-save | grep -c svc-added >/dev/null"
    else
      unshare -n bash -c "nft -f '$WORK/full-nft.batch'; t=\$(date +%s%N); nft -f '$WORK/chg-nft.batch'; echo \$(( (\$(date +%s%N) - t) / 1000000 )); nft list ruleset | grep -c svc-added >/dev/null"
    fi
  done | stats
}
APPLY_CHG_IPT=$(apply_change ipt); echo "   iptables-restore --noflush (change): $APPLY_CHG_IPT ms"
APPLY_CHG_NFT=$(apply_change nft); echo "   nft -f (change): $APPLY_CHG_NFT ms"

verdict() { # $1 ms $2 MiB
  if [ "$1" -lt 1000 ] && [ "$2" -lt 200 ]; then echo ok; else echo "OVER TARGET"; fi
}
echo
echo "================ portald scale benchmark ($MODE mode) ================"
echo "commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet -- engine planners bin || echo ' (+ uncommitted changes)'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "input: $SERVICES services x $ENDPOINTS endpoints, $FILES files, $(du -sh "$DIR" | cut -f1); proxy ports $PORTS"
printf '%-44s %10s %10s %9s  %s\n' "portald plan ... --json > /dev/null" "min ms" "median ms" "peak MiB" "target <1 s, <200 MiB"
label() { case $1 in
  ipt-live) echo "iptables, --live (20,000-rule dump)";;
  ipt-nolive) echo "iptables, --no-live (full plan)";;
  nft-live) echo "nftables, --live (nft -j dump)";;
  nft-nolive) echo "nftables, --no-live (full plan)";; esac; }
for c in "${CASES[@]}"; do
  printf '%-44s %10s %10s %9s  %s\n' "$(label "$c")" "${MIN[$c]}" "${MED[$c]}" "${RSS[$c]}" "$(verdict "${MIN[$c]}" "${RSS[$c]}")"
done
printf '%-44s %10s %10s %9s\n' "portald lock --no-live (first allocation)" "$LOCK_MS" "-" "$LOCK_RSS"
echo
printf '%-44s %-32s %s\n' "kernel apply (fresh unshare -n)" "batch" "ms"
printf '%-44s %-32s %s\n' "full, iptables-restore --noflush" "$(size_of "$WORK/full-ipt.batch")" "$APPLY_FULL_IPT"
printf '%-44s %-32s %s\n' "full, nft -f" "$(size_of "$WORK/full-nft.batch")" "$APPLY_FULL_NFT"
printf '%-44s %-32s %s\n' "one added service, iptables-restore" "$(size_of "$WORK/chg-ipt.batch")" "$APPLY_CHG_IPT"
printf '%-44s %-32s %s\n' "one added service, nft -f" "$(size_of "$WORK/chg-nft.batch")" "$APPLY_CHG_NFT"
echo "(iptables here is $(iptables --version | sed 's/^iptables //'))"
echo
[ "$MODE" = userspace ] || exit 0
echo "stages, iptables --live (ms):"
sed 's/^/  /' "$WORK/stages-ipt-live.txt"
