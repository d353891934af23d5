#!/usr/bin/env bash
# All tests: unit tests, then the end-to-end suite on the virtual 3-node cluster
# (brought up, or repaired, by scripts/vcluster; images are built on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bins
scripts/vcluster up 3
cargo test --lib --bins --tests -- --test-threads=3
# The SPANK plugin's own tests (vcluster up installed its build dependencies).
cargo test -p mnd-spank -q
