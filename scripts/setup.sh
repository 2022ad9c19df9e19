#!/usr/bin/env bash
# Installs the system tools portald and its tests use (kernel NAT tools, namespaces, clients).
# Idempotent: installs only what is missing; `apt-get update` runs at most once.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have iptables-restore || need+=(iptables)
have nft || need+=(nftables)
have ip || need+=(iproute2)
have conntrack || need+=(conntrack)
have curl || need+=(curl)
have socat || need+=(socat)
have pkill || need+=(procps)
have systemd-analyze || need+=(systemd)
# bin/tests/systemd_real.rs boots a private systemd as PID 1 of new namespaces (unshare,
# nsenter, setpriv) and drives it with systemctl and journalctl.
[ -x /lib/systemd/systemd ] && have systemctl && have journalctl || need+=(systemd)
have unshare && have nsenter && have setpriv || need+=(util-linux)
have prlimit || need+=(util-linux)
have sysctl || need+=(procps)
# The packaging test unpacks the .deb (bin/tests/packaging.rs).
have dpkg-deb || need+=(dpkg)
have gzip || need+=(gzip)
# The metrics tests scrape the daemon with a real Prometheus server and check the
# exposition with promtool (both in Debian's `prometheus` package; never run as a service).
have prometheus && have promtool || need+=(prometheus)
# The endpoint health tests run a tiny HTTP server per pod whose health answer they flip.
have python3 || need+=(python3)
# The schema tests validate real outputs against docs/schema/ with python3-jsonschema.
python3 -c 'import jsonschema' 2>/dev/null || need+=(python3-jsonschema)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi

# packaging/build-deb.sh (and bin/tests/packaging.rs) make the .deb with cargo-deb.
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "setup: installing cargo-deb"
  cargo install cargo-deb --locked
fi
