#!/usr/bin/env bash
# tinyproto-embassy: the deterministic simulation (adapters/embassy/sim, its
# own workspace: it brings a virtual-clock time driver). 10,000 seeds of a
# 50-message exchange over a link that drops, duplicates, reorders,
# corrupts and delays frames at up to 10 % each; then 1,000 seeds at 30 %.
# Release build; about 1 min with the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../adapters/embassy/sim"
export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --check
cargo clippy -q --release --all-targets -- -D warnings
TINYPROTO_SIM_SEEDS=10000 cargo test -q --release
TINYPROTO_SIM_SEEDS=1000 TINYPROTO_SIM_FAULT_PPM=300000 cargo test -q --release
