#!/usr/bin/env bash
# The whole test suite: unit, golden, property, loopback and real-kernel (namespace) tests.
# Needs root for the namespace tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --all-targets --locked
