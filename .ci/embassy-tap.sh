#!/usr/bin/env bash
# tinyproto-embassy against the Linux kernel: an embassy-net stack on a TAP
# device in a network namespace the test creates, talking to the std blocking
# driver and to the Python reference (tinyproto==3.0), both directions.
# Needs root (CI runs as root); as another user the test skips with a message.
# Installs what it needs. About 1 min (mostly the build); the run takes ~1 s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v ip >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
fi
bash .ci/python-peer.sh
export TINYPROTO_PYTHON="$PWD/.venv/bin/python"

if [ "$(id -u)" != 0 ]; then
    echo "embassy-tap: SKIPPED (not root: cannot create a network namespace and a TAP device)"
    exit 0
fi
timeout 600 cargo test -p tinyproto-embassy --test tap -- --nocapture --test-threads=1
