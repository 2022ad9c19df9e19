#!/usr/bin/env bash
# Builds portald and runs the demo: private namespaces, backends, the seed's services, real traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
exec ./target/release/portald demo "$@"
