#!/usr/bin/env bash
# The test command of the README: sets up the Python reference peer (once)
# and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import tinyproto' 2>/dev/null; then
  echo "::: setting up the Python reference peer (tinyproto==3.0) in .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check tinyproto==3.0
fi
export TINYPROTO_PYTHON="$PWD/.venv/bin/python"

cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
