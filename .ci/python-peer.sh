#!/usr/bin/env bash
# Installs the reference peer, the Python package tinyproto==3.0, into .venv
# (once). The interop tests find it there; nothing else is needed to run
# `cargo test --workspace`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import tinyproto' 2>/dev/null; then
  echo "==> setting up the Python reference peer (tinyproto==3.0) in .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check tinyproto==3.0
fi
